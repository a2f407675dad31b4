// The output panel: the live preview (one grid, or one labelled row per compared value),
// progress, status and timing, the shared step scrubber, and the PNG / filmstrip downloads.

import { drawGrid, gridGeometry, paintImages } from "../engine.js";
import { esc, fmtMs } from "../settings.js";

export const OUTPUT_IDS = ["single", "canvas", "rows", "progress", "status", "engine", "warning", "timing", "restart", "scrub", "scrub-out", "download", "filmstrip"];

/** `extra`: more HTML at the end of the section (the page's share panel). */
export function outputHtml(pg, extra = "") {
    const c = pg.controls;
    const hide = (name) => (c.has(name) ? "" : " hidden");
    return `
<section class="dp-output" aria-label="Result">
  <fieldset class="dp-view"${hide("view")}>
    <legend class="dp-sr">Show</legend>
    <label><input type="radio" name="view-${pg.id}" value="xt"> noisy x<sub>t</sub></label>
    <label><input type="radio" name="view-${pg.id}" value="x0"> predicted x̂<sub>0</sub></label>
  </fieldset>
  <div class="dp-canvas-wrap" id="single" tabindex="0" role="group" aria-label="Preview (Space plays or pauses)">
    <canvas id="canvas" width="30" height="30" role="img" aria-label="Sampled images (none yet)"></canvas>
  </div>
  <div class="dp-rows" id="rows" tabindex="0" role="group" aria-label="Compared runs (Space plays or pauses)" hidden></div>
  <progress id="progress" max="1" value="0" aria-label="Progress"></progress>
  <p id="status" class="dp-status" role="status" aria-live="polite" data-state="loading">Starting the engine…</p>
  <p id="engine" class="dp-engine"></p>
  <p id="warning" class="dp-warning" role="note" hidden></p>
  <p id="timing" class="dp-timing" aria-live="off"></p>
  <button type="button" id="restart" hidden>Restart the GPU</button>
  <div class="dp-field dp-range dp-scrub"${hide("scrubber")}>
    <label for="scrub">Replay step</label>
    <input type="range" id="scrub" min="0" max="0" value="0" disabled>
    <output id="scrub-out" for="scrub"></output>
  </div>
  <div class="dp-buttons"${hide("download")}>
    <button type="button" id="download" disabled>Download PNG</button>
    <button type="button" id="filmstrip" disabled title="Every stored step of the first image: x_t above, x̂₀ below">Filmstrip PNG</button>
  </div>${extra}
</section>`;
}

export function wireOutput(pg) {
    const e = pg.el;
    for (const r of e.views) {
        r.addEventListener("change", () => {
            pg.settings.view = r.value;
            pg.o.onChange?.(pg.settings);
            redraw(pg);
        });
    }
    e.scrub.addEventListener("input", () => showScrubbed(pg));
    e.download.addEventListener("click", () => download(pg));
    e.filmstrip.addEventListener("click", () => filmstrip(pg));
}

/** Lays out the output for `rows` (one per compared value; a single run is one row without
 *  a caption) before a run starts. */
export function layoutRows(pg, rows) {
    const e = pg.el;
    const compare = rows.length > 1 || rows[0]?.value != null;
    e.single.hidden = compare;
    e.rows.hidden = !compare;
    if (!compare) {
        rows[0].canvas = e.canvas;
        return;
    }
    e.rows.replaceChildren(
        ...rows.map((row, i) => {
            const fig = document.createElement("figure");
            fig.className = "dp-cmp-row";
            fig.dataset.row = String(i);
            fig.innerHTML = `<figcaption><b class="dp-cmp-value">${esc(row.caption)}</b> <span class="dp-cmp-ms">waiting</span></figcaption><canvas role="img" aria-label="${esc(row.caption)}: not sampled yet"></canvas>`;
            row.canvas = fig.querySelector("canvas");
            row.msEl = fig.querySelector(".dp-cmp-ms");
            return fig;
        }),
    );
}

/** A compared row's caption after its run: its value and how long it took. */
export function finishRow(row, text) {
    if (row.msEl) row.msEl.textContent = text;
    if (row.canvas && row.msEl) row.canvas.setAttribute("aria-label", `${row.caption}, ${text}`);
}

/** Draws one stored frame of `row` with the current view (x_t or x̂0). */
export function drawFrame(pg, row, frame) {
    const bytes = pg.settings.view === "x0" ? frame.x0 : frame.xt;
    if (row.canvas === pg.el.canvas) drawGrid(row.canvas, bytes, row.shape);
    else drawStrip(row.canvas, bytes, row.shape);
    row.shown = frame;
    pg.frameShown?.(row, frame);
}

export function redraw(pg) {
    for (const row of pg.rows ?? []) if (row.shown) drawFrame(pg, row, row.shown);
}

/** The stored frame of `row` nearest at or before fraction `f` of its run. */
function frameAt(row, f) {
    const target = Math.round(f * (row.steps - 1));
    let best = row.frames[0];
    for (const fr of row.frames) if (fr.step <= target) best = fr;
    return best;
}

/** Enables the scrubber over what the last run stored: frame by frame for one run, by
 *  fraction of the run (0..100 %) when compared runs have different step counts. */
