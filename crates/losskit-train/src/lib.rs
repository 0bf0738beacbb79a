//! Keras-style training for losskit: `Sequential` models, `compile`/`fit`/`evaluate`/`predict`,
//! optimizers, callbacks, sample and class weights, datasets.
//!
//! ```no_run
//! use losskit_train::{datasets, Compile, Dense, Dropout, Fit, Flatten, Sequential};
//! let data = datasets::digits()?;
//! let x = data.x.mul_scalar(1.0 / 16.0)?;
//! let mut model = Sequential::new()
//!     .add(Flatten::new())
//!     .add(Dense::new(512).activation("relu")?)
//!     .add(Dropout::new(0.2)?)
//!     .add(Dense::new(10).activation("softmax")?);
//! model.compile(Compile::new().optimizer("sgd").loss("sparse_categorical_crossentropy").metrics(&["accuracy"]))?;
//! let history = model.fit(&x, &data.y, Fit::new().epochs(50).validation_split(0.2))?;
//! println!("val_accuracy: {:?}", history.last("val_accuracy"));
//! # Ok::<(), losskit::Error>(())
//! ```

#![warn(missing_docs)]

pub mod activations;
pub mod callbacks;
mod compile;
pub mod datasets;
pub mod distribute;
pub mod initializers;
mod keras_archive;
pub mod keras_model;
mod layers;
pub mod metrics;
mod model;
pub mod nan;
mod optimizers;
pub mod regularizers;
mod schedules;
mod step_path;
mod tensor_file;
mod train;

pub use activations::Activation;
pub use callbacks::{
    plot_history, BackupAndRestore, BackupWeights, Callback, CallbackState, CsvLogger, EarlyStopping, FitParams,
    History, LambdaCallback, LearningRateScheduler, Logs, Mode, ModelCheckpoint, PlotLearningCurves, ProgbarLogger,
    ReduceLROnPlateau, SaveFreq, TensorBoard, TerminateOnNaN, UpdateFreq,
};
pub use compile::{Compile, LossArg, OptimizerArg};
pub use distribute::{Collective, ThreadGroup};
pub use initializers::Initializer;
pub use keras_model::{load_keras_model, model_from_json, KerasCompile, KerasModel};
pub use layers::{ActivationLayer, Dense, Dropout, Flatten, Layer, Param, Rescaling, Reshape};
pub use losskit_kernels::threads::{keep_pool_awake, use_calling_thread, KeepAwake, ThreadPoolError};
pub use model::{Model, Sequential, Stack};
pub use nan::{human_number, Cause, CliDiagnosis, Diagnosis, Stage};
pub use optimizers::{Clip, Ema, GradientCheck, Optimizer, OptimizerState, Rule};
pub use regularizers::Regularizer;
pub use schedules::LearningRateSchedule;
pub use train::{Fit, StepKind, StepPath, Targets};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// docs/losses.md's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/losses.md")]
struct LossesDoctests;

/// docs/training.md's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/training.md")]
struct TrainingDoctests;
