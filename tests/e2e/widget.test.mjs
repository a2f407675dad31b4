// The embeddable widget: two <diffusion-playground>s on examples/blog.html share one engine
// and one model and both finish; embed.html builds one from its query string.
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, withPage } from "./harness.mjs";

// The article's widgets sample 4 images x 10 steps; on this machine `auto` runs them on
// the CPU workers (its WebGPU adapter is SwiftShader, a software one), a few seconds each.

const widgetStates = (page) =>
    page.$$eval("diffusion-playground", (els) =>
        els.map((e) => ({
            state: e.dataset.state,
            status: e.shadowRoot.querySelector("#status").textContent,
            n: e.lastResult?.x?.length ?? 0,
            sampler: e.lastResult?.settings?.sampler,
        })),
    );

test("blog.html: two widgets share the engine and both finish", { timeout: 240_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        const weightRequests = [];
        page.on("request", (r) => r.url().endsWith(".safetensors") && weightRequests.push(r.url()));
        const started = Date.now();
        await page.goto(new URL("examples/blog.html", url).href);
        await page.waitForFunction(
            () => {
                const els = [...document.querySelectorAll("diffusion-playground")];
                return els.length === 2 && els.every((e) => ["done", "error"].includes(e.dataset.state));
            },
            null,
            { timeout: 180_000, polling: 200 },
        );
        const states = await widgetStates(page);
        t.diagnostic(`${JSON.stringify(states)} (${Date.now() - started} ms wall)`);
        assert.deepEqual(states.map((s) => [s.state, s.n, s.sampler]), [["done", 4 * 784, "ddpm"], ["done", 4 * 784, "ddim"]], JSON.stringify(states));
        // One download for both: the second widget found the first one's copy of the model.
        assert.equal(weightRequests.length, 1, weightRequests.join());
        // The widget's controls are the ones asked for.
        const visible = await page.$eval("diffusion-playground", (e) =>
            [...e.shadowRoot.querySelectorAll("input, select")].filter((x) => x.offsetParent !== null).map((x) => x.id || x.name),
        );
        t.diagnostic(`visible controls: ${visible.join(", ")}`);
        assert.ok(visible.includes("steps") && visible.includes("seed") && !visible.includes("sampler"), visible.join());
        await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight / 3));
        await screenshot(page, "widget-1-blog");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

test("embed.html builds a widget from its query string", { timeout: 180_000 }, async (t) => {
    await withPage(t, { viewport: { width: 420, height: 700 } }, async ({ page, url, pageErrors }) => {
        await page.goto(new URL("embed.html?model=digits&class=7&grid=1&steps=1&guidance=1&controls=steps,download", url).href);
        await page.waitForFunction(() => ["done", "error"].includes(document.querySelector("diffusion-playground")?.dataset.state), null, {
            timeout: 150_000,
        });
        const [s] = await widgetStates(page);
        t.diagnostic(s.status);
        assert.equal(s.state, "done", s.status);
        assert.equal(s.n, 784);
        assert.match(s.status, /“7”/);
        await screenshot(page, "widget-2-embed");
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
