//! From a schedule and sampler options to the per-step coefficients of the fused kernel.
//!
//! Every sampler step here has the same shape, which is what lets one kernel run them all.
//! With m the (guided) model output and x the sampler state:
//!
//! ```text
//! x0  = x0_from_x  * x + x0_from_out  * m        then clamped to +-clip if clipping
//! eps = eps_from_x * x + eps_from_out * m        (from the unclipped x0, as diffusers)
//!     | eps_from_x * x + eps_from_x0 * x0        (eps_uses_x0: from the clipped x0)
//! x'  = c.x * x + c.x0 * x0 + c.eps * eps + c.prev_x0 * x0_prev + c.noise * z
//! ```
//!
//! (x0_prev: the previous step's x0, DPM-Solver++(2M)'s multistep history.) The first two
//! lines are linear in (x, m) for every prediction type, and each sampler's update is linear
//! in (x, x0, eps, x0_prev, z) with coefficients that depend only on the schedule.

use super::analytic;
use super::schedule::alphas_cumprod;
use super::schedule::flow_alpha_bar;
use super::timesteps::{flow_sigmas, timesteps};
use super::{invalid, PredictionType, SamplerKind, SchedulerConfig, TimestepSpacing, VarianceType};
use crate::error::Result;

/// What the caller chooses per sampling run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerOptions {
    pub kind: SamplerKind,
    /// Number of model evaluations, 1..=num_train_timesteps.
    pub steps: usize,
    /// DDIM's eta in [0, 1] (0: deterministic, 1: DDPM-like noise); ignored by the others.
    pub eta: f64,
    /// Classifier-free guidance scale w: m = uncond + w (cond - uncond). Used only when the
    /// model batch holds both halves.
    pub guidance: f32,
}

impl SamplerOptions {
    /// `steps` steps of `kind`, eta 0, guidance 1 (conditional only).
    pub fn new(kind: SamplerKind, steps: usize) -> Self {
        SamplerOptions { kind, steps, eta: 0.0, guidance: 1.0 }
    }
}

/// The per-step coefficients of the fused update (see the module comment), rounded to f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    pub x0_from_x: f32,
    pub x0_from_out: f32,
    pub eps_from_x: f32,
    pub eps_from_out: f32,
    /// Clamp x0 to +-clip (DDPM and DDIM with `clip_sample`).
    pub clip: Option<f32>,
    /// eps is re-derived from the clipped x0 (DDIM with `clip_sample` and
    /// `use_clipped_model_output`): eps = eps_from_x x + eps_from_x0 x0, and `eps_from_out`
    /// is 0.
    pub eps_uses_x0: bool,
    pub eps_from_x0: f32,
    pub x: f32,
    pub x0: f32,
    pub eps: f32,
    pub prev_x0: f32,
    pub noise: f32,
    /// The step reads the previous step's x0 (DPM-Solver++(2M)'s second-order steps).
    pub reads_prev_x0: bool,
    /// The step stores its x0 for the next one.
    pub writes_prev_x0: bool,
}

impl StepCoefficients {
    /// x0_hat (clipped) and eps of one element from x_t and the guided model output `m`:
    /// the head of the fused step, shared by the CPU step and the step inspector so a
    /// panel's view of a step is that step, operation for operation. WGSL: `main`'s head.
    #[inline(always)]
    pub fn x0_eps(&self, x: f32, m: f32) -> (f32, f32) {
        let mut x0 = self.x0_from_x * x + self.x0_from_out * m;
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
        }
        let eps = if self.eps_uses_x0 {
            self.eps_from_x * x + self.eps_from_x0 * x0
        } else {
            self.eps_from_x * x + self.eps_from_out * m
        };
        (x0, eps)
    }
}

