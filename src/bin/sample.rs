//! `sample`: class-conditional images from a diffusers `UNet2DModel` folder, on the native
//! GPU backend (Vulkan/Metal/DX12, the same kernels the browser runs) or the CPU backend
//! (`--backend auto|webgpu|cpu`; auto takes the CPU when the only adapter is a software one).
//!
//! cargo run --release --bin sample -- --model www/models/fashion --class-name Sneaker \
//!     --steps 20 --guidance 2 --seed 1 --n 16 --out grid.png

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;
    let args = native::Args::parse();
    if let Err(e) = native::run(&args) {
        eprintln!("sample: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use clap::Parser;
    use diffusion_playground::backend::{Backend, BackendChoice};
    use diffusion_playground::image::{grid_rgba, npy_bytes, parse_npy};
    use diffusion_playground::model::UNetConfig;
    use diffusion_playground::pipeline::SampleRequest;
    use diffusion_playground::sched::{SamplerKind, SchedulerConfig};

    #[derive(Parser, Debug)]
    #[command(
        about = "Sample class-conditional images from a diffusers UNet2DModel folder on the GPU or the CPU"
    )]
    pub struct Args {
        /// Model folder: config.json, diffusion_pytorch_model.safetensors (or model.safetensors),
        /// optionally scheduler_config.json and manifest.json (class names)
        #[arg(long)]
        model: PathBuf,
        /// Class index for every image
        #[arg(long, conflicts_with = "class_name")]
        class: Option<u32>,
        /// Class name from the model's manifest.json (case-insensitive), e.g. Sneaker
        #[arg(long)]
        class_name: Option<String>,
        /// Number of images
        #[arg(long, default_value_t = 16)]
        n: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Classifier-free guidance scale w: eps_u + w (eps_c - eps_u); 1 = conditional only
        #[arg(long, default_value_t = 2.0)]
        guidance: f32,
        /// ddpm | ddim | dpmpp2m | euler_a
        #[arg(long, default_value = "ddim")]
        sampler: String,
        /// DDIM's eta (0 = deterministic, 1 = DDPM-like noise)
        #[arg(long, default_value_t = 0.0)]
        eta: f32,
        /// Override scheduler_config.json's clip_sample (DDPM and DDIM clamp x0_hat to
        /// +-clip_sample_range), as diffusers' `from_pretrained(dir, clip_sample=...)` does
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        clip_sample: Option<bool>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Global index of the first image: image k of a run equals image 0 of a run with
        /// --first-image k and the same seed
        #[arg(long, default_value_t = 0)]
        first_image: u32,
        /// float32 .npy [n, C, H, W]: the initial x_T (overrides the seed's noise)
        #[arg(long)]
        init_noise: Option<PathBuf>,
        /// Grid of the final images as PNG
        #[arg(long)]
        out: Option<PathBuf>,
        /// The final x_0 as float32 .npy [n, C, H, W] in the model's [-1, 1] range
        #[arg(long)]
        out_npy: Option<PathBuf>,
        /// Folder for per-step PNG grids of x_t and x0_hat
        #[arg(long)]
        trace: Option<PathBuf>,
        /// auto | webgpu | cpu: auto samples on the GPU when there is a hardware adapter and
        /// on the CPU otherwise (a software adapter such as lavapipe is slower than the CPU)
        #[arg(long, default_value = "auto")]
        backend: String,
        /// CPU backend threads (0 = one per core)
        #[arg(long, default_value_t = 0)]
        threads: usize,
    }

    pub fn run(a: &Args) -> Result<(), String> {
        let started = Instant::now();
        let choice: BackendChoice =
            a.backend.parse().map_err(|e: diffusion_playground::EngineError| e.to_string())?;
        if a.n == 0 || a.n > 65_536 {
            return Err(format!("--n {}: give 1 to 65536 images", a.n));
        }
        let read_text = |name: &str| -> Result<Option<String>, String> {
            let p = a.model.join(name);
            match std::fs::read_to_string(&p) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", p.display())),
            }
        };
        let config =
            read_text("config.json")?.ok_or_else(|| format!("{} has no config.json", a.model.display()))?;
        let weights_path = ["diffusion_pytorch_model.safetensors", "model.safetensors"]
            .iter()
            .map(|n| a.model.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| format!("{} has no diffusion_pytorch_model.safetensors", a.model.display()))?;
        let weights = std::fs::read(&weights_path).map_err(|e| format!("{}: {e}", weights_path.display()))?;
        let (backend, why) =
            Backend::load(choice, &config, &weights, a.threads).map_err(|e| e.to_string())?;
        let mut sched = match read_text("scheduler_config.json")? {
            Some(t) => SchedulerConfig::from_json(&t).map_err(|e| format!("scheduler_config.json: {e}"))?,
            None => SchedulerConfig::default(),
        };
        if let Some(clip) = a.clip_sample {
            sched.clip_sample = clip;
        }
        let class = resolve_class(a, backend.config(), read_text("manifest.json")?.as_deref())?;
        let kind: SamplerKind =
            a.sampler.parse().map_err(|e: diffusion_playground::EngineError| e.to_string())?;
        let [c, h, w] = backend.sample_shape();
        let init_noise = match &a.init_noise {
            None => None,
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let (shape, data) = parse_npy(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
                if shape != [a.n, c, h, w] {
                    return Err(format!(
                        "{}: shape {shape:?}, but --n {} needs [{}, {c}, {h}, {w}]",
                        p.display(),
                        a.n,
                        a.n
                    ));
                }
                Some(data)
            }
        };
        let request = SampleRequest {
            classes: class.map(|c| vec![c; a.n]).unwrap_or_default(),
            guidance: a.guidance,
            kind,
            steps: a.steps,
            eta: a.eta,
            seed: a.seed,
            first_image: a.first_image,
            init_noise,
        };
        let load_ms = started.elapsed().as_secs_f64() * 1e3;

        let mut session = backend.session(a.n).map_err(|e| e.to_string())?;
        let run = session.start(&backend, &sched, &request).map_err(|e| e.to_string())?;
        if let Some(dir) = &a.trace {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut step_ms = Vec::with_capacity(run.steps());
        let sampling = Instant::now();
        for k in 0..run.steps() {
            let t0 = Instant::now();
            pollster::block_on(session.step(&backend, &run, k)).map_err(|e| e.to_string())?;
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some(dir) = &a.trace {
                let r = pollster::block_on(session.read(&backend, true)).map_err(|e| e.to_string())?;
                let x0 = r.x0_hat.unwrap_or_default();
                write_png(&dir.join(format!("step{k:04}_xt.png")), &r.x, [a.n, c, h, w])?;
                write_png(&dir.join(format!("step{k:04}_x0hat.png")), &x0, [a.n, c, h, w])?;
            }
        }
        let sampling_ms = sampling.elapsed().as_secs_f64() * 1e3;
        let x = pollster::block_on(session.read(&backend, false)).map_err(|e| e.to_string())?.x;
        if let Some(p) = &a.out {
            write_png(p, &x, [a.n, c, h, w])?;
        }
        if let Some(p) = &a.out_npy {
            std::fs::write(p, npy_bytes(&x, &[a.n, c, h, w])).map_err(|e| format!("{}: {e}", p.display()))?;
        }

        let mut sorted = step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        eprintln!("{} images, {} {} steps, guidance {}; {why}", a.n, run.steps(), a.sampler, a.guidance);
        eprintln!(
            "load {load_ms:.0} ms; sampling {sampling_ms:.0} ms: {:.1} ms/step median, {:.1} min, {:.1} max (step 0 includes pipeline compilation)",
            median,
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0)
        );
        Ok(())
    }

    fn resolve_class(a: &Args, config: &UNetConfig, manifest: Option<&str>) -> Result<Option<u32>, String> {
        let classes = config.num_class_embeds;
        match (a.class, &a.class_name, classes) {
            (None, None, None) => Ok(None),
            (Some(_), _, None) | (_, Some(_), None) => {
                Err("this model has no classes (num_class_embeds is null); drop --class".into())
            }
            (None, None, Some(_)) => {
                Err("this model is class-conditional: pass --class N or --class-name NAME".into())
            }
            (Some(c), _, Some(n)) => {
                if c as usize >= n {
                    Err(format!(
                        "--class {c}: the model has classes 0..{} (and the null class {})",
                        n - 2,
                        n - 1
                    ))
                } else {
                    Ok(Some(c))
                }
            }
            (None, Some(name), Some(_)) => {
                let manifest =
                    manifest.ok_or("--class-name needs the model's manifest.json (class names)")?;
                let v: serde_json::Value =
                    serde_json::from_str(manifest).map_err(|e| format!("manifest.json: {e}"))?;
                let names: Vec<String> = v["class_names"]
                    .as_array()
                    .ok_or("manifest.json has no class_names list")?
                    .iter()
                    .map(|n| n.as_str().unwrap_or("").to_string())
                    .collect();
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .map(|i| Some(i as u32))
                    .ok_or_else(|| format!("--class-name {name:?} is not one of {names:?}"))
            }
        }
    }

    fn write_png(path: &Path, x: &[f32], shape: [usize; 4]) -> Result<(), String> {
        let (w, h, rgba) = grid_rgba(x, shape, 2);
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(|e| err(&e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| err(&e))?;
        writer.write_image_data(&rgba).map_err(|e| err(&e))?;
        Ok(())
    }
}
