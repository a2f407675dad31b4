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
mod step;
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
