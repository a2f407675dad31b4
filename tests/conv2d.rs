//! conv2d.wgsl against cpu::conv2d, plain and with every fusion.

mod common;

use common::*;
use diffusion_playground::cpu::{self, Conv2dSpec};
use diffusion_playground::gpu::conv2d::{conv2d, out_size, Conv2dArgs, ConvVariant, TembSlice};

/// Every kernel variant that can compute a convolution of this shape, whether it reads the
/// weight buffer (`Conv2dArgs::buffer_weights`) and its channel blocks per invocation
/// (`Conv2dArgs::channel_blocks`): the tiled kernel always; the direct one for 3x3/pad 1
/// (stride 1 or 2) or 1x1/pad 0 with its weights as texels in 1 and 2 blocks and from the
/// buffer; the narrow one for at most 4 output channels. Each case below is checked
/// against the CPU reference with each.
fn variants(cout: usize, k: usize, stride: usize, pad: usize) -> Vec<(ConvVariant, bool, Option<usize>)> {
    let mut v = vec![(ConvVariant::Tiled, false, None)];
    if ConvVariant::direct_applies(k, stride, pad) {
        v.extend(DIRECT_FORMS.map(|(buffer, blocks)| (ConvVariant::Direct, buffer, Some(blocks))));
    }
    if cout <= 4 {
        v.push((ConvVariant::Narrow, false, None));
    }
    v
}

/// The direct kernels' forms: (weights from the buffer, channel blocks per invocation).
const DIRECT_FORMS: [(bool, usize); 3] = [(false, 1), (false, 2), (true, 2)];

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
    for (variant, buffer_weights, channel_blocks) in variants(c.cout, c.k, c.stride, c.pad) {
        let out = zeros("out", &[c.n, c.cout, oh, ow]);
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                stride: c.stride,
                pad: c.pad,
                variant: Some(variant),
                buffer_weights,
                channel_blocks,
                ..Conv2dArgs::new(&gx, &gw, &gb, &out)
            },
        )
        .expect("conv2d launch");
        let got = run(&[&d], &out);
        let tol = dot_tolerance(fan_in);
        assert_close(
            &format!(
                "conv2d {variant:?} buffer weights {buffer_weights} blocks {channel_blocks:?} n{} cin{} cout{} {}x{} k{} s{} p{}",
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
    for (variant, buffer_weights, channel_blocks) in variants(cout, k, 1, k / 2) {
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
                buffer_weights,
                channel_blocks,
                ..Conv2dArgs::new(&gx1, &gw, &gb, &out)
            },
        )
        .expect("fused conv2d launch");
        let got = run(&[&d], &out);
        let tol = dot_tolerance(fan_in);
        assert_close(
            &format!("fused conv2d {variant:?} buffer weights {buffer_weights} blocks {channel_blocks:?} n{n} {c1}+{c2}->{cout} {sh}x{sw} k{k}"),
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
    use diffusion_playground::gpu::conv2d::{NormIn, NormStats};
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
    let x2_arg = gx2.as_ref();
    for (buffer_weights, blocks) in DIRECT_FORMS {
        let out = zeros("out", &[n, cout, h, w]);
        let s =
            group_norm_stats(gpu(), &gx1, x2_arg, &gg, &gbeta, &stats, groups, 1e-5).expect("stats launch");
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                x2: x2_arg,
                norm: Some(NormIn { stats: NormStats::Pass(&stats), silu }),
                buffer_weights,
                channel_blocks: Some(blocks),
                ..Conv2dArgs::new(&gx1, &gw, &gb, &out)
            },
        )
        .expect("normalising conv2d launch");
        let got = run(&[&s, &d], &out);
        // The conv's dot-product error, plus the GroupNorm's (normalised values carry ~1e-6).
        let tol = dot_tolerance(fan_in) + 1e-5;
        assert_close(
            &format!(
                "norm conv2d buffer weights {buffer_weights} blocks {blocks} n{n} {c1}+{c2}->{cout} {h}x{w} k{k} g{groups} silu{silu}"
            ),
            &got,
            &expect,
            &[n, cout, h, w],
            tol,
            tol,
        );
    }
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
    use diffusion_playground::gpu::conv2d::{NormIn, NormStats};
    use diffusion_playground::gpu::group_norm::NORM_STATS;
    let x = zeros("x", &[1, 4, 8, 8]);
    let w = zeros("w", &[4, 4, 3, 3]);
    let b = zeros("b", &[4]);
    let stats = zeros("stats", &[1, 4, NORM_STATS]);
    let out = zeros("out", &[1, 4, 8, 8]);
    let args = Conv2dArgs {
        norm: Some(NormIn { stats: NormStats::Pass(&stats), silu: true }),
        variant: Some(ConvVariant::Tiled),
        ..Conv2dArgs::new(&x, &w, &b, &out)
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("direct kernel"), "{err}");
    let wrong = zeros("stats", &[1, 4, 2]);
    let args = Conv2dArgs {
        norm: Some(NormIn { stats: NormStats::Pass(&wrong), silu: true }),
        ..Conv2dArgs::new(&x, &w, &b, &out)
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("norm stats"), "{err}");
}

