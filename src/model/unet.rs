//! diffusers' `UNet2DModel` (the subset in ARCHITECTURE.md): the block tree a config
//! implies, its weights on the GPU, and a forward pass planned once per batch size.
//! Read beside diffusers' `models/unets/unet_2d.py` and `unet_2d_blocks.py`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::arena::Arena;
use super::blocks::{
    affine_name, Attention, Derived, Downsample2D, ParamList, Planner, ResnetBlock2D, Upsample2D,
};
use super::config::{DownBlockType, UNetConfig, UpBlockType};
use super::load::HostModel;
use super::weights::{HostTensor, Weights};
use crate::error::{EngineError, Result};
use crate::gpu::conv2d::{conv2d, Conv2dArgs};
use crate::gpu::linear::linear;
use crate::gpu::time_mlp::{self, TimeMlpOut};
use crate::gpu::timestep_embedding::{timestep_embedding, TimestepFrequencies};
use crate::gpu::weight_texture::weight_texture;
use crate::gpu::{Dispatch, Gpu, Tensor};

/// The packed weights of the one-dispatch time-embedding MLP (see [`time_mlp::pack`]).
const TIME_MLP: &str = "time_mlp.weights";

/// `DownBlock2D` / `AttnDownBlock2D`.
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
    pub downsampler: Option<Downsample2D>,
}

/// `UNetMidBlock2D`: resnet, (attention, resnet) once.
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

/// `UpBlock2D` / `AttnUpBlock2D`: each resnet reads the concat of the running hidden
/// state and one skip, popped from the end of the down path's outputs.
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
    pub upsampler: Option<Upsample2D>,
}

/// The block tree of a config, with every parameter's name and shape.
pub struct UNetSpec {
    pub config: UNetConfig,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub up_blocks: Vec<UpBlock>,
    /// Sum of every ResNet's output width: the stacked time-embedding projection.
    pub temb_proj_width: usize,
}

