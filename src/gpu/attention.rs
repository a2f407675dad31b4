//! Launcher for `shaders/attention.wgsl` and the spatial self-attention block of diffusers'
//! `Attention` (`_from_deprecated_attn_block`): GroupNorm -> fused q/k/v 1x1 projection
//! (one conv dispatch, the GroupNorm folded into its reads) -> attention, output projection,
//! residual and `rescale_output_factor` (one dispatch, [`attention_out`]).

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
/// The core plus the output projection, residual and scale (`fused` in the shader).
const FUSED: KernelDef = KernelDef {
    entry: "fused",
    bindings: &[Access::Read, Access::ReadWrite, Access::Uniform, Access::Read, Access::Read, Access::Read],
    ..KERNEL
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
    tokens: u32,
    channels: u32,
    kv_tile: u32,
    scale: f32,
    out_scale: f32,
    tiles_out: u32,
}

/// Queries per workgroup of [`attention_out`], by the map's size only (so its statistics
/// tiles do not depend on the batch): each workgroup runs every head, so small maps take
/// small tiles to keep several workgroups per image (a 7x7 map: 4 tiles of 16, not 1).
fn fused_queries(tokens: usize) -> usize {
    match tokens {
        0..=64 => 16,
        65..=256 => 32,
        _ => QUERIES_PER_WORKGROUP,
    }
}

/// Partial-statistics slots per (image, channel) that [`attention_out`] writes for a
/// feature map of `tokens` pixels: one per query tile.
pub fn stats_tiles(tokens: usize) -> usize {
    tokens.div_ceil(fused_queries(tokens))
}

