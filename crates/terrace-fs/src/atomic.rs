//! Crash-safe file replacement: write a temporary file beside the target,
//! fsync it, rename it over the target, fsync the directory. A reader sees
//! the old content or the new, never a mix. Used for state records and for
//! every file terrace renders.
//!
//! A [`Mode::Private`] file is created 0600 in directories created 0700:
//! everything under `.terrace/` is written so. [`Mode::Shared`] keeps the
//! usual 0644 for files a user asked for elsewhere in the project.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Who may read a file terrace writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the owner: files 0600, new directories 0700.
    Private,
    /// Files 0644 (less the umask), new directories 0755.
    Shared,
}

impl Mode {
    fn file_bits(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::Shared => 0o644,
        }
    }

    fn dir_bits(self) -> u32 {
        match self {
            Mode::Private => 0o700,
            Mode::Shared => 0o755,
        }
    }
}

/// Creates `dir` and its missing parents with the mode's permissions.
pub fn create_dirs(dir: &Path, mode: Mode) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode.dir_bits())
        .create(dir)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("failed to create {}: {e}", dir.display()))
        })
}

/// Replaces `path` with `bytes` atomically, creating parent directories.
pub fn write(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    write_with(path, bytes, mode, true)
}

/// Like [`write`], without fsync: for files whose loss on power failure
/// costs nothing (a lock is gone with the process anyway).
pub fn write_volatile(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    write_with(path, bytes, mode, false)
}

fn write_with(path: &Path, bytes: &[u8], mode: Mode, durable: bool) -> std::io::Result<()> {
    let dir = parent_dir(path);
    create_dirs(dir, mode)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.file_bits())
            .open(&tmp)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("failed to create {}: {e}", tmp.display()))
            })?;
        let mut file = fs_err::File::from_parts(file, &tmp);
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs_err::rename(&tmp, path)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// Removes `path` if it exists and makes the removal durable.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match fs_err::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn bits(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/state.json");
        write(&p, b"one", Mode::Private).expect("first write");
        write(&p, b"two", Mode::Private).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn private_files_are_0600_in_0700_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("new/sub/state.json");
        write(&p, b"x", Mode::Private).expect("write");
        assert_eq!(bits(&p), 0o600);
        assert_eq!(bits(&dir.path().join("new")), 0o700);
        assert_eq!(bits(&dir.path().join("new/sub")), 0o700);
        write_volatile(&p, b"y", Mode::Private).expect("write");
        assert_eq!(bits(&p), 0o600);
    }
}
