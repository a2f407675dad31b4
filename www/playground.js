// The playground view: controls, live denoising preview, progress and timing, the step
// scrubber, PNG download and the forward-process panel. The page (index.html) mounts it in
// the document with every control; the widget (<diffusion-playground>, widget.js) mounts it
// in a shadow root with the controls its `controls` attribute names.

import {
    PlaygroundError,
    BACKENDS,
    Runner,
    chooseBackend,
    drawGrid,
    fromEngineError,
    gaussian,
    gridGeometry,
    isAbort,
    loadModel,
    lostError,
    modelUrl,
    onGpuEvent,
    quantize,
    releaseModel,
    restartGpu,
} from "./engine.js";

export const SAMPLERS = [
    ["ddim", "DDIM"],
    ["ddpm", "DDPM (ancestral)"],
    ["dpmpp2m", "DPM-Solver++ (2M)"],
    ["euler_a", "Euler ancestral"],
];
export const GRID_SIZES = [1, 4, 16, 64];
export const SHIPPED_MODELS = [
    ["fashion", "Fashion-MNIST"],
    ["digits", "MNIST digits"],
];
/** Every control a view can show (the widget's `controls` attribute picks among them). */
export const ALL_CONTROLS = ["model", "backend", "class", "steps", "guidance", "sampler", "eta", "clip", "seed", "grid", "view", "scrubber", "download", "forward", "run"];
/** x0 clipping of DDPM and DDIM: "auto" clips for DDPM and follows the model's
 * scheduler_config.json for DDIM (the shipped models: DDPM 1000 steps is recognised 100 % of
 * the time with clipping, 72-88 % without; diffusers' DDIM clips x0 but not eps, and does
 * better unclipped); "on" and "off" override the config for both. */
const CLIP_MODES = [
    ["auto", "Auto (on for DDPM)"],
    ["on", "On: clamp x̂₀ to [-1, 1]"],
    ["off", "Off"],
];
/** The settings a link, a widget attribute or a query parameter carries (besides autoplay). */
export const SETTING_KEYS = ["model", "backend", "class", "steps", "guidance", "sampler", "eta", "clip", "seed", "grid", "view"];
/** Where sampling runs: auto picks WebGPU on a hardware GPU, else the CPU engine. */
const BACKEND_LABELS = {
    auto: "Auto (GPU if there is one)",
    webgpu: "WebGPU (GPU)",
    cpu: "CPU (Web Workers)",
};
/** Which samplers read eta (DDIM) and clip (DDPM and DDIM). */
export const usesEta = (sampler) => sampler === "ddim";
export const usesClip = (sampler) => sampler === "ddpm" || sampler === "ddim";

export const DEFAULTS = {
    model: "fashion",
    backend: "auto",
    class: "0",
    steps: 20,
    guidance: 2,
    sampler: "ddim",
    eta: 0,
    clip: "auto",
    seed: 1,
    grid: 16,
    view: "xt",
    autoplay: true,
};

const DEBOUNCE_MS = 250;
// Per-step frames kept for the scrubber, at most this many bytes (older steps are thinned).
const FRAME_BUDGET = 48 << 20;

let uid = 0;

/** Parses a `controls` list ("all", "none", or names separated by spaces or commas). */
export function parseControls(text, fallback) {
    if (text == null || text.trim() === "") return new Set(fallback);
    const words = text.toLowerCase().split(/[\s,]+/).filter(Boolean);
    if (words.includes("all")) return new Set(ALL_CONTROLS);
    if (words.includes("none")) return new Set();
    return new Set(words.filter((w) => ALL_CONTROLS.includes(w)));
}

export class Playground {
    /**
     * @param {HTMLElement} host where the view is built (a div in the page or a shadow root's)
     * @param {object} o settings (see DEFAULTS) plus `controls` (a Set), `models` (the model
     *   picker's [value, label] list), `compact` (widget layout), `autoRestart` (restart the
     *   GPU by itself after a device loss instead of offering a button), `onState(state,
     *   text, error)`, `onResult(result)`, `onChange(settings)`, `title`.
     */
    constructor(host, o = {}) {
        this.host = host;
        this.o = o;
        this.settings = { ...DEFAULTS, ...o.settings };
        this.controls = o.controls ?? new Set(ALL_CONTROLS);
        this.runner = new Runner();
        this.loaded = null; // the loaded model entry, once it may sample
        this.held = null; // the model entry this view holds (engine.js releaseModel frees it)
        this.loading = null; // the AbortController of the load in flight
        this.frames = []; // per step: {step, timestep, xt, x0} (quantized bytes)
        this.frameStride = 1;
        this.lastResult = null;
        this.runs = []; // a log of runs: {id, settings, status, stepsDone, ms}
        this.state = "idle";
        this.id = `dp${++uid}`;
        this.build();
        this.unsubscribeGpu = onGpuEvent((ev) => this.onGpuEvent(ev));
    }

