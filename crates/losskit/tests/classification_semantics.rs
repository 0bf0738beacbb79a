//! The classification losses at the extremes (finite values and gradients), the blog examples,
//! per-class weights and label errors.

use losskit::{DType, Loss, Reduction, Tensor};
use serde_json::json;

fn t(v: Vec<f64>, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(v, shape).unwrap().to_dtype(dtype)
}

/// Value and gradient (of the sum of the output) are finite.
fn assert_finite(loss: &dyn Loss, y: &Tensor, p: &Tensor, what: &str) {
    let p = p.detach().requires_grad();
    let out = loss.call(y, &p, None).unwrap_or_else(|e| panic!("{what}: {e}"));
    let v = out.to_vec::<f64>();
    assert!(v.iter().all(|x| x.is_finite()), "{what}: value {v:?}");
    let g = out.sum_all().backward().unwrap();
    let g = g.get(&p).map(|g| g.to_vec::<f64>()).unwrap_or_default();
    assert!(g.iter().all(|x| x.is_finite()), "{what}: gradient {g:?}");
}

#[test]
fn extreme_logits_stay_finite_in_f32_and_f64() {
    for dtype in [DType::F32, DType::F64] {
        let logits = t(vec![1e4, -1e4, 0.0, -1e4, 1e4, 3.0], &[2, 3], dtype);
        let onehot = t(vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0], &[2, 3], dtype);
        let labels = t(vec![1.0, 0.0], &[2], dtype);
        let cases: Vec<(Box<dyn Loss>, &Tensor)> = vec![
            (Box::new(losskit::BinaryCrossentropy::new().with_from_logits(true)), &onehot),
            (Box::new(losskit::BinaryFocalCrossentropy::new().with_from_logits(true)), &onehot),
            (Box::new(losskit::CategoricalCrossentropy::new().with_from_logits(true)), &onehot),
            (Box::new(losskit::CategoricalFocalCrossentropy::new().with_from_logits(true)), &onehot),
            (Box::new(losskit::SparseCategoricalCrossentropy::new().with_from_logits(true)), &labels),
            (Box::new(losskit::Hinge::new()), &onehot),
            (Box::new(losskit::SquaredHinge::new()), &onehot),
            (Box::new(losskit::CategoricalHinge::new()), &onehot),
        ];
        for (loss, y) in &cases {
            assert_finite(loss.as_ref(), y, &logits, &format!("{} {dtype}", loss.class_name()));
        }
        // The wrong class at +1e4 costs about 2e4 (exact in the log-softmax form).
        let cce = losskit::CategoricalCrossentropy::new().with_from_logits(true).with_reduction(Reduction::None);
        let v = cce.call(&onehot, &logits, None).unwrap().to_vec::<f64>();
        assert!((v[0] - 2e4).abs() < 1.0, "{v:?}");
    }
}

#[test]
fn probabilities_of_exactly_zero_and_one_stay_finite() {
    for dtype in [DType::F32, DType::F64] {
        let probs = t(vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0], &[2, 3], dtype);
        let y = t(vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[2, 3], dtype);
        let labels = t(vec![0.0, 1.0], &[2], dtype);
        let cases: Vec<(Box<dyn Loss>, &Tensor)> = vec![
            (Box::new(losskit::BinaryCrossentropy::new()), &y),
            (Box::new(losskit::BinaryFocalCrossentropy::new()), &y),
            (Box::new(losskit::CategoricalFocalCrossentropy::new()), &y),
            (Box::new(losskit::Dice::new()), &y),
            (Box::new(losskit::Tversky::default()), &y),
        ];
        for (loss, yy) in &cases {
            assert_finite(loss.as_ref(), yy, &probs, &format!("{} {dtype}", loss.class_name()));
        }
        // Categorical losses renormalise rows; a row of all zeros is 0/0 in Keras too, so use rows with mass.
        let rows = t(vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0], &[2, 3], dtype);
        assert_finite(&losskit::CategoricalCrossentropy::new(), &y, &rows, "CCE probs 0/1");
        assert_finite(&losskit::SparseCategoricalCrossentropy::new(), &labels, &rows, "SCCE probs 0/1");
        let cce = losskit::CategoricalCrossentropy::new().with_reduction(Reduction::None);
        let v = cce.call(&y, &rows, None).unwrap().to_vec::<f64>();
        // True class with probability 0 → -ln(1e-7) = 16.118095.
        assert!((v[0] - 16.118095).abs() < 1e-5 && (v[1] - 16.118095).abs() < 1e-5, "{v:?}");
    }
}

