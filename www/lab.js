// The 2-D lab: a mixture of Gaussians whose noised density, score and optimal eps* are exact,
// sampled by the image models' own Rust samplers (src/lab.rs through src/web_lab.rs), on the
// CPU in wasm. `LabView` mounts the whole lab into an element; lab.html uses it, and so does
// the <lab-widget> element defined at the bottom.
//
// The page exposes what it drew as data attributes on the view's root (the browser test and
// anyone scripting the page read them): data-state (loading | ready | error), data-arrows,
// data-trajectories (polylines drawn, at most 60 per sampler), data-trajectory-points, data-components,
// data-result (a digest of every sampler's final points, so any change in the run shows).

import init, { Lab } from "./pkg/diffusion_playground.js";

const SCHEDULE_URL = new URL("./models/fashion/scheduler_config.json", import.meta.url).href;

export const SAMPLERS = [
    { id: "ddpm", label: "DDPM", color: "#d62728" },
    { id: "ddim", label: "DDIM", color: "#1f77b4" },
    { id: "dpmpp2m", label: "DPM-Solver++ (2M)", color: "#9467bd" },
    { id: "euler_a", label: "Euler ancestral", color: "#ff7f0e" },
    { id: "langevin", label: "Annealed Langevin", color: "#2ca02c" },
    { id: "flow", label: "Flow-matching ODE (Euler)", color: "#e377c2" },
    { id: "flow_heun", label: "Flow-matching ODE (Heun)", color: "#8c564b" },
];

const PRESETS = ["moons", "ring", "checker", "two"];
// The view: the image models' data live in [-1, 1]; N(0, I) noise needs a wider window.
const EXTENT = 2.5;
const ARROW_GRID = 21;
const DENSITY_GRID = 96;
// Trajectory lines drawn per sampler (all points are run and their final samples drawn).
const PATHS_SHOWN = 60;

let wasmReady;

function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
        if (k === "class") e.className = v;
        else if (k === "dataset") Object.assign(e.dataset, v);
        else if (k in e) e[k] = v;
        else e.setAttribute(k, v);
    }
    e.append(...children);
    return e;
}

function slider(label, { name, min, max, step, value }, format = (v) => String(v)) {
    const input = el("input", { type: "range", name, min, max, step, value });
    const out = el("output", {}, format(Number(value)));
    input.addEventListener("input", () => (out.textContent = format(Number(input.value))));
    const row = el("label", { class: "lab-slider" }, el("span", {}, label), input, out);
    return { row, input, out, get value() { return Number(input.value); } };
}

/** The flat [w, mx, my, sxx, sxy, syy]* layout as component objects, and back. */
const unflatten = (flat) => {
    const comps = [];
    for (let i = 0; i < flat.length; i += 6) comps.push({ w: flat[i], m: [flat[i + 1], flat[i + 2]], c: [flat[i + 3], flat[i + 4], flat[i + 5]] });
    return comps;
};
const flatten = (comps) => new Float64Array(comps.flatMap((k) => [k.w, k.m[0], k.m[1], ...k.c]));

export class LabView {
    /** Mounts the lab into `root`; `settings` may set preset, steps, t, points, seed. */
    constructor(root, settings = {}) {
        this.root = root;
        this.settings = settings;
        this.selected = -1;
        this.drag = null;
        this.pending = false;
        this.build();
        this.ready = this.start().catch((e) => this.fail(e));
    }

