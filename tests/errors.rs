//! Failures come back as typed errors with readable messages, never as panics.

mod common;

use std::path::Path;

use common::*;
use diffusion_playground::gpu::pipeline::{Access, KernelDef};
use diffusion_playground::gpu::{Gpu, Owned, Tensor};
use diffusion_playground::model::UNet;
use diffusion_playground::pipeline::{SampleRequest, Session};
use diffusion_playground::sched::{SamplerKind, SchedulerConfig};
use diffusion_playground::{EngineError, ErrorKind};

#[test]
fn unknown_adapter_name_is_no_adapter() {
    let err = pollster::block_on(Gpu::with_adapter_name(Some("no-such-gpu-xyz"))).err().expect("must fail");
    assert!(matches!(err, EngineError::NoAdapter(_)), "{err:?}");
    assert!(err.to_string().contains("no-such-gpu-xyz"), "{err}");
}

#[test]
fn shader_compile_error_names_kernel_and_cause() {
    const BROKEN: KernelDef = KernelDef {
        name: "broken",
        source: "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n\
                 @compute @workgroup_size(64) fn main() { y[0] = undefined_thing; }",
        entry: "main",
        bindings: &[Access::ReadWrite],
    };
    let err = gpu().kernel(&BROKEN, &[]).err().expect("must fail");
    match &err {
        EngineError::ShaderCompile { kernel, message } => {
            assert!(kernel.starts_with("broken.main"), "{kernel}");
            assert!(message.contains("undefined_thing"), "{message}");
        }
        other => panic!("expected ShaderCompile, got {other:?}"),
    }
    // The shared device stays usable after a refused shader.
    gpu().check().expect("device still healthy");
}

