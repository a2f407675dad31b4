//! Every sampler, end to end on the GPU with its real noise, where the answer is known.
//!
//! If every pixel of the data is N(mu, s^2) independently, the optimal model is analytic:
//! eps*(x, t) = sqrt(1 - a) (x - sqrt(a) mu) / (a s^2 + 1 - a) for an input x at noise level
//! a (and v* = (eps* - sqrt(1 - a) x) / sqrt(a), x0* = (x - sqrt(1 - a) eps*) / sqrt(a) for
//! the other prediction types). Each step reads the model input back, evaluates that model on
//! the CPU in f64, and hands the output to the fused kernel, which draws its own noise.
//!
//! The samples then have mean mu and standard deviation s up to two errors:
//! - sampling error: 16 images of 1x16x16 are 4096 independent draws (the noise key differs
//!   for every pixel), so the sample mean has standard error s / 64 (0.008 at s = 0.5) and
//!   the sample std s / sqrt(2 * 4096) (0.0055); we allow 4 standard errors.
//! - discretisation error: a sampler with finitely many steps does not land on N(mu, s^2)
//!   exactly (ancestral samplers lose variance: DDIM eta 1 at 50 steps ends at std 0.468
//!   for s = 0.5). With this linear model every step is an affine map of x plus Gaussian
//!   noise, so the exact law of the discretised chain is Gaussian, with a mean and variance
//!   we propagate in f64 through the plan's own coefficients (`exact_law`).
//!
//! So three checks per case: the GPU's samples match the chain's exact law within 4
//! standard errors; that law matches what diffusers' own scheduler produces on the same
//! problem (tests/fixtures/sched_gaussian_laws.json: 400,000 float64 draws per case, made by
//! train/make_fixtures.py --part euler; 4 of its standard errors, e.g. 0.0025 in the mean
//! at s = 0.5); and the law lies within the discretisation tolerance of N(mu, s^2): the mean
//! within 0.01, the std within 10% (the coarsest cases, DPM-Solver++ at 10 steps and Euler
//! ancestral at 50 on the linear schedule, lose 8.7% and 8.5%).
//! The cases (schedule, sampler, steps, prediction type, spacing, guidance) are those of the
//! JSON file, so the two sides cannot drift apart.

mod common;

use common::*;
use diffusion_playground::gpu::sampler_step::{SamplerBuffers, SamplerRun};
use diffusion_playground::sched::{plan, Plan, PredictionType, SamplerKind, SamplerOptions, SchedulerConfig};
use serde_json::Value;

const B: usize = 16;
const SHAPE: [usize; 4] = [B, 1, 16, 16];

struct Case {
    name: String,
    cfg: SchedulerConfig,
    opts: SamplerOptions,
    mu: f64,
    s: f64,
    /// Run the model batch as a CFG pair [cond; uncond] with w = opts.guidance.
    guided: bool,
    /// The law diffusers' scheduler ends at: (mean, std) over `draws` float64 draws.
    diffusers: (f64, f64),
    draws: f64,
}

fn cases() -> Vec<Case> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sched_gaussian_laws.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let draws = v["draws"].as_f64().unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let kind = match c["scheduler_class"].as_str().unwrap() {
                "DDPMScheduler" => SamplerKind::Ddpm,
                "DDIMScheduler" => SamplerKind::Ddim,
                "DPMSolverMultistepScheduler" => SamplerKind::DpmSolverPp2m,
                "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
                other => panic!("unknown scheduler class {other}"),
            };
            let cfg = SchedulerConfig::from_json(c["scheduler_config"].as_str().unwrap()).unwrap();
            let guidance = c["guidance"].as_f64();
            let opts = SamplerOptions {
                eta: c["eta"].as_f64().unwrap(),
                guidance: guidance.unwrap_or(1.0) as f32,
                ..SamplerOptions::new(kind, c["steps"].as_u64().unwrap() as usize)
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                cfg,
                opts,
                mu: c["mu"].as_f64().unwrap(),
                s: c["s"].as_f64().unwrap(),
                guided: guidance.is_some(),
                diffusers: (c["mean"].as_f64().unwrap(), c["std"].as_f64().unwrap()),
                draws,
            }
        })
        .collect()
}

/// The analytic model's output for input `x` at noise level `a`.
fn model_output(pred: PredictionType, x: f64, a: f64, mu: f64, s: f64) -> f64 {
    let (alpha, sigma) = (a.sqrt(), (1.0 - a).sqrt());
    let eps = sigma * (x - alpha * mu) / (a * s * s + 1.0 - a);
    match pred {
        PredictionType::Epsilon => eps,
        PredictionType::VPrediction => (eps - sigma * x) / alpha,
        PredictionType::Sample => (x - sigma * eps) / alpha,
    }
}