#[test]
fn single_class_rows_and_very_long_rows() {
    for dtype in [DType::F32, DType::F64] {
        // One class: the softmax is 1, the loss 0.
        let one = t(vec![1.0, 1.0], &[2, 1], dtype);
        let x = t(vec![5.0, -3.0], &[2, 1], dtype);
        let v = losskit::CategoricalCrossentropy::new().with_from_logits(true).call(&one, &x, None).unwrap();
        assert_eq!(v.to_scalar().unwrap(), 0.0);
        let v = losskit::SparseCategoricalCrossentropy::new()
            .with_from_logits(true)
            .call(&t(vec![0.0, 0.0], &[2], dtype), &x, None)
            .unwrap();
        assert_eq!(v.to_scalar().unwrap(), 0.0);
        // 1e5 classes, uniform logits: the loss is ln(1e5) and the gradient is finite.
        let k = 100_000;
        let logits = Tensor::zeros(&[2, k], dtype);
        let labels = t(vec![7.0, 99_999.0], &[2], dtype);
        let scce = losskit::SparseCategoricalCrossentropy::new().with_from_logits(true);
        let v = scce.call(&labels, &logits, None).unwrap().to_scalar().unwrap();
        assert!((v - (k as f64).ln()).abs() < 1e-4, "{v}");
        assert_finite(&scce, &labels, &logits, "SCCE 1e5 classes");
        let mut onehot = vec![0.0; 2 * k];
        onehot[7] = 1.0;
        onehot[k + 99_999] = 1.0;
        let onehot = t(onehot, &[2, k], dtype);
        assert_finite(&losskit::CategoricalCrossentropy::new().with_from_logits(true), &onehot, &logits, "CCE 1e5");
        assert_finite(
            &losskit::CategoricalFocalCrossentropy::new().with_from_logits(true),
            &onehot,
            &logits,
            "CFCE 1e5",
        );
        assert_finite(&losskit::BinaryCrossentropy::new().with_from_logits(true), &onehot, &logits, "BCE 1e5");
    }
}

#[test]
fn blog_examples_match_keras_3() {
    let y = t(vec![0.0, 1.0, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], &[4, 2], DType::F32);
    let p = t(vec![0.6, 0.4, 0.4, 0.6, 0.6, 0.4, 0.8, 0.2], &[4, 2], DType::F32);
    let bce = losskit::build("BinaryCrossentropy", &json!({"reduction": "none"})).unwrap();
    let v = bce.call(&y, &p, None).unwrap().to_vec::<f32>();
    let expected = [0.91629076f32, 0.5919186, 0.79465115, 1.0549202];
    for (a, b) in v.iter().zip(expected) {
        assert!((a - b).abs() <= 1e-6, "{v:?}");
    }
    let labels = t(vec![0.0, 1.0, 2.0], &[3], DType::F32);
    let probs = t(vec![0.05, 0.95, 0.0, 0.1, 0.8, 0.1, 0.1, 0.8, 0.1], &[3, 3], DType::F32);
    let scce = losskit::get("sparse_categorical_crossentropy").unwrap();
    let v = scce.call(&labels, &probs, None).unwrap().to_scalar().unwrap();
    // Keras 3: mean of -ln 0.05, -ln 0.8, -ln 0.1.
    assert!((v - 1.840487).abs() < 1e-5, "{v}");
}

