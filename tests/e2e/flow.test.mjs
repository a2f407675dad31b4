// Flow-matching models and Analytic-DPM's variance in the page and the widget: the
// fashion-flow model samples like the CLI on the CPU workers and on WebGPU (flow_euler by
// default, flow_heun from the menu), its forward and schedule panels draw finite numbers, a
// sampler that does not suit the model is reported and the page samples once it is fixed,
// variance = analytic (DDPM, fashion) matches the CLI (a table of other weights, or none,
// is refused in plain words), and compare="model:fashion,fashion-flow"
// draws one labelled row per model from one x_T, in the page and in a widget.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { ROOT, withPage } from "./harness.mjs";
import { linkOrCopy, sampleNative, waitForState } from "./playground-helpers.mjs";

// playground.test.mjs's bound: the same f32 kernels on other CPU rasterisers / thread
// splits, 1/8 of an 8-bit grey level.
const TOLERANCE = 1e-3;
const maxErr = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const lastResult = (page) => page.evaluate(() => Array.from(window.__lastResult ?? []));
// sampleNative writes its .npy under target/tmp (other test files' helpers create it too).
await mkdir(path.join(ROOT, "target/tmp"), { recursive: true });
const flowArgs = ["--model", "www/models/fashion-flow", "--class", "7", "--n", "1", "--guidance", "2", "--seed", "5"];

/** Starts a run with `start()` and waits until it is done; returns its x. */
async function runDone(page, start) {
    const n = await page.evaluate(() => window.__playground.runs.length);
    await start();
    await page.waitForFunction((n) => window.__playground.runs.length > n && ["done", "error"].includes(window.__playground.runs.at(-1).status), n, { timeout: 200_000 });
    const st = await waitForState(page, "done");
    assert.equal(st.state, "done", st.text);
    return lastResult(page);
}

