//! Launcher for `shaders/upsample.wgsl`: nearest 2x upsampling. The U-Net fuses it into the
//! convolution that follows (conv2d's `upsample`); this is the standalone op.

use bytemuck::{Pod, Zeroable};

use super::{dims4, expect_shape, grid_stride, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::Result;
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "upsample",
    source: include_str!("../../shaders/upsample.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "upsample";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    planes: u32,
    in_h: u32,
    in_w: u32,
    grid: u32,
}

/// - `x`: [n, c, h, w]; `out`: [n, c, 2h, 2w]
pub fn upsample_nearest2x(gpu: &Gpu, x: &Tensor, out: &Tensor) -> Result<Dispatch> {
    let [n, c, h, w] = dims4(OP, "x", x)?;
    expect_shape(OP, "out", out, &[n, c, 2 * h, 2 * w])?;
    u32_of(OP, "elements", out.numel())?;
    let (groups, grid) = grid_stride(gpu, out.numel());
    let params = Params { planes: u32_of(OP, "planes", n * c)?, in_h: h as u32, in_w: w as u32, grid };
    let kernel = gpu.kernel(&KERNEL, &[])?;
    gpu.dispatch(&kernel, &[x.buffer(), out.buffer()], &params, [groups, 1, 1])
}
