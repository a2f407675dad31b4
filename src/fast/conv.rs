//! Convolution as a GEMM over one image: `out[cout, oh*ow] = W[cout, cin*k*k] * col`, where
//! `col[cin*k*k, oh*ow]` is the im2col of the input (built in a reused scratch; a 1x1
//! stride-1 conv reads the input directly). Bias, the ResNet's time-embedding row and the
//! residual are written into the output first and the GEMM accumulates onto them (beta = 1),
//! so they cost no extra pass; only a non-unit output scale does.

use super::direct::{self, Packed};
use super::gemm::{gemm, MatRef};

/// A convolution's weights, kept in PyTorch's [cout, cin, k, k] order, which is already the
/// row-major GEMM operand [cout, cin*k*k].
pub struct Conv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    /// Nearest 2x upsampling of the input in front of the conv (`Upsample2D`), folded into
    /// the im2col gather.
    pub upsample: bool,
    /// 3x3 stride-1 convs run as the direct kernel over these panels (see [`Conv::pack`]).
    pub packed: Option<Packed>,
}

/// What the epilogue adds besides the bias.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// One value per output channel (the ResNet's projected time embedding).
    pub channel_add: Option<&'a [f32]>,
    /// [cout, oh*ow], added before scaling (the ResNet's shortcut, attention's input).
    pub residual: Option<&'a [f32]>,
    /// Multiplies the sum (1 / output_scale_factor); 1 skips the pass.
    pub scale: f32,
}

impl Conv {
    /// Output size for an input of h x w.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = if self.upsample { (2 * h, 2 * w) } else { (h, w) };
        let pad = self.k / 2;
        ((h + 2 * pad - self.k) / self.stride + 1, (w + 2 * pad - self.k) / self.stride + 1)
    }

    /// Packs the weights for the direct kernel when it applies (3x3, stride 1); the
    /// others keep the im2col + GEMM path.
    pub fn pack(mut self) -> Self {
        if self.k == 3 && self.stride == 1 {
            self.packed = Some(Packed::new(&self.weight, self.cin, self.cout));
        }
        self
    }

    /// Floats of scratch this conv needs for an h x w input.
    pub fn col_len(&self, h: usize, w: usize) -> usize {
        if self.packed.is_some() {
            return direct::scratch_len(self.cin, self.cout, h, w, self.upsample);
        }
        if self.direct() {
            return 0;
        }
        let (oh, ow) = self.out_size(h, w);
        self.cin * self.k * self.k * oh * ow
    }

    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && !self.upsample
    }

    /// Runs the conv on `x` [cin, h, w] into `out` [cout, oh, ow]; returns (oh, ow).
    pub fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        col: &mut [f32],
        out: &mut [f32],
        e: Epilogue,
    ) -> (usize, usize) {
        if let Some(p) = &self.packed {
            return direct::conv3x3(p, &self.bias, x, h, w, self.upsample, col, out, e);
        }
        let (oh, ow) = self.out_size(h, w);
        let n = oh * ow;
        let kk = self.cin * self.k * self.k;
        let out = &mut out[..self.cout * n];
        for (co, row) in out.chunks_exact_mut(n).enumerate() {
            let b = self.bias[co] + e.channel_add.map_or(0.0, |t| t[co]);
            match e.residual {
                Some(r) => {
                    for (o, &r) in row.iter_mut().zip(&r[co * n..(co + 1) * n]) {
                        *o = b + r;
                    }
                }
                None => row.fill(b),
            }
        }
        let b = if self.direct() {
            MatRef::rows(&x[..kk * n], n)
        } else {
            let col = &mut col[..kk * n];
            im2col(x, self.cin, h, w, self.k, self.stride, self.upsample, col);
            MatRef::rows(col, n)
        };
        gemm(self.cout, kk, n, MatRef::rows(&self.weight, kk), b, 1.0, out, n);
        if e.scale != 1.0 {
            for o in out.iter_mut() {
                *o *= e.scale;
            }
        }
        (oh, ow)
    }
}

/// `col[(ci, ky, kx), (oy, ox)] = x[ci, oy*stride + ky - pad, ox*stride + kx - pad]` (zero
/// outside), reading the nearest-2x upsampled input when `upsample`.
#[allow(clippy::too_many_arguments)] // the geometry of one gather
fn im2col(
    x: &[f32],
    cin: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    upsample: bool,
    col: &mut [f32],
) {
    let pad = k / 2;
    let (ih, iw) = if upsample { (2 * h, 2 * w) } else { (h, w) };
    let oh = (ih + 2 * pad - k) / stride + 1;
    let ow = (iw + 2 * pad - k) / stride + 1;
    let shift = usize::from(upsample);
    let mut rows = col.chunks_exact_mut(oh * ow);
    for ci in 0..cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let dst = rows.next().expect("col holds cin*k*k rows");
                // Output columns whose input column lies inside the image: ox in [lo, hi).
                let lo = (pad.saturating_sub(kx)).div_ceil(stride).min(ow);
                let hi = ((iw + pad - kx).div_ceil(stride)).clamp(lo, ow);
                for oy in 0..oh {
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= ih as isize {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[(iy as usize >> shift) * w..][..w];
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    let x0 = lo * stride + kx - pad;
                    if stride == 1 && !upsample {
                        d[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                    } else {
                        for (j, v) in d[lo..hi].iter_mut().enumerate() {
                            *v = src[(x0 + j * stride) >> shift];
                        }
                    }
                }
            }
        }
    }
}