impl UNetSpec {
    pub fn new(config: &UNetConfig) -> Self {
        let cfg = config;
        let chans = &cfg.block_out_channels;
        let levels = chans.len();
        let mut temb_offset = 0;
        let mut resnet = |prefix: String, cin: usize, cout: usize, scale: f32| {
            let r = ResnetBlock2D {
                prefix,
                cin,
                cout,
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                output_scale_factor: scale,
                temb_offset,
            };
            temb_offset += cout;
            r
        };
        let attention = |prefix: String, c: usize, groups: usize, rescale: f32| Attention {
            prefix,
            channels: c,
            heads: cfg.heads(c),
            groups,
            eps: cfg.norm_eps,
            rescale_output_factor: rescale,
        };

        let mut down_blocks = Vec::new();
        let mut out_c = chans[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = chans[i];
            let resnets: Vec<_> = (0..cfg.layers_per_block)
                .map(|j| {
                    resnet(
                        format!("down_blocks.{i}.resnets.{j}"),
                        if j == 0 { in_c } else { out_c },
                        out_c,
                        1.0,
                    )
                })
                .collect();
            let attentions = match kind {
                DownBlockType::AttnDownBlock2D => (0..cfg.layers_per_block)
                    .map(|j| {
                        attention(format!("down_blocks.{i}.attentions.{j}"), out_c, cfg.norm_num_groups, 1.0)
                    })
                    .collect(),
                DownBlockType::DownBlock2D => Vec::new(),
            };
            let downsampler = (i + 1 < levels)
                .then(|| Downsample2D { prefix: format!("down_blocks.{i}.downsamplers.0"), channels: out_c });
            down_blocks.push(DownBlock { resnets, attentions, downsampler });
        }

        let mid_block = cfg.has_mid_block.then(|| {
            let c = chans[levels - 1];
            let s = cfg.mid_block_scale_factor;
            let attn_groups = cfg.attn_norm_num_groups.unwrap_or(cfg.norm_num_groups);
            MidBlock {
                resnets: vec![
                    resnet("mid_block.resnets.0".into(), c, c, s),
                    resnet("mid_block.resnets.1".into(), c, c, s),
                ],
                attentions: if cfg.add_attention {
                    vec![attention("mid_block.attentions.0".into(), c, attn_groups, s)]
                } else {
                    Vec::new()
                },
            }
        });

        let mut up_blocks = Vec::new();
        let rev: Vec<usize> = chans.iter().rev().copied().collect();
        let mut out_c = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_out = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(levels - 1)];
            let layers = cfg.layers_per_block + 1;
            let resnets: Vec<_> = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { in_c } else { out_c };
                    let hidden = if j == 0 { prev_out } else { out_c };
                    resnet(format!("up_blocks.{i}.resnets.{j}"), hidden + skip, out_c, 1.0)
                })
                .collect();
            let attentions = match kind {
                UpBlockType::AttnUpBlock2D => (0..layers)
                    .map(|j| {
                        attention(format!("up_blocks.{i}.attentions.{j}"), out_c, cfg.norm_num_groups, 1.0)
                    })
                    .collect(),
                UpBlockType::UpBlock2D => Vec::new(),
            };
            let upsampler = (i + 1 < levels)
                .then(|| Upsample2D { prefix: format!("up_blocks.{i}.upsamplers.0"), channels: out_c });
            up_blocks.push(UpBlock { resnets, attentions, upsampler });
        }

        UNetSpec { config: cfg.clone(), down_blocks, mid_block, up_blocks, temb_proj_width: temb_offset }
    }

    fn resnets(&self) -> impl Iterator<Item = &ResnetBlock2D> {
        self.down_blocks
            .iter()
            .flat_map(|b| &b.resnets)
            .chain(self.mid_block.iter().flat_map(|b| &b.resnets))
            .chain(self.up_blocks.iter().flat_map(|b| &b.resnets))
    }

    fn attentions(&self) -> impl Iterator<Item = &Attention> {
        self.down_blocks
            .iter()
            .flat_map(|b| &b.attentions)
            .chain(self.mid_block.iter().flat_map(|b| &b.attentions))
            .chain(self.up_blocks.iter().flat_map(|b| &b.attentions))
    }

    /// Every GroupNorm (parameter prefix) whose gamma and beta a convolution reads as one
    /// [gamma; beta] tensor ([`affine_name`]), and its channels.
    fn group_norms(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for r in self.resnets() {
            out.push((format!("{}.norm1", r.prefix), r.cin));
            out.push((format!("{}.norm2", r.prefix), r.cout));
        }
        for a in self.attentions() {
            out.push((format!("{}.group_norm", a.prefix), a.channels));
        }
        out.push(("conv_norm_out".into(), self.config.block_out_channels[0]));
        out
    }

    /// Every parameter the weights file must hold, named as diffusers names them.
    pub fn parameters(&self) -> ParamList {
        let cfg = &self.config;
        let (c0, d) = (cfg.block_out_channels[0], cfg.time_embed_dim());
        let mut out: ParamList = vec![
            ("conv_in.weight".into(), vec![c0, cfg.in_channels, 3, 3]),
            ("conv_in.bias".into(), vec![c0]),
            ("time_embedding.linear_1.weight".into(), vec![d, c0]),
            ("time_embedding.linear_1.bias".into(), vec![d]),
            ("time_embedding.linear_2.weight".into(), vec![d, d]),
            ("time_embedding.linear_2.bias".into(), vec![d]),
        ];
        if let Some(n) = cfg.num_class_embeds {
            out.push(("class_embedding.weight".into(), vec![n, d]));
        }
        for r in self.resnets() {
            r.parameters(d, &mut out);
        }
        for a in self.attentions() {
            a.parameters(&mut out);
        }
        for b in &self.down_blocks {
            if let Some(ds) = &b.downsampler {
                ds.parameters(&mut out);
            }
        }
        for b in &self.up_blocks {
            if let Some(us) = &b.upsampler {
                us.parameters(&mut out);
            }
        }
        out.push(("conv_norm_out.weight".into(), vec![c0]));
        out.push(("conv_norm_out.bias".into(), vec![c0]));
        out.push(("conv_out.weight".into(), vec![cfg.out_channels, c0, 3, 3]));
        out.push(("conv_out.bias".into(), vec![cfg.out_channels]));
        out
    }
}

/// A loaded model: its block tree and its weights on the GPU.
pub struct UNet {
    pub spec: UNetSpec,
    params: HashMap<String, Tensor>,
    /// Rows of the class-embedding table, kept on the host: labels are fixed for a whole
    /// sampling run, so their rows are looked up once per run, not per step.
    class_table: Option<HostTensor>,
    freqs: TimestepFrequencies,
    /// Bytes of the largest activation buffer per image (see [`UNet::max_batch`]).
    bytes_per_image: OnceLock<u64>,
}

