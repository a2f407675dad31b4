//! The fused sampler step on the CPU, element by element in the order the kernel
//! (`shaders/sampler_step.wgsl`) computes it: the oracle of the kernel tests and a fallback
//! for a host without WebGPU. All slices are flat NCHW.

use super::noise;
use super::StepCoefficients;
use crate::error::{EngineError, Result};

/// Where the step's Gaussian noise comes from.
#[derive(Clone, Copy, Debug)]
pub enum Noise<'a> {
    /// The generator of [`noise`], keyed by (seed, step index, first_image + b, element).
    Generated { seed: u64, step: u32, first_image: u32 },
    /// Caller-supplied values, one per state element.
    Supplied(&'a [f32]),
}

/// The guided model output: with `groups` = 2 the model batch is [cond; uncond] and the
/// result is uncond + w (cond - uncond); with 1 it is the output itself.
pub fn guide(model_out: &[f32], groups: usize, guidance: f32) -> Vec<f32> {
    if groups == 1 {
        return model_out.to_vec();
    }
    let half = model_out.len() / 2;
    model_out[..half].iter().zip(&model_out[half..]).map(|(&c, &u)| u + guidance * (c - u)).collect()
}

/// One step: updates `x` ([B, per_image]) in place and `prev_x0` (same length) when the
/// step keeps history; returns x0_hat. `model_out` holds `groups` (1 or 2) * B images.
#[allow(clippy::too_many_arguments)] // the kernel's bindings, one argument each
pub fn step(
    c: &StepCoefficients,
    guidance: f32,
    groups: usize,
    per_image: usize,
    x: &mut [f32],
    model_out: &[f32],
    prev_x0: &mut [f32],
    noise_src: Noise<'_>,
) -> Result<Vec<f32>> {
    let n = x.len();
    let supplied = match noise_src {
        Noise::Supplied(z) => z.len(),
        Noise::Generated { .. } => n,
    };
    if !(groups == 1 || groups == 2)
        || per_image == 0
        || !n.is_multiple_of(per_image)
        || model_out.len() != groups * n
        || prev_x0.len() != n
        || supplied != n
    {
        return Err(EngineError::shape(
            "sampler step (cpu)",
            format!(
                "x {n} values ({per_image} per image), model_out {} for {groups} group(s), prev_x0 {}, noise {supplied}",
                model_out.len(),
                prev_x0.len()
            ),
        ));
    }
    let m = guide(model_out, groups, guidance);
    let mut x0_hat = vec![0.0; x.len()];
    for i in 0..x.len() {
        let xi = x[i];
        let mut x0 = c.x0_from_x * xi + c.x0_from_out * m[i];
        if let Some(r) = c.clip {
            x0 = x0.clamp(-r, r);
        }
        let eps = if c.eps_uses_x0 {
            c.eps_from_x * xi + c.eps_from_x0 * x0
        } else {
            c.eps_from_x * xi + c.eps_from_out * m[i]
        };
        let z = if c.noise != 0.0 {
            match noise_src {
                Noise::Supplied(z) => z[i],
                Noise::Generated { seed, step, first_image } => {
                    let image = first_image.wrapping_add((i / per_image) as u32);
                    noise::normal(seed, step, image, (i % per_image) as u32)
                }
            }
        } else {
            0.0
        };
        let h = if c.reads_prev_x0 { prev_x0[i] } else { 0.0 };
        if c.writes_prev_x0 {
            prev_x0[i] = x0;
        }
        x[i] = c.x * xi + c.x0 * x0 + c.eps * eps + c.prev_x0 * h + c.noise * z;
        x0_hat[i] = x0;
    }
    Ok(x0_hat)
}
