//! The wasm-bindgen API the page and the widget talk to (`www/engine.js` wraps it).
//!
//! - [`Engine`]: one GPU device per page, shared by every view and widget.
//! - [`Model`]: one loaded U-Net + its scheduler config, with the sampling buffers of the
//!   last image count it was asked for.
//! - [`Model::sample`]: one run, step by step, with a per-step callback (x_t and x0_hat read
//!   back as `Float32Array`s: the first version of the live preview is a read-back of the
//!   small [n, C, H, W] tensors + `putImageData` in JS) and cancellation between steps
//!   through an `AbortSignal`.
//!
//! Errors cross the boundary as JS `Error`s named `EngineError` carrying the engine's
//! message plus the taxonomy of `src/error.rs` as properties: `kind` (`config`, `weights`,
//! `scheduler`, `input`, `limits`, `numeric`, `gpu-unavailable`, `gpu-oom`, `gpu-lost`,
//! `checksum`, `internal`) and, where there is one, `field` or `tensor`. The page reads
//! those properties; it never parses the message.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::error::EngineError;
use crate::fast::{CpuEngine, CpuRun, CpuSession};
use crate::gpu::{Gpu, Owned};
use crate::model::{UNet, UNetConfig};
use crate::pipeline::{check_image_count, PendingRead, Readback, Run, SampleRequest, Session};
use crate::sched::analytic::AnalyticMoments;
use crate::sched::inspect::schedule_view;
use crate::sched::{
    alphas_cumprod, check_sampler, SamplerKind, SchedulerConfig, SchedulerOverrides, TimestepSpacing,
    VarianceType,
};
use crate::web_model;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// True when this browser exposes `navigator.gpu` at all (an adapter may still be missing).
#[wasm_bindgen(js_name = hasWebGpu)]
pub fn has_webgpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|g| !g.is_undefined())
}

#[wasm_bindgen]
pub struct Engine {
    gpu: Rc<Gpu>,
}

#[wasm_bindgen]
impl Engine {
    /// Requests an adapter and a device; rejects with a readable message when the browser
    /// has no WebGPU or the GPU is too limited.
    pub async fn create() -> Result<Engine, JsValue> {
        let gpu = Gpu::new().await.map_err(to_js)?;
        Ok(Engine { gpu: Rc::new(gpu) })
    }

    #[wasm_bindgen(getter, js_name = adapterName)]
    pub fn adapter_name(&self) -> String {
        // Browsers may hide the adapter's name (privacy); say at least what kind it is.
        let info = &self.gpu.info;
        if !info.name.trim().is_empty() {
            return self.gpu.adapter_name();
        }
        match info.device_type {
            wgpu::DeviceType::Cpu => "WebGPU (a software adapter, on the CPU)".into(),
            wgpu::DeviceType::DiscreteGpu => "WebGPU (discrete GPU)".into(),
            wgpu::DeviceType::IntegratedGpu => "WebGPU (integrated GPU)".into(),
            _ => "WebGPU".into(),
        }
    }

    /// Largest storage binding in bytes (the limit that caps the batch size).
    #[wasm_bindgen(getter, js_name = maxBindingBytes)]
    pub fn max_binding_bytes(&self) -> f64 {
        self.gpu.max_binding_bytes() as f64
    }

    /// Runs every kernel against the CPU reference; resolves to
    /// `[{kernel, max_abs_err, tolerance, ok}]`.
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsValue> {
        let checks = crate::selftest::run(&self.gpu).await.map_err(to_js)?;
        serde_wasm_bindgen::to_value(&checks)
            .map_err(|e| to_js(EngineError::Internal(format!("self-test report: {e}"))))
    }

    /// The device's loss, or else the first uncaptured GPU error since the last call or
    /// failed run, as a message; `undefined` when the device is healthy. A non-fatal error
    /// (a validation error: an engine bug) is reported once and cleared, so the engine keeps
    /// working after it; a loss is reported by every call (see `isLost`).
    #[wasm_bindgen(js_name = deviceError)]
    pub fn device_error(&self) -> Option<String> {
        self.gpu.check().err().map(|e| e.to_string())
    }

    /// True once the device is lost. A lost device never comes back: every later call of
    /// this engine and of its models rejects with kind `gpu-lost`. The page recovers with a
    /// new engine (`Engine.create()`) and its models loaded again from their bytes.
    #[wasm_bindgen(getter, js_name = isLost)]
    pub fn is_lost(&self) -> bool {
        self.gpu.is_lost()
    }

    /// Destroys the device, which the browser reports as a device loss: lets tests (and the
    /// curious) see the page's device-lost state without crashing a GPU. `isLost` is true
    /// as soon as this returns.
    #[wasm_bindgen(js_name = loseDevice)]
    pub fn lose_device(&self) {
        self.gpu.destroy();
    }

    /// Test hook: the next sizeable GPU allocation of this engine (a model's weights, the
    /// buffers of a run for a new image count, a read-back) fails as if the GPU were out of
    /// memory, and the call that made it rejects with kind `gpu-oom`, exactly as it would on
    /// a GPU too small for the request; later allocations succeed again.
    #[wasm_bindgen(js_name = simulateOutOfMemory)]
    pub fn simulate_out_of_memory(&self) {
        self.gpu.inject_out_of_memory(1);
    }

