// This engine vs onnxruntime-web on the same model, in one headless Chromium page on one
// WebGPU adapter (SwiftShader here, a real GPU elsewhere). Not part of ./build.sh test.
//
//   ./build.sh build && cargo build --release --bin serve
//   train/.venv/bin/python train/export_onnx.py --model www/models/fashion --out target/ort
//   (cd bench/ort && npm ci)
//   node bench/ort/run.mjs [batches=2,32] [reps=3] [all|engine|ort|wasm]
//
// Prints the page's log and writes target/ort/results.json. See bench.html for what is timed.

import { cp, mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { ROOT, withPage } from "../../tests/e2e/harness.mjs";
import { linkOrCopy } from "../../tests/e2e/playground-helpers.mjs";

const [batches = "2,32", reps = "3", only = "all"] = process.argv.slice(2);
const ORT_DIST = path.join(ROOT, "bench/ort/node_modules/onnxruntime-web/dist");
const ONNX = path.join(ROOT, "target/ort");
for (const [p, how] of [
    [path.join(ROOT, "www/pkg/diffusion_playground_bg.wasm"), "./build.sh build"],
    [path.join(ORT_DIST, "ort.webgpu.min.mjs"), "(cd bench/ort && npm ci)"],
    [path.join(ONNX, "unet.onnx"), "train/.venv/bin/python train/export_onnx.py --model www/models/fashion --out target/ort"],
]) {
    if (!existsSync(p)) throw new Error(`${path.relative(ROOT, p)} is missing: ${how}`);
}

const root = path.join(ROOT, "target/tmp/ort-bench-root");
await rm(root, { recursive: true, force: true });
await mkdir(path.join(root, "ort"), { recursive: true });
await cp(path.join(ROOT, "www"), root, { recursive: true });
await linkOrCopy(path.join(ROOT, "bench/ort/bench.html"), path.join(root, "bench.html"));
// The bundle picks its wasm build at run time (asyncify for the WebGPU provider, the plain
// one for wasm): ship every variant.
for (const f of (await readdir(ORT_DIST)).filter((f) => f === "ort.webgpu.min.mjs" || /^ort-wasm-simd-threaded\.(\w+\.)?(mjs|wasm)$/.test(f))) {
    await linkOrCopy(path.join(ORT_DIST, f), path.join(root, "ort", f));
}
await cp(ONNX, path.join(root, "onnx"), { recursive: true, filter: (p) => !p.endsWith("results.json") });

const t = { name: "ort-bench", diagnostic: console.log };
try {
    await withPage(t, { root: path.relative(ROOT, root) }, async ({ page, url }) => {
        page.on("console", (m) => m.type() === "error" && console.error(`page: ${m.text()}`));
        await page.goto(`${url}bench.html?batches=${batches}&reps=${reps}&only=${only}`);
        await page.waitForFunction(() => window.__bench, null, { timeout: 3_600_000, polling: 1000 });
        const results = await page.evaluate(() => window.__bench);
        console.log(await page.textContent("#log"));
        await writeFile(path.join(ONNX, "results.json"), JSON.stringify(results, null, 2));
        if (!results.done) throw new Error(results.error);
        const ratios = Object.keys(results.engine).filter((b) => results.ortWebgpu[b]).map((b) => {
            const e = results.engine[b].msPerStep;
            const o = results.ortWebgpu[b].msPerRun;
            return `batch ${b}: engine ${e.toFixed(1)} ms, onnxruntime-web (webgpu) ${o.toFixed(1)} ms -> ${(o / e).toFixed(2)}x`;
        });
        const cpu = Object.keys(results.engineCpu).filter((b) => results.ortWasm[b]).map((b) => {
            const e = results.engineCpu[b].msPerRun;
            const o = results.ortWasm[b].msPerRun;
            return `batch ${b}: engine CPU backend ${e.toFixed(1)} ms, onnxruntime-web (wasm) ${o.toFixed(1)} ms -> engine takes ${(e / o).toFixed(2)}x the time`;
        });
        console.log([...ratios, ...cpu].join("\n"));
    });
} finally {
    await rm(root, { recursive: true, force: true });
}
