//! Running sums of the loss and metrics over an epoch, and the Keras logs made from them.

use crate::callbacks::Logs;
use crate::metrics::{self, Metric};
use crate::model::Model;
use losskit::{Result, Tensor};

pub(crate) struct Accumulators {
    pub(crate) loss: (f64, f64),
    pub(crate) output_losses: Vec<(f64, f64)>,
    pub(crate) metrics: Vec<Vec<(f64, f64)>>,
}

/// Where a logged value comes from in the [`Accumulators`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogSlot {
    /// The total loss.
    Loss,
    /// Output `i`'s loss.
    Output(usize),
    /// Output `o`'s metric `m`.
    Metric(usize, usize),
}

impl Accumulators {
    /// The (sum, count) pair behind a logged value.
    pub(crate) fn at(&self, slot: LogSlot) -> (f64, f64) {
        match slot {
            LogSlot::Loss => self.loss,
            LogSlot::Output(i) => self.output_losses[i],
            LogSlot::Metric(o, m) => self.metrics[o][m],
        }
    }

    pub(crate) fn new(outputs: usize, metrics: usize) -> Self {
        Accumulators {
            loss: (0.0, 0.0),
            output_losses: vec![(0.0, 0.0); outputs],
            metrics: vec![vec![(0.0, 0.0); metrics]; outputs],
        }
    }

    /// One batch of `nb` samples: its total loss, each output's loss, and the metrics'
    /// (sum, count) pairs flattened in output-then-metric order.
    pub(crate) fn add_batch(&mut self, loss: f64, each: &[f64], metric_sums: &[f64], nb: f64) {
        self.loss.0 += loss * nb;
        self.loss.1 += nb;
        for (a, l) in self.output_losses.iter_mut().zip(each) {
            a.0 += l * nb;
            a.1 += nb;
        }
        for (a, pair) in self.metrics.iter_mut().flatten().zip(metric_sums.chunks_exact(2)) {
            a.0 += pair[0];
            a.1 += pair[1];
        }
    }

    /// Every (sum, count) pair in order: the loss, each output's loss, each output's metrics.
    pub(crate) fn flat(&self) -> Vec<f64> {
        std::iter::once(&self.loss)
            .chain(&self.output_losses)
            .chain(self.metrics.iter().flatten())
            .flat_map(|&(s, c)| [s, c])
            .collect()
    }

    /// The inverse of [`Accumulators::flat`] for `(outputs, metrics per output)`.
    pub(crate) fn from_flat(v: &[f64], (outputs, metrics): (usize, usize)) -> std::result::Result<Self, String> {
        let expected = 2 * (1 + outputs + outputs * metrics);
        if v.len() != expected {
            return Err(format!("{} running sums where {expected} were expected", v.len()));
        }
        let pairs: Vec<(f64, f64)> = v.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Ok(Accumulators {
            loss: pairs[0],
            output_losses: pairs[1..=outputs].to_vec(),
            metrics: (0..outputs).map(|o| pairs[1 + outputs + o * metrics..][..metrics].to_vec()).collect(),
        })
    }
}

pub(crate) fn mean((s, c): (f64, f64)) -> f64 {
    if c == 0.0 {
        0.0
    } else {
        s / c
    }
}

/// Log names of the metrics: `accuracy`, or `<output>_accuracy` with several outputs.
pub(crate) fn metric_log_names(model: &Model) -> Vec<Vec<String>> {
    let names = model.output_names();
    let metric_names = model.compiled.as_ref().map(|c| c.metric_names.clone()).unwrap_or_default();
    names
        .iter()
        .map(|o| metric_names.iter().map(|m| if names.len() == 1 { m.clone() } else { format!("{o}_{m}") }).collect())
        .collect()
}

pub(crate) fn resolve_metrics(model: &Model, ys: &[Tensor], n: usize) -> Result<Vec<Vec<Metric>>> {
    let c = model.compiled.as_ref().expect("checked");
    let shapes = model.output_shapes();
    ys.iter()
        .zip(shapes)
        .map(|(y, s)| {
            let pred: Vec<usize> = std::iter::once(n).chain(s).collect();
            c.metric_names.iter().map(|m| metrics::resolve(m, y.shape(), &pred)).collect()
        })
        .collect()
}

pub(crate) fn logs_of(model: &Model, acc: &Accumulators, prefix: &str) -> Logs {
    log_entries(model, acc, prefix).into_iter().map(|(k, slot)| (k, mean(acc.at(slot)))).collect()
}

/// The logs' names and where each value comes from: `loss`, each output's `<name>_loss`
/// (with several outputs), each output's metrics.
pub(crate) fn log_entries(model: &Model, acc: &Accumulators, prefix: &str) -> Vec<(String, LogSlot)> {
    let mut entries = vec![(format!("{prefix}loss"), LogSlot::Loss)];
    let names = model.output_names();
    if names.len() > 1 {
        for (i, (n, _)) in names.iter().zip(&acc.output_losses).enumerate() {
            entries.push((format!("{prefix}{n}_loss"), LogSlot::Output(i)));
        }
    }
    for (o, (out_names, vals)) in metric_log_names(model).iter().zip(&acc.metrics).enumerate() {
        for (m, (n, _)) in out_names.iter().zip(vals).enumerate() {
            entries.push((format!("{prefix}{n}"), LogSlot::Metric(o, m)));
        }
    }
    entries
}

/// `logs` set to the running means of `acc`, in place: the names are made on the first call
/// (empty `entries`) and only the values change after it, so a batch's logs allocate nothing.
pub(crate) fn refresh_logs(model: &Model, logs: &mut Logs, acc: &Accumulators, entries: &mut Vec<(String, LogSlot)>) {
    if entries.is_empty() {
        *entries = log_entries(model, acc, "");
    }
    for (k, slot) in entries.iter() {
        let v = mean(acc.at(*slot));
        match logs.get_mut(k) {
            Some(old) => *old = v,
            None => {
                logs.insert(k.clone(), v);
            }
        }
    }
}

pub(crate) fn accumulate<'t>(
    acc: &mut Accumulators,
    metrics: &[Vec<Metric>],
    outputs: impl IntoIterator<Item = (&'t Tensor, &'t Tensor)>,
    total: f64,
    each: &[f64],
    nb: f64,
) -> Result<()> {
    acc.loss.0 += total * nb;
    acc.loss.1 += nb;
    for (o, l) in acc.output_losses.iter_mut().zip(each) {
        o.0 += l * nb;
        o.1 += nb;
    }
    for ((ms, accs), (y, out)) in metrics.iter().zip(acc.metrics.iter_mut()).zip(outputs) {
        for (m, a) in ms.iter().zip(accs.iter_mut()) {
            let (s, c) = m.batch(y, out)?;
            a.0 += s;
            a.1 += c;
        }
    }
    Ok(())
}
