//! diffusers' `scheduler_config.json`, read with diffusers' defaults.

use serde_json::{Map, Value};

use super::{invalid, BetaSchedule, PredictionType, TimestepSpacing, VarianceType};
use crate::error::{EngineError, Result};

pub(crate) const FILE: &str = "scheduler_config.json";

/// Smallest `alphas_cumprod` at the last training step: sigma = sqrt((1 - a) / a) is then at
/// most 1e10, whose square and products with O(1) values stay far inside f32. Published
/// schedules end near 4e-5 (linear, 1000 steps) or 1e-9 (cosine, capped betas).
pub const MIN_ALPHA_CUMPROD: f64 = 1e-20;

/// Bounds of `clip_sample_range` (diffusers uses 1).
pub const MIN_CLIP_SAMPLE_RANGE: f32 = 1e-3;
pub const MAX_CLIP_SAMPLE_RANGE: f32 = 1e6;

/// The schedule a model was trained with and the options diffusers' schedulers read from
/// it. Fields missing from the file take diffusers' defaults (those of `DDPMScheduler`,
/// which `DDIMScheduler`, `DPMSolverMultistepScheduler` and `EulerAncestralDiscreteScheduler`
/// share) except `timestep_spacing`, whose default depends on the sampler.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    /// DDPM and DDIM clamp x0_hat to +-`clip_sample_range` (the other samplers never clip).
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM: a_prev = 1 past the last step (else a_0).
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// `None`: the sampler's own default ([`super::SamplerKind::default_spacing`]).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDPM only.
    pub variance_type: VarianceType,
    /// Not a diffusers config field (diffusers takes it per call, DDIM's
    /// `step(..., use_clipped_model_output=True)`): with `clip_sample` on, DDIM re-derives eps
    /// from the clipped x0, eps = (x - sqrt(a) x0) / sqrt(1 - a), so that x0 and eps describe
    /// the same x_t again. DDPM's update reads x0 and x only (no eps), so clipping is already
    /// consistent there; DPM-Solver++ (also x0 and x only), which plain `clip_sample` leaves
    /// unclipped as diffusers does, clips x0 in this mode (diffusers: `thresholding` with
    /// `sample_max_value` = the range); Euler ancestral never clips. A model ships it in
    /// manifest.json (`sampling.use_clipped_model_output`).
    pub use_clipped_model_output: bool,
    /// `Some(shift)`: a flow-matching model, sampled as diffusers'
    /// `FlowMatchEulerDiscreteScheduler` / `FlowMatchHeunDiscreteScheduler` do (named by the
    /// file's `_class_name`): x_s = (1 - s) x_0 + s eps, the network predicts the velocity
    /// eps - x_0 at timestep s T, and the grid of s is warped by
    /// `shift s / (1 + (shift - 1) s)`. The beta fields, `prediction_type` and the clipping
    /// options do not apply then; only the flow samplers run it.
    pub flow_shift: Option<f64>,
    /// The model's Analytic-DPM moments (`analytic_dpm.json`), which `variance_type`
    /// `analytic` needs; not part of diffusers' file.
    pub analytic: Option<std::sync::Arc<super::analytic::AnalyticMoments>>,
}

/// Per-run overrides of a model's scheduler config (the page's options, the CLI's flags);
/// `None` keeps the model's value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SchedulerOverrides {
    pub clip_sample: Option<bool>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub variance_type: Option<VarianceType>,
    pub use_clipped_model_output: Option<bool>,
}

impl SchedulerOverrides {
    /// `cfg` with the overridden fields replaced.
    pub fn apply(&self, cfg: &SchedulerConfig) -> SchedulerConfig {
        SchedulerConfig {
            clip_sample: self.clip_sample.unwrap_or(cfg.clip_sample),
            timestep_spacing: self.timestep_spacing.or(cfg.timestep_spacing),
            variance_type: self.variance_type.unwrap_or(cfg.variance_type),
            use_clipped_model_output: self.use_clipped_model_output.unwrap_or(cfg.use_clipped_model_output),
            ..cfg.clone()
        }
    }
}

