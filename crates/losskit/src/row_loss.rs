//! A built-in loss as its row kernel ([`row_kernel`]), for a caller that keeps its own buffers
//! (losskit-train's planned training step): the per-sample values and their gradient on plain
//! slices, the same bits as [`Loss::per_sample`] on the tape.

use crate::loss::sealed;
use crate::targets::check_class_weights;
use crate::{Error, Loss, Reduction, Result};
use losskit_kernels as kernels;
use losskit_tensor::{slices, Element};

/// The factor that turns the (weighted) sum of `rows` per-sample values into the loss, in `T`,
/// as [`Loss::call`]'s reduction multiplies (`divide_no_nan`): `1/rows` for
/// `sum_over_batch_size` (and for `mean_with_sample_weight` without weights), `1/Σw` for
/// `mean_with_sample_weight` with `weights` (one per row; 0 when `Σw = 0`: the loss and its
/// gradient are then 0), 1 for `sum`; `None` for `none` (no reduction).
pub fn reduction_factor<T: Element>(reduction: Reduction, rows: usize, weights: Option<&[T]>) -> Option<T> {
    let denominator = match (reduction, weights) {
        (Reduction::None, _) => return None,
        (Reduction::Sum, _) => return Some(T::one()),
        (Reduction::MeanWithSampleWeight, Some(w)) => slices::row_sum(w).to_f64().unwrap_or(f64::NAN),
        _ => rows as f64,
    };
    Some(if denominator == 0.0 { T::zero() } else { T::c(1.0 / denominator) })
}

/// The loss (and, with `gradient`, its gradient with respect to `y_pred`, row-major like it)
/// of `loss` on predictions `y_pred` (a borrowed `(rows, cols)` buffer, row-major) against
/// `y_true` (a borrowed buffer of shape `true_shape`, already in `y_pred`'s type), weighted by
/// `sample_weight`, without a copy of `y_pred` (nor of `y_true` when the loss reads its targets
/// as given): the loss' row kernel and
/// reduction on the slice ([`RowLoss::reduced_value`] and
/// [`RowLoss::reduced_value_and_gradient`], the same bits as [`Loss::call`] and its backward
/// pass from 1). `None` when that path does not apply (no row kernel, the `none` reduction,
/// targets or weights of other shapes): call the loss on a tensor instead. How the framework
/// adapters run a loss on a framework's own buffer.
#[allow(clippy::too_many_arguments)]
pub fn loss_on_slice<T: Element>(
    loss: &dyn Loss,
    y_true: &[T],
    true_shape: &[usize],
    y_pred: &[T],
    pred_shape: &[usize],
    sample_weight: Option<&crate::Tensor>,
    gradient: bool,
) -> Option<Result<(T, Option<Vec<T>>)>> {
    let kernel = row_kernel(loss)?;
    let (rows, cols) = match pred_shape {
        [rows, cols] if rows * cols == y_pred.len() => (*rows, *cols),
        _ => return None,
    };
    let weights_fit = sample_weight.is_none_or(|w| matches!(w.shape(), [n] | [n, 1] if *n == rows));
    let true_len = true_shape.iter().product::<usize>();
    if loss.reduction() == Reduction::None
        || !weights_fit
        || !kernel.fits(pred_shape, true_shape)
        || true_len != y_true.len()
    {
        return None;
    }
    // Targets the kernel reads as given are read in place too; others are rewritten on a copy.
    let prepared: Vec<T>;
    let targets = match kernel.targets {
        Targets::AsGiven => {
            if let Err(e) = kernel.check_class_weights(loss.name(), cols) {
                return Some(Err(e));
            }
            y_true
        }
        _ => {
            let mut t = y_true.to_vec();
            if let Err(e) = kernel.prepare_targets(loss.name(), &mut t, cols) {
                return Some(Err(e));
            }
            prepared = t;
            &prepared
        }
    };
    let weights = sample_weight.map(|w| w.values_or_copy::<T>());
    let (w, reduction) = (weights.as_deref(), loss.reduction());
    let mut values = vec![T::zero(); rows];
    if !gradient {
        return Some(kernel.reduced_value(targets, y_pred, cols, w, reduction, &mut values).map(|v| (v, None)));
    }
    let (mut grad, mut scale) = (losskit_tensor::pool::take::<T>(y_pred.len()), vec![T::zero(); rows]);
    let value =
        kernel.reduced_value_and_gradient(targets, y_pred, cols, w, reduction, &mut values, &mut grad, &mut scale);
    Some(value.map(|v| (v, Some(grad))))
}

