//! The 2-D lab: a mixture of Gaussians, whose noised densities, score, optimal eps and
//! flow-matching velocity are all exact in closed form, sampled by the image models' own
//! planner (`sched::plan`) and fused step (`fast::step`), point by point.
//!
//! A point is treated as an "image" of two elements, so every sampler here runs through the
//! same per-element update, with the same coefficients and the same Philox noise keys, as a
//! Fashion-MNIST image does; only the model differs (the exact eps* instead of a U-Net).
//!
//! The forward processes, with x_0 ~ sum_k w_k N(mu_k, S_k) and eps ~ N(0, I) independent:
//! - VP (the image models'): x = alpha x_0 + sigma eps with alpha = sqrt(a), sigma =
//!   sqrt(1 - a), a = alphas_cumprod[t] of the model's `scheduler_config.json`;
//! - rectified flow: x = (1 - t) x_0 + t eps, t in [0, 1].
//!
//! Both are x = alpha x_0 + sigma eps for some (alpha, sigma), and then given component k,
//! (x_0, x) is jointly Gaussian, so x | k ~ N(alpha mu_k, C_k) with C_k = alpha^2 S_k +
//! sigma^2 I, and p(x) = sum_k w_k N(x; alpha mu_k, C_k): still a mixture. With d_k = x -
//! alpha mu_k and the posterior responsibilities r_k(x) = w_k N_k(x) / p(x):
//! - score:  grad log p(x) = -sum_k r_k C_k^-1 d_k;
//! - eps*:   E[eps | x] = sum_k r_k sigma C_k^-1 d_k = -sigma grad log p (Tweedie), the
//!   minimiser of the epsilon-prediction loss, i.e. what a perfect network outputs;
//! - x0*:    E[x_0 | x] = sum_k r_k (mu_k + alpha S_k C_k^-1 d_k) (Gaussian conditioning:
//!   Cov(x_0, x | k) = alpha S_k);
//! - flow velocity: the rectified-flow target is eps - x_0, so the marginal velocity field
//!   (the minimiser of the flow-matching loss, whose ODE transports N(0, I) at t = 1 to the
//!   data at t = 0 exactly) is v(x, t) = E[eps - x_0 | x_t = x] = eps* - x0* above with
//!   alpha = 1 - t, sigma = t. That is exact too, no approximation; it is evaluated in this
//!   per-component form because (eps* - x) / (1 - t), the form through the score alone,
//!   divides by zero at t = 1.
//!
//! The responsibilities use log-sum-exp, so points far out in the tails (where every
//! N_k underflows) still get a finite score.

use crate::error::{EngineError, Result};
use crate::fast::step::{self as fused, StepParams};
use crate::sched::noise::{box_muller, philox4x32_10};
use crate::sched::{self, PredictionType, SamplerKind, SamplerOptions, SchedulerConfig, StepCoefficients};

/// At most this many components: the editor's and the wasm API's bound.
pub const MAX_COMPONENTS: usize = 64;
/// At most this many points per run (the page uses hundreds to a few thousand).
pub const MAX_POINTS: usize = 20_000;
/// At most this many stored trajectory values (points x 2 x frames, 64 MiB of f32) per run.
pub const MAX_FRAME_VALUES: usize = 16 << 20;
/// At most this many model evaluations per run.
pub const MAX_EVALS: usize = 100_000;

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// One Gaussian component: weight, mean, covariance [xx, xy, yy].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Component {
    pub weight: f64,
    pub mean: [f64; 2],
    pub cov: [f64; 3],
}

/// A mixture of 2-D Gaussians with weights normalised to 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    comps: Vec<Component>,
}

/// A component of the noised mixture, ready to evaluate.
struct Noised {
    log_norm: f64,
    mean: [f64; 2],
    inv: [f64; 3],
    /// alpha S_k, for x0*.
    alpha_s: [f64; 3],
    mu: [f64; 2],
}

/// Everything the lab reads off the noised mixture at one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointEval {
    pub log_p: f64,
    pub score: [f64; 2],
    pub eps: [f64; 2],
    pub x0: [f64; 2],
}

