// The shared core of the page, the widget and embed.html: the choice of backend (WebGPU on
// a hardware adapter, else the CPU engine in a pool of Web Workers), one WebGPU engine per
// page (a new one after a device loss, with the models uploaded again), one loaded copy of
// each model per backend while a view holds it, a promise queue so views take turns, the
// download of weights (progress, cancellation, a size cap, Cache API, size/sha256 check
// against manifest.json) and one error taxonomy (ERROR_KINDS, the engine's).
//
// Everything here is plain ES modules; the engine itself is Rust compiled to wasm
// (src/web.rs), loaded from ./pkg/ next to this file.

import init, { Engine, hasWebGpu } from "./pkg/diffusion_playground.js";

export const WEBGPU_BROWSERS =
    "WebGPU ships in Chrome and Edge 113+ (Windows, macOS, ChromeOS, Android), Safari 26+ and Firefox 141+ (Windows); on Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu.";

/** The kinds of failure, one taxonomy shared with the engine (src/error.rs ErrorKind): the
 *  wasm engine throws errors with one of these as `kind`, and the page's own failures
 *  (downloads, manifest checks, CPU workers) use the same names. */
export const ERROR_KINDS = [
    "config",
    "weights",
    "scheduler",
    "input",
    "limits",
    "numeric",
    "gpu-unavailable",
    "gpu-oom",
    "gpu-lost",
    "network",
    "checksum",
    "internal",
];

/** An error the page can explain: `kind` is one of ERROR_KINDS. Where known, `field` (a
 *  config or sampling option), `tensor` (a weights tensor), `status` (an HTTP status), `url`
 *  (the file) and `worker` (why a CPU worker stopped) say what it is about, so that no
 *  caller ever has to read the message to classify it. */
export class PlaygroundError extends Error {
    constructor(kind, message, { cause, field, tensor, status, url, worker } = {}) {
        super(message, cause === undefined ? undefined : { cause });
        this.name = "PlaygroundError";
        this.kind = ERROR_KINDS.includes(kind) ? kind : "internal";
        for (const [k, v] of Object.entries({ field, tensor, status, url, worker })) if (v != null) this[k] = v;
    }
}

/** Wraps an error thrown by the wasm engine (src/web.rs gives it `kind`, `field` and
 *  `tensor`) or by a CPU worker into a PlaygroundError with a message for visitors. */
export function fromEngineError(e, context = "") {
    if (e instanceof PlaygroundError) return e;
    const kind = ERROR_KINDS.includes(e?.kind) ? e.kind : "internal";
    const msg = e?.message ?? String(e);
    const text = {
        config: `This model's configuration is not supported by the engine: ${msg}`,
        scheduler: `This model's scheduler_config.json is not usable: ${msg}`,
        weights: `The weights file is truncated or corrupt: ${msg}`,
        "gpu-lost": `The GPU device was lost (${msg}). Restart the GPU to go on.`,
        "gpu-oom": `The GPU ran out of memory: ${msg}`,
        "gpu-unavailable": `WebGPU is not available here: ${msg}. ${WEBGPU_BROWSERS} Choose the CPU engine (backend: cpu) to sample without it.`,
    }[kind];
    return new PlaygroundError(kind, text ?? (context ? `${context}: ${msg}` : msg), { cause: e, field: e?.field, tensor: e?.tensor });
}

/** The reason an aborted signal carries (an AbortError DOMException unless given one). */
function abortReason(signal) {
    return signal.reason ?? new DOMException("The load was cancelled.", "AbortError");
}

/** True for the rejection of a cancelled load or fetch: not a failure to show. */
export function isAbort(e) {
    return e?.name === "AbortError";
}

// ---------------------------------------------------------------------------------------
// The engine: one per page, replaced by a new one after a device loss (restartGpu).

let enginePromise = null;
let currentEngine = null; // the engine enginePromise resolved to, for synchronous readers
let restarting = null;
const gpuListeners = new Set();

/** Resolves to the page's one Engine (creating it on first use). */
export function getEngine() {
    enginePromise ??= (async () => {
        await init();
        if (!hasWebGpu()) {
            throw new PlaygroundError("gpu-unavailable", `This browser has no WebGPU, which sampling on your GPU needs. ${WEBGPU_BROWSERS} Choose the CPU engine to sample without it.`);
        }
        let engine;
        try {
            engine = await Engine.create();
        } catch (e) {
            throw new PlaygroundError(
                ERROR_KINDS.includes(e?.kind) ? e.kind : "gpu-unavailable",
                `WebGPU is present but gave no usable GPU (${e?.message ?? e}). ${WEBGPU_BROWSERS} Choose the CPU engine to sample without it.`,
                { cause: e, field: e?.field },
            );
        }
        currentEngine = engine;
        watchDevice(engine);
        return engine;
    })();
    const p = enginePromise;
    p.catch(() => {
        if (enginePromise === p) enginePromise = null; // no usable GPU now; a later restart may find one
    });
    return p;
}

function watchDevice(engine) {
    const timer = setInterval(() => {
        if (!engine.isLost) return;
        clearInterval(timer);
        emitGpu({ type: "lost", error: lostError(engine) });
    }, 500);
}

/** The gpu-lost error of `engine`, with the browser's reason when it gave one. */
export function lostError(engine) {
    return fromEngineError({ kind: "gpu-lost", message: engine.deviceError() ?? "unknown reason" });
}

function emitGpu(event) {
    for (const f of gpuListeners) f(event);
}

/**
 * Calls `f({type, error})` on the GPU's events: "lost" (the device is gone; `error` is the
 * gpu-lost PlaygroundError), "restarting", "restored" (a new device, and every loaded
 * WebGPU model uploaded to it again) and "restart-failed" (`error` says why). Returns an
 * unsubscribe function.
 */
export function onGpuEvent(f) {
    gpuListeners.add(f);
    return () => gpuListeners.delete(f);
}

