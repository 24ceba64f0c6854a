//! A Kustomize-compatible render engine, pure and synchronous over an
//! [`Fs`]: [`build`] turns a kustomization directory into the objects
//! `kustomize build` (v5) prints, in the same order.
//!
//! Supported so far: `resources` (files and directories), `bases`,
//! `components`; `namespace`; `namePrefix`/`nameSuffix`; `commonLabels`,
//! `labels`, `commonAnnotations`; `images`; `replicas`;
//! `configMapGenerator`/`secretGenerator` with `generatorOptions` and
//! content-hash suffixes; references to renamed objects in the common
//! places; `patches`, `patchesStrategicMerge`, `patchesJson6902`;
//! `replacements`; `sortOptions` (legacy and fifo); the load restrictor. Every other field
//! is an error that names it.

mod build;
mod fs;
pub mod helm;
mod patch;
mod replace;
mod schema;
mod select;
mod transform;
mod vars;

use std::path::PathBuf;

pub use build::{build, build_all};
pub use fs::{DiskFs, Fs, MemFs, Unrestricted, WithHelm, normalize};
pub use helm::{Helm, Inflate};
pub use patch::{apply_json6902, merge_strategic};

/// Why a build failed. Every error names the kustomization file.
#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("{file}: `{field}` is not supported by terrace's kustomize engine yet")]
    Unsupported { file: PathBuf, field: String },
    #[error(
        "{file}: {path} is outside the kustomization root {root}; kustomize's load restrictor forbids it"
    )]
    Restricted {
        file: PathBuf,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("{0}")]
    Yaml(Box<terrace_core::diag::Diagnostic>),
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl KustomizeError {
    pub(crate) fn invalid(file: &std::path::Path, message: impl Into<String>) -> Self {
        KustomizeError::Invalid {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

/// Writes objects as a YAML stream, `---` between them.
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&terrace_yaml::to_string(o));
    }
    out
}
