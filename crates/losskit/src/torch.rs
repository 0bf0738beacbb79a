//! PyTorch's losses with PyTorch's parameter names and semantics (`torch.nn.*Loss`).
//!
//! Reductions take PyTorch's names: `"mean"` (default), `"sum"`, `"none"` (`KLDivLoss` also
//! `"batchmean"`). `none` returns element-wise values for the element-wise losses (PyTorch's
//! rule, unlike Keras' per-sample mean). For `NLLLoss` and `CrossEntropyLoss` with class
//! indices, `mean` is the weighted mean `Σ w[y_n]·l_n / Σ w[y_n]` over non-ignored samples.
//!
//! Losses with several inputs take them stacked in `y_pred`: `MarginRankingLoss` `(N, 2)` =
//! `[x1, x2]`; `CosineEmbeddingLoss` `(N, 2, D)` = `[x1, x2]`; `TripletMarginLoss` `(N, 3, D)` =
//! `[anchor, positive, negative]` (its `y_true` is ignored); `GaussianNLLLoss` `(..., 2)` =
//! `[mean, var]`. The class axis of `NLLLoss`/`CrossEntropyLoss` inputs is axis 1, as in PyTorch.

use crate::kernel_node::{element_loss, row_loss, sparse_row_loss_with, Rows};
use crate::param_loss::{ParamLoss, Spec, Style};
use crate::targets::class_indices;
use crate::{Error, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;

fn constant(v: Vec<f64>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape)?.to_dtype(like.dtype()))
}

fn no_check(_: &ParamLoss) -> Result<()> {
    Ok(())
}

fn shape_err(loss: &str, msg: String) -> Error {
    Error::Shape { op: loss.into(), msg }
}

/// Moves PyTorch's class axis (1) last: `(N, C, d...)` → `(N, d..., C)`.
fn class_last(x: &Tensor) -> Result<Tensor> {
    if x.rank() <= 2 {
        return Ok(x.clone());
    }
    let mut perm: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
    perm.push(1);
    x.transpose(Some(&perm))
}

fn weights(p: &ParamLoss, classes: usize, loss: &str) -> Result<Option<Vec<f64>>> {
    match p.f64_list("weight")? {
        Some(w) if w.len() != classes => {
            Err(shape_err(loss, format!("weight has {} entries but there are {classes} classes", w.len())))
        }
        w => Ok(w),
    }
}

/// Class-index targets: `(indices with ignored → 0, per-sample class weight w[y] (0 if ignored))`.
fn index_targets(p: &ParamLoss, loss: &str, target: &Tensor, classes: usize) -> Result<(Tensor, Vec<f64>)> {
    let ignore = p.int("ignore_index")?;
    let (idx, mask) = class_indices(loss, target, classes, Some(ignore))?;
    let w = weights(p, classes, loss)?;
    let labels = idx.to_vec::<f64>();
    let m = mask.map(|m| m.to_vec::<f64>()).unwrap_or_else(|| vec![1.0; labels.len()]);
    let wy: Vec<f64> = labels
        .iter()
        .zip(&m)
        .map(|(&l, &keep)| if keep == 0.0 { 0.0 } else { w.as_ref().map_or(1.0, |w| w[l as usize]) })
        .collect();
    let safe: Vec<f64> = labels.iter().map(|&l| l.max(0.0)).collect();
    Ok((Tensor::from_vec(safe, idx.shape())?, wy))
}

fn nll(p: &ParamLoss, target: &Tensor, input: &Tensor) -> Result<PerSample> {
    let x = class_last(input)?;
    let classes = *x.shape().last().ok_or_else(|| shape_err("nll_loss", "scalar input".into()))?;
    let (idx, wy) = index_targets(p, "nll_loss", target, classes)?;
    let values = x.take_along_last(&idx)?.neg();
    let mask = constant(wy, idx.shape(), input)?;
    Ok(PerSample { values, mask: Some(mask) })
}

