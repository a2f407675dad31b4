//! Compiled kernels and prepared dispatches.
//!
//! A [`Kernel`] is a compute pipeline with an explicit bind-group layout (read-only inputs
//! first, the output next, the uniform parameters last), cached under a key that holds
//! everything that specialises it. A [`Dispatch`] is one kernel bound to its buffers and
//! parameters: built once when a graph is planned, then encoded every step for free.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::error::{EngineError, Result};
use crate::gpu::context::lock;
use crate::gpu::weight_texture::WeightTexture;
use crate::gpu::Gpu;

/// How a shader sees one binding, in binding-index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    Uniform,
    /// A `texture_2d<f32>` read with `textureLoad` (unfilterable float).
    Texture,
    /// A `texture_storage_2d<rgba32float, write>`.
    WriteTexture,
}

impl Access {
    fn is_buffer(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn is_texture(self) -> bool {
        matches!(self, Access::Texture | Access::WriteTexture)
    }
}

/// One WGSL file and how to bind it.
pub struct KernelDef {
    pub name: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub bindings: &'static [Access],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    name: &'static str,
    entry: &'static str,
    /// Structural variant of the source (e.g. a register-array capacity); empty if none.
    variant: String,
    /// Override constants, sorted by name, values as f64 bits.
    constants: Vec<(&'static str, u64)>,
}

impl KernelKey {
    /// Stable label for every GPU object made for this key, e.g. `attention.main.d4=4`.
    fn label(&self) -> String {
        let mut s = format!("{}.{}", self.name, self.entry);
        if !self.variant.is_empty() {
            s.push('.');
            s.push_str(&self.variant);
        }
        for (k, v) in &self.constants {
            s.push_str(&format!(".{k}={}", f64::from_bits(*v)));
        }
        s
    }
}

pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    bindings: &'static [Access],
}

/// A kernel bound to its buffers, ready to encode.
pub struct Dispatch {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    /// Textures the bind group uses, kept alive (their owner destroys them when dropped).
    _textures: Vec<Arc<WeightTexture>>,
    workgroups: [u32; 3],
    cost: Cost,
}

/// What one dispatch does, for `bench --plan-stats`: arithmetic (2 per multiply-add; the
/// launcher's count) and the bytes of the buffers it reads and writes, each counted once
/// (the traffic of an ideal cache; real kernels re-read inputs, weights above all).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    /// Bytes of every read-only storage binding (activations, weights, biases).
    pub bytes_read: u64,
    /// Bytes of every writable binding: the activations the dispatch writes.
    pub bytes_written: u64,
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    pub fn label(&self) -> &str {
        &self.kernel.label
    }

    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Sets the FLOP count (the launcher knows it; bytes are counted when binding).
    pub fn with_flops(mut self, flops: f64) -> Self {
        self.cost.flops = flops;
        self
    }
}

