//! The Kubernetes target: objects applied to a live cluster the way Flux
//! and Argo CD apply them.
//!
//! - [`cluster`]: the client for a binding (a kubeconfig and context, or
//!   in-cluster), and API discovery cached per group version.
//! - [`order`]: the steps objects are applied in (hooks, sync waves, CRDs,
//!   Namespaces, Helm's kind order) and pruned in.
//! - [`sync`]: plan (server-side dry-run compared with the live object,
//!   prune of what left the unit) and apply (server-side apply under the
//!   field manager `terrace`, waits, prune, hooks).
//! - [`diff`]: the field-level difference between two objects.
//! - [`health`]: whether an object is ready, and why not.

pub mod cluster;
pub mod diff;
pub mod gitops;
pub mod health;
pub mod lease;
pub mod order;
pub mod sync;

use kube::core::Status;

pub use cluster::{Capabilities, Cluster, ClusterPool, Endpoint, InlineText, Resource};

/// Installs ring as the process's TLS provider, once. The build carries
/// two (kube's ring, and aws-lc through the Git source's reqwest), and
/// rustls picks neither on its own: every TLS client would panic.
/// Called before any connection; a provider installed earlier stays.
pub fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The field manager terrace applies under.
pub const FIELD_MANAGER: &str = "terrace";

/// Why talking to a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot connect to cluster `{cluster}` through {endpoint}: {message}")]
    Connect {
        cluster: String,
        endpoint: String,
        message: String,
    },
    /// The API server refused a request.
    #[error("{}", api_message(.0))]
    Api(Box<Status>),
    /// The request could not be made or its answer not read.
    #[error("{0}")]
    Request(String),
    /// Something about one object, naming it and the file it came from.
    #[error("{object} (from {source_file}): {message}")]
    Object {
        object: String,
        source_file: String,
        message: String,
    },
}

fn api_message(s: &Status) -> String {
    match (s.reason.as_str(), s.code) {
        ("", 0) => s.message.clone(),
        ("", code) => format!("{} (HTTP {code})", s.message),
        (reason, code) => format!("{} ({reason}, HTTP {code})", s.message),
    }
}

impl KubeError {
    /// The API answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api(s) if s.code == 404)
    }

    /// The API answered 409 (a field-manager conflict, or an object that
    /// already exists).
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Api(s) if s.code == 409)
    }

    /// The same error, said of `object` from `source_file`.
    pub fn about(self, object: &str, source_file: &str) -> KubeError {
        match self {
            e @ (KubeError::Object { .. } | KubeError::Connect { .. }) => e,
            other => KubeError::Object {
                object: object.to_owned(),
                source_file: source_file.to_owned(),
                message: other.to_string(),
            },
        }
    }
}
