//! Keras 3 model files: reads `model.to_json()` output and `.keras` archives (their
//! `config.json`, weights and optimizer state) into a [`Model`], with the `compile_config` when
//! present and the model's and layers' names, and writes a model back in the same formats
//! ([`Model::to_json`], which `keras.models.model_from_json` reads, and
//! [`Model::save_keras`], which `keras.saving.load_model` reads).
//!
//! Supported: a `Sequential` of `InputLayer`, `Flatten`, `Reshape`, `Rescaling` (one scale and
//! offset), `Dense` (units, activation, use_bias,
//! the initializers by name with their seeds, L1/L2/L1L2 kernel and bias regularizers),
//! `Dropout` and `Activation`, in float32 or float64; a `compile_config` with one loss (a name
//! or a serialized loss with its config), an SGD/Adam/AdamW/RMSprop optimizer with its config
//! (clipnorm, clipvalue, global_clipnorm included), metric names and loss weights. Anything
//! else is an error that names it and lists what is supported.

use crate::activations::Activation;
use crate::compile::Compile;
use crate::initializers::Initializer;
use crate::layers::{ActivationLayer, Dense, Dropout, Flatten, Layer, Rescaling, Reshape};
use crate::model::Model;
use crate::optimizers::{Clip, Optimizer, Rule};
use crate::regularizers::Regularizer;
use crate::schedules::LearningRateSchedule;
use losskit::{DType, Error, Loss, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;

const LAYERS: &str = "InputLayer, Flatten, Reshape, Rescaling, Dense, Dropout, Activation";
const OPTIMIZERS: &str = "SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, Lion, Lamb, Ftrl, Adadelta, Nadam, Adafactor";

/// A model read from a Keras file: the model (built when the file gives its input shape) and,
/// when the file has a `compile_config`, what `compile` was given.
pub struct KerasModel {
    /// The layers, built for `input_shape` when it is known.
    pub model: Model,
    /// The per-sample input shape (`InputLayer`'s `batch_shape` without the batch axis).
    pub input_shape: Option<Vec<usize>>,
    /// The `compile_config`, if the model was compiled when saved.
    pub compile: Option<KerasCompile>,
    /// Whether the weights (and the optimizer's state) came from the file (a `.keras` archive
    /// with `model.weights.h5`); otherwise they are freshly initialised.
    pub trained: bool,
}

/// A Keras `compile_config`: each part `None` when the file leaves it out.
#[derive(Clone)]
pub struct KerasCompile {
    /// The optimizer with its config.
    pub optimizer: Option<Optimizer>,
    /// The loss with its config.
    pub loss: Option<Arc<dyn Loss>>,
    /// Metric names (`"accuracy"`, ...).
    pub metrics: Vec<String>,
    /// One weight per output.
    pub loss_weights: Option<Vec<f64>>,
}

impl KerasCompile {
    /// The [`Compile`] these settings describe (Keras' defaults, RMSprop, for a missing
    /// optimizer; a missing loss is an error when compiling).
    pub fn to_compile(&self) -> Compile {
        let mut c = Compile::new();
        if let Some(o) = &self.optimizer {
            c = c.optimizer(o.clone());
        }
        if let Some(l) = &self.loss {
            c = c.loss(l.clone());
        }
        let metrics: Vec<&str> = self.metrics.iter().map(String::as_str).collect();
        c = c.metrics(&metrics);
        if let Some(w) = &self.loss_weights {
            c = c.loss_weights(w);
        }
        c
    }
}

fn config_error(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Reads a Keras model file: `model.to_json()` output (`.json`), or a `.keras` archive: its
/// `config.json` and its weights (`model.weights.h5`) put into the model, with the optimizer's
/// state (iteration count, moments) put into the `compile` settings' optimizer, so that
/// training goes on where Keras left it ([`KerasModel::trained`]). Errors name the file and,
/// for weights that do not fit, the layer.
pub fn load_keras_model(path: impl AsRef<Path>) -> Result<KerasModel> {
    let path = path.as_ref();
    let ferr = |msg: String| Error::file(path.display().to_string(), msg);
    if path.extension().is_none_or(|e| e != "keras") {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), "cannot read", e))?;
        return model_from_json(&text).map_err(|e| ferr(e.to_string()));
    }
    let archive = crate::keras_archive::read_archive(path).map_err(ferr)?;
    let mut keras = model_from_json(&archive.config).map_err(|e| ferr(e.to_string()))?;
    if let Some(bytes) = archive.weights {
        if !keras.model.is_built() {
            return Err(ferr("the model in config.json has no input shape to place its weights".into()));
        }
        let weights = crate::keras_archive::read_weights(bytes).map_err(ferr)?;
        crate::keras_archive::load_weights(&mut keras.model, &weights).map_err(ferr)?;
        if let Some(opt) = keras.compile.as_mut().and_then(|c| c.optimizer.as_mut()) {
            if let Some(state) = crate::keras_archive::optimizer_state(opt, &keras.model, &weights).map_err(ferr)? {
                opt.set_state(state).map_err(|e| ferr(e.to_string()))?;
            }
        }
        keras.trained = true;
    }
    Ok(keras)
}

