// Without WebGPU the page says so in plain language and throws nothing unhandled.
import assert from "node:assert/strict";
import { test } from "node:test";
import { waitForEngine, withPage } from "./harness.mjs";

async function expectPlainError({ page, url, pageErrors }) {
    await page.goto(url);
    const status = await waitForEngine(page);
    assert.equal(status.state, "error", `expected an error, got: ${status.text}`);
    assert.match(status.text, /WebGPU/, status.text);
    assert.doesNotMatch(status.text, /^Unexpected error/, "an unhandled rejection reached the page");
    assert.equal(await page.isDisabled("#run"), true, "the run button must stay disabled");
    assert.equal(await page.isHidden("#results"), true);
    // Give late rejections a moment to surface.
    await page.waitForTimeout(500);
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    return status;
}

// Chromium on Linux without --enable-unsafe-webgpu: navigator.gpu exists but
// requestAdapter() resolves to null, so Engine.create() rejects.
test("no WebGPU adapter: plain-language error", { timeout: 90_000 }, async (t) => {
    await withPage(t, { webgpu: false }, async (ctx) => {
        const { text } = await expectPlainError(ctx);
        t.diagnostic(text);
    });
});

// A browser without the WebGPU API at all (older Firefox or Safari): no navigator.gpu.
test("no navigator.gpu: plain-language error", { timeout: 90_000 }, async (t) => {
    const initScript = () => {
        delete Navigator.prototype.gpu;
    };
    await withPage(t, { webgpu: false, initScript }, async (ctx) => {
        const { text } = await expectPlainError(ctx);
        assert.equal(await ctx.page.evaluate(() => "gpu" in navigator), false);
        t.diagnostic(text);
    });
});
