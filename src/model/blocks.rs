//! The diffusers blocks a `UNet2DModel` is made of, each knowing its parameter names and
//! shapes (as diffusers writes them) and how to plan itself as GPU dispatches.
//! Read beside diffusers' `resnet.py`, `attention_processor.py` (`Attention` with
//! `_from_deprecated_attn_block`), `downsampling.py` and `upsampling.py`.

use std::collections::HashMap;

use super::arena::Arena;
use super::weights::{HostTensor, Weights};
use crate::error::{EngineError, Result};
use crate::gpu::attention::{
    out_stats_tiles as attention_out_stats_tiles, self_attention, AttentionScratch, AttentionWeights,
};
use crate::gpu::concat::concat;
use crate::gpu::conv2d::{
    conv2d, pack_shortcut, pack_up2, stats_tiles, Conv2dArgs, ConvVariant, NormIn, NormStats, ShortcutIn,
    TembSlice,
};
use crate::gpu::group_norm::{group_norm_stats, NORM_STATS};
use crate::gpu::{Dispatch, Gpu, Tensor};

/// (name, shape) of every parameter, in diffusers' naming.
pub type ParamList = Vec<(String, Vec<usize>)>;

/// What a block uploads in a layout of its own (stacked or packed for a fused kernel), and
/// which of the file's tensors those replace: the loader uploads the derived tensors and
/// every parameter no block replaced, as it is.
#[derive(Default)]
pub struct Derived {
    pub tensors: Vec<(String, HostTensor)>,
    pub replaces: Vec<String>,
}

impl Derived {
    fn add(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.push((name, HostTensor { shape, data }));
    }
}

/// A parameter of the (checked) weights file.
fn weight<'w>(weights: &'w Weights, name: &str) -> Result<&'w HostTensor> {
    weights.get(name).ok_or_else(|| EngineError::weights(name, "missing (checked before upload)"))
}

/// Collects the dispatches of one forward pass and the tensors they write.
pub(crate) struct Planner<'a> {
    pub gpu: &'a Gpu,
    pub params: &'a HashMap<String, Tensor>,
    /// Every ResNet's projected time embedding, side by side: [batch, sum of widths].
    pub temb: &'a Tensor,
    /// Every dispatch of the pass, in execution order.
    pub ops: Vec<Dispatch>,
    /// Tensors that outlive their block (block outputs, skips).
    pub kept: Vec<Tensor>,
    /// Temporaries inside a block, shared by every block with the same shape: dispatches
    /// run in order, so a temporary is dead once its block's last dispatch is done.
    scratch: HashMap<(&'static str, Vec<usize>), Tensor>,
    /// Block outputs by module name (`conv_in`, `down_blocks.0`, ...) for tests and traces.
    pub named: Vec<(String, usize)>,
    /// Where every activation buffer comes from.
    pub arena: Arena,
}

impl<'a> Planner<'a> {
    pub fn new(gpu: &'a Gpu, params: &'a HashMap<String, Tensor>, temb: &'a Tensor, arena: Arena) -> Self {
        Planner {
            gpu,
            params,
            temb,
            ops: Vec::new(),
            kept: Vec::new(),
            scratch: HashMap::new(),
            named: Vec::new(),
            arena,
        }
    }

