//! group_norm.wgsl, linear.wgsl and timestep_embedding.wgsl against their CPU references.

mod common;

use common::*;
use diffusion_playground::cpu;
use diffusion_playground::gpu::group_norm::group_norm;
use diffusion_playground::gpu::linear::linear;
use diffusion_playground::gpu::timestep_embedding::{timestep_embedding, TimestepFrequencies};

#[allow(clippy::too_many_arguments)] // one per shape parameter of the case
fn check_group_norm(
    seed: u64,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    silu: bool,
    offset: f32,
) {
    let mut r = rng(seed);
    let hw = h * w;
    // `offset` puts the mean far from zero: a one-pass E[x^2] - E[x]^2 would fail here.
    let x: Vec<f32> = uniform(&mut r, n * c * hw, 1.0).iter().map(|v| v + offset).collect();
    let gamma = uniform(&mut r, c, 1.5);
    let beta = uniform(&mut r, c, 0.5);
    let eps = 1e-5;
    let expect = cpu::group_norm(&x, n, c, hw, groups, &gamma, &beta, eps, silu);
    let gx = upload("x", &[n, c, h, w], &x);
    let gg = upload("gamma", &[c], &gamma);
    let gb = upload("beta", &[c], &beta);
    let out = zeros("out", &[n, c, h, w]);
    let d = group_norm(gpu(), &gx, &gg, &gb, &out, groups, eps, silu).expect("launch");
    let got = run(&[&d], &out);
    // Mean and variance are f32 sums of count = c/groups*h*w terms (error ~sqrt(count)*eps
    // relative); normalising divides by std ~0.58, and a mean of `offset` loses
    // log2(offset) bits of the inputs' own precision.
    let count = (c / groups * hw) as f32;
    let tol = 8.0 * count.sqrt() * f32::EPSILON * (1.0 + offset.abs()) * 1.5 / 0.58;
    assert_close(
        &format!("group_norm n{n} c{c} {h}x{w} g{groups} silu{silu} offset{offset}"),
        &got,
        &expect,
        &[n, c, h, w],
        tol,
        tol,
    );
}

#[test]
fn group_norm_one_group_7x7() {
    check_group_norm(1, 1, 1, 7, 7, 1, false, 0.0);
}

#[test]
fn group_norm_groups_equal_channels() {
    check_group_norm(2, 2, 33, 13, 13, 33, true, 0.0);
}

#[test]
fn group_norm_three_channels_three_groups() {
    check_group_norm(3, 3, 3, 13, 13, 3, false, 0.0);
}

#[test]
fn group_norm_u_net_batch17() {
    check_group_norm(4, 17, 32, 28, 28, 8, true, 0.0);
}

#[test]
fn group_norm_one_group_large() {
    check_group_norm(5, 2, 128, 28, 28, 1, false, 0.0);
}

#[test]
fn group_norm_far_from_zero_mean() {
    check_group_norm(6, 2, 64, 7, 7, 8, true, 100.0);
}

fn check_linear(seed: u64, rows: usize, inputs: usize, outputs: usize, silu_in: bool, silu_out: bool) {
    let mut r = rng(seed);
    let x = uniform(&mut r, rows * inputs, 2.0);
    let wt = uniform(&mut r, outputs * inputs, 1.0 / (inputs as f32).sqrt());
    let b = uniform(&mut r, outputs, 0.5);
    let expect = cpu::linear(&x, rows, inputs, &wt, &b, outputs, silu_in, silu_out);
    let gx = upload("x", &[rows, inputs], &x);
    let gw = upload("w", &[outputs, inputs], &wt);
    let gb = upload("b", &[outputs], &b);
    let out = zeros("y", &[rows, outputs]);
    let d = linear(gpu(), &gx, &gw, &gb, &out, silu_in, silu_out).expect("launch");
    let got = run(&[&d], &out);
    // Inputs are up to 2, so the sum's magnitude is ~2x a unit-input dot product.
    let tol = 2.0 * dot_tolerance(inputs);
    assert_close(
        &format!("linear {rows}x{inputs}->{outputs} silu_in{silu_in} silu_out{silu_out}"),
        &got,
        &expect,
        &[rows, outputs],
        tol,
        tol,
    );
}

#[test]
fn linear_time_embedding_mlp() {
    check_linear(10, 2, 32, 128, false, true);
    check_linear(11, 2, 128, 128, false, false);
}

#[test]
fn linear_time_emb_proj_silu_input() {
    check_linear(12, 17, 512, 200, true, false);
}

#[test]
fn linear_odd_sizes() {
    check_linear(13, 1, 1, 1, false, false);
    check_linear(14, 33, 33, 3, true, true);
    check_linear(15, 64, 7, 65, false, false);
}

