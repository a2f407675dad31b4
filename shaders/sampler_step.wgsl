// One sampler step, fused: classifier-free guidance, the model output's conversion to x0
// (and eps), clipping, the update of any of the four samplers, the noise draw, and the next
// step's model input. Every coefficient comes from the CPU plan (src/sched/plan.rs):
//
//   m   = uncond + w (cond - uncond)       (CFG: model batch [cond; uncond] of 2B images)
//   x0  = x0_from_x  x + x0_from_out  m,   clamped to +-clip with CLIP
//   eps = eps_from_x x + eps_from_out m    (from the unclipped x0, as diffusers)
//       | eps_from_x x + eps_from_x0 x0    (EPS_FROM_X0: from the clipped x0, diffusers'
//                                            use_clipped_model_output)
//   x'  = c_x x + c_x0 x0 + c_eps eps + c_prev x0_prev + c_noise z
//   model_in[g] = next_scale x'            for each of the G = 1 or 2 halves
//
// `init_state` prepares a run: x_T = init_sigma z (or init_sigma times the x_T already in the
// state) and the first model input.
//
// Noise: Philox4x32-10 keyed by the seed, counter (element / 4, image, step, 0), then
// Box-Muller with our own ln and sin/cos polynomials. src/sched/noise.rs is the same
// algorithm on the CPU, written operation for operation alike: see there for the key layout
// and why the built-in log/cos are not used.
//
// Each invocation handles four consecutive elements (one Philox call when they share a
// quad of one image), grid-striding over any size.

struct Params {
    per_image: u32,    // C * H * W
    batch: u32,        // B, images in the state
    groups: u32,       // G: 2 with CFG, else 1
    grid: u32,         // invocations launched
    flags: u32,
    step: u32,         // noise key: the plan's step index, 0xffffffff for x_T
    first_image: u32,  // global index of image 0 of the batch
    seed_lo: u32,
    seed_hi: u32,
    guidance: f32,
    x0_from_x: f32,
    x0_from_out: f32,
    eps_from_x: f32,
    eps_from_out: f32,
    clip: f32,
    c_x: f32,
    c_x0: f32,
    c_eps: f32,
    c_prev: f32,
    c_noise: f32,      // init: init_sigma
    next_scale: f32,
    eps_from_x0: f32,
    _pad1: u32,
    _pad2: u32,
}

const CFG: u32 = 1u;
const SUPPLIED_NOISE: u32 = 2u;
const CLIP: u32 = 4u;
const READ_PREV: u32 = 8u;
const WRITE_PREV: u32 = 16u;
const NOISE: u32 = 32u;
const INIT_FROM_NOISE: u32 = 64u;
const EPS_FROM_X0: u32 = 128u;

@group(0) @binding(0) var<storage, read> model_out: array<f32>;      // [G*B, C, H, W]
@group(0) @binding(1) var<storage, read> supplied: array<f32>;       // [B, C, H, W] or placeholder
@group(0) @binding(2) var<storage, read_write> state: array<f32>;    // [B, C, H, W]
@group(0) @binding(3) var<storage, read_write> x0_hat: array<f32>;   // [B, C, H, W]
@group(0) @binding(4) var<storage, read_write> history: array<f32>;  // [B, C, H, W] or a stub
@group(0) @binding(5) var<storage, read_write> model_in: array<f32>; // [G*B, C, H, W]
@group(0) @binding(6) var<uniform> params: Params;

// ---- Philox4x32-10 ------------------------------------------------------------------

// The 64-bit product a * b as (hi, lo), from 16-bit halves (WGSL has no 64-bit integers).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var i = 0u; i < 10u; i++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// ---- Box-Muller ---------------------------------------------------------------------

const TWO_POW_M24: f32 = 5.9604645e-8;

// Cephes logf (see noise.rs::ln).
fn ln(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    var e = i32((bits >> 23u) & 0xffu) - 126;
    let m = bitcast<f32>((bits & 0x007fffffu) | 0x3f000000u);
    var f: f32;
    if (m < 0.70710677) {
        e -= 1;
        f = m + m - 1.0;
    } else {
        f = m - 1.0;
    }
    let z = f * f;
    var y = 7.0376836e-2;
    y = y * f - 1.151461e-1;
    y = y * f + 1.16769984e-1;
    y = y * f - 1.2420141e-1;
    y = y * f + 1.4249323e-1;
    y = y * f - 1.6668057e-1;
    y = y * f + 2.0000714e-1;
    y = y * f - 2.4999994e-1;
    y = y * f + 3.333333e-1;
    y = y * f * z;
    let fe = f32(e);
    y += -2.1219444e-4 * fe;
    y += -0.5 * z;
    return (f + y) + 0.693359375 * fe;
}

