//! `losskit list` and `losskit compute`, run as a user runs them.

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn losskit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_losskit")).args(args).output().unwrap()
}

fn nested(v: &Value) -> (Vec<usize>, Vec<f64>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                items.iter().for_each(|i| walk(i, depth + 1, shape, out));
            }
            Value::Bool(b) => out.push(f64::from(u8::from(*b))),
            other => out.push(other.as_f64().unwrap()),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out);
    (shape, out)
}

fn write_f32(path: &Path, v: &Value) {
    let (shape, values) = nested(v);
    let a = ArrayD::from_shape_vec(IxDyn(&shape), values.into_iter().map(|x| x as f32).collect()).unwrap();
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn write_i32(path: &Path, v: &Value) {
    let (shape, values) = nested(v);
    let a = ArrayD::from_shape_vec(IxDyn(&shape), values.into_iter().map(|x| x as i32).collect()).unwrap();
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn run_ok(args: &[&str]) -> Value {
    let out = losskit(args);
    assert!(out.status.success(), "losskit {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn list_shows_every_loss_with_aliases() {
    let out = losskit(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "MeanSquaredError",
        "mse",
        "Huber",
        "huber_loss",
        "LogCosh",
        "logcosh",
        "KLDivergence",
        "kullback_leibler_divergence",
        "CosineSimilarity",
        "Poisson",
        "MeanSquaredLogarithmicError",
        "MeanAbsolutePercentageError",
        "MeanAbsoluteError",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

/// Every Keras vector (those without a Keras mask, which the CLI cannot express) through
/// `losskit compute`; the out-of-range sparse label quirk is an error (exit 2) by design.
#[test]
fn compute_reproduces_keras_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let vectors: Vec<Value> = serde_json::from_str(include_str!("../../../conformance/keras_vectors.json")).unwrap();
    let mut checked = 0;
    for v in vectors.iter().filter(|v| v.get("mask").is_none()) {
        let (yt, yp, sw) = (p(dir.path(), "t.npy"), p(dir.path(), "p.npy"), p(dir.path(), "w.npy"));
        if v["y_true_dtype"] == "int32" {
            write_i32(&yt, &v["y_true"])
        } else {
            write_f32(&yt, &v["y_true"])
        }
        write_f32(&yp, &v["y_pred"]);
        let config = v["config"].to_string();
        let mut args = vec![
            "compute",
            v["loss"].as_str().unwrap(),
            "--y-true",
            yt.to_str().unwrap(),
            "--y-pred",
            yp.to_str().unwrap(),
            "--config",
            &config,
        ];
        if let Some(w) = v.get("sample_weight") {
            write_f32(&sw, w);
            args.extend(["--sample-weight", sw.to_str().unwrap()]);
        }
        if v["loss"] == "SparseCategoricalCrossentropy" && v["quirk"] == true {
            let out = losskit(&args);
            assert_eq!(out.status.code(), Some(2));
            assert!(String::from_utf8_lossy(&out.stderr).contains("is not a class index"));
            checked += 1;
            continue;
        }
        let out = run_ok(&args);
        let (shape, got) = nested(&out["loss"]);
        let (eshape, expected) = nested(&v["expected"]);
        assert_eq!(shape, eshape, "{v}");
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-5 + 1e-5 * e.abs(), "{}: {g} vs {e}", v["loss"]);
        }
        checked += 1;
    }
    assert_eq!(checked, 94);
}

#[test]
fn every_reduction_and_the_gradient_file() {
    let dir = tempfile::tempdir().unwrap();
    let (yt, yp, g) = (p(dir.path(), "t.npy"), p(dir.path(), "p.npy"), p(dir.path(), "g.npy"));
    write_f32(&yt, &serde_json::json!([[0.0, 1.0], [1.0, 1.0]]));
    write_f32(&yp, &serde_json::json!([[0.5, 0.5], [1.0, 0.0]]));
    let args = |r: &'static str| {
        vec!["compute", "mse", "--y-true", yt.to_str().unwrap(), "--y-pred", yp.to_str().unwrap(), "--reduction", r]
    };
    assert_eq!(run_ok(&args("none"))["loss"], serde_json::json!([0.25, 0.5]));
    assert_eq!(run_ok(&args("sum"))["loss"], 0.75);
    assert_eq!(run_ok(&args("sum_over_batch_size"))["loss"], 0.375);
    assert_eq!(run_ok(&args("mean"))["loss"], 0.375);
    assert_eq!(run_ok(&args("mean_with_sample_weight"))["loss"], 0.375);
    let mut a = args("sum");
    a.extend(["--grad-out", g.to_str().unwrap()]);
    run_ok(&a);
    let (grad, dtype) = losskit_tensor::npy::read_npy(&g).unwrap();
    assert_eq!(dtype, losskit_tensor::npy::NpyDType::F32);
    assert_eq!(grad.shape(), &[2, 2]);
    // d/dp of Σ_rows mean((p - y)²) = (p - y) for rows of 2.
    assert_eq!(grad.to_vec::<f32>(), vec![0.5, -0.5, 0.0, -1.0]);
    // The config reaches the loss; --reduction overrides it.
    let h = run_ok(&[
        "compute",
        "Huber",
        "--y-true",
        yt.to_str().unwrap(),
        "--y-pred",
        yp.to_str().unwrap(),
        "--config",
        r#"{"delta": 0.5, "reduction": "none"}"#,
    ]);
    assert_eq!(h["loss"], serde_json::json!([0.125, 0.1875]));
}

#[test]
fn bad_input_exits_2_with_a_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (yt, yp, g, bad) =
        (p(dir.path(), "t.npy"), p(dir.path(), "p.npy"), p(dir.path(), "g.npy"), p(dir.path(), "u16.npy"));
    write_f32(&yt, &serde_json::json!([[0.0, 1.0]]));
    write_f32(&yp, &serde_json::json!([[0.5, 0.5, 0.5]]));
    ndarray::arr1(&[1u16, 2]).into_dyn().write_npy(std::fs::File::create(&bad).unwrap()).unwrap();
    let (t, pr, gr, b) = (yt.to_str().unwrap(), yp.to_str().unwrap(), g.to_str().unwrap(), bad.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["compute", "mse", "--y-true", t, "--y-pred", pr, "--grad-out", gr], "do not broadcast"),
        (vec!["compute", "msee", "--y-true", t, "--y-pred", t], "closest known names: mse"),
        (vec!["compute", "mse", "--y-true", t, "--y-pred", "/no/such.npy"], "cannot read"),
        (vec!["compute", "mse", "--y-true", b, "--y-pred", t], "unsupported dtype"),
        (vec!["compute", "mse", "--y-true", t, "--y-pred", t, "--config", "{not json"], "not valid JSON"),
        (vec!["compute", "mse", "--y-true", t, "--y-pred", t, "--reduction", "auto"], "reduction"),
        (vec!["compute", "Huber", "--y-true", t, "--y-pred", t, "--config", r#"{"delta": -1}"#], "delta"),
        (vec!["compute", "mse", "--y-true", t], "--y-pred"),
    ];
    for (args, needle) in cases {
        let out = losskit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!g.exists(), "no gradient file after a failed run");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 3, "{leftovers:?}");
}
