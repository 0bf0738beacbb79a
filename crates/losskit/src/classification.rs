//! The probabilistic (cross-entropy) losses: binary, categorical and sparse categorical
//! cross-entropy, their focal variants, and generalized cross-entropy.
//!
//! All follow Keras 3.15 exactly: probabilities are clipped to `[1e-7, 1 - 1e-7]` (Keras 3 does
//! not add `eps` inside the log, Keras 2 did), categorical probabilities are renormalised to sum
//! to 1 first, and `from_logits` uses the stable log-sigmoid / log-softmax forms.
//!
//! Beyond Keras, the cross-entropies take optional **per-class weights** (PyTorch's
//! `weight=`): `with_class_weights(w)` multiplies each class' term by `w[c]`. This is not
//! Keras' `class_weight` of `fit`, which weights *samples* by their class; and unlike PyTorch's
//! `'mean'`, the reduction still divides by the number of samples (`Σ w·l / N`), not by
//! `Σ w[y]`.

use crate::config::{require, Params};
use crate::kernel_node::{row_loss, sparse_row_loss_with, Rows};
use crate::row_loss::{RowKernelKind, RowLoss, Share, Targets};
use crate::targets::{check_class_weights, class_indices, move_axis_last, same_shape, smooth};
use crate::{Error, Loss, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;
use serde_json::{json, Value};

fn check_smoothing(loss: &str, ls: f64) -> Result<()> {
    require((0.0..=1.0).contains(&ls), loss, "label_smoothing", ls, "a number in [0, 1]")
}

fn check_class_weight_values(loss: &str, w: &Option<Vec<f64>>) -> Result<()> {
    if let Some(w) = w {
        let ok = !w.is_empty() && w.iter().all(|v| v.is_finite() && *v >= 0.0);
        require(ok, loss, "class_weights", format!("{w:?}"), "a non-empty list of finite numbers >= 0")?;
    }
    Ok(())
}

/// The builders and `from_config` shared by [`BinaryCrossentropy`] and
/// [`CategoricalCrossentropy`] (same fields: `from_logits`, `label_smoothing`, `axis`,
/// `class_weights`).
macro_rules! crossentropy_builders {
    ($class:literal) => {
        /// Whether `y_pred` holds logits.
        pub fn with_from_logits(mut self, from_logits: bool) -> Self {
            self.from_logits = from_logits;
            self
        }
        /// Label smoothing in `[0, 1]`.
        pub fn with_label_smoothing(mut self, ls: f64) -> Result<Self> {
            check_smoothing($class, ls)?;
            self.label_smoothing = ls;
            Ok(self)
        }
        /// The class axis (the axis averaged or summed over).
        pub fn with_axis(mut self, axis: isize) -> Self {
            self.axis = axis;
            self
        }
        /// Per-class weights (PyTorch's `weight=`), one per entry of `axis`.
        pub fn with_class_weights(mut self, weights: Vec<f64>) -> Result<Self> {
            let w = Some(weights);
            check_class_weight_values($class, &w)?;
            self.class_weights = w;
            Ok(self)
        }
        /// Builds from a Keras config (`name`, `reduction`, `from_logits`, `label_smoothing`,
        /// `axis`, and losskit's `class_weights`).
        pub fn from_config(config: &Value) -> Result<Self> {
            let mut p = Params::new($class, config)?;
            let mut loss = Self::new().with_name(p.name(Self::DEFAULT_NAME)?).with_reduction(p.reduction()?);
            loss.from_logits = p.bool("from_logits", false)?;
            loss = loss.with_label_smoothing(p.f64("label_smoothing", 0.0)?)?;
            loss.axis = p.int("axis", -1)? as isize;
            if let Some(w) = p.opt_f64_list("class_weights")? {
                loss = loss.with_class_weights(w)?;
            }
            p.finish()?;
            Ok(loss)
        }
        /// Keras' config keys, plus `class_weights` when set.
        fn crossentropy_config(&self) -> Value {
            with_class_weights_config(
                json!({"name": self.name, "reduction": self.reduction.keras_name(), "from_logits": self.from_logits,
                       "label_smoothing": self.label_smoothing, "axis": self.axis}),
                &self.class_weights,
            )
        }
    };
}

fn with_class_weights_config(mut config: Value, w: &Option<Vec<f64>>) -> Value {
    if let Some(w) = w {
        config["class_weights"] = json!(w);
    }
    config
}

/// Binary cross-entropy, averaged over `axis` (default the last):
///
/// ```text
/// from_logits:   l = y·softplus(-x) + (1-y)·softplus(x)        (= -y·logσ(x) - (1-y)·logσ(-x))
/// probabilities: q = clip(p, 1e-7, 1-1e-7);  l = -(y·ln q + (1-y)·ln(1-q))
/// label smoothing: y ← y·(1-ls) + ls/2
/// ```
///
/// Shapes: `y_true` and `y_pred` identical after rank alignment, e.g. `(B, C)` → `(B,)`; a
/// `(B,)` target against `(B, 1)` predictions is expanded. Rank-1 inputs are **one** sample
/// (Keras' rule): use `(B, 1)` for a batch of single outputs. Edge values (probabilities):
/// `p = 0, y = 1` → 16.118095; `p = 1, y = 0` → 15.942385.
/// Aliases `binary_crossentropy`, `bce`, `BCE`.
#[derive(Debug, Clone)]
pub struct BinaryCrossentropy {
    name: String,
    reduction: Reduction,
    from_logits: bool,
    label_smoothing: f64,
    axis: isize,
    class_weights: Option<Vec<f64>>,
}

impl Default for BinaryCrossentropy {
    fn default() -> Self {
        BinaryCrossentropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            from_logits: false,
            label_smoothing: 0.0,
            axis: -1,
            class_weights: None,
        }
    }
}

