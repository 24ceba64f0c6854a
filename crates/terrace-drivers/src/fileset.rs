//! A set of files a unit owns: plan them against the disk, write them, and
//! prune what the previous apply wrote that no longer renders.
//!
//! Every path, rendered or read back from state, must lie in one of the
//! unit's output roots (`prune_dirs`); writes and removals go through
//! `terrace_fs`, so they never follow a symlink. Files under `.terrace/`
//! are written private (0600).

use std::collections::BTreeSet;
use std::path::Path;

use terrace_core::driver::{Applied, DriverError};
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::state::{InventoryItem, UnitState};

use crate::digest;

/// A file that should exist with this content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFile {
    /// How plans name it (an object, or the file path itself).
    pub address: String,
    /// The object it holds, when it holds one.
    pub object: Option<terrace_core::state::ObjectRef>,
    /// Relative to the project root, `/`-separated.
    pub path: String,
    pub content: String,
    /// Holds secrets (written SOPS-encrypted): plans show no diff of it.
    pub sensitive: bool,
    /// For a sensitive file: the encrypted files (project-relative) whose
    /// values it holds. The render hash counts their digests instead of
    /// the sealed content, which is new ciphertext each time it is sealed.
    pub secret_sources: Vec<String>,
}

impl DesiredFile {
    fn diff(&self, old: &str) -> String {
        if self.sensitive {
            format!(
                "(sensitive: {} is written SOPS-encrypted; `terrace secrets decrypt {}` shows it)\n",
                self.address, self.path
            )
        } else {
            unified_diff(old, &self.content, &self.path)
        }
    }
}

/// What a file-backed unit renders: its files, the directory it owns, and
/// the outputs it will have.
#[derive(Debug, Clone, Default)]
pub struct DesiredSet {
    pub files: Vec<DesiredFile>,
    pub dir: String,
    pub outputs: serde_json::Map<String, serde_json::Value>,
}

/// What apply does: the payload of a file-backed [`UnitPlan`].
#[derive(Debug, Clone, Default)]
pub struct FilePlan {
    /// Every desired file, for the inventory.
    pub desired: Vec<DesiredFile>,
    /// Paths to write (created or changed).
    pub write: Vec<String>,
    /// Paths to remove.
    pub remove: Vec<String>,
    /// Directories that may be left empty by removals; removed if so.
    pub prune_dirs: Vec<String>,
    /// The unit's outputs after apply.
    pub outputs: serde_json::Map<String, serde_json::Value>,
}

/// Plans `desired` against the disk and the prior inventory.
pub fn plan(
    root: &Path,
    desired: Vec<DesiredFile>,
    prior: Option<&UnitState>,
    outputs: serde_json::Map<String, serde_json::Value>,
    prune_dirs: Vec<String>,
) -> Result<UnitPlan, DriverError> {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut write = Vec::new();
    let mut hasher_input = String::new();
    let prune_dirs = checked_roots(prune_dirs)?;
    // What the last apply wrote may sit under the output directory it had
    // then (a changed `output:`): that one may be pruned too.
    let mut prior_roots = prune_dirs.clone();
    if let Some(p) = prior {
        for key in ["dir", "renderedPath"] {
            if let Some(d) = p.outputs.get(key).and_then(serde_json::Value::as_str) {
                prior_roots.extend(checked_roots(vec![d.to_owned()])?);
            }
        }
    }
    for f in &desired {
        confine(&f.path, &prune_dirs, "renders")?;
        terrace_fs::check_write(root, &f.path).map_err(std::io::Error::from)?;
        hasher_input.push_str(&f.path);
        hasher_input.push('\0');
        if f.sensitive {
            hasher_input.push_str(&crate::sealed_sources_digest(root, &f.secret_sources));
        } else {
            hasher_input.push_str(&f.content);
        }
        hasher_input.push('\0');
        match read_if_exists(&root.join(&f.path))? {
            None => {
                changes.push(Change {
                    address: f.address.clone(),
                    object: f.object.clone(),
                    action: Action::Create,
                    diff: Some(f.diff("")),
                });
                write.push(f.path.clone());
            }
            Some(existing) if existing == f.content => unchanged += 1,
            Some(existing) => {
                changes.push(Change {
                    address: f.address.clone(),
                    object: f.object.clone(),
                    action: Action::Update,
                    diff: Some(f.diff(&existing)),
                });
                write.push(f.path.clone());
            }
        }
    }
    let wanted: BTreeSet<&str> = desired.iter().map(|f| f.path.as_str()).collect();
    let mut remove = Vec::new();
    for item in prior.map(|p| p.inventory.as_slice()).unwrap_or_default() {
        let InventoryItem::File { address, path, .. } = item else {
            continue;
        };
        if wanted.contains(path.as_str()) {
            continue;
        }
        confine(path, &prior_roots, "state lists")?;
        terrace_fs::check_write(root, path).map_err(std::io::Error::from)?;
        if let Some(existing) = read_if_exists(&root.join(path))? {
            changes.push(Change {
                address: address.clone(),
                object: None,
                action: Action::Delete,
                diff: Some(unified_diff(&existing, "", path)),
            });
            remove.push(path.clone());
        }
    }
    let action = UnitPlan::action_for(prior.is_some(), &changes);
    Ok(UnitPlan {
        action,
        changes,
        unchanged,
        outputs: Some(outputs.clone()),
        render_hash: digest(hasher_input.as_bytes()),
        notes: Vec::new(),
        payload: Some(std::sync::Arc::new(FilePlan {
            desired,
            write,
            remove,
            prune_dirs,
            outputs,
        })),
    })
}

