//! Models: a sequential trunk with optional named heads (one output each).

use crate::compile::{Compile, Compiled};
use crate::layers::{Layer, Param};
use crate::optimizers::Optimizer;
use losskit::{no_grad, DType, Error, Result, Tensor};
use losskit_tensor::random::{self, Rng};
use std::collections::HashMap;
use std::path::Path;

/// An ordered list of layers (a model's trunk, or one head).
#[derive(Default)]
pub struct Stack {
    layers: Vec<Box<dyn Layer>>,
}

impl Stack {
    /// An empty stack.
    pub fn new() -> Stack {
        Stack::default()
    }
    /// Appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Layer + 'static) -> Stack {
        self.layers.push(Box::new(layer));
        self
    }
}

/// Keras' `Sequential`: `Sequential::new().add(Flatten::new()).add(Dense::new(10))`.
pub struct Sequential;

impl Sequential {
    /// An empty sequential model (its layers come with [`Model::add`]).
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Model {
        Model::new()
    }
}

/// A model: a trunk of layers, then either nothing (one output) or named heads (one output
/// each, all fed by the trunk). Built on first use from the input's per-sample shape.
pub struct Model {
    pub(crate) trunk: Vec<Box<dyn Layer>>,
    pub(crate) heads: Vec<(String, Vec<Box<dyn Layer>>)>,
    pub(crate) input_shape: Option<Vec<usize>>,
    pub(crate) dtype: DType,
    pub(crate) rng: Rng,
    pub(crate) compiled: Option<Compiled>,
    /// Set (e.g. by a callback) to stop `fit` after the current batch.
    pub stop_training: bool,
    pub(crate) warnings: Vec<String>,
    pub(crate) last_diagnosis: Option<crate::nan::Diagnosis>,
    /// The path the last `fit`'s steps took ([`Model::step_path`]).
    pub(crate) step_path: Option<crate::step_path::StepPath>,
    /// The model's name (Keras' `model.name`), when given.
    pub(crate) name: Option<String>,
    /// The trunk's layer names when given (a Keras file's), kept by [`Model::build`].
    pub(crate) layer_names: Option<Vec<String>>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// Keras' automatic names of layers of these classes, in order: the class in snake case,
/// numbered from the second of a class on (`dense`, `dense_1`, `flatten`, `dense_2`, …).
pub(crate) fn class_names<'a>(kinds: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    kinds
        .map(|kind| {
            let base = snake_case(kind);
            let n = counts.entry(base.clone()).or_insert(0);
            let name = if *n == 0 { base } else { format!("{base}_{n}") };
            *n += 1;
            name
        })
        .collect()
}

/// A class name in snake case (`"Dense"` → `"dense"`), as Keras names layers and their paths.
fn snake_case(kind: &str) -> String {
    let mut s = String::new();
    for (i, c) in kind.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            s.push('_');
        }
        s.extend(c.to_lowercase());
    }
    s
}

impl Model {
    /// An empty model (f32, seed 0).
    pub fn new() -> Model {
        Model {
            trunk: Vec::new(),
            heads: Vec::new(),
            input_shape: None,
            dtype: DType::F32,
            rng: random::rng(0),
            compiled: None,
            stop_training: false,
            warnings: Vec::new(),
            last_diagnosis: None,
            step_path: None,
            name: None,
            layer_names: None,
        }
    }

    /// The model's name: the one given ([`Model::with_name`], a Keras file's), else Keras'
    /// default, `"sequential"` (`"functional"` with heads).
    pub fn name(&self) -> &str {
        match &self.name {
            Some(n) => n,
            None if self.heads.is_empty() => "sequential",
            None => "functional",
        }
    }

    /// Names the model (Keras' `name=`): kept in the summary and the Keras files it writes.
    pub fn with_name(mut self, name: &str) -> Model {
        self.name = Some(name.to_string());
        self
    }

