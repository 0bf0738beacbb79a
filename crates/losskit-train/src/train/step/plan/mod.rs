//! The training step without the tape: for a model it can run (a trunk of [`StepLayer`]s, one
//! output or named heads of them (`heads.rs`), reduced losses), `fit` runs each step over
//! buffers it keeps across steps, and a warm step on losses with row kernels allocates nothing.
//!
//! A [`StepPlan`] is made once per `fit` from the model. Per batch of `rows` samples it keeps
//! (one set per batch size, so the last, shorter batch of an epoch has its own): the batch's
//! inputs and targets, each stage's output and the gradient flowing into it, dropout masks and
//! the loss' per-sample values; and, for every weight, its gradient. A step:
//! 1. **gathers** the batch's rows into the input and target buffers;
//! 2. runs the stages **forward** (`losskit_tensor::slices`: the tape ops' own maths, so the
//!    same bits as the tape's step), dropout masks drawn from the model's generator in the
//!    tape's order;
//! 3. runs the loss' **row kernel** ([`losskit::row_kernel`]) for the per-sample values and their
//!    gradient, weighted by the batch's sample weights when the run has them (`class_weight`
//!    or one `sample_weight` per sample), and the reduction (`Σ / rows`, `Σ / Σw` or `Σ`) as
//!    `losskit::compute` reduces; a loss with no row kernel is called on the output through a
//!    small tape of its own instead ([`LossPath::Tape`]);
//! 4. runs the stages **backward** into the weights' gradients (no `∂x` for the model's input);
//! 5. hands the gradients to the optimizer, which updates each weight in its own buffer (with
//!    the NaN guard's measure in the same call).
//!
//! Files: this one holds the plan (its stages and buffers, made once); `passes.rs` steps 1, 2
//! and 4; `loss.rs` step 3; `update.rs` step 5; `penalty.rs` the regularizers' penalties;
//! `heads.rs` named outputs; `shard.rs` a data-parallel worker's share.
//!
//! Values, gradients and updated weights are the tape's, bit for bit (`tests/planned_step.rs`,
//! against [`Compile::planned_step`](crate::Compile::planned_step)`(Some(false))`), and a warm
//! step allocates nothing (`tests/step_allocations.rs`).

use crate::layers::{builtin, Layer, StepLayer, Then};
use crate::regularizers::Regularizer;
use losskit::{DType, Reduction, Result, RowLoss, Tensor};
use losskit_tensor::Element;
use losskit_tensor::{DenseActivation, Elementwise};

mod heads;
mod loss;
mod passes;
mod penalty;
mod shard;
mod update;

use loss::{kernel_targets, loss_and_gradient, loss_value, tape_loss, tape_loss_of, weighted, LossPath, Reduce};
use passes::{backward, forward, gather};
use penalty::{add_penalty_grads, all_stages, loss_with_penalties, with_penalty};
use update::{update, LayerWeights};

/// One computation of the step, in forward order.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// A fully connected layer: `layer` is its index in the trunk, `weight` the index of its
    /// kernel among the model's weights (the bias follows when `bias`).
    /// `regularizers` are the kernel's and the bias' penalties.
    Dense {
        layer: usize,
        weight: usize,
        shape: (usize, usize),
        activation: DenseActivation,
        bias: bool,
        regularizers: [Option<Regularizer>; 2],
    },
    /// Softmax over rows of `cols` values.
    Softmax { cols: usize },
    /// Dropout of `rate` on rows of `cols` values.
    Dropout { rate: f64, cols: usize },
    /// An activation on its own (an `Activation` layer) on rows of `cols` values.
    Activation { activation: DenseActivation, cols: usize },
    /// An element-wise activation whose derivative reads its input (an `Activation` layer, or
    /// the one of a `Dense` layer) on rows of `cols` values.
    Elementwise { kind: Elementwise, cols: usize },
    /// Log-softmax over rows of `cols` values.
    LogSoftmax { cols: usize },
    /// Sparsemax over rows of `cols` values.
    Sparsemax { cols: usize },
    /// `glu` on rows of `cols` values (even): rows of `cols / 2` out.
    Glu { cols: usize },
    /// `x·scale + offset` (a `Rescaling` layer) on rows of `cols` values.
    Rescale { scale: f64, offset: f64, cols: usize },
}

