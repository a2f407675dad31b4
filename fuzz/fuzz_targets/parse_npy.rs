//! `.npy` noise files as the CLI reads them: any bytes give (shape, data) or an error.
#![no_main]

use diffusion_playground::image::parse_npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((shape, values)) = parse_npy(data) {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(values.len()), "shape {shape:?} vs {} values", values.len());
    }
});
