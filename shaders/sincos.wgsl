// sin and cos of f32 arguments up to ~1000 rad to ~1e-7, the same on every backend: a
// three-part Cody-Waite reduction by pi/2 and Cephes' minimax polynomials (the built-ins are
// only required to be accurate on [-pi, pi]). Prepended to the shaders that embed timesteps.

const TWO_OVER_PI: f32 = 0.636619772367581343;
const PIO2_1: f32 = 1.5703125;
const PIO2_2: f32 = 4.837512969970703125e-4;
const PIO2_3: f32 = 7.54978995489188216e-8;

// sin and cos of a in one go, as (sin, cos).
fn sincos(a: f32) -> vec2<f32> {
    let k = round(a * TWO_OVER_PI);
    var r = fma(-k, PIO2_1, a);
    r = fma(-k, PIO2_2, r);
    r = fma(-k, PIO2_3, r);
    let z = r * r;
    let s = fma(fma(fma(-1.9515295891e-4, z, 8.3321608736e-3), z, -1.6666654611e-1) * z, r, r);
    let c_poly = fma(fma(2.443315711809948e-5, z, -1.388731625493765e-3), z, 4.166664568298827e-2);
    let c = 1.0 + fma(c_poly * z, z, -0.5 * z);
    let q = u32(i32(k) & 3);
    switch q {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}
