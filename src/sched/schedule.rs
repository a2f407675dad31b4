//! The training noise schedule: betas and their cumulative product `alphas_cumprod`.

use super::{invalid, BetaSchedule, SchedulerConfig};
use crate::error::Result;

/// `alphas_cumprod[t] = prod_{i <= t} (1 - beta_i)` for t = 0..T-1.
///
/// diffusers keeps its betas in float32, so each beta is rounded to f32 exactly as it does
/// (this matters at the cosine schedule's cap: 1 - f32(0.999) differs from 0.001 by 1.3e-5
/// relative, which the model was trained with); the product is then accumulated in f64,
/// where torch's float32 `cumprod` drifts by ~1e-6 relative over 1000 steps.
///
/// A flow-matching model (x_s = (1 - s) x_0 + s eps) has no betas; its table is the
/// variance-preserving equivalent at s = t / T, shifted ([`flow_alpha_bar`]), so the panels
/// that plot alpha_bar and log-SNR show it on the same axes.
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Result<Vec<f64>> {
    let t = cfg.num_train_timesteps;
    if let Some(shift) = cfg.flow_shift {
        return Ok((0..t).map(|i| flow_alpha_bar(shift_sigma(shift, i as f64 / t as f64))).collect());
    }
    let betas = betas(cfg)?;
    if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
        // beta = 0 makes a_t = 1 (sigma_t = 0, every sampler divides by it); beta >= 1
        // makes a_t = 0 (alpha_t = 0, ditto).
        return Err(invalid(
            "scheduler_config.json",
            "beta_start/beta_end",
            format!("{} / {}", cfg.beta_start, cfg.beta_end),
            &format!("beta[{i}] of the {} schedule is {b}, outside (0, 1)", cfg.beta_schedule),
        ));
    }
    let mut acp = Vec::with_capacity(t);
    let mut prod = 1.0f64;
    for b in betas {
        prod *= 1.0 - b;
        acp.push(prod);
    }
    Ok(acp)
}

/// The variance-preserving alpha_bar with the signal-to-noise ratio of the flow point
/// x_s = (1 - s) x_0 + s eps: x_s / sqrt((1 - s)^2 + s^2) = sqrt(a) x_0 + sqrt(1 - a) eps.
pub fn flow_alpha_bar(s: f64) -> f64 {
    let (a, b) = ((1.0 - s) * (1.0 - s), s * s);
    a / (a + b)
}

/// diffusers' flow `shift`: s -> shift s / (1 + (shift - 1) s).
pub fn shift_sigma(shift: f64, s: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// beta_t for t = 0..T-1, rounded to f32 as diffusers keeps them. For a flow-matching model,
/// 1 - a_t / a_{t-1} of its equivalent table (a_{-1} = 1), for the schedule panel.
pub fn betas(cfg: &SchedulerConfig) -> Result<Vec<f64>> {
    let t = cfg.num_train_timesteps;
    if cfg.is_flow() {
        let acp = alphas_cumprod(cfg)?;
        return Ok((0..t).map(|i| 1.0 - acp[i] / if i == 0 { 1.0 } else { acp[i - 1] }).collect());
    }
    // torch.linspace(start, end, T): i * (end - start) / (T - 1) + start, T = 1 gives start.
    let lin = |start: f64, end: f64, i: usize| {
        if t == 1 {
            start
        } else {
            start + (end - start) * i as f64 / (t - 1) as f64
        }
    };
    let as_f32 = |v: f64| v as f32 as f64;
    Ok(match cfg.beta_schedule {
        BetaSchedule::Linear => (0..t).map(|i| as_f32(lin(cfg.beta_start, cfg.beta_end, i))).collect(),
        // linspace of the square roots in float32, squared in float32, as diffusers does.
        BetaSchedule::ScaledLinear => (0..t)
            .map(|i| {
                let r = lin(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), i) as f32;
                (r * r) as f64
            })
            .collect(),
        // diffusers' betas_for_alpha_bar: computed in Python floats (f64), then float32.
        BetaSchedule::SquaredcosCapV2 => {
            let abar = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
            (0..t)
                .map(|i| {
                    let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                    as_f32((1.0 - abar(t2) / abar(t1)).min(0.999))
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_default_schedule_ends_where_ddpm_says() {
        let acp = alphas_cumprod(&SchedulerConfig::default()).unwrap();
        assert_eq!(acp.len(), 1000);
        assert!((acp[0] - (1.0 - 1e-4)).abs() < 1e-9);
        // Ho et al.'s linear schedule leaves a_T ~ 4.0e-5.
        assert!((acp[999] / 4.035e-5 - 1.0).abs() < 1e-3, "{}", acp[999]);
        assert!(acp.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn cosine_schedule_is_capped_at_the_end() {
        let cfg = SchedulerConfig { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Default::default() };
        let acp = alphas_cumprod(&cfg).unwrap();
        let last_beta = 1.0 - acp[999] / acp[998];
        assert!((last_beta - 0.999f32 as f64).abs() < 1e-12, "{last_beta}");
    }

    #[test]
    fn zero_beta_is_refused() {
        let cfg = SchedulerConfig { beta_start: 0.0, ..Default::default() };
        let e = alphas_cumprod(&cfg).unwrap_err().to_string();
        assert!(e.contains("beta[0]") && e.contains("outside (0, 1)"), "{e}");
    }
}
