//! The GPU context: adapter, device, queue, the limits we run under, and how the device's
//! errors reach the caller.
//!
//! # Errors, and which ones the engine survives
//!
//! - **Out of memory at allocation.** Every sizeable allocation (a model's weights, the
//!   buffers of a sampling session, a read-back staging buffer) runs inside an
//!   out-of-memory error scope ([`Gpu::scoped`]), so the call that allocated fails with
//!   [`EngineError::OutOfMemory`] naming what it was for, its buffers are dropped, and the
//!   same device goes on serving smaller requests.
//! - **Validation and internal errors outside a scope** are engine bugs. The first one is
//!   parked and reported once, by the next [`Gpu::check`], which clears it: one bad
//!   command fails one run, not every run until the page reloads.
//! - **Device loss** is permanent for a device: once seen, every check reports it. The way
//!   back is a new [`Gpu`] (the page: a new `Engine`) and the models loaded again on it.
//!
//! # Scopes natively and in the browser
//!
//! WebGPU error scopes are pushed and popped synchronously, but the pop's result is a
//! promise: in the browser it is only known after the GPU process answered, i.e. at an
//! `await`. wgpu-core (native) resolves it on the spot. So the scoped allocators here are
//! `async` ([`Gpu::scoped`]): they allocate synchronously between push and pop, then await
//! the pop before anything uses the new buffers. A submit that used a buffer whose
//! allocation failed would raise a validation error on top of the out-of-memory one; awaiting
//! first keeps the report to the one error that matters. Synchronous code paths that
//! allocate (planning a run natively, say) use [`Gpu::scoped_now`], which reports natively
//! at once and, in the browser, parks an out-of-memory error for the next check instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{EngineError, Result};
use crate::gpu::pipeline::{poll_once, Kernel, KernelKey};

/// The WebGPU default limits every browser guarantees; kernels are written to fit these.
/// We only ask the adapter for more storage-buffer room, as an optional fast path for
/// large batches.
pub const WORKGROUP_STORAGE_BYTES: u32 = 16_384;
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;

/// Ids of devices created so far in this process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Set once the device is lost; never cleared (a lost device does not come back).
    lost: Arc<Mutex<Option<EngineError>>>,
    /// The first uncaptured error since the last [`Gpu::check`], which reports and clears it.
    pending: Arc<Mutex<Option<EngineError>>>,
    /// Tells this device's allocations from another's in [`Recording`].
    id: u64,
    /// Test hook: scopes left before one reports an injected out-of-memory (0: none armed).
    oom_countdown: AtomicU32,
    /// Bytes of every buffer made through [`Gpu::create_buffer`] so far (never decreases):
    /// a scope's growth is what its allocations asked for.
    bytes_created: AtomicU64,
    pub(crate) kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    /// Which attention kernels a forward plan uses (see [`Gpu::fused_attention`]).
    fused_attention: AtomicBool,
    /// Whether the direct conv kernels read their weights from textures (see
    /// [`Gpu::weight_textures`]).
    weight_textures: AtomicBool,
    /// See [`Gpu::channel_blocks`].
    channel_blocks: AtomicU32,
    /// See [`Gpu::attention_pairs`].
    attention_pairs: AtomicBool,
    /// Bound in place of an optional input that a dispatch does not use.
    pub(crate) placeholder: wgpu::Buffer,
    /// Bound in place of a texture that a dispatch does not use.
    pub(crate) placeholder_texture: wgpu::TextureView,
}