/// A producing convolution of the partial-statistics chain: its input, weights and output.
struct Producer {
    k: usize,
    stride: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    variant: ConvVariant,
}

/// Runs `p` on a random input on the CPU and the GPU, the GPU output carrying partial
/// statistics; returns (CPU output, GPU tensor, its dispatch). The bias is offset by
/// `offset` so that channel means are far from zero (where sum-of-squares variance fails).
fn produce(
    r: &mut rand::rngs::StdRng,
    n: usize,
    p: &Producer,
    offset: f32,
) -> (Vec<f32>, diffusion_playground::gpu::Tensor, diffusion_playground::gpu::Dispatch) {
    use diffusion_playground::gpu::conv2d::stats_tiles;
    use diffusion_playground::gpu::Tensor;
    let fan_in = p.cin * p.k * p.k;
    let pad = p.k / 2;
    let x = uniform(r, n * p.cin * p.h * p.w, 1.0);
    let wt = uniform(r, p.cout * fan_in, 1.0 / (fan_in as f32).sqrt());
    let b: Vec<f32> = uniform(r, p.cout, 0.5).iter().map(|v| v + offset).collect();
    let spec = Conv2dSpec { ksize: p.k, stride: p.stride, pad };
    let (oh, ow) = out_size(p.h, p.w, p.k, p.stride, pad).unwrap();
    let expect = cpu::conv2d(&x, [n, p.cin, p.h, p.w], &wt, &b, p.cout, spec);
    let shape = [n, p.cout, oh, ow];
    let tiles = stats_tiles(Some(p.variant), p.k, p.stride, pad, shape);
    assert!(tiles > 0);
    let out = Tensor::with_stats(gpu(), "produced", &shape, tiles).expect("alloc");
    let gx = upload("x", &[n, p.cin, p.h, p.w], &x);
    let gw = upload("w", &[p.cout, p.cin, p.k, p.k], &wt);
    let gb = upload("b", &[p.cout], &b);
    let d = conv2d(
        gpu(),
        &Conv2dArgs {
            stride: p.stride,
            pad,
            variant: Some(p.variant),
            ..Conv2dArgs::new(&gx, &gw, &gb, &out)
        },
    )
    .expect("producer launch");
    (expect, out, d)
}

/// (mean, variance) of group g of image i of `x` [n, c, hw] in f64: the reference.
fn group_moments(x: &[f64], c: usize, hw: usize, groups: usize, i: usize, g: usize) -> (f64, f64) {
    let cg = c / groups;
    let vals = &x[(i * c + g * cg) * hw..(i * c + (g + 1) * cg) * hw];
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
    (mean, var)
}

