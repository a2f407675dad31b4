// 2-D convolution as an implicit GEMM, NCHW, f32.
//
//   out[n, m, oy, ox] = scale * ( sum_k W[m, k] * X[k, p] + bias[m] + temb[n, m] + res[n, m, oy, ox] )
//
// with p = (n, oy, ox) the output pixel and k = (ci, ky, kx) the input tap. X is never
// materialised: the B tile gathers it on the fly, which is where the fusions live:
//   * two inputs: channels [0, cin1) come from x1 and [cin1, cin1 + cin2) from x2, so the
//     U-Net's skip concatenation costs no copy;
//   * nearest 2x upsampling of the input (Upsample2D) by halving the input coordinates;
//   * the epilogue adds the per-(image, channel) time embedding and a residual tensor.
//
// Tiling (`main`): a workgroup of 256 invocations, WG_X (pixels) x WG_Y (out channels),
// computes a TILE_M = 4 WG_Y (out channels) x TILE_P = 4 WG_X (pixels) tile, 4x4 outputs per
// invocation, stepping through K in slices of 16 held in workgroup memory (8.3 or 10.3 KB,
// inside WebGPU's 16 KB default). The launcher picks WG_Y by the output width: 16 (a
// 64 x 64 tile), or 8 (32 x 128) when cout <= 32, where the 64-channel tile would compute
// half its outputs for nothing. `narrow`, at the end, serves cout <= 4.

struct Params {
    batch: u32,
    cin1: u32,
    cin2: u32,
    cout: u32,
    // Logical input size, i.e. after the optional upsampling.
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    ksize: u32,
    stride: u32,
    pad: u32,
    // 1: the stored input is (in_h / 2, in_w / 2) and is upsampled by nearest neighbour.
    upsample: u32,
    // bit 0: add temb, bit 1: add residual, bit 2: SiLU on the output.
    flags: u32,
    temb_stride: u32,
    temb_offset: u32,
    out_scale: f32,
    // GroupNorm epsilon of a normalised input whose statistics are merged from partials.
    norm_eps: f32,
    // Partial-statistics slots per (image, channel) in the tails of x1 and x2 (NORM_SRC 1),
    // and per (image, channel) of `out` to write (EMIT_STATS).
    tiles1: u32,
    tiles2: u32,
    tiles_out: u32,
    // SHORTCUT: channels of the shortcut's second input (in the `residual` binding).
    cin3: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x1: array<f32>;
@group(0) @binding(1) var<storage, read> x2: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> temb: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
// The output, then (EMIT_STATS) its partial statistics (see "Partial statistics" below).
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<uniform> params: Params;
// Direct kernels with NORM > 0. NORM_SRC 0: GroupNorm statistics of the input, (mean,
// gamma / std, beta, 0) per (image, input channel) (group_norm.wgsl, `stats`). NORM_SRC 1:
// the affine parameters, gamma [cin] then beta [cin]; the statistics are merged from the
// partials in the tails of x1 and x2.
@group(0) @binding(8) var<storage, read> norm: array<f32>;
// Direct kernels with WEIGHT_TEXTURE: the weight matrix repacked as texels of 4 output
// channels (see `weights4`); `weight` is then a placeholder.
@group(0) @binding(9) var weight_texels: texture_2d<f32>;
override WEIGHT_TEXTURE: bool = false;

// ---------------------------------------------------------------------------------------
// Partial statistics. A convolution whose output feeds a GroupNorm writes, after the
// output tensor in the same buffer, `tiles_out` slots per (image, channel): (count, mean,
// M2) of the stored values of that channel over one tile of the image's pixels, where a
// tile is what one workgroup covers (every kernel's grid keeps a workgroup inside one
// image: grid z is the image). The slot of (n, m, t) is at
//   batch * cout * out_h * out_w + ((n * cout + m) * tiles_out + t) * 3.
// Each workgroup reduces its own values in workgroup memory after one barrier and writes
// its own slots: no atomics, and the result does not depend on scheduling. The consumer
// merges the slots of every channel of a group at its start. Mean and M2 rather than sums
// of x and x^2: Chan, Golub and LeVeque's merge keeps the variance accurate when the mean
// is far larger than the spread, where E[x^2] - E[x]^2 cancels.

override EMIT_STATS: bool = false;

// (count, mean, M2) of a and b together (b may be empty; so may a).
fn chan_merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    if (b.x == 0.0) {
        return a;
    }
    let count = a.x + b.x;
    let d = b.y - a.y;
    let f = b.x / count;
    return vec3<f32>(count, a.y + d * f, a.z + b.z + d * d * a.x * f);
}

fn write_partial(n: u32, m: u32, t: u32, s: vec3<f32>) {
    let p = params;
    let at = p.batch * p.cout * p.out_h * p.out_w + ((n * p.cout + m) * p.tiles_out + t) * 3u;
    out[at] = s.x;
    out[at + 1u] = s.y;
    out[at + 2u] = s.z;
}

// (count, mean, M2) of the first `count` of 4 values.
fn moments4(v: vec4<f32>, count: u32) -> vec3<f32> {
    if (count == 0u) {
        return vec3<f32>(0.0);
    }
    let mask = vec4<f32>(vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(count));
    let mean = dot(v, mask) / f32(count);
    let d = (v - mean) * mask;
    return vec3<f32>(f32(count), mean, dot(d, d));
}

// Pipeline-overridable: the launcher sets 8 (32 x 128 tiles) for outputs of at most 32
// channels.
override WG_Y: u32 = 16u;
override WG_X: u32 = 256u / WG_Y;
override TILE_M: u32 = 4u * WG_Y;
override TILE_P: u32 = 4u * WG_X;
const TILE_K: u32 = 16u;
// +1 column so that the transposed store of the weight tile does not hit one bank 16 times.
override A_STRIDE: u32 = TILE_M + 1u;
// Rows of the input tile that the workgroup gathers at once (256 / TILE_P).
override B_ROWS: u32 = 256u / TILE_P;

var<workgroup> a_tile: array<f32, TILE_K * A_STRIDE>; // [TILE_K][A_STRIDE]: weights, k-major
var<workgroup> b_tile: array<f32, TILE_K * TILE_P>; // [TILE_K][TILE_P]: gathered inputs

// floor(a / b) given 1 / b, for a < 2^22 (the launcher checks K): (a + 0.5) / b is at least
// 0.5 / b away from an integer, more than the two f32 roundings can move it. Integer
// division is a long instruction sequence on GPUs and scalarised on CPU SIMD backends.
fn div_small(a: u32, inv_b: f32) -> u32 {
    return u32((f32(a) + 0.5) * inv_b);
}

