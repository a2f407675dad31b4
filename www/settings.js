// The playground's settings: the lists behind the controls, their defaults, and the parsing
// shared by the page's query string, the widget's attributes and embed.html (all strings in,
// validated values out), plus the `compare` spec and the link / embed-tag writers.

import { BACKENDS, PlaygroundError } from "./engine.js";

/** Every sampler the engine has; a model offers only those of its kind (the engine's
 *  `samplers`: the first four for a diffusion model, the flow ones for a flow-matching one). */
export const SAMPLERS = [
    ["ddim", "DDIM"],
    ["ddpm", "DDPM (ancestral)"],
    ["dpmpp2m", "DPM-Solver++ (2M)"],
    ["euler_a", "Euler ancestral"],
    ["flow_euler", "Flow Euler"],
    ["flow_heun", "Flow Heun (2N − 1 evaluations)"],
];
export const samplerLabel = (v) => SAMPLERS.find(([k]) => k === v)?.[1] ?? v;
export const GRID_SIZES = [1, 4, 16, 64];
export const SHIPPED_MODELS = [
    ["fashion", "Fashion-MNIST"],
    ["digits", "MNIST digits"],
    ["fashion-flow", "Fashion-MNIST, flow matching"],
];
/** Every control a view can show (the widget's `controls` attribute picks among them).
 *  `run` is the Sample / Pause / Step / Stop row, `download` the PNG and filmstrip buttons. */
export const ALL_CONTROLS = ["model", "backend", "label", "steps", "guidance", "sampler", "eta", "clip", "spacing", "variance", "seed", "grid", "view", "compare", "scrubber", "download", "inside", "forward", "schedule", "run"];
/** The widget's controls when its `controls` attribute is absent. */
export const WIDGET_CONTROLS = ["label", "steps", "guidance", "sampler", "seed", "view", "run"];
/** x0 clipping of DDPM and DDIM: "auto" clips for DDPM and follows the model's
 * scheduler_config.json for DDIM (the shipped models: DDPM 1000 steps is recognised 100 % of
 * the time with clipping, 72-88 % without; diffusers' DDIM clips x0 but not eps, and does
 * better unclipped); "on" and "off" override the config for both. */
export const CLIP_MODES = [
    ["auto", "Auto (on for DDPM)"],
    ["on", "On: clamp x̂₀ to [-1, 1]"],
    ["off", "Off"],
];
/** Which timesteps a run of N steps visits: "default" follows the model's
 *  scheduler_config.json (`timestep_spacing`); the others override it (diffusers' names:
 *  "leading" starts 2 steps at t = 500 on T = 1000, "trailing" at t = 999). */
export const SPACING_MODES = [
    ["default", "Model default"],
    ["leading", "Leading"],
    ["trailing", "Trailing"],
    ["linspace", "Linspace"],
];
/** DDPM's noise variance: "default" follows the model's `variance_type`; fixed_small is the
 *  posterior's beta-tilde, fixed_large beta itself; analytic is Analytic-DPM's optimal
 *  variance from the model's analytic_dpm.json (only models whose manifest lists it), which
 *  also sets DDIM's noise (the only variance DDIM reads). */
export const VARIANCE_MODES = [
    ["default", "Model default"],
    ["fixed_small", "Fixed small (β̃)"],
    ["fixed_large", "Fixed large (β)"],
    ["analytic", "Analytic-DPM (optimal)"],
];
/** The settings a link, a widget attribute or a query parameter carries (besides autoplay
 *  and controls). `label` is the diffusion class; the widget never reads HTML's `class`. */
export const SETTING_KEYS = ["model", "backend", "label", "steps", "guidance", "sampler", "eta", "clip", "spacing", "variance", "seed", "grid", "view", "compare"];
/** Which samplers read eta (DDIM), clip (DDPM and DDIM) and variance (DDPM; DDIM only
 *  `analytic`, which replaces its eta noise). A flow sampler reads none of them, nor the
 *  spacing. `sampler` is the run's sampler (see `samplerOf`), never "" (the model's default). */
