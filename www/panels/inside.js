// The "inside one step" panel: the step the output shows (the scrubbed or paused frame),
// taken apart for one image: x_t, the guided model output eps-hat, x0-hat, the mean of the
// update (DDPM: the posterior mean mu-tilde), the noise it adds and the new state, with the
// step's alpha_bar, sigma and update equation filled in with the numbers the sampler used.
// The engine's inspector (engine.js `inspectorOf`) re-runs that image on the CPU up to the
// step, so the panel works whichever backend sampled and never disturbs a run.

import { drawGrid, fromEngineError, inspectorOf, isAbort, quantize } from "../engine.js";
import { fmtMs } from "../settings.js";

export const INSIDE_IDS = ["ins", "ins-image", "ins-go", "ins-status", "ins-parts", "ins-eq"];

// [key of CpuModel.inspectStep's result, caption, how to show it]: "image" values are in the
// model's [-1, 1]; "noise" values are shown at ±3 of their own standard deviation.
const PARTS = [
    ["xt", "x<sub>t</sub>, the state before the step", "image"],
    ["eps", "ε̂, the guided noise prediction", "noise"],
    ["x0", "x̂<sub>0</sub>, the predicted clean image", "image"],
    ["mean", "the update without its noise", "image"],
    ["noise", "σ z, the noise the step adds", "noise"],
    ["xPrev", "the new state", "image"],
];

