//! A whole model folder from one input: `config.json`, `scheduler_config.json` and the
//! safetensors file, separated by [`SEPARATOR`] (a missing part is empty). Loading must
//! give a model or a typed error; a panic, a crash, a leak, an allocation past
//! `-rss_limit_mb` or a timeout is a bug.
#![no_main]

use diffusion_playground::model::check_model_files;
use diffusion_playground::model::limits::MAX_ABS_WEIGHT;
use diffusion_playground::ErrorKind;
use libfuzzer_sys::fuzz_target;

/// Rare in JSON and in weights; also in `fuzz/load_model.dict` so mutations keep it.
const SEPARATOR: &[u8] = b"\n#####\n";

/// The first occurrence of [`SEPARATOR`]: scanned for its first byte and only then
/// compared whole. Every slice comparison goes through libFuzzer's instrumented memcmp;
/// comparing at every offset took about a fifth of each run (the corpus of the first
/// 14-minute run replays in 9.6 s instead of 12.4 s).
fn find(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].iter().position(|&b| b == SEPARATOR[0]) {
        let at = from + i;
        if s[at..].starts_with(SEPARATOR) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn split(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let Some(a) = find(data) else { return (data, &[], &[]) };
    let (config, rest) = (&data[..a], &data[a + SEPARATOR.len()..]);
    let Some(b) = find(rest) else { return (config, rest, &[]) };
    (config, &rest[..b], &rest[b + SEPARATOR.len()..])
}

fuzz_target!(|data: &[u8]| {
    let (config, scheduler, weights) = split(data);
    let (Ok(config), Ok(scheduler)) = (std::str::from_utf8(config), std::str::from_utf8(scheduler)) else {
        return;
    };
    let scheduler = (!scheduler.is_empty()).then_some(scheduler);
    match check_model_files(config, scheduler, weights) {
        Ok((model, _)) => {
            // An accepted model keeps the loader's promises.
            assert_eq!(model.weights.len() as u64, model.budget.tensors);
            let mut values = 0u64;
            for (name, t) in model.weights.tensors() {
                values += t.data.len() as u64;
                assert!(t.data.iter().all(|v| v.abs() <= MAX_ABS_WEIGHT), "{name} holds an absurd value");
            }
            assert_eq!(values, model.budget.parameters);
            let c = &model.spec.config;
            assert!(c.norm_eps > 0.0 && c.freq_shift.is_finite() && c.mid_block_scale_factor.is_finite());
        }
        Err(e) => {
            // Hostile input is the file's fault, never the engine's.
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Config | ErrorKind::Scheduler | ErrorKind::Weights | ErrorKind::Limits
                ),
                "{e:?}"
            );
        }
    }
});
