//! Activation functions by Keras name.

use losskit::{Error, Result, Tensor};
use losskit_tensor::Elementwise;
use std::fmt;

/// A Keras activation, applied element-wise (softmax, log-softmax, sparsemax and glu over the
/// last axis).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    /// `x` (Keras' `None`/`"linear"`).
    #[default]
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e⁻ˣ)`.
    Sigmoid,
    /// `eˣ / Σ eˣ` over the last axis.
    Softmax,
    /// `tanh x`.
    Tanh,
    /// `x·(1 + erf(x/√2))/2` (exact, Keras' default `approximate=False`).
    Gelu,
    /// `x` if `x > 0` else `eˣ - 1`.
    Elu,
    /// `λ·elu_α(x)` with `λ = 1.0507009873554805`, `α = 1.6732632423543772`.
    Selu,
    /// `ln(1 + eˣ)`.
    Softplus,
    /// `x - logsumexp(x)` over the last axis.
    LogSoftmax,
    /// `x` if `x ≥ 0` else `0.2·x` (Keras' default `negative_slope`).
    LeakyRelu,
    /// `min(max(x, 0), 6)`; gradient 1 strictly between 0 and 6.
    Relu6,
    /// `x·σ(x)` (Keras' `silu`, alias `swish`).
    Silu,
    /// `relu6(x + 3)/6`; gradient `1/6` strictly between -3 and 3.
    HardSigmoid,
    /// `x·hard_sigmoid(x)` (alias `hard_swish`).
    HardSilu,
    /// `clip(x, -1, 1)`; gradient 1 on `[-1, 1]`.
    HardTanh,
    /// `x` where `|x| > 0.5`, else 0.
    HardShrink,
    /// `x - 0.5` above 0.5, `x + 0.5` below -0.5, else 0.
    SoftShrink,
    /// `x - tanh x`.
    TanhShrink,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x·tanh(softplus(x))`.
    Mish,
    /// `eˣ`.
    Exponential,
    /// `-softplus(-x)`, i.e. `ln σ(x)`.
    LogSigmoid,
    /// `x` if `x > 0` else `eˣ - 1` (Keras' default `alpha = 1`).
    Celu,
    /// `0` for `x ≤ -1`, `(x + 1)²/4` between, `x` for `x ≥ 1`.
    SparsePlus,
    /// `0` for `x ≤ -1`, `(x + 1)/2` between, `1` for `x ≥ 1`.
    SparseSigmoid,
    /// `(x + √(x² + 4))/2` (Keras' default `b = 4`).
    Squareplus,
    /// `max(x - τ, 0)` over the last axis, with `τ` the threshold that makes each row sum to 1
    /// (Keras' `sparsemax`): sparse probabilities. Gradient `dy - mean(dy over the support)`
    /// on the support, 0 off it.
    Sparsemax,
    /// `a·σ(b)`, with `a` and `b` the first and second halves of the last axis (Keras' `glu`):
    /// `(B, ..., 2n)` → `(B, ..., n)`; the last axis must be even.
    Glu,
    /// `x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2` (Keras' `gelu(x, approximate=True)`). No Keras
    /// model file can name it (a config's `"gelu"` is the exact one): a model using it is not
    /// written as Keras JSON.
    GeluApproximate,
    /// `x` where `x > threshold`, else `default_value` (Keras' `threshold`). Its arguments
    /// have no place in a Keras model file: a model using it is not written as Keras JSON.
    Threshold {
        /// The value `x` must exceed to be kept.
        threshold: f64,
        /// What replaces `x` at or below the threshold.
        default_value: f64,
    },
}

