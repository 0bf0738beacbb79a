//! Every differentiable op against central finite differences in f64, over random shapes and
//! broadcasts (proptest).

use losskit_tensor::{Result, Tensor};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Checks the autodiff gradient of `Σ w ⊙ f(inputs)` (fixed pseudo-random `w`, so reductions that
/// are constant in total still get a non-trivial gradient) against central differences.
fn check(inputs: &[(Vec<usize>, Vec<f64>)], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let leaves: Vec<Tensor> =
        inputs.iter().map(|(s, v)| Tensor::from_vec(v.clone(), s).unwrap().requires_grad()).collect();
    let out = f(&leaves).unwrap();
    let weights: Vec<f64> = (0..out.numel()).map(|i| 0.5 + ((i * 7919) % 13) as f64 / 13.0).collect();
    let w = Tensor::from_vec(weights, out.shape()).unwrap();
    let objective = |ts: &[Tensor]| -> f64 { f(ts).unwrap().mul(&w).unwrap().sum_all().to_scalar().unwrap() };
    let grads = out.mul(&w).unwrap().sum_all().backward().unwrap();
    let h = 1e-6;
    for (k, (shape, values)) in inputs.iter().enumerate() {
        let g = grads.get(&leaves[k]).expect("gradient present").to_vec::<f64>();
        assert_eq!(g.len(), values.len());
        for j in 0..values.len() {
            let at = |delta: f64| {
                let mut ts: Vec<Tensor> = inputs.iter().map(|(s, v)| Tensor::from_vec(v.clone(), s).unwrap()).collect();
                let mut v = values.clone();
                v[j] += delta;
                ts[k] = Tensor::from_vec(v, shape).unwrap();
                objective(&ts)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "input {k} element {j}: finite difference {fd} vs autodiff {}",
                g[j]
            );
        }
    }
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 0..4)
}

/// A shape and one that broadcasts against it (some axes set to 1, some leading axes dropped).
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape()
        .prop_flat_map(|s| {
            let n = s.len();
            (Just(s), prop::collection::vec(any::<bool>(), n), 0..=n)
        })
        .prop_map(|(s, ones, drop)| {
            let b: Vec<usize> = s.iter().zip(&ones).map(|(&d, &one)| if one { 1 } else { d }).collect();
            (s, b[drop..].to_vec())
        })
}

fn values(shape: &[usize], lo: f64, hi: f64) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(lo..hi, shape.iter().product::<usize>())
}

/// Values away from zero (for kinks at 0), of either sign.
fn signed_away_from_zero(shape: &[usize]) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        (0.1f64..2.0, any::<bool>()).prop_map(|(v, neg)| if neg { -v } else { v }),
        shape.iter().product::<usize>(),
    )
}

