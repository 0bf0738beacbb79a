//! How long writing and reading a `.keras` archive takes for the "wide" model (Flatten →
//! Dense 2048 relu → Dense 2048 relu → Dense 10 softmax on 28 × 28 inputs, Adam: 5.8 M weights
//! and twice as many optimizer slots). `cargo run --release -p losskit-train --example
//! keras_archive_bench`; prints JSON with the median of 5 of each.

use losskit::Tensor;
use losskit_train::{load_keras_model, Compile, Dense, Fit, Flatten, Sequential};
use std::time::Instant;

fn main() -> losskit::Result<()> {
    let mut model = Sequential::new()
        .add(Flatten::new())
        .add(Dense::new(2048).activation("relu")?)
        .add(Dense::new(2048).activation("relu")?)
        .add(Dense::new(10).activation("softmax")?);
    model.compile(Compile::new().optimizer("adam").loss("sparse_categorical_crossentropy"))?;
    // One step, so that the optimizer's slots exist and are written too.
    let x = Tensor::from_vec(vec![0.5f32; 32 * 784], &[32, 28, 28])?;
    let y = Tensor::from_vec((0..32).map(|i| (i % 10) as f32).collect::<Vec<_>>(), &[32])?;
    model.fit(&x, &y, Fit::new().epochs(1).batch_size(32).verbose(0))?;
    let dir = std::env::temp_dir().join(format!("losskit-archive-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| losskit::Error::io(dir.display().to_string(), "cannot create", e))?;
    let path = dir.join("wide.keras");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut write, mut read) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        model.save_keras(&path)?;
        write.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let back = load_keras_model(&path)?;
        read.push(t.elapsed().as_secs_f64());
        assert!(back.trained);
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"weights": model.count_params(), "archive_bytes": bytes,
                           "write_seconds": median(write), "read_seconds": median(read)})
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
