//! Property tests over every loss in the registry: random shapes, dtypes, values (NaN and inf
//! among them), sample weights, parameters and whole configs give a value or an `Error`, never a
//! panic, and every config a built loss reports builds it again. (Measured when written: about
//! one generated call in ten gets past the argument checks and computes a value and gradient.)

use losskit::{DType, Tensor};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Every class name the registry knows (built-ins).
fn classes() -> Vec<String> {
    losskit::list().into_iter().map(|i| i.class_name).collect()
}

/// A value from a small menu of awkward numbers.
fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -2.0f64..2.0,
        1 => Just(0.0),
        1 => Just(1.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(1e30),
        1 => Just(-1e-30),
        1 => (0u8..5).prop_map(f64::from),
    ]
}

/// A shape of rank 0 to 3 with dimensions 0 to 4.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..4)
}

fn tensor_of(shape: &[usize], values: &[f64], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| if values.is_empty() { 0.5 } else { values[i % values.len()] }).collect();
    Tensor::from_vec(v, shape).unwrap().to_dtype(dtype)
}

/// A JSON value of a random kind, for a parameter.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        number().prop_map(|x| if x.is_finite() { json!(x) } else { json!(null) }),
        any::<bool>().prop_map(|b| json!(b)),
        (-3i64..40).prop_map(|i| json!(i)),
        Just(json!("none")),
        Just(json!("sum")),
        Just(json!("giou")),
        Just(json!("L2")),
        Just(json!("bogus")),
        prop::collection::vec(-1.0f64..2.0, 0..4).prop_map(|v| json!(v)),
        Just(json!({"nested": 1})),
    ]
}

/// A config: the loss' own keys (from its default config) and a stray key, with random values.
fn config_for(class: &str) -> impl Strategy<Value = Value> {
    let keys: Vec<String> = losskit::get(class)
        .map(|l| l.config().as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
        .unwrap_or_default();
    let mut all = keys;
    all.push("not_a_parameter".into());
    prop::collection::vec((prop::sample::select(all), json_value()), 0..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

/// (class, config, y_true shape, y_pred shape, y_true values, y_pred values, weights, f64?)
type Case = (String, Value, Vec<usize>, Vec<usize>, Vec<f64>, Vec<f64>, Option<Vec<f64>>, bool);

fn case() -> impl Strategy<Value = Case> {
    prop::sample::select(classes()).prop_flat_map(|class| {
        (
            Just(class.clone()),
            config_for(&class),
            shape(),
            shape(),
            prop::collection::vec(number(), 0..8),
            prop::collection::vec(number(), 0..8),
            prop::option::of(prop::collection::vec(number(), 1..4)),
            any::<bool>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any loss, any config, any inputs: a value (whose gradient is computable) or an Error.
    #[test]
    fn losses_give_a_value_or_an_error((class, config, ts, ps, tv, pv, w, f64_) in case()) {
        let dtype = if f64_ { DType::F64 } else { DType::F32 };
        let Ok(loss) = losskit::build(&class, &config) else { return Ok(()); };
        // Same-shape inputs half the time, so calls get past the shape checks.
        let ps = if tv.len() % 2 == 0 { ts.clone() } else { ps };
        let y_true = tensor_of(&ts, &tv, dtype);
        let y_pred = tensor_of(&ps, &pv, dtype).requires_grad();
        let weight = w.map(|w| tensor_of(&ts[..ts.len().min(1)], &w, dtype));
        if let Ok(out) = loss.call(&y_true, &y_pred, weight.as_ref()) {
            let _ = out.sum_all().backward();
        }
        // The config a built loss reports builds the same loss again.
        let again = losskit::from_config(&losskit::serialize(loss.as_ref()));
        prop_assert!(again.is_ok(), "{class} {config}: {:?}", again.err());
        prop_assert_eq!(again.unwrap().config(), loss.config());
    }
}

#[test]
fn every_registered_loss_is_reachable_by_the_property_test() {
    // The generator draws from the registry; make sure it is not empty and holds the families.
    let c = classes();
    assert_eq!(c.len(), 48, "built-in losses");
    for name in [
        "MeanSquaredError",
        "SparseCategoricalCrossentropy",
        "TripletSemiHardLoss",
        "CrossEntropyLoss",
        "LinearCrossEntropy",
    ] {
        assert!(c.iter().any(|x| x == name), "{name}");
    }
}