fn mat_vec(m: [f64; 3], v: [f64; 2]) -> [f64; 2] {
    [m[0] * v[0] + m[1] * v[1], m[1] * v[0] + m[2] * v[1]]
}

impl Mixture {
    /// Validates and normalises: 1..=64 components, finite positive weights, finite means,
    /// symmetric positive definite covariances.
    pub fn new(comps: Vec<Component>) -> Result<Self> {
        if comps.is_empty() || comps.len() > MAX_COMPONENTS {
            return Err(EngineError::input(
                "mixture",
                format!("`mixture` has {} components; it needs 1 to {MAX_COMPONENTS}", comps.len()),
            ));
        }
        let mut total = 0.0;
        for (k, c) in comps.iter().enumerate() {
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(EngineError::input(
                    "mixture.weight",
                    format!("`mixture.weight` of component {k} is {}; it must be finite and > 0", c.weight),
                ));
            }
            if !c.mean.iter().all(|m| m.is_finite() && m.abs() <= 1e3) {
                return Err(EngineError::input(
                    "mixture.mean",
                    format!(
                        "`mixture.mean` of component {k} is {:?}; it must be finite, |m| <= 1000",
                        c.mean
                    ),
                ));
            }
            let [a, b, d] = c.cov;
            let det = a * d - b * b;
            // A floor on the smallest eigenvalue keeps C_k^-1 well conditioned in f64 at t = 0.
            if !(c.cov.iter().all(|v| v.is_finite())
                && a >= 1e-8
                && d >= 1e-8
                && det >= 1e-16
                && a + d <= 1e6)
            {
                return Err(EngineError::input(
                    "mixture.cov",
                    format!(
                        "`mixture.cov` of component {k} is {:?}; it must be symmetric positive definite with \
                         variances in [1e-8, 1e6]",
                        c.cov
                    ),
                ));
            }
            total += c.weight;
        }
        let comps = comps.into_iter().map(|c| Component { weight: c.weight / total, ..c }).collect();
        Ok(Mixture { comps })
    }

    /// From the wasm API's flat layout: [w, mx, my, sxx, sxy, syy] per component.
    pub fn from_flat(flat: &[f64]) -> Result<Self> {
        if !flat.len().is_multiple_of(6) {
            return Err(EngineError::input(
                "mixture",
                format!(
                    "`mixture` has {} numbers; it needs 6 per component (w, mx, my, sxx, sxy, syy)",
                    flat.len()
                ),
            ));
        }
        Self::new(
            flat.chunks_exact(6)
                .map(|c| Component { weight: c[0], mean: [c[1], c[2]], cov: [c[3], c[4], c[5]] })
                .collect(),
        )
    }

    /// The flat layout of [`Mixture::from_flat`] (weights normalised).
    pub fn to_flat(&self) -> Vec<f64> {
        self.comps
            .iter()
            .flat_map(|c| [c.weight, c.mean[0], c.mean[1], c.cov[0], c.cov[1], c.cov[2]])
            .collect()
    }

    pub fn components(&self) -> &[Component] {
        &self.comps
    }

    /// The named presets of the page, scaled like the image models' data (mostly within
    /// [-1, 1], where the pixels live).
    pub fn preset(name: &str) -> Result<Self> {
        let iso = |m: [f64; 2], s: f64| Component { weight: 1.0, mean: m, cov: [s * s, 0.0, s * s] };
        let comps = match name {
            // Two bent, elongated blobs: a moons-like shape with full covariances.
            "moons" => vec![
                Component { weight: 1.0, mean: [-0.45, 0.2], cov: [0.09, -0.035, 0.03] },
                Component { weight: 1.0, mean: [0.45, -0.2], cov: [0.09, -0.035, 0.03] },
                Component { weight: 0.6, mean: [-0.05, 0.45], cov: [0.05, 0.03, 0.03] },
                Component { weight: 0.6, mean: [0.05, -0.45], cov: [0.05, 0.03, 0.03] },
            ],
            "ring" => (0..8)
                .map(|k| {
                    let a = std::f64::consts::TAU * k as f64 / 8.0;
                    iso([0.8 * a.cos(), 0.8 * a.sin()], 0.08)
                })
                .collect(),
            "checker" => (0..16)
                .filter(|k| (k / 4 + k % 4) % 2 == 0)
                .map(|k| iso([-0.75 + 0.5 * (k % 4) as f64, -0.75 + 0.5 * (k / 4) as f64], 0.09))
                .collect(),
            "two" => vec![
                Component { weight: 0.7, mean: [-0.5, -0.3], cov: [0.02, 0.0, 0.02] },
                Component { weight: 0.3, mean: [0.6, 0.5], cov: [0.06, 0.04, 0.05] },
            ],
            _ => {
                return Err(EngineError::input(
                    "preset",
                    format!("`preset` = {name:?}: expected one of \"moons\" \"ring\" \"checker\" \"two\""),
                ))
            }
        };
        Self::new(comps)
    }

    /// The mixture's mean and covariance [xx, xy, yy].
    pub fn moments(&self) -> ([f64; 2], [f64; 3]) {
        let mut m = [0.0; 2];
        for c in &self.comps {
            m[0] += c.weight * c.mean[0];
            m[1] += c.weight * c.mean[1];
        }
        let mut s = [0.0; 3];
        for c in &self.comps {
            let d = [c.mean[0] - m[0], c.mean[1] - m[1]];
            s[0] += c.weight * (c.cov[0] + d[0] * d[0]);
            s[1] += c.weight * (c.cov[1] + d[0] * d[1]);
            s[2] += c.weight * (c.cov[2] + d[1] * d[1]);
        }
        (m, s)
    }

    /// Mean and covariance of x = alpha x_0 + sigma eps.
    pub fn noised_moments(&self, alpha: f64, sigma: f64) -> ([f64; 2], [f64; 3]) {
        let (m, s) = self.moments();
        let (a2, s2) = (alpha * alpha, sigma * sigma);
        ([alpha * m[0], alpha * m[1]], [a2 * s[0] + s2, a2 * s[1], a2 * s[2] + s2])
    }

    fn noised(&self, alpha: f64, sigma: f64) -> Vec<Noised> {
        let s2 = sigma * sigma;
        self.comps
            .iter()
            .map(|c| {
                let a2 = alpha * alpha;
                let cov = [a2 * c.cov[0] + s2, a2 * c.cov[1], a2 * c.cov[2] + s2];
                let det = cov[0] * cov[2] - cov[1] * cov[1];
                Noised {
                    log_norm: c.weight.ln() - LN_2PI - 0.5 * det.ln(),
                    mean: [alpha * c.mean[0], alpha * c.mean[1]],
                    inv: [cov[2] / det, -cov[1] / det, cov[0] / det],
                    alpha_s: [alpha * c.cov[0], alpha * c.cov[1], alpha * c.cov[2]],
                    mu: c.mean,
                }
            })
            .collect()
    }

    /// An evaluator of the density of x = alpha x_0 + sigma eps.
    pub fn at(&self, alpha: f64, sigma: f64) -> Field {
        Field { comps: self.noised(alpha, sigma), sigma }
    }

    /// The VP-noised density at `alphas_cumprod` = a.
    pub fn at_vp(&self, a: f64) -> Field {
        self.at(a.sqrt(), (1.0 - a).sqrt())
    }

    /// The rectified-flow density at time t in [0, 1].
    pub fn at_flow(&self, t: f64) -> Field {
        self.at(1.0 - t, t)
    }

    /// `n` draws x_0 from the mixture and `n` from x = alpha x_0 + sigma eps, both from the
    /// same x_0, laid out [n, 2] each. Keyed by (seed, point) on Philox's stream 1, which the
    /// samplers' noise (stream 0) never uses.
    pub fn sample(&self, n: usize, seed: u64, alpha: f64, sigma: f64) -> (Vec<f32>, Vec<f32>) {
        let key = [seed as u32, (seed >> 32) as u32];
        let cum: Vec<f64> = self
            .comps
            .iter()
            .scan(0.0, |s, c| {
                *s += c.weight;
                Some(*s)
            })
            .collect();
        let (mut x0s, mut xts) = (Vec::with_capacity(2 * n), Vec::with_capacity(2 * n));
        for i in 0..n {
            let r = philox4x32_10([i as u32, 0, 0, 1], key);
            let u = (r[0] >> 8) as f64 / (1u32 << 24) as f64;
            let k = cum.iter().position(|&c| u < c).unwrap_or(self.comps.len() - 1);
            let c = &self.comps[k];
            let (z0, z1) = box_muller(r[2], r[3]);
            // Cholesky of [a b; b d]: l00 = sqrt a, l10 = b / l00, l11 = sqrt(d - l10^2).
            let l00 = c.cov[0].sqrt();
            let l10 = c.cov[1] / l00;
            let l11 = (c.cov[2] - l10 * l10).max(0.0).sqrt();
            let x0 = [c.mean[0] + l00 * z0 as f64, c.mean[1] + l10 * z0 as f64 + l11 * z1 as f64];
            let e = philox4x32_10([i as u32, 1, 0, 1], key);
            let (e0, e1) = box_muller(e[0], e[1]);
            x0s.extend([x0[0] as f32, x0[1] as f32]);
            xts.extend([
                (alpha * x0[0] + sigma * e0 as f64) as f32,
                (alpha * x0[1] + sigma * e1 as f64) as f32,
            ]);
        }
        (x0s, xts)
    }
}

