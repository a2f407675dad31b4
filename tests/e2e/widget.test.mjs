// The embeddable widget: the two compare widgets of examples/blog.html load only when
// scrolled to, share one engine and one model, and draw labelled rows from one x_T; a bad
// compare spec is an input error; Step / Space / Stop and dp-step; embed.html builds a
// widget from its query string (label=7 on digits, and the old class=7).
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, withPage } from "./harness.mjs";
import { sampleNative } from "./playground-helpers.mjs";

// On this machine `auto` runs the widgets on the CPU workers (its WebGPU adapter is
// SwiftShader, a software one).

const widgetStates = (page) =>
    page.$$eval("diffusion-playground", (els) =>
        els.map((e) => ({
            state: e.dataset.state,
            status: e.shadowRoot.querySelector("#status").textContent,
            n: e.lastResult?.x?.length ?? 0,
            sampler: e.lastResult?.settings?.sampler,
        })),
    );

// The article's widgets are more than two screens down (the widget starts loading a screen
// before it is visible), so nothing may download until the test scrolls.
const maxErr = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
// Browser (CPU workers) against the CLI (CPU backend here): the same kernels in f32 with
// different thread splits and compilers; playground.test.mjs's 1e-3 (1/8 of a grey level).
const TOLERANCE = 1e-3;

