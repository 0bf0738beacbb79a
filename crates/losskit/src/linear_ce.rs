//! Fused linear + cross-entropy for large vocabularies: the loss of `hidden · Wᵀ + b` against
//! integer labels, and its gradients, without materialising the `N × V` logits.

use crate::config::{require, Params};
use crate::kernel_node::sparse_row_loss;
use crate::targets::class_indices;
use crate::{Error, Loss, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;
use losskit_tensor::{is_grad_enabled, CustomOp, DType, Element, Storage};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

/// Cross-entropy of a linear head, fused: `hidden (..., D)`, `weight (V, D)` (the vocabulary
/// projection, PyTorch's `nn.Linear(D, V).weight` layout), optional `bias (V,)`, integer
/// `labels (...)`. Per token, with `z = hidden·Wᵀ + b` (soft-capped to `c·tanh(z/c)` when a cap
/// is set), `lse = ln Σ_j e^{z_j}`, class weights `w` (all 1 by default, `W_Σ = Σ_j w_j`),
/// smoothing `ε` over `V` classes and z-loss `λ`:
///
/// ```text
/// loss_i = (1-ε)·w_y·(lse - z_y) + ε/V·(W_Σ·lse - Σ_j w_j·z_j) + λ·lse²
/// ```
///
/// i.e. PyTorch's `cross_entropy(z, y, weight, ignore_index, label_smoothing)` per token plus
/// PaLM's z-loss. Tokens labelled `ignore_index` (default -100) have loss 0.
///
/// Reductions (per-token sample weights `s_i`, 1 by default): `none` → `s_i·loss_i` in the
/// labels' shape; `sum` → `Σ s_i·loss_i`; `mean` (the default, PyTorch's) and
/// `mean_with_sample_weight` → `Σ s_i·loss_i / Σ s_i·w_{y_i}` over non-ignored tokens;
/// `sum_over_batch_size` (Keras') → `Σ s_i·loss_i / (number of non-ignored tokens)`. A zero
/// divisor gives 0.
///
/// [`LinearCrossEntropy::forward`] is the fused path (one tape node with respect to hidden,
/// weight and bias; memory beyond inputs and gradients: one chunk of ~8M logits). As a [`Loss`]
/// (`call(labels, logits)`), the same loss on precomputed logits `(..., V)` (the naive path).
#[derive(Debug, Clone)]
pub struct LinearCrossEntropy {
    name: String,
    reduction: Reduction,
    ignore_index: Option<i64>,
    label_smoothing: f64,
    class_weights: Option<Vec<f64>>,
    softcap: Option<f64>,
    z_loss: f64,
}

impl Default for LinearCrossEntropy {
    fn default() -> Self {
        LinearCrossEntropy {
            name: Self::DEFAULT_NAME.into(),
            reduction: Reduction::Mean,
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            class_weights: None,
            softcap: None,
            z_loss: 0.0,
        }
    }
}

/// The labels of a batch, read once: class indices (-1 for ignored tokens) and the reduction's
/// per-token factors.
struct Tokens {
    /// Class index per token, -1 where ignored.
    labels: Vec<i64>,
    /// `s_i` (the sample weight, 1 without), 0 for ignored tokens.
    sample: Vec<f64>,
    /// The reduction's factor: 1, `1/count` or `1/Σ s_i·w_{y_i}` (0 for a zero divisor).
    factor: f64,
}

impl LinearCrossEntropy {
    /// The default instance name.
    pub const DEFAULT_NAME: &'static str = "linear_cross_entropy";
    const CLASS: &'static str = "LinearCrossEntropy";

    /// The loss with the defaults: `mean`, `ignore_index = -100`, no smoothing, class weights,
    /// cap or z-loss.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the reduction (default `mean`, see the type's docs for each).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// Sets the instance name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Tokens with this label are ignored (`None`: every label must be a class).
    pub fn with_ignore_index(mut self, ignore: Option<i64>) -> Self {
        self.ignore_index = ignore;
        self
    }
    /// Label smoothing `ε` in `[0, 1]`.
    pub fn with_label_smoothing(mut self, eps: f64) -> Result<Self> {
        require((0.0..=1.0).contains(&eps), Self::CLASS, "label_smoothing", eps, "a number in [0, 1]")?;
        self.label_smoothing = eps;
        Ok(self)
    }
    /// Per-class weights (length `V`, finite and non-negative).
    pub fn with_class_weights(mut self, weights: Vec<f64>) -> Result<Self> {
        let ok = weights.iter().all(|w| w.is_finite() && *w >= 0.0);
        require(ok, Self::CLASS, "weight", format!("{weights:?}"), "finite non-negative numbers")?;
        self.class_weights = Some(weights);
        Ok(self)
    }
    /// Soft-caps the logits to `cap·tanh(z/cap)` (`cap > 0`); `None` for no cap.
    pub fn with_softcap(mut self, cap: Option<f64>) -> Result<Self> {
        if let Some(c) = cap {
            require(c.is_finite() && c > 0.0, Self::CLASS, "softcap", c, "a positive number or null")?;
        }
        self.softcap = cap;
        Ok(self)
    }
    /// Adds the z-loss `λ·lse²` per token (`λ ≥ 0`).
    pub fn with_z_loss(mut self, lambda: f64) -> Result<Self> {
        require(lambda.is_finite() && lambda >= 0.0, Self::CLASS, "z_loss", lambda, "a non-negative number")?;
        self.z_loss = lambda;
        Ok(self)
    }
    /// Builds from a config (`name`, `reduction`, `ignore_index`, `label_smoothing`, `weight`,
    /// `softcap`, `z_loss`), as [`Loss::config`] writes it.
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut p = Params::new(Self::CLASS, config)?;
        let (name, reduction) = (p.name(Self::DEFAULT_NAME)?, p.reduction_or(Reduction::Mean)?);
        let ignore = if config.get("ignore_index").is_some() { p.opt_int("ignore_index")? } else { Some(-100) };
        let (eps, weights) = (p.f64("label_smoothing", 0.0)?, p.opt_f64_list("weight")?);
        let (cap, z) = (p.opt_f64("softcap")?, p.f64("z_loss", 0.0)?);
        p.finish()?;
        let mut loss = Self::new().with_name(name).with_reduction(reduction).with_ignore_index(ignore);
        loss = loss.with_label_smoothing(eps)?.with_softcap(cap)?.with_z_loss(z)?;
        match weights {
            Some(w) => loss.with_class_weights(w),
            None => Ok(loss),
        }
    }

    /// The kernel's options; labels reach it with ignored tokens as -1.
    fn kernel(&self) -> kernels::LinearCrossEntropy<'_> {
        kernels::LinearCrossEntropy {
            ignore_index: Some(-1),
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.as_deref(),
            softcap: self.softcap,
            z_loss: self.z_loss,
        }
    }

    fn shape_error(&self, msg: String) -> Error {
        Error::Shape { op: self.name.clone(), msg }
    }

    /// Reads and checks the labels (and sample weights) of `tokens` tokens over `vocab` classes.
    fn tokens(&self, labels: &Tensor, vocab: usize, sample_weight: Option<&Tensor>) -> Result<Tokens> {
        if let Some(w) = &self.class_weights {
            if w.len() != vocab {
                return Err(self.shape_error(format!("{} class weights for a vocabulary of {vocab}", w.len())));
            }
        }
        let (idx, _) = class_indices(&self.name, labels, vocab, self.ignore_index)?;
        let labels: Vec<i64> = idx.to_vec::<f64>().into_iter().map(|l| l as i64).collect();
        let sample = match sample_weight {
            None => vec![1.0; labels.len()],
            Some(w) => {
                let w = w.broadcast_to(idx.shape()).map_err(|_| {
                    self.shape_error(format!(
                        "sample_weight of shape {:?} does not broadcast to the labels' shape {:?}",
                        w.shape(),
                        idx.shape()
                    ))
                })?;
                w.to_vec::<f64>()
            }
        };
        let sample: Vec<f64> = sample.iter().zip(&labels).map(|(&s, &l)| if l < 0 { 0.0 } else { s }).collect();
        let class_weight = |l: i64| self.class_weights.as_ref().map_or(1.0, |w| w[l as usize]);
        let divisor = match self.reduction {
            Reduction::None | Reduction::Sum => 1.0,
            Reduction::SumOverBatchSize => labels.iter().filter(|&&l| l >= 0).count() as f64,
            Reduction::Mean | Reduction::MeanWithSampleWeight => {
                sample.iter().zip(&labels).filter(|(_, &l)| l >= 0).map(|(&s, &l)| s * class_weight(l)).sum()
            }
        };
        let factor = if divisor == 0.0 { 0.0 } else { 1.0 / divisor };
        Ok(Tokens { labels, sample, factor })
    }

    /// The fused loss of `hidden · weightᵀ + bias` against `labels` (see the type's docs):
    /// `hidden (..., D)`, `weight (V, D)`, `bias (V,)`, `labels (...)` (class indices as floats).
    /// Returns a scalar, or the per-token losses in `labels`' shape for `none`; differentiable
    /// with respect to `hidden`, `weight` and `bias` (one tape node). `weight` and `bias` are
    /// cast to `hidden`'s dtype.
    pub fn forward(&self, hidden: &Tensor, weight: &Tensor, bias: Option<&Tensor>, labels: &Tensor) -> Result<Tensor> {
        self.forward_weighted(hidden, weight, bias, labels, None)
    }

    /// [`LinearCrossEntropy::forward`] with per-token sample weights (broadcast to the labels'
    /// shape).
    pub fn forward_weighted(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.fused(hidden, weight, kernels::WeightLayout::ClassesByFeatures, bias, labels, sample_weight)
    }

    /// [`LinearCrossEntropy::forward_weighted`] with a Keras `Dense(V)` kernel `(D, V)` in place
    /// of `weight (V, D)` (no transposed copy; its gradient is `(D, V)` too). `losskit-train`
    /// uses it for a model whose last layer is a linear `Dense`.
    pub fn forward_dense(
        &self,
        hidden: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        labels: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.fused(hidden, kernel, kernels::WeightLayout::FeaturesByClasses, bias, labels, sample_weight)
    }

    fn fused(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        layout: kernels::WeightLayout,
        bias: Option<&Tensor>,
        labels: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dims = self.check_shapes(hidden, weight, layout, bias, labels)?;
        let tokens = self.tokens(labels, dims.vocab, sample_weight)?;
        let weight = weight.to_dtype(hidden.dtype());
        let bias = bias.map(|b| b.to_dtype(hidden.dtype()));
        let mut inputs = vec![hidden.clone(), weight];
        inputs.extend(bias);
        let with_grad = is_grad_enabled() && inputs.iter().any(Tensor::is_tracked);
        let node = FusedNode { loss: self.clone(), dims, labels_shape: labels.shape().to_vec() };
        match hidden.dtype() {
            DType::F32 => node.record::<f32>(inputs, tokens, with_grad),
            DType::F64 => node.record::<f64>(inputs, tokens, with_grad),
        }
    }

    fn check_shapes(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        layout: kernels::WeightLayout,
        bias: Option<&Tensor>,
        labels: &Tensor,
    ) -> Result<Dims> {
        let hs = hidden.shape();
        let by_classes = layout == kernels::WeightLayout::ClassesByFeatures;
        let (Some(&dim), 2) = (hs.last(), weight.rank()) else {
            let want = if by_classes { "weight (V, D)" } else { "kernel (D, V)" };
            return Err(
                self.shape_error(format!("expected hidden (..., D) and {want}, got {hs:?} and {:?}", weight.shape()))
            );
        };
        let ws = weight.shape();
        let (vocab, wd) = if by_classes { (ws[0], ws[1]) } else { (ws[1], ws[0]) };
        if wd != dim || vocab == 0 {
            let (what, want) = if by_classes {
                ("weight", format!("({{V ≥ 1}}, {dim})"))
            } else {
                ("kernel", format!("({dim}, {{V ≥ 1}})"))
            };
            return Err(self
                .shape_error(format!("{what} of shape {ws:?} does not fit hidden of shape {hs:?}: expected {want}")));
        }
        if let Some(b) = bias {
            if b.shape() != [vocab] {
                return Err(self.shape_error(format!("bias of shape {:?}, expected ({vocab},)", b.shape())));
            }
        }
        if labels.shape() != &hs[..hs.len() - 1] {
            return Err(self.shape_error(format!(
                "labels of shape {:?} do not match hidden of shape {hs:?}: expected {:?}",
                labels.shape(),
                &hs[..hs.len() - 1]
            )));
        }
        let tokens = labels.numel();
        if tokens == 0 {
            return Err(self.shape_error(format!("no tokens: hidden has shape {hs:?}")));
        }
        Ok(Dims { tokens, dim, vocab, layout })
    }
}