impl Stage {
    /// The stage of an activation with a pass of its own on rows of `cols` values.
    fn then(then: Then, cols: usize) -> Stage {
        match then {
            Then::Softmax => Stage::Softmax { cols },
            Then::LogSoftmax => Stage::LogSoftmax { cols },
            Then::Sparsemax => Stage::Sparsemax { cols },
            Then::Glu => Stage::Glu { cols },
            Then::Elementwise(kind) => Stage::Elementwise { kind, cols },
        }
    }

    /// Features per sample out.
    fn cols(&self) -> usize {
        match *self {
            Stage::Dense { shape, .. } => shape.1,
            Stage::Glu { cols } => cols / 2,
            Stage::Softmax { cols }
            | Stage::Dropout { cols, .. }
            | Stage::Activation { cols, .. }
            | Stage::Elementwise { cols, .. }
            | Stage::Sparsemax { cols }
            | Stage::LogSoftmax { cols }
            | Stage::Rescale { cols, .. } => cols,
        }
    }
}

/// The buffers of one batch size.
struct Buffers {
    rows: usize,
    /// The batch's inputs, `(rows, features)`.
    x: Tensor,
    /// The batch's targets, in the model's dtype (what the metrics read).
    y: Tensor,
    /// The targets as the loss' kernel reads them (sparse labels as class indices).
    targets: Tensor,
    /// Each stage's output, `(rows, cols)`.
    outs: Vec<Tensor>,
    /// `∂L/∂` each stage's output (scratch for the backward pass).
    grads: Vec<Tensor>,
    /// Each dropout stage's mask (a placeholder for the others).
    masks: Vec<Tensor>,
    /// The loss' per-sample values, `(rows,)`.
    values: Tensor,
    /// The reduction's scale of each row's gradient (for a folded reduction), `(rows,)`.
    scale: Tensor,
    /// The batch's sample weights in the model's dtype, `(rows,)` or `(rows, 1)` as given
    /// (empty without weights).
    w: Tensor,
    /// A head's: `∂L/∂` its input (the trunk's output), `(rows, features)`; empty otherwise.
    input_grad: Tensor,
    /// With heads: each head's buffers (its input `x` a copy of the trunk's output).
    heads: Vec<Buffers>,
}

impl Buffers {
    fn new(plan: &StepPlan, rows: usize) -> Buffers {
        let mut b = Buffers::segment(plan, &plan.stages, plan.features, &plan.target_shape, rows, false);
        let trunk_cols = plan.stages.last().map_or(plan.features, Stage::cols);
        b.heads = plan
            .heads
            .iter()
            .map(|h| Buffers::segment(plan, &h.stages, trunk_cols, &h.target_shape, rows, true))
            .collect();
        b
    }

    /// The buffers of one chain of `stages` on inputs of `features` values per sample, with
    /// targets of `target_shape` per sample; with `input_grad`, a buffer for `∂L/∂input`.
    fn segment(
        plan: &StepPlan,
        stages: &[Stage],
        features: usize,
        target_shape: &[usize],
        rows: usize,
        input_grad: bool,
    ) -> Buffers {
        let zeros = |shape: &[usize]| Tensor::zeros(shape, plan.dtype);
        let outs: Vec<Tensor> = stages.iter().map(|s| zeros(&[rows, s.cols()])).collect();
        let masks = stages
            .iter()
            .map(|s| match s {
                Stage::Dropout { cols, .. } => zeros(&[rows, *cols]),
                _ => zeros(&[0]),
            })
            .collect();
        let y_shape: Vec<usize> = std::iter::once(rows).chain(target_shape.iter().copied()).collect();
        Buffers {
            rows,
            x: zeros(&[rows, features]),
            y: zeros(&y_shape),
            targets: zeros(&y_shape),
            grads: outs.iter().map(|o| zeros(o.shape())).collect(),
            outs,
            masks,
            values: zeros(&[rows]),
            scale: zeros(&[rows]),
            w: zeros(&[&[if plan.reduce.weighted { rows } else { 0 }], &plan.weight_shape[..]].concat()),
            input_grad: zeros(&[if input_grad { rows } else { 0 }, features]),
            heads: Vec::new(),
        }
    }
}