    pub fn param(&self, name: &str) -> Result<&'a Tensor> {
        self.params.get(name).ok_or_else(|| EngineError::weights(name, "was not uploaded (an engine bug)"))
    }

    /// A new tensor that stays alive for the whole forward pass, the output of a `k`x`k` convolution (automatic variant)
    /// that a GroupNorm reads, with room for the partial statistics the convolution writes;
    /// returns its index.
    pub fn keep_conv_out(
        &mut self,
        label: &str,
        shape: &[usize],
        conv: (usize, usize, usize),
    ) -> Result<usize> {
        self.keep_with_stats(label, shape, conv_stats_tiles(shape, conv))
    }

    /// A new tensor that stays alive for the whole forward pass, with room for `tiles`
    /// partial-statistics slots per (image, channel); returns its index.
    pub fn keep_with_stats(&mut self, label: &str, shape: &[usize], tiles: usize) -> Result<usize> {
        let t = self.arena.alloc_with_stats(self.gpu, label, shape, tiles)?;
        self.kept.push(t);
        Ok(self.kept.len() - 1)
    }

    pub fn scratch(&mut self, role: &'static str, shape: &[usize]) -> Result<Tensor> {
        self.scratch_tiles(role, shape, 0)
    }

    /// Scratch for the output of a convolution `(k, stride, pad)` that a GroupNorm reads.
    pub fn scratch_conv_out(
        &mut self,
        role: &'static str,
        shape: &[usize],
        conv: (usize, usize, usize),
    ) -> Result<Tensor> {
        self.scratch_tiles(role, shape, conv_stats_tiles(shape, conv))
    }

    fn scratch_tiles(&mut self, role: &'static str, shape: &[usize], tiles: usize) -> Result<Tensor> {
        let key = (role, shape.to_vec());
        if !self.scratch.contains_key(&key) {
            let t = self.arena.alloc_with_stats(self.gpu, role, shape, tiles)?;
            self.scratch.insert(key.clone(), t);
        }
        Ok(self.scratch[&key].clone())
    }

    /// The GroupNorm `norm` (a parameter prefix) of the tensor a convolution reads, `x`
    /// or the concat of `x` and `x2`, to fold into that convolution: merged by the
    /// convolution from the partial statistics in the inputs' tails when their producers
    /// wrote them, else a statistics pass (pushed here) into scratch `role`.
    pub fn fold_norm(
        &mut self,
        role: &'static str,
        x: &Tensor,
        x2: Option<&Tensor>,
        norm: &str,
        groups: usize,
        eps: f32,
    ) -> Result<FoldedNorm> {
        if x.stats_tiles() > 0 && x2.is_none_or(|t| t.stats_tiles() > 0) {
            return Ok(FoldedNorm::Partials { affine: self.param(&affine_name(norm))?.clone(), groups, eps });
        }
        let [n, c] = [x.shape()[0], x.shape()[1] + x2.map_or(0, |t| t.shape()[1])];
        let stats = self.scratch(role, &[n, c, NORM_STATS])?;
        let d = group_norm_stats(
            self.gpu,
            x,
            x2,
            self.param(&format!("{norm}.weight"))?,
            self.param(&format!("{norm}.bias"))?,
            &stats,
            groups,
            eps,
        )?;
        self.push(d);
        Ok(FoldedNorm::Pass(stats))
    }

    pub fn push(&mut self, d: Dispatch) {
        self.ops.push(d);
    }

    pub fn name(&mut self, module: impl Into<String>, index: usize) {
        self.named.push((module.into(), index));
    }
}

/// Name of the derived parameter holding GroupNorm `norm`'s gamma then beta (uploaded by
/// the loader for convolutions that merge partial statistics).
pub fn affine_name(norm: &str) -> String {
    format!("{norm}.affine")
}

/// Partial-statistics slots per (image, channel) of a convolution's output `shape`.
fn conv_stats_tiles(shape: &[usize], (k, stride, pad): (usize, usize, usize)) -> usize {
    stats_tiles(None, k, stride, pad, [shape[0], shape[1], shape[2], shape[3]])
}

/// A GroupNorm folded into the convolution that reads it ([`Planner::fold_norm`]).
pub(crate) enum FoldedNorm {
    Pass(Tensor),
    Partials { affine: Tensor, groups: usize, eps: f32 },
}

impl FoldedNorm {
    pub fn input(&self, silu: bool) -> NormIn<'_> {
        let stats = match self {
            FoldedNorm::Pass(t) => NormStats::Pass(t),
            FoldedNorm::Partials { affine, groups, eps } => {
                NormStats::Partials { affine, groups: *groups, eps: *eps }
            }
        };
        NormIn { stats, silu }
    }
}

/// Shape of tensor `i` of the kept list.
fn shape_of(p: &Planner, i: usize) -> [usize; 4] {
    let s = p.kept[i].shape();
    [s[0], s[1], s[2], s[3]]
}

/// `ResnetBlock2D` with `time_embedding_norm="default"`, pre-norm, SiLU:
/// `out = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))) / scale`.
pub struct ResnetBlock2D {
    pub prefix: String,
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    pub eps: f32,
    pub output_scale_factor: f32,
    /// Where this block's `time_emb_proj` output sits in the stacked projection.
    pub temb_offset: usize,
}

