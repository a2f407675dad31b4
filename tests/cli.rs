//! The `sample` CLI against hostile inputs, as a process: every case must exit non-zero
//! within seconds, say why on one line of stderr naming the field or file, and never grow
//! past a bounded amount of memory on the way.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diffusion_playground::image::npy_bytes;

const MODEL: &str = "www/models/fashion";
/// No case may take longer or grow larger than this: a refusal must come before the work.
const TIME_LIMIT: Duration = Duration::from_secs(10);
const MEMORY_LIMIT_KB: u64 = 1 << 20;

/// A copy of the shipped model in a fresh folder, removed when dropped.
struct ModelCopy {
    dir: PathBuf,
}

impl ModelCopy {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cli-test-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(MODEL).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        ModelCopy { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for ModelCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Outcome {
    code: Option<i32>,
    stderr: String,
    peak_kb: u64,
}

impl Outcome {
    /// The error line: the one line the CLI prints on failure.
    fn error_line(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("sample: ")).unwrap_or("")
    }

    /// Exit 1, exactly one `sample:` line, and it contains every one of `words`.
    fn assert_refused(&self, words: &[&str]) {
        assert_eq!(self.code, Some(1), "exit status; stderr:\n{}", self.stderr);
        let errors = self.stderr.lines().filter(|l| l.starts_with("sample: ")).count();
        assert_eq!(errors, 1, "one error line; stderr:\n{}", self.stderr);
        let line = self.error_line();
        for w in words {
            assert!(line.contains(w), "{w:?} missing from {line:?}");
        }
        assert!(self.peak_kb < MEMORY_LIMIT_KB, "peak RSS {} KiB; stderr:\n{}", self.peak_kb, self.stderr);
    }
}

/// Peak resident memory so far of a live process, from the kernel's high-water mark.
fn high_water_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The largest peak RSS of any child this process has waited for, in KiB (Linux reports
/// `ru_maxrss` in KiB). It catches a spike between two polls of a child that exits at once;
/// the cases run one at a time, so the maximum so far bounds every case.
fn children_peak_kb() -> u64 {
    // SAFETY: getrusage only writes the struct it is handed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    usage.ru_maxrss.max(0) as u64
}

/// Runs `sample` with `args`, polling its memory high-water mark until it exits; kills it
/// (and fails) past the time limit or the memory limit.
fn sample(args: &[&str]) -> Outcome {
    // One process at a time: the time limit is about the CLI, not about how many test
    // threads share the cores (lavapipe compiling its pipelines is CPU-bound).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stderr_path = std::env::temp_dir().join(format!(
        "cli-test-stderr-{}-{}",
        std::process::id(),
        std::thread::current().name().unwrap_or("t").replace("::", "-")
    ));
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sample"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .expect("spawn sample");
    let started = Instant::now();
    let mut peak_kb = 0;
    let status = loop {
        if let Some(kb) = high_water_kb(child.id()) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIME_LIMIT || peak_kb >= MEMORY_LIMIT_KB {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sample {args:?} still running after {:?} with peak RSS {peak_kb} KiB", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let peak_kb = peak_kb.max(children_peak_kb());
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    eprintln!(
        "exit {:?} after {:?}, peak RSS {peak_kb} KiB: {}",
        status.code(),
        started.elapsed(),
        stderr.trim()
    );
    Outcome { code: status.code(), stderr, peak_kb }
}

fn model_args<'a>(model: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--model", model, "--backend", "cpu", "--threads", "1"];
    v.extend_from_slice(rest);
    v
}

#[test]
fn a_huge_image_count_is_refused_before_any_work() {
    let out = sample(&model_args(MODEL, &["--class", "0", "--n", "100000"]));
    out.assert_refused(&["limits", "--n: 100000 images exceed", "fits at most", "GiB sampling budget"]);
}

#[test]
fn the_null_class_is_refused_with_a_pointer_to_guidance_0() {
    let out = sample(&model_args(MODEL, &["--class", "10", "--n", "1"]));
    out.assert_refused(&["input", "--class 10", "null class", "--guidance 0"]);
}

#[test]
fn a_healthy_run_still_succeeds_and_writes_finite_images() {
    // The guards must not refuse what is fine: the shipped model, a valid class, few steps.
    let dir = ModelCopy::new("healthy");
    let npy = dir.path("out.npy");
    let out = sample(&model_args(
        MODEL,
        &["--class", "3", "--n", "2", "--steps", "2", "--out-npy", npy.to_str().unwrap()],
    ));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let (shape, x) = diffusion_playground::image::parse_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(shape, [2, 1, 28, 28]);
    assert!(x.iter().all(|v| v.is_finite()));
}

fn noise_file(dir: &ModelCopy, values: impl Fn(usize) -> f32) -> PathBuf {
    let x: Vec<f32> = (0..784).map(values).collect();
    let path = dir.path("noise.npy");
    std::fs::write(&path, npy_bytes(&x, &[1, 1, 28, 28])).unwrap();
    path
}

#[test]
fn nan_in_the_initial_noise_is_refused_naming_the_file() {
    let dir = ModelCopy::new("nan-noise");
    let noise = noise_file(&dir, |i| if i == 300 { f32::NAN } else { 0.5 });
    let noise = noise.to_str().unwrap();
    let out = sample(&model_args(MODEL, &["--class", "0", "--n", "1", "--init-noise", noise]));
    out.assert_refused(&["input", "--init-noise", "noise.npy", "NaN", "index 300", "not finite"]);
}

/// Finite noise at the edge of f32 passes every input check, but the first convolution
/// overflows: what a model that blows up mid-run looks like to the sampler.
fn overflowing_run(backend: &str) -> Outcome {
    let dir = ModelCopy::new(&format!("overflow-{backend}"));
    let noise = noise_file(&dir, |i| if i % 2 == 0 { 3.0e38 } else { -3.0e38 });
    let noise = noise.to_str().unwrap();
    sample(&[
        "--model",
        MODEL,
        "--backend",
        backend,
        "--threads",
        "1",
        "--class",
        "0",
        "--n",
        "1",
        "--steps",
        "2",
        "--init-noise",
        noise,
    ])
}

#[test]
fn a_run_that_turns_nan_fails_on_the_cpu_naming_the_step() {
    let out = overflowing_run("cpu");
    out.assert_refused(&["numeric", "non-finite", "at step 1 of 2 (x_t)"]);
}

#[test]
fn a_run_that_turns_nan_fails_on_the_gpu_naming_the_step() {
    let out = overflowing_run("webgpu");
    out.assert_refused(&["numeric", "non-finite", "at step 1 of 2 (x_t)"]);
}

#[test]
fn a_file_shorter_than_the_manifest_says_is_refused() {
    let dir = ModelCopy::new("size");
    let weights = dir.path("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let out = sample(&model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1"]));
    out.assert_refused(&["checksum", "diffusion_pytorch_model.safetensors", "bytes but manifest.json says"]);
}

