//! The builder for one run of an external program ([`Exec`]) and what it
//! leaves behind ([`Finished`]).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use terrace_core::secrets::Plaintexts;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout};

use crate::children;
use crate::error::{ExecError, Exit};
use crate::program::Program;

/// Variables every program inherits from terrace's environment when set:
/// what finding programs, files, certificates, the locale and the network
/// need, and nothing that changes what a program acts on. Programs run
/// non-interactively, so `TERM` is not among them.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Prefixes (compared ignoring ASCII case) of variables never inherited,
/// whatever [`Exec::pass_env`] and [`Exec::pass_env_prefix`] allow:
/// terrace's own settings and the keys that open its secrets files must
/// never reach a provider, a plugin or a script. Values terrace sets itself
/// with [`Exec::env`] are passed.
pub const NEVER_INHERITED: &[&str] = &["SOPS_", "TERRACE_"];

/// A single line given to [`Exec::on_line`] is cut at this many bytes; the
/// captured stdout keeps the whole line.
pub const STREAMED_LINE_MAX: usize = 64 * 1024;

/// Captured stdout beyond this is refused ([`ExecError::OutputTooLarge`]):
/// terrace would otherwise hold it all in memory.
pub const STDOUT_MAX: usize = 256 * 1024 * 1024;

/// About this many bytes of the end of stderr are kept
/// ([`Finished::stderr`], the errors' `stderr_tail`).
pub const STDERR_KEPT: usize = 64 * 1024;

/// How long a program that timed out gets to stop after its SIGINT before
/// its process group is killed: Terraform needs a few seconds to release
/// its state lock.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A line of stderr (or, for streaming, of stdout) is read up to this many
/// bytes before it is redacted and cut to [`STREAMED_LINE_MAX`]; the rest
/// of the line is dropped.
const LINE_READ_MAX: usize = 1024 * 1024;

/// What ends a line that was cut.
const CUT_MARK: &str = " …(cut)";

const READ_BUFFER: usize = 64 * 1024;

/// Which of a program's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// Receives each line a program prints, redacted, as it arrives (without
/// its line end). It is called on the task running the program, so it
/// should be quick (hand the line to a channel or a progress bar).
pub type OnLine = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// A variable name, or every name with a prefix (`TF_VAR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvPattern {
    Name(String),
    Prefix(String),
}

