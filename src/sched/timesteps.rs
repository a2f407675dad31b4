//! Which training timesteps N inference steps visit, exactly as each diffusers scheduler's
//! `set_timesteps` picks them (numpy's `linspace` / `arange` / `round` emulated in f64).

use super::{invalid, SamplerKind, SchedulerConfig, TimestepSpacing};
use crate::error::Result;

/// The N model timesteps of a sampler, first (noisiest) to last. They are integers except
/// for Euler ancestral with `linspace` spacing, which evaluates the model at fractional
/// timesteps (`np.linspace(0, T - 1, N, dtype=float32)`, not rounded).
///
/// DPM-Solver takes N + 1 points and drops the last (so `linspace` never reaches 0 and
/// `leading` uses T // (N + 1)). `trailing` is `round(T - k T / N) - 1` for k < N: numpy's
/// `arange(T, 0, -T / N)` sometimes yields an (N+1)-th value -1 through float round-off
/// (N = 61, 103, ... for T = 1000), which diffusers would then index with; we stop at N.
///
/// For a flow-matching model: the timesteps s T of [`flow_sigmas`] (fractional).
pub fn timesteps(cfg: &SchedulerConfig, kind: SamplerKind, n: usize) -> Result<Vec<f64>> {
    let t = cfg.num_train_timesteps;
    if n == 0 || n > t {
        return Err(invalid("sampler", "steps", n, &format!("must be in 1..={t} (num_train_timesteps)")));
    }
    if cfg.is_flow() {
        let tf = t as f32;
        return Ok(flow_sigmas(cfg, n)?.iter().map(|&s| (s as f32 * tf) as f64).collect());
    }
    let spacing = cfg.timestep_spacing.unwrap_or(kind.default_spacing());
    let tf = t as f64;
    let offset = cfg.steps_offset as f64;
    let dpm = kind == SamplerKind::DpmSolverPp2m;
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace if kind == SamplerKind::EulerAncestral => {
            linspace(tf - 1.0, n).into_iter().rev().map(|v| v as f32 as f64).collect()
        }
        TimestepSpacing::Linspace if dpm => {
            linspace(tf - 1.0, n + 1).into_iter().rev().take(n).map(f64::round_ties_even).collect()
        }
        TimestepSpacing::Linspace => {
            linspace(tf - 1.0, n).into_iter().rev().map(f64::round_ties_even).collect()
        }
        TimestepSpacing::Leading => {
            let (points, ratio) = if dpm { (n + 1, t / (n + 1)) } else { (n, t / n) };
            (0..points).rev().take(n).map(|k| (k * ratio) as f64 + offset).collect()
        }
        TimestepSpacing::Trailing => {
            // numpy's arange fills start + i * delta with delta = (start + step) - start.
            let delta = (tf - tf / n as f64) - tf;
            (0..n).map(|i| (tf + i as f64 * delta).round_ties_even() - 1.0).collect()
        }
    };
    if let Some(bad) = ts.iter().find(|&&v| !(0.0..=tf - 1.0).contains(&v)) {
        return Err(invalid(
            "scheduler_config.json",
            "steps_offset",
            cfg.steps_offset,
            &format!(
                "with {n} {spacing} steps it gives timestep {bad}, past num_train_timesteps - 1 = {}",
                t - 1
            ),
        ));
    }
    Ok(ts)
}

/// The N noise levels s of a flow-matching run, first (s = 1) to last, as diffusers'
/// `FlowMatchEulerDiscreteScheduler.set_timesteps(N)` makes them (its Heun twin repeats the
/// inner ones): `np.linspace(s_max T, s_min T, N) / T`, shifted in f64, rounded to f32.
/// s_max and s_min are the ends of the training grid t / T (t = 1..T) after the shift, taken
/// in f32, so with shift != 1 the last level is shifted twice, as in diffusers.
pub fn flow_sigmas(cfg: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
    let t = cfg.num_train_timesteps;
    let shift = cfg
        .flow_shift
        .ok_or_else(|| invalid("sampler", "sampler", "flow", "the model is not a flow-matching model"))?;
    if n == 0 || n > t {
        return Err(invalid("sampler", "steps", n, &format!("must be in 1..={t} (num_train_timesteps)")));
    }
    // __init__: float32 torch ops on t / T.
    let shift32 = shift as f32;
    let init = |v: f32| shift32 * v / (1.0 + (shift32 - 1.0) * v);
    let (s_max, s_min) = (init(1.0) as f64, init(1.0 / t as f32) as f64);
    let tf = t as f64;
    let (start, stop) = (s_max * tf, s_min * tf);
    Ok((0..n)
        .map(|i| {
            // numpy's linspace: start + i * step, the last point exactly `stop`.
            let v = if n == 1 {
                start
            } else if i == n - 1 {
                stop
            } else {
                start + i as f64 * ((stop - start) / (n - 1) as f64)
            };
            super::schedule::shift_sigma(shift, v / tf) as f32 as f64
        })
        .collect())
}

/// numpy's `linspace(0, stop, num)`: i * (stop / (num - 1)), the last point exactly `stop`.
fn linspace(stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![0.0];
    }
    let step = stop / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step).collect();
    v[num - 1] = stop;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(spacing: TimestepSpacing, offset: usize, kind: SamplerKind, n: usize) -> Vec<f64> {
        let cfg =
            SchedulerConfig { timestep_spacing: Some(spacing), steps_offset: offset, ..Default::default() };
        timesteps(&cfg, kind, n).unwrap()
    }

    #[test]
    fn spacings_match_diffusers() {
        use SamplerKind::*;
        use TimestepSpacing::*;
        // Values printed by diffusers 0.42.1's set_timesteps.
        assert_eq!(ts(Leading, 0, Ddim, 10), [900., 800., 700., 600., 500., 400., 300., 200., 100., 0.]);
        assert_eq!(ts(Leading, 1, Ddpm, 4), [751., 501., 251., 1.]);
        assert_eq!(ts(Trailing, 0, Ddim, 3), [999., 666., 332.]);
        assert_eq!(ts(Trailing, 0, Ddim, 16)[..3], [999., 937., 874.]);
        assert_eq!(ts(Linspace, 0, Ddpm, 4), [999., 666., 333., 0.]);
        assert_eq!(ts(Linspace, 0, DpmSolverPp2m, 4), [999., 749., 500., 250.]);
        assert_eq!(ts(Leading, 0, DpmSolverPp2m, 4), [800., 600., 400., 200.]);
        let e = ts(Linspace, 0, EulerAncestral, 4);
        assert_eq!(e, [999., 666., 333., 0.]);
        let e = ts(Linspace, 0, EulerAncestral, 7);
        assert_eq!(e[1], 832.5);
        assert_eq!(ts(Trailing, 0, Ddim, 61).len(), 61);
        assert_eq!(*ts(Trailing, 0, Ddim, 61).last().unwrap(), 15.0);
    }

    #[test]
    fn step_counts_out_of_range_are_refused() {
        let cfg = SchedulerConfig::default();
        for n in [0, 1001] {
            let e = timesteps(&cfg, SamplerKind::Ddim, n).unwrap_err().to_string();
            assert!(e.contains(&format!("`steps` = {n}")) && e.contains("1..=1000"), "{e}");
        }
        let cfg = SchedulerConfig { steps_offset: 1, ..Default::default() };
        let e = timesteps(&cfg, SamplerKind::Ddim, 1000).unwrap_err().to_string();
        assert!(e.contains("`steps_offset` = 1") && e.contains("timestep 1000"), "{e}");
    }
}
