//! attention.wgsl (core and the whole block), concat.wgsl and upsample.wgsl against the
//! CPU references.

mod common;

use common::*;
use diffusion_playground::cpu::{self, Conv2dSpec};
use diffusion_playground::gpu::attention::{
    attention, attention_in_pairs, attention_out, self_attention, stats_tiles, AttentionScratch,
    AttentionWeights,
};
use diffusion_playground::gpu::concat::concat;
use diffusion_playground::gpu::upsample::upsample_nearest2x;
use diffusion_playground::gpu::Tensor;

fn check_attention(seed: u64, n: usize, c: usize, h: usize, w: usize, heads: usize, magnitude: f32) {
    let mut r = rng(seed);
    let l = h * w;
    let qkv = uniform(&mut r, n * 3 * c * l, magnitude);
    let expect = cpu::attention(&qkv, n, c, l, heads);
    let gq = upload("qkv", &[n, 3 * c, h, w], &qkv);
    // A score is a d-term dot product of size up to smax = d * magnitude^2 / sqrt(d); its
    // rounding error (~sqrt(d) eps smax) becomes a relative error of the softmax weights,
    // and the output is a weighted mean of values of size `magnitude`.
    let d_head = (c / heads) as f32;
    let smax = d_head.sqrt() * magnitude * magnitude;
    let tol = 8.0 * f32::EPSILON * magnitude * (d_head.sqrt() * (1.0 + smax) + (l as f32).sqrt());
    // One query per invocation, and two (`Gpu::attention_pairs`: the last pair of a map
    // often half outside it).
    for pairs in [false, true] {
        let out = zeros("out", &[n, c, h, w]);
        let d = attention_in_pairs(gpu(), &gq, &out, heads, pairs).expect("launch");
        let got = run(&[&d], &out);
        assert_close(
            &format!("attention n{n} c{c} {h}x{w} heads{heads} magnitude{magnitude} pairs {pairs}"),
            &got,
            &expect,
            &[n, c, h, w],
            tol,
            tol,
        );
    }
}

#[test]
fn attention_head_dim8_14x14() {
    check_attention(1, 2, 64, 14, 14, 8, 1.0);
}

#[test]
fn attention_single_head_7x7() {
    check_attention(2, 1, 8, 7, 7, 1, 1.0);
}

#[test]
fn attention_head_dim33_batch17() {
    check_attention(3, 17, 33, 7, 7, 1, 1.0);
}

#[test]
fn attention_head_dim128() {
    check_attention(4, 2, 128, 7, 7, 1, 1.0);
}

#[test]
fn attention_many_tiles_28x28() {
    check_attention(5, 1, 64, 28, 28, 2, 1.0);
}

#[test]
fn attention_head_dim4_13x13() {
    check_attention(6, 3, 12, 13, 13, 3, 1.0);
}

#[test]
fn attention_large_logits_stay_finite() {
    // Scores up to ~200: a softmax without the running max would overflow exp.
    check_attention(7, 2, 32, 7, 7, 2, 5.0);
}

#[test]
fn attention_rejects_head_dim_above_capacity() {
    let qkv = zeros("qkv", &[1, 3 * 256, 2, 2]);
    let out = zeros("out", &[1, 256, 2, 2]);
    let err = attention(gpu(), &qkv, &out, 1).err().expect("must fail");
    assert!(err.to_string().contains("head dimension 256"), "{err}");
}