/// Reads Keras 3's `model.to_json()` output (or a `.keras` archive's `config.json`).
pub fn model_from_json(text: &str) -> Result<KerasModel> {
    let v: Value = serde_json::from_str(text).map_err(|e| config_error(format!("not JSON: {e}")))?;
    let class = v["class_name"].as_str().unwrap_or("(none)");
    if class != "Sequential" {
        return Err(config_error(format!("the model is a {class}; only Sequential models are supported")));
    }
    let config = &v["config"];
    let dtype = dtype_from_policy(&config["dtype"])?;
    let mut model = Model::new().with_dtype(dtype);
    if let Some(name) = config["name"].as_str() {
        model.name = Some(name.to_string());
    }
    let mut input_shape = None;
    let layers = config["layers"].as_array().ok_or_else(|| config_error("the model has no `layers` list"))?;
    let mut names = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        match parse_layer(layer, i)? {
            Parsed::Input(shape) => input_shape = Some(shape),
            Parsed::Layer(l) => {
                names.push(layer["config"]["name"].as_str().map(String::from));
                model.trunk.push(l);
            }
        }
    }
    // The file's layer names, kept (Keras finds each layer's weights by it); a file without
    // them gets Keras' automatic names.
    if let Some(names) = names.into_iter().collect::<Option<Vec<String>>>() {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        model = model.with_layer_names(&names).map_err(|e| config_error(e.to_string()))?;
    }
    if model.trunk.is_empty() {
        return Err(config_error("the model has no layers besides its input"));
    }
    if input_shape.is_none() {
        input_shape =
            per_sample(&config["build_input_shape"]).or_else(|| per_sample(&v["build_config"]["input_shape"]));
    }
    if let Some(shape) = &input_shape {
        model.build(shape)?;
    }
    let compile = match v.get("compile_config") {
        // An uncompiled model's is `{}`.
        Some(c) if c.as_object().is_some_and(|m| !m.is_empty()) => Some(parse_compile(c)?),
        _ => None,
    };
    Ok(KerasModel { model, input_shape, compile, trained: false })
}

/// `[null, 8, 8]` → `[8, 8]`.
fn per_sample(v: &Value) -> Option<Vec<usize>> {
    let dims = v.as_array()?;
    dims.get(1..)?.iter().map(|d| d.as_u64().map(|n| n as usize)).collect()
}

fn dtype_from_policy(v: &Value) -> Result<DType> {
    let name = match v {
        Value::Null => return Ok(DType::F32),
        Value::String(s) => s.as_str(),
        other => other["config"]["name"].as_str().unwrap_or("float32"),
    };
    match name {
        "float32" => Ok(DType::F32),
        "float64" => Ok(DType::F64),
        other => Err(config_error(format!("the dtype policy {other:?} is not supported (float32 or float64)"))),
    }
}

enum Parsed {
    Input(Vec<usize>),
    Layer(Box<dyn Layer>),
}

