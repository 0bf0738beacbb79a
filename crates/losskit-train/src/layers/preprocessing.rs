//! Keras' preprocessing inside the model: `Rescaling` (scale and offset the inputs, e.g. pixels
//! by 1/255) and `Reshape` (each sample to another shape of the same size), so that a model
//! written to a Keras file takes the raw inputs it was trained on.

use super::{BuiltinLayer, Layer, StepLayer};
use losskit::{DType, Error, Result, Tensor};
use losskit_tensor::random::Rng;

/// Keras' `Rescaling`: `y = x·scale + offset` (the offset added only when it is not 0), in
/// the model's dtype. Shapes unchanged. No weights.
#[derive(Debug, Clone)]
pub struct Rescaling {
    name: String,
    scale: f64,
    offset: f64,
    output: Option<Vec<usize>>,
}

impl Rescaling {
    /// `x·scale + offset`; both must be finite.
    pub fn new(scale: f64, offset: f64) -> Result<Rescaling> {
        for (param, v) in [("scale", scale), ("offset", offset)] {
            if !v.is_finite() {
                return Err(Error::invalid_parameter("Rescaling", param, v, "a finite number"));
            }
        }
        Ok(Rescaling { name: "rescaling".into(), scale, offset, output: None })
    }

    /// The factor.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The offset added after the factor.
    pub fn offset(&self) -> f64 {
        self.offset
    }
}

impl Layer for Rescaling {
    layer_identity!("Rescaling");
    fn build(&mut self, input: &[usize], _dtype: DType, _rng: &mut Rng) -> Result<Vec<usize>> {
        self.output = Some(input.to_vec());
        Ok(input.to_vec())
    }
    fn forward(&self, x: &Tensor, _training: bool, _rng: &mut Rng) -> Result<Tensor> {
        let y = x.mul_scalar(self.scale)?;
        if self.offset == 0.0 {
            Ok(y)
        } else {
            y.add_scalar(self.offset)
        }
    }
}

impl BuiltinLayer for Rescaling {
    fn step_kind(&self) -> Option<StepLayer> {
        Some(StepLayer::Rescale { scale: self.scale, offset: self.offset })
    }
    fn keras_config(&self) -> serde_json::Value {
        serde_json::json!({ "scale": self.scale, "offset": self.offset })
    }
}

/// Keras' `Reshape`: each sample `(d1, d2, ...)` to `target_shape` (one entry may be -1: what
/// the size leaves). No weights.
#[derive(Debug, Clone)]
pub struct Reshape {
    name: String,
    target: Vec<isize>,
    output: Option<Vec<usize>>,
}

impl Reshape {
    /// A reshape of each sample to `target_shape` (entries ≥ 1, at most one -1).
    pub fn new(target_shape: &[isize]) -> Result<Reshape> {
        let unknown = target_shape.iter().filter(|&&d| d == -1).count();
        if target_shape.is_empty() || unknown > 1 || target_shape.iter().any(|&d| d == 0 || d < -1) {
            return Err(Error::invalid_parameter(
                "Reshape",
                "target_shape",
                format!("{target_shape:?}"),
                "a non-empty shape of sizes >= 1, with at most one -1",
            ));
        }
        Ok(Reshape { name: "reshape".into(), target: target_shape.to_vec(), output: None })
    }
}

impl Layer for Reshape {
    layer_identity!("Reshape");
    fn build(&mut self, input: &[usize], _dtype: DType, _rng: &mut Rng) -> Result<Vec<usize>> {
        let size: usize = input.iter().product();
        let known: usize = self.target.iter().filter(|&&d| d > 0).map(|&d| d as usize).product();
        let fits = if self.target.contains(&-1) { known > 0 && size.is_multiple_of(known) } else { known == size };
        if !fits {
            return Err(Error::Shape {
                op: self.name.clone(),
                msg: format!("cannot reshape samples of shape {input:?} ({size} values) to {:?}", self.target),
            });
        }
        let out: Vec<usize> = self.target.iter().map(|&d| if d == -1 { size / known } else { d as usize }).collect();
        self.output = Some(out.clone());
        Ok(out)
    }
    fn forward(&self, x: &Tensor, _training: bool, _rng: &mut Rng) -> Result<Tensor> {
        let out = self.output.as_ref().ok_or_else(|| Error::Config(format!("{}: not built", self.name)))?;
        let shape: Vec<isize> = std::iter::once(x.shape().first().copied().unwrap_or(0) as isize)
            .chain(out.iter().map(|&d| d as isize))
            .collect();
        x.reshape(&shape)
    }
}

impl BuiltinLayer for Reshape {
    fn step_kind(&self) -> Option<StepLayer> {
        Some(StepLayer::Reshape)
    }
    fn keras_config(&self) -> serde_json::Value {
        serde_json::json!({ "target_shape": self.target })
    }
}
