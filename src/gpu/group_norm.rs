//! Launcher for `shaders/group_norm.wgsl`: GroupNorm with per-channel affine and optional
//! fused SiLU, one workgroup per (image, group).

use bytemuck::{Pod, Zeroable};

use super::{expect_shape, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "group_norm",
    source: include_str!("../../shaders/group_norm.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "group_norm";
const WORKGROUP: f64 = 256.0;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    channels: u32,
    groups: u32,
    hw: u32,
    silu: u32,
    eps: f32,
    _pad: [u32; 3],
}

/// - `x`, `out`: [n, c, h, w] (or any [n, c, ...]); `gamma`, `beta`: [c]
/// - `groups` must divide `c`.
// One argument per binding plus the three options of the op, as in `cpu::group_norm`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    out: &Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Dispatch> {
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(EngineError::shape(OP, format!("x {shape:?} needs at least [n, c]")));
    }
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    if groups == 0 || c % groups != 0 {
        return Err(EngineError::shape(OP, format!("{groups} groups do not divide {c} channels")));
    }
    expect_shape(OP, "gamma", gamma, &[c])?;
    expect_shape(OP, "beta", beta, &[c])?;
    expect_shape(OP, "out", out, shape)?;
    let params = Params {
        channels: u32_of(OP, "channels", c)?,
        groups: groups as u32,
        hw: u32_of(OP, "h*w", hw)?,
        silu: silu as u32,
        eps,
        _pad: [0; 3],
    };
    let kernel = gpu.kernel(&KERNEL, &[("WG", WORKGROUP)])?;
    gpu.dispatch(
        &kernel,
        &[x.buffer(), gamma.buffer(), beta.buffer(), out.buffer()],
        &params,
        [groups as u32, u32_of(OP, "batch", n)?, 1],
    )
}
