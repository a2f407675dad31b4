// The shared core of the page, the widget and embed.html: one WebGPU engine per page, one
// loaded copy of each model, a promise queue so views take turns on the GPU, and the
// download of weights (progress, Cache API, size/sha256 check against manifest.json).
//
// Everything here is plain ES modules; the engine itself is Rust compiled to wasm
// (src/web.rs), loaded from ./pkg/ next to this file.

import init, { Engine, hasWebGpu } from "./pkg/diffusion_playground.js";

export const WEBGPU_BROWSERS =
    "WebGPU ships in Chrome and Edge 113+ (Windows, macOS, ChromeOS, Android), Safari 26+ and Firefox 141+ (Windows); on Linux, Chrome needs chrome://flags/#enable-unsafe-webgpu.";

/** An error the page can explain: `kind` is one of no-webgpu, not-found, network, http,
 *  size, checksum, config, weights, device-lost, options, engine. */
export class PlaygroundError extends Error {
    constructor(kind, message, options) {
        super(message, options);
        this.name = "PlaygroundError";
        this.kind = kind;
    }
}

/** Classifies an error thrown by the wasm engine (src/web.rs names them). */
export function fromEngineError(e, context = "") {
    if (e instanceof PlaygroundError) return e;
    const kind =
        {
            ConfigError: "config",
            WeightsError: "weights",
            DeviceLostError: "device-lost",
            GpuUnavailableError: "no-webgpu",
            OptionsError: "options",
        }[e?.name] ?? "engine";
    // The engine's own device-loss text already says "reload": keep only its reason.
    const msg = (e?.message ?? String(e)).replace(/^the GPU device was lost \((.*)\); reload to start a new one$/s, "$1");
    const text = {
        config: `This model's configuration is not supported by the engine: ${msg}`,
        weights: `The weights file is truncated or corrupt: ${msg}`,
        "device-lost": `The GPU device was lost (${msg}). Reload the page to start a new one.`,
        "no-webgpu": `WebGPU is not available here: ${msg}. ${WEBGPU_BROWSERS}`,
    }[kind];
    return new PlaygroundError(kind, text ?? (context ? `${context}: ${msg}` : msg), { cause: e });
}

// ---------------------------------------------------------------------------------------
// The engine: one per page.

let enginePromise = null;
const lostListeners = new Set();

/** Resolves to the page's one Engine (creating it on first use). */
export function getEngine() {
    enginePromise ??= (async () => {
        await init();
        if (!hasWebGpu()) {
            throw new PlaygroundError("no-webgpu", `This browser has no WebGPU, which this playground needs to sample on your GPU. ${WEBGPU_BROWSERS}`);
        }
        let engine;
        try {
            engine = await Engine.create();
        } catch (e) {
            throw new PlaygroundError(
                "no-webgpu",
                `WebGPU is present but gave no usable GPU (${e?.message ?? e}). ${WEBGPU_BROWSERS}`,
                { cause: e },
            );
        }
        watchDevice(engine);
        return engine;
    })();
    return enginePromise;
}

function watchDevice(engine) {
    const timer = setInterval(() => {
        if (!engine.isLost) return;
        clearInterval(timer);
        const err = fromEngineError({ name: "DeviceLostError", message: engine.deviceError() ?? "unknown reason" });
        for (const f of lostListeners) f(err);
    }, 500);
}

/** Calls `f(error)` once if the GPU device is lost; returns an unsubscribe function. */
export function onDeviceLost(f) {
    lostListeners.add(f);
    return () => lostListeners.delete(f);
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
// Models: one loaded copy per URL.

const CACHE_NAME = "diffusion-playground-models-v1";
const DEFAULT_WEIGHTS = "diffusion_pytorch_model.safetensors";
const models = new Map();

/** The URL of a model folder: a bare name ("fashion") means the shipped model next to this
 *  script; anything else is resolved against `base` (the document). Ends with "/". */
export function modelUrl(spec, base = document.baseURI) {
    const url = /^[\w-]+$/.test(spec) ? new URL(`./models/${spec}/`, import.meta.url) : new URL(spec, base);
    if (!url.pathname.endsWith("/")) url.pathname += "/";
    return url.href;
}

/**
 * Loads the model folder at `url` once per page: resolves to
 * `{url, name, model, classNames, shape, alphas, source, bytes}`. `onProgress({phase, done,
 * total})` hears the download (phase "download" or "cache", then "verify", "upload").
 */
export function loadModel(url, onProgress) {
    let entry = models.get(url);
    if (!entry) {
        const listeners = new Set();
        entry = { listeners, promise: fetchModel(url, (p) => listeners.forEach((f) => f(p))) };
        models.set(url, entry);
        entry.promise.catch(() => models.delete(url)); // a failed load can be retried
    }
    if (onProgress) entry.listeners.add(onProgress);
    return entry.promise.finally(() => onProgress && entry.listeners.delete(onProgress));
}

async function fetchModel(base, progress) {
    const manifest = await fetchJson(`${base}manifest.json`, "manifest.json", { optional: true });
    const configText = await fetchText(`${base}config.json`, "config.json");
    const schedText = await fetchText(`${base}scheduler_config.json`, "scheduler_config.json", { optional: true });
    const files = new Map((manifest?.files ?? []).map((f) => [f.name, f]));
    await checkText(configText, files.get("config.json"), "config.json");
    if (schedText !== null) await checkText(schedText, files.get("scheduler_config.json"), "scheduler_config.json");

    const weightsName = manifest?.weights ?? DEFAULT_WEIGHTS;
    const expected = files.get(weightsName) ?? null;
    const { bytes, source, store } = await fetchWeights(new URL(weightsName, base).href, expected, progress);

    progress({ phase: "upload", done: bytes.byteLength, total: bytes.byteLength });
    const engine = await getEngine();
    let model;
    try {
        model = engine.loadModel(configText, bytes, schedText ?? undefined);
    } catch (e) {
        if (source === "cache") await dropCached(store.key);
        throw fromEngineError(e);
    }
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
        source,
        bytes: bytes.byteLength,
    };
}

