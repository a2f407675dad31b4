// The settings form: model, engine, label, steps, guidance, sampler, eta, clip, spacing,
// variance, seed, grid,
// compare, and the Sample / Pause / Step / Stop row.

import { BACKENDS } from "../engine.js";
import { CLIP_MODES, GRID_SIZES, SAMPLERS, SHIPPED_MODELS, SPACING_MODES, VARIANCE_MODES, esc, isFlowSampler, samplerLabel, samplerOf, usesClip, usesEta, usesVariance } from "../settings.js";

/** Where sampling runs: auto picks WebGPU on a hardware GPU, else the CPU engine. */
const BACKEND_LABELS = {
    auto: "Auto (GPU if there is one)",
    webgpu: "WebGPU (GPU)",
    cpu: "CPU (Web Workers)",
};

export const CONTROL_IDS = [
    "model", "backend", "label", "steps", "steps-num", "guidance", "guidance-out", "sampler", "eta", "eta-out", "eta-field", "clip", "clip-field",
    "spacing", "spacing-field", "variance", "variance-field", "sampler-help",
    "seed", "randomise", "grid", "compare", "run", "pause", "step", "stop",
];

export function controlsHtml(pg) {
    const c = pg.controls;
    const hide = (name) => (c.has(name) ? "" : " hidden");
    const models = pg.o.models ?? SHIPPED_MODELS;
    return `
<form class="dp-controls" novalidate aria-label="Sampling settings">
  <div class="dp-field"${hide("model")}>
    <label for="model">Model</label>
    <select id="model" name="model">${models.map(([v, l]) => `<option value="${esc(v)}">${esc(l)}</option>`).join("")}</select>
  </div>
  <div class="dp-field"${hide("backend")}>
    <label for="backend">Engine</label>
    <select id="backend" name="backend" aria-describedby="backend-help">${BACKENDS.map((v) => `<option value="${v}">${BACKEND_LABELS[v]}</option>`).join("")}</select>
    <small id="backend-help" class="dp-help">where the images are computed${pg.o.selftest ? ` · <a href="${esc(pg.o.selftest)}">check its kernels</a>` : ""}</small>
  </div>
  <div class="dp-field"${hide("label")}>
    <label for="label">Label</label>
    <select id="label" name="label" disabled><option>loading…</option></select>
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
    <small id="guidance-help" class="dp-help">classifier-free guidance w: 0 ignores the label, 1 is plain conditional</small>
  </div>
  <div class="dp-field"${hide("sampler")}>
    <label for="sampler">Sampler</label>
    <select id="sampler" name="sampler" aria-describedby="sampler-help">${SAMPLERS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>
    <small id="sampler-help" class="dp-help"></small>
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
  <div class="dp-field" id="spacing-field"${hide("spacing")}>
    <label for="spacing">Spacing</label>
    <select id="spacing" name="spacing" aria-describedby="spacing-help">${SPACING_MODES.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>
    <small id="spacing-help" class="dp-help">which timesteps the steps visit: leading starts 2 steps at t = 500, trailing at t = T − 1</small>
  </div>
  <div class="dp-field" id="variance-field"${hide("variance")}>
    <label for="variance">DDPM variance</label>
    <select id="variance" name="variance" aria-describedby="variance-help">${VARIANCE_MODES.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>
    <small id="variance-help" class="dp-help">DDPM: the noise each step adds, the posterior's β̃, β, or Analytic-DPM's optimal one (models that ship analytic_dpm.json); DDIM reads only the analytic one</small>
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
  <div class="dp-field"${hide("compare")}>
    <label for="compare">Compare</label>
    <input type="text" id="compare" name="compare" spellcheck="false" autocomplete="off" placeholder="e.g. guidance:0,2,4" aria-describedby="compare-help">
    <small id="compare-help" class="dp-help">one row per value, all from the same starting noise: sampler:ddim,ddpm · guidance:0,2,4 · steps:1,5,20 · eta:0,1 · spacing:leading,trailing · variance:fixed_small,analytic · label:0,1,2 · model:fashion,fashion-flow. Empty: one run.</small>
  </div>
  <div class="dp-buttons"${hide("run")}>
    <button type="submit" id="run" disabled>Sample</button>
    <button type="button" id="pause" disabled aria-keyshortcuts="Space" title="Pause or resume (Space)">Pause</button>
    <button type="button" id="step" disabled title="Run one denoising step, then pause">Step</button>
    <button type="button" id="stop" disabled title="Stop this run">Stop</button>
  </div>
</form>`;
}

/** Puts `pg.settings` into the controls. */
export function writeControls(pg) {
    const s = pg.settings, e = pg.el;
    if (![...e.model.options].some((o) => o.value === s.model)) {
        e.model.append(new Option(s.model.length > 40 ? `…${s.model.slice(-38)}` : s.model, s.model));
    }
    e.model.value = s.model;
    e.backend.value = s.backend;
    e.steps.value = e["steps-num"].value = s.steps;
    e.guidance.value = s.guidance;
    e["guidance-out"].value = Number(s.guidance).toFixed(1);
    fillSamplers(pg);
    e.eta.value = s.eta;
    e["eta-out"].value = Number(s.eta).toFixed(2);
    e.clip.value = s.clip;
    e.spacing.value = s.spacing ?? "default";
    fillVariance(pg);
    e.variance.value = s.variance ?? "default";
    showSamplerOptions(pg, samplerOf(s, pg.loaded));
    e.seed.value = s.seed;
    if (![...e.grid.options].some((o) => Number(o.value) === s.grid)) e.grid.append(new Option(String(s.grid), s.grid));
    e.grid.value = String(s.grid);
    e.compare.value = s.compare ?? "";
    for (const r of e.views) r.checked = r.value === s.view;
    if (pg.loaded) fillLabels(pg);
}

