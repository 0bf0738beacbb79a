//! Keras-style training for losskit: models, optimizers, `fit`, callbacks and datasets.
//!
//! Not built yet: this crate is a placeholder in the workspace so the layering
//! (kernels → tensor → losskit → train → cli) is in place. Its public items come with the
//! training issue.

#![warn(missing_docs)]
