//! The GPU backend: context, tensors, the pipeline cache and one launcher per WGSL kernel.
//!
//! A launcher checks shapes before it binds anything and returns a [`Dispatch`] that can be
//! encoded any number of times: graphs are planned once and replayed every step.

pub mod attention;
pub mod concat;
pub mod context;
pub mod conv2d;
pub mod group_norm;
pub mod linear;
pub mod nonfinite;
pub mod pipeline;
pub mod readback;
pub mod sampler_step;
pub mod tensor;
pub mod time_mlp;
pub mod timestep_embedding;
pub mod upsample;
pub mod weight_texture;

pub use context::{Gpu, Owned};
pub use pipeline::{Cost, Dispatch, Kernel, KernelDef};
pub use tensor::Tensor;

use crate::error::{EngineError, Result};

/// `ceil(n / per)` as a workgroup count.
pub(crate) fn groups(n: usize, per: usize) -> u32 {
    n.div_ceil(per).min(u32::MAX as usize) as u32
}

/// Checks that `t` has exactly `shape`.
pub(crate) fn expect_shape(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(EngineError::shape(op, format!("{what} has shape {:?}, expected {shape:?}", t.shape())));
    }
    Ok(())
}

/// Unpacks a 4-D shape or says which tensor was not 4-D.
pub(crate) fn dims4(op: &'static str, what: &str, t: &Tensor) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape())
        .map_err(|_| EngineError::shape(op, format!("{what} must be 4-D (NCHW), has shape {:?}", t.shape())))
}

/// Values that travel in a u32 uniform field.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| EngineError::shape(op, format!("{what} = {v} does not fit in 32 bits")))
}

/// How many invocations a grid-stride elementwise kernel launches for `n` values at 4 per
/// invocation, capped so the dispatch stays within the per-dimension limit.
pub(crate) fn grid_stride(gpu: &Gpu, n: usize) -> (u32, u32) {
    let wanted = groups(n.div_ceil(4), 256);
    let groups = wanted.clamp(1, gpu.limits.max_compute_workgroups_per_dimension);
    (groups, groups * 256)
}