    build() {
        const s = this.settings;
        this.root.classList.add("lab");
        this.root.dataset.state = "loading";
        this.canvas = el("canvas", { width: 640, height: 640, class: "lab-canvas" });
        this.canvas.setAttribute("aria-label", "The 2-D lab: density, score arrows, forward cloud and sampler trajectories");
        this.status = el("p", { class: "lab-status", role: "status" }, "Loading the engine…");
        this.t = slider("t (noise level)", { name: "t", min: 0, max: 999, step: 1, value: s.t ?? 300 });
        this.steps = slider("Steps", { name: "steps", min: 1, max: 100, step: 1, value: s.steps ?? 20 });
        this.points = slider("Points", { name: "points", min: 50, max: 2000, step: 50, value: s.points ?? 300 });
        this.seed = slider("Seed", { name: "seed", min: 0, max: 99, step: 1, value: s.seed ?? 0 });
        this.eta = slider("DDIM eta", { name: "eta", min: 0, max: 1, step: 0.05, value: 0 }, (v) => v.toFixed(2));
        this.lstep = slider("Langevin step ε (δ = ε σ²)", { name: "langevin_step", min: 0.005, max: 1, step: 0.005, value: 0.1 }, (v) => v.toFixed(3));
        this.lper = slider("Langevin steps per level", { name: "langevin_per_level", min: 1, max: 50, step: 1, value: 5 });
        this.checks = new Map();
        const on = new Set(s.samplers ?? ["ddpm", "ddim", "langevin", "flow"]);
        const samplerBox = el("fieldset", { class: "lab-samplers" }, el("legend", {}, "Samplers"));
        for (const sm of SAMPLERS) {
            const box = el("input", { type: "checkbox", checked: on.has(sm.id), name: sm.id });
            this.checks.set(sm.id, box);
            samplerBox.append(el("label", {}, box, el("span", { class: "lab-swatch", style: `background:${sm.color}` }), sm.label));
        }
        this.layers = new Map();
        const layerBox = el("fieldset", { class: "lab-layers" }, el("legend", {}, "Show"));
        for (const [id, label] of [["density", "log p_t (shade)"], ["arrows", "score arrows σ∇log p_t"], ["cloud", "forward cloud x_t"], ["paths", "trajectories"]]) {
            const box = el("input", { type: "checkbox", checked: true, name: id });
            this.layers.set(id, box);
            layerBox.append(el("label", {}, box, label));
        }
        this.spacing = el(
            "select",
            { name: "spacing" },
            el("option", { value: "" }, "leading (diffusers' default)"),
            el("option", { value: "trailing" }, "trailing"),
            el("option", { value: "linspace" }, "linspace"),
        );
        this.preset = el("select", { name: "preset" }, ...PRESETS.map((p) => el("option", { value: p }, p)));
        this.preset.value = PRESETS.includes(s.preset) ? s.preset : "moons";
        this.weight = slider("Weight", { name: "weight", min: 0.05, max: 5, step: 0.05, value: 1 }, (v) => v.toFixed(2));
        this.scale = slider("Scale (std)", { name: "scale", min: 0.02, max: 0.6, step: 0.01, value: 0.1 }, (v) => v.toFixed(2));
        this.remove = el("button", { type: "button" }, "Remove");
        this.editor = el(
            "fieldset",
            { class: "lab-editor" },
            el("legend", {}, "Mixture"),
            el("label", {}, "Preset ", this.preset),
            el("p", { class: "lab-hint" }, "Click the plot to add a component, drag a centre to move it, click a centre to select it."),
            el("div", { class: "lab-selected" }, this.weight.row, this.scale.row, this.remove),
        );
        this.selectedBox = this.editor.querySelector(".lab-selected");
        const controls = el(
            "form",
            { class: "lab-controls" },
            this.t.row,
            this.steps.row,
            samplerBox,
            this.editor,
            layerBox,
            el("details", {}, el("summary", {}, "More"), this.points.row, this.seed.row, this.eta.row, this.lstep.row, this.lper.row, el("label", {}, "Timestep spacing ", this.spacing)),
        );
        controls.addEventListener("submit", (e) => e.preventDefault());
        this.legend = el("p", { class: "lab-legend" });
        this.timing = el("p", { class: "lab-timing" });
        this.root.append(el("div", { class: "lab-plot" }, this.canvas, this.legend, this.timing, this.status), controls);
    }

    async start() {
        wasmReady ??= init();
        await wasmReady;
        const res = await fetch(SCHEDULE_URL);
        if (!res.ok) throw new Error(`${SCHEDULE_URL}: HTTP ${res.status}`);
        this.lab = new Lab(await res.text());
        this.t.input.max = String(this.lab.numTrainTimesteps - 1);
        this.loadPreset(this.preset.value);
        const redraw = () => this.schedule(false);
        const rerun = () => this.schedule(true);
        for (const c of [this.steps, this.points, this.seed, this.eta, this.lstep, this.lper]) c.input.addEventListener("input", rerun);
        for (const box of this.checks.values()) box.addEventListener("change", rerun);
        this.spacing.addEventListener("change", rerun);
        for (const box of this.layers.values()) box.addEventListener("change", redraw);
        this.t.input.addEventListener("input", redraw);
        this.preset.addEventListener("change", () => this.loadPreset(this.preset.value));
        this.weight.input.addEventListener("input", () => this.editSelected({ w: this.weight.value }));
        this.scale.input.addEventListener("input", () => this.editSelected({ scale: this.scale.value }));
        this.remove.addEventListener("click", () => this.removeSelected());
        this.canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
        this.canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
        this.canvas.addEventListener("pointerup", () => (this.drag = null));
        this.canvas.addEventListener("pointercancel", () => (this.drag = null));
        this.root.dataset.state = "ready";
        this.setStatus("Ready: exact eps* of the mixture, the fashion model's schedule.", "");
    }