    /// Names the trunk's layers, in order (Keras' `name=` of each layer): [`Model::build`]
    /// keeps them instead of Keras' automatic `dense`, `dense_1`, ... Errors when the count
    /// differs from the trunk's layers or a name repeats.
    pub fn with_layer_names(mut self, names: &[&str]) -> Result<Model> {
        if names.len() != self.trunk.len() {
            return Err(Error::Config(format!(
                "with_layer_names: {} names for {} layers",
                names.len(),
                self.trunk.len()
            )));
        }
        if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            return Err(Error::Config(format!("with_layer_names: the name {:?} is used twice", dup.1)));
        }
        self.layer_names = Some(names.iter().map(|n| n.to_string()).collect());
        for (layer, name) in self.trunk.iter_mut().zip(names) {
            layer.set_name(name.to_string());
        }
        Ok(self)
    }

    /// Keras' `compile`: checks and stores the optimizer, the loss(es), loss weights and
    /// metrics. Unknown names, a loss missing for an output, or loss weights that do not match
    /// the outputs are errors.
    pub fn compile(&mut self, c: Compile) -> Result<()> {
        self.compiled = Some(c.resolve(&self.output_names())?);
        Ok(())
    }

    /// The compiled optimizer (e.g. to read or change its learning rate).
    pub fn optimizer_mut(&mut self) -> Option<&mut Optimizer> {
        self.compiled.as_mut().map(|c| &mut c.optimizer)
    }

    /// Warnings from the last data check (e.g. unscaled features).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The diagnosis of the last NaN the guard caught in `fit`, if any.
    pub fn last_diagnosis(&self) -> Option<&crate::nan::Diagnosis> {
        self.last_diagnosis.as_ref()
    }

    /// Appends a layer to the trunk (Keras' `model.add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Layer + 'static) -> Model {
        self.trunk.push(Box::new(layer));
        self.input_shape = None;
        self
    }

    /// Adds a named head (an output) fed by the trunk.
    pub fn head(mut self, name: &str, head: Stack) -> Model {
        self.heads.push((name.to_string(), head.layers));
        self.input_shape = None;
        self
    }

    /// The factor of the model's first layer when it is a [`Rescaling`](crate::Rescaling): the
    /// model scales its raw inputs itself.
    pub fn input_rescaling(&self) -> Option<f64> {
        let first: &dyn std::any::Any = self.trunk.first()?.as_ref();
        first.downcast_ref::<crate::layers::Rescaling>().map(crate::layers::Rescaling::scale)
    }

    /// Puts `layer` before the trunk's first layer (e.g. a [`Rescaling`](crate::Rescaling) of
    /// the raw inputs). On a built model the layer must keep the per-sample shape: it is built
    /// for the model's input, and the other layers keep their weights. Its name is made unique
    /// among the layers' (`rescaling`, else `rescaling_1`, ...).
    pub fn prepend(mut self, layer: impl Layer + 'static) -> Result<Model> {
        let mut layer: Box<dyn Layer> = Box::new(layer);
        if let Some(input) = self.input_shape.clone() {
            let out = layer.build(&input, self.dtype, &mut self.rng)?;
            if out != input {
                return Err(Error::Shape {
                    op: "Model::prepend".into(),
                    msg: format!(
                        "{} turns inputs of shape {input:?} into {out:?}; a built model takes only a layer that keeps them",
                        layer.kind()
                    ),
                });
            }
        }
        let taken: Vec<String> = self.layers().map(|l| l.name().to_string()).collect();
        let base = layer.name().to_string();
        let mut name = base.clone();
        for n in 1.. {
            if !taken.contains(&name) {
                break;
            }
            name = format!("{base}_{n}");
        }
        layer.set_name(name.clone());
        self.trunk.insert(0, layer);
        if let Some(names) = &mut self.layer_names {
            names.insert(0, name);
        }
        Ok(self)
    }

    /// Seeds the generator used for weight initialisation and dropout.
    pub fn seed(mut self, seed: u64) -> Model {
        self.rng = random::rng(seed);
        self
    }

    /// The dtype of weights and computation (default f32).
    pub fn with_dtype(mut self, dtype: DType) -> Model {
        self.dtype = dtype;
        self
    }

    /// The dtype of weights and computation.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every layer in order: the trunk, then each head's.
    pub fn layers(&self) -> impl Iterator<Item = &dyn Layer> {
        self.trunk.iter().chain(self.heads.iter().flat_map(|(_, h)| h.iter())).map(|l| l.as_ref())
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Layer>> {
        self.trunk.iter_mut().chain(self.heads.iter_mut().flat_map(|(_, h)| h.iter_mut()))
    }

    /// Whether the model has been built.
    pub fn is_built(&self) -> bool {
        self.input_shape.is_some()
    }

    /// Builds every layer for inputs of per-sample shape `input` (e.g. `[8, 8]`), naming them
    /// as Keras does (`dense`, `dense_1`, ...). Rebuilding re-initialises the weights.
    pub fn build(&mut self, input: &[usize]) -> Result<()> {
        if self.trunk.is_empty() && self.heads.is_empty() {
            return Err(Error::Shape { op: "Model::build".into(), msg: "the model has no layers".into() });
        }
        let names = class_names(self.layers().map(|l| l.kind()));
        for (layer, name) in self.layers_mut().zip(names) {
            layer.set_name(name);
        }
        if let Some(names) = &self.layer_names {
            for (layer, name) in self.trunk.iter_mut().zip(names) {
                layer.set_name(name.clone());
            }
        }
        let dtype = self.dtype;
        let mut shape = input.to_vec();
        for layer in self.trunk.iter_mut() {
            shape = layer.build(&shape, dtype, &mut self.rng)?;
        }
        for (_, head) in self.heads.iter_mut() {
            let mut s = shape.clone();
            for layer in head.iter_mut() {
                s = layer.build(&s, dtype, &mut self.rng)?;
            }
        }
        self.input_shape = Some(input.to_vec());
        Ok(())
    }

    /// Builds the model for `x` (shape `(N, ...)`) if it is not built yet, and checks the shape.
    pub(crate) fn ensure_built(&mut self, x: &Tensor) -> Result<()> {
        if x.rank() == 0 {
            return Err(Error::Shape { op: "Model".into(), msg: "inputs need a batch axis, got a scalar".into() });
        }
        let per_sample = &x.shape()[1..];
        match &self.input_shape {
            None => self.build(per_sample),
            Some(s) if s.as_slice() == per_sample => Ok(()),
            Some(s) => Err(Error::Shape {
                op: "Model".into(),
                msg: format!("the model was built for inputs of shape (N, {s:?}), got {:?}", x.shape()),
            }),
        }
    }

    /// The output names: the head names, or the last layer's name for a single output.
    pub fn output_names(&self) -> Vec<String> {
        if self.heads.is_empty() {
            vec![self.trunk.last().map(|l| l.name().to_string()).unwrap_or_else(|| "output".into())]
        } else {
            self.heads.iter().map(|(n, _)| n.clone()).collect()
        }
    }

    /// The per-sample shape of each output, once built.
    pub fn output_shapes(&self) -> Vec<Vec<usize>> {
        let trunk_out = self
            .trunk
            .last()
            .and_then(|l| l.output_shape())
            .map(<[usize]>::to_vec)
            .or_else(|| self.input_shape.clone());
        if self.heads.is_empty() {
            vec![trunk_out.unwrap_or_default()]
        } else {
            self.heads
                .iter()
                .map(|(_, h)| {
                    h.last()
                        .and_then(|l| l.output_shape())
                        .map(<[usize]>::to_vec)
                        .or_else(|| trunk_out.clone())
                        .unwrap_or_default()
                })
                .collect()
        }
    }

    /// Runs the model on a batch; one tensor per output.
    pub fn forward(&mut self, x: &Tensor, training: bool) -> Result<Vec<Tensor>> {
        self.ensure_built(x)?;
        let x = x.to_dtype(self.dtype);
        let mut h = x;
        for layer in &self.trunk {
            h = layer.forward(&h, training, &mut self.rng)?;
        }
        if self.heads.is_empty() {
            return Ok(vec![h]);
        }
        let mut outs = Vec::with_capacity(self.heads.len());
        for (_, head) in &self.heads {
            let mut o = h.clone();
            for layer in head {
                o = layer.forward(&o, training, &mut self.rng)?;
            }
            outs.push(o);
        }
        Ok(outs)
    }

    /// The sum of every layer's weight penalty (Keras adds it to the loss), if any layer has one.
    pub fn regularization_loss(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for layer in self.layers() {
            if let Some(p) = layer.regularization()? {
                total = Some(match total {
                    None => p,
                    Some(t) => t.add(&p)?,
                });
            }
        }
        Ok(total)
    }

    /// Each layer's name and its output on `x` (trunk, then heads), without gradients; for
    /// diagnostics.
    pub fn trace(&mut self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.ensure_built(x)?;
        let mut out = Vec::new();
        let mut h = x.to_dtype(self.dtype).detach();
        no_grad(|| -> Result<()> {
            for layer in &self.trunk {
                h = layer.forward(&h, false, &mut self.rng)?;
                out.push((layer.name().to_string(), h.clone()));
            }
            for (_, head) in &self.heads {
                let mut o = h.clone();
                for layer in head {
                    o = layer.forward(&o, false, &mut self.rng)?;
                    out.push((layer.name().to_string(), o.clone()));
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// `(layer name, regularizer)` of every regularized layer.
    pub fn regularizers(&self) -> Vec<(String, crate::regularizers::Regularizer)> {
        self.layers().filter_map(|l| l.regularizer().map(|r| (l.name().to_string(), r))).collect()
    }

    /// The trainable weights, in layer order (kernel before bias, as Keras' `get_weights`).
    pub fn params(&self) -> Vec<&Param> {
        self.layers().flat_map(|l| l.params()).collect()
    }

    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers_mut().flat_map(|l| l.params_mut()).collect()
    }

    /// The weights as `(name, value)` pairs (constants), in Keras' order.
    pub fn get_weights(&self) -> Vec<(String, Tensor)> {
        self.params().into_iter().map(|p| (p.name.clone(), p.value.detach())).collect()
    }

    /// Replaces the weights, in Keras' order; each must have the current shape.
    pub fn set_weights(&mut self, weights: &[Tensor]) -> Result<()> {
        let dtype = self.dtype;
        let mut params = self.params_mut();
        if params.len() != weights.len() {
            return Err(Error::Shape {
                op: "set_weights".into(),
                msg: format!("the model has {} weights, got {}", params.len(), weights.len()),
            });
        }
        for (p, w) in params.iter_mut().zip(weights) {
            if p.value.shape() != w.shape() {
                return Err(Error::Shape {
                    op: "set_weights".into(),
                    msg: format!("{} has shape {:?}, got {:?}", p.name, p.value.shape(), w.shape()),
                });
            }
            p.value = w.detach().to_dtype(dtype).requires_grad();
        }
        Ok(())
    }

    /// The number of trainable scalars.
    pub fn count_params(&self) -> usize {
        self.params().iter().map(|p| p.value.numel()).sum()
    }

    /// Keras' `model.summary()`: layers, output shapes and parameter counts.
    pub fn summary(&self) -> String {
        let rows: Vec<(String, String, usize)> = self
            .layers()
            .map(|l| {
                let shape = l.output_shape().map(|s| {
                    let dims: Vec<String> =
                        std::iter::once("None".to_string()).chain(s.iter().map(|d| d.to_string())).collect();
                    format!("({})", dims.join(", "))
                });
                let params: usize = l.params().iter().map(|p| p.value.numel()).sum();
                (format!("{} ({})", l.name(), l.kind()), shape.unwrap_or_else(|| "?".into()), params)
            })
            .collect();
        let (w1, w2, w3) = (33usize, 24usize, 15usize);
        let line = |l: &str, m: &str, r: &str, f: &str| {
            format!("{l}{}{m}{}{m}{}{r}\n", f.repeat(w1), f.repeat(w2), f.repeat(w3))
        };
        let mut s = format!("Model: \"{}\"\n", self.name());
        s += &line("┏", "┳", "┓", "━");
        s += &format!(
            "┃ {:<w$}┃ {:<v$}┃ {:>u$} ┃\n",
            "Layer (type)",
            "Output Shape",
            "Param #",
            w = w1 - 1,
            v = w2 - 1,
            u = w3 - 2
        );
        s += &line("┡", "╇", "┩", "━");
        for (i, (name, shape, params)) in rows.iter().enumerate() {
            s += &format!(
                "│ {:<w$}│ {:<v$}│ {:>u$} │\n",
                name,
                shape,
                group(*params),
                w = w1 - 1,
                v = w2 - 1,
                u = w3 - 2
            );
            if i + 1 < rows.len() {
                s += &line("├", "┼", "┤", "─");
            }
        }
        s += &line("└", "┴", "┘", "─");
        let total = self.count_params();
        let bytes = total * if self.dtype == DType::F32 { 4 } else { 8 };
        s += &format!(" Total params: {} ({})\n", group(total), human_bytes(bytes));
        s += &format!(" Trainable params: {} ({})\n", group(total), human_bytes(bytes));
        s += " Non-trainable params: 0 (0.00 B)\n";
        s
    }

    /// Saves the weights as a safetensors file (written to a temporary file, then renamed).
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::tensor_file::write(path.as_ref(), &self.get_weights(), None)
    }

    /// Loads weights saved by [`Model::save_weights`]: every weight of this (built) model must be
    /// in the file with the same shape.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ferr = |msg: String| Error::file(path.display().to_string(), msg);
        if !self.is_built() {
            return Err(ferr("build the model (or fit/predict once) before loading weights".into()));
        }
        let mut file = crate::tensor_file::read(path)?;
        let values = self.weights_from(&mut file.tensors).map_err(ferr)?;
        self.set_weights(&values)
    }

    /// This model's weights taken out of `tensors` by name (each with the model's shape), or
    /// what is missing or different.
    pub(crate) fn weights_from(
        &self,
        tensors: &mut std::collections::BTreeMap<String, Tensor>,
    ) -> std::result::Result<Vec<Tensor>, String> {
        self.params()
            .iter()
            .map(|p| {
                let t = tensors.remove(&p.name).ok_or_else(|| format!("has no weight named {:?}", p.name))?;
                if t.shape() != p.value.shape() {
                    return Err(format!(
                        "{} has shape {:?}, the model expects {:?}",
                        p.name,
                        t.shape(),
                        p.value.shape()
                    ));
                }
                Ok(t)
            })
            .collect()
    }
}

/// Concatenates tensors along the first axis (no gradient).
pub(crate) fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(Error::Shape { op: "concat".into(), msg: "nothing to concatenate".into() });
    };
    let mut shape = first.shape().to_vec();
    shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
    let dtype = first.dtype();
    match dtype {
        DType::F32 => Tensor::from_vec(parts.iter().flat_map(|p| p.to_vec::<f32>()).collect(), &shape),
        DType::F64 => Tensor::from_vec(parts.iter().flat_map(|p| p.to_vec::<f64>()).collect(), &shape),
    }
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.2} KB", b / 1024.0)
    } else {
        format!("{b:.2} B")
    }
}