loss_basics!(BinaryCrossentropy);

impl BinaryCrossentropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "binary_crossentropy";

    /// The loss with Keras' defaults (probabilities, no smoothing, last axis).
    pub fn new() -> Self {
        Self::default()
    }
    crossentropy_builders!("BinaryCrossentropy");
}

impl Loss for BinaryCrossentropy {
    loss_identity!(BinaryCrossentropy);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
        // Another axis is moved last first.
        let kernel = kernels::BinaryCrossentropy {
            from_logits: self.from_logits,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.as_deref(),
        };
        (self.axis == -1).then_some(RowLoss::new(RowKernelKind::BinaryCrossentropy(kernel)))
    }
    fn config(&self) -> Value {
        self.crossentropy_config()
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        same_shape(&self.name, y_true, y_pred, "")?;
        let (y, p) = (move_axis_last(&self.name, y_true, self.axis)?, move_axis_last(&self.name, y_pred, self.axis)?);
        check_class_weights(&self.name, self.class_weights.as_deref(), p.shape()[p.rank() - 1])?;
        // Label smoothing is fused into the kernel (no pass over y_true).
        let kernel = kernels::BinaryCrossentropy {
            from_logits: self.from_logits,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.as_deref(),
        };
        Ok(row_loss("binary_crossentropy", kernel, &y, &p)?.into())
    }
}

/// Binary focal cross-entropy (Lin et al. 2017, Keras 3 form), averaged over `axis`:
///
/// ```text
/// s = σ(x) if from_logits else p      (logits still go through the clipped probability path)
/// bce = -(y·ln q + (1-y)·ln(1-q)),  q = clip(s, 1e-7, 1-1e-7)
/// p_t = y·s + (1-y)·(1-s);   l = (1 - p_t)^γ · bce
/// apply_class_balancing: l ← (y·α + (1-y)·(1-α)) · l
/// ```
///
/// Defaults `alpha = 0.25`, `gamma = 2`, no class balancing. Perfect predictions give 0.
/// Shapes as [`BinaryCrossentropy`]. Alias `binary_focal_crossentropy`.
#[derive(Debug, Clone)]
pub struct BinaryFocalCrossentropy {
    name: String,
    reduction: Reduction,
    apply_class_balancing: bool,
    alpha: f64,
    gamma: f64,
    from_logits: bool,
    label_smoothing: f64,
    axis: isize,
}

