//! Keras' `evaluate` and `predict`, in batches, on the planned forward pass when the model
//! allows it.

use super::data::{count_rows, rows, Dataset};
use super::logs::{accumulate, logs_of, refresh_logs, resolve_metrics, Accumulators};
use super::step::{global_losses, inference_plan, local_sums, loss_shares, losses_on};
use crate::callbacks::{Callback, Logs};
use crate::distribute::{self, Collective};
use crate::metrics::Metric;
use crate::model::{concat_rows, Model};
use losskit::{no_grad, Result, Tensor};

/// The loss and metrics over `x`, `ys` in batches, as running means over all samples;
/// with `group`, each worker takes its shard of every batch ([`Model::shard_losses`]).
pub(crate) fn evaluate_inner(
    model: &mut Model,
    x: &Tensor,
    ys: &[Tensor],
    w: Option<&Tensor>,
    batch_size: usize,
    callbacks: &mut [&mut dyn Callback],
    group: Option<&dyn Collective>,
) -> Result<Logs> {
    let n = count_rows("x", x)?;
    let metrics = resolve_metrics(model, ys, n)?;
    let mut acc = Accumulators::new(ys.len(), metrics.first().map_or(0, Vec::len));
    let empty = Logs::new();
    for cb in callbacks.iter_mut() {
        cb.on_test_begin(&empty, model)?;
    }
    let batch_size = batch_size.max(1);
    let (mut logs, mut entries) = (Logs::new(), Vec::new());
    let mut plan = match (group.filter(|g| g.size() > 1), w, ys) {
        (None, None, [y]) => inference_plan(model, x, Some(y)),
        (None, Some(w), [y]) => inference_plan(model, x, Some(y)).and_then(|p| p.with_sample_weights(w, n).ok()),
        _ => None,
    };
    for (step, start) in (0..n).step_by(batch_size).enumerate() {
        let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
        for cb in callbacks.iter_mut() {
            cb.on_test_batch_begin(step, &empty, model)?;
        }
        match group.filter(|g| g.size() > 1) {
            Some(g) => shard_losses(model, x, ys, w, &idx, &metrics, g, &mut acc)?,
            None if plan.is_some() => {
                let plan = plan.as_mut().expect("checked");
                let loss = plan.infer(model, x, Some((&ys[0], w)), &idx)?.expect("the loss of targets");
                let (yb, outs) = plan.reading(idx.len());
                accumulate(&mut acc, &metrics, yb.iter().zip(outs), loss, &[loss], idx.len() as f64)?;
            }
            None => {
                let xb = rows(x, &idx)?;
                let yb: Vec<Tensor> = ys.iter().map(|t| rows(t, &idx)).collect::<Result<_>>()?;
                let wb = w.map(|w| rows(w, &idx)).transpose()?;
                let (total, each, outs) = no_grad(|| losses_on(model, &xb, &yb, wb.as_ref(), false))?;
                accumulate(&mut acc, &metrics, yb.iter().zip(&outs), total.to_scalar()?, &each, idx.len() as f64)?;
            }
        }
        refresh_logs(model, &mut logs, &acc, &mut entries);
        for cb in callbacks.iter_mut() {
            cb.on_test_batch_end(step, &logs, model)?;
        }
    }
    let logs = logs_of(model, &acc, "");
    for cb in callbacks.iter_mut() {
        cb.on_test_end(&logs, model)?;
    }
    Ok(logs)
}

/// One evaluation batch `idx` split across the workers of `group`: each worker's losses
/// (weighted sums and denominators) and metric sums, summed across workers, then divided
/// by the batch's global denominators, into `acc`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn shard_losses(
    model: &mut Model,
    x: &Tensor,
    ys: &[Tensor],
    w: Option<&Tensor>,
    idx: &[usize],
    metrics: &[Vec<Metric>],
    group: &dyn Collective,
    acc: &mut Accumulators,
) -> Result<()> {
    let rows_here = distribute::shard(idx, group.rank(), group.size());
    let outputs = ys.len();
    let mut buf = if rows_here.is_empty() {
        local_sums(&[], outputs, metrics, &[], &[])?
    } else {
        let batch = Dataset::rows_of(x, ys, w, rows_here, true)?;
        let (shares, outs) = no_grad(|| loss_shares(model, &batch, false))?;
        let partials =
            shares.iter().map(|(sum, denominator)| Ok((sum.to_scalar()?, *denominator))).collect::<Result<Vec<_>>>()?;
        local_sums(&partials, outputs, metrics, &batch.ys, &outs)?
    };
    group.all_reduce_sum(&mut buf)?;
    let (total, each) = global_losses(model, &buf, outputs)?;
    acc.add_batch(total, &each, &buf[2 * outputs..], idx.len() as f64);
    Ok(())
}

/// Keras' `predict`: the outputs for `x` in batches of `batch_size` (no dropout, no
/// gradients), on the planned forward pass when the model allows it.
pub(crate) fn predict(model: &mut Model, x: &Tensor, batch_size: usize) -> Result<Vec<Tensor>> {
    let batch_size = batch_size.max(1);
    model.ensure_built(x)?;
    if let Some(mut plan) = inference_plan(model, x, None) {
        return Ok(vec![plan.predict(model, x, batch_size)?]);
    }
    let n = count_rows("x", x)?;
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    for start in (0..n).step_by(batch_size) {
        let xb = rows(x, &(start..(start + batch_size).min(n)).collect::<Vec<_>>())?;
        parts.push(no_grad(|| model.forward(&xb, false))?);
    }
    let outputs = model.output_names().len();
    (0..outputs).map(|o| concat_rows(&parts.iter().map(|p| p[o].clone()).collect::<Vec<_>>())).collect()
}

/// [`Model::predict`] data-parallel: each worker of `group` predicts its contiguous share
/// of the rows, and every worker returns all the predictions (gathered by a sum of
/// zero-padded shares, exact).
pub(crate) fn predict_distributed(
    model: &mut Model,
    x: &Tensor,
    batch_size: usize,
    group: &dyn Collective,
) -> Result<Vec<Tensor>> {
    model.ensure_built(x)?;
    let n = count_rows("x", x)?;
    let all: Vec<usize> = (0..n).collect();
    let share = distribute::shard(&all, group.rank(), group.size());
    let mine = if share.is_empty() { Vec::new() } else { predict(model, &rows(x, share)?, batch_size)? };
    let shapes = model.output_shapes();
    let mut gathered = Vec::with_capacity(shapes.len());
    for (o, shape) in shapes.iter().enumerate() {
        let per_row: usize = shape.iter().product();
        let mut buf = vec![0.0; n * per_row];
        if let Some(p) = mine.get(o) {
            let start = share.first().copied().unwrap_or(0) * per_row;
            buf[start..start + p.numel()].copy_from_slice(&p.to_vec::<f64>());
        }
        group.all_reduce_sum(&mut buf)?;
        let full: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
        gathered.push(Tensor::from_vec(buf, &full)?.to_dtype(model.dtype));
    }
    Ok(gathered)
}
