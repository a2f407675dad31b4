//! The one GEMM every CPU kernel goes through: matrixmultiply's `sgemm` (runtime-dispatched
//! AVX2/FMA kernels natively, its 8x8 `simd128` kernel in wasm32 built with `+simd128`),
//! behind a safe, bounds-checked signature.

/// A row-major view of a matrix with arbitrary strides: element (i, j) is at
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a contiguous row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, row_stride: 1, col_stride: cols }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `c[m x n] = a[m x k] * b[k x n] + beta * c`, `c` contiguous row-major with row stride
/// `ldc`. Panics if a view is too short for its shape (an engine bug, never input-driven:
/// every shape comes from a validated config).
#[allow(clippy::too_many_arguments)] // BLAS's own signature, minus alpha and c's column stride
pub fn gemm(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, beta: f32, c: &mut [f32], ldc: usize) {
    assert!(a.fits(m, k) && b.fits(k, n), "gemm: operand views too short for {m}x{k}x{n}");
    assert!(m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(), "gemm: output too short for {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index sgemm touches inside the three slices, and
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}
