// Channel concatenation of two NCHW tensors with the same N, H, W:
//   out[n, c] = a[n, c] for c < ca, b[n, c - ca] otherwise.
// A plain copy; each invocation moves four values, grid-striding so any size fits the
// 65,535-workgroup dispatch limit.

struct Params {
    batch: u32,
    ca: u32,
    cb: u32,
    hw: u32,
    // Number of invocations in the whole grid (the stride of the grid-stride loop).
    grid: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    let per_image = (p.ca + p.cb) * p.hw;
    let total = p.batch * per_image;
    let a_run = p.ca * p.hw;
    let b_run = p.cb * p.hw;
    for (var base = gid.x * 4u; base < total; base += p.grid * 4u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = base + e;
            if (idx >= total) {
                break;
            }
            let n = idx / per_image;
            let r = idx - n * per_image;
            if (r < a_run) {
                out[idx] = a[n * a_run + r];
            } else {
                out[idx] = b[n * b_run + (r - a_run)];
            }
        }
    }
}
