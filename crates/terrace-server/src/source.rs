//! The Git source: a remote's branch fetched with gix into a private bare
//! mirror, and each revision checked out into the daemon's work tree.
//!
//! The work tree is updated in place from one revision to the next (files
//! written when their blob changed, removed when they left the tree), so
//! what terrace keeps beside the project (`.terrace/`: state, rendered
//! files, caches) lives on. The remote's files are only read: nothing is
//! ever pushed, and the user's own clones are never touched.
//!
//! A tree entry is written only when its path is a plain relative path
//! that stays in the work tree and is not terrace's own `.terrace/` or
//! `.git`; symlinks and submodules are left out (a symlink could lead a
//! later read out of the project), and say so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;

/// Why the source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git: {0}")]
    Git(String),
    #[error("`{reference}` is not on the remote {url}")]
    NoBranch { url: String, reference: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn git<E: std::fmt::Display>(e: E) -> SourceError {
    let text = e.to_string();
    if text.contains("handshake") {
        return SourceError::Git(format!(
            "{text} (for an https remote, its certificate must be trusted: the system's store, or SSL_CERT_FILE naming the CA)"
        ));
    }
    SourceError::Git(text)
}

/// One file of a revision: its blob and whether it is executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub blob: String,
    pub executable: bool,
}

/// A remote branch, mirrored under `mirror`.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    /// What is followed: `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub reference: String,
    /// The bare repository the remote is fetched into.
    pub mirror: PathBuf,
    /// Fetch only the branch's last commit.
    pub shallow: bool,
    /// The project inside the repository (`""`: its root).
    pub path: String,
}

impl Source {
    fn tracking(&self) -> String {
        let short = self
            .reference
            .strip_prefix("refs/heads/")
            .unwrap_or(&self.reference);
        format!("refs/remotes/source/{short}")
    }

