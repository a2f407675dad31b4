//! diffusers' spatial self-attention block over one image: GroupNorm, q/k/v as one 1x1 conv
//! [3c, c], per head S = Q^T K / sqrt(d) and O = V softmax(S)^T as small GEMMs, then to_out
//! with the residual in its epilogue.

use super::conv::{Conv, Epilogue};
use super::exp;
use super::gemm::{gemm, MatRef};
use super::norm::Norm;

pub struct Attention {
    pub norm: Norm,
    /// [3c, c, 1, 1]: to_q, to_k, to_v stacked.
    pub qkv: Conv,
    /// [c, c, 1, 1]
    pub out: Conv,
    pub heads: usize,
    pub rescale_output_factor: f32,
}

/// Scratch one attention block needs, sized by [`Attention::scratch_len`].
pub struct AttentionScratch<'a> {
    pub normed: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub scores: &'a mut [f32],
    pub heads: &'a mut [f32],
}

impl Attention {
    /// Floats of (normed, qkv, scores, heads) scratch for `tokens` tokens.
    pub fn scratch_len(&self, tokens: usize) -> [usize; 4] {
        let c = self.out.cout;
        [c * tokens, 3 * c * tokens, tokens * tokens, c * tokens]
    }

    /// `out = (x + to_out(attention(to_qkv(norm(x))))) / rescale_output_factor`, x [c, tokens].
    pub fn run(&self, x: &[f32], h: usize, w: usize, s: AttentionScratch, out: &mut [f32]) {
        let c = self.out.cout;
        let t = h * w;
        let d = c / self.heads;
        self.norm.run(x, c, t, false, s.normed);
        self.qkv.run(s.normed, h, w, &mut [], s.qkv, Epilogue { scale: 1.0, ..Default::default() });
        let scale = 1.0 / (d as f32).sqrt();
        let scores = &mut s.scores[..t * t];
        for head in 0..self.heads {
            let q = &s.qkv[head * d * t..(head + 1) * d * t];
            let k = &s.qkv[(c + head * d) * t..(c + (head + 1) * d) * t];
            let v = &s.qkv[(2 * c + head * d) * t..(2 * c + (head + 1) * d) * t];
            // scores[i, j] = sum_c q[c, i] k[c, j]
            gemm(t, d, t, MatRef::transposed(q, t), MatRef::rows(k, t), 0.0, scores, t);
            for row in scores.chunks_exact_mut(t) {
                softmax(row, scale);
            }
            // heads[c, i] = sum_j v[c, j] p[i, j]
            let o = &mut s.heads[head * d * t..(head + 1) * d * t];
            gemm(d, t, t, MatRef::rows(v, t), MatRef::transposed(scores, t), 0.0, o, t);
        }
        self.out.run(
            s.heads,
            h,
            w,
            &mut [],
            out,
            Epilogue { residual: Some(x), scale: 1.0 / self.rescale_output_factor, ..Default::default() },
        );
    }
}

/// `row = softmax(scale * row)`, in passes LLVM vectorises (lane-wise max and sum).
fn softmax(row: &mut [f32], scale: f32) {
    const L: usize = 8;
    let mut m = [f32::NEG_INFINITY; L];
    let chunks = row.chunks_exact(L);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..L {
            m[l] = m[l].max(c[l]);
        }
    }
    let max = m.iter().copied().fold(tail, f32::max);
    for v in row.iter_mut() {
        *v = exp((*v - max) * scale);
    }
    let mut s = [0.0f32; L];
    let chunks = row.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..L {
            s[l] += c[l];
        }
    }
    let inv = 1.0 / (s.iter().sum::<f32>() + tail);
    for v in row.iter_mut() {
        *v *= inv;
    }
}
