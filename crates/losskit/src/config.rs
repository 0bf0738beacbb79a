//! Reading Keras constructor configs (`get_config()` dicts) with typed, checked access.

use crate::{Error, Reduction, Result};
use serde_json::{Map, Value};

/// A loss' constructor keywords, consumed key by key; leftovers are an error (as Python's
/// `cls(**config)` rejects unexpected keywords).
pub(crate) struct Params {
    class: &'static str,
    map: Map<String, Value>,
}

impl Params {
    pub fn new(class: &'static str, config: &Value) -> Result<Params> {
        match config {
            Value::Null => Ok(Params { class, map: Map::new() }),
            Value::Object(m) => Ok(Params { class, map: m.clone() }),
            other => Err(Error::Config(format!("{class}: config must be a JSON object, got {other}"))),
        }
    }

    fn invalid(&self, param: &str, value: &Value, expected: &str) -> Error {
        Error::InvalidParameter {
            loss: self.class.into(),
            param: param.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// `name`: a string (absent or null → `default`).
    pub fn name(&mut self, default: &str) -> Result<String> {
        match self.map.remove("name") {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.invalid("name", &v, "a string")),
        }
    }

    /// `reduction`: a Keras reduction name, or null for none (absent → `sum_over_batch_size`).
    pub fn reduction(&mut self) -> Result<Reduction> {
        self.reduction_or(Reduction::SumOverBatchSize)
    }

    /// `reduction` with another default.
    pub fn reduction_or(&mut self, default: Reduction) -> Result<Reduction> {
        match self.map.remove("reduction") {
            None => Ok(default),
            Some(Value::Null) => Ok(Reduction::None),
            Some(Value::String(s)) => Reduction::parse(&s).map_err(|_| {
                self.invalid(
                    "reduction",
                    &Value::String(s.clone()),
                    "one of \"sum_over_batch_size\", \"sum\", \"mean\", \"mean_with_sample_weight\", \"none\" or null",
                )
            }),
            Some(v) => Err(self.invalid("reduction", &v, "a string or null")),
        }
    }

    /// A number (absent → `default`).
    pub fn f64(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.map.remove(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.invalid(key, &v, "a number")),
        }
    }

    /// An integer (absent → `default`).
    pub fn int(&mut self, key: &str, default: i64) -> Result<i64> {
        match self.map.remove(key) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| self.invalid(key, &v, "an integer")),
        }
    }

    /// A boolean (absent → `default`).
    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.map.remove(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.invalid(key, &v, "true or false")),
        }
    }

    /// An optional integer (absent or null → `None`).
    pub fn opt_int(&mut self, key: &str) -> Result<Option<i64>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.invalid(key, &v, "an integer or null")),
        }
    }

    /// An optional number (absent or null → `None`).
    pub fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.invalid(key, &v, "a number or null")),
        }
    }

    /// A number or a list of numbers (absent → `default`).
    pub fn f64_or_list(&mut self, key: &str, default: Vec<f64>) -> Result<Vec<f64>> {
        match self.map.remove(key) {
            None => Ok(default),
            Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(f64::NAN)]),
            Some(v) => self.numbers(key, &v, "a number or a list of numbers"),
        }
    }

    /// An optional list of numbers (absent or null → `None`).
    pub fn opt_f64_list(&mut self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.numbers(key, &v, "a list of numbers or null").map(Some),
        }
    }

    fn numbers(&self, key: &str, v: &Value, expected: &str) -> Result<Vec<f64>> {
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| self.invalid(key, v, expected))
    }

    /// Optional axes: null/absent → `None`, an integer → one axis, a list → several.
    pub fn opt_axes(&mut self, key: &str) -> Result<Option<Vec<isize>>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(|a| Some(vec![a as isize]))
                .ok_or_else(|| self.invalid(key, &Value::Number(n.clone()), "an integer, a list of integers or null")),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_i64().map(|i| i as isize)).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.invalid(key, &v, "an integer, a list of integers or null")),
        }
    }

    /// Checks nothing unknown is left. `dtype` is accepted and ignored: losskit computes in
    /// `y_pred`'s dtype.
    pub fn finish(mut self) -> Result<()> {
        self.map.remove("dtype");
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::Config(format!("{}: unexpected config key {k:?}", self.class))),
        }
    }
}

/// Errors with `InvalidParameter` unless `ok`.
pub(crate) fn require(ok: bool, loss: &str, param: &str, value: impl std::fmt::Display, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            loss: loss.into(),
            param: param.into(),
            value: value.to_string(),
            expected: expected.into(),
        })
    }
}
