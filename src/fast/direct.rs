//! 3x3 stride-1 convolution (optionally behind a nearest 2x upsample) as a register-tiled
//! direct kernel, without im2col and without GEMM packing:
//!
//! - the input is copied once into a zero-padded plane per channel, (h+2) x (w+2), so the
//!   tap (ci, ky, kx) of output pixel p (counted over the padded width) is input element
//!   `p + offset[ci, ky, kx]`: every tap of NR consecutive pixels is one contiguous load;
//! - the weights are packed once at load into panels of MR output channels,
//!   `[cout / MR][cin * 9][MR]`, so the kernel broadcasts MR scalars per tap;
//! - each MR x NR tile of outputs lives in registers for the whole cin * 9 reduction.
//!
//! Outputs in the two pad columns of every row are computed and dropped (2 / (w + 2) of the
//! work). The epilogue (bias, time embedding, residual, scale) is the copy out of the tile
//! buffer. Natively the kernel is compiled twice, for AVX2+FMA (taken when the CPU has it)
//! and plain SSE2; in wasm32 it is the simd128 build of the same Rust.

use super::conv::Epilogue;

/// Output channels per tile (broadcast weights) and pixels per tile (vector loads).
#[cfg(not(target_arch = "wasm32"))]
pub const MR: usize = 6;
#[cfg(not(target_arch = "wasm32"))]
pub const NR: usize = 16;
// simd128 has 16 vector registers on the x86 hosts that JIT it: 4 x 8 accumulators (8 v128)
// plus 2 for B and one broadcast fit without spills.
#[cfg(target_arch = "wasm32")]
pub const MR: usize = 4;
#[cfg(target_arch = "wasm32")]
pub const NR: usize = 8;

/// Weights of a 3x3 conv packed into MR-channel panels (zero rows past cout).
pub struct Packed {
    pub panels: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
}

impl Packed {
    /// `weight` in PyTorch's [cout, cin, 3, 3] layout.
    pub fn new(weight: &[f32], cin: usize, cout: usize) -> Self {
        let k = cin * 9;
        let tiles = cout.div_ceil(MR);
        let mut panels = vec![0.0f32; tiles * k * MR];
        for co in 0..cout {
            let (t, r) = (co / MR, co % MR);
            for kk in 0..k {
                panels[(t * k + kk) * MR + r] = weight[co * k + kk];
            }
        }
        Packed { panels, cin, cout }
    }
}

/// Geometry of one call: padded plane and the tiles over it.
struct Geometry {
    oh: usize,
    ow: usize,
    /// Padded width and plane size.
    wp: usize,
    plane: usize,
    /// Pixels computed (oh rows of wp), rounded up to NR.
    pixels: usize,
}

fn geometry(h: usize, w: usize, upsample: bool) -> Geometry {
    let (oh, ow) = if upsample { (2 * h, 2 * w) } else { (h, w) };
    let wp = ow + 2;
    let plane = (oh + 2) * wp;
    Geometry { oh, ow, wp, plane, pixels: (oh * wp).next_multiple_of(NR) }
}

/// Floats of scratch a call needs: the padded input (with slack for the last tile's reads)
/// and the tile buffer.
pub fn scratch_len(cin: usize, cout: usize, h: usize, w: usize, upsample: bool) -> usize {
    let g = geometry(h, w, upsample);
    padded_len(&g, cin) + cout.next_multiple_of(MR) * g.pixels
}

fn padded_len(g: &Geometry, cin: usize) -> usize {
    // The last tile reads up to `pixels + 2 wp + 2` past its channel's start.
    cin * g.plane + g.pixels + 2 * g.wp + 2
}

/// `out[cout, oh, ow] = conv3x3(x)` (x [cin, h, w], nearest-2x upsampled first when
/// `upsample`) + bias + epilogue; returns (oh, ow).
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    p: &Packed,
    bias: &[f32],
    x: &[f32],
    h: usize,
    w: usize,
    upsample: bool,
    scratch: &mut [f32],
    out: &mut [f32],
    e: Epilogue,
) -> (usize, usize) {
    let g = geometry(h, w, upsample);
    let (xp, rest) = scratch.split_at_mut(padded_len(&g, p.cin));
    pad(x, p.cin, h, w, upsample, &g, xp);
    let tiles = &mut rest[..p.cout.next_multiple_of(MR) * g.pixels];
    run_tiles(p, xp, &g, tiles);
    // Epilogue: the valid columns of every row, plus bias, time embedding, residual, scale.
    let n = g.oh * g.ow;
    for co in 0..p.cout {
        let b = bias[co] + e.channel_add.map_or(0.0, |t| t[co]);
        let src = &tiles[co * g.pixels..];
        let dst = &mut out[co * n..(co + 1) * n];
        for oy in 0..g.oh {
            let s = &src[oy * g.wp..oy * g.wp + g.ow];
            let d = &mut dst[oy * g.ow..(oy + 1) * g.ow];
            match e.residual {
                Some(r) => {
                    let r = &r[co * n + oy * g.ow..co * n + (oy + 1) * g.ow];
                    for ((d, &s), &r) in d.iter_mut().zip(s).zip(r) {
                        *d = (s + b + r) * e.scale;
                    }
                }
                None => {
                    for (d, &s) in d.iter_mut().zip(s) {
                        *d = (s + b) * e.scale;
                    }
                }
            }
        }
    }
    (g.oh, g.ow)
}