    /// Builds a model from the bytes of its `config.json`, its safetensors weights and
    /// (optionally) diffusers' `scheduler_config.json` (DDPMScheduler's defaults without).
    /// Resolves to the `Model`; rejects with kind `config`, `scheduler` or `weights` (and the
    /// field or tensor) for unusable files, `gpu-oom` when the weights do not fit on the GPU,
    /// `gpu-lost` on a lost device. Async because the GPU says whether the upload fit only
    /// through a promise (an error scope).
    #[wasm_bindgen(js_name = loadModel)]
    pub async fn load_model(
        &self,
        config_json: String,
        weights: Vec<u8>,
        scheduler_json: Option<String>,
    ) -> Result<Model, JsValue> {
        let (sched, alphas) = parse_scheduler(scheduler_json)?;
        let gpu = &self.gpu;
        let unet = gpu
            .scoped("the model's weights", || UNet::load(gpu, &config_json, &weights))
            .await
            .map_err(to_js)?;
        Ok(Model { gpu: gpu.clone(), unet, sched, alphas, session: RefCell::new(None) })
    }
}

/// A loaded model. Sampling buffers for the last image count are kept between runs.
#[wasm_bindgen]
pub struct Model {
    gpu: Rc<Gpu>,
    /// The weights, destroyed when the page frees the model (`model.free()`).
    unet: Owned<UNet>,
    sched: SchedulerConfig,
    alphas: Vec<f64>,
    session: RefCell<Option<Session>>,
}

/// The plain-data part of [`Model::sample`]'s options (camelCase in JS).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SampleOptions {
    /// One class for every image (ignored when `classes` is given).
    class: Option<u32>,
    /// One class per image.
    classes: Option<Vec<u32>>,
    count: usize,
    steps: usize,
    guidance: f32,
    /// Absent: the model's default (`defaultSampler`: flow_euler for a flow-matching model,
    /// ddim for a diffusion one).
    sampler: Option<String>,
    eta: f32,
    seed: f64,
    first_image: u32,
    /// Read x_t and x0_hat back after every step and hand them to the callback.
    preview: bool,
    /// Overrides scheduler_config.json's `clip_sample` for this run (DDPM and DDIM only).
    clip_sample: Option<bool>,
    /// "leading" | "trailing" | "linspace": overrides `timestep_spacing`.
    spacing: Option<String>,
    /// "fixed_small" | "fixed_large" | "analytic": overrides DDPM's `variance_type`
    /// (analytic, with the moments `setAnalyticMoments` attached, also sets DDIM's noise).
    variance: Option<String>,
    /// With clipping, DDIM re-derives eps from the clipped x0 (diffusers'
    /// `use_clipped_model_output`) and DPM-Solver++ clips x0 too; the page passes the model
    /// manifest's default.
    clipped_eps: Option<bool>,
}

impl SampleOptions {
    /// The run's scheduler config: the model's with this request's overrides.
    fn scheduler(&self, base: &SchedulerConfig) -> Result<SchedulerConfig, JsValue> {
        let spacing = match &self.spacing {
            Some(v) => Some(v.parse::<TimestepSpacing>().map_err(|e| renamed("spacing", v, e))?),
            None => None,
        };
        let variance = match &self.variance {
            Some(v) => Some(v.parse::<VarianceType>().map_err(|e| renamed("variance", v, e))?),
            None => None,
        };
        let over = SchedulerOverrides {
            clip_sample: self.clip_sample,
            timestep_spacing: spacing,
            variance_type: variance,
            use_clipped_model_output: self.clipped_eps,
        };
        web_model::check_flow_overrides(base, &over, self.eta).map_err(to_js)?;
        Ok(over.apply(base))
    }

    /// The run's sampler: the one asked for if it fits the model (a diffusion sampler on a
    /// flow-matching model and the reverse are refused, naming those that fit), else the
    /// model's default.
    fn kind(&self, sched: &SchedulerConfig) -> Result<SamplerKind, JsValue> {
        let kind = match &self.sampler {
            Some(s) => s.parse().map_err(to_js)?,
            None => sched.default_sampler(),
        };
        check_sampler(sched, kind).map_err(to_js)?;
        Ok(kind)
    }
}

/// An enum's parse error re-issued under the page's option name (`spacing`, not
/// `timestep_spacing`), keeping its list of accepted values.
fn renamed(field: &str, value: &str, e: EngineError) -> JsValue {
    let m = e.to_string();
    let expected = m.rsplit_once(": ").map_or(m.as_str(), |(_, x)| x);
    to_js(EngineError::input(field, format!("`{field}` = {value:?}: {expected}")))
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            class: None,
            classes: None,
            count: 1,
            steps: 20,
            guidance: 2.0,
            sampler: None,
            eta: 0.0,
            seed: 0.0,
            first_image: 0,
            preview: true,
            clip_sample: None,
            spacing: None,
            variance: None,
            clipped_eps: None,
        }
    }
}

