//! Every failure the engine can report, as a value with a readable message.
//!
//! The page shows these messages to visitors, so they say what happened in plain words and
//! name the limit, shape or kernel involved.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum EngineError {
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    #[error("the GPU refused to create a device: {0}")]
    RequestDevice(String),

    #[error("the GPU's {name} is {available}, but this engine needs at least {required}")]
    LimitTooLow { name: &'static str, required: u64, available: u64 },

    #[error("a buffer of {bytes} bytes for {what} exceeds this GPU's maxStorageBufferBindingSize of {limit} bytes")]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },

    #[error("dispatch of {groups} workgroups along one dimension for {kernel} exceeds this GPU's limit of {limit}")]
    TooManyWorkgroups { kernel: &'static str, groups: u64, limit: u64 },

    #[error("shader {kernel} failed to compile: {message}")]
    ShaderCompile { kernel: String, message: String },

    #[error("GPU validation error: {0}")]
    Validation(String),

    #[error("the GPU device was lost ({0}); reload to start a new one")]
    DeviceLost(String),

    #[error("reading a buffer back from the GPU failed: {0}")]
    ReadBack(String),

    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },

    #[error("{op}: unsupported: {message}")]
    Unsupported { op: &'static str, message: String },

    /// A model config field outside the supported subset, or inconsistent with another.
    #[error("config.json: `{field}` = {value}: {message}")]
    Config { field: String, value: String, message: String },

    /// The weights file is not a readable safetensors file (truncated, corrupt header...).
    #[error("the weights file is unreadable: {0}")]
    WeightsFile(String),

    /// One tensor of the weights file does not match what the config implies.
    #[error("weights: tensor `{tensor}`: {message}")]
    Weights { tensor: String, message: String },
}

impl EngineError {
    pub(crate) fn config(field: &str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        EngineError::Config { field: field.to_string(), value: value.to_string(), message: message.into() }
    }

    pub(crate) fn weights(tensor: &str, message: impl Into<String>) -> Self {
        EngineError::Weights { tensor: tensor.to_string(), message: message.into() }
    }

    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        EngineError::Shape { op, message: message.into() }
    }
}
