//! Layers: Dense, Activation, Flatten, Dropout, and the preprocessing layers Rescaling and
//! Reshape.

use crate::activations::Activation;
use crate::initializers::Initializer;
use crate::regularizers::Regularizer;
use losskit::{DType, Error, Result, Tensor};
use losskit_tensor::random::{self, Rng};
use losskit_tensor::{DenseActivation, Elementwise};
use std::any::Any;

/// A trainable weight: its name inside the model (`"dense/kernel"`) and its current value (a
/// leaf tensor that requires gradients).
#[derive(Debug, Clone)]
pub struct Param {
    /// `"<layer>/<weight>"`, e.g. `"dense_1/bias"`.
    pub name: String,
    /// The current value.
    pub value: Tensor,
}

/// One layer of a model. Shapes are per sample (without the batch axis).
///
/// A layer of your own implements the identity, `build` and `forward` (and its weights, if
/// any); it trains through the tape. The built-in layers also run in the planned step, the
/// fused head and Keras JSON through crate-private hooks (`BuiltinLayer`).
pub trait Layer: Any + Send {
    /// The Keras class name (`"Dense"`).
    fn kind(&self) -> &'static str;
    /// The instance name (`"dense_1"`), set when the model is built.
    fn name(&self) -> &str;
    /// Sets the instance name (and renames the weights).
    fn set_name(&mut self, name: String);
    /// Creates the weights for inputs of per-sample shape `input`; returns the output shape.
    fn build(&mut self, input: &[usize], dtype: DType, rng: &mut Rng) -> Result<Vec<usize>>;
    /// Applies the layer to a batch. `training` switches dropout on.
    fn forward(&self, x: &Tensor, training: bool, rng: &mut Rng) -> Result<Tensor>;
    /// The per-sample output shape, once built.
    fn output_shape(&self) -> Option<&[usize]>;
    /// The trainable weights.
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// The trainable weights, mutably (the optimizer replaces their values).
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
    /// Trainable weight `i` (as `params()[i]`), without building the list.
    fn param(&self, i: usize) -> Option<&Param> {
        self.params().into_iter().nth(i)
    }
    /// Trainable weight `i` to update (as `params_mut()[i]`), without building the list.
    fn param_mut(&mut self, i: usize) -> Option<&mut Param> {
        self.params_mut().into_iter().nth(i)
    }
    /// How many trainable weights (as `params().len()`).
    fn param_count(&self) -> usize {
        self.params().len()
    }
    /// The layer's weight penalty for the loss (e.g. L2 on a Dense kernel), if any.
    fn regularization(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The regularizer, for diagnostics.
    fn regularizer(&self) -> Option<Regularizer> {
        None
    }
}

/// What the trainer needs of a built-in layer beyond [`Layer`]: its planned-step form, its
/// Keras config and (a linear `Dense`) its weights for the fused head. Crate-private: a user's
/// layer has none of these and trains through the tape.
pub(crate) trait BuiltinLayer {
    /// What the planned training step computes for this layer, when it can run it (`None`: a
    /// model with this layer trains through the tape).
    fn step_kind(&self) -> Option<StepLayer> {
        None
    }
    /// The layer's Keras 3 config (`layer.get_config()` without `name`, `trainable` and
    /// `dtype`, which the model adds), for [`Model::to_json`](crate::Model::to_json).
    fn keras_config(&self) -> serde_json::Value;
    /// For a linear `Dense` (no activation): its kernel `(in, units)` and bias, so a
    /// cross-entropy from logits can be fused with it ([`losskit::LinearCrossEntropy`]).
    fn linear_head(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        None
    }
}

/// The built-in layer behind `layer`, if it is one.
pub(crate) fn builtin(layer: &dyn Layer) -> Option<&dyn BuiltinLayer> {
    let any: &dyn Any = layer;
    if let Some(l) = any.downcast_ref::<Dense>() {
        return Some(l);
    }
    if let Some(l) = any.downcast_ref::<Flatten>() {
        return Some(l);
    }
    if let Some(l) = any.downcast_ref::<Dropout>() {
        return Some(l);
    }
    if let Some(l) = any.downcast_ref::<Rescaling>() {
        return Some(l);
    }
    if let Some(l) = any.downcast_ref::<Reshape>() {
        return Some(l);
    }
    any.downcast_ref::<ActivationLayer>().map(|l| l as &dyn BuiltinLayer)
}

/// An activation the planned step runs as a pass of its own (not fused into a product).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Then {
    /// Softmax over each sample's features.
    Softmax,
    /// Log-softmax over each sample's features.
    LogSoftmax,
    /// Sparsemax over each sample's features.
    Sparsemax,
    /// `glu`: each sample's features halved.
    Glu,
    /// An element-wise activation whose derivative needs its input.
    Elementwise(Elementwise),
}