impl EnvPattern {
    /// `NAME`, or `PREFIX*`.
    fn parse(pattern: &str) -> EnvPattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => EnvPattern::Prefix(prefix.to_owned()),
            None => EnvPattern::Name(pattern.to_owned()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            EnvPattern::Name(n) => n == name,
            EnvPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// One run of a program, being prepared: [`Program::command`], then
/// arguments and settings, then [`Exec::run`].
///
/// `Debug` shows the names of the variables terrace sets, not their values
/// (inputs such as `TF_VAR_*` hold secrets).
#[derive(Clone)]
#[must_use = "a command does nothing until it is run"]
pub struct Exec {
    program: Program,
    args: Vec<OsString>,
    current_dir: Option<PathBuf>,
    /// Set by terrace: always passed, never denied.
    env: BTreeMap<OsString, OsString>,
    /// Inherited beyond [`INHERITED`].
    passed: Vec<EnvPattern>,
    /// Never inherited, even when allowed.
    denied: Vec<EnvPattern>,
    /// `None`: this process's environment.
    parent_env: Option<Vec<(OsString, OsString)>>,
    timeout: Option<Duration>,
    grace: Duration,
    redact: Plaintexts,
    on_line: Option<OnLine>,
    stream_stdout: bool,
    /// Written to the program's stdin, which is then closed; `None`: stdin
    /// is closed from the start.
    stdin: Option<std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>>,
}

impl Exec {
    pub(crate) fn new(program: Program) -> Exec {
        Exec {
            program,
            args: Vec::new(),
            current_dir: None,
            env: BTreeMap::new(),
            passed: Vec::new(),
            denied: Vec::new(),
            parent_env: None,
            timeout: None,
            grace: DEFAULT_GRACE,
            redact: Plaintexts::default(),
            on_line: None,
            stream_stdout: true,
            stdin: None,
        }
    }

    /// Gives the program `input` on its stdin (a pipe: secret values
    /// reach it without touching the disk), then closes it. The bytes are
    /// cleared from memory when the last copy of this command is dropped.
    pub fn stdin(mut self, input: Vec<u8>) -> Exec {
        self.stdin = Some(std::sync::Arc::new(zeroize::Zeroizing::new(input)));
        self
    }

    /// The program this runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Exec {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The directory it runs in (default: terrace's).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Exec {
        self.current_dir = Some(dir.into());
        self
    }

    /// A variable terrace sets: always passed, whatever the allow- and
    /// deny-lists say, and over an inherited one of the same name.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Exec {
        self.env
            .insert(name.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    /// Several variables terrace sets (see [`Exec::env`]).
    pub fn envs<I, K, V>(mut self, vars: I) -> Exec
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.env.extend(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Inherits one more variable from terrace's environment, when set
    /// (`KUBECONFIG`). [`NEVER_INHERITED`] still applies.
    pub fn pass_env(mut self, name: impl Into<String>) -> Exec {
        self.passed.push(EnvPattern::Name(name.into()));
        self
    }

    /// Inherits every variable whose name starts with `prefix` (`AWS_`).
    /// [`NEVER_INHERITED`] still applies.
    pub fn pass_env_prefix(mut self, prefix: impl Into<String>) -> Exec {
        self.passed.push(EnvPattern::Prefix(prefix.into()));
        self
    }

    /// Never inherits this variable, or, for a pattern ending in `*`, any
    /// variable with that prefix (`TF_VAR_*`: inputs come from terrace
    /// alone), even when an allow-list would pass it.
    pub fn deny_env(mut self, pattern: &str) -> Exec {
        self.denied.push(EnvPattern::parse(pattern));
        self
    }

    /// The environment inherited from (default: this process's). For tests
    /// of the allow-list, which must not change the real environment.
    pub fn parent_env<I, K, V>(mut self, vars: I) -> Exec
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.parent_env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Stops the program when it runs longer than this (default: never):
    /// one SIGINT to its process group, then SIGKILL after the grace period.
    pub fn timeout(mut self, timeout: Duration) -> Exec {
        self.timeout = Some(timeout);
        self
    }

    /// How long a program that timed out gets to stop after its SIGINT
    /// (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Exec {
        self.grace = grace;
        self
    }

    /// Secret values replaced by `(sensitive)` in every streamed line, in
    /// the captured stderr, in [`Finished::stdout_text`] and in messages.
    /// The captured stdout bytes stay as printed: they are data for the
    /// caller (a plan to parse), whose sinks check them.
    pub fn redact(mut self, plaintexts: Plaintexts) -> Exec {
        self.redact = plaintexts;
        self
    }

    /// Gives each line of stdout and stderr, redacted, as it arrives.
    pub fn on_line(mut self, f: impl Fn(Stream, &str) + Send + Sync + 'static) -> Exec {
        self.on_line = Some(Arc::new(f));
        self
    }

    /// Whether stdout lines go to [`Exec::on_line`] (default true). Off
    /// for programs whose stdout is one JSON document: it is only captured.
    pub fn stream_stdout(mut self, stream: bool) -> Exec {
        self.stream_stdout = stream;
        self
    }

    /// The exact environment the program gets: the variables of
    /// [`INHERITED`], [`Exec::pass_env`] and [`Exec::pass_env_prefix`] that
    /// are set in the parent environment, minus [`NEVER_INHERITED`] and
    /// [`Exec::deny_env`], then terrace's own ([`Exec::env`]) over them.
    /// Variables whose names are not UTF-8 are never inherited.
    pub fn environment(&self) -> BTreeMap<OsString, OsString> {
        let inherits = |name: &OsStr| name.to_str().is_some_and(|n| self.inherits(n));
        let mut env: BTreeMap<OsString, OsString> = match &self.parent_env {
            Some(vars) => vars
                .iter()
                .filter(|(name, _)| inherits(name.as_os_str()))
                .cloned()
                .collect(),
            None => std::env::vars_os()
                .filter(|(name, _)| inherits(name.as_os_str()))
                .collect(),
        };
        env.extend(self.env.clone());
        env
    }

    fn inherits(&self, name: &str) -> bool {
        let never = NEVER_INHERITED.iter().any(|prefix| {
            name.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        });
        let allowed = INHERITED.contains(&name) || self.passed.iter().any(|p| p.matches(name));
        !never && allowed && !self.denied.iter().any(|p| p.matches(name))
    }

    fn to_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.program.path());
        cmd.args(&self.args)
            .env_clear()
            .envs(self.environment())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a terminal's Ctrl-C reaches terrace alone,
            // which forwards it once (see `children`).
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs the program to its end: refused once terrace was interrupted;
    /// stdout and stderr read together, line by line, as they arrive; the
    /// program registered with [`children`] while it runs. An exit code
    /// other than 0 is not an error here: see [`Finished::success`].
    pub async fn run(self) -> Result<Finished, ExecError> {
        let command = self.to_string();
        if children::interrupted() {
            return Err(ExecError::Interrupted { command });
        }
        let mut child = self
            .to_command()
            .spawn()
            .map_err(|source| ExecError::Spawn {
                command: command.clone(),
                source,
            })?;
        let _registered = child.id().map(children::register);
        // Fed from its own task, so a program that writes before it has
        // read everything never blocks on a full pipe.
        let feeding = match (child.stdin.take(), &self.stdin) {
            (Some(mut pipe), Some(input)) => {
                let input = std::sync::Arc::clone(input);
                Some(tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    // A program that exits without reading all of it
                    // closes the pipe: not an error of ours.
                    let _ = pipe.write_all(&input).await;
                    let _ = pipe.shutdown().await;
                }))
            }
            _ => None,
        };
        // The child leads its own group, whose id is its pid.
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(Pid::from_raw);
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            signal_group(group, Signal::KILL);
            return Err(ExecError::Io {
                command,
                source: io::Error::other("its output pipes were not opened"),
            });
        };
        let lines = Lines {
            redact: self.redact.clone(),
            on_line: self.on_line.clone(),
        };
        let stdout_lines = (self.stream_stdout && self.on_line.is_some()).then_some(&lines);
        let mut captured = Vec::new();
        let mut tail = Tail::default();
        let ended = {
            let mut collecting = std::pin::pin!(collect_output(
                &mut child,
                stdout,
                stderr,
                &mut captured,
                &mut tail,
                &lines,
                stdout_lines,
            ));
            match self.timeout {
                None => Ended::Finished(collecting.as_mut().await),
                Some(limit) => tokio::select! {
                    result = collecting.as_mut() => Ended::Finished(result),
                    () = tokio::time::sleep(limit) => {
                        // Asked to stop as a user would: Terraform then
                        // finishes its step and releases its state lock.
                        signal_group(group, Signal::INT);
                        if tokio::time::timeout(self.grace, collecting.as_mut())
                            .await
                            .is_err()
                        {
                            signal_group(group, Signal::KILL);
                            // Only a process that left the group could
                            // still hold the pipes open: not waited for
                            // longer than this.
                            let _ = tokio::time::timeout(self.grace, collecting.as_mut()).await;
                        }
                        Ended::TimedOut(limit)
                    }
                },
            }
        };
        if let Some(feeding) = feeding {
            feeding.abort();
        }
        match ended {
            Ended::TimedOut(after) => Err(ExecError::TimedOut {
                command,
                after,
                stderr_tail: tail.text(&self.redact).trim_end().to_owned(),
            }),
            Ended::Finished(Err(failure)) => {
                // Whatever still runs would write into pipes nobody reads.
                signal_group(group, Signal::KILL);
                Err(match failure {
                    Failure::TooLarge => ExecError::OutputTooLarge {
                        command,
                        limit: STDOUT_MAX,
                    },
                    Failure::Io(source) => ExecError::Io { command, source },
                })
            }
            Ended::Finished(Ok(status)) => Ok(Finished {
                status,
                stdout: captured,
                stderr: tail.text(&self.redact),
                program: self.program.name().to_owned(),
                redact: self.redact,
            }),
        }
    }
}

