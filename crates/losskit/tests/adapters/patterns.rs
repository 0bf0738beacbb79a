//! The shape families of every registered loss' inputs, shared by the framework adapters'
//! tests (`losskit-candle`, `losskit-burn`), which run every loss through their framework and
//! compare with losskit's own call.

/// Inputs of one shape family: `(y_true values, its shape, y_pred values, its shape)`.
pub type Pattern = (Vec<f64>, Vec<usize>, Vec<f64>, Vec<usize>);

pub fn wave(n: usize, seed: f64, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|i| lo + (hi - lo) * (0.5 + 0.5 * ((i as f64 + seed) * 1.37).sin())).collect()
}

/// The shape families the losses take: dense targets, class indices, labels with embeddings,
/// boxes, PyTorch's stacked inputs, CTC's label and logit sequences.
pub fn patterns() -> Vec<Pattern> {
    let onehot: Vec<f64> = (0..12).map(|i| f64::from(u8::from(i % 3 == (i / 3) % 3))).collect();
    let boxes = |s: f64| -> Vec<f64> {
        (0..4)
            .flat_map(|b| {
                let (y, x) = (b as f64 * 0.1 + s, 0.2 + s);
                [y, x, y + 0.5, x + 0.4]
            })
            .collect()
    };
    vec![
        (onehot.clone(), vec![4, 3], wave(12, 0.3, 0.05, 0.95), vec![4, 3]),
        (wave(12, 1.1, -1.0, 1.0), vec![4, 3], wave(12, 0.7, -2.0, 2.0), vec![4, 3]),
        (vec![2.0, 0.0, 1.0, 1.0], vec![4], wave(12, 0.3, 0.05, 0.95), vec![4, 3]),
        (vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0], vec![6], wave(18, 2.0, -1.0, 1.0), vec![6, 3]),
        (boxes(0.0), vec![4, 4], boxes(0.05), vec![4, 4]),
        (vec![1.0, -1.0, 1.0, -1.0], vec![4], wave(8, 0.1, -1.0, 1.0), vec![4, 2]),
        (vec![1.0, -1.0, 1.0, -1.0], vec![4], wave(24, 0.9, -1.0, 1.0), vec![4, 2, 3]),
        (vec![0.0; 4], vec![4], wave(36, 0.4, -1.0, 1.0), vec![4, 3, 3]),
        (vec![1.0, 2.0, 1.0, 3.0, 1.0, 0.0], vec![2, 3], wave(48, 0.5, -2.0, 2.0), vec![2, 6, 4]),
        // Labels with a similarity matrix (N-pairs); [mean, variance > 0] pairs (Gaussian NLL);
        // one-hot rows over 2 classes (weighted kappa's default).
        (vec![0.0, 1.0, 0.0, 2.0], vec![4], wave(16, 0.6, -1.0, 1.0), vec![4, 4]),
        (wave(4, 0.2, -1.0, 1.0), vec![4], wave(8, 0.8, 0.1, 1.0), vec![4, 2]),
        (vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], vec![4, 2], wave(8, 0.3, 0.05, 0.95), vec![4, 2]),
    ]
}

/// Value and gradient through losskit directly, or `None` when losskit refuses the inputs.
pub fn direct(loss: &dyn losskit::Loss, p: &Pattern, w: Option<&[f64]>, f64_: bool) -> Option<(Vec<f64>, Vec<f64>)> {
    let dt = if f64_ { losskit::DType::F64 } else { losskit::DType::F32 };
    let yt = losskit::Tensor::from_vec(p.0.clone(), &p.1).ok()?.to_dtype(dt);
    let yp = losskit::Tensor::from_vec(p.2.clone(), &p.3).ok()?.to_dtype(dt).requires_grad();
    let sw = w.map(|w| losskit::Tensor::from_vec(w.to_vec(), &[w.len()]).unwrap().to_dtype(dt));
    let out = loss.call(&yt, &yp, sw.as_ref()).ok()?;
    let g = out.sum_all().backward().ok()?;
    let grad = g.get(&yp).map(|g| g.to_vec::<f64>()).unwrap_or_else(|| vec![0.0; yp.numel()]);
    Some((out.to_vec::<f64>(), grad))
}

/// `a` (through a framework) equals `b` (losskit's) to 1e-6 relative, NaN for NaN.
pub fn same(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-6 * (1.0 + y.abs());
        assert!(ok, "{what}[{i}]: through the framework {x} vs losskit {y}");
    }
}
