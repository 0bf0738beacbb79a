//! Property test of `losskit compute`'s arguments: any mix of loss names, flags, configs and
//! files (valid, missing, not `.npy`, wrong shapes) ends with exit code 0 and a JSON line, or
//! exit code 2, a message on stderr and no gradient file: never a panic (code 101).

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use proptest::prelude::*;
use std::path::Path;
use std::process::Command;

fn write_f32(path: &Path, shape: &[usize], values: Vec<f32>) {
    let a = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// The files the generated arguments may point at.
fn fixtures(dir: &Path) {
    write_f32(&dir.join("t.npy"), &[2, 3], vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    write_f32(&dir.join("p.npy"), &[2, 3], vec![0.2, 0.7, 0.1, 0.5, 0.3, 0.2]);
    write_f32(&dir.join("labels.npy"), &[2], vec![1.0, 0.0]);
    write_f32(&dir.join("w.npy"), &[2], vec![1.0, 2.0]);
    write_f32(&dir.join("nan.npy"), &[2, 3], vec![f32::NAN, 1.0, 0.0, 1.0, 0.0, 0.0]);
    write_f32(&dir.join("odd.npy"), &[5], vec![1.0; 5]);
    std::fs::write(dir.join("junk.npy"), b"\x93NUMPY garbage").unwrap();
    std::fs::write(dir.join("text.csv"), "1,2\n").unwrap();
}

fn arg() -> impl Strategy<Value = Vec<String>> {
    let file = prop::sample::select(vec![
        "t.npy",
        "p.npy",
        "labels.npy",
        "w.npy",
        "nan.npy",
        "odd.npy",
        "junk.npy",
        "text.csv",
        "missing.npy",
    ]);
    let config = prop::sample::select(vec![
        "{}",
        "{\"from_logits\": true}",
        "{\"delta\": -1}",
        "{\"reduction\": \"bogus\"}",
        "{\"label_smoothing\": 0.1}",
        "not json",
        "[1, 2]",
        "{\"unknown\": 3}",
    ]);
    prop_oneof![
        file.clone().prop_map(|f| vec!["--y-true".to_string(), f.to_string()]),
        file.clone().prop_map(|f| vec!["--y-pred".to_string(), f.to_string()]),
        file.prop_map(|f| vec!["--sample-weight".to_string(), f.to_string()]),
        config.prop_map(|c| vec!["--config".to_string(), c.to_string()]),
        prop::sample::select(vec!["none", "sum", "sum_over_batch_size", "mean", "auto", ""])
            .prop_map(|r| vec!["--reduction".to_string(), r.to_string()]),
        Just(vec!["--grad-out".to_string(), "g.npy".to_string()]),
        Just(vec!["--bogus-flag".to_string()]),
        Just(vec!["--y-true".to_string()]),
    ]
}

fn command() -> impl Strategy<Value = (String, Vec<Vec<String>>)> {
    let names = prop::sample::select(vec![
        "mse",
        "huber",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "kld",
        "Dice",
        "CrossEntropyLoss",
        "TripletSemiHardLoss",
        "CTC",
        "no_such_loss",
        "",
    ]);
    (names.prop_map(str::to_string), prop::collection::vec(arg(), 0..6))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn compute_exits_0_or_2_never_panics((name, args) in command()) {
        let dir = tempfile::tempdir().unwrap();
        fixtures(dir.path());
        let mut argv = vec!["compute".to_string(), name];
        argv.extend(args.into_iter().flatten());
        let out = Command::new(env!("CARGO_BIN_EXE_losskit")).args(&argv).current_dir(dir.path()).output().unwrap();
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(!stderr.contains("panicked"), "{argv:?}: {stderr}");
        match code {
            Some(0) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| TestCaseError::fail(format!("{argv:?}: {e}")))?;
                prop_assert!(v.get("loss").is_some(), "{argv:?}: {v}");
            }
            Some(2) => {
                prop_assert!(!stderr.trim().is_empty(), "{argv:?}: exit 2 without a message");
                prop_assert!(!dir.path().join("g.npy").exists(), "{argv:?}: a gradient file after an error");
                let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap()
                    .filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains("tmp")).collect();
                prop_assert!(leftovers.is_empty(), "{argv:?}: temporary files left: {leftovers:?}");
            }
            other => prop_assert!(false, "{argv:?}: exit {other:?}: {stderr}"),
        }
    }
}
