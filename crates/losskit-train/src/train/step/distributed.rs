//! The data-parallel step: each worker's shard of the batch, gradients all-reduced.

use super::plan::StepPlan;
use super::tape::weighted_total;
use crate::distribute::{self, Collective};
use crate::metrics::Metric;
use crate::model::Model;
use crate::train::data::{Dataset, FitData};
use crate::train::guard::{fail_step, guarded_update, weight_names, GuardAt};
use crate::train::logs::Accumulators;
use crate::train::update::apply_update;
use losskit::{no_grad, Reduction, Result, Tensor};

/// Joins a data-parallel run: rank 0's weights everywhere, and this worker's own stream of
/// the model's generator (dropout masks differ between shards).
pub(crate) fn join_group(model: &mut Model, group: &dyn Collective) -> Result<()> {
    let weights = model.get_weights();
    let mut flat: Vec<f64> = weights.iter().flat_map(|(_, t)| t.to_vec::<f64>()).collect();
    group.broadcast(&mut flat, 0)?;
    let tensors = unflatten(&flat, weights.iter().map(|(_, t)| t.shape()), model.dtype)?;
    model.set_weights(&tensors)?;
    model.rng.set_stream(group.rank() as u64);
    Ok(())
}

/// One data-parallel step on this worker's shard of the global batch `idx`: the losses'
/// shares of the global reduction, their gradients, one all-reduce of the gradients with
/// the loss and the metrics' sums, the NaN guard, the update; the batch goes into `acc`
/// with its global sums.
pub(crate) fn distributed_step(
    model: &mut Model,
    group: &dyn Collective,
    data: &FitData,
    metrics: &[Vec<Metric>],
    idx: &[usize],
    guard: Option<GuardAt<'_>>,
    acc: &mut Accumulators,
) -> Result<()> {
    let rows = distribute::shard(idx, group.rank(), group.size());
    let batch =
        (!rows.is_empty()).then(|| Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), rows, true)).transpose()?;
    let outputs = data.ys.len();
    let (shares, outs) = match &batch {
        Some(b) => {
            let (shares, outs) = loss_shares(model, b, true)?;
            (shares.into_iter().map(|(sum, own)| (Some(sum), own)).collect(), outs)
        }
        None => (vec![(None, None); outputs], Vec::new()),
    };
    // First all-reduce (small, f64): each output's weighted sum and denominator, and the
    // metrics' (sum, count) pairs, all known after the forward pass.
    let partials = shares
        .iter()
        .map(|(sum, own)| Ok((sum.as_ref().map(Tensor::to_scalar).transpose()?.unwrap_or(0.0), *own)))
        .collect::<Result<Vec<_>>>()?;
    let ys: &[Tensor] = batch.as_ref().map_or(&[], |b| &b.ys);
    let outs_now: Vec<Tensor> = outs.iter().map(Tensor::detach).collect();
    let mut sums = local_sums(&partials, outputs, metrics, ys, &outs_now)?;
    group.all_reduce_sum(&mut sums)?;
    let (loss, each) = global_losses(model, &sums, outputs)?;
    // Each output's share: its weighted sum over the global denominator.
    let losses: Vec<Tensor> = shares
        .into_iter()
        .zip(sums.chunks_exact(2).map(|pair| pair[1]))
        .map(|((sum, own), global)| match sum {
            None => Ok(Tensor::scalar(0.0f64).to_dtype(model.dtype)),
            Some(t) if own.is_none() => Ok(t),
            Some(t) if global == 0.0 => t.mul_scalar(0.0),
            Some(t) => t.mul_scalar(1.0 / global),
        })
        .collect::<Result<_>>()?;
    let (total, _) = weighted_total(model, losses, 1.0 / group.size() as f64)?;
    let mut grads = total.backward()?;
    drop(total);
    drop((outs, outs_now));
    let params: Vec<(Tensor, Vec<usize>)> = model
        .params()
        .iter()
        .map(|p| (grads.remove(&p.value).unwrap_or_else(|| p.value.zeros_like()), p.value.shape().to_vec()))
        .collect();
    drop(grads);
    // Second all-reduce: the gradients, in the model's dtype.
    let shapes = || params.iter().map(|(_, s)| s.as_slice());
    let g = match model.dtype {
        losskit::DType::F32 => {
            let mut buf: Vec<f32> = params.iter().flat_map(|(g, _)| g.to_vec::<f32>()).collect();
            group.all_reduce_sum_f32(&mut buf)?;
            unflatten(&buf, shapes(), model.dtype)?
        }
        losskit::DType::F64 => {
            let mut buf: Vec<f64> = params.iter().flat_map(|(g, _)| g.to_vec::<f64>()).collect();
            group.all_reduce_sum(&mut buf)?;
            unflatten(&buf, shapes(), model.dtype)?
        }
    };
    if let Some(guard) = guard {
        let whole = match batch {
            Some(b) => b,
            None => Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), idx, true)?,
        };
        guarded_update(model, &whole, loss, &g, guard)?;
    } else {
        apply_update(model, &g)?;
    }
    acc.add_batch(loss, &each, &sums[2 * outputs..], idx.len() as f64);
    Ok(())
}

