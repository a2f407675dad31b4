// Takes the README's screenshot: the playground (served by target/release/serve, like the
// browser tests) sampling a 4x4 grid of Sneakers in 20 DDIM steps at guidance 2, in headless
// Chromium (WebGPU on SwiftShader, so ~20 s a step on a 2-core machine; minutes in all).
// Not a test: run it by hand after `./build.sh build && cargo build --release --bin serve`:
//   node docs/screenshot.mjs [out.png]      (default docs/playground.png)
// It prints the page's own timing line, which the README quotes with the screenshot.

import path from "node:path";
import { ROOT, withPage } from "../tests/e2e/harness.mjs";
import { waitForState } from "../tests/e2e/playground-helpers.mjs";

const out = path.resolve(process.argv[2] ?? path.join(ROOT, "docs/playground.png"));
const settings = "model=fashion&label=Sneaker&grid=16&steps=20&guidance=2&sampler=ddim&seed=1";
// withPage wants a node:test context only for its name and diagnostics.
const t = { name: "docs-screenshot", diagnostic: console.log };

await withPage(t, { viewport: { width: 1000, height: 900 } }, async ({ page, url, pageErrors }) => {
    const started = Date.now();
    await page.goto(`${url}?${settings}`);
    const done = await waitForState(page, "done", { timeout: 3_600_000 });
    if (done.state !== "done") throw new Error(`the run did not finish: ${done.text}`);
    if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("\n")}`);
    const shape = await page.evaluate(() => window.__lastShape);
    if (String(shape) !== "16,1,28,28") throw new Error(`unexpected result shape ${shape}`);
    console.log(`${settings}: ${done.text}`);
    console.log(`timing: ${(await page.textContent("#timing")).trim()}`);
    console.log(`wall ${((Date.now() - started) / 1000).toFixed(0)} s incl. engine start and model load`);
    await page.screenshot({ path: out, fullPage: true });
    console.log(`wrote ${path.relative(ROOT, out)}`);
});
