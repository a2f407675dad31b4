//! A safetensors file read into host memory as f32, checked tensor by tensor against the
//! parameter list the config implies.
//!
//! f16 and bf16 files are widened to f32 here: the kernels stay single-precision and the
//! download is still half the size.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use super::limits::MAX_ABS_WEIGHT;
use crate::error::{EngineError, Result};

/// Parses the header of a safetensors file (offsets, shapes and their products are checked
/// by the safetensors crate, with overflow checks); no tensor data is read yet.
pub(crate) fn open(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        EngineError::WeightsFile(format!(
            "{e} ({} bytes read; a download cut short or a file that is not safetensors looks like this)",
            bytes.len()
        ))
    })
}

/// Refuses a dtype the loader does not widen to f32.
pub(crate) fn check_dtype(name: &str, dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(EngineError::weights(
            name,
            format!("dtype {other:?} is not supported (use F32, F16 or BF16)"),
        )),
    }
}

/// One tensor's bytes as f32, each value checked in the same pass: NaN, infinity or a
/// magnitude above [`MAX_ABS_WEIGHT`] would turn every sampled image into NaN (or noise)
/// without an error, so the tensor is named instead.
fn widen(name: &str, dtype: Dtype, raw: &[u8]) -> Result<Vec<f32>> {
    fn run<const W: usize>(name: &str, raw: &[u8], to_f32: impl Fn([u8; W]) -> f32) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(raw.len() / W);
        for (i, b) in raw.chunks_exact(W).enumerate() {
            let v = to_f32(b.try_into().expect("chunks_exact yields W bytes"));
            if v.is_nan() || v.abs() > MAX_ABS_WEIGHT {
                let what = if v.is_finite() {
                    format!("holds {v:e} at flat index {i}; weights beyond +-{MAX_ABS_WEIGHT:e} are refused as corrupt (trained models stay below ~100)")
                } else {
                    format!("holds a non-finite value ({v}) at flat index {i}")
                };
                return Err(EngineError::weights(name, what));
            }
            out.push(v);
        }
        Ok(out)
    }
    check_dtype(name, dtype)?;
    match dtype {
        Dtype::F32 => run::<4>(name, raw, f32::from_le_bytes),
        Dtype::F16 => run::<2>(name, raw, |b| half::f16::from_le_bytes(b).to_f32()),
        _ => run::<2>(name, raw, |b| half::bf16::from_le_bytes(b).to_f32()),
    }
}

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
    /// is an error naming what was wrong; no tensor is guessed. Every value is checked as it
    /// is widened (see [`widen`]).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        Self::convert(&open(bytes)?)
    }

    /// Widens every tensor of a parsed file to f32, in name order so that the first bad
    /// tensor reported does not depend on hashing.
    pub(crate) fn convert(file: &SafeTensors) -> Result<Self> {
        let mut names = file.names();
        names.sort_unstable();
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            let view = file.tensor(name).map_err(|e| EngineError::weights(name, e.to_string()))?;
            let data = widen(name, view.dtype(), view.data())?;
            tensors.insert(name.to_string(), HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Weights { tensors })
    }

    pub fn from_map(tensors: HashMap<String, HostTensor>) -> Self {
        Weights { tensors }
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// Every tensor with its name, in no particular order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
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
        check_names(expected, |n| self.tensors.get(n).map(|t| t.shape.as_slice()), self.tensors.keys())
    }
}

/// [`Weights::check`] over any listing of a file's tensors (also its header, before the
/// data is converted): `shape_of` looks a name up, `names` lists all of them.
pub(crate) fn check_names<'a, S: AsRef<str> + 'a>(
    expected: &[(String, Vec<usize>)],
    shape_of: impl Fn(&str) -> Option<&'a [usize]>,
    names: impl Iterator<Item = S>,
) -> Result<()> {
    let mut missing = Vec::new();
    for (name, shape) in expected {
        match shape_of(name) {
            None => missing.push(name.as_str()),
            Some(s) if s != shape.as_slice() => {
                return Err(EngineError::weights(
                    name,
                    format!("has shape {s:?}, but the config implies {shape:?}"),
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
    let mut extra: Vec<String> =
        names.filter(|n| !known.contains(n.as_ref())).map(|n| n.as_ref().to_string()).collect();
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
