//! diffusers' `UNet2DModel` on the CPU: the block tree of [`UNetSpec`] turned once, at load,
//! into a flat list of ops over weights in GEMM order, then run one image at a time (each
//! thread takes a contiguous group of the batch's images, with its own scratch), so a
//! forward pass allocates nothing.

use super::attention::{Attention, AttentionScratch};
use super::conv::{Conv, Epilogue};
use super::gemm::{gemm, MatRef};
use super::norm::{silu_in_place, Norm};
use crate::error::{EngineError, Result};
use crate::model::blocks::{Attention as AttentionSpec, ResnetBlock2D};
use crate::model::{HostModel, HostTensor, UNetConfig, UNetSpec, Weights};

/// `ResnetBlock2D` (see `model::blocks`).
struct Resnet {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
    temb_offset: usize,
    output_scale_factor: f32,
}

/// One step of the forward pass over the running hidden state.
enum Op {
    Resnet(Resnet),
    Attention(Attention),
    /// `Downsample2D` (stride 2) or `Upsample2D` (nearest 2x folded into the conv).
    Resample(Conv),
    /// Saves the hidden state as the next skip connection.
    PushSkip,
    /// hidden = cat([hidden, last skip], channels), popping the skip.
    ConcatSkip,
}

/// `y = W x + b` for one vector, PyTorch's [out, in] layout.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    fn run(&self, x: &[f32], y: &mut [f32]) {
        y[..self.outputs].copy_from_slice(&self.bias);
        gemm(
            self.outputs,
            self.inputs,
            1,
            MatRef::rows(&self.weight, self.inputs),
            MatRef::rows(x, 1),
            1.0,
            y,
            1,
        );
    }
}

/// A model loaded for the CPU backend.
pub struct CpuUNet {
    pub spec: UNetSpec,
    conv_in: Conv,
    ops: Vec<Op>,
    norm_out: Norm,
    conv_out: Conv,
    freqs: Vec<f32>,
    flip_sin_to_cos: bool,
    linear_1: Linear,
    linear_2: Linear,
    /// Every ResNet's `time_emb_proj`, stacked: [sum of widths, D].
    temb_proj: Linear,
    class_table: Option<HostTensor>,
    sizes: ScratchSizes,
}

/// Floats of every scratch buffer, from a walk of the op list at load.
#[derive(Default, Clone)]
struct ScratchSizes {
    act: usize,
    col: usize,
    qkv: usize,
    scores: usize,
    skips: Vec<usize>,
}

/// Buffers for one image's forward pass; one per thread.
pub struct Scratch {
    cur: Vec<f32>,
    next: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    t3: Vec<f32>,
    col: Vec<f32>,
    qkv: Vec<f32>,
    scores: Vec<f32>,
    skips: Vec<Vec<f32>>,
    skip_shapes: Vec<[usize; 3]>,
    time_proj: Vec<f32>,
    hidden: Vec<f32>,
    emb: Vec<f32>,
    temb: Vec<f32>,
}

fn take(w: &Weights, name: &str) -> Result<Vec<f32>> {
    w.get(name).map(|t| t.data.clone()).ok_or_else(|| EngineError::weights(name, "missing (checked above)"))
}

