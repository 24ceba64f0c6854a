//! What each unit read when it was last planned: the project-relative
//! files and directories its driver looked at through `terrace_fs` (a
//! kustomize base or a chart outside its directory, values files), and
//! the secrets files its expressions read. `--affected-since` (and the
//! daemon's reconcile) maps a changed file to every unit that read it,
//! not only to the unit whose directory holds it.
//!
//! Kept in `.terrace/cache/<env>/reads.json` (private, disposable: without
//! it a unit is affected by the files under its own directory only).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::debug;

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    units: BTreeMap<String, Vec<String>>,
}

/// The reads of one environment's units, loaded on first use.
#[derive(Debug)]
pub(crate) struct Reads {
    rel: String,
    units: Mutex<Option<BTreeMap<String, Vec<String>>>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Reads {
    pub(crate) fn new(environment: &str) -> Reads {
        Reads {
            rel: format!(
                "{}/cache/{environment}/reads.json",
                terrace_core::config::WORK_DIR
            ),
            units: Mutex::new(None),
            dirty: false.into(),
        }
    }

    fn load(&self, root: &Path) -> BTreeMap<String, Vec<String>> {
        crate::reuse::read_cache(root, &self.rel)
            .and_then(|bytes| serde_json::from_slice::<File>(&bytes).ok())
            .filter(|f| f.format == FORMAT)
            .map(|f| f.units)
            .unwrap_or_default()
    }

    /// Every unit's reads, as last recorded.
    pub(crate) fn all(&self, root: &Path) -> BTreeMap<String, Vec<String>> {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        units.get_or_insert_with(|| self.load(root)).clone()
    }

    /// Records what `unit` read: paths in the project, not terrace's own
    /// files (rendered output, caches, state are no source of a unit).
    pub(crate) fn remember(&self, root: &Path, unit: &str, mut read: Vec<String>) {
        read.retain(|p| {
            terrace_fs::clean_relative("", p).as_deref() == Some(p.as_str())
                && !terrace_fs::is_within(p, terrace_core::config::WORK_DIR)
                && !terrace_fs::is_within(p, ".git")
        });
        read.sort();
        read.dedup();
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        let units = units.get_or_insert_with(|| self.load(root));
        if units.get(unit) != Some(&read) {
            units.insert(unit.to_owned(), read);
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes the reads when they changed. A failure only makes the next
    /// `--affected-since` fall back to unit directories.
    pub(crate) fn save(&self, root: &Path) {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(units) = units.as_ref() else {
            return;
        };
        let body = File {
            format: FORMAT,
            units: units.clone(),
        };
        let bytes = serde_json::to_vec(&body).expect("reads serialize");
        if let Err(e) = crate::reuse::write_cache(root, &self.rel, &bytes) {
            debug!(file = %self.rel, error = %e, "could not write unit reads");
        }
    }
}

/// Whether a change to `file` touches something a unit `read`: the file
/// itself, or a file inside a directory it listed.
pub(crate) fn touches(read: &[String], file: &str) -> bool {
    read.iter()
        .any(|r| r == file || file.starts_with(&format!("{r}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_round_trip_and_match_files_and_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reads = Reads::new("prod");
        reads.remember(
            dir.path(),
            "web",
            vec![
                "charts/app/values.yaml".into(),
                "../outside".into(),
                "charts/app/templates".into(),
                ".terrace/cache/prod/helm/web.json".into(),
            ],
        );
        reads.save(dir.path());
        let again = Reads::new("prod").all(dir.path());
        let web = &again["web"];
        assert_eq!(web, &["charts/app/templates", "charts/app/values.yaml"]);
        assert!(touches(web, "charts/app/values.yaml"));
        assert!(touches(web, "charts/app/templates/new.yaml"));
        assert!(!touches(web, "charts/app/Chart.yaml"));
        assert!(!touches(web, "charts/app/templates-old/x.yaml"));
    }
}
