//! Diagnostics: an error message tied to a file and a place in it, with an
//! optional hint saying what to do. Every crate reports bad input this way;
//! the CLI renders them with a caret under the place.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A place in a source file. Lines and columns count from 1; `offset` and
/// `len` are bytes, for renderers that underline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
    pub len: usize,
}

/// Why a problem happened, where a caller acts on it: `terrace ci` says
/// "needs secret keys" for a unit whose secrets this machine cannot open,
/// instead of failing the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// No age identity to decrypt a secret with.
    MissingKeys,
}

/// An error about user input, naming the file and, where known, the place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// The file, relative to the project root when it lies inside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// What the user can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: None,
            file: None,
            location: None,
            hint: None,
        }
    }

    /// The same, with why it happened.
    pub fn because(mut self, cause: Option<Cause>) -> Self {
        if cause.is_some() {
            self.cause = cause;
        }
        self
    }

    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, &self.location) {
            (Some(file), Some(loc)) => {
                write!(f, "{}:{}:{}: ", file.display(), loc.line, loc.column)?
            }
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// The byte offset of a 1-based line and character column.
pub fn offset_of(src: &str, line: u32, column: u32) -> usize {
    let mut offset = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1) as usize)
                    .map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    src.len()
}

/// The 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = src[line_start..offset].chars().count() + 1;
    (line as u32, column as u32)
}