impl Gpu {
    /// Picks the best adapter of the platform (Vulkan/Metal/DX12 natively, WebGPU in the
    /// browser; `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` narrow the choice natively).
    pub async fn new() -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        let wanted = std::env::var("WGPU_ADAPTER_NAME").ok();
        #[cfg(target_arch = "wasm32")]
        let wanted: Option<String> = None;
        Self::with_adapter_name(wanted.as_deref()).await
    }

    /// Like [`Gpu::new`], restricted natively to the adapter whose name contains `wanted`
    /// (case-insensitive).
    pub async fn with_adapter_name(wanted: Option<&str>) -> Result<Self> {
        #[cfg(target_arch = "wasm32")]
        let backends = wgpu::Backends::BROWSER_WEBGPU;
        #[cfg(not(target_arch = "wasm32"))]
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pick_adapter(&instance, wanted).await?;
        Self::from_adapter(adapter).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let required_limits = required_limits(&adapter.limits())?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("diffusion-playground"),
                required_features: wgpu::Features::empty(),
                required_limits: required_limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::RequestDevice(e.to_string()))?;

        let lost = Arc::new(Mutex::new(None));
        let pending = Arc::new(Mutex::new(None));
        let slot = pending.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| park(&slot, uncaptured(e))));
        let slot = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            park(&slot, EngineError::DeviceLost(format!("{reason:?}: {message}")));
        });

        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let placeholder_texture = device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some("placeholder"),
                size: wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Float,
                usage: wgpu::TextureUsages::TEXTURE_BINDING,
                view_formats: &[],
            })
            .create_view(&Default::default());
        let software = is_software(&info);
        let fused_attention = AtomicBool::new(!software);
        let channel_blocks = AtomicU32::new(if software { 2 } else { 1 });
        let attention_pairs = AtomicBool::new(software);
        Ok(Gpu {
            device,
            queue,
            info,
            limits: required_limits,
            lost,
            pending,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            oom_countdown: AtomicU32::new(0),
            bytes_created: AtomicU64::new(0),
            kernels: Mutex::new(HashMap::new()),
            fused_attention,
            weight_textures: AtomicBool::new(true),
            channel_blocks,
            attention_pairs,
            placeholder,
            placeholder_texture,
        })
    }

    /// Fails if the device is lost (every time, from then on), or with the first uncaptured
    /// error since the last check (once: the check clears it, so the next run can work).
    pub fn check(&self) -> Result<()> {
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        match lock(&self.pending).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The device's loss, once it is lost. Unlike [`Gpu::check`] this leaves a pending
    /// non-fatal error in place.
    pub fn lost(&self) -> Option<EngineError> {
        // wgpu-core reports a destroyed device from its maintenance pass; a non-blocking poll
        // runs one so that the loss is seen by the very next call, not after the next wait.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Poll);
        lock(&self.lost).clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost().is_some()
    }

    /// The loss slot, shared by every tensor made here so that they know their device.
    pub(crate) fn lost_slot(&self) -> Arc<Mutex<Option<EngineError>>> {
        self.lost.clone()
    }

    /// Whether `slot` is this device's loss slot (that is, whether a tensor holding it was
    /// made here).
    pub(crate) fn made(&self, slot: &Arc<Mutex<Option<EngineError>>>) -> bool {
        Arc::ptr_eq(&self.lost, slot)
    }

    /// Destroys the device: the way to lose it on purpose (tests, the page's "lose device"
    /// button). Marked lost at once, as browsers report the loss only asynchronously.
    pub fn destroy(&self) {
        park(&self.lost, EngineError::DeviceLost("the device was destroyed".into()));
        self.device.destroy();
    }

    /// Test hook (fault injection): the `n`-th scoped allocation from now on
    /// ([`Gpu::scoped`], [`Gpu::scoped_now`]) reports out of memory as if the GPU had
    /// refused it, through the same code path as a real scope error; 0 disarms. The
    /// allocation itself still happens and is freed with the failed call's other buffers,
    /// so a test sees exactly what a visitor with a smaller GPU would.
    pub fn inject_out_of_memory(&self, n: u32) {
        self.oom_countdown.store(n, Ordering::SeqCst);
    }

    /// Creates a buffer and counts its bytes towards the enclosing scope's report (every
    /// buffer of the engine is made here).
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        self.bytes_created.fetch_add(desc.size, Ordering::Relaxed);
        let buffer = self.device.create_buffer(desc);
        Recording::add(self.id, &buffer);
        buffer
    }

    /// Creates a texture (one mip level, an uncompressed format) and counts its bytes like
    /// [`Gpu::create_buffer`]. Not recorded for a scope's [`Owned`]: its owner destroys it.
    pub fn create_texture(&self, desc: &wgpu::TextureDescriptor<'_>) -> wgpu::Texture {
        self.bytes_created.fetch_add(texture_bytes(desc.size, desc.format), Ordering::Relaxed);
        self.device.create_texture(desc)
    }

    /// Runs `allocate` inside an out-of-memory error scope and waits for the scope: the
    /// device refusing any of its allocations fails this call with
    /// [`EngineError::OutOfMemory`] naming `what` (e.g. "64 images"), after destroying what
    /// `allocate` made. An error of `allocate` itself wins (nothing it returned can be used
    /// anyway), and so does a loss of the device. The value comes back as an [`Owned`]: the
    /// buffers made inside are destroyed with it.
    pub async fn scoped<T>(
        &self,
        what: impl Into<String>,
        allocate: impl FnOnce() -> Result<T>,
    ) -> Result<Owned<T>> {
        let (value, outcome) = self.run_scope(what.into(), allocate)?;
        let outcome = outcome.await;
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        let value = value?;
        outcome?;
        Ok(value)
    }

    /// [`Gpu::scoped`] for synchronous callers. Natively the scope resolves on the spot, so
    /// this reports exactly like `scoped`; in the browser the answer comes later, so an
    /// out-of-memory error is parked for the next [`Gpu::check`] (the next submit or
    /// read-back) instead. Async callers should prefer `scoped`, whose caller is the one
    /// that fails.
    pub fn scoped_now<T>(
        &self,
        what: impl Into<String>,
        allocate: impl FnOnce() -> Result<T>,
    ) -> Result<Owned<T>> {
        let (value, outcome) = self.run_scope(what.into(), allocate)?;
        let mut outcome = Box::pin(outcome);
        let value = value?;
        match poll_once(outcome.as_mut()) {
            Some(result) => result?,
            None => self.park_when_resolved(outcome),
        }
        Ok(value)
    }

    /// What [`Gpu::scoped`] and [`Gpu::scoped_now`] share: refuse a lost device, run
    /// `allocate` inside the scope and pop it, returning the owned value and the scope's
    /// answer still to be awaited.
    fn run_scope<T>(
        &self,
        what: String,
        allocate: impl FnOnce() -> Result<T>,
    ) -> Result<(Result<Owned<T>>, impl Future<Output = Result<()>> + 'static)> {
        if let Some(lost) = self.lost() {
            return Err(lost);
        }
        let scope = self.alloc_scope(what);
        let value = allocate();
        // Popped synchronously, before any await: scopes are a per-thread stack, and another
        // task interleaving its own push and pop must not pop ours.
        let (buffers, outcome) = scope.pop();
        Ok((Owned::own(buffers, value), outcome))
    }

    fn alloc_scope(&self, what: String) -> AllocScope<'_> {
        let armed = self.oom_countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        AllocScope {
            gpu: self,
            recording: Recording::start(self.id),
            validation: self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            oom,
            what,
            bytes_before: self.bytes_created.load(Ordering::Relaxed),
            inject: armed == Ok(1),
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn park_when_resolved(&self, outcome: std::pin::Pin<Box<impl Future<Output = Result<()>> + 'static>>) {
        let slot = self.pending.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = outcome.await {
                park(&slot, e);
            }
        });
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn park_when_resolved(&self, _outcome: std::pin::Pin<Box<impl Future<Output = Result<()>>>>) {
        // wgpu-core resolves error scopes synchronously; reaching here would be a wgpu change.
        park(&self.pending, EngineError::Internal("an error scope did not resolve synchronously".into()));
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn error_slot(&self) -> Arc<Mutex<Option<EngineError>>> {
        self.pending.clone()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn park_error(&self, e: EngineError) {
        park(&self.pending, e);
    }

    /// Whether the adapter emulates a GPU on the CPU (lavapipe/llvmpipe, SwiftShader, WARP):
    /// by its type, or by its name where a browser reports it as an ordinary adapter (the
    /// same names `www/engine.js` treats as software).
    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// Whether attention blocks run as two dispatches (q/k/v, then the core with to_out,
    /// residual and scale: `attention_out`) or three (q/k/v, the core, to_out as a 1x1
    /// conv). Two on a GPU (a launch and a full write and read of the heads fewer per block);
    /// three on a software adapter ([`Gpu::is_software`]), where the fused kernel's projection (one weight load per
    /// multiply-add in each invocation, a gather there) made attention 1.3x (lavapipe, batch
    /// 32) to 1.5x (SwiftShader, batch 2) slower than the conv's register tile (README).
    /// Plans made after [`Gpu::set_fused_attention`] follow it (tests run both).
    pub fn fused_attention(&self) -> bool {
        self.fused_attention.load(Ordering::Relaxed)
    }

    pub fn set_fused_attention(&self, fused: bool) {
        self.fused_attention.store(fused, Ordering::Relaxed);
    }

    /// Whether the direct conv kernels read their weights as texels of a texture made from
    /// the weight buffer once ([`crate::gpu::weight_texture`]) rather than from the buffer.
    /// On by default everywhere: on llvmpipe it made the 3x3 convs 1.9x faster and on
    /// SwiftShader 1.35x (README); on a GPU a texel fetch of the same 4 weights by every
    /// invocation should be a cached broadcast like the buffer load it replaces, which no
    /// GPU has measured yet (`bench/gpu.sh` times both). A model loaded with it on keeps a
    /// texture per weight matrix beside its buffer (twice the weights' GPU memory, 22 MB
    /// for the shipped models). Plans made after [`Gpu::set_weight_textures`] follow it
    /// (tests run both).
    pub fn weight_textures(&self) -> bool {
        self.weight_textures.load(Ordering::Relaxed)
    }

    pub fn set_weight_textures(&self, on: bool) {
        self.weight_textures.store(on, Ordering::Relaxed);
    }

    /// Blocks of 4 output channels that each invocation of the direct 3x3, 1x1 and
    /// upsampling conv kernels computes (over 8 pixels): 2 on a software adapter, where reading and
    /// normalising the input window costs more than the multiply-adds and a second
    /// accumulator set halves it per output (lavapipe: 1.45x per forward, README;
    /// SwiftShader: no change), 1 on a GPU, where it would halve the workgroups of the
    /// small batch-2 convs. Plans made after [`Gpu::set_channel_blocks`] follow it.
    pub fn channel_blocks(&self) -> usize {
        self.channel_blocks.load(Ordering::Relaxed) as usize
    }

    /// 1 or 2 (a launch with another value fails).
    pub fn set_channel_blocks(&self, blocks: usize) {
        self.channel_blocks.store(blocks.min(u32::MAX as usize) as u32, Ordering::Relaxed);
    }

    /// Whether each invocation of the three-dispatch attention core computes two queries,
    /// reading each key and value from workgroup memory once for both: on a software
    /// adapter, where those reads are per-lane loops or gathers (lavapipe: the core 1.5x
    /// faster, SwiftShader 1.1x; README); not on a GPU, where it would halve the
    /// workgroups. Plans made after [`Gpu::set_attention_pairs`] follow it.
    pub fn attention_pairs(&self) -> bool {
        self.attention_pairs.load(Ordering::Relaxed)
    }

    pub fn set_attention_pairs(&self, on: bool) {
        self.attention_pairs.store(on, Ordering::Relaxed);
    }

    /// The largest 2-D texture side this device allows (a weight matrix wider or taller
    /// in texels is read from its buffer).
    pub fn max_texture_side(&self) -> u32 {
        self.limits.max_texture_dimension_2d
    }

    /// Human-readable adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)".
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Largest single storage binding, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Submits one compute pass holding `dispatches` in order.
    pub fn run(&self, dispatches: &[&crate::gpu::Dispatch]) -> Result<()> {
        self.check()?;
        self.submit(dispatches);
        Ok(())
    }

    /// [`Gpu::run`] without the check first: for work made while a plan is built (a weight's
    /// texture), where an error parked by earlier work belongs to whoever submits or reads
    /// next, not to the plan.
    pub(crate) fn submit(&self, dispatches: &[&crate::gpu::Dispatch]) {
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run"),
                timestamp_writes: None,
            });
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Waits until the GPU has finished all submitted work.
    pub async fn sync(&self) -> Result<()> {
        // A lost device may never run the completion callback.
        self.check()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poll_wait()?;
        rx.await.map_err(|_| EngineError::DeviceLost("the queue was dropped".into()))?;
        self.check()
    }

    /// Natively, blocks until queued work and callbacks are done; in the browser the event
    /// loop drives callbacks, so this does nothing.
    pub(crate) fn poll_wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| EngineError::DeviceLost(e.to_string()))?;
        Ok(())
    }
}