impl Default for BinaryFocalCrossentropy {
    fn default() -> Self {
        BinaryFocalCrossentropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            apply_class_balancing: false,
            alpha: 0.25,
            gamma: 2.0,
            from_logits: false,
            label_smoothing: 0.0,
            axis: -1,
        }
    }
}

loss_basics!(BinaryFocalCrossentropy);

impl BinaryFocalCrossentropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "binary_focal_crossentropy";

    /// The loss with Keras' defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `γ` (finite, `≥ 0`) and `α` (finite).
    pub fn with_gamma_alpha(mut self, gamma: f64, alpha: f64) -> Result<Self> {
        require(gamma.is_finite() && gamma >= 0.0, "BinaryFocalCrossentropy", "gamma", gamma, "a finite number >= 0")?;
        require(alpha.is_finite(), "BinaryFocalCrossentropy", "alpha", alpha, "a finite number")?;
        self.gamma = gamma;
        self.alpha = alpha;
        Ok(self)
    }
    /// Whether to weight positives by `α` and negatives by `1 - α`.
    pub fn with_class_balancing(mut self, on: bool) -> Self {
        self.apply_class_balancing = on;
        self
    }
    /// Whether `y_pred` holds logits.
    pub fn with_from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
    /// Label smoothing in `[0, 1]`.
    pub fn with_label_smoothing(mut self, ls: f64) -> Result<Self> {
        check_smoothing("BinaryFocalCrossentropy", ls)?;
        self.label_smoothing = ls;
        Ok(self)
    }
    /// Builds from a Keras config.
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("BinaryFocalCrossentropy", config)?;
        let mut loss = Self::new().with_name(p.name(Self::DEFAULT_NAME)?).with_reduction(p.reduction()?);
        loss.apply_class_balancing = p.bool("apply_class_balancing", false)?;
        loss = loss.with_gamma_alpha(p.f64("gamma", 2.0)?, p.f64("alpha", 0.25)?)?;
        loss.from_logits = p.bool("from_logits", false)?;
        loss = loss.with_label_smoothing(p.f64("label_smoothing", 0.0)?)?;
        loss.axis = p.int("axis", -1)? as isize;
        p.finish()?;
        Ok(loss)
    }
}

impl Loss for BinaryFocalCrossentropy {
    loss_identity!(BinaryFocalCrossentropy);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(),
               "apply_class_balancing": self.apply_class_balancing, "alpha": self.alpha, "gamma": self.gamma,
               "from_logits": self.from_logits, "label_smoothing": self.label_smoothing, "axis": self.axis})
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
        // Another axis is moved last first.
        let targets =
            Targets::Smoothed { label_smoothing: self.label_smoothing, share: Share::Half, class_weights: None };
        (self.axis == -1)
            .then(|| RowLoss::new(RowKernelKind::BinaryFocalCrossentropy(self.kernel())).with_targets(targets))
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        same_shape(&self.name, y_true, y_pred, "")?;
        let y = smooth(y_true, self.label_smoothing, 0.5)?;
        let (y, p) = (move_axis_last(&self.name, &y, self.axis)?, move_axis_last(&self.name, y_pred, self.axis)?);
        Ok(row_loss("binary_focal_crossentropy", self.kernel(), &y, &p)?.into())
    }
}

impl BinaryFocalCrossentropy {
    /// The row kernel of these settings.
    fn kernel(&self) -> kernels::BinaryFocalCrossentropy {
        kernels::BinaryFocalCrossentropy {
            from_logits: self.from_logits,
            gamma: self.gamma,
            alpha: self.alpha,
            apply_class_balancing: self.apply_class_balancing,
        }
    }
}

/// Categorical cross-entropy over `axis` (default the last), targets one-hot or soft:
///
/// ```text
/// from_logits:   l = -Σ y·log_softmax(x)
/// probabilities: o = p / Σp;  l = -Σ y·ln(clip(o, 1e-7, 1-1e-7))
/// label smoothing: y ← y·(1-ls) + ls/K,  K = size of the LAST axis of y_true
/// ```
///
/// ⚠ Keras quirk kept for parity: `K` is the last axis' size even when `axis` points elsewhere.
/// Shapes: `y_true` and `y_pred` identical, `(B, ..., K)` → `(B, ...)`; integer labels need
/// [`SparseCategoricalCrossentropy`]. A true-class probability of 0 gives 16.118095.
/// Alias `categorical_crossentropy`.
#[derive(Debug, Clone)]
pub struct CategoricalCrossentropy {
    name: String,
    reduction: Reduction,
    from_logits: bool,
    label_smoothing: f64,
    axis: isize,
    class_weights: Option<Vec<f64>>,
}

