//! The fused sampler step on the CPU: `shaders/sampler_step.wgsl`'s `main` and `init_state`
//! element for element (same coefficients, same Philox keys, same float operations), in
//! place over the session's buffers. `sched::reference` stays the readable oracle.
//! Public because the 2-D lab (`crate::lab`) runs its points through this same update, each
//! point an "image" of two elements.

use crate::sched::noise::{normals4, INIT_STEP};
use crate::sched::StepCoefficients;

/// What a step needs besides its buffers.
#[derive(Clone, Copy)]
pub struct StepParams<'a> {
    pub coeffs: &'a StepCoefficients,
    /// The plan's step index (the noise key).
    pub step: u32,
    pub guidance: f32,
    /// 2 when `model_out` holds [cond; uncond], else 1.
    pub groups: usize,
    pub per_image: usize,
    pub seed: u64,
    pub first_image: u32,
    /// Scale of the next step's model input (`Plan::input_scale(k + 1)`).
    pub next_scale: f32,
}

/// Noise of image `b` (batch position), elements `e..e + len` of it.
fn noise_row(seed: u64, step: u32, image: u32, out: &mut [f32]) {
    for (q, quad) in out.chunks_mut(4).enumerate() {
        let z = normals4(seed, step, image, q as u32);
        quad.copy_from_slice(&z[..quad.len()]);
    }
}

/// One step over `state` [B, P]: x0 (clipped), eps, the update, history, and the next model
/// input in every group of `model_in` [G*B, P]; `noise` is a [P] scratch row. Returns
/// whether every new x_t value is finite (the GPU's `nonfinite.wgsl` check, folded into
/// the loop that already touches each value).
#[allow(clippy::too_many_arguments)] // the kernel's bindings, one argument each
pub fn step(
    p: &StepParams,
    state: &mut [f32],
    model_out: &[f32],
    x0_hat: &mut [f32],
    history: &mut [f32],
    model_in: &mut [f32],
    noise: &mut [f32],
) -> bool {
    let c = p.coeffs;
    let mut finite = true;
    let total = state.len();
    let noisy = c.noise != 0.0;
    for (b, row) in state.chunks_exact_mut(p.per_image).enumerate() {
        if noisy {
            noise_row(p.seed, p.step, p.first_image.wrapping_add(b as u32), noise);
        }
        let base = b * p.per_image;
        for (e, x) in row.iter_mut().enumerate() {
            let idx = base + e;
            let mut m = model_out[idx];
            if p.groups == 2 {
                let u = model_out[total + idx];
                m = u + p.guidance * (m - u);
            }
            let xv = *x;
            let (x0, eps) = c.x0_eps(xv, m);
            let z = if noisy { noise[e] } else { 0.0 };
            let h = if c.reads_prev_x0 { history[idx] } else { 0.0 };
            if c.writes_prev_x0 {
                history[idx] = x0;
            }
            let xn = c.x * xv + c.x0 * x0 + c.eps * eps + c.prev_x0 * h + c.noise * z;
            *x = xn;
            finite &= xn.is_finite();
            x0_hat[idx] = x0;
            for g in 0..p.groups {
                model_in[g * total + idx] = p.next_scale * xn;
            }
        }
    }
    finite
}

/// x_T = sigma * z into `state` (z drawn here, or the unit-variance values already in
/// `state` when `!from_noise`) and the first model input.
#[allow(clippy::too_many_arguments)]
pub fn init(
    state: &mut [f32],
    model_in: &mut [f32],
    groups: usize,
    per_image: usize,
    sigma: f32,
    next_scale: f32,
    from_noise: Option<(u64, u32)>,
    noise: &mut [f32],
) {
    let total = state.len();
    for (b, row) in state.chunks_exact_mut(per_image).enumerate() {
        if let Some((seed, first_image)) = from_noise {
            noise_row(seed, INIT_STEP, first_image.wrapping_add(b as u32), noise);
            row.copy_from_slice(&noise[..per_image]);
        }
        for (e, x) in row.iter_mut().enumerate() {
            *x *= sigma;
            for g in 0..groups {
                model_in[g * total + b * per_image + e] = next_scale * *x;
            }
        }
    }
}
