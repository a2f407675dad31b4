//! One sampling run on the CPU backend, with the same request, plan, noise keys and
//! results as [`crate::pipeline::Session`] on the GPU: the U-Net over the model batch
//! (classifier-free guidance as one batch of 2B, split across threads by image), then the
//! fused step. Every buffer is allocated when the session is laid out, none per step.

use super::step::{self, StepParams};
use super::CpuEngine;
use crate::error::{EngineError, Result};
use crate::pipeline::{check_images, check_request, model_labels, Guidance, Readout, SampleRequest};
use crate::sched::inspect::{self, StepParts};
use crate::sched::{Plan, SchedulerConfig};

/// Buffers for sampling `images` images of one model, reused across runs.
pub struct CpuSession {
    images: usize,
    layout: Option<Layout>,
}

struct Layout {
    guidance: Guidance,
    groups: usize,
    /// [B, P] each.
    state: Vec<f32>,
    x0_hat: Vec<f32>,
    history: Vec<f32>,
    /// [G*B, P] each.
    model_in: Vec<f32>,
    model_out: Vec<f32>,
    /// [G*B, D]: the class-embedding row of every model-batch item.
    class_rows: Vec<f32>,
    noise: Vec<f32>,
}

/// A planned run on the CPU.
pub struct CpuRun {
    plan: Plan,
    seed: u64,
    first_image: u32,
}