/// `program arg arg`, redacted, for messages.
impl fmt::Display for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program.name())?;
        for arg in &self.args {
            let arg = self.redact.redact(&arg.to_string_lossy());
            let plain = !arg.is_empty()
                && !arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"');
            if plain {
                write!(f, " {arg}")?;
            } else {
                write!(f, " '{}'", arg.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exec")
            .field("command", &self.to_string())
            .field("path", &self.program.path())
            .field("current_dir", &self.current_dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("passed", &self.passed)
            .field("denied", &self.denied)
            .field("parent_env", &self.parent_env.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .field("grace", &self.grace)
            .field("redact", &self.redact)
            .field("on_line", &self.on_line.is_some())
            .field("stream_stdout", &self.stream_stdout)
            .field("stdin_bytes", &self.stdin.as_ref().map(|s| s.len()))
            .finish()
    }
}

/// A program that ran to its end.
pub struct Finished {
    pub status: ExitStatus,
    /// Everything it printed on stdout, as printed (not redacted: see
    /// [`Exec::redact`]).
    pub stdout: Vec<u8>,
    /// About the last [`STDERR_KEPT`] bytes of stderr, redacted.
    pub stderr: String,
    program: String,
    redact: Plaintexts,
}

impl Finished {
    /// This, when the program exited with 0; else [`ExecError::Failed`]
    /// saying what it was doing (`what`: `plan`), how it ended and the end
    /// of its stderr.
    pub fn success(self, what: &str) -> Result<Finished, ExecError> {
        if self.status.success() {
            return Ok(self);
        }
        Err(ExecError::Failed {
            program: self.program,
            what: what.to_owned(),
            exit: Exit::of(self.status),
            stderr_tail: self.stderr.trim_end().to_owned(),
        })
    }

    /// Stdout as text for people, redacted.
    pub fn stdout_text(&self) -> String {
        self.redact.redact(&String::from_utf8_lossy(&self.stdout))
    }
}

/// Stdout's bytes are left out: they may hold secrets.
impl fmt::Debug for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finished")
            .field("program", &self.program)
            .field("status", &self.status)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr", &self.stderr)
            .finish_non_exhaustive()
    }
}

/// How waiting for the program ended.
enum Ended {
    Finished(Result<ExitStatus, Failure>),
    TimedOut(Duration),
}

/// Why reading a program's output stopped early.
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    TooLarge,
}

