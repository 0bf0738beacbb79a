//! The tape's layer maths on plain slices, for a caller that keeps its own buffers across
//! steps (the allocation-free training step of `losskit-train`).
//!
//! Each function runs the per-element functions, products and sums of the differentiable op
//! it stands for ([`Tensor::dense`](crate::Tensor::dense), `softmax(-1)`, `mul`, `sum_all`, the
//! adjoint of a bias' broadcast), in the same order, so the values are the same bits as
//! through the tape. Matrices are row-major: `x: (rows, inputs)`, `W: (inputs, units)`,
//! `b: (units,)`, outputs `(rows, units)`. Nothing here allocates once the GEMM's per-thread
//! packing buffers exist.

use crate::fusion::{with_avx2, CHUNK, PIECE};
pub use crate::ops::activation::{
    elementwise_backward_in_place, elementwise_forward, glu_backward, glu_forward, sparsemax_backward,
    sparsemax_forward,
};
use crate::pointwise::{per_unary, Binary, Unary, PARALLEL_MIN};
use crate::storage::Element;
use crate::tensor::{sum_squares_body, SQUARES_BLOCK, SQUARES_GROUP, SQUARES_ROUND};
use losskit_kernels::gemm::{self, MatRef};
use losskit_kernels::{accumulate_sum, log_sum_exp};
use rayon::prelude::*;

/// The sizes of a fully connected layer on a batch: `x: (rows, inputs)`, `W: (inputs, units)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseShape {
    /// Samples in the batch.
    pub rows: usize,
    /// Features per sample in.
    pub inputs: usize,
    /// Features per sample out.
    pub units: usize,
}

/// A row-major `rows × cols` slice as the GEMM's operand.
fn row_major<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
}

/// The transpose of a row-major `rows × cols` slice (`cols × rows`, read in place).
fn transposed<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef { data, rows: cols, cols: rows, row_stride: 1, col_stride: cols }
}

/// The activations a fused [`Tensor::dense`](crate::Tensor::dense) applies in place: those whose derivative is a
/// function of their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    /// `y = z` (`act' = 1`).
    Linear,
    /// `y = max(z, 0)` (`act' = [y > 0]`, 0 at 0 as TensorFlow; NaN kept).
    Relu,
    /// `y = 1 / (1 + e⁻ᶻ)` (`act' = y·(1 - y)`).
    Sigmoid,
    /// `y = tanh z` (`act' = 1 - y²`).
    Tanh,
}

impl DenseActivation {
    /// The element-wise op, or `None` for the identity.
    fn unary(self) -> Option<Unary> {
        match self {
            DenseActivation::Linear => None,
            DenseActivation::Relu => Some(Unary::Relu),
            DenseActivation::Sigmoid => Some(Unary::Sigmoid),
            DenseActivation::Tanh => Some(Unary::Tanh),
        }
    }
}

/// Rows of the output per parallel piece of the bias-and-activation pass (above
/// `PARALLEL_MIN` values).
const ROWS_PER_PIECE: usize = 16;

/// Adds the bias to each row of `n` values and applies the activation, in place (in parallel
/// over pieces of rows when large: element-wise, so the values do not depend on threads).
fn finish<T: Element>(values: &mut [T], n: usize, bias: Option<&[T]>, act: DenseActivation) {
    let act = act.unary();
    if values.len() >= PARALLEL_MIN {
        values.par_chunks_mut(n * ROWS_PER_PIECE).for_each(|rows| finish_rows(rows, n, bias, act));
    } else {
        finish_rows(values, n, bias, act);
    }
}

/// Adds the bias to each row of `n` values and applies the activation, in place.
#[inline(always)]
fn finish_rows_body<T: Element>(rows: &mut [T], n: usize, bias: Option<&[T]>, act: Option<Unary>) {
    for row in rows.chunks_exact_mut(n) {
        if let Some(bias) = bias {
            for (v, &c) in row.iter_mut().zip(bias) {
                *v = Binary::Add.apply(*v, c);
            }
        }
        if let Some(u) = act {
            per_unary!(u, u => row.iter_mut().for_each(|v| *v = u.apply(*v)));
        }
    }
}
// Compiled for AVX2 when the CPU has it, as the fused element-wise programs are (the same IEEE
// operations per element, so the same values).
with_avx2!(finish_rows => finish_rows_body, (rows: &mut [T], n: usize, bias: Option<&[T]>, act: Option<Unary>));

