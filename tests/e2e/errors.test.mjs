// The page's error states: a 404, a refused cross-origin request, truncated and corrupt
// weights (the manifest's size and sha256 checks, and the engine's own safetensors error),
// an unsupported config, a file the manifest lists but the server lacks, and weights larger
// than the manifest says (refused from Content-Length, or stopped mid-stream without one).
// Each shows the engine's error taxonomy (data-kind, data-field, data-http-status on
// #status). The broken models live in a temporary copy of www/ that this test serves
// (playground-helpers.mjs makeBrokenRoot); nothing broken is committed.
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

// Serves models/unsized/ without Content-Length (as a chunked or compressed answer comes), so
// only the streaming cap can stop its download.
function dropContentLength() {
    const real = window.fetch;
    window.fetch = async (input, init) => {
        const res = await real(input, init);
        const url = typeof input === "string" ? input : input.url;
        if (!url.includes("/models/unsized/")) return res;
        return new Response(res.body, { status: res.status, statusText: res.statusText });
    };
}

test("error states show plain messages and the engine's kinds", { timeout: 300_000 }, async (t) => {
    await withPage(t, { root: root.dir, initScript: dropContentLength }, async ({ page, url, pageErrors }) => {
        // [name, model, kind, message, detail]
        const cases = [
            ["404", "models/missing/", "network", /config\.json was not found \(HTTP 404\)/, { httpStatus: "404" }],
            ["cors", `${other.url}models/fashion/`, "network", /another site .*CORS/, { httpStatus: "" }],
            ["truncated-engine", "models/truncated/", "weights", /truncated or corrupt: the weights file is unreadable/, {}],
            ["truncated-size", "models/short/", "checksum", /1,000,000 bytes but manifest\.json says 11,168,732/, {}],
            ["corrupt-sha256", "models/corrupt/", "checksum", /corrupt: its SHA-256 is/, {}],
            ["bad-config", "models/badconfig/", "config", /not supported .*time_embedding_type/, { field: "time_embedding_type" }],
            ["listed-scheduler-404", "models/nosched/", "network", /scheduler_config\.json was not found \(HTTP 404\) .*though manifest\.json lists it/, { httpStatus: "404" }],
            ["oversize-refused", "models/oversize/", "limits", /larger than the 1,000,000 bytes manifest\.json gives: the server announces 11,168,732 bytes, so it was refused before downloading/, {}],
            ["oversize-stream", "models/unsized/", "limits", /larger than the 1,000,000 bytes manifest\.json gives: the download was stopped after [\d,]+ bytes/, {}],
        ];
        for (const [name, model, kind, message, detail] of cases) {
            const started = Date.now();
            await page.goto(`${url}?model=${encodeURIComponent(model)}&grid=1&steps=1&autoplay=0`);
            const s = await waitForState(page, ["error", "ready"], { timeout: 90_000, allowError: true });
            t.diagnostic(`${name}: [${s.state}/${s.kind} ${JSON.stringify({ field: s.field, httpStatus: s.httpStatus })}] ${s.text} (${Date.now() - started} ms)`);
            await screenshot(page, `error-${name}`);
            assert.equal(s.state, "error", `${name}: ${s.text}`);
            assert.equal(s.kind, kind, `${name}: ${s.text}`);
            assert.match(s.text, message, name);
            for (const [k, v] of Object.entries(detail)) assert.equal(s[k], v, `${name}: ${k}`);
            assert.equal(await page.isDisabled("#run"), true, `${name}: Sample stays disabled`);
            if (name === "oversize-stream") {
                // Stopped near the cap, not after the whole 11 MB.
                const stopped = Number(s.text.match(/stopped after ([\d,]+) bytes/)[1].replace(/,/g, ""));
                assert.ok(stopped > 1_000_000 && stopped < 4_000_000, `stopped after ${stopped} bytes`);
            }
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

// Outside a secure context (plain HTTP from another host than localhost) the browser has no
// crypto.subtle: the page still loads the model, and says the digests went unchecked.
test("no crypto.subtle: a visible warning that the SHA-256 could not be verified", { timeout: 120_000 }, async (t) => {
    const initScript = () => {
        Object.defineProperty(Crypto.prototype, "subtle", { get: () => undefined, configurable: true });
    };
    await withPage(t, { initScript }, async ({ page, url, pageErrors }) => {
        await page.goto(`${url}?model=digits&grid=1&steps=1&autoplay=0`);
        const s = await waitForState(page, "ready", { timeout: 60_000 });
        assert.equal(s.state, "ready", s.text);
        assert.equal(await page.evaluate(() => crypto.subtle), undefined);
        assert.equal(await page.isVisible("#warning"), true, "the warning is shown");
        const warning = await page.textContent("#warning");
        t.diagnostic(warning);
        assert.match(warning, /Could not verify the download's SHA-256: not a secure context/);
        await screenshot(page, "error-no-crypto-subtle");
        assert.deepEqual(pageErrors, [], "uncaught errors in the page");
    });
});
