//! The samplers against diffusers' own trajectories (tests/fixtures/sched_*.safetensors,
//! made by train/make_fixtures.py --part small / --part euler), step by step through the
//! real fused GPU kernel; the noise generator on GPU and CPU; and every refusal.
//!
//! Every fixture found is checked, so a new `sched_*` file is picked up without code here.
//! Its metadata holds the scheduler class and `scheduler_config` JSON, which we parse with
//! our own `SchedulerConfig::from_json`, so the config path is tested too.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use diffusion_playground::gpu::sampler_step::{SamplerBuffers, SamplerRun};
use diffusion_playground::gpu::Tensor;
use diffusion_playground::sched::noise::{self, INIT_STEP};
use diffusion_playground::sched::{
    alphas_cumprod, flow_alpha_bar, flow_sigmas, plan, reference, timesteps, BetaSchedule, Plan, PlannedStep,
    PredictionType, SamplerKind, SamplerOptions, SchedulerConfig, TimestepSpacing,
};
use diffusion_playground::{EngineError, ErrorKind};
use safetensors::SafeTensors;

// ---- fixtures -------------------------------------------------------------------------

struct Fixture {
    name: String,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let data =
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        Fixture { name, tensors, meta }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name}", self.name)).1
    }

    fn shape(&self, name: &str) -> &[usize] {
        &self.tensors[name].0
    }

    /// Row k of an [N, ...] tensor.
    fn row(&self, name: &str, k: usize) -> &[f32] {
        let per = self.get(name).len() / self.shape(name)[0];
        &self.get(name)[k * per..(k + 1) * per]
    }

    /// The model output given to step(): `eps` in the `small` files, `model_out` in the
    /// `euler` ones (any prediction type).
    fn model_out(&self, k: usize) -> &[f32] {
        if self.tensors.contains_key("model_out") {
            self.row("model_out", k)
        } else {
            self.row("eps", k)
        }
    }

    fn kind(&self) -> SamplerKind {
        match self.meta["scheduler_class"].as_str() {
            "DDPMScheduler" => SamplerKind::Ddpm,
            "DDIMScheduler" => SamplerKind::Ddim,
            "DPMSolverMultistepScheduler" => SamplerKind::DpmSolverPp2m,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            "FlowMatchEulerDiscreteScheduler" => SamplerKind::FlowEuler,
            "FlowMatchHeunDiscreteScheduler" => SamplerKind::FlowHeun,
            other => panic!("{}: unknown scheduler class {other}", self.name),
        }
    }

    /// The fixture's scheduler config, plus the per-call `use_clipped_model_output` of the
    /// `clipped` files (diffusers takes it in `step`, the engine in its config).
    fn config(&self) -> SchedulerConfig {
        let mut cfg = SchedulerConfig::from_json(&self.meta["scheduler_config"])
            .unwrap_or_else(|e| panic!("{}: scheduler_config: {e}", self.name));
        cfg.use_clipped_model_output = self.meta.get("use_clipped_model_output").is_some_and(|v| v == "true");
        cfg
    }

    fn plan(&self) -> Plan {
        let steps: usize = self.meta["num_inference_steps"].parse().unwrap();
        let eta: f64 = self.meta["eta"].parse().unwrap();
        let opts = SamplerOptions { eta, ..SamplerOptions::new(self.kind(), steps) };
        plan(&self.config(), &opts).unwrap_or_else(|e| panic!("{}: plan: {e}", self.name))
    }
}

fn fixture_paths() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("sched_") && n.ends_with(".safetensors")
        })
        .collect();
    paths.sort();
    // The 10 of --part small, the 10 of --part euler, the 5 of --part clipped, the 5 of
    // --part flow.
    assert!(paths.len() >= 30, "expected >= 30 sched_* fixtures in {}, found {}", dir.display(), paths.len());
    paths
}

// ---- schedules and timesteps ------------------------------------------------------------

