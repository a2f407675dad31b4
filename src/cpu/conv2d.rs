/// Geometry of a square-kernel convolution with zero padding.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dSpec {
    pub ksize: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dSpec {
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.ksize) / self.stride + 1, (w + 2 * self.pad - self.ksize) / self.stride + 1)
    }
}

/// `x` is [n, cin, h, w], `weight` [cout, cin, k, k]; returns [n, cout, oh, ow].
pub fn conv2d(
    x: &[f32],
    [n, cin, h, w]: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    cout: usize,
    spec: Conv2dSpec,
) -> Vec<f32> {
    let k = spec.ksize;
    let (oh, ow) = spec.out_size(h, w);
    let mut out = vec![0.0f32; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[co] as f64;
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * spec.stride + ky) as isize - spec.pad as isize;
                                let ix = (ox * spec.stride + kx) as isize - spec.pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cin + ci) * k + ky) * k + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * cout + co) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    out
}