/** The sampler menu: the loaded model's samplers (all of them before a model is loaded),
 *  showing the run's sampler (the settings' or the model's default). A sampler the settings
 *  fix that does not suit the model (a link's ?sampler=ddim on a flow model) stays shown,
 *  marked, so the menu says what the error is about until another one is picked. */
export function fillSamplers(pg) {
    const sel = pg.el.sampler, s = pg.settings, entry = pg.loaded;
    const list = entry?.samplers ?? SAMPLERS.map(([v]) => v);
    const opts = list.map((v) => new Option(samplerLabel(v), v));
    if (s.sampler && !list.includes(s.sampler)) opts.push(new Option(`${samplerLabel(s.sampler)} (not for this model)`, s.sampler));
    if (!entry && !s.sampler) opts.unshift(new Option("Model default", ""));
    sel.replaceChildren(...opts);
    sel.value = entry ? samplerOf(s, entry) : s.sampler;
}

/** The variance menu offers analytic only where the model has its moments (manifest.json
 *  lists analytic_dpm.json and it loaded). */
function fillVariance(pg) {
    const opt = [...pg.el.variance.options].find((o) => o.value === "analytic");
    if (!opt) return;
    const missing = pg.loaded && !pg.loaded.hasAnalytic;
    opt.disabled = !!missing && pg.settings.variance !== "analytic";
    opt.textContent = missing ? "Analytic-DPM (needs analytic_dpm.json; this model has none)" : "Analytic-DPM (optimal)";
}

/** Greys out the options the sampler ignores (eta: DDIM only; clip: DDPM and DDIM;
 *  variance: DDPM, and DDIM's analytic), and for a flow-matching model all of them and the
 *  spacing, saying why (its sampler reads none of them). */
export function showSamplerOptions(pg, sampler) {
    const e = pg.el;
    const flow = !!pg.loaded?.isFlow || isFlowSampler(sampler);
    const why = flow ? "Does not apply to a flow-matching model: its sampler integrates the velocity, with no noise schedule to space, clip or add noise from." : "";
    const toggle = (field, control, on) => {
        e[field].classList.toggle("dp-off", !on);
        control.disabled = !on;
        e[field].title = on ? "" : why;
    };
    toggle("eta-field", e.eta, !flow && usesEta(sampler));
    toggle("clip-field", e.clip, !flow && usesClip(sampler));
    toggle("spacing-field", e.spacing, !flow);
    toggle("variance-field", e["variance"], !flow && usesVariance(sampler));
    e["sampler-help"].textContent = flow
        ? "flow matching: the sampler integrates the velocity from noise (s = 1) to the image (s = 0); η, clipping, spacing and variance do not apply"
        : "";
}

export function fillLabels(pg) {
    const names = pg.loaded.classNames;
    const sel = pg.el.label;
    const opts = names.map((n, i) => new Option(`${n}`, String(i)));
    if (names.length > 1) opts.push(new Option("All labels (one per image)", "all"));
    if (names.length === 0) opts.push(new Option("(unconditional model)", ""));
    sel.replaceChildren(...opts);
    sel.value = String(pg.labelIndex() ?? "all");
    if (sel.value === "" && names.length) sel.value = "0";
}

export function wireControls(pg) {
    const e = pg.el;
    const changed = (key, value, { now = false } = {}) => {
        pg.settings[key] = value;
        pg.o.onChange?.(pg.settings);
        now ? pg.sample() : pg.scheduleSample();
    };
    e.form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        // Enter in the compare box submits before (or without) its change event.
        if (e.compare.value.trim() !== (pg.settings.compare ?? "")) {
            pg.settings.compare = e.compare.value.trim();
            pg.o.onChange?.(pg.settings);
        }
        pg.sample();
    });
    e.model.addEventListener("change", () => {
        pg.settings.model = e.model.value;
        // A sampler of the old model's kind gives way to the new model's default once it
        // loads (a link or an attribute that fixes one is reported instead).
        pg.modelPicked = true;
        pg.o.onChange?.(pg.settings);
        pg.load();
    });
    e.backend.addEventListener("change", () => {
        pg.settings.backend = e.backend.value;
        pg.o.onChange?.(pg.settings);
        pg.start();
    });
    e.label.addEventListener("change", () => changed("label", e.label.value));
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
        pg.settings.sampler = e.sampler.value;
        fillSamplers(pg); // drops a "(not for this model)" entry once another is picked
        showSamplerOptions(pg, e.sampler.value);
        changed("sampler", e.sampler.value);
    });
    e.clip.addEventListener("change", () => changed("clip", e.clip.value));
    e.spacing.addEventListener("change", () => changed("spacing", e.spacing.value));
    e.variance.addEventListener("change", () => changed("variance", e.variance.value));
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
    e.compare.addEventListener("change", () => changed("compare", e.compare.value.trim(), { now: true }));
    e.pause.addEventListener("click", () => pg.playPause());
    e.step.addEventListener("click", () => pg.stepOnce());
    e.stop.addEventListener("click", () => pg.stop());
}
