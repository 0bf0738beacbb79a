//! Helpers shared by losskit's integration tests: reading the Keras conformance vectors.

#![allow(dead_code)]

use losskit::{DType, Tensor};
use serde_json::Value;

/// The Keras 3.15.1 reference vectors, copied from the team's shared conformance folder.
pub fn keras_vectors() -> Vec<Value> {
    let text = include_str!("../../../../conformance/keras_vectors.json");
    serde_json::from_str::<Value>(text).unwrap().as_array().unwrap().clone()
}

pub fn number(v: &Value) -> f64 {
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
    if expected.is_infinite() {
        return got == expected;
    }
    (got - expected).abs() <= 1e-5 + 1e-5 * expected.abs()
}

/// `|got - expected| <= atol + rtol·|expected|`, with NaN equal only to NaN and an infinity only
/// to the same infinity.
pub fn close_tol(got: f64, expected: f64, rtol: f64, atol: f64) -> bool {
    if expected.is_nan() || expected.is_infinite() {
        return got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan());
    }
    (got - expected).abs() <= atol + rtol * expected.abs()
}

/// A nested JSON list of labels or targets as a tensor of `dtype`, honouring Keras'
/// `y_true_dtype`: float32 values are rounded to f32 first (as Keras parsed them); integer
/// dtypes must hold integers and are taken exactly.
pub fn y_true_tensor(v: &Value, y_true_dtype: &str, dtype: DType) -> Tensor {
    match y_true_dtype {
        "float32" => tensor(v, dtype),
        "int32" | "int64" => {
            let (shape, values) = nested(v);
            for &x in &values {
                assert!(x.fract() == 0.0 && x.abs() < 2f64.powi(31), "{y_true_dtype} y_true holds {x}");
            }
            Tensor::from_vec(values, &shape).unwrap().to_dtype(dtype)
        }
        other => panic!("y_true_dtype {other} is not one the vectors use"),
    }
}

/// The edge-case vectors (NaN/inf, clip bounds, overflow, large vocabularies) made by
/// `conformance/gen_edge_vectors.py`.
pub fn edge_vectors() -> Vec<Value> {
    let text = include_str!("../../../../conformance/edge_vectors.json");
    serde_json::from_str::<Value>(text).unwrap().as_array().unwrap().clone()
}

/// The generator's inputs: `u = ((i + 1)·2654435761 mod 2³²) / 2³²` for the `i`-th value,
/// `x = f32(lo + (hi - lo)·u^power)`, as `gen_edge_vectors.py` makes them.
pub fn generated(rows: usize, cols: usize, lo: f64, hi: f64, power: u32) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| {
            let u = (((i as u64 + 1) * 2_654_435_761) % (1u64 << 32)) as f64 / 4_294_967_296.0;
            let mut up = 1.0;
            for _ in 0..power {
                up *= u;
            }
            f64::from((lo + (hi - lo) * up) as f32)
        })
        .collect()
}
