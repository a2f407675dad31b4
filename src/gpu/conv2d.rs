//! Launcher for `shaders/conv2d.wgsl`: 3x3 or 1x1 (any square kernel) convolution, stride
//! 1 or 2, zero padding, bias, with the U-Net's fusions (two-input skip concat, nearest 2x
//! upsample of the input, time-embedding and residual epilogue, SiLU, output scale).

use bytemuck::{Pod, Zeroable};

use super::{dims4, expect_shape, groups, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::group_norm::NORM_STATS;
use crate::gpu::pipeline::Access;
use crate::gpu::weight_texture::weight_texture;

const KERNEL: KernelDef = KernelDef {
    name: "conv2d",
    source: include_str!("../../shaders/conv2d.wgsl"),
    entry: "main",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::Uniform,
        Access::Read,
        Access::Texture,
    ],
};
/// The same shader's entry point for at most [`NARROW_MAX_COUT`] output channels.
const NARROW: KernelDef = KernelDef { entry: "narrow", ..KERNEL };
/// The barrier-free entry points (stride 1; 3x3 with pad 1, or 1x1 with pad 0).
const DIRECT3: KernelDef = KernelDef { entry: "direct3x3", ..KERNEL };
const DIRECT1: KernelDef = KernelDef { entry: "direct1x1", ..KERNEL };
const DIRECT3S2: KernelDef = KernelDef { entry: "direct3x3s2", ..KERNEL };
const DIRECT_UP2: KernelDef = KernelDef { entry: "direct_up2", ..KERNEL };
const OP: &str = "conv2d";
/// `main`'s workgroup is 256 invocations, `256 / wg_y` pixels by `wg_y` output channels,
/// each computing 4 x 4 outputs: 16 (64 x 64 tiles), or 8 (32 x 128) for outputs of at
/// most 32 channels, set through the `WG_Y` override.
const SLIM_MAX_COUT: usize = 32;
const NARROW_MAX_COUT: usize = 4;
const NARROW_WG: usize = 256; // = NARROW_WG in conv2d.wgsl
/// Invocations per workgroup of the direct kernels (`DIRECT_WG`).
const DIRECT_WG: usize = 64;
const DIRECT_MIN_WG: usize = 8;
/// Workgroups a heavy dispatch should have at least, where its size allows: enough for
/// every core of a CPU adapter and a fair share of a GPU's SMs at batch 2.
const MIN_WORKGROUPS: usize = 64;
/// Output pixels (along a row) and channels one invocation of a direct kernel computes
/// (= DIRECT_PX and 4 in conv2d.wgsl).
pub const DIRECT_PX: usize = 8;
pub const DIRECT_CH: usize = 4;

/// Which of the shader's kernels computes a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvVariant {
    /// The 64 x 64 (or 32 x 128) workgroup tile through workgroup memory: any kernel size
    /// and stride.
    Tiled,
    /// Register tiles with no barrier in the hot loop, [`DIRECT_CH`] channels (times
    /// [`Gpu::channel_blocks`] at stride 1) x [`DIRECT_PX`] pixels per invocation: stride 1,
    /// 3x3 with pad 1 or 1x1 with pad 0; or 3x3, pad 1, stride 2 of one plain input
    /// (Downsample2D).
    Direct,
    /// One invocation per pixel for all (at most 4) output channels.
    Narrow,
    /// Nearest 2x upsample + 3x3 conv as four 2x2 convs of the stored input (4 taps per
    /// output instead of 9), the direct kernels' register tiles; its weight is the packed
    /// [cout, cin * 16] of [`pack_up2`]. Never chosen by [`ConvVariant::auto`]: the caller
    /// owns the packing.
    Up2,
}

impl ConvVariant {
    /// The variant [`conv2d`] picks when none is asked for: direct wherever it applies
    /// (faster than the tile and than `narrow` at every shape of the shipped models on
    /// lavapipe, README), and the one with enough workgroups at batch 2.
    pub fn auto(cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        if Self::direct_applies(k, stride, pad) {
            ConvVariant::Direct
        } else if cout <= NARROW_MAX_COUT {
            ConvVariant::Narrow
        } else {
            ConvVariant::Tiled
        }
    }