    // -------------------------------------------------------------------------------------
    // DOM

    build() {
        const c = this.controls;
        const hide = (name) => (c.has(name) ? "" : " hidden");
        const models = this.o.models ?? SHIPPED_MODELS;
        this.host.classList.add("dp");
        if (this.o.compact) this.host.classList.add("dp-compact");
        this.host.innerHTML = `
<form class="dp-controls" novalidate aria-label="Sampling settings">
  <div class="dp-field"${hide("model")}>
    <label for="model">Model</label>
    <select id="model" name="model">${models.map(([v, l]) => `<option value="${esc(v)}">${esc(l)}</option>`).join("")}</select>
  </div>
  <div class="dp-field"${hide("backend")}>
    <label for="backend">Engine</label>
    <select id="backend" name="backend" aria-describedby="backend-help">${BACKENDS.map((v) => `<option value="${v}">${BACKEND_LABELS[v]}</option>`).join("")}</select>
    <small id="backend-help" class="dp-help">where the images are computed</small>
  </div>
  <div class="dp-field"${hide("class")}>
    <label for="class">Class</label>
    <select id="class" name="class" disabled><option>loading…</option></select>
  </div>
  <div class="dp-field dp-range"${hide("steps")}>
    <label for="steps">Steps</label>
    <input type="range" id="steps" name="steps" min="1" max="1000" step="1" aria-describedby="steps-help">
    <input type="number" id="steps-num" min="1" max="1000" step="1" aria-label="Steps (number)" inputmode="numeric">
    <small id="steps-help" class="dp-help">denoising steps, 1 to 1000</small>
  </div>
  <div class="dp-field dp-range"${hide("guidance")}>
    <label for="guidance">Guidance</label>
    <input type="range" id="guidance" name="guidance" min="0" max="10" step="0.1" aria-describedby="guidance-help">
    <output id="guidance-out" for="guidance"></output>
    <small id="guidance-help" class="dp-help">classifier-free guidance w: 0 ignores the class, 1 is plain conditional</small>
  </div>
  <div class="dp-field"${hide("sampler")}>
    <label for="sampler">Sampler</label>
    <select id="sampler" name="sampler">${SAMPLERS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>
  </div>
  <div class="dp-field dp-range" id="eta-field"${hide("eta")}>
    <label for="eta">DDIM η</label>
    <input type="range" id="eta" name="eta" min="0" max="1" step="0.05" aria-describedby="eta-help">
    <output id="eta-out" for="eta"></output>
    <small id="eta-help" class="dp-help">0 is deterministic, 1 adds DDPM-like noise</small>
  </div>
  <div class="dp-field" id="clip-field"${hide("clip")}>
    <label for="clip">Clip x̂₀</label>
    <select id="clip" name="clip" aria-describedby="clip-help">${CLIP_MODES.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>
    <small id="clip-help" class="dp-help">DDPM and DDIM: clamp the predicted image before each step</small>
  </div>
  <div class="dp-field"${hide("seed")}>
    <label for="seed">Seed</label>
    <span class="dp-row">
      <input type="number" id="seed" name="seed" min="0" max="4294967295" step="1" inputmode="numeric">
      <button type="button" id="randomise" aria-label="Random seed" title="Pick a random seed">Random</button>
    </span>
  </div>
  <div class="dp-field"${hide("grid")}>
    <label for="grid">Images</label>
    <select id="grid" name="grid">${GRID_SIZES.map((n) => `<option value="${n}">${n === 1 ? "1" : `${n} (${Math.sqrt(n)}×${Math.sqrt(n)})`}</option>`).join("")}</select>
  </div>
  <div class="dp-buttons"${c.has("run") || c.has("download") ? "" : " hidden"}>
    <button type="submit" id="run" disabled${hide("run")}>Sample</button>
    <button type="button" id="download" disabled${hide("download")}>Download PNG</button>
  </div>
</form>
<section class="dp-output" aria-label="Result">
  <fieldset class="dp-view"${hide("view")}>
    <legend class="dp-sr">Show</legend>
    <label><input type="radio" name="view-${this.id}" value="xt"> noisy x<sub>t</sub></label>
    <label><input type="radio" name="view-${this.id}" value="x0"> predicted x̂<sub>0</sub></label>
  </fieldset>
  <div class="dp-canvas-wrap">
    <canvas id="canvas" width="30" height="30" role="img" aria-label="Sampled images (none yet)"></canvas>
  </div>
  <progress id="progress" max="1" value="0" aria-label="Progress"></progress>
  <p id="status" class="dp-status" role="status" aria-live="polite" data-state="loading">Starting the engine…</p>
  <p id="engine" class="dp-engine" aria-live="polite"></p>
  <p id="warning" class="dp-warning" role="note" hidden></p>
  <p id="timing" class="dp-timing" aria-live="off"></p>
  <button type="button" id="restart" hidden>Restart the GPU</button>
  <div class="dp-field dp-range dp-scrub"${hide("scrubber")}>
    <label for="scrub">Replay step</label>
    <input type="range" id="scrub" min="0" max="0" value="0" disabled>
    <output id="scrub-out" for="scrub"></output>
  </div>
</section>
<section class="dp-forward"${hide("forward")} aria-labelledby="fwd-title-${this.id}">
  <h2 id="fwd-title-${this.id}">The forward process q(x<sub>t</sub> | x<sub>0</sub>)</h2>
  <p class="dp-help">Noise is added in closed form: x<sub>t</sub> = √ᾱ<sub>t</sub> x<sub>0</sub> + √(1 − ᾱ<sub>t</sub>) ε, with ᾱ<sub>t</sub> from the model's own schedule (scheduler_config.json). x<sub>0</sub> is the first image of the last run.</p>
  <div class="dp-fwd-row">
    <figure><canvas id="fwd-x0" width="28" height="28" role="img" aria-label="x0: the clean image"></canvas><figcaption>x<sub>0</sub></figcaption></figure>
    <figure><canvas id="fwd-xt" width="28" height="28" role="img" aria-label="x_t: the noised image"></canvas><figcaption>x<sub>t</sub></figcaption></figure>
    <figure class="dp-chart"><canvas id="fwd-chart" width="240" height="120" role="img" aria-label="Signal and noise levels over t"></canvas><figcaption><span class="dp-key-signal">signal √ᾱ<sub>t</sub></span> · <span class="dp-key-noise">noise √(1−ᾱ<sub>t</sub>)</span></figcaption></figure>
  </div>
  <div class="dp-field dp-range">
    <label for="fwd-t">t</label>
    <input type="range" id="fwd-t" min="0" max="999" value="300" disabled aria-describedby="fwd-levels">
    <output id="fwd-t-out" for="fwd-t"></output>
  </div>
  <p id="fwd-levels" class="dp-levels" aria-live="polite"></p>
</section>`;
        const $ = (id) => this.host.querySelector(`#${id}`);
        this.el = Object.fromEntries(
            [
                "model", "backend", "engine", "class", "steps", "steps-num", "guidance", "guidance-out", "sampler", "eta", "eta-out", "eta-field", "clip", "clip-field",
                "seed", "randomise", "grid", "run", "download", "canvas", "progress", "status", "timing", "restart", "warning",
                "scrub", "scrub-out", "fwd-x0", "fwd-xt", "fwd-chart", "fwd-t", "fwd-t-out", "fwd-levels",
            ].map((id) => [id, $(id)]),
        );
        this.el.form = this.host.querySelector("form");
        this.el.views = [...this.host.querySelectorAll(`input[name="view-${this.id}"]`)];
        this.writeControls();
        this.wire();
    }

