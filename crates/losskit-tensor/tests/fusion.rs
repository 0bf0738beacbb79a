//! Fused element-wise chains (lazy expressions evaluated chunk by chunk) give the same values and
//! gradients, bit for bit, as the plain path (`unfused`), and do not depend on the number of
//! threads: every unary op, softmax, log-softmax, logsumexp, binary ops with full, row, column and scalar operands, clip, sums and
//! means over trailing axes, a transposed (non-contiguous) input, a chain longer than one fused
//! program holds, odd shapes (no multiple of any chunk size), rows longer than a parallel piece,
//! f32 and f64.

use losskit_tensor::{unfused, DType, Result, Tensor};

fn values(shape: &[usize], seed: usize, lo: f64, hi: f64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> =
        (0..n).map(|i| lo + (hi - lo) * (((i * 7919 + seed * 104_729) % 10_007) as f64 / 10_007.0)).collect();
    Tensor::from_vec(v, shape).unwrap().to_dtype(dtype)
}

/// The inputs of one case: `x` (full shape, in (-2, 2)), a row operand, a column operand.
struct Case {
    x: Tensor,
    rows: Tensor,
    cols: Tensor,
}

fn case(shape: &[usize], dtype: DType) -> Case {
    let (lead, last) = (&shape[..shape.len() - 1], shape[shape.len() - 1]);
    let mut row_shape = lead.to_vec();
    row_shape.push(1);
    Case {
        x: values(shape, 1, -2.0, 2.0, dtype),
        rows: values(&row_shape, 2, 0.5, 1.5, dtype),
        cols: values(&[last], 3, 0.5, 1.5, dtype),
    }
}

/// Every unary op, softmax, log-softmax and logsumexp over the last axis, then binary ops
/// against each kind of operand, clip, and reductions.
fn chain(x: &Tensor, rows: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let a = x.exp().add(&x.tanh())?.mul(&x.sigmoid())?.sub(&x.softplus())?;
    let b = x.abs().add_scalar(0.1)?.log().add(&x.square().sqrt())?.add(&x.relu().log1p())?;
    let c = x.atan().mul(&x.erf())?.add(&x.neg().expm1())?;
    let s = x.log_softmax(-1)?.add(&x.mul(rows)?.softmax(-1)?.mul_scalar(50.0)?)?;
    let s = s.sub(&x.logsumexp(&[-1], true)?)?.mul_scalar(0.1)?;
    let d = a.mul(rows)?.div(cols)?.maximum(&b)?.minimum(&c.mul_scalar(3.0)?)?;
    let e = d.clip(-1.5, 1.5)?.add_scalar(2.0)?.pow(&rows.mul_scalar(0.5)?)?.mul(cols)?.add(&s)?;
    let rank = x.rank() as isize;
    let per_row = e.mean(&[rank - 1], false)?;
    let trailing = if x.rank() > 2 { e.sum(&[rank - 2, rank - 1], false)?.sum_all() } else { e.sum_all() };
    let leading = e.sum(&[0], false)?.sum_all();
    per_row.sum_all().add(&trailing.mul_scalar(1e-3)?)?.add(&leading.mul_scalar(1e-3)?)
}

