//! Boilerplate shared by the built-in loss structs.

/// The `with_name`/`with_reduction` builders and the `name`/`class_name`/`reduction` parts of
/// [`Loss`](crate::Loss) for a struct with `name: String` and `reduction: Reduction` fields.
macro_rules! loss_basics {
    ($ty:ident) => {
        impl $ty {
            /// Sets the reduction (default `sum_over_batch_size`).
            pub fn with_reduction(mut self, reduction: $crate::Reduction) -> Self {
                self.reduction = reduction;
                self
            }
            /// Sets the instance name.
            pub fn with_name(mut self, name: impl Into<String>) -> Self {
                self.name = name.into();
                self
            }
        }
    };
}

/// The three trivial methods of `Loss` for such a struct, to be used inside `impl Loss`.
macro_rules! loss_identity {
    ($ty:ident) => {
        fn name(&self) -> &str {
            &self.name
        }
        fn class_name(&self) -> &str {
            stringify!($ty)
        }
        fn reduction(&self) -> $crate::Reduction {
            self.reduction
        }
    };
}

/// A loss with no parameter besides `name` and `reduction`: the struct, `Default`, `new`,
/// `from_config` and `Loss`, with `$per_sample` (a `fn(&Tensor, &Tensor) -> Result<Tensor>`)
/// computing the per-sample values, and `$row_kernel` (a `RowLoss`) its row kernel.
macro_rules! simple_loss {
    ($(#[$doc:meta])* $ty:ident, $default_name:literal, $per_sample:expr, $row_kernel:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $ty {
            name: String,
            reduction: $crate::Reduction,
        }

        impl Default for $ty {
            fn default() -> Self {
                $ty { name: $default_name.into(), reduction: $crate::Reduction::SumOverBatchSize }
            }
        }

        loss_basics!($ty);

        impl $ty {
            /// Keras' default instance name.
            pub const DEFAULT_NAME: &'static str = $default_name;
            /// The loss with Keras' defaults.
            pub fn new() -> Self {
                Self::default()
            }
            /// Builds from a Keras config (`name`, `reduction`).
            pub fn from_config(config: &serde_json::Value) -> $crate::Result<Self> {
                let mut p = $crate::config::Params::new(stringify!($ty), config)?;
                let loss = Self::new().with_name(p.name($default_name)?).with_reduction(p.reduction()?);
                p.finish()?;
                Ok(loss)
            }
        }

        impl $crate::Loss for $ty {
            loss_identity!($ty);
            fn single_row_kernel(&self, _: crate::loss::sealed::Token) -> bool {
                true
            }
            fn row_kernel(&self, _: crate::loss::sealed::Token) -> Option<crate::RowLoss<'_>> {
                Some($row_kernel)
            }
            fn per_sample(&self, y_true: &$crate::Tensor, y_pred: &$crate::Tensor) -> $crate::Result<$crate::PerSample> {
                let f: fn(&$crate::Tensor, &$crate::Tensor) -> $crate::Result<$crate::Tensor> = $per_sample;
                Ok(f(y_true, y_pred)?.into())
            }
        }
    };
}