/// The noised mixture at one (alpha, sigma), evaluated point by point.
pub struct Field {
    comps: Vec<Noised>,
    sigma: f64,
}

impl Field {
    /// log p, the score, eps* and x0* at x (see the module comment).
    pub fn eval(&self, x: [f64; 2]) -> PointEval {
        let mut logs = [0.0f64; MAX_COMPONENTS];
        let mut whiten = [[0.0f64; 2]; MAX_COMPONENTS];
        let mut max = f64::NEG_INFINITY;
        for (k, c) in self.comps.iter().enumerate() {
            let d = [x[0] - c.mean[0], x[1] - c.mean[1]];
            let w = mat_vec(c.inv, d);
            whiten[k] = w;
            logs[k] = c.log_norm - 0.5 * (d[0] * w[0] + d[1] * w[1]);
            max = max.max(logs[k]);
        }
        let n = self.comps.len();
        let total: f64 = logs[..n].iter().map(|l| (l - max).exp()).sum();
        let log_p = max + total.ln();
        let (mut score, mut x0) = ([0.0; 2], [0.0; 2]);
        for (k, c) in self.comps.iter().enumerate() {
            let r = (logs[k] - log_p).exp();
            let w = whiten[k];
            score[0] -= r * w[0];
            score[1] -= r * w[1];
            let sw = mat_vec(c.alpha_s, w);
            x0[0] += r * (c.mu[0] + sw[0]);
            x0[1] += r * (c.mu[1] + sw[1]);
        }
        let eps = [-self.sigma * score[0], -self.sigma * score[1]];
        PointEval { log_p, score, eps, x0 }
    }
}