/// The sampling defaults a model's manifest.json adds to its scheduler config: what
/// diffusers' `scheduler_config.json` cannot express. `{"sampling": {"use_clipped_model_output":
/// true}}`; a manifest without `sampling` changes nothing.
pub fn manifest_overrides(manifest: &Value) -> Result<SchedulerOverrides> {
    let mut o = SchedulerOverrides::default();
    let Some(sampling) = manifest.get("sampling") else { return Ok(o) };
    let bad = |field: &str, v: &Value, m: &str| EngineError::Checksum {
        file: "manifest.json".into(),
        message: format!("`sampling.{field}` = {}: {m}", short(v)),
    };
    let Value::Object(map) = sampling else {
        return Err(bad("", sampling, "expected an object"));
    };
    // Other fields are room for later ones: an older engine ignores what it does not know,
    // as diffusers ignores unknown config keys.
    if let Some(v) = map.get("use_clipped_model_output") {
        let k = "use_clipped_model_output";
        o.use_clipped_model_output = Some(v.as_bool().ok_or_else(|| bad(k, v, "expected true or false"))?);
    }
    Ok(o)
}

impl Default for SchedulerConfig {
    /// `DDPMScheduler()`'s defaults: linear betas 1e-4..0.02 over 1000 steps, epsilon
    /// prediction, clip_sample to +-1.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            timestep_spacing: None,
            variance_type: VarianceType::FixedSmall,
            use_clipped_model_output: false,
            flow_shift: None,
            analytic: None,
        }
    }
}