fn parse_layer(v: &Value, i: usize) -> Result<Parsed> {
    let class = v["class_name"].as_str().unwrap_or("(no class_name)");
    let config = &v["config"];
    let name = config["name"].as_str().unwrap_or(class);
    let at = format!("layer {i} ({name}, {class})");
    let err = |msg: String| config_error(format!("{at}: {msg}"));
    let layer: Box<dyn Layer> = match class {
        "InputLayer" => {
            let shape = per_sample(&config["batch_shape"])
                .or_else(|| per_sample(&config["batch_input_shape"]))
                .ok_or_else(|| err("no batch_shape".into()))?;
            return Ok(Parsed::Input(shape));
        }
        "Flatten" => {
            if !matches!(config["data_format"].as_str(), None | Some("channels_last")) {
                return Err(err("only data_format \"channels_last\" is supported".into()));
            }
            Box::new(Flatten::new())
        }
        "Dense" => Box::new(parse_dense(config).map_err(err)?),
        "Dropout" => {
            for key in ["seed", "noise_shape"] {
                if !config[key].is_null() {
                    return Err(err(format!(
                        "{key} {} is not supported (losskit draws dropout masks from the model's seeded generator)",
                        config[key]
                    )));
                }
            }
            let rate = config["rate"].as_f64().ok_or_else(|| err("no rate".into()))?;
            Box::new(Dropout::new(rate)?)
        }
        "Activation" => Box::new(ActivationLayer::new(&activation_name(&config["activation"]).map_err(err)?)?),
        "Rescaling" => {
            let number = |key: &str, default: f64| match &config[key] {
                Value::Null => Ok(default),
                v => v.as_f64().ok_or_else(|| err(format!("{key} {v} is not supported (one number)"))),
            };
            Box::new(Rescaling::new(number("scale", 1.0)?, number("offset", 0.0)?)?)
        }
        "Reshape" => {
            let target: Vec<isize> = config["target_shape"]
                .as_array()
                .and_then(|dims| dims.iter().map(|d| d.as_i64().map(|d| d as isize)).collect())
                .ok_or_else(|| err("no target_shape".into()))?;
            Box::new(Reshape::new(&target)?)
        }
        other => {
            return Err(config_error(format!("{at}: the layer {other} is not supported; supported layers: {LAYERS}")))
        }
    };
    Ok(Parsed::Layer(layer))
}

fn activation_name(v: &Value) -> std::result::Result<String, String> {
    match v {
        Value::Null => Ok("linear".into()),
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("activation {other} is not supported (a built-in activation's name)")),
    }
}

/// Options Keras has that losskit does not: an error when set.
const DENSE_UNSUPPORTED: [&str; 5] =
    ["activity_regularizer", "kernel_constraint", "bias_constraint", "quantization_config", "lora_rank"];

fn parse_dense(c: &Value) -> std::result::Result<Dense, String> {
    for key in DENSE_UNSUPPORTED {
        if !c[key].is_null() {
            return Err(format!("{key} {} is not supported", c[key]));
        }
    }
    let units = c["units"].as_u64().ok_or("no units")? as usize;
    let (kernel, kernel_seed) = parse_initializer(&c["kernel_initializer"], Initializer::GlorotUniform)?;
    let (bias, bias_seed) = parse_initializer(&c["bias_initializer"], Initializer::Zeros)?;
    let mut d = Dense::new(units)
        .activation(&activation_name(&c["activation"])?)
        .map_err(|e| e.to_string())?
        .use_bias(c["use_bias"].as_bool().unwrap_or(true))
        .with_kernel_initializer(kernel)
        .kernel_initializer_seed(kernel_seed)
        .with_bias_initializer(bias)
        .bias_initializer_seed(bias_seed);
    if let Some(r) = parse_regularizer(&c["kernel_regularizer"])? {
        d = d.kernel_regularizer(r);
    }
    if let Some(r) = parse_regularizer(&c["bias_regularizer"])? {
        d = d.bias_regularizer(r);
    }
    Ok(d)
}

/// A Keras initializer: a name, or `{"class_name": "HeNormal", "config": {"seed": 3}}`.
fn parse_initializer(v: &Value, default: Initializer) -> std::result::Result<(Initializer, Option<u64>), String> {
    let (class, config) = match v {
        Value::Null => return Ok((default, None)),
        Value::String(s) => return Initializer::parse(s).map(|i| (i, None)).map_err(|e| e.to_string()),
        other => (other["class_name"].as_str().unwrap_or(""), &other["config"]),
    };
    let num = |key: &str, d: f64| config[key].as_f64().unwrap_or(d);
    let init = match class {
        "GlorotUniform" => Initializer::GlorotUniform,
        "GlorotNormal" => Initializer::GlorotNormal,
        "HeNormal" => Initializer::HeNormal,
        "HeUniform" => Initializer::HeUniform,
        "LecunNormal" => Initializer::LecunNormal,
        "LecunUniform" => Initializer::LecunUniform,
        "RandomUniform" => Initializer::Uniform { min: num("minval", -0.05), max: num("maxval", 0.05) },
        "RandomNormal" => Initializer::Normal { mean: num("mean", 0.0), stddev: num("stddev", 0.05) },
        "Zeros" => Initializer::Zeros,
        "Ones" => Initializer::Ones,
        other => {
            return Err(format!(
                "the initializer {other:?} is not supported; supported: GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal, LecunUniform, RandomUniform, RandomNormal, Zeros, Ones"
            ))
        }
    };
    Ok((init, config["seed"].as_u64()))
}

