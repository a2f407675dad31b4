// The forward-process panel q(x_t | x_0): the first image of the last run noised in closed
// form at a chosen t, and the signal and noise levels of the model's schedule. The levels
// are the engine's exact coefficients (`forwardCoefficients`): sqrt(abar), sqrt(1 - abar)
// for a diffusion model, 1 - s and s (s = t / T after the shift) for a flow-matching one,
// whose x_s = (1 - s) x0 + s eps is not variance-preserving.

import { drawGrid, gaussian, quantize } from "../engine.js";

export const FORWARD_IDS = ["fwd-x0", "fwd-xt", "fwd-chart", "fwd-t", "fwd-t-out", "fwd-levels", "fwd-formula", "fwd-key"];

const DIFFUSION_FORMULA =
    "Noise is added in closed form: x<sub>t</sub> = √ᾱ<sub>t</sub> x<sub>0</sub> + √(1 − ᾱ<sub>t</sub>) ε, with ᾱ<sub>t</sub> from the model's own schedule (scheduler_config.json). x<sub>0</sub> is the first image of the last run.";
const FLOW_FORMULA =
    "Flow matching mixes image and noise on a straight line: x<sub>t</sub> = (1 − s) x<sub>0</sub> + s ε with s = t / T (after the shift in scheduler_config.json). x<sub>0</sub> is the first image of the last run.";
const DIFFUSION_KEY = '<span class="dp-key-signal">signal √ᾱ<sub>t</sub></span> · <span class="dp-key-noise">noise √(1−ᾱ<sub>t</sub>)</span>';
const FLOW_KEY = '<span class="dp-key-signal">signal 1 − s</span> · <span class="dp-key-noise">noise s</span>';

export function forwardHtml(pg) {
    const hidden = pg.controls.has("forward") ? "" : " hidden";
    return `
<section class="dp-forward"${hidden} aria-labelledby="fwd-title-${pg.id}">
  <h2 id="fwd-title-${pg.id}">The forward process q(x<sub>t</sub> | x<sub>0</sub>)</h2>
  <p class="dp-help" id="fwd-formula">${DIFFUSION_FORMULA}</p>
  <div class="dp-fwd-row">
    <figure><canvas id="fwd-x0" width="28" height="28" role="img" aria-label="x0: the clean image"></canvas><figcaption>x<sub>0</sub></figcaption></figure>
    <figure><canvas id="fwd-xt" width="28" height="28" role="img" aria-label="x_t: the noised image"></canvas><figcaption>x<sub>t</sub></figcaption></figure>
    <figure class="dp-chart"><canvas id="fwd-chart" width="240" height="120" role="img" aria-label="Signal and noise levels over t"></canvas><figcaption id="fwd-key">${DIFFUSION_KEY}</figcaption></figure>
  </div>
  <div class="dp-field dp-range">
    <label for="fwd-t">t</label>
    <input type="range" id="fwd-t" min="0" max="999" value="300" disabled aria-describedby="fwd-levels">
    <output id="fwd-t-out" for="fwd-t"></output>
  </div>
  <p id="fwd-levels" class="dp-levels" aria-live="polite"></p>
</section>`;
}

export function wireForward(pg) {
    pg.el["fwd-t"].addEventListener("input", () => drawForward(pg));
}

export function setupForward(pg) {
    if (!pg.controls.has("forward") || !pg.loaded) return;
    const T = pg.loaded.alphas.length;
    const flow = !!pg.loaded.isFlow;
    pg.el["fwd-formula"].innerHTML = flow ? FLOW_FORMULA : DIFFUSION_FORMULA;
    pg.el["fwd-key"].innerHTML = flow ? FLOW_KEY : DIFFUSION_KEY;
    const t = pg.el["fwd-t"];
    t.max = T - 1;
    if (Number(t.value) > T - 1) t.value = Math.floor((T - 1) * 0.3);
    drawChart(pg);
    drawForward(pg);
}

export function drawForward(pg) {
    if (!pg.controls.has("forward") || !pg.loaded) return;
    const { signal: sig, noise: noi } = pg.loaded.forward;
    const t = Math.min(sig.length - 1, Number(pg.el["fwd-t"].value));
    const signal = sig[t], noise = noi[t];
    const snr = (signal * signal) / (noise * noise);
    const snrText = !Number.isFinite(snr) ? "∞" : snr < 0.01 ? snr.toExponential(1) : snr.toPrecision(3);
    const text = pg.loaded.isFlow
        ? `t = ${t}: s = ${noise.toFixed(3)}, signal 1 − s = ${signal.toFixed(3)}, noise s = ${noise.toFixed(3)}, SNR = ${snrText}`
        : `t = ${t}: ᾱ = ${(signal * signal).toPrecision(4)}, signal √ᾱ = ${signal.toFixed(3)}, noise √(1−ᾱ) = ${noise.toFixed(3)}, SNR = ${snrText}`;
    pg.el["fwd-t-out"].value = `t = ${t}`;
    pg.el["fwd-t"].setAttribute("aria-valuetext", text);
    pg.el["fwd-levels"].textContent = text;
    drawChart(pg, t);
    const r = pg.lastResult;
    pg.el["fwd-t"].disabled = !r;
    if (!r) {
        pg.el["fwd-levels"].textContent = `${text}. Sample an image to see it noised.`;
        return;
    }
    const [, c, h, w] = r.shape;
    const x0 = r.x.subarray(0, c * h * w);
    if (!pg.eps || pg.eps.length !== x0.length || pg.epsSeed !== r.settings.seed) {
        const g = gaussian(r.settings.seed + 12345);
        pg.eps = Float32Array.from({ length: x0.length }, g);
        pg.epsSeed = r.settings.seed;
    }
    const xt = new Float32Array(x0.length);
    for (let i = 0; i < xt.length; i++) xt[i] = signal * x0[i] + noise * pg.eps[i];
    drawGrid(pg.el["fwd-x0"], quantize(x0), [1, c, h, w], 0);
    drawGrid(pg.el["fwd-xt"], quantize(xt), [1, c, h, w], 0);
}

function drawChart(pg, tMark) {
    const cv = pg.el["fwd-chart"];
    const ctx = cv.getContext("2d");
    const { signal, noise } = pg.loaded.forward;
    const T = signal.length;
    const W = cv.width, H = cv.height, pad = 6;
    ctx.clearRect(0, 0, W, H);
    ctx.lineWidth = 2;
    for (const [values, color] of [
        [signal, "#2f81f7"],
        [noise, "#e5534b"],
    ]) {
        ctx.strokeStyle = color;
        ctx.beginPath();
        for (let i = 0; i < W - 2 * pad; i++) {
            const t = Math.round((i / (W - 2 * pad - 1)) * (T - 1));
            const y = H - pad - Math.min(1, Math.max(0, values[t])) * (H - 2 * pad);
            i ? ctx.lineTo(pad + i, y) : ctx.moveTo(pad + i, y);
        }
        ctx.stroke();
    }
    if (tMark !== undefined) {
        const x = pad + (tMark / (T - 1)) * (W - 2 * pad - 1);
        ctx.strokeStyle = "#888";
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.moveTo(x, 0);
        ctx.lineTo(x, H);
        ctx.stroke();
    }
}