    fail(e) {
        this.root.dataset.state = "error";
        this.setStatus(`Error: ${e?.message ?? e}`, "error");
    }

    setStatus(text, state) {
        this.status.textContent = text;
        this.status.dataset.state = state;
    }

    loadPreset(name) {
        this.comps = unflatten(Lab.preset(name));
        this.select(-1);
        this.applyMixture();
    }

    applyMixture() {
        try {
            this.lab.setMixture(flatten(this.comps));
            this.root.dataset.components = String(this.comps.length);
            this.schedule(true);
        } catch (e) {
            this.fail(e);
        }
    }

    select(k) {
        this.selected = k;
        this.selectedBox.hidden = k < 0;
        if (k >= 0) {
            const c = this.comps[k];
            this.weight.input.value = String(c.w * this.comps.length);
            this.weight.out.textContent = Number(this.weight.input.value).toFixed(2);
            this.scale.input.value = String(Math.sqrt((c.c[0] + c.c[2]) / 2));
            this.scale.out.textContent = Number(this.scale.input.value).toFixed(2);
        }
        this.schedule(false);
    }

    editSelected({ w, scale }) {
        const c = this.comps[this.selected];
        if (!c) return;
        // Weights are relative: the Rust side normalises them.
        if (w !== undefined) c.w = w / this.comps.length;
        if (scale !== undefined) {
            // Rescale the covariance, keeping its shape (orientation and aspect).
            const old = Math.sqrt((c.c[0] + c.c[2]) / 2);
            const f = (scale / old) ** 2;
            c.c = c.c.map((v) => v * f);
        }
        this.applyMixture();
    }

    removeSelected() {
        if (this.comps.length <= 1 || this.selected < 0) return;
        this.comps.splice(this.selected, 1);
        this.select(-1);
        this.applyMixture();
    }

    toWorld(e) {
        const r = this.canvas.getBoundingClientRect();
        const px = ((e.clientX - r.left) / r.width) * this.canvas.width;
        const py = ((e.clientY - r.top) / r.height) * this.canvas.height;
        return [(px / this.canvas.width) * 2 * EXTENT - EXTENT, EXTENT - (py / this.canvas.height) * 2 * EXTENT];
    }

    pointerDown(e) {
        if (!this.lab) return;
        const [x, y] = this.toWorld(e);
        const near = 12 * ((2 * EXTENT) / this.canvas.getBoundingClientRect().width);
        let best = -1;
        let bestD = near;
        this.comps.forEach((c, k) => {
            const d = Math.hypot(c.m[0] - x, c.m[1] - y);
            if (d < bestD) [best, bestD] = [k, d];
        });
        if (best >= 0) {
            this.select(best);
            this.drag = best;
            this.canvas.setPointerCapture?.(e.pointerId);
        } else if (this.comps.length < 64) {
            const mean = this.comps.reduce((s, c) => s + c.w, 0) / this.comps.length;
            this.comps.push({ w: mean, m: [x, y], c: [0.01, 0, 0.01] });
            this.select(this.comps.length - 1);
            this.applyMixture();
        }
    }

    pointerMove(e) {
        if (this.drag === null) return;
        const [x, y] = this.toWorld(e);
        this.comps[this.drag].m = [Math.max(-2, Math.min(2, x)), Math.max(-2, Math.min(2, y))];
        this.applyMixture();
    }

    /** Coalesces changes into one run + draw per animation frame. */
    schedule(rerun) {
        this.dirtyRun ||= rerun;
        if (this.pending) return;
        this.pending = true;
        requestAnimationFrame(() => {
            this.pending = false;
            try {
                if (this.dirtyRun) this.run();
                this.dirtyRun = false;
                this.draw();
            } catch (e) {
                this.fail(e);
            }
        });
    }

    run() {
        const started = performance.now();
        const steps = this.steps.value;
        const points = this.points.value;
        this.runs = [];
        let evals = 0;
        for (const sm of SAMPLERS) {
            if (!this.checks.get(sm.id).checked) continue;
            const opts = {
                sampler: sm.id,
                steps,
                points,
                seed: this.seed.value,
                eta: this.eta.value,
                langevin_step: this.lstep.value,
                langevin_per_level: this.lper.value,
                spacing: this.spacing.value,
            };
            const flat = this.lab.trajectories(opts);
            this.runs.push({ ...sm, flat, frames: flat.length / (2 * points), points });
            evals += points * (sm.id === "langevin" ? steps * this.lper.value : steps);
        }
        // A digest of every final point: any change in the run changes it.
        let digest = 0;
        for (const r of this.runs) {
            const last = r.flat.subarray((r.frames - 1) * 2 * r.points);
            for (let i = 0; i < last.length; i++) digest = (digest * 31 + Math.round(last[i] * 1e4)) % 1_000_000_007;
        }
        this.root.dataset.result = String(digest);
        const ms = performance.now() - started;
        this.timing.textContent = `${this.runs.length} samplers × ${points} points × ${steps} steps: ${evals.toLocaleString()} evaluations of eps* in ${ms.toFixed(0)} ms (wasm, CPU).`;
    }