/// The shape checks and the pipeline for `def` at this head size; returns (batch, channels,
/// tokens, kernel, params).
fn prepare(
    gpu: &Gpu,
    def: &KernelDef,
    qkv: &Tensor,
    out: &Tensor,
    heads: usize,
    constants: &[(&'static str, f64)],
) -> Result<(usize, usize, usize, std::sync::Arc<crate::gpu::pipeline::Kernel>, Params)> {
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
    // One pipeline per head size, so the kernel's loops over the head have a constant trip
    // count.
    let source =
        KERNEL.source.replace("const HEAD_DIM: u32 = 16u;", &format!("const HEAD_DIM: u32 = {head_dim}u;"));
    let kernel = gpu.kernel_variant(def, &format!("head_dim={head_dim}"), Cow::Owned(source), constants)?;
    let tokens = h * w;
    let params = Params {
        batch: u32_of(OP, "batch", n)?,
        heads: heads as u32,
        tokens: u32_of(OP, "tokens", tokens)?,
        channels: u32_of(OP, "channels", c)?,
        kv_tile: (KV_CAPACITY / head_dim.div_ceil(4)) as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        out_scale: 1.0,
        tiles_out: 0,
    };
    Ok((n, c, tokens, kernel, params))
}

/// The heads' outputs alone.
/// - `qkv`: [n, 3c, h, w] (q, k, v stacked along channels); `out`: [n, c, h, w]
pub fn attention(gpu: &Gpu, qkv: &Tensor, out: &Tensor, heads: usize) -> Result<Dispatch> {
    attention_in_pairs(gpu, qkv, out, heads, gpu.attention_pairs())
}

/// [`attention`], each invocation computing two queries (`pairs`) or one; tests check both.
pub fn attention_in_pairs(
    gpu: &Gpu,
    qkv: &Tensor,
    out: &Tensor,
    heads: usize,
    pairs: bool,
) -> Result<Dispatch> {
    let [_, _, h, w] = dims4(OP, "qkv", qkv)?;
    // Pairs on a small map: half the invocations, so that one workgroup still covers it.
    let queries = if pairs && h * w <= QUERIES_PER_WORKGROUP {
        QUERIES_PER_WORKGROUP / 2
    } else {
        QUERIES_PER_WORKGROUP
    };
    let constants = [("PAIRS", pairs as u32 as f64), ("QUERIES", queries as f64)];
    let (n, c, tokens, kernel, params) = prepare(gpu, &KERNEL, qkv, out, heads, &constants)?;
    gpu.dispatch(
        &kernel,
        &[qkv.buffer(), out.buffer()],
        &params,
        [groups(tokens, queries * (1 + pairs as usize)), heads as u32, u32_of(OP, "batch", n)?],
    )
    // QK^T and PV: 2 * tokens^2 * head_dim multiply-adds per head.
    .map(|d| d.with_flops(4.0 * (n * tokens * tokens * c) as f64))
}

/// `out = (to_out(attention(qkv)) + residual) * out_scale` in one dispatch, and, when
/// `out` has room for them ([`stats_tiles`]), its partial GroupNorm statistics.
/// - `qkv`: [n, 3c, h, w]; `out_weight`: [c, c, 1, 1] (or [c, c]); `out_bias`: [c];
///   `residual`, `out`: [n, c, h, w]
#[allow(clippy::too_many_arguments)] // the block's tensors, each its own binding
pub fn attention_out(
    gpu: &Gpu,
    qkv: &Tensor,
    out_weight: &Tensor,
    out_bias: &Tensor,
    residual: &Tensor,
    out: &Tensor,
    heads: usize,
    out_scale: f32,
) -> Result<Dispatch> {
    let emit = out.stats_tiles() > 0;
    let tokens = out.shape().iter().skip(2).product();
    let queries = fused_queries(tokens);
    let (n, c, tokens, kernel, mut params) = prepare(
        gpu,
        &FUSED,
        qkv,
        out,
        heads,
        &[("EMIT_STATS", emit as u32 as f64), ("QUERIES", queries as f64)],
    )?;
    let ws = out_weight.shape();
    if ws.len() < 2 || ws[..2] != [c, c] || ws.iter().product::<usize>() != c * c {
        return Err(EngineError::shape(OP, format!("out weight {:?} is not [{c}, {c}]", out_weight.shape())));
    }
    expect_shape(OP, "out bias", out_bias, &[c])?;
    expect_shape(OP, "residual", residual, out.shape())?;
    if emit && out.stats_tiles() != stats_tiles(tokens) {
        return Err(EngineError::shape(
            OP,
            format!(
                "out carries {} statistics tiles per channel, the kernel writes {}",
                out.stats_tiles(),
                stats_tiles(tokens)
            ),
        ));
    }
    params.out_scale = out_scale;
    params.tiles_out = u32_of(OP, "out tiles", out.stats_tiles())?;
    gpu.dispatch(
        &kernel,
        &[qkv.buffer(), out.buffer(), out_weight.buffer(), out_bias.buffer(), residual.buffer()],
        &params,
        [groups(tokens, queries), u32_of(OP, "batch", n)?, 1],
    )
    // The core's 2 * tokens^2 * c multiply-adds and the projection's tokens * c^2.
    .map(|d| d.with_flops(4.0 * (n * tokens * tokens * c) as f64 + 2.0 * (n * tokens * c * c) as f64))
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

/// The temporaries of one attention block. They are dead once the block is done, so a
/// planner may share them between blocks.
pub struct AttentionScratch {
    /// The GroupNorm's statistics, [n, c, NORM_STATS] (folded into the q, k, v projection),
    /// for an `x` without partial statistics.
    pub stats: Option<Tensor>,
    /// [N, 3C, H, W]
    pub qkv: Tensor,
    /// The heads' outputs, [N, C, H, W], for the three-dispatch form (see
    /// [`Gpu::fused_attention`]); `None` with the fused kernel.
    pub heads: Option<Tensor>,
}

impl AttentionScratch {
    /// Scratch of its own for one block over `x`.
    pub fn new(gpu: &Gpu, x: &Tensor) -> Result<Self> {
        let [n, c, h, w] = dims4(OP, "x", x)?;
        Ok(AttentionScratch {
            stats: Some(Tensor::zeros(gpu, "attention.norm", &[n, c, NORM_STATS])?),
            qkv: Tensor::zeros(gpu, "attention.qkv", &[n, 3 * c, h, w])?,
            heads: Some(Tensor::zeros(gpu, "attention.heads", &[n, c, h, w])?),
        })
    }
}

/// The dispatches of a self-attention block:
/// `out = (x + to_out(attention(to_qkv(group_norm(x))))) / rescale_output_factor`:
/// two ([`Gpu::fused_attention`]) or three, plus a GroupNorm statistics pass for an input
/// without partial statistics (see [`AttentionWeights::norm_affine`]).
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
    if p.rescale_output_factor == 0.0 {
        return Err(EngineError::shape(OP, "rescale_output_factor is 0"));
    }
    let mut ops = Vec::with_capacity(3);
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
    if gpu.fused_attention() {
        ops.push(attention_out(
            gpu,
            &s.qkv,
            p.out_weight,
            p.out_bias,
            x,
            out,
            p.heads,
            1.0 / p.rescale_output_factor,
        )?);
        return Ok(ops);
    }
    let heads = s.heads.as_ref().ok_or_else(|| {
        EngineError::shape(OP, "the three-dispatch form needs the heads scratch (AttentionScratch::heads)")
    })?;
    expect_shape(OP, "heads", heads, &[n, c, h, w])?;
    ops.push(attention(gpu, &s.qkv, heads, p.heads)?);
    ops.push(conv2d(
        gpu,
        &Conv2dArgs {
            residual: Some(x),
            out_scale: 1.0 / p.rescale_output_factor,
            ..Conv2dArgs::new(heads, p.out_weight, p.out_bias, out)
        },
    )?);
    Ok(ops)
}

/// Partial-statistics slots per (image, channel) that [`self_attention`] writes into an
/// `out` of `shape` [n, c, h, w] on this device (the fused kernel's query tiles, or the 1x1
/// conv's runs).
pub fn out_stats_tiles(gpu: &Gpu, shape: [usize; 4]) -> usize {
    if gpu.fused_attention() {
        stats_tiles(shape[2] * shape[3])
    } else {
        super::conv2d::stats_tiles(None, 1, 1, 0, shape)
    }
}
