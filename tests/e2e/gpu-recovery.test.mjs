// Recoverable GPU failures (WebGPU on SwiftShader), on the page and in two widgets sharing
// its engine and model: after a forced out-of-memory (engine.simulateOutOfMemory(): the
// next sizeable allocation fails as a real one would) a view says how many images did not
// fit and its next run works; after a forced device loss (engine.loseDevice()) the widgets
// restart the GPU by themselves (the page recovers with them: one engine per page) and all
// three sample again, with the weights read back from the Cache API and no reload.
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, withPage } from "./harness.mjs";
import { waitForState } from "./playground-helpers.mjs";

// One step, guidance 1 (one U-Net pass per image): SwiftShader compiles the pipelines once
// per device, most of a minute on a loaded machine, then runs a pass in about a second.
const PAGE = "model=digits&backend=webgpu&label=3&grid=1&steps=1&guidance=1&seed=2";
const WIDGETS = [
    { seed: "3", grid: "2" }, // two images: a new allocation after the page's one-image runs
    { seed: "4", grid: "1" },
];

/** Appends the two widgets; each counts its dp-result events and keeps its dp-error details. */
function addWidgets(page) {
    return page.evaluate(async (widgets) => {
        await import("./widget.js");
        for (const w of widgets) {
            const el = document.createElement("diffusion-playground");
            // eager: they sit below the page, further than the screen a lazy widget looks ahead.
            const attrs = { backend: "webgpu", model: "digits", label: "5", steps: "1", guidance: "1", autoplay: "eager", ...w };
            for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
            el.results = 0;
            el.errors = [];
            el.addEventListener("dp-result", () => el.results++);
            el.addEventListener("dp-error", (e) => el.errors.push(e.detail));
            document.body.append(el);
        }
    }, WIDGETS);
}

const widgets = (page) =>
    page.$$eval("diffusion-playground", (els) =>
        els.map((e) => ({ state: e.dataset.state, text: e.shadowRoot.querySelector("#status").textContent, results: e.results, errors: e.errors })),
    );

/** Samples with widget `i` (its `sample()`, as its Sample button does); resolves to its status then. */
const widgetSample = (page, i) =>
    page.evaluate(async (i) => {
        const el = document.querySelectorAll("diffusion-playground")[i];
        await el.sample();
        const s = el.shadowRoot.querySelector("#status");
        return { state: s.dataset.state, kind: s.dataset.kind, text: s.textContent, disabled: el.shadowRoot.querySelector("#run").disabled };
    }, i);

/** Runs the page's Sample button and waits for that run to end; resolves to its status. */
async function pageSample(page) {
    const before = await page.evaluate(() => window.__playground.runs.length);
    await page.click("#run");
    await page.waitForFunction((n) => window.__playground.runs.length > n && ["done", "error"].includes(window.__playground.runs.at(-1).status), before, { timeout: 120_000 });
    return waitForState(page, ["done", "error"], { timeout: 10_000, allowError: true });
}

test("after a forced out-of-memory and a forced device loss, the page and two widgets sample again without a reload", { timeout: 600_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        const weights = [];
        page.on("request", (r) => r.url().endsWith(".safetensors") && weights.push(r.url()));
        await page.goto(`${url}?${PAGE}`);
        const first = await waitForState(page, "done", { timeout: 240_000 });
        t.diagnostic(`page: ${first.text}`);
        await addWidgets(page);
        await page.waitForFunction(() => [...document.querySelectorAll("diffusion-playground")].every((e) => e.results >= 1 || e.dataset.state === "error"), null, {
            timeout: 120_000,
        });
        assert.deepEqual((await widgets(page)).map((w) => w.state), ["done", "done"], JSON.stringify(await widgets(page)));
        assert.equal(await page.evaluate(async () => (await import("./engine.js")).modelStats().live), 1, "the page and both widgets share one model");

        // Out of memory on the page: four images do not fit, it says so, and one image runs.
        await page.evaluate(() => window.__playground.engine.simulateOutOfMemory());
        await page.selectOption("#grid", "4");
        const oom = await pageSample(page);
        t.diagnostic(`page, out of memory: [${oom.kind}] ${oom.text}`);
        assert.equal(oom.state, "error", oom.text);
        assert.equal(oom.kind, "gpu-oom", oom.text);
        assert.match(oom.text, /^This GPU ran out of memory for 4 images; try fewer\.$/);
        assert.equal(await page.isDisabled("#run"), false, "Sample stays usable");
        await screenshot(page, "gpu-recovery-1-oom");
        await page.selectOption("#grid", "1");
        const fewer = await pageSample(page);
        assert.equal(fewer.state, "done", fewer.text);

        // Out of memory in a widget: the same, and the other widget is unaffected.
        await page.evaluate(() => window.__playground.engine.simulateOutOfMemory());
        const woom = await widgetSample(page, 0);
        t.diagnostic(`widget, out of memory: [${woom.kind}] ${woom.text}`);
        assert.deepEqual([woom.state, woom.kind, woom.disabled], ["error", "gpu-oom", false], woom.text);
        assert.match(woom.text, /ran out of memory for 2 images; try fewer/);
        assert.equal((await widgets(page))[0].errors.at(-1)?.kind, "gpu-oom", "dp-error carries the kind");
        for (const i of [0, 1]) {
            const s = await widgetSample(page, i);
            assert.equal(s.state, "done", `widget ${i} after the out-of-memory: ${s.text}`);
        }

        // Device loss: the widgets restart the GPU, the page comes back with them, and every
        // view samples again (autoplay) on the new device.
        const runsBefore = await page.evaluate(() => window.__playground.runs.length);
        const resultsBefore = (await widgets(page)).map((w) => w.results);
        const builtBefore = await page.evaluate(async () => (await import("./engine.js")).modelStats().built);
        const requestsBefore = weights.length;
        await page.evaluate(() => window.__playground.engine.loseDevice());
        await page.waitForFunction(
            ({ runsBefore, resultsBefore }) =>
                window.__playground.runs.length > runsBefore &&
                window.__playground.runs.at(-1).status === "done" &&
                [...document.querySelectorAll("diffusion-playground")].every((e, i) => e.results > resultsBefore[i]),
            { runsBefore, resultsBefore },
            { timeout: 300_000, polling: 250 },
        );
        const after = await waitForState(page, "done", { timeout: 10_000 });
        const ws = await widgets(page);
        t.diagnostic(`after the loss: page: ${after.text}; widgets: ${JSON.stringify(ws.map((w) => w.text))}`);
        assert.deepEqual(ws.map((w) => w.state), ["done", "done"]);
        assert.ok(
            ws.every((w) => w.errors.some((e) => e.kind === "gpu-lost")),
            "each widget reported the loss before restarting",
        );
        assert.equal(await page.evaluate(() => window.__playground.engine.isLost), false);
        assert.equal(await page.isVisible("#restart"), false);
        const stats = await page.evaluate(async () => (await import("./engine.js")).modelStats());
        assert.deepEqual([stats.live, stats.built], [1, builtBefore + 1], `one model, uploaded once more: ${JSON.stringify(stats)}`);
        assert.equal(weights.length, requestsBefore, "the restart downloaded the weights again instead of reading the Cache API");
        await screenshot(page, "gpu-recovery-2-restarted");

        // And on demand, each view once more.
        const again = await pageSample(page);
        assert.equal(again.state, "done", again.text);
        for (const i of [0, 1]) {
            const s = await widgetSample(page, i);
            assert.equal(s.state, "done", `widget ${i} after the restart: ${s.text}`);
        }
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});