impl Default for CategoricalCrossentropy {
    fn default() -> Self {
        CategoricalCrossentropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            from_logits: false,
            label_smoothing: 0.0,
            axis: -1,
            class_weights: None,
        }
    }
}

loss_basics!(CategoricalCrossentropy);

impl CategoricalCrossentropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "categorical_crossentropy";

    /// The loss with Keras' defaults.
    pub fn new() -> Self {
        Self::default()
    }
    crossentropy_builders!("CategoricalCrossentropy");
}

impl Loss for CategoricalCrossentropy {
    loss_identity!(CategoricalCrossentropy);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
        // Another axis is moved last first. Class weights scale the smoothed targets first.
        let weights = self.class_weights.as_deref();
        let kernel = kernels::CategoricalCrossentropy {
            from_logits: self.from_logits,
            label_smoothing: if weights.is_some() { 0.0 } else { self.label_smoothing },
            // Set per call from the number of classes.
            smoothing_share: 0.0,
        };
        let row = RowLoss::new(RowKernelKind::CategoricalCrossentropy(kernel));
        let row = match weights {
            Some(w) => row.with_targets(Targets::Smoothed {
                label_smoothing: self.label_smoothing,
                share: Share::PerClass,
                class_weights: Some(w),
            }),
            None => row,
        };
        (self.axis == -1).then_some(row)
    }
    fn config(&self) -> Value {
        self.crossentropy_config()
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let hint = if y_true.rank() + 1 == y_pred.rank() {
            " (integer labels? use SparseCategoricalCrossentropy)"
        } else {
            ""
        };
        same_shape(&self.name, y_true, y_pred, hint)?;
        let k = y_true.shape().last().copied().unwrap_or(1).max(1);
        let share = 1.0 / k as f64;
        let (mut y, p) =
            (move_axis_last(&self.name, y_true, self.axis)?, move_axis_last(&self.name, y_pred, self.axis)?);
        let classes = p.shape()[p.rank() - 1];
        check_class_weights(&self.name, self.class_weights.as_deref(), classes)?;
        // Label smoothing is fused into the kernel, unless class weights must scale the
        // smoothed targets first.
        let mut fused_smoothing = self.label_smoothing;
        if let Some(w) = &self.class_weights {
            y = smooth(&y, self.label_smoothing, share)?
                .mul(&Tensor::from_vec(w.clone(), &[classes])?.to_dtype(y.dtype()))?;
            fused_smoothing = 0.0;
        }
        let kernel = kernels::CategoricalCrossentropy {
            from_logits: self.from_logits,
            label_smoothing: fused_smoothing,
            smoothing_share: share,
        };
        Ok(row_loss("categorical_crossentropy", kernel, &y, &p)?.into())
    }
}

/// Categorical focal cross-entropy (Keras 3):
///
/// ```text
/// s = softmax(x) if from_logits else p;   o = clip(s / Σs, 1e-7, 1-1e-7)
/// l = Σ_c α_c · (1 - o_c)^γ · (-y_c·ln o_c)
/// ```
///
/// `alpha` is one number (default 0.25) or one per class; `gamma` defaults to 2. Label
/// smoothing as [`CategoricalCrossentropy`]. Note the modulating factor uses each class' own
/// `o_c`, so with smoothing the non-target classes contribute too.
/// Shapes: identical `(B, ..., K)` → `(B, ...)`. Alias `categorical_focal_crossentropy`.
#[derive(Debug, Clone)]
pub struct CategoricalFocalCrossentropy {
    name: String,
    reduction: Reduction,
    alpha: Vec<f64>,
    gamma: f64,
    from_logits: bool,
    label_smoothing: f64,
    axis: isize,
}