/// Partial GroupNorm statistics written in the producers' epilogues and merged by the
/// consumer (`NormStats::Partials`): (1) the slots of each producer, merged on the CPU with
/// Chan's formula, give each (image, group)'s mean and variance of the CPU reference
/// output; (2) the consuming convolution, merging them itself, matches the CPU's
/// group_norm (+ SiLU) and conv2d of the (concatenated) producer outputs. Producers' means
/// sit at `offset` = 20, about 40x their spread, where E[x^2] - E[x]^2 in f32 would lose
/// about 3 of the variance's 7 digits.
#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_partials(
    seed: u64,
    n: usize,
    p1: Producer,
    p2: Option<Producer>,
    cout: usize,
    k: usize,
    groups: usize,
    silu: bool,
) {
    use diffusion_playground::gpu::conv2d::{NormIn, NormStats};
    let mut r = rng(seed);
    let offset = 20.0;
    let (e1, t1, d1) = produce(&mut r, n, &p1, offset);
    let produced2 = p2.as_ref().map(|p| produce(&mut r, n, p, -offset));
    let (c1, c2) = (p1.cout, p2.as_ref().map_or(0, |p| p.cout));
    let [_, _, h, w] = [t1.shape()[0], t1.shape()[1], t1.shape()[2], t1.shape()[3]];
    let cin = c1 + c2;

    // (1) The slots against the reference moments, per producer on its own channels.
    let mut dispatches = vec![&d1];
    if let Some((_, _, d2)) = &produced2 {
        dispatches.push(d2);
    }
    gpu().run(&dispatches).expect("producers");
    let mut producers = vec![(&e1, &t1)];
    if let Some((e2, t2, _)) = &produced2 {
        producers.push((e2, t2));
    }
    for (expect, t) in producers {
        let c = t.shape()[1];
        let tiles = t.stats_tiles();
        let slots = pollster::block_on(t.read_stats(gpu())).expect("read stats");
        assert_eq!(slots.len(), n * c * tiles * 3);
        let reference: Vec<f64> = expect.iter().map(|&v| v as f64).collect();
        // Per channel (one "group" per channel) and per group of 3 channels, which crosses
        // the direct kernel's 4-channel blocks.
        for cg in [1, 3] {
            if c % cg != 0 {
                continue;
            }
            for i in 0..n {
                for g in 0..c / cg {
                    let channels = &slots[(i * c + g * cg) * tiles * 3..(i * c + (g + 1) * cg) * tiles * 3];
                    let (cnt, mean, m2) = merge_slots(channels);
                    let (rm, rv) = group_moments(&reference, c, h * w, c / cg, i, g);
                    assert_eq!(cnt as usize, cg * h * w, "count of image {i} group {g}/{cg}");
                    // The GPU output differs from the CPU's by the dot-product error; the
                    // merge itself adds ~1e-7 relative.
                    assert!(
                        (mean - rm).abs() <= 1e-5 * rm.abs().max(1.0),
                        "mean {mean} vs {rm} (image {i} group {g}/{cg})"
                    );
                    let var = m2 / cnt;
                    assert!(
                        (var - rv).abs() <= 1e-3 * rv,
                        "variance {var} vs {rv} (image {i} group {g}/{cg})"
                    );
                }
            }
        }
    }

    // (2) The consumer merging them.
    let mut cat = e1.clone();
    if let Some((e2, _, _)) = &produced2 {
        cat = cpu::concat_channels(&e1, e2, n, c1, c2, h * w);
    }
    let gamma = uniform(&mut r, cin, 1.5);
    let beta = uniform(&mut r, cin, 0.5);
    let fan_in = cin * k * k;
    let wt = uniform(&mut r, cout * fan_in, 1.0 / (fan_in as f32).sqrt());
    let b = uniform(&mut r, cout, 0.5);
    let normed = cpu::group_norm(&cat, n, cin, h * w, groups, &gamma, &beta, 1e-5, silu);
    let expect =
        cpu::conv2d(&normed, [n, cin, h, w], &wt, &b, cout, Conv2dSpec { ksize: k, stride: 1, pad: k / 2 });
    let affine: Vec<f32> = gamma.iter().chain(&beta).copied().collect();
    let gaffine = upload("affine", &[2 * cin], &affine);
    let gw = upload("w", &[cout, cin, k, k], &wt);
    let gb = upload("b", &[cout], &b);
    let out = zeros("out", &[n, cout, h, w]);
    let d = conv2d(
        gpu(),
        &Conv2dArgs {
            x2: produced2.as_ref().map(|(_, t, _)| t),
            norm: Some(NormIn { stats: NormStats::Partials { affine: &gaffine, groups, eps: 1e-5 }, silu }),
            ..Conv2dArgs::new(&t1, &gw, &gb, &out)
        },
    )
    .expect("consumer launch");
    let got = run(&[&d], &out);
    // The conv's dot-product error plus the normalised inputs': each carries the producer's
    // error (~1e-6 of |x| ~ 20) over std ~0.5.
    let tol = dot_tolerance(fan_in) + 1e-4;
    assert_close(
        &format!("partials conv2d n{n} {c1}+{c2}->{cout} {h}x{w} k{k} g{groups} silu{silu}"),
        &got,
        &expect,
        &[n, cout, h, w],
        tol,
        tol,
    );
}

