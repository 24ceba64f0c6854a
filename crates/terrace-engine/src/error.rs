//! The engine's error type.

use std::path::PathBuf;

use terrace_core::Diagnostic;
use terrace_state::StateError;

/// Why the engine could not do what was asked. Bad input comes back as
/// [`EngineError::Invalid`] with every problem found, each located.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no terrace.yaml in {} or any parent directory", .start.display())]
    NotAProject { start: PathBuf },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("unknown environment `{name}`; the project has: {}", .known.join(", "))]
    UnknownEnvironment { name: String, known: Vec<String> },
    #[error("the project has several environments and no `defaultEnvironment`; pick one with --env ({})", .known.join(", "))]
    NoEnvironment { known: Vec<String> },
    #[error("unknown unit `{name}` in environment `{environment}`")]
    UnknownUnit { name: String, environment: String },
    #[error("unknown layer `{name}`; the project's layers: {}", .known.join(", "))]
    UnknownLayer { name: String, known: Vec<String> },
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("git: {0}")]
    Git(String),
    #[error("{flag} names target `{name}`, which is not a {kind} target of this project; its {kind} targets: {}", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownTarget {
        flag: &'static str,
        kind: terrace_core::config::TargetKind,
        name: String,
        known: Vec<String>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// Every diagnostic this error carries.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            EngineError::Invalid(d) => d,
            _ => &[],
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            EngineError::NotAProject { .. } => Some(
                "run terrace inside a project, pass -C DIR, or create one with `terrace init`"
                    .to_owned(),
            ),
            EngineError::UnknownUnit { .. } => {
                Some("`terrace graph` lists the units of an environment".to_owned())
            }
            EngineError::State(e) => e.hint(),
            _ => None,
        }
    }
}