export function insideHtml(pg) {
    const hidden = pg.controls.has("inside") ? "" : " hidden";
    const figs = PARTS.map(
        ([key, caption]) =>
            `<figure><canvas data-part="${key}" width="28" height="28" role="img" aria-label="${caption.replace(/<[^>]+>/g, "")}: not shown yet"></canvas><figcaption>${caption}<br><span class="dp-ins-std" data-std="${key}"></span></figcaption></figure>`,
    ).join("");
    return `
<section class="dp-inside" id="ins"${hidden} aria-labelledby="ins-title-${pg.id}">
  <h2 id="ins-title-${pg.id}">Inside one step</h2>
  <p class="dp-help">Scrub to a step with <i>Replay step</i> (or pause a run), pick an image and look inside: what the network predicted, the clean image it implies, and how the sampler combines them into the next state. The image is re-run on the CPU up to that step, from the same seed.</p>
  <div class="dp-ins-form">
    <label for="ins-image">Image</label>
    <input type="number" id="ins-image" min="1" max="1" value="1" inputmode="numeric">
    <button type="button" id="ins-go" disabled>Look inside this step</button>
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
    pg.el["ins-go"].disabled = !row?.shown || running;
    if (row?.shown) pg.el["ins-go"].textContent = `Look inside step ${row.shown.step + 1}`;
    if (!pg.insideOpen || running || !row?.shown) return;
    clearTimeout(pg.insideTimer);
    pg.insideTimer = setTimeout(() => inspect(pg), 250);
}

async function inspect(pg) {
    const row = pg.rows?.[0];
    const frame = row?.shown;
    if (!row || !frame || !row.entry?.model) return;
    pg.insideOpen = true;
    pg.insideAbort?.abort();
    const ctl = new AbortController();
    pg.insideAbort = ctl;
    const n = row.shape[0];
    const image = Math.min(n, Math.max(1, Math.round(Number(pg.el["ins-image"].value) || 1))) - 1;
    const k = frame.step;
    const opts = pg.options(row.settings, row.entry);
    const status = pg.el["ins-status"];
    const started = performance.now();
    status.textContent = `Re-running image ${image + 1} on the CPU up to step ${k + 1}…`;
    let parts;
    try {
        parts = await inspectorOf(row.entry).inspectStep(opts, image, k, {
            signal: ctl.signal,
            onProgress: (done, of) => {
                if (!ctl.signal.aborted) status.textContent = `Re-running image ${image + 1} on the CPU: step ${done} of ${of}…`;
            },
        });
    } catch (e) {
        if (isAbort(e) || ctl.signal.aborted) return;
        const err = fromEngineError(e, "Looking inside the step failed");
        status.textContent = err.message;
        return;
    }
    if (ctl.signal.aborted) return;
    const [, c, h, w] = row.shape;
    for (const [key, caption, how] of PARTS) {
        const v = parts[key];
        const sd = std(v);
        const canvas = pg.el["ins-parts"].querySelector(`canvas[data-part="${key}"]`);
        const shown = how === "noise" ? scaled(v, 3 * sd) : v;
        drawGrid(canvas, quantize(shown), [1, c, h, w], 0);
        canvas.setAttribute("aria-label", `${caption.replace(/<[^>]+>/g, "")}: standard deviation ${sd.toFixed(3)}`);
        pg.el["ins-parts"].querySelector(`[data-std="${key}"]`).textContent = how === "noise" ? `std ${sd.toFixed(3)}, shown at ±3 std` : `std ${sd.toFixed(3)}`;
    }
    pg.el["ins-eq"].innerHTML = equationHtml(parts, row, k);
    pg.inside = { step: k, image, parts };
    status.textContent = `Step ${k + 1} of ${row.steps} (t = ${fmtT(parts.timestep)}) of image ${image + 1}, re-run on the CPU in ${fmtMs(performance.now() - started)}.`;
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
    const out = new Float32Array(v.length);
    if (by > 0) for (let i = 0; i < v.length; i++) out[i] = v[i] / by;
    return out;
}

const fmtT = (t) => (Number.isInteger(t) ? String(t) : t.toFixed(2));
const num = (v) => (v === 0 ? "0" : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(3) : v.toFixed(4));

/** The step's equations with its numbers: how x0-hat follows from the model output, and
 *  the update x' = c.x x_t + c.x0 x0-hat + c.eps eps-hat + c.prevX0 x0-hat' + sigma z. */
export function equationHtml(parts, row, k) {
    const c = parts.coefficients;
    const sampler = row.settings.sampler;
    const flow = !!row.entry.isFlow;
    const next = k + 1 < row.steps ? "x<sub>t′</sub>" : "x<sub>0</sub>";
    const ab = parts.alphaBar, abPrev = parts.alphaBarPrev;
    const lines = [];
    const w = row.settings.guidance;
    const guided = w === 0 ? "the unconditional prediction (w = 0)" : w === 1 ? "the conditional prediction (w = 1)" : `ε̂ = ε̂<sub>∅</sub> + ${w} (ε̂<sub>c</sub> − ε̂<sub>∅</sub>) (classifier-free guidance, w = ${w})`;
    if (flow) {
        const s = Math.sqrt(1 - ab) / (Math.sqrt(ab) + Math.sqrt(1 - ab));
        lines.push(`t = ${fmtT(parts.timestep)}: s = ${num(s)}. The network predicts the velocity v̂ = ε − x<sub>0</sub>; ${guided.replace(/ε̂/g, "v̂")}.`);
        lines.push(`x̂<sub>0</sub> = x<sub>t</sub> − s v̂ and ε̂ = x<sub>t</sub> + (1 − s) v̂.`);
    } else {
        lines.push(`t = ${fmtT(parts.timestep)}: ᾱ<sub>t</sub> = ${num(ab)}, the step lands where ᾱ = ${num(abPrev)}. The model output: ${guided}.`);
        const clip = c.clip != null ? `, clipped to ±${c.clip}` : "";
        lines.push(`x̂<sub>0</sub> = (x<sub>t</sub> − √(1 − ᾱ<sub>t</sub>) ε̂) / √ᾱ<sub>t</sub> = (x<sub>t</sub> − ${num(Math.sqrt(1 - ab))} ε̂) / ${num(Math.sqrt(ab))}${clip}.`);
    }
    const terms = [
        [c.x, "x<sub>t</sub>"],
        [c.x0, "x̂<sub>0</sub>"],
        [c.eps, "ε̂"],
        [c.prevX0, sampler === "flow_heun" ? "x̂<sub>0</sub><sup>pred</sup> (the predictor's, Heun's corrector)" : "x̂<sub>0</sub><sup>prev</sup> (the previous step's, DPM-Solver++'s second order)"],
    ].filter(([v]) => v !== 0);
    const mean = terms.map(([v, name], i) => `${i === 0 ? (v < 0 ? "−" : "") : v < 0 ? " − " : " + "}${num(Math.abs(v))} ${name}`).join("") || "0";
    const meanName = sampler === "ddpm" ? "μ̃ (the posterior mean)" : "the mean";
    lines.push(`${meanName} = ${mean}.`);
    lines.push(c.noise !== 0 ? `${next} = mean + σ z with σ = ${num(c.noise)} and z ~ N(0, I) (drawn from the seed).` : `${next} = the mean: this step adds no noise (σ = 0).`);
    return lines.map((l) => `<p>${l}</p>`).join("");
}

/** Forgets what the panel showed (a new run started). */
export function resetInside(pg) {
    if (!pg.controls.has("inside")) return;
    pg.insideAbort?.abort();
    clearTimeout(pg.insideTimer);
    pg.inside = null;
    pg.el["ins-go"].disabled = true;
}
