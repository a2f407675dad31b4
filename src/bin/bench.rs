//! Kernel benchmark: the conv and attention shapes of a 28x28 U-Net with channels
//! (32, 64, 128), at batch 2 and 32, on the current adapter.
//!
//! With `--model DIR` it times the whole model instead: ms per U-Net forward at batch 2 and
//! 32, and ms per full 20-step DDIM sample of 16 images with classifier-free guidance
//! (a U-Net batch of 32 per step).
//!
//! `--profile` (with `--model`) also times every dispatch of the batch-32 forward on its
//! own and sums the times by kernel: where the time of a pass goes.
//!
//! `--plan-stats` (with `--model`) prints every dispatch of one guided sampling step (the
//! U-Net forward and the sampler update) at model batch 2 and 32: kernel, workgroups, FLOPs
//! and the bytes of the buffers each reads and writes, with totals. It runs nothing.
//!
//! `--all-variants` times every conv kernel variant that applies to each shape.
//!
//! `cargo run --release --bin bench [-- --quick] [-- --model www/models/fashion [--profile | --plan-stats]]`

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::main() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::{Duration, Instant};

    use diffusion_playground::gpu::attention::attention;
    use diffusion_playground::gpu::conv2d::{self, conv2d, Conv2dArgs};
    use diffusion_playground::gpu::conv2d::{NormIn, NormStats};
    use diffusion_playground::gpu::group_norm::{group_norm, group_norm_stats, NORM_STATS};
    use diffusion_playground::gpu::{Dispatch, Gpu, Tensor};
    use diffusion_playground::Result;

    struct Conv {
        name: &'static str,
        cin1: usize,
        cin2: usize,
        cout: usize,
        size: usize,
        k: usize,
        stride: usize,
        upsample: bool,
    }

    const fn conv(name: &'static str, cin1: usize, cin2: usize, cout: usize, size: usize, k: usize) -> Conv {
        Conv { name, cin1, cin2, cout, size, k, stride: 1, upsample: false }
    }

    /// One of each distinct convolution of the U-Net (`size` is the stored input's side).
    const CONVS: [Conv; 11] = [
        conv("conv_in 1->32 @28", 1, 0, 32, 28, 3),
        conv("resnet 32->32 @28", 32, 0, 32, 28, 3),
        Conv { stride: 2, ..conv("downsample 32 @28->14", 32, 0, 32, 28, 3) },
        conv("resnet 64->64 @14", 64, 0, 64, 14, 3),
        conv("resnet 128->128 @7", 128, 0, 128, 7, 3),
        conv("up resnet 128+128->128 @7", 128, 128, 128, 7, 3),
        conv("shortcut 1x1 128+128->128 @7", 128, 128, 128, 7, 1),
        Conv { upsample: true, ..conv("upsample conv 128 @7->14", 128, 0, 128, 7, 3) },
        conv("up resnet 64+32->32 @28", 64, 32, 32, 28, 3),
        conv("attn qkv 1x1 64->192 @14", 64, 0, 192, 14, 1),
        conv("conv_out 32->1 @28", 32, 0, 1, 28, 3),
    ];

    pub fn main() -> Result<()> {
        let quick = std::env::args().any(|a| a == "--quick");
        // `--only SUBSTRING` restricts the run to matching kernels (for A/B comparisons).
        let args: Vec<String> = std::env::args().collect();
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
        let wanted = |name: &str| only.as_ref().is_none_or(|o| name.contains(o.as_str()));
        let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
        if arg("--backend").map(String::as_str) == Some("cpu") {
            let dir = arg("--model").map_or("www/models/fashion", String::as_str);
            let threads = arg("--threads")
                .map_or(Ok(0), |t| t.parse())
                .map_err(|e| diffusion_playground::EngineError::shape("bench", format!("--threads: {e}")))?;
            return bench_cpu_model(std::path::Path::new(dir), threads, quick);
        }
        let gpu = pollster::block_on(Gpu::new())?;
        println!("adapter: {}", gpu.adapter_name());
        // `--fused-attention on|off` overrides the adapter's attention form (both timed on a
        // GPU); `--weight-textures on|off` where the direct convs read their weights.
        let on_off = |flag: &str| -> Result<Option<bool>> {
            match arg(flag).map(String::as_str) {
                None => Ok(None),
                Some("on") => Ok(Some(true)),
                Some("off") => Ok(Some(false)),
                Some(v) => Err(diffusion_playground::EngineError::input(flag, format!("{v}: on or off"))),
            }
        };
        if let Some(on) = on_off("--fused-attention")? {
            gpu.set_fused_attention(on);
        }
        if let Some(on) = on_off("--weight-textures")? {
            gpu.set_weight_textures(on);
        }
        if let Some(on) = on_off("--attention-pairs")? {
            gpu.set_attention_pairs(on);
        }
        // `--channel-blocks 1|2`: output-channel blocks per direct conv invocation.
        if let Some(b) = arg("--channel-blocks") {
            gpu.set_channel_blocks(b.parse().map_err(|_| {
                diffusion_playground::EngineError::input("--channel-blocks", format!("{b}: 1 or 2"))
            })?);
        }
        if let Some(dir) = args.iter().position(|a| a == "--model").and_then(|i| args.get(i + 1)) {
            let profile = args.iter().any(|a| a == "--profile");
            if args.iter().any(|a| a == "--plan-stats") {
                return plan_stats(&gpu, std::path::Path::new(dir));
            }
            return bench_model(&gpu, std::path::Path::new(dir), quick, profile);
        }
        println!("{:<44} {:>5} {:>11} {:>9}", "kernel", "batch", "ms/call", "GFLOP/s");
        let budget = Duration::from_millis(if quick { 50 } else { 400 });
        for batch in [2usize, 32] {
            for c in CONVS.iter().filter(|c| wanted(c.name)) {
                for variant in conv_variants(c, &args) {
                    let (ms, flops) = bench_conv(&gpu, c, batch, budget, Some(variant))?;
                    report(&format!("{} [{variant:?}]", c.name), batch, ms, flops);
                }
            }
            for (name, c, side, heads) in [
                ("attention core C64 h8 @14", 64usize, 14usize, 8usize),
                ("attention core C128 h16 @7", 128, 7, 16),
            ] {
                if !wanted(name) {
                    continue;
                }
                let qkv = filled(&gpu, &[batch, 3 * c, side, side])?;
                let out = Tensor::zeros(&gpu, "out", &[batch, c, side, side])?;
                let d = attention(&gpu, &qkv, &out, heads)?;
                let tokens = (side * side) as f64;
                let flops = 4.0 * batch as f64 * tokens * tokens * c as f64;
                report(name, batch, time(&gpu, &d, budget)?, flops);
            }
            if !wanted("group_norm") {
                continue;
            }
            let x = filled(&gpu, &[batch, 64, 14, 14])?;
            let gamma = filled(&gpu, &[64])?;
            let out = Tensor::zeros(&gpu, "out", &[batch, 64, 14, 14])?;
            let d = group_norm(&gpu, &x, &gamma, &gamma, &out, 8, 1e-5, true)?;
            // Not a FLOP-bound op: report the rate at ~8 FLOPs per element for scale.
            report("group_norm+silu C64 g8 @14", batch, time(&gpu, &d, budget)?, 8.0 * x.numel() as f64);
            // The same GroupNorm+SiLU in front of a 3x3 conv: as its own pass, or folded into
            // the conv's reads (a statistics pass, then the conv normalising as it gathers).
            let w = filled(&gpu, &[64, 64, 3, 3])?;
            let conv_out = Tensor::zeros(&gpu, "out", &[batch, 64, 14, 14])?;
            let flops = conv2d::flops(batch, 64, 64, 3, 14, 14);
            let conv = conv2d(&gpu, &Conv2dArgs::new(&out, &w, &gamma, &conv_out))?;
            report(
                "norm+silu, conv 64->64 @14 (two passes)",
                batch,
                time_all(&gpu, &[&d, &conv], budget)?,
                flops,
            );
            let stats = Tensor::zeros(&gpu, "stats", &[batch, 64, NORM_STATS])?;
            let s = group_norm_stats(&gpu, &x, None, &gamma, &gamma, &stats, 8, 1e-5)?;
            let folded = conv2d(
                &gpu,
                &Conv2dArgs {
                    norm: Some(NormIn { stats: NormStats::Pass(&stats), silu: true }),
                    ..Conv2dArgs::new(&x, &w, &gamma, &conv_out)
                },
            )?;
            report(
                "norm+silu, conv 64->64 @14 (folded)",
                batch,
                time_all(&gpu, &[&s, &folded], budget)?,
                flops,
            );
        }
        Ok(())
    }

    fn bench_model(gpu: &Gpu, dir: &std::path::Path, quick: bool, profile: bool) -> Result<()> {
        use diffusion_playground::pipeline::Session;
        let (unet, sched) = load_gpu_model(gpu, dir)?;
        let classes = unet.config().num_class_embeds.unwrap_or(1).saturating_sub(1) as u32;
        let reps = if quick { 1 } else { 3 };
        for batch in [2usize, 32] {
            let fwd = unet.plan(gpu, batch)?;
            fwd.set_timesteps(gpu, &vec![500.0; batch])?;
            if classes > 0 {
                fwd.set_classes(gpu, &unet, &(0..batch as u32).map(|i| i % classes).collect::<Vec<_>>())?;
            }
            let all: Vec<&Dispatch> = fwd.dispatches().collect();
            gpu.run(&all)?; // warm-up: pipeline compilation
            pollster::block_on(gpu.sync())?;
            let start = Instant::now();
            for _ in 0..reps {
                gpu.run(&all)?;
            }
            pollster::block_on(gpu.sync())?;
            let ms = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
            println!(
                "unet forward, batch {batch:>2}: {ms:>9.1} ms ({} dispatches, fused attention {})",
                all.len(),
                if gpu.fused_attention() { "on" } else { "off" }
            );
            if profile && batch == profile_batch() {
                profile_pass(gpu, &all)?;
            }
        }
        if std::env::args().any(|a| a == "--no-sample") {
            return Ok(());
        }
        for n in [16usize, 1] {
            let mut session = Session::new(gpu, &unet, n)?;
            let req = guided_request(n, classes);
            // One warm-up run for the 1-image session's pipelines and buffers.
            if n == 1 {
                let run = session.start(gpu, &unet, &sched, &req)?;
                session.step(gpu, &run, 0)?;
                pollster::block_on(gpu.sync())?;
            }
            let start = Instant::now();
            let run = session.start(gpu, &unet, &sched, &req)?;
            for k in 0..run.steps() {
                session.step(gpu, &run, k)?;
            }
            pollster::block_on(gpu.sync())?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            println!(
                "sample: {n} image{}, 20 DDIM steps, CFG (U-Net batch {}): {ms:.0} ms total, {:.1} ms/step",
                if n == 1 { "" } else { "s" },
                run.model_batch(),
                ms / 20.0
            );
        }
        Ok(())
    }

    /// The benchmarks' run: `n` images of classes 0, 1, .. (mod `classes`; none if 0), 20
    /// DDIM steps, guidance 2, seed 1.
    fn guided_request(n: usize, classes: u32) -> diffusion_playground::pipeline::SampleRequest {
        diffusion_playground::pipeline::SampleRequest {
            classes: if classes > 0 { (0..n as u32).map(|i| i % classes).collect() } else { Vec::new() },
            guidance: 2.0,
            kind: diffusion_playground::sched::SamplerKind::Ddim,
            steps: 20,
            eta: 0.0,
            seed: 1,
            first_image: 0,
            init_noise: None,
        }
    }

    /// The batch `--profile` times (`--profile-batch N`, 2 or 32; default 32).
    fn profile_batch() -> usize {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--profile-batch")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(32)
    }

    /// The model in `dir` on the GPU, and its scheduler config.
    fn load_gpu_model(
        gpu: &Gpu,
        dir: &std::path::Path,
    ) -> Result<(diffusion_playground::model::UNet, diffusion_playground::sched::SchedulerConfig)> {
        diffusion_playground::model::UNet::open(gpu, dir)
    }

    /// Every dispatch of one guided step (images = half the model batch), without running it.
    /// The plan a hardware adapter runs (fused attention, one channel block per direct conv
    /// invocation), whatever this adapter is, unless `--adapter-plan` asks for this
    /// adapter's own (see `Gpu::fused_attention`, `Gpu::channel_blocks`).
    fn plan_stats(gpu: &Gpu, dir: &std::path::Path) -> Result<()> {
        use diffusion_playground::pipeline::Session;
        let args: Vec<String> = std::env::args().collect();
        if !args.iter().any(|a| a == "--adapter-plan" || a == "--fused-attention") {
            gpu.set_fused_attention(true);
        }
        if !args.iter().any(|a| a == "--adapter-plan" || a == "--channel-blocks") {
            gpu.set_channel_blocks(1);
        }
        if !args.iter().any(|a| a == "--adapter-plan" || a == "--attention-pairs") {
            gpu.set_attention_pairs(false);
        }
        println!(
            "attention: {} (`Gpu::fused_attention`)",
            if gpu.fused_attention() {
                "two dispatches per block, as on a GPU"
            } else {
                "three dispatches per block"
            }
        );
        let (unet, sched) = load_gpu_model(gpu, dir)?;
        for images in [1usize, 16] {
            let mut session = Session::new(gpu, &unet, images)?;
            let req = guided_request(images, 1);
            let run = session.start(gpu, &unet, &sched, &req)?;
            let all = session.step_dispatches(gpu, &run, 0)?;
            println!(
                "\n### One guided step, U-Net batch {} ({} shard{})\n",
                run.model_batch(),
                run.shards(),
                if run.shards() == 1 { "" } else { "s" }
            );
            println!("| # | kernel | workgroups | MFLOP | KiB read | KiB written |");
            println!("|---|---|---|---|---|---|");
            let (mut flops, mut read_b, mut written_b) = (0.0, 0u64, 0u64);
            let mut few = 0;
            for (i, d) in all.iter().enumerate() {
                let c = d.cost();
                let [x, y, z] = d.workgroups();
                let wgs = x as u64 * y as u64 * z as u64;
                // "Heavy": over 1 MFLOP per image of the batch.
                if c.flops > 1e6 * run.model_batch() as f64 && wgs < 64 {
                    few += 1;
                }
                println!(
                    "| {i} | {} | {wgs} ({x}x{y}x{z}) | {:.2} | {:.1} | {:.1} |",
                    d.label(),
                    c.flops / 1e6,
                    c.bytes_read as f64 / 1024.0,
                    c.bytes_written as f64 / 1024.0
                );
                flops += c.flops;
                read_b += c.bytes_read;
                written_b += c.bytes_written;
            }
            println!(
                "| | **{} dispatches** | {few} heavy with < 64 workgroups | **{:.1}** | **{:.0}** | **{:.0}** |",
                all.len(),
                flops / 1e6,
                read_b as f64 / 1024.0,
                written_b as f64 / 1024.0
            );
        }
        Ok(())
    }

    /// The same model timings on the CPU backend (`--backend cpu [--threads N]`).
    fn bench_cpu_model(dir: &std::path::Path, threads: usize, quick: bool) -> Result<()> {
        use diffusion_playground::fast::{CpuEngine, CpuSession};
        use diffusion_playground::pipeline::SampleRequest;
        use diffusion_playground::sched::SchedulerConfig;
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_default();
        let config = String::from_utf8_lossy(&read("config.json")).into_owned();
        let engine = CpuEngine::load(&config, &read("diffusion_pytorch_model.safetensors"), threads)?;
        let sched = SchedulerConfig::from_json(&String::from_utf8_lossy(&read("scheduler_config.json")))?;
        println!("backend: cpu, {} thread(s)", engine.threads());
        let classes = engine.unet.config().num_class_embeds.unwrap_or(1).saturating_sub(1) as u32;
        let [c, h, w] = engine.unet.sample_shape();
        let reps = if quick { 2 } else { 5 };
        for batch in [2usize, 32] {
            let labels: Vec<u32> =
                if classes > 0 { (0..batch as u32).map(|i| i % classes).collect() } else { Vec::new() };
            let rows = engine.unet.class_rows(&labels)?;
            let input: Vec<f32> =
                (0..batch * c * h * w).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let mut out = vec![0.0f32; batch * engine.unet.config().out_channels * h * w];
            engine.forward(&input, 500.0, &rows, &mut out); // warm-up
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let start = Instant::now();
                    engine.forward(&input, 500.0, &rows, &mut out);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            println!(
                "unet forward, batch {batch:>2}: {:>9.1} ms (median of {reps}; min {:.1})",
                times[reps / 2],
                times[0]
            );
        }
        let n = 16;
        let req = guided_request(n, classes);
        let start = Instant::now();
        let mut session = CpuSession::new(&engine, n)?;
        let run = session.start(&engine, &sched, &req)?;
        for k in 0..run.steps() {
            session.step(&engine, &run, k)?;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "sample: 16 images, 20 DDIM steps, CFG (U-Net batch {}): {ms:.0} ms total, {:.0} ms/step",
            session.model_batch(),
            ms / 20.0
        );
        let one = SampleRequest { classes: req.classes[..1].to_vec(), ..req };
        let start = Instant::now();
        let mut session = CpuSession::new(&engine, 1)?;
        let run = session.start(&engine, &sched, &one)?;
        for k in 0..run.steps() {
            session.step(&engine, &run, k)?;
        }
        println!("sample: 1 image, 20 DDIM steps, CFG: {:.0} ms total", start.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// Every variant that applies to `c` (`--variant all`), or the one `conv2d` would pick.
    fn conv_variants(c: &Conv, args: &[String]) -> Vec<conv2d::ConvVariant> {
        use conv2d::ConvVariant::*;
        let auto = conv2d::ConvVariant::auto(c.cout, c.k, c.stride, c.k / 2);
        if !args.iter().any(|a| a == "--all-variants") {
            return vec![auto];
        }
        let mut v = vec![Tiled];
        if c.stride == 1 && (c.k == 3 || c.k == 1) {
            v.push(Direct);
        }
        if c.cout <= 4 {
            v.push(Narrow);
        }
        v
    }

    fn bench_conv(
        gpu: &Gpu,
        c: &Conv,
        batch: usize,
        budget: Duration,
        variant: Option<conv2d::ConvVariant>,
    ) -> Result<(f64, f64)> {
        let x = filled(gpu, &[batch, c.cin1, c.size, c.size])?;
        let x2 = if c.cin2 > 0 { Some(filled(gpu, &[batch, c.cin2, c.size, c.size])?) } else { None };
        let cin = c.cin1 + c.cin2;
        let w = filled(gpu, &[c.cout, cin, c.k, c.k])?;
        let b = filled(gpu, &[c.cout])?;
        let side = if c.upsample { 2 * c.size } else { c.size };
        let pad = c.k / 2;
        let (oh, ow) = conv2d::out_size(side, side, c.k, c.stride, pad).expect("valid bench shape");
        let out = Tensor::zeros(gpu, "out", &[batch, c.cout, oh, ow])?;
        let d = conv2d(
            gpu,
            &Conv2dArgs {
                x2: x2.as_ref(),
                stride: c.stride,
                upsample: c.upsample,
                variant,
                ..Conv2dArgs::new(&x, &w, &b, &out)
            },
        )?;
        let ms = time(gpu, &d, budget)?;
        Ok((ms, conv2d::flops(batch, cin, c.cout, c.k, oh, ow)))
    }

    fn filled(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        Tensor::from_slice(gpu, "bench", shape, &data)
    }

    /// Milliseconds per call: after a warm-up, repeat the dispatch in batches of one
    /// submission until `budget` has passed, and divide.
    fn time(gpu: &Gpu, d: &Dispatch, budget: Duration) -> Result<f64> {
        time_all(gpu, &[d], budget)
    }

    /// [`time`] for a sequence of dispatches run in order.
    fn time_all(gpu: &Gpu, seq: &[&Dispatch], budget: Duration) -> Result<f64> {
        gpu.run(seq)?;
        pollster::block_on(gpu.sync())?;
        let mut reps = 1usize;
        loop {
            let batch: Vec<&Dispatch> = (0..reps).flat_map(|_| seq.iter().copied()).collect();
            let start = Instant::now();
            gpu.run(&batch)?;
            pollster::block_on(gpu.sync())?;
            let took = start.elapsed();
            if took >= budget || reps >= 1 << 14 {
                return Ok(took.as_secs_f64() * 1e3 / reps as f64);
            }
            reps *= 2;
        }
    }

    /// Each dispatch timed alone, summed by kernel (pipeline label), largest share first.
    fn profile_pass(gpu: &Gpu, all: &[&Dispatch]) -> Result<()> {
        let mut by_kernel: Vec<(String, usize, f64)> = Vec::new();
        for d in all {
            let ms = time(gpu, d, Duration::from_millis(30))?;
            match by_kernel.iter_mut().find(|(label, ..)| label == d.label()) {
                Some((_, count, total)) => {
                    *count += 1;
                    *total += ms;
                }
                None => by_kernel.push((d.label().to_string(), 1, ms)),
            }
        }
        by_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
        let sum: f64 = by_kernel.iter().map(|k| k.2).sum();
        println!("  {:<40} {:>5} {:>10} {:>6}", "kernel (dispatches timed alone)", "calls", "ms", "share");
        for (label, count, ms) in &by_kernel {
            println!("  {label:<40} {count:>5} {ms:>10.1} {:>5.1}%", 100.0 * ms / sum);
        }
        println!("  {:<40} {:>5} {sum:>10.1}", "sum", all.len());
        Ok(())
    }

    fn report(name: &str, batch: usize, ms: f64, flops: f64) {
        println!("{name:<44} {batch:>5} {ms:>11.3} {:>9.2}", flops / (ms * 1e-3) / 1e9);
    }
}