impl Activation {
    /// The pass the planned step runs for this activation when it is not fused into a
    /// product (`None` for the fused ones).
    pub(crate) fn then(self) -> Option<Then> {
        match self {
            Activation::Softmax => Some(Then::Softmax),
            Activation::LogSoftmax => Some(Then::LogSoftmax),
            Activation::Sparsemax => Some(Then::Sparsemax),
            Activation::Glu => Some(Then::Glu),
            a => a.elementwise().map(Then::Elementwise),
        }
    }
}

/// A layer as the allocation-free training step runs it (`BuiltinLayer::step_kind`): on a batch of
/// `rows` samples with one axis of features each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum StepLayer {
    /// `(rows, d1, d2, ...)` → `(rows, d1·d2·...)`: the buffers are already flat.
    Flatten,
    /// Each sample to the layer's output shape: the buffers are flat, nothing moves.
    Reshape,
    /// `x·scale + offset` (the offset added when it is not 0).
    Rescale {
        /// The factor.
        scale: f64,
        /// The offset.
        offset: f64,
    },
    /// Training-time dropout: `x·mask`, `mask` entries `1/(1 - rate)` with probability
    /// `1 - rate`, else 0, drawn from the model's generator as [`Dropout`] draws them.
    Dropout {
        /// The fraction dropped, in `[0, 1)`.
        rate: f64,
    },
    /// An `Activation` layer whose derivative is a function of its output (`activation`).
    Activation {
        /// The activation.
        activation: DenseActivation,
    },
    /// An `Activation` layer of an activation with a pass of its own ([`Then`]).
    Then(Then),
    /// `act(x·W + b)` with weights `[W (inputs, units), b (units)]` (`b` when `bias`), then
    /// the activation `then` when given (and `activation` is linear).
    Dense {
        /// Features out.
        units: usize,
        /// The activation fused with the product.
        activation: DenseActivation,
        /// An activation with a pass of its own that follows.
        then: Option<Then>,
        /// Whether the layer has a bias (weight 1).
        bias: bool,
        /// The kernel's and the bias' regularizers.
        regularizers: [Option<Regularizer>; 2],
    },
}

/// `kind`, `name`, `set_name` and `output_shape` of a layer with `name: String` and
/// `output: Option<Vec<usize>>` fields and no weights.
macro_rules! layer_identity {
    ($kind:literal) => {
        fn kind(&self) -> &'static str {
            $kind
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn set_name(&mut self, name: String) {
            self.name = name;
        }
        fn output_shape(&self) -> Option<&[usize]> {
            self.output.as_deref()
        }
    };
}

mod preprocessing;
pub use preprocessing::{Rescaling, Reshape};

/// Fully connected layer: `y = activation(x·W + b)`, `W: (in, units)`, `b: (units,)`.
///
/// Shapes: `(B, ..., in)` → `(B, ..., units)`. Defaults as Keras: no activation, a bias,
/// `glorot_uniform` kernel, zero bias.
#[derive(Debug, Clone)]
pub struct Dense {
    name: String,
    units: usize,
    activation: Activation,
    use_bias: bool,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    /// Seeds of the initializers (Keras' `seed`): a seeded initializer draws from its own
    /// generator, the same values whatever the model's seed.
    kernel_seed: Option<u64>,
    bias_seed: Option<u64>,
    kernel_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
    kernel: Option<Param>,
    bias: Option<Param>,
    output: Option<Vec<usize>>,
}