/// Our alphas_cumprod (f64 product of diffusers' f32 betas) against diffusers' (torch's
/// float32 cumprod). torch rounds 1 - beta to f32 (error <= 3e-8 relative each) and the
/// running product again at every one of the 1000 steps, so its value drifts like a random
/// walk of ~1000 roundings of 6e-8: a few 1e-6 relative. 2e-5 leaves a margin over the
/// observed worst case (printed) without admitting a wrong formula: the nearest wrong
/// choice, betas not rounded to f32, is off by 1.3e-5 at t = 999 alone and by far more for
/// a wrong schedule.
#[test]
fn schedules_timesteps_and_sigmas_match_diffusers() {
    let mut worst = 0.0f64;
    for path in fixture_paths() {
        let fx = Fixture::load(&path);
        let cfg = fx.config();
        if fx.kind().is_flow() {
            check_flow_schedule(&fx);
            continue;
        }
        let acp = alphas_cumprod(&cfg).unwrap();
        let want = fx.get("alphas_cumprod");
        assert_eq!(acp.len(), want.len(), "{}", fx.name);
        for (t, (&ours, &theirs)) in acp.iter().zip(want).enumerate() {
            let rel = (ours / theirs as f64 - 1.0).abs();
            worst = worst.max(rel);
            assert!(
                rel < 2e-5,
                "{}: alphas_cumprod[{t}] {ours} vs diffusers {theirs} (rel {rel:e})",
                fx.name
            );
        }
        let n = fx.shape("timesteps")[0];
        let ts = timesteps(&cfg, fx.kind(), n).unwrap();
        let want: Vec<f64> = fx.get("timesteps").iter().map(|&t| t as f64).collect();
        assert_eq!(ts, want, "{}: timesteps", fx.name);
        let p = fx.plan();
        assert_eq!(p.timesteps(), fx.get("timesteps"), "{}: plan timesteps", fx.name);
        if fx.tensors.contains_key("init_noise_sigma") {
            let want = fx.get("init_noise_sigma")[0];
            assert!(
                (p.init_noise_sigma / want - 1.0).abs() < 1e-6,
                "{}: init_noise_sigma {} vs {want}",
                fx.name,
                p.init_noise_sigma
            );
        }
        if fx.tensors.contains_key("sigmas") {
            // The model's noise level a = 1 / (1 + sigma^2) at each step (diffusers keeps the
            // sigmas in float32: 1e-6 relative).
            for (k, s) in p.steps.iter().enumerate() {
                let sigma = fx.get("sigmas")[k] as f64;
                let want = 1.0 / (1.0 + sigma * sigma);
                assert!(
                    (s.alpha_cumprod / want - 1.0).abs() < 1e-5,
                    "{}: step {k} a {} vs {want}",
                    fx.name,
                    s.alpha_cumprod
                );
            }
        }
    }
    eprintln!("alphas_cumprod: worst relative difference to diffusers {worst:e}");
}

/// A flow run's levels and timesteps are diffusers' float32 values exactly (the same f32
/// roundings of the same f64 arithmetic), and each step's model timestep is its level s T.
fn check_flow_schedule(fx: &Fixture) {
    let p = fx.plan();
    assert_eq!(p.timesteps(), fx.get("timesteps"), "{}: plan timesteps", fx.name);
    assert_eq!(p.init_noise_sigma, 1.0, "{}", fx.name);
    let n: usize = fx.meta["num_inference_steps"].parse().unwrap();
    let levels: Vec<f32> = flow_sigmas(&fx.config(), n).unwrap().iter().map(|&s| s as f32).collect();
    // diffusers' sigmas: the N levels then 0 (Heun: the inner levels twice).
    let want = fx.get("sigmas");
    let mut distinct: Vec<f32> = want.to_vec();
    distinct.dedup();
    assert_eq!(distinct[..n], levels[..], "{}: levels", fx.name);
    assert_eq!(*want.last().unwrap(), 0.0);
    for (k, s) in p.steps.iter().enumerate() {
        assert_eq!(s.alpha_cumprod, flow_alpha_bar(want[k] as f64), "{}: step {k}", fx.name);
    }
}

// ---- trajectories through the GPU kernel ----------------------------------------------------

/// How the model output reaches the kernel in a trajectory test.
#[derive(Clone, Copy, Debug)]
enum Guidance {
    /// A plain batch of B (no CFG).
    Off,
    /// CFG batch with both halves equal to the fixture's output, scale w = 1.
    Duplicated,
    /// CFG with scale w and halves built so that uncond + w (cond - uncond) = the output:
    /// uncond = r (seeded noise), cond = r + (out - r) / w.
    Real(f32),
}

/// The f32 rounding bound of one fused step, element by element. Both sides (torch and the
/// kernel) evaluate the same sums of products in f32, each product rounded at 2^-24
/// relative, so their results differ by a few ulp of the *largest term*, not of the result:
/// x0 = x / alpha - (sigma / alpha) eps cancels two terms of size |x| / alpha (2e4 at the
/// cosine schedule's t = 999). We allow 16 ulp of the sum of |terms| (two evaluations of a
/// few roundings each), plus what the inputs already carry when a chained run (DPM-Solver)
/// feeds the GPU's own state and history back in (`x_in`, `h_in`: the previous step's
/// bounds, propagated through this step's coefficients), plus the error of diffusers' own
/// float32 coefficients (see `b_coef`). The comparisons add the fixtures README's 1e-5 floor
/// for O(1) values on top.
#[derive(Clone, Copy, Default)]
struct Bound {
    x0: f32,
    x: f32,
}