#[test]
fn buffer_past_binding_limit_is_refused() {
    let limit = gpu().max_binding_bytes();
    let floats = (limit / 4 + 1) as usize;
    let err = Tensor::zeros(gpu(), "huge", &[floats]).err().expect("must fail");
    assert!(matches!(err, EngineError::BufferTooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("maxStorageBufferBindingSize"), "{err}");
}

#[test]
fn empty_and_overflowing_shapes_are_refused() {
    assert!(Tensor::zeros(gpu(), "empty", &[2, 0, 3]).is_err());
    assert!(Tensor::zeros(gpu(), "overflow", &[usize::MAX, 2]).is_err());
    let t = zeros("t", &[2, 3]);
    let err = t.write(gpu(), &[1.0; 5]).expect_err("must fail");
    assert!(err.to_string().contains("5 values for shape [2, 3]"), "{err}");
}

#[test]
fn dispatch_past_workgroup_limit_is_refused() {
    const WRITE: KernelDef = KernelDef {
        name: "upsample",
        source: "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n\
                 struct P { n: u32 }\n@group(0) @binding(1) var<uniform> p: P;\n\
                 @compute @workgroup_size(64) fn main() { y[0] = f32(p.n); }",
        entry: "main",
        bindings: &[Access::ReadWrite, Access::Uniform],
    };
    let k = gpu().kernel(&WRITE, &[]).expect("compiles");
    let y = zeros("y", &[4]);
    let too_many = gpu().limits.max_compute_workgroups_per_dimension + 1;
    let err = gpu().dispatch(&k, &[y.buffer()], &[0u32; 4], [too_many, 1, 1]).err().expect("must fail");
    assert!(matches!(err, EngineError::TooManyWorkgroups { .. }), "{err:?}");
    // Wrong number of buffers is an error too, not a panic.
    let err = gpu().dispatch(&k, &[], &[0u32; 4], [1, 1, 1]).err().expect("must fail");
    assert!(
        err.to_string().contains("0 buffers and 0 textures given for 1 storage and 0 texture bindings"),
        "{err}"
    );
}

// Recoverable GPU errors. Each test that injects a fault, provokes an error or loses the
// device does it on a device of its own, so the tests sharing `gpu()` never see it.

const MODEL: &str = "tests/fixtures/unet_small";

fn own_gpu() -> Gpu {
    pollster::block_on(Gpu::new()).expect("adapter")
}

fn model_files() -> (String, Vec<u8>) {
    let config = std::fs::read_to_string(Path::new(MODEL).join("config.json")).unwrap();
    let weights = std::fs::read(Path::new(MODEL).join("diffusion_pytorch_model.safetensors")).unwrap();
    (config, weights)
}

/// Loads the fixture as the page does: the upload inside an out-of-memory scope.
fn load(gpu: &Gpu) -> Result<Owned<UNet>, EngineError> {
    let (config, weights) = model_files();
    pollster::block_on(gpu.scoped("the model's weights", || UNet::load(gpu, &config, &weights)))
}

fn request(images: usize, seed: u64) -> SampleRequest {
    SampleRequest {
        classes: (0..images as u32).map(|i| i % 4).collect(),
        guidance: 2.5,
        kind: SamplerKind::Ddim,
        steps: 3,
        eta: 1.0,
        seed,
        first_image: 0,
        init_noise: None,
    }
}

/// A whole run as the page makes it (prepare, start, steps, read): the final images.
fn sample(gpu: &Gpu, unet: &UNet, images: usize, seed: u64) -> Result<Vec<f32>, EngineError> {
    let sched = SchedulerConfig::default();
    let req = request(images, seed);
    let mut session = Session::new(gpu, unet, images)?;
    pollster::block_on(session.prepare(gpu, unet, &sched, &req))?;
    let run = session.start(gpu, unet, &sched, &req)?;
    for k in 0..run.steps() {
        session.step(gpu, &run, k)?;
    }
    Ok(pollster::block_on(session.read(gpu, false))?.x)
}

#[test]
fn out_of_memory_for_a_session_names_the_image_count_and_fewer_images_then_run() {
    let gpu = own_gpu();
    let unet = load(&gpu).expect("model loads");
    gpu.inject_out_of_memory(1);
    let err = sample(&gpu, &unet, 64, 1).expect_err("the injected out-of-memory must fail the run");
    assert_eq!(err.kind(), ErrorKind::GpuOom, "{err:?}");
    match &err {
        EngineError::OutOfMemory { what, bytes } => {
            assert_eq!(what, "64 images");
            // At least the sampler's three [64, 3, 16, 16] buffers were asked for.
            assert!(*bytes >= 3 * 64 * 3 * 16 * 16 * 4, "{bytes} bytes");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(err.to_string().contains("ran out of memory for 64 images"), "{err}");
    // Reported by the call that allocated, not parked for later: the device is healthy.
    gpu.check().expect("nothing parked after a scoped out-of-memory");
    let x = sample(&gpu, &unet, 4, 1).expect("4 images fit after 64 did not");
    assert_eq!(x.len(), 4 * 3 * 16 * 16);
    assert!(x.iter().all(|v| v.is_finite()));
    assert_eq!(
        x,
        sample(common::gpu(), &load(common::gpu()).unwrap(), 4, 1).unwrap(),
        "same seed, same images"
    );
}

#[test]
fn out_of_memory_is_reported_by_each_allocating_call() {
    let gpu = own_gpu();
    // The model's weights.
    gpu.inject_out_of_memory(1);
    let err = load(&gpu).err().expect("the injected out-of-memory must fail the load");
    assert_eq!(err, EngineError::OutOfMemory { what: "the model's weights".into(), bytes: err_bytes(&err) });
    assert!(err_bytes(&err) > 0);
    let unet = load(&gpu).expect("the next load works");

    // A session planned synchronously (no `prepare`): natively reported by `start` at once.
    gpu.inject_out_of_memory(1);
    let mut session = Session::new(&gpu, &unet, 8).unwrap();
    let err =
        session.start(&gpu, &unet, &SchedulerConfig::default(), &request(8, 3)).err().expect("must fail");
    assert!(matches!(&err, EngineError::OutOfMemory { what, .. } if what == "8 images"), "{err:?}");

    // A read-back's staging buffer; the countdown counts scoped allocations.
    let t = Tensor::from_slice(&gpu, "t", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    gpu.inject_out_of_memory(2);
    assert_eq!(
        pollster::block_on(t.read(&gpu)).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0],
        "first read is not the 2nd"
    );
    let err = pollster::block_on(t.read(&gpu)).expect_err("second read must fail");
    assert_eq!(err, EngineError::OutOfMemory { what: "a read-back buffer of 16 bytes".into(), bytes: 16 });
    assert_eq!(pollster::block_on(t.read(&gpu)).unwrap(), vec![1.0, 2.0, 3.0, 4.0], "one failure only");
    gpu.check().expect("nothing parked");

    // Disarming works.
    gpu.inject_out_of_memory(1);
    gpu.inject_out_of_memory(0);
    pollster::block_on(t.read(&gpu)).expect("disarmed");
}

fn err_bytes(e: &EngineError) -> u64 {
    match e {
        EngineError::OutOfMemory { bytes, .. } => *bytes,
        _ => 0,
    }
}

#[test]
fn a_validation_error_is_reported_once_and_the_next_run_works() {
    let gpu = own_gpu();
    let unet = load(&gpu).unwrap();
    let before = sample(&gpu, &unet, 2, 5).unwrap();

    // An engine bug, made by hand: a dispatch with its bind group missing.
    const WRITE: KernelDef = KernelDef {
        name: "write",
        source: "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n\
                 @compute @workgroup_size(64) fn main() { y[0] = 1.0; }",
        entry: "main",
        bindings: &[Access::ReadWrite],
    };
    let kernel = gpu.kernel(&WRITE, &[]).unwrap();
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&kernel.pipeline);
        pass.dispatch_workgroups(1, 1, 1);
    }
    gpu.queue.submit([encoder.finish()]);

    let err = sample(&gpu, &unet, 2, 5).expect_err("the run after the bug reports it");
    assert!(matches!(err, EngineError::Validation(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().starts_with("internal error"), "{err}");
    gpu.check().expect("reported once, then cleared");
    assert!(!gpu.is_lost());
    assert_eq!(sample(&gpu, &unet, 2, 5).expect("the next run works"), before);
}

#[test]
fn a_lost_device_fails_every_call_and_a_new_one_samples_the_same_images() {
    let gpu = own_gpu();
    let unet = load(&gpu).unwrap();
    let before = sample(&gpu, &unet, 3, 11).unwrap();
    let t = Tensor::from_slice(&gpu, "t", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    // A session that holds its buffers already, as the page's cached one does.
    let sched = SchedulerConfig::default();
    let mut cached = Session::new(&gpu, &unet, 3).unwrap();
    pollster::block_on(cached.prepare(&gpu, &unet, &sched, &request(3, 11))).unwrap();

    gpu.device.destroy();

    let lost = |what: &str, r: Result<(), EngineError>| {
        let err = r.err().unwrap_or_else(|| panic!("{what}: must fail on a lost device"));
        assert_eq!(err.kind(), ErrorKind::GpuLost, "{what}: {err:?}");
        assert!(err.to_string().contains("device was lost"), "{what}: {err}");
    };
    lost("check", gpu.check());
    lost("check again", gpu.check());
    assert!(gpu.is_lost());
    lost("run", gpu.run(&[]));
    lost("sync", pollster::block_on(gpu.sync()));
    lost("read", pollster::block_on(t.read(&gpu)).map(drop));
    lost("load", load(&gpu).map(drop));
    lost("sample", sample(&gpu, &unet, 3, 11).map(drop));
    lost("cached session", cached.start(&gpu, &unet, &sched, &request(3, 11)).map(drop));
    lost("injected oom", {
        gpu.inject_out_of_memory(1);
        sample(&gpu, &unet, 2, 11).map(drop)
    });
    drop((cached, t));

    // Recovery: a new device, the model loaded again from its bytes, the same images.
    let fresh = own_gpu();
    let reloaded = load(&fresh).expect("a new device loads the model");
    assert_eq!(sample(&fresh, &reloaded, 3, 11).unwrap(), before, "same seed on a new device");
    // The old model on the new device (the page cannot do that: a model keeps its engine)
    // reports the old device's loss instead of computing with its buffers, and the new
    // device is none the worse for it.
    lost("old model, new device", sample(&fresh, &unet, 3, 11).map(drop));
    drop(unet);
    fresh.check().expect("the new device is healthy");
    assert_eq!(sample(&fresh, &reloaded, 3, 11).unwrap(), before);
    // Weights of a device that is merely another one are an engine bug.
    let err = sample(&fresh, &load(common::gpu()).unwrap(), 3, 11).expect_err("another device's weights");
    assert_eq!(err.kind(), ErrorKind::Internal, "{err:?}");
    // The old device stays lost.
    lost("old device", gpu.check());
}

#[test]
fn destroy_marks_the_device_lost_at_once() {
    let gpu = own_gpu();
    gpu.destroy();
    assert!(gpu.is_lost());
    assert!(matches!(gpu.check(), Err(EngineError::DeviceLost(_))));
}

#[test]
fn dropping_a_model_and_its_session_frees_their_gpu_memory() {
    let gpu = own_gpu();
    let allocated = |gpu: &Gpu| {
        // Uploads not yet submitted keep their buffers alive inside wgpu until the next
        // submit: flush them, then let finished work release what it held.
        gpu.queue.submit([]);
        gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        gpu.device.generate_allocator_report().expect("an allocator report").total_allocated_bytes
    };
    let base = allocated(&gpu);
    let unet = load(&gpu).unwrap();
    let x = sample(&gpu, &unet, 16, 2).unwrap();
    let sched = SchedulerConfig::default();
    let mut session = Session::new(&gpu, &unet, 16).unwrap();
    pollster::block_on(session.prepare(&gpu, &unet, &sched, &request(16, 2))).unwrap();
    let loaded = allocated(&gpu);
    assert!(loaded > base + (x.len() * 4) as u64, "{loaded} bytes allocated with a model, {base} without");
    drop((session, unet));
    assert_eq!(allocated(&gpu), base, "bytes still allocated after the model and its session were dropped");

    // Destroyed, not merely released: memory returns even while a handle is still held
    // (in the browser, handles live on until the garbage collector runs).
    let owned = pollster::block_on(gpu.scoped("a tensor", || Tensor::zeros(&gpu, "t", &[1 << 20]))).unwrap();
    let handle = owned.clone();
    assert!(allocated(&gpu) >= base + (4 << 20));
    drop(owned);
    assert_eq!(allocated(&gpu), base, "the scoped tensor's buffer was not destroyed");
    drop(handle);
    // So are the buffers of an allocation that failed halfway.
    let mut held = None;
    let err = pollster::block_on(gpu.scoped("a failing allocation", || {
        held = Some(Tensor::zeros(&gpu, "t", &[1 << 20])?);
        Tensor::zeros(&gpu, "empty", &[0])
    }))
    .err()
    .expect("an empty shape is refused");
    assert!(matches!(err, EngineError::Shape { .. }), "{err:?}");
    assert!(held.is_some());
    assert_eq!(allocated(&gpu), base, "the failed allocation's buffer was not destroyed");
}

/// A genuine out-of-memory from the driver, not the test hook. lavapipe's GPU memory is
/// host memory, so the test runs itself again in a child process, caps that process's
/// address space (`prlimit --as`) at what it uses plus 512 MiB, and asks for the largest
/// buffer the device allows (2 GiB on Mesa): the driver's allocation fails and nothing is
/// ever actually allocated.
#[test]
fn a_real_out_of_memory_fails_the_allocating_call_and_the_device_goes_on() {
    const CHILD: &str = "DIFFUSION_REAL_OOM_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_real_out_of_memory_fails_the_allocating_call_and_the_device_goes_on"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "the child test failed:\n{text}");
        return;
    }
    let gpu = own_gpu();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    let cap = (vm_kib << 10) + (512 << 20);
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--as={cap}:{cap}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    let bytes = gpu.limits.max_buffer_size & !3;
    assert!(bytes >= 1 << 30, "this adapter's buffers stop at {bytes} bytes");
    let err = pollster::block_on(gpu.scoped("the largest buffer", || {
        Ok(gpu.create_buffer(&wgpu::BufferDescriptor {
            label: Some("big"),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }))
    .err()
    .expect("a buffer larger than the address space left must not be allocated");
    assert_eq!(err, EngineError::OutOfMemory { what: "the largest buffer".into(), bytes });
    gpu.check().expect("nothing parked after a scoped out-of-memory");
    let t = Tensor::from_slice(&gpu, "t", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(pollster::block_on(t.read(&gpu)).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}