impl Dense {
    /// A Dense layer with `units` outputs.
    pub fn new(units: usize) -> Dense {
        Dense {
            name: "dense".into(),
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::GlorotUniform,
            bias_initializer: Initializer::Zeros,
            kernel_seed: None,
            bias_seed: None,
            kernel_regularizer: None,
            bias_regularizer: None,
            kernel: None,
            bias: None,
            output: None,
        }
    }
    /// Sets the activation by Keras name (`"relu"`, `"softmax"`, ...).
    pub fn activation(mut self, name: &str) -> Result<Dense> {
        self.activation = Activation::parse(name)?;
        Ok(self)
    }
    /// Sets the activation as a value: also those no Keras name selects
    /// (`Activation::Threshold { .. }`, `Activation::GeluApproximate`).
    pub fn with_activation(mut self, activation: Activation) -> Dense {
        self.activation = activation;
        self
    }
    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, on: bool) -> Dense {
        self.use_bias = on;
        self
    }
    /// Sets the kernel initializer by Keras name (`"glorot_uniform"`, `"he_normal"`, ...).
    pub fn kernel_initializer(mut self, name: &str) -> Result<Dense> {
        self.kernel_initializer = Initializer::parse(name)?;
        Ok(self)
    }
    /// Sets the kernel initializer.
    pub fn with_kernel_initializer(mut self, init: Initializer) -> Dense {
        self.kernel_initializer = init;
        self
    }
    /// Seeds the kernel initializer (Keras' `kernel_initializer=HeNormal(seed=3)`): the kernel
    /// is drawn from `seed`'s own generator instead of the model's.
    pub fn kernel_initializer_seed(mut self, seed: Option<u64>) -> Dense {
        self.kernel_seed = seed;
        self
    }
    /// Sets the bias initializer (default zeros).
    pub fn with_bias_initializer(mut self, init: Initializer) -> Dense {
        self.bias_initializer = init;
        self
    }
    /// Seeds the bias initializer (see [`Dense::kernel_initializer_seed`]).
    pub fn bias_initializer_seed(mut self, seed: Option<u64>) -> Dense {
        self.bias_seed = seed;
        self
    }
    /// Adds a penalty on the kernel to the loss (Keras' `kernel_regularizer`).
    pub fn kernel_regularizer(mut self, r: Regularizer) -> Dense {
        self.kernel_regularizer = Some(r);
        self
    }
    /// Adds a penalty on the bias to the loss (Keras' `bias_regularizer`).
    pub fn bias_regularizer(mut self, r: Regularizer) -> Dense {
        self.bias_regularizer = Some(r);
        self
    }
    /// The number of outputs.
    pub fn units(&self) -> usize {
        self.units
    }
    /// The activation.
    pub fn activation_fn(&self) -> Activation {
        self.activation
    }
}

