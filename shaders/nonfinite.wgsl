// Flags the first sampling step whose x_t holds NaN or infinity:
//   if any x[i] is non-finite: flag = min(flag, step).
// The flag starts at 0xffffffff (nothing seen), so reading it back once tells whether and
// where a run went bad however many steps ran in between. The test is on the bits (all-ones
// exponent) rather than on float comparisons a compiler may assume NaN-free. Only an
// invocation that saw a bad value touches the atomic, so a healthy run does no atomics.

struct Params {
    len: u32,
    step: u32,
    grid: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> flag: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = params;
    var bad = false;
    for (var base = gid.x * 4u; base < p.len; base += p.grid * 4u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = base + e;
            if (idx < p.len && (x[idx] & 0x7f800000u) == 0x7f800000u) {
                bad = true;
            }
        }
    }
    if (bad) {
        atomicMin(&flag[0], p.step);
    }
}