/**
 * After a device loss: creates a new Engine and uploads every loaded WebGPU model to it
 * again. The weights are read back from the Cache API (or downloaded again when the browser
 * could not cache them) instead of keeping a second copy of every file in memory for an
 * event this rare. Model entries are updated in place, so the views holding them sample on
 * without reloading anything. Concurrent callers (the page's button, every widget) share
 * one restart; a device that is not lost is left alone.
 */
export function restartGpu() {
    restarting ??= (async () => {
        const old = await enginePromise?.catch(() => null);
        if (old && !old.isLost) return;
        emitGpu({ type: "restarting" });
        try {
            enginePromise = null;
            currentEngine = null;
            const engine = await getEngine();
            // In the queue: runs of the lost models end (failing) before their models are
            // swapped and freed, and no run sees a half-restored page.
            await enqueue(async () => {
                for (const rec of models.values()) {
                    if (rec.backend === "webgpu" && rec.entry?.model) await reupload(rec, engine);
                }
            });
            // The old Engine is left to the garbage collector (wasm-bindgen's finalizer frees
            // it): its device's memory went with the loss, and a load that started before the
            // restart may still be borrowing it, which an explicit free() would refuse.
        } catch (e) {
            const error = fromEngineError(e, "Restarting the GPU failed");
            emitGpu({ type: "restart-failed", error });
            throw error;
        }
        emitGpu({ type: "restored" });
    })().finally(() => {
        restarting = null;
    });
    return restarting;
}

/** Uploads the model of `rec` to `engine` again from its files; frees the lost one. */
async function reupload(rec, engine) {
    const { configText, schedText, weights, analytic } = rec.entry.recipe;
    const { bytes } = await fetchWeights(weights.url, weights.expected, () => {});
    let fresh;
    try {
        fresh = await engine.loadModel(configText, bytes, schedText ?? undefined);
        // Accepted before the loss, so it is accepted again.
        if (rec.entry.hasAnalytic) fresh.setAnalyticMoments(analytic.text, analytic.sha256 ?? undefined);
    } catch (e) {
        throw fromEngineError(e);
    }
    builtModels++;
    const stale = rec.entry.model;
    rec.entry.model = fresh;
    stale.free();
}

// ---------------------------------------------------------------------------------------
// The backend: `auto | webgpu | cpu`.

export const BACKENDS = ["auto", "webgpu", "cpu"];
const backends = new Map();

/** Names a software (CPU-emulated) WebGPU adapter: Chrome's SwiftShader, Mesa's llvmpipe /
 *  lavapipe, Windows' WARP ("Microsoft Basic Render Driver"). */
const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|software|basic render|warp/i;

/** How many CPU workers to run: one per core, at most 8 (the model is small; more workers
 *  only add memory: each holds its own copy of the weights). */
export function cpuThreads() {
    return Math.max(1, Math.min(8, navigator.hardwareConcurrency || 2));
}

/**
 * Resolves to the backend a view samples on: `{kind: "webgpu", engine, label, reason}` or
 * `{kind: "cpu", threads, label, reason}`. `auto` takes WebGPU on a hardware adapter, and the
 * CPU when the browser has no `navigator.gpu`, no adapter, or only a software (fallback)
 * one, which is slower than the CPU engine. `webgpu` fails with a gpu-unavailable error
 * instead. A WebGPU backend's `engine` is the page's current one: a new one after a restart.
 */
export function chooseBackend(choice = "auto") {
    if (!BACKENDS.includes(choice)) choice = "auto";
    let p = backends.get(choice);
    if (!p) {
        p = pickBackend(choice);
        backends.set(choice, p);
        p.catch(() => backends.delete(choice)); // a failed choice can be retried
    }
    return p;
}

function cpuBackend(reason) {
    const threads = cpuThreads();
    return { kind: "cpu", threads, label: `the CPU (${threads} worker${threads > 1 ? "s" : ""})`, reason: `${reason}: sampling on ${threads} CPU thread${threads > 1 ? "s" : ""}.` };
}

async function pickBackend(choice) {
    if (choice === "cpu") return cpuBackend("The CPU engine was chosen");
    if (choice === "auto") {
        if (!globalThis.navigator?.gpu) return cpuBackend("This browser has no WebGPU");
        let adapter = null;
        try {
            adapter = await navigator.gpu.requestAdapter();
        } catch {
            adapter = null;
        }
        if (!adapter) return cpuBackend("This browser has WebGPU but offers no GPU adapter");
        const info = adapter.info ?? {};
        const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ");
        if (info.isFallbackAdapter || adapter.isFallbackAdapter || SOFTWARE_ADAPTER.test(name)) {
            return cpuBackend(`This browser's WebGPU runs on a software adapter (${name || "fallback"}), which is slower than the CPU engine`);
        }
    }
    try {
        const engine = await getEngine();
        return {
            kind: "webgpu",
            get engine() {
                return currentEngine;
            },
            label: engine.adapterName,
            reason: `Sampling on the GPU through WebGPU (${engine.adapterName}).`,
        };
    } catch (e) {
        if (choice === "auto") return cpuBackend(`WebGPU gave no usable GPU (${e?.message ?? e})`);
        throw e;
    }
}

// ---------------------------------------------------------------------------------------
// The CPU backend: a pool of Web Workers, each with its own wasm instance and copy of the
// model (no SharedArrayBuffer, so no COOP/COEP headers: the widget lives on other sites).
// A run splits the images into contiguous shares, one per worker, and steps all workers in
// lock-step: previews, cancellation between steps and the result behave as on the GPU, and
// the images equal the GPU's (noise is keyed by the global image index).

/** Every live pool, for tests (tests/e2e kill a worker through it). */
export const cpuPools = new Set();
const WORKER_URL = new URL("./cpu-worker.js", import.meta.url).href;
// A step that has not answered in this long is treated as a hung worker.
const STEP_TIMEOUT_MS = 120_000;

