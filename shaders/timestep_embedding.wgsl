// Sinusoidal timestep embedding, diffusers' get_timestep_embedding:
//   arg[n, i] = t[n] * freq[i],  i < half = dim / 2
//   emb[n]    = [sin(arg), cos(arg)]   or [cos(arg), sin(arg)] with flip_sin_to_cos,
//               zero-padded by one column when dim is odd.
//
// The frequencies come precomputed from the CPU, rounded in f32 exactly as PyTorch rounds
// them, so arg is the same f32 product PyTorch forms. Arguments reach ~1000 rad, where the
// built-in sin/cos are only required to be accurate to 2^-11 on [-pi, pi] after the
// driver's own reduction; we reduce by pi/2 in three parts (Cody-Waite) and evaluate
// Cephes' minimax polynomials, which gives ~1e-7 on every backend. One invocation writes
// the sin and the cos of one (n, i).

struct Params {
    batch: u32,
    dim: u32,
    flip: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> timesteps: array<f32>;
@group(0) @binding(1) var<storage, read> freqs: array<f32>;
@group(0) @binding(2) var<storage, read_write> emb: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

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

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    let half = p.dim / 2u;
    if (gid.x >= p.batch * half) {
        return;
    }
    let n = gid.x / half;
    let i = gid.x - n * half;
    let sc = sincos(timesteps[n] * freqs[i]);
    let row = n * p.dim;
    var first = sc.x;
    var second = sc.y;
    if (p.flip == 1u) {
        first = sc.y;
        second = sc.x;
    }
    emb[row + i] = first;
    emb[row + half + i] = second;
    if (i == 0u && p.dim % 2u == 1u) {
        emb[row + p.dim - 1u] = 0.0;
    }
}
