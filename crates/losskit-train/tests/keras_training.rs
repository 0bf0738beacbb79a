//! Training matches Keras 3.15.1 (JAX) to 1e-4: same initial weights, same data, two epochs of
//! SGD / SGD+momentum / Nesterov / Adam / RMSprop (centered, momentum) / AdamW / Adagrad /
//! Adamax / Lion / Lamb / Ftrl / Adadelta / Nadam / Adafactor, with and without weight decay,
//! amsgrad and use_ema,
//! class and sample weights, clipnorm, clipvalue, global_clipnorm, a validation split and each
//! learning-rate schedule (fixtures from conformance/gen_training_vectors.py).

use losskit::Tensor;
use losskit_train::{Clip, Compile, Dense, Fit, Flatten, LearningRateSchedule, Optimizer, Rule, Sequential};
use serde_json::Value;
use std::collections::BTreeMap;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn optimizer(spec: &Value) -> Optimizer {
    // Adafactor and use_ema through Keras' serialized form (the others through the Rust API).
    if spec["class_name"] == "Adafactor" || spec["use_ema"] == true {
        let mut config = spec.clone();
        config.as_object_mut().unwrap().remove("class_name");
        return Optimizer::from_keras(&serde_json::json!({"class_name": spec["class_name"], "config": config}))
            .unwrap();
    }
    // A number, or a schedule as Keras serializes it.
    let schedule =
        spec["learning_rate"].is_object().then(|| LearningRateSchedule::from_keras(&spec["learning_rate"]).unwrap());
    let lr = schedule.as_ref().map_or_else(|| spec["learning_rate"].as_f64().unwrap(), |s| s.at(0));
    let opt = match spec["class_name"].as_str().unwrap() {
        "SGD" => Optimizer::sgd_momentum(
            lr,
            spec["momentum"].as_f64().unwrap_or(0.0),
            spec["nesterov"].as_bool().unwrap_or(false),
        ),
        "Adam" => Optimizer::adam(lr),
        "AdamW" => Optimizer::adamw(lr, spec["weight_decay"].as_f64().unwrap()),
        "RMSprop" => Optimizer::new(
            Rule::RmsProp {
                rho: 0.9,
                momentum: spec["momentum"].as_f64().unwrap_or(0.0),
                epsilon: 1e-7,
                centered: spec["centered"].as_bool().unwrap_or(false),
            },
            lr,
        ),
        "Adagrad" => Optimizer::new(Rule::Adagrad { initial_accumulator_value: 0.1, epsilon: 1e-7 }, lr),
        "Adamax" => Optimizer::new(Rule::Adamax { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, lr),
        "Lion" => Optimizer::new(Rule::Lion { beta_1: 0.9, beta_2: 0.99 }, lr),
        "Lamb" => Optimizer::new(Rule::Lamb { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, lr),
        "Ftrl" => Optimizer::new(
            Rule::Ftrl {
                learning_rate_power: spec["learning_rate_power"].as_f64().unwrap_or(-0.5),
                initial_accumulator_value: 0.1,
                l1_regularization_strength: spec["l1_regularization_strength"].as_f64().unwrap_or(0.0),
                l2_regularization_strength: spec["l2_regularization_strength"].as_f64().unwrap_or(0.0),
                l2_shrinkage_regularization_strength: spec["l2_shrinkage_regularization_strength"]
                    .as_f64()
                    .unwrap_or(0.0),
                beta: spec["beta"].as_f64().unwrap_or(0.0),
            },
            lr,
        ),
        "Adadelta" => Optimizer::new(Rule::Adadelta { rho: 0.95, epsilon: 1e-7 }, lr),
        "Nadam" => Optimizer::new(Rule::Nadam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }, lr),
        other => panic!("{other}"),
    }
    .unwrap();
    let clip = match (spec["clipnorm"].as_f64(), spec["clipvalue"].as_f64(), spec["global_clipnorm"].as_f64()) {
        (Some(c), _, _) => Some(Clip::Norm(c)),
        (_, Some(c), _) => Some(Clip::Value(c)),
        (_, _, Some(c)) => Some(Clip::GlobalNorm(c)),
        _ => None,
    };
    let opt = match clip {
        Some(c) => opt.with_clip(c).unwrap(),
        None => opt,
    };
    let opt = match (spec["weight_decay"].as_f64(), spec["class_name"].as_str()) {
        (Some(wd), Some(class)) if class != "AdamW" => opt.with_weight_decay(wd).unwrap(),
        _ => opt,
    };
    let opt = opt.with_amsgrad(spec["amsgrad"].as_bool().unwrap_or(false)).unwrap();
    match schedule {
        Some(s) => opt.with_schedule(s),
        None => opt,
    }
}

#[test]
fn two_epochs_match_keras() {
    let fx: Value = serde_json::from_str(include_str!("../../../conformance/training_vectors.json")).unwrap();
    let x = Tensor::from_vec(floats(&fx["x"]), &shape(&fx["x_shape"])).unwrap();
    let y = Tensor::from_vec(floats(&fx["y"]), &[fx["y"].as_array().unwrap().len()]).unwrap();
    let init: Vec<Tensor> = fx["initial_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| Tensor::from_vec(floats(&w["values"]), &shape(&w["shape"])).unwrap())
        .collect();
    let runs = fx["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 41);
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let mut model = Sequential::new()
            .add(Flatten::new())
            .add(Dense::new(16).activation("relu").unwrap())
            .add(Dense::new(10).activation("softmax").unwrap());
        model.build(&[8, 8]).unwrap();
        model.set_weights(&init).unwrap();
        model
            .compile(
                Compile::new()
                    .optimizer(optimizer(&run["optimizer"]))
                    .loss("sparse_categorical_crossentropy")
                    .metrics(&["accuracy"]),
            )
            .unwrap();
        let mut fit = Fit::new().batch_size(16).epochs(2).shuffle(false).verbose(0);
        if let Some(cw) = run["fit"].get("class_weight") {
            let cw: BTreeMap<i64, f64> =
                cw.as_object().unwrap().iter().map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap())).collect();
            fit = fit.class_weight(cw);
        }
        if let Some(sw) = run["fit"].get("sample_weight") {
            let w = floats(sw);
            let n = w.len();
            fit = fit.sample_weight(Tensor::from_vec(w, &[n]).unwrap());
        }
        if let Some(f) = run["fit"].get("validation_split") {
            fit = fit.validation_split(f.as_f64().unwrap());
        }
        let history = model.fit(&x, &y, fit).unwrap();
        let expected = run["history"].as_object().unwrap();
        assert_eq!(history.history.len(), expected.len(), "{name}: logged keys {:?}", history.history.keys());
        for (k, vals) in expected {
            let got = history.get(k).unwrap_or_else(|| panic!("{name}: no {k} in history"));
            assert_eq!(got.len(), floats(vals).len(), "{name} {k}: epochs logged");
            for (g, e) in got.iter().zip(floats(vals)) {
                assert!((g - e as f64).abs() <= 1e-4, "{name} {k}: {got:?} vs {vals}");
            }
        }
        let weights = model.get_weights();
        assert_eq!(weights.len(), run["final_weights"].as_array().unwrap().len(), "{name}: weight count");
        for (w, e) in weights.iter().zip(run["final_weights"].as_array().unwrap()) {
            assert_eq!(w.0, e["name"].as_str().unwrap());
            let got = w.1.to_vec::<f32>();
            let exp = floats(&e["values"]);
            assert_eq!(got.len(), exp.len(), "{name} {}: element count", w.0);
            let worst = got.iter().zip(&exp).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-4, "{name} {}: max |diff| {worst}", w.0);
        }
    }
}
