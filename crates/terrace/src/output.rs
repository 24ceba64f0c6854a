//! Reports as text, markdown or JSON, and the one way this crate writes
//! to stdout and stderr: the `out!`/`outln!` and `err!`/`errln!` macros
//! (instead of `print!`/`println!` and `eprint!`/`eprintln!`), which never
//! panic. A reader that goes away (`terrace state list | head -1`) ends
//! the output quietly; any other failure to write stdout is kept for
//! `crate::run` to turn into exit code 1.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use terrace_core::plan::Action;
use terrace_engine::run::{Outcome, Report, UnitReport};

use crate::diagnostics::render_diagnostic;

/// The first error writing stdout; once set, stdout is left alone.
static STDOUT_FAILED: OnceLock<std::io::Error> = OnceLock::new();

/// Writes to stdout, as `print!` does, without panicking: after the first
/// failed write (a closed pipe above all) nothing more is written.
#[allow(unused_macros)]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(::std::format_args!($($arg)*), false)
    };
}

/// Writes a line to stdout, as `println!` does, without panicking.
#[allow(unused_macros)]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(::std::format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(::std::format_args!($($arg)*), true)
    };
}

/// Writes to stderr, as `eprint!` does; a failure is ignored.
#[allow(unused_macros)]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(::std::format_args!($($arg)*), false)
    };
}

/// Writes a line to stderr, as `eprintln!` does; a failure is ignored.
#[allow(unused_macros)]
macro_rules! errln {
    () => {
        $crate::output::write_stderr(::std::format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stderr(::std::format_args!($($arg)*), true)
    };
}

// Path-based exports, so other modules `use crate::output::{out, outln}`.
#[allow(unused_imports)]
pub(crate) use err;
#[allow(unused_imports)]
pub(crate) use errln;
#[allow(unused_imports)]
pub(crate) use out;
#[allow(unused_imports)]
pub(crate) use outln;

/// What `out!` and `outln!` call.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    if STDOUT_FAILED.get().is_some() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let mut written = stdout.write_fmt(args);
    if newline {
        written = written.and_then(|()| stdout.write_all(b"\n"));
    }
    if let Err(e) = written {
        let _ = STDOUT_FAILED.set(e);
    }
}

/// What `err!` and `errln!` call: stderr is where errors go, so a
/// failure to write it has nowhere to be reported and is ignored.
pub fn write_stderr(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stderr = std::io::stderr().lock();
    let written = stderr.write_fmt(args);
    if newline && written.is_ok() {
        let _ = stderr.write_all(b"\n");
    }
}

/// Flushes stdout and returns the error that stopped writing it, unless
/// that was the reader going away (`EPIPE`), which is no error of ours.
pub fn stdout_failure() -> Option<&'static std::io::Error> {
    if STDOUT_FAILED.get().is_none()
        && let Err(e) = std::io::stdout().lock().flush()
    {
        let _ = STDOUT_FAILED.set(e);
    }
    STDOUT_FAILED
        .get()
        .filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe)
}

/// Counts for the summary line.
#[derive(Debug, Default)]
struct Totals {
    create: usize,
    update: usize,
    delete: usize,
    unchanged_units: usize,
    failed: usize,
    skipped: usize,
}

fn totals(report: &Report) -> Totals {
    let mut t = Totals::default();
    for u in &report.units {
        match u.outcome {
            Outcome::Failed => t.failed += 1,
            Outcome::Skipped => t.skipped += 1,
            _ => {}
        }
        let (c, up, d) = counts(u);
        t.create += c;
        t.update += up;
        t.delete += d;
        if u.action == Some(Action::NoOp) || u.outcome == Outcome::Unchanged {
            t.unchanged_units += 1;
        }
    }
    t
}

fn counts(u: &UnitReport) -> (usize, usize, usize) {
    terrace_core::plan::count_changes(&u.changes)
}

pub(crate) fn status_word(u: &UnitReport) -> String {
    match u.outcome {
        Outcome::Failed => "FAILED".to_owned(),
        Outcome::Skipped => "skipped".to_owned(),
        Outcome::Interrupted => "not started (interrupted)".to_owned(),
        Outcome::Applied => "applied".to_owned(),
        Outcome::Unchanged => "no changes".to_owned(),
        Outcome::Destroyed => "destroyed".to_owned(),
        Outcome::Planned => match u.action {
            Some(Action::NoOp) | None => "no changes".to_owned(),
            Some(a) => a.to_string(),
        },
    }
}

