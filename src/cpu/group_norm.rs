/// GroupNorm of `x` [n, c, h*w] (`hw` = h*w), per-channel affine, optional SiLU after.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Vec<f32> {
    let cg = c / groups;
    let count = (cg * hw) as f64;
    let mut out = vec![0.0f32; x.len()];
    for b in 0..n {
        for g in 0..groups {
            let start = (b * c + g * cg) * hw;
            let run = &x[start..start + cg * hw];
            let mean = run.iter().map(|&v| v as f64).sum::<f64>() / count;
            let var = run.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / count;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (i, &v) in run.iter().enumerate() {
                let ch = g * cg + i / hw;
                let y = ((v as f64 - mean) * rstd * gamma[ch] as f64 + beta[ch] as f64) as f32;
                out[start + i] = if silu { super::silu(y) } else { y };
            }
        }
    }
    out
}