/// `N`, `D`, `V` and the weight's layout.
#[derive(Debug, Clone, Copy)]
struct Dims {
    tokens: usize,
    dim: usize,
    vocab: usize,
    layout: kernels::WeightLayout,
}

/// Builds the fused node: the forward (with the gradients when they are needed and the
/// reduction is a scalar), and the tape node.
struct FusedNode {
    loss: LinearCrossEntropy,
    dims: Dims,
    labels_shape: Vec<usize>,
}

/// What the kernel computed: per-token losses and, when asked, the three gradients.
struct Computed<T> {
    losses: Vec<T>,
    grads: Option<[Option<ArrayD<T>>; 3]>,
}

impl FusedNode {
    fn record<T: Element + kernels::Float>(
        self,
        inputs: Vec<Tensor>,
        tokens: Tokens,
        with_grad: bool,
    ) -> Result<Tensor> {
        let reduced = self.loss.reduction != Reduction::None;
        // A scalar loss: the gradients come out of the forward pass (scaled by the reduction),
        // backward only multiplies them by the upstream scalar. Per-token values: backward
        // recomputes with the upstream values as the tokens' scales.
        let scale: Option<Vec<T>> =
            (with_grad && reduced).then(|| tokens.sample.iter().map(|&s| T::c(s * tokens.factor)).collect());
        let out = self.compute::<T>(&inputs, &tokens.labels, scale.as_deref())?;
        let value = if reduced {
            let total: f64 = out.losses.iter().zip(&tokens.sample).map(|(&l, &s)| l.widen() * s).sum();
            Tensor::scalar(T::narrow(total * tokens.factor))
        } else {
            let v: Vec<T> = out.losses.iter().zip(&tokens.sample).map(|(&l, &s)| l * T::c(s)).collect();
            Tensor::from_vec(v, &self.labels_shape)?
        };
        if !with_grad {
            return Ok(value);
        }
        let op = match out.grads {
            Some(grads) => LinearCeOp::Stored(grads.map(|g| g.map(|g| T::wrap(g)))),
            None => LinearCeOp::Recompute { node: self, tokens },
        };
        Ok(Tensor::from_op(value.into_storage(), inputs, op))
    }

