//! What the browser API derives from a model's scheduler config (src/web_model.rs): the
//! samplers it offers, the forward panel's exact coefficients, the Analytic-DPM moments the
//! page attaches, and the options a flow-matching model refuses.

use diffusion_playground::fast::CpuEngine;
use diffusion_playground::sched::analytic::AnalyticMoments;
use diffusion_playground::sched::{alphas_cumprod, SchedulerConfig, SchedulerOverrides, VarianceType};
use diffusion_playground::web_model::{
    check_flow_overrides, denoising_loss, forward_coefficients, loss_target, sampler_names,
};
use diffusion_playground::ErrorKind;

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn flow_config(shift: f64) -> SchedulerConfig {
    SchedulerConfig::from_json(&format!(
        r#"{{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": {shift}}}"#
    ))
    .unwrap()
}

fn fashion() -> SchedulerConfig {
    SchedulerConfig::from_json(
        &std::fs::read_to_string(format!("{ROOT}/www/models/fashion/scheduler_config.json")).unwrap(),
    )
    .unwrap()
}

fn manifest_sha(model: &str, file: &str) -> String {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/www/models/{model}/manifest.json")).unwrap(),
    )
    .unwrap();
    m["files"].as_array().unwrap().iter().find(|f| f["name"] == file).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn samplers_follow_the_model_kind() {
    assert_eq!(sampler_names(&fashion()), ["ddim", "ddpm", "dpmpp2m", "euler_a"]);
    assert_eq!(sampler_names(&flow_config(1.0)), ["flow_euler", "flow_heun"]);
}

