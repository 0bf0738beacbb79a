//! Fused loss kernels over contiguous slices.
//!
//! Every kernel here works on a row-major matrix of `rows × cols` values, where a *row* is one
//! per-sample slice along the reduced axis (Keras' last axis). For each row it computes the
//! per-sample loss value and, when asked, the gradient of that value with respect to `y_pred`,
//! both in **one pass** over the row. Rows are processed in parallel with rayon once the input is
//! large enough to pay for it.
//!
//! The crate knows nothing about tensors, autodiff or Keras reductions: it is a set of plain
//! functions on `&[f32]`/`&[f64]`, reusable by any framework. `losskit-tensor` wraps them into
//! single tape nodes.
//!
//! # Conventions
//! * `eps` is Keras' backend epsilon `1e-7` (as `T`), see [`Float::EPSILON_KERAS`].
//! * Gradients at kinks follow TensorFlow: `d|x|/dx = sign(x)` with `sign(0) = 0`;
//!   `maximum(x, c)` passes the gradient to `x` when `x >= c`; `clip(x, lo, hi)` passes it on
//!   the closed interval `[lo, hi]` (the bounds are inside, as in TensorFlow's `clip_by_value`).
//! * NaN and ±inf in `y_pred` propagate as in Keras' formulas: [`clip`] and [`maximum`] keep a
//!   NaN operand (Rust's `f32::max` would drop it), and a NaN is "inside" every clip, so its
//!   gradient is NaN too. Every kernel gives a NaN prediction a NaN gradient. Per row:
//!   - probabilities are renormalised by their row sum as Keras does; a row sum that is NaN,
//!     infinite or zero makes some `p/Σp` NaN, so the row's value and whole gradient are NaN;
//!   - from logits, a NaN or `+inf` logit makes the row NaN (Keras' `x - max` is NaN there); a
//!     `-inf` logit has probability 0 and a finite gradient, but where its target is 0 the value
//!     is NaN, since Keras computes `0·(-inf)` (sparse and one-hot rows agree);
//!   - binary cross-entropy from logits at `-inf` with label 1 is `+inf` (not `inf - inf`).
//! * Row sums (softmax denominators, renormalisations, the value sums over a row) are exact for
//!   long rows: blocks of 256 values are summed in lanes of `T`, the block sums in `f64`, so an
//!   f32 row of 100 000 classes is within 1e-6 of the float64 result.

#![warn(missing_docs)]

mod classification;
mod ctc;
mod driver;
pub mod fastmath;
pub mod gemm;
mod hinge;
mod linear_ce;
pub mod optim;
pub mod optim_rules;
mod regression;
mod sparsemax;
mod sum;
pub mod threads;
#[cfg(target_arch = "x86_64")]
mod x86_gemm;

pub use classification::{
    log_sum_exp, BinaryCrossentropy, BinaryFocalCrossentropy, CategoricalCrossentropy, CategoricalFocalCrossentropy,
    SparseCategoricalCrossentropy,
};
pub use ctc::Ctc;
pub use driver::{run_elements, run_rows, ElementKernel, RowKernel};
pub use hinge::{CategoricalHinge, Hinge};
pub use linear_ce::{LinearCrossEntropy, LinearGrads, LinearInputs, WeightLayout};
pub use regression::{
    CosineSimilarity, Huber, KLDivergence, LogCosh, MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError,
    MeanSquaredLogarithmicError, Poisson, SmoothL1,
};
pub use sparsemax::{sparsemax, SparsemaxLoss};
pub use sum::accumulate_sum;

use std::fmt::Debug;