#[wasm_bindgen]
impl Model {
    /// Number of real classes (the null class of classifier-free guidance not counted);
    /// 0 for an unconditional model.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> usize {
        self.unet.config().num_class_embeds.map_or(0, |n| n.saturating_sub(1))
    }

    /// [C, H, W] of one image.
    #[wasm_bindgen(getter, js_name = sampleShape)]
    pub fn sample_shape(&self) -> Vec<u32> {
        self.unet.sample_shape().iter().map(|&d| d as u32).collect()
    }

    #[wasm_bindgen(getter, js_name = numTrainTimesteps)]
    pub fn num_train_timesteps(&self) -> usize {
        self.sched.num_train_timesteps
    }

    /// `alphas_cumprod[t]` of the training schedule (the engine's `sched::alphas_cumprod`;
    /// for a flow-matching model the variance-preserving equivalent, 0 at the last step), for
    /// the schedule plot. The forward panel draws `forwardCoefficients()` instead.
    #[wasm_bindgen(js_name = alphasCumprod)]
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        self.alphas.clone()
    }

    /// `{signal, noise}` (`Float64Array`s over the T training timesteps):
    /// x_t = signal[t] x_0 + noise[t] eps exactly. Diffusion: sqrt(a_t), sqrt(1 - a_t); flow matching: 1 - s, s
    /// with s = t / T after the model's shift.
    #[wasm_bindgen(js_name = forwardCoefficients)]
    pub fn forward_coefficients(&self) -> JsValue {
        forward_js(&self.sched, &self.alphas)
    }

    /// True for a flow-matching model (its scheduler_config.json names a FlowMatch scheduler):
    /// only the flow samplers run it, and eta, clipping, spacing and variance do not apply.
    #[wasm_bindgen(getter, js_name = isFlow)]
    pub fn is_flow(&self) -> bool {
        self.sched.is_flow()
    }

    /// The samplers that fit this model, in menu order.
    #[wasm_bindgen(getter)]
    pub fn samplers(&self) -> Vec<String> {
        web_model::sampler_names(&self.sched).into_iter().map(String::from).collect()
    }

    /// The sampler a run takes when its options name none.
    #[wasm_bindgen(getter, js_name = defaultSampler)]
    pub fn default_sampler(&self) -> String {
        self.sched.default_sampler().as_str().into()
    }

    /// Attaches Analytic-DPM's moments (the text of the model's `analytic_dpm.json`), which
    /// `variance: "analytic"` needs. `weights_sha256`: the weights' SHA-256 (hex) as the
    /// manifest gives it; a table measured on other weights is refused (kind `checksum`).
    #[wasm_bindgen(js_name = setAnalyticMoments)]
    pub fn set_analytic_moments(
        &mut self,
        text: &str,
        weights_sha256: Option<String>,
    ) -> Result<(), JsValue> {
        self.sched.analytic =
            Some(AnalyticMoments::for_model(&self.sched, text, weights_sha256.as_deref()).map_err(to_js)?);
        Ok(())
    }

    /// True once `setAnalyticMoments` succeeded: `variance: "analytic"` can run.
    #[wasm_bindgen(getter, js_name = hasAnalytic)]
    pub fn has_analytic(&self) -> bool {
        self.sched.analytic.is_some()
    }

    /// The timesteps a run of `steps` steps of `sampler` visits, in order.
    pub fn timesteps(&self, sampler: &str, steps: usize) -> Result<Vec<f32>, JsValue> {
        timesteps_of(&self.sched, sampler, steps)
    }

    /// The schedule of a run of `options` (as `sample` takes them: sampler, steps, eta,
    /// guidance, spacing, variance, clipSample, clippedEps): `{sampler, alphasCumprod, betas}`
    /// over all T training timesteps (`Float64Array`s), the visited `timesteps`
    /// (`Float32Array`), and per step `alphaBar`, `alphaBarPrev` (the level it lands on, 1 at
    /// x0) and `sigma` (the standard deviation of the noise it adds).
    pub fn schedule(&self, options: JsValue) -> Result<JsValue, JsValue> {
        schedule_js(&self.sched, self.classes(), options)
    }

    /// Samples `count` images. `options`: `{class | classes, count, steps, guidance, sampler
    /// ("ddim" | "ddpm" | "dpmpp2m" | "euler_a" for a diffusion model, "flow_euler" |
    /// "flow_heun" for a flow-matching one; absent: `defaultSampler`), eta, seed, firstImage,
    /// preview, clipSample, spacing, variance, clippedEps}` (`clipSample` overrides the
    /// scheduler config's `clip_sample`, `spacing` ("leading" | "trailing" | "linspace") its
    /// `timestep_spacing`, `variance` ("fixed_small" | "fixed_large" | "analytic") its
    /// `variance_type`; `clippedEps`: with clipping, DDIM re-derives eps from the clipped x0,
    /// diffusers' `use_clipped_model_output`). A flow-matching model refuses eta (nonzero),
    /// clipSample, spacing, variance and clippedEps, as the CLI refuses their flags.
    ///
    /// `on_step({step, steps, timestep, xt, x0})` is called after every step (`xt` and `x0`
    /// are `Float32Array`s [n, C, H, W] in [-1, 1] when `preview` is on, else absent); when
    /// it returns a Promise, no further step is submitted until it settles (a paused run).
    /// Step k is reported once step k + 1 is queued, so the GPU never waits on the page.
    /// `signal` (an `AbortSignal`, or anything with an `aborted` field) is checked before
    /// every step: once aborted the run stops there and resolves to
    /// `{cancelled: true, stepsDone}`. Otherwise it resolves to
    /// `{cancelled: false, stepsDone, x: Float32Array, shape: [n, C, H, W]}`. A step whose x_t
    /// holds NaN or infinity rejects the run with kind `numeric` naming the step.
    pub async fn sample(
        &self,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        signal: JsValue,
    ) -> Result<JsValue, JsValue> {
        let opts = parse_options(options)?;
        let request = request(&opts, &self.sched, self.unet.config())?;
        let gpu = &*self.gpu;
        if let Some(lost) = gpu.lost() {
            return Err(to_js(lost));
        }
        let n = opts.count;
        let [c, h, w] = self.unet.sample_shape();
        let shape = js_array(&[n as f64, c as f64, h as f64, w as f64]);

        // Take the session out for the run, so that an overlapping call (the page's queue
        // prevents those) gets its own instead of a RefCell panic.
        let cached = self.session.borrow_mut().take().filter(|s| s.images() == n);
        let mut session = match cached {
            Some(s) => s,
            None => Session::new(gpu, &self.unet, n).map_err(|e| self.fail(e))?,
        };
        let sched = &opts.scheduler(&self.sched)?;
        // Allocates (for a new image count) and waits for the GPU's verdict before anything
        // is submitted: too many images for this GPU reject here with `gpu-oom`, and the
        // failed session is dropped so its buffers go back before the page retries.
        session.prepare(gpu, &self.unet, sched, &request).await.map_err(|e| self.fail(e))?;
        let run = session.start(gpu, &self.unet, sched, &request).map_err(|e| self.fail(e))?;
        let steps = run.steps();
        let what = if opts.preview { Readback::XAndX0 } else { Readback::Flag };
        let mut last: Option<Vec<f32>> = None;
        // Step k's read-back is waited for only after step k + 1 is submitted, so the GPU
        // always has the next step queued while the page takes a preview (or, with the
        // preview off, checks the non-finite flag) and the event loop runs.
        let mut in_flight: Option<(usize, PendingRead)> = None;
        for k in 0..steps {
            if is_aborted(&signal) {
                // A read still in flight is settled by the session's next read.
                *self.session.borrow_mut() = Some(session);
                return Ok(object(&[("cancelled", JsValue::TRUE), ("stepsDone", (k as f64).into())]));
            }
            session.step(gpu, &run, k).map_err(|e| self.fail(e))?;
            let pending = session.enqueue_read(gpu, what).await.map_err(|e| self.fail(e))?;
            if let Some((done, previous)) = in_flight.replace((k, pending)) {
                if let Some(x) = self.deliver(&mut session, &run, done, previous, on_step.as_ref()).await? {
                    last = Some(x);
                }
            }
        }
        if let Some((done, previous)) = in_flight {
            if let Some(x) = self.deliver(&mut session, &run, done, previous, on_step.as_ref()).await? {
                last = Some(x);
            }
        }
        let x = match last {
            Some(x) => x,
            None => session.read(gpu, false).await.map_err(|e| self.fail(e))?.x,
        };
        *self.session.borrow_mut() = Some(session);
        Ok(object(&[
            ("cancelled", JsValue::FALSE),
            ("stepsDone", (steps as f64).into()),
            ("x", js_sys::Float32Array::from(x.as_slice()).into()),
            ("shape", shape),
        ]))
    }

    /// Frees the sampling buffers (they are rebuilt by the next run).
    #[wasm_bindgen(js_name = releaseBuffers)]
    pub fn release_buffers(&self) {
        self.session.borrow_mut().take();
    }
}

