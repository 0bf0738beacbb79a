//! Element-wise operations with NumPy broadcasting.

use super::{op, with_pair};
use crate::pointwise::{per_binary, per_unary, Binary, Unary};
use crate::storage::{with_storage, Element};
use crate::{DType, Error, Result, Storage, Tensor};
use losskit_kernels::{clip_passes, Float};
use ndarray::{ArrayD, Axis, IxDyn, Zip};
use num_traits::Zero;

/// The NumPy broadcast of two shapes, or `None` when they do not broadcast.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn sum_to<T: Element>(g: ndarray::ArrayViewD<'_, T>, shape: &[usize]) -> ArrayD<T> {
    if g.shape() == shape {
        return g.to_owned();
    }
    if g.ndim() > shape.len() {
        // The leading axes first, straight from the view (no copy of `g`).
        let lead = g.ndim() - shape.len();
        let rows: usize = g.shape()[..lead].iter().product();
        let dims = [&[rows][..], &g.shape()[lead..]].concat();
        let folded = g.clone().into_shape_with_order(IxDyn(&dims));
        if let Ok(f) = folded {
            return sum_to(f.sum_axis(Axis(0)).view(), shape);
        }
    }
    let mut a = g.to_owned();
    while a.ndim() > shape.len() {
        a = a.sum_axis(Axis(0));
    }
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 && a.shape()[i] != 1 {
            a = a.sum_axis(Axis(i)).insert_axis(Axis(i));
        }
    }
    a
}

/// Sums a broadcast gradient back to `shape` (the adjoint of broadcasting). Not recorded.
/// An operand broadcast along rows or as a scalar is summed with the row sums of
/// [`crate::fusion`], in the same order as the fused path.
pub(crate) fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Tensor {
    if g.shape() == shape {
        return g.clone();
    }
    let period = match crate::fusion::classify(shape, g.shape()) {
        Ok(Some(crate::fusion::Broadcast::Rows { period })) => Some(period),
        // A scalar is one row of everything.
        Ok(Some(crate::fusion::Broadcast::Scalar)) => Some(g.numel()),
        _ => None,
    };
    if let Some(period) = period {
        return crate::fusion::sum_rows(&crate::fusion::full(g, g.dtype()), period, 1.0, shape);
    }
    with_storage!(g.storage(), a => Tensor::from_array(sum_to::<T>(a.view(), shape)))
}

fn unary_forward<T: Element>(a: &ndarray::ArcArray<T, IxDyn>, op: Unary) -> ArrayD<T> {
    per_unary!(op, u => collect!(a.raw_dim(), Zip::from(a), |&x| u.apply(x)))
}

fn unary_backward<T: Element>(
    x: &ndarray::ArcArray<T, IxDyn>,
    y: &ndarray::ArcArray<T, IxDyn>,
    g: &ndarray::ArcArray<T, IxDyn>,
    op: Unary,
) -> ArrayD<T> {
    per_unary!(op, u => collect!(x.raw_dim(), Zip::from(x).and(y).and(g), |&x, &y, &g| g * u.deriv(x, y)))
}

fn broadcast_or_err(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    broadcast_shapes(a, b).ok_or_else(|| Error::Broadcast { op: op.to_string(), lhs: a.to_vec(), rhs: b.to_vec() })
}

impl Tensor {
    fn unary(&self, u: Unary) -> Tensor {
        if let Some(t) = crate::ops::fused::unary(self, u) {
            return t;
        }
        let storage = with_storage!(self.storage(), a => T::wrap(unary_forward(a, u)));
        Tensor::from_op(
            storage,
            vec![self.clone()],
            op(u.name(), move |inputs, out, g| {
                let x = &inputs[0];
                let s = match (x.storage(), out.storage(), g.storage()) {
                    (Storage::F32(x), Storage::F32(y), Storage::F32(g)) => f32::wrap(unary_backward(x, y, g, u)),
                    (Storage::F64(x), Storage::F64(y), Storage::F64(g)) => f64::wrap(unary_backward(x, y, g, u)),
                    _ => return Err(Error::value(u.name(), "mixed dtypes in backward")),
                };
                Ok(vec![Some(Tensor::from_storage(s))])
            }),
        )
    }