    pub fn direct_applies(k: usize, stride: usize, pad: usize) -> bool {
        (stride == 1 && ((k == 3 && pad == 1) || (k == 1 && pad == 0))) || (stride == 2 && k == 3 && pad == 1)
    }
}

/// The projected time embedding added per (image, channel) in the epilogue: channels
/// `[offset, offset + cout)` of each row of `tensor` [batch, width]. One linear can project
/// the embedding for every ResNet at once; each conv then reads its own slice.
pub struct TembSlice<'a> {
    pub tensor: &'a Tensor,
    pub offset: usize,
}

/// The input of a convolution GroupNorm'd (and SiLU'd) as it is read. Direct kernels only.
pub struct NormIn<'a> {
    pub stats: NormStats<'a>,
    pub silu: bool,
}

/// Where a normalised input's GroupNorm statistics come from.
pub enum NormStats<'a> {
    /// `group_norm_stats`' output for the (concatenated) input, [n, cin1 + cin2, NORM_STATS].
    Pass(&'a Tensor),
    /// Merged by the convolution itself from the partial statistics that the convolutions
    /// which wrote `x` and `x2` left in their tails ([`Tensor::with_stats`]); `affine` is
    /// the GroupNorm's gamma then beta, [2 (cin1 + cin2)].
    Partials { affine: &'a Tensor, groups: usize, eps: f32 },
}

/// The 1x1 shortcut of a ResNet whose cin != cout, folded into its conv2 (direct 3x3 only):
/// the shortcut reads the block's input `x`, or the channel concat of `x` and `x2` (an up
/// block's hidden state and skip), as stored. The conv's weight is then the packed
/// [cout, cin1 * 9 + shortcut channels] matrix of [`pack_shortcut`] and its bias the sum
/// of the two biases.
pub struct ShortcutIn<'a> {
    pub x: &'a Tensor,
    pub x2: Option<&'a Tensor>,
}

/// conv2's [cout, cin, 3, 3] weight and the shortcut's [cout, cs, 1, 1] side by side per
/// output channel, [cout, cin * 9 + cs] (the weight of a conv with a [`ShortcutIn`]).
pub fn pack_shortcut(conv2: &[f32], shortcut: &[f32], cout: usize) -> Vec<f32> {
    let (a, b) = (conv2.len() / cout, shortcut.len() / cout);
    let mut out = Vec::with_capacity(conv2.len() + shortcut.len());
    for m in 0..cout {
        out.extend_from_slice(&conv2[m * a..(m + 1) * a]);
        out.extend_from_slice(&shortcut[m * b..(m + 1) * b]);
    }
    out
}

/// A [cout, cin, 3, 3] kernel as the four 2x2 kernels it becomes on the stored grid of a
/// nearest-2x-upsampled input, [cout, cin, a, b, r, s] ([`ConvVariant::Up2`]): output row
/// parity a takes kernel rows {0} and {1, 2} (a = 0) or {0, 1} and {2} (a = 1) onto stored
/// rows r = 0, 1, summed; columns likewise by parity b.
pub fn pack_up2(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    const LANDS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
    let mut out = Vec::with_capacity(cout * cin * 16);
    for kernel in weight.chunks_exact(9).take(cout * cin) {
        for rows in LANDS {
            for cols in LANDS {
                for ky in rows {
                    for kx in cols {
                        out.push(ky.iter().flat_map(|&y| kx.iter().map(move |&x| kernel[y * 3 + x])).sum());
                    }
                }
            }
        }
    }
    out
}