impl Default for CategoricalFocalCrossentropy {
    fn default() -> Self {
        CategoricalFocalCrossentropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            alpha: vec![0.25],
            gamma: 2.0,
            from_logits: false,
            label_smoothing: 0.0,
            axis: -1,
        }
    }
}

loss_basics!(CategoricalFocalCrossentropy);

impl CategoricalFocalCrossentropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "categorical_focal_crossentropy";

    /// The loss with Keras' defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `α` (one value or one per class) and `γ ≥ 0`.
    pub fn with_alpha_gamma(mut self, alpha: Vec<f64>, gamma: f64) -> Result<Self> {
        let ok = !alpha.is_empty() && alpha.iter().all(|a| a.is_finite());
        require(ok, "CategoricalFocalCrossentropy", "alpha", format!("{alpha:?}"), "a number or a list of numbers")?;
        require(
            gamma.is_finite() && gamma >= 0.0,
            "CategoricalFocalCrossentropy",
            "gamma",
            gamma,
            "a finite number >= 0",
        )?;
        self.alpha = alpha;
        self.gamma = gamma;
        Ok(self)
    }
    /// Whether `y_pred` holds logits.
    pub fn with_from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
    /// Label smoothing in `[0, 1]`.
    pub fn with_label_smoothing(mut self, ls: f64) -> Result<Self> {
        check_smoothing("CategoricalFocalCrossentropy", ls)?;
        self.label_smoothing = ls;
        Ok(self)
    }
    /// Builds from a Keras config.
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("CategoricalFocalCrossentropy", config)?;
        let mut loss = Self::new().with_name(p.name(Self::DEFAULT_NAME)?).with_reduction(p.reduction()?);
        let (alpha, gamma) = (p.f64_or_list("alpha", vec![0.25])?, p.f64("gamma", 2.0)?);
        loss = loss.with_alpha_gamma(alpha, gamma)?;
        loss.from_logits = p.bool("from_logits", false)?;
        loss = loss.with_label_smoothing(p.f64("label_smoothing", 0.0)?)?;
        loss.axis = p.int("axis", -1)? as isize;
        p.finish()?;
        Ok(loss)
    }
}

impl Loss for CategoricalFocalCrossentropy {
    loss_identity!(CategoricalFocalCrossentropy);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn config(&self) -> Value {
        let alpha = if self.alpha.len() == 1 { json!(self.alpha[0]) } else { json!(self.alpha) };
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "alpha": alpha, "gamma": self.gamma,
               "from_logits": self.from_logits, "label_smoothing": self.label_smoothing, "axis": self.axis})
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        same_shape(&self.name, y_true, y_pred, "")?;
        let k = y_true.shape().last().copied().unwrap_or(1).max(1);
        let y = smooth(y_true, self.label_smoothing, 1.0 / k as f64)?;
        let (y, p) = (move_axis_last(&self.name, &y, self.axis)?, move_axis_last(&self.name, y_pred, self.axis)?);
        let classes = p.shape()[p.rank() - 1];
        if self.alpha.len() != 1 && self.alpha.len() != classes {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("alpha has {} entries but there are {classes} classes", self.alpha.len()),
            });
        }
        Ok(row_loss("categorical_focal_crossentropy", self.kernel(), &y, &p)?.into())
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
        // Another axis is moved last first.
        let targets =
            Targets::Smoothed { label_smoothing: self.label_smoothing, share: Share::PerClass, class_weights: None };
        (self.axis == -1)
            .then(|| RowLoss::new(RowKernelKind::CategoricalFocalCrossentropy(self.kernel())).with_targets(targets))
    }
}

impl CategoricalFocalCrossentropy {
    /// The row kernel of these settings.
    fn kernel(&self) -> kernels::CategoricalFocalCrossentropy<'_> {
        kernels::CategoricalFocalCrossentropy { from_logits: self.from_logits, alpha: &self.alpha, gamma: self.gamma }
    }
}

