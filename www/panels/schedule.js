// The schedule panel: the model's noise schedule over the training timesteps (alpha_bar_t,
// log-SNR, beta_t), ticks at the timesteps the current run visits, each step's sigma, and a
// marker on the step the output shows (live during a run, then wherever the scrubber is).
// The numbers come from the engine's `schedule(options)` with the run's own options, so
// spacing, steps, sampler, eta and variance are reflected exactly as the sampler uses them.

const NS = "http://www.w3.org/2000/svg";
// The plot's geometry in SVG user units (the SVG scales to the panel's width).
const W = 640, H = 270, L = 46, R = 50, TOP = 12, B = 50;
const PW = W - L - R, PH = H - TOP - B;

export const SCHEDULE_IDS = ["sched", "sched-svg", "sched-levels", "sched-caption", "sched-bscale"];

export function scheduleHtml(pg) {
    const hidden = pg.controls.has("schedule") ? "" : " hidden";
    return `
<section class="dp-schedule" id="sched"${hidden} aria-labelledby="sched-title-${pg.id}">
  <h2 id="sched-title-${pg.id}">The noise schedule and the steps this run visits</h2>
  <figure>
    <svg id="sched-svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="Noise schedule (drawn once the model is loaded)" aria-describedby="sched-caption" preserveAspectRatio="xMidYMid meet"></svg>
    <figcaption id="sched-caption">
      <span class="dp-key-abar">ᾱ<sub>t</sub> (left axis)</span> ·
      <span class="dp-key-beta">β<sub>t</sub> ÷ <span id="sched-bscale">its 95th percentile</span> (left axis, clipped at 1)</span> ·
      <span class="dp-key-lsnr">log-SNR = ln(ᾱ<sub>t</sub> / (1 − ᾱ<sub>t</sub>)) (right axis)</span> ·
      <span class="dp-key-sigma">σ of each step's added noise (dots, left axis)</span> ·
      <span class="dp-key-visit">ticks under the axis: the timesteps the run visits</span>
    </figcaption>
  </figure>
  <p id="sched-levels" class="dp-levels" aria-live="off"></p>
</section>`;
}

function el(name, attrs = {}, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text != null) e.textContent = text;
    return e;
}

const fmt = (v) => (v === 0 ? "0" : !Number.isFinite(v) ? (v > 0 ? "∞" : "−∞") : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(2) : v.toPrecision(4));

/** ln(a / (1 - a)): +inf at a = 1 and -inf at a = 0, which a flow-matching model's
 *  variance-preserving equivalent reaches at its ends (s = 0 and s = 1). */
const logSnr = (a) => Math.log(a / (1 - a));
/** The log-SNR axis: the finite values' range, at most +-LSNR_CAP (a flow model's first
 *  training step has log-SNR ~ +14 and its s = 1 end -inf); values past it are drawn at its
 *  edge, never as NaN or infinity. */
const LSNR_CAP = 20;
function lsnrRange(values) {
    const finite = values.filter(Number.isFinite);
    if (!finite.length) return [-5, 5];
    const lo = Math.max(-LSNR_CAP, Math.floor(Math.min(...finite) / 5) * 5);
    const hi = Math.min(LSNR_CAP, Math.ceil(Math.max(...finite) / 5) * 5);
    return lo < hi ? [lo, hi] : [lo - 5, hi + 5];
}

/** Asks the engine for the schedule of a run of `settings` on `entry` (a compared model's
 *  row runs on its own) and redraws; a later call wins over an earlier one still in flight
 *  (the CPU backend answers from a worker). */
export async function refreshSchedule(pg, settings, entry = pg.loaded) {
    if (!pg.controls.has("schedule") || !pg.loaded || !entry) return;
    const token = (pg.schedToken = (pg.schedToken ?? 0) + 1);
    const own = pg.loaded;
    let sched;
    try {
        sched = await entry.model.schedule(pg.options(settings, entry));
    } catch (e) {
        if (token !== pg.schedToken) return;
        pg.sched = null;
        pg.el.sched.dataset.ticks = "0";
        pg.el["sched-levels"].textContent = `No schedule for these settings: ${e?.message ?? e}`;
        return;
    }
    if (token !== pg.schedToken || pg.loaded !== own) return;
    pg.sched = { ...sched, settings, flow: !!entry.isFlow };
    drawSchedule(pg);
    markSchedule(pg, pg.schedStep ?? 0);
}

