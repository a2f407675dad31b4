//! A model folder on disk, as the CLI, the bench and the tests open it: `config.json`,
//! the weights (the file `manifest.json` names, else `diffusion_pytorch_model.safetensors`
//! or `model.safetensors`) and `scheduler_config.json` (absent: diffusers' defaults).
//! The page fetches the same files over HTTP instead (`web.rs`).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::gpu::Gpu;
use crate::sched::SchedulerConfig;

use super::UNet;

/// The folder's files, read and parsed, except the weights (large; read on demand).
pub struct ModelFolder {
    pub config_json: String,
    /// `scheduler_config.json`'s text, if the folder has one.
    pub scheduler_json: Option<String>,
    pub weights_path: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::input("model", format!("{}: {e}", path.display()))
}

/// A file of the folder, or `None` when it does not exist.
pub fn read_text(dir: &Path, name: &str) -> Result<Option<String>> {
    let p = dir.join(name);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&p, e)),
    }
}

/// A name that stays inside the model folder: a hostile manifest must not make a tool
/// hash or load `../../anything`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The weights file: the one `manifest.json` names, else diffusers' usual names.
pub fn weights_path(dir: &Path, manifest: Option<&serde_json::Value>) -> Result<PathBuf> {
    if let Some(name) = manifest.and_then(|m| m.get("weights")) {
        let name = name.as_str().filter(|n| is_plain_name(n)).ok_or_else(|| EngineError::Checksum {
            file: "manifest.json".into(),
            message: format!("`weights` = {name} is not a file name inside the model folder"),
        })?;
        return Ok(dir.join(name));
    }
    ["diffusion_pytorch_model.safetensors", "model.safetensors"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .ok_or_else(|| {
            EngineError::input(
                "model",
                format!("{} has no diffusion_pytorch_model.safetensors", dir.display()),
            )
        })
}

/// `manifest.json` parsed, if the folder has one; invalid JSON is a corrupt download.
pub fn read_manifest(dir: &Path) -> Result<Option<serde_json::Value>> {
    read_text(dir, "manifest.json")?
        .map(|t| {
            serde_json::from_str(&t).map_err(|e| EngineError::Checksum {
                file: "manifest.json".into(),
                message: format!("is not valid JSON: {e}"),
            })
        })
        .transpose()
}

impl ModelFolder {
    /// Reads the folder's small files and finds its weights file (not read yet).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let config_json = read_text(dir, "config.json")?
            .ok_or_else(|| EngineError::input("model", format!("{} has no config.json", dir.display())))?;
        let scheduler_json = read_text(dir, "scheduler_config.json")?;
        let weights_path = weights_path(dir, manifest.as_ref())?;
        Ok(ModelFolder { config_json, scheduler_json, weights_path })
    }

    pub fn read_weights(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.weights_path).map_err(|e| io(&self.weights_path, e))
    }

    /// `scheduler_config.json`, or diffusers' defaults when the folder has none.
    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        match &self.scheduler_json {
            Some(t) => SchedulerConfig::from_json(t),
            None => Ok(SchedulerConfig::default()),
        }
    }
}

impl UNet {
    /// The model in folder `dir`, checked and uploaded, and its scheduler config.
    pub fn open(gpu: &Gpu, dir: &Path) -> Result<(UNet, SchedulerConfig)> {
        let folder = ModelFolder::open(dir)?;
        let unet = UNet::load(gpu, &folder.config_json, &folder.read_weights()?)?;
        Ok((unet, folder.scheduler()?))
    }
}