/// The allocation-free training step of one model (see the module docs).
pub(crate) struct StepPlan {
    dtype: DType,
    /// Features per sample in (flattened).
    features: usize,
    /// The per-sample shape of the targets.
    target_shape: Vec<usize>,
    /// The sample weights' shape per sample: `()` or `(1,)`, as the run gives them.
    weight_shape: Vec<usize>,
    stages: Vec<Stage>,
    /// The first stage with weights (the backward pass stops there).
    first_trained: usize,
    /// How the per-sample values are reduced: from the compiled loss' reduction, weighted once
    /// [`StepPlan::with_sample_weights`] is called.
    reduce: Reduce,
    /// How the loss and `∂L/∂output` are computed.
    loss_path: LossPath,
    /// The output's loss weight (`Compile::loss_weights`), when it has one: the loss and its
    /// gradient times it, as the tape's `L·w`.
    loss_weight: Option<f64>,
    /// With heads (several outputs): each head's stages and loss (the trunk's are above; the
    /// loss fields above are then unused).
    heads: Vec<heads::HeadPlan>,
    /// Each output's unweighted loss of the last step (with heads; kept for its capacity).
    each: Vec<f64>,
    /// One set per batch size seen (at most two in a run: the batch size and the last batch).
    buffers: Vec<Buffers>,
    /// Each weight's gradient, in weight order.
    weight_grads: Vec<Tensor>,
    /// The optimizer's `Σ g²` per gradient (kept for its capacity).
    pub sum_squares: Vec<f64>,
    /// Each weight's regularizer (weight order), folded into the optimizer's update; empty
    /// when no weight is regularized (set with the gradient buffers).
    penalties: Vec<Option<Regularizer>>,
    /// Each weight's penalty of the last step (kept for its capacity).
    penalty_values: Vec<f64>,
    /// The gradients flattened for a data-parallel all-reduce (f32 or f64 models; kept for
    /// their capacity).
    flat: (Vec<f32>, Vec<f64>),
    /// A data-parallel step's loss and metric sums for its first all-reduce (kept for its
    /// capacity).
    pub sums: Vec<f64>,
}

impl StepPlan {
    /// The plan for `model` run on `x` (inputs) and, to train or evaluate, `y` (the one
    /// output's targets, against the compiled loss), or the reason the model runs through the
    /// tape instead.
    pub(crate) fn new(model: &crate::Model, x: &Tensor, y: Option<&Tensor>) -> std::result::Result<StepPlan, String> {
        if !model.heads.is_empty() {
            return Err("the model has several outputs".into());
        }
        let input = model.input_shape.as_deref().ok_or("not built")?;
        let standard = |t: &Tensor| t.values::<f32>().is_some() || t.values::<f64>().is_some();
        if !standard(x) || y.is_some_and(|y| !standard(y)) {
            return Err("inputs or targets not in standard layout".into());
        }
        let (stages, features) = Self::stages(model, input)?;
        if stages.is_empty() {
            return Err("no layer computes anything".into());
        }
        let mut plan = StepPlan::new_unchecked(model, stages, features);
        if let Some(y) = y {
            plan.fit_loss(model, y)?;
        }
        Ok(plan)
    }

