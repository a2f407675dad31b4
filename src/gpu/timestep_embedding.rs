//! Launcher for `shaders/timestep_embedding.wgsl`: diffusers' sinusoidal embedding of
//! (possibly fractional) timesteps.

use bytemuck::{Pod, Zeroable};

use super::{expect_shape, groups, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::cpu::timestep_frequencies;
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "timestep_embedding",
    source: concat!(
        include_str!("../../shaders/sincos.wgsl"),
        include_str!("../../shaders/timestep_embedding.wgsl")
    ),
    entry: "main",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "timestep_embedding";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    dim: u32,
    flip: u32,
    _pad: u32,
}

/// The frequency table of one embedding configuration, uploaded once per model.
pub struct TimestepFrequencies {
    table: Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
}

impl TimestepFrequencies {
    pub fn new(gpu: &Gpu, dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Result<Self> {
        if dim < 2 {
            return Err(EngineError::shape(OP, format!("embedding dim {dim} is below 2")));
        }
        if dim / 2 == 1 && freq_shift == 1.0 {
            return Err(EngineError::shape(OP, "dim 2 with freq_shift 1 divides by zero"));
        }
        let freqs = timestep_frequencies(dim, freq_shift, 10_000.0);
        Ok(TimestepFrequencies {
            table: Tensor::from_slice(gpu, "timestep frequencies", &[dim / 2], &freqs)?,
            dim,
            flip_sin_to_cos,
        })
    }
}

impl TimestepFrequencies {
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn flip_sin_to_cos(&self) -> bool {
        self.flip_sin_to_cos
    }

    pub(crate) fn table(&self) -> &Tensor {
        &self.table
    }
}

/// - `timesteps`: [batch] (f32: fractional timesteps are allowed); `out`: [batch, dim]
pub fn timestep_embedding(
    gpu: &Gpu,
    freqs: &TimestepFrequencies,
    timesteps: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    let batch = timesteps.numel();
    expect_shape(OP, "timesteps", timesteps, &[batch])?;
    expect_shape(OP, "out", out, &[batch, freqs.dim])?;
    let params = Params {
        batch: u32_of(OP, "batch", batch)?,
        dim: u32_of(OP, "dim", freqs.dim)?,
        flip: freqs.flip_sin_to_cos as u32,
        _pad: 0,
    };
    let kernel = gpu.kernel(&KERNEL, &[])?;
    gpu.dispatch(
        &kernel,
        &[timesteps.buffer(), freqs.table.buffer(), out.buffer()],
        &params,
        [groups(batch * (freqs.dim / 2), 256), 1, 1],
    )
}