/// Sends `signal` to the program's process group (its plugins and
/// subprocesses too).
fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(pid) = group {
        // Fails only when the whole group is gone already.
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Where streamed lines go, and what is hidden in them.
struct Lines {
    redact: Plaintexts,
    on_line: Option<OnLine>,
}

impl Lines {
    /// One line (with or without its line end) as text for people:
    /// redacted, then cut to [`STREAMED_LINE_MAX`].
    fn text(&self, line: &[u8]) -> String {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = &line[..line.len().min(LINE_READ_MAX)];
        let mut text = String::from_utf8_lossy(line).into_owned();
        self.redact.redact_in_place(&mut text);
        if text.len() > STREAMED_LINE_MAX {
            let mut end = STREAMED_LINE_MAX - CUT_MARK.len();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(CUT_MARK);
        }
        text
    }

    fn emit(&self, stream: Stream, text: &str) {
        if let Some(on_line) = &self.on_line {
            on_line(stream, text);
        }
    }
}

/// The end of stderr, in whole lines.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > STDERR_KEPT && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    /// The kept lines, redacted again as a whole: a secret spanning lines
    /// (a PEM key) is not found line by line.
    fn text(&self, redact: &Plaintexts) -> String {
        let mut text = String::with_capacity(self.bytes);
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        redact.redact_in_place(&mut text);
        text
    }
}

/// Reads both outputs and waits for the exit, all at once (a program
/// blocked writing to a full pipe would never exit).
async fn collect_output(
    child: &mut Child,
    stdout: ChildStdout,
    stderr: ChildStderr,
    captured: &mut Vec<u8>,
    tail: &mut Tail,
    lines: &Lines,
    stdout_lines: Option<&Lines>,
) -> Result<ExitStatus, Failure> {
    let ((), (), status) = tokio::try_join!(
        read_stdout(stdout, captured, stdout_lines),
        read_stderr(stderr, tail, lines),
        async move { child.wait().await.map_err(Failure::Io) },
    )?;
    Ok(status)
}

/// How much of `buf` to take next: up to and with its first line end, or
/// all of it; and whether that ends a line.
fn next_chunk(buf: &[u8]) -> (usize, bool) {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => (i + 1, true),
        None => (buf.len(), false),
    }
}

/// Captures all of stdout (up to [`STDOUT_MAX`]), streaming its lines when
/// asked.
async fn read_stdout<R: AsyncRead + Unpin>(
    pipe: R,
    captured: &mut Vec<u8>,
    lines: Option<&Lines>,
) -> Result<(), Failure> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, pipe);
    let mut line_start = captured.len();
    loop {
        let buf = reader.fill_buf().await.map_err(Failure::Io)?;
        if buf.is_empty() {
            break;
        }
        let (len, ends_line) = next_chunk(buf);
        if captured.len() + len > STDOUT_MAX {
            return Err(Failure::TooLarge);
        }
        captured.extend_from_slice(&buf[..len]);
        reader.consume(len);
        if ends_line {
            if let Some(lines) = lines {
                lines.emit(Stream::Stdout, &lines.text(&captured[line_start..]));
            }
            line_start = captured.len();
        }
    }
    if let Some(lines) = lines
        && line_start < captured.len()
    {
        lines.emit(Stream::Stdout, &lines.text(&captured[line_start..]));
    }
    Ok(())
}

/// Streams stderr's lines and keeps its tail.
async fn read_stderr<R: AsyncRead + Unpin>(
    pipe: R,
    tail: &mut Tail,
    lines: &Lines,
) -> Result<(), Failure> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, pipe);
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(Failure::Io)?;
        if buf.is_empty() {
            break;
        }
        let (len, ends_line) = next_chunk(buf);
        let room = LINE_READ_MAX.saturating_sub(line.len());
        line.extend_from_slice(&buf[..len.min(room)]);
        reader.consume(len);
        if ends_line {
            let text = lines.text(&line);
            lines.emit(Stream::Stderr, &text);
            tail.push(text);
            line.clear();
        }
    }
    if !line.is_empty() {
        let text = lines.text(&line);
        lines.emit(Stream::Stderr, &text);
        tail.push(text);
    }
    Ok(())
}
