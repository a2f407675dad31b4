//! Whole sampling runs through `pipeline::Session`: determinism, batch independence of the
//! noise keys, input validation, and the shipped model against diffusers' own DDIM + CFG
//! pipeline step by step.

mod common;

use common::f32s;

use std::path::Path;

use diffusion_playground::gpu::Gpu;
use diffusion_playground::model::UNet;
use diffusion_playground::pipeline::{SampleRequest, Session};
use diffusion_playground::sched::{SamplerKind, SchedulerConfig};
use safetensors::SafeTensors;

fn load(dir: &str) -> UNet {
    load_on(common::gpu(), dir)
}

fn load_on(gpu: &Gpu, dir: &str) -> UNet {
    UNet::open(gpu, Path::new(dir)).expect("model loads").0
}

fn request(kind: SamplerKind, classes: Vec<u32>, seed: u64, first_image: u32) -> SampleRequest {
    SampleRequest { classes, guidance: 2.5, kind, steps: 4, eta: 1.0, seed, first_image, init_noise: None }
}

/// Runs a request to the end and returns (final x, x0_hat).
fn sample(unet: &UNet, sched: &SchedulerConfig, n: usize, req: &SampleRequest) -> (Vec<f32>, Vec<f32>) {
    let (x, x0, _) = run_on(common::gpu(), unet, sched, n, req);
    (x, x0)
}

/// Runs a request to the end on `gpu`: (final x, x0_hat, U-Net passes per step).
fn run_on(
    gpu: &Gpu,
    unet: &UNet,
    sched: &SchedulerConfig,
    n: usize,
    req: &SampleRequest,
) -> (Vec<f32>, Vec<f32>, usize) {
    let mut session = Session::new(gpu, unet, n).unwrap();
    let run = session.start(gpu, unet, sched, req).unwrap();
    for k in 0..run.steps() {
        session.step(gpu, &run, k).unwrap();
    }
    let r = pollster::block_on(session.read(gpu, true)).unwrap();
    (r.x, r.x0_hat.unwrap(), run.shards())
}

#[test]
fn same_seed_gives_bit_identical_images() {
    let unet = load("tests/fixtures/unet_small");
    let sched = SchedulerConfig::default();
    for kind in
        [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmSolverPp2m, SamplerKind::EulerAncestral]
    {
        let req = request(kind, vec![0, 1, 2, 3], 7, 0);
        let (a, _) = sample(&unet, &sched, 4, &req);
        let (b, _) = sample(&unet, &sched, 4, &req);
        assert!(a.iter().all(|v| v.is_finite()), "{kind:?}: non-finite output");
        assert!(a == b, "{kind:?}: two runs with seed 7 differ");
        let (c, _) = sample(&unet, &sched, 4, &request(kind, vec![0, 1, 2, 3], 8, 0));
        assert!(a != c, "{kind:?}: seeds 7 and 8 gave the same images");
    }
}

#[test]
fn image_k_of_a_batch_equals_image_0_of_a_run_keyed_at_k() {
    let unet = load("tests/fixtures/unet_small");
    let sched = SchedulerConfig::default();
    let per_image = 3 * 16 * 16;
    let classes = vec![1, 4, 0, 2, 3, 1, 4, 0];
    let (batch, _) = sample(&unet, &sched, 8, &request(SamplerKind::Ddpm, classes.clone(), 99, 0));
    for k in [0usize, 3, 7] {
        let (single, _) =
            sample(&unet, &sched, 1, &request(SamplerKind::Ddpm, vec![classes[k]], 99, k as u32));
        let slice = &batch[k * per_image..(k + 1) * per_image];
        assert!(slice == &single[..], "image {k} of a batch of 8 differs from a 1-image run keyed at {k}");
    }
}

