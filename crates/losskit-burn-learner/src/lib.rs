//! burn-train's `Learner` with a losskit loss: the loss is called in the model's `TrainStep` and
//! `InferenceStep`, the rest is burn-train's own loop (data loaders, Adam, accuracy, the
//! validation split, checkpoints in a temporary folder). A burn MLP on losskit's embedded
//! digits, on burn's Flex backend with autodiff:
//!
//! `cargo run --release -p losskit-burn-learner [-- LOSS [EPOCHS]]`
//!
//! LOSS (a sparse one, on logits) defaults to `sparse_categorical_crossentropy`. burn-train
//! prints its summary of the run (loss and accuracy per split); the binary ends with the
//! validation accuracy of the model burn-train returns ([`train`]).

use burn::data::dataloader::{batcher::Batcher, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn_train::metric::{AccuracyMetric, LossMetric, MetricDefinition};
use burn_train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining,
};
use burn_train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
use std::error::Error;

/// The MLP and the losskit loss it trains with.
#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
    #[module(skip)]
    loss: losskit_burn::BurnLoss,
}

/// A batch of digits: images `(n, 64)` in [0, 1] and labels `(n,)`.
#[derive(Clone, Debug)]
struct Digits {
    images: Tensor<2>,
    labels: Tensor<1, Int>,
}

impl Mlp {
    /// The logits, and losskit's loss of them (burn's order: input, target).
    fn classify(&self, batch: Digits) -> ClassificationOutput {
        let logits = self.out.forward(relu(self.hidden.forward(batch.images)));
        let loss = self.loss.forward(logits.clone(), batch.labels.clone()).expect("digits fit the loss");
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for Mlp {
    type Input = Digits;
    type Output = ClassificationOutput;
    fn step(&self, batch: Digits) -> TrainOutput<ClassificationOutput> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for Mlp {
    type Input = Digits;
    type Output = ClassificationOutput;
    fn step(&self, batch: Digits) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// One digit: its 64 pixels in [0, 1] and its label.
type Item = (Vec<f32>, i64);

/// Stacks items into a [`Digits`] batch.
struct Stack;

impl Batcher<Item, Digits> for Stack {
    fn batch(&self, items: Vec<Item>, device: &Device) -> Digits {
        let n = items.len();
        let images: Vec<f32> = items.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let labels: Vec<i64> = items.iter().map(|&(_, y)| y).collect();
        Digits {
            images: Tensor::from_data(TensorData::new(images, [n, 64]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// A renderer that shows nothing while training (burn-train's plain one prints every batch
/// without its `tui` feature); its summary is printed at the end.
struct Quiet;

impl MetricsRendererTraining for Quiet {
    fn update_train(&mut self, _: MetricState) {}
    fn update_valid(&mut self, _: MetricState) {}
}

impl MetricsRendererEvaluation for Quiet {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
}

impl TrainingProgressLogger for Quiet {
    fn start(&mut self, _: usize, _: usize, _: Option<usize>, _: Option<&str>) {}
    fn update_epoch(&mut self, _: usize) {}
    fn start_split(&mut self, _: &str, _: usize) {}
    fn update_split(&mut self, _: usize) {}
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _: String) {}
}

impl EvaluationProgressLogger for Quiet {
    fn start_global_progress(&mut self, _: usize) {}
    fn start_test(&mut self, _: &str, _: usize) {}
    fn update_test_progress(&mut self, _: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _: String) {}
}

impl MetricsRenderer for Quiet {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: MetricDefinition) {}
}

/// losskit's digits, shuffled once, as `(image, label)` items: 80% to train, 20% to validate.
fn digits() -> Result<(Vec<Item>, Vec<Item>), losskit::Error> {
    let data = losskit_train::datasets::digits()?.shuffled(0)?;
    let x = data.x.mul_scalar(1.0 / 16.0)?.to_vec::<f32>();
    let y = data.y.to_vec::<f64>();
    let mut items: Vec<Item> = x.chunks(64).map(<[f32]>::to_vec).zip(y.iter().map(|&v| v as i64)).collect();
    let valid = items.split_off(items.len() * 4 / 5);
    Ok((items, valid))
}

/// Trains the MLP with the loss `name` for `epochs` through burn-train's `Learner`: the
/// returned model's validation accuracy, and the number of validation digits.
pub fn train(name: &str, epochs: usize) -> Result<(f64, usize), Box<dyn Error>> {
    let loss = losskit_burn::get(name)?;
    let loss = loss.from_logits(true).unwrap_or(loss);
    let device = Device::flex().autodiff();
    device.seed(7);
    let model =
        Mlp { hidden: LinearConfig::new(64, 256).init(&device), out: LinearConfig::new(256, 10).init(&device), loss };
    let (train, valid) = digits()?;
    let n_valid = valid.len();
    let loader = |items, shuffle: bool| {
        let builder = DataLoaderBuilder::new(Stack).batch_size(32);
        let builder = if shuffle { builder.shuffle(42) } else { builder };
        builder.build(InMemDataset::new(items))
    };
    let optim: ModuleOptimizer = AdamConfig::new().init();
    let folder = std::env::temp_dir().join(format!("losskit-burn-learner-{}", std::process::id()));
    let result = SupervisedTraining::new(&folder, loader(train, true), loader(valid.clone(), false))
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .with_application_logger(None)
        .renderer(Box::new(Quiet))
        .summary()
        .num_epochs(epochs)
        .launch(Learner::new(model, optim, ConstantLr::new(1e-3)));
    let _ = std::fs::remove_dir_all(&folder);
    // The returned model on the validation split.
    let batch = Stack.batch(valid, &device);
    let predicted = result.model.classify(batch.clone()).output.argmax(1).flatten::<1>(0, 1);
    let right = predicted.equal(batch.labels).int().sum().into_scalar::<i64>();
    Ok((right as f64 / n_valid as f64, n_valid))
}
