// The whole time embedding of UNet2DModel in one dispatch, one workgroup per image:
//   time_proj = sinusoid(t)                                   [c0]  (timestep_embedding.wgsl)
//   hidden    = silu(linear_1(time_proj))                     [d]
//   emb       = linear_2(hidden) + class_embedding[label]     [d]
//   temb      = stacked time_emb_proj(silu(emb))              [width] (every ResNet's slice)
// Each stage's vector stays in workgroup memory for the next, so the four dependent steps
// cost one dispatch and two barriers instead of four dispatches. The weights arrive as one
// packed buffer (UNet::from_weights): w1 [d, c0], b1, w2 [d, d], b2, wp [width, d], bp.
// `sincos` comes from sincos.wgsl (prepended).

struct Params {
    c0: u32,
    d: u32,
    width: u32,
    flip: u32,
    has_class: u32,
}

@group(0) @binding(0) var<storage, read> timesteps: array<f32>;
@group(0) @binding(1) var<storage, read> freqs: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> class_emb: array<f32>;
@group(0) @binding(4) var<storage, read_write> time_proj: array<f32>;
@group(0) @binding(5) var<storage, read_write> emb: array<f32>;
@group(0) @binding(6) var<storage, read_write> temb: array<f32>;
@group(0) @binding(7) var<uniform> params: Params;

const WG: u32 = 256u;
// Largest c0 and d (= 4 c0 in diffusers) this kernel takes; = MAX_D in time_mlp.rs.
const MAX_D: u32 = 1024u;

var<workgroup> v0: array<f32, MAX_D>; // time_proj, then silu(emb)
var<workgroup> v1: array<f32, MAX_D>; // hidden

// y = W x + b for rows tid, tid + WG, ..: W [rows, k] at `w`, b at `b`, x in v0 or v1.
fn row_dot(w: u32, k: u32, o: u32, from_v1: bool) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < k; i++) {
        var x = v0[i];
        if (from_v1) {
            x = v1[i];
        }
        s += weights[w + o * k + i] * x;
    }
    return s;
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let n = wid.x;
    let half = p.c0 / 2u;
    for (var i = tid; i < half; i += WG) {
        let sc = sincos(timesteps[n] * freqs[i]);
        var first = sc.x;
        var second = sc.y;
        if (p.flip == 1u) {
            first = sc.y;
            second = sc.x;
        }
        v0[i] = first;
        v0[half + i] = second;
        time_proj[n * p.c0 + i] = first;
        time_proj[n * p.c0 + half + i] = second;
    }
    if (tid == 0u && p.c0 % 2u == 1u) {
        v0[p.c0 - 1u] = 0.0;
        time_proj[n * p.c0 + p.c0 - 1u] = 0.0;
    }
    workgroupBarrier();

    let w1 = 0u;
    let b1 = w1 + p.d * p.c0;
    let w2 = b1 + p.d;
    let b2 = w2 + p.d * p.d;
    let wp = b2 + p.d;
    let bp = wp + p.width * p.d;
    for (var o = tid; o < p.d; o += WG) {
        let h = row_dot(w1, p.c0, o, false) + weights[b1 + o];
        v1[o] = h / (1.0 + exp(-h));
    }
    // Past this barrier nobody reads time_proj from v0 any more: v0 takes silu(emb).
    workgroupBarrier();
    for (var o = tid; o < p.d; o += WG) {
        var v = row_dot(w2, p.d, o, true) + weights[b2 + o];
        if (p.has_class == 1u) {
            v += class_emb[n * p.d + o];
        }
        emb[n * p.d + o] = v;
        v0[o] = v / (1.0 + exp(-v));
    }
    workgroupBarrier();
    for (var o = tid; o < p.width; o += WG) {
        temb[n * p.width + o] = row_dot(wp, p.d, o, false) + weights[bp + o];
    }
}