    draw() {
        const ctx = this.canvas.getContext("2d");
        const W = this.canvas.width;
        const H = this.canvas.height;
        const sx = (x) => ((x + EXTENT) / (2 * EXTENT)) * W;
        const sy = (y) => ((EXTENT - y) / (2 * EXTENT)) * H;
        const bounds = new Float64Array([-EXTENT, EXTENT, -EXTENT, EXTENT]);
        const t = this.t.value;
        const dark = matchMedia("(prefers-color-scheme: dark)").matches;
        ctx.fillStyle = dark ? "#0d1117" : "#ffffff";
        ctx.fillRect(0, 0, W, H);
        if (this.layers.get("density").checked) this.drawDensity(ctx, t, bounds, dark);
        if (this.layers.get("cloud").checked) {
            const n = 1000;
            const pts = this.lab.forward(t, n, 12345);
            ctx.fillStyle = dark ? "rgba(200,200,200,.45)" : "rgba(80,80,80,.35)";
            for (let i = 0; i < n; i++) ctx.fillRect(sx(pts[2 * n + 2 * i]) - 1, sy(pts[2 * n + 2 * i + 1]) - 1, 2, 2);
        }
        let arrows = 0;
        if (this.layers.get("arrows").checked) {
            const g = this.lab.fieldGrid(t, ARROW_GRID, ARROW_GRID, bounds);
            const cell = W / ARROW_GRID;
            ctx.strokeStyle = dark ? "rgba(230,237,243,.75)" : "rgba(31,35,40,.7)";
            ctx.lineWidth = 1.2;
            ctx.beginPath();
            for (let j = 0; j < ARROW_GRID; j++) {
                for (let i = 0; i < ARROW_GRID; i++) {
                    const vx = g[2 * (j * ARROW_GRID + i)];
                    const vy = g[2 * (j * ARROW_GRID + i) + 1];
                    const len = Math.hypot(vx, vy);
                    if (!(len > 1e-6)) continue;
                    // sigma * score is O(1) at every t; cap it at 0.9 of a cell.
                    const L = Math.min(0.9 * cell, 0.45 * cell * len);
                    const x0 = (i + 0.5) * cell;
                    const y0 = H - (j + 0.5) * cell;
                    const ux = vx / len;
                    const uy = -vy / len;
                    const x1 = x0 + ux * L;
                    const y1 = y0 + uy * L;
                    ctx.moveTo(x0, y0);
                    ctx.lineTo(x1, y1);
                    const h = Math.min(4, L / 3);
                    ctx.moveTo(x1, y1);
                    ctx.lineTo(x1 - h * (ux - 0.5 * uy), y1 - h * (uy + 0.5 * ux));
                    ctx.moveTo(x1, y1);
                    ctx.lineTo(x1 - h * (ux + 0.5 * uy), y1 - h * (uy - 0.5 * ux));
                    arrows++;
                }
            }
            ctx.stroke();
        }
        this.root.dataset.arrows = String(arrows);
        let lines = 0;
        let pts = 0;
        const frameAt = (frames) => Math.round((1 - t / (this.lab.numTrainTimesteps - 1)) * (frames - 1));
        if (this.layers.get("paths").checked && this.runs) {
            // Lines for a subset (hundreds of noisy polylines hide each other), then every
            // sampler's final samples on top of all lines.
            for (const r of this.runs) {
                const stride = 2 * r.points;
                const show = Math.min(r.points, PATHS_SHOWN);
                ctx.strokeStyle = r.color;
                ctx.globalAlpha = 0.45;
                ctx.lineWidth = 1;
                ctx.beginPath();
                for (let p = 0; p < show; p++) {
                    ctx.moveTo(sx(r.flat[2 * p]), sy(r.flat[2 * p + 1]));
                    for (let f = 1; f < r.frames; f++) ctx.lineTo(sx(r.flat[f * stride + 2 * p]), sy(r.flat[f * stride + 2 * p + 1]));
                    lines++;
                }
                ctx.stroke();
                ctx.globalAlpha = 1;
                // Where each sampler is at the scrubber's t (as a fraction of its run).
                const f = frameAt(r.frames);
                if (f > 0 && f < r.frames - 1) {
                    for (let p = 0; p < show; p++) {
                        ctx.beginPath();
                        ctx.arc(sx(r.flat[f * stride + 2 * p]), sy(r.flat[f * stride + 2 * p + 1]), 2.5, 0, 2 * Math.PI);
                        ctx.stroke();
                    }
                }
            }
            for (const r of this.runs) {
                ctx.fillStyle = r.color;
                const last = (r.frames - 1) * 2 * r.points;
                for (let p = 0; p < r.points; p++) ctx.fillRect(sx(r.flat[last + 2 * p]) - 1.5, sy(r.flat[last + 2 * p + 1]) - 1.5, 3, 3);
                pts += r.points;
            }
        }
        this.root.dataset.trajectories = String(lines);
        this.root.dataset.trajectoryPoints = String(pts);
        this.drawComponents(ctx, sx, sy, dark);
        const [alpha, sigma] = this.lab.alphaSigma(t);
        this.legend.replaceChildren(
            `t = ${t}: α_t = ${alpha.toFixed(3)}, σ_t = ${sigma.toFixed(3)}. `,
            ...(this.runs ?? []).flatMap((r) => [el("span", { class: "lab-swatch", style: `background:${r.color}` }), `${r.label} `]),
        );
    }

