//! The TensorFlow-Addons losses (TFA 0.23): focal, box IoU, metric learning (triplets,
//! contrastive, N-pairs, lifted structure), pinball, weighted kappa and sparsemax.
//!
//! Their reductions are Keras 2's (`auto` = `sum_over_batch_size`); the mining losses return
//! one scalar and have a fixed reduction, as in TFA.

use crate::kernel_node::row_loss;
use crate::param_loss::{ParamLoss, Spec, Style};
use crate::{Error, PerSample, Reduction, Result, Tensor};
use losskit_kernels as kernels;

const EPS: f64 = 1e-7;

fn constant(v: Vec<f64>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape)?.to_dtype(like.dtype()))
}

fn no_check(_: &ParamLoss) -> Result<()> {
    Ok(())
}

/// Labels `(B,)` or `(B, 1)` as numbers, checked against `B` embeddings.
fn batch_labels(loss: &str, labels: &Tensor, emb: &Tensor) -> Result<Vec<f64>> {
    let b = emb.shape().first().copied().unwrap_or(0);
    let ok = emb.rank() == 2 && (labels.shape() == [b] || labels.shape() == [b, 1]);
    if !ok {
        return Err(Error::Shape {
            op: loss.into(),
            msg: format!(
                "expected labels (B,) or (B, 1) and embeddings (B, D), got {:?} and {:?}",
                labels.shape(),
                emb.shape()
            ),
        });
    }
    Ok(labels.to_vec::<f64>())
}

/// TFA's `pairwise_distance`: `‖x_i‖² + ‖x_j‖² - 2x_i·x_j` clamped at 0, square-rooted unless
/// `squared` (0 where the squared distance is ≤ 0), zero diagonal.
pub(crate) fn pairwise_distance(x: &Tensor, squared: bool) -> Result<Tensor> {
    let b = x.shape()[0];
    let sq = x.square().sum(&[1], true)?;
    let d2 =
        sq.add(&sq.transpose(None)?)?.sub(&x.matmul(&x.transpose(None)?)?.mul_scalar(2.0)?)?.maximum_scalar(0.0)?;
    let positive: Vec<f64> = d2.to_vec::<f64>().iter().map(|&v| f64::from(u8::from(v > 0.0))).collect();
    let off_diagonal: Vec<f64> = (0..b * b).map(|k| f64::from(u8::from(k / b != k % b))).collect();
    let mask = constant(positive.iter().zip(&off_diagonal).map(|(p, o)| p * o).collect(), &[b, b], x)?;
    let d = if squared {
        d2
    } else {
        let guard = constant(positive.iter().map(|p| (1.0 - p) * 1e-16).collect(), &[b, b], x)?;
        d2.add(&guard)?.sqrt()
    };
    d.mul(&mask)
}

/// TFA's `angular_distance`: `max(1 - x̂·x̂ᵀ, 0)` with `x̂ = x·rsqrt(max(Σx², 1e-12))`.
fn angular_distance(x: &Tensor) -> Result<Tensor> {
    let n = x.mul(&x.square().sum(&[1], true)?.maximum_scalar(1e-12)?.powf(-0.5)?)?;
    n.matmul(&n.transpose(None)?)?.neg().add_scalar(1.0)?.maximum_scalar(0.0)
}

fn distance_matrix(p: &ParamLoss, emb: &Tensor) -> Result<Tensor> {
    match p.str("distance_metric")? {
        "L2" => pairwise_distance(emb, false),
        "squared-L2" => pairwise_distance(emb, true),
        "angular" => angular_distance(emb),
        other => Err(Error::InvalidParameter {
            loss: "triplet loss".into(),
            param: "distance_metric".into(),
            value: format!("{other:?}"),
            expected: "\"L2\", \"squared-L2\" or \"angular\"".into(),
        }),
    }
}

fn check_metric(p: &ParamLoss) -> Result<()> {
    let m = p.str("distance_metric")?;
    p.require(
        matches!(m, "L2" | "squared-L2" | "angular"),
        "distance_metric",
        "\"L2\", \"squared-L2\" or \"angular\"",
    )?;
    p.require(p.f64("margin")?.is_finite(), "margin", "a finite number")
}