/// `out = act(x)` element by element on rows of `cols` values, as the tape's activation op
/// (`x.relu()`, `x.tanh()`, ...) computes it.
///
/// Panics if the lengths differ or are not whole rows.
pub fn activation_forward<T: Element>(x: &[T], cols: usize, act: DenseActivation, out: &mut [T]) {
    assert!(x.len() == out.len() && x.len().is_multiple_of(cols.max(1)));
    out.copy_from_slice(x);
    finish(out, cols.max(1), None, act);
}

/// `out = g·act'(y)` element by element (the derivative read from the output `y`: for relu
/// `[y > 0] = [z > 0]`, NaN included; sigmoid and tanh use only `y`), in parallel pieces when
/// large: the values of [`activation_backward_in_place`] into another buffer.
///
/// Panics if the lengths differ.
pub fn activation_backward_into<T: Element>(y: &[T], g: &[T], act: DenseActivation, out: &mut [T]) {
    assert!(y.len() == g.len() && g.len() == out.len());
    let Some(u) = act.unary() else {
        out.copy_from_slice(g);
        return;
    };
    let rows = |(o, (y, g)): (&mut [T], (&[T], &[T]))| derivative_times(o, y, g, u);
    if y.len() >= PARALLEL_MIN {
        let piece = 1 << 14;
        out.par_chunks_mut(piece).zip(y.par_chunks(piece).zip(g.par_chunks(piece))).for_each(rows);
    } else {
        rows((out, (y, g)));
    }
}

/// `o = g·act'(y)` element by element.
#[inline(always)]
fn derivative_times_body<T: Element>(o: &mut [T], y: &[T], g: &[T], u: Unary) {
    per_unary!(u, u => for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
        *o = g * u.deriv(y, y);
    })
}
with_avx2!(derivative_times => derivative_times_body, (o: &mut [T], y: &[T], g: &[T], u: Unary));

/// `g ← g·act'(y)` in place: the values of [`activation_backward_into`] in `g`'s own buffer.
pub fn activation_backward_in_place<T: Element>(y: &[T], g: &mut [T], act: DenseActivation) {
    let Some(u) = act.unary() else { return };
    if y.len() >= PARALLEL_MIN {
        let piece = 1 << 14;
        g.par_chunks_mut(piece).zip(y.par_chunks(piece)).for_each(|(g, y)| derivative_in_place(g, y, u));
    } else {
        derivative_in_place(g, y, u);
    }
}

/// `g = g·act'(y)` element by element.
#[inline(always)]
fn derivative_in_place_body<T: Element>(g: &mut [T], y: &[T], u: Unary) {
    per_unary!(u, u => for (g, &y) in g.iter_mut().zip(y) {
        *g = *g * u.deriv(y, y);
    })
}
with_avx2!(derivative_in_place => derivative_in_place_body, (g: &mut [T], y: &[T], u: Unary));

/// `out = act(x·W + b)`, as [`Tensor::dense`](crate::Tensor::dense) computes it: the product
/// (β = 0: `out`'s old values are never read), then one pass adding the bias and applying the
/// activation.
///
/// Panics if a slice's length does not match `s`.
pub fn dense_forward<T: Element>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    act: DenseActivation,
    s: DenseShape,
    out: &mut [T],
) {
    assert!(x.len() == s.rows * s.inputs && w.len() == s.inputs * s.units && out.len() == s.rows * s.units);
    gemm::gemm(T::one(), row_major(x, s.rows, s.inputs), row_major(w, s.inputs, s.units), T::zero(), out)
        .expect("lengths checked");
    finish(out, s.units, b, act);
}

