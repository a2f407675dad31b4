// Nearest-neighbour 2x upsampling of NCHW (diffusers' Upsample2D before its conv):
//   out[n, c, y, x] = in[n, c, y / 2, x / 2].
// The U-Net path fuses this into the following convolution (conv2d.wgsl's `upsample`);
// this standalone kernel serves models whose Upsample2D has no conv. Each invocation
// writes four values, grid-striding over any size.

struct Params {
    planes: u32, // batch * channels
    in_h: u32,
    in_w: u32,
    grid: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    let out_w = 2u * p.in_w;
    let out_plane = 4u * p.in_h * p.in_w;
    let total = p.planes * out_plane;
    for (var base = gid.x * 4u; base < total; base += p.grid * 4u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = base + e;
            if (idx >= total) {
                break;
            }
            let plane = idx / out_plane;
            let r = idx - plane * out_plane;
            let oy = r / out_w;
            let ox = r - oy * out_w;
            y[idx] = x[(plane * p.in_h + oy / 2u) * p.in_w + ox / 2u];
        }
    }
}