/// Picks `D[a, n]` entries by flat index (differentiable through `D`).
fn pick(d: &Tensor, flat: Vec<usize>) -> Result<Tensor> {
    d.reshape(&[-1])?.gather(0, &flat)
}

fn semihard(p: &ParamLoss, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
    let labels = batch_labels("triplet_semihard_loss", y_true, y_pred)?;
    let b = labels.len();
    let d = distance_matrix(p, y_pred)?;
    let dv = d.to_vec::<f64>();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for a in 0..b {
        let row = &dv[a * b..(a + 1) * b];
        let negatives: Vec<usize> = (0..b).filter(|&n| labels[n] != labels[a]).collect();
        for q in (0..b).filter(|&q| q != a && labels[q] == labels[a]) {
            // The closest negative farther than the positive; else the farthest negative; with
            // no negative at all, TFA's masked max yields the row minimum.
            let farther =
                negatives.iter().copied().filter(|&n| row[n] > row[q]).min_by(|&x, &y| row[x].total_cmp(&row[y]));
            let n = farther
                .or_else(|| negatives.iter().copied().max_by(|&x, &y| row[x].total_cmp(&row[y])))
                .unwrap_or_else(|| (0..b).min_by(|&x, &y| row[x].total_cmp(&row[y])).unwrap_or(a));
            pos.push(a * b + q);
            neg.push(a * b + n);
        }
    }
    let count = pos.len() as f64;
    let terms = pick(&d, pos)?.sub(&pick(&d, neg)?)?.add_scalar(p.f64("margin")?)?.relu();
    // No positive pair: 0/0 = NaN, as in TFA.
    Ok(terms.sum_all().mul_scalar(1.0 / count)?.into())
}

fn hard(p: &ParamLoss, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
    let labels = batch_labels("triplet_hard_loss", y_true, y_pred)?;
    let b = labels.len();
    let d = distance_matrix(p, y_pred)?;
    let dv = d.to_vec::<f64>();
    let (mut hp, mut hn) = (Vec::new(), Vec::new());
    for a in 0..b {
        let row = &dv[a * b..(a + 1) * b];
        let argmax = |it: &mut dyn Iterator<Item = usize>| it.max_by(|&x, &y| row[x].total_cmp(&row[y]));
        let argmin = |it: &mut dyn Iterator<Item = usize>| it.min_by(|&x, &y| row[x].total_cmp(&row[y]));
        let p_idx = argmax(&mut (0..b).filter(|&q| q != a && labels[q] == labels[a]))
            .or_else(|| argmin(&mut (0..b)))
            .unwrap_or(a);
        let n_idx =
            argmin(&mut (0..b).filter(|&n| labels[n] != labels[a])).or_else(|| argmax(&mut (0..b))).unwrap_or(a);
        hp.push(a * b + p_idx);
        hn.push(a * b + n_idx);
    }
    let gap = pick(&d, hp)?.sub(&pick(&d, hn)?)?;
    let terms = if p.bool("soft")? { gap.softplus() } else { gap.add_scalar(p.f64("margin")?)?.relu() };
    Ok(terms.mean_all().into())
}

fn sigmoid_focal(p: &ParamLoss, y: &Tensor, x: &Tensor) -> Result<PerSample> {
    let one = |t: &Tensor| t.neg().add_scalar(1.0);
    let ce = if p.bool("from_logits")? {
        x.relu().sub(&x.mul(y)?)?.add(&x.abs().neg().exp().log1p())?
    } else {
        let q = x.clip(EPS, 1.0 - EPS)?;
        y.mul(&q.add_scalar(EPS)?.log())?.add(&one(y)?.mul(&one(&q)?.add_scalar(EPS)?.log())?)?.neg()
    };
    let prob = if p.bool("from_logits")? { x.sigmoid() } else { x.clone() };
    let p_t = y.mul(&prob)?.add(&one(y)?.mul(&one(&prob)?)?)?;
    let mut l = ce;
    if let Some(alpha) = p.opt_f64("alpha")?.filter(|a| *a != 0.0) {
        l = y.mul_scalar(alpha)?.add(&one(y)?.mul_scalar(1.0 - alpha)?)?.mul(&l)?;
    }
    if let Some(gamma) = p.opt_f64("gamma")?.filter(|g| *g != 0.0) {
        l = one(&p_t)?.powf(gamma)?.mul(&l)?;
    }
    Ok(l.sum(&[-1], false)?.into())
}

