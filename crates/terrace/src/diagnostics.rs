//! Showing errors: diagnostics with a file render with a caret under the
//! place (miette), everything else as `error: ...` with a hint, on stderr.
//! With `--output json` every error is also one `{"error": {"message",
//! "hint", "diagnostics"}}` document on stdout, whether the command line,
//! the repository or a unit is at fault. Also sets up logging to stderr.

use std::io::IsTerminal;
use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use terrace_core::Diagnostic;
use terrace_engine::EngineError;
use terrace_engine::run::ReportError;

use crate::cli::OutputFormat;
use crate::output::{errln, outln};

/// Errors of the CLI.
#[derive(Debug)]
pub enum CliError {
    Engine(EngineError),
    Secrets(terrace_secrets::SecretsError),
    Message {
        message: String,
        hint: Option<String>,
    },
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        CliError::Engine(e)
    }
}

impl From<terrace_secrets::SecretsError> for CliError {
    fn from(e: terrace_secrets::SecretsError) -> Self {
        CliError::Secrets(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Engine(EngineError::Io(e))
    }
}

impl From<terrace_state::StateError> for CliError {
    fn from(e: terrace_state::StateError) -> Self {
        CliError::Engine(EngineError::State(e))
    }
}

impl CliError {
    pub fn message(message: impl Into<String>, hint: Option<String>) -> Self {
        CliError::Message {
            message: message.into(),
            hint,
        }
    }
}

/// Logging to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_enabled())
        .without_time()
        .try_init();
}

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset.
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Prints an error to stderr (and as JSON on stdout with `--output json`).
pub fn report_error(e: &CliError, format: OutputFormat) {
    let (message, hint, diags): (String, Option<String>, &[Diagnostic]) = match e {
        CliError::Engine(EngineError::Invalid(d)) => (
            format!(
                "{} problem{} found",
                d.len(),
                if d.len() == 1 { "" } else { "s" }
            ),
            None,
            d,
        ),
        CliError::Engine(e) => (e.to_string(), e.hint(), &[]),
        CliError::Secrets(terrace_secrets::SecretsError::Parse(d)) => {
            (d.message.clone(), None, std::slice::from_ref(d.as_ref()))
        }
        CliError::Secrets(e) => (e.to_string(), e.hint(), &[]),
        CliError::Message { message, hint } => (message.clone(), hint.clone(), &[]),
    };
    if format == OutputFormat::Json {
        print_json_error(&message, hint.as_deref(), diags);
    }
    for d in diags {
        errln!("{}", render_diagnostic(d, None));
    }
    errln!("error: {message}");
    if let Some(h) = hint {
        errln!("  hint: {h}");
    }
}

/// Reports the error of one unit for a command that stops on it (`render`):
/// the diagnostic with its source line (file names relative to `root`), or
/// else the message, then the hint; with `--output json` also the error
/// object of [`report_error`] on stdout.
pub fn report_unit_error(e: &ReportError, root: &Path, format: OutputFormat) {
    if format == OutputFormat::Json {
        print_json_error(&e.message, e.hint.as_deref(), e.diagnostic.as_slice());
    }
    match &e.diagnostic {
        Some(d) => errln!("{}", render_diagnostic(d, Some(root))),
        None => errln!("error: {}", e.message),
    }
    if let Some(h) = &e.hint {
        errln!("  hint: {h}");
    }
}

/// Reports a command line clap refused: clap's own message on stderr
/// and, with `--output json`, the same error object as [`report_error`]
/// on stdout.
pub fn report_usage_error(e: &clap::Error, format: OutputFormat) {
    if format == OutputFormat::Json {
        let (message, hint) = usage_error_parts(&e.to_string());
        let message = if message.is_empty() {
            e.kind()
                .as_str()
                .unwrap_or("invalid command line")
                .to_owned()
        } else {
            message
        };
        print_json_error(&message, hint.as_deref(), &[]);
    }
    // clap writes usage errors to stderr; there is nowhere to report a
    // failure to.
    let _ = e.print();
}

/// The error object of `--output json`: `{"error": {"message", "hint",
/// "diagnostics"}}`, one document on stdout.
fn print_json_error(message: &str, hint: Option<&str>, diags: &[Diagnostic]) {
    let doc = serde_json::json!({
        "error": { "message": message, "hint": hint, "diagnostics": diags }
    });
    match serde_json::to_string_pretty(&doc) {
        Ok(text) => outln!("{text}"),
        Err(e) => errln!("error: cannot write the error as JSON: {e}"),
    }
}