/// Sparse categorical cross-entropy: integer class labels against class scores.
///
/// ```text
/// from_logits:   l = logsumexp(x) - x[label]
/// probabilities: l = -ln(clip(p[label] / Σp, 1e-7, 1-1e-7))
/// ```
///
/// Shapes: labels `(B, ...)` (or `(B, ..., 1)`, squeezed) against `y_pred` `(B, ..., K)` →
/// `(B, ...)`. Labels are truncated toward zero as Keras casts them. With `ignore_class = k`,
/// entries labelled `k` give 0 and are left out of the mean (a mask is attached).
///
/// Unlike Keras on JAX (which silently returns 0), a label outside `0..K` that is not
/// `ignore_class` is an **error** naming the label and its position. `axis` names the class
/// axis of `y_pred` (default the last), as Keras on torch takes it (Keras on JAX supports only
/// the last): `y_pred` `(B, K, d1, ...)` with `axis = 1` against labels `(B, d1, ...)`, the
/// labels having `y_pred`'s shape without the class axis (or with a size-1 axis there).
/// Alias `sparse_categorical_crossentropy`.
#[derive(Debug, Clone)]
pub struct SparseCategoricalCrossentropy {
    name: String,
    reduction: Reduction,
    from_logits: bool,
    ignore_class: Option<i64>,
    class_weights: Option<Vec<f64>>,
    axis: isize,
}

impl Default for SparseCategoricalCrossentropy {
    fn default() -> Self {
        SparseCategoricalCrossentropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            from_logits: false,
            ignore_class: None,
            class_weights: None,
            axis: -1,
        }
    }
}

loss_basics!(SparseCategoricalCrossentropy);

impl SparseCategoricalCrossentropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "sparse_categorical_crossentropy";

    /// The loss with Keras' defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether `y_pred` holds logits.
    pub fn with_from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
    /// The class axis of `y_pred` (negative counts from the end; default -1). Checked against
    /// the inputs' rank when the loss is called; the batch axis (0) is an error there.
    pub fn with_axis(mut self, axis: isize) -> Self {
        self.axis = axis;
        self
    }
    /// A label value to ignore (e.g. `-1` or `255` for unlabelled pixels).
    pub fn with_ignore_class(mut self, class: Option<i64>) -> Self {
        self.ignore_class = class;
        self
    }
    /// Per-class weights (PyTorch's `weight=`): the loss of a sample labelled `c` is multiplied
    /// by `w[c]`.
    pub fn with_class_weights(mut self, weights: Vec<f64>) -> Result<Self> {
        let w = Some(weights);
        check_class_weight_values("SparseCategoricalCrossentropy", &w)?;
        self.class_weights = w;
        Ok(self)
    }
    /// Builds from a Keras config (`axis`, if given, must be `-1`).
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("SparseCategoricalCrossentropy", config)?;
        let mut loss = Self::new().with_name(p.name(Self::DEFAULT_NAME)?).with_reduction(p.reduction()?);
        loss.from_logits = p.bool("from_logits", false)?;
        loss.ignore_class = p.opt_int("ignore_class")?;
        loss.axis = p.int("axis", -1)? as isize;
        if let Some(w) = p.opt_f64_list("class_weights")? {
            loss = loss.with_class_weights(w)?;
        }
        p.finish()?;
        Ok(loss)
    }
}