#[test]
fn a_file_whose_sha256_differs_from_the_manifest_is_refused() {
    let dir = ModelCopy::new("sha");
    let config = dir.path("config.json");
    // Same size, one character changed: only the digest can tell.
    let text = std::fs::read_to_string(&config).unwrap().replacen("\"silu\"", "\"SILU\"", 1);
    std::fs::write(&config, text).unwrap();
    let out = sample(&model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1"]));
    out.assert_refused(&["checksum", "config.json", "SHA-256"]);
}

#[test]
fn a_listed_scheduler_config_that_is_missing_is_refused() {
    let dir = ModelCopy::new("sched");
    std::fs::remove_file(dir.path("scheduler_config.json")).unwrap();
    let out = sample(&model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1"]));
    out.assert_refused(&["checksum", "scheduler_config.json", "no such file"]);
}

#[test]
fn a_manifest_entry_outside_the_model_folder_is_refused() {
    let dir = ModelCopy::new("escape");
    let manifest = std::fs::read_to_string(dir.path("manifest.json")).unwrap();
    std::fs::write(dir.path("manifest.json"), manifest.replacen("\"README.md\"", "\"../README.md\"", 1))
        .unwrap();
    let out = sample(&model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1"]));
    out.assert_refused(&["checksum", "manifest.json", "files[0].name"]);
}

#[test]
fn model_paths_in_messages_stay_on_one_line() {
    // A folder name with a newline must not split the error line.
    let out = sample(&model_args("/nonexistent\nfolder", &["--class", "0"]));
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "stderr:\n{}", out.stderr);
    assert!(out.error_line().contains("config.json"), "{}", out.stderr);
}

/// The model copy without `manifest.json`, so the hostile edit reaches the loader instead of
/// the checksum check (a hostile folder would ship a matching manifest anyway).
fn unlisted_copy(tag: &str) -> ModelCopy {
    let dir = ModelCopy::new(tag);
    std::fs::remove_file(dir.path("manifest.json")).unwrap();
    dir
}

fn edit_config(dir: &ModelCopy, from: &str, to: &str) {
    let path = dir.path("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the shipped config");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn hostile_config_numbers_are_refused_before_any_work() {
    // Each of these once grew past 9 GB or sampled an all-NaN grid with exit status 0.
    for (tag, from, to, words) in [
        (
            "layers",
            "\"layers_per_block\": 1",
            "\"layers_per_block\": 1048576",
            &["config", "layers_per_block"][..],
        ),
        ("shift", "\"freq_shift\": 0", "\"freq_shift\": 16", &["config", "freq_shift"][..]),
        ("eps", "\"norm_eps\": 1e-05", "\"norm_eps\": 0", &["config", "norm_eps"][..]),
        ("eps-f32", "\"norm_eps\": 1e-05", "\"norm_eps\": 1e-50", &["config", "norm_eps"][..]),
        (
            "scale",
            "\"mid_block_scale_factor\": 1",
            "\"mid_block_scale_factor\": 1e39",
            &["config", "mid_block_scale_factor"][..],
        ),
    ] {
        let dir = unlisted_copy(tag);
        edit_config(&dir, from, to);
        for backend in ["cpu", "webgpu"] {
            let mut args =
                model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1", "--steps", "2"]);
            args[3] = backend;
            sample(&args).assert_refused(words);
        }
    }
}

#[test]
fn a_non_finite_or_absurd_weight_is_refused_naming_the_tensor() {
    let dir = unlisted_copy("weight");
    let path = dir.path("diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Poke a value into the F32 tensor stored first in the data section.
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (name, _) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, t)| t["data_offsets"][0] == 0 && t["dtype"] == "F32")
        .expect("an F32 tensor at offset 0");
    let name = name.clone();
    let first = 8 + header_len + 4 * 5; // its element 5
    for value in [f32::NAN, 3e38, -2e4] {
        bytes[first..first + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        sample(&model_args(dir.dir.to_str().unwrap(), &["--class", "0", "--n", "1", "--steps", "2"]))
            .assert_refused(&["weights", &name]);
    }
}

#[test]
fn argument_errors_are_one_line_too() {
    for (args, want) in [
        (vec!["--class", "3", "--steps", "abc"], vec!["input", "--steps", "abc"]),
        (vec!["--class", "3", "--bogus"], vec!["input", "--bogus"]),
        (vec!["--class", "seven"], vec!["input", "--class \"seven\"", "`all`"]),
        (vec!["--class", "3", "--spacing", "sideways"], vec!["input", "--spacing \"sideways\"", "trailing"]),
        (
            vec!["--class", "3", "--variance", "learned"],
            vec!["input", "--variance \"learned\"", "fixed_large"],
        ),
        (
            vec!["--class", "3", "--clip-sample", "maybe"],
            vec!["input", "--clip-sample \"maybe\"", "auto | on | off"],
        ),
        (vec!["--class", "3", "--clipped-eps", "2"], vec!["input", "--clipped-eps \"2\""]),
    ] {
        let out = sample(&model_args(MODEL, &args));
        out.assert_refused(&want);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{args:?}: {}", out.stderr);
    }
}

/// Runs the CLI on the shipped model and returns its final x_0.
fn final_images(tag: &str, rest: &[&str]) -> Vec<f32> {
    let dir = ModelCopy::new(tag);
    let npy = dir.path("out.npy");
    let mut args = rest.to_vec();
    args.extend_from_slice(&["--out-npy", npy.to_str().unwrap()]);
    let out = sample(&model_args(MODEL, &args));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    diffusion_playground::image::parse_npy(&std::fs::read(&npy).unwrap()).unwrap().1
}

#[test]
fn class_all_cycles_and_clip_auto_means_the_pages_auto() {
    let per = 28 * 28;
    let common = ["--steps", "2", "--seed", "5", "--sampler", "ddpm"];
    let all = final_images("all", &[&["--class", "all", "--n", "12"], &common[..]].concat());
    // Image 11 is class 1 (11 mod 10), image 11 of its seed.
    let one =
        final_images("one", &[&["--class", "1", "--n", "1", "--first-image", "11"], &common[..]].concat());
    assert_eq!(&all[11 * per..12 * per], &one[..]);
    // DDPM: auto clips (the page's auto), so it equals --clip-sample on and differs from off.
    let on = final_images(
        "on",
        &[&["--class", "1", "--n", "1", "--first-image", "11", "--clip-sample", "on"], &common[..]].concat(),
    );
    let off = final_images(
        "off",
        &[&["--class", "1", "--n", "1", "--first-image", "11", "--clip-sample", "off"], &common[..]].concat(),
    );
    assert_eq!(one, on);
    assert_ne!(one, off);
    // The spacing flag reaches the sampler: leading 2 steps start at t = 500, not at the
    // shipped trailing spacing's 999.
    let leading = final_images(
        "lead",
        &[&["--class", "1", "--n", "1", "--first-image", "11", "--spacing", "leading"], &common[..]].concat(),
    );
    assert_ne!(one, leading);
}