fn load_input(n: u32, ci: u32, iy: i32, ix: i32) -> f32 {
    let p = params;
    if (iy < 0 || ix < 0 || u32(iy) >= p.in_h || u32(ix) >= p.in_w) {
        return 0.0;
    }
    var y = u32(iy);
    var x = u32(ix);
    var h = p.in_h;
    var w = p.in_w;
    if (p.upsample == 1u) {
        y = y >> 1u;
        x = x >> 1u;
        h = h >> 1u;
        w = w >> 1u;
    }
    if (ci < p.cin1) {
        return x1[((n * p.cin1 + ci) * h + y) * w + x];
    }
    return x2[((n * p.cin2 + (ci - p.cin1)) * h + y) * w + x];
}

// Where output pixel gp (flattened n, oy, ox) reads its input: image n and the top-left
// tap (iy0, ix0), plus the reciprocals that split a tap index k into (ci, ky, kx).
struct Gather {
    n: u32,
    iy0: i32,
    ix0: i32,
    inv_taps: f32,
    inv_ksize: f32,
}

fn gather_at(gp: u32) -> Gather {
    let p = params;
    let out_hw = p.out_h * p.out_w;
    let n = gp / out_hw;
    let rem = gp - n * out_hw;
    let oy = rem / p.out_w;
    let ox = rem - oy * p.out_w;
    return Gather(
        n,
        i32(oy * p.stride) - i32(p.pad),
        i32(ox * p.stride) - i32(p.pad),
        1.0 / f32(p.ksize * p.ksize),
        1.0 / f32(p.ksize),
    );
}

// Input tap k = (ci, ky, kx) of the pixel `g` describes (zero outside the padded input).
fn load_tap(g: Gather, k: u32) -> f32 {
    let ksize = params.ksize;
    let ci = div_small(k, g.inv_taps);
    let r = k - ci * ksize * ksize;
    let ky = div_small(r, g.inv_ksize);
    let kx = r - ky * ksize;
    return load_input(g.n, ci, g.iy0 + i32(ky), g.ix0 + i32(kx));
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let p = params;
    let cin = p.cin1 + p.cin2;
    let taps = p.ksize * p.ksize;
    let k_total = cin * taps;
    let out_hw = p.out_h * p.out_w;
    let m0 = wid.y * TILE_M;
    // Pixel tiles do not straddle images (grid z is the image), so that a workgroup's
    // partial statistics belong to one image.
    let img = wid.z;
    let p0 = wid.x * TILE_P;

    // The pixel this invocation gathers for the B tile is fixed for the whole K loop.
    let b_col = tid % TILE_P;
    let b_row = tid / TILE_P;
    let gp_valid = p0 + b_col < out_hw;
    let g = gather_at(img * out_hw + min(p0 + b_col, out_hw - 1u));
    let a_col = tid % TILE_K;
    let a_row = tid / TILE_K;

    // acc_i holds out-channel m0 + lid.y + WG_Y i at pixels p0 + lid.x + WG_X j, j = 0..3. Plain
    // vec4 registers, never an indexed array: backends that cannot promote an indexed
    // array to registers (lavapipe's LLVM among them) would spill it to memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < k_total; k0 += TILE_K) {
        // Weight tile: consecutive invocations read consecutive k (contiguous in memory).
        let ak = k0 + a_col;
        for (var i = 0u; i < TILE_M / 16u; i++) {
            let m = m0 + a_row + 16u * i;
            var v = 0.0;
            if (m < p.cout && ak < k_total) {
                v = weight[m * k_total + ak];
            }
            a_tile[a_col * A_STRIDE + a_row + 16u * i] = v;
        }
        // Input tile: consecutive invocations read consecutive pixels.
        for (var i = 0u; i < TILE_K / B_ROWS; i++) {
            let kr = b_row + B_ROWS * i;
            let k = k0 + kr;
            var v = 0.0;
            if (gp_valid && k < k_total) {
                v = load_tap(g, k);
            }
            b_tile[kr * TILE_P + b_col] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            let ar = kk * A_STRIDE + lid.y;
            let br = kk * TILE_P + lid.x;
            let a = vec4<f32>(a_tile[ar], a_tile[ar + WG_Y], a_tile[ar + 2u * WG_Y], a_tile[ar + 3u * WG_Y]);
            let b = vec4<f32>(b_tile[br], b_tile[br + WG_X], b_tile[br + 2u * WG_X], b_tile[br + 3u * WG_X]);
            // Plain multiply-add rather than fma(): GPU compilers contract it anyway, while
            // a backend without hardware FMA (lavapipe on some CPUs) would call a slow
            // exact-fma routine; measured 1.5x slower on this machine's lavapipe.
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }

    // This invocation's 4 pixels p0 + lid.x + WG_X j, j < valid, are inside the image.
    let first = p0 + lid.x;
    let valid = min(4u, (max(out_hw, first) - first + WG_X - 1u) / WG_X);
    let v0 = store_row(m0 + lid.y, img, first, valid, acc0);
    let v1 = store_row(m0 + lid.y + WG_Y, img, first, valid, acc1);
    let v2 = store_row(m0 + lid.y + 2u * WG_Y, img, first, valid, acc2);
    let v3 = store_row(m0 + lid.y + 3u * WG_Y, img, first, valid, acc3);
    if (EMIT_STATS) {
        // One channel row at a time through the (now idle) tiles: the WG_X invocations
        // of a row hold that channel's pixels of the tile; the row's first merges them.
        reduce_row(m0 + lid.y, img, wid.x, lid, tid, moments4(v0, valid));
        reduce_row(m0 + lid.y + WG_Y, img, wid.x, lid, tid, moments4(v1, valid));
        reduce_row(m0 + lid.y + 2u * WG_Y, img, wid.x, lid, tid, moments4(v2, valid));
        reduce_row(m0 + lid.y + 3u * WG_Y, img, wid.x, lid, tid, moments4(v3, valid));
    }
}

fn reduce_row(m: u32, img: u32, tile: u32, lid: vec3<u32>, tid: u32, s: vec3<f32>) {
    b_tile[3u * tid] = s.x;
    b_tile[3u * tid + 1u] = s.y;
    b_tile[3u * tid + 2u] = s.z;
    workgroupBarrier();
    if (lid.x == 0u && m < params.cout) {
        var total = vec3<f32>(0.0);
        for (var x = 0u; x < WG_X; x++) {
            let at = 3u * (tid + x);
            total = chan_merge(total, vec3<f32>(b_tile[at], b_tile[at + 1u], b_tile[at + 2u]));
        }
        write_partial(img, m, tile, total);
    }
    workgroupBarrier();
}

// Epilogue for out-channel m of image n at its pixels p + WG_X j, j < valid; returns the
// stored values (0 past `valid` or cout).
fn store_row(m: u32, n: u32, p: u32, valid: u32, acc: vec4<f32>) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (m >= params.cout) {
        return v;
    }
    let base = n * params.out_h * params.out_w + p;
    for (var j = 0u; j < valid; j++) {
        v[j] = store(m, base + WG_X * j, acc[j]);
    }
    return v;
}

