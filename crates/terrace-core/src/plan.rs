//! What a plan says: per unit, an [`Action`] and the object- or file-level
//! [`Change`]s behind it, and the outputs the unit will have.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What happens to a unit, or to one object of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Delete,
    /// Destroyed and created again (a change that cannot be made in place).
    Replace,
    /// Not planned yet: a dependency it needs has never been applied.
    Deferred,
    NoOp,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Replace => "replace",
            Action::Deferred => "deferred",
            Action::NoOp => "no-op",
        }
    }

    /// The one-character marker used in plan listings.
    pub fn symbol(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
            Action::Replace => '±',
            Action::Deferred => '…',
            Action::NoOp => ' ',
        }
    }

    pub fn is_change(self) -> bool {
        self != Action::NoOp
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a unit ended in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Planned (see the action).
    Planned,
    /// Applied its changes.
    Applied,
    /// Nothing to do.
    Unchanged,
    /// Removed by destroy.
    Destroyed,
    Failed,
    /// Not attempted because something it depends on failed.
    Skipped,
    /// Not started: the run was interrupted first.
    Interrupted,
}

/// One object or file that changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What changes, as people read it: `apps/v1 Deployment default/web`,
    /// or a file path.
    pub address: String,
    /// The Kubernetes object that changes (on a cluster, or in a rendered
    /// file), as a typed reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<crate::state::ObjectRef>,
    pub action: Action,
    /// A unified diff of the change, when there is one to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A driver's plan for one unit.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitPlan {
    pub action: Action,
    /// Only what changes; unchanged objects are counted in `unchanged`.
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// The outputs the unit will have after apply; `None` when they are
    /// known only after apply.
    pub outputs: Option<Map<String, Value>>,
    /// A hash of everything the unit renders.
    pub render_hash: String,
    /// Things the user should know (for example, a value known only after
    /// apply).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The driver's own data for apply.
    #[serde(skip)]
    pub payload: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for UnitPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitPlan")
            .field("action", &self.action)
            .field("changes", &self.changes)
            .field("unchanged", &self.unchanged)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl UnitPlan {
    /// The unit's action from its changes and whether it was applied before.
    pub fn action_for(applied_before: bool, changes: &[Change]) -> Action {
        if !applied_before {
            Action::Create
        } else if changes.iter().any(|c| c.action.is_change()) {
            Action::Update
        } else {
            Action::NoOp
        }
    }

    /// The driver payload as its concrete type.
    pub fn payload<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.payload.as_deref().and_then(|p| p.downcast_ref::<T>())
    }

    /// Counts of changes by action: (create, update, delete).
    pub fn counts(&self) -> (usize, usize, usize) {
        count_changes(&self.changes)
    }
}

/// A unified diff of two texts (3 lines of context), as plans show
/// changed files and values.
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(name, name)
        .to_string()
}

/// Counts changes by action: (create, update, delete); a replacement
/// counts as one delete and one create.
pub fn count_changes(changes: &[Change]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for ch in changes {
        match ch.action {
            Action::Create => c.0 += 1,
            Action::Update => c.1 += 1,
            Action::Delete => c.2 += 1,
            Action::Replace => {
                c.0 += 1;
                c.2 += 1;
            }
            Action::Deferred | Action::NoOp => {}
        }
    }
    c
}
