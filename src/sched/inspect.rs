//! What the teaching panels show: the schedule of a run (every alpha_bar and beta, the
//! timesteps the run visits, each step's noise) and the parts of one step (x_t, the guided
//! model output, eps-hat, x0-hat, the posterior mean and the added noise).

use super::noise;
use super::plan::{plan, SamplerOptions, StepCoefficients};
use super::schedule::{alphas_cumprod, betas};
use super::{SamplerKind, SchedulerConfig};
use crate::error::{EngineError, Result};

/// The schedule of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleView {
    pub kind: SamplerKind,
    /// alpha_bar_t for t = 0..T-1 (the training schedule).
    pub alphas_cumprod: Vec<f64>,
    /// beta_t for t = 0..T-1, as diffusers keeps them (f32 values).
    pub betas: Vec<f64>,
    /// The model timesteps the run visits, first to last.
    pub timesteps: Vec<f32>,
    /// Per step: alpha_bar of the model input's noise level, and of the level the step
    /// lands on (1 past the last step when the sampler ends on x0).
    pub alpha_bar: Vec<f64>,
    pub alpha_bar_prev: Vec<f64>,
    /// Per step: sigma_t, the standard deviation of the fresh noise the step adds (0 for
    /// DDIM with eta 0 and DPM-Solver++; the posterior's for DDPM; Euler ancestral's
    /// sigma_up, in its sigma space).
    pub sigma: Vec<f64>,
}

/// The schedule a run of `opts` on `cfg` follows.
pub fn schedule_view(cfg: &SchedulerConfig, opts: &SamplerOptions) -> Result<ScheduleView> {
    let p = plan(cfg, opts)?;
    Ok(ScheduleView {
        kind: p.kind,
        alphas_cumprod: alphas_cumprod(cfg)?,
        betas: betas(cfg)?,
        timesteps: p.timesteps(),
        alpha_bar: p.steps.iter().map(|s| s.alpha_cumprod).collect(),
        alpha_bar_prev: p.steps.iter().map(|s| s.alpha_cumprod_prev).collect(),
        sigma: p.steps.iter().map(|s| s.coeffs.noise as f64).collect(),
    })
}

/// One step taken apart, every tensor [B, C, H, W] flat.
#[derive(Clone, Debug, PartialEq)]
pub struct StepParts {
    /// The state the step starts from.
    pub x_t: Vec<f32>,
    /// The guided model output uncond + w (cond - uncond) (eps-hat for an eps-prediction
    /// model).
    pub model_out: Vec<f32>,
    /// The eps the update uses: the model's (converted for other prediction types), or,
    /// with `use_clipped_model_output` and clipping, re-derived from the clipped x0.
    pub eps: Vec<f32>,
    /// x0-hat, clipped when the run clips.
    pub x0: Vec<f32>,
    /// The update without its noise: the posterior mean mu-tilde(x_t, x0) for DDPM, the
    /// deterministic part for the others.
    pub mean: Vec<f32>,
    /// sigma z, the noise the step adds.
    pub noise: Vec<f32>,
    /// mean + noise: the new state, bit for bit what the fused step writes.
    pub x_prev: Vec<f32>,
}

/// Takes step `c` apart on `x_t` with the model output `model_out` ([G*B, P], G = `groups`),
/// the history `prev_x0` (DPM-Solver++'s previous x0, else ignored) and the unit noise `z`,
/// with the fused kernel's operations in its order (so `x_prev` is what it writes).
#[allow(clippy::too_many_arguments)] // the step's inputs, one argument each
pub fn step_parts(
    c: &StepCoefficients,
    guidance: f32,
    groups: usize,
    x_t: &[f32],
    model_out: &[f32],
    prev_x0: &[f32],
    z: &[f32],
) -> Result<StepParts> {
    let n = x_t.len();
    if !(groups == 1 || groups == 2) || model_out.len() != groups * n || prev_x0.len() != n || z.len() != n {
        return Err(EngineError::shape(
            "step parts",
            format!(
                "x_t {n} values, model_out {} for {groups} group(s), prev_x0 {}, z {}",
                model_out.len(),
                prev_x0.len(),
                z.len()
            ),
        ));
    }
    let mut p = StepParts {
        x_t: x_t.to_vec(),
        model_out: vec![0.0; n],
        eps: vec![0.0; n],
        x0: vec![0.0; n],
        mean: vec![0.0; n],
        noise: vec![0.0; n],
        x_prev: vec![0.0; n],
    };
    for i in 0..n {
        let mut m = model_out[i];
        if groups == 2 {
            let u = model_out[n + i];
            m = u + guidance * (m - u);
        }
        let x = x_t[i];
        let (x0, eps) = c.x0_eps(x, m);
        let h = if c.reads_prev_x0 { prev_x0[i] } else { 0.0 };
        let mean = c.x * x + c.x0 * x0 + c.eps * eps + c.prev_x0 * h;
        let noise = if c.noise != 0.0 { c.noise * z[i] } else { 0.0 };
        p.model_out[i] = m;
        p.eps[i] = eps;
        p.x0[i] = x0;
        p.mean[i] = mean;
        p.noise[i] = noise;
        p.x_prev[i] = mean + noise;
    }
    Ok(p)
}

