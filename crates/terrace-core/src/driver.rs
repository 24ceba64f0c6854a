//! The [`Driver`] trait: what every unit kind does — render, plan, apply,
//! plan its destruction — and the contexts the engine hands it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{TargetBinding, TargetKind, UnitKind};
use crate::diag::Diagnostic;
use crate::plan::UnitPlan;
use crate::secrets::SecretSource;
use crate::state::{InventoryItem, UnitState};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A unit with its environment's overrides applied and every expression
/// evaluated: what a driver works from.
/// `Debug` shows its secret inputs as `(sensitive)`.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedUnit {
    pub name: String,
    pub layer: String,
    pub kind: UnitKind,
    /// The unit directory, relative to the project root.
    pub dir: String,
    /// The inputs known now. An input known only after a dependency is
    /// applied is not here but in `unknown_inputs`: no placeholder stands
    /// in for it.
    pub inputs: Map<String, Value>,
    /// Inputs known only after a dependency is applied.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub unknown_inputs: BTreeSet<String>,
    /// The kind's own settings (the `manifests:` or `template:` block).
    pub settings: Value,
    /// Whether some input or setting is known only after a dependency is
    /// applied.
    pub unknown: bool,
    /// Dependencies not applied yet whose outputs this unit needs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Inputs that hold secret values, with the secrets files behind them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_inputs: BTreeMap<String, Vec<String>>,
    /// Top-level keys of the kind's settings whose values hold secrets (a
    /// `${secret...}` in a helm unit's `values:`), with the secrets files
    /// behind them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_settings: BTreeMap<String, Vec<String>>,
    /// Units that handed their objects over to this one (`handOver`): its
    /// apply adopts what they left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adopts_from: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<ResolvedTarget>,
}

impl fmt::Debug for ResolvedUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inputs: Map<String, Value> = self
            .inputs
            .iter()
            .map(|(k, v)| {
                let shown = if self.sensitive_inputs.contains_key(k) {
                    Value::String(crate::secrets::REDACTED.to_owned())
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect();
        let mut settings = self.settings.clone();
        if let Some(map) = settings.as_object_mut() {
            for k in self.sensitive_settings.keys() {
                if let Some(v) = map.get_mut(k) {
                    *v = Value::String(crate::secrets::REDACTED.to_owned());
                }
            }
        }
        f.debug_struct("ResolvedUnit")
            .field("name", &self.name)
            .field("layer", &self.layer)
            .field("kind", &self.kind)
            .field("dir", &self.dir)
            .field("inputs", &inputs)
            .field("unknown_inputs", &self.unknown_inputs)
            .field("settings", &settings)
            .field("unknown", &self.unknown)
            .field("waiting_for", &self.waiting_for)
            .field("sensitive_inputs", &self.sensitive_inputs)
            .field("sensitive_settings", &self.sensitive_settings)
            .field("adopts_from", &self.adopts_from)
            .field("target", &self.target)
            .finish()
    }
}

impl ResolvedUnit {
    /// This unit with a placeholder ([`crate::expr::UNKNOWN`]) for every
    /// input known only after apply: what `validate`, `render` and the
    /// check of a deferred unit render, to find the unit's own mistakes
    /// before its dependencies exist. Never planned or applied.
    pub fn preview(&self) -> ResolvedUnit {
        let mut unit = self.clone();
        for name in &self.unknown_inputs {
            unit.inputs
                .insert(name.clone(), Value::String(crate::expr::UNKNOWN.to_owned()));
        }
        unit
    }
}

/// A target as bound in the current environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedTarget {
    pub name: String,
    pub kind: TargetKind,
    pub binding: TargetBinding,
}

/// Where the lines a unit's external programs print go while it runs
/// (already redacted): the progress view.
#[derive(Clone)]
pub struct Lines(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl Lines {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Lines {
        Lines(std::sync::Arc::new(f))
    }

    pub fn send(&self, line: &str) {
        (self.0)(line);
    }
}

impl fmt::Debug for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lines")
    }
}

/// Where a plan is carried out.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext<'a> {
    /// The project root, absolute.
    pub root: &'a Path,
    /// Where programs' output goes while they run.
    pub lines: Option<&'a Lines>,
    /// Apply even what another tool still runs (a Flux Kustomization or
    /// Argo CD Application that is not suspended): `apply --force`.
    pub force: bool,
    /// How many things at once (`-j`): a unit acting on several hosts
    /// runs on this many at a time.
    pub jobs: usize,
}

/// Where a unit is planned or applied.
#[derive(Debug, Clone, Copy)]
pub struct UnitContext<'a> {
    /// The project root, absolute.
    pub root: &'a Path,
    pub project: &'a str,
    pub environment: &'a str,
    /// The environment's variables, for `${var.NAME}` in the unit's files.
    pub vars: &'a Map<String, Value>,
    pub unit: &'a ResolvedUnit,
    /// What was applied last time, if anything.
    pub prior: Option<&'a UnitState>,
    /// Decrypts secrets and seals what holds them; `None` where the engine
    /// offers none (tests of plain units).
    pub secrets: Option<&'a dyn SecretSource>,
    /// Whether plans may read real infrastructure to find drift (`plan
    /// --refresh=false` trusts the recorded state instead).
    pub refresh: bool,
    /// Where programs' output goes while they run; `None` keeps it quiet.
    pub lines: Option<&'a Lines>,
    /// The project's state settings: a kind with state of its own
    /// (Terraform) keeps it beside terrace's (an S3 bucket).
    pub state: Option<&'a crate::config::StateConfig>,
    /// The project's policy over rendered objects; `None`: none checked.
    pub policy: Option<&'a crate::policy::PolicyConfig>,
    /// The project's tiers (empty: none).
    pub tiers: &'a BTreeMap<String, crate::config::TierConfig>,
    /// The environment's targets, by name (a unit may act on several
    /// hosts).
    pub targets: &'a BTreeMap<String, ResolvedTarget>,
}

