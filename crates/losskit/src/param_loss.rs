//! The machinery behind the TensorFlow-Addons and PyTorch losses: a loss described by a
//! static spec (class, names, parameters with defaults, reduction style) and a per-sample
//! function. Each public loss struct wraps one.

use crate::{Error, Loss, PerSample, Reduction, Result, Tensor};
use serde_json::{Map, Value};

/// How a loss names its reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Keras names (`none`, `sum`, `sum_over_batch_size`, ...); TFA's `auto` is
    /// `sum_over_batch_size`.
    Keras,
    /// Keras names, but the reduction is fixed (the TFA class takes no `reduction` argument).
    KerasFixed,
    /// PyTorch names (`none`, `mean`, `sum`); `mean` maps to the spec's `torch_mean`.
    Torch,
}

/// A loss' static description.
pub(crate) struct Spec {
    pub class: &'static str,
    pub default_name: &'static str,
    pub style: Style,
    pub default_reduction: &'static str,
    /// What PyTorch's `mean` means for this loss.
    pub torch_mean: Reduction,
    /// Constructor parameters and their defaults, as JSON.
    pub params: &'static [(&'static str, &'static str)],
    pub check: fn(&ParamLoss) -> Result<()>,
    pub per_sample: fn(&ParamLoss, &Tensor, &Tensor) -> Result<PerSample>,
    /// [`Loss::single_row_kernel`] for this loss.
    pub single_row_kernel: bool,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spec({})", self.class)
    }
}

/// A configured loss of a [`Spec`].
#[derive(Debug, Clone)]
pub struct ParamLoss {
    spec: &'static Spec,
    name: String,
    reduction_name: String,
    reduction: Reduction,
    params: Map<String, Value>,
}

fn resolve_reduction(spec: &Spec, name: &str) -> Result<Reduction> {
    let bad = || Error::InvalidParameter {
        loss: spec.class.into(),
        param: "reduction".into(),
        value: format!("{name:?}"),
        expected: match spec.style {
            Style::Torch => "one of \"mean\", \"sum\", \"none\"".into(),
            _ => "one of \"sum_over_batch_size\", \"auto\", \"sum\", \"mean\", \"mean_with_sample_weight\", \"none\""
                .into(),
        },
    };
    match spec.style {
        Style::Torch => match name {
            "mean" => Ok(spec.torch_mean),
            "batchmean" if spec.class == "KLDivLoss" => Ok(Reduction::SumOverBatchSize),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            _ => Err(bad()),
        },
        _ => match name {
            "auto" => Ok(Reduction::SumOverBatchSize),
            other => Reduction::parse(other).map_err(|_| bad()),
        },
    }
}

impl ParamLoss {
    pub(crate) fn new(spec: &'static Spec) -> ParamLoss {
        let params =
            spec.params.iter().map(|(k, v)| (k.to_string(), serde_json::from_str(v).expect("valid default"))).collect();
        let reduction = resolve_reduction(spec, spec.default_reduction).expect("valid default reduction");
        ParamLoss {
            spec,
            name: spec.default_name.into(),
            reduction_name: spec.default_reduction.into(),
            reduction,
            params,
        }
    }

    pub(crate) fn set(mut self, key: &str, value: Value) -> Result<ParamLoss> {
        match key {
            "name" => {
                self.name = value.as_str().map(String::from).ok_or_else(|| self.invalid("name", &value, "a string"))?;
            }
            "reduction" if self.spec.style == Style::KerasFixed => {
                return Err(Error::Config(format!(
                    "{}: the reduction is fixed (TFA's class takes no `reduction`)",
                    self.spec.class
                )))
            }
            "reduction" => {
                let name = match &value {
                    Value::Null => "none".to_string(),
                    Value::String(s) => s.clone(),
                    v => return Err(self.invalid("reduction", v, "a string")),
                };
                self.reduction = resolve_reduction(self.spec, &name)?;
                self.reduction_name = name;
            }
            "dtype" => {}
            k if self.spec.params.iter().any(|(p, _)| *p == k) => {
                self.params.insert(k.to_string(), value);
            }
            other => return Err(Error::Config(format!("{}: unexpected config key {other:?}", self.spec.class))),
        }
        (self.spec.check)(&self)?;
        Ok(self)
    }

