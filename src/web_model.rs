//! What the browser API (`src/web.rs`) derives from a model's scheduler config, kept out of
//! the wasm-only module so it is tested natively (`tests/web_model.rs`): the samplers a
//! model offers, the exact forward-process coefficients the page's forward panel draws and
//! the per-run overrides a flow model refuses. (The Analytic-DPM moments the page attaches
//! are checked by `sched::analytic::AnalyticMoments::for_model`, which the CLI shares.)

use crate::error::{EngineError, Result};
use crate::sched::{shift_sigma, SamplerKind, SchedulerConfig, SchedulerOverrides};

/// The samplers that fit the model, in menu order (the first is not necessarily the
/// default: see [`SchedulerConfig::default_sampler`]).
pub fn sampler_names(cfg: &SchedulerConfig) -> Vec<&'static str> {
    SamplerKind::for_model(cfg.is_flow()).iter().map(|k| k.as_str()).collect()
}

/// The forward process's coefficients per training timestep t = 0..T-1:
/// x_t = signal[t] x_0 + noise[t] eps. Diffusion: sqrt(abar_t) and sqrt(1 - abar_t). Flow matching:
/// x_s = (1 - s) x_0 + s eps with s = t / T after the model's shift, which is not the
/// variance-preserving pair of `alphas_cumprod` (that table is the flow point rescaled to
/// unit variance, for the schedule plot's log-SNR), so it is worked out from s directly.
pub fn forward_coefficients(cfg: &SchedulerConfig, alphas: &[f64]) -> (Vec<f64>, Vec<f64>) {
    match cfg.flow_shift {
        Some(shift) => {
            let t = cfg.num_train_timesteps as f64;
            let s: Vec<f64> =
                (0..cfg.num_train_timesteps).map(|i| shift_sigma(shift, i as f64 / t)).collect();
            (s.iter().map(|s| 1.0 - s).collect(), s)
        }
        None => {
            (alphas.iter().map(|a| a.sqrt()).collect(), alphas.iter().map(|a| (1.0 - a).sqrt()).collect())
        }
    }
}

/// Refuses the per-run options that only a diffusion schedule reads when `cfg` is a
/// flow-matching model, naming them as the page does (as the CLI refuses its flags):
/// silently ignoring them would mislead. `eta`: DDIM's, refused when nonzero.
pub fn check_flow_overrides(cfg: &SchedulerConfig, over: &SchedulerOverrides, eta: f32) -> Result<()> {
    if !cfg.is_flow() {
        return Ok(());
    }
    for (field, given) in [
        ("clipSample", over.clip_sample.is_some()),
        ("spacing", over.timestep_spacing.is_some()),
        ("variance", over.variance_type.is_some()),
        ("clippedEps", over.use_clipped_model_output.is_some()),
        ("eta", eta != 0.0),
    ] {
        if given {
            return Err(EngineError::input(
                field,
                format!(
                    "`{field}` does not apply to a flow-matching model (its sampler integrates the velocity; \
                     the schedule's shift comes from scheduler_config.json)"
                ),
            ));
        }
    }
    Ok(())
}