/// The backward pass of [`dense_forward`] from `g = ∂L/∂out` (overwritten with
/// `G' = g·act'(out)`): `∂W = xᵀ·G'`, `∂b = Σ_rows G'` and, when asked, `∂x = G'·Wᵀ` (a
/// model's input needs none).
///
/// Panics if a slice's length does not match `s`.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward<T: Element>(
    x: &[T],
    w: &[T],
    out: &[T],
    g: &mut [T],
    act: DenseActivation,
    s: DenseShape,
    grads: DenseGrads<'_, T>,
) {
    assert!(x.len() == s.rows * s.inputs && out.len() == s.rows * s.units && g.len() == out.len());
    activation_backward_in_place(out, g, act);
    dense_backward_pre(x, w, g, s, grads);
}

/// The weight and input gradients of a fully connected layer from `G' = ∂L/∂(x·W + b)` (the
/// gradient before the activation): `∂W = xᵀ·G'`, `∂b = Σ_rows G'`, `∂x = G'·Wᵀ`, each where
/// `grads` has a buffer for it. The tape's `dense` node and [`dense_backward`] both end here.
///
/// Panics if a slice's length does not match `s`.
pub fn dense_backward_pre<T: Element>(x: &[T], w: &[T], g: &[T], s: DenseShape, grads: DenseGrads<'_, T>) {
    assert!(x.len() == s.rows * s.inputs && w.len() == s.inputs * s.units && g.len() == s.rows * s.units);
    if let Some(gb) = grads.bias {
        column_sums(g, s.units, gb);
    }
    let g2 = row_major(g, s.rows, s.units);
    if let Some(gw) = grads.kernel {
        gemm::gemm(T::one(), transposed(x, s.rows, s.inputs), g2, T::zero(), gw).expect("lengths checked");
    }
    if let Some(gx) = grads.input {
        gemm::gemm(T::one(), g2, transposed(w, s.inputs, s.units), T::zero(), gx).expect("lengths checked");
    }
}

/// Where [`dense_backward`] writes: `∂W (inputs × units)`, `∂b (units)` and `∂x (rows × inputs)`.
#[derive(Debug)]
pub struct DenseGrads<'a, T> {
    /// `∂W = xᵀ·G'`, when the kernel needs a gradient.
    pub kernel: Option<&'a mut [T]>,
    /// `∂b = Σ_rows G'`, when the layer has a bias.
    pub bias: Option<&'a mut [T]>,
    /// `∂x = G'·Wᵀ`, when the input needs a gradient.
    pub input: Option<&'a mut [T]>,
}

/// `out[j] = Σ_r g[r, j]` over the rows of a row-major slice of `cols` columns: the adjoint of
/// broadcasting a bias, added row by row from zero (the order of `ndarray`'s `sum_axis(0)`,
/// which the tape's broadcast adjoint uses).
pub fn column_sums<T: Element>(g: &[T], cols: usize, out: &mut [T]) {
    out.fill(T::zero());
    for row in g.chunks_exact(cols.max(1)) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = *o + v;
        }
    }
}

/// `Σ row` as the tape's sums over trailing axes give it: blocks of 256 values added in `f64`
/// in order (pieces of 16 384 values summed apart, then added), rounded to `T`.
pub fn row_sum<T: Element>(row: &[T]) -> T {
    T::c(row_total(row.len(), |start, len, total| accumulate_sum(total, &row[start..start + len])))
}

/// `Σ f(v)` over `row`, as the tape sums a lazy element-wise expression of it (`w.abs()`,
/// `w.square()`) over all its axes: `f` applied a chunk at a time into a buffer on the stack,
/// each chunk added as [`row_sum`] adds. Allocates nothing.
pub fn row_sum_of<T: Element>(row: &[T], f: impl Fn(T) -> T) -> T {
    let mut mapped = [T::zero(); CHUNK];
    T::c(row_total(row.len(), |start, len, total| {
        let chunk = &mut mapped[..len];
        for (m, &v) in chunk.iter_mut().zip(&row[start..start + len]) {
            *m = f(v);
        }
        accumulate_sum(total, chunk);
    }))
}

