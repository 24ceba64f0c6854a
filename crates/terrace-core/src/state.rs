//! The records terrace keeps: what was applied per environment and unit
//! ([`UnitState`]), the history of runs ([`RunRecord`]) and who holds a
//! unit's lock ([`LockInfo`]). Backends store them; this module only says
//! what they are.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::UnitKind;

/// The version of the state format this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// What was applied for one unit in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitState {
    pub format: u32,
    pub unit: String,
    pub kind: UnitKind,
    pub layer: String,
    pub environment: String,
    /// Incremented on every write.
    pub serial: u64,
    /// The Git commit the project was at, with `+dirty` for uncommitted
    /// changes; absent outside Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A hash of the unit's evaluated inputs and settings.
    pub input_hash: String,
    /// A hash of everything the unit rendered.
    pub render_hash: String,
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// What the unit manages, for prune and destroy.
    #[serde(default)]
    pub inventory: Vec<InventoryItem>,
    pub status: UnitStatus,
    /// RFC 3339, UTC.
    pub updated_at: String,
    pub run_id: String,
}

/// One thing a unit manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryItem {
    /// The object or file, as plans name it.
    pub address: String,
    /// The file holding it, relative to the project root, if it is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `sha256:` of its content as applied.
    pub digest: String,
}

/// How a unit's last apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnitStatus {
    Applied,
    Failed,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub command: String,
    /// RFC 3339, UTC.
    pub acquired_at: String,
    pub run_id: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} ({}, run {})",
            self.pid, self.host, self.acquired_at, self.command, self.run_id
        )
    }
}

/// One `apply` or `destroy` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: String,
    pub command: String,
    pub environment: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A signal stopped the run before every unit was done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub units: Vec<RunUnit>,
}

/// What a run did to one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUnit {
    pub unit: String,
    pub action: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}