impl UNet {
    /// Parses `config.json` and a safetensors file, checks every tensor against the config,
    /// and uploads the weights.
    pub fn load(gpu: &Gpu, config_json: &str, safetensors: &[u8]) -> Result<Self> {
        let host = HostModel::load(config_json, safetensors)?;
        Self::from_checked(gpu, host.spec, &host.weights)
    }

    /// Uploads weights built in code (tests); they are checked against the config first.
    pub fn from_weights(gpu: &Gpu, config: &UNetConfig, weights: &Weights) -> Result<Self> {
        config.validate()?;
        let spec = UNetSpec::new(config);
        weights.check(&spec.parameters())?;
        Self::from_checked(gpu, spec, weights)
    }

    fn from_checked(gpu: &Gpu, spec: UNetSpec, weights: &Weights) -> Result<Self> {
        let config = &spec.config.clone();
        let get = |name: &str| {
            weights.get(name).ok_or_else(|| EngineError::weights(name, "missing (checked above)"))
        };
        let mut params = HashMap::new();
        let mut upload = |name: String, t: &HostTensor, shape: &[usize]| -> Result<()> {
            let tensor = Tensor::from_slice(gpu, &name, shape, &t.data)?;
            // The texture a direct conv reads a weight matrix from, made now, inside the
            // model's allocation scope, rather than by the first plan, inside a session's,
            // whose failure must not leave a failed texture cached on the model.
            if shape.len() >= 2 && gpu.weight_textures() {
                weight_texture(gpu, &tensor)?;
            }
            params.insert(name, tensor);
            Ok(())
        };

        // ResNets' time projections are stacked into one [sum of widths, D] linear, run
        // once per step for all of them.
        let d = config.time_embed_dim();
        let mut proj_w = Vec::with_capacity(spec.temb_proj_width * d);
        let mut proj_b = Vec::with_capacity(spec.temb_proj_width);
        for r in spec.resnets() {
            proj_w.extend_from_slice(&get(&format!("{}.time_emb_proj.weight", r.prefix))?.data);
            proj_b.extend_from_slice(&get(&format!("{}.time_emb_proj.bias", r.prefix))?.data);
        }
        let stacked = |data: Vec<f32>, shape: Vec<usize>| HostTensor { shape, data };
        // The whole time-embedding MLP runs as one dispatch from one packed buffer, where
        // its widths fit the kernel's workgroup memory; only the four-dispatch path needs
        // linear_1, linear_2 and the stacked projection as tensors of their own.
        let fused_time_mlp = config.block_out_channels[0] <= time_mlp::MAX_D && d <= time_mlp::MAX_D;
        if fused_time_mlp {
            let w = |n: &str| get(n).map(|t| t.data.as_slice());
            let packed = time_mlp::pack(
                w("time_embedding.linear_1.weight")?,
                w("time_embedding.linear_1.bias")?,
                w("time_embedding.linear_2.weight")?,
                w("time_embedding.linear_2.bias")?,
                &proj_w,
                &proj_b,
            );
            let len = packed.len();
            upload(TIME_MLP.into(), &stacked(packed, vec![len]), &[len])?;
        } else {
            upload(
                "temb_proj.weight".into(),
                &stacked(proj_w, vec![spec.temb_proj_width, d]),
                &[spec.temb_proj_width, d],
            )?;
            upload(
                "temb_proj.bias".into(),
                &stacked(proj_b, vec![spec.temb_proj_width]),
                &[spec.temb_proj_width],
            )?;
        }

        // Each block uploads what it packs or stacks for its kernels; the rest of the file
        // goes up as it is, except what the model derives above (the time embedding) or
        // keeps on the host (the class table).
        let mut derived = Derived::default();
        for r in spec.resnets() {
            r.derive(weights, &mut derived)?;
        }
        for a in spec.attentions() {
            a.derive(weights, &mut derived)?;
        }
        for u in spec.up_blocks.iter().filter_map(|b| b.upsampler.as_ref()) {
            u.derive(weights, &mut derived)?;
        }
        for (name, t) in &derived.tensors {
            upload(name.clone(), t, &t.shape)?;
        }
        for (norm, c) in spec.group_norms() {
            let mut affine = get(&format!("{norm}.weight"))?.data.clone();
            affine.extend_from_slice(&get(&format!("{norm}.bias"))?.data);
            upload(affine_name(&norm), &stacked(affine, vec![2 * c]), &[2 * c])?;
        }

        let mut replaced: HashSet<String> = derived.replaces.into_iter().collect();
        replaced.extend(
            spec.resnets()
                .flat_map(|r| ["weight", "bias"].map(|k| format!("{}.time_emb_proj.{k}", r.prefix))),
        );
        if fused_time_mlp {
            replaced.extend(
                ["linear_1", "linear_2"]
                    .iter()
                    .flat_map(|l| ["weight", "bias"].map(|k| format!("time_embedding.{l}.{k}"))),
            );
        }
        replaced.insert("class_embedding.weight".into());
        for (name, shape) in spec.parameters() {
            if !replaced.contains(&name) {
                upload(name.clone(), get(&name)?, &shape)?;
            }
        }

        let class_table = weights.get("class_embedding.weight").cloned();
        let freqs = TimestepFrequencies::new(
            gpu,
            config.block_out_channels[0],
            config.flip_sin_to_cos,
            config.freq_shift,
        )?;
        Ok(UNet { spec, params, class_table, freqs, bytes_per_image: OnceLock::new() })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.spec.config
    }

