//! The daemon's own history: each reconcile it ran (what set it off, the
//! revision, every unit's outcome and duration, the files that touched
//! each unit) with its log, and every action taken through the API (who
//! and when).
//!
//! A run's log is kept in memory while it runs and streamed to whoever
//! follows it (`GET /api/v1/runs/{id}/log`, server-sent events); once it
//! ends, the run goes to `runs.json` and its log to `logs/<id>.log` in
//! the daemon's private work directory, so a restart keeps the history.
//! Only the last [`KEPT`] runs are kept; a log holds at most
//! [`LOG_LINES`] lines. Lines come from the engine's progress and from
//! the programs units run, which the engine has already redacted.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use terrace_engine::run::{Outcome, Progress, UnitReport};

/// How many runs (and their logs) are kept.
pub const KEPT: usize = 100;
/// How many lines one run's log keeps (the last ones go: a note says so).
pub const LOG_LINES: usize = 5000;
/// How many actions are kept.
const ACTIONS_KEPT: usize = 1000;

/// What set a run off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The poll interval passed.
    Poll,
    /// A signed webhook arrived.
    Webhook,
    /// Someone asked through the API (reconcile, resume).
    Manual,
    /// A plan waiting for approval was approved.
    Approval,
    /// The drift check found drift and healed it.
    Drift,
    /// A compose unit's backup schedule fired.
    Schedule,
}

/// What one unit did in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUnit {
    pub unit: String,
    pub layer: String,
    /// `applied`, `unchanged`, `planned`, `failed`, `skipped`, ...
    pub outcome: String,
    pub duration_ms: u64,
    /// The changed files that touched it (none: a dependency changed, or
    /// the first run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// One reconcile, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: u64,
    pub trigger: Trigger,
    /// The CLI command that made it, for runs the state recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    /// `running`, `applied`, `failed`, `unchanged`, `error`,
    /// `interrupted`.
    pub outcome: String,
    #[serde(default)]
    pub units: Vec<RunUnit>,
    /// The files that changed since the last applied revision (at most
    /// 500 named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// An action taken through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// RFC 3339, UTC.
    pub at: String,
    /// Who: the name the client gave (`X-Terrace-Actor`), else the token
    /// that allowed it.
    pub who: String,
    /// The address the request came from.
    pub from: String,
    /// `reconcile`, `approve`, `pause`, `resume`.
    pub action: String,
    /// What it was taken on: a revision, `unit/<name>`, `layer/<name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

struct Live {
    id: u64,
    lines: Vec<String>,
    dropped: usize,
}

/// Every run and action, with the running run's live log.
#[derive(Debug)]
pub struct History {
    dir: Option<PathBuf>,
    runs: Mutex<VecDeque<Run>>,
    live: Mutex<Option<Live>>,
    actions: Mutex<VecDeque<ActionRecord>>,
    /// New log lines of the running run.
    pub lines: tokio::sync::broadcast::Sender<LogEvent>,
}

/// A line of a running run's log, or its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub run: u64,
    /// The line's number in the log and its text; `None`: the run ended.
    pub line: Option<(usize, String)>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Live(run {}, {} line(s))", self.id, self.lines.len())
    }
}

impl Default for History {
    fn default() -> Self {
        History::new(None)
    }
}