/** Draws the curves, axes, visited ticks and sigma dots of `pg.sched`. */
export function drawSchedule(pg) {
    const s = pg.sched, svg = pg.el["sched-svg"];
    const a = s.alphasCumprod, beta = s.betas, T = a.length;
    const ts = Array.from(s.timesteps);
    // A flow model's timesteps are s T, up to T itself (s = 1): clamp onto the axis.
    const x = (t) => L + Math.min(1, Math.max(0, t / Math.max(1, T - 1))) * PW;
    const yl = (v) => TOP + (1 - Math.min(1, Math.max(0, Number.isFinite(v) ? v : 1))) * PH;
    const lsnr = Array.from(a, logSnr);
    const [lo, hi] = lsnrRange(lsnr);
    const yr = (v) => TOP + ((hi - Math.min(hi, Math.max(lo, v))) / (hi - lo || 1)) * PH;
    // beta on its own scale: divided by its 95th percentile and clipped at 1, because a
    // cosine schedule's last betas (clipped at 0.999) would flatten every other one to 0.
    const bscale = [...beta].filter(Number.isFinite).sort((p, q) => p - q)[Math.floor(0.95 * (T - 1))] || 1;
    const kids = [];
    // Frame and grid.
    kids.push(el("rect", { x: L, y: TOP, width: PW, height: PH, class: "dp-sched-frame" }));
    for (let i = 0; i <= 4; i++) {
        const v = i / 4, y = yl(v);
        kids.push(el("line", { x1: L, x2: L + PW, y1: y, y2: y, class: "dp-sched-grid" }));
        kids.push(el("text", { x: L - 5, y: y + 4, "text-anchor": "end", class: "dp-sched-tick" }, v.toFixed(2)));
    }
    for (let v = lo; v <= hi; v += 5) {
        kids.push(el("text", { x: L + PW + 5, y: yr(v) + 4, "text-anchor": "start", class: "dp-sched-tick dp-key-lsnr" }, String(v)));
    }
    for (let i = 0; i <= 4; i++) {
        const t = Math.min(T - 1, Math.round((i / 4) * T));
        kids.push(el("text", { x: x(t), y: TOP + PH + 24, "text-anchor": "middle", class: "dp-sched-tick" }, String(t)));
    }
    kids.push(el("text", { x: L + PW / 2, y: H - 6, "text-anchor": "middle", class: "dp-sched-axis" }, "t (training timestep; sampling runs right to left)"));
    kids.push(el("text", { x: 12, y: TOP + PH / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${TOP + PH / 2})`, class: "dp-sched-axis" }, "ᾱ, β (scaled), σ"));
    kids.push(el("text", { x: W - 8, y: TOP + PH / 2, "text-anchor": "middle", transform: `rotate(90 ${W - 8} ${TOP + PH / 2})`, class: "dp-sched-axis dp-key-lsnr" }, "log-SNR"));
    // The curves, one point per timestep.
    const path = (f, cls) => el("polyline", { points: Array.from({ length: T }, (_, t) => `${x(t).toFixed(1)},${f(t).toFixed(1)}`).join(" "), class: cls });
    kids.push(path((t) => yl(a[t]), "dp-sched-abar"));
    // (a flow model's last "beta" is 1: its equivalent alpha_bar reaches 0 there)
    kids.push(path((t) => yl(beta[t] / bscale), "dp-sched-beta"));
    kids.push(path((t) => yr(lsnr[t]), "dp-sched-lsnr"));
    // The visited timesteps: ticks under the axis and each step's sigma as a dot (clamped
    // at the top of the axis: Euler ancestral's sigma lives in its own, larger, scale).
    const visits = el("g", { class: "dp-sched-visits" });
    for (const t of ts) visits.append(el("line", { x1: x(t), x2: x(t), y1: TOP + PH, y2: TOP + PH + 9 }));
    const dots = el("g", { class: "dp-sched-sigma" });
    ts.forEach((t, k) => dots.append(el("circle", { cx: x(t), cy: yl(s.sigma[k]), r: s.sigma[k] > 1 ? 4 : 3 })));
    kids.push(visits, dots);
    // The marker on the shown step.
    pg.schedMarker = el("g", { class: "dp-sched-marker" });
    pg.schedMarker.append(el("line", { y1: TOP, y2: TOP + PH + 9 }), el("circle", { r: 4.5 }));
    kids.push(pg.schedMarker);
    svg.replaceChildren(...kids);
    pg.el["sched-bscale"].textContent = `${fmt(bscale)} (its 95th percentile)`;
    const sec = pg.el.sched;
    sec.dataset.ticks = String(ts.length);
    sec.dataset.timesteps = ts.join(",");
    sec.dataset.sampler = s.sampler;
    sec.dataset.lsnrRange = `${lo},${hi}`;
    const first = ts[0], last = ts[ts.length - 1];
    const kind = s.flow ? " (flow matching: ᾱ is the variance-preserving equivalent of x_s = (1 − s) x₀ + s ε, s = t / T)" : "";
    svg.setAttribute(
        "aria-label",
        `Noise schedule over t = 0 to ${T - 1}${kind}: ᾱ falls from ${fmt(a[0])} to ${fmt(a[T - 1])}, log-SNR from ${fmt(lsnr[0])} to ${fmt(lsnr[T - 1])}. ` +
            `This ${s.sampler} run visits ${ts.length} timestep${ts.length > 1 ? "s" : ""}, from t = ${first} down to t = ${last}.`,
    );
}

/** Moves the marker to step `k` of the scheduled run and writes its numbers. */
export function markSchedule(pg, k) {
    pg.schedStep = k;
    const s = pg.sched;
    if (!s || !pg.schedMarker) return;
    const n = s.timesteps.length;
    const i = Math.min(n - 1, Math.max(0, k));
    const t = s.timesteps[i], T = s.alphasCumprod.length;
    const x = L + Math.min(1, Math.max(0, t / Math.max(1, T - 1))) * PW;
    const y = TOP + (1 - Math.min(1, Math.max(0, s.alphaBar[i]))) * PH;
    const [line, dot] = pg.schedMarker.children;
    line.setAttribute("x1", x);
    line.setAttribute("x2", x);
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", y);
    pg.el.sched.dataset.markerStep = String(i);
    pg.el.sched.dataset.markerT = String(t);
    const l = logSnr(s.alphaBar[i]);
    pg.el["sched-levels"].textContent =
        `Step ${i + 1} of ${n}: t = ${t}, ᾱ_t = ${fmt(s.alphaBar[i])} (log-SNR ${Number.isFinite(l) ? l.toFixed(2) : fmt(l)}), ` +
        `lands on ᾱ = ${fmt(s.alphaBarPrev[i])}, σ = ${fmt(s.sigma[i])}`;
}
