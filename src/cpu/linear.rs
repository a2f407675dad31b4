/// `y[r, o] = silu_out?(sum_k silu_in?(x[r, k]) * w[o, k] + b[o])`, PyTorch's layout.
// The arguments mirror the GPU launcher's one for one, which keeps the two easy to compare.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    rows: usize,
    inputs: usize,
    weight: &[f32],
    bias: &[f32],
    outputs: usize,
    silu_in: bool,
    silu_out: bool,
) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * outputs];
    for r in 0..rows {
        for o in 0..outputs {
            let mut acc = bias[o] as f64;
            for k in 0..inputs {
                let mut xv = x[r * inputs + k];
                if silu_in {
                    xv = super::silu(xv);
                }
                acc += xv as f64 * weight[o * inputs + k] as f64;
            }
            let v = acc as f32;
            y[r * outputs + o] = if silu_out { super::silu(v) } else { v };
        }
    }
    y
}
