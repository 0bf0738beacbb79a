//! Keras 3 `.keras` archives with their weights, both ways.
//!
//! An archive is a zip of `config.json` (the model, as [`Model::to_json`] writes it),
//! `metadata.json` (the Keras version and the date) and `model.weights.h5`, an HDF5 file that
//! holds, as Keras' `saving_lib` lays it out:
//! - `layers/<path>/vars/<i>`: each layer's weights in its own order (a Dense layer's kernel
//!   `(inputs, units)`, then its bias), a group per layer even without weights, the layer's
//!   name as the `vars` group's `name` attribute. The path is not the layer's name: Keras
//!   names the paths after the classes, in layer order (`flatten`, `dense`, `dense_1`, …,
//!   whatever the layers are called), see [`keras_paths`];
//! - `optimizer/vars/<i>`: the iteration count (int), the learning rate (float), then the
//!   optimizer's slots: Adam and AdamW a momentum and a velocity per weight, interleaved
//!   (`m₀ v₀ m₁ v₁ …`); RMSprop every weight's velocity, then every momentum (with
//!   `momentum > 0`), then every average gradient (centered); SGD every momentum; Adamax
//!   (momentum, norm) and Adadelta (two accumulators) interleaved per weight as Adam; Adagrad
//!   and Lion one per weight; Adafactor `r, c, v` interleaved per weight (`r`, `c` scalars for
//!   a weight of rank < 2); with `use_ema`, every weight's moving average before all of these;
//! - `vars`: the model's own (none), named after the model.
//!
//! HDF5 is read and written by `hdf5-pure` (pure Rust, no system library): it reads what h5py
//! writes, and Keras' `load_model` reads what it writes (`conformance/gen_keras_archives.py`).

use crate::model::Model;
use crate::optimizers::{Optimizer, OptimizerState, Rule};
use hdf5_pure::{AttrValue, FileBuilder};
use losskit::{DType, Error, Result, Tensor};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

/// The Keras version written into `metadata.json` (the version the format was checked with).
const KERAS_VERSION: &str = "3.15.1";

/// What a `.keras` archive holds: its `config.json` and, when present, `model.weights.h5`.
pub(crate) struct Archive {
    pub(crate) config: String,
    pub(crate) weights: Option<Vec<u8>>,
}

/// Reads the archive at `path` (a zip file); a message for the caller to prefix with the path.
pub(crate) fn read_archive(path: &Path) -> std::result::Result<Archive, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a .keras archive (a zip file): {e}"))?;
    let mut config = String::new();
    zip.by_name("config.json")
        .map_err(|_| "a .keras archive without config.json".to_string())?
        .read_to_string(&mut config)
        .map_err(|e| format!("cannot read its config.json: {e}"))?;
    let weights = match zip.by_name("model.weights.h5") {
        Ok(mut entry) => {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| format!("cannot read its model.weights.h5: {e}"))?;
            Some(bytes)
        }
        Err(_) => None,
    };
    Ok(Archive { config, weights })
}

/// The contents of a `model.weights.h5`: each layer's weights by layer name, and the
/// optimizer's variables (empty when the file has none).
pub(crate) struct H5Weights {
    layers: HashMap<String, Vec<Tensor>>,
    optimizer: Vec<Tensor>,
}

/// Reads a `model.weights.h5`; a message naming what is wrong.
pub(crate) fn read_weights(bytes: Vec<u8>) -> std::result::Result<H5Weights, String> {
    let file = hdf5_pure::File::from_bytes(bytes).map_err(|e| format!("model.weights.h5 is not HDF5: {e}"))?;
    let root = file.root();
    let mut layers = HashMap::new();
    if let Ok(group) = root.group("layers") {
        for name in group.groups().map_err(|e| format!("model.weights.h5: layers: {e}"))? {
            let vars = match group.group(&name).and_then(|g| g.group("vars")) {
                Ok(vars) => numbered(&vars).map_err(|e| format!("model.weights.h5: layers/{name}/vars: {e}"))?,
                Err(_) => Vec::new(),
            };
            layers.insert(name, vars);
        }
    }
    let optimizer = match root.group("optimizer").and_then(|g| g.group("vars")) {
        Ok(vars) => numbered(&vars).map_err(|e| format!("model.weights.h5: optimizer/vars: {e}"))?,
        Err(_) => Vec::new(),
    };
    Ok(H5Weights { layers, optimizer })
}