    /// Runs the kernel: losses, and the gradients of `Σ scale_i·loss_i` when `scale` is given.
    fn compute<T: Element + kernels::Float>(
        &self,
        inputs: &[Tensor],
        labels: &[i64],
        scale: Option<&[T]>,
    ) -> Result<Computed<T>> {
        let Dims { tokens: n, dim: d, vocab: v, layout } = self.dims;
        // Borrowed (no copy) when contiguous: the inputs are already in `T` (see `forward_weighted`).
        let views = inputs
            .iter()
            .map(|t| T::view(t.storage()).map(|a| a.as_standard_layout()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Value { op: self.loss.name.clone(), msg: "inputs of mixed dtypes".into() })?;
        let slices: Vec<&[T]> = views.iter().map(|v| v.as_slice().expect("standard layout")).collect();
        let x = kernels::LinearInputs {
            hidden: slices[0],
            weight: slices[1],
            layout,
            bias: slices.get(2).copied(),
            labels,
            tokens: n,
            dim: d,
            vocab: v,
        };
        let kernel = self.loss.kernel();
        let mut losses = vec![T::zero(); n];
        let fail = |e: kernels::KernelError| Error::Value { op: self.loss.name.clone(), msg: e.to_string() };
        let Some(scale) = scale else {
            kernel.forward(&x, &mut losses).map_err(fail)?;
            return Ok(Computed { losses, grads: None });
        };
        let fresh = |len: usize| losskit_tensor::pool::take::<T>(len);
        let (mut dh, mut dw) = (fresh(n * d), fresh(v * d));
        let mut db = x.bias.map(|_| fresh(v));
        let grads = kernels::LinearGrads { hidden: &mut dh, weight: &mut dw, bias: db.as_deref_mut() };
        kernel.forward_backward(&x, scale, &mut losses, grads).map_err(fail)?;
        let array = |data: Vec<T>, shape: &[usize]| ArrayD::from_shape_vec(IxDyn(shape), data).expect("sized");
        let grads =
            [Some(array(dh, inputs[0].shape())), Some(array(dw, inputs[1].shape())), db.map(|db| array(db, &[v]))];
        Ok(Computed { losses, grads: Some(grads) })
    }
}

/// The fused node's backward.
enum LinearCeOp {
    /// Gradients for an upstream gradient of 1 (hidden, weight, bias).
    Stored([Option<Storage>; 3]),
    /// Per-token output: the gradients are computed in backward, with the upstream values.
    Recompute { node: FusedNode, tokens: Tokens },
}

impl CustomOp for LinearCeOp {
    fn name(&self) -> &str {
        "linear_cross_entropy"
    }

