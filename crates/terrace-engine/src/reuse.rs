//! No-op plans reused while nothing they depend on changed.
//!
//! A plan that found nothing to do is remembered per unit, with a key
//! (digest of the project file, the environment, the unit as resolved
//! (inputs, settings, target) and its prior state record) and the
//! metadata of every path the driver looked at (`terrace_fs::watch`).
//! The next plan of the unit reuses it when the key is the same and every
//! path still has the same metadata; otherwise the driver plans as usual.
//!
//! Only kinds that say so ([`Driver::plan_is_reusable`]) take part, only
//! for units with no secret input and an applied prior state, and only
//! records whose files had settled ([`terrace_fs::watch::SETTLE`]).
//! The file is disposable: `.terrace/cache/<env>/plans.json`, private; a
//! file that cannot be read or parsed is ignored and written anew.
//!
//! [`Driver::plan_is_reusable`]: terrace_core::driver::Driver::plan_is_reusable

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use terrace_core::plan::{Action, UnitPlan};
use terrace_fs::watch::Looked;
use tracing::debug;

/// Bumped whenever what a record means changes.
const FORMAT: u32 = 1;
/// A larger file is not read (it is rewritten by the next plan).
const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// One unit's remembered no-op plan.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Entry {
    pub key: String,
    pub looked: Vec<Looked>,
    pub unchanged: usize,
    pub outputs: Map<String, Value>,
    pub render_hash: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileIn {
    format: u32,
    version: String,
    units: BTreeMap<String, Entry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileOut<'a> {
    format: u32,
    version: &'a str,
    units: BTreeMap<&'a str, &'a Entry>,
}

/// The records of one environment, read on first use.
#[derive(Debug)]
pub(crate) struct Reuse {
    /// Project-relative path of the file.
    rel: String,
    entries: Mutex<Option<BTreeMap<String, Arc<Entry>>>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Reuse {
    pub(crate) fn new(environment: &str) -> Reuse {
        Reuse {
            rel: format!(
                "{}/cache/{environment}/plans.json",
                terrace_core::config::WORK_DIR
            ),
            entries: Mutex::new(None),
            dirty: false.into(),
        }
    }

    fn entry(&self, root: &Path, unit: &str) -> Option<Arc<Entry>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get_or_insert_with(|| self.load(root))
            .get(unit)
            .cloned()
    }

    fn load(&self, root: &Path) -> BTreeMap<String, Arc<Entry>> {
        let parsed = read_cache(root, &self.rel)
            .and_then(|bytes| serde_json::from_slice::<FileIn>(&bytes).ok())
            .filter(|f| f.format == FORMAT && f.version == env!("CARGO_PKG_VERSION"));
        match parsed {
            Some(f) => f.units.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            None => {
                debug!(file = %self.rel, "plan records unreadable or of another version; starting afresh");
                BTreeMap::new()
            }
        }
    }

    /// The remembered plan of `unit` when its key is `key` and nothing it
    /// looked at changed.
    pub(crate) fn lookup(&self, root: &Path, unit: &str, key: &str) -> Option<UnitPlan> {
        // A record that looked at nothing vouches for nothing.
        let Some(entry) = self
            .entry(root, unit)
            .filter(|e| e.key == key && !e.looked.is_empty())
        else {
            debug!(unit, "no plan record for this key");
            return None;
        };
        if !terrace_fs::watch::unchanged(root, &entry.looked) {
            debug!(unit, "a file the plan read changed");
            return None;
        }
        debug!(unit, "plan reused: nothing it read changed");
        Some(UnitPlan {
            action: Action::NoOp,
            changes: Vec::new(),
            unchanged: entry.unchanged,
            outputs: Some(entry.outputs.clone()),
            render_hash: entry.render_hash.clone(),
            notes: Vec::new(),
            payload: None,
        })
    }

    /// Remembers `plan` of `unit` (a no-op with known outputs; anything
    /// else is not kept, and forgets what was).
    pub(crate) fn remember(
        &self,
        root: &Path,
        unit: &str,
        key: String,
        plan: &UnitPlan,
        looked: Option<Vec<Looked>>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = entries.get_or_insert_with(|| self.load(root));
        let keep = match (plan.action, &plan.outputs, looked) {
            (Action::NoOp, Some(outputs), Some(looked)) => Some(Entry {
                key,
                looked,
                unchanged: plan.unchanged,
                outputs: outputs.clone(),
                render_hash: plan.render_hash.clone(),
            }),
            _ => None,
        };
        let changed = match keep {
            Some(e) => {
                entries.insert(unit.to_owned(), Arc::new(e));
                true
            }
            None => entries.remove(unit).is_some(),
        };
        if changed {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes the records when they changed. A failure only costs speed.
    pub(crate) fn save(&self, root: &Path) {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(units) = entries.as_ref() else {
            return;
        };
        let body = FileOut {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION"),
            units: units
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_ref()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&body).expect("records serialize");
        if let Err(e) = write_cache(root, &self.rel, &bytes) {
            debug!(file = %self.rel, error = %e, "could not write plan records");
        }
    }
}

/// A cache file under `.terrace/` (project-relative `rel`): its bytes when
/// it is a regular file, reached through no symlink, of at most 64 MiB.
pub(crate) fn read_cache(root: &Path, rel: &str) -> Option<Vec<u8>> {
    let abs = root.join(rel);
    if terrace_fs::check_write(root, rel).is_err()
        || std::fs::symlink_metadata(&abs).map_or(true, |m| !m.is_file() || m.len() > MAX_BYTES)
    {
        return None;
    }
    std::fs::read(&abs).ok()
}

/// Writes a cache file privately (0600 in 0700 directories), atomically,
/// following no symlink.
pub(crate) fn write_cache(root: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
    terrace_fs::check_write(root, dir)
        .map_err(std::io::Error::from)
        .and_then(|abs| terrace_fs::private_dir(&abs))
        .and_then(|()| terrace_fs::write(root, rel, bytes, terrace_fs::Mode::Private))
}