mod sealed {
    /// Keeps [`Float`](super::Float) to the two types this crate implements it for: its
    /// `unsafe fn gemm_raw` is an implementation detail no outside type can provide safely.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The floating-point types the kernels run on: `f32` and `f64` (sealed: no other type can
/// implement it).
pub trait Float:
    sealed::Sealed + num_traits::Float + num_traits::FromPrimitive + Send + Sync + Debug + Default + 'static
{
    /// Keras' backend epsilon, `1e-7`, rounded to this type.
    const EPSILON_KERAS: Self;
    /// `ln 2` in this type.
    const LN_2: Self;
    /// Converts an `f64` constant (rounding to nearest).
    fn c(v: f64) -> Self {
        Self::from_f64(v).unwrap_or_else(Self::nan)
    }
    /// `eˣ`, vectorisable (f32: [`fastmath::exp_f32`], ≤ 2 ulp; f64: the standard library).
    fn exp_fast(self) -> Self;
    /// `ln x`, vectorisable (f32: [`fastmath::ln_f32`], ≤ 2 ulp; f64: the standard library).
    fn ln_fast(self) -> Self;
    /// `tanh x`, vectorisable (f32: [`fastmath::tanh_f32`], ≤ 2 ulp, 1 measured; f64: the standard library).
    fn tanh_fast(self) -> Self;
    /// The value as an `f64` (exact for f32 and f64), for row sums.
    fn widen(self) -> f64;
    /// An `f64` accumulator rounded back to this type.
    fn narrow(v: f64) -> Self;
    /// `C ← α·A·B + β·C` for this type with `matrixmultiply`'s contract: through this crate's
    /// AVX2 kernel where the CPU has AVX2 + FMA (the same bits as
    /// `matrixmultiply::sgemm`/`dgemm` at `α = 1`, packing buffers kept per thread), otherwise
    /// `matrixmultiply`'s; use the safe [`gemm::gemm`].
    ///
    /// # Safety
    /// Every element addressed through the pointers and strides must be valid (`A`: `m × k`,
    /// `B`: `k × n`, `C`: `m × n`), and `C` must not alias `A` or `B`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// `ln(1 + x)`, accurate for small `x`: `ln(u)·x/(u - 1)` with `u = 1 + x` (exact `x` when
    /// `u` rounds to 1, `inf` when it overflows), built on [`Float::ln_fast`].
    #[inline(always)]
    fn ln_1p_fast(self) -> Self {
        let u = Self::one() + self;
        let d = u - Self::one();
        let exact = d == Self::zero();
        // Both arms computed, then a cheap select: the loops stay branch-free.
        let safe = if exact { Self::one() } else { d };
        let r = u.ln_fast() * (self / safe);
        if exact {
            self
        } else if u == Self::infinity() {
            // ln(1 + inf) = inf (the quotient would be inf/inf).
            u
        } else {
            r
        }
    }
}

/// The body of [`Float::gemm_raw`] for both types: this crate's kernel (`x86_gemm` module) on
/// x86-64, `matrixmultiply::$fallback` elsewhere.
macro_rules! gemm_raw_body {
    ($fallback:ident, $m:ident, $k:ident, $n:ident, $alpha:ident, $a:ident, $rsa:ident, $csa:ident, $b:ident, $rsb:ident, $csb:ident, $beta:ident, $c:ident, $rsc:ident, $csc:ident) => {{
        // SAFETY: the caller's contract is matrixmultiply's, which `x86_gemm::gemm` shares.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use x86_gemm::Strided;
            let a = Strided { ptr: $a, rs: $rsa, cs: $csa };
            let b = Strided { ptr: $b, rs: $rsb, cs: $csb };
            let c = Strided { ptr: $c, rs: $rsc, cs: $csc };
            x86_gemm::gemm(x86_gemm::Product { m: $m, k: $k, n: $n, alpha: $alpha, beta: $beta, a, b, c })
        }
        // SAFETY: the caller's contract is matrixmultiply's.
        #[cfg(not(target_arch = "x86_64"))]
        unsafe {
            matrixmultiply::$fallback($m, $k, $n, $alpha, $a, $rsa, $csa, $b, $rsb, $csb, $beta, $c, $rsc, $csc)
        }
    }};
}

