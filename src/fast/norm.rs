//! GroupNorm (+SiLU) over one image [c, hw], and the vectorisable SiLU the kernels share.

/// GroupNorm's parameters.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub groups: usize,
    pub eps: f32,
}

/// Lane count of the partial sums: eight independent accumulators let LLVM keep them in
/// vector registers (f32 addition is not associative, so a single accumulator never
/// vectorises).
const LANES: usize = 8;

fn sum(v: &[f32]) -> f64 {
    // Blocks of 1024 summed in f32 lanes, blocks summed in f64: the rounding error of a
    // 50k-element group stays near f32 epsilon, not 50k times it.
    let mut total = 0.0f64;
    for block in v.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for l in 0..LANES {
                acc[l] += c[l];
            }
        }
        total += acc.iter().sum::<f32>() as f64 + rest as f64;
    }
    total
}

fn sum_sq_dev(v: &[f32], mean: f32) -> f64 {
    let mut total = 0.0f64;
    for block in v.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest: f32 = chunks.remainder().iter().map(|&x| (x - mean) * (x - mean)).sum();
        for c in chunks {
            for l in 0..LANES {
                let d = c[l] - mean;
                acc[l] += d * d;
            }
        }
        total += acc.iter().sum::<f32>() as f64 + rest as f64;
    }
    total
}

impl Norm {
    /// `out = act(gamma (x - mean) / sqrt(var + eps) + beta)` per group of `x` [c, hw], with
    /// `act` SiLU when `silu`, else the identity. Two-pass mean and variance (as PyTorch).
    pub fn run(&self, x: &[f32], c: usize, hw: usize, silu: bool, out: &mut [f32]) {
        let cg = c / self.groups;
        let count = (cg * hw) as f64;
        for g in 0..self.groups {
            let run = &x[g * cg * hw..(g + 1) * cg * hw];
            let mean = sum(run) / count;
            let var = sum_sq_dev(run, mean as f32) / count;
            let rstd = (1.0 / (var + self.eps as f64).sqrt()) as f32;
            for ch in g * cg..(g + 1) * cg {
                let a = self.gamma[ch] * rstd;
                let b = self.beta[ch] - mean as f32 * a;
                let src = &x[ch * hw..(ch + 1) * hw];
                let dst = &mut out[ch * hw..(ch + 1) * hw];
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = v * a + b;
                }
                if silu {
                    silu_in_place(dst);
                }
            }
        }
    }
}

/// `v / (1 + e^-v)` in place.
pub fn silu_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x /= 1.0 + exp(-*x);
    }
}

/// e^x for f32, branch-free so loops over it vectorise: Cephes' expf (x = n ln2 + r,
/// |r| <= ln2/2, degree-6 polynomial, 2^n built in the exponent bits); relative error
/// ~2 ulp on [-87, 88], inputs outside clamped (e^-88 underflows to ~0, e^88 is past any
/// activation this model makes).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick: `f32::round` is a libm call without SSE4.1,
    // which keeps the loops around it scalar.
    const SHIFTER: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    // ln2 split in two so n * ln2 is exact in its high part.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1_f64 as f32;
    let e = p * r * r + r + 1.0;
    f32::from_bits(((n as i32 + 127) as u32) << 23) * e
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((super::exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
    }
}