/// One model evaluation and the update that follows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedStep {
    /// The timestep the U-Net is evaluated at (fractional for Euler ancestral `linspace`).
    pub timestep: f32,
    /// The model's input is `input_scale * x` (1 except Euler ancestral: 1 / sqrt(sigma^2 + 1)).
    pub input_scale: f32,
    /// a = alphas_cumprod of the model input's noise level: the input is distributed as
    /// sqrt(a) x_0 + sqrt(1 - a) eps (Euler ancestral: 1 / (1 + sigma^2) at its interpolated
    /// sigma). What an analytic model needs; the kernel does not use it.
    pub alpha_cumprod: f64,
    /// alpha_bar of the level the step lands on (1 when it ends on x0).
    pub alpha_cumprod_prev: f64,
    pub coeffs: StepCoefficients,
}

/// A whole sampling run, planned once.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub kind: SamplerKind,
    pub steps: Vec<PlannedStep>,
    /// x_T = init_noise_sigma * z (1 except Euler ancestral, whose state lives in sigma space).
    pub init_noise_sigma: f32,
    pub guidance: f32,
}

impl Plan {
    /// The model timesteps, one per step.
    pub fn timesteps(&self) -> Vec<f32> {
        self.steps.iter().map(|s| s.timestep).collect()
    }

    /// The scale of the model input of step `k`; past the last step 1 (the kernel then writes
    /// the final x into the model input, which nothing reads).
    pub fn input_scale(&self, k: usize) -> f32 {
        self.steps.get(k).map_or(1.0, |s| s.input_scale)
    }
}

/// Refuses a diffusion sampler for a flow-matching model and a flow sampler for a diffusion
/// model, naming the samplers that do fit.
pub fn check_sampler(cfg: &SchedulerConfig, kind: SamplerKind) -> Result<()> {
    if kind.is_flow() != cfg.is_flow() {
        let names: Vec<&str> = SamplerKind::for_model(cfg.is_flow()).iter().map(|k| k.as_str()).collect();
        let what = if cfg.is_flow() {
            "this model was trained with flow matching (its scheduler_config.json names a FlowMatch \
             scheduler) and needs a flow sampler"
        } else {
            "this is a diffusion model (noise prediction on a beta schedule); flow samplers need a \
             flow-matching model"
        };
        return Err(invalid("sampler", "sampler", kind, &format!("{what}: use {}", names.join(", "))));
    }
    Ok(())
}

/// Plans `opts.steps` steps of `opts.kind` on the schedule of `cfg`.
pub fn plan(cfg: &SchedulerConfig, opts: &SamplerOptions) -> Result<Plan> {
    cfg.validate()?;
    if !(opts.eta.is_finite() && opts.eta >= 0.0) {
        return Err(invalid("sampler", "eta", opts.eta, "must be a finite number >= 0"));
    }
    if !opts.guidance.is_finite() {
        return Err(invalid("sampler", "guidance", opts.guidance, "must be finite"));
    }
    check_sampler(cfg, opts.kind)?;
    if cfg.is_flow() {
        let sigmas = flow_sigmas(cfg, opts.steps)?;
        let steps = match opts.kind {
            SamplerKind::FlowHeun => flow_heun(cfg, &sigmas),
            _ => flow_euler(cfg, &sigmas),
        };
        return Ok(Plan { kind: opts.kind, steps, init_noise_sigma: 1.0, guidance: opts.guidance });
    }
    let acp = alphas_cumprod(cfg)?;
    let ts = timesteps(cfg, opts.kind, opts.steps)?;
    let clip = cfg.clip_sample.then_some(cfg.clip_sample_range as f32);
    let mut init_noise_sigma = 1.0;
    let steps = match opts.kind {
        SamplerKind::Ddpm => ddpm(cfg, &acp, &ts, clip, opts.guidance)?,
        SamplerKind::Ddim => ddim(cfg, &acp, &ts, clip, opts.eta, opts.guidance)?,
        // diffusers' DPMSolverMultistepScheduler has no clip_sample, so plain clipping leaves
        // it alone (parity); the clipped-eps mode clips its x0 too, as its `thresholding`
        // with sample_max_value = clip_sample_range does (the threshold is then always the
        // range). Its update reads x0 and x only, so nothing else needs re-deriving; without
        // the clip, trailing spacing's t = 999 start ruins it (fashion, 5 steps: 46 %).
        SamplerKind::DpmSolverPp2m => {
            dpm_solver_pp_2m(cfg, &acp, &ts, clip.filter(|_| cfg.use_clipped_model_output))
        }
        SamplerKind::EulerAncestral => {
            let (steps, sigma) = euler_ancestral(cfg, &acp, &ts);
            init_noise_sigma = sigma;
            steps
        }
        SamplerKind::FlowEuler | SamplerKind::FlowHeun => unreachable!("flow runs are planned above"),
    };
    Ok(Plan { kind: opts.kind, steps, init_noise_sigma: init_noise_sigma as f32, guidance: opts.guidance })
}