impl SchedulerConfig {
    /// Parses diffusers' `scheduler_config.json` of any of the four scheduler classes.
    ///
    /// Unknown fields (`_class_name`, `_diffusers_version`, DPM-Solver's `solver_order`...)
    /// are ignored: the sampler is chosen separately. A field named in
    /// `_use_default_values` counts as missing, as in diffusers' `from_config` (that is how
    /// a DDPM config saved without `timestep_spacing` gives DPM-Solver its `linspace`). A
    /// `null` value counts as missing too. Options that would change the result but are
    /// not implemented (`thresholding`, `trained_betas`, zero-terminal-SNR rescaling, Karras
    /// and other sigma schedules) are refused with an error naming the field.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_non_finite(text))
            .map_err(|e| EngineError::scheduler("(file)", "…", format!("not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(EngineError::scheduler("(file)", "…", "the top level is not a JSON object"));
        };
        if let Some(Value::Array(names)) = map.remove("_use_default_values") {
            for n in names.iter().filter_map(Value::as_str) {
                map.remove(n);
            }
        }
        map.retain(|_, v| !v.is_null());
        let d = SchedulerConfig::default();

        if let Some(v) = map.get("thresholding") {
            if bool_field(v, "thresholding")? {
                return Err(invalid(
                    FILE,
                    "thresholding",
                    v,
                    "dynamic thresholding is not supported; set it to false (clip_sample still applies)",
                ));
            }
        }
        if let Some(v) = map.get("trained_betas") {
            return Err(invalid(
                FILE,
                "trained_betas",
                short(v),
                "explicit betas are not supported; use beta_schedule",
            ));
        }
        for field in [
            "rescale_betas_zero_snr",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
        ] {
            if let Some(v) = map.get(field) {
                if bool_field(v, field)? {
                    return Err(invalid(FILE, field, v, "not supported; set it to false"));
                }
            }
        }

        let class = map.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let flow_shift = if class.starts_with("FlowMatch") { Some(flow_fields(&map, class)?) } else { None };
        if flow_shift.is_some() {
            // A flow config carries no betas and no clipping: what the flow samplers read is
            // num_train_timesteps and shift, and the rest keeps the defaults (clip off).
            let cfg = SchedulerConfig {
                num_train_timesteps: opt(&map, "num_train_timesteps", uint_field)?
                    .unwrap_or(d.num_train_timesteps),
                clip_sample: false,
                flow_shift,
                ..d
            };
            cfg.validate()?;
            return Ok(cfg);
        }

        let cfg = SchedulerConfig {
            num_train_timesteps: opt(&map, "num_train_timesteps", uint_field)?
                .unwrap_or(d.num_train_timesteps),
            beta_start: opt(&map, "beta_start", float_field)?.unwrap_or(d.beta_start),
            beta_end: opt(&map, "beta_end", float_field)?.unwrap_or(d.beta_end),
            beta_schedule: opt(&map, "beta_schedule", parse_str)?.unwrap_or(d.beta_schedule),
            prediction_type: opt(&map, "prediction_type", parse_str)?.unwrap_or(d.prediction_type),
            clip_sample: opt(&map, "clip_sample", bool_field)?.unwrap_or(d.clip_sample),
            clip_sample_range: opt(&map, "clip_sample_range", float_field)?.unwrap_or(d.clip_sample_range),
            set_alpha_to_one: opt(&map, "set_alpha_to_one", bool_field)?.unwrap_or(d.set_alpha_to_one),
            steps_offset: opt(&map, "steps_offset", uint_field)?.unwrap_or(d.steps_offset),
            timestep_spacing: opt(&map, "timestep_spacing", parse_str)?,
            variance_type: opt(&map, "variance_type", variance)?.unwrap_or(d.variance_type),
            use_clipped_model_output: false,
            flow_shift: None,
            analytic: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether this is a flow-matching model's config (see [`SchedulerConfig::flow_shift`]).
    pub fn is_flow(&self) -> bool {
        self.flow_shift.is_some()
    }

    /// The sampler a run takes when none is chosen: Euler for a flow-matching model (as its
    /// diffusers scheduler), DDIM for a diffusion one.
    pub fn default_sampler(&self) -> super::SamplerKind {
        if self.is_flow() {
            super::SamplerKind::FlowEuler
        } else {
            super::SamplerKind::Ddim
        }
    }

    /// Checks the numeric fields (the enums are valid by construction).
    pub fn validate(&self) -> Result<()> {
        // 1e6 training steps is far beyond any published schedule; the cap keeps a typo from
        // allocating gigabytes of alphas_cumprod.
        if !(1..=1_000_000).contains(&self.num_train_timesteps) {
            return Err(invalid(
                FILE,
                "num_train_timesteps",
                self.num_train_timesteps,
                "must be in 1..=1000000",
            ));
        }
        // The betas are rounded to f32 as diffusers keeps them: a value inside (0, 1) in f64
        // can still round to 0 or 1 there (1e-50, 0.99999999999), and either makes every
        // sampler divide by zero.
        for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            let v32 = v as f32;
            if !(v.is_finite() && v32 > 0.0 && v32 < 1.0) {
                return Err(invalid(FILE, field, v, "must be in (0, 1), also once rounded to f32"));
            }
        }
        // Samplers clamp x0_hat to +-range as f32: a range that rounds to 0 or inf clips every
        // image to 0 or does nothing at all, silently.
        let range = self.clip_sample_range as f32;
        if !(MIN_CLIP_SAMPLE_RANGE..=MAX_CLIP_SAMPLE_RANGE).contains(&range) {
            return Err(invalid(
                FILE,
                "clip_sample_range",
                self.clip_sample_range,
                &format!("must be in [{MIN_CLIP_SAMPLE_RANGE:e}, {MAX_CLIP_SAMPLE_RANGE:e}]"),
            ));
        }
        if let Some(shift) = self.flow_shift {
            // shift s / (1 + (shift - 1) s) maps (0, 1] onto (0, 1] for any shift > 0; an
            // enormous one squeezes every step against s = 1 in f32.
            if !(shift.is_finite() && (1e-3..=1e3).contains(&shift)) {
                return Err(invalid(FILE, "shift", shift, "must be in [0.001, 1000]"));
            }
            return Ok(());
        }
        if self.steps_offset >= self.num_train_timesteps {
            return Err(invalid(
                FILE,
                "steps_offset",
                self.steps_offset,
                &format!("must be below num_train_timesteps = {}", self.num_train_timesteps),
            ));
        }
        // The samplers divide by sqrt(alphas_cumprod) and by sigma = sqrt((1 - a) / a) and
        // keep the result in f32: a schedule that ends with a = 0 (a long linear one
        // underflows) or near it makes inf and then NaN images.
        let acp = super::alphas_cumprod(self)?;
        let last = acp.last().copied().unwrap_or(1.0);
        if last.is_nan() || last < MIN_ALPHA_CUMPROD {
            return Err(invalid(
                FILE,
                "num_train_timesteps",
                self.num_train_timesteps,
                &format!(
                    "with beta_start = {}, beta_end = {} and the {} schedule, alphas_cumprod falls to {last:e} \
                     at the last step; at least {MIN_ALPHA_CUMPROD:e} is needed (the sampling coefficients \
                     divide by its square root in f32)",
                    self.beta_start, self.beta_end, self.beta_schedule
                ),
            ));
        }
        Ok(())
    }
}

/// Python's json module (which diffusers saves configs with) writes the non-standard tokens
/// `Infinity`, `-Infinity` and `NaN` (DPM-Solver's `lambda_min_clipped` is `-Infinity`);
/// serde_json refuses them. Outside strings they become strings, so a field we read reports
/// "expected a number" with the token named, and any other field is ignored as before.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if !in_string {
            if let Some(token) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
                out.push('"');
                out.push_str(token);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// A JSON value for an error message, cut short (trained_betas can be 1000 numbers).
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// The fields of diffusers' flow-matching schedulers: `shift` is read; options that would
/// change the sigmas or the update and are not implemented are refused by name.
fn flow_fields(map: &Map<String, Value>, class: &str) -> Result<f64> {
    if !matches!(class, "FlowMatchEulerDiscreteScheduler" | "FlowMatchHeunDiscreteScheduler") {
        return Err(invalid(
            FILE,
            "_class_name",
            format!("{class:?}"),
            "this flow-matching scheduler is not supported; expected \"FlowMatchEulerDiscreteScheduler\" \
             or \"FlowMatchHeunDiscreteScheduler\"",
        ));
    }
    for field in ["use_dynamic_shifting", "invert_sigmas", "stochastic_sampling"] {
        if let Some(v) = map.get(field) {
            if bool_field(v, field)? {
                return Err(invalid(FILE, field, v, "not supported for flow matching; set it to false"));
            }
        }
    }
    // diffusers applies it when truthy; 0 means off there too.
    if let Some(v) = map.get("shift_terminal").filter(|v| v.as_f64() != Some(0.0)) {
        return Err(invalid(FILE, "shift_terminal", short(v), "not supported; remove it or set it to null"));
    }
    Ok(opt(map, "shift", float_field)?.unwrap_or(1.0))
}

fn opt<T>(
    map: &Map<String, Value>,
    field: &str,
    parse: impl Fn(&Value, &str) -> Result<T>,
) -> Result<Option<T>> {
    map.get(field).map(|v| parse(v, field)).transpose()
}

fn bool_field(v: &Value, field: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| invalid(FILE, field, short(v), "expected true or false"))
}

fn float_field(v: &Value, field: &str) -> Result<f64> {
    v.as_f64().ok_or_else(|| invalid(FILE, field, short(v), "expected a number"))
}

fn uint_field(v: &Value, field: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid(FILE, field, short(v), "expected a non-negative integer"))
}