impl Layer for Dense {
    fn kind(&self) -> &'static str {
        "Dense"
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        if let Some(k) = &mut self.kernel {
            k.name = format!("{name}/kernel");
        }
        if let Some(b) = &mut self.bias {
            b.name = format!("{name}/bias");
        }
        self.name = name;
    }
    fn build(&mut self, input: &[usize], dtype: DType, rng: &mut Rng) -> Result<Vec<usize>> {
        let Some(&fan_in) = input.last() else {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: "Dense needs inputs with at least one feature axis, got scalars per sample".into(),
            });
        };
        if self.units == 0 {
            return Err(Error::invalid_parameter("Dense", "units", "0", "units >= 1"));
        }
        let kernel = seeded_init(self.kernel_initializer, self.kernel_seed, &[fan_in, self.units], dtype, rng)?;
        self.kernel = Some(Param { name: format!("{}/kernel", self.name), value: kernel });
        if self.use_bias {
            let bias = seeded_init(self.bias_initializer, self.bias_seed, &[self.units], dtype, rng)?;
            self.bias = Some(Param { name: format!("{}/bias", self.name), value: bias });
        }
        let mut out = input.to_vec();
        *out.last_mut().expect("non-empty") = self.units;
        let out = self.activation.output_shape(&out).map_err(|e| in_layer(&self.name, e))?;
        self.output = Some(out.clone());
        Ok(out)
    }
    fn forward(&self, x: &Tensor, _training: bool, _rng: &mut Rng) -> Result<Tensor> {
        let kernel = self
            .kernel
            .as_ref()
            .ok_or_else(|| Error::Shape { op: self.name.clone(), msg: "layer is not built".into() })?;
        let fan_in = kernel.value.shape()[0];
        if x.shape().last() != Some(&fan_in) {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("expected inputs with {fan_in} features on the last axis, got shape {:?}", x.shape()),
            });
        }
        let flat = x.rank() != 2;
        let x2 = if flat { x.reshape(&[-1, fan_in as isize])? } else { x.clone() };
        // One node for the product, the bias and an activation whose derivative comes from its
        // output; the others (softmax, gelu, ...) follow as their own ops.
        let fused = self.activation.dense_activation();
        let mut y =
            x2.dense(&kernel.value, self.bias.as_ref().map(|b| &b.value), fused.unwrap_or(DenseActivation::Linear))?;
        if flat {
            let mut shape: Vec<isize> = x.shape().iter().map(|&d| d as isize).collect();
            *shape.last_mut().expect("rank >= 1") = self.units as isize;
            y = y.reshape(&shape)?;
        }
        match fused {
            Some(_) => Ok(y),
            None => self.activation.apply(&y),
        }
    }
    fn output_shape(&self) -> Option<&[usize]> {
        self.output.as_deref()
    }
    fn params(&self) -> Vec<&Param> {
        self.kernel.iter().chain(self.bias.iter()).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.kernel.iter_mut().chain(self.bias.iter_mut()).collect()
    }
    fn param(&self, i: usize) -> Option<&Param> {
        match i {
            0 => self.kernel.as_ref().or(self.bias.as_ref()),
            1 => self.kernel.as_ref().and(self.bias.as_ref()),
            _ => None,
        }
    }
    fn param_mut(&mut self, i: usize) -> Option<&mut Param> {
        match (i, self.kernel.is_some()) {
            (0, true) => self.kernel.as_mut(),
            (0, false) | (1, true) => self.bias.as_mut(),
            _ => None,
        }
    }
    fn param_count(&self) -> usize {
        usize::from(self.kernel.is_some()) + usize::from(self.bias.is_some())
    }
    fn regularization(&self) -> Result<Option<Tensor>> {
        let kernel = match (&self.kernel_regularizer, &self.kernel) {
            (Some(r), Some(k)) => Some(r.penalty(&k.value)?),
            _ => None,
        };
        let bias = match (&self.bias_regularizer, &self.bias) {
            (Some(r), Some(b)) => Some(r.penalty(&b.value)?),
            _ => None,
        };
        match (kernel, bias) {
            (Some(k), Some(b)) => k.add(&b).map(Some),
            (k, b) => Ok(k.or(b)),
        }
    }
    fn regularizer(&self) -> Option<Regularizer> {
        self.kernel_regularizer.or(self.bias_regularizer)
    }
}

impl BuiltinLayer for Dense {
    fn step_kind(&self) -> Option<StepLayer> {
        // Built (its kernel exists) or nothing to plan yet.
        self.kernel.as_ref()?;
        let (activation, then) = match (self.activation.dense_activation(), self.activation.then()) {
            (Some(a), _) => (a, None),
            (None, Some(then)) => (DenseActivation::Linear, Some(then)),
            (None, None) => return None,
        };
        Some(StepLayer::Dense {
            units: self.units,
            activation,
            then,
            bias: self.bias.is_some(),
            regularizers: [self.kernel_regularizer, self.bias_regularizer.filter(|_| self.bias.is_some())],
        })
    }

    fn keras_config(&self) -> serde_json::Value {
        use crate::initializers::initializer_json;
        use crate::regularizers::regularizer_json;
        serde_json::json!({
            "units": self.units,
            "activation": self.activation.name(),
            "use_bias": self.use_bias,
            "kernel_initializer": initializer_json(self.kernel_initializer, self.kernel_seed),
            "bias_initializer": initializer_json(self.bias_initializer, self.bias_seed),
            "kernel_regularizer": self.kernel_regularizer.map(regularizer_json),
            "bias_regularizer": self.bias_regularizer.map(regularizer_json),
            "kernel_constraint": null,
            "bias_constraint": null,
        })
    }

    fn linear_head(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        let kernel = self.kernel.as_ref()?;
        (self.activation == Activation::Linear).then(|| (&kernel.value, self.bias.as_ref().map(|b| &b.value)))
    }
}

/// A shape error re-attributed to the layer `name` (an activation's own check names the
/// activation, the user knows the layer).
fn in_layer(name: &str, e: Error) -> Error {
    match e {
        Error::Shape { op, msg } => Error::Shape { op: format!("{name} ({op})"), msg },
        other => other,
    }
}

/// A weight from `init`: from `seed`'s own generator when seeded, else from the model's.
fn seeded_init(init: Initializer, seed: Option<u64>, shape: &[usize], dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let t = match seed {
        Some(s) => init.init(shape, dtype, &mut random::rng(s))?,
        None => init.init(shape, dtype, rng)?,
    };
    Ok(t.requires_grad())
}

