//! One sampling run on the GPU: the U-Net (classifier-free guidance as one batch of 2B:
//! the requested classes, then the null class) followed by the fused sampler step and a
//! check of x_t for NaN and infinity, one command encoder and one submit per step, no
//! read-back inside the loop beyond a four-byte flag when the caller waits anyway.
//!
//! Buffers belong to a [`Session`] (one model, one image count) and are reused by every run;
//! a [`Run`] holds what depends on the request (schedule coefficients, per-step dispatches).

use crate::error::{EngineError, Result};
use crate::gpu::nonfinite::{self, NonFiniteCheck};
use crate::gpu::readback::{ReadRing, ReadTicket};
use crate::gpu::sampler_step::{SamplerBuffers, SamplerRun};
use crate::gpu::{Dispatch, Gpu, Owned, Tensor};
use crate::model::config::{DownBlockType, UpBlockType};
use crate::model::{Forward, UNet, UNetConfig};
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
pub(crate) enum Guidance {
    /// Only the requested classes (w = 1, or a model without classes).
    Conditional,
    /// Only the null class (w = 0).
    Unconditional,
    /// Both halves, combined in the sampler kernel.
    Classifier,
}

/// Checks a request against the model and the image count (both backends): the guidance
/// mode it implies and its plan.
pub(crate) fn check_request(
    null: Option<usize>,
    n: usize,
    [c, h, w]: [usize; 3],
    sched: &SchedulerConfig,
    req: &SampleRequest,
) -> Result<(Guidance, Plan)> {
    let guidance = match null {
        None => {
            if !req.classes.is_empty() {
                return Err(EngineError::input(
                    "class",
                    "this model has no classes (num_class_embeds is null): give none",
                ));
            }
            Guidance::Conditional
        }
        Some(_) if req.classes.len() != n => {
            return Err(EngineError::input(
                "class",
                format!("{} classes for {n} images: give one class per image", req.classes.len()),
            ))
        }
        Some(_) if req.guidance == 1.0 => Guidance::Conditional,
        Some(_) if req.guidance == 0.0 => Guidance::Unconditional,
        Some(_) => Guidance::Classifier,
    };
    if !req.guidance.is_finite() {
        return Err(EngineError::input(
            "guidance",
            format!("guidance {} is not a finite number", req.guidance),
        ));
    }
    let per_image = c.checked_mul(h).and_then(|p| p.checked_mul(w)).ok_or_else(|| {
        EngineError::limit("images", format!("[{c}, {h}, {w}] images are too large to index"))
    })?;
    if let Some(x) = &req.init_noise {
        let want = n
            .checked_mul(per_image)
            .ok_or_else(|| EngineError::limit("images", format!("{n} images are too many to index")))?;
        if x.len() != want {
            return Err(EngineError::input(
                "init_noise",
                format!("the initial noise has {} values; {n} images need {want}", x.len()),
            ));
        }
        // NaN noise would sample NaN images without a single kernel going wrong: say which
        // value is bad instead of handing back a black grid.
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::input(
                "init_noise",
                format!(
                    "the initial noise holds {} at [{}, {}] (image, element): every value must be finite",
                    x[i],
                    i / per_image,
                    i % per_image
                ),
            ));
        }
    }
    if req.first_image.checked_add(n as u32).is_none() {
        return Err(EngineError::input("first_image", "first_image + image count overflows u32"));
    }
    let plan = plan(
        sched,
        &SamplerOptions {
            kind: req.kind,
            steps: req.steps,
            eta: req.eta as f64,
            // The scale the kernel combines the halves with, and the w whose Gamma(w)
            // Analytic-DPM reads: 0 when only the unconditional half runs, 1 when only the
            // conditional one (or the model has no classes).
            guidance: match guidance {
                Guidance::Classifier => req.guidance,
                Guidance::Unconditional => 0.0,
                Guidance::Conditional => 1.0,
            },
        },
    )?;
    Ok((guidance, plan))
}