test("flow model: page samples like the CLI on the CPU and WebGPU, flow-only menu, finite panels", { timeout: 500_000 }, async (t) => {
    const [euler, heun] = await Promise.all([
        sampleNative([...flowArgs, "--steps", "3"]),
        sampleNative([...flowArgs, "--steps", "2", "--sampler", "flow_heun"]),
    ]);
    t.diagnostic(`native: ${euler.log.replace(/\n/g, " | ")}`);
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion-flow&label=7&grid=1&steps=3&guidance=2&seed=5`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        const cpu = await lastResult(page);
        const errCpu = maxErr(cpu, euler.data);
        t.diagnostic(`flow_euler 3 steps, CPU workers vs CLI: max abs err ${errCpu.toExponential(2)}`);
        assert.ok(errCpu <= TOLERANCE, `CPU vs CLI ${errCpu}`);
        assert.ok(Math.max(...cpu) - Math.min(...cpu) > 0.5, "a flat image");

        // The menu holds the model's samplers, its default chosen; the diffusion-only
        // controls are off with a reason; the link leaves the sampler to the model.
        assert.deepEqual(await page.$$eval("#sampler option", (os) => os.map((o) => o.value)), ["flow_euler", "flow_heun"]);
        assert.equal(await page.$eval("#sampler", (s) => s.value), "flow_euler");
        for (const id of ["eta", "clip", "spacing", "variance"]) assert.equal(await page.isDisabled(`#${id}`), true, id);
        assert.match(await page.getAttribute("#variance-field", "title"), /flow-matching/);
        assert.match(await page.textContent("#sampler-help"), /flow matching/);
        assert.doesNotMatch(page.url(), /sampler=|eta=|clip=|variance=/);
        assert.equal(await page.evaluate(() => window.__lastResult && window.__playground.lastResult.settings.sampler), "flow_euler");

        // Forward panel: x_s = (1 - s) x0 + s eps, exact at t = 999 and t = 500.
        await page.locator("#fwd-t").fill("999");
        assert.match(await page.textContent("#fwd-levels"), /^t = 999: s = 0\.999, signal 1 − s = 0\.001, noise s = 0\.999/);
        await page.locator("#fwd-t").fill("500");
        assert.match(await page.textContent("#fwd-levels"), /signal 1 − s = 0\.500, noise s = 0\.500, SNR = 1\.00/);
        assert.match(await page.textContent("#fwd-formula"), /\(1 − s\) x0 \+ s ε/);
        // Schedule panel: the equivalent alpha_bar reaches 0 (log-SNR -inf) at s = 1; nothing
        // drawn is NaN or infinite and the log-SNR axis is finite.
        await page.waitForFunction(() => document.getElementById("sched").dataset.ticks === "3", null, { timeout: 30_000 });
        const svg = await page.$eval("#sched-svg", (s) => s.innerHTML);
        assert.doesNotMatch(svg, /NaN|Infinity/);
        const range = (await page.$eval("#sched", (s) => s.dataset.lsnrRange)).split(",").map(Number);
        assert.ok(range.every(Number.isFinite) && range[0] < range[1] && range[0] >= -20 && range[1] <= 20, `log-SNR range ${range}`);
        assert.doesNotMatch(await page.textContent("#sched-levels"), /NaN/);

        // flow_heun from the menu: 2 steps, 3 model evaluations.
        const x = await runDone(page, async () => {
            await page.locator("#steps-num").fill("2");
            await page.locator("#steps-num").dispatchEvent("change");
            await page.selectOption("#sampler", "flow_heun");
        });
        const errHeun = maxErr(x, heun.data);
        t.diagnostic(`flow_heun 2 steps, CPU vs CLI: ${errHeun.toExponential(2)}`);
        assert.ok(errHeun <= TOLERANCE, `flow_heun vs CLI ${errHeun}`);
        assert.match(page.url(), /sampler=flow_heun/);

        // The share panel's link and embed code carry the model and the chosen sampler.
        await page.click(".dp-share summary");
        await page.click("#copy-embed");
        const code = await page.$eval("#embed-code", (x) => x.value);
        assert.match(code, /model="fashion-flow"/);
        assert.match(code, /sampler="flow_heun"/);
        assert.doesNotMatch(code, /eta=|clip=|spacing=|variance=/);

        // WebGPU (SwiftShader): flow_euler 3 steps again, the same picture as the CLI.
        await page.selectOption("#sampler", "flow_euler");
        await page.locator("#steps-num").fill("3");
        await page.locator("#steps-num").dispatchEvent("change");
        await page.selectOption("#backend", "webgpu");
        const ready = await waitForState(page, ["ready", "done"], { timeout: 120_000 });
        assert.notEqual(ready.state, "error", ready.text);
        const gpu = await runDone(page, () => page.click("#run"));
        assert.equal(await page.evaluate(() => window.__playground.backend.kind), "webgpu");
        const errGpu = maxErr(gpu, euler.data);
        t.diagnostic(`flow_euler 3 steps, WebGPU vs CLI: max abs err ${errGpu.toExponential(2)}`);
        assert.ok(errGpu <= TOLERANCE, `WebGPU vs CLI ${errGpu}`);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("a sampler that does not suit the model is reported; fixing it samples; the model menu resets it", { timeout: 300_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion-flow&sampler=ddim&label=7&grid=1&steps=2`);
        const err = await waitForState(page, "error", { allowError: true });
        t.diagnostic(err.text);
        assert.equal(err.state, "error");
        assert.deepEqual([err.kind, err.field], ["input", "sampler"]);
        assert.match(err.text, /flow matching/);
        assert.match(err.text, /flow_euler, flow_heun/);
        // The menu shows what the error is about; Sample stays usable.
        assert.equal(await page.$eval("#sampler option:checked", (o) => o.textContent), "DDIM (not for this model)");
        assert.equal(await page.isDisabled("#run"), false);
        await runDone(page, () => page.selectOption("#sampler", "flow_euler"));
        assert.match(page.url(), /sampler=flow_euler/);
        assert.deepEqual(await page.$$eval("#sampler option", (os) => os.map((o) => o.value)), ["flow_euler", "flow_heun"]);

        // The model menu to a diffusion model: its default sampler (DDIM) takes over and
        // the diffusion controls come back.
        await page.selectOption("#model", "fashion");
        await waitForState(page, "done");
        assert.equal(await page.$eval("#sampler", (s) => s.value), "ddim");
        assert.deepEqual(await page.$$eval("#sampler option", (os) => os.map((o) => o.value)), ["ddim", "ddpm", "dpmpp2m", "euler_a"]);
        for (const id of ["eta", "clip", "spacing", "variance"]) assert.equal(await page.isDisabled(`#${id}`), false, id);
        assert.doesNotMatch(page.url(), /sampler=/);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("variance=analytic: DDPM on fashion matches the CLI's --variance analytic", { timeout: 300_000 }, async (t) => {
    const args = ["--model", "www/models/fashion", "--class", "7", "--n", "1", "--steps", "3", "--guidance", "2", "--seed", "5", "--sampler", "ddpm"];
    const [analytic, small] = await Promise.all([sampleNative([...args, "--variance", "analytic"]), sampleNative([...args, "--variance", "fixed_small"])]);
    const effect = maxErr(Array.from(analytic.data), small.data);
    t.diagnostic(`native DDPM 3 steps, analytic vs fixed_small: max abs diff ${effect.toFixed(3)}`);
    assert.ok(effect > 0.01, `analytic changed nothing (${effect})`);
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=3&guidance=2&seed=5&sampler=ddpm&variance=analytic`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        assert.equal(await page.evaluate(() => window.__playground.loaded.hasAnalytic), true);
        assert.deepEqual(await page.$eval('#variance option[value="analytic"]', (o) => [o.disabled, o.selected]), [false, true]);
        const x = await lastResult(page);
        const err = maxErr(x, analytic.data);
        t.diagnostic(`page (CPU workers) vs CLI, DDPM analytic: max abs err ${err.toExponential(2)}`);
        assert.ok(err <= TOLERANCE, `analytic vs CLI ${err}`);
        // The schedule panel's sigma is Analytic-DPM's (the run's guidance).
        const sigma = await page.evaluate(() => Array.from(window.__playground.sched.sigma));
        assert.equal(sigma.length, 3);
        assert.ok(sigma.every(Number.isFinite));
        // digits ships its own table: switching models keeps analytic, with digits' Gamma.
        await page.selectOption("#model", "digits");
        await page.waitForFunction(() => window.__playground.loaded?.url.endsWith("/models/digits/"), null, { timeout: 60_000 });
        const st = await waitForState(page, ["done", "error"], { allowError: true });
        assert.equal(st.state, "done", st.text);
        assert.equal(await page.evaluate(() => window.__playground.loaded.hasAnalytic), true);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("compare model:fashion,fashion-flow: one labelled row per model from one x_T, page and widget; a flow widget", { timeout: 400_000 }, async (t) => {
    const common = ["--class", "7", "--n", "1", "--steps", "2", "--guidance", "2", "--seed", "5"];
    const [ddim, flow, flow3] = await Promise.all([
        sampleNative(["--model", "www/models/fashion", ...common]),
        sampleNative(["--model", "www/models/fashion-flow", ...common]),
        sampleNative([...flowArgs, "--steps", "3"]),
    ]);
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=2&guidance=2&seed=5&compare=model:fashion,fashion-flow`);
        const done = await waitForState(page, "done", { timeout: 200_000 });
        assert.equal(done.state, "done", done.text);
        const rows = await page.evaluate(() => window.__playground.lastResult.rows.map((r) => ({ caption: r.caption, sampler: r.settings.sampler, x: Array.from(r.x) })));
        assert.deepEqual(rows.map((r) => [r.caption, r.sampler]), [["model fashion (ddim)", "ddim"], ["model fashion-flow (flow_euler)", "flow_euler"]]);
        const captions = await page.$$eval(".dp-cmp-value", (els) => els.map((e) => e.textContent));
        assert.deepEqual(captions, ["model fashion (ddim)", "model fashion-flow (flow_euler)"]);
        const errs = [maxErr(rows[0].x, ddim.data), maxErr(rows[1].x, flow.data)];
        t.diagnostic(`compare rows vs CLI (same seed, so the same x_T): ${errs.map((e) => e.toExponential(2)).join(", ")}`);
        assert.ok(errs.every((e) => e <= TOLERANCE), `rows vs CLI ${errs}`);

        // The widget: the same compare, and a flow model on its own.
        await page.goto(new URL("embed.html?model=fashion&label=7&grid=1&steps=2&guidance=2&seed=5&compare=model:fashion,fashion-flow&controls=all", url).href);
        await page.waitForFunction(() => document.querySelector("diffusion-playground")?.dataset.state === "done", null, { timeout: 200_000 });
        const wrows = await page.$eval("diffusion-playground", (e) => ({
            captions: [...e.shadowRoot.querySelectorAll(".dp-cmp-value")].map((c) => c.textContent),
            x: e.lastResult.rows.map((r) => Array.from(r.x)),
        }));
        assert.deepEqual(wrows.captions, ["model fashion (ddim)", "model fashion-flow (flow_euler)"]);
        assert.ok(maxErr(wrows.x[1], flow.data) <= TOLERANCE, "widget flow row vs CLI");

        await page.goto(new URL("embed.html?model=fashion-flow&label=7&grid=1&steps=3&guidance=2&seed=5", url).href);
        await page.waitForFunction(() => ["done", "error"].includes(document.querySelector("diffusion-playground")?.dataset.state), null, { timeout: 200_000 });
        const w = await page.$eval("diffusion-playground", (e) => ({ state: e.dataset.state, status: e.shadowRoot.querySelector("#status").textContent, x: Array.from(e.lastResult?.x ?? []), sampler: e.lastResult?.settings.sampler }));
        assert.equal(w.state, "done", w.status);
        assert.equal(w.sampler, "flow_euler");
        const errW = maxErr(w.x, flow3.data);
        t.diagnostic(`flow widget vs CLI: ${errW.toExponential(2)}`);
        assert.ok(errW <= TOLERANCE, `widget vs CLI ${errW}`);
        // The share panel's embed code names the model.
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("analytic_dpm.json measured on other weights, or missing: refused in plain words, the model still loads and samples", { timeout: 200_000 }, async (t) => {
    // A temporary root (nothing broken goes into www/): the page, and the fashion model
    // whose analytic_dpm.json names other weights (the manifest lists its new digest, so
    // only the engine's check can catch it).
    await mkdir(path.join(ROOT, "target/tmp"), { recursive: true });
    const dir = await mkdtemp(path.join(ROOT, "target/tmp/e2e-analytic-"));
    try {
        const www = path.join(ROOT, "www");
        await cp(www, dir, { recursive: true, filter: (src) => !src.startsWith(path.join(www, "models")) });
        const from = path.join(www, "models/fashion"), to = path.join(dir, "models/fashion");
        await mkdir(to, { recursive: true });
        for (const f of await readdir(from)) await linkOrCopy(path.join(from, f), path.join(to, f));
        const table = JSON.parse(await readFile(path.join(from, "analytic_dpm.json"), "utf8"));
        table.weights_sha256 = "ab".repeat(32);
        const text = JSON.stringify(table);
        await rm(path.join(to, "analytic_dpm.json"));
        await writeFile(path.join(to, "analytic_dpm.json"), text);
        const manifest = JSON.parse(await readFile(path.join(from, "manifest.json"), "utf8"));
        const entry = manifest.files.find((f) => f.name === "analytic_dpm.json");
        Object.assign(entry, { bytes: Buffer.byteLength(text), sha256: createHash("sha256").update(text).digest("hex") });
        await rm(path.join(to, "manifest.json"));
        await writeFile(path.join(to, "manifest.json"), JSON.stringify(manifest));

        // And digits without the file (its manifest no longer lists it): a model with no table.
        const dfrom = path.join(www, "models/digits"), dto = path.join(dir, "models/digits");
        await mkdir(dto, { recursive: true });
        for (const f of await readdir(dfrom)) if (!["analytic_dpm.json", "manifest.json"].includes(f)) await linkOrCopy(path.join(dfrom, f), path.join(dto, f));
        const dman = JSON.parse(await readFile(path.join(dfrom, "manifest.json"), "utf8"));
        dman.files = dman.files.filter((f) => f.name !== "analytic_dpm.json");
        await writeFile(path.join(dto, "manifest.json"), JSON.stringify(dman));

        await withPage(t, { root: path.relative(ROOT, dir) }, async ({ page, url, pageErrors }) => {
            await page.goto(`${url}?model=fashion&label=7&grid=1&steps=2&sampler=ddpm`);
            const done = await waitForState(page, "done");
            assert.equal(done.state, "done", done.text);
            const warning = await page.textContent("#warning");
            t.diagnostic(warning);
            assert.match(warning, /Analytic-DPM's variance is not offered: analytic_dpm\.json was measured on other weights/);
            assert.equal(await page.evaluate(() => window.__playground.loaded.hasAnalytic), false);
            assert.equal(await page.$eval('#variance option[value="analytic"]', (o) => o.disabled), true);

            // A model without analytic_dpm.json still loads, and a run asking for analytic
            // says the file is missing; another variance samples again.
            await page.goto(`${url}?model=digits&label=7&grid=1&steps=2&sampler=ddpm&variance=analytic`);
            const st = await waitForState(page, ["done", "error"], { allowError: true });
            assert.equal(st.state, "error", st.text);
            assert.match(st.text, /analytic_dpm\.json/);
            assert.equal(await page.$eval('#variance option[value="analytic"]', (o) => o.textContent), "Analytic-DPM (needs analytic_dpm.json; this model has none)");
            await runDone(page, () => page.selectOption("#variance", "fixed_small"));
            assert.deepEqual(pageErrors, []);
        });
    } finally {
        await rm(dir, { recursive: true, force: true });
    }
});
