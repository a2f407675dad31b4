// Fully connected layer in PyTorch's layout, with optional SiLU before and after:
//   y[r, o] = silu_out?( sum_k silu_in?(x[r, k]) * W[o, k] + b[o] )
//
// diffusers applies SiLU to the *input* of each ResNet's time_emb_proj and to the output of
// time_embedding.linear_1, hence both switches. Rows are the batch (small), so the tile is
// 16 rows x 64 outputs: a 16x16 workgroup, 4 outputs per invocation, K in slices of 32.

struct Params {
    rows: u32,
    inputs: u32,
    outputs: u32,
    // bit 0: SiLU on the input, bit 1: SiLU on the output.
    flags: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

const TILE_R: u32 = 16u;
const TILE_O: u32 = 64u;
const TILE_K: u32 = 32u;
const X_STRIDE: u32 = 33u;
const W_STRIDE: u32 = 65u;

var<workgroup> x_tile: array<f32, 528>;  // [TILE_R][X_STRIDE]
var<workgroup> w_tile: array<f32, 2080>; // [TILE_K][W_STRIDE]

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let p = params;
    let o0 = wid.x * TILE_O;
    let r0 = wid.y * TILE_R;
    var acc = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.inputs; k0 += TILE_K) {
        // 16 x 32 inputs: two per invocation, consecutive invocations along k.
        for (var i = 0u; i < 2u; i++) {
            let e = tid + 256u * i;
            let rr = e / TILE_K;
            let kk = e % TILE_K;
            let r = r0 + rr;
            let k = k0 + kk;
            var v = 0.0;
            if (r < p.rows && k < p.inputs) {
                v = x[r * p.inputs + k];
                if ((p.flags & 1u) != 0u) {
                    v = silu(v);
                }
            }
            x_tile[rr * X_STRIDE + kk] = v;
        }
        // 64 x 32 weights: eight per invocation, consecutive invocations along k.
        for (var i = 0u; i < 8u; i++) {
            let e = tid + 256u * i;
            let oo = e / TILE_K;
            let kk = e % TILE_K;
            let o = o0 + oo;
            let k = k0 + kk;
            var v = 0.0;
            if (o < p.outputs && k < p.inputs) {
                v = weight[o * p.inputs + k];
            }
            w_tile[kk * W_STRIDE + oo] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let xv = x_tile[lid.y * X_STRIDE + kk];
            let w = vec4<f32>(
                w_tile[kk * W_STRIDE + lid.x],
                w_tile[kk * W_STRIDE + lid.x + 16u],
                w_tile[kk * W_STRIDE + lid.x + 32u],
                w_tile[kk * W_STRIDE + lid.x + 48u],
            );
            acc += xv * w;
        }
        workgroupBarrier();
    }

    let r = r0 + lid.y;
    if (r >= p.rows) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let o = o0 + lid.x + 16u * j;
        if (o < p.outputs) {
            var v = acc[j] + bias[o];
            if ((p.flags & 2u) != 0u) {
                v = silu(v);
            }
            y[r * p.outputs + o] = v;
        }
    }
}
