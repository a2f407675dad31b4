//! conv2d.wgsl against cpu::conv2d, plain and with every fusion.

mod common;

use common::*;
use diffusion_playground::cpu::{self, Conv2dSpec};
use diffusion_playground::gpu::conv2d::{conv2d, out_size, Conv2dArgs, ConvVariant, TembSlice};

/// Every kernel variant that can compute a convolution of this shape: the tiled kernel
/// always, the direct one for stride 1 with 3x3/pad 1 or 1x1/pad 0, the narrow one for at
/// most 4 output channels. Each case below is checked against the CPU reference with each.
fn variants(cout: usize, k: usize, stride: usize, pad: usize) -> Vec<ConvVariant> {
    let mut v = vec![ConvVariant::Tiled];
    if ConvVariant::direct_applies(k, stride, pad) {
        v.push(ConvVariant::Direct);
    }
    if cout <= 4 {
        v.push(ConvVariant::Narrow);
    }
    v
}

struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

fn check_plain(seed: u64, c: Case) {
    let mut r = rng(seed);
    let fan_in = c.cin * c.k * c.k;
    let x = uniform(&mut r, c.n * c.cin * c.h * c.w, 1.0);
    // Weights scaled like a trained layer's, so outputs stay O(1) whatever K is.
    let wt = uniform(&mut r, c.cout * fan_in, 1.0 / (fan_in as f32).sqrt());
    let b = uniform(&mut r, c.cout, 0.5);
    let spec = Conv2dSpec { ksize: c.k, stride: c.stride, pad: c.pad };
    let (oh, ow) = out_size(c.h, c.w, c.k, c.stride, c.pad).unwrap();
    let expect = cpu::conv2d(&x, [c.n, c.cin, c.h, c.w], &wt, &b, c.cout, spec);

    let gx = upload("x", &[c.n, c.cin, c.h, c.w], &x);
    let gw = upload("w", &[c.cout, c.cin, c.k, c.k], &wt);
    let gb = upload("b", &[c.cout], &b);
    for variant in variants(c.cout, c.k, c.stride, c.pad) {
        let out = zeros("out", &[c.n, c.cout, oh, ow]);
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                stride: c.stride,
                pad: c.pad,
                variant: Some(variant),
                ..Conv2dArgs::new(&gx, &gw, &gb, &out)
            },
        )
        .expect("conv2d launch");
        let got = run(&[&d], &out);
        let tol = dot_tolerance(fan_in);
        assert_close(
            &format!(
                "conv2d {variant:?} n{} cin{} cout{} {}x{} k{} s{} p{}",
                c.n, c.cin, c.cout, c.h, c.w, c.k, c.stride, c.pad
            ),
            &got,
            &expect,
            &[c.n, c.cout, oh, ow],
            tol,
            tol,
        );
    }
}