// (sin, cos) of 2 pi u, u in [0, 1) (see noise.rs::sincos_turn).
fn sincos_turn(u: f32) -> vec2<f32> {
    let q = u * 4.0;
    let k = round(q);
    let r = (q - k) * 1.5707964;
    let z = r * r;
    let s = r + r * z * (-1.6666655e-1 + z * (8.332161e-3 + z * -1.9515296e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.1666646e-2 + z * (-1.3887316e-3 + z * 2.4433157e-5));
    switch (u32(k) & 3u) {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

fn box_muller(u: u32, v: u32) -> vec2<f32> {
    let u1 = (f32(u >> 8u) + 1.0) * TWO_POW_M24;
    let u2 = f32(v >> 8u) * TWO_POW_M24;
    let r = sqrt(max(-2.0 * ln(u1), 0.0));
    let sc = sincos_turn(u2);
    return vec2<f32>(r * sc.y, r * sc.x);
}

// The normals of elements 4 quad .. 4 quad + 3 of `image`.
fn normals4(step_key: u32, image: u32, quad: u32) -> vec4<f32> {
    let r = philox(vec4<u32>(quad, image, step_key, 0u), vec2<u32>(params.seed_lo, params.seed_hi));
    return vec4<f32>(box_muller(r.x, r.y), box_muller(r.z, r.w));
}

// ---- entry points -------------------------------------------------------------------

fn write_model_in(idx: u32, total: u32, v: f32) {
    for (var g = 0u; g < params.groups; g++) {
        model_in[g * total + idx] = v;
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    let total = p.batch * p.per_image;
    let cfg = (p.flags & CFG) != 0u;
    let noisy = (p.flags & NOISE) != 0u;
    let supplied_noise = (p.flags & SUPPLIED_NOISE) != 0u;
    for (var base = gid.x * 4u; base < total; base += p.grid * 4u) {
        var b = base / p.per_image;
        var e = base - b * p.per_image;
        // Cache of the last Philox call: its (image, quad) and four normals.
        var cached = vec2<u32>(0xffffffffu, 0xffffffffu);
        var normals = vec4<f32>(0.0);
        for (var l = 0u; l < 4u; l++) {
            let idx = base + l;
            if (idx >= total) {
                break;
            }
            var m = model_out[idx];
            if (cfg) {
                let u = model_out[total + idx];
                m = u + p.guidance * (m - u);
            }
            let x = state[idx];
            var x0 = p.x0_from_x * x + p.x0_from_out * m;
            if ((p.flags & CLIP) != 0u) {
                // clamp() may turn NaN into a bound (WGSL leaves min/max of NaN to the
                // implementation): keep it NaN, as the CPU step's clamp does, or a run that
                // blew up would pass the non-finite check with clipped garbage.
                x0 = select(clamp(x0, -p.clip, p.clip), x0, is_nan(x0));
            }
            var eps: f32;
            if ((p.flags & EPS_FROM_X0) != 0u) {
                eps = p.eps_from_x * x + p.eps_from_x0 * x0;
            } else {
                eps = p.eps_from_x * x + p.eps_from_out * m;
            }
            var z = 0.0;
            if (noisy) {
                if (supplied_noise) {
                    z = supplied[idx];
                } else {
                    let key = vec2<u32>(b, e / 4u);
                    if (any(key != cached)) {
                        normals = normals4(p.step, p.first_image + b, e / 4u);
                        cached = key;
                    }
                    z = normals[e % 4u];
                }
            }
            var h = 0.0;
            if ((p.flags & READ_PREV) != 0u) {
                h = history[idx];
            }
            if ((p.flags & WRITE_PREV) != 0u) {
                history[idx] = x0;
            }
            let xn = p.c_x * x + p.c_x0 * x0 + p.c_eps * eps + p.c_prev * h + p.c_noise * z;
            state[idx] = xn;
            x0_hat[idx] = x0;
            write_model_in(idx, total, p.next_scale * xn);
            e += 1u;
            if (e == p.per_image) {
                e = 0u;
                b += 1u;
            }
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn init_state(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    let total = p.batch * p.per_image;
    let from_noise = (p.flags & INIT_FROM_NOISE) != 0u;
    for (var base = gid.x * 4u; base < total; base += p.grid * 4u) {
        var b = base / p.per_image;
        var e = base - b * p.per_image;
        var cached = vec2<u32>(0xffffffffu, 0xffffffffu);
        var normals = vec4<f32>(0.0);
        for (var l = 0u; l < 4u; l++) {
            let idx = base + l;
            if (idx >= total) {
                break;
            }
            var z: f32;
            if (from_noise) {
                let key = vec2<u32>(b, e / 4u);
                if (any(key != cached)) {
                    normals = normals4(p.step, p.first_image + b, e / 4u);
                    cached = key;
                }
                z = normals[e % 4u];
            } else {
                z = state[idx];
            }
            let x = p.c_noise * z;
            state[idx] = x;
            write_model_in(idx, total, p.next_scale * x);
            e += 1u;
            if (e == p.per_image) {
                e = 0u;
                b += 1u;
            }
        }
    }
}

/// NaN by its bits: WGSL lets a compiler assume no NaN exists, so `v != v` may fold to false.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