// Epilogue for out-channel m at output pixel op (flattened n, oy, ox): bias, time
// embedding, residual, scale, SiLU. Returns the stored value.
fn store(m: u32, op: u32, acc: f32) -> f32 {
    let prm = params;
    let out_hw = prm.out_h * prm.out_w;
    let n = op / out_hw;
    let idx = (n * prm.cout + m) * out_hw + (op - n * out_hw);
    var v = acc + bias[m];
    if ((prm.flags & 1u) != 0u) {
        v += temb[n * prm.temb_stride + prm.temb_offset + m];
    }
    if ((prm.flags & 2u) != 0u) {
        v += residual[idx];
    }
    v *= prm.out_scale;
    if ((prm.flags & 4u) != 0u) {
        v = v / (1.0 + exp(-v));
    }
    out[idx] = v;
    return v;
}

// ---------------------------------------------------------------------------------------
// Narrow variant, for at most 4 output channels (the U-Net's conv_out, 32 -> 1): `main`'s
// 64-channel tile would waste up to 63/64 of its multiply-adds there. One invocation per
// output pixel computes all (<= 4) channels as one vec4; the weights, the same for every
// invocation, are staged in workgroup memory NARROW_WG taps at a time (each invocation
// stages one). The input gather is `main`'s (each input value is read once per tap, as there).

const NARROW_WG: u32 = 256u; // = NARROW_WG in conv2d.rs

var<workgroup> w_tile: array<vec4<f32>, NARROW_WG>; // the <= 4 channels' weights of NARROW_WG taps