function spawnWorker() {
    try {
        return new Worker(WORKER_URL, { type: "module" });
    } catch {
        // A widget served from another origin than the page: a worker script must be
        // same-origin, but a same-origin blob module may import the cross-origin one.
        const blob = new Blob([`import ${JSON.stringify(WORKER_URL)};`], { type: "text/javascript" });
        return new Worker(URL.createObjectURL(blob), { type: "module" });
    }
}

class WorkerCrash extends Error {}

/** One worker and its pending calls. */
class PoolWorker {
    constructor(onCrash) {
        this.onCrash = onCrash;
        this.pending = new Map();
        this.next = 1;
        this.dead = false;
        this.worker = spawnWorker();
        this.worker.onmessage = (ev) => {
            const { id, ok, ...rest } = ev.data;
            const p = this.pending.get(id);
            if (!p) return;
            this.pending.delete(id);
            clearTimeout(p.timer);
            if (ok) return p.resolve(rest);
            const err = Object.assign(new Error(rest.message), { name: rest.name, kind: rest.kind, field: rest.field, tensor: rest.tensor });
            // A wasm trap leaves the instance in an unknown state: replace the worker.
            if (rest.name === "RuntimeError") this.crash(`the engine trapped: ${rest.message}`);
            p.reject(err);
        };
        this.worker.onerror = (ev) => {
            ev.preventDefault?.();
            this.crash(ev.message || "it failed to start or threw");
        };
        this.worker.onmessageerror = () => this.crash("a message could not be read");
    }

    call(msg, transfer = [], timeoutMs = 0) {
        if (this.dead) return Promise.reject(new WorkerCrash("the worker is gone"));
        return new Promise((resolve, reject) => {
            const id = this.next++;
            const timer = timeoutMs ? setTimeout(() => this.crash(`no answer in ${timeoutMs / 1000} s`), timeoutMs) : 0;
            this.pending.set(id, { resolve, reject, timer });
            this.worker.postMessage({ ...msg, id }, transfer);
        });
    }

    crash(why) {
        if (this.dead) return;
        this.dead = true;
        this.worker.terminate();
        for (const p of this.pending.values()) {
            clearTimeout(p.timer);
            p.reject(new WorkerCrash(why));
        }
        this.pending.clear();
        this.onCrash?.(this, why);
    }
}

/** The CPU backend of one model: `sample()` has the wasm `Model.sample` interface. */
export class CpuPool {
    constructor(threads) {
        this.threads = threads;
        this.workers = [];
        this.crashes = 0;
    }

    spawn() {
        return new PoolWorker((dead, why) => this.replace(dead, why));
    }

    /** Starts the workers and loads the model into each; resolves to the model's facts.
     *  `analytic`: `{text, sha256}` of analytic_dpm.json, attached in every worker (a
     *  replacement worker too); when the engine refuses it, the model still loads, with
     *  `analyticError` saying why. */
    async load(config, bytes, scheduler, analytic = null) {
        this.modelMsg = { type: "load", config, weights: bytes, scheduler, analytic };
        this.workers = Array.from({ length: this.threads }, () => this.spawn());
        let infos;
        try {
            infos = await Promise.all(this.workers.map((w) => this.loadInto(w)));
        } catch (e) {
            this.dispose();
            throw e instanceof WorkerCrash ? workerError(e.message) : e;
        }
        Object.assign(this, infos[0]);
        cpuPools.add(this);
        return infos[0];
    }

    loadInto(w) {
        // Each worker gets its own copy of the weights (the page keeps the original).
        const copy = this.modelMsg.weights.slice().buffer;
        return w.call({ ...this.modelMsg, weights: copy }, [copy]);
    }

    /** A crashed or hung worker is terminated, reported by the run it was in, and replaced. */
    replace(dead, why) {
        const i = this.workers.indexOf(dead);
        if (i < 0 || this.disposed) return;
        this.crashes++;
        console.warn(`diffusion playground: CPU worker ${i} stopped (${why}); starting a new one`);
        const fresh = this.spawn();
        this.workers[i] = fresh;
        fresh.ready = this.loadInto(fresh).catch(() => {});
    }

    // The wasm Model's facts, for the page.
    get sampleShape() {
        return this.shape;
    }
    alphasCumprod() {
        return this.alphas;
    }
    forwardCoefficients() {
        return this.forward;
    }

