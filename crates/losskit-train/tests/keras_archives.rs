//! `.keras` archives both ways: archives trained and saved by Keras 3.15 (with the user's layer
//! and model names, and the optimizer's state) are evaluated, predicted and trained on as Keras
//! does (fixtures and Keras' own numbers from conformance/gen_keras_archives.py); archives
//! losskit writes read back to the same model, and Keras loads them (the same script checks
//! the committed ones).

use losskit::Tensor;
use losskit_train::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn archives_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/keras_models/archives")
}

fn written_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/keras_models/written")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(archives_dir().join("expected.json")).unwrap()).unwrap()
}

/// The first 200 digits (pixels / 16) as the script takes them: rows 0–119 train, 120–199 test.
fn digits() -> (Tensor, Tensor, Tensor, Tensor) {
    let d = datasets::digits().unwrap();
    let x = d.x.mul_scalar(1.0 / 16.0).unwrap();
    let rows = |r: std::ops::Range<usize>| r.collect::<Vec<usize>>();
    let (train, test) = (rows(0..120), rows(120..200));
    (
        x.gather(0, &train).unwrap(),
        d.y.gather(0, &train).unwrap(),
        x.gather(0, &test).unwrap(),
        d.y.gather(0, &test).unwrap(),
    )
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol + tol * b.abs()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// A trained archive: the names Keras gave, `evaluate` and `predict` as Keras' to 1e-5.
#[test]
fn keras_trained_archives_evaluate_and_predict_as_keras() {
    let exp = expected();
    let (_, _, scaled_test, y_test) = digits();
    // The preprocessing archive takes raw pixels in rows of 64 (its Rescaling and Reshape
    // layers make them the others' inputs).
    let raw_test =
        datasets::digits().unwrap().x.gather(0, &(120..200).collect::<Vec<_>>()).unwrap().reshape(&[80, 64]).unwrap();
    for name in ["adam", "rmsprop_centered_momentum", "sgd_momentum_dropout", "preprocessing", "adafactor_ema"] {
        let e = &exp[name];
        let x_test = if name == "preprocessing" { raw_test.clone() } else { scaled_test.clone() };
        let keras = load_keras_model(archives_dir().join(format!("{name}.keras"))).unwrap();
        assert!(keras.trained, "{name}: the archive's weights are read");
        let mut model = keras.model;
        assert_eq!(model.name(), e["model_name"].as_str().unwrap(), "{name}");
        let names: Vec<&str> = model.layers().map(|l| l.name()).collect();
        let want: Vec<&str> = e["layer_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(names, want, "{name}: the layers keep their names");
        let opt = keras.compile.as_ref().and_then(|c| c.optimizer.as_ref()).unwrap();
        assert_eq!(opt.iterations(), e["iterations"].as_u64().unwrap(), "{name}: the optimizer's iterations");
        model.compile(keras.compile.as_ref().unwrap().to_compile()).unwrap();
        let logs = model.evaluate(&x_test, &y_test, 32, None).unwrap();
        let (loss, acc) = (e["evaluate"]["loss"].as_f64().unwrap(), e["evaluate"]["accuracy"].as_f64().unwrap());
        assert!(close(logs["loss"], loss, 1e-5), "{name}: loss {} vs Keras {loss}", logs["loss"]);
        assert!(close(logs["accuracy"], acc, 1e-6), "{name}: accuracy {} vs Keras {acc}", logs["accuracy"]);
        let first4 = x_test.gather(0, &[0, 1, 2, 3]).unwrap();
        let pred = model.predict(&first4, 32).unwrap()[0].to_vec::<f64>();
        for (p, k) in pred.iter().zip(floats(&e["predictions"])) {
            assert!(close(*p, k, 1e-5), "{name}: prediction {p} vs Keras {k}");
        }
    }
}

/// Training goes on from the archive's weights and optimizer state (Adam's moments and
/// iteration count, RMSprop's three averages, Adafactor's factored moments with use_ema's
/// averages) as Keras' does: one more epoch's History and weights as Keras' to 1e-4.
#[test]
fn training_continues_from_a_keras_archive_as_in_keras() {
    let exp = expected();
    let (x, y, _, _) = digits();
    for name in ["adam", "rmsprop_centered_momentum", "adafactor_ema"] {
        let e = &exp[name]["continued"];
        let keras = load_keras_model(archives_dir().join(format!("{name}.keras"))).unwrap();
        let mut model = keras.model;
        model.compile(keras.compile.as_ref().unwrap().to_compile()).unwrap();
        let h = model.fit(&x, &y, Fit::new().epochs(1).batch_size(32).shuffle(false).verbose(0)).unwrap();
        for key in ["loss", "accuracy"] {
            let (ours, theirs) = (h.history[key][0], floats(&e["history"][key])[0]);
            assert!(close(ours, theirs, 1e-4), "{name}: {key} {ours} vs Keras {theirs}");
        }
        for ((wname, w), want) in model.get_weights().iter().zip(e["weights"].as_array().unwrap()) {
            for (a, b) in w.to_vec::<f64>().iter().zip(floats(want)) {
                assert!(close(*a, b, 1e-4), "{name}: {wname} {a} vs Keras {b}");
            }
        }
    }
}

/// A model losskit trained and wrote reads back to the same weights, names and optimizer
/// state; the committed archive (which gen_keras_archives.py loads in Keras) is what the
/// writer writes today, config and weights.
#[test]
fn a_written_archive_reads_back_and_is_the_committed_golden_file() {
    let (x, y, x_test, _) = digits();
    let mut model = Sequential::new()
        .seed(4)
        .with_name("digits_losskit")
        .add(Flatten::new())
        .add(Dense::new(12).activation("relu").unwrap())
        .add(Dropout::new(0.1).unwrap())
        .add(Dense::new(10).activation("softmax").unwrap())
        .with_layer_names(&["pixels", "hidden", "drop", "probs"])
        .unwrap();
    let compile = || {
        Compile::new()
            .optimizer(Optimizer::rmsprop(0.01).unwrap())
            .loss("sparse_categorical_crossentropy")
            .metrics(&["accuracy"])
    };
    model.compile(compile()).unwrap();
    model.fit(&x, &y, Fit::new().epochs(2).batch_size(32).verbose(0)).unwrap();
    let dir = std::env::temp_dir().join(format!("losskit-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits_losskit.keras");
    model.save_keras(&path).unwrap();

    let back = load_keras_model(&path).unwrap();
    assert!(back.trained);
    assert_eq!(back.model.name(), "digits_losskit");
    let names: Vec<&str> = back.model.layers().map(|l| l.name()).collect();
    assert_eq!(names, ["pixels", "hidden", "drop", "probs"]);
    let bits = |m: &Model| m.get_weights().iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>())).collect::<Vec<_>>();
    assert_eq!(bits(&back.model), bits(&model), "the weights");
    let state = back.compile.as_ref().unwrap().optimizer.as_ref().unwrap().state();
    let ours = model.optimizer_mut().unwrap().state();
    assert_eq!(state.iterations, ours.iterations);
    for (a, b) in state.slots.iter().flatten().zip(ours.slots.iter().flatten()) {
        assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>(), "the optimizer's slots");
    }
    // The same compiled model: the same evaluation, bit for bit.
    let mut resumed = back.model;
    resumed.compile(back.compile.as_ref().unwrap().to_compile()).unwrap();
    let (a, b) = (model.evaluate(&x, &y, 32, None).unwrap(), resumed.evaluate(&x, &y, 32, None).unwrap());
    assert_eq!(a["loss"].to_bits(), b["loss"].to_bits());

    same_as_golden(&path, "digits_losskit", &x_test.gather(0, &[0, 1, 2, 3]).unwrap());

    // Keras' preprocessing layers written back: the raw-pixels archive read and written again.
    let raw = dir.join("raw_pixels.keras");
    let keras = load_keras_model(archives_dir().join("preprocessing.keras")).unwrap();
    let mut preprocessing = keras.model;
    preprocessing.compile(keras.compile.unwrap().to_compile()).unwrap();
    preprocessing.save_keras(&raw).unwrap();
    let raw_x = datasets::digits().unwrap().x.gather(0, &[120, 121, 122, 123]).unwrap().reshape(&[4, 64]).unwrap();
    same_as_golden(&raw, "raw_pixels", &raw_x);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The archive at `path` is the committed `written/<name>.keras` (config and weights), which
/// gen_keras_archives.py loads in Keras and whose predictions on `xs` it compares with
/// `written/<name>.predictions.json`; `LOSSKIT_BLESS=1` writes both.
fn same_as_golden(path: &Path, name: &str, xs: &Tensor) {
    let golden = written_dir().join(format!("{name}.keras"));
    if std::env::var_os("LOSSKIT_BLESS").is_some() {
        std::fs::copy(path, &golden).unwrap();
        let mut fresh = load_keras_model(path).unwrap().model;
        let pred = fresh.predict(xs, 32).unwrap()[0].to_vec::<f64>();
        let json = serde_json::json!({"x": xs.to_vec::<f64>(), "x_shape": xs.shape(), "predictions": pred});
        let predictions = written_dir().join(format!("{name}.predictions.json"));
        std::fs::write(predictions, serde_json::to_string(&json).unwrap() + "\n").unwrap();
    }
    let committed =
        load_keras_model(&golden).unwrap_or_else(|e| panic!("{}: {e} (LOSSKIT_BLESS=1 writes it)", golden.display()));
    let now = load_keras_model(path).unwrap();
    let bits = |m: &Model| m.get_weights().iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>())).collect::<Vec<_>>();
    assert_eq!(committed.model.to_json().unwrap(), now.model.to_json().unwrap(), "{name}: config.json changed");
    assert_eq!(bits(&committed.model), bits(&now.model), "{name}: the weights changed");
}