/// Mean and variance of the final state of `plan` driven by the analytic model, exactly (in
/// f64, with the plan's f32 coefficients). The per-pixel state is (x, h), h the history
/// buffer; each step is (x, h) -> M (x, h) + b + (c_noise, 0) z.
fn exact_law(plan: &Plan, pred: PredictionType, mu: f64, s: f64) -> (f64, f64) {
    let sigma0 = plan.init_noise_sigma as f64;
    let (mut mean, mut cov) = ([0.0f64; 2], [[sigma0 * sigma0, 0.0], [0.0, 0.0]]);
    for st in &plan.steps {
        let c = st.coeffs;
        assert!(c.clip.is_none(), "the Gaussian test runs without clipping");
        // The model output as an affine function of x: m = g x + g0.
        let sc = st.input_scale as f64;
        let g0 = model_output(pred, 0.0, st.alpha_cumprod, mu, s);
        let g = model_output(pred, sc, st.alpha_cumprod, mu, s) - g0;
        let f = |a: f32, b: f32| (a as f64 + b as f64 * g, b as f64 * g0); // a x + b m
        let (a0, b0) = f(c.x0_from_x, c.x0_from_out);
        let (a1, b1) = f(c.eps_from_x, c.eps_from_out);
        let kx = c.x as f64 + c.x0 as f64 * a0 + c.eps as f64 * a1;
        let kp = if c.reads_prev_x0 { c.prev_x0 as f64 } else { 0.0 };
        let m = if c.writes_prev_x0 { [[kx, kp], [a0, 0.0]] } else { [[kx, kp], [0.0, 1.0]] };
        let off = [c.x0 as f64 * b0 + c.eps as f64 * b1, if c.writes_prev_x0 { b0 } else { 0.0 }];
        let new_mean = [0, 1].map(|i| m[i][0] * mean[0] + m[i][1] * mean[1] + off[i]);
        let mut new_cov = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    for l in 0..2 {
                        new_cov[i][j] += m[i][k] * cov[k][l] * m[j][l];
                    }
                }
            }
        }
        new_cov[0][0] += (c.noise as f64).powi(2);
        mean = new_mean;
        cov = new_cov;
    }
    (mean[0], cov[0][0])
}

/// Runs `case` on the GPU; returns the sample mean and std of the final images.
fn sample(case: &Case, seed: u64) -> (f64, f64) {
    let gpu = gpu();
    let p = plan(&case.cfg, &case.opts).unwrap();
    let groups = if case.guided { 2 } else { 1 };
    let model_shape = [groups * B, SHAPE[1], SHAPE[2], SHAPE[3]];
    let state = zeros("state", &SHAPE);
    let model_out = zeros("model_out", &model_shape);
    let x0_hat = zeros("x0_hat", &SHAPE);
    let model_in = zeros("model_in", &model_shape);
    let history = zeros("history", &SHAPE);
    let bufs = SamplerBuffers {
        state: &state,
        model_out: &model_out,
        x0_hat: &x0_hat,
        model_in: &model_in,
        history: Some(&history),
        supplied_noise: None,
    };
    let run = SamplerRun::new(gpu, &p, &bufs, seed, 0, true).unwrap();
    gpu.run(&[run.init()]).unwrap();
    let n = state.numel();
    let w = case.opts.guidance;
    for (k, st) in p.steps.iter().enumerate() {
        let x_in = pollster::block_on(model_in.read(gpu)).unwrap();
        let out: Vec<f32> = x_in[..n]
            .iter()
            .map(|&x| {
                model_output(case.cfg.prediction_type, x as f64, st.alpha_cumprod, case.mu, case.s) as f32
            })
            .collect();
        let batch = if case.guided {
            // uncond + w (cond - uncond) = out, with an unconditional half that differs.
            let uncond: Vec<f32> = out.iter().map(|o| 0.5 * o - 0.3).collect();
            let cond: Vec<f32> = out.iter().zip(&uncond).map(|(o, u)| u + (o - u) / w).collect();
            [cond, uncond].concat()
        } else {
            out
        };
        model_out.write(gpu, &batch).unwrap();
        gpu.run(&[&run.steps()[k]]).unwrap();
    }
    let x = pollster::block_on(state.read(gpu)).unwrap();
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var.sqrt())
}

fn check(cases: &[Case], first_seed: u64) {
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let p = plan(&case.cfg, &case.opts).unwrap();
        let (law_mean, law_var) = exact_law(&p, case.cfg.prediction_type, case.mu, case.s);
        let law_std = law_var.sqrt();
        let (mean, std) = sample(case, first_seed + i as u64);
        let n = (B * SHAPE[1..].iter().product::<usize>()) as f64;
        eprintln!(
            "{:<30} GPU samples mean {mean:+.4} std {std:.4} | exact law {law_mean:+.4} {law_std:.4} | diffusers \
             {:+.4} {:.4} | data {:+.2} {:.2}",
            case.name, case.diffusers.0, case.diffusers.1, case.mu, case.s
        );
        let mut fail = |what: &str, got: (f64, f64), want: (f64, f64), tol: (f64, f64)| {
            if (got.0 - want.0).abs() > tol.0 || (got.1 - want.1).abs() > tol.1 {
                failures.push(format!(
                    "{}: {what}: mean {:.4} std {:.4}, expected {:.4} {:.4} within {:.4} {:.4}",
                    case.name, got.0, got.1, want.0, want.1, tol.0, tol.1
                ));
            }
        };
        let se = |draws: f64| (4.0 * law_std / draws.sqrt(), 4.0 * law_std / (2.0 * draws).sqrt());
        fail("GPU samples vs the chain's exact law", (mean, std), (law_mean, law_std), se(n));
        fail("exact law vs diffusers", (law_mean, law_std), case.diffusers, se(case.draws));
        fail("exact law vs the data", (law_mean, law_std), (case.mu, case.s), (0.01, 0.1 * case.s));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_sampler_reproduces_the_gaussian() {
    let cases = cases();
    assert!(cases.len() >= 12, "expected the 12 cases of sched_gaussian_laws.json");
    for c in &cases {
        assert!(!c.cfg.clip_sample, "{}: the Gaussian test runs without clipping", c.name);
    }
    check(&cases, 1000);
}
