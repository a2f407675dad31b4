//! Failures come back as typed errors with readable messages, never as panics.

mod common;

use common::*;
use diffusion_playground::gpu::pipeline::{Access, KernelDef};
use diffusion_playground::gpu::{Gpu, Tensor};
use diffusion_playground::EngineError;

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
    assert!(err.to_string().contains("0 buffers given for 1 storage bindings"), "{err}");
}

#[test]
fn lost_device_is_reported_by_every_later_call() {
    // A device of its own: destroying it must not disturb the shared one.
    let gpu = pollster::block_on(Gpu::new()).expect("adapter");
    let t = Tensor::from_slice(&gpu, "t", &[4], &[1.0, 2.0, 3.0, 4.0]).expect("upload");
    assert_eq!(pollster::block_on(t.read(&gpu)).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    gpu.device.destroy();
    let _ = gpu.device.poll(wgpu::PollType::Poll);
    let err = gpu.check().expect_err("loss must be reported");
    assert!(matches!(err, EngineError::DeviceLost(_)), "{err:?}");
    assert!(err.to_string().contains("device was lost"), "{err}");
    assert!(pollster::block_on(t.read(&gpu)).is_err());
    assert!(gpu.run(&[]).is_err());
}