/// Pieces of [`row_total`] per group of `Tensor::sum_of_squares` (a group holds whole pieces).
const PIECES_PER_GROUP: usize = SQUARES_GROUP / PIECE;
const _: () = assert!(
    SQUARES_GROUP.is_multiple_of(PIECE) && PIECE.is_multiple_of(SQUARES_BLOCK) && SQUARES_BLOCK.is_multiple_of(CHUNK)
);

/// What one group of a regularized weight sums: each penalty map's piece totals, and `Σ t²`.
#[derive(Clone, Copy)]
struct GroupSums {
    pieces: [[f64; PIECES_PER_GROUP]; 2],
    squares: f64,
}

/// One read of a regularized weight `w` and its gradient `g` (same length) for the NaN
/// guard and the optimizer: `(Σ f(w), Σ h(w))` as [`row_sum_of`] gives them (the second when
/// `h` is given, else 0) and `Σ t²` of the total gradient `t = total(w, g)` (element by
/// element) as [`Tensor::sum_of_squares`](crate::Tensor::sum_of_squares) of `t` would give
/// it. The same bits as those three passes, whatever the thread count (the groups of
/// `sum_of_squares` run in parallel, each holding whole pieces of the row sums); nothing
/// is written, nothing allocated.
pub fn penalty_sums_and_norm<T, F, H, D>(w: &[T], g: &[T], f: F, h: Option<H>, total: D) -> ([T; 2], f64)
where
    T: Element,
    F: Fn(T) -> T + Sync,
    H: Fn(T) -> T + Sync,
    D: Fn(T, T) -> T + Sync,
{
    assert_eq!(w.len(), g.len(), "penalty_sums_and_norm: w and g differ in length");
    let group = |start: usize| group_sums(w, g, start, &f, h.as_ref(), &total);
    let n = w.len();
    let mut pieces = [0.0f64; 2];
    let mut squares = 0.0f64;
    let mut add = |s: &GroupSums, start: usize| {
        let count = (n - start).div_ceil(PIECE).min(PIECES_PER_GROUP);
        for (total, of_map) in pieces.iter_mut().zip(&s.pieces) {
            *total = of_map[..count].iter().fold(*total, |t, &p| t + p);
        }
        squares += s.squares;
    };
    if n <= SQUARES_GROUP {
        let s = group(0);
        if n < PIECE {
            // `row_total` of less than a piece is that piece's total, `sum_of_squares` of one
            // group its group's sum.
            return ([T::c(s.pieces[0][0]), T::c(s.pieces[1][0])], s.squares);
        }
        add(&s, 0);
        return ([T::c(pieces[0]), T::c(pieces[1])], squares);
    }
    let empty = GroupSums { pieces: [[0.0; PIECES_PER_GROUP]; 2], squares: 0.0 };
    let mut partial = [empty; SQUARES_ROUND];
    for round in (0..n).step_by(SQUARES_GROUP * SQUARES_ROUND) {
        let groups = (n - round).div_ceil(SQUARES_GROUP).min(SQUARES_ROUND);
        partial[..groups].par_iter_mut().enumerate().for_each(|(k, s)| *s = group(round + k * SQUARES_GROUP));
        for (k, s) in partial[..groups].iter().enumerate() {
            add(s, round + k * SQUARES_GROUP);
        }
    }
    ([T::c(pieces[0]), T::c(pieces[1])], squares)
}

// The group's loops compiled for AVX-512 or AVX2 where the CPU has them (the sums' lanes are
// explicit: the same values in any build).
losskit_kernels::isa_dispatch!(group_sums, group_sums_body, <T: Element, F: Fn(T) -> T, H: Fn(T) -> T, D: Fn(T, T) -> T>, (w: &[T], g: &[T], start: usize, f: &F, h: Option<&H>, total: &D) -> GroupSums);