    fn binary(&self, other: &Tensor, b: Binary) -> Result<Tensor> {
        let name = b.name();
        let shape = broadcast_or_err(name, self.shape(), other.shape())?;
        if let Some(t) = crate::ops::fused::binary(self, other, b, &shape) {
            return Ok(t);
        }
        let storage = with_pair!(name, self, other, (x, y) => {
            let out: ArrayD<T> = per_binary!(b, op => if x.shape() == y.shape() {
                collect!(x.raw_dim(), Zip::from(x).and(y), |&p, &q| op.apply(p, q))
            } else {
                let xv = x.broadcast(IxDyn(&shape)).expect("checked broadcast");
                let yv = y.broadcast(IxDyn(&shape)).expect("checked broadcast");
                collect!(IxDyn(&shape), Zip::from(&xv).and(&yv), |&p, &q| op.apply(p, q))
            });
            T::wrap(out)
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone(), other.clone()],
            op(name, move |inputs, out, g| {
                let (x, y) = (&inputs[0], &inputs[1]);
                // Add/Sub: the gradient is g itself (summed back over broadcast axes).
                if matches!(b, Binary::Add | Binary::Sub) {
                    let ga = x.is_tracked().then(|| sum_to_shape(g, x.shape()));
                    let gb = y.is_tracked().then(|| {
                        let s = sum_to_shape(g, y.shape());
                        if matches!(b, Binary::Sub) {
                            s.neg()
                        } else {
                            s
                        }
                    });
                    return Ok(vec![ga, gb]);
                }
                let shape = out.shape().to_vec();
                let grads = with_pair!(name, x, y, (xa, ya) => {
                    let ys = T::view(out.storage()).expect("dtype");
                    let gs = T::view(g.storage()).expect("dtype");
                    let xv = xa.broadcast(IxDyn(&shape)).expect("checked broadcast");
                    let yv = ya.broadcast(IxDyn(&shape)).expect("checked broadcast");
                    let ga = x.is_tracked().then(|| {
                        let full: ArrayD<T> = per_binary!(b, op => collect!(IxDyn(&shape), Zip::from(&xv).and(&yv).and(ys).and(gs), |&p, &q, &r, &g| g * op.deriv(p, q, r).0));
                        sum_to_shape(&Tensor::from_array(full), xa.shape())
                    });
                    let gb = y.is_tracked().then(|| {
                        let full: ArrayD<T> = per_binary!(b, op => collect!(IxDyn(&shape), Zip::from(&xv).and(&yv).and(ys).and(gs), |&p, &q, &r, &g| g * op.deriv(p, q, r).1));
                        sum_to_shape(&Tensor::from_array(full), ya.shape())
                    });
                    vec![ga, gb]
                });
                Ok(grads)
            }),
        ))
    }

    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Add)
    }
    /// `self - other`, broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Sub)
    }
    /// `self · other` element-wise, broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Mul)
    }
    /// `self / other` element-wise, broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Div)
    }
    /// `self ^ other` element-wise, broadcasting. `∂/∂other` is `y·ln(self)` where `self > 0`
    /// and 0 elsewhere (TensorFlow's rule).
    pub fn pow(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Pow)
    }
    /// Element-wise maximum; on ties the gradient goes to `self`.
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Maximum)
    }
    /// Element-wise minimum; on ties the gradient goes to `self`.
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, Binary::Minimum)
    }

    /// `self + c`.
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.add(&self.scalar_like(c))
    }
    /// `self · c`.
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        self.mul(&self.scalar_like(c))
    }
    /// `self ^ c`.
    pub fn powf(&self, c: f64) -> Result<Tensor> {
        self.pow(&self.scalar_like(c))
    }
    /// `max(self, c)`; the gradient passes where `self >= c`.
    pub fn maximum_scalar(&self, c: f64) -> Result<Tensor> {
        self.maximum(&self.scalar_like(c))
    }
    /// `min(self, c)`; the gradient passes where `self <= c`.
    pub fn minimum_scalar(&self, c: f64) -> Result<Tensor> {
        self.minimum(&self.scalar_like(c))
    }

    /// `-x`.
    pub fn neg(&self) -> Tensor {
        self.unary(Unary::Neg)
    }
    /// `eˣ`.
    pub fn exp(&self) -> Tensor {
        self.unary(Unary::Exp)
    }
    /// `ln x`.
    pub fn log(&self) -> Tensor {
        self.unary(Unary::Log)
    }
    /// `ln(1 + x)`, accurate for small `x`.
    pub fn log1p(&self) -> Tensor {
        self.unary(Unary::Log1p)
    }
    /// `eˣ - 1`, accurate for small `x`.
    pub fn expm1(&self) -> Tensor {
        self.unary(Unary::Expm1)
    }
    /// `√x`; its derivative at 0 is `inf` (TensorFlow's).
    pub fn sqrt(&self) -> Tensor {
        self.unary(Unary::Sqrt)
    }
    /// `|x|`; derivative `sign(x)`, 0 at 0.
    pub fn abs(&self) -> Tensor {
        self.unary(Unary::Abs)
    }
    /// `x²`.
    pub fn square(&self) -> Tensor {
        self.unary(Unary::Square)
    }
    /// `tanh x`.
    pub fn tanh(&self) -> Tensor {
        self.unary(Unary::Tanh)
    }
    /// `1 / (1 + e⁻ˣ)`, without overflow.
    pub fn sigmoid(&self) -> Tensor {
        self.unary(Unary::Sigmoid)
    }
    /// `ln(1 + eˣ)` as `max(x, 0) + log1p(e^{-|x|})`; derivative `sigmoid(x)`.
    pub fn softplus(&self) -> Tensor {
        self.unary(Unary::Softplus)
    }
    /// `max(x, 0)`; derivative 0 at 0.
    pub fn relu(&self) -> Tensor {
        self.unary(Unary::Relu)
    }
    /// `arctan x`; derivative `1/(1 + x²)`.
    pub fn atan(&self) -> Tensor {
        self.unary(Unary::Atan)
    }
    /// The error function `erf(x) = 2/√π ∫₀ˣ e^{-t²} dt` (evaluated in f64).
    pub fn erf(&self) -> Tensor {
        self.unary(Unary::Erf)
    }

    /// `min(max(x, lo), hi)`; a NaN stays NaN. The gradient passes on the closed interval
    /// `[lo, hi]` (TensorFlow's `clip_by_value`: the bounds are inside) and at NaN.
    pub fn clip(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo > hi || lo.is_nan() || hi.is_nan() {
            return Err(Error::value("clip", format!("needs lo <= hi, got lo = {lo}, hi = {hi}")));
        }
        if let Some(t) = crate::ops::fused::clip(self, lo, hi) {
            return Ok(t);
        }
        let storage = with_storage!(self.storage(), a => {
            let (l, h) = (T::c(lo), T::c(hi));
            T::wrap(collect!(a.raw_dim(), Zip::from(a), |&x| losskit_kernels::clip(x, l, h)))
        });
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("clip", move |inputs, _out, g| {
                let s = with_pair!("clip", inputs[0], g, (x, g) => {
                    let (l, h) = (T::c(lo), T::c(hi));
                    T::wrap(collect!(x.raw_dim(), Zip::from(x).and(g), |&x, &g| if clip_passes(x, l, h) { g } else { T::zero() }))
                });
                Ok(vec![Some(Tensor::from_storage(s))])
            }),
        ))
    }

    /// `cond ? self : other` element-wise, where `cond` is non-zero; all three broadcast.
    /// The gradient goes to the selected branch; `cond` gets none.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let shape = broadcast_or_err("where", a.shape(), b.shape())?;
        let shape = broadcast_or_err("where", cond.shape(), &shape)?;
        let c = cond.to_dtype_const(a.dtype());
        let select = move |c: &Tensor, a: &Tensor, b: &Tensor| -> Result<Storage> {
            Ok(with_pair!("where", a, b, (x, y) => {
                let cv = T::view(c.storage()).expect("cast above");
                let cb = cv.broadcast(IxDyn(&shape)).expect("checked");
                let xb = x.broadcast(IxDyn(&shape)).expect("checked");
                let yb = y.broadcast(IxDyn(&shape)).expect("checked");
                T::wrap(collect!(IxDyn(&shape), Zip::from(&cb).and(&xb).and(&yb), |&c, &x, &y| if c != T::zero() { x } else { y }))
            }))
        };
        let storage = select(&c, a, b)?;
        Ok(Tensor::from_op(
            storage,
            vec![a.clone(), b.clone(), c],
            op("where", move |inputs, _out, g| {
                let (a, b, c) = (&inputs[0], &inputs[1], &inputs[2]);
                let zero = g.zeros_like();
                let ga = Tensor::from_storage(select(c, g, &zero)?);
                let gb = Tensor::from_storage(select(c, &zero, g)?);
                Ok(vec![
                    a.is_tracked().then(|| sum_to_shape(&ga, a.shape())),
                    b.is_tracked().then(|| sum_to_shape(&gb, b.shape())),
                    None,
                ])
            }),
        ))
    }

    /// The values converted to `dtype`, as a constant.
    fn to_dtype_const(&self, dtype: DType) -> Tensor {
        if self.dtype() == dtype {
            self.detach()
        } else {
            Tensor::from_storage(self.storage().to_dtype(dtype))
        }
    }

    /// The values converted to `dtype`; the gradient is converted back.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if self.dtype() == dtype {
            return self.clone();
        }
        let from = self.dtype();
        Tensor::from_op(
            self.storage().to_dtype(dtype),
            vec![self.clone()],
            op("to_dtype", move |_inputs, _out, g| Ok(vec![Some(g.to_dtype_const(from))])),
        )
    }

    /// The values broadcast to `shape` (NumPy rules); the gradient is summed back.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let ok = broadcast_shapes(self.shape(), shape).is_some_and(|s| s == shape);
        if !ok {
            return Err(Error::Broadcast {
                op: "broadcast_to".into(),
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        let storage =
            with_storage!(self.storage(), a => T::wrap(a.broadcast(IxDyn(shape)).expect("checked").to_owned()));
        Ok(Tensor::from_op(
            storage,
            vec![self.clone()],
            op("broadcast_to", |inputs, _out, g| Ok(vec![Some(sum_to_shape(g, inputs[0].shape()))])),
        ))
    }
}
