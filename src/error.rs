//! The top-level error: a message, a hint, and the exit code it maps to.

use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or configuration; nothing was contacted.
    #[error("{message}")]
    Usage { message: String },
    #[error(transparent)]
    Cloudflare(#[from] crate::cloudflare::Error),
    #[error("{message}")]
    Failed {
        message: String,
        hint: Option<String>,
    },
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Failed {
            message: message.into(),
            hint,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { .. } => {
                Some("see `audsync help` and the README's configuration table".into())
            }
            Error::Cloudflare(e) => e.hint(),
            Error::Failed { hint, .. } => hint.clone(),
        }
    }
}
