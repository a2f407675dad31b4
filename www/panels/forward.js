// The forward-process panel q(x_t | x_0): the first image of the last run noised in closed
// form at a chosen t, and the signal and noise levels of the model's schedule.

import { drawGrid, gaussian, quantize } from "../engine.js";

export const FORWARD_IDS = ["fwd-x0", "fwd-xt", "fwd-chart", "fwd-t", "fwd-t-out", "fwd-levels"];

export function forwardHtml(pg) {
    const hidden = pg.controls.has("forward") ? "" : " hidden";
    return `
<section class="dp-forward"${hidden} aria-labelledby="fwd-title-${pg.id}">
  <h2 id="fwd-title-${pg.id}">The forward process q(x<sub>t</sub> | x<sub>0</sub>)</h2>
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
}

export function wireForward(pg) {
    pg.el["fwd-t"].addEventListener("input", () => drawForward(pg));
}

export function setupForward(pg) {
    if (!pg.controls.has("forward") || !pg.loaded) return;
    const T = pg.loaded.alphas.length;
    const t = pg.el["fwd-t"];
    t.max = T - 1;
    if (Number(t.value) > T - 1) t.value = Math.floor((T - 1) * 0.3);
    drawChart(pg);
    drawForward(pg);
}

export function drawForward(pg) {
    if (!pg.controls.has("forward") || !pg.loaded) return;
    const a = pg.loaded.alphas;
    const t = Math.min(a.length - 1, Number(pg.el["fwd-t"].value));
    const at = a[t];
    const signal = Math.sqrt(at), noise = Math.sqrt(1 - at);
    const snr = at / (1 - at);
    const text = `t = ${t}: ᾱ = ${at.toPrecision(4)}, signal √ᾱ = ${signal.toFixed(3)}, noise √(1−ᾱ) = ${noise.toFixed(3)}, SNR = ${snr < 0.01 ? snr.toExponential(1) : snr.toPrecision(3)}`;
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
    const a = pg.loaded.alphas;
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