    /// Image shape [C, H, W] the model samples.
    pub fn sample_shape(&self) -> [usize; 3] {
        let c = self.config();
        [c.in_channels, c.sample_size.0, c.sample_size.1]
    }

    /// Plans one forward pass over `batch` images: every activation buffer is allocated
    /// here, once, and the returned [`Forward`] is replayed every sampling step.
    pub fn plan(&self, gpu: &Gpu, batch: usize) -> Result<Forward> {
        self.plan_in(gpu, batch, Arena::new())
    }

    /// Plans a pass of the same batch as `other` that runs on `other`'s activation buffers
    /// and has its own input, timesteps and classes: for shards of a batch run one after
    /// the other (see [`crate::pipeline`]). Every other tensor, `output`, `time_proj`,
    /// `emb` and the [`Forward::activation`]s included, is `other`'s: read it before the
    /// next shard's pass runs.
    pub fn plan_sharing(&self, gpu: &Gpu, other: &Forward) -> Result<Forward> {
        self.plan_in(gpu, other.batch, Arena::reusing(&other.arena))
    }

    /// Bytes of the pass's largest buffer per image: every activation is linear in the
    /// batch, so this is measured once per model by planning a pass of one image.
    pub fn bytes_per_image(&self, gpu: &Gpu) -> Result<u64> {
        if let Some(b) = self.bytes_per_image.get() {
            return Ok(*b);
        }
        let b = self.plan(gpu, 1)?.largest_binding_bytes();
        Ok(*self.bytes_per_image.get_or_init(|| b))
    }

    /// The largest batch one forward pass can take before one of its buffers outgrows a
    /// storage binding (0 if not even one image fits).
    pub fn max_batch(&self, gpu: &Gpu) -> Result<usize> {
        Ok((gpu.max_binding_bytes() / self.bytes_per_image(gpu)?.max(1)) as usize)
    }

