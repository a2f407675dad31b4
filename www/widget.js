// <diffusion-playground>: the playground as an embeddable custom element.
//
//   <script type="module" src="https://example.org/playground/widget.js"></script>
//   <diffusion-playground model="digits" class="7" steps="20" guidance="2" sampler="ddim"
//       seed="1" grid="4" controls="steps,guidance,seed" autoplay></diffusion-playground>
//
// Attributes (all optional; README.md "The widget" documents them):
//   backend   auto | webgpu | cpu (default auto: WebGPU on a hardware GPU, else the CPU
//             engine in Web Workers, which needs no WebGPU and no special headers)
//   model     a shipped model name (fashion, digits: next to this script) or the URL of a
//             model folder (config.json, diffusion_pytorch_model.safetensors, manifest.json,
//             scheduler_config.json), resolved against the page; default fashion
//   class     class index or class name (case-insensitive), or "all" (one class per image)
//   steps     1..1000 (default 20)      guidance  0..10 (default 2)
//   sampler   ddim | ddpm | dpmpp2m | euler_a (default ddim)      eta  DDIM's eta, 0..1
//   clip      auto | on | off: clamp x0_hat in DDPM/DDIM (default auto: on for DDPM, the
//             model's scheduler_config.json for DDIM)
//   seed      integer (default 1)
//   grid      the NUMBER of images, 1..64 (1, 4, 16, 64 make square grids; default 4)
//   view      xt | x0: what the live preview shows (default xt)
//   controls  which controls to show: "all", "none", or a list of model, backend, class, steps,
//             guidance, sampler, eta, clip, seed, grid, view, scrubber, download, forward, run
//             (default "class steps guidance sampler seed view run")
//   autoplay  present (or "true"): sample as soon as the model is loaded; absent or
//             "false": wait for the Sample button
//
// Every widget on a page shares one GPU device and engine, one loaded copy of each model,
// and takes turns on the GPU (engine.js's queue). Properties: `lastResult` ({x, shape,
// settings}); the element's `data-state` attribute mirrors its status (loading, ready,
// queued, running, done, error); events `dp-result` and `dp-error` bubble out (`dp-error`'s
// detail: {message, kind, field, tensor, status, url, worker}, kind from engine.js
// ERROR_KINDS). After a GPU device loss the widget restarts the GPU by itself. A widget
// removed from the page stops its load and lets go of its model, which is freed when no
// other view holds it.

import { DEFAULTS, Playground, SETTING_KEYS, parseControls, parseSettings } from "./playground.js";

const CSS_URL = new URL("./playground.css", import.meta.url).href;
const DEFAULT_CONTROLS = ["class", "steps", "guidance", "sampler", "seed", "view", "run"];
const ATTRIBUTES = [...SETTING_KEYS, "controls", "autoplay"];

export class DiffusionPlayground extends HTMLElement {
    static observedAttributes = ATTRIBUTES;

    connectedCallback() {
        if (this.pg) return;
        const root = this.shadowRoot ?? this.attachShadow({ mode: "open" });
        root.innerHTML = `<style>:host { display: block; } :host([hidden]) { display: none; }</style><link rel="stylesheet" href="${CSS_URL}">`;
        const host = document.createElement("div");
        root.append(host);
        const settings = { ...DEFAULTS, grid: 4, ...this.readSettings() };
        this.pg = new Playground(host, {
            settings,
            compact: true,
            controls: parseControls(this.getAttribute("controls"), DEFAULT_CONTROLS),
            base: document.baseURI,
            // A widget has no one watching it to press "Restart the GPU".
            autoRestart: true,
            onState: (state, text, error) => {
                this.dataset.state = state;
                if (state === "error") {
                    const { kind, field, tensor, status, url, worker } = error ?? {};
                    this.dispatchEvent(new CustomEvent("dp-error", { bubbles: true, detail: { message: text, kind, field, tensor, status, url, worker } }));
                }
            },
            onResult: (r) => this.dispatchEvent(new CustomEvent("dp-result", { bubbles: true, detail: r })),
        });
        this.pg.start();
    }

    readSettings() {
        const s = parseSettings((k) => this.getAttribute(k));
        // autoplay is a boolean attribute: present means on unless it says false.
        s.autoplay = this.hasAttribute("autoplay") && !/^(0|false|no|off)$/i.test(this.getAttribute("autoplay"));
        return s;
    }

    attributeChangedCallback(name, old, value) {
        if (!this.pg || old === value) return;
        if (name === "controls") return; // fixed once built
        const s = this.readSettings();
        if (name === "autoplay") {
            this.pg.settings.autoplay = s.autoplay;
            return;
        }
        if (s[name] !== undefined) this.pg.set(name, s[name]);
    }

    disconnectedCallback() {
        // A widget moved in the DOM is reconnected at once; only a removed one stops.
        queueMicrotask(() => {
            if (!this.isConnected && this.pg) {
                this.pg.destroy();
                this.pg = null;
                this.shadowRoot.replaceChildren();
            }
        });
    }

    get lastResult() {
        return this.pg?.lastResult ?? null;
    }

    /** Samples now with the current settings; resolves when the run ends. */
    sample() {
        return this.pg?.sample();
    }
}

if (!customElements.get("diffusion-playground")) customElements.define("diffusion-playground", DiffusionPlayground);
