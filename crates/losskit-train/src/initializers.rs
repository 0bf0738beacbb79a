//! Weight initializers with Keras' names and defaults.

use losskit::{DType, Error, Result, Tensor};
use losskit_tensor::random::{self, Rng};
use serde_json::{json, Value};

/// How a weight tensor is filled at build time. For a Dense kernel `(fan_in, fan_out)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Initializer {
    /// `U(-l, l)`, `l = √(6 / (fan_in + fan_out))` (Keras' default for kernels).
    GlorotUniform,
    /// Truncated normal, `σ = √(2 / (fan_in + fan_out)) / 0.8796`.
    GlorotNormal,
    /// Truncated normal, `σ = √(2 / fan_in) / 0.8796`.
    HeNormal,
    /// `U(-l, l)`, `l = √(6 / fan_in)`.
    HeUniform,
    /// Truncated normal, `σ = √(1 / fan_in) / 0.8796`.
    LecunNormal,
    /// `U(-l, l)`, `l = √(3 / fan_in)`.
    LecunUniform,
    /// `U(min, max)`; Keras' `"uniform"` is `U(-0.05, 0.05)`.
    Uniform {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// `N(mean, stddev²)`; Keras' `"normal"` is `N(0, 0.05²)`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
    },
    /// All zeros (Keras' default for biases).
    Zeros,
    /// All ones.
    Ones,
}

/// Keras' correction so a normal truncated at ±2σ keeps the intended variance.
const TRUNCATION_STDDEV: f64 = 0.879_625_661_034_239_8;

impl Initializer {
    /// Parses a Keras initializer name.
    pub fn parse(name: &str) -> Result<Initializer> {
        Ok(match name {
            "glorot_uniform" => Initializer::GlorotUniform,
            "glorot_normal" => Initializer::GlorotNormal,
            "he_normal" => Initializer::HeNormal,
            "he_uniform" => Initializer::HeUniform,
            "lecun_normal" => Initializer::LecunNormal,
            "lecun_uniform" => Initializer::LecunUniform,
            "uniform" | "random_uniform" => Initializer::Uniform { min: -0.05, max: 0.05 },
            "normal" | "random_normal" => Initializer::Normal { mean: 0.0, stddev: 0.05 },
            "zeros" => Initializer::Zeros,
            "ones" => Initializer::Ones,
            other => {
                return Err(Error::UnknownName {
                    kind: "initializer".into(),
                    name: other.into(),
                    suggestions: "glorot_uniform, glorot_normal, he_normal, he_uniform, lecun_normal, lecun_uniform, uniform, normal, zeros, ones".into(),
                })
            }
        })
    }

    /// A tensor of `shape` (`[fan_in, fan_out]` for kernels, `[n]` for biases).
    pub fn init(&self, shape: &[usize], dtype: DType, rng: &mut Rng) -> Result<Tensor> {
        let fan_in = if shape.len() >= 2 { shape[0] } else { shape.first().copied().unwrap_or(1) } as f64;
        let fan_out = shape.last().copied().unwrap_or(1) as f64;
        let uniform = |limit: f64, rng: &mut Rng| random::uniform(shape, -limit, limit, dtype, rng);
        let truncated = |scale: f64, rng: &mut Rng| {
            random::truncated_normal(shape, 0.0, scale.sqrt() / TRUNCATION_STDDEV, dtype, rng)
        };
        match *self {
            Initializer::GlorotUniform => uniform((6.0 / (fan_in + fan_out).max(1.0)).sqrt(), rng),
            Initializer::GlorotNormal => truncated(2.0 / (fan_in + fan_out).max(1.0), rng),
            Initializer::HeNormal => truncated(2.0 / fan_in.max(1.0), rng),
            Initializer::HeUniform => uniform((6.0 / fan_in.max(1.0)).sqrt(), rng),
            Initializer::LecunNormal => truncated(1.0 / fan_in.max(1.0), rng),
            Initializer::LecunUniform => uniform((3.0 / fan_in.max(1.0)).sqrt(), rng),
            Initializer::Uniform { min, max } => random::uniform(shape, min, max, dtype, rng),
            Initializer::Normal { mean, stddev } => random::normal(shape, mean, stddev, dtype, rng),
            Initializer::Zeros => Ok(Tensor::zeros(shape, dtype)),
            Initializer::Ones => Ok(Tensor::ones(shape, dtype)),
        }
    }
}

/// Keras' serialized form of an initializer (with its seed).
pub(crate) fn initializer_json(init: Initializer, seed: Option<u64>) -> Value {
    let seeded = |class: &str| json!({"module": "keras.initializers", "class_name": class, "config": {"seed": seed}, "registered_name": null});
    let plain = |class: &str, config: Value| json!({"module": "keras.initializers", "class_name": class, "config": config, "registered_name": null});
    match init {
        Initializer::GlorotUniform => seeded("GlorotUniform"),
        Initializer::GlorotNormal => seeded("GlorotNormal"),
        Initializer::HeNormal => seeded("HeNormal"),
        Initializer::HeUniform => seeded("HeUniform"),
        Initializer::LecunNormal => seeded("LecunNormal"),
        Initializer::LecunUniform => seeded("LecunUniform"),
        Initializer::Uniform { min, max } => {
            plain("RandomUniform", json!({"minval": min, "maxval": max, "seed": seed}))
        }
        Initializer::Normal { mean, stddev } => {
            plain("RandomNormal", json!({"mean": mean, "stddev": stddev, "seed": seed}))
        }
        Initializer::Zeros => plain("Zeros", json!({})),
        Initializer::Ones => plain("Ones", json!({})),
    }
}
