//! A dense f32 tensor in one GPU storage buffer, NCHW (or [rows, cols]) row-major.

use std::sync::{Arc, Mutex};

use crate::error::{EngineError, Result};
use crate::gpu::context::lock;
use crate::gpu::readback::ReadRing;
use crate::gpu::Gpu;

/// Cloning shares the buffer (a handle, no copy).
#[derive(Clone)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    /// The loss slot of the device that made it: names that device, and says whether it
    /// was lost (see [`Tensor::check_device`]).
    device: Arc<Mutex<Option<EngineError>>>,
}

impl Tensor {
    /// A zero-filled tensor. Fails if it would not fit one storage binding.
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Self> {
        let numel = checked_numel(label, shape)?;
        let bytes = (numel * 4) as u64;
        if bytes > gpu.max_binding_bytes() {
            return Err(EngineError::BufferTooLarge {
                what: format!("{label} {shape:?}"),
                bytes,
                limit: gpu.max_binding_bytes(),
            });
        }
        let buffer = gpu.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Tensor { buffer, shape: shape.to_vec(), device: gpu.lost_slot() })
    }

    pub fn from_slice(gpu: &Gpu, label: &str, shape: &[usize], data: &[f32]) -> Result<Self> {
        let t = Self::zeros(gpu, label, shape)?;
        t.write(gpu, data)?;
        Ok(t)
    }

    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(EngineError::shape(
                "tensor write",
                format!("{} values for shape {:?}", data.len(), self.shape),
            ));
        }
        gpu.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// The same buffer seen with another shape of the same element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if checked_numel("reshape", shape)? != self.numel() {
            return Err(EngineError::shape(
                "tensor reshape",
                format!("{:?} cannot be viewed as {shape:?}", self.shape),
            ));
        }
        Ok(Tensor { buffer: self.buffer.clone(), shape: shape.to_vec(), device: self.device.clone() })
    }

    /// Fails unless the tensor was made on `gpu`. wgpu does not refuse a buffer of another
    /// device natively (each device has its own instance, whose tables the foreign id indexes:
    /// a panic or another buffer's data), so weights are checked where a pass is planned:
    /// those of a model loaded before its device was lost report that loss (the model must
    /// be loaded again on the new device); any other mix-up is an engine bug.
    pub fn check_device(&self, gpu: &Gpu) -> Result<()> {
        if gpu.made(&self.device) {
            return Ok(());
        }
        Err(lock(&self.device).clone().unwrap_or_else(|| {
            EngineError::Internal("a tensor of one GPU device was used on another".into())
        }))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Copies the tensor back to the CPU (`map_async`, so it never blocks a browser).
    pub async fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut all = Self::read_many(gpu, &[self]).await?;
        Ok(all.pop().expect("one tensor in, one out"))
    }

    /// Copies several tensors into one staging buffer and maps it once: one wait for the GPU
    /// however many tensors. Loops that read every step keep a [`ReadRing`] instead.
    pub async fn read_many(gpu: &Gpu, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let mut ring = ReadRing::new(1);
        let ticket = ring.enqueue(gpu, tensors).await?;
        ring.take(gpu, ticket).await
    }
}

fn checked_numel(label: &str, shape: &[usize]) -> Result<usize> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(EngineError::shape("tensor", format!("{label}: empty shape {shape:?}")));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(4).map(|_| n))
        .ok_or_else(|| EngineError::shape("tensor", format!("{label}: shape {shape:?} overflows")))
}
