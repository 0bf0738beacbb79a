//! Error paths (each names the loss, the shapes or values, and what was expected) and the
//! registry: names, aliases, configs and their round trips.

use losskit::{DType, Error, Loss, Reduction, Tensor};
use serde_json::json;

fn t(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| i as f32 / 10.0).collect(), shape).unwrap()
}

#[test]
fn mismatched_shapes_name_the_loss_and_both_shapes() {
    let err = losskit::MeanSquaredError::new().call(&t(&[2, 3]), &t(&[2, 4]), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Broadcast { .. }));
    assert!(msg.contains("mean_squared_error") && msg.contains("[2, 3]") && msg.contains("[2, 4]"), "{msg}");
}

#[test]
fn sample_weight_that_does_not_broadcast_is_an_error() {
    let err = losskit::Huber::default().call(&t(&[4, 3]), &t(&[4, 3]), Some(&t(&[3]))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("huber_loss") && msg.contains("sample_weight of shape [3]") && msg.contains("[4]"), "{msg}");
}

#[test]
fn empty_input_is_an_error() {
    let err = losskit::LogCosh::new().call(&t(&[0, 3]), &t(&[0, 3]), None).unwrap_err();
    assert!(err.to_string().contains("log_cosh: empty input"), "{err}");
}

#[test]
fn scalar_input_is_an_error() {
    let err = losskit::Poisson::new().call(&Tensor::scalar(1.0f32), &Tensor::scalar(1.0f32), None).unwrap_err();
    assert!(err.to_string().contains("poisson: scalar inputs"), "{err}");
}

#[test]
fn invalid_parameters_are_errors() {
    let err = losskit::Huber::new(-1.0).unwrap_err();
    assert_eq!(err.to_string(), "Huber: invalid parameter `delta` = -1: expected a finite number >= 0");
    assert!(losskit::Huber::new(f64::NAN).is_err());
    let err = losskit::build("Huber", &json!({"delta": "big"})).unwrap_err();
    assert!(err.to_string().contains("`delta` = \"big\": expected a number"), "{err}");
    let err = losskit::build("mse", &json!({"reduction": "auto"})).unwrap_err();
    assert!(err.to_string().contains("`reduction` = \"auto\""), "{err}");
    let err = losskit::build("mse", &json!({"delat": 1})).unwrap_err();
    assert!(err.to_string().contains("unexpected config key \"delat\""), "{err}");
    let err = losskit::CosineSimilarity::new().with_axis(2).call(&t(&[2, 3]), &t(&[2, 3]), None).unwrap_err();
    assert!(err.to_string().contains("axis 2 is out of range for inputs of rank 2"), "{err}");
}

#[test]
fn unknown_names_list_the_closest_known_ones() {
    let err = losskit::get("mean_sqared_error").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("unknown loss \"mean_sqared_error\"; closest known names: mean_squared_error"), "{msg}");
    // Keras' lookup is case-sensitive: "Mse" is not "mse".
    assert!(losskit::get("Mse").is_err());
}

#[test]
fn every_keras_alias_and_keras2_name_resolves() {
    let expect = [
        ("mse", "MeanSquaredError"),
        ("MSE", "MeanSquaredError"),
        ("mean_squared_error", "MeanSquaredError"),
        ("mae", "MeanAbsoluteError"),
        ("MAE", "MeanAbsoluteError"),
        ("mape", "MeanAbsolutePercentageError"),
        ("MAPE", "MeanAbsolutePercentageError"),
        ("msle", "MeanSquaredLogarithmicError"),
        ("MSLE", "MeanSquaredLogarithmicError"),
        ("huber", "Huber"),
        ("huber_loss", "Huber"),
        ("log_cosh", "LogCosh"),
        ("logcosh", "LogCosh"),
        ("poisson", "Poisson"),
        ("kld", "KLDivergence"),
        ("KLD", "KLDivergence"),
        ("kl_divergence", "KLDivergence"),
        ("kullback_leibler_divergence", "KLDivergence"),
        ("cosine_similarity", "CosineSimilarity"),
        ("CosineSimilarity", "CosineSimilarity"),
        ("bce", "BinaryCrossentropy"),
        ("BCE", "BinaryCrossentropy"),
        ("binary_crossentropy", "BinaryCrossentropy"),
        ("binary_focal_crossentropy", "BinaryFocalCrossentropy"),
        ("categorical_crossentropy", "CategoricalCrossentropy"),
        ("categorical_focal_crossentropy", "CategoricalFocalCrossentropy"),
        ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"),
        ("CategoricalGeneralizedCrossEntropy", "CategoricalGeneralizedCrossEntropy"),
        ("hinge", "Hinge"),
        ("squared_hinge", "SquaredHinge"),
        ("categorical_hinge", "CategoricalHinge"),
        ("dice", "Dice"),
        ("tversky", "Tversky"),
        ("circle", "Circle"),
        ("ctc", "CTC"),
    ];
    for (name, class) in expect {
        let loss = losskit::get(name).unwrap();
        assert_eq!(loss.class_name(), class, "{name}");
        assert_eq!(loss.reduction(), Reduction::SumOverBatchSize);
    }
    assert_eq!(losskit::get("huber").unwrap().name(), "huber_loss");
}