/// The generator's unit noise of step `step` for B images of `per_image` values from global
/// image `first_image` (what the fused step draws).
pub fn step_noise(seed: u64, step: u32, first_image: u32, images: usize, per_image: usize) -> Vec<f32> {
    (0..images * per_image)
        .map(|i| {
            noise::normal(
                seed,
                step,
                first_image.wrapping_add((i / per_image) as u32),
                (i % per_image) as u32,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{reference, BetaSchedule, TimestepSpacing};

    fn cosine() -> SchedulerConfig {
        SchedulerConfig { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Default::default() }
    }

    #[test]
    fn schedule_view_lists_the_visited_steps() {
        let cfg = SchedulerConfig { timestep_spacing: Some(TimestepSpacing::Trailing), ..cosine() };
        let v = schedule_view(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 4)).unwrap();
        assert_eq!(v.alphas_cumprod.len(), 1000);
        assert_eq!(v.betas.len(), 1000);
        assert_eq!(v.timesteps, [999.0, 749.0, 499.0, 249.0]);
        let acp = &v.alphas_cumprod;
        assert_eq!(v.alpha_bar, [acp[999], acp[749], acp[499], acp[249]]);
        assert_eq!(v.alpha_bar_prev, [acp[749], acp[499], acp[249], 1.0]);
        // DDPM fixed_small: sigma^2 = (1 - a') / (1 - a) (1 - a / a'); the last step adds
        // noise too (t = 249 > 0).
        for k in 0..4 {
            let (a, ap) = (v.alpha_bar[k], v.alpha_bar_prev[k]);
            let want = ((1.0 - ap) / (1.0 - a) * (1.0 - a / ap)).max(1e-20).sqrt();
            assert!((v.sigma[k] - want).abs() <= 1e-6 * want.max(1e-6), "step {k}: {} vs {want}", v.sigma[k]);
        }
        // beta and alpha_bar agree: a_t = a_{t-1} (1 - beta_t).
        for t in 1..1000 {
            assert!((acp[t] / acp[t - 1] - (1.0 - v.betas[t])).abs() < 1e-12);
        }
        let d = schedule_view(&cfg, &SamplerOptions::new(SamplerKind::Ddim, 4)).unwrap();
        assert!(d.sigma.iter().all(|&s| s == 0.0));
        assert_eq!(*d.alpha_bar_prev.last().unwrap(), 1.0);
    }

    #[test]
    fn step_parts_add_up_to_the_reference_step() {
        // Clipped-eps DDIM with eta 1 and guided DDPM: x0, mean, noise and the new state.
        let per_image = 8;
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin() * 1.5).collect();
        let out: Vec<f32> = (0..32).map(|i| (i as f32 * 0.91).cos() * 2.0).collect();
        let z = step_noise(5, 0, 3, 2, per_image);
        for (kind, eta, clipped) in [(SamplerKind::Ddim, 1.0, true), (SamplerKind::Ddpm, 0.0, false)] {
            let cfg = SchedulerConfig { use_clipped_model_output: clipped, ..cosine() };
            let p =
                plan(&cfg, &SamplerOptions { eta, guidance: 2.5, ..SamplerOptions::new(kind, 3) }).unwrap();
            let c = &p.steps[0].coeffs;
            assert_eq!(c.eps_uses_x0, clipped);
            let parts = step_parts(c, 2.5, 2, &x, &out, &[0.0; 16], &z).unwrap();
            let mut state = x.clone();
            let mut hist = vec![0.0; 16];
            let x0 = reference::step(
                c,
                2.5,
                2,
                per_image,
                &mut state,
                &out,
                &mut hist,
                reference::Noise::Generated { seed: 5, step: 0, first_image: 3 },
            )
            .unwrap();
            assert_eq!(parts.x0, x0, "{kind}");
            assert_eq!(parts.x_prev, state, "{kind}");
            assert!(parts.x0.iter().any(|v| v.abs() == 1.0), "{kind}: nothing was clipped");
            assert!(parts.noise.iter().all(|v| *v != 0.0), "{kind}");
            for i in 0..16 {
                assert_eq!(parts.model_out[i], out[16 + i] + 2.5 * (out[i] - out[16 + i]));
            }
        }
    }
}