/// [`penalty_sums_and_norm`]'s sums of the group of values at `start` (a multiple of the group
/// size): block by block of `sum_of_squares`, the block's chunks mapped and added to their
/// piece's totals, then the total gradient of the block on the stack and its `Σ t²`.
#[inline(always)]
fn group_sums_body<T: Element, F: Fn(T) -> T, H: Fn(T) -> T, D: Fn(T, T) -> T>(
    w: &[T],
    g: &[T],
    start: usize,
    f: &F,
    h: Option<&H>,
    total: &D,
) -> GroupSums {
    let end = (start + SQUARES_GROUP).min(w.len());
    let mut sums = GroupSums { pieces: [[0.0; PIECES_PER_GROUP]; 2], squares: 0.0 };
    let mut mapped = [T::zero(); CHUNK];
    let mut block = [T::zero(); SQUARES_BLOCK];
    for at in (start..end).step_by(SQUARES_BLOCK) {
        let len = SQUARES_BLOCK.min(end - at);
        let piece = (at - start) / PIECE;
        let (ws, gs) = (&w[at..at + len], &g[at..at + len]);
        for chunk in ws.chunks(CHUNK) {
            let m = &mut mapped[..chunk.len()];
            m.iter_mut().zip(chunk).for_each(|(m, &v)| *m = f(v));
            accumulate_sum(&mut sums.pieces[0][piece], m);
            if let Some(h) = h {
                m.iter_mut().zip(chunk).for_each(|(m, &v)| *m = h(v));
                accumulate_sum(&mut sums.pieces[1][piece], m);
            }
        }
        let t = &mut block[..len];
        t.iter_mut().zip(ws.iter().zip(gs)).for_each(|(t, (&w, &g))| *t = total(w, g));
        sums.squares += sum_squares_body(t);
    }
    sums
}

/// The `f64` total of a row of `len` values whose chunk at `start` (of `len ≤ CHUNK` values)
/// `add` adds to the running total, in the order of the fused row sums.
#[inline(always)]
fn row_total(len: usize, mut add: impl FnMut(usize, usize, &mut f64)) -> f64 {
    let piece_total = |add: &mut dyn FnMut(usize, usize, &mut f64), start: usize, end: usize| {
        let mut total = 0.0;
        let mut i = start;
        while i < end {
            let n = CHUNK.min(end - i);
            add(i, n, &mut total);
            i += n;
        }
        total
    };
    if len < PIECE {
        return piece_total(&mut add, 0, len);
    }
    (0..len.div_ceil(PIECE)).fold(0.0, |a, k| a + piece_total(&mut add, k * PIECE, ((k + 1) * PIECE).min(len)))
}

/// `out = softmax(x)` over rows of `cols` values, as `x.softmax(-1)`: `exp(x - lse(x))`.
pub fn softmax_forward<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    by_row_pieces(x, out, cols, |x, o| softmax_rows(x, cols, o));
}

/// `f` on whole rows of `cols` values of `a` (read) and `b` (written), in parallel pieces of
/// rows when large (each row on its own, so the values do not depend on the thread count).
///
/// Panics if the lengths differ.
pub(crate) fn by_row_pieces<T: Element>(a: &[T], b: &mut [T], cols: usize, f: impl Fn(&[T], &mut [T]) + Sync) {
    assert_eq!(a.len(), b.len());
    if a.len() >= PARALLEL_MIN {
        let rows = (PIECE / cols.max(1)).max(1) * cols.max(1);
        b.par_chunks_mut(rows).zip(a.par_chunks(rows)).for_each(|(b, a)| f(a, b));
    } else {
        f(a, b);
    }
}

#[inline(always)]
fn softmax_rows_body<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    for (o, x) in out.chunks_exact_mut(cols.max(1)).zip(x.chunks_exact(cols.max(1))) {
        let lse = log_sum_exp(x);
        for (o, &v) in o.iter_mut().zip(x) {
            *o = Unary::Exp.apply(Binary::Sub.apply(v, lse));
        }
    }
}
with_avx2!(softmax_rows => softmax_rows_body, (x: &[T], cols: usize, out: &mut [T]));