/// One element's inputs to a step: state, model output (and the size of the terms it was
/// combined from), history, noise, and the error bounds the state and history carry.
struct Inputs {
    x: f32,
    m: f32,
    m_terms: f32,
    h: f32,
    z: f32,
    x_in: f32,
    h_in: f32,
}

fn bound(kind: SamplerKind, s: &PlannedStep, i: &Inputs) -> Bound {
    let c = &s.coeffs;
    let ulp16 = 16.0 * f32::EPSILON;
    let x0 = c.x0_from_x * i.x + c.x0_from_out * i.m;
    let b_x0 =
        ulp16 * ((c.x0_from_x * i.x).abs() + c.x0_from_out.abs() * i.m_terms) + c.x0_from_x.abs() * i.x_in;
    // Re-derived from the clipped x0, eps carries x0's error (clamping never enlarges it)
    // times eps_from_x0, on top of its own roundings.
    let (eps, b_eps) = if c.eps_uses_x0 {
        let x0c = c.clip.map_or(x0, |r| x0.clamp(-r, r));
        let eps = c.eps_from_x * i.x + c.eps_from_x0 * x0c;
        let b = ulp16 * ((c.eps_from_x * i.x).abs() + (c.eps_from_x0 * x0c).abs())
            + c.eps_from_x.abs() * i.x_in
            + c.eps_from_x0.abs() * b_x0;
        (eps, b)
    } else {
        let eps = c.eps_from_x * i.x + c.eps_from_out * i.m;
        let b = ulp16 * ((c.eps_from_x * i.x).abs() + c.eps_from_out.abs() * i.m_terms)
            + c.eps_from_x.abs() * i.x_in;
        (eps, b)
    };
    let terms = (c.x * i.x).abs()
        + (c.x0 * x0).abs()
        + (c.eps * eps).abs()
        + (c.prev_x0 * i.h).abs()
        + (c.noise * i.z).abs();
    // diffusers works out the update's coefficients in float32 from float32 alphas_cumprod
    // (whose cumprod drifts ~5e-7 relative from the exact product we use) through 1 - a,
    // 1 - a' and 1 - a / a'. Each is off by ~eps_f32 absolute, i.e. eps_f32 / (1 - a)
    // relative where it is smallest: 2e-3 near t = 0 of the cosine schedule, where the
    // 1000-step DDPM fixture shows errors of 1.4e-5. Two such inputs per coefficient.
    // A flow run's coefficients (s, s', their differences) come from diffusers' own float32
    // levels, so only the ulp16 terms apply.
    let b_coef = if kind.is_flow() {
        0.0
    } else {
        2.0 * f32::EPSILON / (1.0 - s.alpha_cumprod as f32).max(f32::EPSILON) * terms
    };
    // DDIM's sqrt(1 - a' - s^2): where that difference cancels (eta 1 on a trailing schedule's
    // first step: 1 - 0.0105 - 0.9895 = 2.3e-7), diffusers' f32 value is only good to
    // |du| / (2 sqrt u) with |du| <= 2 eps_f32, i.e. eps_f32 / c_eps absolute (2.5e-4 there,
    // 2.4e-7 on ordinary steps).
    let b_dir = if c.eps > 0.0 { f32::EPSILON / c.eps * eps.abs() } else { 0.0 };
    // diffusers' Euler ancestral evaluates x + (x - x0) / s (s_down - s): two terms of size
    // |x| that cancel (|x| ~ 2e4 at the cosine schedule's t = 999, where f32 resolves
    // 2e-3), so its result is only good to a few ulp of |x|.
    let b_euler = if kind == SamplerKind::EulerAncestral {
        4.0 * f32::EPSILON * (i.x.abs() + ((i.x - x0) * c.x0).abs())
    } else {
        0.0
    };
    let b_x = ulp16 * terms
        + b_euler
        + c.x.abs() * i.x_in
        + c.x0.abs() * b_x0
        + c.eps.abs() * b_eps
        + c.prev_x0.abs() * i.h_in
        + b_coef
        + b_dir;
    Bound { x0: b_x0, x: b_x }
}

/// The comparison floor for O(1) values (the fixtures README's suggestion).
const FLOOR: f32 = 1e-5;

/// Worst errors of a trajectory, and the largest share of its tolerance any value used.
struct Worst {
    x0: f32,
    x: f32,
    share: f32,
}

