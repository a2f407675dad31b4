//! A model folder parsed and checked on the host, with no GPU: what both backends load
//! from, and the entry point the property tests and fuzzers drive.
//!
//! The order is what keeps hostile input cheap: the config is checked against the caps of
//! [`super::limits`] first (microseconds, no allocation proportional to any number in it);
//! then the safetensors header is parsed (bounded by the file's size) and its tensor count
//! and value count are compared with what the config implies, computed arithmetically;
//! then names, shapes and dtypes are compared with the header; only then is any tensor
//! data converted, each value checked as it is widened to f32.

use std::collections::HashMap;

use super::limits::Budget;
use super::weights::{self, check_dtype, check_names, Weights};
use super::{UNetConfig, UNetSpec};
use crate::error::{EngineError, Result};
use crate::sched::SchedulerConfig;

/// A model's block tree and its checked weights on the host.
pub struct HostModel {
    pub spec: UNetSpec,
    pub weights: Weights,
    /// What the config implies (tensor and parameter counts, largest buffers).
    pub budget: Budget,
}

impl HostModel {
    /// Parses `config.json` and a safetensors file and checks them against each other.
    pub fn load(config_json: &str, safetensors: &[u8]) -> Result<Self> {
        Self::from_config(UNetConfig::from_json(config_json)?, safetensors)
    }

    pub fn from_config(config: UNetConfig, safetensors: &[u8]) -> Result<Self> {
        let budget = config.validate()?;
        let file = weights::open(safetensors)?;
        let mut names = file.names();
        names.sort_unstable();
        let mut values = 0u64;
        let mut shapes = HashMap::with_capacity(names.len());
        for name in &names {
            let view = file.tensor(name).map_err(|e| EngineError::weights(name, e.to_string()))?;
            check_dtype(name, view.dtype())?;
            // Checked even though the safetensors crate bounds each tensor by the file: the
            // sum over tensors is ours, and usize is 32 bits in wasm.
            let n = view.shape().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            values = n
                .and_then(|n| values.checked_add(n))
                .ok_or_else(|| EngineError::weights(name, "its shape's element count overflows 64 bits"))?;
            shapes.insert(*name, view.shape().to_vec());
        }
        let spec = UNetSpec::new(&config);
        let expected = spec.parameters();
        let shape_of = |n: &str| shapes.get(n).map(Vec::as_slice);
        if names.len() as u64 != budget.tensors || values != budget.parameters {
            // The caps keep the expected list short (a few thousand names at most), so the
            // culprit can still be named; the counts are the fallback message.
            check_names(&expected, shape_of, names.iter())?;
            return Err(EngineError::weights(
                "(file)",
                format!(
                    "holds {} tensors of {values} values in all, but config.json implies {} of {}",
                    names.len(),
                    budget.tensors,
                    budget.parameters
                ),
            ));
        }
        check_names(&expected, shape_of, names.iter())?;
        let weights = Weights::convert(&file)?;
        Ok(HostModel { spec, weights, budget })
    }
}

/// Parses and checks a whole model folder the way the page loads it: `config.json`,
/// `scheduler_config.json` (None: diffusers' defaults) and the weights, on the host only.
/// Any input gives a model or a typed error; none panics or allocates more than the caps
/// of [`super::limits`] allow.
pub fn check_model_files(
    config_json: &str,
    scheduler_json: Option<&str>,
    safetensors: &[u8],
) -> Result<(HostModel, SchedulerConfig)> {
    let config = UNetConfig::from_json(config_json)?;
    let scheduler = match scheduler_json {
        Some(text) => SchedulerConfig::from_json(text)?,
        None => SchedulerConfig::default(),
    };
    Ok((HostModel::from_config(config, safetensors)?, scheduler))
}
