//! The GPU context: adapter, device, queue, the limits we run under, and the error slot
//! that uncaptured validation errors and device loss are parked in until the next check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{EngineError, Result};
use crate::gpu::pipeline::{Kernel, KernelKey};

/// The WebGPU default limits every browser guarantees; kernels are written to fit these.
/// We only ask the adapter for more storage-buffer room, as an optional fast path for
/// large batches.
pub const WORKGROUP_STORAGE_BYTES: u32 = 16_384;
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    errors: Arc<Mutex<Option<EngineError>>>,
    pub(crate) kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    /// Bound in place of an optional input that a dispatch does not use.
    pub(crate) placeholder: wgpu::Buffer,
}

impl Gpu {
    /// Picks the best adapter of the platform (Vulkan/Metal/DX12 natively, WebGPU in the
    /// browser; `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` narrow the choice natively).
    pub async fn new() -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        let wanted = std::env::var("WGPU_ADAPTER_NAME").ok();
        #[cfg(target_arch = "wasm32")]
        let wanted: Option<String> = None;
        Self::with_adapter_name(wanted.as_deref()).await
    }

    /// Like [`Gpu::new`], restricted natively to the adapter whose name contains `wanted`
    /// (case-insensitive).
    pub async fn with_adapter_name(wanted: Option<&str>) -> Result<Self> {
        #[cfg(target_arch = "wasm32")]
        let backends = wgpu::Backends::BROWSER_WEBGPU;
        #[cfg(not(target_arch = "wasm32"))]
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pick_adapter(&instance, wanted).await?;
        Self::from_adapter(adapter).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let required_limits = required_limits(&adapter.limits())?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("diffusion-playground"),
                required_features: wgpu::Features::empty(),
                required_limits: required_limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::RequestDevice(e.to_string()))?;

        let errors = Arc::new(Mutex::new(None));
        let slot = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            park(&slot, EngineError::Validation(e.to_string()));
        }));
        let slot = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            park(&slot, EngineError::DeviceLost(format!("{reason:?}: {message}")));
        });

        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits: required_limits,
            errors,
            kernels: Mutex::new(HashMap::new()),
            placeholder,
        })
    }

    /// The first error the device reported since it was created (validation outside an
    /// error scope, or device loss). Once the device is lost every later call fails too.
    pub fn check(&self) -> Result<()> {
        match lock(&self.errors).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn park_error(&self, e: EngineError) {
        park(&self.errors, e);
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn error_slot(&self) -> Arc<Mutex<Option<EngineError>>> {
        self.errors.clone()
    }

    /// Human-readable adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)".
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Largest single storage binding, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Submits one compute pass holding `dispatches` in order.
    pub fn run(&self, dispatches: &[&crate::gpu::Dispatch]) -> Result<()> {
        self.check()?;
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run"),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Waits until the GPU has finished all submitted work.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poll_wait()?;
        rx.await.map_err(|_| EngineError::DeviceLost("the queue was dropped".into()))?;
        self.check()
    }

    /// Natively, blocks until queued work and callbacks are done; in the browser the event
    /// loop drives callbacks, so this does nothing.
    pub(crate) fn poll_wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| EngineError::DeviceLost(e.to_string()))?;
        Ok(())
    }
}

async fn pick_adapter(instance: &wgpu::Instance, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(wanted) = wanted {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(
            || EngineError::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted} matches none of {names:?}")),
        );
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let _ = wanted; // adapter choice by name is native-only
            EngineError::NoAdapter(format!("{e} ({})", no_adapter_hint()))
        })
}

fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "this browser has no WebGPU: use Chrome or Edge 113+, Safari 26+, or Firefox 141+ on Windows"
    } else {
        "install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers for the lavapipe software GPU"
    }
}

/// WebGPU's defaults, checked against the adapter so a weak one is refused up front with
/// the name of the limit, plus as much storage-buffer room as the adapter offers.
pub(crate) fn required_limits(adapter: &wgpu::Limits) -> Result<wgpu::Limits> {
    let base = wgpu::Limits::defaults();
    let mut failed = None;
    base.check_limits_with_fail_fn(adapter, false, |name, required, available| {
        failed.get_or_insert(EngineError::LimitTooLow { name, required, available });
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        ..base
    })
}

pub(crate) fn park(slot: &Mutex<Option<EngineError>>, e: EngineError) {
    let mut slot = lock(slot);
    // Keep the first error: later ones are usually consequences of it.
    if slot.is_none() {
        *slot = Some(e);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_adapter_is_refused_with_the_limit_named() {
        let weak = wgpu::Limits { max_compute_workgroup_storage_size: 8192, ..wgpu::Limits::defaults() };
        let err = required_limits(&weak).unwrap_err();
        assert_eq!(
            err,
            EngineError::LimitTooLow {
                name: "max_compute_workgroup_storage_size",
                required: 16384,
                available: 8192
            }
        );
        assert!(err.to_string().contains("max_compute_workgroup_storage_size is 8192"));
    }

    #[test]
    fn storage_room_is_raised_to_the_adapters() {
        let big = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 31,
            max_buffer_size: 1 << 32,
            ..wgpu::Limits::defaults()
        };
        let got = required_limits(&big).unwrap();
        assert_eq!(got.max_storage_buffer_binding_size, 1 << 31);
        assert_eq!(got.max_compute_workgroup_storage_size, WORKGROUP_STORAGE_BYTES);
        assert_eq!(got.max_compute_invocations_per_workgroup, INVOCATIONS_PER_WORKGROUP);
        assert_eq!(got.max_storage_buffers_per_shader_stage, STORAGE_BUFFERS_PER_STAGE);
    }
}