#[test]
fn partials_direct3x3_batch1_odd_partial_tiles() {
    // 13x11: 26 runs of 8 pixels in tiles of 8 runs (the last partial, the last run of
    // each row 3 pixels); groups of 6 channels span two 4-channel blocks.
    let p = Producer { k: 3, stride: 1, cin: 5, cout: 18, h: 13, w: 11, variant: ConvVariant::Direct };
    check_partials(40, 1, p, None, 7, 3, 3, true);
}

#[test]
fn partials_concat_tiled_stride2_and_direct1x1() {
    // x1 from the tiled kernel, stride 2 (23x23 -> 12x12: 144 pixels, two tiles of 128 per
    // image), x2 from the direct 1x1 kernel; 15 channels in 3 groups of 5, the middle one
    // straddling x1 (9 channels) and x2. Batch 3.
    let p1 = Producer { k: 3, stride: 2, cin: 4, cout: 9, h: 23, w: 23, variant: ConvVariant::Tiled };
    let p2 = Producer { k: 1, stride: 1, cin: 3, cout: 6, h: 12, w: 12, variant: ConvVariant::Direct };
    check_partials(41, 3, p1, Some(p2), 10, 1, 3, false);
}

#[test]
fn partials_direct_stride2_downsample() {
    // Downsample2D on the direct stride-2 kernel: 28x28 -> 14x14 and 13x13 -> 7x7 (odd:
    // the last window column past the input), writing partial statistics.
    let p = Producer { k: 3, stride: 2, cin: 6, cout: 8, h: 28, w: 28, variant: ConvVariant::Direct };
    check_partials(43, 2, p, None, 5, 3, 4, true);
    let p = Producer { k: 3, stride: 2, cin: 5, cout: 12, h: 13, w: 13, variant: ConvVariant::Direct };
    check_partials(44, 1, p, None, 7, 1, 3, false);
}

#[test]
fn partials_u_net_level0_shapes() {
    // The shipped model's 28x28 level at batch 2: 32 channels in 8 groups, 3x3 both ways.
    let p = Producer { k: 3, stride: 1, cin: 32, cout: 32, h: 28, w: 28, variant: ConvVariant::Direct };
    check_partials(42, 2, p, None, 32, 3, 8, true);
}

#[test]
fn partials_missing_are_refused() {
    use diffusion_playground::gpu::conv2d::{NormIn, NormStats};
    let x = zeros("x", &[1, 4, 8, 8]);
    let w = zeros("w", &[4, 4, 3, 3]);
    let b = zeros("b", &[4]);
    let affine = zeros("affine", &[8]);
    let out = zeros("out", &[1, 4, 8, 8]);
    let args = Conv2dArgs {
        norm: Some(NormIn {
            stats: NormStats::Partials { affine: &affine, groups: 2, eps: 1e-5 },
            silu: true,
        }),
        ..Conv2dArgs::new(&x, &w, &b, &out)
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("no partial statistics"), "{err}");
}