/// The samplers of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabSampler {
    /// One of the image models' samplers, planned by `sched::plan`.
    Plan(SamplerKind),
    /// Annealed Langevin dynamics over the DDIM timesteps (Song & Ermon 2019).
    Langevin,
    /// The rectified-flow ODE with the exact velocity, by the image models' flow samplers
    /// (`flow_euler`, `flow_heun`) on diffusers' flow schedule (T = 1000, shift 1).
    Flow(SamplerKind),
}

impl std::str::FromStr for LabSampler {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "langevin" => Ok(LabSampler::Langevin),
            "flow" => Ok(LabSampler::Flow(SamplerKind::FlowEuler)),
            other => other
                .parse::<SamplerKind>()
                .map(|k| if k.is_flow() { LabSampler::Flow(k) } else { LabSampler::Plan(k) })
                .map_err(|_| {
                EngineError::input(
                    "sampler",
                    format!(
                        "`sampler` = {other:?}: expected one of \"ddpm\" \"ddim\" \"dpmpp2m\" \"euler_a\" \"langevin\" \
                         \"flow\" (= \"flow_euler\") \"flow_heun\""
                    ),
                )
                }),
        }
    }
}

/// What a lab run is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabOptions {
    pub sampler: LabSampler,
    /// Model evaluations (Langevin: noise levels).
    pub steps: usize,
    /// Starting points; the same seed gives every sampler the same starting noise.
    pub points: usize,
    pub seed: u64,
    /// DDIM's eta.
    pub eta: f64,
    /// Langevin's step size relative to the level's noise variance: delta = eps * sigma_t^2.
    pub langevin_step: f64,
    /// Langevin steps per noise level.
    pub langevin_per_level: usize,
}

