//! Diffusers checkpoints in: `config.json` + safetensors -> a U-Net planned on the GPU.

mod arena;
pub mod blocks;
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod folder;
pub mod limits;
mod load;
pub mod unet;
pub mod weights;

pub use config::UNetConfig;
#[cfg(not(target_arch = "wasm32"))]
pub use folder::ModelFolder;
pub use limits::Budget;
pub use load::{check_model_files, HostModel};
pub use unet::{Forward, UNet, UNetSpec};
pub use weights::{HostTensor, Weights};
