//! Affected-unit detection: files changed in Git since a revision, mapped
//! to the units that own them (the unit whose directory holds the file,
//! and every unit that read it when last planned: `reads`), plus
//! everything that depends on those.
//!
//! Git is run as a binary behind [`git`]: repository discovery is left to
//! it, its environment is cleared of variables that redirect it, and its
//! stderr is part of the error.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use terrace_core::config::PROJECT_FILE;

use crate::error::EngineError;
use crate::run::Engine;

/// Runs git in `dir` and returns its stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, EngineError> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| EngineError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(EngineError::Git(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The current commit, with `+dirty` when the work tree has changes;
/// `None` outside Git.
pub fn revision(root: &Path) -> Option<String> {
    let head = git(root, &["rev-parse", "HEAD"]).ok()?;
    let dirty = git(
        root,
        &["status", "--porcelain", "--untracked-files=no", "."],
    )
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    Some(format!(
        "{}{}",
        head.trim(),
        if dirty { "+dirty" } else { "" }
    ))
}

/// Project-relative paths changed since `rev`: committed, staged, unstaged
/// and untracked.
pub fn changed_files(root: &Path, rev: &str) -> Result<Vec<String>, EngineError> {
    let prefix = git(root, &["rev-parse", "--show-prefix"])?
        .trim()
        .to_owned();
    git(
        root,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|_| EngineError::Git(format!("unknown revision `{rev}`")))?;
    let mut files = BTreeSet::new();
    let diff = git(
        root,
        &["diff", "--name-only", "--no-renames", rev, "--", "."],
    )?;
    let untracked = git(
        root,
        &[
            "ls-files",
            "--others",
            "--exclude-standard",
            "--full-name",
            ".",
        ],
    )?;
    for line in diff.lines().chain(untracked.lines()) {
        // git prints paths relative to the repository top.
        if let Some(rel) = line.strip_prefix(&prefix) {
            files.insert(rel.to_owned());
        }
    }
    Ok(files.into_iter().collect())
}

/// The units a change since `rev` touches, with their dependents.
pub fn affected_units(engine: &Engine, rev: &str) -> Result<BTreeSet<usize>, EngineError> {
    let files = changed_files(&engine.project.root, rev)?;
    Ok(units_touched_by(engine, &files))
}

/// The units changed `files` (project-relative) touch, with their
/// dependents: every unit when the project file or one of the
/// environment's variable files is among them.
pub fn units_touched_by(engine: &Engine, files: &[String]) -> BTreeSet<usize> {
    let ws = &engine.workspace;
    let touched = files_touching(engine, files);
    if touched.everything {
        return (0..ws.graph.len()).collect();
    }
    ws.graph.with_dependents(touched.units.into_keys())
}

/// Which changed files touch which unit directly (before dependents are
/// added): the files in its directory, and the files it read when last
/// planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Unit index → the changed files that touch it.
    pub units: std::collections::BTreeMap<usize, Vec<String>>,
    /// The project file or one of the environment's variable files
    /// changed: every unit may have changed.
    pub everything: bool,
}

/// The units each of the changed `files` (project-relative) touches
/// directly.
pub fn files_touching(engine: &Engine, files: &[String]) -> Touched {
    let ws = &engine.workspace;
    let var_files: Vec<&String> = engine
        .project
        .file
        .environments
        .get(&ws.environment)
        .map(|e| e.var_files.iter().collect())
        .unwrap_or_default();
    let reads = engine.reads.all(&engine.project.root);
    let mut touched = Touched::default();
    for f in files {
        let mut add = |i: usize| {
            let list = touched.units.entry(i).or_default();
            if list.last() != Some(f) {
                list.push(f.clone());
            }
        };
        // Every unit that read it when last planned.
        for (i, u) in ws.units.iter().enumerate() {
            if reads
                .get(&u.name)
                .is_some_and(|read| crate::reads::touches(read, f))
            {
                add(i);
            }
        }
        if f == PROJECT_FILE || var_files.contains(&f) {
            // Project settings and variables can change any unit.
            touched.everything = true;
            continue;
        }
        // The unit whose directory holds the file, innermost first.
        let owner = ws
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.dir == "." || f.starts_with(&format!("{}/", u.dir)))
            .max_by_key(|(_, u)| u.dir.len());
        if let Some((i, _)) = owner {
            add(i);
        }
    }
    touched
}
