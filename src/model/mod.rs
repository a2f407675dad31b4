//! Diffusers checkpoints in: `config.json` + safetensors -> a U-Net planned on the GPU.

mod arena;
pub mod blocks;
pub mod config;
pub mod unet;
pub mod weights;

pub use config::UNetConfig;
pub use unet::{Forward, UNet, UNetSpec};
pub use weights::{HostTensor, Weights};
