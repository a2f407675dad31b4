//! Bad model input comes back as a typed error that names the field or tensor, never a
//! panic and never a silent default. Each case starts from the valid small fixture model
//! and breaks one thing.

mod common;

use std::collections::HashMap;

use diffusion_playground::model::{UNet, UNetConfig};
use diffusion_playground::EngineError;
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