    fn plan_in(&self, gpu: &Gpu, batch: usize, mut arena: Arena) -> Result<Forward> {
        // Weights of another device must not reach a bind group: wgpu-core looks their ids
        // up in this device's tables (a panic, or another buffer's data). All were uploaded
        // together, so one tells for all; a lost device's report names the loss.
        if let Some(weight) = self.params.values().next() {
            weight.check_device(gpu)?;
        }
        let cfg = self.config();
        let [cin, h, w] = self.sample_shape();
        let (c0, d) = (cfg.block_out_channels[0], cfg.time_embed_dim());
        let input = Tensor::zeros(gpu, "unet.input", &[batch, cin, h, w])?;
        let timesteps = Tensor::zeros(gpu, "unet.timesteps", &[batch])?;
        let class_emb = Tensor::zeros(gpu, "class_embedding", &[batch, d, 1, 1])?;
        let time_proj = arena.alloc(gpu, "time_proj", &[batch, c0])?;
        let emb = arena.alloc(gpu, "emb", &[batch, d, 1, 1])?;
        let temb = arena.alloc(gpu, "temb_proj", &[batch, self.spec.temb_proj_width])?;
        let output = arena.alloc(gpu, "unet.output", &[batch, cfg.out_channels, h, w])?;
        let p = |n: &str| {
            self.params.get(n).ok_or_else(|| EngineError::weights(n, "was not uploaded (an engine bug)"))
        };

        let emb2 = emb.reshape(&[batch, d])?;
        let head: Vec<Dispatch> = if let Some(weights) = self.params.get(TIME_MLP) {
            let class2 = class_emb.reshape(&[batch, d])?;
            let out = TimeMlpOut { time_proj: &time_proj, emb: &emb2, temb: &temb };
            vec![time_mlp::time_mlp(
                gpu,
                &self.freqs,
                &timesteps,
                weights,
                self.class_table.as_ref().map(|_| &class2),
                &out,
            )?]
        } else {
            // emb = linear_2(silu(linear_1(time_proj(t)))) + class_embedding[label]; linear_2
            // runs as a 1x1 convolution so the class rows can ride in its residual epilogue.
            let time_hidden = arena.alloc(gpu, "time_embedding.linear_1", &[batch, d])?;
            let hidden4 = time_hidden.reshape(&[batch, d, 1, 1])?;
            let w2 = p("time_embedding.linear_2.weight")?.reshape(&[d, d, 1, 1])?;
            vec![
                timestep_embedding(gpu, &self.freqs, &timesteps, &time_proj)?,
                linear(
                    gpu,
                    &time_proj,
                    p("time_embedding.linear_1.weight")?,
                    p("time_embedding.linear_1.bias")?,
                    &time_hidden,
                    false,
                    true,
                )?,
                conv2d(
                    gpu,
                    &Conv2dArgs {
                        residual: self.class_table.as_ref().map(|_| &class_emb),
                        ..Conv2dArgs::new(&hidden4, &w2, p("time_embedding.linear_2.bias")?, &emb)
                    },
                )?,
                linear(gpu, &emb2, p("temb_proj.weight")?, p("temb_proj.bias")?, &temb, true, false)?,
            ]
        };

        let mut planner = Planner::new(gpu, &self.params, &temb, arena);
        for dsp in head {
            planner.push(dsp);
        }
        let x = planner.keep_conv_out("conv_in", &[batch, c0, h, w], (3, 1, 1))?;
        let dsp = conv2d(
            gpu,
            &Conv2dArgs::new(&input, p("conv_in.weight")?, p("conv_in.bias")?, &planner.kept[x]),
        )?;
        planner.push(dsp);
        planner.name("conv_in", x);

        let mut skips = vec![x];
        let mut x = x;
        for (i, block) in self.spec.down_blocks.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.plan(&mut planner, x, None)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.plan(&mut planner, x)?;
                }
                skips.push(x);
            }
            if let Some(ds) = &block.downsampler {
                x = ds.plan(&mut planner, x)?;
                skips.push(x);
            }
            planner.name(format!("down_blocks.{i}"), x);
        }
        if let Some(mid) = &self.spec.mid_block {
            x = mid.resnets[0].plan(&mut planner, x, None)?;
            if let Some(attn) = mid.attentions.first() {
                x = attn.plan(&mut planner, x)?;
            }
            x = mid.resnets[1].plan(&mut planner, x, None)?;
            planner.name("mid_block", x);
        }
        for (i, block) in self.spec.up_blocks.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| EngineError::shape("UNet2DModel", "ran out of skip connections"))?;
                x = resnet.plan(&mut planner, x, Some(skip))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.plan(&mut planner, x)?;
                }
            }
            if let Some(us) = &block.upsampler {
                x = us.plan(&mut planner, x)?;
            }
            planner.name(format!("up_blocks.{i}"), x);
        }

        // conv_norm_out + SiLU folded into conv_out's reads.
        let x_t = planner.kept[x].clone();
        let norm = planner.fold_norm(
            "conv_norm_out",
            &x_t,
            None,
            "conv_norm_out",
            cfg.norm_num_groups,
            cfg.norm_eps,
        )?;
        let dsp = conv2d(
            gpu,
            &Conv2dArgs {
                norm: Some(norm.input(true)),
                ..Conv2dArgs::new(&x_t, p("conv_out.weight")?, p("conv_out.bias")?, &output)
            },
        )?;
        planner.push(dsp);

        let named = planner.named.iter().map(|(n, i)| (n.clone(), planner.kept[*i].clone())).collect();
        Ok(Forward {
            batch,
            input,
            timesteps,
            class_emb,
            time_proj,
            emb,
            output,
            ops: planner.ops,
            arena: planner.arena,
            named,
        })
    }

    /// The class-embedding rows of `labels`, [labels.len(), D].
    fn class_rows(&self, labels: &[u32]) -> Result<Vec<f32>> {
        class_rows(self.class_table.as_ref(), labels)
    }
}