@compute @workgroup_size(NARROW_WG, 1, 1)
fn narrow(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let p = params;
    let taps = p.ksize * p.ksize;
    let k_total = (p.cin1 + p.cin2) * taps;
    let out_hw = p.out_h * p.out_w;
    let gp = wid.x * NARROW_WG + tid;
    let valid = gp < p.batch * out_hw;
    let g = gather_at(gp);

    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k_total; k0 += NARROW_WG) {
        let k = k0 + tid;
        var wv = vec4<f32>(0.0);
        if (k < k_total) {
            for (var m = 0u; m < 4u; m++) {
                if (m < p.cout) {
                    wv[m] = weight[m * k_total + k];
                }
            }
        }
        w_tile[tid] = wv;
        workgroupBarrier();
        if (valid) {
            let kn = min(NARROW_WG, k_total - k0);
            for (var kk = 0u; kk < kn; kk++) {
                acc += w_tile[kk] * load_tap(g, k0 + kk);
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        for (var m = 0u; m < 4u; m++) {
            if (m < p.cout) {
                _ = store(m, gp, acc[m]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Direct variants, for stride 1 and a 3x3 (pad 1) or 1x1 (pad 0) kernel: no workgroup
// memory and no barrier. Each invocation computes 4 output channels x 8 consecutive pixels
// of one output row (a "run"), as eight vec4 accumulators over the channels. The 4
// channels are the same for every invocation of a workgroup (grid y), so the weight loads
// are uniform (one load broadcast to every lane on a GPU); each row of 3 taps reuses a
// 10-pixel window of the input, so an input channel costs 30 input loads and 36 weight
// loads for 72 vec4 multiply-adds.
// What keeps the hot loop short: every column offset, row offset and padding mask is
// computed once per invocation (they do not depend on the input channel); out-of-range taps
// read a clamped in-range address and are zeroed by `select`, so the loop has no branch.
// Why barrier-free: on llvmpipe and SwiftShader every workgroup barrier is a coroutine
// switch of all invocations, and on a GPU small batches leave too few workgroups for the
// 64 x 64 tile to fill the machine; here a workgroup is DIRECT_WG runs of one channel
// block, so a batch-2 7x7 conv with 128 channels still has 32 x 1 workgroups of 14 runs.

override DIRECT_WG: u32 = 64u;
const DIRECT_PX: u32 = 8u; // = DIRECT_PX in conv2d.rs
// Blocks of 4 output channels per invocation of `direct3x3`, `direct1x1` and `direct_up2`:
// 1, or 2 where reading (and normalising) the input window costs more than a second
// accumulator set (software adapters; `Gpu::channel_blocks`). The second block's outputs
// past cout are not stored.
override DIRECT_BLOCKS: u32 = 1u;
// 0: the input is used as stored; 1: GroupNorm'd as it is read (`norm`), 2: GroupNorm'd and
// SiLU'd. Zero padding applies after the normalisation, as in the unfused pair. A pipeline
// constant, so the unused paths compile away.
override NORM: u32 = 0u;

// Where the statistics come from: 0, the `norm` binding; 1, merged at the kernel's start
// from the partials in the tails of x1 and x2 into `group_stats`.
override NORM_SRC: u32 = 0u;
// The input's GroupNorm groups (NORM_SRC 1).
override NORM_GROUPS: u32 = 1u;

// The ResNet's 1x1 shortcut folded into its conv2 (`direct3x3` only): x1 is conv2's input
// (3x3, normalised as NORM says), x2 and `residual` are the shortcut's two inputs (cin2
// and cin3 channels, 1x1, read as stored), and each weight row is conv2's cin1 * 9 taps
// followed by the shortcut's cin2 + cin3 (packed at load, the two biases summed). The
// shortcut's output, and the dispatch that wrote it, are gone.
override SHORTCUT: bool = false;

// Input channels the GroupNorm covers: all of them, or x1's with a folded shortcut.
fn norm_channels() -> u32 {
    if (SHORTCUT) {
        return params.cin1;
    }
    return params.cin1 + params.cin2;
}

// (mean, 1 / std) of every group of the workgroup's image (NORM_SRC 1).
var<workgroup> group_stats: array<vec2<f32>, NORM_GROUPS>;

// (count, mean, M2) of channel ci of image n over the partial slots its producer wrote.
fn channel_moments(n: u32, ci: u32, plane: u32) -> vec3<f32> {
    let p = params;
    var s = vec3<f32>(0.0);
    if (ci < p.cin1) {
        let at = p.batch * p.cin1 * plane + (n * p.cin1 + ci) * p.tiles1 * 3u;
        for (var t = 0u; t < p.tiles1; t++) {
            s = chan_merge(s, vec3<f32>(x1[at + 3u * t], x1[at + 3u * t + 1u], x1[at + 3u * t + 2u]));
        }
    } else {
        let c = ci - p.cin1;
        let at = p.batch * p.cin2 * plane + (n * p.cin2 + c) * p.tiles2 * 3u;
        for (var t = 0u; t < p.tiles2; t++) {
            s = chan_merge(s, vec3<f32>(x2[at + 3u * t], x2[at + 3u * t + 1u], x2[at + 3u * t + 2u]));
        }
    }
    return s;
}

// Fills `group_stats` for image n: invocation `tid` merges groups tid, tid + DIRECT_WG, ..,
// each over its channels and their slots in a fixed order, so every workgroup of the image
// gets bit-identical statistics. Call in uniform control flow (it has a barrier).
fn merge_group_stats(n: u32, tid: u32, plane: u32) {
    if (NORM == 0u || NORM_SRC != 1u) {
        return;
    }
    let cg = norm_channels() / NORM_GROUPS;
    for (var g = tid; g < NORM_GROUPS; g += DIRECT_WG) {
        var s = vec3<f32>(0.0);
        for (var c = g * cg; c < (g + 1u) * cg; c++) {
            s = chan_merge(s, channel_moments(n, c, plane));
        }
        group_stats[g] = vec2<f32>(s.y, inverseSqrt(s.z / s.x + params.norm_eps));
    }
    workgroupBarrier();
}

// How input channel ci of the run's image is normalised (mean, scale, shift).
fn norm_of(n: u32, ci: u32) -> vec3<f32> {
    if (NORM == 0u) {
        return vec3<f32>(0.0, 1.0, 0.0);
    }
    let cin = norm_channels();
    if (NORM_SRC == 1u) {
        let g = group_stats[ci / (cin / NORM_GROUPS)];
        return vec3<f32>(g.x, g.y * norm[ci], norm[cin + ci]);
    }
    let at = (n * cin + ci) * 4u;
    return vec3<f32>(norm[at], norm[at + 1u], norm[at + 2u]);
}

fn normalise(v: f32, m: vec3<f32>) -> f32 {
    if (NORM == 0u) {
        return v;
    }
    let y = (v - m.x) * m.y + m.z;
    if (NORM == 2u) {
        return y / (1.0 + exp(-y));
    }
    return y;
}

// Where an invocation's 8 output pixels are and how it reads its input.
struct Run {
    // Whether the run exists (the last workgroup has spare invocations).
    valid: bool,
    n: u32,
    oy: u32,
    ox0: u32,
    // Offsets of image n's first channel plane in x1 and x2, and the size of one plane.
    base1: u32,
    base2: u32,
    plane: u32,
}

// Run q of image n (runs are numbered row by row within the image).
fn run_at(n: u32, q: u32) -> Run {
    let p = params;
    let rw = (p.out_w + DIRECT_PX - 1u) / DIRECT_PX;
    let per_image = p.out_h * rw;
    let r = min(q, per_image - 1u);
    let oy = r / rw;
    let plane = (p.in_h >> p.upsample) * (p.in_w >> p.upsample);
    return Run(q < per_image, n, oy, (r - oy * rw) * DIRECT_PX, n * p.cin1 * plane, n * p.cin2 * plane, plane);
}

// Stored offset of logical column ix within a row (clamped into the input; the `upsample`
// shift maps the 2x grid onto the stored one), and whether ix is inside the input.
fn col_offset(ix: i32) -> u32 {
    let p = params;
    return u32(clamp(ix, 0, i32(p.in_w) - 1)) >> p.upsample;
}

fn col_inside(ix: i32) -> bool {
    return ix >= 0 && ix < i32(params.in_w);
}

fn row_offset(iy: i32) -> u32 {
    let p = params;
    return (u32(clamp(iy, 0, i32(p.in_h) - 1)) >> p.upsample) * (p.in_w >> p.upsample);
}

fn row_inside(iy: i32) -> bool {
    return iy >= 0 && iy < i32(params.in_h);
}

// Where the invocation's 4 output channels m0.. read their weights: rows of the [cout, K]
// matrix in `weight` (channels past cout read channel cout - 1's; their outputs are not
// stored), or (WEIGHT_TEXTURE) row `block` = m0 / 4 of `weight_texels`, whose texel k
// holds the 4 channels' weights of tap k (weight_texture.wgsl: one fetch instead of 4
// loads that a software adapter cannot tell are uniform).
struct WeightRows {
    rows: vec4<u32>,
    block: u32,
}

fn weight_rows(m0: u32, k_total: u32) -> WeightRows {
    let last = params.cout - 1u;
    let rows = vec4<u32>(min(m0, last), min(m0 + 1u, last), min(m0 + 2u, last), min(m0 + 3u, last)) * k_total;
    return WeightRows(rows, min(m0, last) / 4u);
}

// Weights of tap k for the invocation's 4 channels.
fn weights4(w: WeightRows, k: u32) -> vec4<f32> {
    if (WEIGHT_TEXTURE) {
        return textureLoad(weight_texels, vec2<u32>(k, w.block), 0);
    }
    let r = w.rows;
    return vec4<f32>(weight[r.x + k], weight[r.y + k], weight[r.z + k], weight[r.w + k]);
}

// The run's accumulators, one vec4 over the 4 channels per pixel. Every per-pixel value in
// these kernels is a named variable, never an indexed array: SwiftShader (Chromium's
// software WebGPU) neither unrolls loops nor promotes indexed arrays to registers, so an
// array here would live in memory. The repetition is written out on purpose.
struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

// The 10 columns ix0 - 1 .. ix0 + 8 of a run's window and the 3 rows oy - 1 .. oy + 1:
// offsets into a channel plane and whether each is inside the input.
struct Window {
    c0: u32,
    c1: u32,
    c2: u32,
    c3: u32,
    c4: u32,
    c5: u32,
    c6: u32,
    c7: u32,
    c8: u32,
    c9: u32,
    i0: bool,
    i1: bool,
    i2: bool,
    i3: bool,
    i4: bool,
    i5: bool,
    i6: bool,
    i7: bool,
    i8: bool,
    i9: bool,
    r0: u32,
    r1: u32,
    r2: u32,
    j0: bool,
    j1: bool,
    j2: bool,
}

fn window_of(first_col: i32, first_row: i32) -> Window {
    let x = first_col;
    return Window(
        col_offset(x + 0), col_offset(x + 1), col_offset(x + 2), col_offset(x + 3), col_offset(x + 4), col_offset(x + 5), col_offset(x + 6), col_offset(x + 7), col_offset(x + 8), col_offset(x + 9),
        col_inside(x + 0), col_inside(x + 1), col_inside(x + 2), col_inside(x + 3), col_inside(x + 4), col_inside(x + 5), col_inside(x + 6), col_inside(x + 7), col_inside(x + 8), col_inside(x + 9),
        row_offset(first_row), row_offset(first_row + 1), row_offset(first_row + 2),
        row_inside(first_row), row_inside(first_row + 1), row_inside(first_row + 2),
    );
}

// The 10 values of a run's 3x3 window in one input row (offset `r`, inside the input if
// `ok`, normalised by `m`; zero padding after the normalisation). The x1 and x2 copies
// differ only in the array they read.
struct Row10 {
    v0: f32,
    v1: f32,
    v2: f32,
    v3: f32,
    v4: f32,
    v5: f32,
    v6: f32,
    v7: f32,
    v8: f32,
    v9: f32,
}

fn row_x1(w: Window, r: u32, ok: bool, m: vec3<f32>) -> Row10 {
    return Row10(
        select(0.0, normalise(x1[r + w.c0], m), ok && w.i0),
        select(0.0, normalise(x1[r + w.c1], m), ok && w.i1),
        select(0.0, normalise(x1[r + w.c2], m), ok && w.i2),
        select(0.0, normalise(x1[r + w.c3], m), ok && w.i3),
        select(0.0, normalise(x1[r + w.c4], m), ok && w.i4),
        select(0.0, normalise(x1[r + w.c5], m), ok && w.i5),
        select(0.0, normalise(x1[r + w.c6], m), ok && w.i6),
        select(0.0, normalise(x1[r + w.c7], m), ok && w.i7),
        select(0.0, normalise(x1[r + w.c8], m), ok && w.i8),
        select(0.0, normalise(x1[r + w.c9], m), ok && w.i9),
    );
}

fn row_x2(w: Window, r: u32, ok: bool, m: vec3<f32>) -> Row10 {
    return Row10(
        select(0.0, normalise(x2[r + w.c0], m), ok && w.i0),
        select(0.0, normalise(x2[r + w.c1], m), ok && w.i1),
        select(0.0, normalise(x2[r + w.c2], m), ok && w.i2),
        select(0.0, normalise(x2[r + w.c3], m), ok && w.i3),
        select(0.0, normalise(x2[r + w.c4], m), ok && w.i4),
        select(0.0, normalise(x2[r + w.c5], m), ok && w.i5),
        select(0.0, normalise(x2[r + w.c6], m), ok && w.i6),
        select(0.0, normalise(x2[r + w.c7], m), ok && w.i7),
        select(0.0, normalise(x2[r + w.c8], m), ok && w.i8),
        select(0.0, normalise(x2[r + w.c9], m), ok && w.i9),
    );
}

// One window row against one row of 3 taps k0..k2 (4 channels each).
fn taps(acc: ptr<function, Acc>, v: Row10, k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>) {
    (*acc).a0 += k0 * v.v0 + k1 * v.v1 + k2 * v.v2;
    (*acc).a1 += k0 * v.v1 + k1 * v.v2 + k2 * v.v3;
    (*acc).a2 += k0 * v.v2 + k1 * v.v3 + k2 * v.v4;
    (*acc).a3 += k0 * v.v3 + k1 * v.v4 + k2 * v.v5;
    (*acc).a4 += k0 * v.v4 + k1 * v.v5 + k2 * v.v6;
    (*acc).a5 += k0 * v.v5 + k1 * v.v6 + k2 * v.v7;
    (*acc).a6 += k0 * v.v6 + k1 * v.v7 + k2 * v.v8;
    (*acc).a7 += k0 * v.v7 + k1 * v.v8 + k2 * v.v9;
}

// Up to 8 values of one input channel that a run's 1x1 taps read: its 8 pixels (a 1x1
// conv's, normalised by m, or the folded shortcut's, as stored), or `direct_up2`'s 6
// stored columns.
struct Row8 {
    v0: f32,
    v1: f32,
    v2: f32,
    v3: f32,
    v4: f32,
    v5: f32,
    v6: f32,
    v7: f32,
}

fn pixels_x1(w: Window, row: u32, m: vec3<f32>) -> Row8 {
    return Row8(
        normalise(x1[row + w.c0], m),
        normalise(x1[row + w.c1], m),
        normalise(x1[row + w.c2], m),
        normalise(x1[row + w.c3], m),
        normalise(x1[row + w.c4], m),
        normalise(x1[row + w.c5], m),
        normalise(x1[row + w.c6], m),
        normalise(x1[row + w.c7], m),
    );
}

fn pixels_x2(w: Window, row: u32, m: vec3<f32>) -> Row8 {
    return Row8(
        normalise(x2[row + w.c0], m),
        normalise(x2[row + w.c1], m),
        normalise(x2[row + w.c2], m),
        normalise(x2[row + w.c3], m),
        normalise(x2[row + w.c4], m),
        normalise(x2[row + w.c5], m),
        normalise(x2[row + w.c6], m),
        normalise(x2[row + w.c7], m),
    );
}

fn pointwise(acc: ptr<function, Acc>, v: Row8, k: vec4<f32>) {
    (*acc).a0 += k * v.v0;
    (*acc).a1 += k * v.v1;
    (*acc).a2 += k * v.v2;
    (*acc).a3 += k * v.v3;
    (*acc).a4 += k * v.v4;
    (*acc).a5 += k * v.v5;
    (*acc).a6 += k * v.v6;
    (*acc).a7 += k * v.v7;
}

// The run's 8 pixels of one input channel of the folded shortcut, as stored: x2's or
// `residual`'s.
fn stored_x2(w: Window, row: u32) -> Row8 {
    return Row8(
        x2[row + w.c0], x2[row + w.c1], x2[row + w.c2], x2[row + w.c3],
        x2[row + w.c4], x2[row + w.c5], x2[row + w.c6], x2[row + w.c7],
    );
}

fn stored_x3(w: Window, row: u32) -> Row8 {
    return Row8(
        residual[row + w.c0], residual[row + w.c1], residual[row + w.c2], residual[row + w.c3],
        residual[row + w.c4], residual[row + w.c5], residual[row + w.c6], residual[row + w.c7],
    );
}

// The epilogue for the 4 channels m0.. at pixel j of the run.
// Returns the stored values (0 where nothing is stored).
fn store4(run: Run, m0: u32, base: u32, j: u32, a: vec4<f32>) -> vec4<f32> {
    let p = params;
    var v = vec4<f32>(0.0);
    if (!run.valid || run.ox0 + j >= p.out_w) {
        return v;
    }
    for (var c = 0u; c < 4u; c++) {
        if (m0 + c < p.cout) {
            v[c] = store(m0 + c, base + j, a[c]);
        }
    }
    return v;
}

// Partial statistics of a direct kernel: per invocation, (count, mean, M2) of its 4
// channels over its up to 8 pixels; after one barrier, each chunk of STATS_RUNS
// consecutive runs (invocations) is reduced by its first 4 invocations (one per channel)
// into one slot. The slot is a fixed chunk of the image's runs, not the workgroup: the
// launcher sizes workgroups by the batch, and the statistics (so the images) must not
// depend on the batch an image is computed in, bit for bit.
const STATS_RUNS: u32 = 8u; // = DIRECT_STATS_RUNS in conv2d.rs, divides DIRECT_WG
var<workgroup> part_mean: array<vec4<f32>, DIRECT_WG>;
var<workgroup> part_m2: array<vec4<f32>, DIRECT_WG>;
var<workgroup> part_count: array<f32, DIRECT_WG>;

// The epilogue for the 4 channels m0.. at the run's pixels; with EMIT_STATS, the
// partial statistics of its runs (the first is run `wg_first_run` of the image). Call in
// uniform control flow.
fn store_run(run: Run, m0: u32, acc: Acc, tid: u32, wg_first_run: u32) {
    let base = (run.n * params.out_h + run.oy) * params.out_w + run.ox0;
    let v0 = store4(run, m0, base, 0u, acc.a0);
    let v1 = store4(run, m0, base, 1u, acc.a1);
    let v2 = store4(run, m0, base, 2u, acc.a2);
    let v3 = store4(run, m0, base, 3u, acc.a3);
    let v4 = store4(run, m0, base, 4u, acc.a4);
    let v5 = store4(run, m0, base, 5u, acc.a5);
    let v6 = store4(run, m0, base, 6u, acc.a6);
    let v7 = store4(run, m0, base, 7u, acc.a7);
    if (!EMIT_STATS) {
        return;
    }
    // The stored pixels are a prefix of the run; two passes over registers for the mean
    // and M2 (no cancellation). Past `count`, v is 0 and masked out of M2.
    var count = 0u;
    if (run.valid) {
        count = min(DIRECT_PX, params.out_w - run.ox0);
    }
    let fc = max(f32(count), 1.0);
    let mean = (v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7) / fc;
    var m2 = vec4<f32>(0.0);
    m2 += sq_dev(v0, mean, 0u < count);
    m2 += sq_dev(v1, mean, 1u < count);
    m2 += sq_dev(v2, mean, 2u < count);
    m2 += sq_dev(v3, mean, 3u < count);
    m2 += sq_dev(v4, mean, 4u < count);
    m2 += sq_dev(v5, mean, 5u < count);
    m2 += sq_dev(v6, mean, 6u < count);
    m2 += sq_dev(v7, mean, 7u < count);
    part_mean[tid] = mean;
    part_m2[tid] = m2;
    part_count[tid] = f32(count);
    workgroupBarrier();
    let lane = tid % STATS_RUNS;
    let first = tid - lane;
    let tile = (wg_first_run + first) / STATS_RUNS;
    if (lane < 4u && m0 + lane < params.cout && tile < params.tiles_out) {
        var s = vec3<f32>(0.0);
        for (var i = first; i < first + STATS_RUNS; i++) {
            s = chan_merge(s, vec3<f32>(part_count[i], part_mean[i][lane], part_m2[i][lane]));
        }
        write_partial(run.n, m0 + lane, tile, s);
    }
}

// `store_run` for the invocation's channel blocks (`acc_b`: channels m0 + 4.., DIRECT_BLOCKS 2).
fn store_blocks(run: Run, m0: u32, acc: Acc, acc_b: Acc, tid: u32, wg_first_run: u32) {
    store_run(run, m0, acc, tid, wg_first_run);
    if (DIRECT_BLOCKS == 2u) {
        if (EMIT_STATS) {
            // The first store's statistics reads of workgroup memory end before these writes.
            workgroupBarrier();
        }
        store_run(run, m0 + 4u, acc_b, tid, wg_first_run);
    }
}

fn sq_dev(v: vec4<f32>, mean: vec4<f32>, inside: bool) -> vec4<f32> {
    let d = select(vec4<f32>(0.0), v - mean, inside);
    return d * d;
}

fn zero_acc() -> Acc {
    let z = vec4<f32>(0.0);
    return Acc(z, z, z, z, z, z, z, z);
}

// Grid: (run tiles of DIRECT_WG runs within an image, blocks of 4 output channels, images).
@compute @workgroup_size(DIRECT_WG, 1, 1)
fn direct3x3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let run = run_at(wid.z, wid.x * DIRECT_WG + tid);
    merge_group_stats(run.n, tid, run.plane);
    let win = window_of(i32(run.ox0) - 1, i32(run.oy) - 1);
    let m0 = wid.y * 4u * DIRECT_BLOCKS;
    var k_total = (p.cin1 + p.cin2) * 9u;
    if (SHORTCUT) {
        k_total = p.cin1 * 9u + p.cin2 + p.cin3;
    }
    let wr = weight_rows(m0, k_total);
    let wr_b = weight_rows(m0 + 4u, k_total);

    var acc = zero_acc();
    var acc_b = zero_acc();
    for (var ci = 0u; ci < p.cin1; ci++) {
        let plane = run.base1 + ci * run.plane;
        let k = ci * 9u;
        let m = norm_of(run.n, ci);
        let v0 = row_x1(win, plane + win.r0, win.j0, m);
        let v1 = row_x1(win, plane + win.r1, win.j1, m);
        let v2 = row_x1(win, plane + win.r2, win.j2, m);
        taps(&acc, v0, weights4(wr, k), weights4(wr, k + 1u), weights4(wr, k + 2u));
        taps(&acc, v1, weights4(wr, k + 3u), weights4(wr, k + 4u), weights4(wr, k + 5u));
        taps(&acc, v2, weights4(wr, k + 6u), weights4(wr, k + 7u), weights4(wr, k + 8u));
        if (DIRECT_BLOCKS == 2u) {
            taps(&acc_b, v0, weights4(wr_b, k), weights4(wr_b, k + 1u), weights4(wr_b, k + 2u));
            taps(&acc_b, v1, weights4(wr_b, k + 3u), weights4(wr_b, k + 4u), weights4(wr_b, k + 5u));
            taps(&acc_b, v2, weights4(wr_b, k + 6u), weights4(wr_b, k + 7u), weights4(wr_b, k + 8u));
        }
    }
    if (SHORTCUT) {
        // The 1x1 taps: the run's own 8 columns (the 3x3 window's middle 8) in its own row.
        let win1 = window_of(i32(run.ox0), i32(run.oy));
        let k = p.cin1 * 9u;
        for (var ci = 0u; ci < p.cin2; ci++) {
            let v = stored_x2(win1, run.base2 + ci * run.plane + win1.r0);
            pointwise(&acc, v, weights4(wr, k + ci));
            if (DIRECT_BLOCKS == 2u) {
                pointwise(&acc_b, v, weights4(wr_b, k + ci));
            }
        }
        let base3 = run.n * p.cin3 * run.plane;
        for (var ci = 0u; ci < p.cin3; ci++) {
            let v = stored_x3(win1, base3 + ci * run.plane + win1.r0);
            pointwise(&acc, v, weights4(wr, k + p.cin2 + ci));
            if (DIRECT_BLOCKS == 2u) {
                pointwise(&acc_b, v, weights4(wr_b, k + p.cin2 + ci));
            }
        }
    } else {
        for (var ci = 0u; ci < p.cin2; ci++) {
            let plane = run.base2 + ci * run.plane;
            let k = (p.cin1 + ci) * 9u;
            let m = norm_of(run.n, p.cin1 + ci);
            let v0 = row_x2(win, plane + win.r0, win.j0, m);
            let v1 = row_x2(win, plane + win.r1, win.j1, m);
            let v2 = row_x2(win, plane + win.r2, win.j2, m);
            taps(&acc, v0, weights4(wr, k), weights4(wr, k + 1u), weights4(wr, k + 2u));
            taps(&acc, v1, weights4(wr, k + 3u), weights4(wr, k + 4u), weights4(wr, k + 5u));
            taps(&acc, v2, weights4(wr, k + 6u), weights4(wr, k + 7u), weights4(wr, k + 8u));
            if (DIRECT_BLOCKS == 2u) {
                taps(&acc_b, v0, weights4(wr_b, k), weights4(wr_b, k + 1u), weights4(wr_b, k + 2u));
                taps(&acc_b, v1, weights4(wr_b, k + 3u), weights4(wr_b, k + 4u), weights4(wr_b, k + 5u));
                taps(&acc_b, v2, weights4(wr_b, k + 6u), weights4(wr_b, k + 7u), weights4(wr_b, k + 8u));
            }
        }
    }
    store_blocks(run, m0, acc, acc_b, tid, wid.x * DIRECT_WG);
}

@compute @workgroup_size(DIRECT_WG, 1, 1)
fn direct1x1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let run = run_at(wid.z, wid.x * DIRECT_WG + tid);
    merge_group_stats(run.n, tid, run.plane);
    // Columns past the output's width read the last one (their outputs are not stored).
    let win = window_of(i32(run.ox0), i32(run.oy));
    let m0 = wid.y * 4u * DIRECT_BLOCKS;
    let wr = weight_rows(m0, p.cin1 + p.cin2);
    let wr_b = weight_rows(m0 + 4u, p.cin1 + p.cin2);

    var acc = zero_acc();
    var acc_b = zero_acc();
    for (var ci = 0u; ci < p.cin1; ci++) {
        let v = pixels_x1(win, run.base1 + ci * run.plane + win.r0, norm_of(run.n, ci));
        pointwise(&acc, v, weights4(wr, ci));
        if (DIRECT_BLOCKS == 2u) {
            pointwise(&acc_b, v, weights4(wr_b, ci));
        }
    }
    for (var ci = 0u; ci < p.cin2; ci++) {
        let c = p.cin1 + ci;
        let v = pixels_x2(win, run.base2 + ci * run.plane + win.r0, norm_of(run.n, c));
        pointwise(&acc, v, weights4(wr, c));
        if (DIRECT_BLOCKS == 2u) {
            pointwise(&acc_b, v, weights4(wr_b, c));
        }
    }
    store_blocks(run, m0, acc, acc_b, tid, wid.x * DIRECT_WG);
}

// ---------------------------------------------------------------------------------------
// `direct_up2`: nearest 2x upsampling followed by a 3x3 conv (pad 1), computed on the
// low-resolution grid. Output row 2i + a reads upsampled rows 2i + a - 1 .. 2i + a + 1,
// which are low rows (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1: two distinct
// rows, with the kernel rows that land on the same one summed (a = 0: W0 | W1 + W2; a = 1:
// W0 + W1 | W2). Columns likewise by the output column's parity b. So each output is a
// 2x2 conv of the stored input with one of four pre-summed kernels (packed at load,
// `pack_up2` in conv2d.rs: [cout][cin][a][b][r][s], 16 weights per (cout, cin)): 4
// multiply-adds instead of 9, and the upsampled tensor is never formed. Zero padding of the
// upsampled input is zero padding of the stored one (row -1 and row 2H both fall outside).
// The grid, the runs of 8 output pixels and the epilogue (with partial statistics) are the
// direct kernels'; a run's 8 pixels read 6 consecutive stored columns.

// One stored row (offset `r`, inside if `ok`) against row taps (s = 0, 1) of both column
// phases: e0 / e1 for even output columns, o0 / o1 for odd ones.
fn stored_row(w: Window, r: u32, ok: bool) -> Row8 {
    let z = 0.0;
    return Row8(
        select(0.0, x1[r + w.c0], ok && w.i0),
        select(0.0, x1[r + w.c1], ok && w.i1),
        select(0.0, x1[r + w.c2], ok && w.i2),
        select(0.0, x1[r + w.c3], ok && w.i3),
        select(0.0, x1[r + w.c4], ok && w.i4),
        select(0.0, x1[r + w.c5], ok && w.i5),
        z,
        z,
    );
}

fn up2_taps(acc: ptr<function, Acc>, v: Row8, e0: vec4<f32>, e1: vec4<f32>, o0: vec4<f32>, o1: vec4<f32>) {
    (*acc).a0 += e0 * v.v0 + e1 * v.v1;
    (*acc).a1 += o0 * v.v1 + o1 * v.v2;
    (*acc).a2 += e0 * v.v1 + e1 * v.v2;
    (*acc).a3 += o0 * v.v2 + o1 * v.v3;
    (*acc).a4 += e0 * v.v2 + e1 * v.v3;
    (*acc).a5 += o0 * v.v3 + o1 * v.v4;
    (*acc).a6 += e0 * v.v3 + e1 * v.v4;
    (*acc).a7 += o0 * v.v4 + o1 * v.v5;
}

@compute @workgroup_size(DIRECT_WG, 1, 1)
fn direct_up2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let run = run_at(wid.z, wid.x * DIRECT_WG + tid);
    // Stored columns jx0 - 1 .. jx0 + 4 (c0..c5; the Window's other slots are unused) and
    // the two stored rows of this output row's parity, through the upsampled coordinates
    // 2 jx and 2 iy, which the offset helpers map onto the stored grid (clamped) and test
    // against the upsampled size: the same as testing jx and iy against the stored one.
    let jx0 = i32(run.ox0 / 2u);
    let a = run.oy & 1u;
    let top = i32(run.oy >> 1u) - 1 + i32(a);
    let c = 2 * (jx0 - 1);
    let y = 2 * top;
    let z = 0u;
    let win = Window(
        col_offset(c), col_offset(c + 2), col_offset(c + 4), col_offset(c + 6), col_offset(c + 8), col_offset(c + 10), z, z, z, z,
        col_inside(c), col_inside(c + 2), col_inside(c + 4), col_inside(c + 6), col_inside(c + 8), col_inside(c + 10), false, false, false, false,
        row_offset(y), row_offset(y + 2), z,
        row_inside(y), row_inside(y + 2), false,
    );
    let m0 = wid.y * 4u * DIRECT_BLOCKS;
    let wr = weight_rows(m0, p.cin1 * 16u);
    let wr_b = weight_rows(m0 + 4u, p.cin1 * 16u);

    var acc = zero_acc();
    var acc_b = zero_acc();
    for (var ci = 0u; ci < p.cin1; ci++) {
        let plane = run.base1 + ci * run.plane;
        // [a][b][r][s]: this row parity's 8 weights, even columns then odd.
        let k = ci * 16u + a * 8u;
        let v0 = stored_row(win, plane + win.r0, win.j0);
        let v1 = stored_row(win, plane + win.r1, win.j1);
        up2_taps(&acc, v0, weights4(wr, k), weights4(wr, k + 1u), weights4(wr, k + 4u), weights4(wr, k + 5u));
        up2_taps(&acc, v1, weights4(wr, k + 2u), weights4(wr, k + 3u), weights4(wr, k + 6u), weights4(wr, k + 7u));
        if (DIRECT_BLOCKS == 2u) {
            up2_taps(&acc_b, v0, weights4(wr_b, k), weights4(wr_b, k + 1u), weights4(wr_b, k + 4u), weights4(wr_b, k + 5u));
            up2_taps(&acc_b, v1, weights4(wr_b, k + 2u), weights4(wr_b, k + 3u), weights4(wr_b, k + 6u), weights4(wr_b, k + 7u));
        }
    }
    store_blocks(run, m0, acc, acc_b, tid, wid.x * DIRECT_WG);
}

// ---------------------------------------------------------------------------------------
// `direct3x3s2`: the direct kernel for a 3x3 conv with stride 2 and pad 1 (Downsample2D),
// of a plain single input. A run's 8 outputs read input columns 2 ox0 - 1 .. 2 ox0 + 15
// (17, named below) of rows 2 oy - 1 .. 2 oy + 1; otherwise as `direct3x3`: 4 channels x 8
// pixels per invocation, no workgroup memory, the same runs and epilogue. It replaces the
// tiled kernel, whose 64 x 64 tiles left a batch-2 downsample with 2 to 4 workgroups.

struct Window17 {
    c0: u32, c1: u32, c2: u32, c3: u32, c4: u32, c5: u32, c6: u32, c7: u32, c8: u32,
    c9: u32, c10: u32, c11: u32, c12: u32, c13: u32, c14: u32, c15: u32, c16: u32,
    i0: bool, i1: bool, i2: bool, i3: bool, i4: bool, i5: bool, i6: bool, i7: bool, i8: bool,
    i9: bool, i10: bool, i11: bool, i12: bool, i13: bool, i14: bool, i15: bool, i16: bool,
}

fn window17(x: i32) -> Window17 {
    return Window17(
        col_offset(x), col_offset(x + 1), col_offset(x + 2), col_offset(x + 3), col_offset(x + 4), col_offset(x + 5), col_offset(x + 6), col_offset(x + 7), col_offset(x + 8),
        col_offset(x + 9), col_offset(x + 10), col_offset(x + 11), col_offset(x + 12), col_offset(x + 13), col_offset(x + 14), col_offset(x + 15), col_offset(x + 16),
        col_inside(x), col_inside(x + 1), col_inside(x + 2), col_inside(x + 3), col_inside(x + 4), col_inside(x + 5), col_inside(x + 6), col_inside(x + 7), col_inside(x + 8),
        col_inside(x + 9), col_inside(x + 10), col_inside(x + 11), col_inside(x + 12), col_inside(x + 13), col_inside(x + 14), col_inside(x + 15), col_inside(x + 16),
    );
}

// One input row (offset `r`, inside if `ok`) against one row of 3 taps, stride 2.
fn taps_s2(acc: ptr<function, Acc>, w: Window17, r: u32, ok: bool, k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>) {
    let v0 = select(0.0, x1[r + w.c0], ok && w.i0);
    let v1 = select(0.0, x1[r + w.c1], ok && w.i1);
    let v2 = select(0.0, x1[r + w.c2], ok && w.i2);
    let v3 = select(0.0, x1[r + w.c3], ok && w.i3);
    let v4 = select(0.0, x1[r + w.c4], ok && w.i4);
    let v5 = select(0.0, x1[r + w.c5], ok && w.i5);
    let v6 = select(0.0, x1[r + w.c6], ok && w.i6);
    let v7 = select(0.0, x1[r + w.c7], ok && w.i7);
    let v8 = select(0.0, x1[r + w.c8], ok && w.i8);
    let v9 = select(0.0, x1[r + w.c9], ok && w.i9);
    let v10 = select(0.0, x1[r + w.c10], ok && w.i10);
    let v11 = select(0.0, x1[r + w.c11], ok && w.i11);
    let v12 = select(0.0, x1[r + w.c12], ok && w.i12);
    let v13 = select(0.0, x1[r + w.c13], ok && w.i13);
    let v14 = select(0.0, x1[r + w.c14], ok && w.i14);
    let v15 = select(0.0, x1[r + w.c15], ok && w.i15);
    let v16 = select(0.0, x1[r + w.c16], ok && w.i16);
    (*acc).a0 += k0 * v0 + k1 * v1 + k2 * v2;
    (*acc).a1 += k0 * v2 + k1 * v3 + k2 * v4;
    (*acc).a2 += k0 * v4 + k1 * v5 + k2 * v6;
    (*acc).a3 += k0 * v6 + k1 * v7 + k2 * v8;
    (*acc).a4 += k0 * v8 + k1 * v9 + k2 * v10;
    (*acc).a5 += k0 * v10 + k1 * v11 + k2 * v12;
    (*acc).a6 += k0 * v12 + k1 * v13 + k2 * v14;
    (*acc).a7 += k0 * v14 + k1 * v15 + k2 * v16;
}

@compute @workgroup_size(DIRECT_WG, 1, 1)
fn direct3x3s2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let p = params;
    let run = run_at(wid.z, wid.x * DIRECT_WG + tid);
    let win = window17(2 * i32(run.ox0) - 1);
    let y = 2 * i32(run.oy) - 1;
    let r0 = row_offset(y);
    let r1 = row_offset(y + 1);
    let r2 = row_offset(y + 2);
    let j0 = row_inside(y);
    let j1 = row_inside(y + 1);
    let j2 = row_inside(y + 2);
    let m0 = wid.y * 4u;
    let wr = weight_rows(m0, p.cin1 * 9u);

    var acc = zero_acc();
    for (var ci = 0u; ci < p.cin1; ci++) {
        let plane = run.base1 + ci * run.plane;
        let k = ci * 9u;
        taps_s2(&acc, win, plane + r0, j0, weights4(wr, k), weights4(wr, k + 1u), weights4(wr, k + 2u));
        taps_s2(&acc, win, plane + r1, j1, weights4(wr, k + 3u), weights4(wr, k + 4u), weights4(wr, k + 5u));
        taps_s2(&acc, win, plane + r2, j2, weights4(wr, k + 6u), weights4(wr, k + 7u), weights4(wr, k + 8u));
    }
    store_run(run, m0, acc, tid, wid.x * DIRECT_WG);
}
