//! The filesystem the engine reads through: the disk, or memory in tests.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// What a build reads. Paths are absolute (or rooted in the memory tree).
pub trait Fs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }
    fn is_dir(&self, path: &Path) -> bool;
    fn is_file(&self, path: &Path) -> bool;
    /// Where `path` really is once symlinks are resolved, if it exists
    /// (the load restrictor checks it); the memory tree has no links.
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        let _ = path;
        None
    }
    /// Whether files must lie within the kustomization's directory
    /// (kustomize's `LoadRestrictionsRootOnly`, the default).
    fn restricts_loads(&self) -> bool {
        true
    }
}

/// A filesystem with kustomize's load restrictor off
/// (`--load-restrictor LoadRestrictionsNone`): files may come from
/// anywhere the inner filesystem reaches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unrestricted<F>(pub F);

impl<F: Fs> Fs for Unrestricted<F> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0.read(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.0.is_dir(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        self.0.is_file(path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        self.0.real_path(path)
    }
    fn restricts_loads(&self) -> bool {
        false
    }
}

/// One build's view of a filesystem: where paths really are is asked
/// once per path (a kustomization's directory is checked for every file
/// it loads).
pub(crate) struct Memo<'a> {
    inner: &'a dyn Fs,
    real: std::cell::RefCell<std::collections::HashMap<PathBuf, Option<PathBuf>>>,
}

impl<'a> Memo<'a> {
    pub(crate) fn new(inner: &'a dyn Fs) -> Memo<'a> {
        Memo {
            inner,
            real: std::cell::RefCell::default(),
        }
    }
}

impl Fs for Memo<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        self.inner.is_file(path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        if let Some(known) = self.real.borrow().get(path) {
            return known.clone();
        }
        let found = self.inner.real_path(path);
        self.real
            .borrow_mut()
            .insert(path.to_owned(), found.clone());
        found
    }
    fn restricts_loads(&self) -> bool {
        self.inner.restricts_loads()
    }
}

/// The real disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFs;

impl Fs for DiskFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        path.canonicalize().ok()
    }
}

/// Files in memory, keyed by normalized path.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl MemFs {
    pub fn new() -> MemFs {
        MemFs::default()
    }

    /// Adds a file (parent directories exist implicitly).
    pub fn add(&mut self, path: impl AsRef<Path>, content: impl AsRef<[u8]>) -> &mut Self {
        self.files
            .insert(normalize(path.as_ref()), content.as_ref().to_vec());
        self
    }
}

impl Fs for MemFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files.get(&normalize(path)).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })
    }
    fn is_dir(&self, path: &Path) -> bool {
        let p = normalize(path);
        self.files.keys().any(|f| f.starts_with(&p) && *f != p)
    }
    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(&normalize(path))
    }
}

/// `a/./b/../c` -> `a/c`, without touching the disk.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