/// The rows of a class-embedding table for `labels`, [labels.len(), D] (both backends look
/// the rows up once per run). A model without a table takes no labels.
pub fn class_rows(table: Option<&HostTensor>, labels: &[u32]) -> Result<Vec<f32>> {
    let Some(table) = table else {
        return if labels.is_empty() {
            Ok(Vec::new())
        } else {
            Err(EngineError::Unsupported {
                op: "UNet2DModel",
                message: "this model has no class embedding (num_class_embeds is null), so it takes no class"
                    .into(),
            })
        };
    };
    let (rows, d) = (table.shape[0], table.shape[1]);
    let mut out = Vec::with_capacity(labels.len() * d);
    for &l in labels {
        let l = l as usize;
        if l >= rows {
            return Err(EngineError::shape(
                "UNet2DModel",
                format!(
                    "class {l} is out of range: the model has classes 0..{} and the null class {}",
                    rows - 1,
                    rows - 1
                ),
            ));
        }
        out.extend_from_slice(&table.data[l * d..(l + 1) * d]);
    }
    Ok(out)
}

/// One planned forward pass: `output = UNet(input, timesteps, classes)` for a fixed batch.
pub struct Forward {
    pub batch: usize,
    /// [batch, in_channels, H, W]
    pub input: Tensor,
    /// [batch] (f32; fractional timesteps allowed)
    pub timesteps: Tensor,
    class_emb: Tensor,
    /// The sinusoidal embedding [batch, C0] and the full embedding (time MLP + class)
    /// [batch, D, 1, 1], exposed for tests.
    pub time_proj: Tensor,
    pub emb: Tensor,
    /// [batch, out_channels, H, W]
    pub output: Tensor,
    ops: Vec<Dispatch>,
    /// Every activation buffer (kept alive here; shared by passes planned with
    /// [`UNet::plan_sharing`]).
    arena: Arena,
    named: Vec<(String, Tensor)>,
}

impl Forward {
    /// Sets the class of every batch item (uploads their embedding rows); call once per
    /// sampling run. A model without classes accepts only an empty list.
    pub fn set_classes(&self, gpu: &Gpu, unet: &UNet, labels: &[u32]) -> Result<()> {
        if unet.class_table.is_none() && labels.is_empty() {
            return Ok(());
        }
        if labels.len() != self.batch {
            return Err(EngineError::shape(
                "UNet2DModel",
                format!("{} class labels for a batch of {}", labels.len(), self.batch),
            ));
        }
        self.class_emb.write(gpu, &unet.class_rows(labels)?)
    }

    /// Queues the timesteps of the next pass (ordered before the next submit).
    pub fn set_timesteps(&self, gpu: &Gpu, t: &[f32]) -> Result<()> {
        self.timesteps.write(gpu, t)
    }

    /// The largest buffer of the pass, in bytes (input, output and activations).
    pub fn largest_binding_bytes(&self) -> u64 {
        let own = [&self.input, &self.class_emb].map(|t| t.numel() as u64 * 4);
        own.into_iter().fold(self.arena.largest_bytes(), u64::max)
    }

    /// Bytes of every buffer the pass owns (input, timesteps, classes and activations): what
    /// `pipeline::image_bytes` must not underestimate per image.
    pub fn activation_bytes(&self) -> u64 {
        let own = [&self.input, &self.timesteps, &self.class_emb].map(|t| t.numel() as u64 * 4);
        self.arena.total_bytes() + own.iter().sum::<u64>()
    }

    /// Every dispatch of the pass, in order.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.ops.iter()
    }

    /// The output of a top-level module (`conv_in`, `down_blocks.1`, `mid_block`,
    /// `up_blocks.0`), for tests and traces.
    pub fn activation(&self, module: &str) -> Option<&Tensor> {
        self.named.iter().find(|(n, _)| n == module).map(|(_, t)| t)
    }
}
