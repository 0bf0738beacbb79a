//! Reductions over axes (sum, mean, max, min, logsumexp) and softmax / log-softmax.

use super::{norm_axis, op, with_pair};
use crate::storage::{with_storage, Element};
use crate::{Result, Tensor};
use losskit_kernels::Float;
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Zip};
use num_traits::{One, Zero};

/// Normalised, sorted, de-duplicated axes.
fn axes_of(op: &str, axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    let mut v = axes.iter().map(|&a| norm_axis(op, a, rank)).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Whether the (normalised, sorted) `axes` are the last `axes.len()` axes of a rank-`rank`
/// tensor, and at least one: the sums the row reducer of [`crate::fusion`] takes.
fn trailing(axes: &[usize], rank: usize) -> bool {
    !axes.is_empty() && axes.iter().enumerate().all(|(i, &a)| a == rank - axes.len() + i)
}

/// The shape with the reduced axes kept as size 1.
fn kept_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect()
}

fn reduce_view<T: Element>(
    a: ArrayViewD<'_, T>,
    axes: &[usize],
    f: impl Fn(ArrayViewD<'_, T>, Axis) -> ArrayD<T>,
) -> ArrayD<T> {
    let mut out = a.to_owned();
    for &ax in axes.iter().rev() {
        out = f(out.view(), Axis(ax));
    }
    out
}

fn max_axis<T: Element>(a: ArrayViewD<'_, T>, ax: Axis) -> ArrayD<T> {
    a.fold_axis(ax, T::neg_infinity(), |&m, &x| if x > m || x.is_nan() { x } else { m })
}

fn min_axis<T: Element>(a: ArrayViewD<'_, T>, ax: Axis) -> ArrayD<T> {
    a.fold_axis(ax, T::infinity(), |&m, &x| if x < m || x.is_nan() { x } else { m })
}

#[derive(Clone, Copy, PartialEq)]
enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    LogSumExp,
}

impl Reduce {
    fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::Max => "max",
            Reduce::Min => "min",
            Reduce::LogSumExp => "logsumexp",
        }
    }
}

/// `ln Σ exp(x)` over `axes`, keeping them as size 1; shifted by the (finite) max for stability.
fn logsumexp_kept<T: Element>(a: ArrayViewD<'_, T>, axes: &[usize]) -> ArrayD<T> {
    if a.ndim() > 0 && axes == [a.ndim() - 1] {
        if let Some(s) = a.as_slice() {
            let lse = crate::ops::fused::row_log_sum_exp(s, a.shape()[a.ndim() - 1]);
            return ArrayD::from_shape_vec(IxDyn(&kept_shape(a.shape(), axes)), lse).expect("one value per row");
        }
    }
    let kept = kept_shape(a.shape(), axes);
    let m = reduce_view(a.view(), axes, max_axis).into_shape_with_order(IxDyn(&kept)).expect("kept shape");
    let m = m.mapv(|v| if v.is_finite() { v } else { T::zero() });
    let mb = m.broadcast(a.raw_dim()).expect("kept shape broadcasts");
    let e = collect!(a.raw_dim(), Zip::from(&a).and(&mb), |&x, &m| (x - m).exp_fast());
    let s = reduce_view(e.view(), axes, |v, ax| v.sum_axis(ax)).into_shape_with_order(IxDyn(&kept)).expect("kept");
    Zip::from(&s).and(&m).map_collect(|&s, &m| m + s.ln())
}