fn parse_regularizer(v: &Value) -> std::result::Result<Option<Regularizer>, String> {
    let (class, config) = match v {
        Value::Null => return Ok(None),
        Value::String(s) => return Regularizer::parse(s).map(Some).map_err(|e| e.to_string()),
        other => (other["class_name"].as_str().unwrap_or(""), &other["config"]),
    };
    let factor = |key: &str| config[key].as_f64().unwrap_or(0.0);
    match class {
        "L1" => Ok(Some(Regularizer::L1(factor("l1")))),
        "L2" => Ok(Some(Regularizer::L2(factor("l2")))),
        "L1L2" => Ok(Some(Regularizer::L1L2 { l1: factor("l1"), l2: factor("l2") })),
        other => Err(format!("the regularizer {other:?} is not supported; supported: L1, L2, L1L2")),
    }
}

fn parse_compile(c: &Value) -> Result<KerasCompile> {
    let err = |msg: String| config_error(format!("compile_config: {msg}"));
    let optimizer = match &c["optimizer"] {
        Value::Null => None,
        o => Some(parse_optimizer(o).map_err(err)?),
    };
    let loss = match &c["loss"] {
        Value::Null => None,
        Value::Array(v) if v.len() == 1 => Some(Arc::from(losskit::from_config(&v[0])?)),
        l @ Value::String(_) => Some(Arc::from(losskit::from_config(l)?)),
        l @ Value::Object(m) if m.contains_key("class_name") => Some(Arc::from(losskit::from_config(l)?)),
        other => {
            return Err(err(format!(
                "loss {other} is not supported (one loss, by name or serialized; not one per output)"
            )))
        }
    };
    let metrics = match &c["metrics"] {
        Value::Null => Vec::new(),
        Value::Array(v) => v
            .iter()
            .map(|m| m.as_str().map(String::from).ok_or_else(|| err(format!("metric {m} is not a metric name"))))
            .collect::<Result<_>>()?,
        other => return Err(err(format!("metrics {other} is not a list of names"))),
    };
    if c["weighted_metrics"].as_array().is_some_and(|v| !v.is_empty()) {
        return Err(err("weighted_metrics are not supported".into()));
    }
    let loss_weights = match &c["loss_weights"] {
        Value::Null => None,
        Value::Number(n) => Some(vec![n.as_f64().unwrap_or(1.0)]),
        Value::Array(v) => {
            Some(v.iter().map(|w| w.as_f64().ok_or_else(|| err(format!("loss weight {w}")))).collect::<Result<_>>()?)
        }
        other => return Err(err(format!("loss_weights {other} is not supported (a number or a list)"))),
    };
    Ok(KerasCompile { optimizer, loss, metrics, loss_weights })
}

/// Keras stores the learning rate as float32: `0.009999999776482582` reads back as `0.01`.
fn from_float32(x: f64) -> f64 {
    format!("{}", x as f32).parse().unwrap_or(x)
}

/// Keras optimizer options losskit does not have: an error when set.
const OPTIMIZER_UNSUPPORTED: [(&str, Value); 2] =
    [("loss_scale_factor", Value::Null), ("gradient_accumulation_steps", Value::Null)];