    /** Puts `this.settings` into the controls. */
    writeControls() {
        const s = this.settings, e = this.el;
        if (![...e.model.options].some((o) => o.value === s.model)) {
            e.model.append(new Option(s.model.length > 40 ? `…${s.model.slice(-38)}` : s.model, s.model));
        }
        e.model.value = s.model;
        e.backend.value = s.backend;
        e.steps.value = e["steps-num"].value = s.steps;
        e.guidance.value = s.guidance;
        e["guidance-out"].value = Number(s.guidance).toFixed(1);
        e.sampler.value = s.sampler;
        e.eta.value = s.eta;
        e["eta-out"].value = Number(s.eta).toFixed(2);
        e.clip.value = s.clip;
        this.showSamplerOptions(s.sampler);
        e.seed.value = s.seed;
        if (![...e.grid.options].some((o) => Number(o.value) === s.grid)) e.grid.append(new Option(String(s.grid), s.grid));
        e.grid.value = String(s.grid);
        for (const r of e.views) r.checked = r.value === s.view;
        if (this.loaded) this.fillClasses();
    }

    /** Greys out the options the sampler ignores (eta: DDIM only; clip: DDPM and DDIM). */
    showSamplerOptions(sampler) {
        const e = this.el;
        e["eta-field"].classList.toggle("dp-off", !usesEta(sampler));
        e.eta.disabled = !usesEta(sampler);
        e["clip-field"].classList.toggle("dp-off", !usesClip(sampler));
        e.clip.disabled = !usesClip(sampler);
    }