/// A ResNet's conv2 with its 1x1 shortcut folded in (`Conv2dArgs::with_shortcut`): conv2
/// of GroupNorm + SiLU of `h` plus the shortcut of (`xs1`, `xs2`) as stored, scaled,
/// against the CPU's group_norm, conv2d (3x3) and conv2d (1x1) of the concat. The norm's
/// statistics come from a pass or (`partials`) from the producer of `h`.
#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_shortcut(
    seed: u64,
    n: usize,
    ch: usize,
    cs1: usize,
    cs2: usize,
    h: usize,
    w: usize,
    groups: usize,
    partials: bool,
) {
    use diffusion_playground::gpu::conv2d::{pack_shortcut, NormIn, NormStats, ShortcutIn};
    use diffusion_playground::gpu::group_norm::{group_norm_stats, NORM_STATS};
    use diffusion_playground::gpu::Dispatch;
    let mut r = rng(seed);
    let cout = ch;
    // h: produced by a conv writing partial statistics, or uploaded (then a stats pass).
    let (hv, gh, producer) = if partials {
        let p = Producer { k: 3, stride: 1, cin: 3, cout: ch, h, w, variant: ConvVariant::Direct };
        let (e, t, d) = produce(&mut r, n, &p, 5.0);
        (e, t, Some(d))
    } else {
        let v: Vec<f32> = uniform(&mut r, n * ch * h * w, 1.0).iter().map(|v| v + 3.0).collect();
        let t = upload("h", &[n, ch, h, w], &v);
        (v, t, None)
    };
    let xs1 = uniform(&mut r, n * cs1 * h * w, 2.0);
    let xs2 = uniform(&mut r, n * cs2 * h * w, 1.0);
    let cs = cs1 + cs2;
    let gamma = uniform(&mut r, ch, 1.5);
    let beta = uniform(&mut r, ch, 0.5);
    let w2 = uniform(&mut r, cout * ch * 9, 1.0 / ((ch * 9) as f32).sqrt());
    let b2 = uniform(&mut r, cout, 0.5);
    let ws = uniform(&mut r, cout * cs, 1.0 / (cs as f32).sqrt());
    let bs = uniform(&mut r, cout, 0.5);
    let scale = 0.5;

    let normed = cpu::group_norm(&hv, n, ch, h * w, groups, &gamma, &beta, 1e-5, true);
    let main =
        cpu::conv2d(&normed, [n, ch, h, w], &w2, &b2, cout, Conv2dSpec { ksize: 3, stride: 1, pad: 1 });
    let cat = cpu::concat_channels(&xs1, &xs2, n, cs1, cs2, h * w);
    let short = cpu::conv2d(&cat, [n, cs, h, w], &ws, &bs, cout, Conv2dSpec { ksize: 1, stride: 1, pad: 0 });
    let expect: Vec<f32> = main.iter().zip(&short).map(|(a, b)| (a + b) * scale).collect();

    let gx1 = upload("xs1", &[n, cs1, h, w], &xs1);
    let gx2 = (cs2 > 0).then(|| upload("xs2", &[n, cs2, h, w], &xs2));
    let packed = pack_shortcut(&w2, &ws, cout);
    let gw = upload("w", &[cout, ch * 9 + cs], &packed);
    let bias: Vec<f32> = b2.iter().zip(&bs).map(|(a, b)| a + b).collect();
    let gb = upload("b", &[cout], &bias);
    let affine: Vec<f32> = gamma.iter().chain(&beta).copied().collect();
    let gaffine = upload("affine", &[2 * ch], &affine);
    let gg = upload("gamma", &[ch], &gamma);
    let gbeta = upload("beta", &[ch], &beta);
    let stats = zeros("stats", &[n, ch, NORM_STATS]);
    let pass = (!partials)
        .then(|| group_norm_stats(gpu(), &gh, None, &gg, &gbeta, &stats, groups, 1e-5).expect("stats"));
    for (buffer_weights, blocks) in DIRECT_FORMS {
        let out = zeros("out", &[n, cout, h, w]);
        let norm = match pass {
            None => NormStats::Partials { affine: &gaffine, groups, eps: 1e-5 },
            Some(_) => NormStats::Pass(&stats),
        };
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                norm: Some(NormIn { stats: norm, silu: true }),
                out_scale: scale,
                buffer_weights,
                channel_blocks: Some(blocks),
                ..Conv2dArgs::with_shortcut(&gh, &gw, &gb, &out, ShortcutIn { x: &gx1, x2: gx2.as_ref() })
            },
        )
        .expect("conv2d with shortcut launch");
        let ops: Vec<&Dispatch> = producer.iter().chain(pass.iter()).chain([&d]).collect();
        let got = run(&ops, &out);
        let tol = dot_tolerance(ch * 9 + cs) + 1e-4;
        assert_close(
            &format!(
                "conv2d + shortcut buffer weights {buffer_weights} blocks {blocks} n{n} h{ch} s{cs1}+{cs2} {h}x{w} g{groups} partials{partials}"
            ),
            &got,
            &expect,
            &[n, cout, h, w],
            tol,
            tol,
        );
    }
}