/// The fused core + output projection + residual + scale (`attention_out`) against the
/// CPU's attention followed by the projection; with `stats`, its partial statistics
/// against each channel's mean and variance of the CPU output.
#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_attention_out(seed: u64, n: usize, c: usize, h: usize, w: usize, heads: usize, stats: bool) {
    let mut r = rng(seed);
    let l = h * w;
    let qkv = uniform(&mut r, n * 3 * c * l, 1.0);
    let wo = uniform(&mut r, c * c, 1.0 / (c as f32).sqrt());
    let bo = uniform(&mut r, c, 0.5);
    // A residual far from zero: the statistics must survive a large mean.
    let res: Vec<f32> = uniform(&mut r, n * c * l, 1.0).iter().map(|v| v + 10.0).collect();
    let scale = 0.5;
    let core = cpu::attention(&qkv, n, c, l, heads);
    let projected = cpu::conv2d(&core, [n, c, h, w], &wo, &bo, c, Conv2dSpec { ksize: 1, stride: 1, pad: 0 });
    let expect: Vec<f32> = projected.iter().zip(&res).map(|(p, r)| (p + r) * scale).collect();
    let gq = upload("qkv", &[n, 3 * c, h, w], &qkv);
    let gw = upload("out_w", &[c, c, 1, 1], &wo);
    let gb = upload("out_b", &[c], &bo);
    let gr = upload("residual", &[n, c, h, w], &res);
    let tiles = if stats { stats_tiles(l) } else { 0 };
    let out = Tensor::with_stats(gpu(), "out", &[n, c, h, w], tiles).expect("alloc");
    let d = attention_out(gpu(), &gq, &gw, &gb, &gr, &out, heads, scale).expect("launch");
    let got = run(&[&d], &out);
    let what = format!("attention_out n{n} c{c} {h}x{w} heads{heads}");
    // The core's error (see check_attention, ~1e-6 here) through a c-term projection.
    let tol = dot_tolerance(c) + 1e-5;
    assert_close(&what, &got, &expect, &[n, c, h, w], tol, tol);
    if !stats {
        return;
    }
    assert_partials_match(&what, &out, &expect);
}

#[test]
fn attention_out_u_net_14x14_two_heads_stats() {
    // The shipped model's 14x14 level: 196 tokens in seven tiles of 32 (the last 4 tokens).
    check_attention_out(11, 2, 64, 14, 14, 2, true);
}

#[test]
fn attention_out_odd_head_dim_batch1() {
    // Head size 3 (not a multiple of 4: masked lanes), 13x11 tokens (143: a partial tile).
    check_attention_out(12, 1, 12, 13, 11, 4, true);
}

#[test]
fn attention_out_7x7_four_heads_batch3_no_stats() {
    check_attention_out(13, 3, 128, 7, 7, 4, false);
}

#[test]
fn attention_out_rejects_wrong_shapes() {
    let qkv = zeros("qkv", &[1, 24, 3, 3]);
    let w = zeros("w", &[8, 4, 1, 1]);
    let b = zeros("b", &[8]);
    let x = zeros("x", &[1, 8, 3, 3]);
    let out = zeros("out", &[1, 8, 3, 3]);
    let err = attention_out(gpu(), &qkv, &w, &b, &x, &out, 2, 1.0).err().expect("must fail");
    assert!(err.to_string().contains("out weight"), "{err}");
    // The right count in the wrong rank is refused, not a panic.
    let flat = zeros("w", &[64]);
    let err = attention_out(gpu(), &qkv, &flat, &b, &x, &out, 2, 1.0).err().expect("must fail");
    assert!(err.to_string().contains("out weight"), "{err}");
    let w = zeros("w", &[8, 8, 1, 1]);
    let bad = Tensor::with_stats(gpu(), "out", &[1, 8, 3, 3], 2).expect("alloc");
    let err = attention_out(gpu(), &qkv, &w, &b, &x, &bad, 2, 1.0).err().expect("must fail");
    assert!(err.to_string().contains("statistics tiles"), "{err}");
}

/// Both forms of the block (`Gpu::fused_attention`); no other test of this binary plans a
/// block, so switching the shared device's form here races with nothing.
#[test]
fn self_attention_block_matches_cpu() {
    let default = gpu().fused_attention();
    for fused in [false, true] {
        gpu().set_fused_attention(fused);
        check_self_attention_block(fused);
    }
    gpu().set_fused_attention(default);
}