    drawDensity(ctx, t, bounds, dark) {
        const n = DENSITY_GRID;
        const lp = this.lab.logDensityGrid(t, n, n, bounds);
        let max = -Infinity;
        for (const v of lp) max = Math.max(max, v);
        const img = new ImageData(n, n);
        for (let j = 0; j < n; j++) {
            for (let i = 0; i < n; i++) {
                // Shade by density relative to its peak, over 8 nats.
                const a = Math.max(0, 1 + (lp[j * n + i] - max) / 8);
                const o = 4 * ((n - 1 - j) * n + i);
                const base = dark ? [68, 147, 248] : [9, 105, 218];
                img.data.set([...base, Math.round(90 * a)], o);
            }
        }
        const tmp = new OffscreenCanvas(n, n);
        tmp.getContext("2d").putImageData(img, 0, 0);
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(tmp, 0, 0, this.canvas.width, this.canvas.height);
    }

    drawComponents(ctx, sx, sy, dark) {
        const scale = this.canvas.width / (2 * EXTENT);
        this.comps.forEach((c, k) => {
            // The 2-sigma ellipse of the component (eigen-decomposition of its 2x2 covariance).
            const [a, b, d] = c.c;
            const tr = (a + d) / 2;
            const disc = Math.sqrt(((a - d) / 2) ** 2 + b * b);
            const l1 = tr + disc;
            const l2 = Math.max(tr - disc, 0);
            const angle = Math.atan2(l1 - a, b || 1e-12);
            ctx.strokeStyle = k === this.selected ? "#cf222e" : dark ? "#e6edf3" : "#1f2328";
            ctx.lineWidth = k === this.selected ? 2 : 1;
            ctx.beginPath();
            ctx.ellipse(sx(c.m[0]), sy(c.m[1]), 2 * Math.sqrt(l1) * scale, 2 * Math.sqrt(l2) * scale, b === 0 && a >= d ? 0 : -angle, 0, 2 * Math.PI);
            ctx.stroke();
            ctx.fillStyle = ctx.strokeStyle;
            ctx.fillRect(sx(c.m[0]) - 3, sy(c.m[1]) - 3, 6, 6);
        });
    }
}

/** `<lab-widget preset="ring" steps="20" t="300">`: the lab in a shadow root. */
export class LabWidget extends HTMLElement {
    connectedCallback() {
        if (this.view) return;
        const shadow = this.attachShadow({ mode: "open" });
        shadow.append(el("link", { rel: "stylesheet", href: new URL("./lab.css", import.meta.url).href }));
        const root = el("div");
        shadow.append(root);
        const num = (k) => (this.hasAttribute(k) ? Number(this.getAttribute(k)) : undefined);
        const samplers = this.getAttribute("samplers")?.split(",").map((s) => s.trim());
        this.view = new LabView(root, { preset: this.getAttribute("preset") ?? undefined, steps: num("steps"), t: num("t"), samplers });
    }
}

if (typeof customElements !== "undefined" && !customElements.get("lab-widget")) customElements.define("lab-widget", LabWidget);
