//! A burn MLP (Linear 64→256, relu, Linear 256→10) trained with burn's own Adam on losskit's
//! embedded digits, with any losskit loss by name, on burn's Flex backend with autodiff:
//!
//! `cargo run --release -p losskit-burn --example burn_digits [-- LOSS [EPOCHS]]`
//!
//! With `LOSSKIT_DEVICE=wgpu` and the `wgpu` feature (`--features wgpu`) it trains on burn's
//! wgpu device instead (Vulkan, Metal, DX12; the loss as a fused CubeCL kernel there).
//!
//! LOSS defaults to `sparse_categorical_crossentropy` (from logits); try
//! `categorical_focal_crossentropy` (one-hot targets are made for the `Categorical*` losses).
//! Prints the validation accuracy each epoch.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::error::Error;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    /// The logits.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }
}

/// The digits as `(x (n, 64) in [0, 1], labels (n,))`, shuffled once.
fn digits() -> Result<(Vec<f32>, Vec<i64>), losskit::Error> {
    let data = losskit_train::datasets::digits()?.shuffled(0)?;
    let x = data.x.mul_scalar(1.0 / 16.0)?.to_vec::<f32>();
    let y = data.y.to_vec::<f64>().into_iter().map(|v| v as i64).collect();
    Ok((x, y))
}

/// The rows `idx` of `x (n, 64)` and their labels, as burn tensors.
fn batch(x: &[f32], y: &[i64], idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let xb: Vec<f32> = idx.iter().flat_map(|&i| x[i * 64..(i + 1) * 64].iter().copied()).collect();
    let yb: Vec<i64> = idx.iter().map(|&i| y[i]).collect();
    (
        Tensor::<2>::from_data(TensorData::new(xb, [idx.len(), 64]), device),
        Tensor::<1, Int>::from_data(TensorData::new(yb, [idx.len()]), device),
    )
}

/// Flex, or burn's wgpu device with `LOSSKIT_DEVICE=wgpu` (and the `wgpu` feature).
fn device() -> Result<Device, Box<dyn Error>> {
    match std::env::var("LOSSKIT_DEVICE").as_deref() {
        Err(_) | Ok("flex") => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        Ok(other) => Err(format!(
            "LOSSKIT_DEVICE={other}: this build knows flex{}",
            if cfg!(feature = "wgpu") { " and wgpu" } else { " (wgpu needs --features wgpu)" }
        )
        .into()),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("sparse_categorical_crossentropy", String::as_str);
    let epochs: usize = args.get(2).and_then(|e| e.parse().ok()).unwrap_or(20);
    let loss = losskit_burn::get(name)?;
    // The model outputs logits: tell the loss when it has the option.
    let loss = loss.from_logits(true).unwrap_or(loss);
    let one_hot = loss.loss().class_name().starts_with("Categorical");
    let device = device()?.autodiff();
    device.seed(7);
    let (x, y) = digits()?;
    let n = y.len();
    let n_train = n * 4 / 5;
    let mut model =
        Mlp { hidden: LinearConfig::new(64, 256).init(&device), out: LinearConfig::new(256, 10).init(&device) };
    let mut optim = AdamConfig::new().init();
    let mut order: Vec<usize> = (0..n_train).collect();
    let mut seed = 42u64;
    let val: Vec<usize> = (n_train..n).collect();
    let mut accuracy = 0.0;
    for epoch in 0..epochs {
        // A seeded Fisher-Yates shuffle of the training rows.
        for i in (1..order.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            order.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let mut total = 0.0;
        for idx in order.chunks(32) {
            let (xb, yb) = batch(&x, &y, idx, &device);
            let logits = model.forward(xb);
            let l =
                if one_hot { loss.forward(logits, yb.one_hot::<2>(10).float())? } else { loss.forward(logits, yb)? };
            total += l.clone().into_scalar::<f64>() * idx.len() as f64;
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
        let (xv, yv) = batch(&x, &y, &val, &device);
        let predicted = model.forward(xv).argmax(1).flatten::<1>(0, 1);
        let right = predicted.equal(yv).int().sum().into_scalar::<i64>();
        accuracy = right as f64 / val.len() as f64;
        println!("epoch {:2}: loss {:.4}, validation accuracy {:.4}", epoch + 1, total / n_train as f64, accuracy);
    }
    println!("{name}: validation accuracy {accuracy:.4} on {} digits", val.len());
    Ok(())
}