impl Model {
    /// An error of a run; a lost device wins over whatever it caused.
    fn fail(&self, e: EngineError) -> JsValue {
        to_js(self.gpu.lost().unwrap_or(e))
    }

    /// Waits for step `done`'s read-back and hands it to the page's callback: x_t and x0_hat
    /// with the preview on (x_t is returned), else only the step's number once its
    /// non-finite flag is known to be clean.
    async fn deliver(
        &self,
        session: &mut Session,
        run: &Run,
        done: usize,
        pending: PendingRead,
        on_step: Option<&js_sys::Function>,
    ) -> Result<Option<Vec<f32>>, JsValue> {
        let readout = session.finish_read(&self.gpu, pending).await.map_err(|e| self.fail(e))?;
        let info = object(&[
            ("step", (done as f64).into()),
            ("steps", (run.steps() as f64).into()),
            ("timestep", run.plan().steps[done].timestep.into()),
        ]);
        let x = readout.map(|r| {
            let x0 = r.x0_hat.unwrap_or_default();
            set(&info, "xt", js_sys::Float32Array::from(r.x.as_slice()).into());
            set(&info, "x0", js_sys::Float32Array::from(x0.as_slice()).into());
            r.x
        });
        if let Some(f) = on_step {
            call_step(f, &info).await?;
        }
        Ok(x)
    }
}