impl Worst {
    fn add(&mut self, x0: (f32, f32), x: (f32, f32)) {
        self.x0 = self.x0.max(x0.0);
        self.x = self.x.max(x.0);
        self.share = self.share.max(x0.1).max(x.1);
    }
}

/// Checks |got - want| <= tol elementwise; returns the worst error and the largest share of
/// its tolerance any element used.
fn check_within(what: &str, got: &[f32], want: &[f32], tol: &[f32]) -> (f32, f32) {
    let (mut worst, mut share) = (0.0f32, 0.0f32);
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        worst = worst.max(err);
        share = share.max(err / tol[i]);
        assert!(
            err <= tol[i],
            "{what}[{i}]: gpu {} vs diffusers {} (|err| {err:e} > tol {:e})",
            got[i],
            want[i],
            tol[i]
        );
    }
    (worst, share)
}

/// Runs fixture `fx` through the GPU kernel. Each step gets the fixture's x_t[k], model
/// output and noise z[k] (as supplied noise), and must give diffusers' x0 estimate and
/// x_prev. The history buffer is never written by the test: DPM-Solver's second-order steps
/// read the x0 the GPU stored the step before. With `sequential` the state is not rewritten
/// either, so the GPU runs the whole trajectory on its own state; its error bound then
/// carries the previous step's (the model output stays the fixture's, so an error in an
/// early x0 is not corrected as a real model would, and grows: the t = 999 x0 of the
/// cosine schedule is only good to ~5e-3 in f32, on either side).
fn run_fixture(fx: &Fixture, guidance: Guidance, sequential: bool) -> Worst {
    let gpu = gpu();
    let mut p = fx.plan();
    let shape = fx.shape("x_T").to_vec();
    let [b, c, h, w] = <[usize; 4]>::try_from(shape.as_slice()).unwrap();
    let per_image = c * h * w;
    let groups = if matches!(guidance, Guidance::Off) { 1 } else { 2 };
    p.guidance = match guidance {
        Guidance::Real(w) => w,
        _ => 1.0,
    };
    let model_shape = [groups * b, c, h, w];
    let state = zeros("state", &shape);
    let model_out = zeros("model_out", &model_shape);
    let x0_hat = zeros("x0_hat", &shape);
    let model_in = zeros("model_in", &model_shape);
    let history = zeros("history", &shape);
    let noise = zeros("noise", &shape);
    let bufs = SamplerBuffers {
        state: &state,
        model_out: &model_out,
        x0_hat: &x0_hat,
        model_in: &model_in,
        history: Some(&history),
        supplied_noise: Some(&noise),
    };
    let run = SamplerRun::new(gpu, &p, &bufs, 7, 0, false).unwrap();
    assert_eq!(run.groups(), groups);

    // init: the unit-variance x_T scaled by init_noise_sigma, and the first model input.
    let x_t = fx.get("x_T");
    let unit: Vec<f32> = x_t.iter().map(|v| v / p.init_noise_sigma).collect();
    state.write(gpu, &unit).unwrap();
    gpu.run(&[run.init()]).unwrap();
    let got = read(&state);
    let tol: Vec<f32> = x_t.iter().map(|v| 1e-6 * v.abs().max(1.0)).collect();
    check_within(&format!("{} x_T", fx.name), &got, x_t, &tol);
    let first_in = read(&model_in);
    let want_in: Vec<f32> =
        if fx.tensors.contains_key("model_in") { fx.row("model_in", 0).to_vec() } else { x_t.to_vec() };
    for g in 0..groups {
        let tol: Vec<f32> = want_in.iter().map(|v| 1e-6 * v.abs().max(1.0)).collect();
        check_within(
            &format!("{} model_in[0] half {g}", fx.name),
            &first_in[g * b * per_image..(g + 1) * b * per_image],
            &want_in,
            &tol,
        );
    }

    let mut rng = rng(11);
    let mut worst = Worst { x0: 0.0, x: 0.0, share: 0.0 };
    let mut x_cur: Vec<f32> = x_t.to_vec();
    let mut prev_x0 = vec![0.0f32; x_t.len()];
    // Bounds on the error the GPU's own state and history carry into a chained step.
    let mut carried = vec![Bound::default(); x_t.len()];
    let mut carried_h = vec![0.0f32; x_t.len()];
    let n = p.steps.len();
    for k in 0..n {
        let out = fx.model_out(k);
        if !sequential {
            x_cur = fx.row("x_t", k).to_vec();
            state.write(gpu, &x_cur).unwrap();
        }
        let (model, m_terms): (Vec<f32>, Vec<f32>) = match guidance {
            Guidance::Off => (out.to_vec(), out.iter().map(|v| v.abs()).collect()),
            Guidance::Duplicated => ([out, out].concat(), out.iter().map(|v| v.abs()).collect()),
            Guidance::Real(w) => {
                let r = uniform(&mut rng, out.len(), 1.0);
                let cond: Vec<f32> = out.iter().zip(&r).map(|(o, r)| r + (o - r) / w).collect();
                let terms = out.iter().zip(&r).map(|(o, r)| o.abs() + 2.0 * w * r.abs()).collect();
                ([cond, r].concat(), terms)
            }
        };
        model_out.write(gpu, &model).unwrap();
        noise.write(gpu, fx.row("z", k)).unwrap();
        gpu.run(&[&run.steps()[k]]).unwrap();

        let c = p.steps[k].coeffs;
        let z = fx.row("z", k);
        let bounds: Vec<Bound> = (0..out.len())
            .map(|i| {
                let inputs = Inputs {
                    x: x_cur[i],
                    m: out[i],
                    m_terms: m_terms[i],
                    h: prev_x0[i],
                    z: z[i],
                    x_in: carried[i].x,
                    h_in: carried_h[i],
                };
                bound(p.kind, &p.steps[k], &inputs)
            })
            .collect();
        let tol_x0: Vec<f32> = bounds.iter().map(|b| FLOOR + b.x0).collect();
        let tol_x: Vec<f32> = bounds.iter().map(|b| FLOOR + b.x).collect();
        let label = format!("{} step {k} (t = {})", fx.name, p.steps[k].timestep);
        let got_x0 = read(&x0_hat);
        let e0 = check_within(&format!("{label} x0"), &got_x0, fx.row("x0_pred", k), &tol_x0);
        let got_x = read(&state);
        let ex = check_within(&format!("{label} x_prev"), &got_x, fx.row("x_prev", k), &tol_x);
        worst.add(e0, ex);
        // The next model input: the new state times the next step's scale, in every half.
        let got_in = read(&model_in);
        let scale = p.input_scale(k + 1);
        for g in 0..groups {
            let half = &got_in[g * got_x.len()..(g + 1) * got_x.len()];
            for (i, (&mi, &xi)) in half.iter().zip(&got_x).enumerate() {
                assert!(
                    (mi - scale * xi).abs() <= 1e-6 * xi.abs().max(1.0),
                    "{label} model_in half {g} [{i}]: {mi} vs {}",
                    scale * xi
                );
            }
        }
        if fx.tensors.contains_key("model_in") && k + 1 < n {
            let want = fx.row("model_in", k + 1);
            let tol: Vec<f32> = want.iter().zip(&tol_x).map(|(w, t)| t * scale + 1e-6 * w.abs()).collect();
            check_within(&format!("{label} next model_in"), &got_in[..want.len()], want, &tol);
        }
        if c.writes_prev_x0 {
            prev_x0 = got_x0;
            carried_h = bounds.iter().map(|b| b.x0).collect();
        }
        if sequential {
            carried = bounds;
        }
        x_cur = got_x;
    }
    worst
}

