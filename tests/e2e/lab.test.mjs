// The 2-D lab (www/lab.html): the wasm lab starts without WebGPU, draws score arrows and
// trajectories, and the steps slider, the t scrubber and the mixture editor change what it
// shows. The page reports what it drew as data attributes on #lab (see www/lab.js).
import assert from "node:assert/strict";
import { test } from "node:test";
import { screenshot, withPage } from "./harness.mjs";

const state = (page, sel = "#lab") =>
    page.$eval(sel, (e) => ({
        state: e.dataset.state,
        arrows: Number(e.dataset.arrows ?? -1),
        trajectories: Number(e.dataset.trajectories ?? -1),
        points: Number(e.dataset.trajectoryPoints ?? -1),
        components: Number(e.dataset.components ?? -1),
        result: e.dataset.result,
        status: e.querySelector(".lab-status").textContent,
    }));

/** Pixels of the canvas within 12 per channel of `rgb` (opaque final-sample dots). */
const countColor = (page, rgb) =>
    page.$eval(
        "#lab canvas",
        (c, rgb) => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (Math.abs(d[i] - rgb[0]) < 12 && Math.abs(d[i + 1] - rgb[1]) < 12 && Math.abs(d[i + 2] - rgb[2]) < 12) n++;
            }
            return n;
        },
        rgb,
    );

/** A hash of every canvas pixel. */
const canvasHash = (page) =>
    page.$eval("#lab canvas", (c) => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let h = 0;
        for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) | 0;
        return h;
    });

/** Sets a range input and fires `input`, as dragging it would. */
const setRange = (page, name, value) =>
    page.$eval(
        `#lab input[name="${name}"]`,
        (e, v) => {
            e.value = String(v);
            e.dispatchEvent(new Event("input", { bubbles: true }));
        },
        value,
    );

/** Waits until data-result differs from `before`. */
const resultChange = (page, before) =>
    page.waitForFunction((b) => document.querySelector("#lab").dataset.result !== b, before, { timeout: 20_000 });

