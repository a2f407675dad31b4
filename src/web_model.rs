//! What the browser API (`src/web.rs`) derives from a model's scheduler config, kept out of
//! the wasm-only module so it is tested natively (`tests/web_model.rs`): the samplers a
//! model offers, the exact forward-process coefficients the page's forward panel draws and
//! the per-run overrides a flow model refuses. (The Analytic-DPM moments the page attaches
//! are checked by `sched::analytic::AnalyticMoments::for_model`, which the CLI shares.)

use crate::error::{EngineError, Result};
use crate::fast::CpuEngine;
use crate::sched::{shift_sigma, PredictionType, SamplerKind, SchedulerConfig, SchedulerOverrides};

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

/// What the network regresses at each noise level, and so what the loss curve compares its
/// output with: eps (epsilon prediction), x_0 (`sample`), v = signal eps - noise x_0
/// (`v_prediction`, in the variance-preserving pair), or the velocity eps - x_0 (flow
/// matching, whatever `prediction_type` says: diffusers' flow schedulers ignore it).
pub fn loss_target(cfg: &SchedulerConfig) -> &'static str {
    match (cfg.is_flow(), cfg.prediction_type) {
        (true, _) => "velocity",
        (false, PredictionType::Epsilon) => "epsilon",
        (false, PredictionType::VPrediction) => "v",
        (false, PredictionType::Sample) => "sample",
    }
}

/// The denoising loss of one image at the training timesteps `ts`: for each t, x_t =
/// signal[t] x0 + noise[t] eps (`noise_draw`, the same eps at every t, as the forward panel
/// draws it), one forward of the model at t with `label`, and the mean squared error
/// ||target - output||^2 / d against [`loss_target`]. This is the simple loss training
/// minimised (its expectation over t is the objective), and for an eps model each term is the
/// ELBO's L_{t-1} up to its weight. A flow model sees timestep s T (its training and
/// diffusers' pipelines pass sigma * num_train_timesteps).
pub fn denoising_loss(
    engine: &CpuEngine,
    cfg: &SchedulerConfig,
    alphas: &[f64],
    x0: &[f32],
    label: Option<u32>,
    ts: &[usize],
    noise_draw: &[f32],
) -> Result<Vec<f64>> {
    let [c, h, w] = engine.unet.sample_shape();
    let d = c * h * w;
    if x0.len() != d || noise_draw.len() != d {
        return Err(EngineError::input(
            "x0",
            format!(
                "an image of {d} values ({c}x{h}x{w}) and as many noise values, got {} and {}",
                x0.len(),
                noise_draw.len()
            ),
        ));
    }
    let t_max = cfg.num_train_timesteps;
    if let Some(&t) = ts.iter().find(|&&t| t >= t_max) {
        return Err(EngineError::input("timesteps", format!("timestep {t} is outside 0..{t_max}")));
    }
    let labels: Vec<u32> = match (engine.unet.config().num_class_embeds, label) {
        (None, _) => Vec::new(),
        (Some(n), Some(l)) if (l as usize) < n => vec![l],
        (Some(n), Some(l)) => {
            return Err(EngineError::input("label", format!("class {l} is outside the model's 0..{n}")))
        }
        (Some(_), None) => {
            return Err(EngineError::input("label", "this model is class-conditional: give a class"))
        }
    };
    let rows = engine.unet.class_rows(&labels)?;
    let (signal, noise) = forward_coefficients(cfg, alphas);
    let per_out = engine.unet.config().out_channels * h * w;
    let (mut x_t, mut out) = (vec![0.0f32; d], vec![0.0f32; per_out]);
    let target = loss_target(cfg);
    let loss = ts
        .iter()
        .map(|&t| {
            let (a, s) = (signal[t], noise[t]);
            for ((x, &x0), &e) in x_t.iter_mut().zip(x0).zip(noise_draw) {
                *x = (a * x0 as f64 + s * e as f64) as f32;
            }
            let model_t = if cfg.is_flow() { (s as f32) * t_max as f32 } else { t as f32 };
            engine.forward(&x_t, model_t, &rows, &mut out);
            // The target as (eps, x0) weights, once per timestep.
            let (we, wx) = match target {
                "velocity" => (1.0, -1.0),
                "v" => (a, -s),
                "sample" => (0.0, 1.0),
                _ => (1.0, 0.0),
            };
            // A learned-variance head puts its extra channels after the prediction.
            let sum: f64 = out[..d]
                .iter()
                .zip(x0.iter().zip(noise_draw))
                .map(|(&o, (&x0, &e))| (we * e as f64 + wx * x0 as f64 - o as f64).powi(2))
                .sum();
            sum / d as f64
        })
        .collect();
    Ok(loss)
}
