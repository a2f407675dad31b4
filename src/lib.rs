//! A class-conditional diffusion U-Net sampler on WebGPU: hand-written WGSL kernels driven
//! from Rust, natively (Vulkan/Metal/DX12) and in the browser (wasm32 + WebGPU).

pub mod backend;
pub mod cpu;
pub mod error;
pub mod fast;
pub mod gpu;
pub mod image;
pub mod lab;
pub mod model;
pub mod pipeline;
pub mod sched;
pub mod selftest;
#[cfg(target_arch = "wasm32")]
pub mod web;
#[cfg(target_arch = "wasm32")]
pub mod web_lab;
pub mod web_model;

pub use error::{EngineError, ErrorKind, Result};
