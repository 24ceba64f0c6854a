//! The local backend: JSON files under the project's state directory.
//!
//! ```text
//! <dir>/<environment>/units/<unit>.json   the unit's record
//! <dir>/<environment>/locks/<unit>.lock   present while the unit is locked
//! <dir>/<environment>/runs/<run-id>.json  one file per apply or destroy run
//! ```

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use terrace_core::driver::BoxFuture;
use terrace_core::state::{LockInfo, RecordError, RunRecord, STATE_FORMAT, UnitState};

use terrace_fs::{Mode, atomic};

use crate::{StateBackend, StateError, hostname};

/// State as files on the local disk.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    dir: PathBuf,
}

impl LocalBackend {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The environment's directory; names that could lead elsewhere (a
    /// `/`, a leading `.`) are refused before any path is built.
    fn env_dir(&self, env: &str) -> Result<PathBuf, StateError> {
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        Ok(self.dir.join(env))
    }

    fn unit_path(&self, env: &str, unit: &str) -> Result<PathBuf, StateError> {
        terrace_fs::check_name("unit", unit).map_err(std::io::Error::from)?;
        Ok(self
            .env_dir(env)?
            .join("units")
            .join(format!("{unit}.json")))
    }

    fn lock_path(&self, env: &str, unit: &str) -> Result<PathBuf, StateError> {
        terrace_fs::check_name("unit", unit).map_err(std::io::Error::from)?;
        Ok(self
            .env_dir(env)?
            .join("locks")
            .join(format!("{unit}.lock")))
    }

    fn read_sync(&self, env: &str, unit: &str) -> Result<Option<UnitState>, StateError> {
        let path = self.unit_path(env, unit)?;
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        parse_state(&path, &bytes).map(Some)
    }

    fn read_lock(&self, env: &str, unit: &str) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path(env, unit)?;
        match fs_err::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt to take the lock: the holder record is written to a
    /// temporary file and hard-linked into place, so the lock file appears
    /// complete or not at all.
    fn try_lock(&self, env: &str, unit: &str, holder: &LockInfo) -> Result<bool, StateError> {
        let path = self.lock_path(env, unit)?;
        let dir = path.parent().expect("lock paths have a parent");
        atomic::create_dirs(dir, Mode::Private)?;
        let tmp = dir.join(format!(".{unit}.lock.{}.{}", holder.pid, holder.run_id));
        let body = serde_json::to_vec_pretty(holder).expect("lock info serializes");
        // A lock needs no fsync: after a power failure its holder is gone
        // too, and a lost lock file is a released lock.
        atomic::write_volatile(&tmp, &body, Mode::Private)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("failed to create lock file {}: {e}", path.display()),
            )
            .into()),
        }
    }

    /// Takes the lock, or says who holds it.
    fn lock_sync(
        &self,
        env: &str,
        unit: &str,
        holder: &LockInfo,
    ) -> Result<Result<Option<LockInfo>, StateError>, StateError> {
        let mut taken_over = None;
        for _ in 0..3 {
            if self.try_lock(env, unit, holder)? {
                return Ok(Ok(taken_over));
            }
            // Released between the attempt and the read: try again.
            if let Some(current) = self.read_lock(env, unit)? {
                let stale = is_stale(&current);
                if stale && taken_over.is_none() {
                    // Its holder ran here and is gone (killed, crashed):
                    // nobody can release it but us. Remove it only if it is
                    // still that holder's (another run may have taken it
                    // over just now).
                    if self.read_lock(env, unit)?.is_some_and(|again| {
                        again.run_id == current.run_id && again.pid == current.pid
                    }) {
                        remove_lock(&self.lock_path(env, unit)?)?;
                    }
                    taken_over = Some(current);
                    continue;
                }
                return Ok(Err(StateError::Locked {
                    environment: env.to_owned(),
                    unit: unit.to_owned(),
                    holder: Box::new(current),
                    stale,
                }));
            }
        }
        Err(std::io::Error::other(format!(
            "lock file {} keeps appearing and vanishing",
            self.lock_path(env, unit)?.display()
        ))
        .into())
    }
}

