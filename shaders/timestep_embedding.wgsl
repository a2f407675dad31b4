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
// the sin and the cos of one (n, i). `sincos` comes from sincos.wgsl (prepended).

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
