// <diffusion-playground>: the playground as an embeddable custom element.
//
//   <script type="module" src="https://example.org/playground/widget.js"></script>
//   <diffusion-playground model="digits" label="7" steps="20" guidance="2" sampler="ddim"
//       seed="1" grid="4" controls="steps,guidance,seed" autoplay></diffusion-playground>
//
// Attributes (all optional; README.md "The widget" documents them):
//   backend   auto | webgpu | cpu (default auto: WebGPU on a hardware GPU, else the CPU
//             engine in Web Workers, which needs no WebGPU and no special headers)
//   model     a shipped model name (fashion, digits, fashion-flow: next to this script) or the URL of a
//             model folder (config.json, diffusion_pytorch_model.safetensors, manifest.json,
//             scheduler_config.json), resolved against the page; default fashion
//   label     the diffusion class: index or name (case-insensitive), or "all" (one label per
//             image). HTML's `class` attribute is only a CSS class here: it never changes
//             the label and never re-samples.
//   steps     1..1000 (default 20)      guidance  0..10 (default 2)
//   sampler   ddim | ddpm | dpmpp2m | euler_a for a diffusion model, flow_euler | flow_heun
//             for a flow-matching one (default: the model's, ddim or flow_euler; one that
//             does not suit the model is reported as an error)      eta  DDIM's eta, 0..1
//             (eta, clip, spacing and variance do not apply to a flow-matching model)
//   clip      auto | on | off: clamp x0_hat in DDPM/DDIM (default auto: on for DDPM, the
//             model's scheduler_config.json for DDIM)
//   spacing   default | leading | trailing | linspace: which timesteps the steps visit
//             (default: the model's scheduler_config.json timestep_spacing)
//   variance  default | fixed_small | fixed_large | analytic: DDPM's added noise, beta-tilde,
//             beta, or Analytic-DPM's optimal one (models whose manifest lists
//             analytic_dpm.json; also DDIM's noise) (default: the model's variance_type)
//   seed      integer (default 1)
//   grid      the NUMBER of images, 1..64 (1, 4, 16, 64 make square grids; default 4)
//   view      xt | x0: what the live preview shows (default xt)
//   compare   key:v1,v2,… (model, sampler, guidance, steps, eta, clip, spacing, variance,
//             label): one row per value, all from the seed's x_T, one shared scrubber;
//             model:fashion,fashion-flow runs each model with its default sampler unless
//             `sampler` names one it runs
//   controls  which controls to show: "all", "none", or a list of model, backend, label,
//             steps, guidance, sampler, eta, clip, spacing, variance, seed, grid, view,
//             compare, scrubber, download, inside, forward, schedule, run (default "label
//             steps guidance sampler seed view run"); `inside` is the inside-one-step panel
//   autoplay  present (or "true"): sample once the model is loaded; "eager": also load at
//             once instead of when the widget nears the viewport; absent or "false": wait
//             for the Sample button
//
// Nothing is downloaded until the widget comes within about a screen of the viewport
// (IntersectionObserver), unless autoplay="eager". Space (with the focus in the widget)
// plays or pauses; the run row has Sample, Pause, Step and Stop.
//
// Every widget on a page shares one GPU device and engine, one loaded copy of each model,
// and takes turns on the GPU (engine.js's queue; a paused run keeps its turn). Properties:
// `lastResult` ({x, shape, settings, rows?}); the element's `data-state` attribute mirrors
// its status (idle, loading, ready, queued, running, paused, stopped, done, error); events
// `dp-step` ({step, of, t, ms, row, value}: after every denoising step), `dp-result` and
// `dp-error` bubble out (`dp-error`'s detail: {message, kind, field, tensor, status, url,
// worker}, kind from engine.js ERROR_KINDS). After a GPU device loss the widget restarts
// the GPU by itself. A widget removed from the page stops its load and lets go of its
// model, which is freed when no other view holds it. Theming: README.md "Theming".

import { DEFAULTS, Playground, SETTING_KEYS, WIDGET_CONTROLS, parseControls, parseSettings } from "./playground.js";

const CSS_URL = new URL("./playground.css", import.meta.url).href;
const ATTRIBUTES = [...SETTING_KEYS, "controls", "autoplay"];
/** How far outside the viewport a widget starts loading: about one screen. */
const NEAR = "100% 0px 100% 0px";

export class DiffusionPlayground extends HTMLElement {
    static observedAttributes = ATTRIBUTES;

    connectedCallback() {
        if (this.pg) return;
        const root = this.shadowRoot ?? this.attachShadow({ mode: "open" });
        root.innerHTML = `<style>:host { display: block; } :host([hidden]) { display: none; }</style><link rel="stylesheet" href="${CSS_URL}">`;
        const host = document.createElement("div");
        root.append(host);
        const settings = { ...DEFAULTS, grid: 4, ...this.readSettings() };
        const emit = (type, detail) => this.dispatchEvent(new CustomEvent(type, { bubbles: true, detail }));
        this.pg = new Playground(host, {
            settings,
            compact: true,
            controls: parseControls(this.getAttribute("controls"), WIDGET_CONTROLS),
            base: document.baseURI,
            // A widget has no one watching it to press "Restart the GPU".
            autoRestart: true,
            onState: (state, text, error) => {
                this.dataset.state = state;
                if (state === "error") {
                    const { kind, field, tensor, status, url, worker } = error ?? {};
                    emit("dp-error", { message: text, kind, field, tensor, status, url, worker });
                }
            },
            onStep: (d) => emit("dp-step", d),
            onResult: (r) => emit("dp-result", r),
        });
        if (this.eager() || typeof IntersectionObserver === "undefined") {
            this.pg.start();
            return;
        }
        this.pg.setStatus("The model loads when this comes into view.", "idle");
        this.observer = new IntersectionObserver(
            (entries) => {
                if (!entries.some((e) => e.isIntersecting) || !this.pg) return;
                this.observer.disconnect();
                this.observer = null;
                this.pg.start();
            },
            { rootMargin: NEAR },
        );
        this.observer.observe(this);
    }

    eager() {
        return /^eager$/i.test(this.getAttribute("autoplay") ?? "");
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
            if (this.eager() && this.observer) {
                this.observer.disconnect();
                this.observer = null;
                this.pg.start();
            }
            return;
        }
        const v = s[name] ?? (name === "compare" ? "" : undefined);
        if (v === undefined) return;
        // Before the widget has come into view there is no model: just remember the value.
        if (this.observer) {
            this.pg.settings[name] = v;
            this.pg.syncControls();
            return;
        }
        this.pg.set(name, v);
    }

    disconnectedCallback() {
        // A widget moved in the DOM is reconnected at once; only a removed one stops.
        queueMicrotask(() => {
            if (!this.isConnected && this.pg) {
                this.observer?.disconnect();
                this.observer = null;
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

    /** Pauses a run, resumes a paused one, or starts one (the Space key). */
    playPause() {
        this.pg?.playPause();
    }

    /** Runs one denoising step, then pauses. */
    step() {
        this.pg?.stepOnce();
    }

    /** Stops the run in flight. */
    stop() {
        this.pg?.stop();
    }
}

if (!customElements.get("diffusion-playground")) customElements.define("diffusion-playground", DiffusionPlayground);
