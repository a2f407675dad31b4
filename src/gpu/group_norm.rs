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
    bindings: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
};
/// The same shader's statistics-only entry point (see [`group_norm_stats`]).
const STATS: KernelDef = KernelDef { entry: "stats", ..KERNEL };
const OP: &str = "group_norm";
/// Floats per (image, channel) that [`group_norm_stats`] writes: mean, gamma / std, beta, 0.
pub const NORM_STATS: usize = 4;
const WORKGROUP: f64 = 64.0;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    channels: u32,
    groups: u32,
    hw: u32,
    silu: u32,
    eps: f32,
    c1: u32,
    _pad: [u32; 2],
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
    group_norm_cat(gpu, x, None, gamma, beta, out, groups, eps, silu)
}

/// GroupNorm of the channel concatenation of `x` [n, c1, ...] and `x2` [n, c2, ...]
/// (`torch.cat([x, x2], dim=1)`, which is never materialised); `out` is [n, c1 + c2, ...].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_cat(
    gpu: &Gpu,
    x: &Tensor,
    x2: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    out: &Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Dispatch> {
    let mut out_shape = x.shape().to_vec();
    if out_shape.len() >= 2 {
        out_shape[1] = cat_channels(x, x2);
    }
    expect_shape(OP, "out", out, &out_shape)?;
    launch(gpu, &KERNEL, x, x2, gamma, beta, out, groups, eps, silu)
}

/// The statistics half of a GroupNorm of `x` (or of the concat of `x` and `x2`): writes
/// (mean, gamma / std, beta, 0) per (image, channel) into `stats` [n, c, NORM_STATS], for a
/// convolution that normalises its input as it reads it (`Conv2dArgs::norm`).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_stats(
    gpu: &Gpu,
    x: &Tensor,
    x2: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &Tensor,
    groups: usize,
    eps: f32,
) -> Result<Dispatch> {
    let n = x.shape().first().copied().unwrap_or(0);
    expect_shape(OP, "stats", stats, &[n, cat_channels(x, x2), NORM_STATS])?;
    launch(gpu, &STATS, x, x2, gamma, beta, stats, groups, eps, false)
}

/// Channels of the concat of `x` and `x2` (`launch` checks that the rest of the shapes agree).
fn cat_channels(x: &Tensor, x2: Option<&Tensor>) -> usize {
    let channels = |t: &Tensor| t.shape().get(1).copied().unwrap_or(0);
    channels(x) + x2.map_or(0, channels)
}

#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    def: &KernelDef,
    x: &Tensor,
    x2: Option<&Tensor>,
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
    let (n, c1) = (shape[0], shape[1]);
    let c2 = match x2 {
        Some(t) => {
            let s2 = t.shape();
            if s2.len() != shape.len() || s2[0] != n || s2[2..] != shape[2..] {
                return Err(EngineError::shape(
                    OP,
                    format!("x2 {s2:?} does not match x {shape:?} but in channels"),
                ));
            }
            s2[1]
        }
        None => 0,
    };
    let c = c1 + c2;
    let hw: usize = shape[2..].iter().product();
    if groups == 0 || c % groups != 0 {
        return Err(EngineError::shape(OP, format!("{groups} groups do not divide {c} channels")));
    }
    expect_shape(OP, "gamma", gamma, &[c])?;
    expect_shape(OP, "beta", beta, &[c])?;
    let params = Params {
        channels: u32_of(OP, "channels", c)?,
        groups: groups as u32,
        hw: u32_of(OP, "h*w", hw)?,
        silu: silu as u32,
        eps,
        c1: c1 as u32,
        _pad: [0; 2],
    };
    let kernel = gpu.kernel(def, &[("WG", WORKGROUP)])?;
    gpu.dispatch(
        &kernel,
        &[
            x.buffer(),
            x2.map_or(&gpu.placeholder, |t| t.buffer()),
            gamma.buffer(),
            beta.buffer(),
            out.buffer(),
        ],
        &params,
        [groups as u32, u32_of(OP, "batch", n)?, 1],
    )
}
