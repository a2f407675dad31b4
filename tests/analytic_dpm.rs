//! Analytic-DPM's variance in the engine's plan against the NumPy reference of the paper's
//! formula (train/analytic_dpm.py `optimal_variance`, through train/make_fixtures.py --part
//! analytic) for the shipped fashion model's Gamma, and the guards around it.

use std::sync::Arc;

use diffusion_playground::sched::analytic::{optimal_variance, AnalyticMoments};
use diffusion_playground::sched::{
    plan, SamplerKind, SamplerOptions, SchedulerConfig, TimestepSpacing, VarianceType,
};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fashion() -> SchedulerConfig {
    let mut cfg = SchedulerConfig::from_json(&read("www/models/fashion/scheduler_config.json")).unwrap();
    cfg.analytic =
        Some(Arc::new(AnalyticMoments::from_json(&read("www/models/fashion/analytic_dpm.json")).unwrap()));
    cfg.variance_type = VarianceType::Analytic;
    cfg
}

/// Tolerance: the reference uses diffusers' float32 cumprod of alphas_cumprod, the engine the
/// f64 product of the same f32 betas (they differ by a few 1e-6 relative, see
/// tests/samplers.rs), and the noise coefficient is rounded to f32 once. sigma depends on a
/// and a' smoothly except through 1 - Gamma near Gamma = 1, so 1e-4 relative (plus 1e-7
/// absolute for the sigma = 0 steps) is ~20x the observed worst case (printed), and far
/// below what a wrong formula gives (the nearest slip, alpha_n = abar_n instead of
/// abar_n / abar_m, changes sigma by > 1 %).
#[test]
fn plan_noise_matches_the_numpy_reference() {
    let fx: Value = serde_json::from_str(&read("tests/fixtures/analytic_dpm_fashion.json")).unwrap();
    let mut worst = 0.0f64;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut cfg = fashion();
        if let Some(s) = case["overrides"]["timestep_spacing"].as_str() {
            cfg.timestep_spacing = Some(s.parse::<TimestepSpacing>().unwrap());
        }
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let opts = SamplerOptions {
            eta: case["eta"].as_f64().unwrap(),
            guidance: case["guidance"].as_f64().unwrap() as f32,
            ..SamplerOptions::new(kind, case["steps"].as_u64().unwrap() as usize)
        };
        let p = plan(&cfg, &opts).unwrap();
        let ts: Vec<f32> =
            case["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(p.timesteps(), ts, "{name}: timesteps");
        for (k, (s, want)) in p.steps.iter().zip(case["sigma"].as_array().unwrap()).enumerate() {
            let (got, want) = (s.coeffs.noise as f64, want.as_f64().unwrap());
            let err = (got - want).abs();
            worst = worst.max(err / want.max(1e-3));
            assert!(
                err <= 1e-4 * want + 1e-7,
                "{name} step {k} (t = {}): sigma {got} vs reference {want}",
                s.timestep
            );
        }
    }
    eprintln!("worst relative sigma difference to the NumPy reference: {worst:.1e}");
}

/// The optimal variance lies between its Theorem 2 bounds, equals lambda^2 at Gamma = 1 (a
/// point-mass data set: the posterior is exact) and grows as Gamma falls.
#[test]
fn optimal_variance_respects_its_bounds() {
    let (a, a_prev) = (0.3, 0.6);
    let tilde = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev);
    for lambda2 in [0.0, 0.5 * tilde, tilde] {
        let at_one = optimal_variance(a, a_prev, lambda2, 1.0);
        assert!((at_one - lambda2).abs() < 1e-15, "{lambda2}: {at_one}");
        let mut last = at_one;
        for g in [0.9, 0.5, 0.1, 0.0] {
            let v = optimal_variance(a, a_prev, lambda2, g);
            assert!(v >= last - 1e-15 && v >= lambda2, "Gamma {g}: {v} < {last}");
            last = v;
        }
    }
}

#[test]
fn missing_or_stale_moments_are_refused_in_plain_words() {
    let mut cfg = fashion();
    cfg.analytic = None;
    let e = plan(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 10)).unwrap_err().to_string();
    assert!(e.contains("analytic_dpm.json") && e.contains("variance"), "{e}");
    // The fixed variances never need it.
    cfg.variance_type = VarianceType::FixedSmall;
    plan(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 10)).unwrap();

    let m = AnalyticMoments::from_json(&read("www/models/fashion/analytic_dpm.json")).unwrap();
    let e = m.check_weights(&"0".repeat(64)).unwrap_err().to_string();
    assert!(e.contains("analytic_dpm.json") && e.contains("other weights"), "{e}");
    let man: Value = serde_json::from_str(&read("www/models/fashion/manifest.json")).unwrap();
    let weights = man["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "diffusion_pytorch_model.safetensors")
        .unwrap();
    m.check_weights(weights["sha256"].as_str().unwrap()).unwrap();

    for (text, want) in [
        ("{", "not valid JSON"),
        (r#"{"cc": [1], "uu": [1]}"#, "`uc`"),
        (r#"{"cc": [1, 2], "uu": [1], "uc": [1]}"#, "lengths 2, 1, 1"),
        (r#"{"cc": [-1], "uu": [1], "uc": [1]}"#, "negative"),
        (
            r#"{"cc": [1], "uu": [1], "uc": [1], "num_train_timesteps": 1000}"#,
            "1 values for num_train_timesteps = 1000",
        ),
    ] {
        let e = AnalyticMoments::from_json(text).unwrap_err().to_string();
        assert!(e.contains("analytic_dpm.json") && e.contains(want), "{text}: {e}");
    }
    // A table for another schedule length.
    let mut cfg = fashion();
    cfg.analytic =
        Some(Arc::new(AnalyticMoments::from_json(r#"{"cc": [1], "uu": [1], "uc": [1]}"#).unwrap()));
    let e = plan(&cfg, &SamplerOptions::new(SamplerKind::Ddpm, 10)).unwrap_err().to_string();
    assert!(e.contains("1 timesteps"), "{e}");
}

/// Analytic-DPM only adds noise: DDIM with eta = 0 keeps its mean (the same x0 and eps
/// coefficients) and gains the paper's Analytic-DDIM noise; DDPM keeps its posterior mean.
#[test]
fn analytic_changes_only_the_noise() {
    for (kind, eta) in [(SamplerKind::Ddpm, 0.0), (SamplerKind::Ddim, 0.0), (SamplerKind::Ddim, 0.7)] {
        let analytic = fashion();
        let fixed = SchedulerConfig { variance_type: VarianceType::FixedSmall, ..analytic.clone() };
        let opts = SamplerOptions { eta, guidance: 2.0, ..SamplerOptions::new(kind, 10) };
        let (a, f) = (plan(&analytic, &opts).unwrap(), plan(&fixed, &opts).unwrap());
        for (sa, sf) in a.steps.iter().zip(&f.steps) {
            let (ca, cf) = (sa.coeffs, sf.coeffs);
            assert_eq!(
                (ca.x, ca.x0, ca.eps, ca.x0_from_x, ca.x0_from_out),
                (cf.x, cf.x0, cf.eps, cf.x0_from_x, cf.x0_from_out)
            );
        }
        // (At t = 999 the guided Gamma reaches 1, so Analytic-DDIM's first step adds none.)
        assert!(a.steps[1..9].iter().all(|s| s.coeffs.noise > 0.0), "{kind} eta {eta}");
        assert_eq!(a.steps[9].coeffs.noise, 0.0, "{kind}: no noise onto x_0");
    }
}