pub(crate) fn change_cell(u: &UnitReport) -> String {
    let (c, up, d) = counts(u);
    let mut parts = Vec::new();
    if c > 0 {
        parts.push(format!("+{c}"));
    }
    if up > 0 {
        parts.push(format!("~{up}"));
    }
    if d > 0 {
        parts.push(format!("-{d}"));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The report for people.
pub fn text(report: &Report, root: &Path, full_diff: bool) -> String {
    let mut out = String::new();
    for u in &report.units {
        let interesting = !u.changes.is_empty()
            || matches!(u.outcome, Outcome::Failed)
            || !u.notes.is_empty() && u.action.is_some_and(Action::is_change);
        if !interesting {
            continue;
        }
        let _ = writeln!(
            out,
            "{} ({}, layer {}): {}",
            u.unit,
            u.kind,
            u.layer,
            status_word(u)
        );
        for ch in &u.changes {
            let _ = writeln!(out, "  {} {}", ch.action.symbol(), ch.address);
            let show = matches!(ch.action, Action::Update | Action::Replace) || full_diff;
            if let (true, Some(diff)) = (show, &ch.diff) {
                // Unified diffs start with their `---`/`+++` header;
                // field-level diffs (live clusters) have none.
                let body = diff
                    .lines()
                    .skip_while(|l| l.starts_with("--- ") || l.starts_with("+++ "));
                for line in body {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
        for n in &u.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        if let Some(e) = &u.error {
            let text = match &e.diagnostic {
                Some(d) => render_diagnostic(d, Some(root)),
                None => format!("error: {}", e.message),
            };
            for line in text.lines() {
                let _ = writeln!(out, "  {line}");
            }
            if let Some(h) = &e.hint {
                let _ = writeln!(out, "  hint: {h}");
            }
        }
        out.push('\n');
    }
    out.push_str(&table(report));
    for o in &report.orphans {
        let _ = writeln!(
            out,
            "orphan: `{o}` has state in environment `{}` but is no unit of it; remove it with `terrace destroy --unit {o} --yes`",
            report.environment
        );
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    out
}

fn table(report: &Report) -> String {
    if report.units.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 5]> = report
        .units
        .iter()
        .map(|u| {
            let mut status = status_word(u);
            if let Some(c) = &u.skipped_because {
                status = format!("skipped: {c} failed");
            }
            [
                u.unit.clone(),
                u.layer.clone(),
                u.kind.to_string(),
                status,
                change_cell(u),
            ]
        })
        .collect();
    let header = ["UNIT", "LAYER", "KIND", "STATUS", "CHANGES"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        s.push('\n');
        s
    };
    out.push_str(&line(&header));
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out.push('\n');
    out
}

pub(crate) fn summary_line(report: &Report) -> String {
    let t = totals(report);
    let verb = match report.command.as_str() {
        "plan" => "Plan",
        "apply" => "Apply",
        "destroy" => "Destroy",
        other => other,
    };
    let mut s = format!(
        "{verb} ({}): {} to create, {} to update, {} to delete; {} of {} units unchanged",
        report.environment,
        t.create,
        t.update,
        t.delete,
        t.unchanged_units,
        report.units.len()
    );
    if report.command != "plan" {
        s = s.replace(" to ", " ");
        s = s
            .replacen("create", "created", 1)
            .replacen("update", "updated", 1)
            .replacen("delete", "deleted", 1);
    }
    if t.failed > 0 || t.skipped > 0 {
        let _ = write!(s, "; {} failed, {} skipped", t.failed, t.skipped);
    }
    s.push('.');
    s
}

/// The report as a markdown comment.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "### terrace {} — `{}`\n\n",
        report.command, report.environment
    );
    out.push_str("| Unit | Layer | Kind | Status | Changes |\n|---|---|---|---|---|\n");
    for u in &report.units {
        let mut status = status_word(u);
        if let Some(c) = &u.skipped_because {
            status = format!("skipped: `{c}` failed");
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            u.unit,
            u.layer,
            u.kind,
            status,
            change_cell(u)
        );
    }
    out.push('\n');
    for u in &report.units {
        if u.changes.is_empty() && u.error.is_none() {
            continue;
        }
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code>: {}</summary>\n",
            u.unit,
            status_word(u)
        );
        if let Some(e) = &u.error {
            let _ = writeln!(out, "```\n{}\n```\n", e.message);
        }
        for ch in &u.changes {
            let _ = writeln!(out, "- `{}` {}", ch.action.symbol(), ch.address);
        }
        let diffs: Vec<&str> = u.changes.iter().filter_map(|c| c.diff.as_deref()).collect();
        if !diffs.is_empty() {
            let _ = writeln!(out, "\n```diff\n{}```", diffs.concat());
        }
        out.push_str("\n</details>\n\n");
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    out
}