impl ResnetBlock2D {
    pub fn parameters(&self, temb_dim: usize, out: &mut ParamList) {
        let (p, i, o) = (&self.prefix, self.cin, self.cout);
        out.push((format!("{p}.norm1.weight"), vec![i]));
        out.push((format!("{p}.norm1.bias"), vec![i]));
        out.push((format!("{p}.conv1.weight"), vec![o, i, 3, 3]));
        out.push((format!("{p}.conv1.bias"), vec![o]));
        out.push((format!("{p}.time_emb_proj.weight"), vec![o, temb_dim]));
        out.push((format!("{p}.time_emb_proj.bias"), vec![o]));
        out.push((format!("{p}.norm2.weight"), vec![o]));
        out.push((format!("{p}.norm2.bias"), vec![o]));
        out.push((format!("{p}.conv2.weight"), vec![o, o, 3, 3]));
        out.push((format!("{p}.conv2.bias"), vec![o]));
        if self.has_shortcut() {
            out.push((format!("{p}.conv_shortcut.weight"), vec![o, i, 1, 1]));
            out.push((format!("{p}.conv_shortcut.bias"), vec![o]));
        }
    }

    fn has_shortcut(&self) -> bool {
        self.cin != self.cout
    }

    /// The packed conv2 + shortcut weight and summed bias that conv2's dispatch reads
    /// when the block has a shortcut conv (see [`ShortcutIn`]).
    fn conv2_shortcut_names(&self) -> (String, String) {
        (format!("{}.conv2_shortcut.weight", self.prefix), format!("{}.conv2_shortcut.bias", self.prefix))
    }

    /// The shortcut conv folded into conv2: one [cout, cout * 9 + cin] weight and the
    /// sum of the biases, replacing conv2's and conv_shortcut's own.
    pub fn derive(&self, weights: &Weights, out: &mut Derived) -> Result<()> {
        if !self.has_shortcut() {
            return Ok(());
        }
        let p = &self.prefix;
        let names = [
            format!("{p}.conv2.weight"),
            format!("{p}.conv2.bias"),
            format!("{p}.conv_shortcut.weight"),
            format!("{p}.conv_shortcut.bias"),
        ];
        let [w2, b2, ws, bs] = [0, 1, 2, 3].map(|i| weight(weights, &names[i]));
        let (w2, b2, ws, bs) = (w2?, b2?, ws?, bs?);
        let (wn, bn) = self.conv2_shortcut_names();
        out.add(wn, vec![self.cout, self.cout * 9 + self.cin], pack_shortcut(&w2.data, &ws.data, self.cout));
        out.add(bn, vec![self.cout], b2.data.iter().zip(&bs.data).map(|(a, b)| a + b).collect());
        out.replaces.extend(names);
        Ok(())
    }

    /// Plans the block on kept tensor `x`, or on the channel concat of `x` and `skip` (an
    /// up block's input, never copied: norm1 and the shortcut read both); returns the kept
    /// index of its output.
    pub(crate) fn plan(&self, p: &mut Planner, x: usize, skip: Option<usize>) -> Result<usize> {
        // Without a shortcut conv the input itself is the residual, which needs it in one
        // tensor (diffusers makes no shortcut only when cin == cout; no shipped up block).
        let (x, skip) = match skip {
            Some(s) if !self.has_shortcut() => (plan_concat(p, x, s)?, None),
            other => (x, other),
        };
        let [n, cx, h, w] = shape_of(p, x);
        let pre = &self.prefix;
        // norm1 and norm2 are folded into conv1's and conv2's reads, which merge the
        // statistics that the convolutions writing their inputs left behind: the
        // normalised tensors never exist and no statistics pass runs.
        let hidden = p.scratch_conv_out("resnet.conv1", &[n, self.cout, h, w], (3, 1, 1))?;
        let out = p.keep_conv_out(pre, &[n, self.cout, h, w], (3, 1, 1))?;
        let gpu = p.gpu;
        let skip_t: Option<Tensor> = skip.map(|s| p.kept[s].clone());
        let skip_t = skip_t.as_ref();
        if cx + skip_t.map_or(0, |t| t.shape()[1]) != self.cin {
            return Err(EngineError::shape("ResnetBlock2D", format!("{pre} takes {} channels", self.cin)));
        }

        let x_t = p.kept[x].clone();
        let norm1 =
            p.fold_norm("resnet.norm1", &x_t, skip_t, &format!("{pre}.norm1"), self.groups, self.eps)?;
        let d = conv2d(
            gpu,
            &Conv2dArgs {
                x2: skip_t,
                norm: Some(norm1.input(true)),
                temb: Some(TembSlice { tensor: p.temb, offset: self.temb_offset }),
                ..Conv2dArgs::new(
                    &x_t,
                    p.param(&format!("{pre}.conv1.weight"))?,
                    p.param(&format!("{pre}.conv1.bias"))?,
                    &hidden,
                )
            },
        )?;
        p.push(d);
        let norm2 =
            p.fold_norm("resnet.norm2", &hidden, None, &format!("{pre}.norm2"), self.groups, self.eps)?;
        // conv2, with the shortcut conv (when cin != cout) folded into its K loop: the
        // shortcut's output is never written and costs no dispatch.
        let args = if self.has_shortcut() {
            let (wn, bn) = self.conv2_shortcut_names();
            Conv2dArgs::with_shortcut(
                &hidden,
                p.param(&wn)?,
                p.param(&bn)?,
                &p.kept[out],
                ShortcutIn { x: &p.kept[x], x2: skip_t },
            )
        } else {
            Conv2dArgs {
                residual: Some(&p.kept[x]),
                ..Conv2dArgs::new(
                    &hidden,
                    p.param(&format!("{pre}.conv2.weight"))?,
                    p.param(&format!("{pre}.conv2.bias"))?,
                    &p.kept[out],
                )
            }
        };
        let d = conv2d(
            gpu,
            &Conv2dArgs { norm: Some(norm2.input(true)), out_scale: 1.0 / self.output_scale_factor, ..args },
        )?;
        p.push(d);
        Ok(out)
    }
}

