//! Hostile model folders: starting from the shipped fashion model, one field of
//! `config.json`, of `scheduler_config.json` or of the safetensors header is changed at a
//! time, and loading (host only, no GPU: `check_model_files`, what both backends load
//! through) must give a model or a typed error, never a panic, within bounded memory and
//! time. Accepted configs must also keep their promises: the arithmetic budget equals the
//! spec's parameter list, and an accepted scheduler plans finite coefficients.

mod alloc_meter;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diffusion_playground::model::{check_model_files, Budget, UNetConfig, UNetSpec};
use diffusion_playground::sched::{plan, SamplerKind, SamplerOptions, SchedulerConfig};
use diffusion_playground::{EngineError, ErrorKind};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

#[global_allocator]
static METER: alloc_meter::Meter = alloc_meter::Meter;

const DIR: &str = "www/models/fashion";

struct Model {
    config: Map<String, Value>,
    scheduler: Map<String, Value>,
    /// The safetensors header (JSON) and the data after it.
    header: Map<String, Value>,
    data: Vec<u8>,
    file: Vec<u8>,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let read = |f: &str| std::fs::read(format!("{DIR}/{f}")).unwrap();
        let object = |b: &[u8]| match serde_json::from_slice(b).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let file = read("diffusion_pytorch_model.safetensors");
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        Model {
            config: object(&read("config.json")),
            scheduler: object(&read("scheduler_config.json")),
            header: object(&file[8..8 + n]),
            data: file[8 + n..].to_vec(),
            file,
        }
    })
}

/// The file's bytes with `header` as its header; `len` overrides the 8-byte length prefix.
fn safetensors(header: &Map<String, Value>, len: Option<u64>) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = len.unwrap_or(text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&model().data);
    out
}

/// Peak memory of one load beyond its inputs: the fashion model converts to 11 MB of f32
/// (2.8 M floats) plus names and the spec; 64 MiB is ample for that and far below what the
/// unbounded loader reached on hostile configs (gigabytes).
const PEAK_BYTES: usize = 64 << 20;

/// Loads the three files and checks the outcome is Ok or an error of an allowed kind, within
/// the memory and time bounds; returns the outcome.
fn load(config: &str, scheduler: &str, weights: &[u8]) -> Result<(), EngineError> {
    let t = Instant::now();
    let (out, peak) =
        alloc_meter::peak_during(|| check_model_files(config, Some(scheduler), weights).map(|_| ()));
    let elapsed = t.elapsed();
    assert!(peak <= PEAK_BYTES, "peaked at {peak} bytes for config {config}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?} for config {config}");
    if let Err(e) = &out {
        let allowed = [ErrorKind::Config, ErrorKind::Scheduler, ErrorKind::Weights, ErrorKind::Limits];
        assert!(allowed.contains(&e.kind()), "untyped error {e:?}");
        assert!(!e.to_string().is_empty());
    }
    out
}

fn text(m: &Map<String, Value>) -> String {
    Value::Object(m.clone()).to_string()
}

/// Numbers around every boundary the loader cares about, and far beyond them.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..=9).prop_map(Value::from),
        prop::sample::select(vec![
            -1i64,
            4,
            7,
            8,
            15,
            16,
            17,
            31,
            32,
            64,
            127,
            128,
            129,
            256,
            1000,
            1024,
            1025,
            4096,
            10_000,
            65_536,
            1 << 20,
            (1 << 20) + 1,
            1 << 31,
            1 << 32,
            i64::MAX,
        ])
        .prop_map(Value::from),
        Just(json!(u64::MAX)),
        prop::sample::select(vec![
            0.0f64,
            -0.0,
            0.5,
            1e-5,
            1e-12,
            1e-13,
            1e-45,
            1e-50,
            0.99999999999,
            1.0,
            1.5,
            1e30,
            1e39,
            1e300,
            -1e300,
        ])
        .prop_map(Value::from),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => number(),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => prop::sample::select(vec![
            "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D", "linear", "squaredcos_cap_v2",
            "scaled_linear", "epsilon", "v_prediction", "sample", "leading", "trailing", "linspace",
            "fixed_small", "silu", "", "NaN", "Infinity",
        ])
        .prop_map(Value::from),
    ];
    prop_oneof![
        3 => leaf.clone(),
        1 => prop::collection::vec(leaf, 0..8).prop_map(Value::from),
        1 => prop::collection::vec(number(), 0..8).prop_map(Value::from),
    ]
}

const CONFIG_FIELDS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "add_attention",
    "num_class_embeds",
    "time_embedding_dim",
    "dropout",
    "num_train_timesteps",
    "downsample_padding",
    "brand_new_field",
];

const SCHEDULER_FIELDS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "steps_offset",
    "timestep_spacing",
    "variance_type",
    "thresholding",
    "trained_betas",
    "_use_default_values",
];