fn read(t: &Tensor) -> Vec<f32> {
    pollster::block_on(t.read(gpu())).unwrap()
}

#[test]
fn every_fixture_trajectory_through_the_gpu_kernel() {
    for path in fixture_paths() {
        let fx = Fixture::load(&path);
        let w = run_fixture(&fx, Guidance::Off, false);
        eprintln!(
            "{:<44} {:>4} steps: worst |x0 - diffusers| {:.1e}, |x_prev - diffusers| {:.1e} ({:.0}% of tolerance)",
            fx.name,
            fx.shape("t")[0],
            w.x0,
            w.x,
            100.0 * w.share
        );
    }
}

#[test]
fn guidance_halves_are_combined_in_the_kernel() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (file, guidance, sequential) in [
        ("sched_ddim_eta0_cos_20", Guidance::Duplicated, false),
        ("sched_ddim_eta1_cos_20", Guidance::Real(2.5), false),
        ("sched_dpmpp2m_cos_20", Guidance::Real(4.0), true),
        ("sched_euler_a_cos_20", Guidance::Real(1.5), false),
    ] {
        let fx = Fixture::load(&dir.join(format!("{file}.safetensors")));
        let w = run_fixture(&fx, guidance, sequential);
        eprintln!(
            "{file} {guidance:?}{}: worst |x0 err| {:.1e}, |x_prev err| {:.1e} ({:.0}% of tolerance)",
            if sequential { ", chained" } else { "" },
            w.x0,
            w.x,
            100.0 * w.share
        );
    }
}