/// f64 coefficients before the single rounding to f32.
#[derive(Default)]
struct Coeffs {
    x0_from: (f64, f64),
    eps_from: (f64, f64),
    /// Some(c): eps = eps_from.0 x + c x0 (clipped); eps_from.1 is then unused.
    eps_from_x0: Option<f64>,
    x: f64,
    x0: f64,
    eps: f64,
    prev_x0: f64,
    noise: f64,
    reads_prev_x0: bool,
    writes_prev_x0: bool,
}

impl Coeffs {
    fn finish(self, clip: Option<f32>) -> StepCoefficients {
        StepCoefficients {
            x0_from_x: self.x0_from.0 as f32,
            x0_from_out: self.x0_from.1 as f32,
            eps_from_x: self.eps_from.0 as f32,
            eps_from_out: if self.eps_from_x0.is_some() { 0.0 } else { self.eps_from.1 as f32 },
            clip,
            eps_uses_x0: self.eps_from_x0.is_some(),
            eps_from_x0: self.eps_from_x0.unwrap_or(0.0) as f32,
            x: self.x as f32,
            x0: self.x0 as f32,
            eps: self.eps as f32,
            prev_x0: self.prev_x0 as f32,
            noise: self.noise as f32,
            reads_prev_x0: self.reads_prev_x0,
            writes_prev_x0: self.writes_prev_x0,
        }
    }
}

/// (x0, eps) as linear maps of (x, m) for a variance-preserving x = alpha x0 + sigma eps.
fn vp_conversion(pred: PredictionType, alpha: f64, sigma: f64) -> ((f64, f64), (f64, f64)) {
    match pred {
        // x0 = (x - sigma eps) / alpha
        PredictionType::Epsilon => ((1.0 / alpha, -sigma / alpha), (0.0, 1.0)),
        // x0 = alpha x - sigma v, eps = alpha v + sigma x
        PredictionType::VPrediction => ((alpha, -sigma), (sigma, alpha)),
        // x0 = m, eps = (x - alpha x0) / sigma
        PredictionType::Sample => ((0.0, 1.0), (1.0 / sigma, -alpha / sigma)),
    }
}

fn step(
    timestep: f64,
    input_scale: f64,
    (a, a_prev): (f64, f64),
    c: Coeffs,
    clip: Option<f32>,
) -> PlannedStep {
    PlannedStep {
        timestep: timestep as f32,
        input_scale: input_scale as f32,
        alpha_cumprod: a,
        alpha_cumprod_prev: a_prev,
        coeffs: c.finish(clip),
    }
}

