//! The hinge (maximum-margin) losses: Hinge, SquaredHinge, CategoricalHinge.

use crate::kernel_node::row_loss;
use crate::row_loss::{RowKernelKind, RowLoss, Targets};
use crate::{Result, Tensor};
use losskit_kernels as kernels;

/// Keras' label conversion for Hinge/SquaredHinge, decided over the **whole** `y_true` tensor:
/// if every value is exactly 0 or 1, use `2y - 1`; otherwise use `y` as given.
fn to_signed_labels(y_true: &Tensor) -> Result<Tensor> {
    let binary = y_true.to_vec::<f64>().iter().all(|&v| v == 0.0 || v == 1.0);
    if binary {
        y_true.detach().mul_scalar(2.0)?.add_scalar(-1.0)
    } else {
        Ok(y_true.detach())
    }
}

simple_loss! {
    /// Hinge loss: `l = mean_last(max(1 - y'·p, 0))`.
    ///
    /// `y'` is `2y - 1` when every target in the batch tensor is 0 or 1, else `y` as given.
    /// ⚠ Keras quirk kept for parity: one value outside {0, 1} anywhere disables the conversion
    /// for the whole tensor (0-labels then count as 0). Shapes `(B, ..., D)` → `(B, ...)`.
    /// Alias `hinge`.
    Hinge, "hinge",
    |t, p| row_loss("hinge", kernels::Hinge { squared: false }, &to_signed_labels(t)?, p),
    RowLoss::new(RowKernelKind::Hinge(kernels::Hinge { squared: false })).with_targets(Targets::Signed)
}

simple_loss! {
    /// Squared hinge loss: `l = mean_last(max(1 - y'·p, 0)²)`, with [`Hinge`]'s label
    /// conversion. Shapes `(B, ..., D)` → `(B, ...)`. Alias `squared_hinge`.
    SquaredHinge, "squared_hinge",
    |t, p| row_loss("squared_hinge", kernels::Hinge { squared: true }, &to_signed_labels(t)?, p),
    RowLoss::new(RowKernelKind::Hinge(kernels::Hinge { squared: true })).with_targets(Targets::Signed)
}

simple_loss! {
    /// Categorical hinge loss: `pos = Σ y·p`, `neg = max((1 - y)·p)`,
    /// `l = max(neg - pos + 1, 0)`. Targets one-hot, no label conversion.
    /// Shapes `(B, ..., K)` → `(B, ...)`. Alias `categorical_hinge`.
    CategoricalHinge, "categorical_hinge",
    |t, p| row_loss("categorical_hinge", kernels::CategoricalHinge, t, p),
    RowLoss::new(RowKernelKind::CategoricalHinge(kernels::CategoricalHinge))
}