/// Writing is all or nothing; bad archives are errors naming the file and what is wrong.
#[test]
fn bad_archives_are_errors_naming_the_file_and_the_fault() {
    let dir = std::env::temp_dir().join(format!("losskit-bad-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Not a zip.
    let junk = dir.join("junk.keras");
    std::fs::write(&junk, b"not a zip").unwrap();
    let e = load_keras_model(&junk).err().unwrap().to_string();
    assert!(e.contains("junk.keras") && e.contains("not a .keras archive"), "{e}");
    // Weights that do not fit the model: another archive's weights under this config.
    let swap = dir.join("swapped.keras");
    let read = |name: &str, entry: &str| {
        let mut z = zip::ZipArchive::new(std::fs::File::open(archives_dir().join(name)).unwrap()).unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut z.by_name(entry).unwrap(), &mut v).unwrap();
        v
    };
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&swap).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("config.json", o).unwrap();
        std::io::Write::write_all(&mut z, &read("adam.keras", "config.json")).unwrap();
        z.start_file("model.weights.h5", o).unwrap();
        std::io::Write::write_all(&mut z, &read("rmsprop_centered_momentum.keras", "model.weights.h5")).unwrap();
        z.finish().unwrap();
    }
    let e = load_keras_model(&swap).err().unwrap().to_string();
    assert!(
        e.contains("swapped.keras") && e.contains("hidden/kernel has shape [64, 16], the model's is [64, 24]"),
        "{e}"
    );
    // An unbuilt model cannot be written, and nothing is left behind.
    let out = dir.join("unbuilt.keras");
    let e = Sequential::new().add(Dense::new(3)).save_keras(&out).err().unwrap().to_string();
    assert!(e.contains("build the model first"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no partial file");
    std::fs::remove_dir_all(&dir).unwrap();
}
