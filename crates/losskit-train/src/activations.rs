//! Activation functions by Keras name.

use losskit::{Error, Result, Tensor};
use std::fmt;

/// A Keras activation, applied element-wise (softmax/log-softmax over the last axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
}

const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
const SELU_ALPHA: f64 = 1.673_263_242_354_377_2;

impl Activation {
    /// All activations.
    pub const ALL: [Activation; 10] = [
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
    ];

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
        }
    }

    /// Parses a Keras activation name (`"relu"`, `"softmax"`, ...; `"linear"` or `""` for none).
    pub fn parse(name: &str) -> Result<Activation> {
        if name.is_empty() || name == "none" {
            return Ok(Activation::Linear);
        }
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

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        let positive = || -> Result<Tensor> {
            let v: Vec<f64> = x.to_vec::<f64>().into_iter().map(|v| f64::from(u8::from(v > 0.0))).collect();
            Ok(Tensor::from_vec(v, x.shape())?.to_dtype(x.dtype()))
        };
        match self {
            Activation::Linear => Ok(x.clone()),
            Activation::Relu => Ok(x.relu()),
            Activation::Sigmoid => Ok(x.sigmoid()),
            Activation::Softmax => x.softmax(-1),
            Activation::Tanh => Ok(x.tanh()),
            Activation::Gelu => {
                x.mul(&x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)?.erf().add_scalar(1.0)?)?.mul_scalar(0.5)
            }
            Activation::Elu => Tensor::where_cond(&positive()?, x, &x.expm1()),
            Activation::Selu => {
                Tensor::where_cond(&positive()?, x, &x.expm1().mul_scalar(SELU_ALPHA)?)?.mul_scalar(SELU_SCALE)
            }
            Activation::Softplus => Ok(x.softplus()),
            Activation::LogSoftmax => x.log_softmax(-1),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
