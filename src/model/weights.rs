//! A safetensors file read into host memory as f32, checked tensor by tensor against the
//! parameter list the config implies.
//!
//! f16 and bf16 files are widened to f32 here: the kernels stay single-precision and the
//! download is still half the size.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};

/// One tensor on the host, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a weights file by name.
#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, HostTensor>,
}

impl Weights {
    /// Parses a safetensors file. A truncated file, a corrupt header or an unsupported dtype
    /// is an error naming what was wrong; no tensor is guessed.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| {
            EngineError::WeightsFile(format!(
                "{e} ({} bytes read; a download cut short or a file that is not safetensors looks like this)",
                bytes.len()
            ))
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => {
                    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                Dtype::F16 => {
                    raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                Dtype::BF16 => {
                    raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                other => {
                    return Err(EngineError::weights(
                        &name,
                        format!("dtype {other:?} is not supported (use F32, F16 or BF16)"),
                    ))
                }
            };
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(EngineError::weights(
                    &name,
                    format!("holds a non-finite value ({}) at flat index {i}", data[i]),
                ));
            }
            tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Weights { tensors })
    }

    pub fn from_map(tensors: HashMap<String, HostTensor>) -> Self {
        Weights { tensors }
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Fails on the first expected tensor that is missing or has another shape, then on any
    /// tensor the file has that the config does not explain (a different architecture).
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        let mut missing = Vec::new();
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => missing.push(name.as_str()),
                Some(t) if &t.shape != shape => {
                    return Err(EngineError::weights(
                        name,
                        format!("has shape {:?}, but the config implies {shape:?}", t.shape),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(first) = missing.first() {
            return Err(EngineError::weights(
                first,
                format!(
                    "missing from the file ({} of {} expected tensors are missing; does config.json belong to these weights?)",
                    missing.len(),
                    expected.len()
                ),
            ));
        }
        let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&str> =
            self.tensors.keys().map(String::as_str).filter(|n| !known.contains(n)).collect();
        extra.sort_unstable();
        if let Some(first) = extra.first() {
            return Err(EngineError::weights(
                first,
                format!(
                    "is in the file but not in the architecture config.json describes ({} unexpected tensors)",
                    extra.len()
                ),
            ));
        }
        Ok(())
    }
}
