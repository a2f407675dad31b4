//! The wasm-bindgen API of the 2-D lab (`www/lab.js`): [`Lab`] holds a schedule and a
//! mixture and answers the page's questions about them, all on the CPU in `crate::lab`.
//! Errors cross as the same `EngineError` JS errors as `web.rs`'s.

use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::lab::{self, LabOptions, LabSampler, Mixture};
use crate::sched::{alphas_cumprod, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

use crate::web::to_js;

/// The most grid cells of one field or density request.
const MAX_GRID: usize = 512 * 512;

#[wasm_bindgen]
pub struct Lab {
    cfg: SchedulerConfig,
    acp: Vec<f64>,
    mix: Mixture,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunOptions {
    sampler: String,
    steps: usize,
    points: usize,
    seed: u64,
    #[serde(default)]
    eta: f64,
    #[serde(default = "default_langevin_step")]
    langevin_step: f64,
    #[serde(default = "default_per_level")]
    langevin_per_level: usize,
    /// Overrides the schedule's `timestep_spacing` ("leading", "trailing", "linspace").
    #[serde(default)]
    spacing: Option<String>,
}

fn default_langevin_step() -> f64 {
    0.1
}

fn default_per_level() -> usize {
    5
}

#[wasm_bindgen]
impl Lab {
    /// A lab on the schedule of `scheduler_json` (a model's `scheduler_config.json`), with
    /// the "moons" preset.
    #[wasm_bindgen(constructor)]
    pub fn new(scheduler_json: &str) -> Result<Lab, JsValue> {
        let cfg = lab::lab_config(&SchedulerConfig::from_json(scheduler_json).map_err(to_js)?);
        let acp = alphas_cumprod(&cfg).map_err(to_js)?;
        let mix = Mixture::preset("moons").map_err(to_js)?;
        Ok(Lab { cfg, acp, mix })
    }

    /// A preset's components, flat [w, mx, my, sxx, sxy, syy] per component.
    pub fn preset(name: &str) -> Result<Vec<f64>, JsValue> {
        Mixture::preset(name).map(|m| m.to_flat()).map_err(to_js)
    }

    #[wasm_bindgen(js_name = setMixture)]
    pub fn set_mixture(&mut self, flat: &[f64]) -> Result<(), JsValue> {
        self.mix = Mixture::from_flat(flat).map_err(to_js)?;
        Ok(())
    }

    #[wasm_bindgen(getter, js_name = numTrainTimesteps)]
    pub fn num_train_timesteps(&self) -> usize {
        self.acp.len()
    }

    /// [alpha_t, sigma_t] of training timestep `t`.
    #[wasm_bindgen(js_name = alphaSigma)]
    pub fn alpha_sigma(&self, t: usize) -> Result<Vec<f64>, JsValue> {
        let a = self.level(t)?;
        Ok(vec![a.sqrt(), (1.0 - a).sqrt()])
    }

    /// `n` points of the forward process at timestep `t`: [x_0 (n x 2), x_t (n x 2)].
    pub fn forward(&self, t: usize, n: usize, seed: f64) -> Result<Vec<f32>, JsValue> {
        let a = self.level(t)?;
        check_count("points", n, lab::MAX_POINTS)?;
        let (mut x0, xt) = self.mix.sample(n, seed as u64, a.sqrt(), (1.0 - a).sqrt());
        x0.extend(xt);
        Ok(x0)
    }

    /// -eps* = sigma_t grad log p_t on an `nx` x `ny` grid over [x0, x1] x [y0, y1].
    #[wasm_bindgen(js_name = fieldGrid)]
    pub fn field_grid(&self, t: usize, nx: usize, ny: usize, bounds: &[f64]) -> Result<Vec<f32>, JsValue> {
        let (a, b) = self.grid(t, nx, ny, bounds)?;
        Ok(lab::field_grid(&self.mix.at_vp(a), nx, ny, b))
    }

    /// log p_t on the same kind of grid.
    #[wasm_bindgen(js_name = logDensityGrid)]
    pub fn log_density_grid(
        &self,
        t: usize,
        nx: usize,
        ny: usize,
        bounds: &[f64],
    ) -> Result<Vec<f32>, JsValue> {
        let (a, b) = self.grid(t, nx, ny, bounds)?;
        Ok(lab::log_density_grid(&self.mix.at_vp(a), nx, ny, b))
    }

    /// One sampler's trajectories, flat [frames][points][2] (frames = steps + 1). Options:
    /// { sampler, steps, points, seed, eta?, langevin_step?, langevin_per_level?, spacing? }.
    pub fn trajectories(&self, options: JsValue) -> Result<Vec<f32>, JsValue> {
        let o: RunOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| to_js(EngineError::input("options", format!("lab options: {e}"))))?;
        let sampler: LabSampler = o.sampler.parse().map_err(to_js)?;
        let opts = LabOptions {
            sampler,
            steps: o.steps,
            points: o.points,
            seed: o.seed,
            eta: o.eta,
            langevin_step: o.langevin_step,
            langevin_per_level: o.langevin_per_level,
        };
        let mut cfg = self.cfg.clone();
        if let Some(spacing) = o.spacing.filter(|s| !s.is_empty()) {
            cfg.timestep_spacing = Some(spacing.parse::<TimestepSpacing>().map_err(to_js)?);
        }
        let tr = lab::run(&self.mix, &cfg, &opts).map_err(to_js)?;
        Ok(tr.frames.concat())
    }
}

impl Lab {
    fn level(&self, t: usize) -> Result<f64, JsValue> {
        self.acp.get(t).copied().ok_or_else(|| {
            to_js(EngineError::input("t", format!("`t` = {t}: it must be 0 to {}", self.acp.len() - 1)))
        })
    }

    fn grid(&self, t: usize, nx: usize, ny: usize, bounds: &[f64]) -> Result<(f64, [f64; 4]), JsValue> {
        let a = self.level(t)?;
        check_count("grid", nx.saturating_mul(ny), MAX_GRID)?;
        let b: [f64; 4] = bounds
            .try_into()
            .ok()
            .filter(|b: &[f64; 4]| b.iter().all(|v| v.is_finite()) && b[0] < b[1] && b[2] < b[3])
            .ok_or_else(|| {
                to_js(EngineError::input(
                    "bounds",
                    "`bounds` must be finite [x0, x1, y0, y1], x0 < x1, y0 < y1",
                ))
            })?;
        Ok((a, b))
    }
}

fn check_count(field: &str, n: usize, max: usize) -> Result<(), JsValue> {
    if n == 0 || n > max {
        return Err(to_js(EngineError::limit(field, format!("`{field}` = {n}: it must be 1 to {max}"))));
    }
    Ok(())
}