impl CpuRun {
    pub fn steps(&self) -> usize {
        self.plan.steps.len()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

impl CpuSession {
    pub fn new(engine: &CpuEngine, images: usize) -> Result<Self> {
        check_images(images, engine.unet.config())?;
        Ok(CpuSession { images, layout: None })
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// The U-Net's batch per pass (2x the images with classifier-free guidance).
    pub fn model_batch(&self) -> usize {
        self.layout.as_ref().map_or(0, |l| l.groups * self.images)
    }

    /// Plans a run and draws x_T.
    pub fn start(
        &mut self,
        engine: &CpuEngine,
        sched: &SchedulerConfig,
        req: &SampleRequest,
    ) -> Result<CpuRun> {
        let unet = &engine.unet;
        let n = self.images;
        let null = unet.config().null_class();
        let (guidance, plan) = check_request(null, n, unet.sample_shape(), sched, req)?;
        let [c, h, w] = unet.sample_shape();
        let per_image = c * h * w;
        let groups = if guidance == Guidance::Classifier { 2 } else { 1 };
        let labels = model_labels(guidance, null, req.classes.clone(), n);
        let class_rows = unet.class_rows(&labels)?;
        if self.layout.as_ref().map(|l| l.guidance) != Some(guidance) {
            self.layout = None;
            self.layout = Some(Layout {
                guidance,
                groups,
                state: vec![0.0; n * per_image],
                x0_hat: vec![0.0; n * per_image],
                history: vec![0.0; n * per_image],
                model_in: vec![0.0; groups * n * per_image],
                model_out: vec![0.0; groups * n * per_image],
                class_rows: Vec::new(),
                noise: vec![0.0; per_image.next_multiple_of(4)],
            });
        }
        let l = self.layout.as_mut().expect("laid out above");
        l.class_rows = class_rows;
        let from_noise = match &req.init_noise {
            Some(x) => {
                l.state.copy_from_slice(x);
                None
            }
            None => Some((req.seed, req.first_image)),
        };
        step::init(
            &mut l.state,
            &mut l.model_in,
            groups,
            per_image,
            plan.init_noise_sigma,
            plan.input_scale(0),
            from_noise,
            &mut l.noise,
        );
        Ok(CpuRun { plan, seed: req.seed, first_image: req.first_image })
    }

    /// Step `k`: the U-Net on the current model input, then the fused update; fails with
    /// [`EngineError::NonFinite`] when the new x_t holds NaN or infinity.
    pub fn step(&mut self, engine: &CpuEngine, run: &CpuRun, k: usize) -> Result<()> {
        let batch = self.model_batch();
        self.forward_part(engine, run, k, 0, batch)?;
        self.update(engine, run, k)
    }

    /// The U-Net of step `k` on model-batch items `first..first + count` only; returns
    /// their outputs. With [`CpuSession::finish_step`] this lets several instances (Web
    /// Workers) share one step of a few images: each runs part of the model batch, all run
    /// the same update on the gathered outputs and so keep identical states.
    pub fn forward_part(
        &mut self,
        engine: &CpuEngine,
        run: &CpuRun,
        k: usize,
        first: usize,
        count: usize,
    ) -> Result<&[f32]> {
        let batch = self.model_batch();
        let l = self.layout.as_mut().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
        let s =
            run.plan.steps.get(k).ok_or_else(|| {
                EngineError::shape("sample", format!("step {k} of a {}-step run", run.steps()))
            })?;
        if first.checked_add(count).is_none_or(|end| end > batch) || count == 0 {
            return Err(EngineError::shape(
                "sample",
                format!("model-batch items {first}..{} of a batch of {batch}", first.saturating_add(count)),
            ));
        }
        let per = l.model_in.len() / batch;
        let d = l.class_rows.len() / batch;
        let (lo, hi) = (first * per, (first + count) * per);
        engine.forward(
            &l.model_in[lo..hi],
            s.timestep,
            &l.class_rows[first * d..(first + count) * d],
            &mut l.model_out[lo..hi],
        );
        Ok(&l.model_out[lo..hi])
    }

    /// Step `k` as [`CpuSession::step`] runs it, taken apart for the teaching panel: x_t,
    /// the guided model output, eps, x0-hat, the mean, the added noise and the new state
    /// (which the session then holds, as after `step`).
    pub fn step_inspect(&mut self, engine: &CpuEngine, run: &CpuRun, k: usize) -> Result<StepParts> {
        let (x_t, history) = {
            let l =
                self.layout.as_ref().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
            (l.state.clone(), l.history.clone())
        };
        let batch = self.model_batch();
        self.forward_part(engine, run, k, 0, batch)?;
        let l = self.layout.as_ref().expect("laid out by start");
        let s = &run.plan.steps[k];
        let per_image = x_t.len() / self.images;
        let z = if s.coeffs.noise != 0.0 {
            inspect::step_noise(run.seed, k as u32, run.first_image, self.images, per_image)
        } else {
            vec![0.0; x_t.len()]
        };
        let parts =
            inspect::step_parts(&s.coeffs, run.plan.guidance, l.groups, &x_t, &l.model_out, &history, &z)?;
        self.update(engine, run, k)?;
        Ok(parts)
    }

    /// Takes the whole model output of step `k` (gathered from the instances that computed
    /// its parts) and runs the fused update.
    pub fn finish_step(
        &mut self,
        engine: &CpuEngine,
        run: &CpuRun,
        k: usize,
        model_out: &[f32],
    ) -> Result<()> {
        let l = self.layout.as_mut().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
        if model_out.len() != l.model_out.len() {
            return Err(EngineError::shape(
                "sample",
                format!(
                    "{} model outputs for a model batch of {} values",
                    model_out.len(),
                    l.model_out.len()
                ),
            ));
        }
        l.model_out.copy_from_slice(model_out);
        self.update(engine, run, k)
    }

    fn update(&mut self, engine: &CpuEngine, run: &CpuRun, k: usize) -> Result<()> {
        let l = self.layout.as_mut().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
        let s =
            run.plan.steps.get(k).ok_or_else(|| {
                EngineError::shape("sample", format!("step {k} of a {}-step run", run.steps()))
            })?;
        let [c, h, w] = engine.unet.sample_shape();
        let p = StepParams {
            coeffs: &s.coeffs,
            step: k as u32,
            guidance: run.plan.guidance,
            groups: l.groups,
            per_image: c * h * w,
            seed: run.seed,
            first_image: run.first_image,
            next_scale: run.plan.input_scale(k + 1),
        };
        let finite = step::step(
            &p,
            &mut l.state,
            &l.model_out,
            &mut l.x0_hat,
            &mut l.history,
            &mut l.model_in,
            &mut l.noise,
        );
        if !finite {
            return Err(EngineError::NonFinite { step: k + 1, steps: run.steps(), what: "x_t".into() });
        }
        Ok(())
    }

    /// x_t after the last step (the final images once the run is done) and, with `with_x0`,
    /// the last step's x0 estimate.
    pub fn read(&self, with_x0: bool) -> Result<Readout> {
        let l = self.layout.as_ref().ok_or_else(|| EngineError::shape("sample", "read() before start()"))?;
        Ok(Readout { x: l.state.clone(), x0_hat: with_x0.then(|| l.x0_hat.clone()) })
    }
}