#[test]
fn per_class_weights_scale_each_class() {
    let labels = t(vec![0.0, 1.0, 2.0], &[3], DType::F64);
    let probs = t(vec![0.5, 0.25, 0.25, 0.25, 0.5, 0.25, 0.25, 0.25, 0.5], &[3, 3], DType::F64);
    let plain = losskit::SparseCategoricalCrossentropy::new().with_reduction(Reduction::None);
    let weighted = plain.clone().with_class_weights(vec![1.0, 2.0, 3.0]).unwrap();
    let a = plain.call(&labels, &probs, None).unwrap().to_vec::<f64>();
    let b = weighted.call(&labels, &probs, None).unwrap().to_vec::<f64>();
    let ln2 = std::f64::consts::LN_2;
    assert!((a[0] - ln2).abs() < 1e-12 && (b[0] - ln2).abs() < 1e-12);
    assert!((b[1] - 2.0 * ln2).abs() < 1e-12 && (b[2] - 3.0 * ln2).abs() < 1e-12);
    // Mean over samples (Keras' reduction), not PyTorch's Σ w·l / Σ w[y].
    let mean = weighted.clone().with_reduction(Reduction::SumOverBatchSize).call(&labels, &probs, None).unwrap();
    assert!((mean.to_scalar().unwrap() - 2.0 * ln2).abs() < 1e-12);
    // The dense loss with one-hot targets agrees.
    let onehot = Tensor::one_hot(&labels, 3, DType::F64).unwrap();
    let cce = losskit::CategoricalCrossentropy::new()
        .with_reduction(Reduction::None)
        .with_class_weights(vec![1.0, 2.0, 3.0])
        .unwrap();
    assert_eq!(cce.call(&onehot, &probs, None).unwrap().to_vec::<f64>(), b);
    // Binary: per-output weights.
    let y = t(vec![1.0, 0.0], &[1, 2], DType::F64);
    let p = t(vec![0.5, 0.5], &[1, 2], DType::F64);
    let bce = losskit::BinaryCrossentropy::new().with_class_weights(vec![1.0, 3.0]).unwrap();
    assert!((bce.call(&y, &p, None).unwrap().to_scalar().unwrap() - 2.0 * ln2).abs() < 1e-12);
    // Wrong length or negative weights are errors.
    let err =
        weighted.call(&t(vec![0.0], &[1], DType::F64), &t(vec![0.5, 0.5], &[1, 2], DType::F64), None).unwrap_err();
    assert!(err.to_string().contains("class_weights has 3 entries but there are 2 classes"), "{err}");
    assert!(losskit::SparseCategoricalCrossentropy::new().with_class_weights(vec![-1.0]).is_err());
}

#[test]
fn bad_sparse_labels_are_errors_naming_label_and_position() {
    let probs = t(vec![0.2, 0.3, 0.5, 0.1, 0.1, 0.8], &[2, 3], DType::F32);
    let scce = losskit::SparseCategoricalCrossentropy::new();
    for (labels, needle) in [
        (vec![0.0, 3.0], "label 3 at position [1]"),
        (vec![-1.0, 0.0], "label -1 at position [0]"),
        (vec![f64::NAN, 0.0], "label NaN at position [0]"),
    ] {
        let err = scce.call(&t(labels, &[2], DType::F32), &probs, None).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("sparse_categorical_crossentropy"), "{err}");
        assert!(err.contains("0..3"), "{err}");
    }
    // ignore_class labels are fine and excluded from the mean.
    let ignoring = scce.clone().with_ignore_class(Some(-1));
    let v = ignoring.call(&t(vec![-1.0, 2.0], &[2], DType::F32), &probs, None).unwrap().to_scalar().unwrap();
    assert!((v - -(0.8f64.ln())).abs() < 1e-6, "{v}");
    // Labels (B, 1) are squeezed; mismatched label shapes are errors.
    let v2 = scce.call(&t(vec![2.0, 1.0], &[2, 1], DType::F32), &probs, None).unwrap().to_scalar().unwrap();
    let v1 = scce.call(&t(vec![2.0, 1.0], &[2], DType::F32), &probs, None).unwrap().to_scalar().unwrap();
    assert_eq!(v2, v1, "(B, 1) labels give what (B,) labels give");
    assert!(v1 > 0.0);
    let err = scce.call(&t(vec![0.0, 1.0, 2.0], &[3], DType::F32), &probs, None).unwrap_err();
    assert!(err.to_string().contains("labels of shape [3]"), "{err}");
    // CTC labels are checked too.
    let ctc = losskit::Ctc::new();
    let err = ctc.call(&t(vec![5.0], &[1, 1], DType::F32), &Tensor::zeros(&[1, 2, 3], DType::F32), None).unwrap_err();
    assert!(err.to_string().contains("label 5"), "{err}");
}