/// - `x`: [n, cin1, h, w] (or [n, cin1, h/2, w/2] with `upsample`)
/// - `x2`: [n, cin2, ..] read as channels after `x`'s, or `None`
/// - `weight`: [cout, cin1 + cin2, k, k]; `bias`: [cout]
/// - `residual`: same shape as `out`; `out`: [n, cout, oh, ow]
pub struct Conv2dArgs<'a> {
    pub x: &'a Tensor,
    pub x2: Option<&'a Tensor>,
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub temb: Option<TembSlice<'a>>,
    pub residual: Option<&'a Tensor>,
    /// Normalise the input as it is read (the GroupNorm in front of the conv, fused).
    pub norm: Option<NormIn<'a>>,
    /// A folded 1x1 shortcut (set by [`Conv2dArgs::with_shortcut`]).
    pub shortcut: Option<ShortcutIn<'a>>,
    pub out: &'a Tensor,
    pub stride: usize,
    pub pad: usize,
    pub upsample: bool,
    pub silu: bool,
    pub out_scale: f32,
    /// `None`: [`ConvVariant::auto`]. Tests and the bench ask for each variant.
    pub variant: Option<ConvVariant>,
    /// A direct kernel reads the weight buffer even where the adapter reads weights as
    /// texels ([`Gpu::weight_textures`]); tests check both ways.
    pub buffer_weights: bool,
    /// Blocks of 4 output channels per invocation of the direct kernels but the stride-2
    /// one (1 or 2); `None`: [`Gpu::channel_blocks`]. Tests check both.
    pub channel_blocks: Option<usize>,
}

impl<'a> Conv2dArgs<'a> {
    /// A plain convolution; set the other fields to fuse more.
    pub fn new(x: &'a Tensor, weight: &'a Tensor, bias: &'a Tensor, out: &'a Tensor) -> Self {
        let k = weight.shape().get(2).copied().unwrap_or(1);
        Conv2dArgs {
            x,
            x2: None,
            weight,
            bias,
            temb: None,
            residual: None,
            norm: None,
            shortcut: None,
            out,
            stride: 1,
            pad: k / 2,
            upsample: false,
            silu: false,
            out_scale: 1.0,
            variant: None,
            buffer_weights: false,
            channel_blocks: None,
        }
    }