/// diffusers' `Attention` over the h*w tokens of a feature map, as the U-Net blocks build
/// it (`residual_connection=True`, `bias=True`, a GroupNorm in front).
pub struct Attention {
    pub prefix: String,
    pub channels: usize,
    pub heads: usize,
    pub groups: usize,
    pub eps: f32,
    pub rescale_output_factor: f32,
}

impl Attention {
    pub fn parameters(&self, out: &mut ParamList) {
        let (p, c) = (&self.prefix, self.channels);
        out.push((format!("{p}.group_norm.weight"), vec![c]));
        out.push((format!("{p}.group_norm.bias"), vec![c]));
        for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
            out.push((format!("{p}.{proj}.weight"), vec![c, c]));
            out.push((format!("{p}.{proj}.bias"), vec![c]));
        }
    }

    /// Names of the derived q, k, v projection stacked into one 1x1 convolution.
    pub fn qkv_names(&self) -> (String, String) {
        (format!("{}.to_qkv.weight", self.prefix), format!("{}.to_qkv.bias", self.prefix))
    }

    /// q, k and v as one [3c, c, 1, 1] convolution, to_out as a [c, c, 1, 1] one.
    pub fn derive(&self, weights: &Weights, out: &mut Derived) -> Result<()> {
        let (p, c) = (&self.prefix, self.channels);
        let mut w = Vec::with_capacity(3 * c * c);
        let mut b = Vec::with_capacity(3 * c);
        for proj in ["to_q", "to_k", "to_v"] {
            let (wn, bn) = (format!("{p}.{proj}.weight"), format!("{p}.{proj}.bias"));
            w.extend_from_slice(&weight(weights, &wn)?.data);
            b.extend_from_slice(&weight(weights, &bn)?.data);
            out.replaces.extend([wn, bn]);
        }
        let (wn, bn) = self.qkv_names();
        out.add(wn, vec![3 * c, c, 1, 1], w);
        out.add(bn, vec![3 * c], b);
        let out_w = format!("{p}.to_out.0.weight");
        out.add(out_w.clone(), vec![c, c, 1, 1], weight(weights, &out_w)?.data.clone());
        out.replaces.push(out_w);
        Ok(())
    }

    pub(crate) fn plan(&self, p: &mut Planner, x: usize) -> Result<usize> {
        let shape = shape_of(p, x);
        let out = p.keep_with_stats(&self.prefix, &shape, attention_out_stats_tiles(p.gpu, shape))?;
        let pre = &self.prefix;
        let (qkv_w, qkv_b) = self.qkv_names();
        let weights = AttentionWeights {
            norm_gamma: p.param(&format!("{pre}.group_norm.weight"))?,
            norm_beta: p.param(&format!("{pre}.group_norm.bias"))?,
            norm_affine: Some(p.param(&affine_name(&format!("{pre}.group_norm")))?),
            groups: self.groups,
            eps: self.eps,
            qkv_weight: p.param(&qkv_w)?,
            qkv_bias: p.param(&qkv_b)?,
            out_weight: p.param(&format!("{pre}.to_out.0.weight"))?,
            out_bias: p.param(&format!("{pre}.to_out.0.bias"))?,
            heads: self.heads,
            rescale_output_factor: self.rescale_output_factor,
        };
        let scratch = AttentionScratch {
            // Only for an input without partial statistics (see `self_attention`).
            stats: if p.kept[x].stats_tiles() > 0 {
                None
            } else {
                Some(p.scratch("attention.norm", &[shape[0], shape[1], NORM_STATS])?)
            },
            qkv: p.scratch("attention.qkv", &[shape[0], 3 * shape[1], shape[2], shape[3]])?,
            heads: if p.gpu.fused_attention() { None } else { Some(p.scratch("attention.heads", &shape)?) },
        };
        let block = self_attention(p.gpu, &p.kept[x], &weights, &p.kept[out], &scratch)?;
        p.ops.extend(block);
        Ok(out)
    }
}

