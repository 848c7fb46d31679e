//! Matrix products on strided f32 views (`matrixmultiply`): column blocks (attention's heads)
//! and transposes cost no copy. Each output element is summed in an order fixed by the inner
//! dimension alone, so a row or column block of a product has the whole product's bits, and
//! results are deterministic run to run (and for any `HETPAR_GEMM_THREADS`).

use std::sync::OnceLock;

/// A read-only matrix view: `rows × cols` values, element `(i, j)` at `data[i·rs + j·cs]`.
/// Views of column blocks (attention's heads) and transposes cost no copy.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// The last index a `rows × cols` view with strides `rs`, `cs` touches, plus one (0 if empty).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a> MatRef<'a> {
    /// A view of `data`; panics if it reaches past the end.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> MatRef<'a> {
        assert!(
            extent(rows, cols, rs, cs) <= data.len(),
            "MatRef: a {rows}x{cols} view (strides {rs}, {cs}) over {} values",
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The transpose (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            data: self.data,
        }
    }

    /// Rows `r` of the view.
    pub fn row_range(self, r: std::ops::Range<usize>) -> MatRef<'a> {
        assert!(r.start <= r.end && r.end <= self.rows, "MatRef: rows {r:?}");
        let start = (r.start * self.rs).min(self.data.len());
        MatRef::new(&self.data[start..], r.len(), self.cols, self.rs, self.cs)
    }

    /// Columns `c` of the view.
    pub fn col_range(self, c: std::ops::Range<usize>) -> MatRef<'a> {
        self.t().row_range(c).t()
    }
}

/// A writable matrix view, as [`MatRef`]; its elements never alias one another.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// A view of `data`; panics if it reaches past the end or two elements would share a value.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> MatMut<'a> {
        assert!(
            extent(rows, cols, rs, cs) <= data.len(),
            "MatMut: a {rows}x{cols} view (strides {rs}, {cs}) over {} values",
            data.len()
        );
        let distinct = (rows <= 1 && (cols <= 1 || cs >= 1))
            || (cols <= 1 && rs >= 1)
            || (cs >= 1 && rs >= cols * cs)
            || (rs >= 1 && cs >= rows * rs);
        assert!(
            distinct,
            "MatMut: strides {rs}, {cs} alias a {rows}x{cols} view"
        );
        MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Rows `r` of the view.
    pub fn row_range(self, r: std::ops::Range<usize>) -> MatMut<'a> {
        assert!(r.start <= r.end && r.end <= self.rows, "MatMut: rows {r:?}");
        let start = (r.start * self.rs).min(self.data.len());
        MatMut::new(
            &mut self.data[start..],
            r.len(),
            self.cols,
            self.rs,
            self.cs,
        )
    }

    /// The first `at` rows and the others, as two views; rows must not interleave
    /// (`rs >= cols · cs`).
    fn split_rows(self, at: usize) -> (MatMut<'a>, MatMut<'a>) {
        assert!(at <= self.rows && self.rs >= self.cols * self.cs);
        let mid = (at * self.rs).min(self.data.len());
        let (top, bottom) = self.data.split_at_mut(mid);
        (
            MatMut::new(top, at, self.cols, self.rs, self.cs),
            MatMut::new(bottom, self.rows - at, self.cols, self.rs, self.cs),
        )
    }

    /// Columns `c` of the view.
    pub fn col_range(self, c: std::ops::Range<usize>) -> MatMut<'a> {
        assert!(
            c.start <= c.end && c.end <= self.cols,
            "MatMut: columns {c:?}"
        );
        let start = (c.start * self.cs).min(self.data.len());
        MatMut::new(
            &mut self.data[start..],
            self.rows,
            c.len(),
            self.rs,
            self.cs,
        )
    }
}

/// `c = a · b`, or `c += a · b` if `accumulate`, in f32 (`matrixmultiply::sgemm`; without
/// `accumulate`, `c` is only written).
///
/// Deterministic, and the same bits wherever an element sits: each element sums its `k`
/// products in an order fixed by `k` alone (blocks of the kernel's `kc`; one kernel, chosen by
/// the CPU's features), whatever the other sizes, so a row or column slice of a product has the
/// whole product's bits. (sgemm's α and other β round differently in edge tiles: not offered.)
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, c: MatMut<'_>) {
    gemm_on(gemm_threads(), a, b, accumulate, c);
}

/// [`gemm`] on up to `threads` threads.
fn gemm_on(threads: usize, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, c: MatMut<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: a is {m}x{k}, b {}x{n}", b.rows);
    assert_eq!((c.rows, c.cols), (m, n), "gemm: the output's shape");
    // Blocks of rows on threads of their own change no bit (see above). Small products stay on
    // one thread: a spawn costs more than they do.
    let parts = threads.min(m / 64).max(1);
    if parts > 1 && m * n * k >= 1 << 22 && c.rs >= c.cols * c.cs {
        let mut rest = c;
        std::thread::scope(|s| {
            for p in 0..parts {
                let (r0, r1) = (p * m / parts, (p + 1) * m / parts);
                let (mine, later) = rest.split_rows(r1 - r0);
                rest = later;
                let a = a.row_range(r0..r1);
                if p + 1 == parts {
                    sgemm(a, b, accumulate, mine);
                } else {
                    s.spawn(move || sgemm(a, b, accumulate, mine));
                }
            }
        });
    } else {
        sgemm(a, b, accumulate, c);
    }
}

