//! Launcher for `shaders/weight_texture.wgsl`: a [cout, K] weight matrix repacked into a
//! rgba32float texture, texel (k, b) = the weights of tap k for output channels 4b..4b + 3,
//! which the direct conv kernels read with one `textureLoad` per tap (see the shader for
//! why). A model makes one per weight matrix as it loads (inside its allocation scope);
//! a plan that binds a weight without one (tests, or textures switched on after the load)
//! makes it then. Kept with its [`Tensor`] (clones share it) and destroyed with the last
//! of them; [`Tensor::write`] drops it, so the next plan repacks the new values.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{groups, u32_of, Gpu, KernelDef, Tensor};
use crate::error::Result;
use crate::gpu::context::texture_bytes;
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "weight_texture",
    source: include_str!("../../shaders/weight_texture.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::WriteTexture, Access::Uniform],
};
const OP: &str = "weight_texture";
const WG: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    cout: u32,
    k: u32,
    _pad: [u32; 2],
}

/// A weight matrix as a texture; destroys the texture when dropped (in the browser a
/// dropped texture otherwise holds its GPU memory until JavaScript's garbage collector runs).
pub struct WeightTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
}

impl WeightTexture {
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// The texture's size, for `bench --plan-stats`.
    pub fn bytes(&self) -> u64 {
        texture_bytes(self.texture.size(), self.texture.format())
    }
}

impl Drop for WeightTexture {
    fn drop(&mut self) {
        // Safe with work in flight: the texture is freed once the submissions using it end.
        self.texture.destroy();
    }
}

/// The texture of `weight` seen as [shape[0], numel / shape[0]] (the layout every conv
/// reads: [cout, cin, kh, kw] or a packed [cout, K]); `None` where K or ceil(cout / 4) is
/// over the adapter's largest 2-D texture (8,192 texels under WebGPU's default limits), and
/// the kernel then reads the buffer.
pub fn weight_texture(gpu: &Gpu, weight: &Tensor) -> Result<Option<Arc<WeightTexture>>> {
    let cout = weight.shape()[0];
    let k = weight.numel() / cout;
    let rows = cout.div_ceil(4);
    let limit = gpu.limits.max_texture_dimension_2d as usize;
    if k > limit || rows > limit {
        return Ok(None);
    }
    weight.check_device(gpu)?;
    if let Some(t) = weight.cached_texture() {
        return Ok(Some(t));
    }
    let size = wgpu::Extent3d { width: k as u32, height: rows as u32, depth_or_array_layers: 1 };
    let texture = gpu.create_texture(&wgpu::TextureDescriptor {
        label: Some(OP),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::STORAGE_BINDING,
        view_formats: &[],
    });
    // An Arc as everywhere in the engine: natively wgpu's types are Send + Sync; in the
    // browser they are not, and there everything runs on one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    let packed = Arc::new(WeightTexture { view: texture.create_view(&Default::default()), texture });
    let params = Params { cout: u32_of(OP, "cout", cout)?, k: k as u32, _pad: [0; 2] };
    let kernel = gpu.kernel(&KERNEL, &[])?;
    let d = gpu.dispatch_with_textures(
        &kernel,
        &[weight.buffer()],
        &[Some(&packed)],
        &params,
        [groups(k, WG), rows as u32, 1],
    )?;
    // Not `Gpu::run`, which would first report (and clear) an error parked by earlier work.
    gpu.submit(&[&d]);
    weight.cache_texture(packed.clone());
    Ok(Some(packed))
}
