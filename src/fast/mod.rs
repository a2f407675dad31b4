//! The fast CPU backend: the same model, samplers and noise as the GPU path, for hosts and
//! browsers without (hardware) WebGPU. Convolutions, 1x1 projections, linears and attention
//! run as GEMMs (matrixmultiply: AVX2/FMA natively, simd128 in wasm), GroupNorm, SiLU and
//! softmax as vectorisable loops; weights are laid out once at load and a forward pass
//! allocates nothing. Natively the images of a batch are split across a rayon pool; in the
//! browser each Web Worker runs its own instance on its share of the images.
//!
//! `crate::cpu` stays the plain oracle these kernels are tested against.

mod attention;
mod conv;
mod direct;
mod gemm;
mod norm;
mod session;
pub mod step;
mod unet;

pub use norm::exp;
pub use session::{CpuRun, CpuSession};
pub use unet::{CpuUNet, Scratch};

use std::sync::Mutex;

#[cfg(not(target_arch = "wasm32"))]
use crate::error::EngineError;
use crate::error::Result;

/// A CPU-loaded model with its threads and their scratch buffers.
pub struct CpuEngine {
    pub unet: CpuUNet,
    threads: usize,
    scratches: Vec<Mutex<Scratch>>,
    #[cfg(not(target_arch = "wasm32"))]
    pool: rayon::ThreadPool,
}

impl CpuEngine {
    /// `threads` = 0 takes every core natively (one thread in wasm, where workers are the
    /// unit of parallelism).
    pub fn new(unet: CpuUNet, threads: usize) -> Result<Self> {
        #[cfg(target_arch = "wasm32")]
        let threads = {
            let _ = threads;
            1
        };
        #[cfg(not(target_arch = "wasm32"))]
        let threads =
            if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        #[cfg(not(target_arch = "wasm32"))]
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cpu-backend-{i}"))
            .build()
            .map_err(|e| EngineError::shape("cpu backend", format!("cannot start {threads} threads: {e}")))?;
        let scratches = (0..threads).map(|_| Mutex::new(unet.scratch())).collect();
        Ok(CpuEngine {
            unet,
            threads,
            scratches,
            #[cfg(not(target_arch = "wasm32"))]
            pool,
        })
    }

    pub fn load(config_json: &str, safetensors: &[u8], threads: usize) -> Result<Self> {
        Self::new(CpuUNet::load(config_json, safetensors)?, threads)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// `out = UNet(input, t, classes)` for a batch: `input`, `out` [batch, C, H, W] with
    /// the batch read off their length, `class_rows` [batch, D] (empty without classes).
    /// Images go to threads in contiguous groups; each image's result is independent of the
    /// split.
    pub fn forward(&self, input: &[f32], t: f32, class_rows: &[f32], out: &mut [f32]) {
        let [c, h, w] = self.unet.sample_shape();
        let per_in = c * h * w;
        let per_out = self.unet.config().out_channels * h * w;
        let batch = input.len() / per_in;
        let d = if class_rows.is_empty() { 0 } else { class_rows.len() / batch };
        let per_thread = batch.div_ceil(self.threads).max(1);
        let work = |g: usize, out: &mut [f32]| {
            let mut s = self.scratches[g].lock().expect("a forward pass panicked");
            for (j, o) in out.chunks_exact_mut(per_out).enumerate() {
                let i = g * per_thread + j;
                let row = &class_rows[(i * d).min(class_rows.len())..((i + 1) * d).min(class_rows.len())];
                self.unet.forward_image(&mut s, &input[i * per_in..(i + 1) * per_in], t, row, o);
            }
        };
        let out = &mut out[..batch * per_out];
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            self.pool.install(|| {
                out.par_chunks_mut(per_thread * per_out).enumerate().for_each(|(g, o)| work(g, o))
            });
        }
        #[cfg(target_arch = "wasm32")]
        out.chunks_mut(per_thread * per_out).enumerate().for_each(|(g, o)| work(g, o));
    }
}