/// For a loss whose per-sample values are one row kernel over `(y_true, y_pred)` with the
/// class axis last and nothing else (no mask of its own, no per-row factor; the targets may be
/// rewritten first, see [`RowLoss::prepare_targets`]): that kernel, so a caller that keeps its
/// own buffers can compute the values and their gradient on slices ([`RowLoss::run`], the same
/// bits as [`Loss::per_sample`]). losskit-train's planned training step uses it. `None` for
/// every other loss (custom ones included).
///
/// The losses that have one: sparse and one-hot categorical cross-entropy (label smoothing,
/// class weights), categorical and binary focal cross-entropy, binary cross-entropy, the
/// hinges, MSE, MAE, MAPE, MSLE, Huber, log-cosh, Poisson, KL divergence and cosine
/// similarity, each with its class axis last (`axis = -1`) and, for sparse cross-entropy,
/// without `ignore_class`.
pub fn row_kernel(loss: &dyn Loss) -> Option<RowLoss<'_>> {
    loss.row_kernel(sealed::Token).filter(|k| k.ignore_class.is_none())
}

/// [`row_kernel`], and also for a loss that masks rows of its own: sparse categorical
/// cross-entropy with `ignore_class` (its kernel's [`RowLoss::prepare_targets`] marks those
/// rows, which the kernel gives 0, and [`RowLoss::row_scale`] applies Keras' mask rules to the
/// reduction). For a caller that reduces with [`RowLoss::row_scale`] (losskit-burn's GPU
/// kernels).
pub fn masked_row_kernel(loss: &dyn Loss) -> Option<RowLoss<'_>> {
    loss.row_kernel(sealed::Token)
}

/// A built-in loss as its row kernel ([`row_kernel`]): per row of `cols` predictions, the loss
/// value and its gradient, on plain slices. Opaque: the kernels behind it are losskit's own.
#[derive(Debug, Clone, Copy)]
pub struct RowLoss<'a> {
    kind: RowKernelKind<'a>,
    targets: Targets<'a>,
    /// Sparse labels of this class mark a masked row ([`masked_row_kernel`]).
    ignore_class: Option<i64>,
}

