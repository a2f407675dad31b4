//! The in-browser self-test must pass on lavapipe too (and would catch a kernel that
//! breaks only at the small shapes it uses).

mod common;

#[test]
fn every_kernel_passes_the_self_test() {
    let checks =
        pollster::block_on(diffusion_playground::selftest::run(common::gpu())).expect("self-test runs");
    assert_eq!(checks.len(), 8);
    for c in &checks {
        assert!(c.ok, "{}: max abs err {} > {}", c.kernel, c.max_abs_err, c.tolerance);
    }
}
