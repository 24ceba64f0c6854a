//! Where terrace may read and write, decided in one place.
//!
//! - **Reads** ([`read`], [`check_read`]) resolve symlinks and refuse a file
//!   whose real place is outside the root it was read under (the project, or
//!   a kustomization's root as kustomize's load restrictor has it).
//! - **Writes and removals** ([`write`], [`remove`], [`check_write`]) never
//!   follow a symlink: every component of the path below the root must be a
//!   real directory (or not exist yet), and the file itself must not be a
//!   symlink.
//! - **Relative paths** from configuration or from state go through
//!   [`clean_relative`], which refuses absolute paths and `..` that leaves
//!   the base.
//! - **Names** that become file names (units, environments) go through
//!   [`check_name`].
//!
//! [`atomic`] writes files crash-safely, private (0600 in 0700
//! directories) under `.terrace/`.
//!
//! Within one run, a directory is checked once: its real path (for reads)
//! and that it is not a symlink (for writes) are remembered until
//! [`forget_checked`], which the engine calls as each plan, apply or
//! destroy starts. The file itself is checked every time.

pub mod atomic;
pub mod digest;
pub mod time;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Directories found to be real directories, not symlinks, this run.
static REAL_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
/// Directories' real paths (symlinks resolved), this run.
static RESOLVED: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);

/// Forgets what was checked of directories: a new run checks them again.
pub fn forget_checked() {
    *REAL_DIRS.lock().unwrap_or_else(PoisonError::into_inner) = None;
    *RESOLVED.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// `dir` with symlinks resolved, remembered for the run.
fn resolved_dir(dir: &Path) -> io::Result<PathBuf> {
    if let Some(real) = RESOLVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(dir))
    {
        return Ok(real.clone());
    }
    let real = dir.canonicalize()?;
    RESOLVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(dir.to_owned(), real.clone());
    Ok(real)
}

/// `abs` with symlinks resolved: its directory from the run's memory, the
/// file itself looked at every time.
fn resolved(abs: &Path) -> io::Result<PathBuf> {
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return abs.canonicalize();
    };
    if name == ".." || parent.as_os_str().is_empty() {
        return abs.canonicalize();
    }
    let real_parent = resolved_dir(parent)?;
    let meta = std::fs::symlink_metadata(abs)?;
    if meta.file_type().is_symlink() {
        abs.canonicalize()
    } else {
        Ok(real_parent.join(name))
    }
}

pub use atomic::Mode;

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error(
        "`{path}` leads outside {root} (it resolves to {target}); terrace reads only files inside it"
    )]
    ReadEscapes {
        path: String,
        root: String,
        target: PathBuf,
    },
    #[error(
        "`{path}` goes through the symlink `{link}`; terrace never writes or deletes through a symlink"
    )]
    WriteThroughSymlink { path: String, link: String },
    #[error("`{path}` is not a relative path inside the project")]
    NotRelative { path: String },
    #[error("{what} `{name}` is not a valid name: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<ContainError> for io::Error {
    fn from(e: ContainError) -> io::Error {
        match e {
            ContainError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other.to_string()),
        }
    }
}

