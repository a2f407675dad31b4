// The playground view, assembled from its panels (panels/*.js): the settings form, the
// output (live preview or compared rows, scrubber, downloads), the forward process, and on
// the page the share panel. This module holds what they share: the engine and model, the
// runs (one, or one per compared value, all from the seed's x_T), pause / step / stop, and
// the status line. The page (index.html) mounts it with every control; the widget
// (<diffusion-playground>, widget.js) mounts it in a shadow root with the controls its
// `controls` attribute names.

import {
    PlaygroundError,
    Runner,
    chooseBackend,
    fromEngineError,
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
import { ALL_CONTROLS, DEFAULTS, fmtMs, parseCompare, samplerOf, usesEta, usesVariance } from "./settings.js";
import { CONTROL_IDS, controlsHtml, fillLabels, wireControls, writeControls } from "./panels/controls.js";
import { OUTPUT_IDS, drawFrame, enableScrubber, finishRow, layoutRows, outputHtml, wireOutput } from "./panels/output.js";
import { FORWARD_IDS, drawForward, forwardHtml, setupForward, wireForward } from "./panels/forward.js";
import { SHARE_IDS, shareHtml, wireShare } from "./panels/share.js";
import { SCHEDULE_IDS, markSchedule, refreshSchedule, scheduleHtml } from "./panels/schedule.js";
import { INSIDE_IDS, followInside, holdInside, insideHtml, resetInside, wireInside } from "./panels/inside.js";

export {
    ALL_CONTROLS,
    CLIP_MODES,
    COMPARE_KEYS,
    DEFAULTS,
    GRID_SIZES,
    SAMPLERS,
    SETTING_KEYS,
    SHIPPED_MODELS,
    SPACING_MODES,
    VARIANCE_MODES,
    WIDGET_CONTROLS,
    embedTag,
    fmtMs,
    parseCompare,
    parseControls,
    parseSettings,
    samplerOf,
    settingsQuery,
    usesClip,
    usesEta,
    usesVariance,
} from "./settings.js";

const DEBOUNCE_MS = 250;
// Per-step frames kept for the scrubber, at most this many bytes over all compared rows
// (older steps are thinned).
const FRAME_BUDGET = 48 << 20;

let uid = 0;

/** The caption of a compared row: "guidance 2", "sampler ddim", "label Sneaker",
 *  "model fashion-flow (flow_euler)" (a compared model says which sampler it ran). */
function captionOf(key, value, names, sampler) {
    if (key === "label" && /^\d+$/.test(String(value)) && names?.[Number(value)]) return `label ${names[Number(value)]}`;
    if (key === "model") return `model ${value} (${sampler})`;
    return `${key} ${value}`;
}

export class Playground {
    /**
     * @param {HTMLElement} host where the view is built (a div in the page or a shadow root's)
     * @param {object} o settings (see DEFAULTS) plus `controls` (a Set), `models` (the model
     *   picker's [value, label] list), `compact` (widget layout: the output above the form),
     *   `share` (the page's share panel; `shareControls`: the controls it ticks at first),
     *   `selftest` (the kernel check's URL, linked under the Engine control), `autoRestart` (restart the GPU by itself after a
     *   device loss instead of offering a button), `onState(state, text, error)`,
     *   `onResult(result)`, `onStep({step, of, t, ms, row, value})`, `onChange(settings)`.
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
        this.others = new Map(); // compare="model:…": the other models' entries this view holds, by spec
        this.rows = []; // the last run's rows: {value, caption, settings, steps, shape, frames, x, ms}
        this.lastResult = null;
        this.runs = []; // a log of runs: {id, settings, status, stepsDone, ms}
        this.state = "idle";
        this.gate = null; // resolves a paused run's step callback
        this.pauseAfterStep = false;
        this.id = `dp${++uid}`;
        this.build();
        this.unsubscribeGpu = onGpuEvent((ev) => this.onGpuEvent(ev));
    }

    /** The sampler a run of the current settings takes: theirs, else the loaded model's
     *  default (undefined before a model is loaded, when the settings leave it open). */
    runSampler() {
        return this.loaded ? samplerOf(this.settings, this.loaded) : this.settings.sampler || undefined;
    }

    /** Frames of the single run (the first row when comparing), for the scrubber and tests. */
    get frames() {
        return this.rows[0]?.frames ?? [];
    }

    // -------------------------------------------------------------------------------------
    // DOM

    build() {
        this.host.classList.add("dp");
        if (this.o.compact) this.host.classList.add("dp-compact");
        // The DOM order is the visual order of the one-column layouts, so that Tab follows
        // what is seen: the widget shows its output above the form, the narrow page the form
        // first (the wide page puts the form on the left).
        const form = controlsHtml(this), out = outputHtml(this, shareHtml(this));
        this.host.innerHTML = (this.o.compact ? out + form : form + out) + insideHtml(this) + forwardHtml(this) + scheduleHtml(this);
        const $ = (id) => this.host.querySelector(`#${id}`);
        const ids = [...CONTROL_IDS, ...OUTPUT_IDS, ...INSIDE_IDS, ...FORWARD_IDS, ...SCHEDULE_IDS, ...(this.o.share ? SHARE_IDS : [])];
        this.el = Object.fromEntries(ids.map((id) => [id, $(id)]));
        this.el.form = this.host.querySelector("form");
        this.el.views = [...this.host.querySelectorAll(`input[name="view-${this.id}"]`)];
        writeControls(this);
        wireControls(this);
        wireOutput(this);
        wireForward(this);
        wireInside(this);
        wireShare(this);
        this.el.restart.addEventListener("click", () => this.restartGpu());
        this.host.addEventListener("keydown", (ev) => this.onKey(ev));
    }

    /** Space plays or pauses, unless a control that types or toggles has the focus. */
    onKey(ev) {
        if (ev.key !== " " || ev.ctrlKey || ev.metaKey || ev.altKey) return;
        const t = ev.composedPath?.()[0] ?? ev.target;
        if (t instanceof Element && t.closest("textarea, select, button, summary, a, input:not([type=range])")) return;
        ev.preventDefault();
        this.playPause();
    }

    /** Changes one setting from outside (the widget's attributes, the page's URL). */
    set(key, value) {
        this.settings[key] = value;
        writeControls(this);
        this.refreshShare?.();
        if (key === "model") this.load();
        else if (key === "backend") this.start();
        else if (key === "view") this.redrawRows();
        else this.scheduleSample();
    }

    /** Puts the settings into the controls (after a change that should not re-sample). */
    syncControls() {
        writeControls(this);
        this.refreshShare?.();
    }

    /** A frame of `row` is on screen (live or scrubbed): the schedule's marker follows the
     *  first row's. */
    frameShown(row, frame) {
        if (row !== this.rows[0]) return;
        markSchedule(this, frame.step);
        followInside(this);
    }

    redrawRows() {
        for (const row of this.rows) if (row.shown) drawFrame(this, row, row.shown);
    }

    /** Sample, Pause and Step follow whether a model is loaded; Stop whether a run is on. */
    enableButtons(on = !!this.loaded) {
        const e = this.el;
        e.run.disabled = e.pause.disabled = e.step.disabled = !on;
        e.stop.disabled = !["running", "paused", "queued"].includes(this.state);
    }

    /** Shows `text`; `error` (a PlaygroundError) when the state is "error". The status
     *  element carries the error's kind and detail as data-kind, data-field, data-tensor
     *  and data-http-status, for styles, scripts and tests. */
    setStatus(text, state, error = null) {
        const st = this.el.status;
        st.textContent = text;
        delete st.dataset.phase;
        st.dataset.state = state;
        st.dataset.kind = error?.kind ?? "";
        st.dataset.field = error?.field ?? "";
        st.dataset.tensor = error?.tensor ?? "";
        st.dataset.httpStatus = error?.status ?? "";
        this.state = state;
        this.error = error;
        if (state === "running") holdInside(this);
        this.el.stop.disabled = !["running", "paused", "queued"].includes(state);
        this.o.onState?.(state, text, error);
    }

    showError(err) {
        const e = err instanceof PlaygroundError ? err : fromEngineError(err);
        this.runner.cancel();
        this.releaseGate();
        this.setStatus(e.message, "error", e);
        this.el.progress.value = 0;
        const lost = e.kind === "gpu-lost";
        this.enableButtons(!(e.kind === "gpu-unavailable" || lost || !this.loaded));
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
            this.enableButtons(false);
            this.setStatus("Restarting the GPU: a new device, then the model again…", "loading");
        } else if (ev.type === "restored") {
            if (!this.loaded) {
                this.load(); // it was lost while loading
                return;
            }
            this.enableButtons(true);
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
        this.enableButtons(false);
        this.el.label.disabled = true;
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
                    // The live status says once that the download started; the megabytes
                    // go to the (silent) timing line and the progress bar.
                    const text = `${mb(p.done)} of ${p.total ? mb(p.total) : "?"} MB`;
                    this.el.progress.setAttribute("aria-valuetext", text);
                    this.el.timing.textContent = `Downloaded ${text}`;
                    if (this.el.status.dataset.phase !== "download") {
                        this.setStatus(`Downloading the ${spec} weights${p.total ? ` (${mb(p.total)} MB)` : ""}…`, "loading");
                        this.el.status.dataset.phase = "download";
                    }
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
        // The model menu moved to a model of another kind: the sampler of the old one gives
        // way to this one's default. (A link or an attribute that fixes a sampler this model
        // cannot run keeps it, and the run says why.)
        if (this.modelPicked && this.settings.sampler && !entry.samplers.includes(this.settings.sampler)) {
            this.settings.sampler = "";
            this.o.onChange?.(this.settings);
        }
        this.modelPicked = false;
        this.syncControls(); // the model's samplers, its flow-only controls, analytic
        this.showWarnings(entry.warnings);
        this.loadMs = performance.now() - started;
        this.el.progress.max = 1;
        this.el.progress.value = 0;
        fillLabels(this);
        this.el.label.disabled = false;
        this.enableButtons();
        const how = entry.source === "cache" ? "from the browser cache" : `${(entry.bytes / 1048576).toFixed(1)} MB downloaded`;
        this.el.timing.textContent = "";
        this.setStatus(`Ready on ${backend.label}: ${entry.name} model loaded (${how}, ${fmtMs(this.loadMs)}).`, "ready");
        this.o.onLoaded?.(entry);
        setupForward(this);
        let first = this.settings;
        try {
            first = this.variants(this.settings, entry)[0].settings;
        } catch {
            // A bad compare spec: sample() reports it; the panel shows the plain settings.
        }
        refreshSchedule(this, first);
        if (this.settings.autoplay) this.sample();
    }

    /** Gives back the model this view holds (engine.js frees it when no view holds it),
     *  and the compared ones. */
    releaseModel() {
        const held = this.held;
        this.held = this.loaded = null;
        resetInside(this, "The model changed: sample, then look inside a step.");
        if (this.el["fwd-loss-go"]) this.el["fwd-loss-go"].disabled = true;
        if (held) releaseModel(held);
        this.releaseOthers(new Set());
    }

    /** Gives back the compared models not in `keep` (specs). */
    releaseOthers(keep) {
        for (const [spec, p] of this.others) {
            if (keep.has(spec)) continue;
            this.others.delete(spec);
            p.controller.abort();
            p.promise.then((e) => releaseModel(e), () => {});
        }
    }

    /** The entries of the models `specs` names (compare="model:…"): this view's own model,
     *  and the others loaded on its backend, held until the compare spec or the backend
     *  changes. Rejects with the load's error (the view stays usable). */
    async compareModels(specs) {
        const own = this.settings.model;
        const wanted = new Set(specs.filter((m) => m !== own));
        this.releaseOthers(wanted);
        const out = new Map([[own, this.loaded]]);
        for (const spec of wanted) {
            let p = this.others.get(spec);
            if (!p) {
                const controller = new AbortController();
                const url = modelUrl(spec, this.o.base ?? document.baseURI);
                p = { controller, promise: loadModel(url, null, this.backend, controller.signal) };
                p.promise.catch(() => this.others.get(spec) === p && this.others.delete(spec));
                this.others.set(spec, p);
            }
            out.set(spec, await p.promise);
        }
        return out;
    }

    /** What could not be checked about the model (e.g. no SHA-256 outside HTTPS). */
    showWarnings(list) {
        this.el.warning.textContent = list.join(" ");
        this.el.warning.hidden = list.length === 0;
    }

    /** The label setting as an index (names match case-insensitively), "all", or null;
     *  `names`: the class names of the model it is for (this view's by default). */
    labelIndex(label = this.settings.label, names = this.loaded?.classNames ?? []) {
        const v = String(label ?? "0").trim();
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
        this.releaseGate();
        this.debounce = setTimeout(() => this.sample(), DEBOUNCE_MS);
    }

    /** The engine's options for one run of `s` on `entry`. */
    options(s, entry) {
        const n = s.grid;
        const li = this.labelIndex(s.label, entry.classNames);
        const k = entry.classNames.length;
        const sampler = samplerOf(s, entry);
        const opts = {
            count: n,
            steps: s.steps,
            guidance: s.guidance,
            sampler,
            eta: usesEta(sampler) && !entry.isFlow ? s.eta : 0,
            seed: s.seed,
            preview: true,
        };
        if (k > 0) opts.classes = Array.from({ length: n }, (_, i) => (li === "all" ? i % k : li));
        // A flow-matching model has no eta, clipping, spacing or variance: the engine
        // refuses them, so a diffusion setting left on (or a manifest default) is not sent.
        if (entry.isFlow) return opts;
        Object.assign(opts, entry.defaults);
        // "default" (or absent) leaves the model's scheduler_config.json value.
        if (s.spacing && s.spacing !== "default") opts.spacing = s.spacing;
        if (s.variance && s.variance !== "default" && usesVariance(sampler, s.variance)) opts.variance = s.variance;
        // (Sent for every diffusion sampler, as the CLI's --clip-sample: DPM-Solver++ reads
        // it in the clipped-eps mode.)
        if (s.clip !== "auto") opts.clipSample = s.clip === "on";
        else if (sampler === "ddpm") opts.clipSample = true;
        return opts;
    }

    /** The runs a sample makes: one, or one per value of `compare` (an input error names
     *  the field when the spec or one of its labels is wrong), each with the model entry it
     *  runs on. `models`: compare="model:…"'s entries by spec (`compareModels`); without it
     *  every row names this view's model (for the schedule panel before they load). */
    variants(s, entry, models = null) {
        const cmp = parseCompare(s.compare);
        if (!cmp) return [{ value: null, caption: "", settings: s, entry }];
        const names = entry.classNames;
        if (cmp.key === "model") {
            return cmp.values.map((value) => {
                const e = models?.get(value) ?? entry;
                // Each model with its default sampler, unless the settings fix one it runs.
                const settings = { ...s, model: value, sampler: samplerOf(s, e, { fit: true }) };
                return { value, caption: captionOf("model", value, null, settings.sampler), settings, entry: e };
            });
        }
        return cmp.values.map((value) => {
            if (cmp.key === "label") {
                const v = String(value).trim();
                const ok = v.toLowerCase() === "all" || (/^\d+$/.test(v) && Number(v) < names.length) || names.some((n) => n.toLowerCase() === v.toLowerCase());
                if (!ok) {
                    throw new PlaygroundError("input", `compare="${s.compare}": “${v}” is not a label of this model (0..${names.length - 1} or ${names.join(", ")}).`, { field: "compare" });
                }
            }
            return { value, caption: captionOf(cmp.key, value, names), settings: { ...s, [cmp.key]: value }, entry };
        });
    }

    /** Samples with the current settings; `{pauseAfterFirst}` stops after its first step
     *  (the Step button on an idle view). Resolves when the run ends. */
    sample({ pauseAfterFirst = false } = {}) {
        clearTimeout(this.debounce);
        const entry = this.loaded;
        if (!entry) return Promise.resolve(null);
        const s = { ...this.settings };
        // The view stays usable after a bad spec or a compared model that fails to load:
        // fix the spec (or empty it) and sample again.
        const refuse = (e) => {
            if (isAbort(e)) return null;
            const err = e instanceof PlaygroundError ? e : fromEngineError(e);
            this.runner.cancel();
            this.releaseGate();
            this.setStatus(err.message, "error", err);
            this.enableButtons(true);
            return null;
        };
        let variants;
        try {
            const cmp = parseCompare(s.compare);
            if (cmp?.key === "model") {
                const missing = cmp.values.filter((m) => m !== s.model && !this.others.has(m));
                const loading = this.compareModels(cmp.values);
                if (missing.length) this.setStatus(`Loading ${missing.join(", ")} to compare…`, "loading");
                return loading.then(
                    (models) => (this.loaded === entry ? this.run(s, entry, this.variants(s, entry, models), pauseAfterFirst) : null),
                    refuse,
                );
            }
            this.releaseOthers(new Set());
            variants = this.variants(s, entry);
        } catch (e) {
            return Promise.resolve(refuse(e));
        }
        return this.run(s, entry, variants, pauseAfterFirst);
    }

    /** Runs `variants` (one run, or the compared rows) one after the other. */
    run(s, entry, variants, pauseAfterFirst) {
        this.releaseGate();
        // The schedule panel follows the single run, or the first compared row.
        refreshSchedule(this, variants[0].settings, variants[0].entry);
        this.pauseAfterStep = pauseAfterFirst;
        this.stopRequested = false;
        const n = s.grid;
        const [c, h, w] = entry.shape;
        const shape = [n, c, h, w];
        const record = { id: this.runs.length + 1, settings: s, status: "queued", stepsDone: 0, msPerStep: [], totalMs: 0 };
        this.runs.push(record);
        this.setStatus(entry.backend === "cpu" ? "Waiting for the CPU engine…" : "Waiting for the GPU…", "queued");
        return this.runner.request(async (signal) => {
            signal.addEventListener("abort", () => this.releaseGate());
            record.status = "running";
            const totalSteps = variants.reduce((a, v) => a + v.settings.steps, 0);
            const rows = variants.map((v) => ({ ...v, steps: v.settings.steps, shape: [n, ...v.entry.shape], frames: [], x: null, ms: null }));
            this.rows = rows;
            resetInside(this);
            const stride = Math.max(1, Math.ceil((totalSteps * 2 * n * c * h * w) / FRAME_BUDGET));
            layoutRows(this, rows);
            this.el.scrub.disabled = true;
            this.el.progress.max = totalSteps;
            this.el.progress.value = 0;
            const what = `${n} image${n > 1 ? "s" : ""}`;
            this.setStatus(rows.length > 1 ? `Sampling ${what} for each of ${rows.length} runs (${rows.map((r) => r.caption).join(", ")})…` : `Sampling ${what}, ${s.steps} step${s.steps > 1 ? "s" : ""}…`, "running");
            const started = performance.now();
            let done = 0;
            let result;
            for (const [i, row] of rows.entries()) {
                const opts = this.options(row.settings, row.entry);
                const rowStart = performance.now();
                let last = rowStart;
                finishRow(row, "running…");
                try {
                    result = await row.entry.model.sample(
                        opts,
                        (info) => {
                            const now = performance.now();
                            const ms = now - last;
                            record.msPerStep.push(ms);
                            last = now;
                            record.stepsDone = done + info.step + 1;
                            if (signal.aborted) return undefined;
                            const frame = { step: info.step, timestep: info.timestep, xt: quantize(info.xt), x0: quantize(info.x0) };
                            if (info.step % stride === 0 || info.step === info.steps - 1) row.frames.push(frame);
                            drawFrame(this, row, frame);
                            this.el.progress.value = done + info.step + 1;
                            const text = `step ${info.step + 1} of ${info.steps} (t = ${info.timestep})`;
                            this.el.progress.setAttribute("aria-valuetext", rows.length > 1 ? `${row.caption}: ${text}` : text);
                            this.showTiming(record, now - started, totalSteps);
                            this.o.onStep?.({ step: info.step + 1, of: info.steps, t: info.timestep, ms, row: i, value: row.value });
                            return this.maybePause(row, info);
                        },
                        signal,
                    );
                } catch (e) {
                    record.status = "error";
                    this.showError(this.runError(e, n, row.entry));
                    return null;
                }
                if (result.cancelled) {
                    record.status = "cancelled";
                    record.stepsDone = done + result.stepsDone;
                    record.totalMs = performance.now() - started;
                    if (this.stopRequested) this.stopped(record, row, done + result.stepsDone, totalSteps);
                    return result;
                }
                row.x = result.x;
                row.ms = performance.now() - rowStart;
                finishRow(row, fmtMs(row.ms));
                done += row.steps;
            }
            record.totalMs = performance.now() - started;
            record.status = "done";
            const first = rows[0];
            const sampler = samplerOf(s, entry);
            this.lastResult = { x: first.x, shape, settings: { ...s, sampler }, steps: first.steps };
            if (rows.length > 1 || first.value != null) {
                this.lastResult.compare = parseCompare(s.compare);
                this.lastResult.rows = rows.map((r) => ({ value: r.value, caption: r.caption, x: r.x, steps: r.steps, ms: r.ms, settings: { ...r.settings, sampler: samplerOf(r.settings, r.entry) } }));
            }
            this.showTiming(record, record.totalMs, totalSteps, true);
            const how = rows.length > 1 ? `${rows.length} runs of ${what}` : what;
            this.setStatus(`Done: ${how} of ${this.describe(s)} in ${fmtMs(record.totalMs)}.`, "done");
            this.el.canvas.setAttribute("aria-label", `${what}: ${this.describe(s)}, ${sampler}, ${s.steps} steps, seed ${s.seed}`);
            this.el.download.disabled = this.el.filmstrip.disabled = false;
            enableScrubber(this);
            drawForward(this);
            this.o.onResult?.(this.lastResult);
            return result;
        });
    }

    /** A Promise that holds the run after this step when a pause was asked for (the engine
     *  awaits what the step callback returns), else undefined. */
    maybePause(row, info) {
        if (!this.pauseAfterStep) return undefined;
        this.pauseAfterStep = false;
        const where = `${this.rows.length > 1 ? `${row.caption}: ` : ""}step ${info.step + 1} of ${info.steps}`;
        this.setStatus(`Paused at ${where}. Space or Pause resumes; Step runs one more step.`, "paused");
        this.el.pause.textContent = "Resume";
        // The frames so far can be replayed while paused.
        enableScrubber(this);
        return new Promise((resolve) => (this.gate = resolve));
    }

    /** Lets a paused run go on (or end, when it was aborted meanwhile). */
    releaseGate() {
        const g = this.gate;
        this.gate = null;
        this.el.pause.textContent = "Pause";
        g?.();
    }

    /** Space and the Pause button: pause a run, resume a paused one, or start one. */
    playPause() {
        if (!this.loaded) return;
        if (this.gate) {
            this.releaseGate();
            this.setStatus("Sampling, resumed…", "running");
            this.el.scrub.disabled = true;
        } else if (this.state === "running" || this.state === "queued") {
            this.pauseAfterStep = true;
        } else {
            this.sample();
        }
    }

    /** The Step button: one more step of a paused (or running) run, or the first step of a
     *  new one. */
    stepOnce() {
        if (!this.loaded) return;
        if (this.gate) {
            this.pauseAfterStep = true;
            const g = this.gate;
            this.gate = null;
            this.el.scrub.disabled = true;
            g();
        } else if (this.state === "running" || this.state === "queued") {
            this.pauseAfterStep = true;
        } else {
            this.sample({ pauseAfterFirst: true });
        }
    }

    /** The Stop button: ends the run in flight (paused or not) after its current step. */
    stop() {
        if (!["running", "paused", "queued"].includes(this.state)) return;
        this.stopRequested = true;
        this.pauseAfterStep = false;
        this.runner.cancel();
        this.releaseGate();
        if (this.state === "queued") this.setStatus("Stopped before it started.", "stopped");
    }

    stopped(record, row, stepsDone, totalSteps) {
        this.setStatus(`Stopped after ${stepsDone} of ${totalSteps} steps (${fmtMs(record.totalMs)}). The scrubber replays them; Sample starts again.`, "stopped");
        if (row.msEl) finishRow(row, "stopped");
        this.el.filmstrip.disabled = !this.rows.some((r) => r.frames.length);
        enableScrubber(this);
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
        const li = this.labelIndex(s.label);
        return li === "all" ? "every label" : li === null ? "the model" : `“${this.loaded.classNames[li]}”`;
    }

    showTiming(record, elapsed, steps, final = false) {
        const per = record.msPerStep;
        // Step 0 includes compiling the pipelines on a cold engine: report the median.
        const sorted = [...per].sort((a, b) => a - b);
        const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
        this.el.timing.textContent = final
            ? `${fmtMs(median)} per step (median of ${per.length}) · total ${fmtMs(elapsed)}`
            : `step ${per.length} of ${steps} · ${fmtMs(median)} per step · ${fmtMs(elapsed)} so far of ~${fmtMs(median * steps)}`;
    }

    destroy() {
        clearTimeout(this.debounce);
        this.runner.cancel();
        this.releaseGate();
        this.loading?.abort();
        this.releaseModel();
        this.unsubscribeGpu();
    }
}

export { gridGeometry };
