//! The planned U-Net against diffusers' own forward passes (tests/fixtures, made by
//! train/make_fixtures.py): the random small model of a different shape than the shipped
//! ones, and the shipped fashion model when its fixture exists.
//!
//! Tolerance: outputs and activations are O(1); each passes through ~30 layers of f32
//! convolutions with K = 9 * C <= 1,728 terms, whose GPU summation order differs from
//! PyTorch's. Rounding grows like sqrt(K) * 6e-8 per layer, ~3e-6, times the depth and the
//! norm re-scalings: 1e-4 absolute leaves a margin of ~10x over what we observe (printed)
//! and is 10x tighter than the 1e-3 bar.

mod common;

use common::labels;

use std::path::Path;

use diffusion_playground::gpu::Gpu;
use diffusion_playground::model::UNet;
use safetensors::SafeTensors;

const ATOL: f32 = 1e-4;

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (v.shape().to_vec(), data)
}

fn check_model(model_dir: &Path, io_file: &Path, cases: usize) {
    check_model_on(common::gpu(), model_dir, io_file, cases);
}

fn check_model_on(gpu: &Gpu, model_dir: &Path, io_file: &Path, cases: usize) {
    let (unet, _) = UNet::open(gpu, model_dir).expect("model loads");
    let io_bytes = std::fs::read(io_file).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let mut worst = 0.0f32;
    for case in 0..cases {
        let (xs, x) = f32s(&io, &format!("case{case}.x"));
        let (_, t) = f32s(&io, &format!("case{case}.t"));
        let classes = labels(&io, &format!("case{case}.class"));
        let batch = xs[0];
        let fwd = unet.plan(gpu, batch).expect("plan");
        fwd.input.write(gpu, &x).unwrap();
        fwd.set_timesteps(gpu, &t).unwrap();
        fwd.set_classes(gpu, &unet, &classes).unwrap();
        let all: Vec<_> = fwd.dispatches().collect();
        gpu.run(&all).unwrap();

        let act = |m: &str| format!("case{case}.act.{m}");
        if io.tensor(&act("time_proj")).is_ok() {
            let (s, want) = f32s(&io, &act("time_proj"));
            let got = pollster::block_on(fwd.time_proj.read(gpu)).unwrap();
            common::assert_close(&format!("case{case} time_proj"), &got, &want, &s, ATOL, 0.0);
            // The engine adds the class rows inside linear_2's epilogue, so compare the sum.
            let (s, te) = f32s(&io, &act("time_embedding"));
            let (_, ce) = f32s(&io, &act("class_embedding"));
            let want: Vec<f32> = te.iter().zip(&ce).map(|(a, b)| a + b).collect();
            let got = pollster::block_on(fwd.emb.read(gpu)).unwrap();
            common::assert_close(&format!("case{case} emb"), &got, &want, &s, ATOL, 0.0);
            for module in io.names() {
                let Some(m) = module.strip_prefix(&format!("case{case}.act.")) else {
                    continue;
                };
                if let Some(t) = fwd.activation(m) {
                    let (s, want) = f32s(&io, module);
                    let got = pollster::block_on(t.read(gpu)).unwrap();
                    common::assert_close(&format!("case{case} {m}"), &got, &want, &s, ATOL, 0.0);
                }
            }
        }
        let (s, want) = f32s(&io, &format!("case{case}.out"));
        let got = pollster::block_on(fwd.output.read(gpu)).unwrap();
        common::assert_close(
            &format!("case{case} out (t {t:?}, classes {classes:?})"),
            &got,
            &want,
            &s,
            ATOL,
            0.0,
        );
        worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    eprintln!("{}: worst abs error of the output over {cases} cases: {worst:e}", model_dir.display());
}

#[test]
fn small_random_unet_matches_diffusers() {
    check_model(
        Path::new("tests/fixtures/unet_small"),
        Path::new("tests/fixtures/unet_small_io.safetensors"),
        5,
    );
}

fn fashion_io() -> &'static Path {
    let io = Path::new("tests/fixtures/unet_fashion_io.safetensors");
    assert!(
        io.exists(),
        "{} is missing: run `train/make_fixtures.py --part fashion` after exporting the model",
        io.display()
    );
    io
}

#[test]
fn shipped_fashion_unet_matches_diffusers() {
    check_model(Path::new("www/models/fashion"), fashion_io(), 5);
}

/// The other attention form than this adapter's default (`Gpu::fused_attention`: three
/// dispatches on a CPU adapter, two on a GPU), the direct convs reading their weights from
/// the buffers rather than as texels (`Gpu::weight_textures`), the other number of channel
/// blocks per invocation (`Gpu::channel_blocks`) and of queries per attention invocation
/// (`Gpu::attention_pairs`), on a device of its own
/// so that the other tests' plans do not change under them.
#[test]
fn shipped_fashion_unet_matches_diffusers_other_attention_form() {
    let gpu = pollster::block_on(Gpu::new()).expect("adapter");
    gpu.set_fused_attention(!gpu.fused_attention());
    gpu.set_weight_textures(false);
    gpu.set_channel_blocks(3 - gpu.channel_blocks());
    gpu.set_attention_pairs(!gpu.attention_pairs());
    eprintln!(
        "fused attention: {}, weight textures off, {} channel blocks, attention pairs {}",
        gpu.fused_attention(),
        gpu.channel_blocks(),
        gpu.attention_pairs()
    );
    check_model_on(&gpu, Path::new("www/models/fashion"), fashion_io(), 5);
    check_model_on(
        &gpu,
        Path::new("tests/fixtures/unet_small"),
        Path::new("tests/fixtures/unet_small_io.safetensors"),
        5,
    );
}