/// Checks the page's options against the model: a request for either backend.
fn request(
    o: &SampleOptions,
    sched: &SchedulerConfig,
    config: &UNetConfig,
) -> Result<SampleRequest, JsValue> {
    let bad = |field: &str, m: String| to_js(EngineError::input(field, m));
    // The CLI's --n shares this cap (pipeline::max_images: the model's bytes per image
    // against one memory budget), so the page and the CLI refuse the same counts.
    check_image_count("count", o.count, config).map_err(to_js)?;
    let classes = config.num_class_embeds.map_or(0, |n| n.saturating_sub(1));
    if !(1..=sched.num_train_timesteps).contains(&o.steps) {
        return Err(bad(
            "steps",
            format!(
                "steps {} is outside 1..={} (the model's training timesteps)",
                o.steps, sched.num_train_timesteps
            ),
        ));
    }
    if !(o.seed.is_finite() && o.seed >= 0.0 && o.seed.fract() == 0.0 && o.seed < 9007199254740992.0) {
        return Err(bad("seed", format!("seed {} is not an integer in 0..2^53", o.seed)));
    }
    let kind = o.kind(sched)?;
    let labels: Vec<u32> = match (&o.classes, o.class, classes) {
        (_, _, 0) => Vec::new(),
        (Some(list), _, _) => list.clone(),
        (None, Some(c), _) => vec![c; o.count],
        (None, None, _) => return Err(bad("class", "this model is class-conditional: give a class".into())),
    };
    if let Some(c) = labels.iter().find(|&&c| c as usize >= classes) {
        return Err(bad("class", format!("class {c} is outside the model's classes 0..{}", classes - 1)));
    }
    Ok(SampleRequest {
        classes: labels,
        guidance: o.guidance,
        kind,
        steps: o.steps,
        eta: o.eta,
        seed: o.seed as u64,
        first_image: o.first_image,
        init_noise: None,
    })
}

fn parse_options(options: JsValue) -> Result<SampleOptions, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(SampleOptions::default());
    }
    serde_wasm_bindgen::from_value(options)
        .map_err(|e| to_js(EngineError::input("options", format!("sample options: {e}"))))
}

fn parse_scheduler(scheduler_json: Option<String>) -> Result<(SchedulerConfig, Vec<f64>), JsValue> {
    let sched = match scheduler_json {
        Some(text) => SchedulerConfig::from_json(&text).map_err(to_js)?,
        None => SchedulerConfig::default(),
    };
    let alphas = alphas_cumprod(&sched).map_err(to_js)?;
    Ok((sched, alphas))
}

fn schedule_js(base: &SchedulerConfig, classes: usize, options: JsValue) -> Result<JsValue, JsValue> {
    let opts = parse_options(options)?;
    let sched = opts.scheduler(base)?;
    let kind = opts.kind(&sched)?;
    // The guidance the run's plan gets (pipeline::check_request), which Analytic-DPM's
    // variance depends on: the scale, 0 for the unconditional half alone, 1 without classes.
    let guidance = if classes > 0 { opts.guidance } else { 1.0 };
    let v = schedule_view(
        &sched,
        &crate::sched::SamplerOptions {
            eta: opts.eta as f64,
            guidance,
            ..crate::sched::SamplerOptions::new(kind, opts.steps)
        },
    )
    .map_err(to_js)?;
    let f64a = |v: &[f64]| -> JsValue { js_sys::Float64Array::from(v).into() };
    Ok(object(&[
        ("sampler", kind.as_str().into()),
        ("alphasCumprod", f64a(&v.alphas_cumprod)),
        ("betas", f64a(&v.betas)),
        ("timesteps", js_sys::Float32Array::from(v.timesteps.as_slice()).into()),
        ("alphaBar", f64a(&v.alpha_bar)),
        ("alphaBarPrev", f64a(&v.alpha_bar_prev)),
        ("sigma", f64a(&v.sigma)),
    ]))
}

fn forward_js(sched: &SchedulerConfig, alphas: &[f64]) -> JsValue {
    let (signal, noise) = web_model::forward_coefficients(sched, alphas);
    object(&[
        ("signal", js_sys::Float64Array::from(signal.as_slice()).into()),
        ("noise", js_sys::Float64Array::from(noise.as_slice()).into()),
    ])
}

fn timesteps_of(sched: &SchedulerConfig, sampler: &str, steps: usize) -> Result<Vec<f32>, JsValue> {
    let kind: SamplerKind = sampler.parse().map_err(to_js)?;
    let plan = crate::sched::plan(sched, &crate::sched::SamplerOptions::new(kind, steps)).map_err(to_js)?;
    Ok(plan.timesteps())
}

/// The CPU backend of one model in one wasm instance: the page runs one per Web Worker
/// (`www/cpu-worker.js`), each on its share of the images, and steps them in lock-step
/// (`start`, then `step(k)` for every k, `read` for previews), so cancellation between
/// steps, previews and results behave as on the GPU. `sample` runs a whole request in this
/// instance, with the GPU `Model::sample`'s interface.
#[wasm_bindgen]
pub struct CpuModel {
    engine: CpuEngine,
    sched: SchedulerConfig,
    alphas: Vec<f64>,
    run: RefCell<Option<(CpuSession, CpuRun, SchedulerConfig)>>,
}

