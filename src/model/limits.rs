//! Caps on every number of a model folder, in one place.
//!
//! The page loads whatever model folder a link names, so `config.json`, the safetensors
//! header and its data are untrusted. Each cap below is chosen so that a config inside all
//! of them describes a model that
//! - fits WebGPU's *default* limits: every buffer the loader uploads or a one-image forward
//!   pass allocates is at most [`BINDING_BYTES`] (the default `maxStorageBufferBindingSize`,
//!   128 MiB), so a model accepted here never needs an adapter better than the baseline;
//! - fits a stated host-memory budget: at most [`MAX_PARAMETERS`] floats (512 MiB as f32).
//!   Loading holds the file, its f32 copy and the CPU backend's packed copy at once, about
//!   1.5 GiB at the cap, inside wasm32's 4 GiB address space with room for activations;
//! - is still far larger than any published diffusers `UNet2DModel` (google/ddpm-*-256:
//!   6 levels, 2 layers, 512 channels, 114 M parameters) and ~48x the shipped ones (2.8 M).
//!
//! [`Budget::of`] computes the tensor count, parameter count and largest buffers with
//! checked arithmetic from the config alone, before any per-tensor list exists, so a config
//! of a million layers fails here in microseconds instead of building a million names.

use super::config::{DownBlockType, UNetConfig, UpBlockType};
use crate::error::{EngineError, Result};

/// WebGPU's default `maxStorageBufferBindingSize`: the largest buffer every adapter binds.
pub const BINDING_BYTES: u64 = 128 << 20;

/// Levels of the U-Net (`block_out_channels.len()`): 6 is the deepest published config
/// (256x256 DDPM); each level halves the image, so 6 levels already need 32 | sample_size.
pub const MAX_LEVELS: usize = 6;

/// ResNets per down block (`layers_per_block`; up blocks have one more). Published models
/// use 1-3; the loader builds `levels * (2 * layers + 1)` ResNets, so this bounds the op
/// list and the tensor count (at most a few thousand names).
pub const MAX_LAYERS_PER_BLOCK: usize = 4;

/// Width of any level. The largest weight is an up block's first conv, [c, 2c, 3, 3]:
/// 1024 channels make it 72 MiB, under [`BINDING_BYTES`]; its taps (2c * 9) stay far
/// below the conv shader's 2^22 limit.
pub const MAX_CHANNELS: usize = 1024;

/// `in_channels` / `out_channels`: images (1-4) and latents (4-16).
pub const MAX_IO_CHANNELS: usize = 16;

/// Height or width of the sampled image. The activations' size is checked separately
/// ([`Budget::activation_floats`]); this only keeps the products small.
pub const MAX_SAMPLE_SIZE: usize = 1024;

/// Time-embedding width: `time_embedding_dim`, by default 4 * `block_out_channels[0]`
/// (so 4 * [`MAX_CHANNELS`]); wider than the one-dispatch kernel's 1024 runs on the
/// four-dispatch path. `linear_2` is then [4096, 4096] = 64 MiB.
pub const MAX_TIME_EMBED_DIM: usize = 4 * MAX_CHANNELS;

/// Rows of the class table (`num_class_embeds`, null class included): ImageNet's 1000 with
/// a large margin; at the widest embedding the table is 160 MiB of host memory (it never
/// goes to the GPU whole).
pub const MAX_CLASSES: usize = 10_000;

/// Head size of attention: the GPU kernel's register arrays are built for at most this.
pub const MAX_HEAD_DIM: usize = crate::gpu::attention::MAX_HEAD_DIM;

/// Tokens (pixels) at a level with attention. The CPU backend holds one [tokens, tokens]
/// score matrix: 4096 tokens (64x64) make it 64 MiB; the GPU kernel streams keys and
/// needs none.
pub const MAX_ATTENTION_TOKENS: usize = 4096;

/// Every float of the weights file together (512 MiB as f32; see the module doc).
pub const MAX_PARAMETERS: u64 = 128 << 20;