impl Activation {
    /// Every activation a Keras name selects (all but [`Activation::GeluApproximate`] and
    /// [`Activation::Threshold`], which take arguments).
    pub const ALL: [Activation; 29] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Softmax,
        Activation::Tanh,
        Activation::Gelu,
        Activation::Elu,
        Activation::Selu,
        Activation::Softplus,
        Activation::LogSoftmax,
        Activation::LeakyRelu,
        Activation::Relu6,
        Activation::Silu,
        Activation::HardSigmoid,
        Activation::HardSilu,
        Activation::HardTanh,
        Activation::HardShrink,
        Activation::SoftShrink,
        Activation::TanhShrink,
        Activation::Softsign,
        Activation::Mish,
        Activation::Exponential,
        Activation::LogSigmoid,
        Activation::Celu,
        Activation::SparsePlus,
        Activation::SparseSigmoid,
        Activation::Squareplus,
        Activation::Sparsemax,
        Activation::Glu,
    ];

    /// Whether a Keras model file can name it (all but the two that take arguments).
    pub fn has_keras_name(self) -> bool {
        !matches!(self, Activation::GeluApproximate | Activation::Threshold { .. })
    }

    /// The shape of the activation's output for an input of shape `input`: the same, except
    /// [`Activation::Glu`], which halves the last axis (an error when it is odd or missing).
    pub fn output_shape(self, input: &[usize]) -> Result<Vec<usize>> {
        let mut out = input.to_vec();
        if self == Activation::Glu {
            match out.last_mut() {
                Some(d) if *d % 2 == 0 => *d /= 2,
                _ => {
                    return Err(Error::Shape {
                        op: "glu".into(),
                        msg: format!("glu splits the last axis in two halves: it must be even, got shape {input:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Keras' name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
            Activation::Elu => "elu",
            Activation::Selu => "selu",
            Activation::Softplus => "softplus",
            Activation::LogSoftmax => "log_softmax",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Relu6 => "relu6",
            Activation::Silu => "silu",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::HardSilu => "hard_silu",
            Activation::HardTanh => "hard_tanh",
            Activation::HardShrink => "hard_shrink",
            Activation::SoftShrink => "soft_shrink",
            Activation::TanhShrink => "tanh_shrink",
            Activation::Softsign => "softsign",
            Activation::Mish => "mish",
            Activation::Exponential => "exponential",
            Activation::LogSigmoid => "log_sigmoid",
            Activation::Celu => "celu",
            Activation::SparsePlus => "sparse_plus",
            Activation::SparseSigmoid => "sparse_sigmoid",
            Activation::Squareplus => "squareplus",
            Activation::Sparsemax => "sparsemax",
            Activation::Glu => "glu",
            Activation::GeluApproximate => "gelu_approximate",
            Activation::Threshold { .. } => "threshold",
        }
    }

    /// Parses a Keras activation name (`"relu"`, `"softmax"`, ...; `"linear"` or `""` for none).
    pub fn parse(name: &str) -> Result<Activation> {
        if name.is_empty() || name == "none" {
            return Ok(Activation::Linear);
        }
        // Keras' aliases.
        let name = match name {
            "swish" => "silu",
            "hard_swish" => "hard_silu",
            other => other,
        };
        Activation::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| Error::UnknownName {
            kind: "activation".into(),
            name: name.into(),
            suggestions: Activation::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The same activation applied inside a fused [`Tensor::dense`] node, when it can be
    /// (linear, relu, sigmoid, tanh: their derivatives are functions of their outputs).
    pub fn dense_activation(self) -> Option<losskit_tensor::DenseActivation> {
        use losskit_tensor::DenseActivation as D;
        match self {
            Activation::Linear => Some(D::Linear),
            Activation::Relu => Some(D::Relu),
            Activation::Sigmoid => Some(D::Sigmoid),
            Activation::Tanh => Some(D::Tanh),
            _ => None,
        }
    }

    /// The element-wise op computing it (value and derivative per element, shared by the tape
    /// and the planned step), for all but linear, relu, sigmoid, tanh (fused into `Dense`
    /// nodes: [`Activation::dense_activation`]) and the four over the last axis.
    pub fn elementwise(self) -> Option<Elementwise> {
        Some(match self {
            Activation::Gelu => Elementwise::Gelu,
            Activation::GeluApproximate => Elementwise::GeluApproximate,
            Activation::Elu | Activation::Celu => Elementwise::Elu,
            Activation::Selu => Elementwise::Selu,
            Activation::Softplus => Elementwise::Softplus,
            Activation::LeakyRelu => Elementwise::LeakyRelu,
            Activation::Relu6 => Elementwise::Relu6,
            Activation::Silu => Elementwise::Silu,
            Activation::HardSigmoid => Elementwise::HardSigmoid,
            Activation::HardSilu => Elementwise::HardSilu,
            Activation::HardTanh => Elementwise::HardTanh,
            Activation::HardShrink => Elementwise::HardShrink,
            Activation::SoftShrink => Elementwise::SoftShrink,
            Activation::TanhShrink => Elementwise::TanhShrink,
            Activation::Softsign => Elementwise::Softsign,
            Activation::Mish => Elementwise::Mish,
            Activation::Exponential => Elementwise::Exponential,
            Activation::LogSigmoid => Elementwise::LogSigmoid,
            Activation::SparsePlus => Elementwise::SparsePlus,
            Activation::SparseSigmoid => Elementwise::SparseSigmoid,
            Activation::Squareplus => Elementwise::Squareplus,
            Activation::Threshold { threshold, default_value } => Elementwise::Threshold { threshold, default_value },
            Activation::Linear
            | Activation::Relu
            | Activation::Sigmoid
            | Activation::Tanh
            | Activation::Softmax
            | Activation::LogSoftmax
            | Activation::Sparsemax
            | Activation::Glu => return None,
        })
    }

    /// Applies the activation: one tape node each (the element-wise ones through
    /// [`Activation::elementwise`], whose piecewise formulas take the piece JAX takes at a
    /// kink: relu6 0 at 0 and 6, hard_tanh 1 at ±1, leaky_relu 1 at 0, the shrinks 0 at ±0.5);
    /// NaN goes through.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        if let Some(kind) = self.elementwise() {
            return Ok(x.elementwise(kind));
        }
        match self {
            Activation::Relu => Ok(x.relu()),
            Activation::Sigmoid => Ok(x.sigmoid()),
            Activation::Softmax => x.softmax(-1),
            Activation::Tanh => Ok(x.tanh()),
            Activation::LogSoftmax => x.log_softmax(-1),
            Activation::Sparsemax => x.sparsemax(),
            Activation::Glu => x.glu(),
            // Linear (the element-wise ones returned above).
            _ => Ok(x.clone()),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