/// The CPU reference of the fused step (sched::reference) follows the same fixtures, so it
/// can serve as the kernel's oracle elsewhere.
#[test]
fn cpu_reference_step_follows_the_fixtures() {
    for path in fixture_paths() {
        let fx = Fixture::load(&path);
        let p = fx.plan();
        let per_image: usize = fx.shape("x_T")[1..].iter().product();
        let mut prev = vec![0.0; fx.get("x_T").len()];
        let mut prev_h = prev.clone();
        let mut carried = vec![Bound::default(); prev.len()];
        for k in 0..p.steps.len() {
            let mut x = fx.row("x_t", k).to_vec();
            let x_in = x.clone();
            let c = p.steps[k].coeffs;
            let z = fx.row("z", k);
            let x0 = reference::step(
                &c,
                1.0,
                1,
                per_image,
                &mut x,
                fx.model_out(k),
                &mut prev,
                reference::Noise::Supplied(z),
            )
            .unwrap();
            for i in 0..x.len() {
                let m = fx.model_out(k)[i];
                let inputs = Inputs {
                    x: x_in[i],
                    m,
                    m_terms: m.abs(),
                    h: prev_h[i],
                    z: z[i],
                    x_in: carried[i].x,
                    h_in: carried[i].x0,
                };
                let b = bound(p.kind, &p.steps[k], &inputs);
                let (w0, wx) = (fx.row("x0_pred", k)[i], fx.row("x_prev", k)[i]);
                assert!(
                    (x0[i] - w0).abs() <= FLOOR + b.x0,
                    "{} step {k} x0[{i}]: {} vs {w0}",
                    fx.name,
                    x0[i]
                );
                assert!((x[i] - wx).abs() <= FLOOR + b.x, "{} step {k} x[{i}]: {} vs {wx}", fx.name, x[i]);
                carried[i] = Bound { x0: b.x0, x: 0.0 };
            }
            prev_h = x0;
        }
    }
}

// ---- noise ----------------------------------------------------------------------------------

const SEED: u64 = 0x0123_4567_89ab_cdef;

/// A run whose init dispatch draws x_T = z (DDIM: init_noise_sigma 1) into `state`.
fn draw_init(shape: [usize; 4], seed: u64, first_image: u32) -> Vec<f32> {
    let p = plan(&SchedulerConfig::default(), &SamplerOptions::new(SamplerKind::Ddim, 10)).unwrap();
    let state = zeros("state", &shape);
    let other = [zeros("model_out", &shape), zeros("x0_hat", &shape), zeros("model_in", &shape)];
    let bufs = SamplerBuffers {
        state: &state,
        model_out: &other[0],
        x0_hat: &other[1],
        model_in: &other[2],
        history: None,
        supplied_noise: None,
    };
    let run = SamplerRun::new(gpu(), &p, &bufs, seed, first_image, true).unwrap();
    gpu().run(&[run.init()]).unwrap();
    read(&state)
}

/// GPU and CPU draw the same numbers: both run Philox (exact integer arithmetic) and the same
/// f32 polynomials for ln and sin/cos in the same order; only the compilers' contraction into
/// fused multiply-adds and sqrt's last bit may differ, a few ulp of values up to 5.8. We
/// allow 2e-6 absolute (~16 ulp at |z| = 4).
#[test]
fn gpu_noise_matches_the_cpu_generator() {
    // 105 elements per image: quads straddle image boundaries.
    let shape = [3, 3, 5, 7];
    let got = draw_init(shape, SEED, 5);
    let want = noise::fill(SEED, INIT_STEP, 5, 3, 105);
    assert_close("x_T noise", &got, &want, &shape, 2e-6, 0.0);

    // Step noise through the step kernel: with x = 0 and a zero model output x0 = eps = 0,
    // so DDPM's x' = c_noise z with z keyed by the step index.
    let cfg = SchedulerConfig { clip_sample: false, ..Default::default() };
    let p = plan(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 10)).unwrap();
    let state = zeros("state", &shape);
    let others = [zeros("model_out", &shape), zeros("x0_hat", &shape), zeros("model_in", &shape)];
    let bufs = SamplerBuffers {
        state: &state,
        model_out: &others[0],
        x0_hat: &others[1],
        model_in: &others[2],
        history: None,
        supplied_noise: None,
    };
    let run = SamplerRun::new(gpu(), &p, &bufs, SEED, 2, true).unwrap();
    for k in [0usize, 6] {
        state.write(gpu(), &vec![0.0; state.numel()]).unwrap();
        gpu().run(&[&run.steps()[k]]).unwrap();
        let got = read(&state);
        let c = p.steps[k].coeffs.noise;
        let want: Vec<f32> = noise::fill(SEED, k as u32, 2, 3, 105).iter().map(|z| c * z).collect();
        assert_close(&format!("step {k} noise"), &got, &want, &shape, 2e-6 * c, 0.0);
    }
}

