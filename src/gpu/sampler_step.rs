//! Launcher for `shaders/sampler_step.wgsl`: one fused kernel per sampler step (guidance,
//! x0 / eps conversion, clipping, the update, noise, the next model input), and the `init`
//! kernel that draws x_T. A [`SamplerRun`] binds a whole [`Plan`] once, so a sampling run
//! is encoded without CPU work per step beyond encoding.

use bytemuck::{Pod, Zeroable};

use super::{dims4, expect_shape, grid_stride, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;
use crate::sched::noise::INIT_STEP;
use crate::sched::{Plan, StepCoefficients};

const BINDINGS: &[Access] = &[
    Access::Read,      // model_out
    Access::Read,      // supplied noise (or the placeholder)
    Access::ReadWrite, // state
    Access::ReadWrite, // x0_hat
    Access::ReadWrite, // history (or a stub)
    Access::ReadWrite, // model_in
    Access::Uniform,
];
const STEP: KernelDef = KernelDef {
    name: "sampler_step",
    source: include_str!("../../shaders/sampler_step.wgsl"),
    entry: "main",
    bindings: BINDINGS,
};
const INIT: KernelDef = KernelDef { entry: "init_state", ..STEP };
const OP: &str = "sampler_step";

const CFG: u32 = 1;
const SUPPLIED_NOISE: u32 = 2;
const CLIP: u32 = 4;
const READ_PREV: u32 = 8;
const WRITE_PREV: u32 = 16;
const NOISE: u32 = 32;
const INIT_FROM_NOISE: u32 = 64;
const EPS_FROM_X0: u32 = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    per_image: u32,
    batch: u32,
    groups: u32,
    grid: u32,
    flags: u32,
    step: u32,
    first_image: u32,
    seed_lo: u32,
    seed_hi: u32,
    guidance: f32,
    x0_from_x: f32,
    x0_from_out: f32,
    eps_from_x: f32,
    eps_from_out: f32,
    clip: f32,
    c_x: f32,
    c_x0: f32,
    c_eps: f32,
    c_prev: f32,
    c_noise: f32,
    next_scale: f32,
    eps_from_x0: f32,
    _pad: [u32; 2],
}

/// The buffers one sampling run works on. B images of [C, H, W]; G = 2 when the model runs
/// classifier-free guidance as one batch (images 0..B conditional, B..2B unconditional),
/// else 1. G is read off `model_out`'s batch.
pub struct SamplerBuffers<'a> {
    /// [B, C, H, W]: x_t, updated in place to x_{t-1} by every step (x_T after `init`).
    pub state: &'a Tensor,
    /// [G*B, C, H, W]: the model output of the current step.
    pub model_out: &'a Tensor,
    /// [B, C, H, W]: the step's x0 estimate (after clipping), for previews.
    pub x0_hat: &'a Tensor,
    /// [G*B, C, H, W]: the next step's model input, the scaled new state in every half
    /// (the U-Net reads it directly).
    pub model_in: &'a Tensor,
    /// [B, C, H, W]: the previous x0, needed by DPM-Solver++(2M) only.
    pub history: Option<&'a Tensor>,
    /// [B, C, H, W]: noise to use instead of the generator's (tests feeding diffusers' own
    /// draws); the caller writes it before each step.
    pub supplied_noise: Option<&'a Tensor>,
}

/// The init and per-step dispatches of one sampling run, built once.
pub struct SamplerRun {
    init: Dispatch,
    steps: Vec<Dispatch>,
    groups: usize,
}