fn check_focal(p: &ParamLoss) -> Result<()> {
    p.require(p.opt_f64("gamma")?.is_none_or(|g| g >= 0.0), "gamma", "a number >= 0")
}

/// `a / b`, 0 where `b == 0` (both differentiable; no NaN gradients through the 0 branch).
fn divide_no_nan(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let zero: Vec<f64> = b.to_vec::<f64>().iter().map(|&v| f64::from(u8::from(v == 0.0))).collect();
    let is_zero = constant(zero, b.shape(), b)?;
    let safe = b.add(&is_zero)?;
    Tensor::where_cond(&is_zero.neg().add_scalar(1.0)?, &a.div(&safe)?, &a.zeros_like())
}

fn giou(p: &ParamLoss, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
    let mode = p.str("mode")?;
    if y_pred.shape().last() != Some(&4) || y_true.shape() != y_pred.shape() {
        return Err(Error::Shape {
            op: "giou_loss".into(),
            msg: format!(
                "expected boxes [y_min, x_min, y_max, x_max] on a last axis of 4, got {:?} and {:?}",
                y_true.shape(),
                y_pred.shape()
            ),
        });
    }
    let coord = |t: &Tensor, k: usize| -> Result<Tensor> { t.gather(-1, &[k])?.squeeze(-1) };
    let (b1, b2) = (y_pred, y_true);
    let (y1a, x1a, y2a, x2a) = (coord(b1, 0)?, coord(b1, 1)?, coord(b1, 2)?, coord(b1, 3)?);
    let (y1b, x1b, y2b, x2b) = (coord(b2, 0)?, coord(b2, 1)?, coord(b2, 2)?, coord(b2, 3)?);
    let (w1, h1) = (x2a.sub(&x1a)?.maximum_scalar(0.0)?, y2a.sub(&y1a)?.maximum_scalar(0.0)?);
    let (w2, h2) = (x2b.sub(&x1b)?.maximum_scalar(0.0)?, y2b.sub(&y1b)?.maximum_scalar(0.0)?);
    let (a1, a2) = (w1.mul(&h1)?, w2.mul(&h2)?);
    let iw = x2a.minimum(&x2b)?.sub(&x1a.maximum(&x1b)?)?.maximum_scalar(0.0)?;
    let ih = y2a.minimum(&y2b)?.sub(&y1a.maximum(&y1b)?)?.maximum_scalar(0.0)?;
    let inter = iw.mul(&ih)?;
    let union = a1.add(&a2)?.sub(&inter)?;
    let iou = divide_no_nan(&inter, &union)?;
    let ew = x2a.maximum(&x2b)?.sub(&x1a.minimum(&x1b)?)?.maximum_scalar(0.0)?;
    let eh = y2a.maximum(&y2b)?.sub(&y1a.minimum(&y1b)?)?.maximum_scalar(0.0)?;
    let loss = match mode {
        "iou" => iou.neg().add_scalar(1.0)?,
        "giou" => {
            let c = ew.mul(&eh)?;
            let g = iou.sub(&divide_no_nan(&c.sub(&union)?, &c)?)?;
            g.neg().add_scalar(1.0)?
        }
        _ => {
            // DIoU: 1 - IoU + ρ²/c²; CIoU adds α·v (Zheng et al. 2020).
            let cy = y1a.add(&y2a)?.sub(&y1b.add(&y2b)?)?.mul_scalar(0.5)?;
            let cx = x1a.add(&x2a)?.sub(&x1b.add(&x2b)?)?.mul_scalar(0.5)?;
            let rho2 = cy.square().add(&cx.square())?;
            let c2 = ew.square().add(&eh.square())?;
            let mut l = iou.neg().add_scalar(1.0)?.add(&divide_no_nan(&rho2, &c2)?)?;
            if mode == "ciou" {
                let k = 4.0 / (std::f64::consts::PI * std::f64::consts::PI);
                let v =
                    divide_no_nan(&w2, &h2)?.atan().sub(&divide_no_nan(&w1, &h1)?.atan())?.square().mul_scalar(k)?;
                let alpha = divide_no_nan(&v, &iou.neg().add_scalar(1.0)?.add(&v)?)?;
                l = l.add(&alpha.mul(&v)?)?;
            }
            l
        }
    };
    Ok(loss.into())
}