/// Largest |weight| accepted. The shipped models' largest is 3.8 (digits' class table);
/// trained diffusion U-Nets stay within the low tens. 1e4 is >2600x the shipped maximum,
/// yet a few such values in a row cannot reach f32's 3.4e38 through the network's sums, so
/// a corrupt file with values near f32::MAX is refused by name instead of sampling NaN.
pub const MAX_ABS_WEIGHT: f32 = 1e4;

/// Bounds of `norm_eps` (as f32): GroupNorm divides by sqrt(var + eps), so 0 (or a value
/// that rounds to 0 in f32) gives inf/NaN on a constant channel; above 1 the norm no
/// longer normalises. diffusers uses 1e-5 or 1e-6.
pub const NORM_EPS_RANGE: (f32, f32) = (1e-12, 1.0);

/// Bounds of `mid_block_scale_factor`, which every mid-block output is divided by: 0 or
/// inf turn the image into NaN. diffusers uses 1 or sqrt(2).
pub const MID_BLOCK_SCALE_RANGE: (f32, f32) = (1e-3, 1e3);

/// What a config implies, computed from its numbers alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Tensors the weights file must hold.
    pub tensors: u64,
    /// Floats of all of them together.
    pub parameters: u64,
    /// Floats of the largest buffer the GPU loader uploads (a weight, the stacked q/k/v,
    /// the stacked time projections, or the packed time MLP).
    pub largest_weight_floats: u64,
    /// Floats of the largest activation of a one-image forward pass (an upper bound).
    pub activation_floats: u64,
}

/// Counts tensors and floats with overflow checked; a sum past u64 is an error, not a wrap.
#[derive(Default)]
struct Tally {
    tensors: u64,
    parameters: u64,
    largest: u64,
}

impl Tally {
    fn add(&mut self, shape: &[u64]) -> Result<()> {
        let n = product(shape)?;
        self.tensors += 1;
        self.parameters = self.parameters.checked_add(n).ok_or_else(overflow)?;
        self.largest = self.largest.max(n);
        Ok(())
    }

    /// A ResNet's 10 tensors (12 with the 1x1 shortcut of `cin != cout`), as in
    /// `ResnetBlock2D::parameters`.
    fn resnet(&mut self, cin: u64, cout: u64, d: u64) -> Result<()> {
        for shape in [
            &[cin][..],
            &[cin],
            &[cout, cin, 3, 3],
            &[cout],
            &[cout, d],
            &[cout],
            &[cout],
            &[cout],
            &[cout, cout, 3, 3],
            &[cout],
        ] {
            self.add(shape)?;
        }
        if cin != cout {
            self.add(&[cout, cin, 1, 1])?;
            self.add(&[cout])?;
        }
        Ok(())
    }

    /// An attention block's 10 tensors; the loader also stacks q, k and v into [3c, c].
    fn attention(&mut self, c: u64) -> Result<()> {
        self.add(&[c])?;
        self.add(&[c])?;
        for _ in 0..4 {
            self.add(&[c, c])?;
            self.add(&[c])?;
        }
        self.largest = self.largest.max(product(&[3, c, c])?);
        Ok(())
    }

    fn conv3x3(&mut self, c: u64) -> Result<()> {
        self.add(&[c, c, 3, 3])?;
        self.add(&[c])
    }
}

fn overflow() -> EngineError {
    EngineError::limit("model size", "the sizes config.json implies overflow 64-bit integers")
}

fn product(dims: &[u64]) -> Result<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)
}

fn in_range(field: &str, value: usize, min: usize, max: usize, why: &str) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(EngineError::config(field, value, format!("must be in {min}..={max} ({why})")))
    }
}