    wire() {
        const e = this.el;
        const changed = (key, value, { now = false, resample = true } = {}) => {
            this.settings[key] = value;
            this.o.onChange?.(this.settings);
            if (resample) now ? this.sample() : this.scheduleSample();
        };
        e.form.addEventListener("submit", (ev) => {
            ev.preventDefault();
            this.sample();
        });
        e.model.addEventListener("change", () => {
            this.settings.model = e.model.value;
            this.o.onChange?.(this.settings);
            this.load();
        });
        e.backend.addEventListener("change", () => {
            this.settings.backend = e.backend.value;
            this.o.onChange?.(this.settings);
            this.start();
        });
        e.class.addEventListener("change", () => changed("class", e.class.value));
        const setSteps = (v) => {
            const n = Math.min(1000, Math.max(1, Math.round(Number(v)) || 1));
            e.steps.value = e["steps-num"].value = n;
            changed("steps", n);
        };
        e.steps.addEventListener("input", () => setSteps(e.steps.value));
        e["steps-num"].addEventListener("change", () => setSteps(e["steps-num"].value));
        e.guidance.addEventListener("input", () => {
            e["guidance-out"].value = Number(e.guidance.value).toFixed(1);
            changed("guidance", Number(e.guidance.value));
        });
        e.sampler.addEventListener("change", () => {
            this.showSamplerOptions(e.sampler.value);
            changed("sampler", e.sampler.value);
        });
        e.clip.addEventListener("change", () => changed("clip", e.clip.value));
        e.eta.addEventListener("input", () => {
            e["eta-out"].value = Number(e.eta.value).toFixed(2);
            changed("eta", Number(e.eta.value));
        });
        e.seed.addEventListener("change", () => {
            const v = Math.min(4294967295, Math.max(0, Math.floor(Number(e.seed.value)) || 0));
            e.seed.value = v;
            changed("seed", v);
        });
        e.randomise.addEventListener("click", () => {
            const v = crypto.getRandomValues(new Uint32Array(1))[0];
            e.seed.value = v;
            changed("seed", v, { now: true });
        });
        e.grid.addEventListener("change", () => changed("grid", Number(e.grid.value)));
        for (const r of e.views) {
            r.addEventListener("change", () => {
                this.settings.view = r.value;
                this.o.onChange?.(this.settings);
                this.redraw();
            });
        }
        e.scrub.addEventListener("input", () => this.showFrame(Number(e.scrub.value)));
        e.download.addEventListener("click", () => this.download());
        e.restart.addEventListener("click", () => this.restartGpu());
        e["fwd-t"].addEventListener("input", () => this.drawForward());
    }

    /** Changes one setting from outside (the widget's attributes, the page's URL). */
    set(key, value) {
        this.settings[key] = value;
        this.writeControls();
        if (key === "model") this.load();
        else if (key === "backend") this.start();
        else if (key === "view") this.redraw();
        else this.scheduleSample();
    }

    /** Shows `text`; `error` (a PlaygroundError) when the state is "error". The status
     *  element carries the error's kind and detail as data-kind, data-field, data-tensor
     *  and data-http-status, for styles, scripts and tests. */
    setStatus(text, state, error = null) {
        const st = this.el.status;
        st.textContent = text;
        st.dataset.state = state;
        st.dataset.kind = error?.kind ?? "";
        st.dataset.field = error?.field ?? "";
        st.dataset.tensor = error?.tensor ?? "";
        st.dataset.httpStatus = error?.status ?? "";
        this.state = state;
        this.error = error;
        this.o.onState?.(state, text, error);
    }

    showError(err) {
        const e = err instanceof PlaygroundError ? err : fromEngineError(err);
        this.runner.cancel();
        this.setStatus(e.message, "error", e);
        this.el.progress.value = 0;
        const lost = e.kind === "gpu-lost";
        this.el.run.disabled = e.kind === "gpu-unavailable" || lost || !this.loaded;
        if (e.kind === "gpu-unavailable") this.el.engine.textContent = "Choose Engine: CPU (or Auto) to sample without WebGPU.";
        this.el.restart.hidden = !lost;
    }

