//! Launcher for `shaders/nonfinite.wgsl`: after each sampling step, flags the first step
//! whose x_t holds NaN or infinity in a one-value buffer. One small dispatch per step and a
//! four-byte read-back whenever the caller already waits for the GPU, instead of reading
//! the whole x_t back to look at it.

use bytemuck::{Pod, Zeroable};

use super::{grid_stride, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::Result;
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "nonfinite",
    source: include_str!("../../shaders/nonfinite.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "nonfinite";

/// The flag's value while no step has produced a non-finite value.
const CLEAN: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    step: u32,
    grid: u32,
    _pad: u32,
}

/// The flag of one session: a one-element buffer the check dispatches lower to the first
/// bad step. It lives in a [`Tensor`] so it reads back with x_t in one round trip; its
/// value is a `u32` carried bit for bit in the f32 slot.
pub struct NonFiniteCheck {
    flag: Tensor,
}

impl NonFiniteCheck {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let check = NonFiniteCheck { flag: Tensor::zeros(gpu, "nonfinite flag", &[1])? };
        check.reset(gpu)?;
        Ok(check)
    }

    /// Clears the flag (queued before the next submit): call when a run starts.
    pub fn reset(&self, gpu: &Gpu) -> Result<()> {
        self.flag.write(gpu, &[f32::from_bits(CLEAN)])
    }

    pub fn flag(&self) -> &Tensor {
        &self.flag
    }

    /// The dispatch that flags `step` if `x` holds a non-finite value.
    pub fn dispatch(&self, gpu: &Gpu, x: &Tensor, step: usize) -> Result<Dispatch> {
        let len = u32_of(OP, "elements", x.numel())?;
        let (groups, grid) = grid_stride(gpu, x.numel());
        let params = Params { len, step: u32_of(OP, "step", step)?, grid, _pad: 0 };
        let kernel = gpu.kernel(&KERNEL, &[])?;
        gpu.dispatch(&kernel, &[x.buffer(), self.flag.buffer()], &params, [groups, 1, 1])
    }

    /// Reads the flag back: the first flagged step, if any.
    pub async fn first_bad_step(&self, gpu: &Gpu) -> Result<Option<usize>> {
        let v = self.flag.read(gpu).await?;
        Ok(decode(&v))
    }
}

/// The first flagged step in a read-back flag value.
pub fn decode(flag: &[f32]) -> Option<usize> {
    let bits = flag.first()?.to_bits();
    (bits != CLEAN).then_some(bits as usize)
}