#[test]
fn shortcut_folded_up_block_shape_partials() {
    // An up block's ResNet: the shortcut reads hidden state and skip (128 + 64 -> 64 @7
    // scaled down: 12 + 7 channels), odd size, partial runs, batch 2.
    check_shortcut(50, 2, 12, 12, 7, 7, 9, 4, true);
}

#[test]
fn shortcut_folded_one_input_batch1_stats_pass() {
    // A down block's first ResNet (cin != cout, one input), batch 1, 13x11 (the last run of
    // each row 3 pixels wide), statistics from a pass.
    check_shortcut(51, 1, 8, 5, 0, 13, 11, 2, false);
}

#[test]
fn shortcut_folded_u_net_level0_batch3() {
    // The shipped model's 28x28 level: 64 + 32 -> 32 channels, 8 groups, batch 3.
    check_shortcut(52, 3, 32, 64, 32, 28, 28, 8, true);
}

#[test]
fn shortcut_folded_refuses_what_it_cannot_do() {
    use diffusion_playground::gpu::conv2d::ShortcutIn;
    let x = zeros("x", &[1, 4, 8, 8]);
    let s = zeros("s", &[1, 3, 8, 8]);
    let b = zeros("b", &[4]);
    let out = zeros("out", &[1, 4, 8, 8]);
    // The unpacked [cout, cin, 3, 3] weight.
    let w = zeros("w", &[4, 4, 3, 3]);
    let args = Conv2dArgs::with_shortcut(&x, &w, &b, &out, ShortcutIn { x: &s, x2: None });
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("packed weight [cout, 39]"), "{err}");
    let w = zeros("w", &[4, 39]);
    let args = Conv2dArgs {
        variant: Some(ConvVariant::Tiled),
        ..Conv2dArgs::with_shortcut(&x, &w, &b, &out, ShortcutIn { x: &s, x2: None })
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("direct kernel"), "{err}");
    let args = Conv2dArgs {
        residual: Some(&out),
        ..Conv2dArgs::with_shortcut(&x, &w, &b, &out, ShortcutIn { x: &s, x2: None })
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("x2 and residual slots"), "{err}");
    let wrong = zeros("s", &[1, 3, 7, 8]);
    let args = Conv2dArgs::with_shortcut(&x, &w, &b, &out, ShortcutIn { x: &wrong, x2: None });
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// Upsample2D's conv on the stored grid (`ConvVariant::Up2`, the packed 2x2 kernels)
/// against the CPU's nearest 2x upsample followed by a 3x3 conv, with its partial
/// statistics against the reference output's moments.
fn check_up2(seed: u64, n: usize, cin: usize, cout: usize, h: usize, w: usize) {
    use diffusion_playground::gpu::conv2d::{pack_up2, stats_tiles};
    use diffusion_playground::gpu::Tensor;
    let mut r = rng(seed);
    let x = uniform(&mut r, n * cin * h * w, 1.0);
    let wt = uniform(&mut r, cout * cin * 9, 1.0 / ((cin * 9) as f32).sqrt());
    // Channel means far from zero, as the statistics meet them in the model.
    let b: Vec<f32> = uniform(&mut r, cout, 0.5).iter().map(|v| v + 4.0).collect();
    let up = cpu::upsample_nearest2x(&x, n * cin, h, w);
    let spec = Conv2dSpec { ksize: 3, stride: 1, pad: 1 };
    let expect = cpu::conv2d(&up, [n, cin, 2 * h, 2 * w], &wt, &b, cout, spec);

    let shape = [n, cout, 2 * h, 2 * w];
    let gx = upload("x", &[n, cin, h, w], &x);
    let gw = upload("w", &[cout, cin * 16], &pack_up2(&wt, cout, cin));
    let gb = upload("b", &[cout], &b);
    for (buffer_weights, blocks) in DIRECT_FORMS {
        let out = Tensor::with_stats(gpu(), "out", &shape, stats_tiles(None, 3, 1, 1, shape)).expect("alloc");
        let d = conv2d(
            gpu(),
            &Conv2dArgs {
                upsample: true,
                pad: 1,
                variant: Some(ConvVariant::Up2),
                buffer_weights,
                channel_blocks: Some(blocks),
                ..Conv2dArgs::new(&gx, &gw, &gb, &out)
            },
        )
        .expect("Up2 launch");
        let got = run(&[&d], &out);
        // Each packed weight sums up to 4 of the kernel's: the same dot products, regrouped.
        let tol = dot_tolerance(cin * 9) + 1e-5;
        let what = format!(
            "Up2 conv2d buffer weights {buffer_weights} blocks {blocks} n{n} {cin}->{cout} {h}x{w} -> {}x{}",
            2 * h,
            2 * w
        );
        assert_close(&what, &got, &expect, &shape, tol, tol);
        assert_partials_match(&what, &out, &expect);
    }
}

