//! The shipped flow-matching model (www/models/fashion-flow) end to end on both backends
//! against diffusers' FlowMatchEulerDiscreteScheduler (20 steps) and
//! FlowMatchHeunDiscreteScheduler (6 steps, 11 model evaluations), guidance 2, from the
//! same x_T (fixtures from train/make_fixtures.py --part fashion-flow).
//!
//! Tolerance 1e-3 absolute per step and at the end, the bound. The flow ODE does not
//! amplify model-output errors as eps-prediction does near t = 999 (x0 = x - s v has no
//! 1 / alpha), so each step carries the U-Net's ~1e-5 agreement with PyTorch
//! (tests/unet_forward.rs) plus what the previous steps passed on; the worst is printed.

mod common;

use common::f32s;

use std::path::Path;

use diffusion_playground::fast::{CpuEngine, CpuSession};
use diffusion_playground::model::{ModelFolder, UNet};
use diffusion_playground::pipeline::{SampleRequest, Session};
use diffusion_playground::sched::{SamplerKind, SchedulerConfig};
use safetensors::SafeTensors;

const MODEL: &str = "www/models/fashion-flow";

fn read_model() -> (String, Vec<u8>, SchedulerConfig) {
    let folder = ModelFolder::open(Path::new(MODEL)).unwrap();
    let (config, weights) = (folder.config_json.clone(), folder.read_weights().unwrap());
    let sched = folder.scheduler().unwrap();
    assert!(sched.is_flow(), "{MODEL}/scheduler_config.json should name a FlowMatch scheduler");
    (config, weights, sched)
}

/// (fixture file, sampler, N): the run and the request it makes.
const CASES: [(&str, SamplerKind, usize); 2] = [
    ("fashion_flow_euler20_cfg2", SamplerKind::FlowEuler, 20),
    ("fashion_flow_heun6_cfg2", SamplerKind::FlowHeun, 6),
];

/// A fixture decoded once: the request it makes, its timesteps and per-step states.
struct Fixture {
    req: SampleRequest,
    timesteps: Vec<f32>,
    x_prev: Vec<f32>,
    x_final: Vec<f32>,
}

impl Fixture {
    fn load(name: &str, kind: SamplerKind, steps: usize) -> Fixture {
        let path = format!("tests/fixtures/{name}.safetensors");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}: run train/make_fixtures.py --part fashion-flow"));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let req = SampleRequest {
            classes: common::labels(&st, "class"),
            guidance: f32s(&st, "guidance_scale")[0],
            kind,
            steps,
            eta: 0.0,
            seed: 0,
            first_image: 0,
            init_noise: Some(f32s(&st, "x_T")),
        };
        Fixture {
            req,
            timesteps: f32s(&st, "timesteps"),
            x_prev: f32s(&st, "x_prev"),
            x_final: f32s(&st, "x_final"),
        }
    }

    /// Checks the state after step `k`; returns its worst error.
    fn check_step(&self, what: &str, k: usize, got: &[f32]) -> f32 {
        let per = self.x_prev.len() / self.timesteps.len();
        let want = &self.x_prev[k * per..(k + 1) * per];
        common::assert_close(&format!("{what} step {k} x_prev"), got, want, &SHAPE, 1e-3, 0.0);
        got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }
}

const SHAPE: [usize; 4] = [2, 1, 28, 28];

#[test]
fn gpu_backend_follows_diffusers_flow_schedulers() {
    let gpu = common::gpu();
    let (config, weights, sched) = read_model();
    let unet = UNet::load(gpu, &config, &weights).unwrap();
    for (name, kind, steps) in CASES {
        let fx = Fixture::load(name, kind, steps);
        let mut session = Session::new(gpu, &unet, 2).unwrap();
        let run = session.start(gpu, &unet, &sched, &fx.req).unwrap();
        assert_eq!(run.plan().timesteps(), fx.timesteps, "{name}: timesteps");
        let mut worst = 0.0f32;
        for k in 0..run.steps() {
            session.step(gpu, &run, k).unwrap();
            let x = pollster::block_on(session.read(gpu, false)).unwrap().x;
            worst = worst.max(fx.check_step(name, k, &x));
        }
        let x = pollster::block_on(session.read(gpu, false)).unwrap().x;
        common::assert_close(&format!("{name} x_final"), &x, &fx.x_final, &SHAPE, 1e-3, 0.0);
        eprintln!("{name} (GPU): {} model evaluations, worst |x - diffusers| {worst:.1e}", run.steps());
    }
}

#[test]
fn cpu_backend_follows_diffusers_flow_schedulers() {
    let (config, weights, sched) = read_model();
    let engine = CpuEngine::load(&config, &weights, 2).unwrap();
    for (name, kind, steps) in CASES {
        let fx = Fixture::load(name, kind, steps);
        let mut session = CpuSession::new(&engine, 2).unwrap();
        let run = session.start(&engine, &sched, &fx.req).unwrap();
        let mut worst = 0.0f32;
        for k in 0..run.steps() {
            session.step(&engine, &run, k).unwrap();
            let x = session.read(false).unwrap().x;
            worst = worst.max(fx.check_step(name, k, &x));
        }
        eprintln!("{name} (CPU): {} model evaluations, worst |x - diffusers| {worst:.1e}", run.steps());
    }
}

/// A diffusion sampler on the flow model is refused before anything runs, with the
/// samplers that fit named.
#[test]
fn diffusion_samplers_are_refused_for_the_flow_model() {
    let (config, weights, sched) = read_model();
    let engine = CpuEngine::load(&config, &weights, 1).unwrap();
    let mut session = CpuSession::new(&engine, 1).unwrap();
    let req = SampleRequest {
        classes: vec![7],
        guidance: 2.0,
        kind: SamplerKind::Ddim,
        steps: 5,
        eta: 0.0,
        seed: 0,
        first_image: 0,
        init_noise: None,
    };
    let e = session.start(&engine, &sched, &req).err().expect("ddim on a flow model").to_string();
    assert!(e.contains("flow matching") && e.contains("flow_euler, flow_heun"), "{e}");
}
