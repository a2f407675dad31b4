// The playground page (www/index.html). Headless Chromium's only WebGPU adapter here is
// SwiftShader, a software one, so `auto` samples on the CPU workers (fast); the last test
// switches the Engine control to WebGPU (about 0.5-0.7 s per image per U-Net pass on
// SwiftShader) to check that both backends draw the same picture, that device loss is shown
// and that "Restart the GPU" recovers from it without a reload.
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, withPage } from "./harness.mjs";
import { sampleNative, waitForState } from "./playground-helpers.mjs";

// Both sides run the same WGSL in f32, on different CPU rasterisers (SwiftShader in
// Chromium, lavapipe natively), whose fused multiply-adds and reduction orders differ:
// differences of ~1e-5 per pass compound over the steps; 1e-3 absolute on [-1, 1] pixels
// leaves an order of magnitude of room and is still 1/8 of an 8-bit grey level.
const TOLERANCE = 1e-3;

const lastResult = (page) => page.evaluate(() => Array.from(window.__lastResult ?? []));

test("page samples a fixed seed like the native CLI, any grid size; download, forward panel, cache", { timeout: 400_000 }, async (t) => {
    const native = await sampleNative(
        ["--model", "www/models/fashion", "--class", "7", "--n", "1", "--steps", "3", "--guidance", "2", "--seed", "5"],
    );
    t.diagnostic(`native: ${native.log.replace(/\n/g, " | ")}`);
    assert.deepEqual(native.shape, [1, 1, 28, 28]);

    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        const started = Date.now();
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=3&guidance=2&seed=5&sampler=ddim`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        t.diagnostic(`1 image, 3 steps: ${done.text} (${Date.now() - started} ms wall incl. engine start and model load)`);
        t.diagnostic(await page.textContent("#timing"));

        const x = await lastResult(page);
        assert.equal(x.length, 784);
        let maxErr = 0;
        for (let i = 0; i < x.length; i++) maxErr = Math.max(maxErr, Math.abs(x[i] - native.data[i]));
        t.diagnostic(`browser vs native CLI: max abs err ${maxErr.toExponential(2)} (tolerance ${TOLERANCE})`);
        assert.ok(maxErr <= TOLERANCE, `max abs err ${maxErr} > ${TOLERANCE}`);
        const spread = Math.max(...x) - Math.min(...x);
        assert.ok(spread > 0.5, `the image is flat (range ${spread})`);

        // The canvas shows it, the scrubber holds every step, the label list is the manifest's.
        assert.equal(await page.$eval("#label option:checked", (o) => o.textContent), "Sneaker");
        assert.equal(await page.$eval("#scrub", (s) => [s.disabled, s.max].join()), "false,2");
        const px = await page.$eval("#canvas", (c) => [c.width, c.height]);
        assert.deepEqual(px, [32, 32]);
        await page.locator("#scrub").fill("0");
        assert.match(await page.textContent("#scrub-out"), /^step 1 of 3/);
        await page.check('input[value="x0"]');
        await screenshot(page, "playground-1-done-x0hat");

        // Download as PNG.
        const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
        const png = await download.createReadStream().then(async (s) => {
            const chunks = [];
            for await (const c of s) chunks.push(c);
            return Buffer.concat(chunks);
        });
        assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "PNG magic");
        assert.match(download.suggestedFilename(), /^fashion-label7-ddim3-w2-seed5\.png$/);

        // Forward process: t = 999 is almost pure noise, t = 0 almost the image.
        await page.locator("#fwd-t").fill("999");
        const far = await page.textContent("#fwd-levels");
        assert.match(far, /^t = 999: ᾱ = .*signal √ᾱ = 0\.0\d\d, noise √\(1−ᾱ\) = 1\.000/, far);
        await page.locator("#fwd-t").fill("0");
        assert.match(await page.textContent("#fwd-levels"), /signal √ᾱ = 1\.000/);
        await page.locator("#fwd-t").fill("400");
        await screenshot(page, "playground-2-forward-panel");

        // 4 images via the controls (1 step: SwiftShader is slow). Batch-independence of the
        // noise (image k is the same at any grid size) is tested natively in tests/pipeline.rs.
        await page.check('input[value="xt"]');
        await page.selectOption("#grid", "4");
        await page.locator("#steps").fill("1");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.steps === 1, null, { timeout: 10_000 });
        const grid = await waitForState(page, "done", { timeout: 150_000 });
        const last = await page.evaluate(() => window.__playground.runs.at(-1));
        assert.equal(last.status, "done", grid.text);
        assert.deepEqual([last.settings.grid, last.settings.steps], [4, 1]);
        assert.deepEqual(await page.evaluate(() => window.__lastShape), [4, 1, 28, 28]);
        const x4 = await lastResult(page);
        assert.equal(x4.length, 4 * 784);
        const img = (k) => x4.slice(k * 784, (k + 1) * 784);
        assert.notDeepEqual(img(0), img(1), "two images of the grid are identical");
        assert.equal(await page.$eval("#canvas", (c) => c.width), 62);
        t.diagnostic(`4-image grid: ${grid.text}`);
        assert.match(page.url(), /grid=4/, "settings are written to the URL");
        await screenshot(page, "playground-3-grid4");

        // Second visit: the weights come from the Cache API.
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=3&autoplay=0`);
        const ready = await waitForState(page, "ready", { timeout: 60_000 });
        assert.match(ready.text, /from the browser cache/, ready.text);
        assert.equal(await page.evaluate(() => window.__playground.loaded.source), "cache");
        t.diagnostic(ready.text);

        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

test("DDPM clips x0_hat by default (clip=auto) like the CLI's --clip-sample on; the Clip control turns it off", { timeout: 300_000 }, async (t) => {
    const args = ["--model", "www/models/fashion", "--class", "7", "--n", "1", "--steps", "3", "--guidance", "2", "--seed", "5", "--sampler", "ddpm"];
    const clipped = await sampleNative([...args, "--clip-sample", "on"]);
    const unclipped = await sampleNative([...args, "--clip-sample", "off"]);
    const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
    // t = 999 is the first of the 3 steps: there x0_hat = x / sqrt(alpha_bar) is far outside [-1, 1].
    const effect = maxDiff(Array.from(clipped.data), unclipped.data);
    t.diagnostic(`native DDPM 3 steps, clipped vs unclipped: max abs diff ${effect.toFixed(3)}`);
    assert.ok(effect > 0.05, `clipping changed nothing (${effect})`);

    await withPage(t, {}, async ({ page, url, pageErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=3&guidance=2&seed=5&sampler=ddpm`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        assert.equal(await page.$eval("#clip", (c) => [c.value, c.disabled].join()), "auto,false");
        const auto = await lastResult(page);
        const errOn = maxDiff(auto, clipped.data);
        t.diagnostic(`clip=auto vs native --clip-sample on: max abs err ${errOn.toExponential(2)}`);
        assert.ok(errOn <= TOLERANCE, `max abs err ${errOn} > ${TOLERANCE}`);

        await page.selectOption("#clip", "off");
        await page.waitForFunction(() => window.__playground.runs.at(-1).settings.clip === "off", null, { timeout: 10_000 });
        await waitForState(page, "done", { timeout: 60_000 });
        assert.equal(await page.evaluate(() => window.__playground.runs.at(-1).status), "done");
        // Unclipped, the shipped trailing spacing starts at t = 999, where x0_hat = (x - sigma m) / alpha
        // multiplies the two backends' f32 rounding of the model output m by sigma / alpha = 2e4,
        // and the final values reach the thousands: the backends agree normwise, to 1e-4 of the
        // largest value (measured 1.4e-5), not to an absolute 1e-3.
        const off = await lastResult(page);
        const errOff = maxDiff(off, unclipped.data);
        const largest = unclipped.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        t.diagnostic(`clip=off vs native --clip-sample off: max abs err ${errOff.toExponential(2)}, values up to ${largest.toFixed(0)} (normwise ${(errOff / largest).toExponential(2)})`);
        assert.ok(errOff <= 1e-4 * largest, `max abs err ${errOff} > 1e-4 x ${largest}`);
        assert.match(page.url(), /clip=off/);

        // Samplers that never clip grey the control out.
        await page.selectOption("#sampler", "euler_a");
        assert.equal(await page.isDisabled("#clip"), true);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});

test("moving a slider mid-run cancels it and re-samples; device loss is shown and the GPU restarts", { timeout: 480_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors }) => {
        await page.goto(`${url}?model=digits&label=3&grid=1&steps=40&guidance=2&seed=2`);
        await page.waitForFunction(() => window.__playground.runs[0]?.stepsDone >= 2, null, { timeout: 120_000 });
        await screenshot(page, "playground-4-mid-run");
        const moved = Date.now();
        await page.locator("#steps").fill("2");
        await page.waitForFunction(() => window.__playground.runs[0].status === "cancelled", null, { timeout: 30_000 });
        const cancelMs = Date.now() - moved;
        const done = await waitForState(page, "done", { timeout: 60_000 });
        const runs = await page.evaluate(() => window.__playground.runs.map((r) => ({ status: r.status, stepsDone: r.stepsDone, steps: r.settings.steps })));
        t.diagnostic(`runs: ${JSON.stringify(runs)}; cancelled ${cancelMs} ms after the slider moved; ${done.text}`);
        assert.equal(runs[0].status, "cancelled");
        assert.ok(runs[0].stepsDone < 40, "the first run went on to the end");
        assert.deepEqual(runs.at(-1), { status: "done", stepsDone: 2, steps: 2 });
        assert.equal(await page.$eval("#scrub", (s) => s.max), "1");
        assert.equal(await page.$eval("#steps-num", (s) => s.value), "2");

        // The same settings on WebGPU (SwiftShader): the same picture as the CPU workers'.
        const cpuImage = await lastResult(page);
        assert.match(await page.textContent("#engine"), /software adapter \(.*swiftshader.*\).*sampling on \d+ CPU thread/i);
        await page.selectOption("#backend", "webgpu");
        await page.waitForFunction(() => window.__playground.backend?.kind === "webgpu" && window.__playground.runs.at(-1).status === "done" && window.__playground.runs.length >= 3, null, { timeout: 120_000 });
        const gpuDone = await waitForState(page, "done", { timeout: 60_000 });
        t.diagnostic(`WebGPU: ${gpuDone.text} · ${await page.textContent("#engine")}`);
        const gpuImage = await lastResult(page);
        const cross = gpuImage.reduce((m, v, i) => Math.max(m, Math.abs(v - cpuImage[i])), 0);
        t.diagnostic(`WebGPU (SwiftShader) vs CPU workers, same settings: max abs err ${cross.toExponential(2)} (tolerance ${TOLERANCE})`);
        assert.ok(cross <= TOLERANCE, `max abs err ${cross} > ${TOLERANCE}`);
        assert.match(page.url(), /backend=webgpu/);

        // Device loss: the page says so and offers to restart the GPU, which builds a new
        // device, uploads the model again (from the Cache API: no download) and samples the
        // same picture, with no reload.
        const requests = [];
        page.on("request", (r) => r.url().endsWith(".safetensors") && requests.push(r.url()));
        await page.evaluate(() => window.__playground.engine.loseDevice());
        const lost = await waitForState(page, "error", { timeout: 15_000, allowError: true });
        assert.equal(lost.kind, "gpu-lost", lost.text);
        assert.match(lost.text, /GPU device was lost/);
        assert.equal(await page.isVisible("#restart"), true);
        assert.equal(await page.isDisabled("#run"), true);
        await screenshot(page, "playground-5-device-lost");
        const before = await page.evaluate(() => window.__playground.runs.length);
        await page.click("#restart");
        await page.waitForFunction((n) => window.__playground.runs.length > n && window.__playground.runs.at(-1).status === "done", before, { timeout: 180_000 });
        const again = await waitForState(page, "done", { timeout: 10_000 });
        t.diagnostic(`after the restart: ${again.text}`);
        assert.equal(await page.isVisible("#restart"), false);
        assert.equal(await page.evaluate(() => window.__playground.engine.isLost), false);
        const restarted = await lastResult(page);
        assert.ok(restarted.reduce((m, v, i) => Math.max(m, Math.abs(v - gpuImage[i])), 0) <= 1e-6, "the restarted GPU draws another picture");
        assert.deepEqual(requests, [], "the restart downloaded the weights again");
        assert.equal(await page.evaluate(async () => (await import("./engine.js")).modelStats().live), 1, "the lost model was not freed");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});

test("phone-sized viewport: no horizontal scrolling, controls labelled", { timeout: 120_000 }, async (t) => {
    await withPage(t, { viewport: { width: 375, height: 740 } }, async ({ page, url }) => {
        await page.goto(`${url}?model=digits&label=1&grid=1&steps=1&autoplay=0`);
        await waitForState(page, "ready", { timeout: 60_000 });
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
        // Every visible form control has an accessible name.
        const unnamed = await page.$$eval("input, select, button", (els) =>
            els
                .filter((e) => e.offsetParent !== null)
                .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || (e.tagName === "BUTTON" && e.textContent.trim())))
                .map((e) => e.outerHTML.slice(0, 80)),
        );
        assert.deepEqual(unnamed, []);
        await page.keyboard.press("Tab");
        await screenshot(page, "playground-6-phone");
        t.diagnostic("ok");
    });
});

// Issue 14's page side: compare rows with a shared scrubber, `controls` in the URL, the
// share panel's link and embed code (the tag samples the same rows when pasted into another
// page), a status line that announces start and end only, formatted times, Tab order that
// follows the narrow layout, and the kernel check out of the footer's main line.
test("page: compare and controls in the URL, copy link / embed code, quiet status, narrow focus order", { timeout: 300_000 }, async (t) => {
    const initScript = () => {
        window.__statusTexts = [];
        new MutationObserver(() => {
            const s = document.getElementById("status");
            if (s) window.__statusTexts.push(s.textContent);
        }).observe(document, { subtree: true, childList: true, characterData: true });
    };
    await withPage(t, { viewport: { width: 375, height: 740 }, initScript }, async ({ page, url, pageErrors, consoleErrors }) => {
        const controls = "label,steps,compare,scrubber,download,run";
        await page.goto(`${url}?model=digits&label=3&grid=1&steps=3&guidance=2&seed=4&compare=guidance:0,2&controls=${controls}`);
        const done = await waitForState(page, "done", { timeout: 120_000 });
        t.diagnostic(`${done.text} · ${await page.textContent("#timing")}`);
        assert.match(done.text, /^Done: 2 runs of 1 image of “3” in \d+(\.\d)? (ms|s)\.$/);
        assert.match(await page.textContent("#timing"), /^\d+(\.\d)? (ms|s) per step \(median of 6\) · total \d+(\.\d)? (ms|s)$/);
        // Only the controls the URL names are shown.
        const visible = await page.$$eval("form input, form select", (els) => els.filter((x) => x.offsetParent !== null).map((x) => x.id));
        assert.deepEqual(visible.sort(), ["compare", "label", "steps", "steps-num"]);
        // The live region said when the run started and ended, not every step.
        const said = await page.evaluate(() => window.__statusTexts.filter((x, i, a) => x !== a[i - 1]));
        t.diagnostic(`status texts: ${JSON.stringify(said)}`);
        assert.ok(!said.some((x) => /step \d+ of/.test(x)), "a step was announced");
        assert.ok(said.some((x) => /^Sampling 1 image for each of 2 runs \(guidance 0, guidance 2\)/.test(x)));
        // The shared scrubber moves every row by fraction of its run.
        assert.equal(await page.$eval("#scrub", (s) => s.max), "100");
        await page.locator("#scrub").fill("0");
        const caps = await page.$$eval(".dp-cmp-row figcaption", (f) => f.map((x) => x.textContent.trim()));
        assert.equal(caps.length, 2);
        for (const c of caps) assert.match(c, /step 1 of 3/, c);

        // Copy link and Copy embed code (the panel ticks the controls the page's link names).
        await page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
        await page.click(".dp-share summary");
        await page.click("#copy-link");
        await page.waitForFunction(() => /copied|selected/.test(document.getElementById("share-note").textContent));
        const link = await page.$eval("#embed-code", (x) => x.value);
        t.diagnostic(`link: ${link}`);
        const q = new URL(link).searchParams;
        assert.deepEqual([q.get("model"), q.get("label"), q.get("steps"), q.get("compare"), q.get("controls")], ["digits", "3", "3", "guidance:0,2", controls]);
        await page.click("#copy-embed");
        const code = await page.$eval("#embed-code", (x) => x.value);
        t.diagnostic(`embed code: ${code}`);
        assert.match(code, /^<script type="module" src="http:\/\/127\.0\.0\.1:\d+\/widget\.js"><\/script>\n<diffusion-playground model="digits" label="3" steps="3" seed="4" grid="1" compare="guidance:0,2" controls="label,steps,compare,scrubber,download,run" autoplay><\/diffusion-playground>$/);
        const clip = await page.evaluate(() => navigator.clipboard.readText().catch(() => null));
        if (clip !== null) assert.equal(clip, code);

        // Tab order follows what is seen in this one-column layout: top to bottom.
        await page.evaluate(() => window.scrollTo(0, 0));
        await page.click("header h1"); // Tab starts from here
        const order = [];
        for (let i = 0; i < 30; i++) {
            await page.keyboard.press("Tab");
            const at = await page.evaluate(() => {
                const e = document.activeElement;
                if (!e || e === document.body || !e.closest("#playground")) return null;
                const r = e.getBoundingClientRect();
                return { id: e.id || e.tagName, y: r.top + scrollY, bottom: r.bottom + scrollY, x: r.left };
            });
            if (at) order.push(at);
        }
        t.diagnostic(`tab order: ${order.map((o) => `${o.id}@${Math.round(o.y)}`).join(" ")}`);
        assert.ok(order.length >= 8, "few focusable controls reached");
        for (let i = 1; i < order.length; i++) {
            const [a, b] = [order[i - 1], order[i]];
            // Further down, or on the same line (the boxes overlap vertically) further right.
            const sameLine = b.y < a.bottom && b.bottom > a.y;
            assert.ok(b.y >= a.bottom - 4 || (sameLine && b.x >= a.x), `Tab went back from ${a.id} (${a.y}) to ${b.id} (${b.y})`);
        }
        // The kernel check is a developers' link under the Engine control, not in the footer.
        assert.equal(await page.$$eval("footer a[href='selftest.html']", (a) => a.length), 0);
        assert.equal(await page.$$eval("#backend-help a[href='selftest.html']", (a) => a.length), 1);
        // The model cards are linked from the header.
        assert.deepEqual(await page.$$eval("header a", (a) => a.map((x) => x.getAttribute("href"))), ["models/fashion/README.md", "models/digits/README.md", "models/fashion-flow/README.md"]);

        // Space with nothing focused plays: a new run of the same rows.
        const runs = await page.evaluate(() => window.__playground.runs.length);
        await page.click("header h1");
        await page.keyboard.press("Space");
        await page.waitForFunction((n) => window.__playground.runs.length > n && window.__playground.runs.at(-1).status === "done", runs, { timeout: 60_000 });

        // The embed code pasted into another page samples the same rows.
        const first = await page.evaluate(() => window.__playground.lastResult.rows.map((r) => Array.from(r.x)));
        await page.goto(new URL("examples/blog.html", url).href); // any page of the site, for its origin
        await page.evaluate((code) => {
            document.body.innerHTML = code.replace(/<script[^>]*><\/script>\n/, "");
            import(new URL("../widget.js", location.href).href);
        }, code);
        await page.waitForFunction(() => document.querySelector("diffusion-playground")?.dataset.state === "done", null, { timeout: 120_000 });
        const again = await page.$eval("diffusion-playground", (e) => e.lastResult.rows.map((r) => Array.from(r.x)));
        assert.deepEqual(again, first, "the embed code drew other rows");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});