pub(crate) fn parse_optimizer(v: &Value) -> std::result::Result<Optimizer, String> {
    let (class, c) = match v {
        Value::String(s) => return Optimizer::parse(s).map_err(|e| e.to_string()),
        other => (other["class_name"].as_str().unwrap_or(""), &other["config"]),
    };
    for (key, off) in OPTIMIZER_UNSUPPORTED {
        if c.get(key).is_some_and(|x| *x != off) {
            return Err(format!("optimizer {class}: {key} {} is not supported", c[key]));
        }
    }
    let (lr, schedule) = match &c["learning_rate"] {
        Value::Number(n) => (from_float32(n.as_f64().unwrap_or(0.0)), None),
        Value::Null => (0.001, None),
        schedule @ Value::Object(_) => {
            let s = LearningRateSchedule::from_keras(schedule).map_err(|e| format!("optimizer {class}: {e}"))?;
            (s.at(0), Some(s))
        }
        other => return Err(format!("optimizer {class}: learning_rate {other} is not a number or a schedule")),
    };
    let num = |key: &str, d: f64| c[key].as_f64().unwrap_or(d);
    let decay = c["weight_decay"].as_f64().filter(|&w| w != 0.0);
    let rule = match class {
        "SGD" => Rule::Sgd { momentum: num("momentum", 0.0), nesterov: c["nesterov"].as_bool().unwrap_or(false) },
        "Adam" => {
            Rule::Adam { beta_1: num("beta_1", 0.9), beta_2: num("beta_2", 0.999), epsilon: num("epsilon", 1e-7) }
        }
        "AdamW" => Rule::AdamW {
            weight_decay: decay.unwrap_or(0.004),
            beta_1: num("beta_1", 0.9),
            beta_2: num("beta_2", 0.999),
            epsilon: num("epsilon", 1e-7),
        },
        "RMSprop" => Rule::RmsProp {
            rho: num("rho", 0.9),
            momentum: num("momentum", 0.0),
            epsilon: num("epsilon", 1e-7),
            centered: c["centered"].as_bool().unwrap_or(false),
        },
        "Adagrad" => Rule::Adagrad {
            initial_accumulator_value: num("initial_accumulator_value", 0.1),
            epsilon: num("epsilon", 1e-7),
        },
        "Adamax" => {
            Rule::Adamax { beta_1: num("beta_1", 0.9), beta_2: num("beta_2", 0.999), epsilon: num("epsilon", 1e-7) }
        }
        "Lion" => Rule::Lion { beta_1: num("beta_1", 0.9), beta_2: num("beta_2", 0.99) },
        "Ftrl" => Rule::Ftrl {
            learning_rate_power: num("learning_rate_power", -0.5),
            initial_accumulator_value: num("initial_accumulator_value", 0.1),
            l1_regularization_strength: num("l1_regularization_strength", 0.0),
            l2_regularization_strength: num("l2_regularization_strength", 0.0),
            l2_shrinkage_regularization_strength: num("l2_shrinkage_regularization_strength", 0.0),
            beta: num("beta", 0.0),
        },
        "Lamb" => {
            Rule::Lamb { beta_1: num("beta_1", 0.9), beta_2: num("beta_2", 0.999), epsilon: num("epsilon", 1e-7) }
        }
        "Adadelta" => Rule::Adadelta { rho: num("rho", 0.95), epsilon: num("epsilon", 1e-7) },
        "Adafactor" => Rule::Adafactor {
            beta_2_decay: num("beta_2_decay", -0.8),
            epsilon_1: num("epsilon_1", 1e-30),
            epsilon_2: num("epsilon_2", 1e-3),
            clip_threshold: num("clip_threshold", 1.0),
            relative_step: c["relative_step"].as_bool().unwrap_or(true),
        },
        "Nadam" => {
            Rule::Nadam { beta_1: num("beta_1", 0.9), beta_2: num("beta_2", 0.999), epsilon: num("epsilon", 1e-7) }
        }
        other => return Err(format!("the optimizer {other:?} is not supported; supported: {OPTIMIZERS}")),
    };
    let clip = match (c["clipnorm"].as_f64(), c["global_clipnorm"].as_f64(), c["clipvalue"].as_f64()) {
        (None, None, None) => Clip::None,
        (Some(n), None, None) => Clip::Norm(n),
        (None, Some(n), None) => Clip::GlobalNorm(n),
        (None, None, Some(v)) => Clip::Value(v),
        _ => return Err(format!("optimizer {class}: at most one of clipnorm, global_clipnorm, clipvalue")),
    };
    let mut optimizer = Optimizer::new(rule, lr).and_then(|o| o.with_clip(clip)).map_err(|e| e.to_string())?;
    if let (Some(wd), false) = (decay, class == "AdamW") {
        optimizer = optimizer.with_weight_decay(wd).map_err(|e| e.to_string())?;
    }
    if c["amsgrad"].as_bool() == Some(true) {
        optimizer = optimizer.with_amsgrad(true).map_err(|e| format!("optimizer {class}: {e}"))?;
    }
    if c["use_ema"].as_bool() == Some(true) {
        let overwrite_frequency = match &c["ema_overwrite_frequency"] {
            Value::Null => None,
            f => Some(f.as_u64().ok_or_else(|| {
                format!("optimizer {class}: ema_overwrite_frequency {f} is not an integer >= 1 or null")
            })?),
        };
        let ema = crate::optimizers::Ema { momentum: num("ema_momentum", 0.99), overwrite_frequency };
        optimizer = optimizer.with_ema(Some(ema)).map_err(|e| format!("optimizer {class}: {e}"))?;
    }
    Ok(match schedule {
        Some(s) => optimizer.with_schedule(s),
        None => optimizer,
    })
}

