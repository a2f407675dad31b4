// Multi-head self-attention over the H*W tokens of an NCHW feature map:
//   heads[b, h*d + c, i] = sum_j softmax_j( scale * q_i . k_j ) v_j[c]
// reading q, k, v from one [B, 3C, L] tensor (the fused to_q/to_k/to_v 1x1 projection:
// channels [0, C) are q, [C, 2C) k, [2C, 3C) v; head h owns channels [h*d, (h+1)*d)).
//
// Flash-attention style: a workgroup of QUERIES invocations owns as many queries, one
// each (two with PAIRS, `main` on software adapters), with q and the running output in
// registers. Keys and values stream through workgroup
// memory in tiles; the softmax is the online one (running max m and sum l), so scores
// never touch memory, any L works, and exp never sees a positive argument.
//
// Two entry points: `main` writes the heads' outputs (one workgroup per (queries, head,
// image)); `fused` (the U-Net's) goes on to the output projection, its bias, the residual
// and the output scale, so the attention block is two dispatches (q/k/v, then this).

struct Params {
    batch: u32,
    heads: u32,
    tokens: u32,
    channels: u32,
    // Keys per tile: floor(KV_CAPACITY / D4).
    kv_tile: u32,
    scale: f32,
    // `fused`: 1 / rescale_output_factor, and the partial-statistics slots per (image,
    // channel) written after the output (0: none).
    out_scale: f32,
    tiles_out: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
// `fused` only: to_out's [C, C] weight and [C] bias, and the block's input (the residual).
@group(0) @binding(3) var<storage, read> out_weight: array<f32>;
@group(0) @binding(4) var<storage, read> out_bias: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

// The head size, a compile-time constant: the launcher rewrites this line per head size
// (a function-scope array cannot be sized by an override constant). With constant trip
// counts every loop over q and acc unrolls and every `< HEAD_DIM` mask folds, so the arrays
// live in registers rather than memory (lavapipe's LLVM); with a runtime bound they did not.
const HEAD_DIM: u32 = 16u;
const D4: u32 = (HEAD_DIM + 3u) / 4u;
const KV_CAPACITY: u32 = 480u;
// Invocations per workgroup: 64 for `main` (32 with PAIRS on maps of at most 64 tokens);
// `fused` takes fewer on small maps (`fused_queries` in attention.rs), where whole heads
// per workgroup would leave few workgroups.
override QUERIES: u32 = 64u;

var<workgroup> k_tile: array<vec4<f32>, KV_CAPACITY>;
var<workgroup> v_tile: array<vec4<f32>, KV_CAPACITY>;

// Four consecutive channels (from c) of token t, zero past the head.
fn load4(base: u32, c: u32, t: u32) -> vec4<f32> {
    let p = params;
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (c + e < HEAD_DIM) {
            r[e] = qkv[base + (c + e) * p.tokens + t];
        }
    }
    return r;
}

// `main` only: each invocation computes two queries, i and i + QUERIES, reading each key's
// and value's vec4s from workgroup memory once for both. A software adapter turns every
// such read into a per-lane loop (llvmpipe) or gather (SwiftShader): there the pairs halve
// the reads per multiply-add (`Gpu::is_software`); on a GPU they would halve the workgroups.
override PAIRS: bool = false;

fn start_q(q_base: u32, i: u32, valid: bool) -> array<vec4<f32>, D4> {
    var q: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        q[c] = vec4<f32>(0.0);
        if (valid) {
            q[c] = load4(q_base, 4u * c, i) * params.scale;
        }
    }
    return q;
}

struct Outputs {
    a: array<vec4<f32>, D4>,
    b: array<vec4<f32>, D4>,
}