/// diffusers' `DDPMScheduler.step`: the posterior mean of x_prev given (x_t, x0) plus noise
/// of variance (1 - a') / (1 - a) beta (`fixed_small`, floored at 1e-20 as diffusers does)
/// or beta (`fixed_large`), with beta = 1 - a / a'. The previous timestep is the next one in
/// the list (its `previous_timestep`), a' = 1 past the last; noise is added whenever t > 0
/// (so also at a last step t = 1 that `steps_offset` = 1 leaves).
///
/// `analytic`: Analytic-DPM's optimal variance around the same posterior mean (lambda^2 =
/// beta-tilde), from the model's Gamma at the run's guidance `w` (see [`analytic_gamma`]).
fn ddpm(
    cfg: &SchedulerConfig,
    acp: &[f64],
    ts: &[f64],
    clip: Option<f32>,
    w: f32,
) -> Result<Vec<PlannedStep>> {
    (0..ts.len())
        .map(|k| {
            let a = acp[ts[k] as usize];
            let a_prev = ts.get(k + 1).map_or(1.0, |&p| acp[p as usize]);
            let alpha = a / a_prev;
            let beta = 1.0 - alpha;
            let tilde = (1.0 - a_prev) / (1.0 - a) * beta;
            let analytic = cfg.variance_type == VarianceType::Analytic;
            let variance = match cfg.variance_type {
                VarianceType::FixedSmall => tilde.max(1e-20),
                VarianceType::FixedLarge => beta,
                VarianceType::Analytic => {
                    analytic::optimal_variance(a, a_prev, tilde, analytic_gamma(cfg, ts[k], w)?)
                }
            };
            let (x0_from, eps_from) = vp_conversion(cfg.prediction_type, a.sqrt(), (1.0 - a).sqrt());
            let c = Coeffs {
                x0_from,
                eps_from,
                x: alpha.sqrt() * (1.0 - a_prev) / (1.0 - a),
                x0: a_prev.sqrt() * beta / (1.0 - a),
                // Analytic-DPM (as its authors' code) takes the mean at the step onto x_0;
                // the fixed variances add noise whenever t > 0, as diffusers does.
                noise: if ts[k] > 0.0 && !(analytic && k + 1 == ts.len()) { variance.sqrt() } else { 0.0 },
                ..Default::default()
            };
            Ok(step(ts[k], 1.0, (a, a_prev), c, clip))
        })
        .collect()
}

/// Gamma at training timestep `t` for guidance `w`, clipped to [0, 1] (Analytic-DPM's
/// Theorem 2 range: a Monte Carlo estimate can stray past 1 where the truth is 1).
fn analytic_gamma(cfg: &SchedulerConfig, t: f64, w: f32) -> Result<f64> {
    let m = cfg.analytic.as_ref().ok_or_else(|| {
        invalid(
            "sampler",
            "variance",
            "analytic",
            "this model has no analytic_dpm.json (Analytic-DPM's per-timestep moments; make it with \
             train/analytic_dpm.py)",
        )
    })?;
    if m.cc.len() != cfg.num_train_timesteps {
        return Err(invalid(
            "sampler",
            "variance",
            "analytic",
            &format!(
                "analytic_dpm.json has {} timesteps, the schedule {}",
                m.cc.len(),
                cfg.num_train_timesteps
            ),
        ));
    }
    Ok(m.gamma(t as usize, w as f64).clamp(0.0, 1.0))
}