impl Tensor {
    fn reduce(&self, r: Reduce, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        let name = r.name();
        let axes = axes_of(name, axes, self.rank())?;
        let kept = kept_shape(self.shape(), &axes);
        let out_shape: Vec<usize> = if keepdims {
            kept.clone()
        } else {
            self.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
        };
        let count: usize = axes.iter().map(|&a| self.shape()[a]).product();
        // Sums and means over trailing axes: row sums in a fixed order, fused with a lazy input.
        if trailing(&axes, self.rank()) && matches!(r, Reduce::Sum | Reduce::Mean) {
            let divisor = if r == Reduce::Mean { count as f64 } else { 1.0 };
            if let Some(t) = crate::ops::fused::sum_trailing(self, self.rank() - axes.len(), divisor, &out_shape, name)
            {
                return Ok(t);
            }
        }
        let storage = with_storage!(self.storage(), a => {
            let v = a.view();
            let out: ArrayD<T> = match r {
                Reduce::Sum => reduce_view(v, &axes, |v, ax| v.sum_axis(ax)),
                Reduce::Mean => reduce_view(v, &axes, |v, ax| v.sum_axis(ax)).mapv(|s| s / T::c(count as f64)),
                Reduce::Max => reduce_view(v, &axes, max_axis),
                Reduce::Min => reduce_view(v, &axes, min_axis),
                Reduce::LogSumExp => logsumexp_kept(v, &axes),
            };
            T::wrap(out.into_shape_with_order(IxDyn(&out_shape)).expect("reduced shape"))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op(name, move |inputs, out, g| {
                let x = &inputs[0];
                let grad = with_pair!(name, x, g, (xa, ga) => {
                    let gk = ga.view().into_shape_with_order(IxDyn(&kept)).expect("kept");
                    let gb = gk.broadcast(xa.raw_dim()).expect("kept broadcasts");
                    let yk = T::view(out.storage()).expect("dtype").view().into_shape_with_order(IxDyn(&kept)).expect("kept");
                    let yb = yk.broadcast(xa.raw_dim()).expect("kept broadcasts");
                    let res: ArrayD<T> = match r {
                        Reduce::Sum => collect!(gb.raw_dim(), Zip::from(&gb), |&g| g),
                        Reduce::Mean => collect!(gb.raw_dim(), Zip::from(&gb), |&g| g / T::c(count as f64)),
                        // A slice of all -inf has y = -inf and no gradient (not NaN).
                        Reduce::LogSumExp => Zip::from(xa).and(&gb).and(&yb).map_collect(|&x, &g, &y| {
                            if y == T::NEG_INFINITY { T::zero() } else { g * (x - y).exp() }
                        }),
                        Reduce::Max | Reduce::Min => {
                            // Ties share the gradient equally (TensorFlow's reduce_max rule).
                            let hit = Zip::from(xa).and(&yb).map_collect(|&x, &y| if x == y { T::one() } else { T::zero() });
                            let n = reduce_view(hit.view(), &axes, |v, ax| v.sum_axis(ax)).into_shape_with_order(IxDyn(&kept)).expect("kept");
                            let nb = n.broadcast(xa.raw_dim()).expect("kept broadcasts");
                            Zip::from(&hit).and(&gb).and(&nb).map_collect(|&h, &g, &n| h * g / n)
                        }
                    };
                    T::wrap(res)
                });
                Ok(vec![Some(Tensor::from_storage(grad))])
            }),
        ))
    }

