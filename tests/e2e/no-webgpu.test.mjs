// Without (hardware) WebGPU the page samples on the CPU engine: a pool of Web Workers with
// one wasm instance each. `auto` falls back on its own and says why; the images equal the
// native CLI's; a run cancels between steps; a killed worker is reported and replaced; and
// asking for WebGPU where there is none gives a plain-language error.
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, waitForEngine, withPage } from "./harness.mjs";
import { sampleNative, waitForState } from "./playground-helpers.mjs";

// The CPU engine and the native CLI run the same Rust in f32 (wasm simd128 vs AVX2, whose
// fused multiply-adds round differently): ~1e-6 apart after 20 steps; 1e-3 is the bar.
const TOLERANCE = 1e-3;
const lastResult = (page) => page.evaluate(() => Array.from(window.__lastResult ?? []));
const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

// Chromium on Linux without --enable-unsafe-webgpu: navigator.gpu exists but
// requestAdapter() resolves to null.
test("no WebGPU adapter: auto samples on CPU workers, says why, equals the CLI, cancels, survives a killed worker", { timeout: 300_000 }, async (t) => {
    const args = ["--model", "www/models/fashion", "--class", "7", "--n", "4", "--steps", "20", "--guidance", "2", "--seed", "5"];
    const native = await sampleNative([...args, "--backend", "cpu"]);
    t.diagnostic(`native: ${native.log.replace(/\n/g, " | ")}`);

    await withPage(t, { webgpu: false }, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=4&steps=20&guidance=2&seed=5&sampler=ddim`);
        const done = await waitForState(page, "done", { timeout: 120_000 });
        assert.equal(done.state, "done", done.text);
        t.diagnostic(`${done.text} · ${await page.textContent("#timing")}`);
        const why = await page.textContent("#engine");
        t.diagnostic(why);
        assert.match(why, /^This browser has WebGPU but offers no GPU adapter: sampling on \d+ CPU threads?\.$/, why);
        assert.equal(await page.$eval("#backend", (s) => s.value), "auto");
        assert.match(await page.textContent("#status"), /^Done: 4 images/);

        const x = await lastResult(page);
        assert.equal(x.length, 4 * 784);
        const err = maxDiff(x, native.data);
        t.diagnostic(`CPU workers vs native CLI (--backend cpu): max abs err ${err.toExponential(2)} (tolerance ${TOLERANCE})`);
        assert.ok(err <= TOLERANCE, `max abs err ${err} > ${TOLERANCE}`);
        assert.ok(Math.max(...x) - Math.min(...x) > 0.5, "flat images");
        await screenshot(page, "no-webgpu-1-cpu-done");

        // One image, 20 DDIM steps, guidance 2: the "at most 2 s" (reported, not
        // asserted: this machine's load varies).
        await page.selectOption("#grid", "1");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.grid === 1, null, { timeout: 10_000 });
        await waitForState(page, "done", { timeout: 60_000 });
        const one = await page.evaluate(() => window.__playground.runs.at(-1));
        assert.equal(one.status, "done");
        t.diagnostic(`1 image, 20 DDIM steps, w = 2 on CPU workers: ${one.totalMs.toFixed(0)} ms`);
        // One image splits the U-Net batch across workers instead of the images: the same
        // picture as image 0 of the 4-image run (noise is keyed by the global image index).
        const single = await lastResult(page);
        const split = maxDiff(single, x.slice(0, 784));
        t.diagnostic(`1-image run (batch split over workers) vs image 0 of the 4-image run: ${split.toExponential(2)}`);
        assert.ok(split <= 1e-6, `max abs diff ${split}`);

        // Cancel mid-run: a 200-step run stops between steps when a slider moves.
        await page.locator("#steps").fill("200");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.steps === 200 && window.__playground.runs.at(-1).stepsDone >= 2, null, { timeout: 60_000 });
        const long = await page.evaluate(() => window.__playground.runs.length - 1);
        await page.locator("#steps").fill("3");
        await page.waitForFunction((i) => window.__playground.runs[i].status === "cancelled", long, { timeout: 30_000 });
        await waitForState(page, "done", { timeout: 60_000 });
        const runs = await page.evaluate(() => window.__playground.runs.map((r) => [r.status, r.stepsDone, r.settings.steps]));
        t.diagnostic(`runs: ${JSON.stringify(runs)}`);
        assert.ok(runs[long][1] < 200, "the long run went on to the end");
        assert.deepEqual(runs.at(-1), ["done", 3, 3]);

        // A worker killed mid-run: the run fails with a plain message, the worker is replaced,
        // and the next run works.
        await page.locator("#steps").fill("150");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.steps === 150 && window.__playground.runs.at(-1).stepsDone >= 1, null, { timeout: 60_000 });
        await page.evaluate(async () => {
            const { cpuPools } = await import("./engine.js");
            const pool = [...cpuPools][0];
            pool.workers[0].crash("killed by the test");
        });
        const crashed = await waitForState(page, "error", { timeout: 30_000, allowError: true });
        t.diagnostic(crashed.text);
        assert.equal(crashed.kind, "internal", crashed.text);
        assert.equal(await page.evaluate(() => window.__playground.error?.worker), "killed by the test");
        assert.match(crashed.text, /A CPU worker stopped unexpectedly \(killed by the test\)\. It has been restarted/);
        assert.equal(await page.isDisabled("#run"), false, "Sample stays usable");
        await screenshot(page, "no-webgpu-2-worker-killed");
        await page.locator("#steps").fill("2");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.steps === 2, null, { timeout: 10_000 });
        const again = await waitForState(page, "done", { timeout: 60_000 });
        assert.equal(again.state, "done", again.text);
        assert.equal(await page.evaluate(async () => [...(await import("./engine.js")).cpuPools][0].crashes), 1);

        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors.filter((e) => !/No available adapters/.test(e)), [], "console errors");
    });
});

// A browser without the WebGPU API at all (older Firefox or Safari): no navigator.gpu. The
// blog example samples with no action from the reader.
test("no navigator.gpu: the page and blog.html sample on the CPU with no action from the reader", { timeout: 180_000 }, async (t) => {
    const initScript = () => {
        delete Navigator.prototype.gpu;
    };
    await withPage(t, { webgpu: false, initScript }, async ({ page, url, pageErrors }) => {
        await page.goto(`${url}?model=digits&label=3&grid=1&steps=5`);
        const done = await waitForState(page, "done", { timeout: 90_000 });
        assert.equal(done.state, "done", done.text);
        assert.equal(await page.evaluate(() => "gpu" in navigator), false);
        assert.match(await page.textContent("#engine"), /^This browser has no WebGPU: sampling on \d+ CPU threads?\.$/);

        await page.goto(new URL("examples/blog.html", url).href);
        // The widgets load when scrolled near: bring each into view.
        for (const i of [0, 1]) {
            await page.$$eval("diffusion-playground", (els, i) => els[i].scrollIntoView(), i);
            await page.waitForFunction((i) => document.querySelectorAll("diffusion-playground")[i].dataset.state !== "idle", i, { timeout: 10_000 });
        }
        await page.waitForFunction(
            () => {
                const els = [...document.querySelectorAll("diffusion-playground")];
                return els.length === 2 && els.every((e) => ["done", "error"].includes(e.dataset.state));
            },
            null,
            { timeout: 120_000, polling: 200 },
        );
        const states = await page.$$eval("diffusion-playground", (els) => els.map((e) => [e.dataset.state, e.shadowRoot.querySelector("#status").textContent]));
        t.diagnostic(JSON.stringify(states));
        assert.deepEqual(states.map((s) => s[0]), ["done", "done"], JSON.stringify(states));
        await screenshot(page, "no-webgpu-3-blog");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});

// Asking for WebGPU explicitly where there is none: a plain error that names the way out.
test("backend=webgpu without WebGPU: plain-language error", { timeout: 90_000 }, async (t) => {
    await withPage(t, { webgpu: false }, async ({ page, url, pageErrors }) => {
        await page.goto(`${url}?backend=webgpu`);
        const status = await waitForEngine(page);
        t.diagnostic(status.text);
        assert.equal(status.state, "error", `expected an error, got: ${status.text}`);
        assert.equal(await page.$eval("#status", (s) => s.dataset.kind), "gpu-unavailable");
        assert.match(status.text, /WebGPU/, status.text);
        assert.match(status.text, /CPU engine/, status.text);
        assert.doesNotMatch(status.text, /^Unexpected error/, "an unhandled rejection reached the page");
        assert.equal(await page.isDisabled("#run"), true, "the run button must stay disabled");
        // Switching the Engine control to CPU recovers without a reload.
        await page.selectOption("#backend", "cpu");
        const ready = await waitForState(page, "done", { timeout: 90_000 });
        assert.equal(ready.state, "done", ready.text);
        assert.match(await page.textContent("#engine"), /The CPU engine was chosen/);
        await page.waitForTimeout(300);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});