    pub(crate) fn from_config(spec: &'static Spec, config: &Value) -> Result<ParamLoss> {
        let mut loss = ParamLoss::new(spec);
        match config {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    loss = loss.set(k, v.clone())?;
                }
            }
            other => return Err(Error::Config(format!("{}: config must be a JSON object, got {other}", spec.class))),
        }
        (spec.check)(&loss)?;
        Ok(loss)
    }

    fn invalid(&self, key: &str, v: &Value, expected: &str) -> Error {
        Error::InvalidParameter {
            loss: self.spec.class.into(),
            param: key.into(),
            value: v.to_string(),
            expected: expected.into(),
        }
    }

    /// The reduction as given (`"mean"`, `"none"`, `"batchmean"`, ...).
    pub(crate) fn reduction_name(&self) -> &str {
        &self.reduction_name
    }

    pub(crate) fn value(&self, key: &str) -> &Value {
        self.params.get(key).unwrap_or(&Value::Null)
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64> {
        self.value(key).as_f64().ok_or_else(|| self.invalid(key, self.value(key), "a number"))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| self.invalid(key, v, "a number or null")),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<bool> {
        self.value(key).as_bool().ok_or_else(|| self.invalid(key, self.value(key), "true or false"))
    }

    pub(crate) fn str(&self, key: &str) -> Result<&str> {
        self.value(key).as_str().ok_or_else(|| self.invalid(key, self.value(key), "a string"))
    }

    pub(crate) fn int(&self, key: &str) -> Result<i64> {
        self.value(key).as_i64().ok_or_else(|| self.invalid(key, self.value(key), "an integer"))
    }

    /// A number or a list of numbers (`None` for null).
    pub(crate) fn f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.value(key) {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(Some(vec![n.as_f64().unwrap_or(f64::NAN)])),
            v => v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.invalid(key, v, "a number or a list of numbers")),
        }
    }

    /// Errors with `InvalidParameter` for `key` unless `ok`.
    pub(crate) fn require(&self, ok: bool, key: &str, expected: &str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(self.invalid(key, self.value(key), expected))
        }
    }
}

impl Loss for ParamLoss {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        self.spec.class
    }
    fn reduction(&self) -> Reduction {
        self.reduction
    }
    fn config(&self) -> Value {
        let mut m = self.params.clone();
        m.insert("name".into(), Value::String(self.name.clone()));
        if self.spec.style != Style::KerasFixed {
            m.insert("reduction".into(), Value::String(self.reduction_name.clone()));
        }
        Value::Object(m)
    }
    fn per_sample(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
        (self.spec.per_sample)(self, y_true, y_pred)
    }
    fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
        self.spec.single_row_kernel
    }
}

/// A public loss struct over a [`Spec`]: `new()` with the defaults, `with(key, value)`,
/// `with_reduction`, `with_name`, `from_config`, and [`Loss`].
macro_rules! param_loss {
    ($(#[$doc:meta])* $ty:ident, $spec:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $ty(crate::param_loss::ParamLoss);

        impl Default for $ty {
            fn default() -> Self {
                $ty(crate::param_loss::ParamLoss::new(&$spec))
            }
        }

        impl $ty {
            /// The loss with its defaults.
            pub fn new() -> Self {
                Self::default()
            }
            /// Sets a constructor parameter by its name (`"margin"`, `"weight"`, ...); checked.
            pub fn with(self, key: &str, value: impl Into<serde_json::Value>) -> crate::Result<Self> {
                Ok($ty(self.0.set(key, value.into())?))
            }
            /// Sets the reduction by name (this loss' own vocabulary: Keras' or PyTorch's).
            pub fn with_reduction(self, reduction: &str) -> crate::Result<Self> {
                self.with("reduction", reduction)
            }
            /// Sets the instance name.
            pub fn with_name(self, name: &str) -> Self {
                $ty(self.0.set("name", serde_json::Value::String(name.into())).expect("a name is always valid"))
            }
            /// Builds from a config of constructor keys.
            pub fn from_config(config: &serde_json::Value) -> crate::Result<Self> {
                Ok($ty(crate::param_loss::ParamLoss::from_config(&$spec, config)?))
            }
        }

        impl crate::Loss for $ty {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn class_name(&self) -> &str {
                self.0.class_name()
            }
            fn reduction(&self) -> crate::Reduction {
                self.0.reduction()
            }
            fn config(&self) -> serde_json::Value {
                self.0.config()
            }
            fn per_sample(&self, y_true: &crate::Tensor, y_pred: &crate::Tensor) -> crate::Result<crate::PerSample> {
                self.0.per_sample(y_true, y_pred)
            }
            fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
                self.0.single_row_kernel(crate::loss::sealed::Token)
            }
        }
    };
}
