/// Concatenates [n, ca, hw] and [n, cb, hw] along channels.
pub fn concat_channels(a: &[f32], b: &[f32], n: usize, ca: usize, cb: usize, hw: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * (ca + cb) * hw);
    for i in 0..n {
        out.extend_from_slice(&a[i * ca * hw..(i + 1) * ca * hw]);
        out.extend_from_slice(&b[i * cb * hw..(i + 1) * cb * hw]);
    }
    out
}
