//! A dense f32 tensor in one GPU storage buffer, NCHW (or [rows, cols]) row-major.

use std::sync::{Arc, Mutex};

use crate::error::{EngineError, Result};
use crate::gpu::context::lock;
use crate::gpu::readback::ReadRing;
use crate::gpu::weight_texture::WeightTexture;
use crate::gpu::Gpu;

/// Floats per slot of partial statistics: count, mean, M2 (the sum of squared deviations
/// from the mean), merged with Chan et al.'s parallel formula.
pub const STATS_SLOT: usize = 3;

/// Cloning shares the buffer (a handle, no copy).
#[derive(Clone)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    /// Partial GroupNorm statistics per (image, channel) that the producing convolution
    /// leaves after the data: 0, or the number of slots per (image, channel) (see
    /// [`Tensor::with_stats`]).
    stats_tiles: usize,
    /// The loss slot of the device that made it: names that device, and says whether it
    /// was lost (see [`Tensor::check_device`]).
    device: Arc<Mutex<Option<EngineError>>>,
    /// The texture the direct conv kernels read this weight matrix from, once made
    /// ([`crate::gpu::weight_texture`]); shared by clones and by views of the same first
    /// dimension.
    texture: Arc<Mutex<Option<Arc<WeightTexture>>>>,
}

impl Tensor {
    /// A zero-filled tensor. Fails if it would not fit one storage binding.
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Self> {
        Self::with_stats(gpu, label, shape, 0)
    }

    /// A zero-filled [n, c, ...] tensor whose buffer carries, after its data, `tiles` slots
    /// of [`STATS_SLOT`] floats per (image, channel): the (count, mean, M2) partial
    /// statistics a convolution writes in its epilogue (`conv2d.wgsl`) and the next
    /// convolution merges into GroupNorm statistics, so no separate statistics pass runs.
    /// Kernels that index by shape never see the tail.
    pub fn with_stats(gpu: &Gpu, label: &str, shape: &[usize], tiles: usize) -> Result<Self> {
        let numel = checked_numel(label, shape)?;
        let tail = match tiles {
            0 => 0,
            t => shape[..shape.len().min(2)]
                .iter()
                .try_fold(t * STATS_SLOT, |acc, &d| acc.checked_mul(d))
                .and_then(|tail| tail.checked_add(numel).and_then(|all| all.checked_mul(4)).map(|_| tail))
                .ok_or_else(|| {
                    EngineError::shape("tensor", format!("{label}: {tiles} statistics tiles overflow"))
                })?,
        };
        let bytes = ((numel + tail) * 4) as u64;
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
        Ok(Tensor {
            buffer,
            shape: shape.to_vec(),
            stats_tiles: tiles,
            device: gpu.lost_slot(),
            texture: Arc::default(),
        })
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
        // A texture made from the old values is stale for plans made from now on.
        *lock(&self.texture) = None;
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
        // The statistics tail is laid out by image and channel: another shape loses it.
        let stats_tiles = if shape.get(..2) == self.shape.get(..2) { self.stats_tiles } else { 0 };
        Ok(Tensor {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            stats_tiles,
            device: self.device.clone(),
            // The same [rows, K] matrix while the first dimension stays.
            texture: if shape[0] == self.shape[0] { self.texture.clone() } else { Arc::default() },
        })
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

    /// Slots of partial GroupNorm statistics per (image, channel) after the data (0: none).
    pub fn stats_tiles(&self) -> usize {
        self.stats_tiles
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn cached_texture(&self) -> Option<Arc<WeightTexture>> {
        lock(&self.texture).clone()
    }

    pub(crate) fn cache_texture(&self, t: Arc<WeightTexture>) {
        *lock(&self.texture) = Some(t);
    }

    /// Copies the tensor back to the CPU (`map_async`, so it never blocks a browser).
    pub async fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut all = Self::read_many(gpu, &[self]).await?;
        Ok(all.pop().expect("one tensor in, one out"))
    }

    /// Copies the partial statistics after the data back to the CPU (tests): [n, c,
    /// stats_tiles, STATS_SLOT].
    pub async fn read_stats(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let data = self.numel() as u64 * 4;
        let mut all = Self::read_ranges(gpu, &[(self, data, self.buffer.size() - data)]).await?;
        Ok(all.pop().expect("one range in, one out"))
    }

    /// Copies several tensors into one staging buffer and maps it once: one wait for the GPU
    /// however many tensors. Loops that read every step keep a [`ReadRing`] instead.
    pub async fn read_many(gpu: &Gpu, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let ranges: Vec<(&Tensor, u64, u64)> =
            tensors.iter().map(|t| (*t, 0, t.numel() as u64 * 4)).collect();
        Self::read_ranges(gpu, &ranges).await
    }

    /// Reads (tensor, byte offset, bytes) ranges of tensors' buffers through a one-slot ring.
    async fn read_ranges(gpu: &Gpu, ranges: &[(&Tensor, u64, u64)]) -> Result<Vec<Vec<f32>>> {
        let mut ring = ReadRing::new(1);
        let ticket = ring.enqueue_ranges(gpu, ranges).await?;
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