/// diffusers' `DDIMScheduler.step`: x' = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z with
/// s = eta sqrt((1 - a') / (1 - a) (1 - a / a')). The previous timestep is always
/// t - T // N, whatever the spacing; below 0 it is 1 (`set_alpha_to_one`) or a_0. Clipping
/// changes x0 only: eps stays the model's (`use_clipped_model_output` is off by default);
/// with it on, eps = (x - sqrt(a) x0) / sqrt(1 - a) from the clipped x0, as diffusers writes it.
///
/// With `variance_type` `analytic` the noise becomes Analytic-DPM's optimal one for the mean
/// eta fixes (lambda = s; eta = 0 is the paper's Analytic-DDIM), the mean unchanged.
fn ddim(
    cfg: &SchedulerConfig,
    acp: &[f64],
    ts: &[f64],
    clip: Option<f32>,
    eta: f64,
    w: f32,
) -> Result<Vec<PlannedStep>> {
    let ratio = (cfg.num_train_timesteps / ts.len()) as f64;
    let final_a = if cfg.set_alpha_to_one { 1.0 } else { acp[0] };
    ts.iter()
        .enumerate()
        .map(|(k, &t)| {
            let a = acp[t as usize];
            let prev = t - ratio;
            let a_prev = if prev >= 0.0 { acp[prev as usize] } else { final_a };
            let variance = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev);
            let s = eta * variance.sqrt();
            let mut dir = 1.0 - a_prev - s * s;
            if dir < 0.0 {
                // For eta <= 1 this is >= 0 analytically; allow its round-off.
                if dir < -1e-12 {
                    return Err(invalid(
                        "sampler",
                        "eta",
                        eta,
                        &format!("at step {k} (t = {t}) the noise exceeds the step's variance; use eta <= 1"),
                    ));
                }
                dir = 0.0;
            }
            let (alpha, sigma) = (a.sqrt(), (1.0 - a).sqrt());
            let (x0_from, mut eps_from) = vp_conversion(cfg.prediction_type, alpha, sigma);
            let mut eps_from_x0 = None;
            if clip.is_some() && cfg.use_clipped_model_output {
                eps_from = (1.0 / sigma, 0.0);
                eps_from_x0 = Some(-alpha / sigma);
            }
            let noise = if cfg.variance_type == VarianceType::Analytic {
                // No noise past the last level (x_0), as every other sampler here.
                if prev >= 0.0 {
                    analytic::optimal_variance(a, a_prev, s * s, analytic_gamma(cfg, t, w)?).sqrt()
                } else {
                    0.0
                }
            } else if eta > 0.0 {
                s
            } else {
                0.0
            };
            let c = Coeffs {
                x0_from,
                eps_from,
                eps_from_x0,
                x0: a_prev.sqrt(),
                eps: dir.sqrt(),
                noise,
                ..Default::default()
            };
            Ok(step(t, 1.0, (a, a_prev), c, clip))
        })
        .collect()
}

/// diffusers' `DPMSolverMultistepScheduler` with its defaults (`dpmsolver++`, order 2,
/// `midpoint`, `lower_order_final`, `final_sigmas_type` zero): sigmas sqrt((1 - a) / a) at
/// the timesteps, then 0. With h = lambda' - lambda (lambda = log(alpha / sigma)):
/// first order x' = (sigma' / sigma) x - alpha' (e^-h - 1) x0; second order replaces x0 by
/// x0 + (x0 - x0_prev) / (2 r0), r0 = h_prev / h. The first step has no history and the last
/// (to sigma = 0) is always first order. Clips x0 only in the clipped-eps mode (see `plan`).
///
/// Guards diffusers does not have: a step between two equal timesteps (h = 0, only N = T
/// with `linspace` repeats one) keeps x as its first-order update does, and the step after
/// it falls back to first order where diffusers' r0 = h_prev / h would divide by zero.
fn dpm_solver_pp_2m(cfg: &SchedulerConfig, acp: &[f64], ts: &[f64], clip: Option<f32>) -> Vec<PlannedStep> {
    let n = ts.len();
    let mut sigmas: Vec<f64> =
        ts.iter().map(|&t| ((1.0 - acp[t as usize]) / acp[t as usize]).sqrt()).collect();
    sigmas.push(0.0);
    // diffusers' _sigma_to_alpha_sigma_t and lambda; sigma = 0 gives lambda = +inf, h = +inf
    // and e^-h = 0, which f64 carries through to x' = x0 exactly.
    let alpha_sigma = |s: f64| {
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        (alpha, s * alpha)
    };
    let lambda = |s: f64| {
        let (alpha, sigma) = alpha_sigma(s);
        alpha.ln() - sigma.ln()
    };
    (0..n)
        .map(|k| {
            let (alpha_s, sigma_s) = alpha_sigma(sigmas[k]);
            let (alpha_t, sigma_t) = alpha_sigma(sigmas[k + 1]);
            let h = lambda(sigmas[k + 1]) - lambda(sigmas[k]);
            let (x0_from, eps_from) = vp_conversion(cfg.prediction_type, alpha_s, sigma_s);
            let mut c = Coeffs { x0_from, eps_from, writes_prev_x0: k + 1 < n, ..Default::default() };
            if h == 0.0 {
                c.x = 1.0;
            } else {
                // -alpha' (e^-h - 1), with expm1 for small h.
                let e = -alpha_t * (-h).exp_m1();
                c.x = sigma_t / sigma_s;
                c.x0 = e;
                let h_prev = if k > 0 { lambda(sigmas[k]) - lambda(sigmas[k - 1]) } else { 0.0 };
                if k > 0 && k + 1 < n && h_prev != 0.0 {
                    let r0 = h_prev / h;
                    c.x0 = e * (1.0 + 0.5 / r0);
                    c.prev_x0 = -e * 0.5 / r0;
                    c.reads_prev_x0 = true;
                }
            }
            step(ts[k], 1.0, (acp[ts[k] as usize], alpha_t * alpha_t), c, clip)
        })
        .collect()
}