/// The datasets `0`, `1`, … of a `vars` group, in that order (f32 and f64 as they are, integers
/// as f64).
fn numbered(vars: &hdf5_pure::Group) -> std::result::Result<Vec<Tensor>, String> {
    let mut names: Vec<(usize, String)> = vars
        .datasets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| n.parse::<usize>().map(|i| (i, n.clone())).map_err(|_| format!("a dataset named {n:?}")))
        .collect::<std::result::Result<_, _>>()?;
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(expected, (i, name))| {
            if i != expected {
                return Err(format!("dataset {expected} is missing"));
            }
            let ds = vars.dataset(&name).map_err(|e| e.to_string())?;
            let shape: Vec<usize> = ds.shape().map_err(|e| e.to_string())?.iter().map(|&d| d as usize).collect();
            let tensor = match ds.dtype().map_err(|e| e.to_string())? {
                hdf5_pure::DType::F32 => Tensor::from_vec(ds.read_f32().map_err(|e| e.to_string())?, &shape),
                _ => Tensor::from_vec(ds.read_f64().map_err(|e| format!("dataset {name}: {e}"))?, &shape),
            };
            tensor.map_err(|e| format!("dataset {name}: {e}"))
        })
        .collect()
}

/// Each layer's group in `layers/`: Keras names a list of layers' paths after their classes
/// as it names the layers themselves (`dense`, `dense_1`, …, in layer order), whatever names
/// the layers were given.
fn keras_paths(model: &Model) -> Vec<String> {
    crate::model::class_names(model.layers().map(|l| l.kind()))
}

/// Puts the file's weights into `model` (built), layer by layer (see [`keras_paths`]); a
/// message naming the layer that is missing or does not fit.
pub(crate) fn load_weights(model: &mut Model, w: &H5Weights) -> std::result::Result<(), String> {
    let mut all = Vec::new();
    for (layer, path) in model.layers().zip(keras_paths(model)) {
        let params = layer.params();
        let found = w.layers.get(&path).map(Vec::as_slice).unwrap_or_default();
        if found.len() != params.len() {
            return Err(format!(
                "model.weights.h5 has {} weights in layers/{path} for layer {:?} ({}), which has {}",
                found.len(),
                layer.name(),
                layer.kind(),
                params.len()
            ));
        }
        for (p, t) in params.iter().zip(found) {
            if p.value.shape() != t.shape() {
                return Err(format!(
                    "model.weights.h5: {} has shape {:?}, the model's is {:?}",
                    p.name,
                    t.shape(),
                    p.value.shape()
                ));
            }
        }
        all.extend(found.iter().cloned());
    }
    model.set_weights(&all).map_err(|e| e.to_string())
}