/// Keras' serialized form of an optimizer.
/// Keras' class of the optimizer and its default instance name (`("Adam", "adam")`).
pub(crate) fn keras_optimizer_class(rule: Rule) -> (&'static str, &'static str) {
    match rule {
        Rule::Sgd { .. } => ("SGD", "sgd"),
        Rule::Adam { .. } => ("Adam", "adam"),
        Rule::AdamW { .. } => ("AdamW", "adamw"),
        Rule::RmsProp { .. } => ("RMSprop", "rmsprop"),
        Rule::Adagrad { .. } => ("Adagrad", "adagrad"),
        Rule::Adamax { .. } => ("Adamax", "adamax"),
        Rule::Lion { .. } => ("Lion", "lion"),
        Rule::Lamb { .. } => ("Lamb", "lamb"),
        Rule::Ftrl { .. } => ("Ftrl", "ftrl"),
        Rule::Adadelta { .. } => ("Adadelta", "adadelta"),
        Rule::Nadam { .. } => ("Nadam", "nadam"),
        Rule::Adafactor { .. } => ("Adafactor", "adafactor"),
    }
}

fn optimizer_json(o: &Optimizer) -> Value {
    let mut config = Map::new();
    let (class, name) = keras_optimizer_class(o.rule());
    config.insert("name".into(), json!(name));
    let lr = o.schedule().map_or_else(|| json!(o.learning_rate()), LearningRateSchedule::to_keras);
    config.insert("learning_rate".into(), lr);
    let clip = o.clip();
    let (norm, global, value) = match clip {
        Clip::None => (None, None, None),
        Clip::Norm(n) => (Some(n), None, None),
        Clip::GlobalNorm(n) => (None, Some(n), None),
        Clip::Value(v) => (None, None, Some(v)),
    };
    config.insert("clipnorm".into(), json!(norm));
    config.insert("global_clipnorm".into(), json!(global));
    config.insert("clipvalue".into(), json!(value));
    let rule = match o.rule() {
        Rule::Sgd { momentum, nesterov } => json!({"momentum": momentum, "nesterov": nesterov, "weight_decay": null}),
        Rule::Adam { beta_1, beta_2, epsilon } => {
            json!({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "amsgrad": o.amsgrad(), "weight_decay": null})
        }
        Rule::AdamW { weight_decay, beta_1, beta_2, epsilon } => json!({
            "weight_decay": weight_decay, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "amsgrad": o.amsgrad()
        }),
        Rule::RmsProp { rho, momentum, epsilon, centered } => {
            json!({"rho": rho, "momentum": momentum, "epsilon": epsilon, "centered": centered, "weight_decay": null})
        }
        Rule::Adagrad { initial_accumulator_value, epsilon } => json!({
            "initial_accumulator_value": initial_accumulator_value, "epsilon": epsilon, "weight_decay": null
        }),
        Rule::Adamax { beta_1, beta_2, epsilon } => {
            json!({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "weight_decay": null})
        }
        Rule::Lion { beta_1, beta_2 } => json!({"beta_1": beta_1, "beta_2": beta_2, "weight_decay": null}),
        Rule::Lamb { beta_1, beta_2, epsilon } => {
            json!({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "weight_decay": null})
        }
        Rule::Ftrl {
            learning_rate_power,
            initial_accumulator_value,
            l1_regularization_strength,
            l2_regularization_strength,
            l2_shrinkage_regularization_strength,
            beta,
        } => json!({
            "learning_rate_power": learning_rate_power,
            "initial_accumulator_value": initial_accumulator_value,
            "l1_regularization_strength": l1_regularization_strength,
            "l2_regularization_strength": l2_regularization_strength,
            "l2_shrinkage_regularization_strength": l2_shrinkage_regularization_strength,
            "beta": beta,
            "weight_decay": null
        }),
        Rule::Adadelta { rho, epsilon } => json!({"rho": rho, "epsilon": epsilon, "weight_decay": null}),
        Rule::Nadam { beta_1, beta_2, epsilon } => {
            json!({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "weight_decay": null})
        }
        Rule::Adafactor { beta_2_decay, epsilon_1, epsilon_2, clip_threshold, relative_step } => json!({
            "beta_2_decay": beta_2_decay,
            "epsilon_1": epsilon_1,
            "epsilon_2": epsilon_2,
            "clip_threshold": clip_threshold,
            "relative_step": relative_step,
            "weight_decay": null
        }),
    };
    if let Value::Object(m) = rule {
        config.extend(m);
    }
    if let Some(wd) = o.weight_decay() {
        config.insert("weight_decay".into(), json!(wd));
    }
    if let Some(ema) = o.ema() {
        config.insert("use_ema".into(), json!(true));
        config.insert("ema_momentum".into(), json!(ema.momentum));
        config.insert("ema_overwrite_frequency".into(), json!(ema.overwrite_frequency));
    }
    json!({"module": "keras.optimizers", "class_name": class, "config": config, "registered_name": null})
}