fn cfg() -> Config {
    Config { cases: 24, ..Config::default() }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn binary_ops_broadcast((sa, sb) in broadcast_pair(), swap in any::<bool>(), seed in 0u64..1000) {
        let (sa, sb) = if swap { (sb, sa) } else { (sa, sb) };
        let va: Vec<f64> = (0..sa.iter().product::<usize>()).map(|i| 0.5 + ((i as u64 * 31 + seed) % 17) as f64 / 10.0).collect();
        let vb: Vec<f64> = (0..sb.iter().product::<usize>()).map(|i| 0.3 + ((i as u64 * 17 + seed * 3) % 19) as f64 / 9.0).collect();
        let inputs = [(sa, va), (sb, vb)];
        check(&inputs, |t| t[0].add(&t[1]));
        check(&inputs, |t| t[0].sub(&t[1]));
        check(&inputs, |t| t[0].mul(&t[1]));
        check(&inputs, |t| t[0].div(&t[1]));
        check(&inputs, |t| t[0].pow(&t[1]));
    }

    #[test]
    fn maximum_minimum_away_from_ties((sa, sb) in broadcast_pair(), seed in 0u64..1000) {
        let va: Vec<f64> = (0..sa.iter().product::<usize>()).map(|i| ((i as u64 * 31 + seed) % 17) as f64 / 4.0).collect();
        let vb: Vec<f64> = (0..sb.iter().product::<usize>()).map(|i| 0.125 + ((i as u64 * 17 + seed) % 19) as f64 / 4.0).collect();
        let inputs = [(sa, va), (sb, vb)];
        check(&inputs, |t| t[0].maximum(&t[1]));
        check(&inputs, |t| t[0].minimum(&t[1]));
    }

    #[test]
    fn smooth_unary_ops(v in shape().prop_flat_map(|s| (Just(s.clone()), values(&s, -2.0, 2.0)))) {
        let inputs = [v];
        check(&inputs, |t| Ok(t[0].neg()));
        check(&inputs, |t| Ok(t[0].exp()));
        check(&inputs, |t| Ok(t[0].expm1()));
        check(&inputs, |t| Ok(t[0].square()));
        check(&inputs, |t| Ok(t[0].tanh()));
        check(&inputs, |t| Ok(t[0].sigmoid()));
        check(&inputs, |t| Ok(t[0].softplus()));
        check(&inputs, |t| Ok(t[0].erf()));
        check(&inputs, |t| Ok(t[0].atan()));
        check(&inputs, |t| t[0].powf(3.0));
    }

    #[test]
    fn positive_domain_ops(v in shape().prop_flat_map(|s| (Just(s.clone()), values(&s, 0.2, 3.0)))) {
        let inputs = [v];
        check(&inputs, |t| Ok(t[0].log()));
        check(&inputs, |t| Ok(t[0].log1p()));
        check(&inputs, |t| Ok(t[0].sqrt()));
        check(&inputs, |t| t[0].powf(0.5));
    }

    #[test]
    fn kinked_ops_away_from_kinks(v in shape().prop_flat_map(|s| (Just(s.clone()), signed_away_from_zero(&s)))) {
        let inputs = [v];
        check(&inputs, |t| Ok(t[0].abs()));
        check(&inputs, |t| Ok(t[0].relu()));
        check(&inputs, |t| t[0].clip(-0.05, 0.05));
        check(&inputs, |t| t[0].maximum_scalar(0.0));
        let (s, vals) = &inputs[0];
        let cond = Tensor::from_vec(vals.iter().map(|&x| if x > 0.0 { 1.0 } else { 0.0 }).collect(), s).unwrap();
        check(&inputs, |t| Tensor::where_cond(&cond, &t[0].square(), &t[0].mul_scalar(3.0)?));
    }

    #[test]
    fn reductions_over_axes(v in prop::collection::vec(1usize..4, 1..4).prop_flat_map(|s| (Just(s.clone()), values(&s, -2.0, 2.0))),
                            axis_pick in 0usize..8, keepdims in any::<bool>()) {
        let rank = v.0.len();
        let axes: Vec<isize> = (0..rank).filter(|a| (axis_pick >> a) & 1 == 1).map(|a| a as isize).collect();
        let axes = if axes.is_empty() { vec![-1] } else { axes };
        let inputs = [v];
        check(&inputs, |t| t[0].sum(&axes, keepdims));
        check(&inputs, |t| t[0].mean(&axes, keepdims));
        check(&inputs, |t| t[0].logsumexp(&axes, keepdims));
        // max/min: distinct values so there are no ties.
        let (s, _) = &inputs[0];
        let n: usize = s.iter().product();
        let distinct: Vec<f64> = (0..n).map(|i| ((i * 7) % n) as f64 * 0.37 - 1.0).collect();
        let di = [(s.clone(), distinct)];
        check(&di, |t| t[0].max(&axes, keepdims));
        check(&di, |t| t[0].min(&axes, keepdims));
    }

    #[test]
    fn softmax_family(v in prop::collection::vec(1usize..4, 1..4).prop_flat_map(|s| (Just(s.clone()), values(&s, -3.0, 3.0))), axis in 0isize..3) {
        let axis = axis % v.0.len() as isize;
        let inputs = [v];
        check(&inputs, |t| t[0].softmax(axis));
        check(&inputs, |t| t[0].log_softmax(axis));
    }

    #[test]
    fn matmul_and_shapes(m in 1usize..5, k in 1usize..5, n in 1usize..5, seed in 0u64..100) {
        let va: Vec<f64> = (0..m * k).map(|i| ((i as u64 * 13 + seed) % 11) as f64 / 5.0 - 1.0).collect();
        let vb: Vec<f64> = (0..k * n).map(|i| ((i as u64 * 7 + seed) % 9) as f64 / 4.0 - 1.0).collect();
        let inputs = [(vec![m, k], va), (vec![k, n], vb)];
        check(&inputs, |t| t[0].matmul(&t[1]));
        check(&inputs[..1], |t| t[0].transpose(None));
        check(&inputs[..1], |t| t[0].reshape(&[-1]));
        check(&inputs[..1], |t| t[0].expand_dims(1)?.transpose(Some(&[2, 0, 1])));
        check(&inputs[..1], |t| t[0].expand_dims(-1)?.squeeze(-1));
        check(&inputs[..1], |t| t[0].broadcast_to(&[2, m, k]));
        let idx: Vec<usize> = (0..k + 1).map(|i| (i * 3) % k).collect();
        check(&inputs[..1], |t| t[0].gather(1, &idx));
        let labels = Tensor::from_vec((0..m).map(|i| ((i * 5) % k) as f64).collect(), &[m]).unwrap();
        check(&inputs[..1], |t| t[0].take_along_last(&labels));
    }
}

