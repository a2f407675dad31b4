//! Launcher for `shaders/attention.wgsl` (the softmax core) and the spatial self-attention
//! block of diffusers' `Attention` (`_from_deprecated_attn_block`) around it:
//! GroupNorm -> fused q/k/v 1x1 projection -> attention -> output 1x1 projection with the
//! residual and `rescale_output_factor` in its epilogue.

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};

use super::conv2d::{conv2d, Conv2dArgs, NormIn, NormStats};
use super::group_norm::{group_norm_stats, NORM_STATS};
use super::{dims4, expect_shape, groups, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "attention",
    source: include_str!("../../shaders/attention.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "attention";
/// Must equal KV_CAPACITY in the shader: vec4 slots of workgroup memory for K (and for V).
const KV_CAPACITY: usize = 480;
const QUERIES_PER_WORKGROUP: usize = 64;
/// Largest head size the register arrays are built for.
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    head_dim: u32,
    tokens: u32,
    channels: u32,
    kv_tile: u32,
    scale: f32,
    _pad: u32,
}

/// - `qkv`: [n, 3c, h, w] (q, k, v stacked along channels); `out`: [n, c, h, w]
pub fn attention(gpu: &Gpu, qkv: &Tensor, out: &Tensor, heads: usize) -> Result<Dispatch> {
    let [n, c3, h, w] = dims4(OP, "qkv", qkv)?;
    let c = c3 / 3;
    if c3 % 3 != 0 || heads == 0 || c % heads != 0 {
        return Err(EngineError::shape(
            OP,
            format!("qkv has {c3} channels: need 3 * channels with channels divisible by {heads} heads"),
        ));
    }
    expect_shape(OP, "out", out, &[n, c, h, w])?;
    let head_dim = c / heads;
    if head_dim > MAX_HEAD_DIM {
        return Err(EngineError::Unsupported {
            op: OP,
            message: format!("head dimension {head_dim} (most is {MAX_HEAD_DIM})"),
        });
    }
    let d4 = head_dim.div_ceil(4);
    // One pipeline per head size (ceil(head_dim / 4) vec4s), so the kernel's loops over the
    // head have a constant trip count.
    let capacity = d4;
    let source = KERNEL.source.replace("const D4: u32 = 4u;", &format!("const D4: u32 = {capacity}u;"));
    let kernel = gpu.kernel_variant(&KERNEL, &format!("d4={capacity}"), Cow::Owned(source), &[])?;
    let tokens = h * w;
    let params = Params {
        batch: u32_of(OP, "batch", n)?,
        heads: heads as u32,
        head_dim: head_dim as u32,
        tokens: u32_of(OP, "tokens", tokens)?,
        channels: u32_of(OP, "channels", c)?,
        kv_tile: (KV_CAPACITY / d4) as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        _pad: 0,
    };
    gpu.dispatch(
        &kernel,
        &[qkv.buffer(), out.buffer()],
        &params,
        [groups(tokens, QUERIES_PER_WORKGROUP), heads as u32, u32_of(OP, "batch", n)?],
    )
    // QK^T and PV: 2 * tokens^2 * head_dim multiply-adds per head.
    .map(|d| d.with_flops(4.0 * (n * tokens * tokens * c) as f64))
}

/// Weights of one spatial attention block, with to_q/to_k/to_v stacked into one
/// [3c, c, 1, 1] projection (and [3c] bias) at load time.
pub struct AttentionWeights<'a> {
    pub norm_gamma: &'a Tensor,
    pub norm_beta: &'a Tensor,
    /// gamma then beta, [2c]: with it, and an `x` that carries the partial statistics of
    /// the convolution that wrote it ([`Tensor::with_stats`]), the q/k/v projection merges
    /// the GroupNorm statistics itself and no statistics pass runs.
    pub norm_affine: Option<&'a Tensor>,
    pub groups: usize,
    pub eps: f32,
    pub qkv_weight: &'a Tensor,
    pub qkv_bias: &'a Tensor,
    pub out_weight: &'a Tensor,
    pub out_bias: &'a Tensor,
    pub heads: usize,
    pub rescale_output_factor: f32,
}

/// The temporaries of one attention block, [N, C, H, W] except `qkv` [N, 3C, H, W]. They are
/// dead once the block is done, so a planner may share them between blocks.
pub struct AttentionScratch {
    /// The GroupNorm's statistics, [n, c, NORM_STATS] (folded into the q, k, v projection),
    /// for an `x` without partial statistics.
    pub stats: Option<Tensor>,
    pub qkv: Tensor,
    pub heads: Tensor,
}

impl AttentionScratch {
    /// Scratch of its own for one block over `x`.
    pub fn new(gpu: &Gpu, x: &Tensor) -> Result<Self> {
        let [n, c, h, w] = dims4(OP, "x", x)?;
        Ok(AttentionScratch {
            stats: Some(Tensor::zeros(gpu, "attention.norm", &[n, c, NORM_STATS])?),
            qkv: Tensor::zeros(gpu, "attention.qkv", &[n, 3 * c, h, w])?,
            heads: Tensor::zeros(gpu, "attention.heads", &[n, c, h, w])?,
        })
    }
}

/// The dispatches of a self-attention block:
/// `out = (x + to_out(attention(to_qkv(group_norm(x))))) / rescale_output_factor`:
/// three, or four with a GroupNorm statistics pass (see [`AttentionWeights::norm_affine`]).
/// `out` gets partial statistics when it has room for them.
/// Their bind groups keep the scratch tensors alive.
pub fn self_attention(
    gpu: &Gpu,
    x: &Tensor,
    p: &AttentionWeights,
    out: &Tensor,
    s: &AttentionScratch,
) -> Result<Vec<Dispatch>> {
    let [n, c, h, w] = dims4(OP, "x", x)?;
    expect_shape(OP, "out", out, &[n, c, h, w])?;
    expect_shape(OP, "qkv", &s.qkv, &[n, 3 * c, h, w])?;
    expect_shape(OP, "heads", &s.heads, &[n, c, h, w])?;
    if p.rescale_output_factor == 0.0 {
        return Err(EngineError::shape(OP, "rescale_output_factor is 0"));
    }
    let mut ops = Vec::with_capacity(4);
    let stats = match (p.norm_affine, &s.stats) {
        (Some(affine), _) if x.stats_tiles() > 0 => {
            NormStats::Partials { affine, groups: p.groups, eps: p.eps }
        }
        (_, Some(stats)) => {
            expect_shape(OP, "stats", stats, &[n, c, NORM_STATS])?;
            ops.push(group_norm_stats(gpu, x, None, p.norm_gamma, p.norm_beta, stats, p.groups, p.eps)?);
            NormStats::Pass(stats)
        }
        (_, None) => {
            return Err(EngineError::shape(
                OP,
                "x carries no partial statistics and no stats scratch was given",
            ))
        }
    };
    ops.push(conv2d(
        gpu,
        &Conv2dArgs {
            norm: Some(NormIn { stats, silu: false }),
            ..Conv2dArgs::new(x, p.qkv_weight, p.qkv_bias, &s.qkv)
        },
    )?);
    let core = attention(gpu, &s.qkv, &s.heads, p.heads)?;
    let project_out = conv2d(
        gpu,
        &Conv2dArgs {
            residual: Some(x),
            out_scale: 1.0 / p.rescale_output_factor,
            ..Conv2dArgs::new(&s.heads, p.out_weight, p.out_bias, out)
        },
    )?;
    ops.extend([core, project_out]);
    Ok(ops)
}