/// The backward pass of [`softmax_forward`]: `g ← y·(g - Σ_row g·y)` in place, as the tape's
/// softmax gradient.
pub fn softmax_backward<T: Element>(y: &[T], g: &mut [T], cols: usize) {
    by_row_pieces(y, g, cols, |y, g| softmax_grad_rows(y, g, cols));
}

#[inline(always)]
fn softmax_grad_rows_body<T: Element>(y: &[T], g: &mut [T], cols: usize) {
    let mut gy = [T::zero(); CHUNK];
    for (g, y) in g.chunks_exact_mut(cols.max(1)).zip(y.chunks_exact(cols.max(1))) {
        let total = row_total(cols, |start, len, total| {
            let gy = &mut gy[..len];
            for ((p, &g), &y) in gy.iter_mut().zip(&g[start..start + len]).zip(&y[start..start + len]) {
                *p = Binary::Mul.apply(g, y);
            }
            accumulate_sum(total, gy);
        });
        let s = T::c(total);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = Binary::Mul.apply(y, Binary::Sub.apply(*g, s));
        }
    }
}
with_avx2!(softmax_grad_rows => softmax_grad_rows_body, (y: &[T], g: &mut [T], cols: usize));

/// `out = log_softmax(x)` over rows of `cols` values, as `x.log_softmax(-1)`: `x - lse(x)`.
pub fn log_softmax_forward<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    by_row_pieces(x, out, cols, |x, o| log_softmax_rows(x, cols, o));
}

#[inline(always)]
fn log_softmax_rows_body<T: Element>(x: &[T], cols: usize, out: &mut [T]) {
    for (o, x) in out.chunks_exact_mut(cols.max(1)).zip(x.chunks_exact(cols.max(1))) {
        let lse = log_sum_exp(x);
        for (o, &v) in o.iter_mut().zip(x) {
            *o = Binary::Sub.apply(v, lse);
        }
    }
}
with_avx2!(log_softmax_rows => log_softmax_rows_body, (x: &[T], cols: usize, out: &mut [T]));

/// The backward pass of [`log_softmax_forward`]: `g ← g - exp(y)·Σ_row g` in place, as the
/// tape's log-softmax gradient.
pub fn log_softmax_backward<T: Element>(y: &[T], g: &mut [T], cols: usize) {
    by_row_pieces(y, g, cols, |y, g| log_softmax_grad_rows(y, g, cols));
}

#[inline(always)]
fn log_softmax_grad_rows_body<T: Element>(y: &[T], g: &mut [T], cols: usize) {
    for (g, y) in g.chunks_exact_mut(cols.max(1)).zip(y.chunks_exact(cols.max(1))) {
        let total = row_total(cols, |start, len, total| accumulate_sum(total, &g[start..start + len]));
        let s = T::c(total);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = Binary::Sub.apply(*g, Binary::Mul.apply(Unary::Exp.apply(y), s));
        }
    }
}
with_avx2!(log_softmax_grad_rows => log_softmax_grad_rows_body, (y: &[T], g: &mut [T], cols: usize));

/// `out = a·b` element by element (`a.mul(b)`: dropout's scaled mask, and its backward pass).
pub fn mul<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
    assert!(a.len() == b.len() && b.len() == out.len());
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(PIECE).zip(a.par_chunks(PIECE).zip(b.par_chunks(PIECE))).for_each(|(o, (a, b))| {
            mul_body(a, b, o);
        });
    } else {
        mul_body(a, b, out);
    }
}

#[inline(always)]
fn mul_body_inner<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = Binary::Mul.apply(a, b);
    }
}
with_avx2!(mul_body => mul_body_inner, (a: &[T], b: &[T], out: &mut [T]));

/// `g ← g·b` element by element, in place (the backward pass of a product with a constant `b`).
pub fn mul_in_place<T: Element>(g: &mut [T], b: &[T]) {
    assert_eq!(g.len(), b.len());
    if g.len() >= PARALLEL_MIN {
        g.par_chunks_mut(PIECE).zip(b.par_chunks(PIECE)).for_each(|(g, b)| mul_in_place_body(g, b));
    } else {
        mul_in_place_body(g, b);
    }
}