impl Loss for SparseCategoricalCrossentropy {
    loss_identity!(SparseCategoricalCrossentropy);
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        true
    }
    fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
        // `ignore_class` attaches a mask of the loss' own (only `masked_row_kernel` gives it).
        let kernel = kernels::SparseCategoricalCrossentropy {
            from_logits: self.from_logits,
            class_weights: self.class_weights.as_deref(),
            label_smoothing: 0.0,
        };
        // Another class axis is moved last first.
        (self.axis == -1).then(|| {
            RowLoss::new(RowKernelKind::SparseCategoricalCrossentropy(kernel))
                .with_targets(Targets::ClassIndex)
                .ignoring(self.ignore_class)
        })
    }
    fn config(&self) -> Value {
        with_class_weights_config(
            json!({"name": self.name, "reduction": self.reduction.keras_name(), "from_logits": self.from_logits,
                   "ignore_class": self.ignore_class, "axis": self.axis}),
            &self.class_weights,
        )
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let rank = y_pred.rank();
        let axis = crate::targets::resolve_axis(&self.name, self.axis, rank)?;
        if axis == 0 && rank > 1 {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("axis {} is the batch axis of predictions of shape {:?}", self.axis, y_pred.shape()),
            });
        }
        let labels = if y_true.rank() == rank && y_true.shape().get(axis) == Some(&1) {
            y_true.squeeze(axis as isize)?
        } else {
            y_true.clone()
        };
        // The class axis last: the labels then have the predictions' shape without it.
        let moved;
        let y_pred = if axis + 1 == rank {
            y_pred
        } else {
            moved = move_axis_last(&self.name, y_pred, self.axis)?;
            &moved
        };
        let classes = y_pred.shape().last().copied().unwrap_or(0);
        check_class_weights(&self.name, self.class_weights.as_deref(), classes)?;
        let (indices, mask) = class_indices(&self.name, &labels, classes, self.ignore_class)?;
        let kernel = kernels::SparseCategoricalCrossentropy {
            from_logits: self.from_logits,
            class_weights: self.class_weights.as_deref(),
            label_smoothing: 0.0,
        };
        let rows = Rows { own_mask: mask.as_ref(), factor: None };
        let values = sparse_row_loss_with("sparse_categorical_crossentropy", kernel, &indices, y_pred, rows)?;
        Ok(PerSample { values, mask })
    }
}

/// Generalized cross-entropy (Zhang & Sabuncu 2018), robust to noisy labels:
/// `l = (1 - p[label]^q) / q` with `0 < q < 1` (default 0.5); `p[label] = 0` gives `1/q`.
///
/// Despite the name, `y_true` holds **integer class indices** `(B,)` and `y_pred`
/// probabilities `(B, K)` (no clipping or renormalisation).
/// ⚠ Keras quirk kept for parity: labels shaped `(B, 1)` broadcast against `(B, K)` into a
/// `(B, B)` result (`p_t[i, j] = y_pred[j, label_i]`); pass `(B,)` labels. Out-of-range labels
/// are an error (Keras gives 0). Not in Keras' registry; losskit registers it under its class name.
#[derive(Debug, Clone)]
pub struct CategoricalGeneralizedCrossEntropy {
    name: String,
    reduction: Reduction,
    q: f64,
}

impl Default for CategoricalGeneralizedCrossEntropy {
    fn default() -> Self {
        CategoricalGeneralizedCrossEntropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::SumOverBatchSize,
            q: 0.5,
        }
    }
}

loss_basics!(CategoricalGeneralizedCrossEntropy);

impl CategoricalGeneralizedCrossEntropy {
    /// Keras' default instance name.
    pub const DEFAULT_NAME: &'static str = "categorical_generalized_cross_entropy";

    /// The loss with `q` in `(0, 1)`.
    pub fn new(q: f64) -> Result<Self> {
        require(q > 0.0 && q < 1.0, "CategoricalGeneralizedCrossEntropy", "q", q, "a number with 0 < q < 1")?;
        Ok(CategoricalGeneralizedCrossEntropy { q, ..Self::default() })
    }
    /// Builds from a Keras config.
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new("CategoricalGeneralizedCrossEntropy", config)?;
        let (name, reduction, q) = (p.name(Self::DEFAULT_NAME)?, p.reduction()?, p.f64("q", 0.5)?);
        p.finish()?;
        Ok(Self::new(q)?.with_name(name).with_reduction(reduction))
    }
}

impl Loss for CategoricalGeneralizedCrossEntropy {
    loss_identity!(CategoricalGeneralizedCrossEntropy);
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "q": self.q})
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let classes = y_pred.shape().last().copied().unwrap_or(0);
        let (indices, _) = class_indices(&self.name, y_true, classes, None)?;
        let one_hot = Tensor::one_hot(&indices, classes, y_pred.dtype())?;
        let p_true = one_hot.mul(y_pred)?.sum(&[-1], false)?;
        let values = p_true.powf(self.q)?.neg().add_scalar(1.0)?.mul_scalar(1.0 / self.q)?;
        Ok(values.into())
    }
}
