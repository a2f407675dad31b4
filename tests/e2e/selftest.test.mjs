// The kernel check page (www/selftest.html) on WebGPU (SwiftShader in headless Chromium): the engine starts,
// and every WGSL kernel agrees with the CPU reference in the browser.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readStatus, waitForEngine, withPage } from "./harness.mjs";

// SwiftShader on a busy 2-core machine is slow; the inner waits fail first (with a
// message), the outer timeout is only a backstop.
const SELFTEST_MS = 150_000;

test("kernel check passes on WebGPU", { timeout: SELFTEST_MS + 90_000 }, async (t) => {
    await withPage(t, {}, async ({ page, url, consoleErrors, pageErrors }) => {
        await page.goto(new URL("selftest.html", url).href);
        const ready = await waitForEngine(page);
        assert.match(ready.text, /^Ready on .*\.$/, `engine did not start: ${ready.text}`);
        assert.notEqual(ready.state, "error");
        assert.equal(await page.isEnabled("#run"), true);

        const started = Date.now();
        await page.click("#run");
        await page.waitForFunction(() => document.body.dataset.selftest, null, { timeout: SELFTEST_MS });
        const done = await readStatus(page);
        t.diagnostic(`${ready.text} ${done.text} (${Date.now() - started} ms wall)`);

        const rows = await page.$$eval("#results tbody tr", (trs) =>
            trs.map((tr) => [...tr.cells].map((c) => c.textContent.trim())),
        );
        const failed = rows.filter((r) => r[3] !== "pass");
        assert.equal(
            await page.evaluate(() => document.body.dataset.selftest),
            "passed",
            `${done.text}\n${failed.map((r) => r.join("  ")).join("\n")}`,
        );
        assert.ok(rows.length > 0, "no result rows");
        assert.deepEqual(failed, [], "rows not marked pass");
        assert.equal(await page.isVisible("#results"), true);
        assert.notEqual(done.state, "error", done.text);
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
        assert.deepEqual(consoleErrors, [], "console errors");
    });
});