#[test]
fn invalid_parameters_of_classification_losses() {
    assert!(losskit::CategoricalGeneralizedCrossEntropy::new(1.0).unwrap_err().to_string().contains("0 < q < 1"));
    assert!(losskit::BinaryCrossentropy::new().with_label_smoothing(1.5).is_err());
    assert!(losskit::BinaryFocalCrossentropy::new().with_gamma_alpha(-1.0, 0.25).is_err());
    // An axis is checked against the inputs when the loss is called (here 5 on rank-2 inputs).
    let axis5 = losskit::build("SparseCategoricalCrossentropy", &json!({"axis": 5})).unwrap();
    let e = axis5.call(&t(vec![0.0, 1.0], &[2], DType::F32), &t(vec![0.5; 6], &[2, 3], DType::F32), None).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let err = losskit::CategoricalCrossentropy::new()
        .call(&t(vec![0.0, 1.0], &[2], DType::F32), &t(vec![0.5; 6], &[2, 3], DType::F32), None)
        .unwrap_err();
    assert!(err.to_string().contains("use SparseCategoricalCrossentropy"), "{err}");
    let cfce = losskit::CategoricalFocalCrossentropy::new().with_alpha_gamma(vec![0.5, 0.5], 2.0).unwrap();
    assert!(cfce
        .call(&t(vec![1.0, 0.0, 0.0], &[1, 3], DType::F32), &t(vec![0.3; 3], &[1, 3], DType::F32), None)
        .is_err());
}

#[test]
fn remaining_losses_at_extremes() {
    for dtype in [DType::F32, DType::F64] {
        // CTC with logits of ±1e4 (feasible and infeasible labels).
        let mut logits = vec![0.0; 2 * 4 * 3];
        for (i, v) in logits.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1e4 } else { -1e4 };
        }
        let logits = t(logits, &[2, 4, 3], dtype);
        let labels = t(vec![1.0, 2.0, 1.0, 1.0, 1.0, 1.0], &[2, 3], dtype);
        assert_finite(&losskit::Ctc::new(), &labels, &logits, &format!("CTC {dtype}"));
        // Circle with identical and opposite unit embeddings, and the default gamma of 80.
        let emb = t(vec![1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 1.0], &[4, 2], dtype);
        let lab = t(vec![0.0, 0.0, 1.0, 1.0], &[4], dtype);
        assert_finite(&losskit::Circle::default(), &lab, &emb, &format!("Circle {dtype}"));
        // Generalized CE at p_true = 1 (the gradient at p_true = 0 is infinite in the maths too).
        let gce = losskit::CategoricalGeneralizedCrossEntropy::default();
        let p = t(vec![1.0, 0.0, 0.0, 1.0], &[2, 2], dtype);
        assert_finite(&gce, &t(vec![0.0, 1.0], &[2], dtype), &p, &format!("GCE {dtype}"));
        let v = gce.call(&t(vec![1.0, 0.0], &[2], dtype), &p, None).unwrap().to_scalar().unwrap();
        assert_eq!(v, 2.0, "p_true = 0 gives 1/q");
        // Dice and Tversky with all-zero inputs: 1 - 0/eps = 1, finite.
        let z = Tensor::zeros(&[2, 3], dtype);
        assert_finite(&losskit::Dice::new(), &z, &z, "Dice zeros");
        assert_finite(&losskit::Tversky::default(), &z, &z, "Tversky zeros");
    }
}
