// The static server (src/bin/serve.rs), over plain HTTP, no browser.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import { ROOT, startServer } from "./harness.mjs";

let server;
before(async () => {
    server = await startServer();
});
after(() => server?.stop());

/**
 * Sends `GET <target>` byte for byte. fetch() cannot test traversal: URL parsing removes
 * `..` and `%2e%2e` segments before the request leaves.
 */
function rawGet(target) {
    const { hostname, port } = new URL(server.url);
    return new Promise((resolve, reject) => {
        const socket = net.connect(Number(port), hostname, () => {
            socket.end(`GET ${target} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: close\r\n\r\n`);
        });
        const chunks = [];
        socket.setTimeout(10_000, () => socket.destroy(new Error(`no answer to GET ${target}`)));
        socket.on("data", (d) => chunks.push(d));
        socket.on("error", reject);
        socket.on("end", () => {
            const text = Buffer.concat(chunks).toString("latin1");
            resolve({ status: Number(text.split(" ")[1]), text });
        });
    });
}

test("index.html at /", async () => {
    const res = await fetch(server.url);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    assert.match(await res.text(), /<title>/);
});

test("404 for a missing file", async () => {
    for (const p of ["no-such-file.js", "pkg/no-such.wasm", "no/such/dir/"]) {
        const res = await fetch(new URL(p, server.url));
        assert.equal(res.status, 404, p);
        await res.arrayBuffer();
    }
});

test("MIME types of .wasm and .js", async () => {
    const wasm = "pkg/diffusion_playground_bg.wasm";
    const js = "pkg/diffusion_playground.js";
    assert.ok(existsSync(path.join(ROOT, "www", wasm)), "www/pkg/ is not built: run ./build.sh build");
    const w = await fetch(new URL(wasm, server.url));
    assert.equal(w.status, 200);
    assert.equal(w.headers.get("content-type"), "application/wasm");
    const bytes = new Uint8Array(await w.arrayBuffer());
    assert.deepEqual([...bytes.slice(0, 4)], [0x00, 0x61, 0x73, 0x6d], "wasm magic");

    const j = await fetch(new URL(js, server.url));
    assert.equal(j.status, 200);
    assert.match(j.headers.get("content-type"), /^text\/javascript\b/);
    await j.arrayBuffer();
});

test("HEAD has no body; other methods are refused", async () => {
    const head = await fetch(server.url, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal((await head.arrayBuffer()).byteLength, 0);
    const post = await fetch(server.url, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    await post.arrayBuffer();
});

test("no path traversal out of www/", async () => {
    for (const target of [
        "/../Cargo.toml",
        "/pkg/../../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E%2FCargo.toml",
        "/..%2f..%2fwww/../Cargo.toml",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/....//Cargo.toml",
    ]) {
        const { status, text } = await rawGet(target);
        assert.equal(status, 404, `${target} -> ${text.slice(0, 200)}`);
        assert.doesNotMatch(text, /\[package\]|root:/, target);
    }
});