    fn backward(&self, inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let grads: Vec<Option<Tensor>> = match self {
            LinearCeOp::Stored(stored) => {
                let g = grad.to_scalar()?;
                let scaled = |s: &Storage| {
                    let t = Tensor::from_storage(s.clone());
                    if g == 1.0 {
                        Ok(t)
                    } else {
                        t.mul_scalar(g)
                    }
                };
                stored.iter().map(|s| s.as_ref().map(scaled).transpose()).collect::<Result<_>>()?
            }
            LinearCeOp::Recompute { node, tokens } => {
                let upstream = grad.to_vec::<f64>();
                let scale: Vec<f64> = upstream.iter().zip(&tokens.sample).map(|(&g, &s)| g * s).collect();
                let grads = match inputs[0].dtype() {
                    DType::F32 => recompute::<f32>(node, inputs, &tokens.labels, &scale)?,
                    DType::F64 => recompute::<f64>(node, inputs, &tokens.labels, &scale)?,
                };
                grads.into_iter().collect()
            }
        };
        Ok(grads.into_iter().take(inputs.len()).collect())
    }
}

fn recompute<T: Element + kernels::Float>(
    node: &FusedNode,
    inputs: &[Tensor],
    labels: &[i64],
    scale: &[f64],
) -> Result<[Option<Tensor>; 3]> {
    let scale: Vec<T> = scale.iter().map(|&s| T::c(s)).collect();
    let out = node.compute::<T>(inputs, labels, Some(&scale))?;
    let grads = out.grads.expect("asked for gradients");
    Ok(grads.map(|g| g.map(Tensor::from_array)))
}

impl Loss for LinearCrossEntropy {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        Self::CLASS
    }
    fn reduction(&self) -> Reduction {
        self.reduction
    }
    fn config(&self) -> Value {
        json!({"name": self.name, "reduction": self.reduction.keras_name(), "ignore_index": self.ignore_index,
               "label_smoothing": self.label_smoothing, "weight": self.class_weights, "softcap": self.softcap,
               "z_loss": self.z_loss})
    }
    /// Per-token losses of precomputed logits `(..., V)` (0 for ignored tokens, masked out).
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        let vocab = *y_pred.shape().last().ok_or_else(|| self.shape_error("scalar logits".into()))?;
        let y_true = &squeeze_trailing_one(y_true, y_pred.shape())?;
        let tokens = self.tokens(y_true, vocab, None)?;
        let values = self.logits_values(&tokens, y_pred)?;
        let mask: Vec<f64> = tokens.labels.iter().map(|&l| f64::from(u8::from(l >= 0))).collect();
        Ok(PerSample { values, mask: Some(Tensor::from_vec(mask, y_true.shape())?.to_dtype(y_pred.dtype())) })
    }
    /// The loss of precomputed logits `y_pred (..., V)` against labels `y_true (...)`, reduced as
    /// the fused path reduces (not through Keras' mask rules).
    fn call(&self, y_true: &Tensor, y_pred: &Tensor, sample_weight: Option<&Tensor>) -> Result<Tensor> {
        let shape = y_pred.shape();
        let y_true = &squeeze_trailing_one(y_true, shape)?;
        if shape.is_empty() || y_true.shape() != &shape[..shape.len() - 1] || y_pred.numel() == 0 {
            return Err(self.shape_error(format!(
                "expected labels (...) and logits (..., V ≥ 1) with the same leading shape, got {:?} and {shape:?}",
                y_true.shape()
            )));
        }
        let tokens = self.tokens(y_true, shape[shape.len() - 1], sample_weight)?;
        let values = self.logits_values(&tokens, y_pred)?;
        let sample = Tensor::from_vec(tokens.sample.clone(), y_true.shape())?.to_dtype(y_pred.dtype());
        let weighted = values.mul(&sample)?;
        if self.reduction == Reduction::None {
            return Ok(weighted);
        }
        let axes: Vec<isize> = (0..weighted.rank() as isize).collect();
        weighted.sum(&axes, false)?.mul_scalar(tokens.factor)
    }
    /// As [`Loss::call`]; a mask multiplies the sample weights.
    fn call_masked(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        match (mask, sample_weight) {
            (None, _) => self.call(y_true, y_pred, sample_weight),
            (Some(m), None) => self.call(y_true, y_pred, Some(m)),
            (Some(m), Some(w)) => self.call(y_true, y_pred, Some(&m.detach().mul(&w.detach())?)),
        }
    }
}

/// Labels `(..., 1)` for logits `(..., V)` become `(...)` (Keras' sparse labels may carry the
/// trailing axis).
fn squeeze_trailing_one(labels: &Tensor, logits: &[usize]) -> Result<Tensor> {
    let ls = labels.shape();
    if !logits.is_empty()
        && ls.len() == logits.len()
        && ls.last() == Some(&1)
        && ls[..ls.len() - 1] == logits[..logits.len() - 1]
    {
        labels.reshape(&ls[..ls.len() - 1].iter().map(|&d| d as isize).collect::<Vec<_>>())
    } else {
        Ok(labels.clone())
    }
}

impl LinearCrossEntropy {
    /// The per-token losses of logits through the kernel's row pass (one tape node).
    fn logits_values(&self, tokens: &Tokens, logits: &Tensor) -> Result<Tensor> {
        let shape = logits.shape();
        let labels: Vec<f64> = tokens.labels.iter().map(|&l| l as f64).collect();
        let labels = Tensor::from_vec(labels, &shape[..shape.len() - 1])?;
        sparse_row_loss("linear_cross_entropy", self.kernel(), &labels, logits)
    }
}
