//! Matrix products on raw float32 memory, through the very `sgemm` call libtorch makes.
//!
//! A time step of the LSTM passes is one small matrix product on slices of the step buffers.
//! As libtorch ops, each costs a view of every operand and a trip through the dispatcher, which
//! on the reference model take longer than the product. Here the product goes straight to the
//! BLAS that libtorch links (MKL's `sgemm_`, exported by `libtorch_cpu.so`), with the arguments
//! `at::native::addmm_impl_cpu_` and `cpublas::gemm` would pass for the same tensors, so that
//! the result is libtorch's bit for bit. Where libtorch would first copy an operand or use its own
//! kernel, [`addmm`] declines and the caller runs the libtorch op.

use std::os::raw::c_char;

unsafe extern "C" {
    /// The Fortran BLAS single-precision product (LP64 integers, as libtorch calls it).
    fn sgemm_(
        transa: *const c_char,
        transb: *const c_char,
        m: *const i32,
        n: *const i32,
        k: *const i32,
        alpha: *const f32,
        a: *const f32,
        lda: *const i32,
        b: *const f32,
        ldb: *const i32,
        beta: *const f32,
        c: *mut f32,
        ldc: *const i32,
    );
}

/// A 2-D float32 matrix in memory: element `(i, j)` at `data[i·strides[0] + j·strides[1]]`.
#[derive(Debug, Clone, Copy)]
pub struct Matrix {
    pub data: *const f32,
    pub sizes: [i64; 2],
    pub strides: [i64; 2],
}

impl Matrix {
    /// A row-major `rows × cols` matrix, with strides as libtorch gives a contiguous tensor.
    pub fn row_major(data: *const f32, rows: i64, cols: i64) -> Self {
        Matrix { data, sizes: [rows, cols], strides: [cols, 1] }
    }

    /// The transpose (a view, as `Tensor::transpose(0, 1)`).
    pub fn t(self) -> Self {
        Matrix { data: self.data, sizes: [self.sizes[1], self.sizes[0]], strides: [self.strides[1], self.strides[0]] }
    }
}

/// `result = beta·result + alpha·(m1 · m2)` as libtorch's `addmm_` (`beta` 1) or `mm_out`
/// (`beta` 0) computes it on these layouts. Returns `false`, having done nothing, where libtorch
/// would take another path (a copy of an operand, its own kernel, an empty product).
///
/// # Safety
/// The matrices must lie in live float32 memory; nothing else may read or write `result`'s
/// memory during the call, nor write the operands'.
pub unsafe fn addmm(result: Matrix, m1: Matrix, m2: Matrix, beta: f32, alpha: f32) -> bool {
    let [rows, cols] = result.sizes;
    let inner = m1.sizes[1];
    if rows == 0 || cols == 0 || inner == 0 || m2.sizes != [inner, cols] || m1.sizes[0] != rows {
        return false;
    }
    let rs = result.strides;
    // "Cast result as matrix c": column-major as it is, or transposed with the operands swapped.
    let (transpose_c, m1, m2) = if rs[0] == 1 && (cols == 1 || rs[1] >= rows.max(1)) {
        (false, m1, m2)
    } else if rs[1] == 1 && (rows == 1 || rs[0] >= cols.max(1)) {
        (true, m2, m1)
    } else {
        return false;
    };
    let (m, n) = if transpose_c { (cols, rows) } else { (rows, cols) };
    let (i, j) = if transpose_c { (1, 0) } else { (0, 1) };
    let k = m1.sizes[j];
    let transpose_a = if m1.strides[i] == 1 && m1.strides[j] >= m.max(1) {
        false
    } else if m1.strides[j] == 1 && m1.strides[i] >= k.max(1) {
        true
    } else {
        return false;
    };
    let transpose_b = if m2.strides[i] == 1 && m2.strides[j] >= k.max(1) {
        false
    } else if m2.strides[j] == 1 && m2.strides[i] >= n.max(1) {
        true
    } else {
        return false;
    };
    let mut lda = m1.strides[if transpose_a == transpose_c { 1 } else { 0 }];
    let mut ldb = m2.strides[if transpose_b == transpose_c { 1 } else { 0 }];
    let mut ldc = result.strides[if transpose_c { 0 } else { 1 }];
    // cpublas's normalize_last_dims.
    if n == 1 {
        ldc = m;
    }
    if transpose_a {
        if m == 1 {
            lda = k;
        }
    } else if k == 1 {
        lda = m;
    }
    if transpose_b {
        if k == 1 {
            ldb = n;
        }
    } else if n == 1 {
        ldb = k;
    }
    // cpublas's use_blas_gemm: otherwise libtorch runs its own kernel.
    let fits = |x: i64| i32::try_from(x).ok();
    let (Some(m_), Some(n_), Some(k_), Some(lda_), Some(ldb_), Some(ldc_)) =
        (fits(m), fits(n), fits(k), fits(lda), fits(ldb), fits(ldc))
    else {
        return false;
    };
    if lda < (if transpose_a { k } else { m }).max(1)
        || ldb < (if transpose_b { n } else { k }).max(1)
        || ldc < m.max(1)
    {
        return false;
    }
    let code = |transposed: bool| (if transposed { b't' } else { b'n' }) as c_char;
    let (transa, transb) = (code(transpose_a), code(transpose_b));
    // SAFETY: the caller vouches for the memory; the arguments describe it as libtorch would.
    unsafe {
        sgemm_(
            &transa,
            &transb,
            &m_,
            &n_,
            &k_,
            &alpha,
            m1.data,
            &lda_,
            m2.data,
            &ldb_,
            &beta,
            result.data as *mut f32,
            &ldc_,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn matrix(tensor: &Tensor) -> Matrix {
        let (sizes, strides) = (tensor.size(), tensor.stride());
        Matrix { data: tensor.data_ptr() as *const f32, sizes: [sizes[0], sizes[1]], strides: [strides[0], strides[1]] }
    }

    /// The products of the LSTM passes' layouts, and odd sizes (a row, a column, one inner
    /// element), agree with libtorch's `mm` and `addmm_` bit for bit.
    #[test]
    fn products_are_libtorchs_bit_for_bit() {
        let options = (Kind::Float, Device::Cpu);
        for (rows, inner, cols) in [(32, 75, 300), (16, 50, 200), (1, 75, 300), (7, 1, 4), (5, 3, 1), (1, 1, 1)] {
            let a = Tensor::randn([rows, inner], options);
            let weight = Tensor::randn([cols, inner], options);
            for b in [weight.transpose(0, 1), Tensor::randn([inner, cols], options)] {
                let expected = a.mm(&b);
                let ours = Tensor::full([rows, cols], f64::NAN, options);
                // SAFETY: fresh contiguous tensors, alive for the call.
                assert!(unsafe { addmm(matrix(&ours), matrix(&a), matrix(&b), 0.0, 1.0) });
                assert!(ours.equal(&expected), "mm {rows}x{inner}x{cols}");
                let start = Tensor::randn([rows, cols], options);
                let mut expected = start.copy();
                let _ = expected.addmm_(&a, &b);
                let ours = start.copy();
                // SAFETY: as above.
                assert!(unsafe { addmm(matrix(&ours), matrix(&a), matrix(&b), 1.0, 1.0) });
                assert!(ours.equal(&expected), "addmm_ {rows}x{inner}x{cols}");
            }
        }
    }
}
