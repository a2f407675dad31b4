//! A quick check of every kernel against the CPU reference on the current adapter, small
//! enough to run in a browser tab in well under a second. The page runs it on demand;
//! the native tests run it too, so the browser and lavapipe are held to the same bar.

use crate::cpu;
use crate::error::Result;
use crate::gpu::attention::{self_attention, AttentionScratch, AttentionWeights};
use crate::gpu::concat::concat;
use crate::gpu::conv2d::{conv2d, Conv2dArgs, TembSlice};
use crate::gpu::group_norm::group_norm;
use crate::gpu::linear::linear;
use crate::gpu::timestep_embedding::{timestep_embedding, TimestepFrequencies};
use crate::gpu::upsample::upsample_nearest2x;
use crate::gpu::{Dispatch, Gpu, Tensor};

/// How one kernel did.
#[derive(Clone, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(serde::Serialize))]
pub struct KernelCheck {
    pub kernel: String,
    pub max_abs_err: f32,
    pub tolerance: f32,
    pub ok: bool,
}

/// Deterministic values in [-scale, scale) (a 64-bit LCG: no RNG crate in the engine).
struct Lcg(u64);

impl Lcg {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

pub async fn run(gpu: &Gpu) -> Result<Vec<KernelCheck>> {
    let mut rng = Lcg(0x5eed);
    let mut checks = Vec::new();
    let up = |label: &str, shape: &[usize], data: &[f32]| Tensor::from_slice(gpu, label, shape, data);

    // Fused convolution as an up-block uses it: skip concat, 2x upsample, temb, residual.
    let (n, c1, c2, cout, s) = (2, 5, 3, 7, 5);
    let (x1, x2) = (rng.take(n * c1 * s * s, 1.0), rng.take(n * c2 * s * s, 1.0));
    let w = rng.take(cout * (c1 + c2) * 9, 0.2);
    let b = rng.take(cout, 0.5);
    let temb = rng.take(n * cout, 1.0);
    let res = rng.take(n * cout * 4 * s * s, 1.0);
    let cat = cpu::concat_channels(&x1, &x2, n, c1, c2, s * s);
    let upsampled = cpu::upsample_nearest2x(&cat, n * (c1 + c2), s, s);
    let spec = cpu::Conv2dSpec { ksize: 3, stride: 1, pad: 1 };
    let mut expect = cpu::conv2d(&upsampled, [n, c1 + c2, 2 * s, 2 * s], &w, &b, cout, spec);
    let plane = 4 * s * s;
    for (i, v) in expect.iter_mut().enumerate() {
        *v += temb[(i / (cout * plane)) * cout + (i / plane) % cout] + res[i];
    }
    let (gx1, gx2) = (up("x1", &[n, c1, s, s], &x1)?, up("x2", &[n, c2, s, s], &x2)?);
    let (gw, gb) = (up("w", &[cout, c1 + c2, 3, 3], &w)?, up("b", &[cout], &b)?);
    let (gt, gr) = (up("temb", &[n, cout], &temb)?, up("res", &[n, cout, 2 * s, 2 * s], &res)?);
    let out = Tensor::zeros(gpu, "out", &[n, cout, 2 * s, 2 * s])?;
    let d = conv2d(
        gpu,
        &Conv2dArgs {
            x2: Some(&gx2),
            temb: Some(TembSlice { tensor: &gt, offset: 0 }),
            residual: Some(&gr),
            upsample: true,
            ..Conv2dArgs::new(&gx1, &gw, &gb, &out)
        },
    )?;
    checks.push(compare(gpu, "conv2d (concat+upsample+temb+residual)", &[&d], &out, &expect, 1e-5).await?);

    let stride2 = cpu::Conv2dSpec { ksize: 3, stride: 2, pad: 1 };
    let x = rng.take(3 * 4 * 7 * 7, 1.0);
    let w = rng.take(6 * 4 * 9, 0.3);
    let b = rng.take(6, 0.5);
    let expect = cpu::conv2d(&x, [3, 4, 7, 7], &w, &b, 6, stride2);
    let (gx, gw, gb) = (up("x", &[3, 4, 7, 7], &x)?, up("w", &[6, 4, 3, 3], &w)?, up("b", &[6], &b)?);
    let out = Tensor::zeros(gpu, "out", &[3, 6, 4, 4])?;
    let d = conv2d(gpu, &Conv2dArgs { stride: 2, ..Conv2dArgs::new(&gx, &gw, &gb, &out) })?;
    checks.push(compare(gpu, "conv2d stride 2", &[&d], &out, &expect, 1e-5).await?);

    let x = rng.take(2 * 6 * 7 * 7, 2.0);
    let gamma = rng.take(6, 1.5);
    let beta = rng.take(6, 0.5);
    let expect = cpu::group_norm(&x, 2, 6, 49, 3, &gamma, &beta, 1e-5, true);
    let gx = up("x", &[2, 6, 7, 7], &x)?;
    let (gg, gbeta) = (up("gamma", &[6], &gamma)?, up("beta", &[6], &beta)?);
    let out = Tensor::zeros(gpu, "out", &[2, 6, 7, 7])?;
    let d = group_norm(gpu, &gx, &gg, &gbeta, &out, 3, 1e-5, true)?;
    checks.push(compare(gpu, "group_norm+silu", &[&d], &out, &expect, 1e-5).await?);

    let x = rng.take(3 * 40, 1.0);
    let w = rng.take(70 * 40, 0.15);
    let b = rng.take(70, 0.5);
    let expect = cpu::linear(&x, 3, 40, &w, &b, 70, true, true);
    let (gx, gw, gb) = (up("x", &[3, 40], &x)?, up("w", &[70, 40], &w)?, up("b", &[70], &b)?);
    let out = Tensor::zeros(gpu, "out", &[3, 70])?;
    let d = linear(gpu, &gx, &gw, &gb, &out, true, true)?;
    checks.push(compare(gpu, "linear+silu", &[&d], &out, &expect, 1e-5).await?);

    let t = [0.0, 1.0, 499.5, 999.0];
    let expect = cpu::timestep_embedding(&t, 32, true, 0.0);
    let freqs = TimestepFrequencies::new(gpu, 32, true, 0.0)?;
    let gt = up("t", &[4], &t)?;
    let out = Tensor::zeros(gpu, "out", &[4, 32])?;
    let d = timestep_embedding(gpu, &freqs, &gt, &out)?;
    checks.push(compare(gpu, "timestep_embedding", &[&d], &out, &expect, 1e-6).await?);

    let (n, c, h, heads) = (2, 16, 5, 2);
    let x = rng.take(n * c * h * h, 1.0);
    let gamma = rng.take(c, 1.5);
    let beta = rng.take(c, 0.5);
    let qkv_w = rng.take(3 * c * c, 0.25);
    let qkv_b = rng.take(3 * c, 0.1);
    let out_w = rng.take(c * c, 0.25);
    let out_b = rng.take(c, 0.1);
    let expect = cpu::self_attention_block(
        &x,
        [n, c, h, h],
        &cpu::AttentionBlock {
            groups: 4,
            eps: 1e-5,
            norm_gamma: &gamma,
            norm_beta: &beta,
            qkv_weight: &qkv_w,
            qkv_bias: &qkv_b,
            out_weight: &out_w,
            out_bias: &out_b,
            heads,
            rescale_output_factor: 1.0,
        },
    );
    let gx = up("x", &[n, c, h, h], &x)?;
    let (gg, gbeta) = (up("gamma", &[c], &gamma)?, up("beta", &[c], &beta)?);
    let (gqw, gqb) = (up("qkv_w", &[3 * c, c, 1, 1], &qkv_w)?, up("qkv_b", &[3 * c], &qkv_b)?);
    let (gow, gob) = (up("out_w", &[c, c, 1, 1], &out_w)?, up("out_b", &[c], &out_b)?);
    let out = Tensor::zeros(gpu, "out", &[n, c, h, h])?;
    let block = self_attention(
        gpu,
        &gx,
        &AttentionWeights {
            norm_gamma: &gg,
            norm_beta: &gbeta,
            norm_affine: None,
            groups: 4,
            eps: 1e-5,
            qkv_weight: &gqw,
            qkv_bias: &gqb,
            out_weight: &gow,
            out_bias: &gob,
            heads,
            rescale_output_factor: 1.0,
        },
        &out,
        &AttentionScratch::new(gpu, &gx)?,
    )?;
    let ds: Vec<&Dispatch> = block.iter().collect();
    checks.push(compare(gpu, "self-attention block", &ds, &out, &expect, 2e-5).await?);

    let (a, b) = (rng.take(2 * 3 * 9, 1.0), rng.take(2 * 2 * 9, 1.0));
    let expect = cpu::concat_channels(&a, &b, 2, 3, 2, 9);
    let (ga, gb) = (up("a", &[2, 3, 3, 3], &a)?, up("b", &[2, 2, 3, 3], &b)?);
    let out = Tensor::zeros(gpu, "out", &[2, 5, 3, 3])?;
    let d = concat(gpu, &ga, &gb, &out)?;
    checks.push(compare(gpu, "concat", &[&d], &out, &expect, 0.0).await?);

    let x = rng.take(3 * 3 * 3, 1.0);
    let expect = cpu::upsample_nearest2x(&x, 3, 3, 3);
    let gx = up("x", &[1, 3, 3, 3], &x)?;
    let out = Tensor::zeros(gpu, "out", &[1, 3, 6, 6])?;
    let d = upsample_nearest2x(gpu, &gx, &out)?;
    checks.push(compare(gpu, "upsample", &[&d], &out, &expect, 0.0).await?);
    Ok(checks)
}

async fn compare(
    gpu: &Gpu,
    kernel: &str,
    dispatches: &[&Dispatch],
    out: &Tensor,
    expect: &[f32],
    tolerance: f32,
) -> Result<KernelCheck> {
    gpu.run(dispatches)?;
    let got = out.read(gpu).await?;
    let max_abs_err = got.iter().zip(expect).map(|(g, e)| (g - e).abs()).fold(0.0f32, |m, e| {
        if e.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(e)
        }
    });
    Ok(KernelCheck { kernel: kernel.to_string(), max_abs_err, tolerance, ok: max_abs_err <= tolerance })
}