    /// A plan of the trunk's `stages` on inputs of `features` values, with nothing checked yet
    /// and no loss taken.
    fn new_unchecked(model: &crate::Model, stages: Vec<Stage>, features: usize) -> StepPlan {
        StepPlan {
            dtype: model.dtype,
            features,
            target_shape: Vec::new(),
            weight_shape: Vec::new(),
            first_trained: stages.iter().position(|s| matches!(s, Stage::Dense { .. })).unwrap_or(0),
            stages,
            reduce: Reduce { divides: true, weighted: false, by_weight_sum: false },
            loss_path: LossPath::Kernel,
            loss_weight: None,
            heads: Vec::new(),
            each: Vec::new(),
            buffers: Vec::new(),
            weight_grads: Vec::new(),
            sum_squares: Vec::new(),
            penalties: Vec::new(),
            penalty_values: Vec::new(),
            flat: (Vec::new(), Vec::new()),
            sums: Vec::new(),
        }
    }

    /// Checks the compiled loss against the model's output and the targets `y`, and takes its
    /// reduction and the targets' per-sample shape; a loss with no row kernel takes the tape
    /// ([`LossPath::Tape`]).
    fn fit_loss(&mut self, model: &crate::Model, y: &Tensor) -> std::result::Result<(), String> {
        let compiled = model.compiled.as_ref().ok_or("not compiled")?;
        if compiled.losses.len() != 1 {
            return Err("more than one loss".into());
        }
        self.loss_weight = compiled.loss_weights.first().copied().flatten();
        let loss = &compiled.losses[0];
        if loss.reduction() == Reduction::None {
            return Err("the loss is not reduced".into());
        }
        if !self.stages.iter().any(|s| matches!(s, Stage::Dense { .. })) {
            return Err("no weights".into());
        }
        let target_shape = y.shape()[1..].to_vec();
        if let Some(kernel) = losskit::row_kernel(loss.as_ref()) {
            let classes = self.stages.last().ok_or("no layers")?.cols();
            // A target per sample against one output is that output's target (Keras expands it).
            if !kernel.fits(&[y.shape().first().copied().unwrap_or(0), classes], y.shape()) {
                return Err(format!("targets of shape {target_shape:?} per sample for {classes} outputs"));
            }
        } else {
            self.loss_path = LossPath::Tape;
        }
        self.target_shape = target_shape;
        self.reduce.divides = loss.reduction() != Reduction::Sum;
        self.reduce.by_weight_sum = loss.reduction() == Reduction::MeanWithSampleWeight;
        Ok(())
    }

    /// Has the training steps weight each sample by `w` (one weight per sample: shape `(n,)`
    /// or `(n, 1)` for `n` samples), as `losskit::compute` weights the per-sample values before
    /// the reduction; or the reason it cannot.
    pub(crate) fn with_sample_weights(mut self, w: &Tensor, samples: usize) -> std::result::Result<Self, String> {
        let one_per_sample = matches!(w.shape(), [n] | [n, 1] if *n == samples);
        if !one_per_sample {
            return Err(format!("sample weights of shape {:?} (one per sample is planned)", w.shape()));
        }
        if w.values::<f32>().is_none() && w.values::<f64>().is_none() {
            return Err("sample weights not in standard layout".into());
        }
        self.reduce.weighted = true;
        self.weight_shape = w.shape()[1..].to_vec();
        self.buffers.clear();
        Ok(self)
    }

    /// The stages of the model's trunk from the per-sample input shape, and the flattened
    /// input's width; an error naming what the step cannot run.
    fn stages(model: &crate::Model, input: &[usize]) -> std::result::Result<(Vec<Stage>, usize), String> {
        Self::chain(&model.trunk, input, 0)
    }