/// One change to the safetensors header.
#[derive(Debug, Clone)]
enum HeaderEdit {
    Dtype(usize, &'static str),
    Shape(usize, Vec<u64>),
    Offsets(usize, u64, u64),
    Drop(usize),
    Duplicate(usize),
    Length(u64),
    Truncate(usize),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let dim = prop_oneof![0u64..=300, Just(1 << 31), Just(1 << 32), Just(u64::MAX / 2), Just(u64::MAX)];
    let offset = prop_oneof![0u64..=11_200_000, Just(u32::MAX as u64), Just(u64::MAX), Just(u64::MAX - 3)];
    prop_oneof![
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec!["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "X"])
        )
            .prop_map(|(i, d)| HeaderEdit::Dtype(i.index(215), d)),
        (any::<prop::sample::Index>(), prop::collection::vec(dim, 0..6))
            .prop_map(|(i, s)| HeaderEdit::Shape(i.index(215), s)),
        (any::<prop::sample::Index>(), offset.clone(), offset).prop_map(|(i, a, b)| HeaderEdit::Offsets(
            i.index(215),
            a,
            b
        )),
        any::<prop::sample::Index>().prop_map(|i| HeaderEdit::Drop(i.index(215))),
        any::<prop::sample::Index>().prop_map(|i| HeaderEdit::Duplicate(i.index(215))),
        prop_oneof![0u64..=40_000, Just(u64::MAX), Just(100_000_001)].prop_map(HeaderEdit::Length),
        (0usize..=11_200_000).prop_map(HeaderEdit::Truncate),
    ]
}

fn apply(edit: &HeaderEdit) -> Vec<u8> {
    let m = model();
    let mut header = m.header.clone();
    let mut names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    names.sort();
    let entry = |h: &Map<String, Value>, i: usize| h[&names[i % names.len()]].clone();
    match edit {
        HeaderEdit::Dtype(i, d) => {
            let mut e = entry(&header, *i);
            e["dtype"] = json!(d);
            header.insert(names[*i % names.len()].clone(), e);
        }
        HeaderEdit::Shape(i, s) => {
            let mut e = entry(&header, *i);
            e["shape"] = json!(s);
            header.insert(names[*i % names.len()].clone(), e);
        }
        HeaderEdit::Offsets(i, a, b) => {
            let mut e = entry(&header, *i);
            e["data_offsets"] = json!([a, b]);
            header.insert(names[*i % names.len()].clone(), e);
        }
        HeaderEdit::Drop(i) => {
            header.remove(&names[*i % names.len()]);
        }
        HeaderEdit::Duplicate(i) => {
            let e = entry(&header, *i);
            header.insert(format!("{}.copy", names[*i % names.len()]), e);
        }
        HeaderEdit::Length(n) => return safetensors(&header, Some(*n)),
        HeaderEdit::Truncate(n) => return m.file[..(*n).min(m.file.len())].to_vec(),
    }
    safetensors(&header, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_config_field(field in prop::sample::select(CONFIG_FIELDS), v in value()) {
        let m = model();
        let mut config = m.config.clone();
        config.insert(field.to_string(), v);
        let config = text(&config);
        let outcome = load(&config, &text(&m.scheduler), &m.file);
        // Whatever is accepted as a config keeps the budget's promise: the arithmetic
        // count is the spec's, and it is within the caps.
        if let Ok(cfg) = UNetConfig::from_json(&config) {
            let b = Budget::of(&cfg).unwrap();
            let params = UNetSpec::new(&cfg).parameters();
            prop_assert_eq!(b.tensors, params.len() as u64);
            prop_assert_eq!(b.parameters, params.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum::<u64>());
            prop_assert!(cfg.norm_eps > 0.0 && cfg.mid_block_scale_factor.is_finite());
        } else {
            prop_assert!(outcome.is_err());
        }
    }

    #[test]
    fn one_scheduler_field(field in prop::sample::select(SCHEDULER_FIELDS), v in value()) {
        let m = model();
        let mut sched = m.scheduler.clone();
        sched.insert(field.to_string(), v);
        let sched = text(&sched);
        // The scheduler is parsed before the weights are converted: judge it on its own,
        // and load the whole folder once in a while (the weights dominate the time).
        let t = Instant::now();
        let (parsed, peak) = alloc_meter::peak_during(|| SchedulerConfig::from_json(&sched));
        prop_assert!(peak <= PEAK_BYTES && t.elapsed() < Duration::from_secs(2), "{sched}");
        match parsed {
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Scheduler, "{}", e),
            Ok(cfg) => {
                // An accepted schedule plans finite coefficients for every sampler (or a
                // typed error for an option combination).
                for kind in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmSolverPp2m, SamplerKind::EulerAncestral] {
                    let opts = SamplerOptions::new(kind, 20);
                    match plan(&cfg, &opts) {
                        Ok(p) => {
                            prop_assert!(p.init_noise_sigma.is_finite(), "{sched}");
                            for s in &p.steps {
                                let c = &s.coeffs;
                                let all = [c.x0_from_x, c.x0_from_out, c.eps_from_x, c.eps_from_out, c.x, c.x0, c.eps, c.prev_x0, c.noise, s.timestep, s.input_scale];
                                prop_assert!(all.iter().all(|v| v.is_finite()), "{kind:?} {sched}: {all:?}");
                            }
                        }
                        Err(e) => prop_assert!(matches!(e.kind(), ErrorKind::Scheduler | ErrorKind::Input), "{}", e),
                    }
                }
            }
        }
    }