    /**
     * `Model.sample(options, onStep, signal)` over the pool. With at least as many images
     * as workers, each worker takes a contiguous share of the images. With fewer (one image
     * is the common case), every worker holds all the images and the U-Net's batch (with
     * guidance: the images, then their null-class twins) is split instead; the outputs are
     * gathered and every worker runs the same update, so all keep identical states.
     */
    async sample(options, onStep, signal) {
        await Promise.all(this.workers.map((w) => w.ready));
        const n = options.count ?? 1;
        const [c, h, w] = this.shape;
        const per = c * h * w;
        const byImage = n >= this.workers.length;
        const shares = [];
        const split = (total, parts, f) => {
            let at = 0;
            for (let i = 0; i < parts; i++) {
                const count = Math.floor(total / parts) + (i < total % parts ? 1 : 0);
                f(i, at, count);
                at += count;
            }
        };
        if (byImage) split(n, this.workers.length, (i, start, count) => shares.push({ w: this.workers[i], start, count }));
        else shares.push(...this.workers.map((w) => ({ w, start: 0, count: n })));
        const all = async (list, fn) => {
            try {
                return await Promise.all(list.map(fn));
            } catch (e) {
                throw e instanceof WorkerCrash ? workerError(e.message) : e;
            }
        };
        const started = await all(shares, (s) =>
            s.w.call({
                type: "start",
                options: {
                    ...options,
                    count: s.count,
                    firstImage: (options.firstImage ?? 0) + s.start,
                    ...(options.classes ? { classes: options.classes.slice(s.start, s.start + s.count) } : {}),
                },
            }),
        );
        const { steps, modelBatch } = started[0];
        const parts = [];
        if (!byImage) split(modelBatch, Math.min(shares.length, modelBatch), (i, first, count) => parts.push({ w: shares[i].w, first, count }));
        const merge = (results, key) => {
            const out = new Float32Array(n * per);
            results.forEach((r, i) => out.set(r[key], shares[i].start * per));
            return out;
        };
        const preview = options.preview ?? true;
        let last = null;
        for (let k = 0; k < steps; k++) {
            if (signal?.aborted) return { cancelled: true, stepsDone: k };
            let info;
            if (byImage) {
                const results = await all(shares, (s) => s.w.call({ type: "step", k, preview }, [], STEP_TIMEOUT_MS));
                info = { step: k, steps, timestep: results[0].timestep };
                if (preview) [info.xt, info.x0] = [merge(results, "x"), merge(results, "x0")];
            } else {
                const outs = await all(parts, (p) => p.w.call({ type: "forwardPart", k, first: p.first, count: p.count }, [], STEP_TIMEOUT_MS));
                const modelOut = new Float32Array(modelBatch * per);
                outs.forEach((o, i) => modelOut.set(o.out, parts[i].first * per));
                const results = await all(parts, (p, i) => p.w.call({ type: "finishStep", k, modelOut, preview: preview && i === 0 }, [], STEP_TIMEOUT_MS));
                info = { step: k, steps, timestep: results[0].timestep };
                if (preview) [info.xt, info.x0] = [results[0].x, results[0].x0];
            }
            if (preview) last = info.xt;
            // A Promise from the callback holds the run here (the page's Pause and Step).
            await onStep?.(info);
        }
        const x = last ?? (byImage ? merge(await all(shares, (s) => s.w.call({ type: "read" })), "x") : (await parts[0].w.call({ type: "read" })).x);
        return { cancelled: false, stepsDone: steps, x, shape: [n, c, h, w] };
    }

    /** `Model.schedule(options)` (the run's timesteps, alpha_bar, sigma), from worker 0:
     *  every worker holds the same scheduler config. Async here, unlike the wasm call. */
    async schedule(options) {
        const w = this.workers[0];
        await w.ready;
        try {
            return (await w.call({ type: "schedule", options })).schedule;
        } catch (e) {
            throw e instanceof WorkerCrash ? workerError(e.message) : e;
        }
    }

    /** Times `reps` forwards of `batch` images in worker 0 (bench/ort). */
    async benchForward(batch, reps) {
        return (await this.workers[0].call({ type: "benchForward", batch, reps })).times;
    }

    releaseBuffers() {}

    dispose() {
        this.disposed = true;
        cpuPools.delete(this);
        for (const w of this.workers) w.crash("disposed");
    }
}

// ---------------------------------------------------------------------------------------
// The teaching inspector: one CPU worker of its own per model, which re-runs one image of a
// run up to the step the reader scrubbed to and takes that step apart (x_t, eps-hat, x0-hat,
// the mean, the added noise), and measures the forward panel's loss over t. A worker of its
// own, so that it never disturbs a run in flight, whichever backend samples: the CPU engine
// draws the same image as the GPU from the same seed (the noise is keyed by the global image
// index), so what it shows is the step the page ran.

const inspectors = new WeakMap();

/** The inspector of a loaded model entry (made on first use; freed with the entry). */
export function inspectorOf(entry) {
    let ins = inspectors.get(entry);
    if (!ins) {
        ins = new Inspector(entry);
        inspectors.set(entry, ins);
    }
    return ins;
}

class Inspector {
    constructor(entry) {
        this.entry = entry;
        this.loading = null; // Promise<PoolWorker>
        this.at = null; // the run the worker holds: {key, next (the next step to run), worker}
        this.last = null; // the last step taken apart: {key, k, parts}
        this.queue = Promise.resolve();
        this.disposed = false;
    }

    /** The worker with the model loaded. The weights come from the CPU pool when the model
     *  samples on the CPU, else from the Cache API, as a GPU restart reads them. */
    worker() {
        const gone = () => new PlaygroundError("internal", "This model was unloaded; sample again to look inside a step.", { worker: "disposed" });
        if (this.disposed || !this.entry.model) return Promise.reject(gone());
        this.loading ??= (async () => {
            const { configText, schedText, weights, analytic } = this.entry.recipe;
            const m = this.entry.model;
            // The pool keeps its bytes (a copy is transferred); fresh bytes are transferred as they are.
            const bytes = m instanceof CpuPool ? m.modelMsg.weights.slice() : (await fetchWeights(weights.url, weights.expected, () => {})).bytes;
            const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
            const buffer = whole ? bytes.buffer : bytes.slice().buffer;
            if (this.disposed) throw gone();
            const w = new PoolWorker(() => {
                if (this.at?.worker === w) this.at = null;
                if (this.current === w) this.loading = null;
            });
            this.current = w;
            await w.call({ type: "load", config: configText, weights: buffer, scheduler: schedText ?? undefined, analytic: this.entry.hasAnalytic ? analytic : null }, [buffer]);
            return w;
        })().catch((e) => {
            this.loading = null;
            throw e; // serial() words a worker crash
        });
        return this.loading;
    }

    /** One call at a time: the worker holds one run. */
    serial(task) {
        const r = this.queue.then(task);
        this.queue = r.catch(() => {});
        return r.catch((e) => {
            throw e instanceof WorkerCrash ? workerError(e.message) : e;
        });
    }