    /** The GPU's events (engine.js onGpuEvent): only views sampling on WebGPU care. */
    onGpuEvent(ev) {
        if (this.backend?.kind !== "webgpu") return;
        if (ev.type === "lost") {
            this.showError(ev.error);
            if (this.o.autoRestart) this.restartGpu();
        } else if (ev.type === "restarting") {
            this.el.restart.hidden = true;
            this.el.run.disabled = true;
            this.setStatus("Restarting the GPU: a new device, then the model again…", "loading");
        } else if (ev.type === "restored") {
            if (!this.loaded) {
                this.load(); // it was lost while loading
                return;
            }
            this.el.run.disabled = false;
            this.setStatus(`Ready on ${this.backend.label}: the GPU was restarted and the ${this.loaded.name} model uploaded again.`, "ready");
            if (this.settings.autoplay) this.sample();
        } else if (ev.type === "restart-failed") {
            this.showError(ev.error);
            this.el.restart.hidden = false; // let the visitor try again
        }
    }

    /** A new GPU device for every view of the page (engine.js restartGpu); the views hear
     *  how it went through onGpuEvent. */
    restartGpu() {
        restartGpu().catch(() => {}); // "restart-failed" shows the error
    }

    /** The page's WebGPU engine, when this view samples on it (a new one after a restart). */
    get engine() {
        return this.backend?.kind === "webgpu" ? this.backend.engine : null;
    }

    // -------------------------------------------------------------------------------------
    // Engine and model

    async start() {
        const choice = this.settings.backend;
        this.backend = null;
        this.loading?.abort();
        this.runner.cancel();
        this.releaseModel(); // it lives on the old backend
        this.el.engine.textContent = "";
        try {
            this.setStatus(choice === "cpu" ? "Starting the CPU engine…" : "Looking for a GPU (WebGPU)…", "loading");
            const backend = await chooseBackend(choice);
            if (this.settings.backend !== choice) return; // the picker moved on meanwhile
            this.backend = backend;
        } catch (e) {
            this.showError(e instanceof PlaygroundError ? e : fromEngineError(e));
            return;
        }
        this.el.engine.textContent = this.backend.reason;
        this.el.engine.dataset.backend = this.backend.kind;
        await this.load();
    }

    async load() {
        if (!this.backend) return;
        const backend = this.backend;
        const spec = this.settings.model;
        const url = modelUrl(spec, this.o.base ?? document.baseURI);
        this.runner.cancel();
        // This view stops using its model now: the last view to let go of it frees its
        // memory (GPU buffers, CPU workers) before the next one is uploaded.
        this.releaseModel();
        this.loading?.abort(); // a load still in flight: its download stops unless shared
        const loading = new AbortController();
        this.loading = loading;
        this.el.run.disabled = true;
        this.el.class.disabled = true;
        this.el.progress.removeAttribute("value");
        this.setStatus(`Loading the ${spec} model…`, "loading");
        this.el.restart.hidden = true;
        this.showWarnings([]);
        const started = performance.now();
        let entry;
        try {
            entry = await loadModel(url, (p) => {
                if (loading.signal.aborted) return;
                const mb = (b) => (b / 1048576).toFixed(1);
                if (p.phase === "download") {
                    if (p.total) {
                        this.el.progress.max = p.total;
                        this.el.progress.value = p.done;
                    }
                    this.setStatus(`Downloading the ${spec} weights: ${mb(p.done)} of ${p.total ? mb(p.total) : "?"} MB…`, "loading");
                } else if (p.phase === "cache") {
                    this.setStatus(`Loading the ${spec} weights from the browser cache…`, "loading");
                } else if (p.phase === "verify") {
                    this.setStatus(`Checking the ${spec} weights (SHA-256)…`, "loading");
                } else if (p.phase === "upload") {
                    this.setStatus(
                        backend.kind === "cpu" ? `Starting ${backend.threads} CPU worker${backend.threads > 1 ? "s" : ""} with the ${spec} weights…` : `Uploading the ${spec} weights to the GPU…`,
                        "loading",
                    );
                }
            }, backend, loading.signal);
        } catch (e) {
            if (!isAbort(e) && !loading.signal.aborted) this.showError(e);
            return;
        } finally {
            if (this.loading === loading) this.loading = null;
        }
        if (loading.signal.aborted) {
            releaseModel(entry); // resolved just as the pickers moved on
            return;
        }
        this.held = this.loaded = entry;
        this.showWarnings(entry.warnings);
        this.loadMs = performance.now() - started;
        this.el.progress.max = 1;
        this.el.progress.value = 0;
        this.fillClasses();
        this.el.class.disabled = false;
        this.el.run.disabled = false;
        const how = entry.source === "cache" ? "from the browser cache" : `${(entry.bytes / 1048576).toFixed(1)} MB downloaded`;
        this.setStatus(`Ready on ${backend.label}: ${entry.name} model loaded (${how}, ${this.loadMs.toFixed(0)} ms).`, "ready");
        this.o.onLoaded?.(entry);
        this.setupForward();
        if (this.settings.autoplay) this.sample();
    }