/// Plans removing every file in the inventory.
pub fn plan_destroy(
    root: &Path,
    prior: &UnitState,
    prune_dirs: Vec<String>,
) -> Result<UnitPlan, DriverError> {
    let mut changes = Vec::new();
    let mut remove = Vec::new();
    let prune_dirs = checked_roots(prune_dirs)?;
    for item in &prior.inventory {
        let InventoryItem::File { address, path, .. } = item else {
            continue;
        };
        confine(path, &prune_dirs, "state lists")?;
        terrace_fs::check_write(root, path).map_err(std::io::Error::from)?;
        if let Some(existing) = read_if_exists(&root.join(path))? {
            changes.push(Change {
                address: address.clone(),
                object: None,
                action: Action::Delete,
                diff: Some(unified_diff(&existing, "", path)),
            });
            remove.push(path.clone());
        }
    }
    Ok(UnitPlan {
        action: Action::Delete,
        changes,
        unchanged: 0,
        outputs: Some(Default::default()),
        render_hash: String::new(),
        notes: Vec::new(),
        payload: Some(std::sync::Arc::new(FilePlan {
            remove,
            prune_dirs,
            ..FilePlan::default()
        })),
    })
}

/// Plans removing a unit's files, pruning the directory its state names
/// under the output `dir_output`.
pub fn plan_destroy_from_state(
    ctx: &terrace_core::driver::DestroyContext<'_>,
    dir_output: &str,
) -> Result<UnitPlan, DriverError> {
    let dirs = ctx
        .prior
        .outputs
        .get(dir_output)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    plan_destroy(ctx.root, ctx.prior, dirs)
}

/// Carries out a file plan.
pub fn apply(root: &Path, plan: &UnitPlan) -> Result<Applied, DriverError> {
    let files = plan
        .payload::<FilePlan>()
        .ok_or_else(|| DriverError::Other("plan was not made by a file driver".into()))?;
    let by_path = |p: &str| files.desired.iter().find(|f| f.path == p);
    for path in &files.write {
        let f = by_path(path).expect("written paths are desired paths");
        terrace_fs::write(root, path, f.content.as_bytes(), mode_for(path))?;
    }
    for path in &files.remove {
        terrace_fs::remove(root, path)?;
        // Drop directories the removal left empty, up to the unit's own.
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir {
            if d.as_os_str().is_empty() || files.prune_dirs.iter().any(|p| Path::new(p) == d) {
                break;
            }
            if terrace_fs::check_write(root, &d.to_string_lossy()).is_err()
                || std::fs::remove_dir(root.join(d)).is_err()
            {
                break;
            }
            dir = d.parent();
        }
    }
    for d in &files.prune_dirs {
        // Only succeeds when empty: the unit owns nothing there any more.
        if files.desired.is_empty() && terrace_fs::check_write(root, d).is_ok() {
            let _ = std::fs::remove_dir(root.join(d));
        }
    }
    Ok(Applied {
        outputs: files.outputs.clone(),
        inventory: files
            .desired
            .iter()
            .map(|f| InventoryItem::File {
                address: f.address.clone(),
                path: f.path.clone(),
                digest: digest(f.content.as_bytes()),
            })
            .collect(),
        sensitive: Vec::new(),
    })
}

/// Files under `.terrace/` are private; files a unit writes elsewhere in
/// the project (a template's `output:`) are ordinary files.
fn mode_for(path: &str) -> terrace_fs::Mode {
    if terrace_fs::is_within(path, terrace_core::config::WORK_DIR) {
        terrace_fs::Mode::Private
    } else {
        terrace_fs::Mode::Shared
    }
}

