//! `compile`: the loss (one for all outputs, or one per output), loss weights, the optimizer
//! and the metrics.

use crate::metrics;
use crate::optimizers::Optimizer;
use losskit::{CustomLoss, Error, Loss, Result, Tensor};
use std::sync::Arc;

/// A loss for `compile`: a Keras name or alias, or a loss object.
#[derive(Clone)]
pub enum LossArg {
    /// `"sparse_categorical_crossentropy"`, `"mse"`, ...
    Name(String),
    /// A built-in loss struct, a [`CustomLoss`], or any type implementing [`Loss`].
    Object(Arc<dyn Loss>),
}

impl From<&str> for LossArg {
    fn from(s: &str) -> Self {
        LossArg::Name(s.to_string())
    }
}
impl From<String> for LossArg {
    fn from(s: String) -> Self {
        LossArg::Name(s)
    }
}
impl From<Box<dyn Loss>> for LossArg {
    fn from(l: Box<dyn Loss>) -> Self {
        LossArg::Object(Arc::from(l))
    }
}
impl From<Arc<dyn Loss>> for LossArg {
    fn from(l: Arc<dyn Loss>) -> Self {
        LossArg::Object(l)
    }
}
impl From<CustomLoss> for LossArg {
    fn from(l: CustomLoss) -> Self {
        LossArg::Object(Arc::new(l))
    }
}

impl LossArg {
    fn resolve(&self) -> Result<Arc<dyn Loss>> {
        match self {
            LossArg::Name(n) => Ok(Arc::from(losskit::get(n)?)),
            LossArg::Object(l) => Ok(l.clone()),
        }
    }
}

/// The optimizer for `compile`: a name (`"sgd"`, `"adam"`, ...) or a configured [`Optimizer`].
#[derive(Debug, Clone)]
pub enum OptimizerArg {
    /// A Keras name, with Keras' defaults.
    Name(String),
    /// A configured optimizer (boxed: it is much larger than a name).
    Optimizer(Box<Optimizer>),
}

impl From<&str> for OptimizerArg {
    fn from(s: &str) -> Self {
        OptimizerArg::Name(s.to_string())
    }
}
impl From<Optimizer> for OptimizerArg {
    fn from(o: Optimizer) -> Self {
        OptimizerArg::Optimizer(Box::new(o))
    }
}

/// Keras' `compile(...)` arguments, as a builder:
///
/// ```
/// use losskit_train::Compile;
/// let c = Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]);
/// ```
#[derive(Clone)]
pub struct Compile {
    optimizer: OptimizerArg,
    loss: Option<LossArg>,
    per_output: Vec<(String, LossArg)>,
    loss_weights: Vec<(Option<String>, f64)>,
    metrics: Vec<String>,
    fused_head: Option<bool>,
    planned_step: Option<bool>,
}

impl Default for Compile {
    fn default() -> Self {
        Compile {
            optimizer: OptimizerArg::Name("rmsprop".into()),
            loss: None,
            per_output: vec![],
            loss_weights: vec![],
            metrics: vec![],
            fused_head: None,
            planned_step: None,
        }
    }
}