    /// The stages of a chain of `layers` (the trunk, or a head) from the per-sample input
    /// shape, their weights numbered from `first_weight` among the model's, and the flattened
    /// input's width; an error naming what the step cannot run.
    fn chain(
        layers: &[Box<dyn Layer>],
        input: &[usize],
        first_weight: usize,
    ) -> std::result::Result<(Vec<Stage>, usize), String> {
        let mut shape = input.to_vec();
        let mut stages = Vec::new();
        let mut weight = first_weight;
        for (layer, l) in layers.iter().enumerate() {
            let kind = builtin(l.as_ref()).and_then(|b| b.step_kind()).ok_or_else(|| {
                format!("layer {} `{}` ({}) is not plannable{}", layer + 1, l.name(), l.kind(), why_not(l.as_ref()))
            })?;
            match kind {
                StepLayer::Flatten => shape = vec![shape.iter().product()],
                StepLayer::Reshape => shape = l.output_shape().ok_or("not built")?.to_vec(),
                StepLayer::Rescale { scale, offset } => {
                    stages.push(Stage::Rescale { scale, offset, cols: shape.iter().product() })
                }
                StepLayer::Dropout { rate: 0.0 } => {}
                StepLayer::Dropout { rate } => stages.push(Stage::Dropout { rate, cols: flat(&shape, l.as_ref())? }),
                StepLayer::Activation { activation: DenseActivation::Linear } => {}
                StepLayer::Activation { activation } => {
                    stages.push(Stage::Activation { activation, cols: flat(&shape, l.as_ref())? })
                }
                StepLayer::Then(then) => {
                    let cols = flat(&shape, l.as_ref())?;
                    stages.push(Stage::then(then, cols));
                    shape = vec![stages.last().expect("just pushed").cols()];
                }
                StepLayer::Dense { units, activation, then, bias, regularizers } => {
                    let inputs = flat(&shape, l.as_ref())?;
                    stages.push(Stage::Dense { layer, weight, shape: (inputs, units), activation, bias, regularizers });
                    if let Some(then) = then {
                        stages.push(Stage::then(then, units));
                    }
                    shape = vec![stages.last().expect("just pushed").cols()];
                }
            }
            weight += l.param_count();
        }
        if shape.len() != 1 {
            return Err(format!("outputs of shape {shape:?} per sample"));
        }
        Ok((stages, input.iter().product()))
    }

    /// Runs one training step on the rows `idx` of `x` and `y`: forward, loss, backward, and
    /// the optimizer's update (with `check = Some(require_finite)` the gradients are measured
    /// into [`StepPlan::sum_squares`] and, when required, a step with a non-finite gradient
    /// changes nothing; a non-finite loss then changes nothing either). Returns the loss (as
    /// the tape's `total.to_scalar()`) and whether the update was applied.
    pub(crate) fn run(
        &mut self,
        model: &mut crate::Model,
        x: &Tensor,
        ys: &[Tensor],
        w: Option<&Tensor>,
        idx: &[usize],
        check: Option<bool>,
    ) -> Result<(f64, bool)> {
        let set = self.begin_step(model, w, idx.len())?;
        let loss = match (self.dtype, self.heads.is_empty()) {
            (DType::F32, true) => self.forward_backward::<f32>(model, x, &ys[0], w, idx, set)?,
            (DType::F64, true) => self.forward_backward::<f64>(model, x, &ys[0], w, idx, set)?,
            (DType::F32, false) => self.heads_forward_backward::<f32>(model, x, ys, w, idx, set)?,
            (DType::F64, false) => self.heads_forward_backward::<f64>(model, x, ys, w, idx, set)?,
        };
        self.apply_with_penalties(model, loss, check)
    }

    /// What a training step (or a data-parallel worker's) checks and sets up first: the run's
    /// sample weights as the plan was made for, a gradient buffer per weight, and the buffers
    /// for `rows` samples (their index).
    fn begin_step(&mut self, model: &crate::Model, w: Option<&Tensor>, rows: usize) -> Result<usize> {
        if w.is_some() != self.reduce.weighted {
            return Err(losskit::Error::Config("fit: the planned step's sample weights changed".into()));
        }
        if self.weight_grads.is_empty() {
            self.weight_grads = model.params().iter().map(|p| p.value.zeros_like()).collect();
            self.penalties = vec![None; self.weight_grads.len()];
            for stage in all_stages(&self.stages, &self.heads) {
                let Stage::Dense { weight: k, regularizers, .. } = *stage else { continue };
                for (i, r) in regularizers.iter().enumerate().filter(|(_, r)| r.is_some()) {
                    self.penalties[k + i] = *r;
                }
            }
            if self.penalties.iter().all(Option::is_none) {
                self.penalties.clear();
            }
        }
        Ok(self.buffers_for(rows))
    }