fn conv(w: &Weights, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Conv> {
    Ok(Conv {
        weight: take(w, &format!("{prefix}.weight"))?,
        bias: take(w, &format!("{prefix}.bias"))?,
        cin,
        cout,
        k,
        stride: 1,
        upsample: false,
        packed: None,
    })
}

fn norm(w: &Weights, prefix: &str, groups: usize, eps: f32) -> Result<Norm> {
    Ok(Norm {
        gamma: take(w, &format!("{prefix}.weight"))?,
        beta: take(w, &format!("{prefix}.bias"))?,
        groups,
        eps,
    })
}

fn linear(w: &Weights, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear> {
    Ok(Linear {
        weight: take(w, &format!("{prefix}.weight"))?,
        bias: take(w, &format!("{prefix}.bias"))?,
        inputs,
        outputs,
    })
}

fn resnet(w: &Weights, r: &ResnetBlock2D) -> Result<Resnet> {
    let p = &r.prefix;
    Ok(Resnet {
        norm1: norm(w, &format!("{p}.norm1"), r.groups, r.eps)?,
        conv1: conv(w, &format!("{p}.conv1"), r.cin, r.cout, 3)?.pack(),
        norm2: norm(w, &format!("{p}.norm2"), r.groups, r.eps)?,
        conv2: conv(w, &format!("{p}.conv2"), r.cout, r.cout, 3)?.pack(),
        shortcut: (r.cin != r.cout)
            .then(|| conv(w, &format!("{p}.conv_shortcut"), r.cin, r.cout, 1))
            .transpose()?,
        temb_offset: r.temb_offset,
        output_scale_factor: r.output_scale_factor,
    })
}

fn attention(w: &Weights, a: &AttentionSpec) -> Result<Attention> {
    let (p, c) = (&a.prefix, a.channels);
    let mut qkv = Conv {
        weight: Vec::with_capacity(3 * c * c),
        bias: Vec::with_capacity(3 * c),
        cin: c,
        cout: 3 * c,
        k: 1,
        stride: 1,
        upsample: false,
        packed: None,
    };
    for proj in ["to_q", "to_k", "to_v"] {
        qkv.weight.extend(take(w, &format!("{p}.{proj}.weight"))?);
        qkv.bias.extend(take(w, &format!("{p}.{proj}.bias"))?);
    }
    Ok(Attention {
        norm: norm(w, &format!("{p}.group_norm"), a.groups, a.eps)?,
        qkv,
        out: conv(w, &format!("{p}.to_out.0"), c, c, 1)?,
        heads: a.heads,
        rescale_output_factor: a.rescale_output_factor,
    })
}

impl CpuUNet {
    /// Parses `config.json` and a safetensors file and checks every tensor against the
    /// config, exactly as the GPU loader does.
    pub fn load(config_json: &str, safetensors: &[u8]) -> Result<Self> {
        let host = HostModel::load(config_json, safetensors)?;
        Self::from_checked(host.spec, &host.weights)
    }

    /// A model from weights built in code (tests); they are checked against the config first.
    pub fn from_weights(config: &UNetConfig, w: &Weights) -> Result<Self> {
        config.validate()?;
        let spec = UNetSpec::new(config);
        w.check(&spec.parameters())?;
        Self::from_checked(spec, w)
    }

    fn from_checked(spec: UNetSpec, w: &Weights) -> Result<Self> {
        let cfg = &spec.config.clone();
        let (c0, d) = (cfg.block_out_channels[0], cfg.time_embed_dim());

        let mut ops = vec![Op::PushSkip];
        for block in &spec.down_blocks {
            for (j, r) in block.resnets.iter().enumerate() {
                ops.push(Op::Resnet(resnet(w, r)?));
                if let Some(a) = block.attentions.get(j) {
                    ops.push(Op::Attention(attention(w, a)?));
                }
                ops.push(Op::PushSkip);
            }
            if let Some(ds) = &block.downsampler {
                let c = ds.channels;
                ops.push(Op::Resample(
                    Conv { stride: 2, ..conv(w, &format!("{}.conv", ds.prefix), c, c, 3)? }.pack(),
                ));
                ops.push(Op::PushSkip);
            }
        }
        if let Some(mid) = &spec.mid_block {
            ops.push(Op::Resnet(resnet(w, &mid.resnets[0])?));
            if let Some(a) = mid.attentions.first() {
                ops.push(Op::Attention(attention(w, a)?));
            }
            ops.push(Op::Resnet(resnet(w, &mid.resnets[1])?));
        }
        for block in &spec.up_blocks {
            for (j, r) in block.resnets.iter().enumerate() {
                ops.push(Op::ConcatSkip);
                ops.push(Op::Resnet(resnet(w, r)?));
                if let Some(a) = block.attentions.get(j) {
                    ops.push(Op::Attention(attention(w, a)?));
                }
            }
            if let Some(us) = &block.upsampler {
                let c = us.channels;
                ops.push(Op::Resample(
                    Conv { upsample: true, ..conv(w, &format!("{}.conv", us.prefix), c, c, 3)? }.pack(),
                ));
            }
        }

        let mut proj_w = Vec::with_capacity(spec.temb_proj_width * d);
        let mut proj_b = Vec::with_capacity(spec.temb_proj_width);
        for r in spec
            .down_blocks
            .iter()
            .flat_map(|b| &b.resnets)
            .chain(spec.mid_block.iter().flat_map(|b| &b.resnets))
            .chain(spec.up_blocks.iter().flat_map(|b| &b.resnets))
        {
            proj_w.extend(take(w, &format!("{}.time_emb_proj.weight", r.prefix))?);
            proj_b.extend(take(w, &format!("{}.time_emb_proj.bias", r.prefix))?);
        }
        let temb_proj = Linear { weight: proj_w, bias: proj_b, inputs: d, outputs: spec.temb_proj_width };

        let mut unet = CpuUNet {
            conv_in: conv(w, "conv_in", cfg.in_channels, c0, 3)?.pack(),
            ops,
            norm_out: norm(w, "conv_norm_out", cfg.norm_num_groups, cfg.norm_eps)?,
            conv_out: conv(w, "conv_out", c0, cfg.out_channels, 3)?.pack(),
            freqs: crate::cpu::timestep_frequencies(c0, cfg.freq_shift, 10_000.0),
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            linear_1: linear(w, "time_embedding.linear_1", c0, d)?,
            linear_2: linear(w, "time_embedding.linear_2", d, d)?,
            temb_proj,
            class_table: w.get("class_embedding.weight").cloned(),
            sizes: ScratchSizes::default(),
            spec,
        };
        unet.sizes = unet.walk_sizes();
        Ok(unet)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.spec.config
    }

    /// Image shape [C, H, W] the model samples.
    pub fn sample_shape(&self) -> [usize; 3] {
        let c = self.config();
        [c.in_channels, c.sample_size.0, c.sample_size.1]
    }

    /// The scratch sizes of one image's pass: the op list walked on shapes only.
    fn walk_sizes(&self) -> ScratchSizes {
        let [cin, h, w] = self.sample_shape();
        let mut s = ScratchSizes::default();
        let grow = |s: &mut ScratchSizes, act: usize, col: usize| {
            s.act = s.act.max(act);
            s.col = s.col.max(col);
        };
        grow(&mut s, cin * h * w, self.conv_in.col_len(h, w));
        let (mut c, mut h, mut w) = (self.conv_in.cout, h, w);
        let mut stack: Vec<[usize; 3]> = Vec::new();
        for op in &self.ops {
            match op {
                Op::PushSkip => {
                    stack.push([c, h, w]);
                    s.skips.push(c * h * w);
                }
                Op::ConcatSkip => {
                    let [cs, ..] = stack.pop().unwrap_or([0, h, w]);
                    c += cs;
                    grow(&mut s, c * h * w, 0);
                }
                Op::Resnet(r) => {
                    grow(&mut s, r.conv1.cout * h * w, r.conv1.col_len(h, w).max(r.conv2.col_len(h, w)));
                    c = r.conv1.cout;
                }
                Op::Attention(a) => {
                    let [_, qkv, scores, _] = a.scratch_len(h * w);
                    s.qkv = s.qkv.max(qkv);
                    s.scores = s.scores.max(scores);
                }
                Op::Resample(conv) => {
                    grow(&mut s, 0, conv.col_len(h, w));
                    (h, w) = conv.out_size(h, w);
                    grow(&mut s, c * h * w, 0);
                }
            }
        }
        grow(&mut s, 0, self.conv_out.col_len(h, w));
        s
    }

    /// Buffers for one thread's share of a forward pass.
    pub fn scratch(&self) -> Scratch {
        let s = &self.sizes;
        let d = self.config().time_embed_dim();
        Scratch {
            cur: vec![0.0; s.act],
            next: vec![0.0; s.act],
            t1: vec![0.0; s.act],
            t2: vec![0.0; s.act],
            t3: vec![0.0; s.act],
            col: vec![0.0; s.col],
            qkv: vec![0.0; s.qkv],
            scores: vec![0.0; s.scores],
            skips: s.skips.iter().map(|&n| vec![0.0; n]).collect(),
            skip_shapes: Vec::with_capacity(s.skips.len()),
            time_proj: vec![0.0; self.conv_in.cout],
            hidden: vec![0.0; d],
            emb: vec![0.0; d],
            temb: vec![0.0; self.temb_proj.outputs],
        }
    }

    /// Bytes of one scratch (what each thread or worker holds besides the weights).
    pub fn scratch_bytes(&self) -> usize {
        let s = &self.sizes;
        4 * (5 * s.act + s.col + s.qkv + s.scores + s.skips.iter().sum::<usize>())
    }

    /// The class-embedding rows of `labels`, [labels.len(), D] (empty for a model without
    /// classes and no labels).
    pub fn class_rows(&self, labels: &[u32]) -> Result<Vec<f32>> {
        crate::model::unet::class_rows(self.class_table.as_ref(), labels)
    }

    /// `out = UNet(x, t, class)` for one image: `x` [C, H, W], `class_row` the image's
    /// class-embedding row (D values) or empty for a model without classes.
    pub fn forward_image(&self, s: &mut Scratch, x: &[f32], t: f32, class_row: &[f32], out: &mut [f32]) {
        self.time_embedding(s, t, class_row);
        let [_, h0, w0] = self.sample_shape();
        let one = Epilogue { scale: 1.0, ..Default::default() };
        self.conv_in.run(x, h0, w0, &mut s.col, &mut s.cur, one);
        let (mut c, mut h, mut w) = (self.conv_in.cout, h0, w0);
        s.skip_shapes.clear();
        for op in &self.ops {
            match op {
                Op::PushSkip => {
                    let i = s.skip_shapes.len();
                    s.skips[i][..c * h * w].copy_from_slice(&s.cur[..c * h * w]);
                    s.skip_shapes.push([c, h, w]);
                }
                Op::ConcatSkip => {
                    let [cs, ..] = s.skip_shapes.pop().expect("one skip per up-block resnet");
                    let i = s.skip_shapes.len();
                    let n = c * h * w;
                    s.cur[n..n + cs * h * w].copy_from_slice(&s.skips[i][..cs * h * w]);
                    c += cs;
                }
                Op::Resnet(r) => {
                    r.run(s, c, h, w);
                    c = r.conv1.cout;
                    std::mem::swap(&mut s.cur, &mut s.next);
                }
                Op::Attention(a) => {
                    let scratch = AttentionScratch {
                        normed: &mut s.t1,
                        qkv: &mut s.qkv,
                        scores: &mut s.scores,
                        heads: &mut s.t2,
                    };
                    a.run(&s.cur[..c * h * w], h, w, scratch, &mut s.next);
                    std::mem::swap(&mut s.cur, &mut s.next);
                }
                Op::Resample(conv) => {
                    (h, w) = conv.run(&s.cur, h, w, &mut s.col, &mut s.next, one);
                    std::mem::swap(&mut s.cur, &mut s.next);
                }
            }
        }
        self.norm_out.run(&s.cur[..c * h * w], c, h * w, true, &mut s.next);
        self.conv_out.run(&s.next, h, w, &mut s.col, out, one);
    }

    /// emb = linear_2(silu(linear_1(sinusoid(t)))) + class row; the stacked ResNet
    /// projections of silu(emb) go to `s.temb`.
    fn time_embedding(&self, s: &mut Scratch, t: f32, class_row: &[f32]) {
        let half = self.freqs.len();
        for (i, &f) in self.freqs.iter().enumerate() {
            let arg = (t * f) as f64;
            let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
            let (a, b) = if self.flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
            s.time_proj[i] = a;
            s.time_proj[half + i] = b;
        }
        self.linear_1.run(&s.time_proj, &mut s.hidden);
        silu_in_place(&mut s.hidden);
        self.linear_2.run(&s.hidden, &mut s.emb);
        for (e, &c) in s.emb.iter_mut().zip(class_row) {
            *e += c;
        }
        silu_in_place(&mut s.emb);
        self.temb_proj.run(&s.emb, &mut s.temb);
    }
}

impl Resnet {
    /// `s.next = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + temb)))) / scale`
    /// with x = `s.cur` [cin, h, w].
    fn run(&self, s: &mut Scratch, cin: usize, h: usize, w: usize) {
        let (cout, hw) = (self.conv1.cout, h * w);
        let x = &s.cur[..cin * hw];
        self.norm1.run(x, cin, hw, true, &mut s.t1);
        let temb = &s.temb[self.temb_offset..self.temb_offset + cout];
        let e = Epilogue { channel_add: Some(temb), scale: 1.0, ..Default::default() };
        self.conv1.run(&s.t1, h, w, &mut s.col, &mut s.t2, e);
        self.norm2.run(&s.t2[..cout * hw], cout, hw, true, &mut s.t1);
        let residual: &[f32] = match &self.shortcut {
            Some(sc) => {
                sc.run(x, h, w, &mut [], &mut s.t3, Epilogue { scale: 1.0, ..Default::default() });
                &s.t3[..cout * hw]
            }
            None => x,
        };
        let e = Epilogue {
            residual: Some(residual),
            scale: 1.0 / self.output_scale_factor,
            ..Default::default()
        };
        self.conv2.run(&s.t1, h, w, &mut s.col, &mut s.next, e);
    }
}