/// The kernels a [`RowLoss`] can be (named as the Keras losses they compute).
#[derive(Debug, Clone, Copy)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum RowKernelKind<'a> {
    /// Keras' `SparseCategoricalCrossentropy`: one class index per row.
    SparseCategoricalCrossentropy(kernels::SparseCategoricalCrossentropy<'a>),
    /// Keras' `CategoricalCrossentropy`: a target distribution per row (its smoothing share is
    /// set per call from the number of classes).
    CategoricalCrossentropy(kernels::CategoricalCrossentropy),
    /// Keras' `CategoricalFocalCrossentropy`.
    CategoricalFocalCrossentropy(kernels::CategoricalFocalCrossentropy<'a>),
    /// Keras' `BinaryCrossentropy` (label smoothing and class weights inside the kernel).
    BinaryCrossentropy(kernels::BinaryCrossentropy<'a>),
    /// Keras' `BinaryFocalCrossentropy` (label smoothing on the targets first).
    BinaryFocalCrossentropy(kernels::BinaryFocalCrossentropy),
    /// Keras' `Hinge` and `SquaredHinge` (on signed targets).
    Hinge(kernels::Hinge),
    /// Keras' `CategoricalHinge`.
    CategoricalHinge(kernels::CategoricalHinge),
    /// Keras' `MeanSquaredError`.
    MeanSquaredError(kernels::MeanSquaredError),
    /// Keras' `MeanAbsoluteError`.
    MeanAbsoluteError(kernels::MeanAbsoluteError),
    /// Keras' `MeanAbsolutePercentageError`.
    MeanAbsolutePercentageError(kernels::MeanAbsolutePercentageError),
    /// Keras' `MeanSquaredLogarithmicError`.
    MeanSquaredLogarithmicError(kernels::MeanSquaredLogarithmicError),
    /// Keras' `Huber`.
    Huber(kernels::Huber),
    /// Keras' `LogCosh`.
    LogCosh(kernels::LogCosh),
    /// Keras' `Poisson`.
    Poisson(kernels::Poisson),
    /// Keras' `KLDivergence`.
    KLDivergence(kernels::KLDivergence),
    /// Keras' `CosineSimilarity` along the last axis.
    CosineSimilarity(kernels::CosineSimilarity),
}

/// What a [`RowLoss`]'s kernel computes per row, with its parameters ([`RowLoss::math`]): for a
/// device that runs the same formulas with kernels of its own (losskit-burn's GPU kernels), on
/// targets made by [`RowLoss::prepare_targets`]. Each formula is the CPU kernel's of the same
/// name in `losskit_kernels` (Keras' conventions, NaN rules included), per row of `cols` values.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum RowMath<'a> {
    /// One class index `k` per row (negative: an ignored row, value and gradient 0). From
    /// logits `w_k·(lse(x) - x_k)` (with PyTorch's smoothing `ε`:
    /// `(1-ε)·w_k·(lse - x_k) + ε/cols·Σ_c w_c·(lse - x_c)`), from probabilities
    /// `-w_k·ln clip(p_k/Σp, ε₇, 1-ε₇)`; `w` the class weights (1 without).
    SparseCategoricalCrossentropy {
        /// Whether `y_pred` holds logits.
        from_logits: bool,
        /// PyTorch's label smoothing `ε` (0 for Keras' loss).
        label_smoothing: f64,
        /// One weight per class.
        class_weights: Option<&'a [f64]>,
    },
    /// A target distribution per row, smoothed inside: `t = y·(1-ls) + ls/cols`; from logits
    /// `Σt·lse(x) - Σ t·x`, from probabilities `-Σ t·ln clip(p/Σp, ε₇, 1-ε₇)`.
    CategoricalCrossentropy {
        /// Whether `y_pred` holds logits.
        from_logits: bool,
        /// Label smoothing `ls`.
        label_smoothing: f64,
    },
    /// The row's mean of `w_j·bce(t_j, x_j)`, `t = y·(1-ls) + ls/2`: from logits
    /// `t·softplus(-x) + (1-t)·softplus(x)`, from probabilities the clipped
    /// `-(t ln q + (1-t) ln(1-q))`.
    BinaryCrossentropy {
        /// Whether `y_pred` holds logits.
        from_logits: bool,
        /// Label smoothing `ls`.
        label_smoothing: f64,
        /// One weight per position of the row.
        class_weights: Option<&'a [f64]>,
    },
    /// Keras' categorical focal loss: `Σ_c α_c (1 - o_c)^γ · (-y_c ln o_c)`, `o` the clipped,
    /// renormalised softmax (or probabilities).
    CategoricalFocalCrossentropy {
        /// Whether `y_pred` holds logits.
        from_logits: bool,
        /// `α`: one value, or one per class.
        alpha: &'a [f64],
        /// Focusing parameter `γ`.
        gamma: f64,
    },
    /// Keras' binary focal loss, the row's mean of `(1 - p_t)^γ · bce` (times
    /// `y·α + (1-y)(1-α)` with class balancing).
    BinaryFocalCrossentropy {
        /// Whether `y_pred` holds logits.
        from_logits: bool,
        /// Focusing parameter `γ`.
        gamma: f64,
        /// Class-balancing weight of positives.
        alpha: f64,
        /// Whether `α` applies.
        apply_class_balancing: bool,
    },
    /// Another kernel (the regression losses, the hinges, KL divergence, ...).
    Other,
}

/// What [`Loss::per_sample`] does to a batch's targets before its kernel reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Targets<'a> {
    /// Nothing: the kernel reads them as given.
    AsGiven,
    /// Each label checked and truncated to its class index.
    ClassIndex,
    /// Keras' hinge rule: `2y - 1` when every target of the batch is 0 or 1, else as given.
    Signed,
    /// `y·(1 - ls) + ls·share` (skipped when `ls = 0`), then times the class weights `w[j]`.
    Smoothed { label_smoothing: f64, share: Share, class_weights: Option<&'a [f64]> },
}

/// The share of label smoothing each target receives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Share {
    /// `1/2` (binary losses).
    Half,
    /// `1/cols` (categorical losses).
    PerClass,
}

impl<'a> RowLoss<'a> {
    /// The kernel `kind` on targets as given.
    pub(crate) fn new(kind: RowKernelKind<'a>) -> Self {
        RowLoss { kind, targets: Targets::AsGiven, ignore_class: None }
    }

    /// The same kernel with rows of sparse label `class` masked (sparse cross-entropy's
    /// `ignore_class`).
    pub(crate) fn ignoring(self, class: Option<i64>) -> Self {
        RowLoss { ignore_class: class, ..self }
    }

