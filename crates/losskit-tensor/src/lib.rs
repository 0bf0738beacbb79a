//! A small dynamic-rank tensor with reverse-mode automatic differentiation.
//!
//! [`Tensor`] holds `f32` or `f64` values in an `ndarray` array of any rank. Operations on tensors
//! that require gradients record themselves in a graph (the tape); [`Tensor::backward`] on a
//! scalar walks it in reverse and returns the [`Gradients`] of every tensor that took part.
//!
//! # Gradient conventions (TensorFlow's)
//! * `relu'(0) = 0`, `|x|'(0) = 0` (`sign(0) = 0`), `sqrt'(0) = inf`.
//! * `clip(x, lo, hi)` passes the gradient only strictly inside `(lo, hi)`.
//! * `maximum(a, b)` sends the gradient to `a` where `a >= b`, to `b` elsewhere; `minimum(a, b)`
//!   to `a` where `a <= b`.
//! * `max`/`min` reductions split the gradient equally between tied extrema.
//! * `pow(a, b)`: `∂/∂b = y·ln a` where `a > 0`, 0 elsewhere.
//! * `where_cond(c, a, b)`: the gradient goes to the branch that was selected; `c` gets none.
//!
//! Broadcasting follows NumPy; the gradient of a broadcast input is summed back to its shape.

#![warn(missing_docs)]

mod autodiff;
mod error;
pub mod npy;
mod ops;
pub mod random;
mod storage;
mod tensor;

pub use autodiff::{is_grad_enabled, no_grad, CustomOp, Gradients};
pub use error::{Error, Result};
pub use ops::broadcast_shapes;
pub use storage::{DType, Element, Storage};
pub use tensor::Tensor;
