//! Progress while units run: a bar on a terminal, plain lines on stderr
//! otherwise (for apply and destroy; plan stays quiet off a terminal).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use terrace_engine::run::{Outcome, Progress, UnitReport};

use crate::output::errln;

/// Shows progress of `total` units.
pub struct Reporter {
    bar: Option<ProgressBar>,
    plain: bool,
}

impl Reporter {
    pub fn new(total: usize, verb: &str, plain_lines: bool) -> Self {
        if std::io::stderr().is_terminal() && total > 0 {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(verb.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            Reporter {
                bar: Some(bar),
                plain: false,
            }
        } else {
            Reporter {
                bar: None,
                plain: plain_lines,
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn started(&self, unit: &str, verb: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{verb} {unit}"));
        } else if self.plain {
            errln!("{verb} {unit} ...");
        }
    }

    fn finished(&self, r: &UnitReport) {
        let word = match r.outcome {
            Outcome::Planned => "planned",
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Destroyed => "destroyed",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
            Outcome::Interrupted => "not started (interrupted)",
        };
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if matches!(r.outcome, Outcome::Failed | Outcome::Skipped) {
                bar.println(format!("{} {word}", r.unit));
            }
        } else if self.plain {
            errln!("{} {word} ({} ms)", r.unit, r.duration_ms);
        }
    }

    /// What a unit's program prints while it runs (a long Terraform
    /// apply), prefixed with the unit, above the bar.
    fn line(&self, unit: &str, line: &str) {
        if let Some(bar) = &self.bar {
            bar.println(format!("{unit} │ {line}"));
        } else if self.plain {
            errln!("{unit} │ {line}");
        }
    }
}
