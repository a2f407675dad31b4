// Helpers of the playground's browser tests (not a test file itself).

import { execFile } from "node:child_process";
import { copyFile, cp, link, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { ROOT } from "./harness.mjs";

const run = promisify(execFile);

/**
 * Waits until the page's #status has a data-state in `states`; returns { state, kind, text,
 * field, tensor, httpStatus } (the error's kind and detail when the state is "error").
 * Returns early on "error" (unless `allowError`), so the caller's assertion shows the message.
 */
export async function waitForState(page, states, { timeout = 120_000, allowError = false } = {}) {
    const want = Array.isArray(states) ? states : [states];
    const handle = await page.waitForFunction(
        ({ want, allowError }) => {
            const s = document.getElementById("status");
            if (!s) return null;
            const st = s.dataset.state;
            if (want.includes(st) || (st === "error" && !allowError)) {
                const d = s.dataset;
                return { state: st, kind: d.kind ?? "", text: s.textContent.trim(), field: d.field ?? "", tensor: d.tensor ?? "", httpStatus: d.httpStatus ?? "" };
            }
            return null;
        },
        { want, allowError },
        { timeout, polling: 100 },
    );
    return handle.jsonValue();
}

/** Parses a float32 C-order .npy file into { shape, data }. */
export function parseNpy(buf) {
    const u8 = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    const major = u8[6];
    const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    const [hlen, start] = major === 1 ? [dv.getUint16(8, true), 10] : [dv.getUint32(8, true), 12];
    const header = new TextDecoder().decode(u8.subarray(start, start + hlen));
    if (!header.includes("'<f4'")) throw new Error(`not float32: ${header}`);
    const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    const body = u8.slice(start + hlen);
    return { shape, data: new Float32Array(body.buffer, 0, body.byteLength / 4) };
}

/** Runs the native CLI (target/release/sample on lavapipe) and returns its final x0. */
export async function sampleNative(args) {
    const bin = path.join(ROOT, "target/release/sample");
    if (!existsSync(bin)) throw new Error(`${bin} is missing: cargo build --release --bin sample (./build.sh test does)`);
    const dir = await mkdtemp(path.join(ROOT, "target/tmp/e2e-cli-"));
    const out = path.join(dir, "x.npy");
    const env = { ...process.env };
    if (!env.XDG_RUNTIME_DIR || !existsSync(env.XDG_RUNTIME_DIR)) env.XDG_RUNTIME_DIR = dir;
    try {
        const { stderr } = await run(bin, [...args, "--out-npy", out], { cwd: ROOT, env, timeout: 120_000 });
        return { ...parseNpy(await readFile(out)), log: stderr.trim() };
    } finally {
        await rm(dir, { recursive: true, force: true });
    }
}

/** Hard-links `from` to `to` (big files, no copy), or copies where links fail. */
export async function linkOrCopy(from, to) {
    try {
        await link(from, to);
    } catch {
        await copyFile(from, to);
    }
}

/**
 * A temporary static root for the error tests: the page (www/ without its models) plus
 * broken model folders, so nothing broken is ever committed into www/. Resolves to
 * { dir, remove() }. Models (under models/):
 *   truncated/    weights cut to 1 MB, manifest without a files list -> the engine's error
 *   short/        weights cut to 1 MB, manifest with the real size   -> size check
 *   corrupt/      full-size weights with bytes flipped, real sha256   -> checksum check
 *   badconfig/    config.json with time_embedding_type "fourier"      -> the engine's config error
 *   nosched/      manifest lists scheduler_config.json, file absent   -> 404, not DDPM defaults
 *   oversize/     manifest says the weights are 1,000,000 bytes; the
 *                 full 11 MB file is served (Content-Length)          -> refused before downloading
 *   unsized/      the same, for a test that drops Content-Length      -> stopped mid-download
 *   (missing/ does not exist                                          -> 404)
 */
export async function makeBrokenRoot() {
    await mkdir(path.join(ROOT, "target/tmp"), { recursive: true });
    const dir = await mkdtemp(path.join(ROOT, "target/tmp/e2e-www-"));
    const www = path.join(ROOT, "www");
    await cp(www, dir, { recursive: true, filter: (src) => !src.startsWith(path.join(www, "models")) });
    const fashion = path.join(www, "models/fashion");
    const weightsName = "diffusion_pytorch_model.safetensors";
    const weights = await readFile(path.join(fashion, weightsName));
    const manifest = JSON.parse(await readFile(path.join(fashion, "manifest.json"), "utf8"));
    const config = await readFile(path.join(fashion, "config.json"), "utf8");
    const sched = await readFile(path.join(fashion, "scheduler_config.json"), "utf8");

    const model = async (name, files) => {
        const d = path.join(dir, "models", name);
        await mkdir(d, { recursive: true });
        for (const [f, content] of Object.entries(files)) {
            if (content === "link") await linkOrCopy(path.join(fashion, f), path.join(d, f));
            else await writeFile(path.join(d, f), content);
        }
    };
    const noFiles = JSON.stringify({ ...manifest, files: undefined });
    await model("truncated", {
        "config.json": config,
        "scheduler_config.json": sched,
        "manifest.json": noFiles,
        [weightsName]: weights.subarray(0, 1_000_000),
    });
    await model("short", {
        "config.json": config,
        "scheduler_config.json": sched,
        "manifest.json": JSON.stringify(manifest),
        [weightsName]: weights.subarray(0, 1_000_000),
    });
    const flipped = Buffer.from(weights);
    for (let i = flipped.length - 4096; i < flipped.length - 2048; i++) flipped[i] ^= 0x55;
    await model("corrupt", {
        "config.json": config,
        "scheduler_config.json": sched,
        "manifest.json": JSON.stringify(manifest),
        [weightsName]: flipped,
    });
    const bad = JSON.parse(config);
    bad.time_embedding_type = "fourier";
    await model("badconfig", {
        "config.json": JSON.stringify(bad, null, 2),
        "scheduler_config.json": sched,
        "manifest.json": noFiles,
        [weightsName]: "link",
    });
    await model("nosched", {
        "config.json": config,
        "manifest.json": JSON.stringify(manifest),
        [weightsName]: "link",
    });
    const small = { ...manifest, files: manifest.files.map((f) => (f.name === weightsName ? { ...f, bytes: 1_000_000 } : f)) };
    for (const name of ["oversize", "unsized"]) {
        await model(name, {
            "config.json": config,
            "scheduler_config.json": sched,
            "manifest.json": JSON.stringify(small),
            [weightsName]: "link",
        });
    }
    return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}