// Head h's output for queries i (and, with PAIRS, i2) of image b (zero past the head;
// anything for an invalid query). Call in uniform control flow: it has barriers. The
// second query's state is written out beside the first's rather than in a struct or an
// array of two: lavapipe's compiler kept those in memory (2x slower).
fn head_outputs(b: u32, h: u32, i: u32, i2: u32, tid: u32, valid: bool, valid2: bool) -> Outputs {
    let p = params;
    let image = b * 3u * p.channels * p.tokens;
    let q_base = image + h * HEAD_DIM * p.tokens;
    let k_base = image + (p.channels + h * HEAD_DIM) * p.tokens;
    let v_base = image + (2u * p.channels + h * HEAD_DIM) * p.tokens;

    let q = start_q(q_base, i, valid);
    let q2 = start_q(q_base, i2, PAIRS && valid2);
    var acc: array<vec4<f32>, D4>;
    var acc2: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        acc[c] = vec4<f32>(0.0);
        acc2[c] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;
    var m2 = -3.0e38;
    var l2 = 0.0;
    let some_valid = valid || (PAIRS && valid2);

    for (var j0 = 0u; j0 < p.tokens; j0 += p.kv_tile) {
        let nk = min(p.kv_tile, p.tokens - j0);
        // Token-fastest order keeps the global reads of each channel row coalesced.
        for (var e = tid; e < nk * D4; e += QUERIES) {
            let c = e / nk;
            let j = e - c * nk;
            k_tile[j * D4 + c] = load4(k_base, 4u * c, j0 + j);
            v_tile[j * D4 + c] = load4(v_base, 4u * c, j0 + j);
        }
        workgroupBarrier();
        if (some_valid) {
            for (var j = 0u; j < nk; j++) {
                var s = 0.0;
                var s2 = 0.0;
                for (var c = 0u; c < D4; c++) {
                    let k = k_tile[j * D4 + c];
                    s += dot(q[c], k);
                    if (PAIRS) {
                        s2 += dot(q2[c], k);
                    }
                }
                // A new running max rescales what was accumulated under the old one.
                let up = s > m;
                let up2 = PAIRS && s2 > m2;
                if (up) {
                    let correction = exp(m - s);
                    l *= correction;
                    for (var c = 0u; c < D4; c++) {
                        acc[c] *= correction;
                    }
                    m = s;
                }
                if (up2) {
                    let correction = exp(m2 - s2);
                    l2 *= correction;
                    for (var c = 0u; c < D4; c++) {
                        acc2[c] *= correction;
                    }
                    m2 = s2;
                }
                let w = exp(s - m);
                l += w;
                let w2 = exp(s2 - m2);
                l2 += w2;
                for (var c = 0u; c < D4; c++) {
                    let v = v_tile[j * D4 + c];
                    acc[c] += w * v;
                    if (PAIRS) {
                        acc2[c] += w2 * v;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    let inv_l = 1.0 / max(l, 1.0e-30);
    let inv_l2 = 1.0 / max(l2, 1.0e-30);
    for (var c = 0u; c < D4; c++) {
        acc[c] *= inv_l;
        acc2[c] *= inv_l2;
    }
    return Outputs(acc, acc2);
}

// Writes query i's head output `a` (head h of image b) to `out`.
fn store_head(b: u32, h: u32, i: u32, a: array<vec4<f32>, D4>) {
    let p = params;
    let o_base = (b * p.channels + h * HEAD_DIM) * p.tokens + i;
    for (var c = 0u; c < D4; c++) {
        for (var e = 0u; e < 4u; e++) {
            if (4u * c + e < HEAD_DIM) {
                out[o_base + (4u * c + e) * p.tokens] = a[c][e];
            }
        }
    }
}

// Grid: (query tiles of QUERIES, or 2 QUERIES with PAIRS; heads; images).
@compute @workgroup_size(QUERIES, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let b = wid.z;
    let h = wid.y;
    var per_tile = QUERIES;
    if (PAIRS) {
        per_tile = 2u * QUERIES;
    }
    let i = wid.x * per_tile + tid;
    let i2 = i + QUERIES;
    let valid = i < p.tokens;
    let valid2 = PAIRS && i2 < p.tokens;
    let o = head_outputs(b, h, i, i2, tid, valid, valid2);
    if (valid) {
        store_head(b, h, i, o.a);
    }
    if (valid2) {
        store_head(b, h, i2, o.b);
    }
}

// ---------------------------------------------------------------------------------------
// `fused`: out = (to_out(heads) + residual) * out_scale for QUERIES queries of one image,
// every head in turn. After head h, each invocation adds that head's share of the projection,
// sum over its d channels of W[co, h*d + c] * heads[c], to its own query's column of `out`
// for every output channel co: the first head also adds the bias and the residual, the
// last applies the scale. Only this invocation touches that column, so the read-modify-
// writes need no synchronisation; the weight loads are the same for every invocation
// (uniform, a broadcast on a GPU). The heads' outputs never leave registers.
// With EMIT_STATS the workgroup then writes (count, mean, M2) of every channel over its
// queries (one slot per query tile), read back from `out` after a storage barrier, for the
// GroupNorm of the next ResNet (see conv2d.wgsl, "Partial statistics"). The tiles depend
// on the map's size only, not on the batch.

override EMIT_STATS: bool = false;

// Grid: (query tiles, images).
@compute @workgroup_size(QUERIES, 1, 1)
fn fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let b = wid.y;
    let i = wid.x * QUERIES + tid;
    let valid = i < p.tokens;
    for (var h = 0u; h < p.heads; h++) {
        let a = head_outputs(b, h, i, i, tid, valid, false).a;
        if (valid) {
            for (var co = 0u; co < p.channels; co++) {
                let row = co * p.channels + h * HEAD_DIM;
                var s = 0.0;
                for (var c = 0u; c < D4; c++) {
                    var wv = vec4<f32>(0.0);
                    for (var e = 0u; e < 4u; e++) {
                        if (4u * c + e < HEAD_DIM) {
                            wv[e] = out_weight[row + 4u * c + e];
                        }
                    }
                    s += dot(wv, a[c]);
                }
                let at = (b * p.channels + co) * p.tokens + i;
                var v = s;
                if (h == 0u) {
                    v += out_bias[co] + residual[at];
                } else {
                    v += out[at];
                }
                if (h + 1u == p.heads) {
                    v *= p.out_scale;
                }
                out[at] = v;
            }
        }
    }
    if (!EMIT_STATS) {
        return;
    }
    storageBarrier();
    let i0 = wid.x * QUERIES;
    let count = min(QUERIES, p.tokens - i0);
    for (var co = tid; co < p.channels; co += QUERIES) {
        let row = (b * p.channels + co) * p.tokens + i0;
        var sum = 0.0;
        for (var j = 0u; j < count; j++) {
            sum += out[row + j];
        }
        let mean = sum / f32(count);
        var m2 = 0.0;
        for (var j = 0u; j < count; j++) {
            let d = out[row + j] - mean;
            m2 += d * d;
        }
        let slot = p.batch * p.channels * p.tokens + ((b * p.channels + co) * p.tiles_out + wid.x) * 3u;
        out[slot] = f32(count);
        out[slot + 1u] = mean;
        out[slot + 2u] = m2;
    }
}