/// Applies an activation function: `(B, ...)` → `(B, ...)`.
#[derive(Debug, Clone)]
pub struct ActivationLayer {
    name: String,
    activation: Activation,
    output: Option<Vec<usize>>,
}

impl ActivationLayer {
    /// The activation it applies.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// An activation layer by Keras name.
    pub fn new(name: &str) -> Result<ActivationLayer> {
        Ok(ActivationLayer::of(Activation::parse(name)?))
    }
    /// An activation layer applying `activation` (also one no Keras name selects).
    pub fn of(activation: Activation) -> ActivationLayer {
        ActivationLayer { name: "activation".into(), activation, output: None }
    }
}

impl Layer for ActivationLayer {
    layer_identity!("Activation");
    fn build(&mut self, input: &[usize], _dtype: DType, _rng: &mut Rng) -> Result<Vec<usize>> {
        let out = self.activation.output_shape(input).map_err(|e| in_layer(&self.name, e))?;
        self.output = Some(out.clone());
        Ok(out)
    }
    fn forward(&self, x: &Tensor, _training: bool, _rng: &mut Rng) -> Result<Tensor> {
        self.activation.apply(x)
    }
}

impl BuiltinLayer for ActivationLayer {
    fn step_kind(&self) -> Option<StepLayer> {
        match (self.activation.dense_activation(), self.activation.then()) {
            (Some(activation), _) => Some(StepLayer::Activation { activation }),
            (None, then) => then.map(StepLayer::Then),
        }
    }
    fn keras_config(&self) -> serde_json::Value {
        serde_json::json!({ "activation": self.activation.name() })
    }
}

/// Flattens each sample: `(B, d1, d2, ...)` → `(B, d1·d2·...)`.
#[derive(Debug, Clone, Default)]
pub struct Flatten {
    name: String,
    output: Option<Vec<usize>>,
}

impl Flatten {
    /// A Flatten layer.
    pub fn new() -> Flatten {
        Flatten { name: "flatten".into(), output: None }
    }
}

impl Layer for Flatten {
    layer_identity!("Flatten");
    fn build(&mut self, input: &[usize], _dtype: DType, _rng: &mut Rng) -> Result<Vec<usize>> {
        let out = vec![input.iter().product()];
        self.output = Some(out.clone());
        Ok(out)
    }
    fn forward(&self, x: &Tensor, _training: bool, _rng: &mut Rng) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(Error::Shape { op: self.name.clone(), msg: "cannot flatten a scalar".into() });
        }
        x.reshape(&[x.shape()[0] as isize, -1])
    }
}

impl BuiltinLayer for Flatten {
    fn step_kind(&self) -> Option<StepLayer> {
        Some(StepLayer::Flatten)
    }

    fn keras_config(&self) -> serde_json::Value {
        serde_json::json!({ "data_format": "channels_last" })
    }
}

/// Dropout: in training, zeroes each input with probability `rate` and scales the rest by
/// `1/(1 - rate)`; at inference it is the identity. Shapes unchanged.
#[derive(Debug, Clone)]
pub struct Dropout {
    name: String,
    rate: f64,
    output: Option<Vec<usize>>,
}

impl Dropout {
    /// A Dropout layer; `rate` must be in `[0, 1)`.
    pub fn new(rate: f64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::invalid_parameter("Dropout", "rate", rate, "a number in [0, 1)"));
        }
        Ok(Dropout { name: "dropout".into(), rate, output: None })
    }
}

impl Layer for Dropout {
    layer_identity!("Dropout");
    fn build(&mut self, input: &[usize], _dtype: DType, _rng: &mut Rng) -> Result<Vec<usize>> {
        self.output = Some(input.to_vec());
        Ok(input.to_vec())
    }
    fn forward(&self, x: &Tensor, training: bool, rng: &mut Rng) -> Result<Tensor> {
        if !training || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.rate;
        let mask = random::mask(x.shape(), keep, 1.0 / keep, x.dtype(), rng)?;
        x.mul(&mask)
    }
}

impl BuiltinLayer for Dropout {
    fn step_kind(&self) -> Option<StepLayer> {
        Some(StepLayer::Dropout { rate: self.rate })
    }

    fn keras_config(&self) -> serde_json::Value {
        serde_json::json!({ "rate": self.rate, "seed": null, "noise_shape": null })
    }
}
