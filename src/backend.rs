//! One interface over the two backends: a model loaded on the GPU (wgpu: WebGPU, Vulkan,
//! Metal, DX12) or on the CPU (`crate::fast`), and a sampling session on either. Both take
//! the same [`SampleRequest`] and plan, draw the same noise and return the same
//! [`Readout`], so the CLI (and anything else) drives them alike.

use std::str::FromStr;

use crate::error::{EngineError, Result};
use crate::fast::{CpuEngine, CpuRun, CpuSession};
use crate::gpu::Gpu;
use crate::model::{UNet, UNetConfig};
use crate::pipeline::{Readout, Run, SampleRequest, Session};
use crate::sched::{Plan, SchedulerConfig};

/// Which backend to sample on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The GPU when there is a hardware adapter, else the CPU (a software adapter such as
    /// lavapipe, llvmpipe or SwiftShader is slower than the CPU backend).
    Auto,
    /// The GPU through wgpu, even a software adapter; an error without one.
    WebGpu,
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "webgpu" | "gpu" => Ok(BackendChoice::WebGpu),
            "cpu" => Ok(BackendChoice::Cpu),
            other => Err(EngineError::input(
                "backend",
                format!("{other:?} is not a backend; use auto, webgpu or cpu"),
            )),
        }
    }
}

/// A model loaded on one backend.
#[allow(clippy::large_enum_variant)] // one per loaded model, never in a collection
pub enum Backend {
    Gpu { gpu: Gpu, unet: UNet },
    Cpu(CpuEngine),
}

impl Backend {
    /// Loads `config.json` + safetensors on the backend `choice` names (CPU `threads`, 0 =
    /// every core); returns the backend and a sentence saying which runs and why.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        choice: BackendChoice,
        config: &str,
        weights: &[u8],
        threads: usize,
    ) -> Result<(Self, String)> {
        let cpu = |why: String| -> Result<(Self, String)> {
            let engine = CpuEngine::load(config, weights, threads)?;
            let n = engine.threads();
            Ok((Backend::Cpu(engine), format!("{why}: sampling on the CPU backend, {n} thread(s)")))
        };
        if choice == BackendChoice::Cpu {
            return cpu("--backend cpu".into());
        }
        let gpu = match pollster::block_on(Gpu::new()) {
            Ok(gpu) => gpu,
            Err(e) if choice == BackendChoice::Auto => return cpu(format!("no GPU adapter ({e})")),
            Err(e) => return Err(e),
        };
        if choice == BackendChoice::Auto && gpu.is_software() {
            return cpu(format!("the only adapter, {}, is a software one", gpu.adapter_name()));
        }
        let unet = UNet::load(&gpu, config, weights)?;
        let why = format!("sampling on the GPU: {}", gpu.adapter_name());
        Ok((Backend::Gpu { gpu, unet }, why))
    }

    pub fn config(&self) -> &UNetConfig {
        match self {
            Backend::Gpu { unet, .. } => unet.config(),
            Backend::Cpu(e) => e.unet.config(),
        }
    }

    pub fn sample_shape(&self) -> [usize; 3] {
        match self {
            Backend::Gpu { unet, .. } => unet.sample_shape(),
            Backend::Cpu(e) => e.unet.sample_shape(),
        }
    }

    /// A session for `images` images.
    pub fn session(&self, images: usize) -> Result<Sampler> {
        Ok(match self {
            Backend::Gpu { gpu, unet } => Sampler::Gpu(Session::new(gpu, unet, images)?),
            Backend::Cpu(e) => Sampler::Cpu(CpuSession::new(e, images)?),
        })
    }
}

/// A sampling session on either backend.
pub enum Sampler {
    Gpu(Session),
    Cpu(CpuSession),
}

/// A planned run on either backend.
pub enum AnyRun {
    Gpu(Run),
    Cpu(CpuRun),
}

impl AnyRun {
    pub fn steps(&self) -> usize {
        self.plan().steps.len()
    }

    pub fn plan(&self) -> &Plan {
        match self {
            AnyRun::Gpu(r) => r.plan(),
            AnyRun::Cpu(r) => r.plan(),
        }
    }
}

fn mismatch() -> EngineError {
    EngineError::shape("sample", "a session and a run of different backends (an engine bug)")
}

impl Sampler {
    pub fn start(
        &mut self,
        backend: &Backend,
        sched: &SchedulerConfig,
        req: &SampleRequest,
    ) -> Result<AnyRun> {
        match (self, backend) {
            (Sampler::Gpu(s), Backend::Gpu { gpu, unet }) => Ok(AnyRun::Gpu(s.start(gpu, unet, sched, req)?)),
            (Sampler::Cpu(s), Backend::Cpu(e)) => Ok(AnyRun::Cpu(s.start(e, sched, req)?)),
            _ => Err(mismatch()),
        }
    }

    /// Runs step `k` and waits for it (the GPU's queue drained), so the caller can time it;
    /// fails with [`EngineError::NonFinite`] once x_t holds NaN or infinity.
    pub async fn step(&mut self, backend: &Backend, run: &AnyRun, k: usize) -> Result<()> {
        match (self, backend, run) {
            (Sampler::Gpu(s), Backend::Gpu { gpu, .. }, AnyRun::Gpu(r)) => {
                s.step(gpu, r, k)?;
                // Waiting on the four-byte non-finite flag costs what `gpu.sync()` would.
                s.check_finite(gpu).await
            }
            (Sampler::Cpu(s), Backend::Cpu(e), AnyRun::Cpu(r)) => s.step(e, r, k),
            _ => Err(mismatch()),
        }
    }

    /// x_t after the last step (and the step's x0 estimate with `with_x0`).
    pub async fn read(&mut self, backend: &Backend, with_x0: bool) -> Result<Readout> {
        match (self, backend) {
            (Sampler::Gpu(s), Backend::Gpu { gpu, .. }) => s.read(gpu, with_x0).await,
            (Sampler::Cpu(s), Backend::Cpu(_)) => s.read(with_x0),
            _ => Err(mismatch()),
        }
    }
}
