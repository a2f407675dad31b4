// One worker of the CPU backend's pool (engine.js CpuPool): its own wasm instance and its
// own copy of the model, sampling the share of the images the page gives it, one step per
// message, so the page can preview, cancel between steps and merge the workers' images.
//
// Messages in:  {id, type: "load", config, weights (ArrayBuffer), scheduler, analytic}
//               (analytic: {text, sha256} of analytic_dpm.json, or null)
//               {id, type: "start", options}   (Model.sample's options for this share)
//               {id, type: "step", k, preview}
//               {id, type: "forwardPart", k, first, count}  (part of the model batch)
//               {id, type: "finishStep", k, modelOut, preview} (the update on the whole batch)
//               {id, type: "read"}
//               {id, type: "schedule", options}  (CpuModel.schedule: the run's timesteps, sigma)
//               {id, type: "inspectStep", k}   (CpuModel.inspectStep: step k taken apart)
//               {id, type: "lossCurve", x0, label, timesteps, noise}  (CpuModel.lossCurve)
// Messages out: {id, ok: true, ...result} or {id, ok: false, name, message, kind, field, tensor}
//               (kind: the engine's taxonomy, engine.js ERROR_KINDS; the page never reads
//               the message to classify an error)

import init, { CpuModel } from "./pkg/diffusion_playground.js";

let model = null;
const ready = init();

async function handle(msg) {
    await ready;
    switch (msg.type) {
        case "load": {
            model?.free();
            model = null;
            model = CpuModel.load(msg.config, new Uint8Array(msg.weights), msg.scheduler ?? undefined);
            // Analytic-DPM's moments: refused ones leave the model usable without them.
            let analyticError = null;
            if (msg.analytic) {
                try {
                    model.setAnalyticMoments(msg.analytic.text, msg.analytic.sha256 ?? undefined);
                } catch (e) {
                    analyticError = e?.message ?? String(e);
                }
            }
            return {
                classes: model.classes,
                shape: Array.from(model.sampleShape),
                alphas: model.alphasCumprod(),
                forward: model.forwardCoefficients(),
                numTrainTimesteps: model.numTrainTimesteps,
                isFlow: model.isFlow,
                samplers: Array.from(model.samplers),
                defaultSampler: model.defaultSampler,
                hasAnalytic: model.hasAnalytic,
                analyticError,
            };
        }
        case "start":
            return { steps: model.start(msg.options), modelBatch: model.modelBatch };
        case "forwardPart": {
            const out = model.forwardPart(msg.k, msg.first, msg.count);
            return { out, transfer: [out.buffer] };
        }
        case "finishStep": {
            const timestep = model.finishStep(msg.k, msg.modelOut);
            if (!msg.preview) return { timestep };
            const r = model.read(true);
            return { timestep, x: r.x, x0: r.x0, transfer: [r.x.buffer, r.x0.buffer] };
        }
        case "step": {
            const timestep = model.step(msg.k);
            if (!msg.preview) return { timestep };
            const r = model.read(true);
            return { timestep, x: r.x, x0: r.x0, transfer: [r.x.buffer, r.x0.buffer] };
        }
        case "read": {
            const r = model.read(false);
            return { x: r.x, transfer: [r.x.buffer] };
        }
        case "inspectStep": {
            const parts = model.inspectStep(msg.k);
            const arrays = ["xt", "modelOut", "eps", "x0", "mean", "noise", "xPrev"].map((key) => parts[key].buffer);
            return { parts, transfer: arrays };
        }
        case "lossCurve":
            return { loss: Array.from(model.lossCurve(msg.x0, msg.label ?? undefined, Uint32Array.from(msg.timesteps), msg.noise)), target: model.lossTarget };
        case "schedule":
            return { schedule: model.schedule(msg.options) };
        case "timesteps":
            return { timesteps: Array.from(model.timesteps(msg.sampler, msg.steps)) };
        case "benchForward": {
            const times = [];
            for (let i = 0; i < msg.reps; i++) {
                const t0 = performance.now();
                model.benchForward(msg.batch);
                times.push(performance.now() - t0);
            }
            return { times };
        }
        default:
            throw Object.assign(new Error(`unknown message ${msg.type}`), { kind: "internal" });
    }
}

self.onmessage = async (ev) => {
    const msg = ev.data;
    try {
        const { transfer = [], ...result } = await handle(msg);
        self.postMessage({ id: msg.id, ok: true, ...result }, transfer);
    } catch (e) {
        self.postMessage({ id: msg.id, ok: false, name: e?.name ?? "Error", message: e?.message ?? String(e), kind: e?.kind, field: e?.field, tensor: e?.tensor });
    }
};