/// The optimizer's state from the file's variables (`None` when the file has none): the
/// iteration count and the slots, from Keras' order (see the module docs) to the weights'.
pub(crate) fn optimizer_state(
    opt: &Optimizer,
    model: &Model,
    w: &H5Weights,
) -> std::result::Result<Option<OptimizerState>, String> {
    if w.optimizer.is_empty() {
        return Ok(None);
    }
    let shapes: Vec<Vec<usize>> = model.params().iter().map(|p| p.value.shape().to_vec()).collect();
    let (n, per) = (shapes.len(), opt.slots_needed());
    let vars = &w.optimizer;
    // Nadam keeps its running product `Π u` last (computed again from the step here).
    let tail = usize::from(matches!(opt.rule(), Rule::Nadam { .. }));
    let head = vars.len().checked_sub(n * per + tail).filter(|h| (1..=2).contains(h)).ok_or_else(|| {
        format!(
            "model.weights.h5 has {} optimizer variables; {:?} keeps the iteration count, the learning rate and {per} per weight ({n} weights)",
            vars.len(),
            opt.rule()
        )
    })?;
    let iterations = vars[0].to_scalar().map_err(|e| e.to_string())?;
    let keras_index = |weight: usize, slot: usize| head + slot_index(opt, n, weight, slot);
    let mut slots = Vec::with_capacity(n);
    for (i, shape) in shapes.iter().enumerate() {
        let mut of_weight = Vec::with_capacity(per);
        for k in 0..per {
            let t = &vars[keras_index(i, k)];
            if t.shape() != opt.slot_shape(k, shape).as_slice() {
                return Err(format!(
                    "model.weights.h5: optimizer variable {} has shape {:?}, expected {:?}",
                    keras_index(i, k),
                    t.shape(),
                    opt.slot_shape(k, shape)
                ));
            }
            of_weight.push(t.to_dtype(model.dtype));
        }
        slots.push(of_weight);
    }
    Ok(Some(OptimizerState { iterations: iterations.max(0.0) as u64, learning_rate: opt.learning_rate(), slots }))
}

/// The model's `model.weights.h5` (see the module docs); the optimizer's variables when it is
/// compiled (zeros for slots not created yet).
fn weights_h5(model: &Model) -> Result<Vec<u8>> {
    let mut file = FileBuilder::new();
    let mut layers = file.create_group("layers");
    for (layer, path) in model.layers().zip(keras_paths(model)) {
        let params: Vec<&Tensor> = layer.params().into_iter().map(|p| &p.value).collect();
        let mut group = layers.create_group(&path);
        let vars = vars_group(&mut group, layer.name(), &params);
        group.add_group(vars);
        layers.add_group(group.finish());
    }
    file.add_group(layers.finish());
    if let Some(c) = &model.compiled {
        let mut optimizer = file.create_group("optimizer");
        let state = c.optimizer.state();
        let params = model.params();
        let mut vars = optimizer.create_group("vars");
        vars.set_attr(
            "name",
            AttrValue::String(crate::keras_model::keras_optimizer_class(c.optimizer.rule()).1.into()),
        );
        vars.create_dataset("0").with_i32_data(&[state.iterations.min(i32::MAX as u64) as i32]).with_shape(&[]);
        // The learning rate is a variable unless a schedule computes it.
        let head = if c.optimizer.schedule().is_some() { 1 } else { 2 };
        if head == 2 {
            vars.create_dataset("1").with_f32_data(&[state.learning_rate as f32]).with_shape(&[]);
        }
        let (n, per) = (params.len(), c.optimizer.slots_needed());
        for (weight, p) in params.iter().enumerate() {
            for slot in 0..per {
                let value = match state.slots.get(weight).and_then(|s| s.get(slot)) {
                    Some(t) => t.clone(),
                    None => Tensor::zeros(&c.optimizer.slot_shape(slot, p.value.shape()), p.value.dtype()),
                };
                dataset(&mut vars, &(head + slot_index(&c.optimizer, n, weight, slot)).to_string(), &value);
            }
        }
        if let Rule::Nadam { beta_1, beta_2, epsilon } = c.optimizer.rule() {
            let product =
                crate::optimizers::nadam_step::<f32>(beta_1, beta_2, epsilon, state.iterations, None).u_product_t;
            vars.create_dataset(&(head + n * per).to_string()).with_f32_data(&[product]).with_shape(&[]);
        }
        optimizer.add_group(vars.finish());
        file.add_group(optimizer.finish());
    }
    let mut own = file.create_group("vars");
    own.set_attr("name", AttrValue::String(model.name().into()));
    file.add_group(own.finish());
    file.finish().map_err(|e| Error::Config(format!("model.weights.h5: {e}")))
}

