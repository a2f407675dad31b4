//! Launcher for `shaders/linear.wgsl`: `y = silu_out?(silu_in?(x) W^T + b)`.

use bytemuck::{Pod, Zeroable};

use super::{expect_shape, groups, u32_of, Dispatch, Gpu, KernelDef, Tensor};
use crate::error::{EngineError, Result};
use crate::gpu::pipeline::Access;

const KERNEL: KernelDef = KernelDef {
    name: "linear",
    source: include_str!("../../shaders/linear.wgsl"),
    entry: "main",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::Uniform],
};
const OP: &str = "linear";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    inputs: u32,
    outputs: u32,
    flags: u32,
}

/// - `x`: [rows, inputs]; `weight`: [outputs, inputs]; `bias`: [outputs]; `out`: [rows, outputs]
pub fn linear(
    gpu: &Gpu,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    out: &Tensor,
    silu_in: bool,
    silu_out: bool,
) -> Result<Dispatch> {
    let [rows, inputs] = <[usize; 2]>::try_from(x.shape())
        .map_err(|_| EngineError::shape(OP, format!("x {:?} must be [rows, inputs]", x.shape())))?;
    let outputs = weight.shape().first().copied().unwrap_or(0);
    expect_shape(OP, "weight", weight, &[outputs, inputs])?;
    expect_shape(OP, "bias", bias, &[outputs])?;
    expect_shape(OP, "out", out, &[rows, outputs])?;
    let params = Params {
        rows: u32_of(OP, "rows", rows)?,
        inputs: u32_of(OP, "inputs", inputs)?,
        outputs: u32_of(OP, "outputs", outputs)?,
        flags: silu_in as u32 | (silu_out as u32) << 1,
    };
    let kernel = gpu.kernel(&KERNEL, &[])?;
    gpu.dispatch(
        &kernel,
        &[x.buffer(), weight.buffer(), bias.buffer(), out.buffer()],
        &params,
        [groups(outputs, 64), groups(rows, 16), 1],
    )
    .map(|d| d.with_flops(2.0 * (rows * inputs * outputs) as f64))
}
