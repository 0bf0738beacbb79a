//! A burn MLP (64 → 128 relu → 10) trained with Adam on losskit's embedded digits (80% train,
//! 20% validation, batches of 32), shared by the CPU and GPU tests.

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use losskit_burn::BurnLoss;

#[derive(burn::module::Module, Debug)]
pub struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(burn::tensor::activation::relu(self.hidden.forward(x)))
    }
}

/// The validation accuracy after `epochs` epochs with `loss` (one-hot targets when
/// `one_hot`, class indices otherwise) on `device` (made an autodiff device here).
pub fn accuracy(device: &Device, loss: &BurnLoss, one_hot: bool, epochs: usize) -> f64 {
    let device = device.clone().autodiff();
    device.seed(7);
    let data = losskit_train::datasets::digits().unwrap().shuffled(0).unwrap();
    let x: Vec<f32> = data.x.mul_scalar(1.0 / 16.0).unwrap().to_vec::<f32>();
    let y: Vec<i64> = data.y.to_vec::<f64>().into_iter().map(|v| v as i64).collect();
    let (n, n_train) = (y.len(), y.len() * 4 / 5);
    let rows = |idx: &[usize]| -> (Tensor<2>, Tensor<1, Int>) {
        let xb: Vec<f32> = idx.iter().flat_map(|&i| x[i * 64..(i + 1) * 64].iter().copied()).collect();
        let yb: Vec<i64> = idx.iter().map(|&i| y[i]).collect();
        (
            Tensor::<2>::from_data(TensorData::new(xb, [idx.len(), 64]), &device),
            Tensor::<1, Int>::from_data(TensorData::new(yb, [idx.len()]), &device),
        )
    };
    let mut model =
        Mlp { hidden: LinearConfig::new(64, 128).init(&device), out: LinearConfig::new(128, 10).init(&device) };
    let mut optim = AdamConfig::new().init();
    let train: Vec<usize> = (0..n_train).collect();
    for _ in 0..epochs {
        for idx in train.chunks(32) {
            let (xb, yb) = rows(idx);
            let logits = model.forward(xb);
            let l = if one_hot { loss.forward(logits, yb.one_hot::<2>(10).float()) } else { loss.forward(logits, yb) };
            let l = l.unwrap();
            model = optim.step(1e-3, model.clone(), GradientsParams::from_grads(l.backward(), &model));
        }
    }
    let val: Vec<usize> = (n_train..n).collect();
    let (xv, yv) = rows(&val);
    let right = model.forward(xv).argmax(1).flatten::<1>(0, 1).equal(yv).int().sum().into_scalar::<i64>();
    right as f64 / val.len() as f64
}