    /** Gives back the model this view holds (engine.js frees it when no view holds it). */
    releaseModel() {
        const held = this.held;
        this.held = this.loaded = null;
        if (held) releaseModel(held);
    }

    /** What could not be checked about the model (e.g. no SHA-256 outside HTTPS). */
    showWarnings(list) {
        this.el.warning.textContent = list.join(" ");
        this.el.warning.hidden = list.length === 0;
    }

    fillClasses() {
        const names = this.loaded.classNames;
        const sel = this.el.class;
        const opts = names.map((n, i) => new Option(`${n}`, String(i)));
        if (names.length > 1) opts.push(new Option("All classes (one per image)", "all"));
        if (names.length === 0) opts.push(new Option("(unconditional model)", ""));
        sel.replaceChildren(...opts);
        sel.value = String(this.classIndex() ?? "all");
        if (sel.value === "" && names.length) sel.value = "0";
    }

    /** The class setting as an index (names match case-insensitively), "all", or null. */
    classIndex() {
        const names = this.loaded?.classNames ?? [];
        const v = String(this.settings.class ?? "0").trim();
        if (v.toLowerCase() === "all") return "all";
        if (/^\d+$/.test(v) && Number(v) < names.length) return Number(v);
        const i = names.findIndex((n) => n.toLowerCase() === v.toLowerCase());
        return i >= 0 ? i : names.length ? 0 : null;
    }

    // -------------------------------------------------------------------------------------
    // Sampling

    scheduleSample() {
        clearTimeout(this.debounce);
        if (!this.loaded) return;
        this.runner.cancel(); // stop the run in flight now; the new one starts after the pause
        this.debounce = setTimeout(() => this.sample(), DEBOUNCE_MS);
    }

    sample() {
        clearTimeout(this.debounce);
        const entry = this.loaded;
        if (!entry) return Promise.resolve(null);
        const s = { ...this.settings };
        const n = s.grid;
        const ci = this.classIndex();
        const k = entry.classNames.length;
        const opts = {
            ...entry.defaults,
            count: n,
            steps: s.steps,
            guidance: s.guidance,
            sampler: s.sampler,
            eta: usesEta(s.sampler) ? s.eta : 0,
            seed: s.seed,
            preview: true,
        };
        if (s.clip !== "auto") opts.clipSample = s.clip === "on";
        else if (s.sampler === "ddpm") opts.clipSample = true;
        if (k > 0) opts.classes = Array.from({ length: n }, (_, i) => (ci === "all" ? i % k : ci));
        const [c, h, w] = entry.shape;
        const shape = [n, c, h, w];
        const record = { id: this.runs.length + 1, settings: s, status: "queued", stepsDone: 0, msPerStep: [], totalMs: 0 };
        this.runs.push(record);
        this.setStatus(entry.backend === "cpu" ? "Waiting for the CPU engine…" : "Waiting for the GPU…", "queued");
        return this.runner.request(async (signal) => {
            record.status = "running";
            this.frames = [];
            this.frameStride = Math.max(1, Math.ceil((s.steps * 2 * n * c * h * w) / FRAME_BUDGET));
            this.el.scrub.disabled = true;
            this.el.progress.max = s.steps;
            this.el.progress.value = 0;
            this.setStatus(`Sampling ${n} image${n > 1 ? "s" : ""}: step 0 of ${s.steps}…`, "running");
            const started = performance.now();
            let last = started;
            let result;
            try {
                result = await entry.model.sample(
                    opts,
                    (info) => {
                        const now = performance.now();
                        record.msPerStep.push(now - last);
                        last = now;
                        record.stepsDone = info.step + 1;
                        if (signal.aborted) return;
                        const frame = { step: info.step, timestep: info.timestep, xt: quantize(info.xt), x0: quantize(info.x0) };
                        if (info.step % this.frameStride === 0 || info.step === info.steps - 1) this.frames.push(frame);
                        this.current = { frame, shape };
                        this.draw(frame, shape);
                        this.el.progress.value = info.step + 1;
                        this.setStatus(`Sampling ${n} image${n > 1 ? "s" : ""}: step ${info.step + 1} of ${info.steps} (t = ${info.timestep})…`, "running");
                        this.showTiming(record, now - started, info.steps);
                    },
                    signal,
                );
            } catch (e) {
                record.status = "error";
                this.showError(this.runError(e, n, entry));
                return null;
            }
            record.totalMs = performance.now() - started;
            if (result.cancelled) {
                record.status = "cancelled";
                record.stepsDone = result.stepsDone;
                return result;
            }
            record.status = "done";
            this.lastResult = { x: result.x, shape, settings: s, steps: result.stepsDone };
            this.showTiming(record, record.totalMs, result.stepsDone, true);
            this.setStatus(`Done: ${n} image${n > 1 ? "s" : ""} of ${this.describe(s)} in ${fmtMs(record.totalMs)}.`, "done");
            this.el.canvas.setAttribute("aria-label", `${n} sampled image${n > 1 ? "s" : ""}: ${this.describe(s)}, ${s.sampler}, ${s.steps} steps, seed ${s.seed}`);
            this.el.download.disabled = false;
            this.el.scrub.disabled = this.frames.length === 0;
            this.el.scrub.max = Math.max(0, this.frames.length - 1);
            this.el.scrub.value = this.el.scrub.max;
            this.updateScrubLabel();
            this.drawForward();
            this.o.onResult?.(this.lastResult);
            return result;
        });
    }