/// Removes a lock file; no fsync (see [`LocalBackend::try_lock`]).
fn remove_lock(path: &Path) -> std::io::Result<()> {
    match fs_err::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether a lock's holder ran on this host and is gone.
pub fn is_stale(holder: &LockInfo) -> bool {
    holder.host == hostname()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{}", holder.pid)).exists()
}

/// A record of this format, or of format 1 upgraded (see
/// [`UnitState::from_json`]); the upgraded record is written on the
/// unit's next apply.
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<UnitState, StateError> {
    let text = std::str::from_utf8(bytes).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        source: <serde_json::Error as serde::de::Error>::custom(e),
    })?;
    UnitState::from_json(text).map_err(|e| match e {
        RecordError::Json(source) => StateError::Corrupt {
            path: path.to_owned(),
            source,
        },
        RecordError::Format { found } => StateError::Format {
            path: path.to_owned(),
            found,
            expected: STATE_FORMAT,
        },
    })
}

impl StateBackend for LocalBackend {
    fn describe(&self) -> String {
        format!("local ({})", self.dir.display())
    }

    fn read<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<UnitState>, StateError>> {
        Box::pin(async move { self.read_sync(environment, unit) })
    }

    fn write<'a>(&'a self, state: &'a UnitState) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let path = self.unit_path(&state.environment, &state.unit)?;
            let mut body = serde_json::to_vec_pretty(state).expect("state serializes");
            body.push(b'\n');
            atomic::write(&path, &body, Mode::Private)?;
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            atomic::remove(&self.unit_path(environment, unit)?)?;
            Ok(())
        })
    }

    fn list<'a>(&'a self, environment: &'a str) -> BoxFuture<'a, Result<Vec<String>, StateError>> {
        Box::pin(async move {
            let dir = self.env_dir(environment)?.join("units");
            let entries = match fs_err::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut names = Vec::new();
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(unit) = name.strip_suffix(".json")
                    && !name.starts_with('.')
                {
                    names.push(unit.to_owned());
                }
            }
            names.sort();
            Ok(names)
        })
    }

    fn lock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        holder: &'a LockInfo,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            let deadline = Instant::now().checked_add(wait);
            loop {
                match self.lock_sync(environment, unit, holder)? {
                    Ok(taken_over) => return Ok(taken_over),
                    Err(err) if deadline.is_some_and(|d| Instant::now() >= d) => return Err(err),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    }

    fn unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            match self.read_lock(environment, unit)? {
                Some(h) if h.run_id == run_id => {
                    remove_lock(&self.lock_path(environment, unit)?)?;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }

    fn force_unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            let holder = self.read_lock(environment, unit).or_else(|e| match e {
                // A damaged lock file is still a lock to break.
                StateError::Corrupt { .. } => Ok(None),
                e => Err(e),
            })?;
            remove_lock(&self.lock_path(environment, unit)?)?;
            Ok(holder)
        })
    }

    fn lock_holder<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move { self.read_lock(environment, unit) })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            terrace_fs::check_name("run", &run.id).map_err(std::io::Error::from)?;
            let path = self
                .env_dir(&run.environment)?
                .join("runs")
                .join(format!("{}.json", run.id));
            let body = serde_json::to_vec_pretty(run).expect("runs serialize");
            atomic::write(&path, &body, Mode::Private)?;
            Ok(())
        })
    }

    fn runs<'a>(
        &'a self,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StateError>> {
        Box::pin(async move {
            let dir = self.env_dir(environment)?.join("runs");
            let entries = match fs_err::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            paths.sort();
            let mut runs = Vec::with_capacity(paths.len());
            for path in paths {
                let bytes = fs_err::read(&path)?;
                runs.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|source| StateError::Corrupt { path, source })?,
                );
            }
            Ok(runs)
        })
    }
}
