// Repacks a [cout, K] weight matrix (row-major, as a conv reads it) into a rgba32float
// texture of K x ceil(cout / 4) texels: texel (k, b) holds the weights of tap k for output
// channels 4b .. 4b + 3 (0 past cout). Run once per weight, when a plan first binds it.
//
// Why a texture: the direct conv kernels read, per tap, the same 4 weights in every
// invocation of a workgroup. A software adapter cannot see that a storage-buffer load
// whose address comes from a loop counter is uniform, and llvmpipe turns every such load
// into a loop over the 8 SIMD lanes with two branches per lane; SwiftShader into 4 masked
// scalar loads. A texel fetch is one vectorised gather of all 4 channels there, and on a
// GPU it goes through the texture cache, as weights did in GPGPU's early days.

struct Params {
    cout: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> weight: array<f32>;
@group(0) @binding(1) var packed: texture_storage_2d<rgba32float, write>;
@group(0) @binding(2) var<uniform> params: Params;

fn at(m: u32, k: u32) -> f32 {
    if (m >= params.cout) {
        return 0.0;
    }
    return weight[m * params.k + k];
}

// Grid: (ceil(K / 64), ceil(cout / 4)); one texel per invocation.
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let b = gid.y;
    if (k >= params.k) {
        return;
    }
    let m = 4u * b;
    textureStore(packed, vec2<u32>(k, b), vec4<f32>(at(m, k), at(m + 1u, k), at(m + 2u, k), at(m + 3u, k)));
}