fn dtype_policy(dtype: DType) -> Value {
    json!({"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype.to_string()}, "registered_name": null})
}

impl Model {
    /// The model as Keras 3's `model.to_json()` writes it (a `Sequential` with its
    /// `InputLayer`, each layer's config, `build_config`, and the `compile_config` when
    /// compiled), which `keras.models.model_from_json` and [`model_from_json`] read back. The
    /// model must be built; models with heads, and layers Keras does not have, are errors.
    pub fn to_json(&self) -> Result<String> {
        let input = self.input_shape.as_ref().ok_or_else(|| config_error("to_json: build the model first"))?;
        if !self.heads.is_empty() {
            return Err(config_error("to_json: only Sequential models (without heads) are written as Keras JSON"));
        }
        let policy = dtype_policy(self.dtype);
        let batch_shape: Vec<Value> = std::iter::once(Value::Null).chain(input.iter().map(|&d| json!(d))).collect();
        let mut layers = vec![json!({
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {"batch_shape": batch_shape, "dtype": self.dtype.to_string(), "sparse": false, "ragged": false, "name": "input_layer", "optional": false},
            "registered_name": null,
        })];
        for layer in &self.trunk {
            let extra = crate::layers::builtin(layer.as_ref()).map(|l| l.keras_config()).ok_or_else(|| {
                config_error(format!("to_json: the layer {} ({}) has no Keras form", layer.name(), layer.kind()))
            })?;
            if let Some(a) = extra.get("activation").and_then(Value::as_str).filter(|a| Activation::parse(a).is_err()) {
                return Err(config_error(format!(
                    "to_json: the layer {} uses the activation {a}, which takes arguments a Keras model file cannot hold",
                    layer.name()
                )));
            }
            let mut config = Map::new();
            config.insert("name".into(), json!(layer.name()));
            config.insert("trainable".into(), json!(true));
            config.insert("dtype".into(), policy.clone());
            if let Value::Object(m) = extra {
                config.extend(m);
            }
            layers.push(json!({"module": "keras.layers", "class_name": layer.kind(), "config": config, "registered_name": null}));
        }
        let mut model = json!({
            "module": "keras",
            "class_name": "Sequential",
            "config": {"name": self.name(), "trainable": true, "dtype": policy, "layers": layers, "build_input_shape": batch_shape},
            "registered_name": null,
            "build_config": {"input_shape": batch_shape},
        });
        if let Some(c) = &self.compiled {
            let weights: Option<Vec<f64>> = c.loss_weights.iter().copied().collect();
            model["compile_config"] = json!({
                "optimizer": optimizer_json(&c.optimizer),
                "loss": losskit::serialize(c.losses[0].as_ref()),
                "loss_weights": weights,
                "metrics": c.metric_names,
                "weighted_metrics": null,
                "run_eagerly": false,
                "steps_per_execution": 1,
                "jit_compile": true,
            });
        }
        serde_json::to_string_pretty(&model).map_err(|e| config_error(e.to_string()))
    }
}
