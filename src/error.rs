//! The core's one error type. The bindings turn it into Python exceptions in one place.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Arrow type {0} has no fingerprint rule; cast the column to a supported type \
         (numbers, temporal, strings, binary, lists, structs, dictionaries) first"
    )]
    UnsupportedArrowType(String),
    #[error("Arrow data could not be imported through the C data interface: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(
        "stored buffer frame is corrupt: {0}; the entry cannot be read, so treat it as a miss \
         and compute the value again"
    )]
    CorruptFrame(String),
    #[error("the entry is corrupt: {0}")]
    CorruptEntry(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// A cache directory that someone else could write: using it would let them choose what
    /// this process unpickles.
    #[error("refusing the cache directory: {path} {problem}; {fix}")]
    Untrusted { path: std::path::PathBuf, problem: String, fix: String },
}

impl Error {
    /// An I/O error that names what was being done and to which file.
    pub fn io(action: &'static str, path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }
}
