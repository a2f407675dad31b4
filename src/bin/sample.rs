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
    let args = match native::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // One line as for every other error: clap's first line without its "error: "
            // (the usage and tips that follow are what --help prints).
            let text = e.to_string();
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("sample: input error: {first} (see --help)");
            std::process::exit(1);
        }
    };
    if let Err(e) = native::run(&args) {
        // One line whatever the message holds (a path, a nested error), so scripts and
        // tests can take the last line of stderr as the reason.
        let message = e.to_string().lines().map(str::trim).collect::<Vec<_>>().join(" ");
        eprintln!("sample: {} error: {message}", e.kind());
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use clap::Parser;
    use diffusion_playground::backend::{Backend, BackendChoice};
    use diffusion_playground::image::{grid_rgba, npy_bytes, parse_npy};
    use diffusion_playground::model::{folder, UNetConfig};
    use diffusion_playground::pipeline::{check_image_count, SampleRequest};
    use diffusion_playground::sched::analytic::AnalyticMoments;
    use diffusion_playground::sched::{
        manifest_overrides, SamplerKind, SchedulerConfig, SchedulerOverrides, VarianceType,
    };
    use diffusion_playground::EngineError;
    use sha2::{Digest, Sha256};
    use std::sync::Arc;

    type Result<T> = std::result::Result<T, EngineError>;

    #[derive(Parser, Debug)]
    #[command(
        about = "Sample class-conditional images from a diffusers UNet2DModel folder on the GPU or the CPU"
    )]
    pub struct Args {
        /// Model folder: config.json, diffusion_pytorch_model.safetensors (or model.safetensors),
        /// optionally scheduler_config.json and manifest.json (class names)
        #[arg(long)]
        model: PathBuf,
        /// Class index for every image, or `all`: one class per image, cycling 0, 1, ...
        #[arg(long, conflicts_with = "class_name")]
        class: Option<String>,
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
        /// ddpm | ddim | dpmpp2m | euler_a for a diffusion model, flow_euler | flow_heun for a
        /// flow-matching one (default: ddim, or flow_euler when scheduler_config.json names a
        /// FlowMatch scheduler)
        #[arg(long)]
        sampler: Option<String>,
        /// DDIM's eta (0 = deterministic, 1 = DDPM-like noise)
        #[arg(long, default_value_t = 0.0)]
        eta: f32,
        /// auto | on | off: clamp x0_hat to +-clip_sample_range (DDPM and DDIM). auto, as on
        /// the page: on for DDPM, scheduler_config.json's clip_sample for DDIM; on / off
        /// override the file, as diffusers' `from_pretrained(dir, clip_sample=...)` does
        #[arg(long, default_value = "auto")]
        clip_sample: String,
        /// leading | trailing | linspace: which timesteps the steps visit (default: the
        /// model's scheduler_config.json timestep_spacing)
        #[arg(long)]
        spacing: Option<String>,
        /// fixed_small | fixed_large | analytic: DDPM's noise, beta-tilde, beta or Analytic-DPM's
        /// optimal variance from the folder's analytic_dpm.json (analytic also replaces DDIM's
        /// noise; default: the model's variance_type)
        #[arg(long)]
        variance: Option<String>,
        /// on | off: with clipping, DDIM re-derives eps from the clipped x0_hat (diffusers'
        /// use_clipped_model_output) and DPM-Solver++ clips x0_hat too (diffusers'
        /// thresholding with sample_max_value 1); default: the model's manifest.json
        /// sampling.use_clipped_model_output, else off
        #[arg(long)]
        clipped_eps: Option<String>,
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

    /// A read or write of `path` failed: an input error naming the option it came from.
    fn io(field: &str, path: &Path, e: impl std::fmt::Display) -> EngineError {
        EngineError::input(field, format!("{}: {e}", path.display()))
    }

    pub fn run(a: &Args) -> Result<()> {
        let started = Instant::now();
        let choice: BackendChoice = a.backend.parse()?;
        let read_text = |name: &str| folder::read_text(&a.model, name);
        // The folder's integrity first, as the page checks each download before the engine
        // sees it: a corrupt file is reported as corrupt, not as whatever it parses into.
        let manifest = folder::read_manifest(&a.model)?;
        if let Some(m) = &manifest {
            check_manifest(&a.model, m)?;
        }
        let config_text = read_text("config.json")?.ok_or_else(|| {
            EngineError::input("model", format!("{} has no config.json", a.model.display()))
        })?;
        // Everything that can be refused from the config alone is, before the weights load.
        let config = UNetConfig::from_json(&config_text)?;
        check_image_count("--n", a.n, &config)?;
        let class = resolve_class(a, &config, manifest.as_ref())?;
        // A file manifest.json lists was checked to exist above; one it does not list may be
        // absent, and then diffusers' DDPMScheduler defaults apply.
        let sched = match read_text("scheduler_config.json")? {
            Some(t) => SchedulerConfig::from_json(&t)?,
            None => SchedulerConfig::default(),
        };
        let kind: SamplerKind = match &a.sampler {
            Some(s) => s.parse()?,
            None => sched.default_sampler(),
        };
        diffusion_playground::sched::check_sampler(&sched, kind)?;
        if sched.is_flow() {
            // What only a diffusion schedule has; silently ignoring it would mislead.
            for (flag, given) in [
                ("--clip-sample", a.clip_sample != "auto"),
                ("--spacing", a.spacing.is_some()),
                ("--variance", a.variance.is_some()),
                ("--clipped-eps", a.clipped_eps.is_some()),
                ("--eta", a.eta != 0.0),
            ] {
                if given {
                    return Err(EngineError::input(
                        flag,
                        format!("{flag} does not apply to a flow-matching model (its sampler integrates the velocity; shift comes from scheduler_config.json)"),
                    ));
                }
            }
        }
        let [c, h, w] = [config.in_channels, config.sample_size.0, config.sample_size.1];
        let init_noise = match &a.init_noise {
            None => None,
            Some(p) => Some(read_noise(p, [a.n, c, h, w])?),
        };

        let weights_path = folder::weights_path(&a.model, manifest.as_ref())?;
        let weights = std::fs::read(&weights_path).map_err(|e| io("model", &weights_path, e))?;
        let (backend, why) = Backend::load(choice, &config_text, &weights, a.threads)?;
        drop(weights);
        let mut over = match &manifest {
            Some(m) => manifest_overrides(m)?,
            None => SchedulerOverrides::default(),
        };
        over.clip_sample = match a.clip_sample.as_str() {
            "auto" => (kind == SamplerKind::Ddpm).then_some(true),
            v => Some(on_off("--clip-sample", v, "auto | on | off")?),
        };
        if let Some(v) = &a.clipped_eps {
            over.use_clipped_model_output = Some(on_off("--clipped-eps", v, "on | off")?);
        }
        if let Some(v) = &a.spacing {
            over.timestep_spacing = Some(parse_option("--spacing", v)?);
        }
        if let Some(v) = &a.variance {
            over.variance_type = Some(parse_option("--variance", v)?);
        }
        let mut sched = over.apply(&sched);
        if sched.variance_type == VarianceType::Analytic {
            sched.analytic = Some(analytic_moments(&a.model, &weights_path, &sched)?);
        }
        let classes = match class {
            None => Vec::new(),
            Some(Class::One(c)) => vec![c; a.n],
            Some(Class::All(k)) => (0..a.n as u32).map(|i| i % k).collect(),
        };
        let request = SampleRequest {
            classes,
            guidance: a.guidance,
            kind,
            steps: a.steps,
            eta: a.eta,
            seed: a.seed,
            first_image: a.first_image,
            init_noise,
        };
        let load_ms = started.elapsed().as_secs_f64() * 1e3;

        let mut session = backend.session(a.n)?;
        let run = session.start(&backend, &sched, &request)?;
        if let Some(dir) = &a.trace {
            std::fs::create_dir_all(dir).map_err(|e| io("trace", dir, e))?;
        }
        let shape = [a.n, c, h, w];
        let mut step_ms = Vec::with_capacity(run.steps());
        let sampling = Instant::now();
        for k in 0..run.steps() {
            let t0 = Instant::now();
            pollster::block_on(session.step(&backend, &run, k))?;
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some(dir) = &a.trace {
                let r = pollster::block_on(session.read(&backend, true))?;
                let x0 = r.x0_hat.unwrap_or_default();
                write_png("trace", &dir.join(format!("step{k:04}_xt.png")), &r.x, shape)?;
                write_png("trace", &dir.join(format!("step{k:04}_x0hat.png")), &x0, shape)?;
            }
        }
        let sampling_ms = sampling.elapsed().as_secs_f64() * 1e3;
        let x = pollster::block_on(session.read(&backend, false))?.x;
        // Both backends check x_t as they go; this is the last line of defence before a NaN
        // image is written as if it were a result.
        if x.iter().any(|v| !v.is_finite()) {
            let steps = run.steps();
            return Err(EngineError::NonFinite { step: steps, steps, what: "the final images".into() });
        }
        if let Some(p) = &a.out {
            write_png("out", p, &x, shape)?;
        }
        if let Some(p) = &a.out_npy {
            std::fs::write(p, npy_bytes(&x, &shape)).map_err(|e| io("out_npy", p, e))?;
        }

        let mut sorted = step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        eprintln!("{} images, {} {} steps, guidance {}; {why}", a.n, run.steps(), kind, a.guidance);
        eprintln!(
            "load {load_ms:.0} ms; sampling {sampling_ms:.0} ms: {:.1} ms/step median, {:.1} min, {:.1} max (step 0 includes pipeline compilation)",
            median,
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0)
        );
        Ok(())
    }

    /// The `--init-noise` file as [n, C, H, W] unit-variance values, every one finite.
    fn read_noise(path: &Path, shape: [usize; 4]) -> Result<Vec<f32>> {
        let bytes = std::fs::read(path).map_err(|e| io("init_noise", path, e))?;
        let (got, data) = parse_npy(&bytes)
            .map_err(|e| EngineError::input("init_noise", format!("--init-noise {}: {e}", path.display())))?;
        if got != shape {
            return Err(EngineError::input(
                "init_noise",
                format!(
                    "--init-noise {}: shape {got:?}, but --n {} needs {shape:?}",
                    path.display(),
                    shape[0]
                ),
            ));
        }
        let per_image = shape[1..].iter().product::<usize>().max(1);
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::input(
                "init_noise",
                format!(
                    "--init-noise {}: value {} at flat index {i} (image {}) is not finite; the initial noise must hold finite numbers only",
                    path.display(),
                    data[i],
                    i / per_image
                ),
            ));
        }
        Ok(data)
    }

    /// The folder's `analytic_dpm.json`, checked against the weights it was measured on.
    fn analytic_moments(dir: &Path, weights: &Path, sched: &SchedulerConfig) -> Result<Arc<AnalyticMoments>> {
        let path = dir.join("analytic_dpm.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EngineError::input(
                    "--variance",
                    format!(
                        "--variance analytic needs {} (Analytic-DPM's per-timestep moments; \
                         train/analytic_dpm.py makes it)",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(io("model", &path, e)),
        };
        let sha = sha256_file(weights).map_err(|e| io("model", weights, e))?;
        AnalyticMoments::for_model(sched, &text, Some(&sha))
    }

    /// What manifest.json says of one file.
    struct Listed {
        name: String,
        bytes: Option<u64>,
        sha256: Option<String>,
    }

    fn listed_files(manifest: &serde_json::Value) -> Result<Vec<Listed>> {
        let bad = |message: String| EngineError::Checksum { file: "manifest.json".into(), message };
        let Some(files) = manifest.get("files") else { return Ok(Vec::new()) };
        let files = files.as_array().ok_or_else(|| bad("`files` is not a list".into()))?;
        files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name =
                    f.get("name").and_then(|n| n.as_str()).filter(|n| folder::is_plain_name(n)).ok_or_else(
                        || bad(format!("files[{i}].name is not a file name inside the model folder")),
                    )?;
                let bytes = match f.get("bytes") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(b) => Some(
                        b.as_u64()
                            .ok_or_else(|| bad(format!("files[{i}].bytes = {b} is not a byte count")))?,
                    ),
                };
                let sha256 = match f.get("sha256") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(d) => Some(
                        d.as_str()
                            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
                            .ok_or_else(|| bad(format!("files[{i}].sha256 = {d} is not 64 hex digits")))?
                            .to_ascii_lowercase(),
                    ),
                };
                Ok(Listed { name: name.to_string(), bytes, sha256 })
            })
            .collect()
    }

    /// Every file manifest.json lists must exist with the size and SHA-256 it states, as the
    /// page checks what it downloads. Sizes go first (metadata only), so a truncated or
    /// swapped file fails before anything is hashed.
    fn check_manifest(dir: &Path, manifest: &serde_json::Value) -> Result<()> {
        let files = listed_files(manifest)?;
        for f in &files {
            let path = dir.join(&f.name);
            let meta = std::fs::metadata(&path).map_err(|e| EngineError::Checksum {
                file: f.name.clone(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "manifest.json lists this file, but the model folder has no such file".into()
                } else {
                    format!("cannot be read: {e}")
                },
            })?;
            if let Some(want) = f.bytes {
                if meta.len() != want {
                    return Err(EngineError::Checksum {
                        file: f.name.clone(),
                        message: format!(
                            "is {} bytes but manifest.json says {want}: the file is truncated or not the one the manifest describes",
                            meta.len()
                        ),
                    });
                }
            }
        }
        for f in &files {
            let Some(want) = &f.sha256 else { continue };
            let got = sha256_file(&dir.join(&f.name)).map_err(|e| EngineError::Checksum {
                file: f.name.clone(),
                message: format!("cannot be read: {e}"),
            })?;
            if &got != want {
                return Err(EngineError::Checksum {
                    file: f.name.clone(),
                    message: format!(
                        "is corrupt: its SHA-256 is {}..., manifest.json says {}...",
                        &got[..12],
                        &want[..12]
                    ),
                });
            }
        }
        Ok(())
    }

    fn sha256_file(path: &Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A boolean flag's value.
    fn on_off(field: &str, v: &str, accepted: &str) -> Result<bool> {
        match v {
            "on" | "true" | "yes" | "1" => Ok(true),
            "off" | "false" | "no" | "0" => Ok(false),
            _ => Err(EngineError::input(field, format!("{field} {v:?}: expected {accepted}"))),
        }
    }

    /// `--spacing` / `--variance`: the engine's enum, its error re-issued under the flag.
    fn parse_option<T: std::str::FromStr<Err = EngineError>>(field: &str, v: &str) -> Result<T> {
        v.parse().map_err(|e: EngineError| {
            let m = e.to_string();
            let expected = m.rsplit_once(": ").map_or(m.as_str(), |(_, x)| x).to_string();
            EngineError::input(field, format!("{field} {v:?}: {expected}"))
        })
    }

    /// `--class N`, or `--class all` over the model's K classes.
    enum Class {
        One(u32),
        All(u32),
    }

    fn resolve_class(
        a: &Args,
        config: &UNetConfig,
        manifest: Option<&serde_json::Value>,
    ) -> Result<Option<Class>> {
        let bad = |m: String| EngineError::input("class", m);
        let index = match a.class.as_deref() {
            Some("all") => {
                return match config.null_class() {
                    Some(null) if a.class_name.is_none() => Ok(Some(Class::All(null as u32))),
                    _ => Err(bad("--class all: this model has no classes (num_class_embeds is null)".into())),
                }
            }
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                bad(format!("--class {v:?}: expected a class index or `all` (or use --class-name)"))
            })?),
            None => None,
        };
        let class = match (index, &a.class_name, config.num_class_embeds) {
            (None, None, None) => return Ok(None),
            (Some(_), _, None) | (_, Some(_), None) => {
                return Err(bad("this model has no classes (num_class_embeds is null); drop --class".into()))
            }
            (None, None, Some(_)) => {
                return Err(
                    bad("this model is class-conditional: pass --class N or --class-name NAME".into()),
                )
            }
            (Some(c), _, Some(_)) => c as usize,
            (None, Some(name), Some(_)) => {
                let manifest = manifest.ok_or_else(|| {
                    bad("--class-name needs the model's manifest.json (class names)".into())
                })?;
                let names: Vec<String> = manifest["class_names"]
                    .as_array()
                    .ok_or_else(|| bad("manifest.json has no class_names list".into()))?
                    .iter()
                    .map(|n| n.as_str().unwrap_or("").to_string())
                    .collect();
                names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .ok_or_else(|| bad(format!("--class-name {name:?} is not one of {names:?}")))?
            }
        };
        // num_class_embeds >= 2 once the config parsed: null_class() is Some here.
        let null = config.null_class().unwrap_or(0);
        if class == null {
            return Err(bad(format!(
                "--class {class} is the null class, the unconditional embedding classifier-free guidance uses; for unconditional sampling pass --guidance 0 with any class 0..={}",
                null.saturating_sub(1)
            )));
        }
        if class > null {
            return Err(bad(format!(
                "--class {class}: the model has classes 0..={} (and the null class {null})",
                null.saturating_sub(1)
            )));
        }
        Ok(Some(Class::One(class as u32)))
    }

    fn write_png(field: &str, path: &Path, x: &[f32], shape: [usize; 4]) -> Result<()> {
        let (w, h, rgba) = grid_rgba(x, shape, 2);
        let err = |e: &dyn std::fmt::Display| io(field, path, e);
        let file = std::fs::File::create(path).map_err(|e| err(&e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| err(&e))?;
        writer.write_image_data(&rgba).map_err(|e| err(&e))?;
        Ok(())
    }
}