/// Joins `rel` to `base` (both `/`-separated, relative to the project
/// root) and normalizes it; `None` when `rel` is absolute or `..` leaves
/// the project.
pub fn clean_relative(base: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if rel.starts_with('/') || rel.contains('\0') {
        return None;
    } else if base.is_empty() || base == "." {
        rel.to_owned()
    } else {
        format!("{base}/{rel}")
    };
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether `rel` (project-relative, as [`clean_relative`] makes them) lies
/// in `dir` or is `dir` itself.
pub fn is_within(rel: &str, dir: &str) -> bool {
    dir.is_empty() || rel == dir || rel.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// Checks that `abs`, once symlinks are resolved, lies inside `root`.
/// A path that does not exist passes (the read then fails as usual).
pub fn check_read(root: &Path, abs: &Path) -> Result<(), ContainError> {
    let real = match resolved(abs) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let real_root = resolved_dir(root)?;
    if real.starts_with(&real_root) {
        return Ok(());
    }
    Err(ContainError::ReadEscapes {
        path: shown(root, abs),
        root: match root.file_name() {
            Some(n) => format!("`{}`", n.to_string_lossy()),
            None => "the project".to_owned(),
        },
        target: real,
    })
}

/// Reads `abs` as text after [`check_read`].
pub fn read_to_string(root: &Path, abs: &Path) -> io::Result<String> {
    watch::note(abs);
    check_read(root, abs)?;
    fs_err::read_to_string(abs)
}

/// Reads `abs` after [`check_read`].
pub fn read(root: &Path, abs: &Path) -> io::Result<Vec<u8>> {
    watch::note(abs);
    check_read(root, abs)?;
    fs_err::read(abs)
}

/// Reads `abs` as text when it exists. No containment check: for paths
/// already checked by [`check_write`] (a render's own outputs).
pub fn read_if_exists(abs: &Path) -> io::Result<Option<String>> {
    watch::note(abs);
    match fs_err::read_to_string(abs) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of the directory `abs` (its listing noted, see [`watch`]).
pub fn read_dir(abs: &Path) -> io::Result<fs_err::ReadDir> {
    watch::note(abs);
    fs_err::read_dir(abs)
}

/// Whether `abs` is a directory, following symlinks (noted, see [`watch`]).
pub fn is_dir(abs: &Path) -> bool {
    watch::note(abs);
    abs.is_dir()
}

/// Whether `abs` is a file, following symlinks (noted, see [`watch`]).
pub fn is_file(abs: &Path) -> bool {
    watch::note(abs);
    abs.is_file()
}

/// Checks that writing `rel` under `root` follows no symlink: neither a
/// directory on the way nor the file itself may be one.
pub fn check_write(root: &Path, rel: &str) -> Result<PathBuf, ContainError> {
    let clean = clean_relative("", rel).ok_or_else(|| ContainError::NotRelative {
        path: rel.to_owned(),
    })?;
    if clean.is_empty() {
        return Err(ContainError::NotRelative {
            path: rel.to_owned(),
        });
    }
    let mut at = root.to_path_buf();
    let mut shown_so_far = String::new();
    let parts: Vec<&str> = clean.split('/').collect();
    for (n, part) in parts.iter().enumerate() {
        at.push(part);
        if !shown_so_far.is_empty() {
            shown_so_far.push('/');
        }
        shown_so_far.push_str(part);
        let last = n + 1 == parts.len();
        if !last
            && REAL_DIRS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|d| d.contains(&at))
        {
            continue;
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ContainError::WriteThroughSymlink {
                    path: clean.clone(),
                    link: shown_so_far,
                });
            }
            Ok(m) => {
                if !last && m.is_dir() {
                    REAL_DIRS
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert_with(HashSet::new)
                        .insert(at.clone());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(root.join(&clean))
}

/// Writes `rel` under `root` atomically, following no symlink.
pub fn write(root: &Path, rel: &str, bytes: &[u8], mode: Mode) -> io::Result<()> {
    let path = check_write(root, rel)?;
    atomic::write(&path, bytes, mode)
}

/// Removes `rel` under `root` if it exists, following no symlink.
pub fn remove(root: &Path, rel: &str) -> io::Result<()> {
    let path = check_write(root, rel)?;
    atomic::remove(&path)
}

/// Makes `dir` (and its missing parents) exist, and makes `dir` itself
/// 0700 whatever it was before.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    atomic::create_dirs(dir, Mode::Private)?;
    let meta = fs_err::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(ContainError::WriteThroughSymlink {
            path: dir.display().to_string(),
            link: dir.display().to_string(),
        }
        .into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Checks a name that becomes a file name (a unit, an environment): ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.`, at most 128
/// bytes.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ContainError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 128 {
        Some("it is longer than 128 characters")
    } else if name.starts_with('.') {
        Some("it starts with `.`")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only letters, digits, `-`, `_` and `.` are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(ContainError::BadName {
            what,
            name: name.chars().take(130).collect(),
            why,
        }),
        None => Ok(()),
    }
}

/// `abs` relative to `root` for messages, or as it is.
fn shown(root: &Path, abs: &Path) -> String {
    let rel = abs.strip_prefix(root).unwrap_or(abs);
    let mut out = PathBuf::new();
    for c in rel.components() {
        if !matches!(c, Component::CurDir) {
            out.push(c.as_os_str());
        }
    }
    out.display().to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn clean_relative_stays_inside() {
        assert_eq!(
            clean_relative("apps/web", "./m").as_deref(),
            Some("apps/web/m")
        );
        assert_eq!(
            clean_relative("apps/web", "../shared").as_deref(),
            Some("apps/shared")
        );
        assert_eq!(clean_relative("apps", "../../etc"), None);
        assert_eq!(clean_relative("apps", "/etc"), None);
    }

    #[test]
    fn reads_refuse_symlinks_that_leave_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::write(dir.path().join("outside.txt"), "secret").expect("write");
        std::fs::write(root.join("a/inside.txt"), "fine").expect("write");
        symlink(dir.path().join("outside.txt"), root.join("a/out.yaml")).expect("link");
        symlink(root.join("a/inside.txt"), root.join("a/in.yaml")).expect("link");
        let e = read_to_string(&root, &root.join("a/out.yaml")).expect_err("escapes");
        assert!(e.to_string().contains("a/out.yaml"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(
            read_to_string(&root, &root.join("a/in.yaml")).expect("inside"),
            "fine"
        );
    }

    #[test]
    fn writes_never_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        symlink(&outside, root.join("out")).expect("link");
        let e = write(&root, "out/x.yaml", b"x", Mode::Shared).expect_err("symlinked dir");
        assert!(e.to_string().contains("symlink `out`"), "{e}");
        assert!(!outside.join("x.yaml").exists());
        std::fs::write(outside.join("victim"), "keep").expect("write");
        symlink(outside.join("victim"), root.join("file")).expect("link");
        write(&root, "file", b"x", Mode::Shared).expect_err("symlinked file");
        remove(&root, "file").expect_err("symlinked file");
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).expect("read"),
            "keep"
        );
        write(&root, "new/dir/f", b"ok", Mode::Shared).expect("plain write");
        write(&root, "../escape", b"x", Mode::Shared).expect_err("leaves the root");
        write(&root, "/etc/x", b"x", Mode::Shared).expect_err("absolute");
    }

    #[test]
    fn names_that_become_file_names_are_checked() {
        check_name("unit", "web-1.a_b").expect("fine");
        for bad in ["", "../../x", "a/b", ".hidden", "a b", "x\0"] {
            check_name("unit", bad).expect_err(bad);
        }
    }

    #[test]
    fn private_dir_tightens_an_existing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".terrace");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&p).expect("private");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