/// diffusers' `EulerAncestralDiscreteScheduler`: the state is x / alpha (sigma space),
/// sigma = sqrt((1 - a) / a) interpolated linearly at (possibly fractional) timesteps, then
/// 0; the model sees x / sqrt(sigma^2 + 1). With sigma_up = sqrt(s'^2 (s^2 - s'^2) / s^2) and
/// sigma_down = sqrt(s'^2 - sigma_up^2): x' = x + (x - x0) / s (sigma_down - s) + sigma_up z.
/// x_T = z sigma_0, or z sqrt(sigma_0^2 + 1) with `leading` spacing (its init_noise_sigma).
/// diffusers raises for `sample` prediction; here x0 = m, the obvious meaning.
fn euler_ancestral(cfg: &SchedulerConfig, acp: &[f64], ts: &[f64]) -> (Vec<PlannedStep>, f64) {
    let full: Vec<f64> = acp.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
    // np.interp(t, arange(T), full): exact at integers.
    let interp = |t: f64| {
        let i = (t.floor() as usize).min(full.len() - 1);
        if i + 1 >= full.len() {
            full[i]
        } else {
            full[i] + (full[i + 1] - full[i]) * (t - i as f64)
        }
    };
    let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp(t)).collect();
    sigmas.push(0.0);
    let max = sigmas.iter().copied().fold(0.0, f64::max);
    let spacing = cfg.timestep_spacing.unwrap_or(SamplerKind::EulerAncestral.default_spacing());
    let init = if spacing == TimestepSpacing::Leading { (max * max + 1.0).sqrt() } else { max };
    let steps = (0..ts.len())
        .map(|k| {
            let (s, s_to) = (sigmas[k], sigmas[k + 1]);
            let up = (s_to * s_to * (s * s - s_to * s_to) / (s * s)).sqrt();
            let down = (s_to * s_to - up * up).max(0.0).sqrt();
            let x0_from = match cfg.prediction_type {
                PredictionType::Epsilon => (1.0, -s),
                PredictionType::VPrediction => (1.0 / (s * s + 1.0), -s / (s * s + 1.0).sqrt()),
                PredictionType::Sample => (0.0, 1.0),
            };
            let c = Coeffs {
                x0_from,
                // The sigma-space eps = (x - x0) / s; the update does not use it.
                eps_from: ((1.0 - x0_from.0) / s, -x0_from.1 / s),
                x: down / s,
                x0: 1.0 - down / s,
                noise: up,
                ..Default::default()
            };
            step(ts[k], 1.0 / (s * s + 1.0).sqrt(), (1.0 / (1.0 + s * s), 1.0 / (1.0 + s_to * s_to)), c, None)
        })
        .collect();
    (steps, init)
}

