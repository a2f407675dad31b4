// GroupNorm over NCHW, with an optional fused SiLU:
//   y = silu?( (x - mean_g) / sqrt(var_g + eps) * gamma[c] + beta[c] )
//
// The input may be the channel concatenation of two tensors (channels [0, c1) from x,
// the rest from x2): the U-Net's skip concat is never copied, as in conv2d.
//
// `stats` stops short of the write: it stores, per (image, channel), what the normalisation
// applies, (mean, a, beta) with y = (x - mean) * a + beta and a = gamma / std, and the
// consuming convolution normalises as it gathers (conv2d.wgsl, `NORM`), so the normalised
// tensor is never written.
//
// One workgroup normalises one (image, group), striding through the group's channels
// three times: the mean, then the variance about that mean (two passes: no cancellation
// when |mean| >> std, unlike E[x^2] - E[x]^2), then the write. The group is small enough
// (<= a few hundred KB) to stay in cache between passes.

struct Params {
    channels: u32,
    groups: u32,
    hw: u32,
    silu: u32,
    eps: f32,
    // Channels stored in x; channels - c1 are in x2.
    c1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> x2: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

override WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

// Sum of `v` over the workgroup, visible to every invocation. Two barriers, not a log2(WG)
// tree of them: every invocation adds up all WG partials itself (in the same order, so all
// see the same total). On llvmpipe and SwiftShader each barrier switches every invocation
// of the workgroup, which made the tree cost more than the whole pass over the data.
fn workgroup_sum(v: f32, tid: u32) -> f32 {
    partial[tid] = v;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG; i++) {
        total += partial[i];
    }
    workgroupBarrier();
    return total;
}

// Offset of channel c of image n in x (c < c1) or in x2.
fn plane(n: u32, c: u32) -> u32 {
    let p = params;
    if (c < p.c1) {
        return (n * p.c1 + c) * p.hw;
    }
    return (n * (p.channels - p.c1) + c - p.c1) * p.hw;
}

fn load(c: u32, at: u32) -> f32 {
    if (c < params.c1) {
        return x[at];
    }
    return x2[at];
}

// Mean and 1 / std of group g of image n, as seen by every invocation.
fn moments(n: u32, g: u32, tid: u32) -> vec2<f32> {
    let p = params;
    let cg = p.channels / p.groups;
    let count = cg * p.hw;

    var s = 0.0;
    for (var c = g * cg; c < (g + 1u) * cg; c++) {
        let base = plane(n, c);
        for (var i = tid; i < p.hw; i += WG) {
            s += load(c, base + i);
        }
    }
    let mean = workgroup_sum(s, tid) / f32(count);

    var sq = 0.0;
    for (var c = g * cg; c < (g + 1u) * cg; c++) {
        let base = plane(n, c);
        for (var i = tid; i < p.hw; i += WG) {
            let d = load(c, base + i) - mean;
            sq += d * d;
        }
    }
    return vec2<f32>(mean, inverseSqrt(workgroup_sum(sq, tid) / f32(count) + p.eps));
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let g = wid.x;
    let n = wid.y;
    let cg = p.channels / p.groups;
    let m = moments(n, g, tid);
    let mean = m.x;
    let rstd = m.y;
    for (var c = g * cg; c < (g + 1u) * cg; c++) {
        let base = plane(n, c);
        let out = (n * p.channels + c) * p.hw;
        let a = rstd * gamma[c];
        let b = beta[c];
        for (var i = tid; i < p.hw; i += WG) {
            var v = (load(c, base + i) - mean) * a + b;
            if (p.silu == 1u) {
                v = v / (1.0 + exp(-v));
            }
            y[out + i] = v;
        }
    }
}

// y holds (mean, a, beta, 0) per (image, channel): [n, channels, 4].
@compute @workgroup_size(WG, 1, 1)
fn stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let g = wid.x;
    let n = wid.y;
    let cg = p.channels / p.groups;
    let m = moments(n, g, tid);
    for (var c = g * cg + tid; c < (g + 1u) * cg; c += WG) {
        let at = (n * p.channels + c) * 4u;
        y[at] = m.x;
        y[at + 1u] = m.y * gamma[c];
        y[at + 2u] = beta[c];
        y[at + 3u] = 0.0;
    }
}