/// The U-Net's class labels for `classes` (one per image): the classes, the null class, or
/// both halves of a guided batch.
pub(crate) fn model_labels(
    guidance: Guidance,
    null: Option<usize>,
    classes: Vec<u32>,
    images: usize,
) -> Vec<u32> {
    match (guidance, null) {
        (_, None) => Vec::new(),
        (Guidance::Conditional, _) => classes,
        (Guidance::Unconditional, Some(z)) => vec![z as u32; images],
        (Guidance::Classifier, Some(z)) => {
            classes.into_iter().chain(std::iter::repeat_n(z as u32, images)).collect()
        }
    }
}

/// The memory one sampling run may hold, on either backend: what a browser tab (one wasm
/// memory tops out at 4 GiB) or a modest GPU can spare. Image counts are capped by it, so a
/// hostile `--n` or `count` fails at once instead of allocating for minutes.
pub const SAMPLING_BUDGET_BYTES: u64 = 2 << 30;

/// Floats of every activation one image's U-Net pass holds, from the config alone (no
/// device needed, so the CLI, the page and both backends get the same answer). It walks
/// the levels with generous per-layer counts: every ResNet as two tensors of its widest
/// (concatenated) input, every attention as four [C, HW] tensors plus its [heads, HW, HW]
/// scores. `tests/sampling_guards.rs` checks that it covers what the GPU plan really
/// allocates (the shipped models: 2.9x of it, the fused kernels keep fewer tensors).
pub fn activation_floats(cfg: &UNetConfig) -> u64 {
    let chs: Vec<u64> = cfg.block_out_channels.iter().map(|&c| c as u64).collect();
    let levels = chs.len();
    let lpb = cfg.layers_per_block as u64;
    let (mut h, mut w) = (cfg.sample_size.0 as u64, cfg.sample_size.1 as u64);
    let mut total: u64 = 0;
    for (l, &ch) in chs.iter().enumerate() {
        let s = h.saturating_mul(w);
        let neighbours = chs[l.saturating_sub(1)].max(chs[(l + 1).min(levels - 1)]).max(ch);
        let resnet = (ch + neighbours).saturating_mul(s).saturating_mul(2);
        let heads = cfg.heads(ch as usize).max(1) as u64;
        let attention =
            ch.saturating_mul(s).saturating_mul(4).saturating_add(heads.saturating_mul(s).saturating_mul(s));
        let down_attn = matches!(cfg.down_block_types.get(l), Some(DownBlockType::AttnDownBlock2D));
        let up_attn = matches!(cfg.up_block_types.get(levels - 1 - l), Some(UpBlockType::AttnUpBlock2D));
        let per_layer = |attn: bool| resnet.saturating_add(if attn { attention } else { 0 });
        total = total
            .saturating_add(lpb.saturating_mul(per_layer(down_attn)))
            .saturating_add((lpb + 1).saturating_mul(per_layer(up_attn)))
            .saturating_add(ch.saturating_mul(s).saturating_mul(2));
        if l + 1 == levels {
            if cfg.has_mid_block {
                total = total.saturating_add(per_layer(cfg.add_attention)).saturating_add(resnet);
            }
        } else {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
    }
    let pixels = (cfg.sample_size.0 as u64).saturating_mul(cfg.sample_size.1 as u64);
    let io = (cfg.in_channels.max(cfg.out_channels) as u64).saturating_mul(pixels).saturating_mul(2);
    let emb = (cfg.time_embed_dim() as u64).saturating_mul(4).saturating_add(chs.iter().sum::<u64>());
    total.saturating_add(io).saturating_add(emb)
}

/// Bytes one image costs a sampling run: the U-Net activations of its two guidance halves,
/// plus a dozen [C, H, W] buffers (sampler state, x0 estimate, history, the model's input
/// and output per half, the read-backs and the images written from them).
pub fn image_bytes(cfg: &UNetConfig) -> u64 {
    let sample = (cfg.in_channels as u64)
        .saturating_mul(cfg.sample_size.0 as u64)
        .saturating_mul(cfg.sample_size.1 as u64);
    activation_floats(cfg).saturating_mul(2).saturating_add(sample.saturating_mul(12)).saturating_mul(4)
}

/// The most images one run of this model may sample within [`SAMPLING_BUDGET_BYTES`]
/// (0 when not even one fits).
pub fn max_images(cfg: &UNetConfig) -> usize {
    usize::try_from(SAMPLING_BUDGET_BYTES / image_bytes(cfg).max(1)).unwrap_or(usize::MAX)
}

/// Checks an image count against the model's cap; `field` names the knob in the message
/// (`--n` for the CLI, `count` for the page, `images` for a session).
pub fn check_image_count(field: &str, images: usize, cfg: &UNetConfig) -> Result<()> {
    if images == 0 {
        return Err(EngineError::input(field, format!("{field} 0: at least one image is needed")));
    }
    let max = max_images(cfg);
    if images > max {
        let gib = SAMPLING_BUDGET_BYTES as f64 / (1u64 << 30) as f64;
        let mib = image_bytes(cfg) as f64 / (1u64 << 20) as f64;
        return Err(EngineError::limit(
            field,
            format!(
                "{images} images exceed this model's cap: it fits at most {max} in the {gib} GiB sampling budget ({mib:.1} MiB per image)"
            ),
        ));
    }
    Ok(())
}

/// Checks the images count of a new session (both backends).
pub(crate) fn check_images(images: usize, cfg: &UNetConfig) -> Result<()> {
    check_image_count("images", images, cfg)?;
    let per_image =
        cfg.in_channels.checked_mul(cfg.sample_size.0).and_then(|p| p.checked_mul(cfg.sample_size.1));
    if per_image.and_then(|p| images.checked_mul(p)).and_then(|n| u32::try_from(n).ok()).is_none() {
        return Err(EngineError::limit("images", format!("{images} images are too many to index")));
    }
    Ok(())
}

/// What the buffers of a session are for, in an out-of-memory message ("64 images").
fn images_label(n: usize) -> String {
    if n == 1 {
        "1 image".into()
    } else {
        format!("{n} images")
    }
}

/// Buffers for sampling `images` images of one model, reused across runs.
pub struct Session {
    images: usize,
    /// Shards and their buffers for the current guidance mode (destroyed with the session).
    layout: Option<Owned<Layout>>,
    /// Lowered to the first step whose x_t went non-finite (see [`NonFiniteCheck`]).
    check: NonFiniteCheck,
    /// Steps of the last started run, for the message of a non-finite step.
    steps: usize,
    /// Staging buffers reused by every read of the session.
    ring: ReadRing,
}

/// Reads a loop may hold at once: the one it waits for and the one behind the step it has
/// just submitted.
const READS_IN_FLIGHT: usize = 2;

/// What a [`Session::enqueue_read`] brings back besides the non-finite flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readback {
    /// Only the flag: the cheapest way to wait for a step and check it.
    Flag,
    X,
    XAndX0,
}