#[wasm_bindgen]
impl CpuModel {
    /// Builds the model from the bytes of `config.json`, the safetensors weights and
    /// (optionally) `scheduler_config.json`; rejects with `ConfigError` or `WeightsError`
    /// exactly as `Engine.loadModel` does.
    pub fn load(
        config_json: &str,
        weights: &[u8],
        scheduler_json: Option<String>,
    ) -> Result<CpuModel, JsValue> {
        let (sched, alphas) = parse_scheduler(scheduler_json)?;
        let engine = CpuEngine::load(config_json, weights, 1).map_err(to_js)?;
        Ok(CpuModel { engine, sched, alphas, run: RefCell::new(None) })
    }

    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> usize {
        self.engine.unet.config().num_class_embeds.map_or(0, |n| n.saturating_sub(1))
    }

    #[wasm_bindgen(getter, js_name = sampleShape)]
    pub fn sample_shape(&self) -> Vec<u32> {
        self.engine.unet.sample_shape().iter().map(|&d| d as u32).collect()
    }

    #[wasm_bindgen(getter, js_name = numTrainTimesteps)]
    pub fn num_train_timesteps(&self) -> usize {
        self.sched.num_train_timesteps
    }

    #[wasm_bindgen(js_name = alphasCumprod)]
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        self.alphas.clone()
    }

    /// As `Model.forwardCoefficients`.
    #[wasm_bindgen(js_name = forwardCoefficients)]
    pub fn forward_coefficients(&self) -> JsValue {
        forward_js(&self.sched, &self.alphas)
    }

    #[wasm_bindgen(getter, js_name = isFlow)]
    pub fn is_flow(&self) -> bool {
        self.sched.is_flow()
    }

    #[wasm_bindgen(getter)]
    pub fn samplers(&self) -> Vec<String> {
        web_model::sampler_names(&self.sched).into_iter().map(String::from).collect()
    }

    #[wasm_bindgen(getter, js_name = defaultSampler)]
    pub fn default_sampler(&self) -> String {
        self.sched.default_sampler().as_str().into()
    }

    /// As `Model.setAnalyticMoments`; the run in progress (if any) keeps its schedule.
    #[wasm_bindgen(js_name = setAnalyticMoments)]
    pub fn set_analytic_moments(
        &mut self,
        text: &str,
        weights_sha256: Option<String>,
    ) -> Result<(), JsValue> {
        self.sched.analytic =
            Some(AnalyticMoments::for_model(&self.sched, text, weights_sha256.as_deref()).map_err(to_js)?);
        Ok(())
    }

    #[wasm_bindgen(getter, js_name = hasAnalytic)]
    pub fn has_analytic(&self) -> bool {
        self.sched.analytic.is_some()
    }

    pub fn timesteps(&self, sampler: &str, steps: usize) -> Result<Vec<f32>, JsValue> {
        timesteps_of(&self.sched, sampler, steps)
    }

    /// As `Model.schedule`.
    pub fn schedule(&self, options: JsValue) -> Result<JsValue, JsValue> {
        schedule_js(&self.sched, self.classes(), options)
    }

    /// The denoising loss of one image over t (`web_model::denoising_loss`): `x0` [C, H, W],
    /// the class `label` (the null class gives the unconditional loss), training timesteps
    /// `timesteps`, and the one noise draw `noise` [C, H, W] every x_t shares. Returns
    /// ||target - output||^2 / d per timestep; `lossTarget` names the target.
    #[wasm_bindgen(js_name = lossCurve)]
    pub fn loss_curve(
        &self,
        x0: &[f32],
        label: Option<u32>,
        timesteps: Vec<u32>,
        noise: &[f32],
    ) -> Result<Vec<f64>, JsValue> {
        let ts: Vec<usize> = timesteps.iter().map(|&t| t as usize).collect();
        web_model::denoising_loss(&self.engine, &self.sched, &self.alphas, x0, label, &ts, noise)
            .map_err(to_js)
    }

    #[wasm_bindgen(getter, js_name = lossTarget)]
    pub fn loss_target(&self) -> String {
        web_model::loss_target(&self.sched).into()
    }

    /// Runs step `k` of the started run as `step(k)` does and returns it taken apart:
    /// `{step, timestep, xt, modelOut, eps, x0, mean, noise, xPrev}` (`Float32Array`s
    /// [n, C, H, W]: the state before the step, the guided model output, the eps the update
    /// uses, x0-hat (clipped when the run clips), the update without its noise (DDPM: the
    /// posterior mean mu-tilde), sigma z, and the new state = mean + noise) and the step's
    /// scalars `steps` (model evaluations of the run), `prediction` (what the network outputs:
    /// `web_model::loss_target`), `alphaBar`, `alphaBarPrev`, `sigma` and `coefficients`
    /// `{x, x0, eps, prevX0, noise, clip}` of x' = c.x x + c.x0 x0 + c.eps eps + c.prevX0
    /// x0_prev + c.noise z, with how x0 and eps follow from x and the output m:
    /// x0 = x0FromX x + x0FromOut m (clipped to +-clip), eps = epsFromX x + epsFromOut m, or
    /// with `epsUsesX0` eps = epsFromX x + epsFromX0 x0.
    #[wasm_bindgen(js_name = inspectStep)]
    pub fn inspect_step(&self, k: usize) -> Result<JsValue, JsValue> {
        let mut guard = self.run.borrow_mut();
        let (session, run, _) = guard
            .as_mut()
            .ok_or_else(|| to_js(EngineError::Internal("inspectStep() before start()".into())))?;
        if k >= run.steps() {
            return Err(to_js(EngineError::input("step", format!("step {k} of a {}-step run", run.steps()))));
        }
        let parts = session.step_inspect(&self.engine, run, k).map_err(to_js)?;
        let s = &run.plan().steps[k];
        let c = &s.coeffs;
        let f32a = |v: &[f32]| -> JsValue { js_sys::Float32Array::from(v).into() };
        let coefficients = object(&[
            ("x", c.x.into()),
            ("x0", c.x0.into()),
            ("eps", c.eps.into()),
            ("prevX0", c.prev_x0.into()),
            ("noise", c.noise.into()),
            ("clip", c.clip.map_or(JsValue::NULL, JsValue::from)),
            ("x0FromX", c.x0_from_x.into()),
            ("x0FromOut", c.x0_from_out.into()),
            ("epsFromX", c.eps_from_x.into()),
            ("epsFromOut", c.eps_from_out.into()),
            ("epsFromX0", c.eps_from_x0.into()),
            ("epsUsesX0", c.eps_uses_x0.into()),
        ]);
        Ok(object(&[
            ("step", (k as f64).into()),
            ("steps", (run.steps() as f64).into()),
            ("prediction", web_model::loss_target(&self.sched).into()),
            ("timestep", s.timestep.into()),
            ("xt", f32a(&parts.x_t)),
            ("modelOut", f32a(&parts.model_out)),
            ("eps", f32a(&parts.eps)),
            ("x0", f32a(&parts.x0)),
            ("mean", f32a(&parts.mean)),
            ("noise", f32a(&parts.noise)),
            ("xPrev", f32a(&parts.x_prev)),
            ("alphaBar", s.alpha_cumprod.into()),
            ("alphaBarPrev", s.alpha_cumprod_prev.into()),
            ("sigma", (c.noise as f64).into()),
            ("coefficients", coefficients),
        ]))
    }

    /// Plans a run of `options` (as `Model.sample` takes them; `count` images from global
    /// index `firstImage`) and draws x_T; returns the step count.
    pub fn start(&self, options: JsValue) -> Result<usize, JsValue> {
        let opts = parse_options(options)?;
        let req = request(&opts, &self.sched, self.engine.unet.config())?;
        let sched = opts.scheduler(&self.sched)?;
        // Reuse the buffers of the last run when the image count matches.
        let cached = self.run.borrow_mut().take().map(|(s, ..)| s).filter(|s| s.images() == opts.count);
        let mut session = match cached {
            Some(s) => s,
            None => CpuSession::new(&self.engine, opts.count).map_err(to_js)?,
        };
        let run = session.start(&self.engine, &sched, &req).map_err(to_js)?;
        let steps = run.steps();
        *self.run.borrow_mut() = Some((session, run, sched));
        Ok(steps)
    }

    /// Runs step `k` of the started run; returns its model timestep.
    pub fn step(&self, k: usize) -> Result<f32, JsValue> {
        let mut guard = self.run.borrow_mut();
        let (session, run, _) =
            guard.as_mut().ok_or_else(|| to_js(EngineError::Internal("step() before start()".into())))?;
        session.step(&self.engine, run, k).map_err(to_js)?;
        Ok(run.plan().steps[k].timestep)
    }

    /// The U-Net of step `k` on model-batch items `first..first + count` (the batch is
    /// [images; null-class images] with guidance); returns their outputs.
    #[wasm_bindgen(js_name = forwardPart)]
    pub fn forward_part(
        &self,
        k: usize,
        first: usize,
        count: usize,
    ) -> Result<js_sys::Float32Array, JsValue> {
        let mut guard = self.run.borrow_mut();
        let (session, run, _) =
            guard.as_mut().ok_or_else(|| to_js(EngineError::Internal("step() before start()".into())))?;
        let out = session.forward_part(&self.engine, run, k, first, count).map_err(to_js)?;
        Ok(js_sys::Float32Array::from(out))
    }

    /// Step `k`'s update from the whole model output (gathered from `forwardPart` calls,
    /// possibly in other workers); returns the step's timestep.
    #[wasm_bindgen(js_name = finishStep)]
    pub fn finish_step(&self, k: usize, model_out: &[f32]) -> Result<f32, JsValue> {
        let mut guard = self.run.borrow_mut();
        let (session, run, _) =
            guard.as_mut().ok_or_else(|| to_js(EngineError::Internal("step() before start()".into())))?;
        session.finish_step(&self.engine, run, k, model_out).map_err(to_js)?;
        Ok(run.plan().steps[k].timestep)
    }

    /// The U-Net's batch per step of the started run (2x the images with guidance).
    #[wasm_bindgen(getter, js_name = modelBatch)]
    pub fn model_batch(&self) -> usize {
        self.run.borrow().as_ref().map_or(0, |(s, ..)| s.model_batch())
    }

    /// `{x, x0}`: x_t after the last step and (with `with_x0`) its x0 estimate, [n, C, H, W].
    pub fn read(&self, with_x0: bool) -> Result<JsValue, JsValue> {
        let guard = self.run.borrow();
        let (session, ..) =
            guard.as_ref().ok_or_else(|| to_js(EngineError::Internal("read() before start()".into())))?;
        let r = session.read(with_x0).map_err(to_js)?;
        let out = object(&[("x", js_sys::Float32Array::from(r.x.as_slice()).into())]);
        if let Some(x0) = r.x0_hat {
            set(&out, "x0", js_sys::Float32Array::from(x0.as_slice()).into());
        }
        Ok(out)
    }

    /// One U-Net forward of `batch` images at t = 500 (for benchmarks: `bench/ort/`).
    #[wasm_bindgen(js_name = benchForward)]
    pub fn bench_forward(&self, batch: usize) -> Result<(), JsValue> {
        let unet = &self.engine.unet;
        let [c, h, w] = unet.sample_shape();
        let classes = self.classes().max(1) as u32;
        let labels: Vec<u32> =
            if self.classes() > 0 { (0..batch as u32).map(|i| i % classes).collect() } else { Vec::new() };
        let rows = unet.class_rows(&labels).map_err(to_js)?;
        let input: Vec<f32> =
            (0..batch * c * h * w).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut out = vec![0.0f32; batch * unet.config().out_channels * h * w];
        self.engine.forward(&input, 500.0, &rows, &mut out);
        Ok(())
    }

    /// A whole run in this instance, with `Model.sample`'s options, callback and result.
    pub async fn sample(
        &self,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        signal: JsValue,
    ) -> Result<JsValue, JsValue> {
        let opts = parse_options(options.clone())?;
        let steps = self.start(options)?;
        let [c, h, w] = self.engine.unet.sample_shape();
        let shape = js_array(&[opts.count as f64, c as f64, h as f64, w as f64]);
        for k in 0..steps {
            if is_aborted(&signal) {
                return Ok(object(&[("cancelled", JsValue::TRUE), ("stepsDone", (k as f64).into())]));
            }
            let timestep = self.step(k)?;
            let info = object(&[
                ("step", (k as f64).into()),
                ("steps", (steps as f64).into()),
                ("timestep", timestep.into()),
            ]);
            if opts.preview {
                let r = self.read(true)?;
                set(&info, "xt", js_sys::Reflect::get(&r, &"x".into())?);
                set(&info, "x0", js_sys::Reflect::get(&r, &"x0".into())?);
            }
            if let Some(f) = &on_step {
                call_step(f, &info).await?;
            }
            // Let the event loop run (the signal's abort, the page's paint) between steps.
            yield_now().await;
        }
        let x = js_sys::Reflect::get(&self.read(false)?, &"x".into())?;
        Ok(object(&[
            ("cancelled", JsValue::FALSE),
            ("stepsDone", (steps as f64).into()),
            ("x", x),
            ("shape", shape),
        ]))
    }
}