fn check_self_attention_block(fused: bool) {
    let (n, c, h, w, heads, groups) = (3, 32, 7, 7, 4, 8);
    let mut r = rng(8);
    let x = uniform(&mut r, n * c * h * w, 1.0);
    let gamma = uniform(&mut r, c, 1.5);
    let beta = uniform(&mut r, c, 0.5);
    let s = 1.0 / (c as f32).sqrt();
    let qkv_w = uniform(&mut r, 3 * c * c, s);
    let qkv_b = uniform(&mut r, 3 * c, 0.1);
    let out_w = uniform(&mut r, c * c, s);
    let out_b = uniform(&mut r, c, 0.1);
    let expect = cpu::self_attention_block(
        &x,
        [n, c, h, w],
        &cpu::AttentionBlock {
            groups,
            eps: 1e-5,
            norm_gamma: &gamma,
            norm_beta: &beta,
            qkv_weight: &qkv_w,
            qkv_bias: &qkv_b,
            out_weight: &out_w,
            out_bias: &out_b,
            heads,
            rescale_output_factor: 2.0,
        },
    );
    let gx = upload("x", &[n, c, h, w], &x);
    let gg = upload("gamma", &[c], &gamma);
    let gb = upload("beta", &[c], &beta);
    let gqw = upload("qkv_w", &[3 * c, c, 1, 1], &qkv_w);
    let gqb = upload("qkv_b", &[3 * c], &qkv_b);
    let gow = upload("out_w", &[c, c, 1, 1], &out_w);
    let gob = upload("out_b", &[c], &out_b);
    let out = zeros("out", &[n, c, h, w]);
    let block = self_attention(
        gpu(),
        &gx,
        &AttentionWeights {
            norm_gamma: &gg,
            norm_beta: &gb,
            norm_affine: None,
            groups,
            eps: 1e-5,
            qkv_weight: &gqw,
            qkv_bias: &gqb,
            out_weight: &gow,
            out_bias: &gob,
            heads,
            rescale_output_factor: 2.0,
        },
        &out,
        &AttentionScratch::new(gpu(), &gx).expect("scratch"),
    )
    .expect("plan");
    let dispatches: Vec<_> = block.iter().collect();
    let got = run(&dispatches, &out);
    // Four chained ops, each within its own bound (~1e-6); normalised activations of size
    // ~3 pass through two projections, so 2e-5 leaves an order of magnitude of headroom.
    // Plus one GroupNorm statistics pass: this x carries no partial statistics.
    assert_eq!(block.len(), if fused { 3 } else { 4 }, "dispatches (fused: {fused})");
    assert_close(&format!("self-attention block (fused: {fused})"), &got, &expect, &[n, c, h, w], 2e-5, 2e-5);
}

fn check_concat(seed: u64, n: usize, ca: usize, cb: usize, h: usize, w: usize) {
    let mut r = rng(seed);
    let a = uniform(&mut r, n * ca * h * w, 1.0);
    let b = uniform(&mut r, n * cb * h * w, 1.0);
    let expect = cpu::concat_channels(&a, &b, n, ca, cb, h * w);
    let ga = upload("a", &[n, ca, h, w], &a);
    let gb = upload("b", &[n, cb, h, w], &b);
    let out = zeros("out", &[n, ca + cb, h, w]);
    let d = concat(gpu(), &ga, &gb, &out).expect("launch");
    // A copy: exact.
    assert_close("concat", &run(&[&d], &out), &expect, &[n, ca + cb, h, w], 0.0, 0.0);
}

#[test]
fn concat_shapes() {
    check_concat(30, 17, 3, 33, 7, 7);
    check_concat(31, 1, 1, 1, 13, 13);
    check_concat(32, 2, 64, 32, 28, 28);
}

fn check_upsample(seed: u64, n: usize, c: usize, h: usize, w: usize) {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * c * h * w, 1.0);
    let expect = cpu::upsample_nearest2x(&x, n * c, h, w);
    let gx = upload("x", &[n, c, h, w], &x);
    let out = zeros("out", &[n, c, 2 * h, 2 * w]);
    let d = upsample_nearest2x(gpu(), &gx, &out).expect("launch");
    assert_close("upsample", &run(&[&d], &out), &expect, &[n, c, 2 * h, 2 * w], 0.0, 0.0);
}

#[test]
fn upsample_shapes() {
    check_upsample(40, 17, 3, 7, 7);
    check_upsample(41, 2, 33, 13, 13);
    check_upsample(42, 1, 1, 1, 1);
}

#[test]
fn attention_out_large_map_tiles_of_64() {
    // 17x17 = 289 tokens: tiles of 64 queries, the last 33.
    check_attention_out(14, 1, 16, 17, 17, 2, true);
}