fn check_giou(p: &ParamLoss) -> Result<()> {
    p.require(
        matches!(p.str("mode")?, "giou" | "iou" | "diou" | "ciou"),
        "mode",
        "\"giou\", \"iou\", \"diou\" or \"ciou\"",
    )
}

fn contrastive(p: &ParamLoss, y: &Tensor, d: &Tensor) -> Result<PerSample> {
    let m = p.f64("margin")?;
    let pos = y.mul(&d.square())?;
    let neg = y.neg().add_scalar(1.0)?.mul(&d.neg().add_scalar(m)?.relu().square())?;
    Ok(pos.add(&neg)?.into())
}

fn npairs_with_targets(t: Vec<f64>, s: &Tensor) -> Result<PerSample> {
    let b = s.shape()[0];
    let mut t = t;
    for r in 0..b {
        let sum: f64 = t[r * b..(r + 1) * b].iter().sum();
        t[r * b..(r + 1) * b].iter_mut().for_each(|v| *v /= sum);
    }
    let targets = constant(t, &[b, b], s)?;
    let lse = s.logsumexp(&[1], false)?;
    let per_row = lse.mul(&targets.sum(&[1], false)?)?.sub(&targets.mul(s)?.sum(&[1], false)?)?;
    Ok(per_row.mean_all().into())
}

fn check_square(loss: &str, s: &Tensor, rows: usize) -> Result<()> {
    if s.rank() != 2 || s.shape()[0] != rows || s.shape()[1] != rows {
        return Err(Error::Shape {
            op: loss.into(),
            msg: format!("expected similarity logits ({rows}, {rows}), got {:?}", s.shape()),
        });
    }
    Ok(())
}

fn npairs(_: &ParamLoss, y: &Tensor, s: &Tensor) -> Result<PerSample> {
    let labels = y.to_vec::<f64>();
    let b = labels.len();
    check_square("npairs_loss", s, b)?;
    npairs_with_targets((0..b * b).map(|k| f64::from(u8::from(labels[k / b] == labels[k % b]))).collect(), s)
}

fn npairs_multilabel(_: &ParamLoss, y: &Tensor, s: &Tensor) -> Result<PerSample> {
    let b = y.shape().first().copied().unwrap_or(0);
    check_square("npairs_multilabel_loss", s, b)?;
    let yy = y.detach().to_dtype(losskit_tensor::DType::F64);
    let shared = yy.matmul(&yy.transpose(None)?)?.to_vec::<f64>();
    npairs_with_targets(shared, s)
}

fn lifted(p: &ParamLoss, y_true: &Tensor, y_pred: &Tensor) -> Result<PerSample> {
    let labels = batch_labels("lifted_struct_loss", y_true, y_pred)?;
    let b = labels.len();
    let m = p.f64("margin")?;
    let d = pairwise_distance(y_pred, false)?;
    let negatives =
        constant((0..b * b).map(|k| f64::from(u8::from(labels[k / b] != labels[k % b]))).collect(), &[b, b], y_pred)?;
    let scores = Tensor::where_cond(&negatives, &d.neg().add_scalar(m)?, &y_pred.scalar_like(f64::NEG_INFINITY))?;
    let lse = scores.logsumexp(&[1], false)?;
    let (mut is, mut js, mut flat) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..b {
        for j in 0..b {
            if i != j && labels[i] == labels[j] {
                is.push(i);
                js.push(j);
                flat.push(i * b + j);
            }
        }
    }
    let count = is.len() as f64;
    let (li, lj) = (lse.gather(0, &is)?, lse.gather(0, &js)?);
    // ln(e^{li} + e^{lj}) = max + softplus(-|li - lj|)
    let both = li.maximum(&lj)?.add(&li.sub(&lj)?.abs().neg().softplus())?;
    let j = both.add(&pick(&d, flat)?)?;
    Ok(j.relu().square().sum_all().mul_scalar(0.25 / (count / 2.0))?.into())
}