/// Where a unit's destruction is planned: only its state is needed, so a
/// unit removed from the repository can still be destroyed.
#[derive(Debug, Clone, Copy)]
pub struct DestroyContext<'a> {
    pub root: &'a Path,
    pub project: &'a str,
    pub environment: &'a str,
    pub prior: &'a UnitState,
    /// The unit as evaluated now, when it is still in the repository.
    pub unit: Option<&'a ResolvedUnit>,
    /// The environment's targets, by name: where a unit removed from the
    /// repository was applied.
    pub targets: &'a BTreeMap<String, ResolvedTarget>,
    /// Decrypts what reaching the target needs (a host's SOPS-encrypted
    /// SSH key); `None` where the engine offers none.
    pub secrets: Option<&'a dyn SecretSource>,
    /// Remove data too: a compose unit's volumes (`destroy --volumes`).
    pub volumes: bool,
    /// The project's state settings (see [`UnitContext::state`]).
    pub state: Option<&'a crate::config::StateConfig>,
}

/// One document a unit renders: a Kubernetes object or a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedDocument {
    pub address: String,
    /// Where it is written, relative to the project root, for file outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub content: String,
}

/// What a unit renders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rendered {
    pub documents: Vec<RenderedDocument>,
}

/// What an apply leaves behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub outputs: Map<String, Value>,
    pub inventory: Vec<InventoryItem>,
    /// Outputs that must not be stored in plain text: state records
    /// [`SENSITIVE`] in their place, and [`Driver::read_outputs`] gives the
    /// values to dependents.
    pub sensitive: Vec<String>,
}

/// What a state record holds in place of a sensitive output.
pub const SENSITIVE: &str = "(sensitive)";

/// Why a driver failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Bad input: names the file and the place.
    #[error("{0}")]
    Input(Box<Diagnostic>),
    /// The target cannot be used as configured.
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Apply stopped part way: what it left behind is recorded (as a failed
    /// apply), so prune and destroy still know every object.
    #[error("{message}")]
    Incomplete {
        applied: Box<Applied>,
        message: String,
    },
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl From<Diagnostic> for DriverError {
    fn from(d: Diagnostic) -> Self {
        DriverError::Input(Box::new(d))
    }
}

/// A unit kind.
pub trait Driver: Send + Sync + fmt::Debug {
    /// What the unit would apply, without looking at the target.
    /// Async because some kinds render through a program (`helm template`).
    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>>;

    /// Compares what the unit renders with what is there.
    fn plan<'a>(&'a self, ctx: &'a UnitContext<'a>)
    -> BoxFuture<'a, Result<UnitPlan, DriverError>>;

    /// Plans removing everything the unit manages.
    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>>;

    /// Carries out a plan this driver made.
    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>>;

    /// The outputs of an applied unit, read from where the kind keeps them
    /// (with sensitive values); `None` when the state record's outputs are
    /// the whole truth.
    fn read_outputs(
        &self,
        _root: &Path,
        _prior: &UnitState,
    ) -> Option<Result<Map<String, Value>, DriverError>> {
        None
    }

    /// Whether a no-op plan of this unit may be reused while nothing it
    /// looked at changed (see `terrace_fs::watch`): true only when the
    /// plan depends on nothing but the unit's resolved inputs, its prior
    /// state and files it reads through `terrace_fs` (no live target, no
    /// external program, no file read any other way).
    fn plan_is_reusable(&self, _ctx: &UnitContext<'_>) -> bool {
        false
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_of_a_resolved_unit_hides_its_secret_inputs() {
        let mut inputs = Map::new();
        inputs.insert("password".into(), Value::String("hunter22-secret".into()));
        inputs.insert("replicas".into(), Value::from(2));
        let unit = ResolvedUnit {
            name: "web".into(),
            layer: "apps".into(),
            kind: UnitKind::new("manifests"),
            dir: "apps/web".into(),
            inputs,
            unknown_inputs: BTreeSet::new(),
            settings: Value::Null,
            unknown: false,
            waiting_for: Vec::new(),
            sensitive_inputs: [("password".to_owned(), vec!["secrets/web.yaml".to_owned()])]
                .into_iter()
                .collect(),
            sensitive_settings: BTreeMap::new(),
            adopts_from: Vec::new(),
            target: None,
        };
        // An input known only after apply is named, not valued; only a
        // preview gives it a placeholder.
        let mut waiting = unit.clone();
        waiting.unknown_inputs.insert("endpoint".to_owned());
        assert!(!waiting.inputs.contains_key("endpoint"));
        assert_eq!(
            waiting.preview().inputs["endpoint"],
            Value::String(crate::expr::UNKNOWN.to_owned())
        );
        let shown = format!("{unit:?}");
        assert!(!shown.contains("hunter22-secret"), "{shown}");
        assert!(
            shown.contains("(sensitive)") && shown.contains("replicas"),
            "{shown}"
        );
    }
}