#[test]
fn up2_u_net_7_to_14() {
    // The shipped model's first Upsample2D: 128 channels, 7x7 -> 14x14 (runs of 8: the
    // second 6 pixels wide), batch 2.
    check_up2(60, 2, 128, 128, 7, 7);
}

#[test]
fn up2_odd_sizes_batch1() {
    // 5x3 -> 10x6 (one partial run per row, the stored grid's edges on both sides), odd
    // channel counts (the last 4-channel block partial).
    check_up2(61, 1, 5, 7, 5, 3);
}

#[test]
fn up2_wide_rows_batch3() {
    // 9x13 -> 18x26 (four runs per row, the last 2 pixels wide).
    check_up2(62, 3, 6, 9, 9, 13);
}

#[test]
fn up2_refuses_what_it_cannot_do() {
    let x = zeros("x", &[1, 4, 5, 5]);
    let b = zeros("b", &[4]);
    let out = zeros("out", &[1, 4, 10, 10]);
    let unpacked = zeros("w", &[4, 4, 3, 3]);
    let args = Conv2dArgs {
        upsample: true,
        variant: Some(ConvVariant::Up2),
        ..Conv2dArgs::new(&x, &unpacked, &b, &out)
    };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("packed weight [cout, 64]"), "{err}");
    let packed = zeros("w", &[4, 64]);
    let same = zeros("out", &[1, 4, 5, 5]);
    let args =
        Conv2dArgs { pad: 1, variant: Some(ConvVariant::Up2), ..Conv2dArgs::new(&x, &packed, &b, &same) };
    let err = conv2d(gpu(), &args).err().expect("must fail");
    assert!(err.to_string().contains("upsampled 3x3"), "{err}");
}

#[test]
fn stride2_with_two_inputs_falls_back_to_the_tile() {
    // The stride-2 direct kernel reads one plain input; asked for no variant, a stride-2
    // conv of a concat runs on the tiled kernel rather than failing.
    let (n, c1, c2, cout, h, w) = (2, 3, 4, 6, 11, 9);
    let mut r = rng(70);
    let x1 = uniform(&mut r, n * c1 * h * w, 1.0);
    let x2 = uniform(&mut r, n * c2 * h * w, 1.0);
    let wt = uniform(&mut r, cout * (c1 + c2) * 9, 0.3);
    let b = uniform(&mut r, cout, 0.5);
    let cat = cpu::concat_channels(&x1, &x2, n, c1, c2, h * w);
    let spec = Conv2dSpec { ksize: 3, stride: 2, pad: 1 };
    let expect = cpu::conv2d(&cat, [n, c1 + c2, h, w], &wt, &b, cout, spec);
    let (oh, ow) = out_size(h, w, 3, 2, 1).unwrap();
    let (gx1, gx2) = (upload("x1", &[n, c1, h, w], &x1), upload("x2", &[n, c2, h, w], &x2));
    let gw = upload("w", &[cout, c1 + c2, 3, 3], &wt);
    let gb = upload("b", &[cout], &b);
    let out = zeros("out", &[n, cout, oh, ow]);
    let args = Conv2dArgs { x2: Some(&gx2), stride: 2, pad: 1, ..Conv2dArgs::new(&gx1, &gw, &gb, &out) };
    let d = conv2d(gpu(), &args).expect("stride-2 concat launch");
    let tol = dot_tolerance((c1 + c2) * 9);
    assert_close(
        "stride-2 concat, automatic variant",
        &run(&[&d], &out),
        &expect,
        &[n, cout, oh, ow],
        tol,
        tol,
    );
}

