use super::{conv2d, group_norm, Conv2dSpec};

/// Softmax attention per (image, head) over `tokens` tokens, reading q, k, v from one
/// [batch, 3 * channels, tokens] tensor (q, then k, then v); returns [batch, channels, tokens].
pub fn attention(qkv: &[f32], batch: usize, channels: usize, tokens: usize, heads: usize) -> Vec<f32> {
    let d = channels / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let at = |b: usize, ch: usize, t: usize| qkv[(b * 3 * channels + ch) * tokens + t] as f64;
    let mut out = vec![0.0f32; batch * channels * tokens];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..tokens {
                let scores: Vec<f64> = (0..tokens)
                    .map(|j| {
                        (0..d).map(|c| at(b, h * d + c, i) * at(b, channels + h * d + c, j)).sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..d {
                    let v: f64 = (0..tokens).map(|j| weights[j] * at(b, 2 * channels + h * d + c, j)).sum();
                    out[(b * channels + h * d + c) * tokens + i] = (v / total) as f32;
                }
            }
        }
    }
    out
}

/// Parameters of diffusers' spatial `Attention` block (`_from_deprecated_attn_block`),
/// q/k/v weights concatenated along the output dimension: [3C, C] and [3C].
pub struct AttentionBlock<'a> {
    pub groups: usize,
    pub eps: f32,
    pub norm_gamma: &'a [f32],
    pub norm_beta: &'a [f32],
    pub qkv_weight: &'a [f32],
    pub qkv_bias: &'a [f32],
    pub out_weight: &'a [f32],
    pub out_bias: &'a [f32],
    pub heads: usize,
    pub rescale_output_factor: f32,
}

/// `(x + to_out(attention(to_qkv(group_norm(x))))) / rescale_output_factor`.
pub fn self_attention_block(x: &[f32], [n, c, h, w]: [usize; 4], p: &AttentionBlock) -> Vec<f32> {
    let one = Conv2dSpec { ksize: 1, stride: 1, pad: 0 };
    let normed = group_norm(x, n, c, h * w, p.groups, p.norm_gamma, p.norm_beta, p.eps, false);
    let qkv = conv2d(&normed, [n, c, h, w], p.qkv_weight, p.qkv_bias, 3 * c, one);
    let attn = attention(&qkv, n, c, h * w, p.heads);
    let projected = conv2d(&attn, [n, c, h, w], p.out_weight, p.out_bias, c, one);
    projected.iter().zip(x).map(|(a, b)| (a + b) / p.rescale_output_factor).collect()
}