export const usesEta = (sampler) => sampler === "ddim";
export const usesClip = (sampler) => sampler === "ddpm" || sampler === "ddim";
export const usesVariance = (sampler, variance) => sampler === "ddpm" || (sampler === "ddim" && (variance === undefined || variance === "analytic"));
export const isFlowSampler = (sampler) => sampler === "flow_euler" || sampler === "flow_heun";

/** The sampler a run of settings `s` takes on model `entry` (engine.js loadModel's): the
 *  one the settings fix, else the model's default. `fit`: a fixed sampler that does not
 *  suit the model gives way to the default too (compared models), instead of reaching the
 *  engine, which refuses it in plain words (the single run: the visitor hears why). */
export function samplerOf(s, entry, { fit = false } = {}) {
    if (!s.sampler) return entry?.defaultSampler ?? "ddim";
    if (fit && entry?.samplers && !entry.samplers.includes(s.sampler)) return entry.defaultSampler;
    return s.sampler;
}

export const DEFAULTS = {
    model: "fashion",
    backend: "auto",
    label: "0",
    steps: 20,
    guidance: 2,
    // "": the model's default sampler (flow_euler for a flow-matching model, else ddim).
    sampler: "",
    eta: 0,
    clip: "auto",
    spacing: "default",
    variance: "default",
    seed: 1,
    grid: 16,
    view: "xt",
    compare: "",
    autoplay: true,
};

const FALSE = /^(0|false|no|off)$/i;

/** Parses a `controls` list ("all", "none", or names separated by spaces or commas).
 *  `class` is read as `label` (links and embeds written before the rename). */
export function parseControls(text, fallback) {
    if (text == null || text.trim() === "") return new Set(fallback);
    const words = text.toLowerCase().split(/[\s,]+/).filter(Boolean).map((w) => (w === "class" ? "label" : w));
    if (words.includes("all")) return new Set(ALL_CONTROLS);
    if (words.includes("none")) return new Set();
    return new Set(words.filter((w) => ALL_CONTROLS.includes(w)));
}

/** Reads settings from a query string or attribute map (strings), validating each. The
 *  `compare` spec is kept as text: parseCompare checks it when a run starts, so that a bad
 *  one shows an input error instead of vanishing. */
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
    const label = get("label");
    if (label != null && label !== "") out.label = label;
    num("steps", 1, 1000, true);
    num("guidance", 0, 10, false);
    num("eta", 0, 1, false);
    num("seed", 0, 4294967295, true);
    num("grid", 1, 64, true);
    const sampler = get("sampler");
    if (SAMPLERS.some(([v]) => v === sampler)) out.sampler = sampler;
    const clip = get("clip");
    if (CLIP_MODES.some(([v]) => v === clip)) out.clip = clip;
    const spacing = get("spacing");
    if (SPACING_MODES.some(([v]) => v === spacing)) out.spacing = spacing;
    const variance = get("variance");
    if (VARIANCE_MODES.some(([v]) => v === variance)) out.variance = variance;
    const backend = get("backend");
    if (BACKENDS.includes(backend)) out.backend = backend;
    const view = get("view");
    if (view === "xt" || view === "x0") out.view = view;
    const compare = get("compare");
    if (compare != null) out.compare = compare.trim();
    const autoplay = get("autoplay");
    if (autoplay != null) out.autoplay = !FALSE.test(autoplay);
    return out;
}

// -----------------------------------------------------------------------------------------
// compare="key:v1,v2,…"

const MAX_COMPARE_ROWS = 8;
const numberList = (lo, hi, int) => (v) => {
    const n = Number(v);
    if (v === "" || !Number.isFinite(n) || n < lo || n > hi || (int && !Number.isInteger(n))) {
        return `“${v}” is not ${int ? "an integer" : "a number"} in ${lo}..${hi}`;
    }
    return n;
};
const oneOf = (list) => (v) => (list.includes(v) ? v : `“${v}” is not one of ${list.join(", ")}`);
/** What `compare` may vary, and how each value is checked. `spacing` and `variance` are
 *  passed to the engine as sampling options of the same name; `model` loads each model
 *  (a shipped name or a folder URL, checked when it loads) and runs it with its default
 *  sampler unless the settings fix one that suits it. */