/// The error scopes around one group of allocations, and what they are for.
///
/// Inside the out-of-memory scope sits a validation scope: uploading into a buffer whose
/// allocation failed is invalid, and without it that consequence would be parked and
/// reported by the next check, after the out-of-memory error that caused it. Any other
/// validation error in the region is an engine bug and fails the same call.
struct AllocScope<'g> {
    gpu: &'g Gpu,
    recording: Recording,
    // Declared (so dropped) before `oom`: scopes must be popped in reverse order.
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
    what: String,
    bytes_before: u64,
    inject: bool,
}

impl AllocScope<'_> {
    /// Pops the scope now: the buffers made inside, and a future that says whether any of
    /// them ran out of memory.
    fn pop(self) -> (Vec<wgpu::Buffer>, impl Future<Output = Result<()>> + 'static) {
        let buffers = self.recording.finish();
        let bytes = self.gpu.bytes_created.load(Ordering::Relaxed) - self.bytes_before;
        let invalid = self.validation.pop();
        let oom = self.oom.pop();
        let (what, inject) = (self.what, self.inject);
        let outcome = async move {
            let (invalid, oom) = (invalid.await, oom.await);
            let oom = if inject { Some(injected_out_of_memory()) } else { oom };
            match (oom, invalid) {
                (Some(wgpu::Error::OutOfMemory { .. }), _) => Err(EngineError::OutOfMemory { what, bytes }),
                (Some(other), _) | (None, Some(other)) => Err(uncaptured(other)),
                (None, None) => Ok(()),
            }
        };
        (buffers, outcome)
    }
}

