//! The activation buffers of one planned forward pass, and how another pass of the same
//! shape can run on the very same buffers.
//!
//! A batch too large for one storage binding is run as several equal shards, one after the
//! other inside a step. Each shard needs its own bind groups (its own input, timesteps and
//! classes), but the activations in between are dead once a shard's pass is done, so every
//! shard after the first is planned over the first shard's buffers: planning is
//! deterministic, so the k-th request of a replanned pass asks for exactly the shape of the
//! k-th buffer of the original.

use crate::error::{EngineError, Result};
use crate::gpu::{Gpu, Tensor};

pub(crate) struct Arena {
    tensors: Vec<Tensor>,
    /// `Some(next)` while replaying another pass's buffers.
    reuse: Option<usize>,
}

impl Arena {
    pub fn new() -> Self {
        Arena { tensors: Vec::new(), reuse: None }
    }

    /// An arena handing out `other`'s buffers, in the order `other` allocated them.
    pub fn reusing(other: &Arena) -> Self {
        Arena { tensors: other.tensors.clone(), reuse: Some(0) }
    }

    pub fn alloc(&mut self, gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Tensor> {
        self.alloc_with_stats(gpu, label, shape, 0)
    }

    /// A buffer with `tiles` partial-statistics slots per (image, channel) after the data
    /// ([`Tensor::with_stats`]).
    pub fn alloc_with_stats(
        &mut self,
        gpu: &Gpu,
        label: &str,
        shape: &[usize],
        tiles: usize,
    ) -> Result<Tensor> {
        let Some(next) = self.reuse.as_mut() else {
            let t = Tensor::with_stats(gpu, label, shape, tiles)?;
            self.tensors.push(t.clone());
            return Ok(t);
        };
        let t =
            self.tensors.get(*next).filter(|t| t.shape() == shape && t.stats_tiles() == tiles).ok_or_else(
                || {
                    EngineError::shape(
                        "UNet2DModel",
                        format!("shard plan diverged at buffer {next} ({label} {shape:?}); an engine bug"),
                    )
                },
            )?;
        *next += 1;
        Ok(t.clone())
    }

    /// Bytes of every buffer together: the pass's share of GPU memory.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.buffer().size()).sum()
    }

    /// The largest single buffer, in bytes: what must fit one storage binding.
    pub fn largest_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.buffer().size()).max().unwrap_or(0)
    }
}