impl Gpu {
    /// The compiled pipeline for `def`, from the cache or compiled now.
    pub fn kernel(&self, def: &KernelDef, constants: &[(&'static str, f64)]) -> Result<Arc<Kernel>> {
        self.kernel_variant(def, "", Cow::Borrowed(def.source), constants)
    }

    /// Like [`Gpu::kernel`], for a structural variant of the source text named `variant`.
    pub fn kernel_variant(
        &self,
        def: &KernelDef,
        variant: &str,
        source: Cow<'static, str>,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<Kernel>> {
        let mut sorted: Vec<(&'static str, u64)> = constants.iter().map(|(k, v)| (*k, v.to_bits())).collect();
        sorted.sort();
        let key =
            KernelKey { name: def.name, entry: def.entry, variant: variant.to_string(), constants: sorted };
        if let Some(k) = lock(&self.kernels).get(&key) {
            return Ok(k.clone());
        }
        let kernel = Arc::new(self.compile(def, &key, source, constants)?);
        lock(&self.kernels).insert(key, kernel.clone());
        Ok(kernel)
    }

    fn compile(
        &self,
        def: &KernelDef,
        key: &KernelKey,
        source: Cow<'static, str>,
        constants: &[(&'static str, f64)],
    ) -> Result<Kernel> {
        self.check()?;
        let label = key.label();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(source),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = def
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: binding_type(*access),
                count: None,
            })
            .collect();
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(def.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let mut popped = Box::pin(scope.pop());
        // Natively the scope resolves at once, so a bad shader fails right here with its
        // message. In the browser it resolves later; the error then lands in the device's
        // error slot and the next submit or read-back reports it.
        match poll_once(popped.as_mut()) {
            Some(Some(e)) => {
                return Err(EngineError::ShaderCompile { kernel: label, message: e.to_string() })
            }
            Some(None) => {}
            None => self.report_later(popped, label.clone()),
        }
        Ok(Kernel { label, pipeline, layout, bindings: def.bindings })
    }

    /// Binds `buffers` (in binding order, without the uniform) and `params` (uploaded into a
    /// uniform buffer owned by the dispatch) to `kernel`, which has no texture bindings.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Arc<Kernel>,
        buffers: &[&wgpu::Buffer],
        params: &P,
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        self.dispatch_with_textures(kernel, buffers, &[], params, workgroups)
    }

    /// Like [`Gpu::dispatch`], with `textures` (in binding order; `None` binds a 1x1
    /// placeholder) for the kernel's texture bindings.
    pub fn dispatch_with_textures<P: bytemuck::Pod>(
        &self,
        kernel: &Arc<Kernel>,
        buffers: &[&wgpu::Buffer],
        textures: &[Option<&Arc<WeightTexture>>],
        params: &P,
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let storage = kernel.bindings.iter().filter(|a| a.is_buffer()).count();
        let sampled = kernel.bindings.iter().filter(|a| a.is_texture()).count();
        if buffers.len() != storage || textures.len() != sampled {
            return Err(EngineError::Validation(format!(
                "{}: {} buffers and {} textures given for {storage} storage and {sampled} texture bindings",
                kernel.label,
                buffers.len(),
                textures.len(),
            )));
        }
        let limit = self.limits.max_compute_workgroups_per_dimension;
        if let Some(&g) = workgroups.iter().find(|&&g| g > limit) {
            return Err(EngineError::TooManyWorkgroups {
                kernel: kernel_name(&kernel.label),
                groups: g as u64,
                limit: limit as u64,
            });
        }
        let uniform = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&kernel.label),
            size: std::mem::size_of::<P>().next_multiple_of(16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, bytemuck::bytes_of(params));
        let mut cost = Cost::default();
        for (buffer, access) in buffers.iter().zip(kernel.bindings.iter().filter(|a| a.is_buffer())) {
            if *buffer == &self.placeholder {
                continue;
            }
            match access {
                Access::Read => cost.bytes_read += buffer.size(),
                _ => cost.bytes_written += buffer.size(),
            }
        }
        for (texture, access) in textures.iter().zip(kernel.bindings.iter().filter(|a| a.is_texture())) {
            let bytes = texture.map_or(0, |t| t.bytes());
            match access {
                Access::Texture => cost.bytes_read += bytes,
                _ => cost.bytes_written += bytes,
            }
        }
        let mut storage_iter = buffers.iter();
        let mut texture_iter = textures.iter();
        let entries: Vec<wgpu::BindGroupEntry> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match access {
                    Access::Uniform => uniform.as_entire_binding(),
                    Access::Texture | Access::WriteTexture => wgpu::BindingResource::TextureView(
                        texture_iter
                            .next()
                            .expect("count checked above")
                            .map_or(&self.placeholder_texture, |t| t.view()),
                    ),
                    Access::Read | Access::ReadWrite => {
                        storage_iter.next().expect("count checked above").as_entire_binding()
                    }
                },
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        let textures = textures.iter().flatten().map(|t| Arc::clone(t)).collect();
        Ok(Dispatch { kernel: kernel.clone(), bind_group, _textures: textures, workgroups, cost })
    }
}

impl Gpu {
    #[cfg(target_arch = "wasm32")]
    fn report_later<F: Future<Output = Option<wgpu::Error>> + 'static>(
        &self,
        popped: Pin<Box<F>>,
        kernel: String,
    ) {
        let slot = self.error_slot();
        wasm_bindgen_futures::spawn_local(async move {
            if let Some(e) = popped.await {
                crate::gpu::context::park(
                    &slot,
                    EngineError::ShaderCompile { kernel, message: e.to_string() },
                );
            }
        });
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn report_later<F: Future<Output = Option<wgpu::Error>>>(&self, _popped: Pin<Box<F>>, kernel: String) {
        // wgpu-core resolves error scopes synchronously; reaching here would be a wgpu change.
        self.park_error(EngineError::ShaderCompile {
            kernel,
            message: "the error scope did not resolve synchronously".into(),
        });
    }
}

fn binding_type(access: Access) -> wgpu::BindingType {
    let buffer = |ty| wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None };
    match access {
        Access::Read => buffer(wgpu::BufferBindingType::Storage { read_only: true }),
        Access::ReadWrite => buffer(wgpu::BufferBindingType::Storage { read_only: false }),
        Access::Uniform => buffer(wgpu::BufferBindingType::Uniform),
        Access::Texture => wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        Access::WriteTexture => wgpu::BindingType::StorageTexture {
            access: wgpu::StorageTextureAccess::WriteOnly,
            format: wgpu::TextureFormat::Rgba32Float,
            view_dimension: wgpu::TextureViewDimension::D2,
        },
    }
}

/// Kernel names are static in the error type; recover the family from a label.
fn kernel_name(label: &str) -> &'static str {
    const NAMES: [&str; 9] = [
        "conv2d",
        "group_norm",
        "linear",
        "timestep_embedding",
        "attention",
        "concat",
        "upsample",
        "sampler_step",
        "weight_texture",
    ];
    NAMES.into_iter().find(|n| label.starts_with(n)).unwrap_or("kernel")
}

pub(crate) fn poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    match Pin::new(&mut f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