    /// Steps 1 and 2 in `T`: the rows `idx` of the inputs, targets (when given) and weights into buffer set
    /// `set`, and the stages forward with dropout drawn from the model's generator.
    fn gather_and_forward<T: Element>(
        &mut self,
        model: &mut crate::Model,
        (x, y, w): (&Tensor, Option<&Tensor>, Option<&Tensor>),
        idx: &[usize],
        set: usize,
    ) -> Result<()> {
        let b = &mut self.buffers[set];
        gather::<T>(x, idx, &mut b.x)?;
        if let Some(y) = y {
            gather::<T>(y, idx, &mut b.y)?;
        }
        if let Some(w) = w {
            gather::<T>(w, idx, &mut b.w)?;
        }
        forward::<T>(&self.stages, &model.trunk, Some(&mut model.rng), b)
    }

    /// Step 5 of [`StepPlan::run`] for a model with regularized weights: the penalties
    /// measured with the gradients' norms and their gradients folded into the optimizer's
    /// update ([`Optimizer::apply_folded`](crate::Optimizer)); without, [`StepPlan::apply`].
    /// The step's loss (with the penalties, as the tape's) and whether it was applied.
    fn apply_with_penalties(
        &mut self,
        model: &mut crate::Model,
        loss: f64,
        check: Option<bool>,
    ) -> Result<(f64, bool)> {
        if self.penalties.is_empty() {
            return Ok((loss, self.apply(model, loss, check)?));
        }
        let (stages, heads, dtype) = (&self.stages, &self.heads, self.dtype);
        let total = |values: &[f64]| {
            let all = all_stages(stages, heads);
            match dtype {
                DType::F32 => loss_with_penalties::<f32>(loss, all, values),
                DType::F64 => loss_with_penalties::<f64>(loss, all, values),
            }
        };
        let compiled = model.compiled.as_mut().expect("checked in StepPlan::new");
        let mut weights = LayerWeights { trunk: &mut model.trunk, heads: &mut model.heads };
        compiled.optimizer.apply_folded(
            &mut weights,
            &mut self.weight_grads,
            &self.penalties,
            check,
            &mut self.sum_squares,
            &mut self.penalty_values,
            total,
        )
    }

    /// Step 5 of [`StepPlan::run`]: the optimizer's update with the step's gradients (see
    /// `run` for `check`); whether it was applied.
    pub(crate) fn apply(&mut self, model: &mut crate::Model, loss: f64, check: Option<bool>) -> Result<bool> {
        let applied = if loss.is_finite() || check.is_none() {
            update(model, &self.weight_grads, check, &mut self.sum_squares)?.1
        } else {
            // The loss alone condemns the step: the gradients are measured for the diagnosis.
            self.sum_squares.clear();
            self.sum_squares.extend(self.weight_grads.iter().map(Tensor::sum_of_squares));
            false
        };
        Ok(applied)
    }

    /// The forward pass alone (dropout off, no gradients) on the rows `idx` of `x`: the model's
    /// output into the batch's buffer ([`StepPlan::reading`], [`StepPlan::output`]) and, with
    /// targets `y` (a plan made with them), the loss as the tape's evaluation computes it,
    /// weighted by `w` (a plan made [`StepPlan::with_sample_weights`]).
    pub(crate) fn infer(
        &mut self,
        model: &crate::Model,
        x: &Tensor,
        y: Option<(&Tensor, Option<&Tensor>)>,
        idx: &[usize],
    ) -> Result<Option<f64>> {
        if y.is_some_and(|(_, w)| w.is_some() != self.reduce.weighted) {
            return Err(losskit::Error::Config("evaluate: the planned pass' sample weights changed".into()));
        }
        let set = self.buffers_for(idx.len());
        match self.dtype {
            DType::F32 => self.infer_typed::<f32>(model, x, y, idx, set),
            DType::F64 => self.infer_typed::<f64>(model, x, y, idx, set),
        }
    }