/// Image k of a batch equals image 0 of a batch drawn with first_image = k: the key is the
/// global image index, not the position in the buffer.
#[test]
fn noise_depends_on_the_global_image_index_only() {
    let per = 2 * 9 * 9;
    let batch8 = draw_init([8, 2, 9, 9], SEED, 0);
    for k in [0u32, 3, 7] {
        let single = draw_init([1, 2, 9, 9], SEED, k);
        assert_eq!(&batch8[k as usize * per..(k as usize + 1) * per], single.as_slice(), "image {k}");
    }
    let shifted = draw_init([4, 2, 9, 9], SEED, 4);
    assert_eq!(&batch8[4 * per..], shifted.as_slice());
}

/// 102,400 draws from the GPU look like N(0, 1). With n draws the sample mean has standard
/// error 1/sqrt(n) = 0.0031 and the std 1/sqrt(2n) = 0.0022; we allow 5 standard errors.
/// The tail fraction P(|z| > 1.96) = 0.05 has standard error sqrt(0.05 * 0.95 / n) =
/// 0.00068, the lag-1 correlation (neighbouring elements share a Philox call) 1/sqrt(n),
/// the kurtosis (3 for a normal) sqrt(24 / n) = 0.015.
#[test]
fn noise_moments_are_standard_normal() {
    let z = draw_init([4, 1, 160, 160], SEED, 0);
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let kurt = z.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
    let tail = z.iter().filter(|v| v.abs() > 1.959_964).count() as f64 / n;
    let lag1 = z.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>() / (n - 1.0);
    eprintln!(
        "noise: mean {mean:.5} std {:.5} kurtosis {kurt:.4} tail {tail:.5} lag-1 {lag1:.5}",
        var.sqrt()
    );
    let se = 1.0 / n.sqrt();
    assert!(mean.abs() < 5.0 * se, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 5.0 * se / 2f64.sqrt(), "std {}", var.sqrt());
    assert!((tail - 0.05).abs() < 5.0 * (0.05 * 0.95 / n).sqrt(), "tail {tail}");
    assert!(lag1.abs() < 5.0 * se, "lag-1 correlation {lag1}");
    assert!((kurt - 3.0).abs() < 5.0 * (24.0 / n).sqrt(), "kurtosis {kurt}");
    // The CPU generator, same test over 1e5 step-noise draws.
    let z = noise::fill(SEED, 3, 0, 10, 10_000);
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / z.len() as f64;
    assert!(
        mean.abs() < 5.0 / 1e5f64.sqrt() && (var.sqrt() - 1.0).abs() < 5.0 / 2e5f64.sqrt(),
        "cpu {mean} {var}"
    );
}

/// Changing any part of the key gives unrelated numbers: no equal values and a correlation
/// within 5 standard errors of 0 over 4096 draws.
#[test]
fn distinct_keys_give_unrelated_noise() {
    let n = 4096;
    let base = noise::fill(SEED, 0, 0, 1, n);
    let variants = [
        ("seed + 1", noise::fill(SEED + 1, 0, 0, 1, n)),
        ("seed high word", noise::fill(SEED ^ (1 << 40), 0, 0, 1, n)),
        ("step 1", noise::fill(SEED, 1, 0, 1, n)),
        ("x_T key", noise::fill(SEED, INIT_STEP, 0, 1, n)),
        ("image 1", noise::fill(SEED, 0, 1, 1, n)),
        ("elements shifted by 4", noise::fill(SEED, 0, 0, 1, n + 4)[4..].to_vec()),
    ];
    for (what, v) in variants {
        let equal = base.iter().zip(&v).filter(|(a, b)| a == b).count();
        let corr = base.iter().zip(&v).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / n as f64;
        assert_eq!(equal, 0, "{what}: {equal} equal values");
        assert!(corr.abs() < 5.0 / (n as f64).sqrt(), "{what}: correlation {corr}");
    }
}

// ---- refusals -------------------------------------------------------------------------------

/// A refused option is an `input` error, a refused scheduler config field a `scheduler` one.
fn unsupported(e: EngineError) -> String {
    assert!(matches!(e.kind(), ErrorKind::Input | ErrorKind::Scheduler), "{e:?}");
    e.to_string()
}