async function request(url, what) {
    let res;
    try {
        res = await fetch(url);
    } catch (e) {
        const cross = new URL(url).origin !== location.origin;
        throw new PlaygroundError(
            "network",
            cross
                ? `Could not fetch ${what} from ${url}: the request was refused. That server is another site and must allow cross-origin requests (CORS header Access-Control-Allow-Origin), or be unreachable. (${e.message})`
                : `Could not fetch ${what} from ${url}: the network request failed (${e.message}). Check the connection and reload.`,
            { cause: e },
        );
    }
    return res;
}

async function fetchText(url, what, { optional = false } = {}) {
    const res = await request(url, what);
    if (res.status === 404 && optional) return null;
    if (res.status === 404) {
        throw new PlaygroundError("not-found", `The model's ${what} was not found (HTTP 404) at ${url}. Check the model URL.`);
    }
    if (!res.ok) throw new PlaygroundError("http", `${what}: the server answered HTTP ${res.status} ${res.statusText} for ${url}.`);
    return res.text();
}

async function fetchJson(url, what, opts) {
    const text = await fetchText(url, what, opts);
    if (text === null) return null;
    try {
        return JSON.parse(text);
    } catch (e) {
        throw new PlaygroundError("config", `${what} at ${url} is not valid JSON (${e.message}).`);
    }
}

async function sha256Hex(bytes) {
    if (!globalThis.crypto?.subtle) return null; // not a secure context: no digest to check with
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function checkText(text, expected, what) {
    if (!expected) return;
    const bytes = new TextEncoder().encode(text);
    await checkBytes(bytes, expected, what);
}

/** Throws a "size" or "checksum" PlaygroundError when `bytes` do not match the manifest. */
async function checkBytes(bytes, expected, what) {
    if (!expected) return;
    if (Number.isFinite(expected.bytes) && bytes.byteLength !== expected.bytes) {
        throw new PlaygroundError(
            "size",
            `${what} is ${bytes.byteLength.toLocaleString("en")} bytes but manifest.json says ${expected.bytes.toLocaleString("en")}: the file is truncated or not the one the manifest describes.`,
        );
    }
    if (typeof expected.sha256 === "string") {
        const got = await sha256Hex(bytes);
        if (got !== null && got !== expected.sha256.toLowerCase()) {
            throw new PlaygroundError(
                "checksum",
                `${what} is corrupt: its SHA-256 is ${got.slice(0, 12)}…, manifest.json says ${expected.sha256.slice(0, 12)}….`,
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
 *  progress. Returns { bytes, source: "cache" | "network", store: {key, put(bytes)} }. */
async function fetchWeights(url, expected, progress) {
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
            await checkBytes(bytes, expected, what);
            return { bytes, source: "cache", store };
        } catch {
            await cache.delete(key).catch(() => {}); // stale or damaged copy: download again
        }
    }

    const res = await request(url, what);
    if (res.status === 404) {
        throw new PlaygroundError("not-found", `The weights file ${what} was not found (HTTP 404) at ${url}.`);
    }
    if (!res.ok) throw new PlaygroundError("http", `${what}: the server answered HTTP ${res.status} ${res.statusText} for ${url}.`);
    const total = Number(res.headers.get("content-length")) || expected?.bytes || 0;
    const chunks = [];
    let done = 0;
    progress({ phase: "download", done, total });
    try {
        const reader = res.body.getReader();
        for (;;) {
            const { done: end, value } = await reader.read();
            if (end) break;
            chunks.push(value);
            done += value.byteLength;
            progress({ phase: "download", done, total });
        }
    } catch (e) {
        throw new PlaygroundError(
            "network",
            `The download of ${what} broke off after ${done.toLocaleString("en")} of ${total ? total.toLocaleString("en") : "?"} bytes (${e.message}). Reload to try again.`,
            { cause: e },
        );
    }
    const bytes = new Uint8Array(done);
    let at = 0;
    for (const c of chunks) {
        bytes.set(c, at);
        at += c.byteLength;
    }
    progress({ phase: "verify", done, total: done });
    await checkBytes(bytes, expected, what);
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
    const plane = h * w;
    for (let i = 0; i < n; i++) {
        const ox = gap + (i % g.cols) * (w + gap);
        const oy = gap + Math.floor(i / g.cols) * (h + gap);
        const base = i * c * plane;
        for (let y = 0; y < h; y++) {
            for (let x = 0; x < w; x++) {
                const s = base + y * w + x;
                const o = ((oy + y) * g.width + ox + x) * 4;
                if (c === 3) {
                    px[o] = bytes[s];
                    px[o + 1] = bytes[s + plane];
                    px[o + 2] = bytes[s + 2 * plane];
                } else {
                    px[o] = px[o + 1] = px[o + 2] = bytes[s];
                }
            }
        }
    }
    canvas.getContext("2d").putImageData(img, 0, 0);
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