impl Float for f32 {
    const EPSILON_KERAS: f32 = 1e-7;
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        gemm_raw_body!(sgemm, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    const LN_2: f32 = std::f32::consts::LN_2;
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        fastmath::exp_f32(self)
    }
    #[inline(always)]
    fn widen(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn narrow(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn ln_fast(self) -> f32 {
        fastmath::ln_f32(self)
    }
    #[inline(always)]
    fn tanh_fast(self) -> f32 {
        fastmath::tanh_f32(self)
    }
}

impl Float for f64 {
    const EPSILON_KERAS: f64 = 1e-7;
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        gemm_raw_body!(dgemm, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    const LN_2: f64 = std::f64::consts::LN_2;
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline(always)]
    fn narrow(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn ln_fast(self) -> f64 {
        self.ln()
    }
    #[inline(always)]
    fn tanh_fast(self) -> f64 {
        self.tanh()
    }
}

/// A slice length that does not fit the `rows × cols` layout a kernel was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Two buffers that must have the same length do not.
    #[error("kernel {kernel}: {what} has length {got}, expected {expected}")]
    Length {
        /// The kernel's name.
        kernel: &'static str,
        /// Which buffer is wrong.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the layout requires.
        expected: usize,
    },
    /// A class index outside `[0, classes)` (and not the ignore index).
    #[error("kernel {kernel}: label {label} at index {index} is outside [0, {classes})")]
    Label {
        /// The kernel's name.
        kernel: &'static str,
        /// The position of the label (the token).
        index: usize,
        /// The label.
        label: i64,
        /// The number of classes.
        classes: usize,
    },
    /// `cols` is zero while data is present, or the data is not a whole number of rows.
    #[error("kernel {kernel}: {len} values do not split into rows of {cols}")]
    Layout {
        /// The kernel's name.
        kernel: &'static str,
        /// Total number of values.
        len: usize,
        /// Row length.
        cols: usize,
    },
}

/// `clip(x, lo, hi)` as NumPy, JAX and TensorFlow compute it: `x` below `lo` becomes `lo`, above
/// `hi` becomes `hi`, and a NaN stays NaN (`x.max(lo).min(hi)` would turn it into `lo`).
#[inline(always)]
pub fn clip<T: Float>(x: T, lo: T, hi: T) -> T {
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// Whether the gradient of [`clip`] passes at `x`: on the closed interval `[lo, hi]`
/// (TensorFlow's convention, the bounds are inside) and at NaN (so a NaN prediction gets a NaN
/// gradient rather than a silent 0).
#[inline(always)]
pub fn clip_passes<T: Float>(x: T, lo: T, hi: T) -> bool {
    (x >= lo) & (x <= hi) | x.is_nan()
}

/// `maximum(a, b)` that propagates NaN from either side, as `jnp.maximum` and `tf.maximum` do
/// (`f32::max` returns the non-NaN operand).
#[inline(always)]
pub fn maximum<T: Float>(a: T, b: T) -> T {
    let m = if b > a { b } else { a };
    if b.is_nan() {
        b
    } else {
        m
    }
}

/// `softplus(x) = ln(1 + e^x)`, computed as `max(x, 0) + ln(1 + e^{-|x|})` so it never overflows.
#[inline(always)]
pub fn softplus<T: Float>(x: T) -> T {
    x.max(T::zero()) + (-x.abs()).exp_fast().ln_1p_fast()
}

/// The logistic sigmoid `1 / (1 + e^{-x})`, evaluated without overflow for either sign of `x`.
#[inline(always)]
pub fn sigmoid<T: Float>(x: T) -> T {
    let e = (-x.abs()).exp_fast();
    let numerator = if x >= T::zero() { T::one() } else { e };
    numerator / (T::one() + e)
}

/// TensorFlow's sign: `-1`, `0` or `1` (`0` at `0`), the derivative of `|x|`.
#[inline(always)]
pub fn sign<T: Float>(x: T) -> T {
    // signum is ±1 (also for ±0); zero it at 0 with a blend, not a branch.
    let nonzero = if x != T::zero() { T::one() } else { T::zero() };
    x.signum() * nonzero
}
