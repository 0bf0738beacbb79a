//! The fused Dense node `Tensor::dense` gives the same bits, values and gradients of x, W and b,
//! as `x.matmul(W).add(b)` followed by the activation (fused element-wise chains on or off),
//! on small and large (parallel, lazily fused) shapes, with and without a bias, with x
//! needing a gradient or not, f32 and f64, whatever the thread count; NaN reaches the outputs
//! and gradients; bad shapes and dtypes are errors.

use losskit_tensor::{unfused, DType, DenseActivation, Result, Tensor};

const ACTIVATIONS: [DenseActivation; 4] =
    [DenseActivation::Linear, DenseActivation::Relu, DenseActivation::Sigmoid, DenseActivation::Tanh];

fn values(shape: &[usize], seed: usize, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (((i * 7919 + seed * 104_729) % 10_007) as f64 / 10_007.0) * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape).unwrap().to_dtype(dtype)
}

/// The plain composition the node replaces.
fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: DenseActivation) -> Result<Tensor> {
    let mut z = x.matmul(w)?;
    if let Some(b) = b {
        z = z.add(b)?;
    }
    Ok(match act {
        DenseActivation::Linear => z,
        DenseActivation::Relu => z.relu(),
        DenseActivation::Sigmoid => z.sigmoid(),
        DenseActivation::Tanh => z.tanh(),
    })
}

/// The output and the gradients of x (when tracked), W and b of `Σ y·u` (u fixed weights, so
/// every output element gets its own upstream gradient), as bit patterns.
fn run(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: DenseActivation, fused: bool) -> Vec<Vec<u64>> {
    let y = if fused { x.dense(w, b, act).unwrap() } else { composed(x, w, b, act).unwrap() };
    let u = values(y.shape(), 9, y.dtype());
    let grads = y.mul(&u).unwrap().sum_all().backward().unwrap();
    let bits = |t: &Tensor| t.to_vec::<f64>().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let mut out = vec![bits(&y)];
    out.extend([Some(x), Some(w), b].into_iter().flatten().map(|t| grads.get(t).map(bits).unwrap_or_default()));
    out
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

fn check(m: usize, k: usize, n: usize) {
    for dtype in [DType::F32, DType::F64] {
        for act in ACTIVATIONS {
            for (with_bias, x_tracked) in [(true, true), (true, false), (false, true)] {
                let x = values(&[m, k], 1, dtype);
                let x = if x_tracked { x.requires_grad() } else { x };
                let w = values(&[k, n], 2, dtype).mul_scalar(0.3).unwrap().requires_grad();
                let b = with_bias.then(|| values(&[n], 3, dtype).requires_grad());
                let what = format!("({m}, {k}) · ({k}, {n}) {dtype} {act:?} bias {with_bias} x tracked {x_tracked}");
                let plain = unfused(|| run(&x, &w, b.as_ref(), act, false));
                let lazy = run(&x, &w, b.as_ref(), act, false);
                let one = in_pool(1, || run(&x, &w, b.as_ref(), act, true));
                let three = in_pool(3, || run(&x, &w, b.as_ref(), act, true));
                assert_eq!(plain, lazy, "{what}: the composition, fused chains on or off");
                assert_eq!(one, plain, "{what}: the dense node equals the composition");
                assert_eq!(three, one, "{what}: 3 threads equal 1");
                assert_eq!(one[1].is_empty(), !x_tracked, "{what}: x gets a gradient exactly when tracked");
                assert!(one[2].iter().any(|&v| f64::from_bits(v) != 0.0), "{what}: W gets a gradient");
            }
        }
    }
}

#[test]
fn small_dense_equals_matmul_add_activation() {
    check(5, 7, 3);
    check(32, 20, 17);
}

#[test]
fn large_dense_equals_matmul_add_activation() {
    // 300 × 130 = 39 000 outputs: the parallel bias pass and lazily fused composition.
    check(300, 33, 130);
}

#[test]
fn nan_inputs_reach_outputs_and_gradients() {
    for act in ACTIVATIONS {
        let mut v = values(&[4, 3], 1, DType::F64).to_vec::<f64>();
        v[4] = f64::NAN; // x[1, 1]
        let x = Tensor::from_vec(v, &[4, 3]).unwrap().requires_grad();
        let w = values(&[3, 2], 2, DType::F64).requires_grad();
        let y = x.dense(&w, None, act).unwrap();
        let row1 = &y.to_vec::<f64>()[2..4];
        assert!(row1.iter().all(|v| v.is_nan()), "{act:?}: row 1 is NaN, got {row1:?}");
        let g = y.sum_all().backward().unwrap();
        // ∂W[1, :] = Σᵢ x[i, 1]·G'[i, :] takes in x[1, 1]. The other rows take in G'[1, :],
        // NaN for sigmoid and tanh (their derivative at NaN), finite for the identity and for
        // relu (derivative 0 at NaN, as TensorFlow's).
        let gw = g.get(&w).unwrap().to_vec::<f64>();
        let nan_elsewhere = matches!(act, DenseActivation::Sigmoid | DenseActivation::Tanh);
        assert!(gw[2..4].iter().all(|v| v.is_nan()), "{act:?}: {gw:?}");
        assert!(gw[..2].iter().chain(&gw[4..]).all(|v| v.is_nan() == nan_elsewhere), "{act:?}: {gw:?}");
    }
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let x = values(&[4, 3], 1, DType::F32);
    let w = values(&[3, 2], 2, DType::F32);
    assert!(x.dense(&values(&[4, 2], 2, DType::F32), None, DenseActivation::Relu).is_err());
    assert!(x.dense(&w, Some(&values(&[3], 3, DType::F32)), DenseActivation::Relu).is_err());
    assert!(x.dense(&w.to_dtype(DType::F64), None, DenseActivation::Relu).is_err());
    assert!(values(&[4], 1, DType::F32).dense(&w, None, DenseActivation::Linear).is_err());
    let err = x.dense(&w, Some(&values(&[2], 3, DType::F64)), DenseActivation::Linear).unwrap_err();
    assert!(err.to_string().contains("same dtype"), "{err}");
}
