//! diffusers' `UNet2DModel` `config.json`, restricted to the subset the engine implements.
//!
//! Every field is read explicitly: a value outside the subset, a field we do not know, or
//! two fields that disagree is an [`EngineError::Config`] naming the field and its value.
//! Nothing is silently defaulted except where diffusers itself defaults a missing field.

use serde_json::{Map, Value};

use super::limits::{Budget, MAX_LEVELS};
use crate::error::{EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockType {
    DownBlock2D,
    AttnDownBlock2D,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockType {
    UpBlock2D,
    AttnUpBlock2D,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    pub sample_size: (usize, usize),
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub has_mid_block: bool,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f32,
    /// `None` in the file means "one head per block" (head size = the block's channels).
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f32,
    pub add_attention: bool,
    /// Rows of the class-embedding table (the last one is the null class of CFG).
    pub num_class_embeds: Option<usize>,
    pub time_embedding_dim: Option<usize>,
}

/// Fields diffusers writes that carry no meaning for inference once checked.
const IGNORED: &[&str] = &["dropout", "num_train_timesteps"];

const KNOWN: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
];

impl UNetConfig {
    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::config("(file)", "", format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(EngineError::config("(file)", "", "expected a JSON object"));
        };
        Self::from_map(&map)
    }

    fn from_map(m: &Map<String, Value>) -> Result<Self> {
        if let Some(class) = m.get("_class_name") {
            if class.as_str() != Some("UNet2DModel") {
                return Err(EngineError::config(
                    "_class_name",
                    class,
                    "only diffusers' UNet2DModel is supported",
                ));
            }
        }
        for key in m.keys() {
            if !key.starts_with('_') && !KNOWN.contains(&key.as_str()) {
                return Err(EngineError::config(
                    key,
                    &m[key],
                    "unknown field: this engine does not know what it changes",
                ));
            }
        }
        let f = Fields(m);

        f.require_value("center_input_sample", false, Value::Bool(false))?;
        f.require_str("time_embedding_type", &["positional"])?;
        // diffusers treats "swish" as a synonym of SiLU.
        f.require_str("act_fn", &["silu", "swish"])?;
        f.require_str("downsample_type", &["conv"])?;
        f.require_str("upsample_type", &["conv"])?;
        f.require_str("resnet_time_scale_shift", &["default"])?;
        f.require_value("downsample_padding", 1, Value::from(1))?;
        if let Some(v) = m.get("class_embed_type") {
            if !v.is_null() {
                return Err(EngineError::config(
                    "class_embed_type",
                    v,
                    "only null (a class-embedding table, `num_class_embeds` rows) is supported",
                ));
            }
        }
        for key in IGNORED {
            if let Some(v) = m.get(*key) {
                if !(v.is_null() || v.is_number()) {
                    return Err(EngineError::config(key, v, "expected a number or null"));
                }
            }
        }

        let block_out_channels = f.usize_list("block_out_channels", &[224, 448, 672, 896])?;
        if block_out_channels.is_empty() || block_out_channels.len() > MAX_LEVELS {
            return Err(EngineError::config(
                "block_out_channels",
                format!("({} entries)", block_out_channels.len()),
                format!("must have 1..={MAX_LEVELS} entries (levels of the U-Net)"),
            ));
        }
        let down_block_types = f
            .str_list(
                "down_block_types",
                &["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            )?
            .iter()
            .map(|s| match s.as_str() {
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                "AttnDownBlock2D" => Ok(DownBlockType::AttnDownBlock2D),
                other => Err(EngineError::config(
                    "down_block_types",
                    format!("[.., {other:?}, ..]"),
                    "supported: DownBlock2D, AttnDownBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_block_types = f
            .str_list("up_block_types", &["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"])?
            .iter()
            .map(|s| match s.as_str() {
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                "AttnUpBlock2D" => Ok(UpBlockType::AttnUpBlock2D),
                other => Err(EngineError::config(
                    "up_block_types",
                    format!("[.., {other:?}, ..]"),
                    "supported: UpBlock2D, AttnUpBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let levels = block_out_channels.len();
        if down_block_types.len() != levels || up_block_types.len() != levels {
            return Err(EngineError::config(
                "down_block_types / up_block_types",
                format!("{} / {}", down_block_types.len(), up_block_types.len()),
                format!("need one block per entry of block_out_channels ({levels})"),
            ));
        }
        let has_mid_block = match m.get("mid_block_type") {
            None => true,
            Some(Value::Null) => false,
            Some(v) if v.as_str() == Some("UNetMidBlock2D") => true,
            Some(v) => {
                return Err(EngineError::config("mid_block_type", v, "supported: UNetMidBlock2D or null"))
            }
        };

        let sample_size = match m.get("sample_size") {
            Some(Value::Number(n)) => {
                let s = positive(n.as_u64(), "sample_size", n)?;
                (s, s)
            }
            Some(Value::Array(a)) if a.len() == 2 => {
                let h = positive(a[0].as_u64(), "sample_size", &a[0])?;
                let w = positive(a[1].as_u64(), "sample_size", &a[1])?;
                (h, w)
            }
            Some(v) => {
                return Err(EngineError::config("sample_size", v, "expected an integer or [height, width]"))
            }
            None => return Err(EngineError::config("sample_size", "(missing)", "the image size is needed")),
        };
        // Stride-2 convs accept odd sizes, but the up path then doubles back to a different
        // size than the skip it concatenates (diffusers fails there too).
        let factor = 1usize << (levels - 1).min(16);
        if sample_size.0 % factor != 0 || sample_size.1 % factor != 0 {
            return Err(EngineError::config(
                "sample_size",
                format!("{sample_size:?}"),
                format!("{} downsamplings need a multiple of {factor}", levels - 1),
            ));
        }

        let attention_head_dim = match m.get("attention_head_dim") {
            None => Some(8),
            Some(Value::Null) => None,
            Some(v) => Some(positive(v.as_u64(), "attention_head_dim", v)?),
        };
        let norm_num_groups = f.positive("norm_num_groups", 32)?;
        let attn_norm_num_groups = match m.get("attn_norm_num_groups") {
            None | Some(Value::Null) => None,
            Some(v) => Some(positive(v.as_u64(), "attn_norm_num_groups", v)?),
        };
        let num_class_embeds = match m.get("num_class_embeds") {
            None | Some(Value::Null) => None,
            Some(v) => Some(positive(v.as_u64(), "num_class_embeds", v)?),
        };
        let time_embedding_dim = match m.get("time_embedding_dim") {
            None | Some(Value::Null) => None,
            Some(v) => Some(positive(v.as_u64(), "time_embedding_dim", v)?),
        };
        let add_attention = f.bool("add_attention", true)?;

        let cfg = UNetConfig {
            sample_size,
            in_channels: f.positive("in_channels", 3)?,
            out_channels: f.positive("out_channels", 3)?,
            flip_sin_to_cos: f.bool("flip_sin_to_cos", true)?,
            freq_shift: f.number("freq_shift", 0.0)? as f32,
            down_block_types,
            up_block_types,
            has_mid_block,
            block_out_channels,
            layers_per_block: f.positive("layers_per_block", 2)?,
            mid_block_scale_factor: f.number("mid_block_scale_factor", 1.0)? as f32,
            attention_head_dim,
            norm_num_groups,
            attn_norm_num_groups,
            norm_eps: f.number("norm_eps", 1e-5)? as f32,
            add_attention,
            num_class_embeds,
            time_embedding_dim,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the fields against each other and against the caps of [`super::limits`]
    /// (dimensions, f32 ranges, memory and WebGPU's default buffer size); returns what the
    /// config implies. `from_json` runs this; a config built in code should too.
    pub fn validate(&self) -> Result<Budget> {
        let levels = self.block_out_channels.len();
        if levels == 0 || self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(EngineError::config(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "needs at least one level, and one down and one up block per level",
            ));
        }
        self.check_consistency()?;
        Budget::of(self)
    }

    /// Width of the time (and class) embedding every ResNet receives.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Heads of an attention layer over `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        channels / self.attention_head_dim.unwrap_or(channels)
    }

    /// The class index used for the unconditional half of classifier-free guidance.
    pub fn null_class(&self) -> Option<usize> {
        self.num_class_embeds.map(|n| n - 1)
    }

    fn check_consistency(&self) -> Result<()> {
        let c0 = self.block_out_channels[0];
        if !c0.is_multiple_of(2) || c0 < 4 {
            return Err(EngineError::config(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "the first level's width is also the sinusoidal embedding size: it must be even and >= 4",
            ));
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return Err(EngineError::config(
                    "norm_num_groups",
                    self.norm_num_groups,
                    format!("must divide every entry of block_out_channels ({c} is not a multiple)"),
                ));
            }
        }
        let attention_widths = self
            .block_out_channels
            .iter()
            .zip(&self.down_block_types)
            .filter(|(_, t)| **t == DownBlockType::AttnDownBlock2D)
            .map(|(c, _)| *c)
            .chain(
                self.block_out_channels
                    .iter()
                    .rev()
                    .zip(&self.up_block_types)
                    .filter(|(_, t)| **t == UpBlockType::AttnUpBlock2D)
                    .map(|(c, _)| *c),
            )
            .chain(
                (self.has_mid_block && self.add_attention).then(|| *self.block_out_channels.last().unwrap()),
            );
        for c in attention_widths {
            let d = self.attention_head_dim.unwrap_or(c);
            if c % d != 0 {
                return Err(EngineError::config(
                    "attention_head_dim",
                    d,
                    format!("must divide the {c} channels of every attention layer"),
                ));
            }
            if d > crate::gpu::attention::MAX_HEAD_DIM {
                return Err(EngineError::config(
                    "attention_head_dim",
                    d,
                    format!("heads larger than {} are not supported", crate::gpu::attention::MAX_HEAD_DIM),
                ));
            }
            if let Some(g) = self.attn_norm_num_groups {
                if c % g != 0 {
                    return Err(EngineError::config(
                        "attn_norm_num_groups",
                        g,
                        format!("must divide the {c} channels of every attention layer"),
                    ));
                }
            }
        }
        if let Some(n) = self.num_class_embeds {
            if n < 2 {
                return Err(EngineError::config(
                    "num_class_embeds",
                    n,
                    "needs at least one class plus the null class",
                ));
            }
        }
        Ok(())
    }
}

fn positive(v: Option<u64>, field: &str, shown: impl std::fmt::Display) -> Result<usize> {
    match v {
        Some(n) if n > 0 && n <= 1 << 20 => Ok(n as usize),
        _ => Err(EngineError::config(field, shown, "expected a positive integer")),
    }
}

/// Typed reads of one config object, each defaulting like diffusers when absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn positive(&self, field: &str, default: usize) -> Result<usize> {
        match self.0.get(field) {
            None => Ok(default),
            Some(v) => positive(v.as_u64(), field, v),
        }
    }

    fn number(&self, field: &str, default: f64) -> Result<f64> {
        match self.0.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| EngineError::config(field, v, "expected a number")),
        }
    }

    fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.0.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| EngineError::config(field, v, "expected true or false")),
        }
    }

    /// Absent (diffusers' default is the first allowed value) or one of `allowed`.
    fn require_str(&self, field: &str, allowed: &[&str]) -> Result<()> {
        match self.0.get(field) {
            None => Ok(()),
            Some(v) if v.as_str().is_some_and(|s| allowed.contains(&s)) => Ok(()),
            Some(v) => Err(EngineError::config(field, v, format!("supported: {allowed:?}"))),
        }
    }

    fn require_value(&self, field: &str, only: impl std::fmt::Display, expected: Value) -> Result<()> {
        match self.0.get(field) {
            None => Ok(()),
            Some(v) if v == &expected || v.as_f64().is_some() && v.as_f64() == expected.as_f64() => Ok(()),
            Some(v) => Err(EngineError::config(field, v, format!("only {only} is supported"))),
        }
    }

    fn usize_list(&self, field: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.0.get(field) {
            None => Ok(default.to_vec()),
            Some(Value::Array(a)) => a.iter().map(|v| positive(v.as_u64(), field, v)).collect(),
            Some(v) => Err(EngineError::config(field, v, "expected a list of positive integers")),
        }
    }

    fn str_list(&self, field: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.0.get(field) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| EngineError::config(field, v, "expected a list of strings"))
                })
                .collect(),
            Some(v) => Err(EngineError::config(field, v, "expected a list of strings")),
        }
    }
}