/// A `vars` group named `name` with the tensors as datasets `0`, `1`, …
fn vars_group(parent: &mut hdf5_pure::GroupBuilder, name: &str, tensors: &[&Tensor]) -> hdf5_pure::FinishedGroup {
    let mut vars = parent.create_group("vars");
    vars.set_attr("name", AttrValue::String(name.into()));
    for (i, t) in tensors.iter().enumerate() {
        dataset(&mut vars, &i.to_string(), t);
    }
    vars.finish()
}

/// The tensor as a dataset of its shape and dtype.
fn dataset(group: &mut hdf5_pure::GroupBuilder, name: &str, t: &Tensor) {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    match t.dtype() {
        DType::F32 => group.create_dataset(name).with_f32_data(&t.to_vec::<f32>()).with_shape(&shape),
        DType::F64 => group.create_dataset(name).with_f64_data(&t.to_vec::<f64>()).with_shape(&shape),
    };
}

/// Where slot `slot` of weight `weight` (of `n`) is among Keras' optimizer variables, after
/// the iteration count and the learning rate: variables made by one `add_optimizer_variables`
/// call with several names are interleaved per weight (Adam's `m, v`, Adamax's, Adadelta's),
/// separate calls follow one another (RMSprop's velocities, then momentums, then averages;
/// Adam's `amsgrad` maxima after its moments).
fn slot_index(opt: &Optimizer, n: usize, weight: usize, slot: usize) -> usize {
    // `use_ema`'s averages (each weight's last slot here) come first, one per weight.
    let ema = opt.ema().is_some();
    if ema && slot == opt.rule_slots() {
        return weight;
    }
    let rule_slot = match opt.rule() {
        Rule::Adam { .. } | Rule::AdamW { .. } if slot < 2 => weight * 2 + slot,
        Rule::Adam { .. } | Rule::AdamW { .. } => 2 * n + weight,
        Rule::Adamax { .. } | Rule::Adadelta { .. } | Rule::Nadam { .. } | Rule::Lamb { .. } | Rule::Ftrl { .. } => {
            weight * 2 + slot
        }
        Rule::Adafactor { .. } => weight * 3 + slot,
        _ => slot * n + weight,
    };
    usize::from(ema) * n + rule_slot
}

impl Model {
    /// Writes the model as a Keras 3 `.keras` archive, a zip of `config.json`
    /// ([`Model::to_json`], with the model's and the layers' names and the `compile_config`
    /// when compiled), `metadata.json` and `model.weights.h5` (HDF5: `layers/<path>/vars/<i>`
    /// with each layer's weights, the path named after the layer's class in layer order as
    /// Keras does, and `optimizer/vars/<i>`: the iteration count, the learning rate and the
    /// optimizer's slots in Keras' order), so that `keras.saving.load_model(path)` gives
    /// this model compiled, where its training can go on. The file appears whole or not at all
    /// (`losskit_tensor::npy::write_atomic`).
    ///
    /// Errors as [`Model::to_json`] (not built, heads, a layer Keras does not have) and when the
    /// file cannot be written.
    pub fn save_keras(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let config = self.to_json()?;
        let weights = weights_h5(self)?;
        let date = chrono::Utc::now().format("%Y-%m-%d@%H:%M:%S");
        let metadata = serde_json::json!({"keras_version": KERAS_VERSION, "date_saved": date.to_string()}).to_string();
        let entries = [
            ("metadata.json", metadata.as_bytes()),
            ("config.json", config.as_bytes()),
            ("model.weights.h5", &weights[..]),
        ];
        let zip = zip_of(&entries).map_err(|e| Error::io(path.display().to_string(), "cannot write", e))?;
        losskit_tensor::npy::write_atomic(path, |w| w.write_all(&zip))
    }
}

/// A zip of these entries (stored: Keras' own archives are not compressed), in memory.
fn zip_of(entries: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(*name, options).map_err(std::io::Error::other)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish().map_err(std::io::Error::other)?.into_inner())
}