/// The CPU backend's kernels against the plain oracle (`crate::cpu`) on odd shapes: channel
/// counts that are not multiples of the tiles, non-square images, tails of every loop.
/// Tolerance 1e-4 absolute on outputs of order 1-10: f32 sums of up to ~600 products in a
/// different order than the oracle's f64 (observed ~1e-6).
#[cfg(test)]
mod tests {
    use super::attention::{Attention, AttentionScratch};
    use super::conv::{Conv, Epilogue};
    use super::norm::Norm;
    use crate::cpu;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{what}: worst abs error {worst:e}");
    }

    fn conv(cin: usize, cout: usize, k: usize, stride: usize, upsample: bool, seed: u32) -> Conv {
        let c = Conv {
            weight: data(cout * cin * k * k, seed),
            bias: data(cout, seed + 1),
            cin,
            cout,
            k,
            stride,
            upsample,
            packed: None,
        };
        c.pack()
    }

    #[test]
    fn convolutions_match_the_oracle() {
        // (cin, cout, k, stride, upsample, h, w): direct 3x3 (cout off the tile sizes), with
        // upsampling, the stride-2 im2col path, 1x1 as a plain GEMM.
        let cases = [
            (5, 7, 3, 1, false, 9, 6),
            (1, 13, 3, 1, false, 4, 11),
            (16, 1, 3, 1, false, 7, 7),
            (3, 8, 3, 1, true, 5, 3),
            (6, 5, 3, 2, false, 9, 7),
            (7, 9, 1, 1, false, 5, 6),
        ];
        for (i, &(cin, cout, k, stride, upsample, h, w)) in cases.iter().enumerate() {
            let c = conv(cin, cout, k, stride, upsample, 10 * i as u32);
            let x = data(cin * h * w, 100 + i as u32);
            let (ih, iw, src) = if upsample {
                (2 * h, 2 * w, cpu::upsample_nearest2x(&x, cin, h, w))
            } else {
                (h, w, x.clone())
            };
            let spec = cpu::Conv2dSpec { ksize: k, stride, pad: k / 2 };
            let mut want = cpu::conv2d(&src, [1, cin, ih, iw], &c.weight, &c.bias, cout, spec);
            let (oh, ow) = spec.out_size(ih, iw);
            // The epilogue: a per-channel add, a residual and a scale.
            let add = data(cout, 7);
            let residual = data(cout * oh * ow, 8);
            for (j, v) in want.iter_mut().enumerate() {
                *v = (*v + add[j / (oh * ow)] + residual[j]) * 0.5;
            }
            let mut col = vec![0.0; c.col_len(h, w)];
            let mut out = vec![0.0; cout * oh * ow];
            let e = Epilogue { channel_add: Some(&add), residual: Some(&residual), scale: 0.5 };
            assert_eq!(c.run(&x, h, w, &mut col, &mut out, e), (oh, ow));
            close(&format!("conv case {i} {cases:?}", cases = cases[i]), &out, &want);
        }
    }

    #[test]
    fn direct_kernel_variants_agree() {
        // The generic kernel (the wasm and non-AVX2 path's algorithm) against the dispatched
        // one on the same tiles.
        let c = conv(11, 14, 3, 1, false, 3);
        let (h, w) = (10, 13);
        let x = data(11 * h * w, 4);
        let mut col = vec![0.0; c.col_len(h, w)];
        let mut fast = vec![0.0; 14 * h * w];
        c.run(&x, h, w, &mut col, &mut fast, Epilogue { scale: 1.0, ..Default::default() });
        let spec = cpu::Conv2dSpec { ksize: 3, stride: 1, pad: 1 };
        let want = cpu::conv2d(&x, [1, 11, h, w], &c.weight, &c.bias, 14, spec);
        close("dispatched direct kernel", &fast, &want);
        let generic = super::direct::generic_for_tests(c.packed.as_ref().unwrap(), &c.bias, &x, h, w);
        close("generic direct kernel", &generic, &want);
    }

    #[test]
    fn group_norm_matches_the_oracle() {
        for (c, hw, groups, silu) in [(12, 35, 4, true), (6, 1, 3, false), (32, 784, 8, true)] {
            let x: Vec<f32> = data(c * hw, c as u32).iter().map(|v| 3.0 * v + 0.7).collect();
            let norm = Norm { gamma: data(c, 1), beta: data(c, 2), groups, eps: 1e-5 };
            let mut out = vec![0.0; c * hw];
            norm.run(&x, c, hw, silu, &mut out);
            let want = cpu::group_norm(&x, 1, c, hw, groups, &norm.gamma, &norm.beta, 1e-5, silu);
            close(&format!("group norm c {c} hw {hw}"), &out, &want);
        }
    }

    #[test]
    fn attention_matches_the_oracle() {
        for (c, heads, h, w) in [(8, 2, 3, 5), (12, 3, 7, 7), (16, 1, 1, 9)] {
            let a = Attention {
                norm: Norm { gamma: data(c, 5), beta: data(c, 6), groups: 4, eps: 1e-5 },
                qkv: Conv {
                    weight: data(3 * c * c, 7),
                    bias: data(3 * c, 8),
                    cin: c,
                    cout: 3 * c,
                    k: 1,
                    stride: 1,
                    upsample: false,
                    packed: None,
                },
                out: conv(c, c, 1, 1, false, 9),
                heads,
                rescale_output_factor: 1.5,
            };
            let t = h * w;
            let x = data(c * t, 10);
            let [n1, n2, n3, n4] = a.scratch_len(t);
            let (mut b1, mut b2, mut b3, mut b4) =
                (vec![0.0; n1], vec![0.0; n2], vec![0.0; n3], vec![0.0; n4]);
            let mut out = vec![0.0; c * t];
            let s = AttentionScratch { normed: &mut b1, qkv: &mut b2, scores: &mut b3, heads: &mut b4 };
            a.run(&x, h, w, s, &mut out);
            let block = cpu::AttentionBlock {
                groups: 4,
                eps: 1e-5,
                norm_gamma: &a.norm.gamma,
                norm_beta: &a.norm.beta,
                qkv_weight: &a.qkv.weight,
                qkv_bias: &a.qkv.bias,
                out_weight: &a.out.weight,
                out_bias: &a.out.bias,
                heads,
                rescale_output_factor: 1.5,
            };
            let want = cpu::self_attention_block(&x, [1, c, h, w], &block);
            close(&format!("attention c {c} heads {heads} {h}x{w}"), &out, &want);
        }
    }
}
