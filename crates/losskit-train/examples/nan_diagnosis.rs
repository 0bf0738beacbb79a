//! Provokes exploding gradients and prints losskit's diagnosis.
//!
//! Run: `cargo run --release --example nan_diagnosis`

use losskit::Tensor;
use losskit_train::{Compile, Dense, Fit, Optimizer, Sequential};

fn main() -> Result<(), losskit::Error> {
    let n = 64;
    let x: Vec<f32> = (0..n * 4).map(|i| 2.0 * (((i * 7919) % 101) as f32 / 101.0 - 0.5)).collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r.iter().enumerate().map(|(j, a)| a * (j as f32 + 1.0)).sum()).collect();
    let (x, y) = (Tensor::from_vec(x, &[n, 4])?, Tensor::from_vec(y, &[n, 1])?);
    let mut model = Sequential::new().seed(5).add(Dense::new(16)).add(Dense::new(16)).add(Dense::new(1));
    model.compile(Compile::new().optimizer(Optimizer::sgd(0.3)?).loss("mse"))?;
    match model.fit(&x, &y, Fit::new().epochs(100).batch_size(16).verbose(0)) {
        Ok(_) => println!("trained without a NaN"),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
