//! The guards on a sampling run: the non-finite flag kernel against a CPU reference, the
//! CPU backend's in-loop check on a crafted mid-run model output, and the image-count
//! cap's per-image estimate against what the GPU plan really allocates.

mod common;

use common::{gpu, rng, uniform, upload};
use diffusion_playground::fast::{CpuEngine, CpuSession};
use diffusion_playground::gpu::nonfinite::{decode, NonFiniteCheck};
use diffusion_playground::model::{UNet, UNetConfig};
use diffusion_playground::pipeline::SampleRequest;
use diffusion_playground::pipeline::{activation_floats, check_image_count, image_bytes, max_images};
use diffusion_playground::sched::{SamplerKind, SchedulerConfig};
use diffusion_playground::ErrorKind;

/// The first step whose x is non-finite, as `nonfinite.wgsl` must report it.
fn reference(steps: &[Vec<f32>]) -> Option<usize> {
    steps.iter().position(|x| x.iter().any(|v| !v.is_finite()))
}

/// Runs one check dispatch per step (each over its own x) after a reset and reads the flag.
fn flagged(check: &NonFiniteCheck, steps: &[Vec<f32>]) -> Option<usize> {
    let g = gpu();
    check.reset(g).unwrap();
    let xs: Vec<_> = steps.iter().map(|x| upload("x", &[x.len()], x)).collect();
    let ds: Vec<_> = xs.iter().enumerate().map(|(k, x)| check.dispatch(g, x, k).unwrap()).collect();
    g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    pollster::block_on(check.first_bad_step(g)).unwrap()
}

#[test]
fn the_flag_names_the_first_step_with_a_non_finite_value() {
    let check = NonFiniteCheck::new(gpu()).unwrap();
    let mut r = rng(7);
    // Odd lengths (a partial last quad) and many workgroups.
    for len in [1usize, 5, 4099, 1_000_003] {
        let clean: Vec<Vec<f32>> = (0..6).map(|_| uniform(&mut r, len, 3.0)).collect();
        assert_eq!(flagged(&check, &clean), None, "len {len}: clean steps");

        // Finite extremes are not flagged: the largest normal, subnormals, -0.
        let mut edge = clean.clone();
        edge[1][len - 1] = f32::MAX;
        edge[2][0] = -f32::MIN_POSITIVE / 2.0;
        edge[3][len / 2] = -0.0;
        assert_eq!(flagged(&check, &edge), reference(&edge), "len {len}: finite extremes");

        for (bad, at) in [(f32::NAN, len - 1), (f32::INFINITY, 0), (f32::NEG_INFINITY, len / 2)] {
            let mut steps = clean.clone();
            steps[4][at] = bad;
            steps[2][len / 3] = bad; // the earlier step wins whatever comes later
            assert_eq!(flagged(&check, &steps), reference(&steps), "len {len}: {bad} at {at}");
            assert_eq!(reference(&steps), Some(2));
        }
    }
}

#[test]
fn a_reset_clears_the_flag_and_decode_reads_it() {
    let check = NonFiniteCheck::new(gpu()).unwrap();
    assert_eq!(flagged(&check, &[vec![f32::NAN; 8]]), Some(0));
    assert_eq!(flagged(&check, &[vec![1.0; 8]]), None, "a new run must not see the old run's flag");
    assert_eq!(decode(&[f32::from_bits(7)]), Some(7));
    assert_eq!(decode(&[f32::from_bits(u32::MAX)]), None);
}

fn config(dir: &str) -> String {
    std::fs::read_to_string(format!("{dir}/config.json")).unwrap()
}

#[test]
fn the_per_image_estimate_covers_the_gpu_plan_without_wild_overshoot() {
    for dir in ["www/models/fashion", "www/models/digits"] {
        let text = config(dir);
        let weights = std::fs::read(format!("{dir}/diffusion_pytorch_model.safetensors")).unwrap();
        let unet = UNet::load(gpu(), &text, &weights).unwrap();
        let cfg = UNetConfig::from_json(&text).unwrap();
        let real = unet.plan(gpu(), 1).unwrap().activation_bytes();
        let estimate = 4 * activation_floats(&cfg);
        eprintln!("{dir}: one image's pass allocates {real} bytes; estimate {estimate}");
        assert!(estimate >= real, "{dir}: estimate {estimate} < the plan's {real} bytes");
        assert!(estimate <= 4 * real, "{dir}: estimate {estimate} is over 4x the plan's {real} bytes");
        // And per image with guidance: two passes' worth plus the sampler's buffers.
        assert!(image_bytes(&cfg) >= 2 * real);
    }
}

#[test]
fn the_cap_is_one_number_for_every_caller() {
    let cfg = UNetConfig::from_json(&config("www/models/fashion")).unwrap();
    let max = max_images(&cfg);
    assert!(max >= 64, "the shipped model must fit a page's worth of images (cap {max})");
    assert!(check_image_count("count", max, &cfg).is_ok());
    let e = check_image_count("count", max + 1, &cfg).unwrap_err();
    assert_eq!((e.kind(), e.field()), (ErrorKind::Limits, Some("count")));
    assert!(e.to_string().contains(&format!("at most {max}")), "{e}");
    let e = check_image_count("--n", 0, &cfg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Input);

    // A wider, larger model fits fewer: the cap follows the model, not a constant.
    let big = config("www/models/fashion").replace("\"sample_size\": 28", "\"sample_size\": 112");
    let big = UNetConfig::from_json(&big).unwrap();
    assert!(max_images(&big) < max / 8, "{} vs {max}", max_images(&big));
}

#[test]
fn the_cpu_backend_names_the_step_whose_model_output_went_non_finite() {
    let dir = "tests/fixtures/unet_small";
    let text = config(dir);
    let weights = std::fs::read(format!("{dir}/diffusion_pytorch_model.safetensors")).unwrap();
    let engine = CpuEngine::load(&text, &weights, 1).unwrap();
    let sched = SchedulerConfig::default();
    let req = SampleRequest {
        classes: vec![1, 2],
        guidance: 2.0,
        kind: SamplerKind::Ddim,
        steps: 5,
        eta: 0.0,
        seed: 3,
        first_image: 0,
        init_noise: None,
    };
    for (bad, at) in [(f32::NAN, 0usize), (f32::INFINITY, 777), (f32::NEG_INFINITY, 4 * 768 - 1)] {
        let mut session = CpuSession::new(&engine, 2).unwrap();
        let run = session.start(&engine, &sched, &req).unwrap();
        for k in 0..2 {
            session.step(&engine, &run, k).unwrap();
        }
        // A model output as a model that overflows mid-run would give it, at step 3 of 5.
        let mut out = session.forward_part(&engine, &run, 2, 0, session.model_batch()).unwrap().to_vec();
        out[at] = bad;
        let e = session.finish_step(&engine, &run, 2, &out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Numeric, "{e}");
        assert!(e.to_string().contains("at step 3 of 5"), "{bad} at {at}: {e}");
    }
}