test("blog.html: compare widgets load only when scrolled to, rows from the seed's x_T (CLI), class stays CSS", { timeout: 300_000 }, async (t) => {
    // Row 0 of the guidance widget (w = 0, label 0) and both rows of the sampler widget
    // (DDIM and DPM-Solver++, Sneaker): each equal to the CLI's run from seed 1, so every
    // one started from seed 1's x_T (engine noise is keyed by seed and image only).
    const sneaker = ["--model", "www/models/fashion", "--class-name", "Sneaker", "--n", "4", "--steps", "10", "--guidance", "2", "--seed", "1"];
    const [cliGuidance0, cliDdim, cliDpm] = await Promise.all([
        sampleNative(["--model", "www/models/fashion", "--class", "0", "--n", "4", "--steps", "20", "--guidance", "0", "--seed", "1"]),
        sampleNative([...sneaker, "--sampler", "ddim"]),
        sampleNative([...sneaker, "--sampler", "dpmpp2m"]),
    ]);
    await withPage(t, { viewport: { width: 900, height: 400 } }, async ({ page, url, pageErrors, consoleErrors }) => {
        const weightRequests = [];
        page.on("request", (r) => r.url().endsWith(".safetensors") && weightRequests.push(r.url()));
        const started = Date.now();
        await page.goto(new URL("examples/blog.html", url).href);
        await page.waitForFunction(() => [...document.querySelectorAll("diffusion-playground")].every((e) => e.dataset.state === "idle"), null, { timeout: 10_000 });
        const tops = await page.$$eval("diffusion-playground", (els) => els.map((e) => e.getBoundingClientRect().top / innerHeight));
        t.diagnostic(`widget tops in screens: ${tops.map((x) => x.toFixed(2)).join(", ")}`);
        assert.ok(tops.every((x) => x > 2), "the widgets must start more than two screens down for this test to mean anything");
        await page.waitForTimeout(1500);
        assert.deepEqual(weightRequests, [], "weights downloaded before scrolling");
        assert.deepEqual((await widgetStates(page)).map((s) => s.state), ["idle", "idle"]);

        for (const i of [0, 1]) {
            await page.$$eval("diffusion-playground", (els, i) => els[i].scrollIntoView(), i);
            await page.waitForFunction((i) => document.querySelectorAll("diffusion-playground")[i].dataset.state !== "idle", i, { timeout: 10_000 });
        }
        await page.waitForFunction(() => [...document.querySelectorAll("diffusion-playground")].every((e) => ["done", "error"].includes(e.dataset.state)), null, {
            timeout: 240_000,
            polling: 200,
        });
        const states = await widgetStates(page);
        t.diagnostic(`${JSON.stringify(states.map((s) => [s.state, s.status]))} (${Date.now() - started} ms wall)`);
        assert.deepEqual(states.map((s) => s.state), ["done", "done"], JSON.stringify(states));
        // One download for both: the second widget found the first one's copy of the model.
        assert.equal(weightRequests.length, 1, weightRequests.join());

        const rows = await page.$$eval("diffusion-playground", (els) =>
            els.map((e) => ({
                captions: [...e.shadowRoot.querySelectorAll(".dp-cmp-row figcaption")].map((f) => f.textContent.trim()),
                canvases: [...e.shadowRoot.querySelectorAll(".dp-cmp-row canvas")].map((c) => [c.width, c.height]),
                values: e.lastResult.rows.map((r) => r.value),
                x: e.lastResult.rows.map((r) => Array.from(r.x)),
                label: e.lastResult.settings.label,
            })),
        );
        t.diagnostic(`captions: ${JSON.stringify(rows.map((r) => r.captions))}`);
        assert.deepEqual(rows[0].values, [0, 2, 4]);
        assert.deepEqual(rows[1].values, ["ddim", "dpmpp2m"]);
        // Each row is labelled with its value and its time, formatted (850 ms, 1.2 s).
        rows[0].captions.forEach((c, i) => assert.match(c, new RegExp(`^guidance ${[0, 2, 4][i]}\\s*\\d+(\\.\\d)? (ms|s) ·`), c));
        rows[1].captions.forEach((c, i) => assert.match(c, new RegExp(`^sampler ${["ddim", "dpmpp2m"][i]}\\s*\\d+(\\.\\d)? (ms|s) ·`), c));
        // 4 images of 28 px side by side with a 2 px gap, per row.
        for (const r of rows) for (const wh of r.canvases) assert.deepEqual(wh, [4 * 30 + 2, 32]);
        const errs = [maxErr(rows[0].x[0], cliGuidance0.data), maxErr(rows[1].x[0], cliDdim.data), maxErr(rows[1].x[1], cliDpm.data)];
        t.diagnostic(`vs CLI, max abs err: guidance-0 row ${errs[0].toExponential(2)}, ddim row ${errs[1].toExponential(2)}, dpmpp2m row ${errs[2].toExponential(2)} (tolerance ${TOLERANCE})`);
        assert.ok(errs.every((e) => e <= TOLERANCE), `${errs} > ${TOLERANCE}`);
        // The rows really differ (guidance and the sampler change the picture).
        assert.ok(maxErr(rows[0].x[0], rows[0].x[2]) > 0.1 && maxErr(rows[1].x[0], rows[1].x[1]) > 0.01);

        // class="post-figure" is the theme's CSS class: the label stays Sneaker, and a class
        // added or changed later re-samples nothing. The class's --dp-accent themes the widget.
        assert.equal(rows[1].label, "Sneaker");
        assert.match(states[1].status, /“Sneaker”/);
        const runsBefore = await page.$$eval("diffusion-playground", (els) => els[1].pg.runs.length);
        await page.$$eval("diffusion-playground", (els) => {
            els[1].classList.add("wide");
            els[1].className = "post-figure 3";
        });
        await page.waitForTimeout(800); // past the 250 ms debounce
        const after = await page.$$eval("diffusion-playground", (els) => [els[1].pg.runs.length, els[1].dataset.state, els[1].pg.settings.label]);
        assert.deepEqual(after, [runsBefore, "done", "Sneaker"]);
        const accent = await page.$$eval("diffusion-playground", (els) => getComputedStyle(els[1].shadowRoot.querySelector("#run")).backgroundColor);
        assert.equal(accent, "rgb(130, 80, 223)", "--dp-accent set on the element's CSS class");

        await screenshot(page, "widget-1-blog");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

test("a bad compare spec is an input error naming compare; fixing it samples again", { timeout: 180_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors }) => {
        await page.goto(new URL("embed.html?model=digits&label=7&grid=1&steps=2&compare=sampler:ddim,plms", url).href);
        await page.waitForFunction(() => ["done", "error"].includes(document.querySelector("diffusion-playground")?.dataset.state), null, { timeout: 120_000 });
        const err = await page.$eval("diffusion-playground", (e) => {
            const s = e.shadowRoot.querySelector("#status");
            return { state: s.dataset.state, kind: s.dataset.kind, field: s.dataset.field, text: s.textContent, run: e.shadowRoot.querySelector("#run").disabled };
        });
        t.diagnostic(err.text);
        assert.deepEqual([err.state, err.kind, err.field, err.run], ["error", "input", "compare", false]);
        assert.match(err.text, /“plms” is not one of ddim, ddpm, dpmpp2m, euler_a/);
        for (const bad of ["guidance", "steps:0,5", "eta:0,2", "seed:1,2", "guidance:1"]) {
            await page.$eval("diffusion-playground", (e, v) => e.setAttribute("compare", v), bad);
            await page.waitForFunction(() => document.querySelector("diffusion-playground").dataset.state === "error", null, { timeout: 5_000 });
            const field = await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#status").dataset.field);
            assert.equal(field, "compare", bad);
        }
        // label="7" on digits, compared over steps: two rows; then one run again.
        await page.$eval("diffusion-playground", (e) => e.setAttribute("compare", "steps:1,2"));
        await page.waitForFunction(() => document.querySelector("diffusion-playground").lastResult?.rows?.length === 2, null, { timeout: 60_000 });
        assert.match(await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#status").textContent), /“7”/);
        // sample() resolves once every row has run.
        const ran = await page.$eval("diffusion-playground", async (e) => {
            const r = await e.sample();
            return [r.cancelled, e.lastResult.rows.map((x) => x.steps)];
        });
        assert.deepEqual(ran, [false, [1, 2]]);
        await page.$eval("diffusion-playground", (e) => e.removeAttribute("compare"));
        await page.waitForFunction(() => {
            const e = document.querySelector("diffusion-playground");
            return e.dataset.state === "done" && !e.lastResult.rows;
        }, null, { timeout: 60_000 });
        assert.equal(await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#rows").hidden), true);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});

test("Step, Space and Stop: a run pauses between steps, dp-step per step, filmstrip PNG", { timeout: 180_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(new URL("embed.html?model=digits&label=3&grid=1&steps=6&controls=all&autoplay=0", url).href);
        await page.waitForFunction(() => document.querySelector("diffusion-playground")?.dataset.state === "ready", null, { timeout: 60_000 });
        await page.$eval("diffusion-playground", (e) => {
            window.steps = [];
            e.addEventListener("dp-step", (ev) => window.steps.push(ev.detail));
        });
        const btn = (id) => page.locator(`diffusion-playground #${id}`);
        const state = () => page.$eval("diffusion-playground", (e) => e.dataset.state);
        const waitState = (s) => page.waitForFunction((s) => document.querySelector("diffusion-playground").dataset.state === s, s, { timeout: 60_000 });
        // Step on an idle widget: one step, then paused.
        await btn("step").click();
        await waitState("paused");
        await page.waitForTimeout(500); // a paused run must not go on
        assert.equal(await page.evaluate(() => window.steps.length), 1);
        await btn("step").click();
        await page.waitForFunction(() => window.steps.length === 2, null, { timeout: 30_000 });
        await waitState("paused");
        await page.waitForTimeout(300);
        assert.equal(await page.evaluate(() => window.steps.length), 2);
        // Space, with the focus on the preview, resumes to the end.
        await page.locator("diffusion-playground #single").focus();
        await page.keyboard.press("Space");
        await waitState("done");
        const steps = await page.evaluate(() => window.steps);
        t.diagnostic(JSON.stringify(steps.map((s) => [s.step, s.of, s.t, Math.round(s.ms)])));
        assert.deepEqual(steps.map((s) => [s.step, s.of]), [1, 2, 3, 4, 5, 6].map((k) => [k, 6]));
        assert.ok(steps.every((s) => Number.isInteger(s.t) && s.ms >= 0), "t and ms in every dp-step");
        // The status region announced the run and its end, not every step.
        assert.match(await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#status").textContent), /^Done: 1 image of “3” in \d/);

        // Filmstrip: 6 stored steps of image 0, x_t above x̂0, 28 px with 2 px gaps, upscaled.
        const [download] = await Promise.all([page.waitForEvent("download"), btn("filmstrip").click()]);
        const png = await download.createReadStream().then(async (s) => {
            const chunks = [];
            for await (const c of s) chunks.push(c);
            return Buffer.concat(chunks);
        });
        assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "PNG magic");
        const [w, h] = [png.readUInt32BE(16), png.readUInt32BE(20)];
        const scale = Math.floor(2048 / (6 * 30 + 2));
        assert.deepEqual([w, h], [(6 * 30 + 2) * scale, (2 * 30 + 2) * scale]);
        assert.match(download.suggestedFilename(), /^digits-label3-ddim6-w2-seed1-filmstrip\.png$/);

        // Stop mid-run (paused after its first step): the run ends there, the widget stays usable.
        await page.evaluate(() => (window.steps = []));
        await btn("step").click();
        await waitState("paused");
        await btn("stop").click();
        await waitState("stopped");
        await page.waitForTimeout(300);
        assert.equal(await page.evaluate(() => window.steps.length), 1);
        assert.match(await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#status").textContent), /^Stopped after 1 of 6 steps/);
        assert.equal(await state(), "stopped");
        await btn("run").click();
        await waitState("done");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

test("embed.html builds a widget from its query string", { timeout: 180_000 }, async (t) => {
    await withPage(t, { viewport: { width: 420, height: 700 } }, async ({ page, url, pageErrors }) => {
        await page.goto(new URL("embed.html?model=digits&label=7&grid=1&steps=1&guidance=1&controls=steps,download", url).href);
        await page.waitForFunction(() => ["done", "error"].includes(document.querySelector("diffusion-playground")?.dataset.state), null, {
            timeout: 150_000,
        });
        const [s] = await widgetStates(page);
        t.diagnostic(s.status);
        assert.equal(s.state, "done", s.status);
        assert.equal(s.n, 784);
        assert.match(s.status, /“7”/);
        await screenshot(page, "widget-2-embed");
        // Links written before the rename: embed.html reads its `class` parameter as the label
        // (a query parameter, unlike the widget's HTML class attribute).
        await page.goto(new URL("embed.html?model=digits&class=2&autoplay=0", url).href);
        assert.deepEqual(await page.$eval("diffusion-playground", (e) => [e.getAttribute("label"), e.hasAttribute("class")]), ["2", false]);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});

const stats = (page) =>
    page.evaluate(async () => {
        const { modelStats, cpuPools } = await import("./engine.js");
        return { ...modelStats(), pools: cpuPools.size };
    });
const keys = (s) => s.records.map((r) => `${r.key.split(" ")[0]} ${new URL(r.key.split(" ")[1]).pathname} ×${r.refs}`);

test("a widget's model changing rapidly loads only the last; removed widgets free their models", { timeout: 180_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(new URL("embed.html?model=digits&grid=1&steps=1&autoplay=0", url).href);
        const ready = () =>
            page.waitForFunction(() => [...document.querySelectorAll("diffusion-playground")].every((e) => ["ready", "error"].includes(e.dataset.state)), null, {
                timeout: 60_000,
            });
        await ready();
        let s = await stats(page);
        t.diagnostic(`one widget: ${JSON.stringify(s)}`);
        assert.deepEqual(keys(s), ["cpu /models/digits/ ×1"]);
        assert.deepEqual([s.live, s.built, s.pools], [1, 1, 1]);

        // Five changes in one go: each aborts the load before it, so only the last is built,
        // and the model left behind (digits) is freed.
        await page.evaluate(() => {
            const el = document.querySelector("diffusion-playground");
            for (const m of ["fashion", "digits", "fashion", "digits", "fashion"]) el.setAttribute("model", m);
        });
        await ready();
        await page.waitForFunction(async () => (await import("./engine.js")).modelStats().live === 1, null, { timeout: 10_000 });
        s = await stats(page);
        t.diagnostic(`after 5 rapid changes: ${JSON.stringify(s)}`);
        assert.equal(await page.$eval("diffusion-playground", (e) => e.dataset.state), "ready");
        assert.deepEqual(keys(s), ["cpu /models/fashion/ ×1"]);
        assert.deepEqual([s.live, s.built, s.pools], [1, 2, 1]);

        // Changes 50 ms apart (some mid-download, some mid-upload): still one model at the end.
        for (const m of ["digits", "fashion", "digits", "fashion", "digits"]) {
            await page.$eval("diffusion-playground", (e, m) => e.setAttribute("model", m), m);
            await page.waitForTimeout(50);
        }
        await ready();
        await page.waitForFunction(async () => (await import("./engine.js")).modelStats().live === 1, null, { timeout: 10_000 });
        s = await stats(page);
        t.diagnostic(`after 5 spaced changes: ${JSON.stringify(s)}`);
        assert.deepEqual(keys(s), ["cpu /models/digits/ ×1"]);
        assert.deepEqual([s.live, s.pools], [1, 1]);

        // A second widget on fashion: two models; removing the first frees digits.
        await page.evaluate(() => {
            const el = document.createElement("diffusion-playground");
            el.setAttribute("model", "fashion");
            el.setAttribute("grid", "1");
            el.setAttribute("steps", "1");
            document.body.append(el);
        });
        await ready();
        s = await stats(page);
        assert.deepEqual(keys(s).sort(), ["cpu /models/digits/ ×1", "cpu /models/fashion/ ×1"]);
        assert.deepEqual([s.live, s.pools], [2, 2]);
        await page.evaluate(() => document.querySelector("diffusion-playground").remove());
        await page.waitForFunction(async () => (await import("./engine.js")).modelStats().live === 1, null, { timeout: 10_000 });
        s = await stats(page);
        t.diagnostic(`after removing the digits widget: ${JSON.stringify(s)}`);
        assert.deepEqual(keys(s), ["cpu /models/fashion/ ×1"]);
        assert.equal(s.pools, 1);

        // A widget removed while it loads stops its load: nothing is built for it.
        const built = s.built;
        await page.evaluate(() => {
            const el = document.createElement("diffusion-playground");
            el.setAttribute("model", "digits");
            document.body.append(el);
            setTimeout(() => el.remove(), 0);
        });
        await page.waitForTimeout(1000);
        s = await stats(page);
        t.diagnostic(`after a widget removed mid-load: ${JSON.stringify(s)}`);
        assert.deepEqual(keys(s), ["cpu /models/fashion/ ×1"]);
        assert.deepEqual([s.live, s.built], [1, built]);

        // The last widget gone: nothing left.
        await page.evaluate(() => document.querySelector("diffusion-playground").remove());
        await page.waitForFunction(async () => (await import("./engine.js")).modelStats().live === 0, null, { timeout: 10_000 });
        s = await stats(page);
        assert.deepEqual([keys(s), s.pools], [[], 0]);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

// The WebGPU engine's run loop is Rust (src/web.rs): a Promise returned by the step callback
// is awaited there, which is what holds a paused run. SwiftShader compiles the pipelines once
// (most of a minute on a loaded machine), then a one-image pass takes about a second.
test("WebGPU: Step pauses the wasm run loop between steps; Space resumes it", { timeout: 300_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(new URL("embed.html?model=digits&backend=webgpu&label=4&grid=1&steps=3&guidance=1&autoplay=0", url).href);
        await page.waitForFunction(() => ["ready", "error"].includes(document.querySelector("diffusion-playground")?.dataset.state), null, { timeout: 120_000 });
        await page.$eval("diffusion-playground", (e) => {
            window.steps = [];
            e.addEventListener("dp-step", (ev) => window.steps.push(ev.detail.step));
        });
        const waitState = (s) => page.waitForFunction((s) => document.querySelector("diffusion-playground").dataset.state === s, s, { timeout: 180_000 });
        await page.locator("diffusion-playground #step").click();
        await waitState("paused");
        await page.waitForTimeout(3000); // three passes' worth: a run that went on would show
        assert.deepEqual(await page.evaluate(() => window.steps), [1]);
        await page.locator("diffusion-playground #single").focus();
        await page.keyboard.press("Space");
        await waitState("done");
        assert.deepEqual(await page.evaluate(() => window.steps), [1, 2, 3]);
        const text = await page.$eval("diffusion-playground", (e) => e.shadowRoot.querySelector("#engine").textContent);
        t.diagnostic(text);
        assert.match(text, /WebGPU/i);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});