export function enableScrubber(pg) {
    const rows = pg.rows ?? [];
    const s = pg.el.scrub;
    const any = rows.some((r) => r.frames.length);
    s.disabled = !any;
    if (!any) return;
    pg.scrubByFraction = rows.length > 1;
    s.max = pg.scrubByFraction ? 100 : Math.max(0, rows[0].frames.length - 1);
    s.value = s.max;
    showScrubbed(pg);
}

export function showScrubbed(pg) {
    const rows = pg.rows ?? [];
    const v = Number(pg.el.scrub.value);
    let text;
    if (pg.scrubByFraction) {
        for (const row of rows) {
            const f = row.frames.length ? frameAt(row, v / 100) : null;
            if (!f) continue;
            drawFrame(pg, row, f);
            finishRow(row, `${row.ms != null ? fmtMs(row.ms) : "stopped"} · step ${f.step + 1} of ${row.steps} (t = ${f.timestep})`);
        }
        text = `${v} % of each run`;
    } else {
        const row = rows[0];
        const f = row?.frames[v];
        if (!f) return;
        drawFrame(pg, row, f);
        text = `step ${f.step + 1} of ${row.steps} (t = ${f.timestep})`;
    }
    pg.el["scrub-out"].value = text;
    pg.el.scrub.setAttribute("aria-valuetext", text);
    pg.o.onScrub?.(v);
}

/** Images [n, c, h, w] (bytes) side by side in one row, with the grid's gap. */
export function drawStrip(canvas, bytes, [n, c, h, w], gap = 2) {
    const width = n * (w + gap) + gap, height = h + 2 * gap;
    if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
    }
    const img = new ImageData(width, height);
    paintImages(img, bytes, [n, c, h, w], (i) => [gap + i * (w + gap), gap]);
    canvas.getContext("2d").putImageData(img, 0, 0);
}

function fileName(pg, suffix) {
    const s = pg.lastResult?.settings ?? pg.settings;
    const cmp = s.compare ? `-compare-${s.compare}` : "";
    return `${pg.loaded?.name ?? "diffusion"}-label${s.label}-${s.sampler}${s.steps}-w${s.guidance}-seed${s.seed}${cmp}${suffix}.png`.replace(/[^\w.-]+/g, "_");
}

function save(canvas, name) {
    canvas.toBlob((blob) => {
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = name;
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    }, "image/png");
}

/** Scales `src` by a whole factor (crisp pixels) to about `target` pixels on its long side. */
function upscale(src, target) {
    const scale = Math.max(1, Math.floor(target / Math.max(src.width, src.height)));
    const out = document.createElement("canvas");
    out.width = src.width * scale;
    out.height = src.height * scale;
    const ctx = out.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, 0, 0, out.width, out.height);
    return out;
}

/** The picture as shown: the grid, or every compared row stacked. */
function download(pg) {
    const rows = pg.rows ?? [];
    if (rows.length <= 1 && pg.el.rows.hidden) {
        save(upscale(pg.el.canvas, 512), fileName(pg, ""));
        return;
    }
    const gap = 2;
    const width = Math.max(...rows.map((r) => r.canvas.width));
    const out = document.createElement("canvas");
    out.width = width;
    out.height = rows.reduce((a, r) => a + r.canvas.height, 0) + gap * (rows.length - 1);
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#181818";
    ctx.fillRect(0, 0, out.width, out.height);
    let y = 0;
    for (const r of rows) {
        ctx.drawImage(r.canvas, 0, y);
        y += r.canvas.height + gap;
    }
    save(upscale(out, 1024), fileName(pg, ""));
}

/** The stored frames of the first image of every row: x_t above x̂0, one column per
 *  stored step (at most 50, evenly picked), one pair of strips per compared row. */
export function filmstripCanvas(pg) {
    const rows = (pg.rows ?? []).filter((r) => r.frames.length);
    if (!rows.length) return null;
    const [, c, h, w] = rows[0].shape;
    const gap = 2;
    const cols = Math.min(50, Math.max(...rows.map((r) => r.frames.length)));
    const img = new ImageData(cols * (w + gap) + gap, rows.length * 2 * (h + gap) + gap);
    for (let i = 0; i < img.data.length; i += 4) {
        img.data[i] = img.data[i + 1] = img.data[i + 2] = 24;
        img.data[i + 3] = 255;
    }
    rows.forEach((row, r) => {
        const n = Math.min(cols, row.frames.length);
        for (let j = 0; j < n; j++) {
            const f = row.frames[n === 1 ? 0 : Math.round((j * (row.frames.length - 1)) / (n - 1))];
            const x = gap + j * (w + gap);
            const y = gap + r * 2 * (h + gap);
            paintImages(img, f.xt, [1, c, h, w], () => [x, y]);
            paintImages(img, f.x0, [1, c, h, w], () => [x, y + h + gap]);
        }
    });
    const cv = document.createElement("canvas");
    cv.width = img.width;
    cv.height = img.height;
    cv.getContext("2d").putImageData(img, 0, 0);
    return cv;
}

function filmstrip(pg) {
    const cv = filmstripCanvas(pg);
    if (cv) save(upscale(cv, 2048), fileName(pg, "-filmstrip"));
}

export { gridGeometry };