/// A batch whose activations would outgrow one storage binding runs as several equal
/// shards (the last one padded) inside each step; the images are the very ones one pass
/// gives. The binding limit is lowered on a GPU of the test's own so that 5 images split.
#[test]
fn a_batch_too_large_for_one_binding_is_split_into_shards() {
    let mut gpu = pollster::block_on(Gpu::new()).unwrap();
    let unet = load_on(&gpu, "tests/fixtures/unet_small");
    let sched = SchedulerConfig::default();
    let per_image = unet.bytes_per_image(&gpu).unwrap();
    let full = gpu.limits.max_storage_buffer_binding_size;
    let classes = vec![4, 0, 3, 1, 2];
    let noise: Vec<f32> = (0..5 * 3 * 16 * 16).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let cases = [
        // (request, shards expected with room for a U-Net batch of 4: 2 images with CFG)
        (request(SamplerKind::DpmSolverPp2m, classes.clone(), 5, 0), 3),
        (request(SamplerKind::Ddpm, classes.clone(), 6, 3), 3),
        (SampleRequest { guidance: 1.0, ..request(SamplerKind::EulerAncestral, classes.clone(), 7, 0) }, 2),
        (SampleRequest { init_noise: Some(noise), ..request(SamplerKind::Ddim, classes.clone(), 8, 0) }, 3),
    ];
    for (req, shards) in &cases {
        gpu.limits.max_storage_buffer_binding_size = full;
        let (x1, x01, one) = run_on(&gpu, &unet, &sched, 5, req);
        assert_eq!(one, 1);
        gpu.limits.max_storage_buffer_binding_size = 4 * per_image + 100;
        let (x2, x02, split) = run_on(&gpu, &unet, &sched, 5, req);
        assert_eq!(split, *shards, "{:?}", req.kind);
        assert!(x1.iter().all(|v| v.is_finite()));
        assert!(x1 == x2, "{:?}: split run's images differ from one pass", req.kind);
        assert!(x01 == x02, "{:?}: split run's x0_hat differs from one pass", req.kind);
    }

    // Not even one image fits: a clear error, not a device error.
    gpu.limits.max_storage_buffer_binding_size = per_image * 2 - 4;
    let mut session = Session::new(&gpu, &unet, 1).unwrap();
    let e = session
        .start(&gpu, &unet, &sched, &request(SamplerKind::Ddim, vec![0], 1, 0))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("largest activation for one image"), "{e}");
}

#[test]
fn bad_requests_are_errors() {
    let gpu = common::gpu();
    let unet = load("tests/fixtures/unet_small");
    let sched = SchedulerConfig::default();
    let mut session = Session::new(gpu, &unet, 2).unwrap();
    let cases: Vec<(SampleRequest, &str)> = vec![
        (request(SamplerKind::Ddim, vec![0], 1, 0), "1 classes for 2 images"),
        (request(SamplerKind::Ddim, vec![0, 9], 1, 0), "class 9 is out of range"),
        (SampleRequest { steps: 0, ..request(SamplerKind::Ddim, vec![0, 1], 1, 0) }, "steps"),
        (SampleRequest { steps: 1001, ..request(SamplerKind::Ddim, vec![0, 1], 1, 0) }, "steps"),
        (SampleRequest { guidance: f32::NAN, ..request(SamplerKind::Ddim, vec![0, 1], 1, 0) }, "guidance"),
        (
            SampleRequest { init_noise: Some(vec![0.0; 5]), ..request(SamplerKind::Ddim, vec![0, 1], 1, 0) },
            "5 values",
        ),
        (
            SampleRequest {
                init_noise: Some(
                    (0..2 * 3 * 16 * 16).map(|i| if i == 900 { f32::INFINITY } else { 0.1 }).collect(),
                ),
                ..request(SamplerKind::Ddim, vec![0, 1], 1, 0)
            },
            "initial noise holds inf at [1, 132]",
        ),
    ];
    for (req, needle) in cases {
        let e = session.start(gpu, &unet, &sched, &req).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(needle), "expected an error containing {needle:?}, got {e:?}");
    }
    assert!(Session::new(gpu, &unet, 0).is_err());
}

/// diffusers' DDIMScheduler (20 steps, eta 0, leading spacing, clip_sample false as the
/// shipped config says; the `sched_*_clip` fixtures of tests/samplers.rs cover clipping)
/// with CFG w = 2 as one batch of [x; x] and classes [c; null], on the shipped fashion model (fixture from
/// train/make_fixtures.py --part fashion).
///
/// Tolerance: each step's U-Net output agrees with PyTorch to ~1e-5 (tests/unet_forward.rs);
/// DDIM eta 0 is deterministic and contracting in x0 but amplifies eps errors by up to
/// sqrt(1 - a_prev) / sqrt(a_t) ~ 1 / alpha_t early on; over 20 steps we observe (printed)
/// well under 1e-3 and hold the final image to the 1e-3.
#[test]
fn fashion_ddim20_cfg2_matches_diffusers() {
    let path = Path::new("tests/fixtures/fashion_ddim20_cfg2.safetensors");
    assert!(path.exists(), "{} is missing: run train/make_fixtures.py --part fashion", path.display());
    let bytes = std::fs::read(path).unwrap();
    let fx = SafeTensors::deserialize(&bytes).unwrap();
    let gpu = common::gpu();
    let unet = load("www/models/fashion");
    let sched_text = std::fs::read_to_string("www/models/fashion/scheduler_config.json").unwrap();
    // With what the manifest adds (`sampling`), as the fixture was made.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("www/models/fashion/manifest.json").unwrap()).unwrap();
    let sched = diffusion_playground::sched::manifest_overrides(&manifest)
        .unwrap()
        .apply(&SchedulerConfig::from_json(&sched_text).unwrap());
    let req = SampleRequest {
        classes: common::labels(&fx, "class"),
        guidance: f32s(&fx, "guidance_scale")[0],
        kind: SamplerKind::Ddim,
        steps: 20,
        eta: 0.0,
        seed: 0,
        first_image: 0,
        init_noise: Some(f32s(&fx, "x_T")),
    };
    let mut session = Session::new(gpu, &unet, 2).unwrap();
    let run = session.start(gpu, &unet, &sched, &req).unwrap();
    let timesteps: Vec<f32> = run.plan().steps.iter().map(|s| s.timestep).collect();
    assert_eq!(timesteps, f32s(&fx, "timesteps"));
    let x_prev = f32s(&fx, "x_prev");
    let x0_pred = f32s(&fx, "x0_pred");
    let per_step = x_prev.len() / 20;
    let shape = [2, 1, 28, 28];
    for k in 0..20 {
        session.step(gpu, &run, k).unwrap();
        let r = pollster::block_on(session.read(gpu, true)).unwrap();
        let (x, x0) = (r.x, r.x0_hat.unwrap());
        let want_x = &x_prev[k * per_step..(k + 1) * per_step];
        let want_x0 = &x0_pred[k * per_step..(k + 1) * per_step];
        common::assert_close(&format!("step {k} x0_hat"), &x0, want_x0, &shape, 1e-3, 0.0);
        common::assert_close(&format!("step {k} x_prev"), &x, want_x, &shape, 1e-3, 0.0);
    }
    let x = pollster::block_on(session.read(gpu, false)).unwrap().x;
    common::assert_close("x_final", &x, &f32s(&fx, "x_final"), &shape, 1e-3, 0.0);
}

