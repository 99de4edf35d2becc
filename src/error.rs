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
}
