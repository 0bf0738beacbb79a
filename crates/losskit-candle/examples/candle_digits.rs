//! A candle-nn MLP (the seed's model: Dense 512 relu → Dropout 0.2 → Dense 10 softmax) trained
//! with candle's own AdamW on losskit's embedded digits, with any losskit loss by name:
//!
//! `cargo run --release -p losskit-candle --example candle_digits [-- LOSS [EPOCHS]]`
//!
//! LOSS defaults to `sparse_categorical_crossentropy`; try `categorical_focal_crossentropy`
//! (one-hot targets are made for the `Categorical*` losses). Prints the validation accuracy.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, Linear, Optimizer, VarBuilder, VarMap};
use std::error::Error;

struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.hidden.forward(x)?.relu()?;
        let h = if train { candle_nn::ops::dropout(&h, 0.2)? } else { h };
        candle_nn::ops::softmax(&self.out.forward(&h)?, D::Minus1)
    }
}

/// The digits as `(x (n, 64) in [0, 1], labels (n,))`, shuffled once.
fn digits() -> Result<(Vec<f32>, Vec<u32>), losskit::Error> {
    let data = losskit_train::datasets::digits()?.shuffled(0)?;
    let x = data.x.mul_scalar(1.0 / 16.0)?.to_vec::<f32>();
    let y = data.y.to_vec::<f64>().into_iter().map(|v| v as u32).collect();
    Ok((x, y))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("sparse_categorical_crossentropy", String::as_str);
    let epochs: usize = args.get(2).and_then(|e| e.parse().ok()).unwrap_or(30);
    let loss = losskit_candle::get(name)?;
    let one_hot = loss.loss().class_name().starts_with("Categorical");
    let dev = Device::Cpu;
    let (x, y) = digits()?;
    let n = y.len();
    let n_train = n * 4 / 5;
    let x = Tensor::from_vec(x, (n, 64), &dev)?;
    let labels = Tensor::from_vec(y.clone(), n, &dev)?;
    let targets = if one_hot { candle_nn::encoding::one_hot(labels.clone(), 10, 1f32, 0f32)? } else { labels.clone() };

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = Mlp { hidden: linear(64, 512, vb.pp("hidden"))?, out: linear(512, 10, vb.pp("out"))? };
    let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3)?;
    let batch = 32;
    let mut order: Vec<u32> = (0..n_train as u32).collect();
    let mut seed = 42u64;
    for epoch in 0..epochs {
        // A seeded Fisher-Yates shuffle of the training rows.
        for i in (1..order.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            order.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let mut total = 0.0;
        for idx in order.chunks(batch) {
            let idx = Tensor::from_slice(idx, idx.len(), &dev)?;
            let (xb, yb) = (x.index_select(&idx, 0)?, targets.index_select(&idx, 0)?);
            let l = loss.forward(&yb, &model.forward(&xb, true)?, None)?;
            total += l.to_scalar::<f32>()? * idx.dim(0)? as f32;
            opt.backward_step(&l)?;
        }
        if epoch % 5 == 4 || epoch + 1 == epochs {
            println!("epoch {}: loss {:.4}", epoch + 1, total / n_train as f32);
        }
    }
    let val = Tensor::arange(n_train as u32, n as u32, &dev)?;
    let pred = model.forward(&x.index_select(&val, 0)?, false)?.argmax(D::Minus1)?;
    let right = pred.eq(&labels.index_select(&val, 0)?)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    println!("validation accuracy ({name}): {:.4}", right / (n - n_train) as f32);
    Ok(())
}
