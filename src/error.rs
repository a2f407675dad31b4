//! Every failure the engine can report, as a value with a readable message and a kind.
//!
//! The page shows these messages to visitors, so they say what happened in plain words and
//! name the field, tensor, limit or kernel involved. [`ErrorKind`] is the one taxonomy shared
//! by Rust, the wasm boundary (`src/web.rs` turns an error into a JS object with `kind`,
//! `message`, `field` and `tensor`) and the page: nothing downstream parses message text to
//! find out what kind of failure it was.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, EngineError>;

/// What kind of failure an error is: what the page tells the visitor to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `config.json` is outside the supported subset, inconsistent or out of range.
    Config,
    /// The weights file is unreadable, or a tensor is missing, misshapen or non-finite.
    Weights,
    /// `scheduler_config.json` (or the sampler settings derived from it) is unusable.
    Scheduler,
    /// A request's options or input data (count, class, guidance, noise file...) are invalid.
    Input,
    /// A request or model exceeds a cap: image count, memory budget, adapter limit.
    Limits,
    /// The model produced non-finite values while sampling.
    Numeric,
    /// No usable GPU: no adapter, the device was refused, or its limits are too low.
    GpuUnavailable,
    /// The GPU ran out of memory for an allocation; fewer images may fit.
    GpuOom,
    /// The GPU device was lost; a new one can be created.
    GpuLost,
    /// A file could not be fetched (page only: the engine itself never touches the network).
    Network,
    /// A file's size or SHA-256 does not match `manifest.json`.
    Checksum,
    /// A bug in the engine (a shader that does not compile, a validation error, a misuse).
    Internal,
}

impl ErrorKind {
    /// The kind's name across the wasm boundary and in the page (`gpu-oom`, `config`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Weights => "weights",
            ErrorKind::Scheduler => "scheduler",
            ErrorKind::Input => "input",
            ErrorKind::Limits => "limits",
            ErrorKind::Numeric => "numeric",
            ErrorKind::GpuUnavailable => "gpu-unavailable",
            ErrorKind::GpuOom => "gpu-oom",
            ErrorKind::GpuLost => "gpu-lost",
            ErrorKind::Network => "network",
            ErrorKind::Checksum => "checksum",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    /// A request or model beyond a cap (image count, memory budget): `field` names the knob.
    #[error("{field}: {message}")]
    Limit { field: String, message: String },

    #[error("shader {kernel} failed to compile: {message}")]
    ShaderCompile { kernel: String, message: String },

    /// A WebGPU validation error: the engine built an invalid command (a bug, not bad input).
    #[error("internal error: the GPU rejected a command as invalid: {0}")]
    Validation(String),

    /// The GPU could not allocate `what`; `bytes` is the allocation's size when known.
    #[error("this GPU ran out of memory for {what}; try fewer images")]
    OutOfMemory { what: String, bytes: u64 },

    #[error("the GPU device was lost ({0})")]
    DeviceLost(String),

    #[error("reading a buffer back from the GPU failed: {0}")]
    ReadBack(String),

    /// Tensors of mismatched shapes reached an op: the engine misused itself.
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },

    /// A kernel or code path asked for something it does not implement (engine-internal).
    #[error("{op}: unsupported: {message}")]
    Unsupported { op: &'static str, message: String },

    /// Any other engine bug: a state that should be impossible.
    #[error("internal error: {0}")]
    Internal(String),

    /// A model config field outside the supported subset, out of range, or inconsistent.
    #[error("config.json: `{field}` = {value}: {message}")]
    Config { field: String, value: String, message: String },

    /// A scheduler config field outside the supported subset or range.
    #[error("scheduler_config.json: `{field}` = {value}: {message}")]
    Scheduler { field: String, value: String, message: String },

    /// An invalid option or input of a request (`field` names it: `count`, `guidance`, `noise`...);
    /// the message reads in full on its own.
    #[error("{message}")]
    Input { field: String, message: String },

    /// The weights file is not a readable safetensors file (truncated, corrupt header...).
    #[error("the weights file is unreadable: {0}")]
    WeightsFile(String),

    /// One tensor of the weights file does not match what the config implies, or holds
    /// non-finite or absurd values.
    #[error("weights: tensor `{tensor}`: {message}")]
    Weights { tensor: String, message: String },

    /// A file of the model folder does not match `manifest.json` (size or SHA-256).
    #[error("{file}: {message}")]
    Checksum { file: String, message: String },

    /// Sampling produced NaN or infinity: `step` counts from 1, `what` says where.
    #[error("the model produced non-finite values (NaN or infinity) at step {step} of {steps} ({what})")]
    NonFinite { step: usize, steps: usize, what: String },
}