    /// [`StepPlan::infer`] in `T`.
    fn infer_typed<T: Element>(
        &mut self,
        model: &crate::Model,
        x: &Tensor,
        y: Option<(&Tensor, Option<&Tensor>)>,
        idx: &[usize],
        set: usize,
    ) -> Result<Option<f64>> {
        let b = &mut self.buffers[set];
        gather::<T>(x, idx, &mut b.x)?;
        forward::<T>(&self.stages, &model.trunk, None, b)?;
        let Some((y, w)) = y else { return Ok(None) };
        gather::<T>(y, idx, &mut b.y)?;
        if let Some(w) = w {
            gather::<T>(w, idx, &mut b.w)?;
        }
        let loss = match self.loss_path {
            LossPath::Kernel => {
                let kernel = self.targets::<T>(model, set)?;
                loss_value::<T>(kernel, self.reduce, &mut self.buffers[set])?
            }
            LossPath::Tape => tape_loss::<T>(model, self.reduce, self.loss_weight, &mut self.buffers[set], false)?,
        };
        let loss = match (self.loss_weight, self.loss_path) {
            (Some(w), LossPath::Kernel) => weighted::<T>(loss, w, None),
            _ => loss,
        };
        Ok(Some(with_penalty::<T>(loss, &self.stages, &model.trunk)))
    }

    /// The model's outputs on every row of `x`, computed in batches of `batch_size` rows:
    /// `(rows, outputs)` in the model's dtype.
    pub(crate) fn predict(&mut self, model: &crate::Model, x: &Tensor, batch_size: usize) -> Result<Tensor> {
        let n = x.shape().first().copied().unwrap_or(0);
        let cols = self.stages.last().expect("checked in new").cols();
        let batch_size = batch_size.max(1);
        let mut out = Tensor::zeros(&[n, cols], self.dtype);
        let mut idx = Vec::with_capacity(batch_size);
        for start in (0..n).step_by(batch_size) {
            idx.clear();
            idx.extend(start..(start + batch_size).min(n));
            self.infer(model, x, None, &idx)?;
            let rows = start * cols..(start + idx.len()) * cols;
            match self.dtype {
                DType::F32 => buf::<f32>(&mut out)[rows].copy_from_slice(read::<f32>(self.output(idx.len()))),
                DType::F64 => buf::<f64>(&mut out)[rows].copy_from_slice(read::<f64>(self.output(idx.len()))),
            }
        }
        Ok(out)
    }

    /// The model's output on the last batch of `rows` samples, `(rows, outputs)`.
    pub(crate) fn output(&self, rows: usize) -> &Tensor {
        self.reading(rows).1.first().expect("one output")
    }

    /// The last batch of `rows` samples' targets (in the model's dtype) and the model's output
    /// on it (one tensor each: one output).
    pub(crate) fn reading(&self, rows: usize) -> (&[Tensor], &[Tensor]) {
        let b = self.buffers.iter().find(|b| b.rows == rows).expect("a step ran on this batch size");
        (std::slice::from_ref(&b.y), std::slice::from_ref(b.outs.last().expect("a stage at least")))
    }

