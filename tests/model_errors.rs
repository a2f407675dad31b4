//! Bad model input comes back as a typed error that names the field or tensor, never a
//! panic and never a silent default. Each case starts from the valid small fixture model
//! and breaks one thing.

mod alloc_meter;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diffusion_playground::fast::CpuUNet;
use diffusion_playground::model::limits::{MAX_ABS_WEIGHT, MAX_PARAMETERS};
use diffusion_playground::model::{check_model_files, HostModel, UNet, UNetConfig};
use diffusion_playground::{EngineError, ErrorKind};
use serde_json::json;

#[global_allocator]
static METER: alloc_meter::Meter = alloc_meter::Meter;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const DIR: &str = "tests/fixtures/unet_small";

fn config_text() -> String {
    std::fs::read_to_string(format!("{DIR}/config.json")).unwrap()
}

fn weights_bytes() -> Vec<u8> {
    std::fs::read(format!("{DIR}/diffusion_pytorch_model.safetensors")).unwrap()
}

fn load(config: &str, weights: &[u8]) -> Result<UNet, EngineError> {
    UNet::load(common::gpu(), config, weights)
}

fn with_config_field(field: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    v[field] = value;
    v.to_string()
}

/// Rewrites the weights file through `edit(name, dtype, shape, bytes)`; returning None
/// drops the tensor.
fn rewrite(
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(String, Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let bytes = weights_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| edit(&n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let views: HashMap<String, TensorView> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(&views, None).unwrap()
}

fn expect_err(r: Result<UNet, EngineError>, needles: &[&str]) -> String {
    let msg = match r {
        Ok(_) => panic!("expected an error mentioning {needles:?}, but the model loaded"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    msg
}

#[test]
fn the_valid_fixture_loads() {
    load(&config_text(), &weights_bytes()).expect("the unmodified fixture loads");
}

#[test]
fn truncated_weights_file() {
    let bytes = weights_bytes();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let msg = expect_err(load(&config_text(), &bytes[..cut]), &["weights file is unreadable"]);
        eprintln!("cut at {cut}: {msg}");
    }
}

#[test]
fn corrupt_header() {
    let mut bytes = weights_bytes();
    bytes[10] = b'#';
    expect_err(load(&config_text(), &bytes), &["weights file is unreadable"]);
    expect_err(load(&config_text(), b"<html>404 Not Found</html>"), &["weights file is unreadable"]);
}

#[test]
fn missing_tensor() {
    let w = rewrite(|n, d, s, b| (n != "mid_block.attentions.0.to_k.weight").then(|| (n.into(), d, s, b)));
    expect_err(load(&config_text(), &w), &["mid_block.attentions.0.to_k.weight", "missing"]);
}

#[test]
fn extra_tensor() {
    let w = rewrite(|n, d, s, b| {
        let name = if n == "conv_out.bias" { "conv_out.extra".to_string() } else { n.to_string() };
        Some((name, d, s, b))
    });
    // conv_out.bias is now missing, which is reported first; add it back to see the extra.
    expect_err(load(&config_text(), &w), &["conv_out.bias", "missing"]);
    let bytes = weights_bytes();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: HashMap<String, TensorView> = st.tensors().into_iter().collect();
    let extra = vec![0u8; 16];
    views.insert(
        "up_blocks.9.resnets.0.norm1.weight".into(),
        TensorView::new(Dtype::F32, vec![4], &extra).unwrap(),
    );
    let w = safetensors::serialize(&views, None).unwrap();
    expect_err(load(&config_text(), &w), &["up_blocks.9.resnets.0.norm1.weight", "not in the architecture"]);
}

#[test]
fn wrong_shape() {
    // A checkpoint of another width: every tensor is there, but the shapes disagree.
    let cfg = with_config_field("block_out_channels", serde_json::json!([16, 64]));
    expect_err(load(&cfg, &weights_bytes()), &["has shape", "the config implies"]);
    let w = rewrite(|n, d, s, b| {
        if n == "conv_out.weight" {
            let (s0, rest) = (s[0], s[1..].iter().product::<usize>());
            Some((n.into(), d, vec![s0 * rest], b))
        } else {
            Some((n.into(), d, s, b))
        }
    });
    expect_err(load(&config_text(), &w), &["conv_out.weight", "has shape [432]"]);
}

#[test]
fn wrong_dtype() {
    let w = rewrite(|n, _d, s, b| {
        if n == "conv_in.bias" {
            let ints: Vec<u8> = b.chunks_exact(4).flat_map(|_| 1i32.to_le_bytes()).collect();
            Some((n.into(), Dtype::I32, s, ints))
        } else {
            Some((n.into(), _d, s, b))
        }
    });
    expect_err(load(&config_text(), &w), &["conv_in.bias", "dtype", "I32"]);
}

#[test]
fn half_precision_weights_load_and_agree() {
    let gpu = common::gpu();
    let to_f16 = |b: Vec<u8>| -> Vec<u8> {
        b.chunks_exact(4)
            .flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
            .collect()
    };
    let w16 = rewrite(|n, _, s, b| Some((n.into(), Dtype::F16, s, to_f16(b))));
    assert!(w16.len() < weights_bytes().len() * 6 / 10);
    let a = load(&config_text(), &weights_bytes()).unwrap();
    let b = load(&config_text(), &w16).unwrap();
    let run = |m: &UNet| {
        let f = m.plan(gpu, 1).unwrap();
        let x: Vec<f32> = (0..3 * 16 * 16).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        f.input.write(gpu, &x).unwrap();
        f.set_timesteps(gpu, &[321.0]).unwrap();
        f.set_classes(gpu, m, &[2]).unwrap();
        gpu.run(&f.dispatches().collect::<Vec<_>>()).unwrap();
        pollster::block_on(f.output.read(gpu)).unwrap()
    };
    let (ya, yb) = (run(&a), run(&b));
    // f16 keeps 11 significant bits (rel. 4.9e-4) per weight; over the network that is a
    // few 1e-3 on O(1) outputs.
    common::assert_close("f16 vs f32 weights", &yb, &ya, &[1, 3, 16, 16], 2e-2, 0.0);
}

#[test]
fn unsupported_config_fields() {
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        ("time_embedding_type", serde_json::json!("fourier"), &["time_embedding_type", "fourier"]),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift"), &["resnet_time_scale_shift"]),
        (
            "down_block_types",
            serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D"]),
            &["down_block_types", "CrossAttnDownBlock2D"],
        ),
        ("up_block_types", serde_json::json!(["AttnUpBlock2D"]), &["up_block_types"]),
        ("class_embed_type", serde_json::json!("timestep"), &["class_embed_type"]),
        ("norm_num_groups", serde_json::json!(5), &["norm_num_groups", "5"]),
        ("attention_head_dim", serde_json::json!(12), &["attention_head_dim", "12"]),
        ("sample_size", serde_json::json!(15), &["sample_size"]),
        ("center_input_sample", serde_json::json!(true), &["center_input_sample"]),
        ("act_fn", serde_json::json!("gelu"), &["act_fn", "gelu"]),
        ("mid_block_type", serde_json::json!("UNetMidBlock2DCrossAttn"), &["mid_block_type"]),
        ("layers_per_block", serde_json::json!(0), &["layers_per_block"]),
        ("brand_new_option", serde_json::json!(1), &["brand_new_option", "unknown field"]),
        ("_class_name", serde_json::json!("UNet2DConditionModel"), &["_class_name", "UNet2DConditionModel"]),
    ];
    for (field, value, needles) in cases {
        let msg = expect_err(load(&with_config_field(field, value), &weights_bytes()), needles);
        assert!(msg.starts_with("config.json"), "{msg}");
    }
    expect_err(load("{ not json", &weights_bytes()), &["config.json", "not valid JSON"]);
    // Config-only parse (what the page does before downloading the weights).
    assert!(UNetConfig::from_json(&config_text()).is_ok());
}

#[test]
fn class_out_of_range_is_an_error() {
    let gpu = common::gpu();
    let m = load(&config_text(), &weights_bytes()).unwrap();
    let f = m.plan(gpu, 2).unwrap();
    let e = f.set_classes(gpu, &m, &[0, 6]).unwrap_err().to_string();
    assert!(e.contains("class 6 is out of range"), "{e}");
    let e = f.set_classes(gpu, &m, &[0]).unwrap_err().to_string();
    assert!(e.contains("1 class labels for a batch of 2"), "{e}");
}

fn host(config: &str, weights: &[u8]) -> Result<HostModel, EngineError> {
    HostModel::load(config, weights)
}

/// The error of a host-only load, checked for kind and field (or tensor).
fn host_err(config: &str, weights: &[u8], kind: ErrorKind) -> EngineError {
    match host(config, weights) {
        Ok(_) => panic!("expected a {kind} error, but the model loaded"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            e
        }
    }
}

fn config_err(field: &str, value: serde_json::Value) -> EngineError {
    let e = host_err(&with_config_field(field, value.clone()), &weights_bytes(), ErrorKind::Config);
    assert_eq!(e.field(), Some(field), "{field} = {value}: {e}");
    e
}

#[test]
fn a_million_layers_with_a_small_file_fails_fast_in_bounded_memory() {
    let cfg = with_config_field("layers_per_block", json!(1_048_576));
    let weights = weights_bytes();
    // Before the caps, every loader built the spec of 1M ResNets per level (names, shapes)
    // before looking at the file: gigabytes and minutes. Each loader must now refuse it
    // from the config's numbers alone.
    let gpu = common::gpu();
    let loaders: [(&str, &dyn Fn() -> Option<EngineError>); 3] = [
        ("host", &|| host(&cfg, &weights).err()),
        ("cpu", &|| CpuUNet::load(&cfg, &weights).err()),
        ("gpu", &|| UNet::load(gpu, &cfg, &weights).err()),
    ];
    for (name, load) in loaders {
        let t = Instant::now();
        let (err, peak) = alloc_meter::peak_during(load);
        let (elapsed, e) = (t.elapsed(), err.expect("a million layers must be refused"));
        assert_eq!((e.kind(), e.field()), (ErrorKind::Config, Some("layers_per_block")), "{name}: {e}");
        assert!(e.to_string().contains("must be in 1..=4"), "{name}: {e}");
        assert!(elapsed < Duration::from_secs(1), "{name}: took {elapsed:?}");
        assert!(peak < 1 << 20, "{name}: peaked at {peak} bytes");
    }
}

#[test]
fn more_layers_than_the_file_holds_names_a_tensor() {
    // Within the caps: the header holds fewer tensors than the config implies (209 of
    // 3 ResNets per block's count), and a tensor of the third ResNet is named (the first
    // one out of place: an up block's, whose input width moved) before any data is read.
    let e = host_err(&with_config_field("layers_per_block", json!(3)), &weights_bytes(), ErrorKind::Weights);
    assert!(e.tensor().unwrap().contains(".resnets.2."), "{e}");
    assert!(e.to_string().contains("has shape [48], but the config implies [64]"), "{e}");
    // Fewer layers than the file: its extra tensors are named.
    let e = host_err(&with_config_field("layers_per_block", json!(1)), &weights_bytes(), ErrorKind::Weights);
    assert!(e.tensor().unwrap().contains("resnets."), "{e}");
}

#[test]
fn freq_shift_must_leave_the_sinusoid_finite() {
    // block_out_channels[0] = 16: half = 8, and the exponents divide by 8 - freq_shift.
    for v in [json!(8), json!(8.5), json!(100), json!(-9), json!(1e300), json!(-1e39)] {
        let e = config_err("freq_shift", v);
        assert!(e.to_string().contains("must be in [-8, 7]"), "{e}");
    }
    // The largest accepted shift keeps the denominator at 1 and loads.
    host(&with_config_field("freq_shift", json!(7)), &weights_bytes()).unwrap();
    // The CPU oracle's frequencies for it are finite, the rejected one's are not.
    let ok = diffusion_playground::cpu::timestep_frequencies(16, 7.0, 10_000.0);
    assert!(ok.iter().all(|f| f.is_finite()));
    let bad = diffusion_playground::cpu::timestep_frequencies(16, 8.0, 10_000.0);
    assert!(bad.iter().any(|f| !f.is_finite()));
}

#[test]
fn norm_eps_must_be_positive_and_small_as_f32() {
    // 1e-50 is positive in JSON but 0 as f32.
    for v in [json!(0), json!(-1e-5), json!(1e-50), json!(2.0), json!(1e300)] {
        let e = config_err("norm_eps", v);
        assert!(e.to_string().contains("must be in [1e-12, 1]"), "{e}");
    }
    host(&with_config_field("norm_eps", json!(1e-6)), &weights_bytes()).unwrap();
}

#[test]
fn mid_block_scale_factor_must_be_sane() {
    for v in [json!(0), json!(-1), json!(1e-50), json!(1e300), json!(5000)] {
        config_err("mid_block_scale_factor", v);
    }
    host(&with_config_field("mid_block_scale_factor", json!(std::f64::consts::SQRT_2)), &weights_bytes())
        .unwrap();
}

#[test]
fn dimensions_beyond_the_caps_are_refused_by_field() {
    let cases = [
        ("block_out_channels", json!([2048, 4096]), "must be in 1..=1024"),
        ("block_out_channels", json!([32, 32, 32, 32, 32, 32, 32]), "1..=6 entries"),
        ("sample_size", json!(4096), "must be in 1..=1024"),
        ("sample_size", json!([16, 1 << 20]), "must be in 1..=1024"),
        ("in_channels", json!(1000), "must be in 1..=16"),
        ("out_channels", json!(17), "must be in 1..=16"),
        ("num_class_embeds", json!(1_000_000), "must be in 2..=10000"),
        ("time_embedding_dim", json!(100_000), "must be in 1..=4096"),
        ("attention_head_dim", json!(256), ""),
        ("norm_num_groups", json!(1_048_576), ""),
    ];
    for (field, value, needle) in cases {
        let mut v: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
        v[field] = value.clone();
        if field == "block_out_channels" {
            let n = value.as_array().unwrap().len();
            v["down_block_types"] = json!(vec!["DownBlock2D"; n]);
            v["up_block_types"] = json!(vec!["UpBlock2D"; n]);
        }
        let e = host_err(&v.to_string(), &weights_bytes(), ErrorKind::Config);
        assert_eq!(e.field(), Some(field), "{field} = {value}: {e}");
        assert!(e.to_string().contains(needle), "{field} = {value}: {e}");
    }
}

#[test]
fn attention_over_too_many_pixels_is_refused() {
    // unet_small has attention at level 1: 256x256 puts 128x128 = 16384 tokens there.
    let e = config_err("sample_size", json!(256));
    assert!(e.to_string().contains("16384 pixels"), "{e}");
}

#[test]
fn a_config_of_too_many_parameters_is_a_limits_error() {
    // Every dimension within its cap, but 6 levels of 1024 channels with 4 layers each is
    // over a billion parameters.
    let mut v: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    v["block_out_channels"] = json!(vec![1024; 6]);
    v["down_block_types"] = json!(vec!["DownBlock2D"; 6]);
    v["up_block_types"] = json!(vec!["UpBlock2D"; 6]);
    v["layers_per_block"] = json!(4);
    v["sample_size"] = json!(32);
    v["attention_head_dim"] = json!(64);
    let t = Instant::now();
    let e = host_err(&v.to_string(), &weights_bytes(), ErrorKind::Limits);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.field(), Some("parameters"), "{e}");
    assert!(e.to_string().contains(&MAX_PARAMETERS.to_string()), "{e}");
}

/// The fixture with one value of one tensor replaced (f32 file).
fn with_value(tensor: &str, index: usize, value: f32) -> Vec<u8> {
    rewrite(|n, d, s, mut b| {
        if n == tensor {
            b[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
        }
        Some((n.into(), d, s, b))
    })
}

#[test]
fn absurd_and_non_finite_weights_name_the_tensor() {
    for (value, needle) in [
        (3e38, "holds 3e38 at flat index 5"),
        (-2e4, "holds -2e4 at flat index 5"),
        (f32::NAN, "non-finite value (NaN) at flat index 5"),
        (f32::INFINITY, "non-finite value (inf) at flat index 5"),
    ] {
        let w = with_value("mid_block.resnets.1.conv2.weight", 5, value);
        for e in [host_err(&config_text(), &w, ErrorKind::Weights), load(&config_text(), &w).err().unwrap()] {
            assert_eq!(e.tensor(), Some("mid_block.resnets.1.conv2.weight"), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
    // Just inside the bound loads.
    host(&config_text(), &with_value("conv_in.bias", 0, 0.9 * MAX_ABS_WEIGHT)).unwrap();
    // f16 and bf16 are checked as they are widened: f16 infinity, bf16 of 3e38.
    let to = |dtype: Dtype, b: Vec<u8>| -> Vec<u8> {
        b.chunks_exact(4)
            .flat_map(|c| {
                let v = f32::from_le_bytes(c.try_into().unwrap());
                match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                }
            })
            .collect()
    };
    for (dtype, value) in [(Dtype::F16, 1e6f32), (Dtype::BF16, 3e38)] {
        let w = rewrite(|n, _, s, mut b| {
            if n == "conv_out.bias" {
                b[..4].copy_from_slice(&value.to_le_bytes());
            }
            Some((n.into(), dtype, s, to(dtype, b)))
        });
        let e = host_err(&config_text(), &w, ErrorKind::Weights);
        assert_eq!(e.tensor(), Some("conv_out.bias"), "{dtype:?}: {e}");
    }
}

#[test]
fn scheduler_numbers_are_checked_as_used() {
    let ok = std::fs::read_to_string("www/models/fashion/scheduler_config.json").unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&ok).unwrap();
        v[field] = value;
        v.to_string()
    };
    let cases = [
        // f32(0.99999999999) = 1: alpha = 0 at every step.
        (with("beta_end", json!(0.99999999999)), "beta_end"),
        // f32(1e-50) = 0.
        (with("beta_start", json!(1e-50)), "beta_start"),
        (with("clip_sample_range", json!(1e-50)), "clip_sample_range"),
        (with("clip_sample_range", json!(1e300)), "clip_sample_range"),
        // A linear schedule over 1e6 steps: alphas_cumprod underflows to 0.
        (
            {
                let mut v: serde_json::Value =
                    serde_json::from_str(&with("num_train_timesteps", json!(1_000_000))).unwrap();
                v["beta_schedule"] = json!("linear");
                v.to_string()
            },
            "num_train_timesteps",
        ),
    ];
    let (config, weights) = (config_text(), weights_bytes());
    for (text, field) in cases {
        let e = check_model_files(&config, Some(&text), &weights).err().expect("must be refused");
        assert_eq!((e.kind(), e.field()), (ErrorKind::Scheduler, Some(field)), "{e}");
    }
    check_model_files(&config, Some(&ok), &weights).unwrap();
    // A cosine schedule of a million steps stays above the floor (capped betas).
    check_model_files(&config, Some(&with("num_train_timesteps", json!(1_000_000))), &weights).unwrap();
}
