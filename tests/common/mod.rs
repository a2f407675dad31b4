//! Shared test harness: one GPU per test binary, seeded data, and comparisons that name the
//! index and both values when they fail.

#![allow(dead_code)]

use std::sync::OnceLock;

use diffusion_playground::gpu::{Dispatch, Gpu, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The adapter every kernel test runs on. A machine without one fails the tests loudly
/// rather than skipping them.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = pollster::block_on(Gpu::new()).unwrap_or_else(|e| {
            panic!("kernel tests need a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers): {e}")
        });
        eprintln!("testing on {}", gpu.adapter_name());
        gpu
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn upload(label: &str, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(gpu(), label, shape, data).expect("upload")
}

pub fn zeros(label: &str, shape: &[usize]) -> Tensor {
    Tensor::zeros(gpu(), label, shape).expect("allocate")
}

/// Runs the dispatches in one pass and reads `out` back.
pub fn run(dispatches: &[&Dispatch], out: &Tensor) -> Vec<f32> {
    let gpu = gpu();
    gpu.run(dispatches).expect("submit");
    pollster::block_on(out.read(gpu)).expect("read back")
}

/// |gpu - cpu| <= atol + rtol * |cpu| everywhere, else a message naming the first bad
/// index (unravelled over `shape`), both values and how many elements failed.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], shape: &[usize], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let mut bad = 0usize;
    let mut first = None;
    let mut worst = 0.0f32;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g - c).abs();
        worst = worst.max(err);
        // NaN anywhere (gpu or cpu) makes err NaN: a failure, never a pass.
        if err.is_nan() || err > atol + rtol * c.abs() {
            bad += 1;
            first.get_or_insert((i, g, c));
        }
    }
    eprintln!("{what}: worst abs err {worst:e} (atol {atol:e})");
    if let Some((i, g, c)) = first {
        panic!(
            "{what}: {bad} of {} values off; at {:?}: gpu {g} vs cpu {c} (atol {atol:e}, rtol {rtol:e}, worst abs err {worst:e})",
            gpu.len(),
            unravel(i, shape),
        );
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &s) in shape.iter().enumerate().rev() {
        idx[d] = i % s;
        i /= s;
    }
    idx
}

/// Error bound for a K-term f32 dot product of O(1)-sized results: rounding errors of the
/// partial sums add up like a random walk, ~sqrt(K) * eps relative to the magnitude of
/// the sum; the factor 8 absorbs summation-order differences between GPU tiles and the CPU.
pub fn dot_tolerance(k: usize) -> f32 {
    8.0 * (k as f32).sqrt() * f32::EPSILON
}

/// A float32 tensor of a safetensors fixture, flat.
pub fn f32s(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// An int64 tensor of class labels of a safetensors fixture, as the engine's u32 classes.
pub fn labels(st: &safetensors::SafeTensors, name: &str) -> Vec<u32> {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect()
}

/// (count, mean, M2) of consecutive (count, mean, M2) slots, merged in order with Chan,
/// Golub and LeVeque's formula in f64 (empty slots skipped): the reference merge.
pub fn merge_slots(slots: &[f32]) -> (f64, f64, f64) {
    let (mut cnt, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
    for s in slots.chunks_exact(3) {
        let (nb, mb, m2b) = (s[0] as f64, s[1] as f64, s[2] as f64);
        if nb == 0.0 {
            continue;
        }
        let total = cnt + nb;
        let d = mb - mean;
        mean += d * nb / total;
        m2 += m2b + d * d * cnt * nb / total;
        cnt = total;
    }
    (cnt, mean, m2)
}

/// The partial statistics in `t`'s tail, merged per (image, channel) with Chan's formula in
/// f64, against the mean and variance of `expect` (the reference output, [n, c, hw]):
/// counts exact, means to 1e-5 relative, variances to 1e-3 (the kernels' own output
/// differs from the reference by its dot-product error).
pub fn assert_partials_match(what: &str, t: &Tensor, expect: &[f32]) {
    let [n, c] = [t.shape()[0], t.shape()[1]];
    let hw: usize = t.shape()[2..].iter().product();
    let tiles = t.stats_tiles();
    assert!(tiles > 0, "{what}: no statistics slots");
    let slots = pollster::block_on(t.read_stats(gpu())).expect("read stats");
    assert_eq!(slots.len(), n * c * tiles * 3, "{what}: slots");
    for i in 0..n {
        for ch in 0..c {
            let (cnt, mean, m2) = merge_slots(&slots[(i * c + ch) * tiles * 3..(i * c + ch + 1) * tiles * 3]);
            let vals = &expect[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let rm = vals.iter().map(|&v| v as f64).sum::<f64>() / hw as f64;
            let rv = vals.iter().map(|&v| (v as f64 - rm).powi(2)).sum::<f64>() / hw as f64;
            assert_eq!(cnt as usize, hw, "{what}: count of image {i} channel {ch}");
            assert!((mean - rm).abs() <= 1e-5 * rm.abs().max(1.0), "{what}: mean {mean} vs {rm} ({i}, {ch})");
            assert!(
                (m2 / cnt - rv).abs() <= 1e-3 * rv + 1e-7,
                "{what}: variance {} vs {rv} ({i}, {ch})",
                m2 / cnt
            );
        }
    }
}