/// A read queued by [`Session::enqueue_read`].
pub struct PendingRead {
    ticket: ReadTicket,
    what: Readback,
    shards: usize,
    per_shard: usize,
}

/// How a run's images are split so no buffer outgrows a storage binding: equal shards of
/// `per_shard` images (the last one padded past `images` if need be), run one after the
/// other inside each step. Noise is keyed by the global image index, so a split run draws
/// exactly the images an unsplit one would.
struct Layout {
    guidance: Guidance,
    per_shard: usize,
    shards: Vec<Shard>,
}

/// Images `first..first + per_shard`: their sampler buffers and their U-Net pass (every
/// shard's pass runs on the first shard's activation buffers).
struct Shard {
    first: usize,
    state: Tensor,
    x0_hat: Tensor,
    history: Tensor,
    forward: Forward,
}

/// A planned run: schedule, per-step dispatches (one sampler per shard) and the model
/// timesteps of each step.
pub struct Run {
    plan: Plan,
    samplers: Vec<SamplerRun>,
    timesteps: Vec<Vec<f32>>,
    /// Per step, per shard: the dispatch that flags a non-finite x_t.
    checks: Vec<Vec<Dispatch>>,
}

impl Run {
    pub fn steps(&self) -> usize {
        self.plan.steps.len()
    }

    /// The U-Net's batch per pass (2x a shard's images with classifier-free guidance).
    pub fn model_batch(&self) -> usize {
        self.timesteps.first().map_or(0, Vec::len)
    }