#[test]
fn forward_coefficients_are_exact_for_both_kinds() {
    let d = fashion();
    let a = alphas_cumprod(&d).unwrap();
    let (signal, noise) = forward_coefficients(&d, &a);
    for t in [0, 500, 999] {
        assert!((signal[t] - a[t].sqrt()).abs() < 1e-15);
        assert!((signal[t] * signal[t] + noise[t] * noise[t] - 1.0).abs() < 1e-12);
    }
    // Flow: x_s = (1 - s) x0 + s eps, s = t / T (shift 1), finite at the last step where
    // the variance-preserving alpha_bar is 0.
    let f = flow_config(1.0);
    let a = alphas_cumprod(&f).unwrap();
    let (signal, noise) = forward_coefficients(&f, &a);
    assert_eq!(signal.len(), 1000);
    assert_eq!((signal[0], noise[0]), (1.0, 0.0));
    assert!((noise[500] - 0.5).abs() < 1e-15 && (signal[500] - 0.5).abs() < 1e-15);
    assert!((noise[999] - 0.999).abs() < 1e-12);
    assert!(signal.iter().chain(&noise).all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    // The same signal-to-noise ratio as the schedule plot's alpha_bar.
    for t in [1, 250, 900] {
        let snr = (signal[t] / noise[t]).powi(2);
        assert!((snr / (a[t] / (1.0 - a[t])) - 1.0).abs() < 1e-9, "t = {t}");
    }
    // A shift of 3 pushes s up: s(0.5) = 1.5 / 2 = 0.75.
    let (_, noise) = forward_coefficients(&flow_config(3.0), &[]);
    assert!((noise[500] - 0.75).abs() < 1e-12, "{}", noise[500]);
}

#[test]
fn analytic_moments_are_checked_against_the_weights_and_the_model() {
    let text = std::fs::read_to_string(format!("{ROOT}/www/models/fashion/analytic_dpm.json")).unwrap();
    let sha = manifest_sha("fashion", "diffusion_pytorch_model.safetensors");
    let d = fashion();
    let m = AnalyticMoments::for_model(&d, &text, Some(&sha)).unwrap();
    assert_eq!(m.cc.len(), 1000);
    // Without a digest (no manifest) the table is taken as it is.
    AnalyticMoments::for_model(&d, &text, None).unwrap();
    // Other weights: refused in plain words.
    let other = "0".repeat(64);
    let e = AnalyticMoments::for_model(&d, &text, Some(&other)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checksum);
    assert!(e.to_string().contains("other weights"), "{e}");
    // Not JSON, and a flow model.
    assert_eq!(AnalyticMoments::for_model(&d, "{", None).unwrap_err().kind(), ErrorKind::Checksum);
    let e = AnalyticMoments::for_model(&flow_config(1.0), &text, None).unwrap_err();
    assert!(e.to_string().contains("flow matching"), "{e}");
    // A table of another length than the schedule.
    let short = SchedulerConfig { num_train_timesteps: 500, ..d.clone() };
    let e = AnalyticMoments::for_model(&short, &text, None).unwrap_err();
    assert!(e.to_string().contains("1000 timesteps"), "{e}");
}

#[test]
fn flow_models_refuse_diffusion_only_options() {
    let f = flow_config(1.0);
    check_flow_overrides(&f, &SchedulerOverrides::default(), 0.0).unwrap();
    let e = check_flow_overrides(&f, &SchedulerOverrides::default(), 0.5).unwrap_err();
    assert_eq!((e.kind(), e.field()), (ErrorKind::Input, Some("eta")));
    let over = SchedulerOverrides { variance_type: Some(VarianceType::Analytic), ..Default::default() };
    let e = check_flow_overrides(&f, &over, 0.0).unwrap_err();
    assert_eq!(e.field(), Some("variance"));
    assert!(e.to_string().contains("flow-matching"), "{e}");
    // A diffusion model takes them all.
    check_flow_overrides(&fashion(), &over, 1.0).unwrap();
}

/// The forward panel's loss curve against PyTorch (tests/fixtures/loss_curve_fashion,
/// `make_fixtures.py --part loss`): one test image, one eps, nine timesteps from 0 to 999,
/// for the diffusion model (target eps) and the flow model (target eps - x0, timestep s T).
/// Tolerance: the outputs match diffusers to ~1e-5 (tests/unet_forward.rs); a mean of
/// squared differences of O(1) moves by about twice that, so 1e-4 relative plus 1e-6.
#[test]
fn loss_curve_matches_pytorch() {
    let bytes = std::fs::read(format!("{ROOT}/tests/fixtures/loss_curve_fashion.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let label: u32 = meta.metadata().as_ref().unwrap()["label"].parse().unwrap();
    let x0 = common::f32s(&st, "x0");
    let eps = common::f32s(&st, "eps");
    let ts: Vec<usize> = common::labels(&st, "timesteps").into_iter().map(|t| t as usize).collect();
    for (model, target) in [("fashion", "epsilon"), ("fashion-flow", "velocity")] {
        let dir = format!("{ROOT}/www/models/{model}");
        let config = std::fs::read_to_string(format!("{dir}/config.json")).unwrap();
        let weights = std::fs::read(format!("{dir}/diffusion_pytorch_model.safetensors")).unwrap();
        let sched = SchedulerConfig::from_json(
            &std::fs::read_to_string(format!("{dir}/scheduler_config.json")).unwrap(),
        )
        .unwrap();
        let alphas = alphas_cumprod(&sched).unwrap();
        let engine = CpuEngine::load(&config, &weights, 0).unwrap();
        assert_eq!(loss_target(&sched), target);
        let got = denoising_loss(&engine, &sched, &alphas, &x0, Some(label), &ts, &eps).unwrap();
        let want: Vec<f64> = st
            .tensor(&format!("{}.loss", model.replace('-', "_")))
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        for ((t, g), w) in ts.iter().zip(&got).zip(&want) {
            assert!((g - w).abs() <= 1e-6 + 1e-4 * w.abs(), "{model} t = {t}: loss {g} vs PyTorch {w}");
        }
        println!("{model}: {got:?}");
        // Bad input is refused, naming the field.
        let e = denoising_loss(&engine, &sched, &alphas, &x0[1..], Some(label), &ts, &eps).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Input);
        let e = denoising_loss(&engine, &sched, &alphas, &x0, Some(label), &[1000], &eps).unwrap_err();
        assert!(e.to_string().contains("timestep 1000"), "{e}");
        let e = denoising_loss(&engine, &sched, &alphas, &x0, None, &ts, &eps).unwrap_err();
        assert!(e.to_string().contains("class"), "{e}");
        let e = denoising_loss(&engine, &sched, &alphas, &x0, Some(11), &ts, &eps).unwrap_err();
        assert!(e.to_string().contains("class 11"), "{e}");
    }
}

/// The v and sample targets (no shipped model has them): the fashion network under a config
/// that says v_prediction / sample, against the target worked out here from one forward per
/// timestep: v = sqrt(abar) eps - sqrt(1 - abar) x0, and x0 itself.
#[test]
fn loss_curve_targets_follow_the_prediction_type() {
    let dir = format!("{ROOT}/www/models/fashion");
    let config = std::fs::read_to_string(format!("{dir}/config.json")).unwrap();
    let weights = std::fs::read(format!("{dir}/diffusion_pytorch_model.safetensors")).unwrap();
    let engine = CpuEngine::load(&config, &weights, 1).unwrap();
    let d = 28 * 28;
    let x0: Vec<f32> = (0..d).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let eps: Vec<f32> = (0..d).map(|i| ((i * 53 % 97) as f32 / 30.0) - 1.6).collect();
    let ts = [3usize, 400, 990];
    for (pred, target) in [("v_prediction", "v"), ("sample", "sample")] {
        let sched = SchedulerConfig::from_json(&format!(
            r#"{{"beta_schedule": "squaredcos_cap_v2", "prediction_type": "{pred}"}}"#
        ))
        .unwrap();
        let alphas = alphas_cumprod(&sched).unwrap();
        assert_eq!(loss_target(&sched), target);
        let got = denoising_loss(&engine, &sched, &alphas, &x0, Some(3), &ts, &eps).unwrap();
        let rows = engine.unet.class_rows(&[3]).unwrap();
        for (&t, g) in ts.iter().zip(&got) {
            let (a, s) = (alphas[t].sqrt(), (1.0 - alphas[t]).sqrt());
            let xt: Vec<f32> =
                x0.iter().zip(&eps).map(|(&x, &e)| (a * x as f64 + s * e as f64) as f32).collect();
            let mut out = vec![0.0f32; d];
            engine.forward(&xt, t as f32, &rows, &mut out);
            let want: f64 = out
                .iter()
                .zip(x0.iter().zip(&eps))
                .map(|(&o, (&x, &e))| {
                    let y = if target == "v" { a * e as f64 - s * x as f64 } else { x as f64 };
                    (y - o as f64).powi(2)
                })
                .sum::<f64>()
                / d as f64;
            assert!((g - want).abs() <= 1e-9 * want.max(1.0), "{pred} t = {t}: {g} vs {want}");
        }
    }
}