export const COMPARE_KEYS = {
    model: (v) => (v === "" ? "“” is not a model" : v),
    sampler: oneOf(SAMPLERS.map(([v]) => v)),
    guidance: numberList(0, 10, false),
    steps: numberList(1, 1000, true),
    eta: numberList(0, 1, false),
    clip: oneOf(CLIP_MODES.map(([v]) => v)),
    spacing: oneOf(["leading", "trailing", "linspace"]),
    variance: oneOf(["fixed_small", "fixed_large", "analytic"]),
    label: (v) => v,
};

/** `compare` text to {key, values} (null when empty); throws an input error naming the
 *  `compare` field for anything else than key:v1,v2,… with a known key and valid values. */
export function parseCompare(text) {
    const spec = String(text ?? "").trim();
    if (spec === "") return null;
    const bad = (why) => new PlaygroundError("input", `compare="${spec}": ${why}. Write key:v1,v2,… with key one of ${Object.keys(COMPARE_KEYS).join(", ")}, e.g. compare="guidance:0,2,4".`, { field: "compare" });
    const m = spec.match(/^([a-z_]+)\s*:\s*(.+)$/i);
    if (!m) throw bad("no key:values");
    const key = m[1].toLowerCase();
    const check = COMPARE_KEYS[key];
    if (!check) throw bad(`“${m[1]}” cannot be compared`);
    const raw = m[2].split(",").map((v) => v.trim());
    if (raw.length < 2) throw bad("give at least two values");
    if (raw.length > MAX_COMPARE_ROWS) throw bad(`at most ${MAX_COMPARE_ROWS} values`);
    const values = raw.map((v) => {
        const r = check(v);
        if (typeof r === "string" && r.startsWith("“")) throw bad(r);
        return r;
    });
    return { key, values };
}

// -----------------------------------------------------------------------------------------
// Links and embed code

/** Whether a link or an embed tag carries setting `k` of `s`: only the options the run's
 *  sampler reads (`sampler`: the run's, `samplerOf`; the settings' own when not given), and
 *  no sampler at all when the settings leave it to the model, so that the link keeps
 *  following the model's default. */
function carries(k, s, sampler = s.sampler) {
    if (k === "sampler") return !!s.sampler;
    if (k === "eta") return usesEta(sampler);
    if (k === "clip") return usesClip(sampler);
    if (k === "spacing") return !isFlowSampler(sampler);
    if (k === "variance") return usesVariance(sampler, s.variance);
    return true;
}

/** The query parameters of a link to `s` (only the options the sampler reads; `sampler`:
 *  the run's, when `s` leaves it to the model). */
export function settingsQuery(s, controls = null, sampler = undefined) {
    const q = new URLSearchParams();
    for (const k of SETTING_KEYS) {
        if (!carries(k, s, sampler ?? s.sampler)) continue;
        if (k === "compare" && !s.compare) continue;
        q.set(k, s[k]);
    }
    if (controls) q.set("controls", controls.length ? controls.join(",") : "none");
    return q;
}

/** The `<diffusion-playground>` tag that embeds `s` with `controls` shown; attributes at
 *  their widget default are left out, so the tag stays short. */
export function embedTag(s, controls, src = "widget.js", sampler = undefined) {
    const widgetDefaults = { ...DEFAULTS, grid: 4 };
    const attrs = [];
    for (const k of SETTING_KEYS) {
        if (k === "backend" && s.backend === "auto") continue;
        if (!carries(k, s, sampler ?? s.sampler)) continue;
        if (k !== "model" && String(s[k]) === String(widgetDefaults[k])) continue;
        attrs.push(`${k}="${esc(s[k])}"`);
    }
    const sameControls = controls.length === WIDGET_CONTROLS.length && WIDGET_CONTROLS.every((c) => controls.includes(c));
    if (!sameControls) attrs.push(`controls="${controls.length ? controls.join(",") : "none"}"`);
    attrs.push("autoplay");
    return `<script type="module" src="${esc(src)}"></script>\n<diffusion-playground ${attrs.join(" ")}></diffusion-playground>`;
}

// -----------------------------------------------------------------------------------------
// Text

/** 850 ms, 4.2 ms, 21.2 s, 2 min 05 s: what a person reads, not 21205.6 ms. */
export function fmtMs(ms) {
    if (!Number.isFinite(ms)) return "?";
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 100_000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

export function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