    #[test]
    fn one_header_field(edit in header_edit()) {
        let m = model();
        let file = apply(&edit);
        let outcome = load(&text(&m.config), &text(&m.scheduler), &file);
        if let Err(e) = outcome {
            prop_assert_eq!(e.kind(), ErrorKind::Weights, "{:?}: {}", edit, e);
        }
    }
}

#[test]
fn the_unchanged_folder_loads() {
    let m = model();
    load(&text(&m.config), &text(&m.scheduler), &m.file).unwrap();
}

/// The fuzzers' seed inputs (`fuzz/seeds/`): two tiny model folders in the load_model
/// target's format (config, scheduler config and weights joined by its separator) and a
/// few `.npy` files. Committed, a few KB each, so that libFuzzer's executions stay fast;
/// `FUZZ_SEEDS_WRITE=1 cargo test --profile test-release --test loading_props fuzz_seeds`
/// rewrites them. Either way each model seed must load, or the fuzzer would start from
/// error paths only.
#[test]
fn fuzz_seeds_are_valid() {
    use diffusion_playground::image::{npy_bytes, parse_npy};
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    const SEPARATOR: &[u8] = b"\n#####\n";
    let tiny = |config: Value, dtype: Dtype| -> Vec<u8> {
        let cfg = UNetConfig::from_json(&config.to_string()).unwrap();
        let mut seed = 12345u32;
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = UNetSpec::new(&cfg)
            .parameters()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let bytes = (0..n)
                    .flat_map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        let v = (seed >> 8) as f32 / (1 << 24) as f32 - 0.5;
                        match dtype {
                            Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                            Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                            _ => v.to_le_bytes().to_vec(),
                        }
                    })
                    .collect();
                (name, shape, bytes)
            })
            .collect();
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        let mut out = config.to_string().into_bytes();
        out.extend_from_slice(SEPARATOR);
        out.extend_from_slice(text(&model().scheduler).as_bytes());
        out.extend_from_slice(SEPARATOR);
        out.extend(safetensors::serialize(views, None).unwrap());
        out
    };
    let one_level = json!({
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [4], "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
        "layers_per_block": 1, "norm_num_groups": 2, "mid_block_type": null, "attention_head_dim": null
    });
    let two_levels = json!({
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [4, 4], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 2,
        "attention_head_dim": 2, "num_class_embeds": 3, "time_embedding_dim": 8, "freq_shift": 1,
        "flip_sin_to_cos": false, "norm_eps": 1e-6
    });
    let seeds = [
        ("load_model/one_level_bf16", tiny(one_level, Dtype::BF16)),
        ("load_model/two_levels_f16", tiny(two_levels, Dtype::F16)),
        ("parse_npy/f32_2x3x4.npy", npy_bytes(&(0..24).map(|i| i as f32).collect::<Vec<_>>(), &[2, 3, 4])),
        ("parse_npy/scalar.npy", npy_bytes(&[1.5], &[])),
        ("parse_npy/noise_1x1x28x28.npy", npy_bytes(&[0.25; 784], &[1, 1, 28, 28])),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (name, bytes) in &seeds {
        let path = dir.join(name);
        if std::env::var_os("FUZZ_SEEDS_WRITE").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with FUZZ_SEEDS_WRITE=1)", path.display()));
        assert!(on_disk.len() < 32 << 10, "{name}: seeds stay small");
        if name.starts_with("load_model/") {
            let at = |s: &[u8]| s.windows(SEPARATOR.len()).position(|w| w == SEPARATOR).unwrap();
            let a = at(&on_disk);
            let rest = &on_disk[a + SEPARATOR.len()..];
            let b = at(rest);
            let (config, sched, weights) = (&on_disk[..a], &rest[..b], &rest[b + SEPARATOR.len()..]);
            check_model_files(
                std::str::from_utf8(config).unwrap(),
                Some(std::str::from_utf8(sched).unwrap()),
                weights,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            parse_npy(&on_disk).unwrap();
        }
    }
}