    /** The error a failed run shows: a lost device wins over whatever it caused; running out
     *  of GPU memory names the image count (the engine has dropped the run's buffers, so
     *  fewer images, or the same after other work is freed, can run next). */
    runError(e, n, entry) {
        const err = fromEngineError(e);
        const engine = entry.backend === "webgpu" ? this.engine : null;
        if (!engine) return err;
        if (engine.isLost) return lostError(engine);
        // The run failed on the first non-fatal GPU error (the engine reports one once and
        // clears it); deviceError() reports and clears any later one too, so that the next
        // run starts clean instead of failing on an error of this one.
        const more = engine.deviceError();
        if (err.kind === "gpu-oom") {
            return new PlaygroundError("gpu-oom", `This GPU ran out of memory for ${n} image${n > 1 ? "s" : ""}; try fewer.`, { cause: e, field: err.field });
        }
        if (more) return new PlaygroundError(err.kind, `${err.message} (then the GPU also reported: ${more})`, { cause: e, field: err.field, tensor: err.tensor });
        return err;
    }

    describe(s) {
        const ci = this.classIndex();
        return ci === "all" ? "every class" : ci === null ? "the model" : `“${this.loaded.classNames[ci]}”`;
    }

    showTiming(record, elapsed, steps, final = false) {
        const per = record.msPerStep;
        // Step 0 includes compiling the pipelines on a cold engine: report the median.
        const sorted = [...per].sort((a, b) => a - b);
        const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
        this.el.timing.textContent = final
            ? `${median.toFixed(1)} ms/step (median of ${per.length}) · total ${fmtMs(elapsed)}`
            : `${median.toFixed(1)} ms/step · ${fmtMs(elapsed)} so far of ~${fmtMs(median * steps)}`;
    }

    // -------------------------------------------------------------------------------------
    // Drawing, scrubber, download

    draw(frame, shape) {
        const bytes = this.settings.view === "x0" ? frame.x0 : frame.xt;
        drawGrid(this.el.canvas, bytes, shape);
        this.shown = { frame, shape };
    }

    redraw() {
        if (this.shown) this.draw(this.shown.frame, this.shown.shape);
    }

    showFrame(i) {
        const f = this.frames[i];
        if (!f || !this.lastResult) return;
        this.draw(f, this.lastResult.shape);
        this.updateScrubLabel();
    }

    updateScrubLabel() {
        const f = this.frames[Number(this.el.scrub.value)];
        if (!f) return;
        const text = `step ${f.step + 1} of ${this.lastResult?.steps ?? "?"} (t = ${f.timestep})`;
        this.el["scrub-out"].value = text;
        this.el.scrub.setAttribute("aria-valuetext", text);
    }

    download() {
        const src = this.el.canvas;
        const scale = Math.max(1, Math.floor(512 / Math.max(src.width, src.height)));
        const out = document.createElement("canvas");
        out.width = src.width * scale;
        out.height = src.height * scale;
        const ctx = out.getContext("2d");
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(src, 0, 0, out.width, out.height);
        const s = this.lastResult?.settings ?? this.settings;
        const name = `${this.loaded?.name ?? "diffusion"}-class${s.class}-${s.sampler}${s.steps}-w${s.guidance}-seed${s.seed}.png`;
        out.toBlob((blob) => {
            const a = document.createElement("a");
            a.href = URL.createObjectURL(blob);
            a.download = name.replace(/[^\w.-]+/g, "_");
            a.click();
            setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
        }, "image/png");
    }

    // -------------------------------------------------------------------------------------
    // Forward process q(x_t | x_0)

    setupForward() {
        if (!this.controls.has("forward") || !this.loaded) return;
        const T = this.loaded.alphas.length;
        const t = this.el["fwd-t"];
        t.max = T - 1;
        if (Number(t.value) > T - 1) t.value = Math.floor((T - 1) * 0.3);
        this.drawChart();
        this.drawForward();
    }