    /// Each output's targets and the model's output on the last batch of `rows` samples (one
    /// pair per output: the heads' with heads).
    pub(crate) fn outputs(&self, rows: usize) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        let b = self.buffers.iter().find(|b| b.rows == rows).expect("a step ran on this batch size");
        let outputs: &[Buffers] = if b.heads.is_empty() { std::slice::from_ref(b) } else { &b.heads };
        outputs.iter().map(|o| (&o.y, o.outs.last().expect("a stage at least")))
    }

    /// Each output's (unweighted) loss of the last step, with heads; empty for one output.
    pub(crate) fn output_losses(&self) -> &[f64] {
        &self.each
    }

    /// The weights' gradients of the last step, in weight order.
    pub(crate) fn weight_grads(&self) -> &[Tensor] {
        &self.weight_grads
    }

    /// The index of the buffers for batches of `rows` samples (made on first use).
    fn buffers_for(&mut self, rows: usize) -> usize {
        if let Some(i) = self.buffers.iter().position(|b| b.rows == rows) {
            return i;
        }
        let set = Buffers::new(self, rows);
        self.buffers.push(set);
        self.buffers.len() - 1
    }

    /// Steps 1–4 in `T`: gather, forward, loss, backward. Returns the loss.
    fn forward_backward<T: Element>(
        &mut self,
        model: &mut crate::Model,
        x: &Tensor,
        y: &Tensor,
        w: Option<&Tensor>,
        idx: &[usize],
        set: usize,
    ) -> Result<f64> {
        self.gather_and_forward::<T>(model, (x, Some(y), w), idx, set)?;
        let loss = match self.loss_path {
            LossPath::Kernel => {
                let kernel = self.targets::<T>(model, set)?;
                loss_and_gradient::<T>(kernel, self.reduce, &mut self.buffers[set])?
            }
            LossPath::Tape => tape_loss::<T>(model, self.reduce, self.loss_weight, &mut self.buffers[set], true)?,
        };
        let loss = match (self.loss_weight, self.loss_path) {
            (Some(w), LossPath::Kernel) => {
                let b = &mut self.buffers[set];
                weighted::<T>(loss, w, Some(buf::<T>(b.grads.last_mut().expect("a stage at least"))))
            }
            _ => loss,
        };
        let b = &mut self.buffers[set];
        backward::<T>(&self.stages, self.first_trained, &model.trunk, b, &mut self.weight_grads)?;
        // The penalties are added with the optimizer's update (`apply_with_penalties`).
        Ok(loss)
    }

    /// The kernel's targets of buffer set `set` from its batch's targets (sparse labels as
    /// class indices, checked as the loss checks them); the loss' kernel.
    fn targets<'m, T: Element>(&mut self, model: &'m crate::Model, set: usize) -> Result<RowLoss<'m>> {
        let classes = self.stages.last().expect("a stage at least").cols();
        kernel_targets::<T>(model, 0, classes, &mut self.buffers[set])
    }
}

/// Why a layer has no planned form, in words, where known (a layer of the user's own: every
/// built-in layer and activation has one).
fn why_not(l: &dyn Layer) -> String {
    match builtin(l) {
        None => ": a layer of your own trains through the tape".into(),
        Some(_) => String::new(),
    }
}

/// The width of a per-sample `shape` that must be one axis of features.
fn flat(shape: &[usize], l: &dyn Layer) -> std::result::Result<usize, String> {
    match shape {
        [n] => Ok(*n),
        _ => Err(format!("layer {} on inputs of shape {shape:?} per sample (not flat)", l.name())),
    }
}

/// A buffer's values to write (the plan's own tensors: never shared).
fn buf<T: Element>(t: &mut Tensor) -> &mut [T] {
    t.values_mut::<T>().expect("the step's buffers are its own, in the model's dtype")
}

/// A tensor's values to read, in `T`.
fn read<T: Element>(t: &Tensor) -> &[T] {
    t.values::<T>().expect("the model's dtype, standard layout")
}

/// Weight `w` of `layers[layer]`'s values.
fn weight<T: Element>(layers: &[Box<dyn Layer>], layer: usize, w: usize) -> &[T] {
    read::<T>(&layers[layer].param(w).expect("a Dense layer's weights").value)
}