#[test]
fn bad_options_are_refused_with_the_field_named() {
    let cfg = SchedulerConfig::default();
    for kind in
        [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmSolverPp2m, SamplerKind::EulerAncestral]
    {
        let e = unsupported(plan(&cfg, &SamplerOptions::new(kind, 0)).unwrap_err());
        assert!(e.contains("`steps` = 0") && e.contains("1..=1000"), "{e}");
        let e = unsupported(plan(&cfg, &SamplerOptions::new(kind, 1001)).unwrap_err());
        assert!(e.contains("`steps` = 1001"), "{e}");
        // The edges are fine.
        assert_eq!(plan(&cfg, &SamplerOptions::new(kind, 1)).unwrap().steps.len(), 1);
        assert_eq!(plan(&cfg, &SamplerOptions::new(kind, 1000)).unwrap().steps.len(), 1000);
    }
    let e = unsupported(
        plan(&cfg, &SamplerOptions { eta: -0.1, ..SamplerOptions::new(SamplerKind::Ddim, 5) }).unwrap_err(),
    );
    assert!(e.contains("`eta` = -0.1"), "{e}");
    let e = unsupported("euler".parse::<SamplerKind>().unwrap_err());
    assert!(e.contains("`sampler` = \"euler\"") && e.contains("\"euler_a\""), "{e}");
    assert_eq!("dpmpp2m".parse::<SamplerKind>().unwrap(), SamplerKind::DpmSolverPp2m);
    assert!(
        unsupported("cosine".parse::<BetaSchedule>().unwrap_err()).contains("`beta_schedule` = \"cosine\"")
    );
    assert!(
        unsupported("even".parse::<TimestepSpacing>().unwrap_err()).contains("`timestep_spacing` = \"even\"")
    );
    assert!(unsupported("x0".parse::<PredictionType>().unwrap_err()).contains("`prediction_type` = \"x0\""));
    for (json, want) in [
        (r#"{"thresholding": true}"#, "`thresholding` = true"),
        (r#"{"beta_schedule": "sigmoid"}"#, "`beta_schedule` = \"sigmoid\""),
        (r#"{"timestep_spacing": "karras"}"#, "`timestep_spacing` = \"karras\""),
        (r#"{"prediction_type": "flow_prediction"}"#, "`prediction_type` = \"flow_prediction\""),
        (r#"{"trained_betas": [0.1]}"#, "`trained_betas`"),
        (r#"{"steps_offset": 1000}"#, "`steps_offset` = 1000"),
    ] {
        let e = unsupported(SchedulerConfig::from_json(json).unwrap_err());
        assert!(e.starts_with("scheduler_config.json: ") && e.contains(want), "{json}: {e}");
    }
}

#[test]
fn cpu_reference_refuses_mismatched_slices() {
    let p = plan(&SchedulerConfig::default(), &SamplerOptions::new(SamplerKind::Ddim, 5)).unwrap();
    let c = p.steps[0].coeffs;
    let (mut x, mut prev) = (vec![0.0; 8], vec![0.0; 8]);
    let e =
        reference::step(&c, 1.0, 2, 4, &mut x, &[0.0; 8], &mut prev, reference::Noise::Supplied(&[0.0; 8]));
    assert!(e.unwrap_err().to_string().contains("model_out 8 for 2 group(s)"));
}

#[test]
fn bad_buffers_are_refused() {
    let shape = [2, 1, 4, 4];
    let p = plan(&SchedulerConfig::default(), &SamplerOptions::new(SamplerKind::DpmSolverPp2m, 5)).unwrap();
    let [state, x0, hist] = [zeros("state", &shape), zeros("x0", &shape), zeros("hist", &shape)];
    let [out3, in3] = [zeros("out", &[6, 1, 4, 4]), zeros("in", &[6, 1, 4, 4])];
    let [out4, in4] = [zeros("out", &[4, 1, 4, 4]), zeros("in", &[4, 1, 4, 4])];
    let bufs = |out, inp, history| SamplerBuffers {
        state: &state,
        model_out: out,
        x0_hat: &x0,
        model_in: inp,
        history,
        supplied_noise: None,
    };
    let err =
        |b: SamplerBuffers| SamplerRun::new(gpu(), &p, &b, 0, 0, true).err().expect("must fail").to_string();
    assert!(err(bufs(&out3, &in3, Some(&hist))).contains("model_out has batch 6"));
    assert!(err(bufs(&out4, &in4, None)).contains("needs a history buffer"));
    assert!(err(bufs(&out4, &in3, Some(&hist))).contains("model_in has shape [6, 1, 4, 4]"));
    assert!(err(bufs(&out4, &in4, Some(&x0))).contains("x0_hat and history are the same buffer"));
    assert!(SamplerRun::new(gpu(), &p, &bufs(&out4, &in4, Some(&hist)), 0, 0, true).is_ok());
}