impl EngineError {
    /// The kind of failure, for the page and for callers that recover from some kinds.
    pub fn kind(&self) -> ErrorKind {
        use EngineError::*;
        match self {
            NoAdapter(_) | RequestDevice(_) | LimitTooLow { .. } => ErrorKind::GpuUnavailable,
            BufferTooLarge { .. } | TooManyWorkgroups { .. } | Limit { .. } => ErrorKind::Limits,
            OutOfMemory { .. } => ErrorKind::GpuOom,
            DeviceLost(_) => ErrorKind::GpuLost,
            ShaderCompile { .. }
            | Validation(_)
            | ReadBack(_)
            | Shape { .. }
            | Unsupported { .. }
            | Internal(_) => ErrorKind::Internal,
            Config { .. } => ErrorKind::Config,
            Scheduler { .. } => ErrorKind::Scheduler,
            Input { .. } => ErrorKind::Input,
            WeightsFile(_) | Weights { .. } => ErrorKind::Weights,
            Checksum { .. } => ErrorKind::Checksum,
            NonFinite { .. } => ErrorKind::Numeric,
        }
    }

    /// The config, scheduler or request field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            EngineError::Config { field, .. }
            | EngineError::Scheduler { field, .. }
            | EngineError::Input { field, .. }
            | EngineError::Limit { field, .. } => Some(field),
            EngineError::LimitTooLow { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The weights tensor the error is about, when there is one.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            EngineError::Weights { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    pub(crate) fn config(field: &str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        EngineError::Config { field: field.to_string(), value: value.to_string(), message: message.into() }
    }

    pub(crate) fn scheduler(field: &str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        EngineError::Scheduler { field: field.to_string(), value: value.to_string(), message: message.into() }
    }

    pub(crate) fn weights(tensor: &str, message: impl Into<String>) -> Self {
        EngineError::Weights { tensor: tensor.to_string(), message: message.into() }
    }

    pub fn input(field: &str, message: impl Into<String>) -> Self {
        EngineError::Input { field: field.to_string(), message: message.into() }
    }

    pub fn limit(field: &str, message: impl Into<String>) -> Self {
        EngineError::Limit { field: field.to_string(), message: message.into() }
    }

    pub fn shape(op: &'static str, message: impl Into<String>) -> Self {
        EngineError::Shape { op, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names_and_fields() {
        let e = EngineError::config("layers_per_block", 1048576, "must be in 1..=4");
        assert_eq!((e.kind().as_str(), e.field()), ("config", Some("layers_per_block")));
        let e = EngineError::weights("conv_in.weight", "holds NaN");
        assert_eq!((e.kind().as_str(), e.tensor()), ("weights", Some("conv_in.weight")));
        assert_eq!(
            EngineError::OutOfMemory { what: "64 images".into(), bytes: 0 }.kind().as_str(),
            "gpu-oom"
        );
        assert_eq!(EngineError::DeviceLost("destroyed".into()).kind().as_str(), "gpu-lost");
        assert_eq!(EngineError::Validation("x".into()).kind(), ErrorKind::Internal);
        let e = EngineError::NonFinite { step: 3, steps: 20, what: "x_t".into() };
        assert_eq!(e.kind(), ErrorKind::Numeric);
        assert!(e.to_string().contains("at step 3 of 20"));
    }
}