/// Calls the page's per-step callback; a Promise it returns is awaited before the next
/// step, which is how the page pauses a run between steps (its Pause and Step buttons).
async fn call_step(f: &js_sys::Function, info: &JsValue) -> Result<(), JsValue> {
    let r = f.call1(&JsValue::NULL, info)?;
    if let Ok(p) = r.dyn_into::<js_sys::Promise>() {
        wasm_bindgen_futures::JsFuture::from(p).await?;
    }
    Ok(())
}

/// Resolves on the next macrotask (a zero-delay timer), so events queued meanwhile run.
async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        if let Ok(f) = js_sys::Reflect::get(&global, &"setTimeout".into()) {
            if let Ok(f) = f.dyn_into::<js_sys::Function>() {
                let _ = f.call2(&global, &resolve, &JsValue::from(0));
                return;
            }
        }
        let _ = resolve.call0(&JsValue::NULL);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

fn is_aborted(signal: &JsValue) -> bool {
    if signal.is_undefined() || signal.is_null() {
        return false;
    }
    js_sys::Reflect::get(signal, &"aborted".into()).is_ok_and(|v| v.is_truthy())
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o: JsValue = js_sys::Object::new().into();
    for (k, v) in fields {
        set(&o, k, v.clone());
    }
    o
}

fn set(o: &JsValue, key: &str, value: JsValue) {
    let _ = js_sys::Reflect::set(o, &key.into(), &value);
}

fn js_array(values: &[f64]) -> JsValue {
    values.iter().map(|&v| JsValue::from(v)).collect::<js_sys::Array>().into()
}

/// The error as a JS `Error` named `EngineError` with `kind`, and `field` / `tensor` where
/// the error names one (see the module docs).
pub(crate) fn to_js(e: EngineError) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name("EngineError");
    let props = [("kind", Some(e.kind().as_str())), ("field", e.field()), ("tensor", e.tensor())];
    for (key, value) in props {
        if let Some(value) = value {
            let _ = js_sys::Reflect::set(&err, &key.into(), &value.into());
        }
    }
    err.into()
}