fn cross_entropy(p: &ParamLoss, target: &Tensor, input: &Tensor) -> Result<PerSample> {
    let x = class_last(input)?;
    let classes = *x.shape().last().ok_or_else(|| shape_err("cross_entropy", "scalar input".into()))?;
    let eps = p.f64("label_smoothing")?;
    let w = weights(p, classes, "cross_entropy")?;
    if target.shape() == input.shape() {
        return cross_entropy_probabilities(target, &x, input, eps, w);
    }
    // Class indices: the sparse cross-entropy kernel, with PyTorch's weights and smoothing:
    // l = (1-ε)·w[y]·(-log p_y) + ε/C·Σ_c w_c·(-log p_c), one tape node.
    let ignore = p.int("ignore_index")?;
    let (idx, _) = class_indices("cross_entropy", target, classes, Some(ignore))?;
    let wy: Vec<f64> = idx
        .to_vec::<f64>()
        .iter()
        .map(|&l| if l < 0.0 { 0.0 } else { w.as_ref().map_or(1.0, |w| w[l as usize]) })
        .collect();
    let kernel =
        kernels::SparseCategoricalCrossentropy { from_logits: true, class_weights: w.as_deref(), label_smoothing: eps };
    // Values are l / w[y] with the mask w[y]: none → l, sum → Σl, mean → Σl / Σw[y] (PyTorch).
    let inv: Vec<f64> = wy.iter().map(|&w| if w == 0.0 { 0.0 } else { 1.0 / w }).collect();
    let (inv, mask) = (constant(inv, idx.shape(), input)?, constant(wy, idx.shape(), input)?);
    let values =
        sparse_row_loss_with("cross_entropy", kernel, &idx, &x, Rows { own_mask: Some(&mask), factor: Some(&inv) })?;
    Ok(PerSample { values, mask: Some(mask) })
}

/// `CrossEntropyLoss` with probability targets: `-Σ_c w_c·y'_c·log p_c`, `y' = y(1-ε) + ε/C`.
/// Without weights this is the categorical cross-entropy kernel (Keras' smoothing is the same).
fn cross_entropy_probabilities(
    target: &Tensor,
    x: &Tensor,
    input: &Tensor,
    eps: f64,
    w: Option<Vec<f64>>,
) -> Result<PerSample> {
    let classes = x.shape()[x.rank() - 1];
    let y = class_last(&target.detach())?;
    let Some(w) = w else {
        let kernel = kernels::CategoricalCrossentropy {
            from_logits: true,
            label_smoothing: eps,
            smoothing_share: 1.0 / classes as f64,
        };
        return Ok(row_loss("cross_entropy", kernel, &y, x)?.into());
    };
    let w_row = constant(w, &[classes], input)?;
    let y = y.mul_scalar(1.0 - eps)?.add_scalar(eps / classes as f64)?;
    Ok(y.mul(&w_row)?.mul(&x.log_softmax(-1)?)?.sum(&[-1], false)?.neg().into())
}

/// `SmoothL1Loss`, element-wise, one tape node (the `SmoothL1` element kernel).
fn smooth_l1(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let kernel = kernels::SmoothL1 { beta: p.f64("beta")? };
    Ok(element_loss("smooth_l1_loss", kernel, y, x)?.into())
}

fn pair(loss: &str, x: &Tensor, k: usize, axis: isize) -> Result<(Tensor, Tensor)> {
    let ax = if axis < 0 { x.rank() as isize + axis } else { axis };
    if ax < 0 || x.shape().get(ax as usize) != Some(&k) {
        return Err(shape_err(
            loss,
            format!("expected the inputs stacked on axis {axis} of size {k}, got y_pred of shape {:?}", x.shape()),
        ));
    }
    Ok((x.gather(axis, &[0])?.squeeze(axis)?, x.gather(axis, &[1])?.squeeze(axis)?))
}

fn margin_ranking(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let (x1, x2) = pair("margin_ranking_loss", x, 2, -1)?;
    Ok(y.mul(&x1.sub(&x2)?)?.neg().add_scalar(p.f64("margin")?)?.relu().into())
}

fn select(y: &Tensor, f: impl Fn(f64) -> bool, like: &Tensor) -> Result<Tensor> {
    constant(y.to_vec::<f64>().into_iter().map(|v| f64::from(u8::from(f(v)))).collect(), y.shape(), like)
}

fn hinge_embedding(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let margin_part = x.neg().add_scalar(p.f64("margin")?)?.relu().mul(&select(y, |v| v != 1.0, x)?)?;
    let self_part = x.mul(&select(y, |v| v != -1.0, x)?)?;
    Ok(margin_part.add(&self_part)?.into())
}

fn soft_margin(_: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    Ok(y.mul(x)?.neg().softplus().into())
}

