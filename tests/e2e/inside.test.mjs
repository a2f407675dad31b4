// The "inside one step" panel (www/panels/inside.js) and the forward panel's loss curve:
// the page samples on its GPU (SwiftShader here), the inspector re-runs the chosen image on
// the CPU engine up to the scrubbed step; the parts must add up as the sampler's equations
// say and land on the frame the page showed, and the loss curve must be measured for the
// image the forward panel shows.
import assert from "node:assert/strict";
import { test } from "node:test";
import { withPage } from "./harness.mjs";
import { waitForState } from "./playground-helpers.mjs";

const waitInside = (page, step) =>
    page.waitForFunction((s) => window.__playground.inside?.step === s && /^Step /.test(document.getElementById("ins-status").textContent), step, { timeout: 120_000 });

test("inside one step: the parts add up and reproduce the shown frame; the loss curve is measured", { timeout: 400_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=2&steps=4&guidance=2&seed=3&sampler=ddpm`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        assert.equal(await page.isDisabled("#ins-go"), false);
        assert.equal(await page.textContent("#ins-go"), "Look inside step 4");

        // Step 3 (frame 2) of the second image.
        await page.locator("#scrub").fill("2");
        await page.fill("#ins-image", "2");
        await page.click("#ins-go");
        await waitInside(page, 2);
        const r = await page.evaluate(() => {
            const pg = window.__playground;
            const p = pg.inside.parts;
            const c = p.coefficients;
            const per = p.xt.length;
            let mean = 0, add = 0, x0 = 0, s2 = 0;
            const clip = (v) => (c.clip != null ? Math.max(-c.clip, Math.min(c.clip, v)) : v);
            for (let i = 0; i < per; i++) {
                mean = Math.max(mean, Math.abs(c.x * p.xt[i] + c.x0 * p.x0[i] + c.eps * p.eps[i] - p.mean[i]));
                add = Math.max(add, Math.abs(p.mean[i] + p.noise[i] - p.xPrev[i]));
                x0 = Math.max(x0, Math.abs(clip((p.xt[i] - Math.sqrt(1 - p.alphaBar) * p.eps[i]) / Math.sqrt(p.alphaBar)) - p.x0[i]));
                s2 += p.noise[i] * p.noise[i];
            }
            // The page's frames hold both images as bytes (engine.js quantize).
            const q = (v) => Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
            const frames = pg.rows[0].frames;
            let after = 0, before = 0;
            for (let i = 0; i < per; i++) {
                after = Math.max(after, Math.abs(q(p.xPrev[i]) - frames[2].xt[per + i]));
                before = Math.max(before, Math.abs(q(p.xt[i]) - frames[1].xt[per + i]));
            }
            return {
                mean, add, x0, after, before, prevX0: c.prevX0, sigma: p.sigma, noiseStd: Math.sqrt(s2 / per), timestep: p.timestep,
                eq: document.getElementById("ins-eq").textContent, status: document.getElementById("ins-status").textContent,
            };
        });
        t.diagnostic(`step 3: ${r.status}; |mean - sum| ${r.mean.toExponential(1)}, |x' - mean - noise| ${r.add.toExponential(1)}, |x0| ${r.x0.toExponential(1)}, bytes vs frames ${r.before}/${r.after}, sigma ${r.sigma.toFixed(4)} noise std ${r.noiseStd.toFixed(4)}`);
        assert.match(r.status, /^Step 3 of 4 \(t = \d+\) of image 2/);
        // The update is the sum its equation states, f32 arithmetic of O(1) terms.
        assert.ok(r.mean < 1e-4 && r.add < 1e-5 && r.x0 < 1e-4, JSON.stringify(r));
        assert.equal(r.prevX0, 0, "DDPM has no second-order term");
        // DDPM adds noise sigma z with z ~ N(0, I) on 784 values: its std within 15 %.
        assert.ok(r.sigma > 0 && Math.abs(r.noiseStd / r.sigma - 1) < 0.15, JSON.stringify(r));
        // The CPU re-run lands on the GPU's frames (1 byte of rounding either way).
        assert.ok(r.before <= 1 && r.after <= 1, `inspector vs the page's frames: ${r.before} / ${r.after} bytes`);
        assert.match(r.eq, /μ̃ \(the posterior mean\) = /);
        assert.match(r.eq, /σ = 0\.\d+/);
        assert.match(r.eq, /clipped to ±1/);
        const drawn = await page.$$eval("#ins-parts canvas", (cs) => cs.map((c) => c.getAttribute("aria-label")));
        assert.equal(drawn.length, 7);
        for (const label of drawn) assert.match(label, /standard deviation \d/);

        // The panel follows the scrubber and the image once open; the first step of image 1.
        await page.fill("#ins-image", "1");
        await page.dispatchEvent("#ins-image", "change");
        await page.locator("#scrub").fill("0");
        await waitInside(page, 0);
        const first = await page.evaluate(() => ({ image: window.__playground.inside.image, t: window.__playground.inside.parts.timestep }));
        assert.deepEqual(first.image, 0);
        assert.match(await page.textContent("#ins-status"), /^Step 1 of 4 .* of image 1,/);

        // The loss curve of the forward panel's image: 50 timesteps, every value finite and
        // positive; an eps model's loss is large at t = 0 (eps is invisible under almost no
        // noise) and small at t = 999 (x_t is almost eps).
        await page.click("#fwd-loss-go");
        await page.waitForFunction(() => /Mean over t/.test(document.getElementById("fwd-loss-text").textContent), null, { timeout: 120_000 });
        const lc = await page.evaluate(() => ({ ...window.__playground.lossCurve, text: document.getElementById("fwd-loss-text").textContent }));
        t.diagnostic(`loss curve: ${lc.text}; t = 0: ${lc.loss[0].toFixed(4)}, t = 999: ${lc.loss[49].toFixed(5)}`);
        assert.equal(lc.loss.length, 50);
        assert.deepEqual([lc.ts[0], lc.ts[49]], [0, 999]);
        assert.equal(lc.target, "epsilon");
        assert.ok(lc.loss.every((v) => Number.isFinite(v) && v > 0));
        assert.ok(lc.loss[0] > 20 * lc.loss[49], `${lc.loss[0]} vs ${lc.loss[49]}`);
        await page.locator("#fwd-t").fill("500");
        assert.match(await page.textContent("#fwd-levels"), /; loss \d[\d.e+-]* at t = 500$/);

        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

// The equations follow the plan's own coefficients for every sampler: x0-hat from x and the
// output m, the mean from its terms, on a flow model with Heun (2N - 1 evaluations, the
// corrector reading the predictor's x0-hat) and Euler ancestral (sigma-space state).
test("inside one step: flow Heun and Euler ancestral", { timeout: 300_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        const check = () =>
            page.evaluate(() => {
                const p = window.__playground.inside.parts;
                const c = p.coefficients;
                let x0 = 0, mean = 0;
                for (let i = 0; i < p.xt.length; i++) {
                    x0 = Math.max(x0, Math.abs(c.x0FromX * p.xt[i] + c.x0FromOut * p.modelOut[i] - p.x0[i]));
                    mean = Math.max(mean, Math.abs(c.x * p.xt[i] + c.x0 * p.x0[i] + c.eps * p.eps[i] - p.mean[i]));
                }
                return { x0, mean, prevX0: c.prevX0, steps: p.steps, status: document.getElementById("ins-status").textContent, eq: document.getElementById("ins-eq").textContent };
            });
        await page.goto(`${url}?model=fashion-flow&label=7&grid=1&steps=3&guidance=2&seed=3&sampler=flow_heun&backend=cpu`);
        assert.equal((await waitForState(page, "done")).state, "done");
        // Heun 3 levels = 5 evaluations; evaluation 2 is the first corrector.
        await page.locator("#scrub").fill("1");
        await page.click("#ins-go");
        await waitInside(page, 1);
        let r = await check();
        t.diagnostic(`flow_heun: ${r.status} ${r.eq}`);
        assert.equal(r.steps, 5);
        assert.match(r.status, /^Step 2 of 5 /);
        assert.ok(r.x0 < 1e-5, `x0 ${r.x0}`);
        assert.notEqual(r.prevX0, 0, "the corrector reads the predictor's x0");
        assert.match(r.eq, /Heun's corrector/);
        assert.match(r.eq, /x̂0 = 1\.0000 xt − 0\.\d+ v̂θ\./);

        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=4&guidance=2&seed=3&sampler=euler_a&backend=cpu`);
        assert.equal((await waitForState(page, "done")).state, "done");
        await page.locator("#scrub").fill("1");
        await page.click("#ins-go");
        await waitInside(page, 1);
        r = await check();
        t.diagnostic(`euler_a: ${r.status} ${r.eq}`);
        // Sigma-space values reach ~10 here (sigma_t = 2.4): 2e-4 absolute.
        assert.ok(r.x0 < 2e-4 && r.mean < 2e-4, JSON.stringify(r));
        assert.match(r.eq, /Euler ancestral works on x = xt \/ √ᾱt/);
        assert.match(r.eq, /x̂0 = 1\.0000 x − \d+\.\d+ ε̂θ\./);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});
