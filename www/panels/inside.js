// The "inside one step" panel: the step the output shows (the scrubbed or paused frame),
// taken apart for one image: x_t, the guided network output, the eps and x0-hat the update
// uses, the mean of the update (DDPM: the posterior mean mu-tilde), the noise it adds and the
// new state, with the step's alpha_bar, sigma and equations filled in with the numbers the
// sampler used. The engine's inspector (engine.js `inspectorOf`) re-runs that image on the
// CPU up to the step, so the panel works whichever backend sampled and never disturbs a run.

import { drawGrid, fromEngineError, inspectorOf, isAbort, quantize } from "../engine.js";
import { fmtMs } from "../settings.js";

export const INSIDE_IDS = ["ins", "ins-image", "ins-go", "ins-status", "ins-progress", "ins-parts", "ins-eq"];

// [key of CpuModel.inspectStep's result, caption, how to show it, the state's level]:
// "image" values are in the model's [-1, 1]; "noise" values are shown at ±3 of their own
// standard deviation. The level says which alpha_bar rescales a sigma-space state (Euler
// ancestral) back to x_t's scale: "t" before the step, "prev" after it.
const PARTS = [
    ["xt", "x<sub>t</sub>, the state before the step", "image", "t"],
    ["modelOut", "the guided network output", "noise", null],
    ["eps", "ε̂, the noise the update uses", "noise", null],
    ["x0", "x̂<sub>0</sub>, the predicted clean image", "image", null],
    ["mean", "the update without its noise", "image", "prev"],
    ["noise", "σ z, the noise the step adds", "noise", "prev"],
    ["xPrev", "the new state", "image", "prev"],
];
// What the network outputs (CpuModel.inspectStep's `prediction`), as the equations name it.
const OUTPUT_NAMES = { epsilon: "ε̂<sub>θ</sub>", v: "v̂<sub>θ</sub>", sample: "x̂<sub>θ</sub>", velocity: "v̂<sub>θ</sub>" };
const strip = (html) => html.replace(/<[^>]+>/g, "");

export function insideHtml(pg) {
    const hidden = pg.controls.has("inside") ? "" : " hidden";
    const figs = PARTS.map(
        ([key, caption]) =>
            `<figure><canvas data-part="${key}" width="28" height="28" role="img" aria-label="${strip(caption)}: not shown yet"></canvas><figcaption>${caption}<br><span class="dp-ins-std" data-std="${key}"></span></figcaption></figure>`,
    ).join("");
    return `
<section class="dp-inside" id="ins"${hidden} aria-labelledby="ins-title-${pg.id}">
  <h2 id="ins-title-${pg.id}">Inside one step</h2>
  <p class="dp-help">Pick a step (replay it with the step slider, or pause a run) and an image, and look inside: what the network predicted, the clean image it implies, and how the sampler combines them into the next state. The image is re-run on the CPU up to that step, from the same seed.</p>
  <div class="dp-ins-form">
    <label for="ins-image">Image</label>
    <input type="number" id="ins-image" min="1" max="1" value="1" inputmode="numeric">
    <button type="button" id="ins-go" disabled>Look inside this step</button>
    <span id="ins-progress" class="dp-help" aria-hidden="true"></span>
  </div>
  <p id="ins-status" class="dp-levels" role="status" aria-live="polite">Sample first, then look inside a step.</p>
  <div class="dp-fwd-row dp-ins-parts" id="ins-parts">${figs}</div>
  <div id="ins-eq" class="dp-ins-eq" aria-live="off"></div>
</section>`;
}

export function wireInside(pg) {
    if (!pg.controls.has("inside")) return;
    pg.el["ins-go"].addEventListener("click", () => inspect(pg));
    pg.el["ins-image"].addEventListener("change", () => pg.insideOpen && inspect(pg));
}

/** The output shows another frame (a live step, or the scrubber moved): once the reader has
 *  looked inside a step, the panel follows (debounced; a newer request aborts the older). */
export function followInside(pg) {
    if (!pg.controls.has("inside")) return;
    const row = pg.rows?.[0];
    const n = row?.shape?.[0] ?? 1;
    const img = pg.el["ins-image"];
    img.max = String(n);
    if (Number(img.value) > n) img.value = String(n);
    const running = pg.state === "running";
    pg.el["ins-go"].disabled = !row?.shown || running || !row.entry?.model;
    if (row?.shown) pg.el["ins-go"].textContent = `Look inside step ${row.shown.step + 1}`;
    if (!pg.insideOpen || pg.el["ins-go"].disabled) return;
    // A redraw of the same frame (the x_t / x0 view toggle) needs nothing.
    if (pg.inside?.row === row && pg.inside.step === row.shown.step && pg.inside.image === imageIndex(pg, n)) return;
    clearTimeout(pg.insideTimer);
    pg.insideTimer = setTimeout(() => inspect(pg), 250);
}

