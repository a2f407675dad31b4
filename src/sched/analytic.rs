//! Analytic-DPM (Bao, Li, Zhu and Zhang, ICLR 2022): the reverse variance in closed form.
//!
//! For a reverse step from level n to level m (the visited timesteps; m past the last step
//! means x_0) whose mean is fixed by a variance family lambda^2 (DDPM: the posterior's
//! beta-tilde; DDIM: eta^2 times its own), the KL-optimal variance is (their Theorem 1, with
//! alpha_n = abar_n / abar_m over a sub-sequence)
//!
//! ```text
//! sigma*^2 = lambda^2 + (sqrt(bbar_n / alpha_n) - sqrt(bbar_m - lambda^2))^2 (1 - Gamma_n)
//! Gamma_n  = E ||eps_theta(x_n, n)||^2 / d        (bbar = 1 - abar)
//! ```
//!
//! clipped to their Theorem 2 bounds: at least lambda^2 (Gamma <= 1), at most the value at
//! Gamma = 0, and at most lambda^2 + (sqrt(abar_m) - sqrt(bbar_m - lambda^2)
//! sqrt(abar_n / bbar_n))^2 ((b - a) / 2)^2 for data in [a, b] = [-1, 1].
//!
//! Gamma is a property of the trained network, estimated once per model by Monte Carlo over
//! the training data (`train/analytic_dpm.py`) and shipped as `analytic_dpm.json`. Under
//! classifier-free guidance the model's eps is eps_w = eps_u + w (eps_c - eps_u), whose mean
//! square is a quadratic in w, so the file holds three moments per timestep and Gamma(w)
//! follows exactly for any guidance.

use std::sync::Arc;

use serde_json::Value;

use super::SchedulerConfig;

use crate::error::{EngineError, Result};

pub(crate) const FILE: &str = "analytic_dpm.json";

/// Per training timestep, the moments of the conditional (c) and unconditional (u) eps over
/// the training data: cc = E||eps_c||^2 / d, uu = E||eps_u||^2 / d, uc = E<eps_u, eps_c> / d.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalyticMoments {
    pub cc: Vec<f64>,
    pub uu: Vec<f64>,
    pub uc: Vec<f64>,
    /// SHA-256 of the weights the moments were measured on (a stale table belongs to other
    /// weights and is refused where the weights' digest is known).
    pub weights_sha256: Option<String>,
}

impl AnalyticMoments {
    /// Parses `analytic_dpm.json` (`train/analytic_dpm.py`'s output).
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |m: String| EngineError::Checksum { file: FILE.into(), message: m };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
        let field = |name: &str| -> Result<Vec<f64>> {
            let arr =
                v.get(name).and_then(Value::as_array).ok_or_else(|| bad(format!("has no array `{name}`")))?;
            arr.iter()
                .map(|x| {
                    x.as_f64()
                        .filter(|f| f.is_finite())
                        .ok_or_else(|| bad(format!("`{name}` holds {x}, expected finite numbers")))
                })
                .collect()
        };
        let (cc, uu, uc) = (field("cc")?, field("uu")?, field("uc")?);
        if cc.is_empty() || cc.len() != uu.len() || cc.len() != uc.len() {
            return Err(bad(format!(
                "`cc`, `uu` and `uc` must have one value per training timestep (lengths {}, {}, {})",
                cc.len(),
                uu.len(),
                uc.len()
            )));
        }
        if let Some(t) = v.get("num_train_timesteps").and_then(Value::as_u64) {
            if t as usize != cc.len() {
                return Err(bad(format!("has {} values for num_train_timesteps = {t}", cc.len())));
            }
        }
        if cc.iter().chain(&uu).any(|&m| m < 0.0) {
            return Err(bad("a mean square (`cc` or `uu`) is negative".into()));
        }
        let weights_sha256 = v.get("weights_sha256").and_then(Value::as_str).map(str::to_owned);
        Ok(AnalyticMoments { cc, uu, uc, weights_sha256 })
    }

    /// Parses `analytic_dpm.json` for `cfg`'s model and checks it: measured on these weights
    /// (`weights_sha256`, the weights' digest, when known), one value per training timestep,
    /// and a diffusion model (flow samplers have no variance). What the CLI and the page
    /// attach to a model's config.
    pub fn for_model(cfg: &SchedulerConfig, text: &str, weights_sha256: Option<&str>) -> Result<Arc<Self>> {
        if cfg.is_flow() {
            return Err(EngineError::input(
                "analytic",
                "analytic_dpm.json is for a diffusion model: this one was trained with flow matching, whose \
                 samplers add no noise to size"
                    .to_string(),
            ));
        }
        let m = AnalyticMoments::from_json(text)?;
        if let Some(sha) = weights_sha256.filter(|s| !s.is_empty()) {
            m.check_weights(sha)?;
        }
        if m.cc.len() != cfg.num_train_timesteps {
            return Err(EngineError::Checksum {
                file: FILE.into(),
                message: format!(
                    "has {} timesteps, but the model's schedule has {}",
                    m.cc.len(),
                    cfg.num_train_timesteps
                ),
            });
        }
        Ok(Arc::new(m))
    }

    /// Refuses moments measured on other weights than those whose SHA-256 (hex) is `sha256`:
    /// Gamma is a property of one network, and a stale table silently mis-sizes every step's
    /// noise. A table without a recorded digest is accepted.
    pub fn check_weights(&self, sha256: &str) -> Result<()> {
        match &self.weights_sha256 {
            Some(want) if !want.eq_ignore_ascii_case(sha256) => Err(EngineError::Checksum {
                file: FILE.into(),
                message: format!(
                    "was measured on other weights (SHA-256 {}...), not these ({}...); re-run \
                     train/analytic_dpm.py for this model",
                    &want[..want.len().min(12)],
                    &sha256[..sha256.len().min(12)]
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Gamma_t(w) = E ||eps_w||^2 / d for guidance w (w = 1: the conditional model alone).
    pub fn gamma(&self, t: usize, w: f64) -> f64 {
        let (a, b) = (1.0 - w, w);
        a * a * self.uu[t] + 2.0 * a * b * self.uc[t] + b * b * self.cc[t]
    }
}

/// The clipped optimal variance of one step (see the module comment). `a`, `a_prev`: abar of
/// the levels n and m; `lambda2`: the mean's variance family; `gamma`: Gamma_n.
pub fn optimal_variance(a: f64, a_prev: f64, lambda2: f64, gamma: f64) -> f64 {
    let (bbar, bbar_prev) = (1.0 - a, 1.0 - a_prev);
    let alpha = a / a_prev;
    let rest = (bbar_prev - lambda2).max(0.0).sqrt();
    let gap = ((bbar / alpha).sqrt() - rest).powi(2);
    let upper_gamma = lambda2 + gap;
    // Data in [-1, 1]: (b - a) / 2 = 1.
    let upper_range = lambda2 + (a_prev.sqrt() - rest * (a / bbar).sqrt()).powi(2);
    let v = lambda2 + gap * (1.0 - gamma);
    v.clamp(lambda2, upper_gamma.min(upper_range).max(lambda2))
}