#[test]
fn conventions_at_kinks_follow_tensorflow() {
    let x = Tensor::from_vec(vec![0.0f64, -1.0, 2.0], &[3]).unwrap().requires_grad();
    let g = x.relu().sum_all().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![0.0, 0.0, 1.0]);
    let g = x.abs().sum_all().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![0.0, -1.0, 1.0]);
    // clip passes the gradient on the closed interval: the bounds are inside (TF's clip_by_value).
    let g = x.clip(0.0, 2.0).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![1.0, 0.0, 1.0]);
    let g = x.clip(0.5, 1.5).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![0.0, 0.0, 0.0]);
    let g = x.clip(-1.5, 2.5).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![1.0, 1.0, 1.0]);
    // Ties in a max reduction share the gradient.
    let t = Tensor::from_vec(vec![3.0f64, 1.0, 3.0], &[3]).unwrap().requires_grad();
    let g = t.max(&[0], false).unwrap().backward().unwrap();
    assert_eq!(g.get(&t).unwrap().to_vec::<f64>(), vec![0.5, 0.0, 0.5]);
    // Element-wise maximum: a tie goes to the first argument.
    let a = Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad();
    let b = Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad();
    let g = a.maximum(&b).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&a).unwrap().to_vec::<f64>(), vec![1.0]);
    assert_eq!(g.get(&b).unwrap().to_vec::<f64>(), vec![0.0]);
}

#[test]
fn f32_and_f64_both_work_and_mixing_is_an_error() {
    let a = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap().requires_grad();
    let y = a.square().sum_all();
    assert_eq!(y.to_scalar().unwrap(), 5.0);
    let g = y.backward().unwrap();
    assert_eq!(g.get(&a).unwrap().to_vec::<f32>(), vec![2.0, 4.0]);
    let b = Tensor::from_vec(vec![1.0f64, 2.0], &[2]).unwrap();
    let err = a.add(&b).unwrap_err();
    assert!(err.to_string().contains("dtype mismatch"), "{err}");
}