fn pinball(p: &ParamLoss, y: &Tensor, pred: &Tensor) -> Result<PerSample> {
    let tau = p.f64_list("tau")?.unwrap_or_else(|| vec![0.5]);
    let t = if tau.len() == 1 { pred.scalar_like(tau[0]) } else { constant(tau.clone(), &[tau.len()], pred)? };
    let delta = y.sub(pred)?;
    let l = t.mul(&delta)?.maximum(&t.add_scalar(-1.0)?.mul(&delta)?)?;
    Ok(l.mean(&[-1], false)?.into())
}

fn kappa(p: &ParamLoss, y: &Tensor, pred: &Tensor) -> Result<PerSample> {
    let k = p.int("num_classes")? as usize;
    if pred.rank() != 2 || pred.shape()[1] != k || y.shape() != pred.shape() {
        return Err(Error::Shape {
            op: "cohen_kappa_loss".into(),
            msg: format!(
                "expected one-hot y_true and probabilities y_pred of shape (B, {k}), got {:?} and {:?}",
                y.shape(),
                pred.shape()
            ),
        });
    }
    let linear = p.str("weightage")? == "linear";
    let w = |d: f64| if linear { d.abs() } else { d * d };
    let b = pred.shape()[0];
    let yv = y.to_vec::<f64>();
    let label: Vec<f64> = (0..b).map(|r| (0..k).map(|c| c as f64 * yv[r * k + c]).sum()).collect();
    let num_w = constant((0..b * k).map(|i| w(label[i / k] - (i % k) as f64)).collect(), &[b, k], pred)?;
    let num = num_w.mul(pred)?.sum_all();
    let hist_y: Vec<f64> = (0..k).map(|c| (0..b).map(|r| yv[r * k + c]).sum()).collect();
    let hy_w: Vec<f64> = (0..k).map(|j| (0..k).map(|i| hist_y[i] * w(i as f64 - j as f64)).sum()).collect();
    let den = constant(hy_w, &[k], pred)?.mul(&pred.sum(&[0], false)?)?.sum_all().mul_scalar(1.0 / b as f64)?;
    let eps = p.opt_f64("epsilon")?.filter(|e| *e != 0.0).unwrap_or(EPS);
    Ok(divide_no_nan(&num, &den)?.add_scalar(eps)?.log().into())
}

fn check_kappa(p: &ParamLoss) -> Result<()> {
    p.require(p.int("num_classes")? >= 1, "num_classes", "an integer >= 1")?;
    p.require(matches!(p.str("weightage")?, "quadratic" | "linear"), "weightage", "\"quadratic\" or \"linear\"")
}

fn sparsemax(p: &ParamLoss, q: &Tensor, z: &Tensor) -> Result<PerSample> {
    p.require(p.bool("from_logits")?, "from_logits", "true (TFA's SparsemaxLoss only takes logits)")?;
    Ok(row_loss("sparsemax_loss", kernels::SparsemaxLoss, q, z)?.into())
}

fn check_sparsemax(p: &ParamLoss) -> Result<()> {
    p.require(p.bool("from_logits")?, "from_logits", "true (TFA's SparsemaxLoss only takes logits)")
}