const imageIndex = (pg, n) => Math.min(n, Math.max(1, Math.round(Number(pg.el["ins-image"].value) || 1))) - 1;

async function inspect(pg) {
    const row = pg.rows?.[0];
    const frame = row?.shown;
    if (!row || !frame || !row.entry?.model || pg.state === "running") return;
    pg.insideOpen = true;
    pg.insideAbort?.abort();
    const ctl = new AbortController();
    pg.insideAbort = ctl;
    const n = row.shape[0];
    const image = imageIndex(pg, n);
    const k = frame.step;
    const opts = pg.options(row.settings, row.entry);
    const status = pg.el["ins-status"], progress = pg.el["ins-progress"];
    const started = performance.now();
    // The live region hears the start and the end; the per-step count is not announced.
    status.textContent = `Re-running image ${image + 1} on the CPU up to step ${k + 1}…`;
    let parts;
    try {
        parts = await inspectorOf(row.entry).inspectStep(opts, image, k, {
            signal: ctl.signal,
            onProgress: (done, of) => {
                if (!ctl.signal.aborted) progress.textContent = `step ${done} of ${of}`;
            },
        });
    } catch (e) {
        if (isAbort(e) || ctl.signal.aborted) return;
        progress.textContent = "";
        // The model was unloaded meanwhile: the panel was reset with it.
        if (e?.worker === "disposed") return;
        status.textContent = fromEngineError(e, "Looking inside the step failed").message;
        return;
    }
    progress.textContent = "";
    if (ctl.signal.aborted) return;
    const [, c, h, w] = row.shape;
    // Euler ancestral keeps its state in sigma space, x / sqrt(alpha_bar): drawn at x_t's scale.
    const sigmaSpace = opts.sampler === "euler_a";
    const scaleOf = (level) => (!sigmaSpace || !level ? 1 : Math.sqrt(level === "t" ? parts.alphaBar : parts.alphaBarPrev));
    for (const [key, caption, how, level] of PARTS) {
        const v = scaled(parts[key], scaleOf(level));
        const sd = std(v);
        const canvas = pg.el["ins-parts"].querySelector(`canvas[data-part="${key}"]`);
        drawGrid(canvas, quantize(how === "noise" ? scaled(v, sd > 0 ? 1 / (3 * sd) : 0) : v), [1, c, h, w], 0);
        canvas.setAttribute("aria-label", `${strip(caption)}: standard deviation ${sd.toFixed(3)}`);
        pg.el["ins-parts"].querySelector(`[data-std="${key}"]`).textContent = how === "noise" ? `std ${sd.toFixed(3)}, shown at ±3 std` : `std ${sd.toFixed(3)}`;
    }
    pg.el["ins-eq"].innerHTML = equationHtml(parts, { sampler: opts.sampler, guidance: opts.guidance, conditional: !!opts.classes, flow: !!row.entry.isFlow, sigmaSpace });
    pg.inside = { row, step: k, image, parts };
    const inRow = pg.rows.length > 1 || row.value != null ? ` in the first row (${row.caption})` : "";
    status.textContent = `Step ${k + 1} of ${parts.steps} (t = ${fmtT(parts.timestep)}) of image ${image + 1}${inRow}, re-run on the CPU in ${fmtMs(performance.now() - started)}.`;
}

function std(v) {
    let s = 0, s2 = 0;
    for (const x of v) {
        s += x;
        s2 += x * x;
    }
    const m = s / v.length;
    return Math.sqrt(Math.max(0, s2 / v.length - m * m));
}

function scaled(v, by) {
    if (by === 1) return v;
    const out = new Float32Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = v[i] * by;
    return out;
}

const fmtT = (t) => (Number.isInteger(t) ? String(t) : t.toFixed(2));
const num = (v) => (v === 0 ? "0" : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(3) : v.toFixed(4));

/** `a x + b y + …` from [coefficient, name] pairs, zero terms left out. */
function sum(terms) {
    const kept = terms.filter(([v]) => v !== 0);
    return kept.map(([v, name], i) => `${i === 0 ? (v < 0 ? "−" : "") : v < 0 ? " − " : " + "}${num(Math.abs(v))} ${name}`).join("") || "0";
}

/** The step's equations with its numbers: the guided output, how x0-hat and eps follow from
 *  it (the plan's own coefficients, right for every sampler and prediction type), and the
 *  update x' = c.x x_t + c.x0 x0-hat + c.eps eps + c.prevX0 x0-hat' + sigma z. `run`:
 *  {sampler, guidance, conditional, flow, sigmaSpace}. */
