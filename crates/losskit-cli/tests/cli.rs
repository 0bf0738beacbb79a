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

#[test]
fn fit_writes_a_run_folder_then_evaluate_predict_and_plot_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = losskit(&["fit", "--epochs", "3", "--hidden", "32", "--verbose", "0", "--out", run.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Finished 3 epochs") && text.contains("best val_accuracy") && text.contains("model.safetensors"),
        "{text}"
    );
    for f in ["history.csv", "curves.png", "curves.svg", "model.safetensors", "model.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), "epoch,accuracy,loss,val_accuracy,val_loss");
    assert_eq!(csv.lines().count(), 4);
    for sub in ["train", "validation"] {
        let entries: Vec<_> = std::fs::read_dir(run.join("logs").join(sub)).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
    // evaluate: the held-out validation samples of the same run.
    let ev = run_ok(&["evaluate", "--model", run.to_str().unwrap()]);
    assert_eq!(ev["on"], "validation");
    assert_eq!(ev["samples"], 360);
    let last_val: f64 = csv.lines().last().unwrap().split(',').nth(3).unwrap().parse().unwrap();
    assert!((ev["accuracy"].as_f64().unwrap() - last_val).abs() < 1e-6, "{ev} vs {last_val}");
    // predict: raw digits in, classes out.
    let x = dir.path().join("x.npy");
    let digits = losskit_train::datasets::digits().unwrap();
    losskit_tensor::npy::write_npy(&x, &digits.x.gather(0, &[0, 1, 2, 3]).unwrap()).unwrap();
    let pr = run_ok(&["predict", "--model", run.to_str().unwrap(), "--input", x.to_str().unwrap()]);
    assert_eq!(pr["classes"].as_array().unwrap().len(), 4);
    // Inputs already scaled to [0, 1] for a model that scales raw values itself (its first
    // layer, Rescaling(1/16)): refused, unless --force (then a warning).
    let keras = losskit_train::load_keras_model(run.join("model.keras")).unwrap();
    assert_eq!(keras.model.layers().next().map(|l| l.kind()), Some("Rescaling"));
    let scaled = dir.path().join("scaled.npy");
    losskit_tensor::npy::write_npy(&scaled, &digits.x.gather(0, &[0, 1]).unwrap().mul_scalar(1.0 / 16.0).unwrap())
        .unwrap();
    let out = losskit(&["predict", "--model", run.to_str().unwrap(), "--input", scaled.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("within [0, 1]") && err.contains("0 to 16") && err.contains("--force"), "{err}");
    let out = losskit(&["predict", "--model", run.to_str().unwrap(), "--input", scaled.to_str().unwrap(), "--force"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    // The run's model.keras predicts raw inputs as the run folder does.
    let from_archive =
        run_ok(&["predict", "--model", run.join("model.keras").to_str().unwrap(), "--input", x.to_str().unwrap()]);
    assert_eq!(from_archive["classes"], pr["classes"]);
    let out = losskit(&["predict", "--model", run.to_str().unwrap(), "--input", x.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "raw inputs: no warning");
    let probs = dir.path().join("p.npy");
    run_ok(&[
        "predict",
        "--model",
        run.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "-o",
        probs.to_str().unwrap(),
    ]);
    let (p, _) = losskit_tensor::npy::read_npy(&probs).unwrap();
    assert_eq!(p.shape(), &[4, 10]);
    // Softmax rows whose largest entry is the class `predict` printed.
    let classes: Vec<u64> = pr["classes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    for (r, row) in p.to_vec::<f64>().chunks(10).enumerate() {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "row {r}: {row:?}");
        assert!(row.iter().all(|&q| (0.0..=1.0).contains(&q)), "row {r}: {row:?}");
        let argmax = row.iter().enumerate().fold(0, |b, (j, &q)| if q > row[b] { j } else { b });
        assert_eq!(argmax as u64, classes[r], "row {r}: {row:?}");
    }
    // plot: a history.csv to a PNG with one panel per metric.
    let png_path = dir.path().join("c.png");
    let pl = run_ok(&["plot", run.join("history.csv").to_str().unwrap(), "-o", png_path.to_str().unwrap()]);
    assert_eq!(pl["panels"], 2);
    let info = png::Decoder::new(std::fs::File::open(&png_path).unwrap()).read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (960, 360));
}

#[test]
fn fit_reads_csv_and_npz_data_and_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    let mut text = String::from("a,b,label\n");
    for i in 0..60 {
        let (a, b) = ((i % 7) as f32, (i % 5) as f32);
        text += &format!("{a},{b},{}\n", u8::from(a > b));
    }
    std::fs::write(&csv, text).unwrap();
    let run = dir.path().join("r1");
    let out = losskit(&[
        "fit",
        "--data",
        csv.to_str().unwrap(),
        "--label-column",
        "label",
        "--epochs",
        "2",
        "--hidden",
        "8",
        "--verbose",
        "0",
        "--no-plots",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!run.join("curves.png").exists());
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(spec["spec"]["classes"], 2);
    assert_eq!(spec["spec"]["input_shape"], serde_json::json!([2]));
    // The flags' model (Dense relu, Dropout, Dense softmax, sparse CE) takes the planned step.
    assert_eq!(spec["step_path"], "planned step");
    // A dense loss gets one-hot targets; Adam with a learning rate and clipnorm.
    let run2 = dir.path().join("r2");
    let out = losskit(&[
        "fit",
        "--data",
        csv.to_str().unwrap(),
        "--loss",
        "categorical_crossentropy",
        "--loss-config",
        r#"{"label_smoothing": 0.1}"#,
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--clipnorm",
        "1.0",
        "--class-weight",
        "balanced",
        "--epochs",
        "2",
        "--hidden",
        "8",
        "--verbose",
        "0",
        "--no-plots",
        "--out",
        run2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["fit", "--data", "/no/such/file.csv", "--verbose", "0"], "/no/such/file.csv: cannot read"),
        (vec!["fit", "--data", "/no/such/data.bin", "--verbose", "0"], "does not exist"),
        (vec!["fit", "--data", dir.path().to_str().unwrap(), "--verbose", "0"], "MNIST layout"),
        (vec!["fit", "--loss", "nope", "--verbose", "0"], "unknown loss"),
        (vec!["fit", "--optimizer", "muon", "--verbose", "0"], "unknown optimizer"),
        (vec!["fit", "--loss-config", "{", "--verbose", "0"], "not valid JSON"),
        (vec!["fit", "--class-weight", "heavy", "--verbose", "0"], "balanced"),
        (vec!["evaluate", "--model", dir.path().to_str().unwrap()], "run.json"),
        (vec!["plot", "/no/history.csv"], "cannot read"),
    ];
    for (args, needle) in cases {
        let out = losskit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_nan_in_a_csv_names_the_files_line_before_any_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    let mut text = String::from("a,b,c,d,e,label\n");
    for r in 0..200 {
        let e = if r == 136 { "NaN".to_string() } else { format!("{}", r % 7) };
        text.push_str(&format!("0.1,0.2,0.3,0.4,{e},{}\n", r % 3));
    }
    std::fs::write(&csv, text).unwrap();
    let run = dir.path().join("run");
    let out = losskit(&["fit", "--data", csv.to_str().unwrap(), "--verbose", "0", "--out", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 138 (data row 137)") && err.contains("feature 4") && err.contains("NaN"), "{err}");
    assert!(!err.contains("check_data"), "no Rust advice for a CLI user: {err}");
}

#[test]
fn layers_metrics_early_stopping_and_plateau_flags() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = losskit(&[
        "fit",
        "--layers",
        "24,12",
        "--metrics",
        "accuracy,sparse_categorical_accuracy",
        "--epochs",
        "40",
        "--lr",
        "0.2",
        "--early-stopping",
        "1",
        "--reduce-lr-on-plateau",
        "1",
        "--monitor",
        "val_loss",
        "--verbose",
        "0",
        "--no-plots",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert!(history.lines().next().unwrap().contains("sparse_categorical_accuracy"), "{history}");
    let epochs = history.lines().count() - 1;
    assert!(epochs < 40, "early stopping with patience 1 stops before 40 epochs: {epochs}");
    // model.json is Keras' JSON: Rescaling, Flatten, then Dense 24 and 12 (relu, each with its
    // Dropout).
    let keras: Value = serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    let units: Vec<Value> =
        keras["config"]["layers"].as_array().unwrap().iter().map(|l| l["config"]["units"].clone()).collect();
    assert_eq!(units, serde_json::json!([null, null, null, 24, null, 12, null, 10]).as_array().unwrap().clone());
    // The run folder still evaluates (the layers are read back).
    let out = losskit(&["evaluate", "--model", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_run_that_cannot_learn_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = ["fit", "--epochs", "2", "--verbose", "2", "--no-plots", "--out", run.to_str().unwrap()];
    let out = losskit(&[&args[..], &["--lr", "1e12"]].concat());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("probability ~0 to the true class") && err.contains("learning rate 1e12"), "{err}");
    assert_eq!(err.matches("is probably too high").count(), 1, "once per run: {err}");
    // A sane rate trains without it.
    let out = losskit(&args);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("too high"));
}

#[test]
fn a_diverging_fit_is_diagnosed_in_the_progress_bars_numbers_and_the_cli_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = losskit(&[
        "fit",
        "--lr",
        "1e30",
        "--epochs",
        "2",
        "--verbose",
        "2",
        "--no-plots",
        "--out",
        dir.path().join("run").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at epoch 1, batch "), "1-based, as the progress bar: {err}");
    assert!(err.contains("--lr (now 1e30)") && err.contains("--clipnorm 1.0"), "CLI advice: {err}");
    assert!(!err.contains("Optimizer::") && !err.contains("000000000") && !err.contains("epoch 0"), "{err}");
}

#[test]
fn compute_reaches_tfa_and_pytorch_losses_by_either_name() {
    let dir = tempfile::tempdir().unwrap();
    let (yt, yp) = (p(dir.path(), "t.npy"), p(dir.path(), "p.npy"));
    write_i32(&yt, &serde_json::json!([0, 2]));
    write_f32(&yp, &serde_json::json!([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]));
    let a = run_ok(&[
        "compute",
        "CrossEntropyLoss",
        "--y-true",
        yt.to_str().unwrap(),
        "--y-pred",
        yp.to_str().unwrap(),
        "--reduction",
        "none",
    ]);
    let b = run_ok(&[
        "compute",
        "cross_entropy",
        "--y-true",
        yt.to_str().unwrap(),
        "--y-pred",
        yp.to_str().unwrap(),
        "--config",
        r#"{"reduction": "none"}"#,
    ]);
    assert_eq!(a, b);
    let (_, v) = nested(&a["loss"]);
    // Row 1: logsumexp(2, 0.5, -1) - 2.
    let expected = (2f64.exp() + 0.5f64.exp() + (-1f64).exp()).ln() - 2.0;
    assert!((v[0] - expected).abs() < 1e-5, "{v:?}");
    write_f32(&yt, &serde_json::json!([0.0, 0.0, 1.0]));
    write_f32(&yp, &serde_json::json!([[0.0, 0.1], [0.2, 0.0], [0.9, 0.9]]));
    let t = run_ok(&[
        "compute",
        "triplet_semihard_loss",
        "--y-true",
        yt.to_str().unwrap(),
        "--y-pred",
        yp.to_str().unwrap(),
    ]);
    // Labels [0, 0, 1]: the positive pairs (0, 1) and (1, 0) at distance √0.05; the only negative
    // (2) is farther than the positive from both anchors, so it is the semi-hard one:
    // mean(max(1 + d_ap - d_an, 0)) with d_an = √1.45 (anchor 0) and √1.30 (anchor 1).
    let d_ap = 0.05f64.sqrt();
    let expected = ((1.0 + d_ap - 1.45f64.sqrt()) + (1.0 + d_ap - 1.30f64.sqrt())) / 2.0;
    let got = t["loss"].as_f64().unwrap();
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
}

#[test]
fn a_killed_fit_resumes_to_the_same_weights_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |out: &Path| -> Vec<String> {
        let f = "fit --epochs 40 --hidden 128 --optimizer adam --reduce-lr-on-plateau 2 --early-stopping 30 --no-plots --verbose 0 --seed 4 --out";
        f.split(' ').map(String::from).chain([out.display().to_string()]).collect()
    };
    let whole = dir.path().join("whole");
    let out = Command::new(env!("CARGO_BIN_EXE_losskit")).args(flags(&whole)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same run, killed without warning (SIGKILL) once it has written a backup (the file
    // appears by an atomic rename, so it is whole once it exists).
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_losskit")).args(flags(&killed)).spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        if killed.join("backup/backup.safetensors").exists() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed().as_secs() < 300, "no backup written in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(!killed.join("model.safetensors").exists(), "killed after the end");
    // evaluate and predict use the killed run's last backup, and say so.
    let ev = losskit(&["evaluate", "--model", killed.to_str().unwrap()]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    assert!(String::from_utf8_lossy(&ev.stderr).contains("did not finish"), "{ev:?}");
    let logs: Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert!(logs["accuracy"].as_f64().unwrap() > 0.5, "{logs}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let no_run = losskit(&["evaluate", "--model", empty.to_str().unwrap()]);
    assert_eq!(no_run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_run.stderr).contains("which holds run.json"), "{no_run:?}");
    // The run's own command line again, with --resume (its flags may be repeated).
    let mut again_flags = flags(&killed);
    again_flags.extend(["--resume".to_string(), killed.display().to_string()]);
    let resumed = Command::new(env!("CARGO_BIN_EXE_losskit")).args(&again_flags).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    for file in ["model.safetensors", "history.csv"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(killed.join(file)).unwrap());
        assert!(a == b, "{file} differs after the resume");
    }
    assert!(killed.join("backup/backup.safetensors").exists(), "the last backup is kept to extend the run");
    let again = losskit(&["fit", "--resume", killed.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("has finished its 40 epochs") && err.contains("--epochs N"), "{err}");
    let other_flags = losskit(&["fit", "--resume", killed.to_str().unwrap(), "--lr", "0.5", "--epochs", "50"]);
    let err = String::from_utf8_lossy(&other_flags.stderr);
    assert!(err.contains("only --epochs and --verbose can change, not --lr") && !err.contains("--epochs,"), "{err}");
    let nothing = losskit(&["fit", "--resume", dir.path().join("none").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("a run folder of `losskit fit`"), "{nothing:?}");
}

fn keras_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/keras_models").join(name).display().to_string()
}

#[test]
fn fit_trains_a_keras_model_file_with_its_compile_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("adam");
    let model = keras_fixture("adam_regularized.json");
    let base = ["fit", "--model", &model, "--epochs", "3", "--verbose", "0", "--no-plots", "--out"];
    let out = losskit(&[&base[..], &[run.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The run's model.json is Keras JSON with the file's layers, optimizer and learning rate.
    let written = losskit_train::load_keras_model(run.join("model.json")).unwrap();
    let kinds: Vec<&str> = written.model.layers().map(|l| l.kind()).collect();
    // The data's scale (1/16) as the model's first layer.
    assert_eq!(kinds, ["Rescaling", "Flatten", "Dense", "Dense", "Activation"]);
    let opt = written.compile.as_ref().unwrap().optimizer.clone().unwrap();
    assert_eq!((opt.rule(), opt.learning_rate()), (losskit_train::Optimizer::adam(0.002).unwrap().rule(), 0.002));
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert!(history.starts_with("epoch,accuracy,loss,val_accuracy,val_loss"), "{history}");
    let out = losskit(&["evaluate", "--model", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Flags override the file: SGD at 0.05.
    let run2 = dir.path().join("sgd");
    let out = losskit(&[&base[..], &[run2.to_str().unwrap(), "--optimizer", "sgd", "--lr", "0.05"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opt = losskit_train::load_keras_model(run2.join("model.json")).unwrap().compile.unwrap().optimizer.unwrap();
    assert_eq!((opt.rule(), opt.learning_rate()), (losskit_train::Optimizer::sgd(0.05).unwrap().rule(), 0.05));
    // A .keras archive trains too.
    let archive = keras_fixture("archive.keras");
    let out = losskit(&[
        "fit",
        "--model",
        &archive,
        "--epochs",
        "1",
        "--verbose",
        "0",
        "--no-plots",
        "--out",
        dir.path().join("k").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An uncompiled model needs --loss and --optimizer (Keras refuses to fit it).
    let uncompiled = keras_fixture("uncompiled.json");
    let run3 = dir.path().join("uncompiled");
    let args = ["fit", "--model", &uncompiled, "--epochs", "1", "--verbose", "0", "--no-plots", "--out"];
    let out = losskit(&[&args[..], &[run3.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uncompiled.json") && err.contains("give --loss and --optimizer"), "{err}");
    assert!(!run3.exists(), "a refused command writes nothing");
    let out = losskit(
        &[&args[..], &[run3.to_str().unwrap(), "--loss", "sparse_categorical_crossentropy", "--optimizer", "adam"]]
            .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A model whose Input is the data's size in another shape gets the data in its shape:
    // rmsprop_logits.json takes (N, 64), the digits are (N, 8, 8).
    let flat = dir.path().join("flat");
    let flat_model = keras_fixture("rmsprop_logits.json");
    let flat_args = ["fit", "--model", &flat_model, "--epochs", "1", "--verbose", "0", "--no-plots", "--out"];
    let out = losskit(&[&flat_args[..], &[flat.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Another size is an error naming the file.
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(keras_fixture("rmsprop_logits.json")).unwrap()).unwrap();
    v["config"]["layers"][0]["config"]["batch_shape"] = serde_json::json!([null, 65]);
    v["build_config"]["input_shape"] = serde_json::json!([null, 65]);
    let wide = dir.path().join("wide_input.json");
    std::fs::write(&wide, v.to_string()).unwrap();
    // Models that do not fit the data, or that losskit cannot build, are errors naming the file.
    for (file, needle) in [
        (wide.to_str().unwrap(), "takes inputs of shape (N, 65), the data's are (N, 8, 8)"),
        (
            "unsupported_conv.json",
            "Conv2D is not supported; supported layers: InputLayer, Flatten, Reshape, Rescaling, Dense, Dropout, Activation",
        ),
    ] {
        let path = if file.ends_with("wide_input.json") { file.to_string() } else { keras_fixture(file) };
        let out = losskit(&[
            "fit",
            "--model",
            &path,
            "--epochs",
            "1",
            "--verbose",
            "0",
            "--out",
            dir.path().join("bad").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && err.contains(file), "{err}");
    }
}

/// `fit --model trained.keras` goes on from the archive's weights and optimizer state (its
/// first epoch starts where the archive left off; `--reinit` starts afresh); every run writes
/// `model.keras`, which reads back with the run's weights; `evaluate` and `predict` take an
/// archive directly.
#[test]
fn a_trained_keras_archive_continues_and_every_run_writes_one() {
    let dir = tempfile::tempdir().unwrap();
    let archive = keras_fixture("archives/adam.keras");
    let fit = |out: &str, extra: &[&str]| {
        let run = dir.path().join(out);
        let args = ["fit", "--model", &archive, "--epochs", "1", "--verbose", "0", "--no-plots", "--out"];
        let o = losskit(&[&args[..], &[run.to_str().unwrap()], extra].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
        let first: Vec<f64> = history.lines().nth(1).unwrap().split(',').skip(1).map(|v| v.parse().unwrap()).collect();
        (run, first[1])
    };
    let (run, continued_loss) = fit("continued", &[]);
    let (fresh, fresh_loss) = fit("fresh", &["--reinit"]);
    // The first epoch's mean loss: 1.048 from the archive's weights, 1.214 from fresh ones.
    assert!(continued_loss < fresh_loss - 0.1, "continued {continued_loss}, fresh {fresh_loss}");
    let restarted = losskit_train::load_keras_model(fresh.join("model.keras")).unwrap();
    assert_eq!(restarted.compile.unwrap().optimizer.unwrap().iterations(), 45, "--reinit: a fresh optimizer");
    let written = losskit_train::load_keras_model(run.join("model.keras")).unwrap();
    assert!(written.trained);
    let names: Vec<&str> = written.model.layers().map(|l| l.name()).collect();
    // The data's scale (1/16) as the first layer, so that the archive takes raw pixels.
    assert_eq!((written.model.name(), names), ("digits_adam", vec!["rescaling", "pixels", "hidden", "probs"]));
    let mut from_safetensors = losskit_train::load_keras_model(run.join("model.json")).unwrap().model;
    from_safetensors.load_weights(run.join("model.safetensors")).unwrap();
    let values = |m: &losskit_train::Model| m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect::<Vec<_>>();
    assert_eq!(values(&written.model), values(&from_safetensors));
    // The archive's optimizer went on: 8 steps in Keras, then one epoch of 45 here.
    let opt = written.compile.unwrap().optimizer.unwrap();
    assert_eq!(opt.iterations(), 8 + 45);

    // evaluate / predict on an archive: its compiled loss and metrics, --data needed.
    let out = losskit(&["evaluate", "--model", &archive, "--data", "digits"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((logs["on"].as_str(), logs["samples"].as_u64()), (Some("all"), Some(1797)));
    assert!(logs["loss"].as_f64().unwrap() > 1.0 && logs["accuracy"].as_f64().unwrap() > 0.3, "{logs}");
    let out = losskit(&["evaluate", "--model", &archive]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --data"));
    let input = dir.path().join("x.npy");
    let x = losskit_train::datasets::digits().unwrap().x.gather(0, &[0, 1, 2]).unwrap().mul_scalar(1.0 / 16.0).unwrap();
    losskit_tensor::npy::write_npy(&input, &x.to_dtype(losskit::DType::F32)).unwrap();
    let out = losskit(&["predict", "--model", &archive, "--input", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut keras = losskit_train::load_keras_model(&archive).unwrap().model;
    let probs = keras.predict(&x, 32).unwrap().remove(0).to_vec::<f32>();
    let classes: Vec<usize> =
        probs.chunks(10).map(|r| (0..10).fold(0, |b, i| if r[i] > r[b] { i } else { b })).collect();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["classes"], serde_json::json!(classes));
}

/// A finished run extended with `--resume RUN --epochs N` ends on the bytes of a run of N
/// epochs from the start; a run folder found from another directory, and copied elsewhere,
/// resumes too; `--out` onto an existing run is refused (nothing changes) unless `--overwrite`.
#[test]
fn finished_runs_extend_and_run_folders_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |out: &Path, epochs: &str| -> Vec<String> {
        let f = "fit --hidden 32 --optimizer adam --reduce-lr-on-plateau 1 --no-plots --verbose 0 --seed 9 --epochs";
        f.split(' ').map(String::from).chain([epochs.to_string(), "--out".into(), out.display().to_string()]).collect()
    };
    let run = |args: &[String], cwd: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_losskit")).args(args).current_dir(cwd).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let whole = dir.path().join("whole");
    run(&flags(&whole, "5"), dir.path());
    // 3 epochs, then extended to 5 from another working directory, by a relative path.
    let short = dir.path().join("short");
    run(&flags(&short, "3"), dir.path());
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    run(&["fit".into(), "--resume".into(), "../short".into(), "--epochs".into(), "5".into()], &elsewhere);
    for file in ["model.safetensors", "history.csv"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(short.join(file)).unwrap());
        assert!(a == b, "{file}: the extended run differs from the 5-epoch one");
    }
    // A copied folder extends too (its paths are its own).
    let copy = dir.path().join("copy");
    copy_dir(&short, &copy);
    run(&["fit".into(), "--resume".into(), copy.display().to_string(), "--epochs".into(), "6".into()], dir.path());
    assert_eq!(std::fs::read_to_string(copy.join("history.csv")).unwrap().lines().count(), 7);

    // --out onto a run: refused, nothing changed; --overwrite replaces it.
    let hashes = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> =
            walk(d).into_iter().map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect();
        v.sort();
        v
    };
    let before = hashes(&whole);
    let out = losskit(&flags(&whole, "1").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a run already") && err.contains("--overwrite"), "{err}");
    assert!(hashes(&whole) == before, "a refused command changed the run folder");
    let mut over = flags(&whole, "1");
    over.push("--overwrite".into());
    run(&over, dir.path());
    assert_eq!(std::fs::read_to_string(whole.join("history.csv")).unwrap().lines().count(), 2);
    // A bad flag with --overwrite is refused before anything is removed.
    let before = hashes(&whole);
    let mut bad = flags(&whole, "1");
    bad.extend(["--overwrite".into(), "--loss".into(), "no_such_loss".into()]);
    let out = losskit(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert!(hashes(&whole) == before, "a refused --overwrite changed the run folder");
}

/// Every file under `d`.
fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A crash in the middle of writing a backup (the process aborts after the temporary file is
/// written, before the rename) leaves the previous backup whole, and the resumed run ends on
/// the bytes of a run never interrupted.
#[test]
fn a_crash_while_writing_a_backup_leaves_the_previous_one_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |out: &Path| -> Vec<String> {
        let f = "fit --epochs 6 --hidden 32 --optimizer adam --no-plots --verbose 0 --seed 2 --out";
        f.split(' ').map(String::from).chain([out.display().to_string()]).collect()
    };
    let whole = dir.path().join("whole");
    assert!(Command::new(env!("CARGO_BIN_EXE_losskit")).args(flags(&whole)).status().unwrap().success());
    let crashed = dir.path().join("crashed");
    let out = Command::new(env!("CARGO_BIN_EXE_losskit"))
        .args(flags(&crashed))
        .env("LOSSKIT_TEST_ABORT_BEFORE_RENAME", "backup.safetensors:3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook aborts the third backup's write");
    let leftovers: Vec<String> = std::fs::read_dir(crashed.join("backup"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(leftovers.iter().any(|f| f.starts_with(".backup.safetensors.tmp-")), "{leftovers:?}");
    // The backup is the second epoch's, whole: --resume reads it and finishes the run.
    let resumed = losskit(&["fit", "--resume", crashed.to_str().unwrap()]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let left = walk(&crashed).into_iter().filter(|p| p.display().to_string().contains(".tmp-")).count();
    assert_eq!(left, 0, "the resume removes the crashed write's temporary file");
    for file in ["model.safetensors", "history.csv"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(crashed.join(file)).unwrap());
        assert!(a == b, "{file} differs after the crash and the resume");
    }
}