    /// How many U-Net passes each step makes (1 unless the batch had to be split).
    pub fn shards(&self) -> usize {
        self.samplers.len()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// The final (or current) images of a session read back, [images, C, H, W] each.
pub struct Readout {
    pub x: Vec<f32>,
    /// The sampler's x0 estimate at the last step, if asked for.
    pub x0_hat: Option<Vec<f32>>,
}

impl Layout {
    fn new(gpu: &Gpu, unet: &UNet, images: usize, guidance: Guidance) -> Result<Self> {
        let groups = if guidance == Guidance::Classifier { 2 } else { 1 };
        let max_images = unet.max_batch(gpu)? / groups;
        if max_images == 0 {
            return Err(EngineError::BufferTooLarge {
                what: format!("the U-Net's largest activation for one image (batch {groups})"),
                bytes: unet.bytes_per_image(gpu)? * groups as u64,
                limit: gpu.max_binding_bytes(),
            });
        }
        let count = images.div_ceil(max_images);
        let per_shard = images.div_ceil(count);
        let [c, h, w] = unet.sample_shape();
        let shape = [per_shard, c, h, w];
        let mut shards: Vec<Shard> = Vec::with_capacity(count);
        for s in 0..count {
            let forward = match shards.first() {
                None => unet.plan(gpu, groups * per_shard)?,
                Some(first) => unet.plan_sharing(gpu, &first.forward)?,
            };
            shards.push(Shard {
                first: s * per_shard,
                state: Tensor::zeros(gpu, "sampler.state", &shape)?,
                x0_hat: Tensor::zeros(gpu, "sampler.x0_hat", &shape)?,
                history: Tensor::zeros(gpu, "sampler.history", &shape)?,
                forward,
            });
        }
        Ok(Layout { guidance, per_shard, shards })
    }
}

impl Session {
    pub fn new(gpu: &Gpu, unet: &UNet, images: usize) -> Result<Self> {
        check_images(images, unet.config())?;
        Ok(Session {
            images,
            layout: None,
            check: NonFiniteCheck::new(gpu)?,
            steps: 0,
            ring: ReadRing::new(READS_IN_FLIGHT),
        })
    }

    fn non_finite(&self, step: usize) -> EngineError {
        EngineError::NonFinite { step: step + 1, steps: self.steps, what: "x_t".into() }
    }

    /// Fails with [`EngineError::NonFinite`] if a submitted step produced NaN or infinity.
    /// Reads four bytes back, so it also waits for the GPU (use it instead of `sync`).
    pub async fn check_finite(&mut self, gpu: &Gpu) -> Result<()> {
        let pending = self.enqueue_read(gpu, Readback::Flag).await?;
        self.finish_read(gpu, pending).await.map(drop)
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Staging buffers the session's reads have allocated so far: two at most for a run of
    /// any length, unless a read outgrows them.
    pub fn staging_buffers_created(&self) -> usize {
        self.ring.buffers_created()
    }

    /// Allocates the buffers `req` needs, unless the session holds them already, inside an
    /// out-of-memory error scope, and waits for the GPU's answer (see [`Gpu::scoped`]). Call
    /// it before [`Session::start`] wherever an await is possible (the browser): a GPU
    /// without room for this many images then fails here, with
    /// [`EngineError::OutOfMemory`] naming the image count, and nothing has been submitted
    /// that uses the unallocated buffers. Without it, `start` allocates in a scope too, but
    /// in the browser the answer can only reach the next check.
    pub async fn prepare(
        &mut self,
        gpu: &Gpu,
        unet: &UNet,
        sched: &SchedulerConfig,
        req: &SampleRequest,
    ) -> Result<()> {
        let n = self.images;
        let (guidance, _) = check_request(unet.config().null_class(), n, unet.sample_shape(), sched, req)?;
        if self.layout.as_ref().map(|l| l.guidance) == Some(guidance) {
            return Ok(());
        }
        self.layout = None; // free the old buffers before allocating the new ones
        self.layout = Some(gpu.scoped(images_label(n), || Layout::new(gpu, unet, n, guidance)).await?);
        Ok(())
    }

    /// Reads x_t after the last submitted step (the final images once the run is done)
    /// and, with `with_x0`, the sampler's x0 estimate, in one GPU round trip.
    pub async fn read(&mut self, gpu: &Gpu, with_x0: bool) -> Result<Readout> {
        let what = if with_x0 { Readback::XAndX0 } else { Readback::X };
        let pending = self.enqueue_read(gpu, what).await?;
        let readout = self.finish_read(gpu, pending).await?;
        readout.ok_or_else(|| EngineError::Internal("a read of x_t returned no values".into()))
    }

    /// Queues a copy of what `what` names, as of the last submitted step, without waiting
    /// for it: a loop submits the next step before [`Session::finish_read`], so the GPU never
    /// idles through the round trip. The non-finite flag always rides along, so a read never
    /// hands out NaN images. Two reads may be in flight at once; staging buffers are reused.
    pub async fn enqueue_read(&mut self, gpu: &Gpu, what: Readback) -> Result<PendingRead> {
        let layout =
            self.layout.as_ref().ok_or_else(|| EngineError::shape("sample", "read() before start()"))?;
        let mut tensors: Vec<&Tensor> = Vec::new();
        if what != Readback::Flag {
            tensors.extend(layout.shards.iter().map(|s| &s.state));
        }
        if what == Readback::XAndX0 {
            tensors.extend(layout.shards.iter().map(|s| &s.x0_hat));
        }
        tensors.push(self.check.flag());
        let shards = layout.shards.len();
        let per_shard = layout.per_shard;
        let ticket = self.ring.enqueue(gpu, &tensors).await?;
        Ok(PendingRead { ticket, what, shards, per_shard })
    }

    /// Waits for a read queued by [`Session::enqueue_read`]: `None` for a flag-only read,
    /// else x_t (and x0_hat) of every image; fails if the flag reports a non-finite step.
    pub async fn finish_read(&mut self, gpu: &Gpu, pending: PendingRead) -> Result<Option<Readout>> {
        let PendingRead { ticket, what, shards, per_shard } = pending;
        let mut parts = self.ring.take(gpu, ticket).await?;
        let flag = parts.pop().unwrap_or_default();
        if let Some(k) = nonfinite::decode(&flag) {
            return Err(self.non_finite(k));
        }
        if what == Readback::Flag {
            return Ok(None);
        }
        let len = self.images * parts[0].len() / per_shard;
        let join = |parts: &[Vec<f32>]| {
            let mut all = parts.concat();
            all.truncate(len);
            all
        };
        let (x, x0) = parts.split_at(shards);
        Ok(Some(Readout { x: join(x), x0_hat: (what == Readback::XAndX0).then(|| join(x0)) }))
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
        let (guidance, plan) = check_request(null, n, unet.sample_shape(), sched, req)?;
        let [c, h, w] = unet.sample_shape();
        let per_image = c * h * w;
        if self.layout.as_ref().map(|l| l.guidance) != Some(guidance) {
            self.layout = None; // free the old buffers before allocating the new ones
            self.layout = Some(gpu.scoped_now(images_label(n), || Layout::new(gpu, unet, n, guidance))?);
        }
        let layout = self.layout.as_ref().expect("laid out above");
        let per_shard = layout.per_shard;

        let mut samplers = Vec::with_capacity(layout.shards.len());
        for shard in &layout.shards {
            // Padding images past the last requested one repeat its class; nobody reads them.
            let classes: Vec<u32> = (shard.first..shard.first + per_shard)
                .map(|i| req.classes.get(i.min(n - 1)).copied().unwrap_or(0))
                .collect();
            let labels = model_labels(guidance, null, classes, per_shard);
            shard.forward.set_classes(gpu, unet, &labels)?;
            if let Some(x) = &req.init_noise {
                let mut part = vec![0.0; per_shard * per_image];
                let lo = (shard.first * per_image).min(x.len());
                let hi = ((shard.first + per_shard) * per_image).min(x.len());
                part[..hi - lo].copy_from_slice(&x[lo..hi]);
                shard.state.write(gpu, &part)?;
            }
            // Below first_image + n (checked above): Session::new keeps n within u32.
            let first_image = req.first_image + shard.first as u32;
            let buffers = SamplerBuffers {
                state: &shard.state,
                model_out: &shard.forward.output,
                x0_hat: &shard.x0_hat,
                model_in: &shard.forward.input,
                history: Some(&shard.history),
                supplied_noise: None,
            };
            samplers.push(SamplerRun::new(
                gpu,
                &plan,
                &buffers,
                req.seed,
                first_image,
                req.init_noise.is_none(),
            )?);
        }
        let check = &self.check;
        let checks = (0..plan.steps.len())
            .map(|k| layout.shards.iter().map(|s| check.dispatch(gpu, &s.state, k)).collect())
            .collect::<Result<Vec<Vec<_>>>>()?;
        check.reset(gpu)?;
        let inits: Vec<_> = samplers.iter().map(SamplerRun::init).collect();
        gpu.run(&inits)?;
        let model_batch = layout.shards[0].forward.batch;
        let timesteps = plan.steps.iter().map(|s| vec![s.timestep; model_batch]).collect();
        self.steps = plan.steps.len();
        Ok(Run { plan, samplers, timesteps, checks })
    }

    /// Submits step `k`: for every shard, the U-Net on its current model input, then the
    /// fused update that writes x_{t-1}, x0_hat and the next model input. One submit, no
    /// read-back.
    pub fn step(&self, gpu: &Gpu, run: &Run, k: usize) -> Result<()> {
        let dispatches = self.step_dispatches(gpu, run, k)?;
        gpu.run(&dispatches)
    }

    /// The dispatches of step `k`, in order, after queueing its timesteps (what [`step`]
    /// submits; `bench --plan-stats` lists them).
    ///
    /// [`step`]: Session::step
    pub fn step_dispatches<'s>(&'s self, gpu: &Gpu, run: &'s Run, k: usize) -> Result<Vec<&'s Dispatch>> {
        let layout =
            self.layout.as_ref().ok_or_else(|| EngineError::shape("sample", "step() before start()"))?;
        if k >= run.steps() || run.samplers.len() != layout.shards.len() || run.checks.len() != run.steps() {
            return Err(EngineError::shape("sample", format!("step {k} of a {}-step run", run.steps())));
        }
        let mut dispatches = Vec::new();
        for ((shard, sampler), check) in layout.shards.iter().zip(&run.samplers).zip(&run.checks[k]) {
            shard.forward.set_timesteps(gpu, &run.timesteps[k])?;
            dispatches.extend(shard.forward.dispatches());
            dispatches.push(&sampler.steps()[k]);
            dispatches.push(check);
        }
        Ok(dispatches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn request(classes: Vec<u32>, guidance: f32, init_noise: Option<Vec<f32>>) -> SampleRequest {
        SampleRequest {
            classes,
            guidance,
            kind: SamplerKind::Ddim,
            steps: 2,
            eta: 0.0,
            seed: 1,
            first_image: 0,
            init_noise,
        }
    }

    /// A bad request is the caller's mistake: kind `input`, naming the option, never an
    /// internal shape error.
    #[test]
    fn bad_requests_are_input_errors_naming_the_option() {
        let sched = SchedulerConfig::default();
        let check = |null, req: &SampleRequest| check_request(null, 2, [1, 4, 4], &sched, req).err().unwrap();
        for (null, req, field) in [
            (None, request(vec![1, 1], 2.0, None), "class"),
            (Some(10), request(vec![1], 2.0, None), "class"),
            (Some(10), request(vec![1, 1], f32::NAN, None), "guidance"),
            (Some(10), request(vec![1, 1], 2.0, Some(vec![0.0; 31])), "init_noise"),
            (Some(10), request(vec![1, 1], 2.0, Some(vec![f32::INFINITY; 32])), "init_noise"),
        ] {
            let e = check(null, &req);
            assert_eq!((e.kind(), e.field()), (ErrorKind::Input, Some(field)), "{e}");
        }
        let e = check(Some(10), &SampleRequest { first_image: u32::MAX, ..request(vec![1, 1], 2.0, None) });
        assert_eq!((e.kind(), e.field()), (ErrorKind::Input, Some("first_image")), "{e}");
        let e = crate::image::parse_npy(b"not an npy file").unwrap_err();
        assert_eq!((e.kind(), e.field()), (ErrorKind::Input, Some("npy")), "{e}");
        let e = "tpu".parse::<crate::backend::BackendChoice>().unwrap_err();
        assert_eq!((e.kind(), e.field()), (ErrorKind::Input, Some("backend")), "{e}");
    }
}
