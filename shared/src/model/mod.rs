//! The operator-facing tables and the SQL that owns them: organizations, source
//! configs, job configs and the Job catalogue. Each module holds the row type, its
//! validation, and its queries (bind parameters only).

pub mod asset_group;
pub mod detection;
pub mod device;
pub mod ignore;
pub mod job;
pub mod job_config;
pub mod job_history;
pub mod organization;
pub mod rescan_lease;
pub mod scan_summary;
pub mod source_config;
pub mod ticket;
pub mod vulnerability;

/// Why a model operation was refused. Messages name the field and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no {what} found for {key}")]
    NotFound { what: &'static str, key: String },
    #[error("{what} {key} already exists")]
    Duplicate { what: &'static str, key: String },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
}

impl ModelError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// True when a database error is a duplicate-key violation (MySQL error 1062).
pub fn is_duplicate_key(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23000") && db.message().contains("Duplicate")
        }
        _ => false,
    }
}