    drawForward() {
        if (!this.controls.has("forward") || !this.loaded) return;
        const a = this.loaded.alphas;
        const t = Math.min(a.length - 1, Number(this.el["fwd-t"].value));
        const at = a[t];
        const signal = Math.sqrt(at), noise = Math.sqrt(1 - at);
        const snr = at / (1 - at);
        const text = `t = ${t}: ᾱ = ${at.toPrecision(4)}, signal √ᾱ = ${signal.toFixed(3)}, noise √(1−ᾱ) = ${noise.toFixed(3)}, SNR = ${snr < 0.01 ? snr.toExponential(1) : snr.toPrecision(3)}`;
        this.el["fwd-t-out"].value = `t = ${t}`;
        this.el["fwd-t"].setAttribute("aria-valuetext", text);
        this.el["fwd-levels"].textContent = text;
        this.drawChart(t);
        const r = this.lastResult;
        this.el["fwd-t"].disabled = !r;
        if (!r) {
            this.el["fwd-levels"].textContent = `${text}. Sample an image to see it noised.`;
            return;
        }
        const [, c, h, w] = r.shape;
        const x0 = r.x.subarray(0, c * h * w);
        if (!this.eps || this.eps.length !== x0.length || this.epsSeed !== r.settings.seed) {
            const g = gaussian(r.settings.seed + 12345);
            this.eps = Float32Array.from({ length: x0.length }, g);
            this.epsSeed = r.settings.seed;
        }
        const xt = new Float32Array(x0.length);
        for (let i = 0; i < xt.length; i++) xt[i] = signal * x0[i] + noise * this.eps[i];
        drawGrid(this.el["fwd-x0"], quantize(x0), [1, c, h, w], 0);
        drawGrid(this.el["fwd-xt"], quantize(xt), [1, c, h, w], 0);
    }

    drawChart(tMark) {
        const cv = this.el["fwd-chart"];
        const ctx = cv.getContext("2d");
        const a = this.loaded.alphas;
        const W = cv.width, H = cv.height, pad = 6;
        ctx.clearRect(0, 0, W, H);
        ctx.lineWidth = 2;
        for (const [f, color] of [
            [(x) => Math.sqrt(x), "#2f81f7"],
            [(x) => Math.sqrt(1 - x), "#e5534b"],
        ]) {
            ctx.strokeStyle = color;
            ctx.beginPath();
            for (let i = 0; i < W - 2 * pad; i++) {
                const t = Math.round((i / (W - 2 * pad - 1)) * (a.length - 1));
                const y = H - pad - f(a[t]) * (H - 2 * pad);
                i ? ctx.lineTo(pad + i, y) : ctx.moveTo(pad + i, y);
            }
            ctx.stroke();
        }
        if (tMark !== undefined) {
            const x = pad + (tMark / (a.length - 1)) * (W - 2 * pad - 1);
            ctx.strokeStyle = "#888";
            ctx.lineWidth = 1;
            ctx.beginPath();
            ctx.moveTo(x, 0);
            ctx.lineTo(x, H);
            ctx.stroke();
        }
    }

    destroy() {
        clearTimeout(this.debounce);
        this.runner.cancel();
        this.loading?.abort();
        this.releaseModel();
        this.unsubscribeGpu();
    }
}

function fmtMs(ms) {
    return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Reads settings from a query string or attribute map (strings), validating each. */
export function parseSettings(get) {
    const out = {};
    const num = (key, lo, hi, int) => {
        const v = get(key);
        if (v == null || v === "") return;
        const n = Number(v);
        if (Number.isFinite(n)) out[key] = Math.min(hi, Math.max(lo, int ? Math.round(n) : n));
    };
    const model = get("model");
    if (model) out.model = model;
    const cls = get("class");
    if (cls != null && cls !== "") out.class = cls;
    num("steps", 1, 1000, true);
    num("guidance", 0, 10, false);
    num("eta", 0, 1, false);
    num("seed", 0, 4294967295, true);
    num("grid", 1, 64, true);
    const sampler = get("sampler");
    if (SAMPLERS.some(([v]) => v === sampler)) out.sampler = sampler;
    const clip = get("clip");
    if (CLIP_MODES.some(([v]) => v === clip)) out.clip = clip;
    const backend = get("backend");
    if (BACKENDS.includes(backend)) out.backend = backend;
    const view = get("view");
    if (view === "xt" || view === "x0") out.view = view;
    const autoplay = get("autoplay");
    if (autoplay != null) out.autoplay = !/^(0|false|no|off)$/i.test(autoplay);
    return out;
}

export { gridGeometry };
