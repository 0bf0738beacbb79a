//! Kernel nodes take their output and gradient buffers from `losskit_tensor::pool`, which hands
//! back freed buffers with their old contents: results must not depend on what was there.
//! (Its own test binary: the pool is process-wide.)

use losskit::{DType, Tensor};
use losskit_tensor::pool;

const ROWS: usize = 300;
const COLS: usize = 301; // 90 300 values, above pool::MIN_POOLED

fn inputs(seed: usize, dtype: DType) -> (Tensor, Tensor, Tensor) {
    let x: Vec<f64> = (0..ROWS * COLS).map(|i| (((i + seed) * 7919) % 1999) as f64 / 999.0 - 1.0).collect();
    let dense: Vec<f64> = (0..ROWS * COLS).map(|i| if (i + seed).is_multiple_of(COLS) { 1.0 } else { 0.0 }).collect();
    let labels: Vec<f64> = (0..ROWS).map(|r| ((r * 13 + seed) % COLS) as f64).collect();
    (
        Tensor::from_vec(x, &[ROWS, COLS]).unwrap().to_dtype(dtype),
        Tensor::from_vec(dense, &[ROWS, COLS]).unwrap().to_dtype(dtype),
        Tensor::from_vec(labels, &[ROWS]).unwrap().to_dtype(dtype),
    )
}

/// Value bits and gradient bits of every kernel family on one input.
fn run(seed: usize, dtype: DType) -> Vec<Vec<u64>> {
    let (x, dense, labels) = inputs(seed, dtype);
    let cases: [(&str, serde_json::Value, &Tensor); 4] = [
        ("SparseCategoricalCrossentropy", serde_json::json!({"from_logits": true}), &labels),
        ("CategoricalCrossentropy", serde_json::json!({"from_logits": true, "label_smoothing": 0.1}), &dense),
        ("MeanSquaredError", serde_json::json!({}), &dense),
        ("SmoothL1Loss", serde_json::json!({}), &dense),
    ];
    let mut out = Vec::new();
    for (name, config, t) in cases {
        let loss = losskit::build(name, &config).unwrap();
        let p = x.clone().requires_grad();
        let v = loss.call(t, &p, None).unwrap();
        let g = v.backward().unwrap().get(&p).unwrap().to_vec::<f64>();
        out.push(v.to_vec::<f64>().iter().chain(&g).map(|x| x.to_bits()).collect());
    }
    out
}

#[test]
fn reused_buffers_give_the_same_results_as_fresh_ones() {
    for dtype in [DType::F32, DType::F64] {
        pool::clear();
        let fresh = run(1, dtype);
        let _other = run(2, dtype); // fills the pool with another input's values
        assert!(pool::pooled() != (0, 0), "{dtype}: large buffers come back to the pool");
        let reused = run(1, dtype);
        assert_eq!(fresh, reused, "{dtype}");
    }
}
