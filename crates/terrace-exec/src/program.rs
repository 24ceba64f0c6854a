//! Finding the binary of an external program, once per process.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::error::ExecError;
use crate::exec::Exec;

/// A binary that exists and can be run: found on `PATH` or given as a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// For messages: what the user asked for, or the file name of a path.
    name: String,
    /// Absolute, so the program is the same whatever directory it runs in.
    path: PathBuf,
}

impl Program {
    /// The program `name`: a name with a `/` is a path (relative to the
    /// current directory); any other name is looked up on the `PATH` of
    /// this process, once — later calls get the same binary even if `PATH`
    /// changed, so one run never mixes two versions of a tool. A name that
    /// was not found is looked up again next time (it may have been
    /// installed meanwhile).
    pub fn find(name: &str) -> Result<Program, ExecError> {
        if name.contains('/') {
            return Program::at(Path::new(name));
        }
        static FOUND: OnceLock<Mutex<HashMap<String, Program>>> = OnceLock::new();
        let found = FOUND.get_or_init(Default::default);
        if let Some(program) = found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(program.clone());
        }
        let searched = search_path();
        let hit = searched
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate));
        match hit {
            Some(path) => {
                let program = Program {
                    name: name.to_owned(),
                    path,
                };
                found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_owned(), program.clone());
                Ok(program)
            }
            None => Err(ExecError::NotFound {
                name: name.to_owned(),
                searched,
            }),
        }
    }

    /// The program at `path`, which must be an executable file (a symlink
    /// to one is fine).
    pub fn at(path: &Path) -> Result<Program, ExecError> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let Ok(meta) = std::fs::metadata(&absolute) else {
            return Err(ExecError::NotFound {
                name: path.display().to_string(),
                searched: vec![absolute],
            });
        };
        if !(meta.is_file() && meta.permissions().mode() & 0o111 != 0) {
            return Err(ExecError::NotExecutable { path: absolute });
        }
        let name = absolute.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Program {
            name,
            path: absolute,
        })
    }

    /// The name to show in messages (`terraform`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the binary is, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command running this program, to be given arguments and run.
    pub fn command(&self) -> Exec {
        Exec::new(self.clone())
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The directories of this process's `PATH`, in order. Empty and relative
/// entries are skipped: they name the current directory, so the program
/// found would depend on where terrace was started (and a project could
/// plant its own `terraform`).
fn search_path() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .filter(|dir| dir.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

/// A regular file (through symlinks) with an execute bit.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
