//! `losskit fit` under `mpirun -np 2` (built with `--features mpi`): the same weights and
//! History as one process with the same global batch; a killed worker stops the job.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn losskit() -> &'static str {
    env!("CARGO_BIN_EXE_losskit")
}

fn mpirun(np: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), losskit()]).args(args);
    c
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The run's weights (read back through its Keras model.json) and History.
fn result(dir: &Path) -> (Vec<Vec<f32>>, losskit_train::History) {
    let mut model = losskit_train::load_keras_model(dir.join("model.json")).unwrap().model;
    model.load_weights(dir.join("model.safetensors")).unwrap();
    let weights = model.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
    (weights, losskit_train::History::from_csv(dir.join("history.csv")).unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 + 1e-5 * b.abs()
}

#[test]
fn two_processes_train_as_one_with_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let base = "fit --epochs 3 --dropout 0 --hidden 32 --no-plots --verbose 0";
    let cases: [(&str, &[&str]); 4] = [
        ("batch 64", &["--batch-size", "64", "--lr", "0.1"]),
        // 1437 training digits: the last of the batches of 100 has 37 rows.
        ("uneven last batch", &["--batch-size", "100", "--lr", "0.1"]),
        ("class weights", &["--batch-size", "64", "--lr", "0.1", "--class-weight", "balanced"]),
        ("sum reduction", &["--batch-size", "64", "--lr", "0.002", "--loss-config", r#"{"reduction": "sum"}"#]),
    ];
    for (i, (what, extra)) in cases.iter().enumerate() {
        let args = |out: &Path| -> Vec<String> {
            base.split(' ')
                .map(String::from)
                .chain(extra.iter().map(|s| s.to_string()))
                .chain(["--out".into(), out.display().to_string()])
                .collect()
        };
        let (one, two) = (dir.path().join(format!("one{i}")), dir.path().join(format!("two{i}")));
        check(Command::new(losskit()).args(args(&one)).output().unwrap(), what);
        check(mpirun(2, &args(&two)).output().unwrap(), what);
        let (w1, h1) = result(&one);
        let (w2, h2) = result(&two);
        for (a, b) in w1.iter().flatten().zip(w2.iter().flatten()) {
            assert!(close(*a as f64, *b as f64), "{what}: weight {a} vs {b}");
        }
        assert_eq!(h1.epochs, h2.epochs, "{what}");
        for (k, v) in &h1.history {
            for (a, b) in v.iter().zip(&h2.history[k]) {
                assert!(close(*a, *b), "{what}: {k} {a} vs {b}");
            }
        }
    }
    // Rank 0 says how many processes train.
    let out = mpirun(
        2,
        &[
            "fit".into(),
            "--epochs".into(),
            "1".into(),
            "--no-plots".into(),
            "--verbose".into(),
            "2".into(),
            "--out".into(),
            dir.path().join("said").display().to_string(),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Data-parallel on 2 MPI processes"), "{text}");
    assert_eq!(text.matches("Finished 1 epochs").count(), 1, "only rank 0 prints: {text}");
}

#[test]
fn a_killed_worker_stops_the_job_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run").display().to_string();
    let mut job =
        mpirun(2, &["fit", "--epochs", "100000", "--no-plots", "--verbose", "0", "--out", &out].map(String::from))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    // Wait for both ranks, then kill one (SIGKILL).
    let started = Instant::now();
    let ranks = loop {
        let children = Command::new("pgrep").args(["-P", &job.id().to_string()]).output().unwrap();
        let pids: Vec<String> =
            String::from_utf8_lossy(&children.stdout).split_whitespace().map(String::from).collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the ranks did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill").args(["-9", &ranks[1]]).status().unwrap();
    let killed = Instant::now();
    loop {
        if job.try_wait().unwrap().is_some() {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the job did not stop after a worker died");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = job.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited on signal 9") || err.contains("Killed"), "{err}");
}

/// The files of a run folder, by name, with their bytes (the folder's files and `backup/`).
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in ["", "backup"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            if e.path().is_file() {
                files.push((format!("{sub}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_killed_two_process_run_resumes_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    // Dropout on: each rank's generator stream must come back with it.
    let args = |out: &Path| -> Vec<String> {
        "fit --epochs 4 --batch-size 64 --dropout 0.2 --hidden 32 --no-plots --verbose 0 --out"
            .split(' ')
            .map(String::from)
            .chain([out.display().to_string()])
            .collect()
    };
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    check(mpirun(2, &args(&whole)).output().unwrap(), "uninterrupted");
    // Rank 0 dies while writing its third backup (after epoch 3): epoch 2's is the last.
    let mut crash = Command::new("mpirun");
    crash
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-x",
            "LOSSKIT_TEST_ABORT_BEFORE_RENAME",
            "-np",
            "2",
            losskit(),
        ])
        .args(args(&killed))
        .env("LOSSKIT_TEST_ABORT_BEFORE_RENAME", "backup.safetensors:3");
    let out = crash.output().unwrap();
    assert!(!out.status.success(), "the crash hook did not stop the job");
    assert!(!killed.join("model.safetensors").exists());
    // One process cannot resume it: refused, the folder unchanged.
    let before = files_of(&killed);
    let resume = ["fit", "--resume", &killed.display().to_string(), "--verbose", "1"].map(String::from);
    let alone = Command::new(losskit()).args(&resume).output().unwrap();
    assert_eq!(alone.status.code(), Some(2), "{}", String::from_utf8_lossy(&alone.stderr));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(err.contains("trained by 2 processes, this is 1") && err.contains("mpirun -np 2"), "{err}");
    assert_eq!(files_of(&killed), before, "a refused resume changes nothing");
    // Two processes from another working directory: the uninterrupted run's bits.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = mpirun(2, &resume).current_dir(elsewhere.path()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    check(out, "resumed");
    assert!(said.contains("Resuming from") && said.contains("epoch 3/4"), "{said}");
    let ((w1, h1), (w2, h2)) = (result(&whole), result(&killed));
    let bits = |w: &[Vec<f32>]| -> Vec<u32> { w.iter().flatten().map(|v| v.to_bits()).collect() };
    assert!(bits(&w2) == bits(&w1), "the weights after the resume differ from the uninterrupted run's");
    assert_eq!(h2, h1);
    let csv = |d: &Path| std::fs::read_to_string(d.join("history.csv")).unwrap();
    assert_eq!(csv(&killed), csv(&whole));
}
