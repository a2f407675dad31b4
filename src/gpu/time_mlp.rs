//! Launcher for `shaders/time_mlp.wgsl`: UNet2DModel's time embedding (sinusoid, linear_1,
//! SiLU, linear_2, class rows, and every ResNet's `time_emb_proj` of SiLU(emb)) in one
//! dispatch, one workgroup per image.

use bytemuck::{Pod, Zeroable};

use super::timestep_embedding::TimestepFrequencies;
use super::{expect_shape, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "time_mlp",
    source: concat!(include_str!("../../shaders/sincos.wgsl"), include_str!("../../shaders/time_mlp.wgsl")),
    entry: "main",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::Uniform,
    ],
};
const OP: &str = "time_mlp";
/// Largest embedding width the kernel keeps in workgroup memory (= MAX_D in the shader);
/// wider models take the four-dispatch path.
pub const MAX_D: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    c0: u32,
    d: u32,
    width: u32,
    flip: u32,
    has_class: u32,
    _pad: [u32; 3],
}

/// The packed weights, in the kernel's order: `[w1 [d, c0], b1 [d], w2 [d, d], b2 [d],
/// wp [width, d], bp [width]]`.
pub fn pack(w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32], wp: &[f32], bp: &[f32]) -> Vec<f32> {
    [w1, b1, w2, b2, wp, bp].concat()
}

/// Where the outputs go: `time_proj` [n, c0], `emb` [n, d], `temb` [n, width].
pub struct TimeMlpOut<'a> {
    pub time_proj: &'a Tensor,
    pub emb: &'a Tensor,
    pub temb: &'a Tensor,
}

/// - `timesteps`: [n]; `weights`: [`pack`]ed; `class_emb`: [n, d] rows added to emb, or None
pub fn time_mlp(
    gpu: &Gpu,
    freqs: &TimestepFrequencies,
    timesteps: &Tensor,
    weights: &Tensor,
    class_emb: Option<&Tensor>,
    out: &TimeMlpOut,
) -> Result<Dispatch> {
    let n = timesteps.numel();
    let c0 = freqs.dim();
    let d = out.emb.shape().get(1).copied().unwrap_or(0);
    let width = out.temb.shape().get(1).copied().unwrap_or(0);
    if c0 > MAX_D || d > MAX_D {
        return Err(EngineError::shape(OP, format!("embedding widths {c0} and {d} (most is {MAX_D})")));
    }
    expect_shape(OP, "timesteps", timesteps, &[n])?;
    expect_shape(OP, "time_proj", out.time_proj, &[n, c0])?;
    expect_shape(OP, "emb", out.emb, &[n, d])?;
    expect_shape(OP, "temb", out.temb, &[n, width])?;
    expect_shape(OP, "weights", weights, &[d * c0 + d + d * d + d + width * d + width])?;
    if let Some(c) = class_emb {
        expect_shape(OP, "class_emb", c, &[n, d])?;
    }
    let params = Params {
        c0: c0 as u32,
        d: d as u32,
        width: u32_of(OP, "width", width)?,
        flip: freqs.flip_sin_to_cos() as u32,
        has_class: class_emb.is_some() as u32,
        _pad: [0; 3],
    };
    let kernel = gpu.kernel(&KERNEL, &[])?;
    let flops = 2.0 * (n * (d * c0 + d * d + width * d)) as f64;
    gpu.dispatch(
        &kernel,
        &[
            timesteps.buffer(),
            freqs.table().buffer(),
            weights.buffer(),
            class_emb.map_or(&gpu.placeholder, |t| t.buffer()),
            out.time_proj.buffer(),
            out.emb.buffer(),
            out.temb.buffer(),
        ],
        &params,
        [u32_of(OP, "batch", n)?, 1, 1],
    )
    .map(|dsp| dsp.with_flops(flops))
}