#[test]
fn weights_are_texels_where_they_fit_and_the_buffer_past_the_texture_limit() {
    // 1x1 convs, 2 output channels, 3x5 pixels: K = 40 fits a texture row; K = 8 more than
    // the device's largest texture side (8,192 under WebGPU's default limits) does not, so
    // that kernel reads the buffer. Both match the CPU, and the plan statistics count the
    // texture's bytes, not the buffer's.
    let past = gpu().max_texture_side() as usize + 8;
    for (cin, texels) in [(40usize, true), (past, false)] {
        let mut r = rng(70 + cin as u64);
        let (n, cout, h, w) = (1, 2, 3, 5);
        let x = uniform(&mut r, n * cin * h * w, 1.0);
        let wt = uniform(&mut r, cout * cin, 1.0 / (cin as f32).sqrt());
        let b = uniform(&mut r, cout, 0.5);
        let spec = Conv2dSpec { ksize: 1, stride: 1, pad: 0 };
        let expect = cpu::conv2d(&x, [n, cin, h, w], &wt, &b, cout, spec);
        let gx = upload("x", &[n, cin, h, w], &x);
        let gw = upload("w", &[cout, cin, 1, 1], &wt);
        let gb = upload("b", &[cout], &b);
        let out = zeros("out", &[n, cout, h, w]);
        let args = Conv2dArgs { variant: Some(ConvVariant::Direct), ..Conv2dArgs::new(&gx, &gw, &gb, &out) };
        let d = conv2d(gpu(), &args).expect("conv2d launch");
        assert_eq!(d.label().contains("WEIGHT_TEXTURE=1"), texels, "{}", d.label());
        let got = run(&[&d], &out);
        let tol = dot_tolerance(cin);
        assert_close(&format!("1x1 conv, K = {cin}"), &got, &expect, &[n, cout, h, w], tol, tol);
        // One texel per (tap, 4 channels): cin x 1 texels of 16 bytes, against the buffer's
        // cout * cin * 4 bytes.
        let weight_bytes = if texels { cin as u64 * 16 } else { (cout * cin * 4) as u64 };
        let others = [&gx, &gb].iter().map(|t| t.buffer().size()).sum::<u64>();
        assert_eq!(d.cost().bytes_read, weight_bytes + others, "K = {cin}");
    }
}

#[test]
fn rewritten_weights_are_repacked_for_the_next_plan() {
    // A plan made after `Tensor::write` reads the new weights, not a texture of the old.
    let mut r = rng(72);
    let (n, cin, cout, h, w) = (1, 3, 5, 4, 6);
    let x = uniform(&mut r, n * cin * h * w, 1.0);
    let b = uniform(&mut r, cout, 0.5);
    let gx = upload("x", &[n, cin, h, w], &x);
    let gb = upload("b", &[cout], &b);
    let gw = zeros("w", &[cout, cin, 3, 3]);
    let spec = Conv2dSpec { ksize: 3, stride: 1, pad: 1 };
    for round in 0..2 {
        let wt = uniform(&mut r, cout * cin * 9, 0.3);
        gw.write(gpu(), &wt).expect("write");
        let out = zeros("out", &[n, cout, h, w]);
        let d = conv2d(
            gpu(),
            &Conv2dArgs { variant: Some(ConvVariant::Direct), ..Conv2dArgs::new(&gx, &gw, &gb, &out) },
        )
        .expect("conv2d launch");
        assert!(d.label().contains("WEIGHT_TEXTURE=1"), "{}", d.label());
        let got = run(&[&d], &out);
        let expect = cpu::conv2d(&x, [n, cin, h, w], &wt, &b, cout, spec);
        let tol = dot_tolerance(cin * 9);
        assert_close(&format!("round {round}"), &got, &expect, &[n, cout, h, w], tol, tol);
    }
}
