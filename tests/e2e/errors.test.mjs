// The page's error states: a 404, a refused cross-origin request, truncated and corrupt
// weights (the manifest's size and sha256 checks, and the engine's own safetensors error)
// and an unsupported config. The broken models live in a temporary copy of www/ that this
// test serves (playground-helpers.mjs makeBrokenRoot); nothing broken is committed.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { screenshot, startServer, withPage } from "./harness.mjs";
import { makeBrokenRoot, waitForState } from "./playground-helpers.mjs";

let root, other;
before(async () => {
    root = await makeBrokenRoot();
    other = await startServer("www"); // another origin, without CORS headers
});
after(async () => {
    await other?.stop();
    await root?.remove();
});

test("error states show plain messages", { timeout: 300_000 }, async (t) => {
    await withPage(t, { root: root.dir }, async ({ page, url, pageErrors }) => {
        const cases = [
            ["404", "models/missing/", "not-found", /config\.json was not found \(HTTP 404\)/],
            ["cors", `${other.url}models/fashion/`, "network", /another site .*CORS/],
            ["truncated-engine", "models/truncated/", "weights", /truncated or corrupt: the weights file is unreadable/],
            ["truncated-size", "models/short/", "size", /1,000,000 bytes but manifest\.json says 11,168,732/],
            ["corrupt-sha256", "models/corrupt/", "checksum", /corrupt: its SHA-256 is/],
            ["bad-config", "models/badconfig/", "config", /not supported .*time_embedding_type/],
        ];
        for (const [name, model, kind, message] of cases) {
            const started = Date.now();
            await page.goto(`${url}?model=${encodeURIComponent(model)}&grid=1&steps=1&autoplay=0`);
            const s = await waitForState(page, ["error", "ready"], { timeout: 90_000, allowError: true });
            t.diagnostic(`${name}: [${s.state}/${s.kind}] ${s.text} (${Date.now() - started} ms)`);
            await screenshot(page, `error-${name}`);
            assert.equal(s.state, "error", `${name}: ${s.text}`);
            assert.equal(s.kind, kind, `${name}: ${s.text}`);
            assert.match(s.text, message, name);
            assert.equal(await page.isDisabled("#run"), true, `${name}: Sample stays disabled`);
        }
        // A failed file is never cached: nothing under the broken URLs is in the Cache API.
        const cached = await page.evaluate(async () => {
            const c = await caches.open("diffusion-playground-models-v1");
            return (await c.keys()).map((r) => r.url);
        });
        assert.deepEqual(cached.filter((u) => !u.includes("/models/fashion/")), [], cached.join());
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});
