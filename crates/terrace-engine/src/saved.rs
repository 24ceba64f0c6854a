//! Saved plans: `terrace plan --out FILE` writes what each unit will do
//! and a fingerprint of everything the plan was made from; `terrace apply
//! FILE` carries out that plan and nothing else, refusing it, unit by unit
//! and naming what moved, when the sources, inputs, dependency outputs or
//! state changed since. This is how CI plans on a pull request and applies
//! the reviewed plan on merge.
//!
//! The file holds no secret: changes and notes are sealed as every report
//! is, and a fingerprint holds digests only, with secret inputs stood for
//! by the digest of the encrypted files they came from (see
//! [`UnitFingerprint`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use terrace_core::config::UnitKind;
use terrace_core::diag::Diagnostic;
use terrace_core::plan::{Action, Change};
use terrace_core::state::UnitStatus;

use crate::run::{Outcome, Report, UnitReport};

/// The version of the saved-plan format this build writes and reads.
pub const SAVED_PLAN_FORMAT: u32 = 1;

/// A saved plan file is read whole; beyond this it is refused.
pub const MAX_SAVED_PLAN_BYTES: u64 = 64 * 1024 * 1024;

/// What a unit's plan was made from, as digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitFingerprint {
    /// The unit's evaluated inputs (with the dependency outputs they use),
    /// settings and target binding. A secret input counts as the digest of
    /// the encrypted files it came from, so the digest changes when the
    /// secret does and reveals nothing of it.
    pub inputs: String,
    /// Everything the unit renders, as its driver hashes it.
    pub render: String,
    /// The state record the plan was made against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateMark>,
}

/// Which state record a plan was made against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateMark {
    pub serial: u64,
    pub status: UnitStatus,
}

/// `terrace plan --out FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedPlan {
    pub format: u32,
    /// The project's name, so a plan is not applied to another project.
    pub project: String,
    pub environment: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The Git commit the project was at (`+dirty` for uncommitted
    /// changes), for people; what is checked is the fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Whether the plan read real infrastructure (`plan --refresh`).
    pub refresh: bool,
    pub units: Vec<SavedUnit>,
}

/// One unit of a saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedUnit {
    pub unit: String,
    pub kind: UnitKind,
    pub action: Action,
    /// What changes (sealed: no secret value in a diff).
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// Some input was known only after a dependency is applied: the plan
    /// of this unit is a preview, not something to carry out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown_inputs: bool,
    pub fingerprint: UnitFingerprint,
}

impl SavedUnit {
    /// Whether this unit's plan can be carried out as saved: deferred units
    /// and units planned with inputs known only after apply wait for a
    /// plan made after their dependencies are applied.
    pub fn is_applied(&self) -> bool {
        self.action != Action::Deferred && !self.unknown_inputs
    }
}

/// Why a plan cannot be saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaveError {
    #[error("the plan failed for {}: a plan with errors cannot be saved", .0.join(", "))]
    Failed(Vec<String>),
    #[error("the plan of `{0}` has no fingerprint")]
    NoFingerprint(String),
}

/// One unit whose saved plan no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub unit: String,
    /// What changed, in words: "its inputs", "its state (serial 3, now 4)".
    pub what: Vec<String>,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.unit, self.what.join("; "))
    }
}