test("lab.html draws arrows and trajectories and follows its controls", { timeout: 120_000 }, async (t) => {
    // No WebGPU needed: the lab is CPU-only wasm.
    await withPage(t, { webgpu: false, viewport: { width: 1100, height: 900 } }, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(new URL("lab.html?preset=ring", url).href);
        await page.waitForFunction(() => {
            const e = document.querySelector("#lab");
            return e.dataset.state === "error" || (e.dataset.state === "ready" && e.dataset.result);
        }, null, { timeout: 60_000 });
        const s0 = await state(page);
        t.diagnostic(JSON.stringify(s0) + " " + (await page.$eval("#lab .lab-timing", (e) => e.textContent)));
        assert.equal(s0.state, "ready", s0.status);
        // 21 x 21 arrows (the one at the ring's centre has length 0), the ring's 8
        // components, 4 default samplers (DDPM, DDIM, Langevin, flow) x 300 points, of which
        // 60 per sampler are drawn as lines.
        assert.ok(s0.arrows >= 21 * 21 - 1, `arrows ${s0.arrows}`);
        assert.equal(s0.components, 8);
        assert.equal(s0.trajectories, 4 * 60);
        assert.equal(s0.points, 4 * 300);
        // The final samples are on the canvas: opaque dots in the flow ODE's colour (drawn
        // last), and DDIM's once it is the only sampler left (the checkboxes rerun).
        const flow = await countColor(page, [0xe3, 0x77, 0xc2]);
        for (const id of ["ddpm", "langevin", "flow"]) await page.click(`#lab input[name="${id}"]`);
        await page.waitForFunction(() => document.querySelector("#lab").dataset.trajectoryPoints === "300");
        const ddim = await countColor(page, [0x1f, 0x77, 0xb4]);
        t.diagnostic(`flow-coloured pixels ${flow}, DDIM-coloured (alone) ${ddim}`);
        // 300 dots of 3 x 3 pixels; overlaps on the 8 modes leave far fewer, but hundreds.
        assert.ok(ddim > 300 && flow > 300, `DDIM ${ddim}, flow ${flow} pixels`);
        for (const id of ["ddpm", "langevin", "flow"]) await page.click(`#lab input[name="${id}"]`);
        await page.waitForFunction(() => document.querySelector("#lab").dataset.trajectoryPoints === "1200");
        s0.result = await page.$eval("#lab", (e) => e.dataset.result);

        // Arrows off: fewer dark-grey arrow strokes, data-arrows 0, a different picture.
        const h0 = await canvasHash(page);
        await page.click('#lab input[name="arrows"]');
        await page.waitForFunction(() => document.querySelector("#lab").dataset.arrows === "0");
        assert.notEqual(await canvasHash(page), h0, "hiding the arrows changed nothing");
        await page.click('#lab input[name="arrows"]');

        // The steps slider reruns every sampler.
        await setRange(page, "steps", 5);
        await resultChange(page, s0.result);
        const s1 = await state(page);
        assert.equal(s1.trajectories, 4 * 60);

        // The t scrubber moves the field and the cloud but not the runs.
        const h1 = await canvasHash(page);
        await setRange(page, "t", 900);
        await page.waitForFunction((h) => {
            const c = document.querySelector("#lab canvas");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let x = 0;
            for (let i = 0; i < d.length; i++) x = (x * 31 + d[i]) | 0;
            return x !== h;
        }, h1, { timeout: 20_000 });
        assert.equal((await state(page)).result, s1.result, "moving t must not rerun the samplers");

        // The mixture editor: a click on empty space adds a component (and changes the runs).
        const box = await page.$eval("#lab canvas", (c) => {
            const r = c.getBoundingClientRect();
            return { x: r.left, y: r.top, w: r.width, h: r.height };
        });
        // World (1.8, 1.8) is far from the ring (radius 0.8); the view is [-2.5, 2.5]^2.
        const px = (wx, wy) => [box.x + ((wx + 2.5) / 5) * box.w, box.y + ((2.5 - wy) / 5) * box.h];
        await page.mouse.click(...px(1.8, 1.8));
        await resultChange(page, s1.result);
        const s2 = await state(page);
        assert.equal(s2.components, 9);
        // Dragging a centre moves it: the ring's component at angle 0 sits at (0.8, 0).
        const [ax, ay] = px(0.8, 0);
        await page.mouse.move(ax, ay);
        await page.mouse.down();
        await page.mouse.move(ax - 40, ay + 40, { steps: 4 });
        await page.mouse.up();
        await resultChange(page, s2.result);
        const s3 = await state(page);
        assert.equal(s3.components, 9);
        // The selected component's weight slider reweights it.
        await setRange(page, "weight", 4);
        await resultChange(page, s3.result);
        // The timestep spacing (under "More") reruns the samplers on other timesteps.
        const s4 = await state(page);
        await page.click("#lab details summary");
        await page.selectOption('#lab select[name="spacing"]', "trailing");
        await resultChange(page, s4.result);
        // A preset replaces the mixture.
        await page.selectOption('#lab select[name="preset"]', "checker");
        await page.waitForFunction(() => document.querySelector("#lab").dataset.components === "8");
        await screenshot(page, "lab-1-edited");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});

test("<lab-widget> mounts the lab in a shadow root", { timeout: 90_000 }, async (t) => {
    await withPage(t, { webgpu: false }, async ({ page, url, pageErrors }) => {
        await page.goto(new URL("lab.html", url).href);
        await page.evaluate(() => {
            document.body.innerHTML = '<lab-widget preset="two" steps="10" samplers="ddim,flow"></lab-widget>';
        });
        const w = await page.waitForFunction(() => {
            const root = document.querySelector("lab-widget")?.shadowRoot?.querySelector(".lab");
            return root?.dataset.result && root.dataset;
        }, null, { timeout: 60_000 });
        const d = await w.jsonValue();
        t.diagnostic(JSON.stringify(d));
        assert.equal(d.state, "ready");
        assert.equal(Number(d.trajectories), 2 * 60);
        assert.equal(Number(d.trajectoryPoints), 2 * 300);
        assert.equal(Number(d.components), 2);
        assert.ok(Number(d.arrows) > 400);
        assert.deepEqual(pageErrors, []);
    });
});