    /// The class whose rows the loss masks (sparse cross-entropy's `ignore_class`; only through
    /// [`masked_row_kernel`]).
    pub fn ignore_class(&self) -> Option<i64> {
        self.ignore_class
    }

    /// Each row's factor in the reduced loss `Σ_i c_i·l_i` (and in its gradient), for `rows`
    /// per-sample values against their prepared targets (`y_true` as
    /// [`RowLoss::prepare_targets`] left it) weighted by `weights` (one per row): Keras'
    /// `reduce_weighted_values` as [`Loss::call`] applies it. Without a mask,
    /// `c_i = w_i·`[`reduction_factor`] (`w_i = 1` without weights); with `ignore_class`, the mask
    /// `m` (0 on ignored rows) is rescaled by `rows/Σm` for the count-dividing reductions and
    /// joins the weights: `e = w·m`, `c_i = e_i·reduction_factor(e)`. For `none`, `c_i = e_i`
    /// (the unreduced values' weights).
    pub fn row_scale<T: Element>(
        &self,
        reduction: Reduction,
        rows: usize,
        y_true: &[T],
        weights: Option<&[T]>,
    ) -> Vec<T> {
        let effective: Option<Vec<T>> = match self.ignore_class {
            None => weights.map(<[T]>::to_vec),
            Some(_) => {
                let mask: Vec<f64> = y_true.iter().map(|&k| if k < T::zero() { 0.0 } else { 1.0 }).collect();
                let scale = reduction.mask_scale(rows, mask.iter().sum());
                let m = mask.iter().map(|&m| T::c(m) * T::c(scale));
                Some(match weights {
                    Some(w) => m.zip(w).map(|(m, &w)| w * m).collect(),
                    None => m.collect(),
                })
            }
        };
        let factor = reduction_factor(reduction, rows, effective.as_deref()).unwrap_or(T::one());
        let mut scale = vec![T::zero(); rows];
        fill_row_scale(factor, effective.as_deref(), &mut scale);
        scale
    }

    /// The same kernel on targets rewritten as `targets` says first.
    pub(crate) fn with_targets(self, targets: Targets<'a>) -> Self {
        RowLoss { targets, ..self }
    }