impl SavedPlan {
    /// The plan `report` made, for saving. Skipped units (after a failure)
    /// and failed ones make it unsaveable.
    pub fn from_report(
        project: &str,
        refresh: bool,
        revision: Option<String>,
        report: &Report,
    ) -> Result<SavedPlan, SaveError> {
        let failed: Vec<String> = report
            .units
            .iter()
            .filter(|u| matches!(u.outcome, Outcome::Failed | Outcome::Skipped))
            .map(|u| u.unit.clone())
            .collect();
        if !failed.is_empty() {
            return Err(SaveError::Failed(failed));
        }
        let units = report
            .units
            .iter()
            .map(|u| {
                Ok(SavedUnit {
                    unit: u.unit.clone(),
                    kind: u.kind.clone(),
                    action: u.action.unwrap_or(Action::NoOp),
                    changes: u.changes.clone(),
                    unchanged: u.unchanged,
                    unknown_inputs: u.unknown_inputs,
                    fingerprint: u
                        .fingerprint
                        .clone()
                        .ok_or_else(|| SaveError::NoFingerprint(u.unit.clone()))?,
                })
            })
            .collect::<Result<Vec<_>, SaveError>>()?;
        Ok(SavedPlan {
            format: SAVED_PLAN_FORMAT,
            project: project.to_owned(),
            environment: report.environment.clone(),
            created_at: terrace_fs::time::now_rfc3339(),
            revision,
            refresh,
            units,
        })
    }

    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("plans serialize");
        text.push('\n');
        text
    }

    /// Reads a saved plan; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<SavedPlan, Diagnostic> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Diagnostic::new(format!("not a saved plan (invalid JSON: {e})"))
                .in_file(file)
                .with_hint("give the file `terrace plan --out FILE` wrote")
        })?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == u64::from(SAVED_PLAN_FORMAT) => {}
            Some(f) => {
                return Err(Diagnostic::new(format!(
                    "saved plan format {f}; this terrace reads format {SAVED_PLAN_FORMAT}"
                ))
                .in_file(file)
                .with_hint("plan again with this version of terrace"));
            }
            None => {
                return Err(Diagnostic::new("not a saved plan (no `format`)")
                    .in_file(file)
                    .with_hint("give the file `terrace plan --out FILE` wrote"));
            }
        }
        serde_json::from_value(value).map_err(|e| {
            Diagnostic::new(format!("not a saved plan: {e}"))
                .in_file(file)
                .with_hint("give the file `terrace plan --out FILE` wrote, unedited")
        })
    }

    /// The units whose plan can be carried out on their own (see
    /// [`SavedUnit::is_applied`]; the engine also holds back what depends
    /// on a unit that is not).
    pub fn applied_units(&self) -> impl Iterator<Item = &SavedUnit> {
        self.units.iter().filter(|u| u.is_applied())
    }

    pub fn unit(&self, name: &str) -> Option<&SavedUnit> {
        self.units.iter().find(|u| u.unit == name)
    }

    /// What moved between this plan and a fresh one of the units in
    /// `fresh` (those apply carries out).
    pub fn compare(&self, fresh: &Report) -> Vec<Moved> {
        let now: BTreeMap<&str, &UnitReport> =
            fresh.units.iter().map(|u| (u.unit.as_str(), u)).collect();
        let mut moved = Vec::new();
        for saved in self
            .units
            .iter()
            .filter(|u| now.contains_key(u.unit.as_str()))
        {
            let what = match now.get(saved.unit.as_str()) {
                None => vec!["it is no longer in the project or this environment".to_owned()],
                Some(u) => saved.differences(
                    u.action,
                    &u.changes,
                    u.fingerprint.as_ref(),
                    u.error.as_ref().map(|e| e.message.as_str()),
                ),
            };
            if !what.is_empty() {
                moved.push(Moved {
                    unit: saved.unit.clone(),
                    what,
                });
            }
        }
        moved
    }
}

impl SavedUnit {
    /// How a fresh plan of this unit (its action, changes, fingerprint,
    /// or the error it failed with) differs from the saved one.
    pub fn differences(
        &self,
        action: Option<Action>,
        changes: &[Change],
        fingerprint: Option<&UnitFingerprint>,
        error: Option<&str>,
    ) -> Vec<String> {
        let mut what = Vec::new();
        if let Some(e) = error {
            what.push(format!("it fails to plan now: {e}"));
            return what;
        }
        let Some(fp) = fingerprint else {
            what.push("it was not planned now".to_owned());
            return what;
        };
        let was = &self.fingerprint;
        if was.state != fp.state {
            let show = |s: &Option<StateMark>| match s {
                None => "none".to_owned(),
                Some(m) => format!("serial {} ({:?})", m.serial, m.status).to_lowercase(),
            };
            what.push(format!(
                "its state changed ({} when planned, {} now): it was applied or destroyed since",
                show(&was.state),
                show(&fp.state)
            ));
        }
        if was.inputs != fp.inputs {
            what.push(
                "its inputs (or the dependency outputs they use), settings or target changed"
                    .to_owned(),
            );
        }
        if was.render != fp.render {
            what.push("what it renders changed (its sources)".to_owned());
        }
        let key = |c: &Change| (c.address.clone(), c.action);
        let saved: Vec<_> = self.changes.iter().map(key).collect();
        let fresh: Vec<_> = changes.iter().map(key).collect();
        if action != Some(self.action) || saved != fresh {
            what.push(format!(
                "its changes differ ({} planned as {} change(s), now {} as {})",
                self.action,
                saved.len(),
                action.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                fresh.len()
            ));
        }
        what
    }
}

/// Which units of a saved plan `apply FILE` carries out in this project.
#[derive(Debug, Clone, Default)]
pub struct SavedSelection {
    /// Graph indexes of the units applied.
    pub applied: std::collections::BTreeSet<usize>,
    /// Units held back: deferred, planned with inputs known only after
    /// apply, or depending on such a unit. They need a new plan.
    pub waiting: Vec<String>,
    /// Units of the plan that are no longer in the project.
    pub moved: Vec<Moved>,
}