fn parse_str<T: std::str::FromStr<Err = EngineError>>(v: &Value, field: &str) -> Result<T> {
    let s = v.as_str().ok_or_else(|| invalid(FILE, field, short(v), "expected a string"))?;
    // Re-issue the enum's option error (`` `f` = "value": expected one of ... ``) as this
    // file's, keeping its list of accepted spellings.
    s.parse().map_err(|e| match e {
        EngineError::Input { message, .. } => {
            let expected = message.rsplit_once("\": ").map_or(message.as_str(), |(_, m)| m);
            invalid(FILE, field, short(v), expected)
        }
        other => other,
    })
}

fn variance(v: &Value, field: &str) -> Result<VarianceType> {
    match v.as_str() {
        Some("fixed_small_log") => Ok(VarianceType::FixedSmall),
        Some("analytic") => Err(invalid(
            FILE,
            field,
            "\"analytic\"",
            "not a diffusers variance_type; choose Analytic-DPM per run (variance = analytic) with the \
             model's analytic_dpm.json",
        )),
        Some(other @ ("fixed_large_log" | "learned" | "learned_range")) => Err(invalid(
            FILE,
            field,
            format!("{other:?}"),
            "not supported (learned variances need a model with 2x output channels); \
             expected \"fixed_small\" or \"fixed_large\"",
        )),
        _ => parse_str(v, field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_unknown_ones_are_ignored() {
        let cfg = SchedulerConfig::from_json(
            r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1",
                "beta_schedule": "squaredcos_cap_v2", "solver_order": 2}"#,
        )
        .unwrap();
        assert_eq!(
            cfg,
            SchedulerConfig { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Default::default() }
        );
    }

    #[test]
    fn use_default_values_and_null_count_as_missing() {
        let cfg = SchedulerConfig::from_json(
            r#"{"timestep_spacing": "leading", "steps_offset": 1, "variance_type": null,
                "_use_default_values": ["timestep_spacing"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.timestep_spacing, None);
        assert_eq!(cfg.steps_offset, 1);
        assert_eq!(cfg.variance_type, VarianceType::FixedSmall);
    }

    #[test]
    fn python_json_tokens_are_tolerated() {
        let cfg = SchedulerConfig::from_json(
            r#"{"lambda_min_clipped": -Infinity, "note": "NaN -Infinity \" Infinity", "x": NaN, "steps_offset": 1}"#,
        )
        .unwrap();
        assert_eq!(cfg.steps_offset, 1);
        let e = SchedulerConfig::from_json(r#"{"beta_end": Infinity}"#).unwrap_err().to_string();
        assert!(e.contains("`beta_end` = \"Infinity\": expected a number"), "{e}");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"beta_schedule": "sigmoid"}"#, "`beta_schedule` = \"sigmoid\""),
            (r#"{"prediction_type": "flow"}"#, "`prediction_type` = \"flow\""),
            (r#"{"timestep_spacing": "karras"}"#, "`timestep_spacing` = \"karras\""),
            (r#"{"thresholding": true}"#, "`thresholding` = true"),
            (r#"{"trained_betas": [0.1, 0.2]}"#, "`trained_betas` = [0.1,0.2]"),
            (r#"{"variance_type": "learned_range"}"#, "`variance_type` = \"learned_range\""),
            (r#"{"num_train_timesteps": 0}"#, "`num_train_timesteps` = 0"),
            (r#"{"num_train_timesteps": -5}"#, "`num_train_timesteps` = -5"),
            (r#"{"beta_end": "0.02"}"#, "`beta_end` = \"0.02\""),
            (r#"{"clip_sample": 1}"#, "`clip_sample` = 1"),
            (r#"{"rescale_betas_zero_snr": true}"#, "`rescale_betas_zero_snr` = true"),
            (r#"[1, 2]"#, "not a JSON object"),
            (r#"{"#, "not valid JSON"),
        ];
        for (json, want) in cases {
            let e = SchedulerConfig::from_json(json).unwrap_err().to_string();
            assert!(e.starts_with("scheduler_config.json: ") && e.contains(want), "{json}: {e}");
        }
    }
}