    /// The formula and parameters of this kernel ([`RowMath`]).
    pub fn math(&self) -> RowMath<'a> {
        use RowKernelKind as K;
        match self.kind {
            K::SparseCategoricalCrossentropy(k) => RowMath::SparseCategoricalCrossentropy {
                from_logits: k.from_logits,
                label_smoothing: k.label_smoothing,
                class_weights: k.class_weights,
            },
            K::CategoricalCrossentropy(k) => {
                RowMath::CategoricalCrossentropy { from_logits: k.from_logits, label_smoothing: k.label_smoothing }
            }
            K::BinaryCrossentropy(k) => RowMath::BinaryCrossentropy {
                from_logits: k.from_logits,
                label_smoothing: k.label_smoothing,
                class_weights: k.class_weights,
            },
            K::CategoricalFocalCrossentropy(k) => {
                RowMath::CategoricalFocalCrossentropy { from_logits: k.from_logits, alpha: k.alpha, gamma: k.gamma }
            }
            K::BinaryFocalCrossentropy(k) => RowMath::BinaryFocalCrossentropy {
                from_logits: k.from_logits,
                gamma: k.gamma,
                alpha: k.alpha,
                apply_class_balancing: k.apply_class_balancing,
            },
            _ => RowMath::Other,
        }
    }

    /// `y_true` values per row of `cols` predictions: 1 (a class index) or `cols`.
    pub fn true_cols(&self, cols: usize) -> usize {
        if self.sparse_targets() {
            1
        } else {
            cols
        }
    }

    /// Whether the targets are class indices (one per row, per-sample shape `()` or `(1,)`)
    /// rather than one value per class.
    pub fn sparse_targets(&self) -> bool {
        matches!(self.kind, RowKernelKind::SparseCategoricalCrossentropy(_))
    }

    /// Makes `y_true` (`rows × true_cols(cols)`, one batch) what the kernel reads, in place, as
    /// [`Loss::per_sample`] makes it: for the sparse loss each label truncated to its class
    /// index, an error naming the label and its row (`per_sample`'s error, `loss` its name)
    /// when it is not one of `0..cols`; the hinges' `2y - 1` on 0/1 targets; label smoothing
    /// (and class weights) that the loss applies to the targets before its kernel. Other
    /// targets stay as they are.
    /// Errors, as `per_sample` does, also when the loss' class weights (or focal `alpha`) do
    /// not have one entry per class.
    pub fn prepare_targets<T: Element>(&self, loss: &str, y_true: &mut [T], cols: usize) -> Result<()> {
        self.check_class_weights(loss, cols)?;
        match self.targets {
            Targets::AsGiven => {}
            Targets::ClassIndex => class_indices(loss, y_true, cols, self.ignore_class)?,
            Targets::Signed => {
                if y_true.iter().all(|&v| v == T::zero() || v == T::one()) {
                    y_true.iter_mut().for_each(|v| *v = *v * T::c(2.0) + T::c(-1.0));
                }
            }
            Targets::Smoothed { label_smoothing, share, class_weights } => {
                check_class_weights(loss, class_weights, cols)?;
                let share = match share {
                    Share::Half => 0.5,
                    Share::PerClass => 1.0 / cols.max(1) as f64,
                };
                smooth(y_true, label_smoothing, share);
                if let Some(w) = class_weights {
                    for row in y_true.chunks_exact_mut(cols.max(1)) {
                        row.iter_mut().zip(w).for_each(|(v, &w)| *v = *v * T::c(w));
                    }
                }
            }
        }
        Ok(())
    }

    /// The kernel's own class weights (or focal `alpha`, one value or one per class) against
    /// the number of classes.
    fn check_class_weights(&self, loss: &str, cols: usize) -> Result<()> {
        match self.kind {
            RowKernelKind::BinaryCrossentropy(k) => check_class_weights(loss, k.class_weights, cols),
            RowKernelKind::SparseCategoricalCrossentropy(k) => check_class_weights(loss, k.class_weights, cols),
            RowKernelKind::CategoricalFocalCrossentropy(k) if k.alpha.len() != 1 && k.alpha.len() != cols => {
                Err(Error::Shape {
                    op: loss.into(),
                    msg: format!("alpha has {} entries but there are {cols} classes", k.alpha.len()),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether predictions of shape `pred` (`(rows, cols)`) and targets of shape `target` are
    /// this kernel's rows (what [`Loss::call`] aligns them to): one class index per row for the
    /// sparse loss (`(rows,)` or `(rows, 1)`), else `(rows, cols)` (or `(rows,)` for one column).
    pub fn fits(&self, pred: &[usize], target: &[usize]) -> bool {
        let ([rows, cols], Some((first, per_sample))) = (pred, target.split_first()) else { return false };
        if first != rows {
            return false;
        }
        match self.sparse_targets() {
            true => per_sample.is_empty() || per_sample == [1],
            false => per_sample == [*cols] || (*cols == 1 && per_sample.is_empty()),
        }
    }

    /// The reduced loss of `y_pred` (`rows × cols`) against its prepared targets, as
    /// [`Loss::call`] computes it without a gradient (the same bits): the per-sample values into
    /// `values` (`rows`), times `weights` (one per row) when given, summed in `T` and scaled by
    /// [`reduction_factor`]. Errors when the lengths do not fit, or for the `none` reduction.
    pub fn reduced_value<T: Element>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        cols: usize,
        weights: Option<&[T]>,
        reduction: Reduction,
        values: &mut [T],
    ) -> Result<T> {
        let factor = reduction_factor(reduction, values.len(), weights)
            .ok_or_else(|| Error::Config("reduced_value: the `none` reduction is not reduced".into()))?;
        self.run(y_true, y_pred, cols, values, None, None)?;
        if let Some(w) = weights {
            slices::mul_in_place(values, w);
        }
        Ok(slices::row_sum(values) * factor)
    }

    /// The reduced loss and its gradient with respect to `y_pred` (`rows × cols`) against its
    /// prepared targets, as [`Loss::call`] and a backward pass from 1 compute them (the same
    /// bits): `L = Σ values·w · factor` ([`reduction_factor`]; `w` = 1 without `weights`), each
    /// row's gradient the kernel's times `factor·w` (inside the kernel's pass on inputs of 2¹⁶
    /// values or more, as the folded reduction does). `values` and `row_scale` hold `rows`
    /// values, `grad` `rows × cols`. Errors when the lengths do not fit, or for `none`.
    #[allow(clippy::too_many_arguments)]
    pub fn reduced_value_and_gradient<T: Element>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        cols: usize,
        weights: Option<&[T]>,
        reduction: Reduction,
        values: &mut [T],
        grad: &mut [T],
        row_scale: &mut [T],
    ) -> Result<T> {
        let factor = reduction_factor(reduction, values.len(), weights)
            .ok_or_else(|| Error::Config("reduced_value_and_gradient: the `none` reduction is not reduced".into()))?;
        fill_row_scale(factor, weights, row_scale);
        if y_pred.len() >= crate::loss::FOLD_MIN_VALUES {
            self.run(y_true, y_pred, cols, values, Some(grad), Some(row_scale))?;
        } else {
            self.run(y_true, y_pred, cols, values, Some(grad), None)?;
            if reduction != Reduction::Sum || weights.is_some() {
                for (row, &s) in grad.chunks_exact_mut(cols.max(1)).zip(row_scale.iter()) {
                    row.iter_mut().for_each(|g| *g = *g * s);
                }
            }
        }
        if let Some(w) = weights {
            slices::mul_in_place(values, w);
        }
        Ok(slices::row_sum(values) * factor)
    }

    /// Per row `r` of `y_pred` (`rows × cols`, row-major) and its targets (`rows ×
    /// true_cols(cols)`, made by [`RowLoss::prepare_targets`]): `values[r]`, the per-sample
    /// loss, and (when `grad` is given) `grad[r, :] = s[r] · ∂values[r]/∂y_pred[r, :]` with
    /// `s = row_scale` (1 when `None`). [`compute`](crate::compute) passes the reduction's
    /// scale this way on inputs of 2¹⁶ values or more (a *folded* reduction), and multiplies
    /// the unscaled gradient by it on smaller ones.
    ///
    /// Errors when the lengths do not fit `cols`.
    pub fn run<T: Element>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        cols: usize,
        values: &mut [T],
        grad: Option<&mut [T]>,
        row_scale: Option<&[T]>,
    ) -> Result<()> {
        use kernels::run_rows;
        use RowKernelKind as K;
        let outcome = match self.kind {
            K::CategoricalCrossentropy(k) => {
                // Keras smooths towards the uniform distribution over the row's classes.
                let k = kernels::CategoricalCrossentropy { smoothing_share: 1.0 / cols.max(1) as f64, ..k };
                run_rows(&k, y_true, y_pred, cols, row_scale, values, grad)
            }
            K::SparseCategoricalCrossentropy(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::CategoricalFocalCrossentropy(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::BinaryCrossentropy(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::BinaryFocalCrossentropy(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::Hinge(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::CategoricalHinge(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::MeanSquaredError(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::MeanAbsoluteError(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::MeanAbsolutePercentageError(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::MeanSquaredLogarithmicError(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::Huber(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::LogCosh(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::Poisson(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::KLDivergence(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
            K::CosineSimilarity(k) => run_rows(&k, y_true, y_pred, cols, row_scale, values, grad),
        };
        outcome.map_err(|e| Error::Value { op: "row kernel".into(), msg: e.to_string() })
    }
}

/// Each row's factor in a reduced loss: `factor·w_i` (`factor` without weights), into `out`.
fn fill_row_scale<T: Element>(factor: T, weights: Option<&[T]>, out: &mut [T]) {
    match weights {
        Some(w) => out.iter_mut().zip(w).for_each(|(s, &w)| *s = factor * w),
        None => out.fill(factor),
    }
}

/// Each label truncated to its class index, `ignore_class` to -1 (a masked row); an error
/// naming the first that is neither nor one of `0..cols`.
fn class_indices<T: Element>(loss: &str, y_true: &mut [T], cols: usize, ignore_class: Option<i64>) -> Result<()> {
    for (i, label) in y_true.iter_mut().enumerate() {
        let v = label.to_f64().unwrap_or(f64::NAN);
        let k = v.trunc();
        if ignore_class.is_some_and(|c| v.is_finite() && k as i64 == c) {
            *label = T::c(-1.0);
        } else if !(v.is_finite() && k >= 0.0 && (k as usize) < cols) {
            return Err(crate::targets::not_a_class_index(loss, v, &[i], cols, ignore_class));
        } else {
            *label = T::c(k);
        }
    }
    Ok(())
}

/// `y ← y·(1 - ls) + ls·share` in `T`, a product then a sum, as the tape's `smooth` computes
/// it; nothing when `ls = 0` (the tape leaves the targets alone then).
fn smooth<T: Element>(y: &mut [T], label_smoothing: f64, share: f64) {
    if label_smoothing != 0.0 {
        let (keep, add) = (T::c(1.0 - label_smoothing), T::c(label_smoothing * share));
        y.iter_mut().for_each(|v| *v = *v * keep + add);
    }
}