/// Threads one [`gemm`] may use: `HETPAR_GEMM_THREADS` (default 1: ranks are threads already,
/// one per core). Results are the same bits for any value.
pub fn gemm_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("HETPAR_GEMM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .clamp(1, 64)
    })
}

fn sgemm(a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, c: MatMut<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("a stride fits isize");
    // SAFETY: the views' constructors checked that every element they address lies inside
    // their slices and that `c`'s elements are distinct; `c` is borrowed mutably, so it
    // overlaps neither `a` nor `b`. With k = 0, sgemm reads neither operand.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            stride(a.rs),
            stride(a.cs),
            b.data.as_ptr(),
            stride(b.rs),
            stride(b.cs),
            if accumulate { 1.0 } else { 0.0 },
            c.data.as_mut_ptr(),
            stride(c.rs),
            stride(c.cs),
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// `a · b` summed in f64, for checking.
    fn naive(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
        let at = |m: MatRef<'_>, i: usize, j: usize| f64::from(m.data[i * m.rs + j * m.cs]);
        let mut out = Vec::new();
        for i in 0..a.rows {
            for j in 0..b.cols {
                out.push((0..a.cols).map(|k| at(a, i, k) * at(b, k, j)).sum::<f64>() as f32);
            }
        }
        out
    }

    /// `n` values drawn from `seed`.
    pub(crate) fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::reference::rng::SplitMix64::new(seed);
        (0..n).map(|_| r.symmetric(1.0)).collect()
    }

    #[test]
    fn gemm_on_transposed_and_column_block_views_matches_the_f64_product() {
        // Sizes past one kernel tile and one k block, uneven edges.
        let (m, k, n) = (37, 300, 21);
        let a = seeded(m * k, 1);
        let b = seeded(n * (k + 5), 2);
        // a as [m, k]; b stored [n, k + 5], read as the transpose of its columns 5..k+5.
        let av = MatRef::new(&a, m, k, k, 1);
        let bv = MatRef::new(&b, n, k + 5, k + 5, 1).col_range(5..k + 5).t();
        let want = naive(av, bv);
        for accumulate in [false, true] {
            let mut c = vec![if accumulate { 0.0 } else { f32::NAN }; m * n];
            gemm(av, bv, accumulate, MatMut::new(&mut c, m, n, n, 1));
            let err = c
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            let top = want.iter().map(|y| y.abs()).fold(0.0, f32::max);
            assert!(err <= 1e-6 * top, "error {err} against values up to {top}");
        }
    }

    #[test]
    fn a_block_of_a_product_has_the_whole_products_bits() {
        let (m, k, n) = (70, 300, 40);
        let a = Tensor::from_vec(&[m, k], seeded(m * k, 3)).unwrap();
        let b = Tensor::from_vec(&[n, k], seeded(n * k, 4)).unwrap();
        let whole = Tensor::matmul_nt(&a, &b);
        // Rows 13..50 against columns 7..33, written into a column block of a wider output.
        let mut part = Tensor::zeros(&[37, 60]);
        gemm(
            a.mat().row_range(13..50),
            b.mat().row_range(7..33).t(),
            false,
            part.mat_mut().col_range(20..46),
        );
        for i in 0..37 {
            assert_eq!(&part.row(i)[20..46], &whole.row(13 + i)[7..33]);
        }
        // Trailing zero terms change no bit (attention leaves masked keys out).
        let pad: Vec<f32> = a
            .data()
            .chunks_exact(k)
            .flat_map(|r| r.iter().copied().chain([0.0; 9]))
            .collect();
        let b_pad: Vec<f32> = b
            .data()
            .chunks_exact(k)
            .flat_map(|r| r.iter().copied().chain(seeded(9, 5)))
            .collect();
        let mut c = vec![0.0; m * n];
        gemm(
            MatRef::new(&pad, m, k + 9, k + 9, 1),
            MatRef::new(&b_pad, n, k + 9, k + 9, 1).t(),
            false,
            MatMut::new(&mut c, m, n, n, 1),
        );
        assert_eq!(c, whole.data());
    }

    #[test]
    fn a_product_on_three_threads_has_the_bits_of_one() {
        let (m, k, n) = (200, 300, 90);
        let a = seeded(m * k, 8);
        let b = seeded(k * n, 9);
        let (av, bv) = (MatRef::new(&a, m, k, k, 1), MatRef::new(&b, k, n, n, 1));
        let mut one = vec![0.0; m * n];
        let mut three = vec![0.0; m * n];
        gemm_on(1, av, bv, false, MatMut::new(&mut one, m, n, n, 1));
        gemm_on(3, av, bv, false, MatMut::new(&mut three, m, n, n, 1));
        assert_eq!(one, three);
    }

    #[test]
    #[should_panic(expected = "MatRef")]
    fn a_view_past_the_end_is_refused() {
        let v = [0.0f32; 10];
        MatRef::new(&v, 3, 4, 4, 1);
    }

    #[test]
    #[should_panic(expected = "alias")]
    fn an_aliasing_output_view_is_refused() {
        let mut v = [0.0f32; 10];
        MatMut::new(&mut v, 3, 3, 1, 1);
    }
}