    /**
     * Step `k` of image `image` of a run of `options` (`Model.sample`'s, for all the run's
     * images), taken apart as `CpuModel.inspectStep` returns it. The steps before `k` are
     * re-run on one image (`onProgress(done, of)` after each; `signal` aborts between them),
     * continuing from the last call when it inspected an earlier step of the same run; the
     * same step again is answered from memory.
     */
    inspectStep(options, image, k, { onProgress, signal } = {}) {
        return this.serial(async () => {
            signal?.throwIfAborted();
            const one = { ...options, count: 1, firstImage: (options.firstImage ?? 0) + image, preview: false };
            if (options.classes) one.classes = [options.classes[image]];
            const key = JSON.stringify(one);
            if (this.last?.key === key && this.last.k === k) return this.last.parts;
            const w = await this.worker();
            signal?.throwIfAborted();
            if (this.at?.key !== key || this.at.worker !== w || this.at.next > k) {
                this.at = null;
                await w.call({ type: "start", options: one });
                this.at = { key, next: 0, worker: w };
            }
            while (this.at.next < k) {
                signal?.throwIfAborted();
                await w.call({ type: "step", k: this.at.next, preview: false }, [], STEP_TIMEOUT_MS);
                this.at.next++;
                onProgress?.(this.at.next, k);
            }
            signal?.throwIfAborted();
            const { parts } = await w.call({ type: "inspectStep", k }, [], STEP_TIMEOUT_MS);
            this.at.next = k + 1;
            this.last = { key, k, parts };
            return parts;
        });
    }

    /** The denoising loss of image `x0` ([C, H, W]) with class `label` at the training
     *  timesteps `timesteps`, every x_t made with the one draw `noise`:
     *  `{loss: number[], target: "epsilon" | "v" | "sample" | "velocity"}`. One call of one
     *  forward per timestep: the hung-worker timeout grows with their number. */
    lossCurve(x0, label, timesteps, noise) {
        return this.serial(async () => {
            const w = await this.worker();
            return w.call({ type: "lossCurve", x0, label, timesteps, noise }, [], STEP_TIMEOUT_MS + 10_000 * timesteps.length);
        });
    }

    dispose() {
        this.disposed = true;
        this.current?.crash("disposed");
    }
}

function workerError(why) {
    return new PlaygroundError("internal", `A CPU worker stopped unexpectedly (${why}). It has been restarted; sample again to retry.`, { worker: why });
}

// ---------------------------------------------------------------------------------------
// The GPU queue: every run of every view on the page goes through it, one at a time.

let tail = Promise.resolve();

/** Runs `task()` after every task enqueued before it has settled. */
export function enqueue(task) {
    const run = tail.then(task);
    tail = run.catch(() => {});
    return run;
}

/** One view's runs: a new request aborts the one in flight (it stops between steps) and
 *  any still waiting in the queue. `task(signal)` runs when the view's turn comes. */
export class Runner {
    constructor() {
        this.controller = null;
    }

    request(task) {
        this.controller?.abort();
        const c = new AbortController();
        this.controller = c;
        return enqueue(() => (c.signal.aborted ? { cancelled: true, stepsDone: 0 } : task(c.signal)));
    }

