//! The command line's flag-level enums (`cli`) turned into the domain's types, once, here:
//! `cli` imports nothing of the crate, and no domain type derives a clap trait.

use crate::cli;

impl From<cli::RestartMode> for crate::reconcile::RestartMode {
    fn from(m: cli::RestartMode) -> Self {
        match m {
            cli::RestartMode::Auto => Self::Auto,
            cli::RestartMode::Restart => Self::Restart,
            cli::RestartMode::Recreate => Self::Recreate,
            cli::RestartMode::Rollout => Self::Rollout,
            cli::RestartMode::None => Self::None,
        }
    }
}

impl From<cli::SinkKind> for crate::sink::SinkKind {
    fn from(k: cli::SinkKind) -> Self {
        match k {
            cli::SinkKind::Env => Self::Env,
            cli::SinkKind::Infisical => Self::Infisical,
        }
    }
}

impl From<cli::WriteMode> for crate::sink::WriteMode {
    fn from(m: cli::WriteMode) -> Self {
        match m {
            cli::WriteMode::Atomic => Self::Atomic,
            cli::WriteMode::InPlace => Self::InPlace,
        }
    }
}

impl From<cli::Output> for super::Output {
    fn from(o: cli::Output) -> Self {
        match o {
            cli::Output::Text => Self::Text,
            cli::Output::Json => Self::Json,
        }
    }
}

impl From<cli::InfisicalApi> for crate::infisical::ApiVersion {
    fn from(v: cli::InfisicalApi) -> Self {
        match v {
            cli::InfisicalApi::V3 => Self::V3,
            cli::InfisicalApi::V4 => Self::V4,
        }
    }
}

impl From<cli::NotifyEvent> for super::notify::Event {
    fn from(e: cli::NotifyEvent) -> Self {
        match e {
            cli::NotifyEvent::Changed => Self::Changed,
            cli::NotifyEvent::Failed => Self::Failed,
            cli::NotifyEvent::RolledBack => Self::RolledBack,
            cli::NotifyEvent::Recovered => Self::Recovered,
        }
    }
}

impl From<cli::Check> for super::verify::Check {
    fn from(c: cli::Check) -> Self {
        match c {
            cli::Check::Credential => Self::Credential,
            cli::Check::Redirect => Self::Redirect,
            cli::Check::Certs => Self::Certs,
            cli::Check::Consistency => Self::Consistency,
            cli::Check::Token => Self::Token,
        }
    }
}

impl From<cli::Engine> for super::engine::Engine {
    fn from(e: cli::Engine) -> Self {
        match e {
            cli::Engine::Docker => Self::Docker,
            cli::Engine::Podman => Self::Podman,
        }
    }
}