/// A value whose GPU buffers were all made inside one [`Gpu::scoped`] call (a model's
/// weights, a session's buffers, a staging buffer). Dropping it destroys them at once: in
/// the browser a dropped buffer otherwise keeps its GPU memory until the JavaScript garbage
/// collector, which knows nothing of GPU memory, collects its handle, so a freed model or a
/// refused session would still hold memory while the page retries with fewer images.
pub struct Owned<T> {
    buffers: Vec<wgpu::Buffer>,
    value: T,
}

impl<T> Owned<T> {
    /// Ties `buffers` to the value; destroys them now if there is none (a failed
    /// allocation's partial work).
    fn own(buffers: Vec<wgpu::Buffer>, value: Result<T>) -> Result<Self> {
        match value {
            Ok(value) => Ok(Owned { buffers, value }),
            Err(e) => {
                buffers.iter().for_each(wgpu::Buffer::destroy);
                Err(e)
            }
        }
    }
}

impl<T> std::ops::Deref for Owned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // Safe with work in flight: WebGPU (and wgpu-core) free a destroyed buffer once the
        // submissions using it are done.
        for b in &self.buffers {
            b.destroy();
        }
    }
}

thread_local! {
    /// The buffers made on this thread inside each open scope, innermost last, each list
    /// tagged with its [`Gpu`]'s id. Per thread like the error scopes themselves: tests
    /// share one device across threads, and a scope must only claim its own allocations.
    static RECORDING: RefCell<Vec<(u64, Vec<wgpu::Buffer>)>> = const { RefCell::new(Vec::new()) };
}

