// The static server (src/bin/serve.rs), over plain HTTP, no browser.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
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
function rawGet(target, { url = server.url, headers = "" } = {}) {
    const { hostname, port } = new URL(url);
    return new Promise((resolve, reject) => {
        const socket = net.connect(Number(port), hostname, () => {
            socket.end(`GET ${target} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n${headers}Connection: close\r\n\r\n`);
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

/** A throwaway folder to serve, with `files` ({relative path: contents}); removed after. */
async function withFolder(files, links, f) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "serve-test-"));
    const outside = mkdtempSync(path.join(os.tmpdir(), "serve-outside-"));
    writeFileSync(path.join(outside, "secret.txt"), "SECRET-OUTSIDE\n");
    let local;
    try {
        for (const [name, body] of Object.entries(files)) {
            mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
            writeFileSync(path.join(dir, name), body);
        }
        for (const [name, target] of Object.entries(links)) {
            symlinkSync(target.replace("$OUTSIDE", outside), path.join(dir, name));
        }
        local = await startServer(dir);
        await f(local.url);
    } finally {
        await local?.stop();
        rmSync(dir, { recursive: true, force: true });
        rmSync(outside, { recursive: true, force: true });
    }
}

test("symbolic links cannot leave the served folder; links inside it work", async () => {
    await withFolder(
        { "index.html": "<title>t</title>", "inside.txt": "inside\n" },
        { "out.txt": "$OUTSIDE/secret.txt", "outdir": "$OUTSIDE", "in-link.txt": "inside.txt" },
        async (url) => {
            for (const p of ["out.txt", "outdir/secret.txt", "outdir/"]) {
                const { status, text } = await rawGet(`/${p}`, { url });
                assert.equal(status, 404, `${p} -> ${text.slice(0, 200)}`);
                assert.doesNotMatch(text, /SECRET-OUTSIDE/, p);
            }
            const res = await fetch(new URL("in-link.txt", url));
            assert.equal(res.status, 200);
            assert.equal(await res.text(), "inside\n");
        },
    );
});

test("MIME types of every kind of file the site ships", async () => {
    const want = {
        "a.svg": /^image\/svg\+xml/,
        "a.png": /^image\/png$/,
        "a.json": /^application\/json/,
        "a.wasm": /^application\/wasm$/,
        "a.mjs": /^(text|application)\/javascript\b/,
        "a.js": /^text\/javascript\b/,
        "a.txt": /^text\/plain\b/,
        "a.ico": /^image\/(x-icon|vnd\.microsoft\.icon)$/,
        "a.webp": /^image\/webp$/,
        "a.css": /^text\/css\b/,
        "a.html": /^text\/html\b/,
    };
    const files = Object.fromEntries(Object.keys(want).map((name) => [name, "x"]));
    await withFolder(files, {}, async (url) => {
        for (const [name, mime] of Object.entries(want)) {
            const res = await fetch(new URL(name, url));
            assert.equal(res.status, 200, name);
            assert.match(res.headers.get("content-type"), mime, name);
            assert.equal(res.headers.get("cache-control"), "no-cache", name);
            await res.arrayBuffer();
        }
    });
});

test("ranges and conditional requests", async () => {
    const body = "0123456789abcdef";
    await withFolder({ "index.html": "<title>t</title>", "data.bin": body }, {}, async (url) => {
        const part = await fetch(new URL("data.bin", url), { headers: { range: "bytes=4-7" } });
        assert.equal(part.status, 206);
        assert.equal(part.headers.get("content-range"), `bytes 4-7/${body.length}`);
        assert.equal(await part.text(), "4567");

        const full = await fetch(new URL("data.bin", url));
        const modified = full.headers.get("last-modified");
        assert.ok(modified, "Last-Modified is sent");
        await full.arrayBuffer();
        const again = await fetch(new URL("data.bin", url), { headers: { "if-modified-since": modified } });
        assert.equal(again.status, 304);
        await again.arrayBuffer();

        const head = await fetch(new URL("data.bin", url), { method: "HEAD" });
        assert.equal(head.status, 200);
        assert.equal(head.headers.get("content-length"), String(body.length));
        assert.equal((await head.arrayBuffer()).byteLength, 0);
    });
});

test("bounded requests: oversized headers and bodies are refused, a stalled client is dropped", async () => {
    const huge = await rawGet("/", { headers: `X-Filler: ${"a".repeat(1 << 20)}\r\n` }).catch((e) => ({ status: 0, text: String(e) }));
    assert.ok(huge.status === 431 || huge.status === 400 || huge.status === 0 || Number.isNaN(huge.status), `a 1 MiB header got ${huge.text.slice(0, 80)}`);
    assert.notEqual(huge.status, 200);

    const post = await fetch(server.url, { method: "POST", body: "x".repeat(1 << 16) });
    assert.ok(post.status === 413 || post.status === 405, `a 64 KiB body got HTTP ${post.status}`);
    await post.arrayBuffer();

    // Half a request head, then silence: the server must hang up (HEADER_TIMEOUT = 10 s).
    const { hostname, port } = new URL(server.url);
    const started = Date.now();
    await new Promise((resolve, reject) => {
        const socket = net.connect(Number(port), hostname, () => socket.write("GET / HTTP/1.1\r\nHost: x\r\n"));
        socket.setTimeout(20_000, () => reject(new Error("the server kept a stalled connection for 20 s")));
        socket.on("data", () => {});
        socket.on("error", () => resolve());
        socket.on("close", () => resolve());
    });
    const waited = Date.now() - started;
    assert.ok(waited >= 9_000 && waited < 15_000, `dropped after ${waited} ms`);
});