#[test]
fn conv3x3_single_channel_7x7() {
    check_plain(1, Case { n: 1, cin: 1, cout: 1, h: 7, w: 7, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv3x3_odd_channels_13x13() {
    check_plain(2, Case { n: 2, cin: 3, cout: 33, h: 13, w: 13, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv3x3_u_net_level0_28x28() {
    check_plain(3, Case { n: 3, cin: 32, cout: 64, h: 28, w: 28, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv3x3_wide_7x7() {
    check_plain(4, Case { n: 1, cin: 128, cout: 128, h: 7, w: 7, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv3x3_stride2_odd_size_batch17() {
    check_plain(5, Case { n: 17, cin: 33, cout: 3, h: 7, w: 7, k: 3, stride: 2, pad: 1 });
}

#[test]
fn conv3x3_stride2_13x13() {
    check_plain(6, Case { n: 2, cin: 64, cout: 64, h: 13, w: 13, k: 3, stride: 2, pad: 1 });
}

#[test]
fn conv3x3_stride2_28x28_downsample() {
    check_plain(7, Case { n: 2, cin: 32, cout: 32, h: 28, w: 28, k: 3, stride: 2, pad: 1 });
}

#[test]
fn conv3x3_no_padding() {
    check_plain(8, Case { n: 2, cin: 3, cout: 5, h: 9, w: 9, k: 3, stride: 1, pad: 0 });
}

#[test]
fn conv1x1_odd_channels_28x28() {
    check_plain(9, Case { n: 2, cin: 33, cout: 65, h: 28, w: 28, k: 1, stride: 1, pad: 0 });
}

#[test]
fn conv1x1_stride2_batch20() {
    check_plain(10, Case { n: 20, cin: 4, cout: 8, h: 13, w: 13, k: 1, stride: 2, pad: 0 });
}

#[test]
fn conv3x3_batch33_single_output_channel() {
    check_plain(11, Case { n: 33, cin: 32, cout: 1, h: 28, w: 28, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv_narrow_1x1_four_channels() {
    check_plain(12, Case { n: 3, cin: 40, cout: 4, h: 9, w: 9, k: 1, stride: 1, pad: 0 });
}

#[test]
fn conv_narrow_three_k_slices() {
    // 70 * 9 = 630 taps: the narrow kernel's weight staging runs three slices of 256.
    check_plain(13, Case { n: 2, cin: 70, cout: 2, h: 9, w: 9, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv_slim_tiles_u_net_level0() {
    // cout <= 32 runs `main` with 32-channel x 128-pixel tiles: the U-Net's level-0 ResNet conv.
    check_plain(14, Case { n: 3, cin: 32, cout: 32, h: 28, w: 28, k: 3, stride: 1, pad: 1 });
}

#[test]
fn conv_slim_tiles_partial_in_both_directions() {
    check_plain(15, Case { n: 2, cin: 19, cout: 17, h: 11, w: 11, k: 3, stride: 1, pad: 1 });
}

/// Every fusion at once, as an up-block ResNet uses them: two inputs (skip concat),
/// nearest-2x upsampling, the time embedding read from a slice of a wider tensor, a
/// residual, an output scale and SiLU.
#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_fused(
    seed: u64,
    n: usize,
    c1: usize,
    c2: usize,
    cout: usize,
    sh: usize,
    sw: usize,
    k: usize,
    upsample: bool,
    silu: bool,
) {
    let mut r = rng(seed);
    let cin = c1 + c2;
    let fan_in = cin * k * k;
    let x1 = uniform(&mut r, n * c1 * sh * sw, 1.0);
    let x2 = uniform(&mut r, n * c2 * sh * sw, 1.0);
    let wt = uniform(&mut r, cout * fan_in, 1.0 / (fan_in as f32).sqrt());
    let b = uniform(&mut r, cout, 0.5);
    let temb_width = cout + 7;
    let temb_offset = 5;
    let temb = uniform(&mut r, n * temb_width, 1.0);
    let (h, w) = if upsample { (2 * sh, 2 * sw) } else { (sh, sw) };
    let res = uniform(&mut r, n * cout * h * w, 1.0);
    let scale = 1.0 / 1.5;

    let mut input = cpu::concat_channels(&x1, &x2, n, c1, c2, sh * sw);
    if upsample {
        input = cpu::upsample_nearest2x(&input, n * cin, sh, sw);
    }
    let spec = Conv2dSpec { ksize: k, stride: 1, pad: k / 2 };
    let mut expect = cpu::conv2d(&input, [n, cin, h, w], &wt, &b, cout, spec);
    for (i, v) in expect.iter_mut().enumerate() {
        let img = i / (cout * h * w);
        let ch = (i / (h * w)) % cout;
        let y = (*v + temb[img * temb_width + temb_offset + ch] + res[i]) * scale;
        *v = if silu { cpu::silu(y) } else { y };
    }

    let gx1 = upload("x1", &[n, c1, sh, sw], &x1);
    let gx2 = upload("x2", &[n, c2, sh, sw], &x2);
    let gw = upload("w", &[cout, cin, k, k], &wt);
    let gb = upload("b", &[cout], &b);
    let gt = upload("temb", &[n, temb_width], &temb);
    let gr = upload("res", &[n, cout, h, w], &res);
    for variant in variants(cout, k, 1, k / 2) {
        let out = zeros("out", &[n, cout, h, w]);
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                x2: Some(&gx2),
                temb: Some(TembSlice { tensor: &gt, offset: temb_offset }),
                residual: Some(&gr),
                upsample,
                silu,
                out_scale: scale,
                variant: Some(variant),
                ..Conv2dArgs::new(&gx1, &gw, &gb, &out)
            },
        )
        .expect("fused conv2d launch");
        let got = run(&[&d], &out);
        let tol = dot_tolerance(fan_in);
        assert_close(
            &format!("fused conv2d {variant:?} n{n} {c1}+{c2}->{cout} {sh}x{sw} k{k}"),
            &got,
            &expect,
            &[n, cout, h, w],
            tol,
            tol,
        );
    }
}

#[test]
fn conv_fused_concat_temb_residual() {
    check_fused(20, 2, 64, 32, 64, 14, 14, 3, false, false);
}

#[test]
fn conv_fused_concat_upsample_odd() {
    check_fused(21, 3, 33, 1, 3, 7, 7, 3, true, true);
}

#[test]
fn conv_fused_upsample_batch17() {
    check_fused(22, 17, 16, 16, 32, 7, 7, 3, true, false);
}

#[test]
fn conv_fused_batch1_partial_runs() {
    // 13 columns: one full and one partial 8-pixel run per row for the direct kernel; 5
    // output channels: a partial channel block.
    check_fused(23, 1, 3, 4, 5, 13, 13, 3, false, true);
}

#[test]
fn conv_fused_1x1_two_inputs_upsample() {
    // The up blocks' shortcut shape (two inputs, 1x1), plus upsampling and odd sizes.
    check_fused(24, 2, 7, 9, 6, 5, 3, 1, true, false);
}

#[test]
fn conv_direct_wide_rows_non_square() {
    check_plain(25, Case { n: 2, cin: 5, cout: 9, h: 3, w: 21, k: 3, stride: 1, pad: 1 });
    check_plain(26, Case { n: 1, cin: 6, cout: 7, h: 17, w: 1, k: 3, stride: 1, pad: 1 });
    check_plain(27, Case { n: 3, cin: 2, cout: 11, h: 2, w: 9, k: 1, stride: 1, pad: 0 });
}

#[test]
fn conv_rejects_mismatched_shapes() {
    let x = zeros("x", &[1, 3, 8, 8]);
    let w = zeros("w", &[4, 5, 3, 3]);
    let b = zeros("b", &[4]);
    let out = zeros("out", &[1, 4, 8, 8]);
    let err = conv2d(gpu(), &Conv2dArgs::new(&x, &w, &b, &out)).err().expect("must fail");
    assert!(err.to_string().contains("input channels"), "{err}");

    let w = zeros("w", &[4, 3, 3, 3]);
    let wrong_out = zeros("out", &[1, 4, 7, 8]);
    let err = conv2d(gpu(), &Conv2dArgs::new(&x, &w, &b, &wrong_out)).err().expect("must fail");
    assert!(err.to_string().contains("[1, 4, 8, 8]"), "{err}");
}

/// GroupNorm (+ SiLU) folded into the direct kernels' reads: the statistics pass over the
/// (concatenated) input, then the conv normalising as it gathers, against the CPU's
/// group_norm followed by conv2d. Inputs have a mean far from zero, so normalising before
/// the zero padding (not after) matters at the borders.
#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_norm(
    seed: u64,
    n: usize,
    c1: usize,
    c2: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    groups: usize,
    silu: bool,
) {
    use diffusion_playground::gpu::conv2d::NormIn;
    use diffusion_playground::gpu::group_norm::{group_norm_stats, NORM_STATS};
    let mut r = rng(seed);
    let cin = c1 + c2;
    let fan_in = cin * k * k;
    let x1: Vec<f32> = uniform(&mut r, n * c1 * h * w, 1.0).iter().map(|v| v + 3.0).collect();
    let x2: Vec<f32> = uniform(&mut r, n * c2 * h * w, 2.0).iter().map(|v| v - 1.0).collect();
    let gamma = uniform(&mut r, cin, 1.5);
    let beta = uniform(&mut r, cin, 0.5);
    let wt = uniform(&mut r, cout * fan_in, 1.0 / (fan_in as f32).sqrt());
    let b = uniform(&mut r, cout, 0.5);
    let input = cpu::concat_channels(&x1, &x2, n, c1, c2, h * w);
    let normed = cpu::group_norm(&input, n, cin, h * w, groups, &gamma, &beta, 1e-5, silu);
    let spec = Conv2dSpec { ksize: k, stride: 1, pad: k / 2 };
    let expect = cpu::conv2d(&normed, [n, cin, h, w], &wt, &b, cout, spec);

    let gx1 = upload("x1", &[n, c1, h, w], &x1);
    let gx2 = (c2 > 0).then(|| upload("x2", &[n, c2, h, w], &x2));
    let gg = upload("gamma", &[cin], &gamma);
    let gbeta = upload("beta", &[cin], &beta);
    let gw = upload("w", &[cout, cin, k, k], &wt);
    let gb = upload("b", &[cout], &b);
    let stats = zeros("stats", &[n, cin, NORM_STATS]);
    let out = zeros("out", &[n, cout, h, w]);
    let x2_arg = gx2.as_ref();
    let s = group_norm_stats(gpu(), &gx1, x2_arg, &gg, &gbeta, &stats, groups, 1e-5).expect("stats launch");
    let d = conv2d(
        gpu(),
        &Conv2dArgs {
            x2: x2_arg,
            norm: Some(NormIn { stats: &stats, silu }),
            ..Conv2dArgs::new(&gx1, &gw, &gb, &out)
        },
    )
    .expect("normalising conv2d launch");
    let got = run(&[&s, &d], &out);
    // The conv's dot-product error, plus the GroupNorm's (normalised values carry ~1e-6).
    let tol = dot_tolerance(fan_in) + 1e-5;
    assert_close(
        &format!("norm conv2d n{n} {c1}+{c2}->{cout} {h}x{w} k{k} g{groups} silu{silu}"),
        &got,
        &expect,
        &[n, cout, h, w],
        tol,
        tol,
    );
}

#[test]
fn conv_norm_silu_3x3_concat_odd() {
    // Groups straddle the two inputs (9 + 6 channels, 5 groups of 3).
    check_norm(30, 2, 9, 6, 7, 13, 11, 3, 5, true);
}

#[test]
fn conv_norm_3x3_batch1_u_net_level0() {
    check_norm(31, 1, 32, 0, 32, 28, 28, 3, 8, true);
}

#[test]
fn conv_norm_1x1_no_silu_attention_qkv() {
    // The attention block's GroupNorm (no SiLU) feeding its q, k, v projection.
    check_norm(32, 3, 64, 0, 192, 7, 7, 1, 8, false);
}

#[test]
fn conv_norm_needs_the_direct_kernel() {
    use diffusion_playground::gpu::conv2d::NormIn;
    use diffusion_playground::gpu::group_norm::NORM_STATS;
    let x = zeros("x", &[1, 4, 8, 8]);
    let w = zeros("w", &[4, 4, 3, 3]);
    let b = zeros("b", &[4]);
    let stats = zeros("stats", &[1, 4, NORM_STATS]);
    let out = zeros("out", &[1, 4, 8, 8]);
    let args = Conv2dArgs {
        norm: Some(NormIn { stats: &stats, silu: true }),
        variant: Some(ConvVariant::Tiled),
        ..Conv2dArgs::new(&x, &w, &b, &out)
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("direct kernel"), "{err}");
    let wrong = zeros("stats", &[1, 4, 2]);
    let args =
        Conv2dArgs { norm: Some(NormIn { stats: &wrong, silu: true }), ..Conv2dArgs::new(&x, &w, &b, &out) };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("norm stats"), "{err}");
}