/// One flow-matching level s: x = (1 - s) x0 + s eps and the model output m is the velocity
/// eps - x0, so x0 = x - s m and eps = x + (1 - s) m.
fn flow_conversion(s: f64) -> ((f64, f64), (f64, f64)) {
    ((1.0, -s), (1.0, 1.0 - s))
}

/// The model sees timestep s T, as diffusers' flow pipelines pass `sigma * num_train_timesteps`.
fn flow_step(cfg: &SchedulerConfig, s: f64, s_to: f64, c: Coeffs) -> PlannedStep {
    let t = (s as f32 * cfg.num_train_timesteps as f32) as f64;
    step(t, 1.0, (flow_alpha_bar(s), flow_alpha_bar(s_to)), c, None)
}

/// diffusers' `FlowMatchEulerDiscreteScheduler.step`: x' = x + (s' - s) v, written as the
/// point at s' on the line through the predicted endpoints, x' = (1 - s') x0 + s' eps (the
/// same value; the form the fused kernel and the step panel share). The last level s' is 0.
fn flow_euler(cfg: &SchedulerConfig, sigmas: &[f64]) -> Vec<PlannedStep> {
    (0..sigmas.len())
        .map(|k| {
            let (s, s_to) = (sigmas[k], sigmas.get(k + 1).copied().unwrap_or(0.0));
            let (x0_from, eps_from) = flow_conversion(s);
            flow_step(
                cfg,
                s,
                s_to,
                Coeffs { x0_from, eps_from, x0: 1.0 - s_to, eps: s_to, ..Default::default() },
            )
        })
        .collect()
}

