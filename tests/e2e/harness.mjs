// Shared helpers of the browser tests (not a test file itself: `node --test` only runs
// *.test.mjs here, and build.sh passes those files explicitly).
//
// Each test gets its own static server (`target/release/serve www 0`, which binds a free
// port and prints it) and its own headless Chromium with a fresh profile; both are torn
// down in `finally` blocks, so a failing test leaves nothing running. A screenshot of every
// page test lands in target/e2e-screenshots/<test name>.png, passed or failed.

import { spawn } from "node:child_process";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const SCREENSHOTS = path.join(ROOT, "target/e2e-screenshots");
const SERVE = path.join(ROOT, "target/release/serve");
// Debian's chromium (apt); `npx playwright install` is not used anywhere.
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

// Chromium flags. On this Debian Chromium (156), headless, `--enable-unsafe-webgpu` alone
// is enough for WebGPU: with no GPU, Dawn falls back to SwiftShader's Vulkan
// (adapter.info: vendor "google", architecture "swiftshader", isFallbackAdapter true).
// `--use-angle=swiftshader`, `--use-webgpu-adapter=swiftshader` and
// `--enable-features=Vulkan` were tried and change nothing here, so they are left out.
// Without `--enable-unsafe-webgpu`, navigator.gpu exists but requestAdapter() resolves
// to null ("No available adapters."), which is what the no-WebGPU test relies on.
// The rest keeps the browser quiet and offline: no updates, sync, QUIC or first-run UI;
// --no-sandbox because CI often runs as root or in containers without user namespaces.
// playwright's launch() adds --headless and a fresh temporary --user-data-dir.
const COMMON_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
];
export const WEBGPU_ARGS = ["--enable-unsafe-webgpu"];

/** Starts the project's static server on a free port; resolves to { url, stop }. */
export async function startServer(dir = "www") {
    const child = spawn(SERVE, [path.resolve(ROOT, dir), "0"], { stdio: ["ignore", "pipe", "pipe"] });
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    const url = await new Promise((resolve, reject) => {
        let out = "";
        const timer = setTimeout(() => fail(new Error("serve printed no address within 15 s")), 15_000);
        const fail = (e) => {
            clearTimeout(timer);
            child.kill("SIGKILL");
            reject(new Error(`${e.message}\nstdout: ${out}\nstderr: ${stderr}`));
        };
        child.once("error", fail); // e.g. ENOENT: target/release/serve not built
        child.once("exit", (code) => fail(new Error(`serve exited with ${code}`)));
        child.stdout.on("data", (d) => {
            out += d;
            const m = out.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
            if (m) {
                clearTimeout(timer);
                resolve(m[1]);
            }
        });
    });
    return {
        url,
        async stop() {
            process.removeListener("exit", killOnExit);
            if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
            await exited;
        },
    };
}

/** Launches headless Chromium; `webgpu: false` leaves out --enable-unsafe-webgpu. */
export function launchChromium({ webgpu = true } = {}) {
    return chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [...COMMON_ARGS, ...(webgpu ? WEBGPU_ARGS : [])],
        timeout: 60_000,
    });
}

/**
 * Runs `body({ page, url, consoleErrors, pageErrors })` against a fresh server, browser and
 * page, then screenshots the page and tears everything down, whether `body` threw or not.
 * `initScript` (a function) runs in the page before any of its scripts.
 */
export async function withPage(t, { webgpu = true, initScript, root = "www", viewport } = {}, body) {
    const server = await startServer(root);
    let browser;
    try {
        browser = await launchChromium({ webgpu });
        const page = await browser.newPage({ viewport: viewport ?? { width: 900, height: 900 } });
        const consoleErrors = [];
        const pageErrors = [];
        page.on("console", (m) => {
            if (m.type() !== "error") return;
            const where = m.location()?.url ?? "";
            // The page has no icon; Chromium asks for one anyway and logs the 404.
            if (new URL(where, server.url).pathname === "/favicon.ico") return;
            consoleErrors.push(`${m.text()} (${where})`);
        });
        page.on("pageerror", (e) => pageErrors.push(String(e?.stack ?? e)));
        page.on("crash", () => pageErrors.push("the page crashed"));
        if (initScript) await page.addInitScript(initScript);
        try {
            await body({ page, url: server.url, consoleErrors, pageErrors, browser });
        } catch (e) {
            // Say what the page said: the status line and any errors it logged.
            const status = await readStatus(page).catch(() => null);
            const notes = [
                status && `#status [${status.state}]: ${status.text}`,
                ...pageErrors.map((x) => `page error: ${x}`),
                ...consoleErrors.map((x) => `console error: ${x}`),
            ].filter(Boolean);
            if (notes.length && e instanceof Error) e.message += `\n${notes.join("\n")}`;
            throw e;
        } finally {
            await screenshot(page, t.name);
        }
    } finally {
        await browser?.close().catch(() => {});
        await server.stop();
    }
}

/** Writes target/e2e-screenshots/<name>.png (full page); never throws. */
export async function screenshot(page, name) {
    await mkdir(SCREENSHOTS, { recursive: true });
    const file = path.join(SCREENSHOTS, `${name.replace(/[^\w.-]+/g, "_").slice(0, 100)}.png`);
    try {
        await page.screenshot({ path: file, fullPage: true, timeout: 15_000 });
    } catch (e) {
        console.error(`screenshot ${file} failed: ${e.message}`);
    }
}

/** The #status paragraph as { text, state }. */
export function readStatus(page) {
    return page.$eval("#status", (s) => ({ text: s.textContent.trim(), state: s.dataset.state ?? "" }));
}

/** Waits until the page has left "Loading the engine…": ready or failed. */
export async function waitForEngine(page, timeout = 60_000) {
    await page.waitForFunction(
        () => {
            const s = document.getElementById("status");
            return s.dataset.state === "error" || s.textContent.startsWith("Ready on");
        },
        null,
        { timeout },
    );
    return readStatus(page);
}
