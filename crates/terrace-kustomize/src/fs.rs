//! The filesystem the engine reads through: the disk, or memory in tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
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
    /// What renders `helmCharts` (`--enable-helm`); `None`: they are
    /// refused.
    fn helm(&self) -> Option<&dyn crate::Helm> {
        None
    }
}

impl<T: Fs + ?Sized> Fs for &T {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        (**self).read(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        (**self).is_dir(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        (**self).is_file(path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        (**self).real_path(path)
    }
    fn restricts_loads(&self) -> bool {
        (**self).restricts_loads()
    }
    fn helm(&self) -> Option<&dyn crate::Helm> {
        (**self).helm()
    }
}

/// A filesystem with Helm for `helmCharts` (`--enable-helm`).
pub struct WithHelm<'a, F> {
    pub fs: F,
    pub helm: &'a dyn crate::Helm,
}

impl<F: std::fmt::Debug> std::fmt::Debug for WithHelm<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithHelm")
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

impl<F: Fs> Fs for WithHelm<'_, F> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.fs.read(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.fs.is_dir(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        self.fs.is_file(path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        self.fs.real_path(path)
    }
    fn restricts_loads(&self) -> bool {
        self.fs.restricts_loads()
    }
    fn helm(&self) -> Option<&dyn crate::Helm> {
        Some(self.helm)
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
    fn helm(&self) -> Option<&dyn crate::Helm> {
        self.0.helm()
    }
}

/// A filesystem whose answers are kept for as long as this value lives:
/// one build (a kustomization's directory is checked for every file it
/// loads), or one `terrace kustomize build` of many overlays that share a
/// base. Files read are kept too, so it suits short-lived use only.
pub(crate) struct Cached<'a> {
    inner: &'a dyn Fs,
    real: RefCell<HashMap<PathBuf, Option<PathBuf>>>,
    dirs: RefCell<HashMap<PathBuf, bool>>,
    files: RefCell<HashMap<PathBuf, bool>>,
    read: RefCell<HashMap<PathBuf, Vec<u8>>>,
}

impl std::fmt::Debug for Cached<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("files_read", &self.read.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<'a> Cached<'a> {
    pub(crate) fn new(inner: &'a dyn Fs) -> Cached<'a> {
        Cached {
            inner,
            real: RefCell::default(),
            dirs: RefCell::default(),
            files: RefCell::default(),
            read: RefCell::default(),
        }
    }
}

/// The answer kept for `key`, asked of `ask` the first time.
fn kept<V: Clone>(map: &RefCell<HashMap<PathBuf, V>>, key: &Path, ask: impl FnOnce() -> V) -> V {
    if let Some(known) = map.borrow().get(key) {
        return known.clone();
    }
    let found = ask();
    map.borrow_mut().insert(key.to_owned(), found.clone());
    found
}

impl Fs for Cached<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some(bytes) = self.read.borrow().get(path) {
            return Ok(bytes.clone());
        }
        // Errors are not kept: they are reported once, by the build.
        let bytes = self.inner.read(path)?;
        self.read
            .borrow_mut()
            .insert(path.to_owned(), bytes.clone());
        Ok(bytes)
    }
    fn is_dir(&self, path: &Path) -> bool {
        kept(&self.dirs, path, || self.inner.is_dir(path))
    }
    fn is_file(&self, path: &Path) -> bool {
        kept(&self.files, path, || self.inner.is_file(path))
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        kept(&self.real, path, || self.inner.real_path(path))
    }
    fn restricts_loads(&self) -> bool {
        self.inner.restricts_loads()
    }
    fn helm(&self) -> Option<&dyn crate::Helm> {
        self.inner.helm()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A memory tree that counts what it is asked.
    struct Counting {
        inner: MemFs,
        asked: Cell<usize>,
    }

    impl Fs for Counting {
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.asked.set(self.asked.get() + 1);
            self.inner.read(path)
        }
        fn is_dir(&self, path: &Path) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.inner.is_dir(path)
        }
        fn is_file(&self, path: &Path) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.inner.is_file(path)
        }
    }

    #[test]
    fn a_cached_filesystem_asks_once_and_answers_the_same() {
        let mut inner = MemFs::new();
        inner.add("/base/kustomization.yaml", "resources: [cm.yaml]\n");
        inner.add(
            "/base/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
        );
        for o in ["a", "b"] {
            inner.add(
                format!("/{o}/kustomization.yaml"),
                format!("resources: [../base]\nnamePrefix: {o}-\n"),
            );
        }
        let counting = Counting {
            inner,
            asked: Cell::new(0),
        };
        let cached = Cached::new(&counting);
        let a = crate::build(&cached, Path::new("/a")).expect("a builds");
        let after_one = counting.asked.get();
        let again = crate::build(&cached, Path::new("/a")).expect("a builds again");
        assert_eq!(a, again);
        assert_eq!(counting.asked.get(), after_one, "nothing asked twice");
        let b = crate::build(&cached, Path::new("/b")).expect("b builds");
        assert_eq!(b[0]["metadata"]["name"], "b-c");
        // A missing file is still an error, every time.
        assert!(cached.read(Path::new("/nothing")).is_err());
        assert!(cached.read(Path::new("/nothing")).is_err());
        // Builds made together share what they read: the same overlay
        // twice asks no more than once.
        counting.asked.set(0);
        let once = crate::build_all(&counting, &[Path::new("/a")]).expect("builds");
        let asked_once = counting.asked.get();
        counting.asked.set(0);
        let twice =
            crate::build_all(&counting, &[Path::new("/a"), Path::new("/a")]).expect("builds");
        assert_eq!(
            counting.asked.get(),
            asked_once,
            "the second build asked again"
        );
        assert_eq!(twice, [once.clone(), once].concat());
    }
}
