// The schedule panel (www/panels/schedule.js) and the spacing / variance controls: the
// visited-timestep ticks follow steps and spacing (the numbers are the engine's
// `schedule(options)`, checked against diffusers' spacing rules), the marker follows the
// scrubber, sigma follows the DDPM variance, and the URL carries both controls.
import assert from "node:assert/strict";
import { test } from "node:test";
import { withPage } from "./harness.mjs";
import { waitForState } from "./playground-helpers.mjs";

const sched = (page) => page.$eval("#sched", (s) => ({ ...s.dataset }));
const waitTimesteps = (page, list) =>
    page.waitForFunction((want) => document.getElementById("sched").dataset.timesteps === want, list, { timeout: 30_000 });

test("schedule panel: visited ticks follow steps and spacing, the marker follows the scrubber", { timeout: 300_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=2&guidance=2&seed=5&sampler=ddim&spacing=trailing`);
        const done = await waitForState(page, "done");
        assert.equal(done.state, "done", done.text);
        assert.equal(await page.$eval("#spacing", (s) => s.value), "trailing");

        // Trailing spacing, 2 steps on T = 1000: round(1000 - k * 500) - 1 = [999, 499];
        // the panel shows what the engine's schedule() says for the page's own options.
        let d = await sched(page);
        t.diagnostic(`trailing, 2 DDIM steps: ticks ${d.ticks}, timesteps ${d.timesteps}`);
        assert.equal(d.ticks, "2");
        assert.equal(d.timesteps, "999,499");
        const fromEngine = await page.evaluate(async () => {
            const pg = window.__playground;
            const s = await pg.loaded.model.schedule(pg.options(pg.settings, pg.loaded));
            return { ts: Array.from(s.timesteps).join(","), T: s.alphasCumprod.length, betas: s.betas.length, sigma: Array.from(s.sigma) };
        });
        assert.equal(fromEngine.ts, d.timesteps);
        assert.deepEqual([fromEngine.T, fromEngine.betas], [1000, 1000]);
        assert.deepEqual(fromEngine.sigma, [0, 0], "DDIM with eta 0 adds no noise");
        assert.equal(await page.$$eval("#sched-svg .dp-sched-visits line", (l) => l.length), 2);
        assert.equal(await page.$$eval("#sched-svg .dp-sched-sigma circle", (c) => c.length), 2);
        assert.match(await page.$eval("#sched-svg", (s) => s.getAttribute("aria-label")), /visits 2 timesteps, from t = 999 down to t = 499/);

        // After the run the scrubber is on the last step, and so is the marker.
        assert.deepEqual([d.markerStep, d.markerT], ["1", "499"]);
        const markerX = () => page.$eval("#sched-svg .dp-sched-marker line", (l) => Number(l.getAttribute("x1")));
        const xLast = await markerX();
        await page.locator("#scrub").fill("0");
        d = await sched(page);
        assert.deepEqual([d.markerStep, d.markerT], ["0", "999"]);
        assert.ok((await markerX()) > xLast, "the marker moved right, to t = 999");
        assert.match(await page.textContent("#sched-levels"), /^Step 1 of 2: t = 999, ᾱ_t = /);

        // More steps: more ticks (trailing 5: round(1000 - k * 200) - 1).
        await page.fill("#steps-num", "5");
        await page.dispatchEvent("#steps-num", "change");
        await waitTimesteps(page, "999,799,599,399,199");
        // Leading spacing, 5 steps: k * (1000 // 5) reversed, the run starting at t = 800.
        await page.selectOption("#spacing", "leading");
        await waitTimesteps(page, "800,600,400,200,0");
        assert.match(page.url(), /spacing=leading/);
        // 2 leading steps start at t = 500: the spacing artefact the issue describes.
        await page.fill("#steps-num", "2");
        await page.dispatchEvent("#steps-num", "change");
        await waitTimesteps(page, "500,0");
        await waitForState(page, "done");

        // DDPM's sigma follows the variance control: beta-tilde (fixed_small) is below beta
        // (fixed_large) on every step that adds noise, each as its closed form over the
        // step's alpha_bar pair (diffusers' DDPMScheduler._get_variance).
        await page.selectOption("#sampler", "ddpm");
        await page.fill("#steps-num", "10");
        await page.dispatchEvent("#steps-num", "change");
        const sigmas = async (variance) => {
            await page.selectOption("#variance", variance);
            await page.waitForFunction((v) => window.__playground.sched?.settings.variance === v && window.__playground.sched.sampler === "ddpm" && window.__playground.sched.timesteps.length === 10, variance, { timeout: 30_000 });
            return page.evaluate(() => {
                const s = window.__playground.sched;
                return { sigma: Array.from(s.sigma), a: Array.from(s.alphaBar), ap: Array.from(s.alphaBarPrev) };
            });
        };
        const small = await sigmas("fixed_small");
        const large = await sigmas("fixed_large");
        assert.match(page.url(), /variance=fixed_large/);
        // The sigmas are f32 in the engine: 1e-5 relative covers their rounding.
        const close = (x, y) => Math.abs(x - y) <= 1e-5 * Math.max(1e-3, Math.abs(y));
        for (let k = 0; k < 9; k++) {
            const beta = 1 - large.a[k] / large.ap[k];
            const tilde = ((1 - large.ap[k]) / (1 - large.a[k])) * beta;
            assert.ok(close(large.sigma[k], Math.sqrt(beta)), `fixed_large step ${k}: ${large.sigma[k]} vs sqrt(beta) ${Math.sqrt(beta)}`);
            assert.ok(close(small.sigma[k], Math.sqrt(tilde)), `fixed_small step ${k}: ${small.sigma[k]} vs sqrt(beta-tilde) ${Math.sqrt(tilde)}`);
            assert.ok(small.sigma[k] < large.sigma[k]);
        }
        t.diagnostic(`DDPM 10 leading steps, sigma at step 0: fixed_small ${small.sigma[0].toFixed(4)}, fixed_large ${large.sigma[0].toFixed(4)}; last step ${small.sigma[9]} / ${large.sigma[9]}`);
        await waitForState(page, "done");
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("?spacing=trailing&variance=fixed_large sets the controls, the link and the embed code; narrow layout, both engines", { timeout: 300_000 }, async (t) => {
    await withPage(t, { viewport: { width: 375, height: 740 } }, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(`${url}?model=fashion&label=7&grid=1&steps=3&sampler=ddpm&spacing=trailing&variance=fixed_large&backend=webgpu&autoplay=0`);
        const ready = await waitForState(page, "ready", { timeout: 200_000 });
        assert.equal(ready.state, "ready", ready.text);
        assert.deepEqual(await page.$eval("#spacing", (s) => [s.value, s.disabled]), ["trailing", false]);
        assert.deepEqual(await page.$eval("#variance", (s) => [s.value, s.disabled]), ["fixed_large", false]);
        // The GPU Model's schedule() draws the panel without a run.
        await page.waitForFunction(() => document.getElementById("sched").dataset.ticks === "3", null, { timeout: 30_000 });
        const d = await sched(page);
        t.diagnostic(`WebGPU model, trailing DDPM 3 steps: ${d.timesteps}`);
        assert.equal(d.timesteps, "999,666,332");
        assert.equal(d.markerStep, "0");
        // The one-column layout keeps the panel inside the screen.
        const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.getElementById("sched-svg").getBoundingClientRect().right]);
        assert.ok(widths[0] <= 375 && widths[1] <= 375, `wider than the screen: ${widths}`);

        await page.click(".dp-share summary");
        await page.click("#copy-link");
        await page.waitForFunction(() => /copied|selected/.test(document.getElementById("share-note").textContent));
        const q = new URL(await page.$eval("#embed-code", (x) => x.value)).searchParams;
        assert.deepEqual([q.get("spacing"), q.get("variance")], ["trailing", "fixed_large"]);
        await page.click("#copy-embed");
        const code = await page.$eval("#embed-code", (x) => x.value);
        assert.match(code, / steps="3" sampler="ddpm" spacing="trailing" variance="fixed_large" /);
        // The options reach both engines: DDPM with trailing spacing and fixed_large variance
        // on WebGPU (SwiftShader) and on the CPU workers draw the same image, to 1e-3 (the
        // playground test's bound for the WGSL vs CPU rounding differences compounding over
        // steps, 1/8 of an 8-bit grey level); fixed_small draws another one.
        const runDone = async (start) => {
            const n = await page.evaluate(() => window.__playground.runs.length);
            await start();
            await page.waitForFunction((n) => window.__playground.runs.length > n && window.__playground.runs.at(-1).status === "done", n, { timeout: 200_000 });
            return page.evaluate(() => ({ x: Array.from(window.__lastResult), s: window.__playground.runs.at(-1).settings }));
        };
        const gpu = await runDone(() => page.click("#run"));
        await page.selectOption("#backend", "cpu");
        await waitForState(page, "ready", { timeout: 120_000 });
        const cpu = await runDone(() => page.click("#run"));
        assert.deepEqual([gpu.s.backend, cpu.s.backend, cpu.s.variance, cpu.s.spacing], ["webgpu", "cpu", "fixed_large", "trailing"]);
        const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
        const errBackends = maxDiff(gpu.x, cpu.x);
        const small = await runDone(() => page.selectOption("#variance", "fixed_small"));
        const effect = maxDiff(small.x, cpu.x);
        t.diagnostic(`DDPM trailing 3 steps, fixed_large: WebGPU vs CPU max abs err ${errBackends.toExponential(2)}; fixed_small vs fixed_large max abs diff ${effect.toFixed(3)}`);
        assert.ok(errBackends <= 1e-3, `WebGPU vs CPU ${errBackends}`);
        assert.ok(effect > 0.05, `the variance changed nothing (${effect})`);
        await page.selectOption("#variance", "fixed_large");

        // Fixed variances are DDPM's only: DDIM reads only the analytic one, so the link
        // drops fixed_large; another sampler greys the control out.
        await page.selectOption("#sampler", "ddim");
        assert.equal(await page.isDisabled("#variance"), false);
        assert.doesNotMatch(page.url(), /variance=/);
        await page.selectOption("#sampler", "dpmpp2m");
        assert.equal(await page.isDisabled("#variance"), true);
        await page.selectOption("#sampler", "ddim");
        assert.match(page.url(), /spacing=trailing/);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});

test("widget: spacing and variance attributes, the schedule panel as a control", { timeout: 200_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, pageErrors, consoleErrors }) => {
        await page.goto(new URL("embed.html?model=fashion&label=7&grid=1&steps=2&sampler=ddpm&spacing=trailing&variance=fixed_small&controls=spacing,variance,schedule,run&autoplay=0", url).href);
        await page.waitForFunction(() => document.querySelector("diffusion-playground")?.dataset.state === "ready", null, { timeout: 60_000 });
        const data = () => page.$eval("diffusion-playground", (e) => ({ ...e.shadowRoot.getElementById("sched").dataset }));
        const until = (want) =>
            page.waitForFunction((want) => document.querySelector("diffusion-playground").shadowRoot.getElementById("sched").dataset.timesteps === want, want, { timeout: 30_000 });
        await until("999,499");
        assert.deepEqual(await page.$eval("diffusion-playground", (e) => [e.shadowRoot.getElementById("spacing").value, e.shadowRoot.getElementById("variance").value]), ["trailing", "fixed_small"]);
        assert.equal((await data()).sampler, "ddpm");
        // An attribute set later re-plans the run (and the panel) like the control does.
        await page.$eval("diffusion-playground", (e) => e.setAttribute("spacing", "leading"));
        await until("500,0");
        t.diagnostic(`widget: ${JSON.stringify(await data())}`);
        assert.deepEqual(pageErrors, []);
        assert.deepEqual(consoleErrors, []);
    });
});
