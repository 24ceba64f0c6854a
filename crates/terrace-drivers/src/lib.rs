//! The built-in unit kinds, each behind [`terrace_core::driver::Driver`]:
//!
//! - [`manifests`]: a directory of Kubernetes YAML with `${...}`
//!   substitution, written by the embedded default cluster target as one
//!   file per object under `.terrace/rendered/<env>/<cluster>/<unit>/`;
//! - [`kustomize`]: a kustomization directory built in process by
//!   `terrace-kustomize`, its objects written like a `manifests` unit's;
//! - [`helm`]: a Helm chart with values, rendered by the helm binary,
//!   its objects applied like a `manifests` unit's;
//! - [`app`]: one service from a short spec, expanded into its
//!   Kubernetes objects with secure defaults, applied like `manifests`;
//! - [`template`]: files rendered from Jinja templates, optionally once per
//!   item of a list;
//! - `terraform`: a Terraform/OpenTofu root module with state per
//!   environment and unit, in its own crate (`terrace-terraform`).
//!
//! The first three end in files, so both plan and apply through [`fileset`]: compare
//! what renders with what is on disk, write what changed atomically, and
//! prune what the inventory says was written before and no longer renders.
//! External programs run through `terrace-exec` (a cleared environment,
//! a timeout, redacted output, interrupts that reach them).

pub mod ansible;
pub mod app;
pub mod compose;
pub mod fileset;
pub mod helm;
pub mod kustomize;
mod live;
pub mod manifests;
mod policy;
pub mod script;
pub mod substitute;
pub mod template;
pub mod tiers;

use terrace_core::kind::Registry;

pub use live::{ApplySettings, ConflictPolicy};
pub use terrace_core::kind::Timeout;

/// Every built-in kind, in the order they are documented. A new kind is
/// one module (its settings type, its driver, its `kind()`) and one line
/// here.
pub fn registry() -> Registry {
    // One pool of cluster connections for the registry's object kinds:
    // the engine that holds the registry owns it.
    let clusters = std::sync::Arc::new(terrace_kube::ClusterPool::default());
    Registry::new()
        .with(manifests::kind(&clusters))
        .with(kustomize::kind(&clusters))
        .with(helm::kind(&clusters))
        .with(app::kind(&clusters))
        .with(tiers::kind(&clusters))
        .with(template::kind())
        .with(compose::kind())
        .with(script::kind())
        .with(ansible::kind())
        .with(terrace_terraform::kind())
}

pub(crate) use terrace_core::kind::unit_settings;

pub use terrace_fs::digest::digest;

pub use terrace_fs::clean_relative;

/// What stands for a sealed document in a render hash: the digests of the
/// encrypted files its secret values came from (their name, for a source
/// that is not a file, such as a dependency's sensitive output). It
/// changes when a secret does and reveals nothing of it; the sealed text
/// itself is new ciphertext every time.
pub fn sealed_sources_digest(root: &std::path::Path, sources: &[String]) -> String {
    let mut text = String::from("(sealed)");
    for source in sources {
        text.push('\0');
        match terrace_fs::read(root, &root.join(source)) {
            Ok(bytes) => text.push_str(&digest(&bytes)),
            Err(_) => text.push_str(source),
        }
    }
    digest(text.as_bytes())
}

/// Why a project-relative directory may not receive a unit's files:
/// terrace's own state, Terraform state and caches under `.terrace/`, and
/// Git's directory. `None` when it may.
pub fn reserved(rel: &str) -> Option<&'static str> {
    use terrace_core::config::WORK_DIR;
    if terrace_fs::is_within(rel, ".git") {
        return Some("Git's own directory");
    }
    if terrace_fs::is_within(rel, WORK_DIR)
        && !terrace_fs::is_within(rel, &format!("{WORK_DIR}/generated"))
        && !terrace_fs::is_within(rel, &format!("{WORK_DIR}/rendered"))
    {
        return Some("terrace's own directory (state, locks and caches live there)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_directories() {
        assert!(reserved(".git/hooks").is_some());
        assert!(reserved(".git").is_some());
        assert!(reserved(".terrace/state/homelab/units").is_some());
        assert!(reserved(".terrace").is_some());
        assert!(reserved(".terrace/generated/homelab/nodes").is_none());
        assert!(reserved("nodes/out").is_none());
        assert!(reserved(".github").is_none());
    }
}
