//! Noise schedules and samplers, planned on the CPU.
//!
//! Everything here depends only on the schedule and the sampler options, never on the
//! images: [`plan`] turns a [`SchedulerConfig`] (diffusers' own `scheduler_config.json`) and
//! [`SamplerOptions`] into a [`Plan`], one [`PlannedStep`] per model evaluation, with every
//! coefficient worked out in f64 and rounded to f32 once. The GPU then runs one fused kernel
//! per step (`gpu::sampler_step`) that reads nothing but those coefficients.
//!
//! diffusers' schedulers (0.42) are the reference for every formula and every edge case;
//! the doc comments name the diffusers behaviour each choice mirrors.

pub mod analytic;
mod config;
pub mod inspect;
pub mod noise;
mod plan;
pub mod reference;
mod schedule;
mod timesteps;

use std::fmt;
use std::str::FromStr;

pub use config::{manifest_overrides, SchedulerConfig, SchedulerOverrides};
pub use plan::{check_sampler, plan, Plan, PlannedStep, SamplerOptions, StepCoefficients};
pub use schedule::{alphas_cumprod, betas, flow_alpha_bar, shift_sigma};
pub use timesteps::{flow_sigmas, timesteps};

use crate::error::{EngineError, Result};

/// The error every invalid option or config field turns into: it names the field and the
/// value, and says what would have been accepted. A field of `scheduler_config.json` is a
/// [`EngineError::Scheduler`] error; anything else is a sampling option, an `Input` error.
pub(crate) fn invalid(op: &'static str, field: &str, value: impl fmt::Display, message: &str) -> EngineError {
    if op == config::FILE {
        EngineError::scheduler(field, value, message)
    } else {
        EngineError::input(field, format!("`{field}` = {value}: {message}"))
    }
}

/// Implements `FromStr` (with an error naming the field and the accepted spellings) and
/// `as_str` for a plain enum of diffusers' string options.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The spelling diffusers (or the CLI, for the sampler) uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = EngineError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(invalid(
                        "scheduler",
                        $field,
                        format!("{s:?}"),
                        concat!("expected one of", $(" \"", $text, "\""),+),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Which sampler runs the reverse process.
    SamplerKind, "sampler", {
        /// diffusers' `DDPMScheduler`: ancestral sampling with the posterior variance.
        Ddpm => "ddpm",
        /// diffusers' `DDIMScheduler` with `eta` (0 = deterministic).
        Ddim => "ddim",
        /// diffusers' `DPMSolverMultistepScheduler`: `dpmsolver++`, order 2, `midpoint`,
        /// `lower_order_final`, `final_sigmas_type` zero.
        DpmSolverPp2m => "dpmpp2m",
        /// diffusers' `EulerAncestralDiscreteScheduler` (sigma space).
        EulerAncestral => "euler_a",
        /// Flow matching: diffusers' `FlowMatchEulerDiscreteScheduler`, the probability-flow
        /// ODE dx/ds = v by Euler steps.
        FlowEuler => "flow_euler",
        /// Flow matching: diffusers' `FlowMatchHeunDiscreteScheduler`, Heun's second-order
        /// method (two model evaluations per step but the last: 2N - 1 in all).
        FlowHeun => "flow_heun",
    }
);

string_enum!(
    /// How the betas of the training schedule are laid out (`beta_schedule`).
    BetaSchedule, "beta_schedule", {
        Linear => "linear",
        ScaledLinear => "scaled_linear",
        SquaredcosCapV2 => "squaredcos_cap_v2",
    }
);

string_enum!(
    /// How N inference timesteps are picked from the T training ones (`timestep_spacing`).
    TimestepSpacing, "timestep_spacing", {
        Leading => "leading",
        Trailing => "trailing",
        Linspace => "linspace",
    }
);

string_enum!(
    /// What the model predicts (`prediction_type`).
    PredictionType, "prediction_type", {
        Epsilon => "epsilon",
        VPrediction => "v_prediction",
        Sample => "sample",
    }
);

string_enum!(
    /// DDPM's posterior noise (`variance_type`). `fixed_small_log` is accepted as
    /// `fixed_small`: diffusers' exp(0.5 log v) is the same standard deviation sqrt(v).
    VarianceType, "variance_type", {
        FixedSmall => "fixed_small",
        FixedLarge => "fixed_large",
        /// Analytic-DPM's optimal variance (`sched::analytic`), from the model's
        /// `analytic_dpm.json`: not a diffusers value, a per-run choice (DDPM, and DDIM whose
        /// noise it replaces).
        Analytic => "analytic",
    }
);

impl SamplerKind {
    /// diffusers' default `timestep_spacing` of the scheduler class behind each sampler,
    /// used when the config does not set one.
    pub fn default_spacing(self) -> TimestepSpacing {
        match self {
            SamplerKind::Ddpm | SamplerKind::Ddim => TimestepSpacing::Leading,
            SamplerKind::DpmSolverPp2m | SamplerKind::EulerAncestral => TimestepSpacing::Linspace,
            // Not used: a flow run's levels come from `flow_sigmas`.
            SamplerKind::FlowEuler | SamplerKind::FlowHeun => TimestepSpacing::Linspace,
        }
    }

    /// Whether the sampler integrates a flow-matching model's velocity.
    pub fn is_flow(self) -> bool {
        matches!(self, SamplerKind::FlowEuler | SamplerKind::FlowHeun)
    }

    /// The samplers for a model of this kind (flow or diffusion), in menu order.
    pub fn for_model(flow: bool) -> &'static [SamplerKind] {
        use SamplerKind::*;
        if flow {
            &[FlowEuler, FlowHeun]
        } else {
            &[Ddim, Ddpm, DpmSolverPp2m, EulerAncestral]
        }
    }
}
