//! The one error type of losskit, shared by every crate above the kernels.

use losskit_kernels::KernelError;

/// A `Result` with losskit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in losskit. Each message names the operation or loss at fault,
/// the shapes or values involved and what was expected.
///
/// New kinds of error may be added (`#[non_exhaustive]`): a `match` needs a `_` arm.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that must broadcast together do not.
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not broadcast (NumPy rules: trailing dimensions must be equal or 1)")]
    Broadcast {
        /// The operation or loss.
        op: String,
        /// Left shape.
        lhs: Vec<usize>,
        /// Right shape.
        rhs: Vec<usize>,
    },
    /// A shape is wrong for an operation.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation or loss.
        op: String,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// Two tensors of different dtypes met in one operation.
    #[error("{op}: dtype mismatch, {lhs:?} and {rhs:?} (cast one with `to_dtype`)")]
    DType {
        /// The operation or loss.
        op: String,
        /// Left dtype.
        lhs: crate::DType,
        /// Right dtype.
        rhs: crate::DType,
    },
    /// An input value is outside what the operation accepts (a label out of range, a NaN...).
    #[error("{op}: {msg}")]
    Value {
        /// The operation or loss.
        op: String,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// A constructor parameter is invalid.
    #[error("{loss}: invalid parameter `{param}` = {value}: expected {expected}")]
    InvalidParameter {
        /// The loss (or object) being built.
        loss: String,
        /// The parameter name.
        param: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A name that resolves to nothing.
    #[error("unknown {kind} {name:?}; closest known names: {suggestions}")]
    UnknownName {
        /// What kind of thing was looked up ("loss", "reduction", ...).
        kind: String,
        /// The name given.
        name: String,
        /// The closest known names, comma-separated.
        suggestions: String,
    },
    /// A configuration (JSON) that cannot be understood.
    #[error("config: {0}")]
    Config(String),
    /// A file that cannot be read or written, or whose contents are malformed
    /// ([`Error::file`], [`Error::io`]).
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
        /// The operating system's error behind it, if any (also [`std::error::Error::source`]).
        #[source]
        source: Option<IoSource>,
    },
    /// Training produced a NaN or an infinity; the message is a diagnosis (where it started,
    /// the likely cause and what to do).
    #[error("{op}: {diagnosis}")]
    NonFinite {
        /// Where (e.g. `"fit"`).
        op: String,
        /// The diagnosis.
        diagnosis: String,
    },
    /// A kernel rejected its buffers (an internal layout error).
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// An [`std::io::Error`] kept as an [`Error::File`]'s source: shared (so the error stays
/// `Clone`) and compared by kind and message (so it stays `PartialEq`).
#[derive(Debug, Clone)]
pub struct IoSource(pub std::sync::Arc<std::io::Error>);

impl IoSource {
    /// The operating system's error.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
}

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl std::fmt::Display for IoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Error {
    /// [`Error::File`] without an operating-system error: `path` is malformed as `msg` says.
    pub fn file(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into(), source: None }
    }

    /// [`Error::File`] for an operating-system error: `"{action}: {err}"` on `path` (e.g.
    /// `"cannot read: No such file or directory (os error 2)"`), with `err` as the source.
    pub fn io(path: impl Into<String>, action: &str, err: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            msg: format!("{action}: {err}"),
            source: Some(IoSource(std::sync::Arc::new(err))),
        }
    }

    /// [`Error::InvalidParameter`]: `owner`'s parameter `param` got `value`; `expected` says
    /// what is accepted.
    pub fn invalid_parameter(
        owner: impl Into<String>,
        param: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            loss: owner.into(),
            param: param.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn shape(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Shape { op: op.into(), msg: msg.into() }
    }
    pub(crate) fn value(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Value { op: op.into(), msg: msg.into() }
    }
}