    cancel() {
        this.controller?.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Models: one loaded copy per URL and backend, shared by the views that hold it and freed
// when the last one lets go.

const CACHE_NAME = "diffusion-playground-models-v1";
const DEFAULT_WEIGHTS = "diffusion_pytorch_model.safetensors";
/** The largest weights file downloaded when manifest.json gives no size: far more than any
 *  model this engine samples at a usable speed in a browser (the shipped ones are 11 MB),
 *  and small enough that a wrong URL (a video, a disk image) is refused instead of filling
 *  the tab's memory. With a manifest, its size is the cap. */
export const MAX_WEIGHTS_BYTES = 512 * 1024 * 1024;
// key ("webgpu <url>" or "cpu <url>") -> {key, backend, refs, controller, promise, entry, dropped}
const models = new Map();
const recordOf = new WeakMap(); // entry -> its record
let liveModels = 0; // wasm Models and CPU pools built and not yet freed
let builtModels = 0; // ... built in all, restarts included

/** For tests and the console: the model records (key, how many views hold or await each,
 *  whether it has loaded), how many loaded models (wasm Models, CPU pools) are alive and
 *  how many were built in all. */
export function modelStats() {
    const records = [...models.values()].map((r) => ({ key: r.key, refs: r.refs, loaded: r.entry !== null }));
    return { records, live: liveModels, built: builtModels };
}

/** The URL of a model folder: a bare name ("fashion") means the shipped model next to this
 *  script; anything else is resolved against `base` (the document). Ends with "/". */
export function modelUrl(spec, base = document.baseURI) {
    const url = /^[\w-]+$/.test(spec) ? new URL(`./models/${spec}/`, import.meta.url) : new URL(spec, base);
    if (!url.pathname.endsWith("/")) url.pathname += "/";
    return url.href;
}

/**
 * Loads the model folder at `url` once per page and backend (a `chooseBackend` result;
 * WebGPU when absent): resolves to `{url, name, model, classNames, shape, alphas, source,
 * bytes, backend, warnings}`. `onProgress({phase, done, total})` hears the download (phase
 * "download" or "cache", then "verify", "upload"). `warnings` lists what could not be
 * checked (no crypto.subtle outside a secure context).
 *
 * The caller holds the model from then on and gives it back with `releaseModel(entry)`; the
 * last release frees it. Aborting `signal` before it resolves gives up the caller's claim
 * and rejects with an AbortError; when no one else waits for the model, its download stops.
 */
export function loadModel(url, onProgress, backend = null, signal = undefined) {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const kind = backend?.kind ?? "webgpu";
    const key = `${kind} ${url}`;
    let rec = models.get(key);
    if (!rec) {
        const listeners = new Set();
        const controller = new AbortController();
        const r = { key, backend: kind, refs: 0, listeners, controller, entry: null, dropped: false };
        r.promise = fetchModel(url, (p) => listeners.forEach((f) => f(p)), backend, controller.signal).then((entry) => {
            r.entry = entry;
            recordOf.set(entry, r);
            if (!r.dropped) return entry;
            disposeEntry(entry); // everyone gave up while it was being built
            throw abortReason(controller.signal);
        });
        r.promise.catch(() => {
            if (models.get(key) === r) models.delete(key); // a failed load can be retried
        });
        models.set(key, r);
        rec = r;
    }
    rec.refs++;
    if (onProgress) rec.listeners.add(onProgress);
    return new Promise((resolve, reject) => {
        let settled = false;
        const settle = () => {
            settled = true;
            signal?.removeEventListener("abort", onAbort);
            if (onProgress) rec.listeners.delete(onProgress);
        };
        const onAbort = () => {
            if (settled) return;
            settle();
            drop(rec);
            reject(abortReason(signal));
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        rec.promise.then(
            (entry) => {
                if (settled) return;
                settle();
                resolve(entry);
            },
            (e) => {
                if (settled) return;
                settle();
                rec.refs--;
                reject(e);
            },
        );
    });
}

/** Gives back a caller's hold on a model `loadModel` resolved to; the last one frees it. */
export function releaseModel(entry) {
    const rec = recordOf.get(entry);
    if (rec) drop(rec);
}

function drop(rec) {
    if (--rec.refs > 0) return;
    rec.dropped = true;
    if (models.get(rec.key) === rec) models.delete(rec.key);
    if (rec.entry) disposeEntry(rec.entry);
    else rec.controller.abort(); // stops the download; an upload under way is freed when it ends
}

/** Frees a model: its wasm object's GPU buffers, or its CPU pool's workers. */
function disposeEntry(entry) {
    // Through the queue: a run of this model still in flight (it stops at its next step)
    // must end before its buffers go, or the wasm object would be freed while borrowed.
    enqueue(() => {
        const m = entry.model;
        if (!m) return;
        entry.model = null;
        liveModels--;
        if (m instanceof CpuPool) m.dispose();
        else m.free();
        inspectors.get(entry)?.dispose();
    });
}

async function fetchModel(base, progress, backend, signal) {
    const warnings = new Set();
    const warn = (w) => warnings.add(w);
    const manifest = await fetchJson(`${base}manifest.json`, "manifest.json", { optional: true, signal });
    const files = new Map((manifest?.files ?? []).map((f) => [f.name, f]));
    const configText = await fetchText(`${base}config.json`, "config.json", { signal });
    // Without scheduler_config.json the engine uses DDPMScheduler's defaults; but a file the
    // manifest lists must be there: a 404 for it is a broken model, not a default.
    const schedText = await fetchText(`${base}scheduler_config.json`, "scheduler_config.json", {
        optional: !files.has("scheduler_config.json"),
        signal,
        listed: files.has("scheduler_config.json"),
    });
    await checkText(configText, files.get("config.json"), "config.json", warn, `${base}config.json`);
    if (schedText !== null) await checkText(schedText, files.get("scheduler_config.json"), "scheduler_config.json", warn, `${base}scheduler_config.json`);

    const weightsName = manifest?.weights ?? DEFAULT_WEIGHTS;
    const weights = { url: new URL(weightsName, base).href, expected: files.get(weightsName) ?? null };
    const { bytes, source, store } = await fetchWeights(weights.url, weights.expected, progress, { signal, warn });
    signal.throwIfAborted();

    // Analytic-DPM's moments, when the manifest lists them: small (90 kB), checked like the
    // other texts, and attached to the model (here, or in every CPU worker) so that
    // variance = analytic can run. A model whose moments fail to load or are refused still
    // loads and samples; the page says why analytic is not offered.
    const analytic = files.has(ANALYTIC_FILE) ? await fetchAnalytic(base, files, weights, warn, signal) : null;

    progress({ phase: "upload", done: bytes.byteLength, total: bytes.byteLength });
    let model;
    let analyticError = null;
    try {
        if (backend?.kind === "cpu") {
            model = new CpuPool(backend.threads);
            await model.load(configText, bytes, schedText ?? undefined, analytic);
            analyticError = model.analyticError;
        } else {
            // Async: the GPU says whether the weights fit only through an error scope's promise.
            model = await (await getEngine()).loadModel(configText, bytes, schedText ?? undefined);
            if (analytic) {
                try {
                    model.setAnalyticMoments(analytic.text, analytic.sha256 ?? undefined);
                } catch (e) {
                    analyticError = e?.message ?? String(e);
                }
            }
        }
    } catch (e) {
        if (source === "cache") await dropCached(store.key);
        throw fromEngineError(e);
    }
    if (analyticError) warn(`Analytic-DPM's variance is not offered: ${ANALYTIC_FILE} ${analyticError.replace(/^analytic_dpm\.json:?\s*/, "")}`);
    liveModels++;
    builtModels++;
    // Only a file the engine accepted (and that matched the manifest) is cached.
    if (source === "network") await store.put(bytes);

    const classes = model.classes;
    const names = Array.isArray(manifest?.class_names) ? manifest.class_names.map(String) : [];
    const classNames = Array.from({ length: classes }, (_, i) => names[i] ?? `class ${i}`);
    return {
        url: base,
        name: manifest?.name ?? new URL(base).pathname.split("/").filter(Boolean).pop() ?? "model",
        model,
        classNames,
        shape: Array.from(model.sampleShape),
        alphas: model.alphasCumprod(),
        // x_t = signal[t] x0 + noise[t] eps exactly (a flow model's is not sqrt(alphas)).
        forward: model.forwardCoefficients(),
        // A flow-matching model runs only the flow samplers and reads no eta, clip, spacing
        // or variance; `samplers` is the menu, `defaultSampler` what a run takes unless set.
        isFlow: model.isFlow,
        samplers: Array.from(model.samplers),
        defaultSampler: model.defaultSampler,
        hasAnalytic: model.hasAnalytic,
        source,
        bytes: bytes.byteLength,
        backend: backend?.kind ?? "webgpu",
        // Sampling options the model ships beyond its scheduler_config.json (manifest.json
        // `sampling`): spread them under a run's own options, `{...entry.defaults, ...opts}`.
        defaults: samplingDefaults(manifest),
        warnings: [...warnings],
        // What a GPU restart needs to build the model again: the small texts, and where the
        // weights are (not the weights themselves).
        recipe: { configText, schedText, weights, analytic },
    };
}

/** manifest.json's `sampling` as `Model.sample` options: `use_clipped_model_output` is
 *  `clippedEps` (DDIM re-derives eps from the clipped x0-hat). Unknown fields are ignored,
 *  as the engine ignores them. */
export function samplingDefaults(manifest) {
    const s = manifest?.sampling;
    const out = {};
    if (s && typeof s.use_clipped_model_output === "boolean") out.clippedEps = s.use_clipped_model_output;
    return out;
}

const ANALYTIC_FILE = "analytic_dpm.json";

/** `{text, sha256}` of the model's analytic_dpm.json (checked against the manifest like the
 *  other files; `sha256`: the manifest's digest of the weights, which the engine checks the
 *  table's against), or null with a warning when it cannot be had: the model samples
 *  without it. An abort still aborts the load. */
async function fetchAnalytic(base, files, weights, warn, signal) {
    const url = `${base}${ANALYTIC_FILE}`;
    try {
        const text = await fetchText(url, ANALYTIC_FILE, { signal, listed: true });
        await checkText(text, files.get(ANALYTIC_FILE), ANALYTIC_FILE, warn, url);
        return { text, sha256: weights.expected?.sha256 ?? null };
    } catch (e) {
        if (isAbort(e) || signal?.aborted) throw e;
        warn(`Analytic-DPM's variance is not offered: ${e?.message ?? e}`);
        return null;
    }
}

async function request(url, what, signal) {
    let res;
    try {
        res = await fetch(url, { signal });
    } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        const cross = new URL(url).origin !== location.origin;
        throw new PlaygroundError(
            "network",
            cross
                ? `Could not fetch ${what} from ${url}: the request was refused. That server is another site and must allow cross-origin requests (CORS header Access-Control-Allow-Origin), or be unreachable. (${e.message})`
                : `Could not fetch ${what} from ${url}: the network request failed (${e.message}). Check the connection and reload.`,
            { cause: e, url },
        );
    }
    return res;
}

/** A network error for an HTTP answer that is not 2xx. */
function httpError(res, url, what, listed = false) {
    if (res.status === 404) {
        const why = listed ? ", though manifest.json lists it" : "";
        return new PlaygroundError("network", `The model's ${what} was not found (HTTP 404) at ${url}${why}. Check the model URL.`, { status: 404, url });
    }
    return new PlaygroundError("network", `${what}: the server answered HTTP ${res.status} ${res.statusText} for ${url}.`, { status: res.status, url });
}

async function fetchText(url, what, { optional = false, signal, listed = false } = {}) {
    const res = await request(url, what, signal);
    if (res.status === 404 && optional) return null;
    if (!res.ok) throw httpError(res, url, what, listed);
    try {
        return await res.text();
    } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        throw new PlaygroundError("network", `The download of ${what} from ${url} broke off (${e.message}).`, { cause: e, url });
    }
}

async function fetchJson(url, what, opts) {
    const text = await fetchText(url, what, opts);
    if (text === null) return null;
    try {
        return JSON.parse(text);
    } catch (e) {
        throw new PlaygroundError("config", `${what} at ${url} is not valid JSON (${e.message}).`, { url });
    }
}

// Said once per model load when the digests cannot be checked.
const NO_DIGEST =
    "Could not verify the download's SHA-256: not a secure context (the page is not served over HTTPS or from localhost, so the browser offers no crypto.subtle). Only the file sizes were checked against manifest.json.";

async function sha256Hex(bytes) {
    if (!globalThis.crypto?.subtle) return null;
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function checkText(text, expected, what, warn, url) {
    if (!expected) return;
    const bytes = new TextEncoder().encode(text);
    await checkBytes(bytes, expected, what, warn, url);
}

/** Throws a "checksum" PlaygroundError when `bytes` do not match the manifest's size or
 *  SHA-256; `warn(text)` hears that the digest could not be computed. */
async function checkBytes(bytes, expected, what, warn, url) {
    if (!expected) return;
    if (Number.isFinite(expected.bytes) && bytes.byteLength !== expected.bytes) {
        throw new PlaygroundError(
            "checksum",
            `${what} is ${bytes.byteLength.toLocaleString("en")} bytes but manifest.json says ${expected.bytes.toLocaleString("en")}: the file is truncated or not the one the manifest describes.`,
            { url },
        );
    }
    if (typeof expected.sha256 === "string") {
        const got = await sha256Hex(bytes);
        if (got === null) warn?.(NO_DIGEST);
        else if (got !== expected.sha256.toLowerCase()) {
            throw new PlaygroundError(
                "checksum",
                `${what} is corrupt: its SHA-256 is ${got.slice(0, 12)}…, manifest.json says ${expected.sha256.slice(0, 12)}….`,
                { url },
            );
        }
    }
}

async function openCache() {
    try {
        return "caches" in globalThis ? await caches.open(CACHE_NAME) : null;
    } catch {
        return null; // e.g. storage disabled, or an opaque origin
    }
}

async function dropCached(key) {
    const cache = await openCache();
    await cache?.delete(key).catch(() => {});
}

/** The weights: from the Cache API when a verified copy is there, else over fetch with
 *  progress, into one buffer no larger than the manifest's size (MAX_WEIGHTS_BYTES without
 *  one). Returns { bytes, source: "cache" | "network", store: {key, put(bytes)} }. */
async function fetchWeights(url, expected, progress, { signal, warn } = {}) {
    const what = url.split("/").pop();
    // The manifest's digest is part of the key: a new checkpoint never reuses an old entry.
    // (A query, not a fragment: the Cache API ignores fragments when matching.)
    const key = expected?.sha256 ? `${url}${url.includes("?") ? "&" : "?"}sha256=${expected.sha256}` : url;
    const cache = await openCache();
    const store = {
        key,
        async put(bytes) {
            try {
                await cache?.put(key, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
            } catch {
                // Quota exceeded or private mode: the next visit downloads again.
            }
        },
    };
    const hit = await cache?.match(key).catch(() => undefined);
    if (hit?.ok) {
        const bytes = new Uint8Array(await hit.arrayBuffer());
        progress({ phase: "cache", done: bytes.byteLength, total: bytes.byteLength });
        try {
            await checkBytes(bytes, expected, what, warn, url);
            return { bytes, source: "cache", store };
        } catch {
            await cache.delete(key).catch(() => {}); // stale or damaged copy: download again
        }
    }
    signal?.throwIfAborted();

    const res = await request(url, what, signal);
    if (!res.ok) throw httpError(res, url, `weights file ${what}`);
    const sized = Number.isFinite(expected?.bytes);
    const cap = sized ? expected.bytes : MAX_WEIGHTS_BYTES;
    const capText = sized
        ? `the ${cap.toLocaleString("en")} bytes manifest.json gives`
        : `the ${MAX_WEIGHTS_BYTES / 1048576} MiB a weights file may have when manifest.json gives no size`;
    const tooLarge = (how) => new PlaygroundError("limits", `${what} is larger than ${capText}: ${how}.`, { url });
    const declared = Number(res.headers.get("content-length")) || 0;
    if (declared > cap) {
        res.body?.cancel().catch(() => {});
        throw tooLarge(`the server announces ${declared.toLocaleString("en")} bytes, so it was refused before downloading`);
    }
    // One buffer, filled in place as the body streams in: the manifest's size, else the
    // announced length. Only when neither is known (or a compressed body outgrows its
    // Content-Length) does it grow, by doubling, and never past the cap.
    let buf = new Uint8Array(sized ? cap : Math.min(cap, declared || 8 << 20));
    const total = declared || (sized ? cap : 0);
    let done = 0;
    progress({ phase: "download", done, total });
    const reader = res.body.getReader();
    try {
        for (;;) {
            const { done: end, value } = await reader.read();
            if (end) break;
            const next = done + value.byteLength;
            if (next > cap) throw tooLarge(`the download was stopped after ${next.toLocaleString("en")} bytes`);
            if (next > buf.byteLength) {
                const grown = new Uint8Array(Math.min(cap, Math.max(next, 2 * buf.byteLength)));
                grown.set(buf.subarray(0, done));
                buf = grown;
            }
            buf.set(value, done);
            done = next;
            progress({ phase: "download", done, total });
        }
    } catch (e) {
        reader.cancel().catch(() => {});
        if (e instanceof PlaygroundError) throw e;
        if (signal?.aborted) throw abortReason(signal);
        throw new PlaygroundError(
            "network",
            `The download of ${what} broke off after ${done.toLocaleString("en")} of ${total ? total.toLocaleString("en") : "?"} bytes (${e.message}). Reload to try again.`,
            { cause: e, url },
        );
    }
    const bytes = done === buf.byteLength ? buf : buf.subarray(0, done);
    progress({ phase: "verify", done, total: done });
    await checkBytes(bytes, expected, what, warn, url);
    return { bytes, source: "network", store };
}

// ---------------------------------------------------------------------------------------
// Pixels.

/** Grid geometry shared with the CLI's PNGs (src/image.rs grid_rgba): the most square grid,
 *  rows filled first, a `gap`-pixel border. */
export function gridGeometry(n, h, w, gap = 2) {
    const cols = Math.max(1, Math.ceil(Math.sqrt(n)));
    const rows = Math.max(1, Math.ceil(n / cols));
    return { cols, rows, width: cols * (w + gap) + gap, height: rows * (h + gap) + gap, gap };
}

/** [-1, 1] floats to bytes, as grid_rgba rounds them. */
export function quantize(x) {
    const out = new Uint8ClampedArray(x.length);
    for (let i = 0; i < x.length; i++) out[i] = Math.round((Math.min(1, Math.max(-1, x[i])) + 1) * 127.5);
    return out;
}

/** Draws quantized images [n, c, h, w] (bytes) as a grid into `canvas` (resizing it). */
export function drawGrid(canvas, bytes, [n, c, h, w], gap = 2) {
    const g = gridGeometry(n, h, w, gap);
    if (canvas.width !== g.width || canvas.height !== g.height) {
        canvas.width = g.width;
        canvas.height = g.height;
    }
    const img = new ImageData(g.width, g.height);
    const px = img.data;
    for (let i = 0; i < px.length; i += 4) {
        px[i] = px[i + 1] = px[i + 2] = 24;
        px[i + 3] = 255;
    }
    paintImages(img, bytes, [n, c, h, w], (i) => [gap + (i % g.cols) * (w + gap), gap + Math.floor(i / g.cols) * (h + gap)]);
    canvas.getContext("2d").putImageData(img, 0, 0);
}

/** Copies images [n, c, h, w] (bytes; images `first..first + n`) into `img` at the offsets
 *  `at(i)` gives; one channel is drawn as grey, three as RGB. */
export function paintImages(img, bytes, [n, c, h, w], at, first = 0) {
    const px = img.data;
    const plane = h * w;
    for (let i = 0; i < n; i++) {
        const [ox, oy] = at(i);
        const base = (first + i) * c * plane;
        for (let y = 0; y < h; y++) {
            for (let x = 0; x < w; x++) {
                const s = base + y * w + x;
                const o = ((oy + y) * img.width + ox + x) * 4;
                if (c === 3) {
                    px[o] = bytes[s];
                    px[o + 1] = bytes[s + plane];
                    px[o + 2] = bytes[s + 2 * plane];
                } else {
                    px[o] = px[o + 1] = px[o + 2] = bytes[s];
                }
                px[o + 3] = 255;
            }
        }
    }
}

/** A seeded standard-normal generator (mulberry32 + Box-Muller) for the forward panel. */
export function gaussian(seed) {
    let a = seed >>> 0 || 1;
    const uniform = () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    return () => {
        const u = Math.max(uniform(), 1e-12);
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
    };
}