fn check_embedding(seed: u64, batch: usize, dim: usize, flip: bool, shift: f32) {
    let mut r = rng(seed);
    // Integer timesteps across the whole range, both ends, and fractional ones (Euler).
    let mut t: Vec<f32> = (0..batch).map(|_| rand::Rng::random_range(&mut r, 0..1000) as f32).collect();
    t[0] = 0.0;
    if batch > 1 {
        t[1] = 999.0;
    }
    if batch > 2 {
        t[2] = 123.456;
    }
    let expect = cpu::timestep_embedding(&t, dim, flip, shift);
    let freqs = TimestepFrequencies::new(gpu(), dim, flip, shift).expect("freqs");
    let gt = upload("t", &[batch], &t);
    let out = zeros("emb", &[batch, dim]);
    let d = timestep_embedding(gpu(), &freqs, &gt, &out).expect("launch");
    let got = run(&[&d], &out);
    // Same f32 argument on both sides; the GPU's reduction + Cephes polynomials are within a
    // few ulps of the f64 sin/cos of it, so 1e-6 (8 ulps of 1.0) bounds it.
    assert_close(
        &format!("timestep_embedding dim{dim} flip{flip} shift{shift}"),
        &got,
        &expect,
        &[batch, dim],
        1e-6,
        0.0,
    );
}

#[test]
fn timestep_embedding_diffusers_default() {
    check_embedding(20, 2, 32, true, 0.0);
}

#[test]
fn timestep_embedding_sin_first_shift1_batch33() {
    check_embedding(21, 33, 128, false, 1.0);
}

#[test]
fn timestep_embedding_odd_dim_pads_zero() {
    check_embedding(22, 5, 33, true, 0.0);
}

/// The one-dispatch time-embedding MLP (time_mlp.wgsl) against the CPU chain it replaces:
/// sinusoid, linear_1 + SiLU, linear_2 + class rows, then SiLU and the stacked projection.
fn check_time_mlp(seed: u64, batch: usize, c0: usize, d: usize, width: usize, with_class: bool) {
    use diffusion_playground::gpu::time_mlp::{pack, time_mlp, TimeMlpOut};
    let mut r = rng(seed);
    let t: Vec<f32> = (0..batch).map(|i| [0.0, 999.0, 123.456, 500.0][i % 4]).collect();
    let w1 = uniform(&mut r, d * c0, 1.0 / (c0 as f32).sqrt());
    let b1 = uniform(&mut r, d, 0.3);
    let w2 = uniform(&mut r, d * d, 1.0 / (d as f32).sqrt());
    let b2 = uniform(&mut r, d, 0.3);
    let wp = uniform(&mut r, width * d, 1.0 / (d as f32).sqrt());
    let bp = uniform(&mut r, width, 0.3);
    let class = uniform(&mut r, batch * d, 1.0);

    let proj = cpu::timestep_embedding(&t, c0, true, 0.0);
    let hidden = cpu::linear(&proj, batch, c0, &w1, &b1, d, false, true);
    let mut emb = cpu::linear(&hidden, batch, d, &w2, &b2, d, false, false);
    if with_class {
        emb.iter_mut().zip(&class).for_each(|(e, c)| *e += c);
    }
    let temb = cpu::linear(&emb, batch, d, &wp, &bp, width, true, false);

    let freqs = TimestepFrequencies::new(gpu(), c0, true, 0.0).expect("freqs");
    let gt = upload("t", &[batch], &t);
    let packed = pack(&w1, &b1, &w2, &b2, &wp, &bp);
    let gw = upload("weights", &[packed.len()], &packed);
    let gc = upload("class", &[batch, d], &class);
    let out = TimeMlpOut {
        time_proj: &zeros("time_proj", &[batch, c0]),
        emb: &zeros("emb", &[batch, d]),
        temb: &zeros("temb", &[batch, width]),
    };
    let dsp = time_mlp(gpu(), &freqs, &gt, &gw, with_class.then_some(&gc), &out).expect("launch");
    let case = format!("time_mlp n{batch} c0{c0} d{d} width{width} class{with_class}");
    // The sinusoid as in check_embedding; each linear adds a dot product's rounding.
    let tol = 1e-6 + dot_tolerance(d.max(c0)) * 3.0;
    let got = run(&[&dsp], out.time_proj);
    assert_close(&format!("{case} time_proj"), &got, &proj, &[batch, c0], 1e-6, 0.0);
    let got = pollster::block_on(out.emb.read(gpu())).unwrap();
    assert_close(&format!("{case} emb"), &got, &emb, &[batch, d], tol, tol);
    let got = pollster::block_on(out.temb.read(gpu())).unwrap();
    assert_close(&format!("{case} temb"), &got, &temb, &[batch, width], tol, tol);
}

#[test]
fn time_mlp_u_net_shapes_with_classes() {
    check_time_mlp(40, 3, 32, 128, 1056, true);
}

#[test]
fn time_mlp_odd_widths_batch1_no_class() {
    // Odd c0 (a zero-padded sinusoid column), d and width past one workgroup's 256.
    check_time_mlp(41, 1, 33, 300, 517, false);
}
