//! The library's one error type.

/// What can go wrong in clearing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migration(String),
    #[error("HSM: {0}")]
    Hsm(#[from] hsm_sim::ClientError),
    /// A request or document that does not parse; names the field.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// The same batch id was uploaded before with other content.
    #[error("batch {batch_id} of terminal {terminal_id} was uploaded before with different records")]
    BatchConflict { terminal_id: String, batch_id: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("file {path}: {source}")]
    File { path: String, source: std::io::Error },
    /// Stored data that breaks an invariant (a bug or tampering).
    #[error("inconsistent data: {0}")]
    Inconsistent(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }
}