pub(crate) static SIGMOID_FOCAL: Spec = Spec {
    class: "SigmoidFocalCrossEntropy",
    default_name: "sigmoid_focal_crossentropy",
    style: Style::Keras,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("from_logits", "false"), ("alpha", "0.25"), ("gamma", "2.0")],
    check: check_focal,
    per_sample: sigmoid_focal,
    single_row_kernel: false,
};
pub(crate) static GIOU: Spec = Spec {
    class: "GIoULoss",
    default_name: "giou_loss",
    style: Style::Keras,
    default_reduction: "auto",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("mode", "\"giou\"")],
    check: check_giou,
    per_sample: giou,
    single_row_kernel: false,
};
pub(crate) static TRIPLET_SEMIHARD: Spec = Spec {
    class: "TripletSemiHardLoss",
    default_name: "triplet_semihard_loss",
    style: Style::KerasFixed,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("margin", "1.0"), ("distance_metric", "\"L2\"")],
    check: check_metric,
    per_sample: semihard,
    single_row_kernel: false,
};
pub(crate) static TRIPLET_HARD: Spec = Spec {
    class: "TripletHardLoss",
    default_name: "triplet_hard_loss",
    style: Style::KerasFixed,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("margin", "1.0"), ("soft", "false"), ("distance_metric", "\"L2\"")],
    check: check_metric,
    per_sample: hard,
    single_row_kernel: false,
};
pub(crate) static CONTRASTIVE: Spec = Spec {
    class: "ContrastiveLoss",
    default_name: "contrastive_loss",
    style: Style::Keras,
    default_reduction: "sum_over_batch_size",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("margin", "1.0")],
    check: no_check,
    per_sample: contrastive,
    single_row_kernel: false,
};
pub(crate) static NPAIRS: Spec = Spec {
    class: "NpairsLoss",
    default_name: "npairs_loss",
    style: Style::KerasFixed,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[],
    check: no_check,
    per_sample: npairs,
    single_row_kernel: false,
};
pub(crate) static NPAIRS_MULTILABEL: Spec = Spec {
    class: "NpairsMultilabelLoss",
    default_name: "npairs_multilabel_loss",
    style: Style::KerasFixed,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[],
    check: no_check,
    per_sample: npairs_multilabel,
    single_row_kernel: false,
};
pub(crate) static LIFTED: Spec = Spec {
    class: "LiftedStructLoss",
    default_name: "lifted_struct_loss",
    style: Style::KerasFixed,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("margin", "1.0")],
    check: no_check,
    per_sample: lifted,
    single_row_kernel: false,
};
pub(crate) static PINBALL: Spec = Spec {
    class: "PinballLoss",
    default_name: "pinball_loss",
    style: Style::Keras,
    default_reduction: "auto",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("tau", "0.5")],
    check: no_check,
    per_sample: pinball,
    single_row_kernel: false,
};
pub(crate) static KAPPA: Spec = Spec {
    class: "WeightedKappaLoss",
    default_name: "cohen_kappa_loss",
    style: Style::Keras,
    default_reduction: "none",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("num_classes", "2"), ("weightage", "\"quadratic\""), ("epsilon", "1e-6")],
    check: check_kappa,
    per_sample: kappa,
    single_row_kernel: false,
};
pub(crate) static SPARSEMAX: Spec = Spec {
    class: "SparsemaxLoss",
    default_name: "sparsemax_loss",
    style: Style::Keras,
    default_reduction: "sum_over_batch_size",
    torch_mean: Reduction::SumOverBatchSize,
    params: &[("from_logits", "true")],
    check: check_sparsemax,
    per_sample: sparsemax,
    single_row_kernel: false,
};

