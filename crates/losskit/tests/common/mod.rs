//! Helpers shared by losskit's integration tests: reading the Keras conformance vectors.

#![allow(dead_code)]

use losskit::{DType, Tensor};
use serde_json::Value;

/// The Keras 3.15.1 reference vectors, copied from the team's shared conformance folder.
pub fn keras_vectors() -> Vec<Value> {
    let text = include_str!("../../../../conformance/keras_vectors.json");
    serde_json::from_str::<Value>(text).unwrap().as_array().unwrap().clone()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => panic!("not a number: {other}"),
    }
}

/// A nested JSON list as (shape, row-major values).
pub fn nested(v: &Value) -> (Vec<usize>, Vec<f64>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                for item in items {
                    walk(item, depth + 1, shape, out);
                }
            }
            other => out.push(number(other)),
        }
    }
    let mut shape = Vec::new();
    let mut out = Vec::new();
    walk(v, 0, &mut shape, &mut out);
    (shape, out)
}

/// A nested JSON list as a tensor of `dtype` (values rounded from their decimal form to f32
/// first, as Keras parsed them).
pub fn tensor(v: &Value, dtype: DType) -> Tensor {
    let (shape, values) = nested(v);
    let values: Vec<f64> = values.into_iter().map(|x| f64::from(x as f32)).collect();
    Tensor::from_vec(values, &shape).unwrap().to_dtype(dtype)
}

/// `|got - expected| <= atol + rtol·|expected|` with the house tolerance (1e-5, 1e-5).
pub fn close(got: f64, expected: f64) -> bool {
    if expected.is_nan() {
        return got.is_nan();
    }
    (got - expected).abs() <= 1e-5 + 1e-5 * expected.abs()
}