/// Zero-padded copy of x (upsampled when asked) into `xp` [cin, oh+2, ow+2] + slack.
fn pad(x: &[f32], cin: usize, h: usize, w: usize, upsample: bool, g: &Geometry, xp: &mut [f32]) {
    xp.fill(0.0);
    for ci in 0..cin {
        let src = &x[ci * h * w..(ci + 1) * h * w];
        let dst = &mut xp[ci * g.plane..(ci + 1) * g.plane];
        for oy in 0..g.oh {
            let row = &mut dst[(oy + 1) * g.wp + 1..(oy + 1) * g.wp + 1 + g.ow];
            if upsample {
                let s = &src[(oy / 2) * w..(oy / 2 + 1) * w];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = s[j / 2];
                }
            } else {
                row.copy_from_slice(&src[oy * w..(oy + 1) * w]);
            }
        }
    }
}

fn run_tiles(p: &Packed, xp: &[f32], g: &Geometry, tiles: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            unsafe { avx2::run_tiles(p, xp, g, tiles) };
            return;
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::run_tiles(p, xp, g, tiles);
        #[allow(clippy::needless_return)]
        return;
    }
    #[allow(unreachable_code)]
    run_tiles_generic(p, xp, g, tiles);
}

/// The tap offsets of a 3x3 window in the padded plane.
fn tap_offsets(g: &Geometry) -> [usize; 9] {
    std::array::from_fn(|t| (t / 3) * g.wp + t % 3)
}