    /// Sum over `axes` (negative axes count from the end); `keepdims` keeps them as size 1.
    pub fn sum(&self, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        self.reduce(Reduce::Sum, axes, keepdims)
    }
    /// The sums of several tensors of one shape and dtype over the same `axes`: the same values
    /// as calling [`Tensor::sum`] on each, computed in **one pass** over memory when the axes are
    /// trailing (a fused multi-output reduction: `Σ y·p`, `Σ y` and `Σ p` of Dice read `y` and
    /// `p` once). Errors as `sum` does, or when the tensors' shapes or dtypes differ.
    pub fn sum_many(tensors: &[&Tensor], axes: &[isize], keepdims: bool) -> Result<Vec<Tensor>> {
        let Some(first) = tensors.first() else { return Ok(Vec::new()) };
        for t in tensors {
            if t.shape() != first.shape() {
                let msg = format!("needs tensors of one shape, got {:?} and {:?}", first.shape(), t.shape());
                return Err(crate::Error::shape("sum_many", msg));
            }
            if t.dtype() != first.dtype() {
                return Err(crate::Error::DType { op: "sum_many".into(), lhs: first.dtype(), rhs: t.dtype() });
            }
        }
        let rank = first.rank();
        let axes_n = axes_of("sum", axes, rank)?;
        if trailing(&axes_n, rank) && tensors.len() > 1 {
            let kept = kept_shape(first.shape(), &axes_n);
            let out_shape: Vec<usize> = if keepdims { kept } else { first.shape()[..rank - axes_n.len()].to_vec() };
            let keep = rank - axes_n.len();
            if let Some(sums) = crate::ops::fused::sum_trailing_many(tensors, keep, 1.0, &out_shape, "sum") {
                return Ok(sums);
            }
        }
        tensors.iter().map(|t| t.sum(axes, keepdims)).collect()
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        self.reduce(Reduce::Mean, axes, keepdims)
    }
    /// Maximum over `axes`; tied maxima share the gradient equally.
    pub fn max(&self, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        self.reduce(Reduce::Max, axes, keepdims)
    }
    /// Minimum over `axes`; tied minima share the gradient equally.
    pub fn min(&self, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        self.reduce(Reduce::Min, axes, keepdims)
    }
    /// `ln Σ exp(x)` over `axes`, computed as `m + ln Σ exp(x - m)` with `m` the maximum.
    pub fn logsumexp(&self, axes: &[isize], keepdims: bool) -> Result<Tensor> {
        self.reduce(Reduce::LogSumExp, axes, keepdims)
    }

    fn all_axes(&self) -> Vec<isize> {
        (0..self.rank() as isize).collect()
    }
    /// Sum of every element, a scalar.
    pub fn sum_all(&self) -> Tensor {
        self.reduce(Reduce::Sum, &self.all_axes(), false).expect("all axes are valid")
    }
    /// Mean of every element, a scalar (NaN for an empty tensor).
    pub fn mean_all(&self) -> Tensor {
        self.reduce(Reduce::Mean, &self.all_axes(), false).expect("all axes are valid")
    }

    /// `softmax(x)_i = exp(x_i - m) / Σ_j exp(x_j - m)` along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl(axis, false)
    }

    /// `log_softmax(x)_i = x_i - logsumexp(x)` along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl(axis, true)
    }

    fn softmax_impl(&self, axis: isize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        let ax = norm_axis(name, axis, self.rank())?;
        if ax + 1 == self.rank() {
            if let Some(t) = crate::ops::fused::softmax_last(self, log) {
                return Ok(t);
            }
        }
        let storage = with_storage!(self.storage(), a => {
            let lse = logsumexp_kept(a.view(), &[ax]);
            let lb = lse.broadcast(a.raw_dim()).expect("kept broadcasts");
            T::wrap(collect!(a.raw_dim(), Zip::from(a).and(&lb), |&x, &l| if log { x - l } else { (x - l).exp_fast() }))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op(name, move |_inputs, out, g| {
                let grad = with_pair!(name, out, g, (y, ga) => {
                    let yv = y.view();
                    let gv = ga.view();
                    let res: ArrayD<T> = if log {
                        let s = gv.sum_axis(Axis(ax)).insert_axis(Axis(ax));
                        let sb = s.broadcast(yv.raw_dim()).expect("kept");
                        collect!(yv.raw_dim(), Zip::from(&gv).and(&yv).and(&sb), |&g, &y, &s| g - y.exp_fast() * s)
                    } else {
                        let gy = collect!(yv.raw_dim(), Zip::from(&gv).and(&yv), |&g, &y| g * y);
                        let s = gy.sum_axis(Axis(ax)).insert_axis(Axis(ax));
                        let sb = s.broadcast(yv.raw_dim()).expect("kept");
                        collect!(yv.raw_dim(), Zip::from(&gv).and(&yv).and(&sb), |&g, &y, &s| y * (g - s))
                    };
                    T::wrap(res)
                });
                Ok(vec![Some(Tensor::from_storage(grad))])
            }),
        ))
    }
}
