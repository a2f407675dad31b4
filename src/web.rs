//! The wasm-bindgen API the page talks to. Errors cross the boundary as `JsError`s carrying
//! the engine's message, so the page can show them as they are.

use wasm_bindgen::prelude::*;

use crate::gpu::Gpu;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// True when this browser exposes `navigator.gpu` at all (an adapter may still be missing).
#[wasm_bindgen(js_name = hasWebGpu)]
pub fn has_webgpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|g| !g.is_undefined())
}

#[wasm_bindgen]
pub struct Engine {
    gpu: Gpu,
}

#[wasm_bindgen]
impl Engine {
    /// Requests an adapter and a device; rejects with a readable message when the browser
    /// has no WebGPU or the GPU is too limited.
    pub async fn create() -> Result<Engine, JsError> {
        let gpu = Gpu::new().await.map_err(to_js)?;
        Ok(Engine { gpu })
    }

    #[wasm_bindgen(getter, js_name = adapterName)]
    pub fn adapter_name(&self) -> String {
        self.gpu.adapter_name()
    }

    /// Largest storage binding in bytes (the limit that caps the batch size).
    #[wasm_bindgen(getter, js_name = maxBindingBytes)]
    pub fn max_binding_bytes(&self) -> f64 {
        self.gpu.max_binding_bytes() as f64
    }

    /// Runs every kernel against the CPU reference; resolves to
    /// `[{kernel, max_abs_err, tolerance, ok}]`.
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsError> {
        let checks = crate::selftest::run(&self.gpu).await.map_err(to_js)?;
        serde_wasm_bindgen::to_value(&checks).map_err(|e| JsError::new(&e.to_string()))
    }

    /// The first device error or loss since creation, if any (the page polls this after
    /// failures to tell "your GPU was reset" from a bug).
    #[wasm_bindgen(js_name = deviceError)]
    pub fn device_error(&self) -> Option<String> {
        self.gpu.check().err().map(|e| e.to_string())
    }
}

fn to_js(e: crate::EngineError) -> JsError {
    JsError::new(&e.to_string())
}
