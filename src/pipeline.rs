//! One sampling run on the GPU: the U-Net (classifier-free guidance as one batch of 2B:
//! the requested classes, then the null class) followed by the fused sampler step, one
//! command encoder and one submit per step, no read-back inside the loop.
//!
//! Buffers belong to a [`Session`] (one model, one image count) and are reused by every run;
//! a [`Run`] holds what depends on the request (schedule coefficients, per-step dispatches).

use crate::error::{EngineError, Result};
use crate::gpu::sampler_step::{SamplerBuffers, SamplerRun};
use crate::gpu::{Gpu, Tensor};
use crate::model::{Forward, UNet};
use crate::sched::{plan, Plan, SamplerKind, SamplerOptions, SchedulerConfig};

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    /// One class per image (empty for a model without classes).
    pub classes: Vec<u32>,
    /// Classifier-free guidance w: eps_u + w (eps_c - eps_u). 1 runs the conditional half
    /// only, 0 the unconditional half only; anything else runs both as one batch.
    pub guidance: f32,
    pub kind: SamplerKind,
    pub steps: usize,
    /// DDIM's eta (ignored by the other samplers).
    pub eta: f32,
    pub seed: u64,
    /// Global index of image 0: noise is keyed by (seed, step, global image index, element),
    /// so image k of a run equals image 0 of a run with `first_image = k`.
    pub first_image: u32,
    /// Unit-variance x_T [n, C, H, W] supplied by the caller instead of the seed's noise
    /// (scaled by the sampler's `init_noise_sigma`, as diffusers' pipelines scale latents).
    pub init_noise: Option<Vec<f32>>,
}

/// How many U-Net batch halves a guidance scale needs, and which classes they use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guidance {
    /// Only the requested classes (w = 1, or a model without classes).
    Conditional,
    /// Only the null class (w = 0).
    Unconditional,
    /// Both halves, combined in the sampler kernel.
    Classifier,
}

/// Buffers for sampling `images` images of one model, reused across runs.
pub struct Session {
    images: usize,
    state: Tensor,
    x0_hat: Tensor,
    history: Tensor,
    supplied: Option<Tensor>,
    /// The planned U-Net for the current guidance mode (B or 2B images).
    forward: Option<(Guidance, Forward)>,
}

/// A planned run: schedule, per-step dispatches and the model timesteps of each step.
pub struct Run {
    plan: Plan,
    sampler: SamplerRun,
    timesteps: Vec<Vec<f32>>,
}

impl Run {
    pub fn steps(&self) -> usize {
        self.plan.steps.len()
    }

    /// The U-Net's batch (2n with classifier-free guidance).
    pub fn model_batch(&self) -> usize {
        self.timesteps.first().map_or(0, Vec::len)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

impl Session {
    pub fn new(gpu: &Gpu, unet: &UNet, images: usize) -> Result<Self> {
        if images == 0 {
            return Err(EngineError::shape("sample", "at least one image is needed"));
        }
        let [c, h, w] = unet.sample_shape();
        let shape = [images, c, h, w];
        Ok(Session {
            images,
            state: Tensor::zeros(gpu, "sampler.state", &shape)?,
            x0_hat: Tensor::zeros(gpu, "sampler.x0_hat", &shape)?,
            history: Tensor::zeros(gpu, "sampler.history", &shape)?,
            supplied: None,
            forward: None,
        })
    }

    /// x_t after the last submitted step (the final image once the run is done).
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// The sampler's prediction of x_0 at the last submitted step.
    pub fn x0_hat(&self) -> &Tensor {
        &self.x0_hat
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Plans a run and submits its initialisation (x_T and the first model input).
    pub fn start(
        &mut self,
        gpu: &Gpu,
        unet: &UNet,
        sched: &SchedulerConfig,
        req: &SampleRequest,
    ) -> Result<Run> {
        let n = self.images;
        let null = unet.config().null_class();
        let guidance = match null {
            None => {
                if !req.classes.is_empty() {
                    return Err(EngineError::Unsupported {
                        op: "sample",
                        message: "this model has no classes (num_class_embeds is null)".into(),
                    });
                }
                Guidance::Conditional
            }
            Some(_) if req.classes.len() != n => {
                return Err(EngineError::shape(
                    "sample",
                    format!("{} classes for {n} images: give one class per image", req.classes.len()),
                ))
            }
            Some(_) if req.guidance == 1.0 => Guidance::Conditional,
            Some(_) if req.guidance == 0.0 => Guidance::Unconditional,
            Some(_) => Guidance::Classifier,
        };
        if !req.guidance.is_finite() {
            return Err(EngineError::shape("sample", format!("guidance {} is not a number", req.guidance)));
        }
        let labels: Vec<u32> = match (guidance, null) {
            (_, None) => Vec::new(),
            (Guidance::Conditional, _) => req.classes.clone(),
            (Guidance::Unconditional, Some(z)) => vec![z as u32; n],
            (Guidance::Classifier, Some(z)) => {
                req.classes.iter().copied().chain(std::iter::repeat_n(z as u32, n)).collect()
            }
        };
        let model_batch = if guidance == Guidance::Classifier { 2 * n } else { n };
        if self.forward.as_ref().map(|(g, _)| *g) != Some(guidance) {
            self.forward = None; // free the old plan's buffers before allocating the new one
            self.forward = Some((guidance, unet.plan(gpu, model_batch)?));
        }
        let forward = &self.forward.as_ref().expect("planned above").1;
        forward.set_classes(gpu, unet, &labels)?;

        let plan = plan(
            sched,
            &SamplerOptions {
                kind: req.kind,
                steps: req.steps,
                eta: req.eta as f64,
                guidance: if guidance == Guidance::Classifier { req.guidance } else { 1.0 },
            },
        )?;
        if let Some(x) = &req.init_noise {
            self.state.write(gpu, x)?;
        }
        let buffers = SamplerBuffers {
            state: &self.state,
            model_out: &forward.output,
            x0_hat: &self.x0_hat,
            model_in: &forward.input,
            history: Some(&self.history),
            supplied_noise: self.supplied.as_ref(),
        };
        let sampler =
            SamplerRun::new(gpu, &plan, &buffers, req.seed, req.first_image, req.init_noise.is_none())?;
        gpu.run(&[sampler.init()])?;
        let timesteps = plan.steps.iter().map(|s| vec![s.timestep; model_batch]).collect();
        Ok(Run { plan, sampler, timesteps })
    }

    /// Submits step `k`: the U-Net on the current model input, then the fused update that
    /// writes x_{t-1}, x0_hat and the next model input. No read-back.
    pub fn step(&self, gpu: &Gpu, run: &Run, k: usize) -> Result<()> {
        let (_, forward) =
            self.forward.as_ref().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
        let step =
            run.sampler.steps().get(k).ok_or_else(|| {
                EngineError::shape("sample", format!("step {k} of a {}-step run", run.steps()))
            })?;
        forward.set_timesteps(gpu, &run.timesteps[k])?;
        let dispatches: Vec<_> = forward.dispatches().chain(std::iter::once(step)).collect();
        gpu.run(&dispatches)
    }
}
