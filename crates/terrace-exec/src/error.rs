//! What can go wrong running an external program. Every message names the
//! program (or the whole command line, redacted) so the user knows which
//! one failed without a backtrace.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Finding, starting or running an external program failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No executable of that name on `PATH`, or no file at that path.
    #[error("{}", not_found(.name, .searched))]
    NotFound {
        /// The name or path asked for.
        name: String,
        /// Where it was looked for: the directories of `PATH`, or the path.
        searched: Vec<PathBuf>,
    },

    /// A path that exists but is not something that can be run.
    #[error(
        "`{}` is not an executable file; give the path of the program itself",
        .path.display()
    )]
    NotExecutable { path: PathBuf },

    /// The operating system refused to start it.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line, redacted.
        command: String,
        source: io::Error,
    },

    /// terrace was interrupted, so nothing new is started.
    #[error("the run was interrupted, so `{command}` was not started")]
    Interrupted { command: String },

    /// It ran longer than its timeout and was stopped.
    #[error("`{command}` did not finish within {after:?} and was stopped{}", tail(.stderr_tail))]
    TimedOut {
        command: String,
        after: Duration,
        /// The end of what it printed on stderr, redacted.
        stderr_tail: String,
    },

    /// It ended unsuccessfully ([`crate::Finished::success`]).
    #[error("`{}` {exit}{}", joined(.program, .what), failed_tail(.stderr_tail))]
    Failed {
        /// The program's name (`terraform`).
        program: String,
        /// What it was asked to do (`plan`), as given by the caller.
        what: String,
        exit: Exit,
        /// The end of what it printed on stderr, redacted.
        stderr_tail: String,
    },

    /// It printed more on stdout than terrace keeps in memory.
    #[error("`{command}` printed more than {limit} bytes on stdout; terrace stopped it")]
    OutputTooLarge { command: String, limit: usize },

    /// Reading its output or waiting for it failed.
    #[error("cannot read the output of `{command}`: {source}")]
    Io { command: String, source: io::Error },
}

fn not_found(name: &str, searched: &[PathBuf]) -> String {
    if name.contains('/') {
        return format!("`{name}` does not exist; install it or give its path");
    }
    let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
    if dirs.is_empty() {
        format!("`{name}` was not found: PATH names no directory; install it or give its path")
    } else {
        format!(
            "`{name}` was not found on PATH (looked in {}); install it or give its path",
            dirs.join(", ")
        )
    }
}

fn joined(program: &str, what: &str) -> String {
    if what.is_empty() {
        program.to_owned()
    } else {
        format!("{program} {what}")
    }
}

fn tail(stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {stderr_tail}")
    }
}

fn failed_tail(stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        " and printed nothing on stderr".to_owned()
    } else {
        format!(": {stderr_tail}")
    }
}

/// How a program that did not succeed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Neither is known (not expected on Unix).
    Unknown,
}

impl Exit {
    /// How a process with this status ended.
    pub fn of(status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        }
    }

    /// The exit code, when it exited by itself.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) | Exit::Unknown => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
            Exit::Unknown => f.write_str("ended without an exit code"),
        }
    }
}

/// The signals a program is commonly killed by, for messages (Linux numbers).
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}