/// Collects the buffers a scope makes (popped on drop, so a panic inside leaves no entry).
struct Recording {
    depth: usize,
}

impl Recording {
    fn start(gpu: u64) -> Self {
        RECORDING.with_borrow_mut(|r| {
            r.push((gpu, Vec::new()));
            Recording { depth: r.len() }
        })
    }

    fn add(gpu: u64, buffer: &wgpu::Buffer) {
        RECORDING.with_borrow_mut(|r| {
            if let Some((_, list)) = r.iter_mut().rev().find(|(id, _)| *id == gpu) {
                list.push(buffer.clone());
            }
        });
    }

    fn finish(self) -> Vec<wgpu::Buffer> {
        RECORDING
            .with_borrow_mut(|r| r.get_mut(self.depth - 1).map(|(_, list)| std::mem::take(list)))
            .unwrap_or_default()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.with_borrow_mut(|r| r.truncate(self.depth - 1));
    }
}

/// The error a real out-of-memory scope yields, for [`Gpu::inject_out_of_memory`].
fn injected_out_of_memory() -> wgpu::Error {
    #[derive(Debug)]
    struct Injected;
    impl std::fmt::Display for Injected {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("out of memory injected by Gpu::inject_out_of_memory")
        }
    }
    impl std::error::Error for Injected {}
    wgpu::Error::OutOfMemory { source: Box::new(Injected) }
}

