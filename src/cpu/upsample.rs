/// Nearest 2x upsampling of `planes` planes of h x w.
pub fn upsample_nearest2x(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; planes * 4 * h * w];
    for p in 0..planes {
        for oy in 0..2 * h {
            for ox in 0..2 * w {
                out[(p * 2 * h + oy) * 2 * w + ox] = x[(p * h + oy / 2) * w + ox / 2];
            }
        }
    }
    out
}