#[test]
fn shape_errors_are_reported_not_panics() {
    let a = Tensor::zeros(&[2, 3], losskit_tensor::DType::F32);
    let b = Tensor::zeros(&[4], losskit_tensor::DType::F32);
    assert!(a.add(&b).unwrap_err().to_string().contains("[2, 3] and [4] do not broadcast"));
    assert!(a.matmul(&a).is_err());
    assert!(a.reshape(&[4, -1]).is_err());
    assert!(a.squeeze(0).is_err());
    assert!(a.sum(&[2], false).is_err());
    assert!(a.transpose(Some(&[0, 0])).is_err());
    assert!(a.gather(1, &[3]).is_err());
    assert!(a.backward().is_err());
    let labels = Tensor::from_vec(vec![0.0f32, 5.0], &[2]).unwrap();
    let err = Tensor::one_hot(&labels, 3, losskit_tensor::DType::F32).unwrap_err();
    assert!(err.to_string().contains("label 5 at flat position 1"), "{err}");
}

#[test]
fn stable_softplus_logsumexp_at_extremes() {
    let x = Tensor::from_vec(vec![-1e4f32, 0.0, 1e4], &[3]).unwrap();
    assert_eq!(x.softplus().to_vec::<f32>(), vec![0.0, std::f32::consts::LN_2, 1e4]);
    let lse = x.logsumexp(&[0], false).unwrap().to_scalar().unwrap();
    assert_eq!(lse, 1e4);
    let sm = x.softmax(0).unwrap().to_vec::<f32>();
    assert_eq!(sm, vec![0.0, 0.0, 1.0]);
    let lsm = x.log_softmax(0).unwrap().to_vec::<f32>();
    assert!(lsm.iter().all(|v| v.is_finite()));
}

#[test]
fn one_hot_and_no_grad() {
    let labels = Tensor::from_vec(vec![2.0f64, 0.0], &[2]).unwrap();
    let oh = Tensor::one_hot(&labels, 3, losskit_tensor::DType::F32).unwrap();
    assert_eq!(oh.shape(), &[2, 3]);
    assert_eq!(oh.to_vec::<f32>(), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    let x = Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad();
    let y = losskit_tensor::no_grad(|| x.exp());
    assert!(!y.is_tracked());
    assert!(x.exp().is_tracked());
}

/// `y = x²` whose backward differentiates a graph of its own (`Σ x²` over a copy of `x`, recorded
/// at forward time) with a nested `backward`.
struct SquareByNestedBackward {
    copy: Tensor,
    inner: Tensor,
}

impl losskit_tensor::CustomOp for SquareByNestedBackward {
    fn name(&self) -> &str {
        "square_by_nested_backward"
    }
    fn backward(&self, _inputs: &[Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dx = self.inner.backward()?.get(&self.copy).cloned().expect("the copy takes part");
        Ok(vec![Some(dx.mul(grad)?)])
    }
}

#[test]
fn backward_reuses_its_working_sets_and_may_nest() {
    let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], &[3]).unwrap().requires_grad();
    let copy = Tensor::from_storage(x.storage().clone()).requires_grad();
    let inner = copy.mul(&copy).unwrap().sum_all();
    let squared = Tensor::from_vec(x.to_vec::<f64>().iter().map(|v| v * v).collect::<Vec<f64>>(), &[3]).unwrap();
    let y = Tensor::from_op(squared.storage().clone(), vec![x.clone()], SquareByNestedBackward { copy, inner });
    let loss = y.mul_scalar(0.5).unwrap().sum_all();
    // d(½·Σx²)/dx = x, through the nested backward; again, with the kept working sets.
    for _ in 0..3 {
        let g = loss.backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec::<f64>(), vec![1.0, -2.0, 3.0]);
        assert_eq!(g.len(), 1);
    }
    // A second graph in between does not see the first one's gradients.
    let z = Tensor::from_vec(vec![4.0f64], &[1]).unwrap().requires_grad();
    let g = z.mul(&z).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&z).unwrap().to_vec::<f64>(), vec![8.0]);
    assert!(g.get(&x).is_none());
}
