//! Launcher for `shaders/concat.wgsl`: channel concatenation of two NCHW tensors. The
//! U-Net's convolutions read both halves directly (conv2d's `x2`); this materialises the
//! concatenation where a consumer needs one tensor (e.g. GroupNorm across the seam).

use bytemuck::{Pod, Zeroable};

use super::{dims4, expect_shape, grid_stride, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "concat",
    source: include_str!("../../shaders/concat.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "concat";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    ca: u32,
    cb: u32,
    hw: u32,
    grid: u32,
    _pad: [u32; 3],
}

/// - `a`: [n, ca, h, w]; `b`: [n, cb, h, w]; `out`: [n, ca + cb, h, w]
pub fn concat(gpu: &Gpu, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<Dispatch> {
    let [n, ca, h, w] = dims4(OP, "a", a)?;
    let [nb, cb, hb, wb] = dims4(OP, "b", b)?;
    if (nb, hb, wb) != (n, h, w) {
        return Err(EngineError::shape(
            OP,
            format!("b {:?} does not match a {:?} in N, H, W", b.shape(), a.shape()),
        ));
    }
    expect_shape(OP, "out", out, &[n, ca + cb, h, w])?;
    let (groups, grid) = grid_stride(gpu, out.numel());
    let params = Params {
        batch: u32_of(OP, "batch", n)?,
        ca: u32_of(OP, "ca", ca)?,
        cb: u32_of(OP, "cb", cb)?,
        hw: u32_of(OP, "h*w", h * w)?,
        grid,
        _pad: [0; 3],
    };
    u32_of(OP, "elements", out.numel())?;
    let kernel = gpu.kernel(&KERNEL, &[])?;
    gpu.dispatch(&kernel, &[a.buffer(), b.buffer(), out.buffer()], &params, [groups, 1, 1])
}