/// The message (the `error:` paragraph, on one line) and a hint (clap's
/// `tip:` lines, else its usage line) of clap's plain-text error.
fn usage_error_parts(text: &str) -> (String, Option<String>) {
    let first = text.split("\n\n").next().unwrap_or_default();
    let message = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned();
    let rest = text.get(first.len()..).unwrap_or_default();
    let tips: Vec<&str> = rest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .collect();
    let hint = if tips.is_empty() {
        rest.lines()
            .map(str::trim)
            .find(|l| l.starts_with("Usage: "))
            .map(str::to_owned)
    } else {
        Some(tips.join("; "))
    };
    (message, hint)
}

/// A diagnostic as text, with the source line and a caret when the file
/// and place are known. `root` resolves relative file names.
pub fn render_diagnostic(d: &Diagnostic, root: Option<&Path>) -> String {
    let (Some(file), Some(loc)) = (&d.file, &d.location) else {
        return format!("error: {d}");
    };
    let path = match root {
        Some(r) if file.is_relative() => r.join(file),
        _ => file.clone(),
    };
    // The snippet is read the way the file was: never through a symlink
    // out of the project.
    let read = match root {
        Some(r) => terrace_fs::read_to_string(r, &path),
        None => std::fs::read_to_string(&path),
    };
    let Ok(source) = read else {
        return format!("error: {d}");
    };
    // A snippet of a huge line would print it whole: name the place only.
    let long_line = source
        .lines()
        .skip((loc.line as usize).saturating_sub(3))
        .take(5)
        .any(|l| l.len() > 400);
    if long_line || source.len() > 16 * 1024 * 1024 {
        let mut text = format!(
            "error: {}:{}:{}: {}",
            file.display(),
            loc.line,
            loc.column,
            d.message
        );
        if let Some(h) = &d.hint {
            text.push_str(&format!("\n  help: {h}"));
        }
        return text;
    }
    // Line and column are authoritative; derive the byte offset from them.
    let offset = if (loc.line as usize) <= source.split_inclusive('\n').count() {
        terrace_core::diag::offset_of(&source, loc.line, loc.column)
    } else {
        loc.offset
    };
    let report = Located {
        message: format!(
            "{}:{}:{}: {}",
            file.display(),
            loc.line,
            loc.column,
            d.message
        ),
        source: NamedSource::new(file.display().to_string(), source.clone()),
        span: SourceSpan::new(
            offset.min(source.len()).into(),
            loc.len
                .max(1)
                .min(source.len().saturating_sub(offset).max(1)),
        ),
        help: d.hint.clone(),
    };
    let theme = if color_enabled() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    if handler.render_report(&mut out, &report).is_err() {
        return format!("error: {d}");
    }
    out.trim_end().to_owned()
}

#[derive(Debug)]
struct Located {
    message: String,
    source: NamedSource<String>,
    span: SourceSpan,
    help: Option<String>,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Located {}

impl miette::Diagnostic for Located {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_owned()),
            self.span,
        ))))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h.clone()) as Box<dyn std::fmt::Display>)
    }
}

#[cfg(test)]
mod tests {
    use super::usage_error_parts;

    #[test]
    fn usage_error_with_a_tip() {
        let text = "error: unexpected argument '--jbos' found\n\n  tip: a similar argument exists: '--jobs'\n\nUsage: terrace plan --jobs <JOBS>\n\nFor more information, try '--help'.\n";
        let (message, hint) = usage_error_parts(text);
        assert_eq!(message, "unexpected argument '--jbos' found");
        assert_eq!(hint.as_deref(), Some("a similar argument exists: '--jobs'"));
    }

    #[test]
    fn usage_error_over_several_lines() {
        let text = "error: the following required arguments were not provided:\n  <UNIT>\n\nUsage: terrace render <UNIT>\n\nFor more information, try '--help'.\n";
        let (message, hint) = usage_error_parts(text);
        assert_eq!(
            message,
            "the following required arguments were not provided: <UNIT>"
        );
        assert_eq!(hint.as_deref(), Some("Usage: terrace render <UNIT>"));
    }
}
