//! A small dynamic-rank tensor with reverse-mode automatic differentiation.
//!
//! [`Tensor`] holds `f32` or `f64` values in an `ndarray` array of any rank. Operations on tensors
//! that require gradients record themselves in a graph (the tape); [`Tensor::backward`] on a
//! scalar walks it in reverse and returns the [`Gradients`] of every tensor that took part.
//!
//! # Gradient and NaN conventions (TensorFlow's), all in one place
//! These hold for the tensor ops here and for the fused kernels of `losskit-kernels`.
//! * `relu'(0) = 0`; `relu(NaN) = NaN` with derivative 0 there (TensorFlow's `ReluGrad`).
//! * `|x|'(0) = 0` (`sign(0) = 0`); `|x|'(NaN) = NaN`. (JAX's rule gives `+1` at 0 and `-1` at
//!   NaN, so Keras-on-JAX reports a finite MAPE gradient at a NaN prediction; losskit's is NaN.)
//! * `sqrt'(0) = inf`.
//! * `clip(x, lo, hi)` passes the gradient on the **closed** interval `[lo, hi]` (TensorFlow's
//!   `clip_by_value`: the bounds are inside) and at NaN; it is 0 only where `x < lo` or `x > hi`.
//!   JAX passes half the gradient at a bound (it splits ties), so Keras-on-JAX gives half of
//!   losskit's gradient for a prediction exactly at `1e-7` or `1 - 1e-7`.
//! * `maximum(a, b)` sends the gradient to `a` where `a >= b`, to `b` elsewhere; `minimum(a, b)`
//!   to `a` where `a <= b`. Their values keep a NaN from either side (as `jnp.maximum`), never
//!   the other operand as `f32::max` would.
//! * `max`/`min` reductions split the gradient equally between tied extrema; a NaN in the
//!   reduced values makes the result NaN.
//! * `pow(a, b)`: `∂/∂b = y·ln a` where `a > 0`, 0 elsewhere.
//! * `where_cond(c, a, b)`: the gradient goes to the branch that was selected; `c` gets none.
//! * NaN and ±inf in a prediction propagate to a loss' value wherever Keras' formula
//!   propagates them, and a NaN prediction gets a NaN gradient. The kernels' rules for rows
//!   (renormalised probabilities, log-softmax, `0·(-inf)` in Keras' cross-entropies) are listed
//!   in `losskit-kernels`' crate docs.
//!
//! Broadcasting follows NumPy; the gradient of a broadcast input is summed back to its shape.
//!
//! # Fusion
//! Element-wise ops (unary maths, binary ops whose operands are full-shape or broadcast along
//! rows, columns or as a scalar, `clip`, `softmax`/`log_softmax` over the last axis) on results
//! of at least 2¹⁵ values are **lazy**: they record an expression and compute nothing. Reading
//! the values ([`Tensor::storage`], `to_vec`, any op that is not element-wise) runs the whole
//! chain as one program over 1024-value chunks, in parallel, with AVX2 + FMA when the CPU has
//! them; a `sum`/`mean` over trailing axes of a lazy tensor reduces each chunk as it is made,
//! and [`Tensor::sum_many`] takes several such sums in one pass. The backward passes of these
//! ops build lazy expressions too, so the gradient of a chain is one pass as well; `backward`
//! returns computed gradients. Each fused instruction is the plain op's own per-element
//! function, and sums over trailing axes add blocks of 256 values in `f64` in a fixed order on
//! both paths: fused results equal the plain path ([`unfused`]) bit for bit, whatever the number
//! of threads.
//!
//! # Lent buffers
//! [`lend`] makes constant tensors on a caller's buffer (a framework's `y_pred`) for the length
//! of a call: the buffer is a fusion leaf, read in place by element-wise ops, trailing-axis sums
//! and [`Tensor::with_values`] (the fused kernels); any other op copies it once. A lent tensor
//! still held when the call ends gets a copy of its values first.

#![warn(missing_docs)]

mod autodiff;
mod error;
mod flags;
mod fusion;
mod lend;
pub mod npy;
mod ops;
mod pointwise;
pub mod pool;
pub mod random;
pub mod slices;
mod storage;
mod tensor;

pub use autodiff::{is_grad_enabled, no_grad, CustomOp, Gradients};
pub use error::{Error, IoSource, Result};
pub use fusion::unfused;
pub use lend::{lend, Lender};
pub use ops::activation::Elementwise;
pub use ops::broadcast_shapes;
pub use slices::DenseActivation;
pub use storage::{DType, Element, Storage};
pub use tensor::Tensor;
