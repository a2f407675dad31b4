// Multi-head self-attention core over the H*W tokens of an NCHW feature map:
//   out[b, h*d + c, i] = sum_j softmax_j( scale * q_i . k_j ) v_j[c]
// reading q, k, v from one [B, 3C, L] tensor (the fused to_q/to_k/to_v 1x1 projection:
// channels [0, C) are q, [C, 2C) k, [2C, 3C) v; head h owns channels [h*d, (h+1)*d)).
// The projections, the output projection and the residual are 1x1 convolutions around it.
//
// Flash-attention style: a workgroup of 64 invocations owns 64 queries of one (b, h), one
// query each, with q and the running output in registers. Keys and values stream through
// workgroup memory in tiles; the softmax is the online one (running max m and sum l), so
// scores never touch memory, any L works, and exp never sees a positive argument.

struct Params {
    batch: u32,
    heads: u32,
    head_dim: u32,
    tokens: u32,
    channels: u32,
    // Keys per tile: floor(KV_CAPACITY / ceil(head_dim / 4)).
    kv_tile: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

// The head's channels in vec4s, ceil(head_dim / 4), a compile-time constant: the launcher
// rewrites this line per head size (a function-scope array cannot be sized by an override
// constant). With a constant trip count every loop over q and acc unrolls, so the arrays
// live in registers rather than memory (lavapipe's LLVM); with a runtime bound they did not.
const D4: u32 = 4u;
const KV_CAPACITY: u32 = 480u;

var<workgroup> k_tile: array<vec4<f32>, KV_CAPACITY>;
var<workgroup> v_tile: array<vec4<f32>, KV_CAPACITY>;

// Four consecutive channels (from c) of token t, zero past head_dim.
fn load4(base: u32, c: u32, t: u32) -> vec4<f32> {
    let p = params;
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (c + e < p.head_dim) {
            r[e] = qkv[base + (c + e) * p.tokens + t];
        }
    }
    return r;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let b = wid.z;
    let h = wid.y;
    let i = wid.x * 64u + tid;
    let valid = i < p.tokens;
    let image = b * 3u * p.channels * p.tokens;
    let q_base = image + h * p.head_dim * p.tokens;
    let k_base = image + (p.channels + h * p.head_dim) * p.tokens;
    let v_base = image + (2u * p.channels + h * p.head_dim) * p.tokens;

    var q: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        acc[c] = vec4<f32>(0.0);
        q[c] = vec4<f32>(0.0);
        if (valid) {
            q[c] = load4(q_base, 4u * c, i) * p.scale;
        }
    }
    var m = -3.0e38;
    var l = 0.0;

    for (var j0 = 0u; j0 < p.tokens; j0 += p.kv_tile) {
        let nk = min(p.kv_tile, p.tokens - j0);
        // Token-fastest order keeps the global reads of each channel row coalesced.
        for (var e = tid; e < nk * D4; e += 64u) {
            let c = e / nk;
            let j = e - c * nk;
            k_tile[j * D4 + c] = load4(k_base, 4u * c, j0 + j);
            v_tile[j * D4 + c] = load4(v_base, 4u * c, j0 + j);
        }
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < nk; j++) {
                var s = 0.0;
                for (var c = 0u; c < D4; c++) {
                    s += dot(q[c], k_tile[j * D4 + c]);
                }
                if (s > m) {
                    // New running max: rescale what was accumulated under the old one.
                    let correction = exp(m - s);
                    l *= correction;
                    for (var c = 0u; c < D4; c++) {
                        acc[c] *= correction;
                    }
                    m = s;
                }
                let w = exp(s - m);
                l += w;
                for (var c = 0u; c < D4; c++) {
                    acc[c] += w * v_tile[j * D4 + c];
                }
            }
        }
        workgroupBarrier();
    }

    if (!valid) {
        return;
    }
    let o_base = (b * p.channels + h * p.head_dim) * p.tokens + i;
    let inv_l = 1.0 / l;
    for (var c = 0u; c < D4; c++) {
        let a = acc[c] * inv_l;
        for (var e = 0u; e < 4u; e++) {
            if (4u * c + e < p.head_dim) {
                out[o_base + (4u * c + e) * p.tokens] = a[e];
            }
        }
    }
}