fn multilabel_soft_margin(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let c = *x.shape().last().ok_or_else(|| shape_err("multilabel_soft_margin_loss", "scalar input".into()))?;
    let log_sig = x.neg().softplus().neg();
    let log_sig_neg = x.softplus().neg();
    let mut t = y.mul(&log_sig)?.add(&y.neg().add_scalar(1.0)?.mul(&log_sig_neg)?)?;
    if let Some(w) = weights(p, c, "multilabel_soft_margin_loss")? {
        t = t.mul(&constant(w, &[c], x)?)?;
    }
    Ok(t.sum(&[-1], false)?.mul_scalar(-1.0 / c as f64)?.into())
}

fn multilabel_margin(_: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    if x.rank() != 2 || y.shape() != x.shape() {
        return Err(shape_err(
            "multilabel_margin_loss",
            format!("expected y_pred (N, C) and target indices (N, C), got {:?} and {:?}", x.shape(), y.shape()),
        ));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let t = y.to_vec::<f64>();
    let mut mask = vec![0.0; n * c * c];
    for r in 0..n {
        let mut targets = vec![false; c];
        for &v in t[r * c..(r + 1) * c].iter().take_while(|&&v| v >= 0.0) {
            let k = v as usize;
            if k >= c || v.fract() != 0.0 {
                return Err(Error::Value {
                    op: "multilabel_margin_loss".into(),
                    msg: format!("target {v} in row {r} is not a class index in 0..{c}"),
                });
            }
            targets[k] = true;
        }
        for j in (0..c).filter(|&j| targets[j]) {
            for i in (0..c).filter(|&i| !targets[i]) {
                mask[r * c * c + j * c + i] = 1.0;
            }
        }
    }
    let diff = x.expand_dims(2)?.sub(&x.expand_dims(1)?)?;
    let terms = diff.neg().add_scalar(1.0)?.relu().mul(&constant(mask, &[n, c, c], x)?)?;
    Ok(terms.sum(&[1, 2], false)?.mul_scalar(1.0 / c as f64)?.into())
}

fn cosine_embedding(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let (a, b) = pair("cosine_embedding_loss", x, 2, 1)?;
    const EPSILON: f64 = 1e-12;
    let dot = a.mul(&b)?.sum(&[-1], false)?;
    let denom = a
        .square()
        .sum(&[-1], false)?
        .add_scalar(EPSILON)?
        .mul(&b.square().sum(&[-1], false)?.add_scalar(EPSILON)?)?
        .sqrt();
    let cos = dot.div(&denom)?;
    let pos = cos.neg().add_scalar(1.0)?.mul(&select(y, |v| v == 1.0, x)?)?;
    let neg = cos.add_scalar(-p.f64("margin")?)?.relu().mul(&select(y, |v| v == -1.0, x)?)?;
    Ok(pos.add(&neg)?.into())
}

fn multi_margin(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    if x.rank() != 2 {
        return Err(shape_err("multi_margin_loss", format!("expected y_pred (N, C), got {:?}", x.shape())));
    }
    let c = x.shape()[1];
    let (idx, _) = class_indices("multi_margin_loss", y, c, None)?;
    let labels = idx.to_vec::<f64>();
    let w = weights(p, c, "multi_margin_loss")?;
    let n = labels.len();
    let others: Vec<f64> = (0..n * c).map(|k| f64::from(u8::from(k % c != labels[k / c] as usize))).collect();
    let wy: Vec<f64> = labels.iter().map(|&l| w.as_ref().map_or(1.0, |w| w[l as usize])).collect();
    let xy = x.take_along_last(&idx)?.expand_dims(1)?;
    let mut t = x.sub(&xy)?.add_scalar(p.f64("margin")?)?.relu();
    let power = p.f64("p")?;
    if power != 1.0 {
        t = t.powf(power)?;
    }
    let t = t.mul(&constant(others, &[n, c], x)?)?.mul(&constant(wy, &[n, 1], x)?)?;
    Ok(t.sum(&[1], false)?.mul_scalar(1.0 / c as f64)?.into())
}

fn check_multi_margin(p: &ParamLoss) -> Result<()> {
    let v = p.f64("p")?;
    p.require(v == 1.0 || v == 2.0, "p", "1 or 2 (as PyTorch)")
}

fn p_norm(d: &Tensor, power: f64) -> Result<Tensor> {
    d.abs().powf(power)?.sum(&[-1], false)?.powf(1.0 / power)
}

fn triplet_margin(p: &ParamLoss, _y: &Tensor, x: &Tensor) -> Result<PerSample> {
    if x.rank() != 3 || x.shape()[1] != 3 {
        return Err(shape_err(
            "triplet_margin_loss",
            format!("expected y_pred (N, 3, D) = [anchor, positive, negative], got {:?}", x.shape()),
        ));
    }
    let part = |k: usize| -> Result<Tensor> { x.gather(1, &[k])?.squeeze(1) };
    let (a, pos, neg) = (part(0)?, part(1)?, part(2)?);
    let (power, eps) = (p.f64("p")?, p.f64("eps")?);
    let dist = |u: &Tensor, v: &Tensor| -> Result<Tensor> { p_norm(&u.sub(v)?.add_scalar(eps)?, power) };
    let d_ap = dist(&a, &pos)?;
    let mut d_an = dist(&a, &neg)?;
    if p.bool("swap")? {
        d_an = d_an.minimum(&dist(&pos, &neg)?)?;
    }
    Ok(d_ap.sub(&d_an)?.add_scalar(p.f64("margin")?)?.relu().into())
}

fn gaussian_nll(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let (mean, var) = pair("gaussian_nll_loss", x, 2, -1)?;
    let eps = p.f64("eps")?;
    if var.to_vec::<f64>().iter().any(|&v| v < 0.0) {
        return Err(Error::Value { op: "gaussian_nll_loss".into(), msg: "var has a negative entry".into() });
    }
    // PyTorch clamps var at eps without changing its gradient (a clamp under no_grad).
    let v = var.add(&var.maximum_scalar(eps)?.sub(&var)?.detach())?;
    let mut l = v.log().add(&mean.sub(y)?.square().div(&v)?)?.mul_scalar(0.5)?;
    if p.bool("full")? {
        l = l.add_scalar(0.5 * (2.0 * std::f64::consts::PI).ln())?;
    }
    Ok(l.into())
}

fn poisson_nll(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let mut l = if p.bool("log_input")? {
        x.exp().sub(&y.mul(x)?)?
    } else {
        x.sub(&y.mul(&x.add_scalar(p.f64("eps")?)?.log())?)?
    };
    if p.bool("full")? {
        let stirling: Vec<f64> = y
            .to_vec::<f64>()
            .iter()
            .map(|&t| if t > 1.0 { t * t.ln() - t + 0.5 * (2.0 * std::f64::consts::PI * t).ln() } else { 0.0 })
            .collect();
        l = l.add(&constant(stirling, y.shape(), x)?)?;
    }
    Ok(l.into())
}

fn kl_div(p: &ParamLoss, t: &Tensor, input: &Tensor) -> Result<PerSample> {
    let l = if p.bool("log_target")? {
        t.exp().mul(&t.sub(input)?)?
    } else {
        // t·(ln t - input), 0 where t = 0 (xlogy).
        let tv = t.to_vec::<f64>();
        let xlogy = constant(tv.iter().map(|&v| if v == 0.0 { 0.0 } else { v * v.ln() }).collect(), t.shape(), input)?;
        xlogy.sub(&t.mul(input)?)?
    };
    if p.reduction_name() == "batchmean" && l.rank() > 1 {
        let axes: Vec<isize> = (1..l.rank() as isize).collect();
        return Ok(l.sum(&axes, false)?.into());
    }
    Ok(l.into())
}

macro_rules! torch_spec {
    ($name:ident, $class:literal, $fname:literal, $mean:expr, [$(($k:literal, $v:literal)),*], $check:expr, $f:expr) => {
        torch_spec!($name, $class, $fname, $mean, [$(($k, $v)),*], $check, $f, false);
    };
    ($name:ident, $class:literal, $fname:literal, $mean:expr, [$(($k:literal, $v:literal)),*], $check:expr, $f:expr, $row_kernel:expr) => {
        pub(crate) static $name: Spec = Spec {
            class: $class,
            default_name: $fname,
            style: Style::Torch,
            default_reduction: "mean",
            torch_mean: $mean,
            params: &[$(($k, $v)),*],
            check: $check,
            per_sample: $f,
            single_row_kernel: $row_kernel,
        };
    };
}

const WEIGHTED_MEAN: Reduction = Reduction::MeanWithSampleWeight;
const MEAN: Reduction = Reduction::SumOverBatchSize;

torch_spec!(NLL, "NLLLoss", "nll_loss", WEIGHTED_MEAN, [("weight", "null"), ("ignore_index", "-100")], no_check, nll);
torch_spec!(
    CROSS_ENTROPY,
    "CrossEntropyLoss",
    "cross_entropy",
    WEIGHTED_MEAN,
    [("weight", "null"), ("ignore_index", "-100"), ("label_smoothing", "0.0")],
    |p| p.require((0.0..=1.0).contains(&p.f64("label_smoothing")?), "label_smoothing", "a number in [0, 1]"),
    cross_entropy,
    true
);
torch_spec!(
    SMOOTH_L1,
    "SmoothL1Loss",
    "smooth_l1_loss",
    MEAN,
    [("beta", "1.0")],
    |p| p.require(p.f64("beta")? >= 0.0, "beta", "a number >= 0"),
    smooth_l1
);
torch_spec!(
    MARGIN_RANKING,
    "MarginRankingLoss",
    "margin_ranking_loss",
    MEAN,
    [("margin", "0.0")],
    no_check,
    margin_ranking
);
torch_spec!(
    HINGE_EMBEDDING,
    "HingeEmbeddingLoss",
    "hinge_embedding_loss",
    MEAN,
    [("margin", "1.0")],
    no_check,
    hinge_embedding
);
torch_spec!(SOFT_MARGIN, "SoftMarginLoss", "soft_margin_loss", MEAN, [], no_check, soft_margin);
torch_spec!(
    MULTILABEL_SOFT_MARGIN,
    "MultiLabelSoftMarginLoss",
    "multilabel_soft_margin_loss",
    MEAN,
    [("weight", "null")],
    no_check,
    multilabel_soft_margin
);
torch_spec!(MULTILABEL_MARGIN, "MultiLabelMarginLoss", "multilabel_margin_loss", MEAN, [], no_check, multilabel_margin);
torch_spec!(
    COSINE_EMBEDDING,
    "CosineEmbeddingLoss",
    "cosine_embedding_loss",
    MEAN,
    [("margin", "0.0")],
    no_check,
    cosine_embedding
);
torch_spec!(
    MULTI_MARGIN,
    "MultiMarginLoss",
    "multi_margin_loss",
    MEAN,
    [("p", "1"), ("margin", "1.0"), ("weight", "null")],
    check_multi_margin,
    multi_margin
);
torch_spec!(
    TRIPLET_MARGIN,
    "TripletMarginLoss",
    "triplet_margin_loss",
    MEAN,
    [("margin", "1.0"), ("p", "2.0"), ("eps", "1e-6"), ("swap", "false")],
    |p| p.require(p.f64("p")? > 0.0, "p", "a number > 0"),
    triplet_margin
);
torch_spec!(
    GAUSSIAN_NLL,
    "GaussianNLLLoss",
    "gaussian_nll_loss",
    MEAN,
    [("full", "false"), ("eps", "1e-6")],
    no_check,
    gaussian_nll
);
torch_spec!(
    POISSON_NLL,
    "PoissonNLLLoss",
    "poisson_nll_loss",
    MEAN,
    [("log_input", "true"), ("full", "false"), ("eps", "1e-8")],
    no_check,
    poisson_nll
);
torch_spec!(KL_DIV, "KLDivLoss", "kl_div", MEAN, [("log_target", "false")], no_check, kl_div);

param_loss! {
    /// `torch.nn.NLLLoss(weight=None, ignore_index=-100, reduction="mean")`: `l_n = -w[y_n]·x[n, y_n]`
    /// on log-probabilities `x (N, C)` (or `(N, C, d...)`) and class indices `(N,)`; `mean` divides
    /// by `Σ w[y_n]` over non-ignored targets.
    NLLLoss, NLL
}
param_loss! {
    /// `torch.nn.CrossEntropyLoss(weight, ignore_index=-100, reduction="mean", label_smoothing=0)`:
    /// logits `(N, C)` with class indices `(N,)`:
    /// `l_n = (1-ε)(-w[y_n]·log p[y_n]) + (ε/C)·Σ_c(-w_c·log p_c)`, `mean` = `Σl / Σw[y_n]`; or with
    /// probability targets `(N, C)`: `l_n = -Σ_c w_c·y'_c·log p_c`, `y' = y(1-ε) + ε/C`, `mean` = `/N`.
    CrossEntropyLoss, CROSS_ENTROPY
}
param_loss! {
    /// `torch.nn.SmoothL1Loss(beta=1.0)`: element-wise `0.5·d²/β` if `|d| < β` else `|d| - 0.5β`
    /// (`d = x - y`; `β = 0` is L1).
    SmoothL1Loss, SMOOTH_L1
}
param_loss! {
    /// `torch.nn.MarginRankingLoss(margin=0)`: `max(0, -y·(x1 - x2) + margin)`; `y_pred (N, 2)` =
    /// `[x1, x2]`, `y_true (N,)` of ±1.
    MarginRankingLoss, MARGIN_RANKING
}
param_loss! {
    /// `torch.nn.HingeEmbeddingLoss(margin=1.0)`: element-wise `x` where `y = 1`,
    /// `max(0, margin - x)` where `y = -1` (PyTorch's formula for other labels: both parts).
    HingeEmbeddingLoss, HINGE_EMBEDDING
}
param_loss! {
    /// `torch.nn.SoftMarginLoss()`: element-wise `ln(1 + e^{-y·x})`.
    SoftMarginLoss, SOFT_MARGIN
}
param_loss! {
    /// `torch.nn.MultiLabelSoftMarginLoss(weight=None)`:
    /// `l_n = -(1/C)·Σ_i w_i·[y_i·log σ(x_i) + (1 - y_i)·log σ(-x_i)]`, `(N, C)` → `(N,)`.
    MultiLabelSoftMarginLoss, MULTILABEL_SOFT_MARGIN
}
param_loss! {
    /// `torch.nn.MultiLabelMarginLoss()`: `l_n = Σ_{j∈T} Σ_{i∉T} max(0, 1 - (x_j - x_i)) / C` with
    /// `T` the target indices of row `n` up to the first `-1`; `(N, C)` → `(N,)`.
    MultiLabelMarginLoss, MULTILABEL_MARGIN
}
param_loss! {
    /// `torch.nn.CosineEmbeddingLoss(margin=0)`: `1 - cos(x1, x2)` where `y = 1`,
    /// `max(0, cos - margin)` where `y = -1`; `y_pred (N, 2, D)` = `[x1, x2]`, `y_true (N,)`.
    CosineEmbeddingLoss, COSINE_EMBEDDING
}
param_loss! {
    /// `torch.nn.MultiMarginLoss(p=1, margin=1, weight=None)`:
    /// `l_n = Σ_{i≠y} w[y]·max(0, margin - x_y + x_i)^p / C`; `(N, C)` and `(N,)` → `(N,)`.
    MultiMarginLoss, MULTI_MARGIN
}
param_loss! {
    /// `torch.nn.TripletMarginLoss(margin=1, p=2, eps=1e-6, swap=False)`:
    /// `max(d(a,p) - d(a,n) + margin, 0)`, `d(u,v) = ‖u - v + eps‖_p` (`swap`:
    /// `d(a,n) ← min(d(a,n), d(p,n))`); `y_pred (N, 3, D)` = `[anchor, positive, negative]` → `(N,)`.
    TripletMarginLoss, TRIPLET_MARGIN
}
param_loss! {
    /// `torch.nn.GaussianNLLLoss(full=False, eps=1e-6)`:
    /// `0.5·(ln v + (μ - y)²/v)` (+ `0.5·ln 2π` if `full`), `v = max(var, eps)` with the gradient of
    /// `var` (PyTorch clamps without grad); `y_pred (..., 2)` = `[μ, var]`, element-wise.
    GaussianNLLLoss, GAUSSIAN_NLL
}
param_loss! {
    /// `torch.nn.PoissonNLLLoss(log_input=True, full=False, eps=1e-8)`: `e^x - y·x` (log input) or
    /// `x - y·ln(x + eps)`; `full` adds `y·ln y - y + 0.5·ln(2πy)` where `y > 1`. Element-wise.
    PoissonNLLLoss, POISSON_NLL
}
param_loss! {
    /// `torch.nn.KLDivLoss(reduction="mean", log_target=False)`: `y_pred` = `ln q`, target `t`:
    /// `t·(ln t - ln q)` (0 where `t = 0`), or `e^t·(t - ln q)` with `log_target`. Element-wise;
    /// `"batchmean"` sums each sample, then averages over the batch (the true KL divergence).
    KLDivLoss, KL_DIV
}
