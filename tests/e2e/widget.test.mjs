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
