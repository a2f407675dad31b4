//! Plain Rust reference of every GPU op: the oracle of the kernel tests and, later, the
//! fallback for browsers without WebGPU. Written to be read, not to be fast: loops in the
//! order of the formula, accumulation in f64.

mod attention;
mod concat;
mod conv2d;
mod group_norm;
mod linear;
mod timestep_embedding;
mod upsample;

pub use attention::{attention, self_attention_block, AttentionBlock};
pub use concat::concat_channels;
pub use conv2d::{conv2d, Conv2dSpec};
pub use group_norm::group_norm;
pub use linear::linear;
pub use timestep_embedding::{timestep_embedding, timestep_frequencies};
pub use upsample::upsample_nearest2x;

pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}