    /// Fetches the branch and returns the commit it points at. Blocking:
    /// run it off the async runtime.
    pub fn fetch(&self, interrupt: &AtomicBool) -> Result<String, SourceError> {
        // https goes through reqwest with rustls: one provider for the
        // process (see terrace_kube::tls_provider).
        terrace_kube::tls_provider();
        let repo = if self.mirror.join("HEAD").is_file() {
            gix::open(&self.mirror).map_err(git)?
        } else {
            terrace_fs::private_dir(&self.mirror)?;
            gix::init_bare(&self.mirror).map_err(git)?
        };
        let spec = format!("+{}:{}", self.reference, self.tracking());
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(git)?
            .with_refspecs(Some(spec.as_str()), gix::remote::Direction::Fetch)
            .map_err(git)?;
        let mut prepared = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(git)?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(git)?;
        if self.shallow {
            prepared = prepared.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
                std::num::NonZeroU32::MIN,
            ));
        }
        prepared
            .receive(gix::progress::Discard, interrupt)
            .map_err(git)?;
        self.head(&repo)
    }

    fn open(&self) -> Result<gix::Repository, SourceError> {
        gix::open(&self.mirror).map_err(git)
    }

    fn head(&self, repo: &gix::Repository) -> Result<String, SourceError> {
        let mut reference =
            repo.find_reference(self.tracking().as_str())
                .map_err(|_| SourceError::NoBranch {
                    url: self.url.clone(),
                    reference: self.reference.clone(),
                })?;
        Ok(reference.peel_to_id().map_err(git)?.to_string())
    }

    /// The project's files at `revision` (paths relative to the project
    /// directory), and the entries left out with why.
    pub fn files(
        &self,
        revision: &str,
    ) -> Result<(BTreeMap<String, Entry>, Vec<String>), SourceError> {
        let repo = self.open()?;
        let id = gix::ObjectId::from_hex(revision.as_bytes()).map_err(git)?;
        let tree = repo.find_commit(id).map_err(git)?.tree().map_err(git)?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse().breadthfirst(&mut recorder).map_err(git)?;
        let prefix = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.path.trim_end_matches('/'))
        };
        let mut files = BTreeMap::new();
        let mut skipped = Vec::new();
        for e in recorder.records {
            let Ok(full) = e.filepath.to_str() else {
                skipped.push(format!("{}: not UTF-8", e.filepath));
                continue;
            };
            let Some(rel) = full.strip_prefix(&prefix) else {
                continue;
            };
            if e.mode.is_tree() {
                continue;
            }
            if !plain_path(rel) {
                skipped.push(format!("{rel}: not a path terrace writes"));
                continue;
            }
            if e.mode.is_link() {
                skipped.push(format!("{rel}: a symlink (left out)"));
                continue;
            }
            if e.mode.is_commit() {
                skipped.push(format!("{rel}: a submodule (left out)"));
                continue;
            }
            files.insert(
                rel.to_owned(),
                Entry {
                    blob: e.oid.to_string(),
                    executable: e.mode.is_executable(),
                },
            );
        }
        Ok((files, skipped))
    }

    /// Makes `tree` hold the project at `revision`, given what it holds now
    /// (`current`: the files of the revision checked out before, empty
    /// for a new tree). Returns the new files.
    pub fn checkout(
        &self,
        revision: &str,
        tree: &Path,
        current: &BTreeMap<String, Entry>,
    ) -> Result<(BTreeMap<String, Entry>, Vec<String>), SourceError> {
        let repo = self.open()?;
        let (files, skipped) = self.files(revision)?;
        terrace_fs::private_dir(tree)?;
        for (rel, entry) in &files {
            if current.get(rel) == Some(entry) && tree.join(rel).is_file() {
                continue;
            }
            let id = gix::ObjectId::from_hex(entry.blob.as_bytes()).map_err(git)?;
            let blob = repo.find_blob(id).map_err(git)?;
            if let Some(parent) = Path::new(rel)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                terrace_fs::check_write(tree, &parent.to_string_lossy())
                    .map_err(std::io::Error::from)?;
                terrace_fs::atomic::create_dirs(&tree.join(parent), terrace_fs::Mode::Shared)?;
            }
            terrace_fs::write(tree, rel, &blob.data, terrace_fs::Mode::Shared)?;
            if entry.executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tree.join(rel), std::fs::Permissions::from_mode(0o755))?;
            }
        }
        for rel in current.keys().filter(|k| !files.contains_key(*k)) {
            terrace_fs::remove(tree, rel)?;
        }
        Ok((files, skipped))
    }
}

/// Files that differ between two revisions' listings.
pub fn changed(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut out: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
    out.sort();
    out
}

/// A relative path of plain components that is neither terrace's own
/// directory nor Git's.
fn plain_path(rel: &str) -> bool {
    terrace_fs::clean_relative("", rel).as_deref() == Some(rel)
        && !rel.is_empty()
        && !terrace_fs::is_within(rel, terrace_core::config::WORK_DIR)
        && !rel.split('/').any(|c| c == ".git")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_tree_may_not_write() {
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/../../b",
            ".terrace/state/x.json",
            "a/.git/config",
            ".git/hooks/x",
        ] {
            assert!(!plain_path(bad), "{bad}");
        }
        for good in [
            "terrace.yaml",
            "apps/web/unit.yaml",
            ".github/workflows/ci.yaml",
            ".sops.yaml",
        ] {
            assert!(plain_path(good), "{good}");
        }
    }

    #[test]
    fn changes_between_listings() {
        let e = |b: &str| Entry {
            blob: b.to_owned(),
            executable: false,
        };
        let before: BTreeMap<String, Entry> = [("a".to_owned(), e("1")), ("b".to_owned(), e("2"))]
            .into_iter()
            .collect();
        let after: BTreeMap<String, Entry> = [
            ("a".to_owned(), e("1")),
            ("b".to_owned(), e("3")),
            ("c".to_owned(), e("4")),
        ]
        .into_iter()
        .collect();
        assert_eq!(changed(&before, &after), ["b", "c"]);
        assert_eq!(changed(&after, &before), ["b", "c"]);
    }
}