#[inline(always)]
fn mul_in_place_inner<T: Element>(g: &mut [T], b: &[T]) {
    for (g, &b) in g.iter_mut().zip(b) {
        *g = Binary::Mul.apply(*g, b);
    }
}
with_avx2!(mul_in_place_body => mul_in_place_inner, (g: &mut [T], b: &[T]));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn values(n: usize, k: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * k % 101) as f32 - 50.0) * 0.0137).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The fused read of a regularized weight gives the bits of its three passes (two row
    /// sums of the weight, `Σ t²` of the materialised total gradient) at sizes around a piece,
    /// a group and a parallel round, on 1, 2 and 3 threads, in f32 and f64; a NaN in `g`
    /// reaches `Σ t²`.
    #[test]
    fn penalty_sums_and_norm_are_the_bits_of_the_separate_passes() {
        let sizes = [0, 1000, PIECE - 1, PIECE, PIECE + 5, SQUARES_GROUP, 3 * SQUARES_GROUP + 12_345];
        let round = SQUARES_GROUP * SQUARES_ROUND + 7;
        for n in sizes.into_iter().chain([round]) {
            fused_equals_separate::<f32>(n, n == round);
            fused_equals_separate::<f64>(n, n == round);
        }
    }

    fn fused_equals_separate<T: Element>(n: usize, nan: bool) {
        let (a, b) = (T::c(0.003), T::c(0.02));
        let total = |w: T, g: T| g + (b * (w + w) + a * losskit_kernels::sign(w));
        // Blocks of magnitudes over 2⁴⁰, so that the order of the `f64` additions shows (in
        // f64: an f32's few bits add up exactly in any order).
        let spread = |v: Vec<f32>| -> Vec<T> {
            v.iter()
                .enumerate()
                .map(|(i, &x)| T::c(f64::from(x) * 2f64.powi(((i / 256) * 7 % 41) as i32 - 20)))
                .collect()
        };
        let w = spread(values(n, 37));
        let mut g = spread(values(n, 53));
        if nan {
            g[n - 3] = T::c(f64::NAN);
        }
        let t: Vec<T> = w.iter().zip(&g).map(|(&w, &g)| total(w, g)).collect();
        let want_squares = Tensor::from_vec(t, &[n]).unwrap().sum_of_squares();
        let bits = |s: [T; 2]| s.map(|v| v.to_f64().unwrap().to_bits());
        let want = [row_sum_of(&w, |v: T| v.abs()), row_sum_of(&w, |v: T| v * v)];
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (sums, squares) =
                pool.install(|| penalty_sums_and_norm(&w, &g, |v: T| v.abs(), Some(|v: T| v * v), total));
            assert_eq!(bits(sums), bits(want), "n {n}, {threads} threads");
            assert_eq!(squares.to_bits(), want_squares.to_bits(), "n {n}, {threads} threads");
        }
        let (one, _) = penalty_sums_and_norm(&w, &g, |v: T| v * v, None::<fn(T) -> T>, total);
        assert_eq!(bits(one), bits([want[1], T::zero()]), "n {n}: one map");
        assert_eq!(want_squares.is_nan(), nan);
    }

    #[test]
    fn dense_matches_the_tape_in_values_and_gradients() {
        for (rows, inputs, units) in [(3, 5, 1), (32, 40, 10), (70, 33, 600)] {
            for act in [DenseActivation::Linear, DenseActivation::Relu, DenseActivation::Sigmoid, DenseActivation::Tanh]
            {
                let s = DenseShape { rows, inputs, units };
                let (xv, wv, bv) = (values(rows * inputs, 7), values(inputs * units, 11), values(units, 13));
                let gv = values(rows * units, 17);
                let x = Tensor::from_vec(xv.clone(), &[rows, inputs]).unwrap().requires_grad();
                let w = Tensor::from_vec(wv.clone(), &[inputs, units]).unwrap().requires_grad();
                let b = Tensor::from_vec(bv.clone(), &[units]).unwrap().requires_grad();
                let y = x.dense(&w, Some(&b), act).unwrap();
                let upstream = Tensor::from_vec(gv.clone(), &[rows, units]).unwrap();
                let grads = y.mul(&upstream).unwrap().sum_all().backward().unwrap();

                let mut out = vec![f32::NAN; rows * units];
                dense_forward(&xv, &wv, Some(&bv), act, s, &mut out);
                assert_eq!(bits(&out), bits(&y.to_vec::<f32>()), "{s:?} {act:?}: values");
                let (mut gw, mut gb, mut gx) = (vec![0.0; inputs * units], vec![0.0; units], vec![0.0; rows * inputs]);
                // The tape's upstream is `1 · g`: the same bits as `g`.
                let mut g = gv.clone();
                let grads_out = DenseGrads { kernel: Some(&mut gw), bias: Some(&mut gb), input: Some(&mut gx) };
                dense_backward(&xv, &wv, &out, &mut g, act, s, grads_out);
                for (name, want, got) in [("W", &w, &gw), ("b", &b, &gb), ("x", &x, &gx)] {
                    assert_eq!(bits(got), bits(&grads.get(want).unwrap().to_vec::<f32>()), "{s:?} {act:?}: ∂{name}");
                }
            }
        }
    }

    #[test]
    fn softmax_and_sums_match_the_tape() {
        for (rows, cols) in [(4, 10), (33, 1000), (3, 2 * PIECE + 5), (40, 1024)] {
            let xv = values(rows * cols, 29);
            let gv = values(rows * cols, 31);
            let x = Tensor::from_vec(xv.clone(), &[rows, cols]).unwrap().requires_grad();
            let y = x.softmax(-1).unwrap();
            let upstream = Tensor::from_vec(gv.clone(), &[rows, cols]).unwrap();
            let grads = y.mul(&upstream).unwrap().sum_all().backward().unwrap();
            let mut out = vec![0.0; rows * cols];
            softmax_forward(&xv, cols, &mut out);
            assert_eq!(bits(&out), bits(&y.to_vec::<f32>()), "{rows}x{cols}: softmax");
            let mut g = gv.clone();
            softmax_backward(&out, &mut g, cols);
            assert_eq!(bits(&g), bits(&grads.get(&x).unwrap().to_vec::<f32>()), "{rows}x{cols}: softmax'");
            // Sums over all values and over rows.
            let t = Tensor::from_vec(xv.clone(), &[rows * cols]).unwrap();
            assert_eq!(row_sum(&xv).to_bits(), t.sum_all().to_vec::<f32>()[0].to_bits(), "{rows}x{cols}: sum");
            let bias = Tensor::zeros(&[cols], crate::DType::F32).requires_grad();
            let g_bias = Tensor::from_vec(xv.clone(), &[rows, cols]).unwrap().requires_grad().add(&bias).unwrap();
            let grads = g_bias.mul(&upstream).unwrap().sum_all().backward().unwrap();
            let mut sums = vec![0.0; cols];
            column_sums(&gv, cols, &mut sums);
            assert_eq!(bits(&sums), bits(&grads.get(&bias).unwrap().to_vec::<f32>()), "{rows}x{cols}: ∂bias");
        }
    }

    #[test]
    fn products_match_the_tape() {
        for n in [7, PARALLEL_MIN + 9] {
            let (a, b) = (values(n, 3), values(n, 5));
            let ta = Tensor::from_vec(a.clone(), &[n]).unwrap().requires_grad();
            let tb = Tensor::from_vec(b.clone(), &[n]).unwrap();
            let y = ta.mul(&tb).unwrap();
            let mut out = vec![0.0; n];
            mul(&a, &b, &mut out);
            assert_eq!(bits(&out), bits(&y.to_vec::<f32>()));
            let g = values(n, 19);
            let grads = y.mul(&Tensor::from_vec(g.clone(), &[n]).unwrap()).unwrap().sum_all().backward().unwrap();
            let mut gin = g.clone();
            mul_in_place(&mut gin, &b);
            assert_eq!(bits(&gin), bits(&grads.get(&ta).unwrap().to_vec::<f32>()));
        }
    }
}