/// An error the device raised outside any scope.
fn uncaptured(e: wgpu::Error) -> EngineError {
    match e {
        wgpu::Error::OutOfMemory { .. } => EngineError::OutOfMemory { what: "a GPU buffer".into(), bytes: 0 },
        wgpu::Error::Validation { .. } => EngineError::Validation(e.to_string()),
        wgpu::Error::Internal { description, .. } => {
            EngineError::Internal(format!("the GPU reported an internal error: {description}"))
        }
    }
}

async fn pick_adapter(instance: &wgpu::Instance, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(wanted) = wanted {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(
            || EngineError::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted} matches none of {names:?}")),
        );
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let _ = wanted; // adapter choice by name is native-only
            EngineError::NoAdapter(format!("{e} ({})", no_adapter_hint()))
        })
}

fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "this browser has no WebGPU: use Chrome or Edge 113+, Safari 26+, or Firefox 141+ on Windows"
    } else {
        "install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers for the lavapipe software GPU"
    }
}

/// WebGPU's defaults, checked against the adapter so a weak one is refused up front with
/// the name of the limit, plus as much storage-buffer room as the adapter offers.
pub(crate) fn required_limits(adapter: &wgpu::Limits) -> Result<wgpu::Limits> {
    let base = wgpu::Limits::defaults();
    let mut failed = None;
    base.check_limits_with_fail_fn(adapter, false, |name, required, available| {
        failed.get_or_insert(EngineError::LimitTooLow { name, required, available });
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        ..base
    })
}

/// Bytes of one mip level of an uncompressed texture.
pub(crate) fn texture_bytes(size: wgpu::Extent3d, format: wgpu::TextureFormat) -> u64 {
    let texel = format.block_copy_size(None).unwrap_or(0) as u64;
    size.width as u64 * size.height as u64 * size.depth_or_array_layers as u64 * texel
}

pub(crate) fn park(slot: &Mutex<Option<EngineError>>, e: EngineError) {
    let mut slot = lock(slot);
    // Keep the first error: later ones are usually consequences of it.
    if slot.is_none() {
        *slot = Some(e);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["swiftshader", "llvmpipe", "lavapipe", "basic render", "warp"].iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_adapter_is_refused_with_the_limit_named() {
        let weak = wgpu::Limits { max_compute_workgroup_storage_size: 8192, ..wgpu::Limits::defaults() };
        let err = required_limits(&weak).unwrap_err();
        assert_eq!(
            err,
            EngineError::LimitTooLow {
                name: "max_compute_workgroup_storage_size",
                required: 16384,
                available: 8192
            }
        );
        assert!(err.to_string().contains("max_compute_workgroup_storage_size is 8192"));
    }

    #[test]
    fn storage_room_is_raised_to_the_adapters() {
        let big = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 31,
            max_buffer_size: 1 << 32,
            ..wgpu::Limits::defaults()
        };
        let got = required_limits(&big).unwrap();
        assert_eq!(got.max_storage_buffer_binding_size, 1 << 31);
        assert_eq!(got.max_compute_workgroup_storage_size, WORKGROUP_STORAGE_BYTES);
        assert_eq!(got.max_compute_invocations_per_workgroup, INVOCATIONS_PER_WORKGROUP);
        assert_eq!(got.max_storage_buffers_per_shader_stage, STORAGE_BUFFERS_PER_STAGE);
    }
}
