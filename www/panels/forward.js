// The forward-process panel q(x_t | x_0): the first image of the last run noised in closed
// form at a chosen t, and the signal and noise levels of the model's schedule. The levels
// are the engine's exact coefficients (`forwardCoefficients`): sqrt(abar), sqrt(1 - abar)
// for a diffusion model, 1 - s and s (s = t / T after the shift) for a flow-matching one,
// whose x_s = (1 - s) x0 + s eps is not variance-preserving.

import { drawGrid, fromEngineError, gaussian, inspectorOf, quantize } from "../engine.js";
import { fmtMs } from "../settings.js";

export const FORWARD_IDS = ["fwd-x0", "fwd-xt", "fwd-chart", "fwd-t", "fwd-t-out", "fwd-levels", "fwd-formula", "fwd-key", "fwd-loss", "fwd-loss-go", "fwd-loss-text"];

// The loss curve's timesteps: evenly spaced over 0..T-1 (one forward each, on the CPU).
const LOSS_POINTS = 50;
const TARGET_NAMES = { epsilon: "ε", v: "v", sample: "x<sub>0</sub>", velocity: "the velocity ε − x<sub>0</sub>" };

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
    <figure class="dp-chart"><canvas id="fwd-loss" width="240" height="120" role="img" aria-label="The denoising loss over t (not measured yet)"></canvas><figcaption>denoising loss over t (log scale)</figcaption></figure>
  </div>
  <div class="dp-field dp-range">
    <label for="fwd-t">t</label>
    <input type="range" id="fwd-t" min="0" max="999" value="300" disabled aria-describedby="fwd-levels">
    <output id="fwd-t-out" for="fwd-t"></output>
  </div>
  <p id="fwd-levels" class="dp-levels" aria-live="polite"></p>
  <div class="dp-ins-form">
    <button type="button" id="fwd-loss-go" disabled>Measure the loss over t</button>
    <span id="fwd-loss-text" class="dp-help" role="status"></span>
  </div>
  <p class="dp-help">The loss curve is what training minimised: the network's error at each noise level for this x<sub>0</sub> and this ε, ||target − prediction||² / d at 50 timesteps (its average over t is the training loss; for an ε model each term is the ELBO's L<sub>t−1</sub> up to a weight).</p>
</section>`;
}

export function wireForward(pg) {
    pg.el["fwd-t"].addEventListener("input", () => drawForward(pg));
    pg.el["fwd-loss-go"].addEventListener("click", () => measureLoss(pg));
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
    const input = lossInput(pg);
    pg.el["fwd-loss-go"].disabled = !input || pg.measuringLoss;
    drawLoss(pg, t, input);
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

/** The image and noise the panel shows, and the class it was sampled with: what the loss
 *  curve is measured on (a key tells whether a measured curve is still this one's). */
function lossInput(pg) {
    const r = pg.lastResult;
    const entry = pg.rows?.[0]?.entry ?? pg.loaded;
    if (!r || !entry?.model) return null;
    const [, c, h, w] = r.shape;
    const x0 = r.x.slice(0, c * h * w);
    // The image is the first row's (a compared label or seed is that row's).
    const s = r.rows?.[0]?.settings ?? r.settings;
    const label = pg.options(s, entry).classes?.[0];
    return { entry, x0, label, key: `${entry.url}|${s.seed}|${label}|${x0.slice(0, 8).join(",")}` };
}

async function measureLoss(pg) {
    const input = lossInput(pg);
    if (!input || !pg.eps) return;
    const T = input.entry.alphas.length;
    const ts = Array.from({ length: LOSS_POINTS }, (_, i) => Math.round((i * (T - 1)) / (LOSS_POINTS - 1)));
    const text = pg.el["fwd-loss-text"];
    pg.measuringLoss = true;
    pg.el["fwd-loss-go"].disabled = true;
    text.textContent = `Measuring: ${LOSS_POINTS} forward passes of the network on the CPU…`;
    const started = performance.now();
    try {
        const { loss, target } = await inspectorOf(input.entry).lossCurve(input.x0, input.label, ts, pg.eps);
        pg.lossCurve = { key: input.key, ts, loss, target, T };
        const mean = loss.reduce((a, b) => a + b, 0) / loss.length;
        text.innerHTML = `Target ${TARGET_NAMES[target] ?? target}. Mean over t: ${mean.toFixed(4)} (${LOSS_POINTS} timesteps, ${fmtMs(performance.now() - started)} on the CPU). The marker follows t.`;
    } catch (e) {
        text.textContent = fromEngineError(e, "Measuring the loss failed").message;
    } finally {
        pg.measuringLoss = false;
        pg.el["fwd-loss-go"].disabled = !lossInput(pg);
    }
    drawForward(pg);
}

/** The measured curve (when it is still the one of `input`, the shown image's) with a marker
 *  at t, and its value at t (interpolated along the plotted log line) in the levels line. */
function drawLoss(pg, tMark, input) {
    const cv = pg.el["fwd-loss"];
    const ctx = cv.getContext("2d");
    const W = cv.width, H = cv.height, pad = 6;
    ctx.clearRect(0, 0, W, H);
    const lc = pg.lossCurve;
    if (!lc || !input || lc.key !== input.key) {
        cv.setAttribute("aria-label", "The denoising loss over t (not measured yet)");
        return;
    }
    const logs = lc.loss.map((l) => Math.log10(Math.max(l, 1e-6)));
    const lo = Math.floor(Math.min(...logs)), hi = Math.ceil(Math.max(...logs));
    const span = Math.max(1, hi - lo);
    const x = (t) => pad + (t / (lc.T - 1)) * (W - 2 * pad);
    const y = (g) => H - pad - ((g - lo) / span) * (H - 2 * pad);
    ctx.strokeStyle = "#8884";
    ctx.fillStyle = "#888";
    ctx.font = "9px sans-serif";
    ctx.lineWidth = 1;
    for (let g = lo; g <= hi; g++) {
        ctx.beginPath();
        ctx.moveTo(pad, y(g));
        ctx.lineTo(W - pad, y(g));
        ctx.stroke();
        ctx.fillText(`1e${g}`, pad + 1, g === hi ? y(g) + 9 : y(g) - 1);
    }
    ctx.strokeStyle = "#a371f7";
    ctx.lineWidth = 2;
    ctx.beginPath();
    lc.ts.forEach((t, i) => (i ? ctx.lineTo(x(t), y(logs[i])) : ctx.moveTo(x(t), y(logs[i]))));
    ctx.stroke();
    let at = lc.loss[0];
    for (let i = 1; i < lc.ts.length; i++) {
        if (lc.ts[i] >= tMark) {
            // Between the measured timesteps along the plotted (log) line.
            const f = (tMark - lc.ts[i - 1]) / (lc.ts[i] - lc.ts[i - 1]);
            at = 10 ** (logs[i - 1] + f * (logs[i] - logs[i - 1]));
            break;
        }
    }
    ctx.strokeStyle = "#888";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x(tMark), 0);
    ctx.lineTo(x(tMark), H);
    ctx.stroke();
    const what = `loss ${at.toPrecision(3)} at t = ${tMark}`;
    cv.setAttribute("aria-label", `The denoising loss over t, from ${Math.min(...lc.loss).toPrecision(2)} to ${Math.max(...lc.loss).toPrecision(2)}; ${what}`);
    pg.el["fwd-levels"].textContent += `; ${what}`;
}