impl Compile {
    /// Keras' defaults: `rmsprop`, no loss yet, no metrics.
    pub fn new() -> Compile {
        Compile::default()
    }
    /// The optimizer (a name or an [`Optimizer`]).
    pub fn optimizer(mut self, o: impl Into<OptimizerArg>) -> Compile {
        self.optimizer = o.into();
        self
    }
    /// One loss for every output (a name, a boxed loss, a [`CustomLoss`]...).
    pub fn loss(mut self, l: impl Into<LossArg>) -> Compile {
        self.loss = Some(l.into());
        self
    }
    /// One loss for every output, from any loss struct.
    pub fn loss_obj(mut self, l: impl Loss + 'static) -> Compile {
        self.loss = Some(LossArg::Object(Arc::new(l)));
        self
    }
    /// A custom loss from a closure returning per-sample values.
    pub fn loss_fn(
        mut self,
        name: &str,
        f: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Compile {
        self.loss = Some(LossArg::Object(Arc::new(CustomLoss::new(name, f))));
        self
    }
    /// The loss of the output named `output` (multi-output models).
    pub fn loss_for(mut self, output: &str, l: impl Into<LossArg>) -> Compile {
        self.per_output.push((output.to_string(), l.into()));
        self
    }
    /// Loss weights by output order: total loss `Σ wᵢ·Lᵢ`.
    pub fn loss_weights(mut self, w: &[f64]) -> Compile {
        self.loss_weights = w.iter().map(|&v| (None, v)).collect();
        self
    }
    /// The loss weight of the output named `output`.
    pub fn loss_weight(mut self, output: &str, w: f64) -> Compile {
        self.loss_weights.push((Some(output.to_string()), w));
        self
    }
    /// Metrics by name (`"accuracy"`, `"mae"`, ...), for every output.
    pub fn metrics(mut self, names: &[&str]) -> Compile {
        self.metrics = names.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Whether the last layer and the loss train as one fused node, the logits never
    /// materialised ([`losskit::LinearCrossEntropy`]): possible for one output whose last layer
    /// is a linear `Dense`, with `SparseCategoricalCrossentropy(from_logits=true)` (reduction
    /// `sum_over_batch_size`, `mean`, `sum` or `mean_with_sample_weight`) or `LinearCrossEntropy`
    /// as the loss, and no metrics (they need the logits). `None` (the default): whenever
    /// possible; `Some(true)`: always, `fit` and `evaluate` fail with the reason when it is not
    /// possible; `Some(false)`: never.
    pub fn fused_head(mut self, on: Option<bool>) -> Compile {
        self.fused_head = on;
        self
    }
    /// Whether `fit` trains through the planned step: without the tape, over buffers kept
    /// across steps, so that a warm step allocates nothing (the same weights and History, bit
    /// for bit, as the tape's step). Possible for a model whose layers are `Flatten`,
    /// `Dropout` and `Dense` (activation linear, relu, sigmoid, tanh, or softmax), with no
    /// regularizer, one output, `SparseCategoricalCrossentropy` (no `ignore_class`) or
    /// `CategoricalCrossentropy` (last axis, no class weights) with a reduction other than
    /// `none`, no loss weight, and `fit` on one worker (with or without `class_weight` or one
    /// `sample_weight` per sample). `None` (the default): whenever possible; `Some(true)`:
    /// always, `fit` fails with the reason when it is not possible; `Some(false)`: never (the
    /// tape's step).
    pub fn planned_step(mut self, on: Option<bool>) -> Compile {
        self.planned_step = on;
        self
    }
}

/// What `compile` stored in the model.
pub(crate) struct Compiled {
    pub optimizer: Optimizer,
    pub losses: Vec<Arc<dyn Loss>>,
    pub loss_weights: Vec<Option<f64>>,
    pub metric_names: Vec<String>,
    pub fused_head: Option<bool>,
    pub planned_step: Option<bool>,
}

impl Compile {
    /// What [`Model::compile`](crate::Model::compile) stores for a model with the outputs
    /// `names`: the optimizer, one loss and loss weight per output, the metrics; unknown
    /// names, a loss missing for an output, or loss weights that do not match the outputs
    /// are errors.
    pub(crate) fn resolve(self, names: &[String]) -> Result<Compiled> {
        let c = self;
        let optimizer = match c.optimizer {
            OptimizerArg::Name(n) => Optimizer::parse(&n)?,
            OptimizerArg::Optimizer(o) => *o,
        };
        let losses: Vec<Arc<dyn Loss>> = if c.per_output.is_empty() {
            let l = c.loss.ok_or_else(|| Error::Config("compile: no loss given".into()))?;
            let l = l.resolve()?;
            names.iter().map(|_| l.clone()).collect()
        } else {
            for (n, _) in &c.per_output {
                if !names.contains(n) {
                    return Err(Error::Config(format!(
                        "compile: loss for unknown output {n:?}; outputs are {names:?}"
                    )));
                }
            }
            names
                .iter()
                .map(|n| match c.per_output.iter().find(|(o, _)| o == n) {
                    Some((_, l)) => l.resolve(),
                    None => match &c.loss {
                        Some(l) => l.resolve(),
                        None => Err(Error::Config(format!("compile: no loss for output {n:?}"))),
                    },
                })
                .collect::<Result<_>>()?
        };
        let mut loss_weights = vec![None; names.len()];
        let by_position = c.loss_weights.iter().all(|(n, _)| n.is_none());
        if by_position && !c.loss_weights.is_empty() {
            if c.loss_weights.len() != names.len() {
                return Err(Error::Config(format!(
                    "compile: {} loss weights for {} outputs {names:?}",
                    c.loss_weights.len(),
                    names.len()
                )));
            }
            loss_weights = c.loss_weights.iter().map(|(_, w)| Some(*w)).collect();
        } else {
            for (n, w) in &c.loss_weights {
                let Some(n) = n else {
                    return Err(Error::Config("compile: mix of positional and named loss weights".into()));
                };
                let i = names.iter().position(|x| x == n).ok_or_else(|| {
                    Error::Config(format!("compile: loss weight for unknown output {n:?}; outputs are {names:?}"))
                })?;
                loss_weights[i] = Some(*w);
            }
        }
        for m in &c.metrics {
            metrics::check_name(m)?;
        }
        Ok(Compiled {
            optimizer,
            losses,
            loss_weights,
            metric_names: c.metrics,
            fused_head: c.fused_head,
            planned_step: c.planned_step,
        })
    }
}