    /// A 3x3 convolution of `x` plus the 1x1 `shortcut` of its own inputs, one dispatch:
    /// `weight` [cout, cin * 9 + shortcut channels] from [`pack_shortcut`], `bias` the sum.
    pub fn with_shortcut(
        x: &'a Tensor,
        weight: &'a Tensor,
        bias: &'a Tensor,
        out: &'a Tensor,
        shortcut: ShortcutIn<'a>,
    ) -> Self {
        Conv2dArgs { shortcut: Some(shortcut), pad: 1, ..Conv2dArgs::new(x, weight, bias, out) }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    cin1: u32,
    cin2: u32,
    cout: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    ksize: u32,
    stride: u32,
    pad: u32,
    upsample: u32,
    flags: u32,
    temb_stride: u32,
    temb_offset: u32,
    out_scale: f32,
    norm_eps: f32,
    tiles1: u32,
    tiles2: u32,
    tiles_out: u32,
    cin3: u32,
    _pad: [u32; 3],
}

/// Channels of an input read after `x`'s (`None`: 0), which must match `x` [n, _, sh, sw]
/// in batch and stored size.
fn extra_input_channels(
    name: &str,
    t: Option<&Tensor>,
    x: &Tensor,
    n: usize,
    sh: usize,
    sw: usize,
) -> Result<usize> {
    let Some(t) = t else { return Ok(0) };
    let [tn, c, th, tw] = dims4(OP, name, t)?;
    if (tn, th, tw) != (n, sh, sw) {
        return Err(EngineError::shape(
            OP,
            format!("{name} {:?} does not match x {:?} in N, H, W", t.shape(), x.shape()),
        ));
    }
    Ok(c)
}

/// Output spatial size of a convolution, or `None` if the kernel does not fit.
pub fn out_size(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Option<(usize, usize)> {
    let oh = (h + 2 * pad).checked_sub(k)? / stride + 1;
    let ow = (w + 2 * pad).checked_sub(k)? / stride + 1;
    Some((oh, ow))
}

pub fn conv2d(gpu: &Gpu, a: &Conv2dArgs) -> Result<Dispatch> {
    let [n, cin1, sh, sw] = dims4(OP, "x", a.x)?;
    let (h, w) = if a.upsample { (2 * sh, 2 * sw) } else { (sh, sw) };
    if a.shortcut.is_some() && (a.x2.is_some() || a.residual.is_some() || a.upsample) {
        return Err(EngineError::shape(
            OP,
            "a folded shortcut takes the x2 and residual slots: none of x2, residual or upsample",
        ));
    }
    // With a folded shortcut, "x2" is the shortcut's first input and "x3" its second.
    let second = a.shortcut.as_ref().map_or(a.x2, |s| Some(s.x));
    let third = a.shortcut.as_ref().and_then(|s| s.x2);
    let cin2 = extra_input_channels("x2", second, a.x, n, sh, sw)?;
    let cin3 = extra_input_channels("shortcut x2", third, a.x, n, sh, sw)?;
    let [cout, wcin, k, kw] = match a.shortcut {
        None if a.variant == Some(ConvVariant::Up2) => match a.weight.shape() {
            &[cout, k] if k == cin1 * 16 && cin2 == 0 => [cout, cin1, 3, 3],
            other => {
                return Err(EngineError::shape(
                    OP,
                    format!(
                        "the Up2 kernel needs one input and the packed weight [cout, {}], not {other:?}",
                        cin1 * 16
                    ),
                ))
            }
        },
        None => dims4(OP, "weight", a.weight)?,
        Some(_) => {
            let packed = cin1 * 9 + cin2 + cin3;
            match a.weight.shape() {
                &[cout, k] if k == packed => [cout, cin1 + cin2, 3, 3],
                other => {
                    return Err(EngineError::shape(
                        OP,
                        format!("a folded shortcut needs the packed weight [cout, {packed}], not {other:?}"),
                    ))
                }
            }
        }
    };
    if wcin != cin1 + cin2 || k != kw {
        return Err(EngineError::shape(
            OP,
            format!(
                "weight {:?} expects {wcin} square-kernel input channels, inputs have {}",
                a.weight.shape(),
                cin1 + cin2
            ),
        ));
    }
    // The shader divides tap indices by reciprocal multiplication, exact below 2^22.
    if (cin1 + cin2) * k * k >= 1 << 22 {
        return Err(EngineError::Unsupported {
            op: OP,
            message: format!("{} input taps per output (most is 2^22)", (cin1 + cin2) * k * k),
        });
    }
    if a.stride == 0 {
        return Err(EngineError::shape(OP, "stride must be at least 1"));
    }
    expect_shape(OP, "bias", a.bias, &[cout])?;
    let (oh, ow) = out_size(h, w, k, a.stride, a.pad)
        .ok_or_else(|| EngineError::shape(OP, format!("kernel {k} larger than padded input {h}x{w}")))?;
    expect_shape(OP, "out", a.out, &[n, cout, oh, ow])?;
    if let Some(r) = a.residual {
        expect_shape(OP, "residual", r, &[n, cout, oh, ow])?;
    }
    let (temb_stride, temb_offset) = match &a.temb {
        Some(t) => {
            let ok = t.tensor.shape().len() == 2
                && t.tensor.shape()[0] == n
                && t.offset + cout <= t.tensor.shape()[1];
            if !ok {
                return Err(EngineError::shape(
                    OP,
                    format!(
                        "temb {:?} has no channels [{}, {}) for batch {n}",
                        t.tensor.shape(),
                        t.offset,
                        t.offset + cout
                    ),
                ));
            }
            (t.tensor.shape()[1], t.offset)
        }
        None => (0, 0),
    };

    // The channels the GroupNorm covers: a folded shortcut's are read as stored.
    let cin = if a.shortcut.is_some() { cin1 } else { cin1 + cin2 };
    let (norm_src, norm_groups, norm_eps, tiles1, tiles2) = match a.norm.as_ref().map(|m| &m.stats) {
        None => (0, 1, 0.0, 0, 0),
        Some(NormStats::Pass(stats)) => {
            expect_shape(OP, "norm stats", stats, &[n, cin, NORM_STATS])?;
            (0, 1, 0.0, 0, 0)
        }
        Some(NormStats::Partials { affine, groups, eps }) => {
            expect_shape(OP, "norm affine", affine, &[2 * cin])?;
            if *groups == 0 || cin % groups != 0 || *groups > MAX_NORM_GROUPS {
                return Err(EngineError::shape(
                    OP,
                    format!(
                        "{groups} norm groups for {cin} channels (at most {MAX_NORM_GROUPS}, dividing them)"
                    ),
                ));
            }
            let tiles = |name: &str, t: Option<&Tensor>| match t {
                None => Ok(0),
                Some(t) if t.stats_tiles() > 0 => Ok(t.stats_tiles()),
                Some(t) => Err(EngineError::shape(
                    OP,
                    format!("{name} {:?} carries no partial statistics for its GroupNorm", t.shape()),
                )),
            };
            (1, *groups, *eps, tiles("x", Some(a.x))?, tiles("x2", a.x2)?)
        }
    };
    let pixels = n * oh * ow;
    let flags = a.temb.is_some() as u32 | (a.residual.is_some() as u32) << 1 | (a.silu as u32) << 2;
    let params = Params {
        batch: u32_of(OP, "batch", n)?,
        cin1: u32_of(OP, "cin1", cin1)?,
        cin2: u32_of(OP, "cin2", cin2)?,
        cout: u32_of(OP, "cout", cout)?,
        in_h: u32_of(OP, "height", h)?,
        in_w: u32_of(OP, "width", w)?,
        out_h: oh as u32,
        out_w: ow as u32,
        ksize: k as u32,
        stride: u32_of(OP, "stride", a.stride)?,
        pad: u32_of(OP, "pad", a.pad)?,
        upsample: a.upsample as u32,
        flags,
        temb_stride: u32_of(OP, "temb width", temb_stride)?,
        temb_offset: u32_of(OP, "temb offset", temb_offset)?,
        out_scale: a.out_scale,
        norm_eps,
        tiles1: u32_of(OP, "x tiles", tiles1)?,
        tiles2: u32_of(OP, "x2 tiles", tiles2)?,
        tiles_out: u32_of(OP, "out tiles", a.out.stats_tiles())?,
        cin3: u32_of(OP, "shortcut x2 channels", cin3)?,
        _pad: [0; 3],
    };
    u32_of(OP, "pixels", pixels)?;
    let ph = &gpu.placeholder;
    // The stride-2 direct kernel reads one plain input: a stride-2 conv with a second or
    // upsampled input stays on the tile when no variant is asked for.
    let variant = a.variant.unwrap_or(match ConvVariant::auto(cout, k, a.stride, a.pad) {
        ConvVariant::Direct if a.stride == 2 && (second.is_some() || a.upsample) => ConvVariant::Tiled,
        v => v,
    });
    if a.norm.is_some() && variant != ConvVariant::Direct {
        return Err(EngineError::shape(
            OP,
            format!("a normalised input needs the direct kernel, not {variant:?}"),
        ));
    }
    if a.shortcut.is_some() && variant != ConvVariant::Direct {
        return Err(EngineError::shape(
            OP,
            format!("a folded shortcut needs the direct kernel, not {variant:?}"),
        ));
    }
    let norm_mode = a.norm.as_ref().map_or(0, |m| 1 + m.silu as u32);
    // Channel blocks per direct-kernel invocation: all but the stride-2 kernel take 1 or 2.
    let blocks = match a.channel_blocks.unwrap_or(gpu.channel_blocks()) {
        b @ (1 | 2) if a.stride == 1 && matches!(variant, ConvVariant::Direct | ConvVariant::Up2) => b,
        1 | 2 => 1,
        b => return Err(EngineError::shape(OP, format!("{b} channel blocks: 1 or 2"))),
    };
    let layout = Layout::of(variant, n, cout, oh, ow, blocks);
    let emit = a.out.stats_tiles() > 0;
    if emit && a.out.stats_tiles() != layout.tiles {
        return Err(EngineError::shape(
            OP,
            format!(
                "out carries {} statistics tiles per channel, the {variant:?} kernel writes {}",
                a.out.stats_tiles(),
                layout.tiles
            ),
        ));
    }
    let batch = u32_of(OP, "batch", n)?;
    let mut texture = None;
    let (kernel, grid) = match variant {
        ConvVariant::Narrow => {
            if cout > NARROW_MAX_COUT {
                return Err(EngineError::shape(
                    OP,
                    format!("the narrow kernel takes at most 4 channels, not {cout}"),
                ));
            }
            if emit {
                return Err(EngineError::shape(OP, "the narrow kernel writes no partial statistics"));
            }
            (gpu.kernel(&NARROW, &[])?, [groups(pixels, NARROW_WG), 1, 1])
        }
        ConvVariant::Direct | ConvVariant::Up2 => {
            if variant == ConvVariant::Up2 {
                if !(a.upsample && k == 3 && a.stride == 1 && a.pad == 1) {
                    return Err(EngineError::shape(
                        OP,
                        "the Up2 kernel computes an upsampled 3x3 conv (stride 1, pad 1) of a plain input",
                    ));
                }
            } else if !ConvVariant::direct_applies(k, a.stride, a.pad) {
                return Err(EngineError::shape(
                    OP,
                    format!(
                        "the direct kernel takes 3x3/pad 1 (stride 1 or 2) or 1x1/pad 0 (stride 1), not {k}x{k}/stride {}/pad {}",
                        a.stride, a.pad
                    ),
                ));
            } else if a.stride == 2
                && (a.x2.is_some() || a.norm.is_some() || a.upsample || a.shortcut.is_some())
            {
                return Err(EngineError::shape(
                    OP,
                    "the stride-2 direct kernel reads one plain input (no x2, norm, upsample or shortcut)",
                ));
            }
            let def = match (variant, k, a.stride) {
                (ConvVariant::Up2, _, _) => &DIRECT_UP2,
                (_, 3, 2) => &DIRECT3S2,
                (_, 3, _) => &DIRECT3,
                _ => &DIRECT1,
            };
            let runs = oh * ow.div_ceil(DIRECT_PX);
            u32_of(OP, "pixel runs", runs)?;
            if gpu.weight_textures() && !a.buffer_weights {
                texture = weight_texture(gpu, a.weight)?;
            }
            let kernel = gpu.kernel(
                def,
                &[
                    ("DIRECT_BLOCKS", blocks as f64),
                    ("WEIGHT_TEXTURE", texture.is_some() as u32 as f64),
                    ("DIRECT_WG", layout.wg as f64),
                    ("NORM", norm_mode as f64),
                    ("NORM_SRC", norm_src as f64),
                    ("NORM_GROUPS", norm_groups as f64),
                    ("EMIT_STATS", emit as u32 as f64),
                    ("SHORTCUT", a.shortcut.is_some() as u32 as f64),
                ],
            )?;
            (kernel, [groups(runs, layout.wg), groups(cout, DIRECT_CH * blocks), batch])
        }
        ConvVariant::Tiled => {
            let kernel =
                gpu.kernel(&KERNEL, &[("WG_Y", layout.wg as f64), ("EMIT_STATS", emit as u32 as f64)])?;
            (kernel, [layout.tiles as u32, groups(cout, 4 * layout.wg), batch])
        }
    };
    let d = gpu.dispatch_with_textures(
        &kernel,
        &[
            a.x.buffer(),
            second.map_or(ph, |t| t.buffer()),
            if texture.is_some() { ph } else { a.weight.buffer() },
            a.bias.buffer(),
            a.temb.as_ref().map_or(ph, |t| t.tensor.buffer()),
            a.residual.or(third).map_or(ph, |t| t.buffer()),
            a.out.buffer(),
            match a.norm.as_ref().map(|m| &m.stats) {
                None => ph,
                Some(NormStats::Pass(t)) | Some(NormStats::Partials { affine: t, .. }) => t.buffer(),
            },
        ],
        &[texture.as_ref()],
        &params,
        grid,
    )?;
    // `cin` is the k x k taps' channels (x1's alone with a folded shortcut, whose 1x1 taps
    // come on top); Up2 does 4 of the 9 taps' multiply-adds (the rest are summed into its
    // weights).
    let shortcut_flops = if a.shortcut.is_some() { flops(n, cin2 + cin3, cout, 1, oh, ow) } else { 0.0 };
    let taps = if variant == ConvVariant::Up2 { 4.0 / 9.0 } else { 1.0 };
    Ok(d.with_flops(taps * flops(n, cin, cout, k, oh, ow) + shortcut_flops))
}

/// Most GroupNorm groups a convolution can merge partial statistics for: their (mean,
/// 1 / std) sit in workgroup memory (8 bytes each, within WebGPU's 16 KiB with the rest).
pub const MAX_NORM_GROUPS: usize = 1024;

/// How a kernel's grid covers the output: every workgroup stays inside one image (grid z),
/// so that its partial statistics are that image's.
struct Layout {
    /// `DIRECT_WG` (direct) or `WG_Y` (tiled).
    wg: usize,
    /// Partial-statistics slots per (image, channel): one per workgroup along x (tiled),
    /// one per DIRECT_STATS_RUNS runs of 8 pixels (direct, whose workgroup size depends on
    /// the batch while the slots must not: an image's statistics, so its pixels, are then
    /// the same bit for bit whatever batch it is computed in).
    tiles: usize,
}

/// Runs per partial-statistics slot of the direct kernels (= STATS_RUNS in conv2d.wgsl).
const DIRECT_STATS_RUNS: usize = DIRECT_MIN_WG;

impl Layout {
    /// `blocks`: channel blocks of [`DIRECT_CH`] per direct-kernel invocation.
    fn of(variant: ConvVariant, n: usize, cout: usize, oh: usize, ow: usize, blocks: usize) -> Layout {
        match variant {
            ConvVariant::Direct | ConvVariant::Up2 => {
                let runs = oh * ow.div_ceil(DIRECT_PX);
                // Small images at small batches have few runs per channel block: smaller
                // workgroups then waste fewer invocations (llvmpipe runs every invocation
                // of a workgroup, valid or not) and spread the work over at least
                // MIN_WORKGROUPS.
                let channel_groups = cout.div_ceil(DIRECT_CH * blocks);
                let mut wg = runs.next_power_of_two().clamp(DIRECT_MIN_WG, DIRECT_WG);
                while wg > DIRECT_MIN_WG && runs.div_ceil(wg) * n * channel_groups < MIN_WORKGROUPS {
                    wg /= 2;
                }
                Layout { wg, tiles: runs.div_ceil(DIRECT_STATS_RUNS) }
            }
            ConvVariant::Tiled => {
                let wg_y = if cout <= SLIM_MAX_COUT { 8 } else { 16 };
                Layout { wg: wg_y, tiles: (oh * ow).div_ceil(4 * (256 / wg_y)) }
            }
            ConvVariant::Narrow => Layout { wg: NARROW_WG, tiles: 0 },
        }
    }
}

/// Partial-statistics slots per (image, channel) that [`conv2d`] writes for an output of
/// `n` images x `cout` channels x `oh` x `ow` with `variant` (`None`: the automatic one for
/// a plain single input):
/// the `tiles` to allocate its output with ([`Tensor::with_stats`]). 0 for the narrow
/// kernel, which writes none.
pub fn stats_tiles(
    variant: Option<ConvVariant>,
    k: usize,
    stride: usize,
    pad: usize,
    out: [usize; 4],
) -> usize {
    let [n, cout, oh, ow] = out;
    // The tiles depend on the runs alone, not on the workgroup size or the channel blocks.
    Layout::of(variant.unwrap_or(ConvVariant::auto(cout, k, stride, pad)), n, cout, oh, ow, 1).tiles
}

/// Multiply-adds of one call, for GFLOP/s reports (2 FLOPs each).
pub fn flops(n: usize, cin: usize, cout: usize, k: usize, oh: usize, ow: usize) -> f64 {
    2.0 * (n * cout * oh * ow * cin * k * k) as f64
}