#[test]
fn configs_have_keras_keys_and_round_trip_losslessly() {
    let huber = losskit::build("Huber", &json!({"delta": 0.25, "reduction": "sum", "name": "h"})).unwrap();
    assert_eq!(huber.config(), json!({"name": "h", "reduction": "sum", "delta": 0.25}));
    let cos = losskit::CosineSimilarity::new().with_axis(0).with_reduction(Reduction::None);
    assert_eq!(cos.config(), json!({"name": "cosine_similarity", "reduction": "none", "axis": 0}));
    assert_eq!(
        losskit::get("mse").unwrap().config(),
        json!({"name": "mean_squared_error", "reduction": "sum_over_batch_size"})
    );
    for info in losskit::list() {
        let loss = losskit::get(&info.class_name).unwrap();
        let s = losskit::serialize(loss.as_ref());
        assert_eq!(s["module"], "keras.losses");
        let back = losskit::from_config(&s).unwrap();
        assert_eq!(back.config(), loss.config(), "{}", info.class_name);
        assert_eq!(back.class_name(), loss.class_name());
    }
    // The non-default parameters survive too (Keras itself drops Huber.delta and CosineSimilarity.axis).
    let back = losskit::from_config(&losskit::serialize(huber.as_ref())).unwrap();
    assert_eq!(back.config()["delta"], 0.25);
    let back = losskit::from_config(&losskit::serialize(&cos)).unwrap();
    assert_eq!(back.config()["axis"], 0);
    assert_eq!(back.reduction(), Reduction::None);
    // `reduction: null` (Keras' None) means no reduction.
    assert_eq!(losskit::build("mse", &json!({"reduction": null})).unwrap().reduction(), Reduction::None);
}

#[test]
fn custom_losses_can_be_registered_and_found() {
    losskit::register("cubed_error", "mean |e|^3", |config| {
        let loss = losskit::CustomLoss::new("cubed_error", |t: &Tensor, p: &Tensor| {
            p.sub(t)?.abs().powf(3.0)?.mean(&[-1], false)
        });
        let reduction = match config.get("reduction").and_then(|r| r.as_str()) {
            Some(r) => Reduction::parse(r)?,
            None => Reduction::SumOverBatchSize,
        };
        Ok(Box::new(loss.with_reduction(reduction)) as Box<dyn Loss>)
    })
    .unwrap();
    let loss = losskit::get("cubed_error").unwrap();
    let y = Tensor::from_vec(vec![0.0f32, 0.0], &[1, 2]).unwrap();
    let p = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap();
    assert_eq!(loss.call(&y, &p, None).unwrap().to_scalar().unwrap(), 4.5);
    assert!(losskit::list().iter().any(|i| i.class_name == "cubed_error" && i.family == losskit::Family::Custom));
    let summed = losskit::build("cubed_error", &json!({"reduction": "sum"})).unwrap();
    assert_eq!(summed.reduction(), Reduction::Sum);
    // Built-in names cannot be taken.
    assert!(losskit::register("mse", "", |_| losskit::get("mae")).is_err());
}

#[test]
fn y_true_is_cast_to_y_pred_dtype_and_f64_works() {
    let y = Tensor::from_vec(vec![1.0f64, 0.0], &[1, 2]).unwrap();
    let p = Tensor::from_vec(vec![0.5f32, 0.5], &[1, 2]).unwrap();
    let out = losskit::MeanSquaredError::new().call(&y, &p, None).unwrap();
    assert_eq!(out.dtype(), DType::F32);
    assert_eq!(out.to_scalar().unwrap(), 0.25);
    let out = losskit::MeanSquaredError::new().call(&p, &y.to_dtype(DType::F64), None).unwrap();
    assert_eq!(out.dtype(), DType::F64);
    assert_eq!(out.to_scalar().unwrap(), 0.25);
    // A value that f32 cannot hold exactly: the f64 path keeps it, the f32 one rounds it.
    let y = Tensor::from_vec(vec![0.1f64], &[1, 1]).unwrap();
    let p64 = Tensor::from_vec(vec![0.0f64], &[1, 1]).unwrap();
    let v64 = losskit::MeanSquaredError::new().call(&y, &p64, None).unwrap().to_scalar().unwrap();
    assert_eq!(v64, 0.1f64 * 0.1);
    let v32 = losskit::MeanSquaredError::new().call(&y, &p64.to_dtype(DType::F32), None).unwrap().to_scalar().unwrap();
    assert_eq!(v32, f64::from(0.1f32 * 0.1f32));
}

#[test]
fn zero_weights_reduce_to_zero_not_nan_and_keep_a_zero_gradient() {
    let y = t(&[2, 2]);
    let p = Tensor::from_vec(vec![1.0f32, 1.0, 1.0, 1.0], &[2, 2]).unwrap().requires_grad();
    let w = Tensor::from_vec(vec![0.0f32, 0.0], &[2]).unwrap();
    let loss = losskit::MeanSquaredError::new().with_reduction(Reduction::MeanWithSampleWeight);
    let out = loss.call(&y, &p, Some(&w)).unwrap();
    assert_eq!(out.to_scalar().unwrap(), 0.0);
    let g = out.backward().unwrap();
    assert_eq!(g.get(&p).unwrap().to_vec::<f32>(), vec![0.0; 4]);
}

#[test]
fn reductions_parse_from_their_keras_names() {
    for r in Reduction::ALL {
        assert_eq!(r.keras_name().parse::<Reduction>().unwrap(), r);
    }
    let err = "auto".parse::<Reduction>().unwrap_err();
    assert!(matches!(&err, Error::InvalidParameter { param, .. } if param == "reduction"), "{err}");
}