/// diffusers' `FlowMatchHeunDiscreteScheduler` (no churn): from s to s', an Euler step to s'
/// (the predictor, which stores its x0 = x - s v1), a second evaluation there on the
/// predicted x^ and x' = x + (s' - s) (v1 + v2) / 2. With x and v1 written through x^ and the
/// stored x0_1 (v1 = (x^ - x0_1) / s', x = x0_1 + (s / s') (x^ - x0_1)) and x0_2 = x^ - s' v2,
/// the corrector is x' = x^ + (s' - s) / (2 s') (x0_1 - x0_2): linear in what the fused
/// kernel has. The last step (to s' = 0) is Euler only, as in diffusers: 2N - 1 model
/// evaluations for N levels.
fn flow_heun(cfg: &SchedulerConfig, sigmas: &[f64]) -> Vec<PlannedStep> {
    let n = sigmas.len();
    let mut steps = Vec::with_capacity(2 * n - 1);
    for k in 0..n {
        let (s, s_to) = (sigmas[k], sigmas.get(k + 1).copied().unwrap_or(0.0));
        let (x0_from, eps_from) = flow_conversion(s);
        let last = k + 1 == n;
        let euler = Coeffs {
            x0_from,
            eps_from,
            x0: 1.0 - s_to,
            eps: s_to,
            writes_prev_x0: !last,
            ..Default::default()
        };
        steps.push(flow_step(cfg, s, s_to, euler));
        if !last {
            let (x0_from, eps_from) = flow_conversion(s_to);
            let g = (s_to - s) / (2.0 * s_to);
            let corrector = Coeffs {
                x0_from,
                eps_from,
                x: 1.0,
                x0: -g,
                prev_x0: g,
                reads_prev_x0: true,
                ..Default::default()
            };
            // The corrector evaluates the model at s' and lands on s' again.
            steps.push(flow_step(cfg, s_to, s_to, corrector));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine() -> SchedulerConfig {
        SchedulerConfig { beta_schedule: super::super::BetaSchedule::SquaredcosCapV2, ..Default::default() }
    }

    #[test]
    fn every_sampler_plans_every_step_count_with_finite_coefficients() {
        let cfg = SchedulerConfig { num_train_timesteps: 50, ..cosine() };
        for kind in
            [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmSolverPp2m, SamplerKind::EulerAncestral]
        {
            for spacing in [TimestepSpacing::Leading, TimestepSpacing::Trailing, TimestepSpacing::Linspace] {
                let cfg = SchedulerConfig { timestep_spacing: Some(spacing), ..cfg.clone() };
                for n in 1..=50 {
                    let p = plan(&cfg, &SamplerOptions { eta: 1.0, ..SamplerOptions::new(kind, n) }).unwrap();
                    assert_eq!(p.steps.len(), n);
                    for s in &p.steps {
                        let c = s.coeffs;
                        let all =
                            [c.x0_from_x, c.x0_from_out, c.eps_from_x, c.eps_from_out, c.x, c.x0, c.eps];
                        assert!(
                            all.iter().chain([c.prev_x0, c.noise].iter()).all(|v| v.is_finite()),
                            "{kind} {spacing} {n}: {c:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn last_step_lands_on_x0() {
        // DDIM with set_alpha_to_one and DPM-Solver end at a' = 1: x' = x0 exactly.
        for kind in [SamplerKind::Ddim, SamplerKind::DpmSolverPp2m, SamplerKind::EulerAncestral] {
            let p = plan(&cosine(), &SamplerOptions::new(kind, 10)).unwrap();
            let c = p.steps.last().unwrap().coeffs;
            assert_eq!((c.x, c.x0, c.noise), (0.0, 1.0, 0.0), "{kind}");
        }
    }

    #[test]
    fn dpm_solver_clips_only_in_the_clipped_eps_mode() {
        let clip = SchedulerConfig { clip_sample: true, ..cosine() };
        let opts = SamplerOptions::new(SamplerKind::DpmSolverPp2m, 5);
        assert!(plan(&clip, &opts).unwrap().steps.iter().all(|s| s.coeffs.clip.is_none()));
        let mode = SchedulerConfig { use_clipped_model_output: true, ..clip.clone() };
        let p = plan(&mode, &opts).unwrap();
        assert!(p.steps.iter().all(|s| s.coeffs.clip == Some(1.0) && !s.coeffs.eps_uses_x0));
        let off = SchedulerConfig { clip_sample: false, ..mode };
        assert!(plan(&off, &opts).unwrap().steps.iter().all(|s| s.coeffs.clip.is_none()));
        // DDIM re-derives eps in the mode; DDPM has no eps term to re-derive.
        let ddim = plan(
            &SchedulerConfig { use_clipped_model_output: true, ..clip.clone() },
            &SamplerOptions::new(SamplerKind::Ddim, 5),
        )
        .unwrap();
        assert!(ddim.steps.iter().all(|s| s.coeffs.eps_uses_x0 && s.coeffs.eps_from_out == 0.0));
        let ddpm = plan(
            &SchedulerConfig { use_clipped_model_output: true, ..clip },
            &SamplerOptions::new(SamplerKind::Ddpm, 5),
        )
        .unwrap();
        assert!(ddpm.steps.iter().all(|s| s.coeffs.eps == 0.0 && s.coeffs.clip.is_some()));
    }

    #[test]
    fn bad_options_are_named() {
        let cfg = cosine();
        let e = plan(&cfg, &SamplerOptions { eta: -0.5, ..SamplerOptions::new(SamplerKind::Ddim, 10) })
            .unwrap_err();
        assert!(e.to_string().contains("`eta` = -0.5"), "{e}");
        let e = plan(&cfg, &SamplerOptions { eta: 3.0, ..SamplerOptions::new(SamplerKind::Ddim, 10) })
            .unwrap_err();
        assert!(e.to_string().contains("`eta` = 3") && e.to_string().contains("eta <= 1"), "{e}");
        let e =
            plan(&cfg, &SamplerOptions { guidance: f32::NAN, ..SamplerOptions::new(SamplerKind::Ddim, 10) });
        assert!(e.unwrap_err().to_string().contains("`guidance` = NaN"));
        assert!(plan(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 0))
            .unwrap_err()
            .to_string()
            .contains("`steps` = 0"));
    }
}