/// Output roots as clean project-relative paths; one from state that is
/// absolute or leaves the project is refused.
fn checked_roots(dirs: Vec<String>) -> Result<Vec<String>, DriverError> {
    dirs.into_iter()
        .map(|d| match terrace_fs::clean_relative("", &d) {
            Some(c) if !c.is_empty() && c == d => match crate::reserved(&c) {
                None => Ok(c),
                Some(why) => Err(DriverError::Other(Box::<dyn std::error::Error + Send + Sync>::from(format!(
                    "the output directory `{c}` is {why}; terrace never writes or deletes there"
                )))),
            },
            _ => Err(DriverError::Other(Box::<dyn std::error::Error + Send + Sync>::from(format!(
                "the output directory `{d}` is not a relative path inside the project; terrace writes and deletes only there (is the state record damaged?)"
            )))),
        })
        .collect()
}

/// Refuses a path outside every output root of the unit: nothing from a
/// state record is deleted, and nothing rendered is written, elsewhere.
fn confine(path: &str, roots: &[String], verb: &str) -> Result<(), DriverError> {
    let clean = terrace_fs::clean_relative("", path);
    if clean.as_deref() == Some(path) && roots.iter().any(|r| terrace_fs::is_within(path, r)) {
        return Ok(());
    }
    Err(DriverError::Other(
        Box::<dyn std::error::Error + Send + Sync>::from(format!(
            "the unit {verb} the file `{}`, outside its output directory {}; terrace writes and deletes only there{}",
            path.chars().take(200).collect::<String>(),
            roots
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if verb == "state lists" {
                " (remove the entry from the state record, or the record itself, with care)"
            } else {
                ""
            }
        )),
    ))
}

fn read_if_exists(path: &Path) -> Result<Option<String>, DriverError> {
    Ok(terrace_fs::read_if_exists(path)?)
}

/// A unified diff with three lines of context.
pub use terrace_core::plan::unified_diff;

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_core::config::UnitKind;
    use terrace_core::state::{STATE_FORMAT, UnitStatus};

    fn file(path: &str, content: &str) -> DesiredFile {
        DesiredFile {
            object: None,
            address: path.to_owned(),
            path: path.to_owned(),
            content: content.to_owned(),
            sensitive: false,
            secret_sources: Vec::new(),
        }
    }

    fn state(inventory: Vec<InventoryItem>) -> UnitState {
        UnitState {
            format: STATE_FORMAT,
            unit: "u".into(),
            kind: UnitKind::new("template"),
            layer: "l".into(),
            environment: "e".into(),
            serial: 1,
            revision: None,
            input_hash: String::new(),
            render_hash: String::new(),
            outputs: Default::default(),
            sensitive_outputs: Vec::new(),
            inventory,
            status: UnitStatus::Applied,
            updated_at: String::new(),
            run_id: String::new(),
        }
    }

    #[test]
    fn create_update_prune_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let p = plan(
            root,
            vec![file("out/a", "1\n"), file("out/sub/b", "2\n")],
            None,
            Default::default(),
            vec!["out".into()],
        )
        .expect("plan");
        assert_eq!(p.action, Action::Create);
        assert_eq!(p.counts(), (2, 0, 0));
        let applied = apply(root, &p).expect("apply");
        let prior = state(applied.inventory);

        // Nothing changed: no-op.
        let p = plan(
            root,
            vec![file("out/a", "1\n"), file("out/sub/b", "2\n")],
            Some(&prior),
            Default::default(),
            vec!["out".into()],
        )
        .expect("plan");
        assert_eq!(p.action, Action::NoOp);
        assert_eq!(p.unchanged, 2);

        // One changed, one gone: exactly those two changes.
        let p = plan(
            root,
            vec![file("out/a", "one\n")],
            Some(&prior),
            Default::default(),
            vec!["out".into()],
        )
        .expect("plan");
        assert_eq!(p.action, Action::Update);
        assert_eq!(p.counts(), (0, 1, 1));
        assert!(
            p.changes[0]
                .diff
                .as_deref()
                .expect("diff")
                .contains("-1\n+one")
        );
        apply(root, &p).expect("apply");
        assert!(!root.join("out/sub").exists(), "emptied directory pruned");
        assert_eq!(
            std::fs::read_to_string(root.join("out/a")).expect("read"),
            "one\n"
        );
    }
}
