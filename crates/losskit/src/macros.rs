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