impl LabOptions {
    pub fn new(sampler: LabSampler, steps: usize, points: usize, seed: u64) -> Self {
        LabOptions { sampler, steps, points, seed, eta: 0.0, langevin_step: 0.1, langevin_per_level: 5 }
    }
}

/// A run: the state of every point before the first step and after each step (Langevin:
/// after each noise level), frames [steps + 1][points * 2].
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectories {
    pub frames: Vec<Vec<f32>>,
    /// The model evaluations it took.
    pub evals: usize,
}

impl Trajectories {
    pub fn last(&self) -> &[f32] {
        self.frames.last().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// What the model sees at one step and what it outputs: the VP level a with the config's
/// prediction type, the VP level a with eps (Langevin's coefficients read eps whatever the
/// config predicts), or the flow time t with the velocity.
#[derive(Clone, Copy)]
enum Level {
    Vp(f64),
    VpEps(f64),
    Flow(f64),
}

/// A step of the fused update plus the model it needs.
struct LabStep {
    coeffs: StepCoefficients,
    level: Level,
    next_scale: f32,
    /// The step's noise key.
    key: u32,
    /// The trajectory records the state after this step.
    record: bool,
}

/// The lab's sampler config for a model's `scheduler_config.json`: the model's noise
/// schedule (betas, T, prediction type) but diffusers' sampling defaults, not the model's.
/// Clipping x0 to [-1, 1] is an image-range prior that would cut a mixture reaching past
/// +-1 (and clipped eps with it), and spacing is the lab's own control, `leading` unless
/// chosen, so its runs stay diffusers' plain samplers whatever a model ships.
pub fn lab_config(model: &SchedulerConfig) -> SchedulerConfig {
    SchedulerConfig {
        clip_sample: false,
        use_clipped_model_output: false,
        timestep_spacing: Some(sched::TimestepSpacing::Leading),
        ..model.clone()
    }
}

/// Runs `opts` on the exact model of `mix`, with the schedule of `cfg`.
pub fn run(mix: &Mixture, cfg: &SchedulerConfig, opts: &LabOptions) -> Result<Trajectories> {
    if opts.points == 0 || opts.points > MAX_POINTS {
        return Err(EngineError::limit(
            "points",
            format!("`points` = {}: it must be 1 to {MAX_POINTS}", opts.points),
        ));
    }
    let (steps, init_sigma, scale0) = match opts.sampler {
        LabSampler::Plan(kind) => {
            let p =
                sched::plan(cfg, &SamplerOptions { eta: opts.eta, ..SamplerOptions::new(kind, opts.steps) })?;
            let steps = (0..p.steps.len())
                .map(|k| LabStep {
                    coeffs: p.steps[k].coeffs,
                    level: Level::Vp(p.steps[k].alpha_cumprod),
                    next_scale: p.input_scale(k + 1),
                    key: k as u32,
                    record: true,
                })
                .collect::<Vec<_>>();
            // Euler ancestral's state lives in sigma space: x_T = init_noise_sigma z and
            // the model sees input_scale x.
            (steps, p.init_noise_sigma, p.input_scale(0))
        }
        LabSampler::Langevin => (langevin(cfg, opts)?, 1.0, 1.0),
        LabSampler::Flow(kind) => (flow(kind, opts.steps)?, 1.0, 1.0),
    };
    let frames_len = 1 + steps.iter().filter(|s| s.record).count();
    if opts.points.saturating_mul(2).saturating_mul(frames_len) > MAX_FRAME_VALUES {
        return Err(EngineError::limit(
            "points",
            format!(
                "{} points x {frames_len} frames is more than the {MAX_FRAME_VALUES} trajectory values a run keeps",
                opts.points
            ),
        ));
    }
    let n = opts.points * 2;
    let (mut state, mut model_in, mut model_out) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let (mut x0_hat, mut history, mut noise) = (vec![0.0f32; n], vec![0.0f32; n], [0.0f32; 2]);
    fused::init(&mut state, &mut model_in, 1, 2, init_sigma, scale0, Some((opts.seed, 0)), &mut noise);
    let mut frames = vec![state.clone()];
    let pred = cfg.prediction_type;
    for (i, st) in steps.iter().enumerate() {
        let field = match st.level {
            Level::Vp(a) | Level::VpEps(a) => mix.at_vp(a),
            Level::Flow(t) => mix.at_flow(t),
        };
        for (inp, out) in model_in.chunks_exact(2).zip(model_out.chunks_exact_mut(2)) {
            let e = field.eval([inp[0] as f64, inp[1] as f64]);
            let m = match st.level {
                Level::Flow(_) => [e.eps[0] - e.x0[0], e.eps[1] - e.x0[1]],
                Level::VpEps(_) => e.eps,
                Level::Vp(a) => {
                    let (alpha, sigma) = (a.sqrt(), (1.0 - a).sqrt());
                    match pred {
                        PredictionType::Epsilon => e.eps,
                        PredictionType::VPrediction => {
                            [alpha * e.eps[0] - sigma * e.x0[0], alpha * e.eps[1] - sigma * e.x0[1]]
                        }
                        PredictionType::Sample => e.x0,
                    }
                }
            };
            out[0] = m[0] as f32;
            out[1] = m[1] as f32;
        }
        let params = StepParams {
            coeffs: &st.coeffs,
            step: st.key,
            guidance: 1.0,
            groups: 1,
            per_image: 2,
            seed: opts.seed,
            first_image: 0,
            next_scale: st.next_scale,
        };
        if !fused::step(&params, &mut state, &model_out, &mut x0_hat, &mut history, &mut model_in, &mut noise)
        {
            // As the image pipeline does: stop at the first non-finite x_t rather than draw NaN.
            return Err(EngineError::NonFinite { step: i + 1, steps: steps.len(), what: "x_t".into() });
        }
        if st.record {
            frames.push(state.clone());
        }
    }
    Ok(Trajectories { frames, evals: steps.len() })
}

/// Annealed Langevin dynamics on the VP levels of DDIM's timesteps: at level a (sigma^2 =
/// 1 - a), `per_level` steps of x' = x + delta/2 grad log p_a(x) + sqrt(delta) z with delta =
/// eps sigma^2, Song & Ermon's step-size rule. With grad log p = -eps* / sigma that is
/// x' = x - (eps sigma / 2) eps* + sqrt(eps) sigma z: one more instance of the fused step's
/// shape (x, eps from the model, noise), so it runs through the same kernel.
fn langevin(cfg: &SchedulerConfig, opts: &LabOptions) -> Result<Vec<LabStep>> {
    let e = opts.langevin_step;
    if !(e.is_finite() && e > 0.0 && e <= 2.0) {
        return Err(EngineError::input(
            "langevin_step",
            format!("`langevin_step` = {e}: it must be in (0, 2] (the step is this times sigma_t^2)"),
        ));
    }
    let per = opts.langevin_per_level;
    if per == 0 || per > 1000 {
        return Err(EngineError::input(
            "langevin_per_level",
            format!("`langevin_per_level` = {per}: it must be 1 to 1000"),
        ));
    }
    if opts.steps.saturating_mul(per) > MAX_EVALS {
        return Err(EngineError::limit(
            "steps",
            format!("{} levels x {per} Langevin steps; at most {MAX_EVALS} model evaluations", opts.steps),
        ));
    }
    let acp = sched::alphas_cumprod(cfg)?;
    let ts = sched::timesteps(cfg, SamplerKind::Ddim, opts.steps)?;
    let mut out = Vec::with_capacity(ts.len() * per);
    for &t in &ts {
        let a = acp[t as usize];
        let sigma = (1.0 - a).sqrt();
        for j in 0..per {
            let coeffs = StepCoefficients {
                x0_from_x: (1.0 / a.sqrt()) as f32,
                x0_from_out: (-sigma / a.sqrt()) as f32,
                eps_from_x: 0.0,
                eps_from_out: 1.0,
                clip: None,
                x: 1.0,
                x0: 0.0,
                eps: (-0.5 * e * sigma) as f32,
                prev_x0: 0.0,
                noise: (e.sqrt() * sigma) as f32,
                reads_prev_x0: false,
                writes_prev_x0: false,
                eps_uses_x0: false,
                eps_from_x0: 0.0,
            };
            let key = out.len() as u32;
            out.push(LabStep { coeffs, level: Level::VpEps(a), next_scale: 1.0, key, record: j + 1 == per });
        }
    }
    Ok(out)
}

/// The flow ODE dx/dt = v(x, t) from t = 1 (x = eps) to t = 0, planned by `sched::plan` as
/// for a flow-matching image model with diffusers' default `FlowMatchEulerDiscreteScheduler`
/// config: levels linspace(1, 1/1000, N) then 0, m = v, x0 = x - t m, eps = x + (1 - t) m,
/// and Euler's x' = (1 - t') x0 + t' eps (Heun adds a corrector that reads the predictor's
/// x0). A trajectory records the state after each completed step, not Heun's predictions.
fn flow(kind: SamplerKind, steps: usize) -> Result<Vec<LabStep>> {
    if steps == 0 || steps > MAX_EVALS {
        return Err(EngineError::input("steps", format!("`steps` = {steps}: it must be 1 to {MAX_EVALS}")));
    }
    let cfg = SchedulerConfig { flow_shift: Some(1.0), clip_sample: false, ..SchedulerConfig::default() };
    let p = sched::plan(&cfg, &SamplerOptions::new(kind, steps))?;
    let t_scale = cfg.num_train_timesteps as f64;
    Ok(p.steps
        .iter()
        .enumerate()
        .map(|(k, st)| LabStep {
            coeffs: st.coeffs,
            level: Level::Flow(st.timestep as f64 / t_scale),
            next_scale: 1.0,
            key: k as u32,
            record: !st.coeffs.writes_prev_x0,
        })
        .collect())
}

/// The field on a grid, row-major from (x0, y0): `nx * ny` points of [sigma score_x,
/// sigma score_y] = -eps* (the arrows; sigma-scaled so they stay readable as t -> 0).
pub fn field_grid(field: &Field, nx: usize, ny: usize, bounds: [f64; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(nx * ny * 2);
    for j in 0..ny {
        for i in 0..nx {
            let x = bounds[0] + (bounds[1] - bounds[0]) * (i as f64 + 0.5) / nx as f64;
            let y = bounds[2] + (bounds[3] - bounds[2]) * (j as f64 + 0.5) / ny as f64;
            let e = field.eval([x, y]);
            out.extend([-e.eps[0] as f32, -e.eps[1] as f32]);
        }
    }
    out
}

/// log p on a grid (same layout as [`field_grid`], one value per point).
pub fn log_density_grid(field: &Field, nx: usize, ny: usize, bounds: [f64; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(nx * ny);
    for j in 0..ny {
        for i in 0..nx {
            let x = bounds[0] + (bounds[1] - bounds[0]) * (i as f64 + 0.5) / nx as f64;
            let y = bounds[2] + (bounds[3] - bounds[2]) * (j as f64 + 0.5) / ny as f64;
            out.push(field.eval([x, y]).log_p as f32);
        }
    }
    out
}