impl Budget {
    /// Checks every dimension of `cfg` against the caps above, then computes what the
    /// config implies and checks that against [`MAX_PARAMETERS`] and [`BINDING_BYTES`].
    pub fn of(cfg: &UNetConfig) -> Result<Budget> {
        check_dimensions(cfg)?;
        let u = |v: usize| v as u64;
        let chans: Vec<u64> = cfg.block_out_channels.iter().map(|&c| u(c)).collect();
        let levels = chans.len();
        let (c0, d, layers) = (chans[0], u(cfg.time_embed_dim()), cfg.layers_per_block);
        let mut t = Tally::default();
        t.add(&[c0, u(cfg.in_channels), 3, 3])?;
        t.add(&[c0])?;
        t.add(&[d, c0])?;
        t.add(&[d])?;
        t.add(&[d, d])?;
        t.add(&[d])?;
        if let Some(n) = cfg.num_class_embeds {
            t.add(&[u(n), d])?;
        }
        // Mirrors UNetSpec::new: the widths each ResNet sees, and the stacked time
        // projection's width (the sum of every ResNet's output width).
        let mut temb_width = 0u64;
        let mut out_c = c0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = chans[i];
            for j in 0..layers {
                t.resnet(if j == 0 { in_c } else { out_c }, out_c, d)?;
                temb_width += out_c;
            }
            if *kind == DownBlockType::AttnDownBlock2D {
                for _ in 0..layers {
                    t.attention(out_c)?;
                }
            }
            if i + 1 < levels {
                t.conv3x3(out_c)?;
            }
        }
        if cfg.has_mid_block {
            let c = chans[levels - 1];
            t.resnet(c, c, d)?;
            t.resnet(c, c, d)?;
            temb_width += 2 * c;
            if cfg.add_attention {
                t.attention(c)?;
            }
        }
        let rev: Vec<u64> = chans.iter().rev().copied().collect();
        let mut out_c = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_out = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(levels - 1)];
            for j in 0..=layers {
                let skip = if j == layers { in_c } else { out_c };
                let hidden = if j == 0 { prev_out } else { out_c };
                t.resnet(hidden + skip, out_c, d)?;
                temb_width += out_c;
            }
            if *kind == UpBlockType::AttnUpBlock2D {
                for _ in 0..=layers {
                    t.attention(out_c)?;
                }
            }
            if i + 1 < levels {
                t.conv3x3(out_c)?;
            }
        }
        t.add(&[c0])?;
        t.add(&[c0])?;
        t.add(&[u(cfg.out_channels), c0, 3, 3])?;
        t.add(&[u(cfg.out_channels)])?;

        // The GPU loader's stacked buffers: all time projections as one linear, or, where
        // the one-dispatch time MLP applies, everything of the time embedding packed.
        let stacked = product(&[temb_width, d])?.checked_add(temb_width).ok_or_else(overflow)?;
        let packed = [product(&[d, c0])?, d, product(&[d, d])?, d, stacked]
            .into_iter()
            .try_fold(0u64, u64::checked_add)
            .ok_or_else(overflow)?;
        let fused = c0 <= crate::gpu::time_mlp::MAX_D as u64 && d <= crate::gpu::time_mlp::MAX_D as u64;
        let largest_weight_floats = t.largest.max(if fused { packed } else { stacked });

        // Per level: the widest tensor there is an attention's q/k/v (3c), an up block's
        // concat (c + a neighbour's c) or a ResNet's output; 3 x the widest neighbouring
        // level bounds all of them.
        let (h, w) = (u(cfg.sample_size.0), u(cfg.sample_size.1));
        let mut activation_floats = 0u64;
        for i in 0..levels {
            let widest = chans[i.saturating_sub(1)..(i + 2).min(levels)].iter().copied().max().unwrap_or(c0);
            let pixels = product(&[h >> i, w >> i])?;
            activation_floats = activation_floats.max(product(&[3, widest, pixels])?);
        }

        let budget =
            Budget { tensors: t.tensors, parameters: t.parameters, largest_weight_floats, activation_floats };
        budget.check(cfg)?;
        Ok(budget)
    }

    fn check(&self, cfg: &UNetConfig) -> Result<()> {
        let mib = |floats: u64| floats as f64 * 4.0 / (1u64 << 20) as f64;
        if self.parameters > MAX_PARAMETERS {
            return Err(EngineError::limit(
                "parameters",
                format!(
                    "config.json implies {} parameters ({:.0} MiB as f32); this engine loads at most {MAX_PARAMETERS} ({:.0} MiB)",
                    self.parameters,
                    mib(self.parameters),
                    mib(MAX_PARAMETERS)
                ),
            ));
        }
        let limit = BINDING_BYTES / 4;
        if self.largest_weight_floats > limit {
            return Err(EngineError::limit(
                "parameters",
                format!(
                    "config.json implies a weight buffer of {:.0} MiB; WebGPU's default binding limit is {} MiB",
                    mib(self.largest_weight_floats),
                    BINDING_BYTES >> 20
                ),
            ));
        }
        if self.activation_floats > limit {
            return Err(EngineError::config(
                "sample_size",
                format!("{:?}", cfg.sample_size),
                format!(
                    "one image's activations need a {:.0} MiB buffer at this size and width; WebGPU's default binding limit is {} MiB",
                    mib(self.activation_floats),
                    BINDING_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// Each dimension on its own, and the numbers that the kernels read as f32.
fn check_dimensions(cfg: &UNetConfig) -> Result<()> {
    let levels = cfg.block_out_channels.len();
    if !(1..=MAX_LEVELS).contains(&levels) {
        return Err(EngineError::config(
            "block_out_channels",
            format!("({levels} entries)"),
            format!("must have 1..={MAX_LEVELS} entries (levels of the U-Net)"),
        ));
    }
    for &c in &cfg.block_out_channels {
        in_range("block_out_channels", c, 1, MAX_CHANNELS, "channels of one level")?;
    }
    in_range("layers_per_block", cfg.layers_per_block, 1, MAX_LAYERS_PER_BLOCK, "ResNets per down block")?;
    in_range("in_channels", cfg.in_channels, 1, MAX_IO_CHANNELS, "image or latent channels")?;
    in_range("out_channels", cfg.out_channels, 1, MAX_IO_CHANNELS, "image or latent channels")?;
    for side in [cfg.sample_size.0, cfg.sample_size.1] {
        in_range("sample_size", side, 1, MAX_SAMPLE_SIZE, "pixels per side")?;
    }
    in_range("time_embedding_dim", cfg.time_embed_dim(), 1, MAX_TIME_EMBED_DIM, "time-embedding width")?;
    in_range("norm_num_groups", cfg.norm_num_groups, 1, MAX_CHANNELS, "groups of a GroupNorm")?;
    if let Some(g) = cfg.attn_norm_num_groups {
        in_range("attn_norm_num_groups", g, 1, MAX_CHANNELS, "groups of a GroupNorm")?;
    }
    if let Some(n) = cfg.num_class_embeds {
        in_range("num_class_embeds", n, 2, MAX_CLASSES, "classes plus the null class")?;
    }
    if let Some(d) = cfg.attention_head_dim {
        in_range("attention_head_dim", d, 1, MAX_HEAD_DIM, "the attention kernel's largest head")?;
    }
    let (h, w) = cfg.sample_size;
    for (i, kind) in cfg.down_block_types.iter().enumerate() {
        let up_has = cfg.up_block_types.get(levels - 1 - i) == Some(&UpBlockType::AttnUpBlock2D);
        let mid_has = i == levels - 1 && cfg.has_mid_block && cfg.add_attention;
        let tokens = (h >> i) * (w >> i);
        if (*kind == DownBlockType::AttnDownBlock2D || up_has || mid_has) && tokens > MAX_ATTENTION_TOKENS {
            return Err(EngineError::config(
                "sample_size",
                format!("{:?}", cfg.sample_size),
                format!(
                    "attention at level {i} would run over {tokens} pixels; at most {MAX_ATTENTION_TOKENS} \
                     (64x64) are supported"
                ),
            ));
        }
    }

    // Checked as the f32 the kernels use: a value that is finite in JSON can still round to
    // 0 or inf.
    let half = (cfg.block_out_channels[0] / 2) as f32;
    if !(-half..=half - 1.0).contains(&cfg.freq_shift) {
        // The sinusoid's exponents are i / (half - freq_shift): a denominator below 1
        // makes them blow up to inf (and 0 / 0 at the first one), NaN in every image.
        return Err(EngineError::config(
            "freq_shift",
            cfg.freq_shift,
            format!(
                "must be in [{}, {}]: the timestep embedding divides by half of block_out_channels[0] ({half}) minus freq_shift",
                -half,
                half - 1.0
            ),
        ));
    }
    let (lo, hi) = NORM_EPS_RANGE;
    if !(lo..=hi).contains(&cfg.norm_eps) {
        return Err(EngineError::config(
            "norm_eps",
            cfg.norm_eps,
            format!("must be in [{lo:e}, {hi}] (as f32): GroupNorm divides by sqrt(variance + norm_eps)"),
        ));
    }
    let (lo, hi) = MID_BLOCK_SCALE_RANGE;
    if !(lo..=hi).contains(&cfg.mid_block_scale_factor) {
        return Err(EngineError::config(
            "mid_block_scale_factor",
            cfg.mid_block_scale_factor,
            format!("must be in [{lo}, {hi}]: the mid block's outputs are divided by it"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetSpec;

    fn spec_counts(cfg: &UNetConfig) -> (u64, u64) {
        let params = UNetSpec::new(cfg).parameters();
        (params.len() as u64, params.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum())
    }

    #[test]
    fn arithmetic_matches_the_spec_for_the_shipped_models() {
        for dir in ["www/models/fashion", "www/models/digits", "tests/fixtures/unet_small"] {
            let text =
                std::fs::read_to_string(format!("{}/{dir}/config.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let cfg = UNetConfig::from_json(&text).unwrap();
            let b = Budget::of(&cfg).unwrap();
            assert_eq!((b.tensors, b.parameters), spec_counts(&cfg), "{dir}");
        }
        // 215 tensors and 2,786,657 floats: what the fashion file's header says.
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/www/models/fashion/config.json"))
                .unwrap();
        let b = Budget::of(&UNetConfig::from_json(&text).unwrap()).unwrap();
        assert_eq!((b.tensors, b.parameters), (215, 2_786_657));
    }

    #[test]
    fn a_published_256px_ddpm_config_fits() {
        // google/ddpm-church-256's architecture (114 M parameters).
        let cfg = UNetConfig::from_json(
            r#"{"sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512],
                "down_block_types": ["DownBlock2D","DownBlock2D","DownBlock2D","DownBlock2D","AttnDownBlock2D","DownBlock2D"],
                "up_block_types": ["UpBlock2D","AttnUpBlock2D","UpBlock2D","UpBlock2D","UpBlock2D","UpBlock2D"],
                "attention_head_dim": null, "norm_eps": 1e-6, "freq_shift": 1, "flip_sin_to_cos": false}"#,
        );
        // A head of 512 channels is beyond the attention kernel; everything else fits.
        let e = cfg.unwrap_err();
        assert_eq!(e.field(), Some("attention_head_dim"), "{e}");
        let cfg = UNetConfig::from_json(
            r#"{"sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512],
                "down_block_types": ["DownBlock2D","DownBlock2D","DownBlock2D","DownBlock2D","AttnDownBlock2D","DownBlock2D"],
                "up_block_types": ["UpBlock2D","AttnUpBlock2D","UpBlock2D","UpBlock2D","UpBlock2D","UpBlock2D"],
                "attention_head_dim": 64, "norm_eps": 1e-6, "freq_shift": 1, "flip_sin_to_cos": false}"#,
        )
        .unwrap();
        let b = Budget::of(&cfg).unwrap();
        assert_eq!((b.tensors, b.parameters), spec_counts(&cfg));
        assert!(b.parameters > 100_000_000 && b.parameters < MAX_PARAMETERS, "{b:?}");
    }
}