/// Every MR x NR tile: the weight panel of MR channels stays in L1 while the pixel tiles
/// stream past it. Plain Rust that LLVM vectorises (simd128 in wasm, SSE2 natively).
fn run_tiles_generic(p: &Packed, xp: &[f32], g: &Geometry, tiles: &mut [f32]) {
    let k = p.cin * 9;
    let offsets = tap_offsets(g);
    for (t, panel) in p.panels.chunks_exact(k * MR).enumerate() {
        let rows = &mut tiles[t * MR * g.pixels..(t + 1) * MR * g.pixels];
        for p0 in (0..g.pixels).step_by(NR) {
            let mut acc = [[0.0f32; NR]; MR];
            for ci in 0..p.cin {
                let plane = &xp[ci * g.plane + p0..];
                let a = &panel[ci * 9 * MR..(ci + 1) * 9 * MR];
                for (tap, &off) in offsets.iter().enumerate() {
                    let b: &[f32; NR] = plane[off..off + NR].try_into().expect("NR floats");
                    let a: &[f32; MR] = a[tap * MR..(tap + 1) * MR].try_into().expect("MR floats");
                    for r in 0..MR {
                        for j in 0..NR {
                            acc[r][j] += a[r] * b[j];
                        }
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                rows[r * g.pixels + p0..r * g.pixels + p0 + NR].copy_from_slice(row);
            }
        }
    }
}

/// The same tiles with AVX2 + FMA intrinsics: 6 x 16 outputs in 12 ymm accumulators, two
/// unaligned loads and six broadcasts per tap.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{tap_offsets, Geometry, Packed, MR, NR};
    use std::arch::x86_64::*;

    const _: () = assert!(MR == 6 && NR == 16);

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run_tiles(p: &Packed, xp: &[f32], g: &Geometry, tiles: &mut [f32]) {
        let k = p.cin * 9;
        let offsets = tap_offsets(g);
        // Bounds the raw reads below: the last tile reads NR floats at its largest offset.
        let last_read = (p.cin - 1) * g.plane + (g.pixels - NR) + offsets[8] + NR;
        assert!(last_read <= xp.len(), "padded input too short");
        assert!(
            p.panels.len() >= p.cout.div_ceil(MR) * k * MR
                && tiles.len() >= p.cout.div_ceil(MR) * MR * g.pixels
        );
        let xp = xp.as_ptr();
        for (t, panel) in p.panels.chunks_exact(k * MR).enumerate() {
            let out = tiles.as_mut_ptr().add(t * MR * g.pixels);
            for p0 in (0..g.pixels).step_by(NR) {
                let mut c = [_mm256_setzero_ps(); 12];
                let mut a = panel.as_ptr();
                for ci in 0..p.cin {
                    let plane = xp.add(ci * g.plane + p0);
                    for &off in &offsets {
                        let b0 = _mm256_loadu_ps(plane.add(off));
                        let b1 = _mm256_loadu_ps(plane.add(off + 8));
                        for r in 0..MR {
                            let ar = _mm256_broadcast_ss(&*a.add(r));
                            c[2 * r] = _mm256_fmadd_ps(ar, b0, c[2 * r]);
                            c[2 * r + 1] = _mm256_fmadd_ps(ar, b1, c[2 * r + 1]);
                        }
                        a = a.add(MR);
                    }
                }
                for r in 0..MR {
                    _mm256_storeu_ps(out.add(r * g.pixels + p0), c[2 * r]);
                    _mm256_storeu_ps(out.add(r * g.pixels + p0 + 8), c[2 * r + 1]);
                }
            }
        }
    }
}

/// The same tiles with wasm simd128: 4 x 8 outputs in 8 v128 accumulators (no FMA in
/// baseline simd128: a multiply and an add), two loads and four splats per tap; small enough
/// that the JIT keeps every accumulator in a register on x86's 16 xmm.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{tap_offsets, Geometry, Packed, MR, NR};
    use core::arch::wasm32::*;

    const _: () = assert!(MR == 4 && NR == 8);

    pub fn run_tiles(p: &Packed, xp: &[f32], g: &Geometry, tiles: &mut [f32]) {
        let k = p.cin * 9;
        let offsets = tap_offsets(g);
        let last_read = (p.cin - 1) * g.plane + (g.pixels - NR) + offsets[8] + NR;
        assert!(last_read <= xp.len(), "padded input too short");
        let tiles_n = p.cout.div_ceil(MR);
        assert!(p.panels.len() >= tiles_n * k * MR && tiles.len() >= tiles_n * MR * g.pixels);
        let xp = xp.as_ptr();
        for (t, panel) in p.panels.chunks_exact(k * MR).enumerate() {
            // SAFETY (every raw access below): reads stay below `last_read` and inside the
            // panel (asserted above); writes stay inside tile t's MR rows of `tiles`.
            unsafe {
                let out = tiles.as_mut_ptr().add(t * MR * g.pixels);
                for p0 in (0..g.pixels).step_by(NR) {
                    let z = f32x4_splat(0.0);
                    let (mut c00, mut c01, mut c10, mut c11) = (z, z, z, z);
                    let (mut c20, mut c21, mut c30, mut c31) = (z, z, z, z);
                    let mut a = panel.as_ptr();
                    for ci in 0..p.cin {
                        let plane = xp.add(ci * g.plane + p0);
                        for &off in &offsets {
                            let b0 = v128_load(plane.add(off) as *const v128);
                            let b1 = v128_load(plane.add(off + 4) as *const v128);
                            let a0 = f32x4_splat(*a);
                            c00 = f32x4_add(c00, f32x4_mul(a0, b0));
                            c01 = f32x4_add(c01, f32x4_mul(a0, b1));
                            let a1 = f32x4_splat(*a.add(1));
                            c10 = f32x4_add(c10, f32x4_mul(a1, b0));
                            c11 = f32x4_add(c11, f32x4_mul(a1, b1));
                            let a2 = f32x4_splat(*a.add(2));
                            c20 = f32x4_add(c20, f32x4_mul(a2, b0));
                            c21 = f32x4_add(c21, f32x4_mul(a2, b1));
                            let a3 = f32x4_splat(*a.add(3));
                            c30 = f32x4_add(c30, f32x4_mul(a3, b0));
                            c31 = f32x4_add(c31, f32x4_mul(a3, b1));
                            a = a.add(MR);
                        }
                    }
                    for (r, (lo, hi)) in
                        [(c00, c01), (c10, c11), (c20, c21), (c30, c31)].into_iter().enumerate()
                    {
                        let o = out.add(r * g.pixels + p0);
                        v128_store(o as *mut v128, lo);
                        v128_store(o.add(4) as *mut v128, hi);
                    }
                }
            }
        }
    }
}

/// The generic kernel's result for `x` (tests compare it with the dispatched one).
#[cfg(test)]
pub fn generic_for_tests(p: &Packed, bias: &[f32], x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let g = geometry(h, w, false);
    let mut xp = vec![0.0; padded_len(&g, p.cin)];
    pad(x, p.cin, h, w, false, &g, &mut xp);
    let mut tiles = vec![0.0; p.cout.next_multiple_of(MR) * g.pixels];
    run_tiles_generic(p, &xp, &g, &mut tiles);
    let mut out = vec![0.0; p.cout * h * w];
    for co in 0..p.cout {
        for oy in 0..h {
            for ox in 0..w {
                out[(co * h + oy) * w + ox] = tiles[co * g.pixels + oy * g.wp + ox] + bias[co];
            }
        }
    }
    out
}
