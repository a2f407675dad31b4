/// The `dim / 2` frequencies of diffusers' `get_timestep_embedding`, rounded in f32 the
/// way PyTorch computes them (`exp(-ln(max_period) * i / (half - freq_shift))`, every
/// step in float32), so that `t * freq` is the same f32 product on every backend.
pub fn timestep_frequencies(dim: usize, freq_shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let log_period = -(max_period as f64).ln() as f32;
    (0..half)
        .map(|i| {
            let exponent = (log_period * i as f32) / (half as f32 - freq_shift);
            (exponent as f64).exp() as f32
        })
        .collect()
}

/// [batch, dim] embedding of (possibly fractional) timesteps; see `timestep_frequencies`.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Vec<f32> {
    let freqs = timestep_frequencies(dim, freq_shift, 10_000.0);
    let half = dim / 2;
    let mut out = vec![0.0f32; timesteps.len() * dim];
    for (n, &t) in timesteps.iter().enumerate() {
        let row = &mut out[n * dim..(n + 1) * dim];
        for (i, &f) in freqs.iter().enumerate() {
            let arg = (t * f) as f64;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos { (c, s) } else { (s, c) };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}