/// [`distributed_step`] through the plan (a model the planned step runs, with a loss that has
/// a row kernel): this worker's shard forward and its loss' share, the first all-reduce (the
/// loss and the metrics' sums), the shard's gradient scaled by the global denominator and the
/// regularization's share, the second all-reduce on the plan's own gradient buffers, the NaN
/// guard and the update. The same bits as the tape's data-parallel step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn distributed_planned_step(
    model: &mut Model,
    plan: &mut StepPlan,
    group: &dyn Collective,
    data: &FitData,
    metrics: &[Vec<Metric>],
    idx: &[usize],
    guard: Option<GuardAt<'_>>,
    acc: &mut Accumulators,
) -> Result<()> {
    let rows = distribute::shard(idx, group.rank(), group.size());
    let (sum, own) = match rows.is_empty() {
        true => (0.0, None),
        false => plan.shard_loss(model, &data.x, &data.ys[0], data.w.as_ref(), rows)?,
    };
    // The plan's buffer, kept across steps.
    let mut sums = std::mem::take(&mut plan.sums);
    let (ys, outs) = if rows.is_empty() { (&[][..], &[][..]) } else { plan.reading(rows.len()) };
    local_sums_into(&mut sums, &[(sum, own)], 1, metrics, ys, outs)?;
    group.all_reduce_sum(&mut sums)?;
    let loss_of_output = global_loss(model.compiled.as_ref().expect("checked").losses[0].reduction(), &sums[..2]);
    // As `global_losses` (one output, no loss weight: the planned step has neither), with the
    // plan's penalty instead of the tape's `regularization_loss` (the same bits).
    let loss = loss_of_output + plan.penalty(model).unwrap_or(0.0);
    let global = own.map(|_| sums[1]);
    plan.sums = sums;
    plan.shard_gradients(model, rows.len(), global, 1.0 / group.size() as f64)?;
    plan.all_reduce_gradients(group)?;
    let check = guard.is_some().then_some(true);
    let applied = plan.apply(model, loss, check)?;
    if let Some(guard) = guard {
        guard.norms.push_sums(&plan.sum_squares, || weight_names(model));
        if !applied {
            let shard = if rows.is_empty() { idx } else { rows };
            let batch = Dataset::rows_of(&data.x, &data.ys, data.w.as_ref(), shard, true)?;
            return fail_step(model, &batch, loss, plan.weight_grads(), guard);
        }
    }
    acc.add_batch(loss, &[loss_of_output], &plan.sums[2..], idx.len() as f64);
    Ok(())
}