/// `(value, ∂/∂x, ∂/∂rows, ∂/∂cols)` as bit patterns.
fn run(c: &Case, f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>) -> Vec<Vec<u64>> {
    let (x, r, k) = (c.x.clone().requires_grad(), c.rows.clone().requires_grad(), c.cols.clone().requires_grad());
    let y = f(&x, &r, &k).unwrap();
    let g = y.backward().unwrap();
    let bits = |t: &Tensor| t.to_vec::<f64>().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    vec![bits(&y), bits(g.get(&x).unwrap()), bits(g.get(&r).unwrap()), bits(g.get(&k).unwrap())]
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

fn check(shape: &[usize], f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>) {
    for dtype in [DType::F32, DType::F64] {
        let c = case(shape, dtype);
        let plain = unfused(|| run(&c, f));
        let one = in_pool(1, || run(&c, f));
        let four = in_pool(4, || run(&c, f));
        assert!(plain[1].iter().any(|&b| f64::from_bits(b) != 0.0), "{shape:?} {dtype}: x has a gradient");
        assert!(plain.iter().flatten().all(|&b| f64::from_bits(b).is_finite()), "{shape:?} {dtype}: finite");
        for (k, what) in ["value", "grad x", "grad rows", "grad cols"].iter().enumerate() {
            assert_eq!(one[k], plain[k], "{shape:?} {dtype}: fused {what} equals the plain path");
            assert_eq!(four[k], one[k], "{shape:?} {dtype}: {what} with 4 threads equals 1 thread");
        }
    }
}

#[test]
fn fused_chain_equals_plain_path_rank_2() {
    check(&[37, 1009], chain);
}

#[test]
fn fused_chain_equals_plain_path_rank_3() {
    check(&[3, 29, 401], chain);
}

#[test]
fn fused_chain_equals_plain_path_with_rows_longer_than_a_piece() {
    check(&[2, 40_009], chain);
}

/// A chain of 200 ops (more than one fused program holds) on a transposed input.
fn long_chain_on_a_view(x: &Tensor, rows: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let xt = x.transpose(None)?.transpose(None)?;
    let mut y = xt.mul(rows)?;
    for i in 0..100 {
        y = y.mul_scalar(0.999)?.add(if i % 2 == 0 { cols } else { &xt })?;
    }
    Ok(y.tanh().mean(&[-1], false)?.sum_all())
}

#[test]
fn long_chains_and_views_equal_plain_path() {
    check(&[41, 997], long_chain_on_a_view);
}

#[test]
fn nan_and_inf_propagate_through_fused_chains() {
    let mut v = vec![0.5f32; 64 * 1024];
    v[5] = f32::NAN;
    v[2000] = f32::INFINITY;
    let x = Tensor::from_vec(v, &[64, 1024]).unwrap().requires_grad();
    let y = x.mul_scalar(2.0).unwrap().square().mean(&[-1], false).unwrap();
    let vals = y.to_vec::<f32>();
    assert!(vals[0].is_nan());
    assert_eq!(vals[1], f32::INFINITY);
    assert_eq!(vals[2], 1.0);
    let g = y.sum_all().backward().unwrap();
    let gx = g.get(&x).unwrap().to_vec::<f32>();
    assert!(gx[5].is_nan());
    assert_eq!(gx[2000], f32::INFINITY);
    assert_eq!(gx[0], 8.0 * 0.5 / 1024.0);
}

#[test]
fn sum_many_equals_separate_sums_in_values_and_gradients() {
    for (shape, axes) in [(vec![37, 1009], vec![-1]), (vec![3, 29, 401], vec![1, 2]), (vec![2, 40_009], vec![0, 1])] {
        for dtype in [DType::F32, DType::F64] {
            let c = case(&shape, dtype);
            let sums = |many: bool| {
                let x = c.x.clone().requires_grad();
                let (a, b) = (x.mul(&x.sigmoid()).unwrap(), x.neg().add_scalar(1.0).unwrap().mul(&c.cols).unwrap());
                let s = if many {
                    Tensor::sum_many(&[&a, &b, &x], &axes, false).unwrap()
                } else {
                    vec![a.sum(&axes, false).unwrap(), b.sum(&axes, false).unwrap(), x.sum(&axes, false).unwrap()]
                };
                let total = s[0].mul_scalar(0.5).unwrap().add(&s[1]).unwrap().mul(&s[2]).unwrap().sum_all();
                let g = total.backward().unwrap();
                let mut out: Vec<Vec<f64>> = s.iter().map(|t| t.to_vec::<f64>()).collect();
                out.push(g.get(&x).unwrap().to_vec::<f64>());
                out
            };
            let (many, separate) = (sums(true), sums(false));
            assert_eq!(many[0].len(), shape[..shape.len() - axes.len()].iter().product::<usize>());
            assert_eq!(many, separate, "{shape:?} {axes:?} {dtype}");
        }
    }
    let (a, b) = (Tensor::zeros(&[2, 3], DType::F32), Tensor::zeros(&[3, 2], DType::F32));
    let err = Tensor::sum_many(&[&a, &b], &[-1], false).unwrap_err().to_string();
    assert!(err.contains("sum_many") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
}

#[test]
fn small_eager_unary_ops_equal_the_large_paths_bit_for_bit() {
    // The first 63 values of a large tensor (fused path) and the same values as a small 7 × 9
    // tensor (the eager loop): every unary op, its value and its gradient.
    let ops: [fn(&Tensor) -> Tensor; 14] = [
        |x| x.exp(),
        |x| x.tanh(),
        |x| x.sigmoid(),
        |x| x.softplus(),
        |x| x.relu(),
        |x| x.abs(),
        |x| x.abs().add_scalar(0.1).unwrap().sqrt(),
        |x| x.abs().add_scalar(0.1).unwrap().log(),
        |x| x.relu().log1p(),
        |x| x.expm1(),
        |x| x.erf(),
        |x| x.atan(),
        |x| x.square(),
        |x| x.neg(),
    ];
    for dtype in [DType::F32, DType::F64] {
        let big = values(&[40_000], 4, -2.0, 2.0, dtype);
        let head = big.to_vec::<f64>()[..63].to_vec();
        let small = Tensor::from_vec(head, &[7, 9]).unwrap().to_dtype(dtype);
        let bits = |t: &Tensor, n: usize| t.to_vec::<f64>()[..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (k, f) in ops.iter().enumerate() {
            let run = |x: &Tensor| {
                let x = x.clone().requires_grad();
                let y = f(&x);
                let g = y.sum_all().backward().unwrap();
                (bits(&y, 63), bits(g.get(&x).unwrap(), 63))
            };
            assert_eq!(run(&small), run(&big), "op {k} {dtype}: small and large paths");
            assert_eq!(run(&small), unfused(|| run(&big)), "op {k} {dtype}: small and plain large paths");
        }
    }
}
