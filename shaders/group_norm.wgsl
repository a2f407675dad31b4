// GroupNorm over NCHW, with an optional fused SiLU:
//   y = silu?( (x - mean_g) / sqrt(var_g + eps) * gamma[c] + beta[c] )
//
// One workgroup normalises one (image, group). A group's channels are adjacent, so its
// cg * H * W values are one contiguous run of memory that the workgroup strides through
// three times: the mean, then the variance about that mean (two passes: no cancellation
// when |mean| >> std, unlike E[x^2] - E[x]^2), then the write. The run is small enough
// (<= a few hundred KB) to stay in cache between passes.

struct Params {
    channels: u32,
    groups: u32,
    hw: u32,
    silu: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

override WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

// Sum of `v` over the workgroup, visible to every invocation.
fn workgroup_sum(v: f32, tid: u32) -> f32 {
    partial[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let g = wid.x;
    let n = wid.y;
    let cg = p.channels / p.groups;
    let count = cg * p.hw;
    let base = (n * p.channels + g * cg) * p.hw;

    var s = 0.0;
    for (var i = tid; i < count; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum(s, tid) / f32(count);

    var sq = 0.0;
    for (var i = tid; i < count; i += WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(sq, tid) / f32(count) + p.eps);

    for (var i = tid; i < count; i += WG) {
        let c = g * cg + i / p.hw;
        var v = (x[base + i] - mean) * rstd * gamma[c] + beta[c];
        if (p.silu == 1u) {
            v = v / (1.0 + exp(-v));
        }
        y[base + i] = v;
    }
}