/// Each output's share of its loss' global reduction on one shard
/// ([`losskit::compute_partial`]: the weighted sum and the denominator), and the outputs; on the
/// tape when `training` (a worker's step), with dropout off when not (its evaluation, which
/// runs it under `no_grad`).
#[allow(clippy::type_complexity)]
pub(crate) fn loss_shares(
    model: &mut Model,
    batch: &Dataset,
    training: bool,
) -> Result<(Vec<(Tensor, Option<f64>)>, Vec<Tensor>)> {
    let outs = model.forward(&batch.x, training)?;
    let compiled = model.compiled.as_ref().expect("checked");
    let shares = outs
        .iter()
        .zip(&batch.ys)
        .zip(&compiled.losses)
        .map(|((out, y), loss)| losskit::compute_partial(loss.as_ref(), y, out, batch.w.as_ref()))
        .collect::<Result<_>>()?;
    Ok((shares, outs))
}

/// Tensors of `shapes` (in order) from the flat values `flat`, in `dtype`.
pub(crate) fn unflatten<'s, T: losskit_tensor::Element>(
    flat: &[T],
    shapes: impl Iterator<Item = &'s [usize]>,
    dtype: losskit::DType,
) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .map(|shape| {
            let n: usize = shape.iter().product();
            let t = Tensor::from_vec(flat[at..at + n].to_vec(), shape)?.to_dtype(dtype);
            at += n;
            Ok(t)
        })
        .collect()
}

/// A worker's share of a data-parallel batch, flat, for one all-reduce: each output's loss
/// `(weighted sum, denominator)` from `partials` (0 for a worker without rows or a `sum`
/// reduction's missing denominator), then every metric's `(sum, count)` on its rows `ys` and
/// outputs `outs` (none when it has no rows).
pub(crate) fn local_sums(
    partials: &[(f64, Option<f64>)],
    outputs: usize,
    metrics: &[Vec<Metric>],
    ys: &[Tensor],
    outs: &[Tensor],
) -> Result<Vec<f64>> {
    let mut sums = Vec::new();
    local_sums_into(&mut sums, partials, outputs, metrics, ys, outs)?;
    Ok(sums)
}

/// [`local_sums`] into `sums` (its capacity kept: no allocation once it has grown).
pub(crate) fn local_sums_into(
    sums: &mut Vec<f64>,
    partials: &[(f64, Option<f64>)],
    outputs: usize,
    metrics: &[Vec<Metric>],
    ys: &[Tensor],
    outs: &[Tensor],
) -> Result<()> {
    let metric_values = metrics.iter().map(Vec::len).sum::<usize>() * 2;
    sums.clear();
    sums.extend(partials.iter().flat_map(|&(sum, d)| [sum, d.unwrap_or(0.0)]));
    sums.resize(2 * outputs, 0.0);
    for ((ms, y), out) in metrics.iter().zip(ys).zip(outs) {
        for m in ms {
            let (sum, count) = m.batch(y, out)?;
            sums.extend([sum, count]);
        }
    }
    sums.resize(2 * outputs + metric_values, 0.0);
    Ok(())
}

/// One output's loss over the whole batch from its all-reduced `[weighted sum, denominator]`:
/// the sum alone for a `sum` reduction, 0 for a zero denominator, else their quotient.
fn global_loss(reduction: Reduction, pair: &[f64]) -> f64 {
    match reduction {
        Reduction::Sum => pair[0],
        _ if pair[1] == 0.0 => 0.0,
        _ => pair[0] / pair[1],
    }
}

/// From a batch's all-reduced [`local_sums`]: each output's loss over the whole batch (its
/// weighted sum over the global denominator; the sum alone for `sum`; 0 for a zero
/// denominator) and the total, with loss weights and the regularization.
pub(crate) fn global_losses(model: &Model, sums: &[f64], outputs: usize) -> Result<(f64, Vec<f64>)> {
    let compiled = model.compiled.as_ref().expect("checked");
    let each: Vec<f64> = (0..outputs).map(|o| global_loss(compiled.losses[o].reduction(), &sums[2 * o..])).collect();
    let regularization = no_grad(|| model.regularization_loss())?.map(|r| r.to_scalar()).transpose()?;
    let total = each.iter().zip(&compiled.loss_weights).map(|(l, w)| l * w.unwrap_or(1.0)).sum::<f64>()
        + regularization.unwrap_or(0.0);
    Ok((total, each))
}