/// The browser's loop: step k + 1 is submitted before step k's read-back is waited for.
/// Each read must still hold x_t and x0_hat as of its own step (copies run in submission
/// order), flag-only reads must pass a clean run, and the whole run must get by with the
/// ring's two staging buffers instead of one new buffer per step.
#[test]
fn pipelined_read_backs_hold_their_own_step_and_reuse_two_buffers() {
    use diffusion_playground::pipeline::Readback;
    let gpu = common::gpu();
    let unet = load("tests/fixtures/unet_small");
    let sched = SchedulerConfig::default();
    let req = SampleRequest { steps: 6, ..request(SamplerKind::DpmSolverPp2m, vec![0, 1, 2], 11, 0) };

    let mut sync = Session::new(gpu, &unet, 3).unwrap();
    let run = sync.start(gpu, &unet, &sched, &req).unwrap();
    let mut want = Vec::new();
    for k in 0..run.steps() {
        sync.step(gpu, &run, k).unwrap();
        let r = pollster::block_on(sync.read(gpu, true)).unwrap();
        want.push((r.x, r.x0_hat.unwrap()));
    }

    for what in [Readback::XAndX0, Readback::Flag] {
        let mut session = Session::new(gpu, &unet, 3).unwrap();
        let run = session.start(gpu, &unet, &sched, &req).unwrap();
        let mut got = Vec::new();
        let mut in_flight = None;
        for k in 0..run.steps() {
            session.step(gpu, &run, k).unwrap();
            let pending = pollster::block_on(session.enqueue_read(gpu, what)).unwrap();
            if let Some((done, previous)) = in_flight.replace((k, pending)) {
                got.push((done, pollster::block_on(session.finish_read(gpu, previous)).unwrap()));
            }
        }
        let (done, last) = in_flight.unwrap();
        got.push((done, pollster::block_on(session.finish_read(gpu, last)).unwrap()));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..run.steps()).collect::<Vec<_>>());
        for (k, readout) in got {
            match (what, readout) {
                (Readback::XAndX0, Some(r)) => {
                    assert_eq!(r.x, want[k].0, "x_t of step {k}");
                    assert_eq!(r.x0_hat.as_ref(), Some(&want[k].1), "x0_hat of step {k}");
                }
                (Readback::Flag, None) => {}
                (w, r) => panic!("{w:?} read of step {k} returned values: {}", r.is_some()),
            }
        }
        assert_eq!(session.staging_buffers_created(), 2, "{what:?}: one staging buffer per ring slot");
        // A read left in flight (a cancelled loop) does not block the session's next run.
        let _abandoned = pollster::block_on(session.enqueue_read(gpu, what)).unwrap();
        let _abandoned_too = pollster::block_on(session.enqueue_read(gpu, what)).unwrap();
        let run = session.start(gpu, &unet, &sched, &req).unwrap();
        for k in 0..run.steps() {
            session.step(gpu, &run, k).unwrap();
        }
        let r = pollster::block_on(session.read(gpu, true)).unwrap();
        assert_eq!(r.x, want[run.steps() - 1].0, "{what:?}: a fresh run after abandoned reads");
    }
}
