// Takes the README's screenshots from the real pages (served by target/release/serve, like
// the browser tests) in headless Chromium, on the CPU backend: the wasm SIMD engine in Web
// Workers draws the same pictures as WebGPU from the same seed, in about a minute instead of
// the ~8 minutes SwiftShader takes on a 2-core machine.
//   docs/playground.png    the page: 16 Sneakers, 20 DDIM steps, w = 2, seed 1 with the
//                          model's shipped defaults; replayed to step 8 with "Inside one step"
//                          open on it and the forward panel's loss curve measured.
//   docs/blog-widgets.png  www/examples/blog.html's two compare widgets, after scrolling to
//                          them (they load only then).
// Not a test: run it by hand after `./build.sh build && cargo build --release --bin serve`:
//   node docs/screenshot.mjs [playground] [blog]      (default: both)
// It prints each page's own timing lines, which the README quotes with the pictures.

import path from "node:path";
import { ROOT, withPage } from "../tests/e2e/harness.mjs";
import { waitForState } from "../tests/e2e/playground-helpers.mjs";

const which = process.argv.slice(2);
const want = (name) => which.length === 0 || which.includes(name);
// withPage wants a node:test context only for its name and diagnostics.
const ctx = (name) => ({ name: `docs-${name}`, diagnostic: console.log });
const rel = (p) => path.relative(ROOT, p);

if (want("playground")) {
    const out = path.join(ROOT, "docs/playground.png");
    const settings = "model=fashion&label=Sneaker&grid=16&steps=20&guidance=2&sampler=ddim&seed=1&backend=cpu";
    await withPage(ctx("playground"), { viewport: { width: 1000, height: 900 } }, async ({ page, url, pageErrors }) => {
        const started = Date.now();
        await page.goto(`${url}?${settings}`);
        const done = await waitForState(page, "done", { timeout: 1_800_000 });
        if (done.state !== "done") throw new Error(`the run did not finish: ${done.text}`);
        const shape = await page.evaluate(() => window.__lastShape);
        if (String(shape) !== "16,1,28,28") throw new Error(`unexpected result shape ${shape}`);
        console.log(`${settings}: ${done.text}`);
        console.log(`timing: ${(await page.textContent("#timing")).trim()}`);
        console.log(`wall ${((Date.now() - started) / 1000).toFixed(0)} s incl. engine start and model load`);
        // Step 8 of 20, where the Sneaker's outline is set and its detail is not.
        await page.locator("#scrub").fill("7");
        await page.fill("#ins-image", "6");
        await page.click("#ins-go");
        await page.waitForFunction(() => /^Step 8 /.test(document.getElementById("ins-status").textContent), null, { timeout: 300_000 });
        console.log(`inside: ${(await page.textContent("#ins-status")).trim()}`);
        await page.locator("#fwd-t").fill("400");
        await page.click("#fwd-loss-go");
        await page.waitForFunction(() => /Mean over t/.test(document.getElementById("fwd-loss-text").textContent), null, { timeout: 300_000 });
        console.log(`loss: ${(await page.textContent("#fwd-loss-text")).trim()}`);
        if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("\n")}`);
        await page.screenshot({ path: out, fullPage: true });
        console.log(`wrote ${rel(out)}`);
    });
}

if (want("blog")) {
    const out = path.join(ROOT, "docs/blog-widgets.png");
    await withPage(ctx("blog"), { viewport: { width: 900, height: 1000 } }, async ({ page, url, pageErrors }) => {
        await page.goto(new URL("examples/blog.html", url).href);
        // The widgets sample on the CPU here (see the top of this file); on a visitor's
        // machine they take WebGPU where there is a hardware adapter.
        await page.evaluate(() => document.querySelectorAll("diffusion-playground").forEach((w) => w.setAttribute("backend", "cpu")));
        const widgets = page.locator("diffusion-playground");
        for (let i = 0; i < (await widgets.count()); i++) {
            const w = widgets.nth(i);
            await w.scrollIntoViewIfNeeded();
            await page.waitForFunction((k) => ["done", "error"].includes(document.querySelectorAll("diffusion-playground")[k].dataset.state), i, { timeout: 1_800_000, polling: 500 });
            const st = await w.evaluate((el) => ({ state: el.dataset.state, text: el.shadowRoot.querySelector("#status").textContent.trim() }));
            console.log(`widget ${i + 1}: ${st.text}`);
            if (st.state !== "done") throw new Error(st.text);
        }
        if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("\n")}`);
        // The article from the first widget's heading to the end of the second figure.
        const [top, bottom] = await page.evaluate(() => {
            const figs = document.querySelectorAll("figure");
            const y = (el, edge) => el.getBoundingClientRect()[edge] + scrollY;
            return [Math.max(0, y(figs[0], "top") - 60), y(figs[1], "bottom") + 10];
        });
        await page.screenshot({ path: out, fullPage: true, clip: { x: 0, y: top, width: 900, height: bottom - top } });
        console.log(`wrote ${rel(out)}`);
    });
}