export function equationHtml(parts, run) {
    const c = parts.coefficients;
    const out = OUTPUT_NAMES[parts.prediction] ?? "m̂";
    const x = run.sigmaSpace ? "x" : "x<sub>t</sub>";
    const last = parts.step + 1 === parts.steps;
    const next = last ? "x<sub>0</sub>" : run.sigmaSpace ? "x′" : "x<sub>t′</sub>";
    const ab = parts.alphaBar, abPrev = parts.alphaBarPrev;
    const lines = [];
    const w = run.guidance;
    const cond = (name) => `${name.replace("</sub>", ",c</sub>")}`;
    const uncond = (name) => `${name.replace("</sub>", ",∅</sub>")}`;
    const guided = !run.conditional
        ? `the network output ${out}`
        : w === 0
          ? `the unconditional output ${out} = ${uncond(out)} (w = 0)`
          : w === 1
            ? `the conditional output ${out} = ${cond(out)} (w = 1)`
            : `${out} = ${uncond(out)} + ${w} (${cond(out)} − ${uncond(out)}), classifier-free guidance`;
    if (run.flow) {
        const s = Math.sqrt(1 - ab) / (Math.sqrt(ab) + Math.sqrt(1 - ab));
        lines.push(`t = ${fmtT(parts.timestep)}, s = ${num(s)}: x<sub>t</sub> = (1 − s) x<sub>0</sub> + s ε, and the network predicts the velocity ε − x<sub>0</sub>; ${guided}.`);
    } else if (run.sigmaSpace) {
        const sigma = Math.sqrt((1 - ab) / ab);
        lines.push(`t = ${fmtT(parts.timestep)}, ᾱ<sub>t</sub> = ${num(ab)}: Euler ancestral works on x = x<sub>t</sub> / √ᾱ<sub>t</sub> = x<sub>0</sub> + σ<sub>t</sub> ε with σ<sub>t</sub> = ${num(sigma)} (the pictures are drawn at x<sub>t</sub>'s scale); ${guided}.`);
    } else {
        lines.push(`t = ${fmtT(parts.timestep)}: ᾱ<sub>t</sub> = ${num(ab)}, the step lands where ᾱ = ${num(abPrev)}; ${guided}.`);
    }
    const clip = c.clip != null ? `, clipped to ±${c.clip}` : "";
    const vpEps = parts.prediction === "epsilon" && !run.flow && !run.sigmaSpace;
    lines.push(`x̂<sub>0</sub> = ${vpEps ? `(x<sub>t</sub> − √(1 − ᾱ<sub>t</sub>) ${out}) / √ᾱ<sub>t</sub> = ` : ""}${sum([[c.x0FromX, x], [c.x0FromOut, out]])}${clip}.`);
    if (c.epsUsesX0) lines.push(`ε̂ = ${sum([[c.epsFromX, x], [c.epsFromX0, "x̂<sub>0</sub>"]])}: re-derived from the clipped x̂<sub>0</sub>, so that the update is consistent with it.`);
    else if (c.epsFromX === 0 && c.epsFromOut === 1) lines.push(`ε̂ = ${out}, the network's own noise prediction.`);
    else lines.push(`ε̂ = ${sum([[c.epsFromX, x], [c.epsFromOut, out]])}.`);
    const prev = run.sampler === "flow_heun" ? "x̂<sub>0</sub><sup>pred</sup> (the predictor's, Heun's corrector)" : "x̂<sub>0</sub><sup>prev</sup> (the previous step's, DPM-Solver++'s second order)";
    const mean = sum([[c.x, x], [c.x0, "x̂<sub>0</sub>"], [c.eps, "ε̂"], [c.prevX0, prev]]);
    lines.push(`${run.sampler === "ddpm" ? "μ̃ (the posterior mean)" : "the mean"} = ${mean}.`);
    lines.push(c.noise !== 0 ? `${next} = mean + σ z with σ = ${num(c.noise)} and z ~ N(0, I) (drawn from the seed).` : `${next} = the mean: this step adds no noise (σ = 0).`);
    return lines.map((l) => `<p>${l}</p>`).join("");
}

/** A run is running: its steps are not inspected (the panel follows once it pauses or ends). */
export function holdInside(pg) {
    if (!pg.controls.has("inside")) return;
    clearTimeout(pg.insideTimer);
    pg.el["ins-go"].disabled = true;
}

/** Forgets what the panel showed (a new run started, or the model went). */
export function resetInside(pg, why = "A new run started: look inside one of its steps once it is shown.") {
    if (!pg.controls.has("inside")) return;
    pg.insideAbort?.abort();
    clearTimeout(pg.insideTimer);
    if (!pg.inside && !pg.insideOpen) return;
    pg.inside = null;
    pg.el["ins-go"].disabled = true;
    pg.el["ins-progress"].textContent = "";
    pg.el["ins-status"].textContent = why;
    pg.el["ins-eq"].replaceChildren();
    for (const cv of pg.el["ins-parts"].querySelectorAll("canvas")) {
        cv.getContext("2d").clearRect(0, 0, cv.width, cv.height);
        cv.setAttribute("aria-label", `${cv.getAttribute("aria-label").split(":")[0]}: not shown yet`);
    }
    for (const sp of pg.el["ins-parts"].querySelectorAll("[data-std]")) sp.textContent = "";
}
