//! # losskit: Keras 3 losses in Rust
//!
//! Every loss follows Keras 3.15's semantics exactly (values to `rtol = atol = 1e-5` in f32) and
//! differentiates through losskit's tape. The call path is the same for every loss, built-in or
//! custom:
//!
//! ```text
//! align ranks (align.rs) → per-sample values (one file per family) → mask
//!   → sample_weight → reduction (reduction.rs)
//! ```
//!
//! ```
//! use losskit::{Loss, MeanSquaredError, Tensor};
//! let y_true = Tensor::from_vec(vec![0.0f32, 1.0, 1.0, 0.0], &[2, 2])?;
//! let y_pred = Tensor::from_vec(vec![0.5f32, 0.5, 1.0, 0.0], &[2, 2])?.requires_grad();
//! let loss = MeanSquaredError::new().call(&y_true, &y_pred, None)?;
//! assert!((loss.to_scalar()? - 0.125).abs() < 1e-7);
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&y_pred).unwrap().to_vec::<f32>(), vec![0.25, -0.25, 0.0, 0.0]);
//! # Ok::<(), losskit::Error>(())
//! ```
//!
//! Losses can also be built by name ([`get`]) or from a Keras config ([`from_config`]).

#![warn(missing_docs)]

#[macro_use]
mod macros;

mod adapters;
mod align;
pub mod classification;
mod config;
mod custom;
pub mod hinge;
mod kernel_node;
mod linear_ce;
mod loss;
mod row_loss;
#[macro_use]
mod param_loss;
pub mod metric_learning;
mod reduction;
mod registry;
pub mod regression;
pub mod segmentation;
pub mod sequence;
mod targets;
pub mod tfa;
pub mod torch;

pub use adapters::{scaled_gradient, upstream_gradients};
pub use align::squeeze_or_expand_to_same_rank;
pub use classification::{
    BinaryCrossentropy, BinaryFocalCrossentropy, CategoricalCrossentropy, CategoricalFocalCrossentropy,
    CategoricalGeneralizedCrossEntropy, SparseCategoricalCrossentropy,
};
pub use custom::CustomLoss;
pub use hinge::{CategoricalHinge, Hinge, SquaredHinge};
pub use linear_ce::LinearCrossEntropy;
pub use loss::{compute, compute_partial, Loss, PerSample};
pub use losskit_tensor::{no_grad, DType, Error, Gradients, IoSource, Result, Tensor};
pub use metric_learning::Circle;
pub use reduction::{compute_average_loss, reduce_partial, reduce_weighted_values, Reduction};
pub use registry::{build, from_config, get, list, register, serialize, Family, LossInfo};
pub use regression::{
    CosineSimilarity, Huber, KLDivergence, LogCosh, MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError,
    MeanSquaredLogarithmicError, Poisson,
};
pub use row_loss::{loss_on_slice, masked_row_kernel, reduction_factor, row_kernel, RowLoss, RowMath};
pub use segmentation::{Dice, Tversky};
pub use sequence::Ctc;
pub use tfa::{
    ContrastiveLoss, GIoULoss, LiftedStructLoss, NpairsLoss, NpairsMultilabelLoss, PinballLoss,
    SigmoidFocalCrossEntropy, SparsemaxLoss, TripletHardLoss, TripletSemiHardLoss, WeightedKappaLoss,
};
pub use torch::{
    CosineEmbeddingLoss, CrossEntropyLoss, GaussianNLLLoss, HingeEmbeddingLoss, KLDivLoss, MarginRankingLoss,
    MultiLabelMarginLoss, MultiLabelSoftMarginLoss, MultiMarginLoss, NLLLoss, PoissonNLLLoss, SmoothL1Loss,
    SoftMarginLoss, TripletMarginLoss,
};

/// Keras' backend epsilon, `1e-7`, used by the clipped losses.
pub const EPSILON: f64 = 1e-7;