impl SamplerRun {
    /// Binds `plan` to `bufs`. Noise is keyed by `seed` and the global image index
    /// `first_image` + b (see `sched::noise`). With `init_from_noise` the init dispatch draws
    /// x_T from the generator; without, it keeps the unit-variance x_T the caller wrote into
    /// the state (both are then scaled by the plan's `init_noise_sigma`, as diffusers'
    /// pipelines scale their latents).
    pub fn new(
        gpu: &Gpu,
        plan: &Plan,
        bufs: &SamplerBuffers,
        seed: u64,
        first_image: u32,
        init_from_noise: bool,
    ) -> Result<Self> {
        let [b, c, h, w] = dims4(OP, "state", bufs.state)?;
        let [gb, ..] = dims4(OP, "model_out", bufs.model_out)?;
        let groups = gb / b;
        if !(groups == 1 || groups == 2) || !gb.is_multiple_of(b) {
            return Err(EngineError::shape(
                OP,
                format!("model_out has batch {gb}; expected {b} (no guidance) or {} (guidance) for state batch {b}", 2 * b),
            ));
        }
        expect_shape(OP, "model_out", bufs.model_out, &[gb, c, h, w])?;
        expect_shape(OP, "model_in", bufs.model_in, &[gb, c, h, w])?;
        expect_shape(OP, "x0_hat", bufs.x0_hat, &[b, c, h, w])?;
        for (what, t) in [("history", bufs.history), ("supplied_noise", bufs.supplied_noise)] {
            if let Some(t) = t {
                expect_shape(OP, what, t, &[b, c, h, w])?;
            }
        }
        let needs_history = plan.steps.iter().any(|s| s.coeffs.reads_prev_x0 || s.coeffs.writes_prev_x0);
        if needs_history && bufs.history.is_none() {
            return Err(EngineError::shape(
                OP,
                format!("the {} sampler needs a history buffer [B, C, H, W]", plan.kind),
            ));
        }
        distinct(bufs)?;
        u32_of(OP, "model batch elements", bufs.model_in.numel())?;

        // A sampler without history still needs a writable buffer there (the placeholder is
        // bound read-only for the noise); the bind groups keep this stub alive.
        let history = match bufs.history {
            Some(t) => t.buffer().clone(),
            None => Tensor::zeros(gpu, "sampler history (unused)", &[4])?.buffer().clone(),
        };
        let supplied = bufs.supplied_noise.map_or(&gpu.placeholder, |t| t.buffer());
        let buffers = [
            bufs.model_out.buffer(),
            supplied,
            bufs.state.buffer(),
            bufs.x0_hat.buffer(),
            &history,
            bufs.model_in.buffer(),
        ];
        let (wgs, grid) = grid_stride(gpu, b * c * h * w);
        let base = Params {
            per_image: u32_of(OP, "C*H*W", c * h * w)?,
            batch: u32_of(OP, "batch", b)?,
            groups: groups as u32,
            grid,
            first_image,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            guidance: plan.guidance,
            ..Params::zeroed()
        };
        let cfg_flag = if groups == 2 { CFG } else { 0 };

        let init_params = Params {
            flags: cfg_flag | if init_from_noise { INIT_FROM_NOISE } else { 0 },
            step: INIT_STEP,
            c_noise: plan.init_noise_sigma,
            next_scale: plan.input_scale(0),
            ..base
        };
        let init = gpu.dispatch(&gpu.kernel(&INIT, &[])?, &buffers, &init_params, [wgs, 1, 1])?;

        let kernel = gpu.kernel(&STEP, &[])?;
        let supplied_flag = if bufs.supplied_noise.is_some() { SUPPLIED_NOISE } else { 0 };
        let steps = plan
            .steps
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let c: &StepCoefficients = &s.coeffs;
                let mut flags = cfg_flag | supplied_flag;
                for (on, bit) in [
                    (c.clip.is_some(), CLIP),
                    (c.reads_prev_x0, READ_PREV),
                    (c.writes_prev_x0, WRITE_PREV),
                    (c.noise != 0.0, NOISE),
                    (c.eps_uses_x0, EPS_FROM_X0),
                ] {
                    if on {
                        flags |= bit;
                    }
                }
                let params = Params {
                    flags,
                    step: u32_of(OP, "step", k)?,
                    x0_from_x: c.x0_from_x,
                    x0_from_out: c.x0_from_out,
                    eps_from_x: c.eps_from_x,
                    eps_from_out: c.eps_from_out,
                    clip: c.clip.unwrap_or(0.0),
                    c_x: c.x,
                    c_x0: c.x0,
                    c_eps: c.eps,
                    c_prev: c.prev_x0,
                    c_noise: c.noise,
                    next_scale: plan.input_scale(k + 1),
                    eps_from_x0: c.eps_from_x0,
                    ..base
                };
                gpu.dispatch(&kernel, &buffers, &params, [wgs, 1, 1])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SamplerRun { init, steps, groups })
    }

    /// Draws (or scales) x_T into the state and writes the first model input.
    pub fn init(&self) -> &Dispatch {
        &self.init
    }

    /// Step k's dispatch: run it after the model has written step k's output.
    pub fn steps(&self) -> &[Dispatch] {
        &self.steps
    }

    /// G: 2 when the model batch holds the conditional and unconditional halves.
    pub fn groups(&self) -> usize {
        self.groups
    }
}

/// A buffer bound twice with one of them writable is a WebGPU validation error (and a race).
fn distinct(bufs: &SamplerBuffers) -> Result<()> {
    let named = [
        Some(("state", bufs.state)),
        Some(("model_out", bufs.model_out)),
        Some(("x0_hat", bufs.x0_hat)),
        Some(("model_in", bufs.model_in)),
        bufs.history.map(|t| ("history", t)),
        bufs.supplied_noise.map(|t| ("supplied_noise", t)),
    ];
    let named: Vec<_> = named.into_iter().flatten().collect();
    for (i, (a, ta)) in named.iter().enumerate() {
        for (b, tb) in &named[i + 1..] {
            if ta.buffer() == tb.buffer() {
                return Err(EngineError::shape(
                    OP,
                    format!("{a} and {b} are the same buffer; they must be distinct"),
                ));
            }
        }
    }
    Ok(())
}