/// `Downsample2D(use_conv=True, padding=1)`: a 3x3 convolution with stride 2.
pub struct Downsample2D {
    pub prefix: String,
    pub channels: usize,
}

/// `Upsample2D(use_conv=True)`: nearest 2x, then a 3x3 convolution (one kernel, on the
/// stored grid: [`ConvVariant::Up2`]).
pub struct Upsample2D {
    pub prefix: String,
    pub channels: usize,
}

fn conv3x3_parameters(prefix: &str, c: usize, out: &mut ParamList) {
    out.push((format!("{prefix}.conv.weight"), vec![c, c, 3, 3]));
    out.push((format!("{prefix}.conv.bias"), vec![c]));
}

impl Downsample2D {
    pub fn parameters(&self, out: &mut ParamList) {
        conv3x3_parameters(&self.prefix, self.channels, out);
    }

    pub(crate) fn plan(&self, p: &mut Planner, x: usize) -> Result<usize> {
        let [n, c, h, w] = shape_of(p, x);
        let (oh, ow) = crate::gpu::conv2d::out_size(h, w, 3, 2, 1)
            .ok_or_else(|| EngineError::shape("Downsample2D", format!("{h}x{w} is too small")))?;
        let out = p.keep_conv_out(&self.prefix, &[n, c, oh, ow], (3, 2, 1))?;
        let d = conv2d(
            p.gpu,
            &Conv2dArgs {
                stride: 2,
                pad: 1,
                ..Conv2dArgs::new(
                    &p.kept[x],
                    p.param(&format!("{}.conv.weight", self.prefix))?,
                    p.param(&format!("{}.conv.bias", self.prefix))?,
                    &p.kept[out],
                )
            },
        )?;
        p.push(d);
        Ok(out)
    }
}

impl Upsample2D {
    pub fn parameters(&self, out: &mut ParamList) {
        conv3x3_parameters(&self.prefix, self.channels, out);
    }

    fn packed_name(&self) -> String {
        format!("{}.conv.weight_up2", self.prefix)
    }

    /// The conv's kernel as the four 2x2 kernels of the stored grid ([`pack_up2`]).
    pub fn derive(&self, weights: &Weights, out: &mut Derived) -> Result<()> {
        let name = format!("{}.conv.weight", self.prefix);
        let c = self.channels;
        out.add(self.packed_name(), vec![c, c * 16], pack_up2(&weight(weights, &name)?.data, c, c));
        out.replaces.push(name);
        Ok(())
    }

    pub(crate) fn plan(&self, p: &mut Planner, x: usize) -> Result<usize> {
        let [n, c, h, w] = shape_of(p, x);
        let out = p.keep_conv_out(&self.prefix, &[n, c, 2 * h, 2 * w], (3, 1, 1))?;
        // Upsample and conv in one dispatch on the stored grid: 4 taps per output, not 9.
        let d = conv2d(
            p.gpu,
            &Conv2dArgs {
                upsample: true,
                pad: 1,
                variant: Some(ConvVariant::Up2),
                ..Conv2dArgs::new(
                    &p.kept[x],
                    p.param(&self.packed_name())?,
                    p.param(&format!("{}.conv.bias", self.prefix))?,
                    &p.kept[out],
                )
            },
        )?;
        p.push(d);
        Ok(out)
    }
}

/// The channel concat of an up block's input with its skip, `torch.cat([x, skip], dim=1)`,
/// materialised: only for a ResNet without a shortcut conv (see [`ResnetBlock2D::plan`]).
pub(crate) fn plan_concat(p: &mut Planner, x: usize, skip: usize) -> Result<usize> {
    let [n, ca, h, w] = shape_of(p, x);
    let [_, cb, _, _] = shape_of(p, skip);
    let cat = p.scratch("up.concat", &[n, ca + cb, h, w])?;
    // The concat is read by the next ResNet's norm1 and shortcut only, so it can live in
    // scratch; it is moved into `kept` as a view so the ResNet can address it by index.
    let d = concat(p.gpu, &p.kept[x], &p.kept[skip], &cat)?;
    p.push(d);
    p.kept.push(cat);
    Ok(p.kept.len() - 1)
}