param_loss! {
    /// TFA's sigmoid focal cross-entropy (Lin et al. 2017):
    /// `ce` = Keras-2 BCE (logits: `max(x,0) - x·y + log1p(e^{-|x|})`; probabilities:
    /// `-(y·ln(q+ε) + (1-y)·ln(1-q+ε))`, `q = clip(p, ε, 1-ε)`), `p_t = y·p + (1-y)(1-p)`,
    /// `l = Σ_last (y·α + (1-y)(1-α)) · (1-p_t)^γ · ce` — a **sum** over the last axis.
    /// Parameters `from_logits` (false), `alpha` (0.25, null to skip), `gamma` (2.0, ≥ 0).
    /// Default reduction `none`. Shapes `(B, ..., C)` → `(B, ...)`.
    SigmoidFocalCrossEntropy, SIGMOID_FOCAL
}
param_loss! {
    /// Generalized IoU loss for boxes `[y_min, x_min, y_max, x_max]` (last axis 4):
    /// `mode = "giou"`: `1 - (IoU - (C - U)/C)` with `C` the enclosing box' area; `"iou"`:
    /// `1 - IoU`; `"diou"`: `1 - IoU + ρ²/c²` (centre distance over the enclosing diagonal);
    /// `"ciou"`: DIoU `+ α·v`, `v = 4/π²·(atan(w_t/h_t) - atan(w_p/h_p))²`. Divisions by zero give 0.
    /// Shapes `(B, 4)` → `(B,)`. Default reduction `auto` (= sum over batch size).
    GIoULoss, GIOU
}
param_loss! {
    /// Triplet loss with semi-hard negative mining (Schroff et al. 2015), TFA's exact rules: for
    /// every ordered positive pair `(a, p)`, the negative is the closest one with
    /// `D[a,n] > D[a,p]` (the margin is not used to select); without one, the farthest negative
    /// (the fallback). `l = Σ max(margin + D[a,p] - D[a,n], 0) / #pairs`.
    /// `distance_metric`: `"L2"` (default), `"squared-L2"`, `"angular"`. Labels `(B,)`,
    /// embeddings `(B, D)` → a scalar (NaN without positive pairs, as TFA).
    TripletSemiHardLoss, TRIPLET_SEMIHARD
}
param_loss! {
    /// Triplet loss with batch-hard mining: per anchor the farthest positive and the closest
    /// negative; `l = mean_a max(hp - hn + margin, 0)`, or `softplus(hp - hn)` with `soft`.
    /// Labels `(B,)`, embeddings `(B, D)` → a scalar.
    TripletHardLoss, TRIPLET_HARD
}
param_loss! {
    /// Contrastive loss (Hadsell et al. 2006) on distances `d` with labels `y` (1 = similar):
    /// `l = y·d² + (1-y)·max(margin - d, 0)²`, element-wise. Shapes `(B,)` → `(B,)`.
    ContrastiveLoss, CONTRASTIVE
}
param_loss! {
    /// N-pairs loss (Sohn 2016): softmax cross-entropy of similarity logits `S (B, B)` against
    /// targets `T_ij = [label_i = label_j] / Σ_j[…]`; mean over rows → a scalar. Labels `(B,)`.
    NpairsLoss, NPAIRS
}
param_loss! {
    /// Multilabel N-pairs loss: as [`NpairsLoss`] with targets `Y·Yᵀ` (shared labels of binary
    /// `y_true (B, C)`), rows normalised → a scalar.
    NpairsMultilabelLoss, NPAIRS_MULTILABEL
}
param_loss! {
    /// Lifted structured loss (Song et al. 2016): for positive pairs `(i, j)`,
    /// `J = ln(Σ_{n∈Neg(i)} e^{m - D_in} + Σ_{n∈Neg(j)} e^{m - D_jn}) + D_ij`,
    /// `l = 0.25·Σ_{ordered pairs} max(J, 0)² / (P/2)`. Labels `(B,)`, embeddings `(B, D)` → a scalar.
    LiftedStructLoss, LIFTED
}
param_loss! {
    /// Pinball (quantile) loss: `δ = y - p`, `l = mean_last(max(τ·δ, (τ-1)·δ))`; `tau` is one
    /// number (0.5) or one per output column. Shapes `(B, ..., D)` → `(B, ...)`.
    PinballLoss, PINBALL
}
param_loss! {
    /// Weighted kappa loss (de la Torre et al. 2018): `ln(num/den + ε)` with quadratic (or
    /// linear) disagreement weights, one-hot `y_true` and probabilities `y_pred` of shape
    /// `(B, num_classes)` → a scalar in `[-∞, ln 2]`. `num_classes` is required.
    WeightedKappaLoss, KAPPA
}
param_loss! {
    /// Sparsemax loss (Martins & Astudillo 2016): with `p = sparsemax(z)`,
    /// `l = Σ_{p_j>0} p_j(z_j - p_j/2) + Σ_j q_j(q_j/2 - z_j)`; gradient `p - q`. Logits `z` and
    /// target distributions `q` of shape `(B, K)` → `(B,)`. `from_logits` must be true.
    SparsemaxLoss, SPARSEMAX
}
