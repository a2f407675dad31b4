//! The sampler's Gaussian noise: a counter-based generator, identical here and in
//! `shaders/sampler_step.wgsl`, so a seed means the same images on every GPU, in the
//! browser and in the CLI, at any batch size and grid position.
//!
//! One draw is keyed by (seed, step, image, element):
//! - Philox4x32-10 (Salmon et al. 2011, Random123; passes BigCrush) with key
//!   `[seed_lo, seed_hi]` (the u64 seed split in two) and counter
//!   `[element / 4, image, step, 0]` gives four u32s for four consecutive elements;
//! - Box-Muller turns each pair into two normals: (u32 >> 8) / 2^24 is uniform on a 2^-24
//!   grid, r = sqrt(-2 ln u1) with u1 in (0, 1], angle 2 pi u2 with u2 in [0, 1). Elements
//!   4q + 0 / 4q + 1 take r cos / r sin of the first pair, 4q + 2 / 4q + 3 of the second.
//!
//! `image` is the global image index (`first_image` + position in the batch), `step` the
//! plan's step index; the initial x_T uses step [`INIT_STEP`] = u32::MAX, a key no step can
//! have. The last counter word is a stream id, 0 for all of the above, free for future use.
//!
//! ln and sin/cos are our own f32 polynomials (Cephes' logf and sinf/cosf on [-pi/4, pi/4]
//! after an exact quadrant split), written the same way in both languages: WGSL's built-ins
//! may be as coarse as 2^-11 absolute for cos, which would make GPU and CPU disagree in the
//! fourth digit. What remains is the order of float operations each compiler picks (fused
//! multiply-adds, sqrt's last bit): a few ulp, ~1e-6 absolute on values up to 5.8 (the
//! largest |z| the 2^-24 grid allows).

/// The step index of the initial noise x_T.
pub const INIT_STEP: u32 = u32::MAX;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Random123's `philox4x32_10`).
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The normals of elements 4 * quad .. 4 * quad + 3 of `image` at `step`.
pub fn normals4(seed: u64, step: u32, image: u32, quad: u32) -> [f32; 4] {
    let r = philox4x32_10([quad, image, step, 0], [seed as u32, (seed >> 32) as u32]);
    let (a, b) = box_muller(r[0], r[1]);
    let (c, d) = box_muller(r[2], r[3]);
    [a, b, c, d]
}

/// The normal of one element.
pub fn normal(seed: u64, step: u32, image: u32, element: u32) -> f32 {
    normals4(seed, step, image, element / 4)[(element % 4) as usize]
}

/// The noise of `batch` images of `per_image` elements each, images `first_image..`,
/// laid out [batch, per_image].
pub fn fill(seed: u64, step: u32, first_image: u32, batch: usize, per_image: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(batch * per_image);
    for b in 0..batch {
        let image = first_image.wrapping_add(b as u32);
        out.extend((0..per_image).map(|e| normal(seed, step, image, e as u32)));
    }
    out
}

/// Two independent N(0, 1) values from two uniform u32s.
pub fn box_muller(u: u32, v: u32) -> (f32, f32) {
    let u1 = ((u >> 8) as f32 + 1.0) * TWO_POW_M24; // (0, 1]: ln never sees 0
    let u2 = (v >> 8) as f32 * TWO_POW_M24; // [0, 1)
    let r = (-2.0 * ln(u1)).max(0.0).sqrt();
    let (s, c) = sincos_turn(u2);
    (r * c, r * s)
}

const TWO_POW_M24: f32 = 5.960_464_5e-8;
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Cephes' logf for positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-8
/// polynomial in m - 1; ~1 ulp.
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let f = if m < SQRT_HALF {
        e -= 1;
        m + m - 1.0
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut y = 7.037_683_6e-2;
    y = y * f - 1.151_461e-1;
    y = y * f + 1.167_699_84e-1;
    y = y * f - 1.242_014_1e-1;
    y = y * f + 1.424_932_3e-1;
    y = y * f - 1.666_805_7e-1;
    y = y * f + 2.000_071_4e-1;
    y = y * f - 2.499_999_4e-1;
    y = y * f + 3.333_333e-1;
    y = y * f * z;
    let fe = e as f32;
    y += -2.121_944_4e-4 * fe;
    y += -0.5 * z;
    (f + y) + 0.693_359_4 * fe
}

/// (sin, cos) of 2 pi u for u in [0, 1): 4u splits exactly into a quadrant k and a
/// remainder in [-1/2, 1/2] (quarter turns), so the polynomials only ever see [-pi/4, pi/4].
pub fn sincos_turn(u: f32) -> (f32, f32) {
    let q = u * 4.0;
    let k = q.round_ties_even();
    let r = (q - k) * std::f32::consts::FRAC_PI_2;
    let z = r * r;
    let s = r + r * z * (-1.666_665_5e-1 + z * (8.332_161e-3 + z * -1.951_529_6e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166_664_6e-2 + z * (-1.388_731_6e-3 + z * 2.443_315_7e-5));
    match (k as u32) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's kat_vectors.
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn ln_and_sincos_match_libm() {
        let mut worst_ln = 0.0f64;
        for i in 0..=(1u32 << 16) {
            let x = ((i << 8) as f32 + 1.0) * TWO_POW_M24;
            let want = (x as f64).ln();
            worst_ln = worst_ln.max((ln(x) as f64 - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst_ln < 3e-7, "ln relative error {worst_ln:e}");
        let mut worst = 0.0f64;
        for i in 0..(1u32 << 16) {
            let u = (i << 8) as f32 * TWO_POW_M24;
            let a = 2.0 * std::f64::consts::PI * u as f64;
            let (s, c) = sincos_turn(u);
            worst = worst.max((s as f64 - a.sin()).abs()).max((c as f64 - a.cos()).abs());
        }
        assert!(worst < 3e-7, "sincos absolute error {worst:e}");
    }

    #[test]
    fn extremes_stay_finite() {
        assert_eq!(box_muller(u32::MAX, 0).0, 0.0); // u1 = 1: r = 0
        let (a, b) = box_muller(0, 0); // u1 = 2^-24: the largest radius
        assert!((a - (48.0f32 * std::f32::consts::LN_2).sqrt()).abs() < 1e-5 && b.abs() < 1e-6, "{a} {b}");
    }
}