/// A line as it is kept and streamed: at most 4 KiB, no control
/// characters but tabs.
fn clean(line: &str) -> String {
    let mut out: String = line
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect();
    if out.len() > 4096 {
        let mut end = 4096;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

impl History {
    /// The history kept in `dir` (`None`: in memory only); what an
    /// earlier daemon left there is read back.
    pub fn new(dir: Option<PathBuf>) -> History {
        let (runs, actions) = Self::read(dir.as_deref());
        History {
            dir,
            runs: Mutex::new(runs),
            live: Mutex::new(None),
            actions: Mutex::new(actions),
            lines: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// What `dir` holds: its runs and actions (none where a file is
    /// missing or unreadable).
    fn read(dir: Option<&Path>) -> (VecDeque<Run>, VecDeque<ActionRecord>) {
        let runs = dir
            .and_then(|d| std::fs::read(d.join("runs.json")).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let actions = dir
            .and_then(|d| std::fs::read_to_string(d.join("actions.jsonl")).ok())
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default();
        (runs, actions)
    }

    /// Reads the history from its directory again (after another replica's
    /// was brought there); a run in progress is kept.
    pub fn reload(&self) {
        let (mut runs, actions) = Self::read(self.dir.as_deref());
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = live.as_ref()
            && let Some(run) = current.iter().find(|r| r.id == l.id)
        {
            runs.retain(|r| r.id != l.id);
            runs.push_back(run.clone());
        }
        *current = runs;
        drop(current);
        drop(live);
        *self.actions.lock().unwrap_or_else(PoisonError::into_inner) = actions;
    }

    /// Starts a run of `revision`; its id.
    pub fn start(&self, trigger: Trigger, revision: Option<&str>) -> u64 {
        // Locks are taken live first, then runs, everywhere.
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let id = runs.back().map_or(1, |r| r.id + 1);
        runs.push_back(Run {
            id,
            trigger,
            command: None,
            revision: revision.map(str::to_owned),
            started_at: now(),
            finished_at: None,
            duration_ms: 0,
            outcome: "running".to_owned(),
            units: Vec::new(),
            changed: Vec::new(),
        });
        *live = Some(Live {
            id,
            lines: Vec::new(),
            dropped: 0,
        });
        id
    }

    /// Adds a line to run `id`'s log (and to its followers).
    pub fn line(&self, id: u64, line: &str) {
        let line = clean(line);
        // Sent while the log is held: followers get the lines in order,
        // and none after the run's end.
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(l) = live.as_mut().filter(|l| l.id == id) else {
            return;
        };
        if l.lines.len() >= LOG_LINES {
            l.dropped += 1;
            return;
        }
        l.lines.push(line.clone());
        let n = l.lines.len() - 1;
        let _ = self.lines.send(LogEvent {
            run: id,
            line: Some((n, line)),
        });
    }

    /// Ends run `id`: its outcome, revision, units and changed files;
    /// the run and its log are written out.
    pub fn finish(
        &self,
        id: u64,
        outcome: &str,
        revision: Option<String>,
        units: Vec<RunUnit>,
        changed: Vec<String>,
    ) {
        // The log is written out before the live one goes, so a reader
        // finds it in one place or the other.
        let mut live_slot = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(dir), Some(l)) = (&self.dir, live_slot.as_ref().filter(|l| l.id == id)) {
            let logs = dir.join("logs");
            let mut lines = l.lines.clone();
            if l.dropped > 0 {
                lines.push(format!("({} more line(s) not kept)", l.dropped));
            }
            let mut text = lines.join("\n");
            text.push('\n');
            let _ = terrace_fs::private_dir(&logs).and_then(|()| {
                terrace_fs::atomic::write(
                    &logs.join(format!("{id}.log")),
                    text.as_bytes(),
                    terrace_fs::Mode::Private,
                )
            });
        }
        live_slot.take_if(|l| l.id == id);
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = runs.iter_mut().rev().find(|r| r.id == id) {
            let finished = std::time::SystemTime::now();
            run.duration_ms = millis_since(&run.started_at, Some(finished));
            run.finished_at = Some(humantime::format_rfc3339_seconds(finished).to_string());
            run.outcome = outcome.to_owned();
            run.revision = revision;
            run.units = units;
            run.changed = changed.into_iter().take(500).collect();
        }
        let mut gone = Vec::new();
        while runs.len() > KEPT {
            if let Some(r) = runs.pop_front() {
                gone.push(r.id);
            }
        }
        if let Some(dir) = &self.dir {
            let logs = dir.join("logs");
            for old in gone {
                let _ = std::fs::remove_file(logs.join(format!("{old}.log")));
            }
            if let Ok(bytes) = serde_json::to_vec(&*runs) {
                let _ = terrace_fs::atomic::write(
                    &dir.join("runs.json"),
                    &bytes,
                    terrace_fs::Mode::Private,
                );
            }
        }
        drop(runs);
        let _ = self.lines.send(LogEvent {
            run: id,
            line: None,
        });
        drop(live_slot);
    }

    /// Every run kept, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Run `id`.
    pub fn run(&self, id: u64) -> Option<Run> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Run `id`'s log so far, and whether it is still running.
    pub fn log(&self, id: u64) -> Option<(Vec<String>, bool)> {
        if let Some(l) = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|l| l.id == id)
        {
            return Some((l.lines.clone(), true));
        }
        self.run(id)?;
        let text = self
            .dir
            .as_deref()
            .and_then(|d| std::fs::read_to_string(d.join("logs").join(format!("{id}.log"))).ok())
            .unwrap_or_default();
        Some((text.lines().map(str::to_owned).collect(), false))
    }

    /// Records an action taken through the API.
    pub fn act(&self, who: &str, from: &str, action: &str, target: &str) {
        let record = ActionRecord {
            at: now(),
            who: clean(who).chars().take(80).collect(),
            from: from.to_owned(),
            action: action.to_owned(),
            target: clean(target).chars().take(200).collect(),
        };
        let mut actions = self.actions.lock().unwrap_or_else(PoisonError::into_inner);
        actions.push_back(record);
        while actions.len() > ACTIONS_KEPT {
            actions.pop_front();
        }
        if let Some(dir) = &self.dir {
            let mut text = String::new();
            for a in actions.iter() {
                if let Ok(line) = serde_json::to_string(a) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            let _ = terrace_fs::atomic::write(
                &dir.join("actions.jsonl"),
                text.as_bytes(),
                terrace_fs::Mode::Private,
            );
        }
    }

    /// Every action kept, oldest first.
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The runs unit `name` took part in, newest first, at most `n`.
    pub fn of_unit(&self, name: &str, n: usize) -> Vec<(Run, RunUnit)> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .filter_map(|r| {
                r.units
                    .iter()
                    .find(|u| u.unit == name)
                    .map(|u| (r.clone(), u.clone()))
            })
            .take(n)
            .collect()
    }
}

/// Milliseconds from `started` (RFC 3339) to `until`; 0 when either is
/// unknown or they run backwards.
fn millis_since(started: &str, until: Option<std::time::SystemTime>) -> u64 {
    humantime::parse_rfc3339(started)
        .ok()
        .zip(until)
        .and_then(|(s, f)| f.duration_since(s).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time now, RFC 3339 in UTC.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Engine progress written to a run's log, and each unit's last report
/// (sealed by the engine: its diffs never show a secret) kept for the
/// unit's page.
#[derive(Debug)]
pub struct RunLog {
    pub shared: std::sync::Arc<crate::http::Shared>,
    pub id: u64,
}

impl Progress for RunLog {
    fn started(&self, unit: &str, verb: &str) {
        self.shared
            .history
            .line(self.id, &format!("{unit}: {verb}"));
    }

    fn finished(&self, report: &UnitReport) {
        let outcome = format!("{:?}", report.outcome).to_lowercase();
        let mut line = format!("{}: {outcome} in {} ms", report.unit, report.duration_ms);
        if !report.changes.is_empty() {
            line.push_str(&format!(" ({} change(s))", report.changes.len()));
        }
        if let Some(e) = &report.error {
            line.push_str(&format!(": {}", e.message));
        }
        if let Some(b) = &report.skipped_because {
            line.push_str(&format!(" (because {b} failed)"));
        }
        self.shared.history.line(self.id, &line);
        if report.outcome != Outcome::Skipped {
            self.shared
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(report.unit.clone(), report.clone());
        }
    }

    fn line(&self, unit: &str, line: &str) {
        self.shared
            .history
            .line(self.id, &format!("{unit} | {line}"));
    }
}

impl Run {
    /// A run the state backend recorded (`terrace apply`, `destroy`),
    /// numbered `id`; `layers` names each unit's layer.
    pub fn from_record(
        id: u64,
        r: &terrace_core::state::RunRecord,
        layers: &BTreeMap<String, String>,
    ) -> Run {
        let units: Vec<RunUnit> = r
            .units
            .iter()
            .map(|u| RunUnit {
                unit: u.unit.clone(),
                layer: layers.get(&u.unit).cloned().unwrap_or_default(),
                outcome: format!("{:?}", u.outcome).to_lowercase(),
                duration_ms: u.duration_ms,
                files: Vec::new(),
            })
            .collect();
        let failed = r
            .units
            .iter()
            .any(|u| matches!(u.outcome, Outcome::Failed | Outcome::Skipped));
        let applied = r.units.iter().any(|u| u.outcome == Outcome::Applied);
        let duration_ms =
            millis_since(&r.started_at, humantime::parse_rfc3339(&r.finished_at).ok());
        Run {
            id,
            trigger: Trigger::Manual,
            command: Some(r.command.clone()),
            revision: r.revision.clone(),
            started_at: r.started_at.clone(),
            finished_at: Some(r.finished_at.clone()),
            duration_ms,
            outcome: if r.interrupted {
                "interrupted"
            } else if failed {
                "failed"
            } else if applied {
                "applied"
            } else {
                "unchanged"
            }
            .to_owned(),
            units,
            changed: Vec::new(),
        }
    }
}

/// Where the daemon keeps its history inside its work directory.
pub fn dir(workdir: &Path) -> PathBuf {
    workdir.join("history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_and_its_log_outlive_the_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::new(Some(dir.path().to_owned()));
        let mut follow = history.lines.subscribe();
        let id = history.start(Trigger::Webhook, Some("abc"));
        history.line(id, "one\u{1b}[31m\r");
        history.line(id + 1, "another run's line is dropped");
        assert_eq!(history.log(id), Some((vec!["one[31m".to_owned()], true)));
        let unit = RunUnit {
            unit: "a".to_owned(),
            layer: "base".to_owned(),
            outcome: "applied".to_owned(),
            duration_ms: 3,
            files: vec!["a/cm.yaml".to_owned()],
        };
        history.finish(
            id,
            "applied",
            Some("abc".to_owned()),
            vec![unit.clone()],
            vec!["a/cm.yaml".to_owned()],
        );
        assert_eq!(
            follow.try_recv().expect("a line"),
            LogEvent {
                run: id,
                line: Some((0, "one[31m".to_owned()))
            }
        );
        assert_eq!(follow.try_recv().expect("the end").line, None);
        history.act("ann (write token)", "127.0.0.1", "approve", "abc");

        let again = History::new(Some(dir.path().to_owned()));
        let run = again.run(id).expect("kept");
        assert_eq!(run.outcome, "applied");
        assert_eq!(run.trigger, Trigger::Webhook);
        assert_eq!(run.units, vec![unit]);
        assert!(run.finished_at.is_some());
        assert_eq!(again.log(id), Some((vec!["one[31m".to_owned()], false)));
        assert_eq!(again.of_unit("a", 5).len(), 1);
        assert_eq!(again.actions()[0].who, "ann (write token)");
        // The next run numbers on from the last one kept.
        assert_eq!(again.start(Trigger::Poll, None), id + 1);
    }

    #[test]
    fn logs_and_history_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::new(Some(dir.path().to_owned()));
        let id = history.start(Trigger::Poll, None);
        for n in 0..LOG_LINES + 10 {
            history.line(id, &format!("line {n}"));
        }
        history.line(id, &"x".repeat(10_000));
        history.finish(id, "applied", None, Vec::new(), Vec::new());
        let (log, running) = history.log(id).expect("kept");
        assert!(!running);
        assert_eq!(log.len(), LOG_LINES + 1);
        assert_eq!(log[LOG_LINES], "(11 more line(s) not kept)");
        for _ in 0..KEPT + 5 {
            let id = history.start(Trigger::Poll, None);
            history.line(id, "x");
            history.finish(id, "unchanged", None, Vec::new(), Vec::new());
        }
        assert_eq!(history.runs().len(), KEPT);
        assert!(history.log(id).is_none(), "the oldest run is gone");
        let logs = std::fs::read_dir(dir.path().join("logs"))
            .expect("logs")
            .count();
        assert_eq!(logs, KEPT);
        assert!(clean(&"é".repeat(3000)).len() <= 4096 + '…'.len_utf8());
    }

    #[test]
    fn a_corrupt_history_file_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("runs.json"), b"{not json").expect("write");
        std::fs::write(dir.path().join("actions.jsonl"), b"garbage\n{\"at\":1}\n").expect("write");
        let history = History::new(Some(dir.path().to_owned()));
        assert!(history.runs().is_empty());
        assert!(history.actions().is_empty());
    }
}
