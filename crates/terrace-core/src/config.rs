//! The two files a user writes: `terrace.yaml` at the project root
//! ([`ProjectFile`]) and `unit.yaml` in each unit directory ([`UnitFile`]).
//!
//! Parsing is strict: an unknown field is an error, so a typo never turns
//! into a silently ignored setting. The JSON Schemas published under
//! `schemas/` are generated from these types.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The name of the file that marks a project root.
pub const PROJECT_FILE: &str = "terrace.yaml";
/// The name of the file that marks a unit directory.
pub const UNIT_FILE: &str = "unit.yaml";
/// The file listing paths discovery skips, gitignore syntax.
pub const IGNORE_FILE: &str = ".terraceignore";
/// terrace's own working directory under the project root.
pub const WORK_DIR: &str = ".terrace";

/// `terrace.yaml`: the project, its layers, environments, targets and state.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "terrace project (terrace.yaml)")]
pub struct ProjectFile {
    /// The project's name; it labels state, rendered output and objects.
    pub name: String,
    /// The layers, lowest first. A unit may depend only on units in its own
    /// or a lower layer.
    pub layers: Vec<String>,
    /// Variables every environment starts from (`${var.NAME}`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map<String, Value>,
    /// Named instances of the whole project, each with its own variables,
    /// target bindings and state.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// The environment used when `--env` is not given. Required when there
    /// is more than one environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_environment: Option<String>,
    /// Where state is kept.
    #[serde(default)]
    pub state: StateConfig,
    /// Where units act: clusters, Docker hosts, machines.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Defaults for `terraform` units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform: Option<TerraformProject>,
}

/// Project-wide settings of `terraform` units.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TerraformProject {
    /// The binary: `tofu`, `terraform`, or a path (default: `tofu` when it
    /// is on the PATH, else `terraform`; `TERRACE_TERRAFORM` overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// One environment: variables and target bindings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvironmentConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// YAML files of variables, relative to the project root, read in order;
    /// later files win, and `vars` wins over all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub var_files: Vec<String>,
    /// Variables for this environment (`${var.NAME}`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map<String, Value>,
    /// Per-environment settings of the project's targets, by target name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, TargetBinding>,
}

/// Where state is kept.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateConfig {
    #[serde(default)]
    pub backend: StateBackendKind,
    /// For `local`: the state directory, relative to the project root.
    /// Default `.terrace/state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The state backends terrace knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StateBackendKind {
    /// Files under the project's `.terrace/state/`.
    #[default]
    Local,
}

/// A target: somewhere units act.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetConfig {
    /// What kind of place this is.
    #[serde(rename = "type")]
    pub kind: TargetKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a cluster: the kubeconfig file shared by every environment (an
    /// environment's binding overrides it). Without one, a cluster target is
    /// the embedded default (rendered files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// For a cluster: the kubeconfig context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl TargetConfig {
    /// The target's own settings, before any environment's binding.
    pub fn binding(&self) -> TargetBinding {
        TargetBinding {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            in_cluster: None,
        }
    }
}

/// The kinds of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetKind {
    /// A Kubernetes cluster. Without a kubeconfig it is the embedded default:
    /// rendered manifests are written under `.terrace/rendered/`.
    Cluster,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKind::Cluster => f.write_str("cluster"),
        }
    }
}

/// Where exactly a target is, in one environment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetBinding {
    /// Path to a kubeconfig file (relative to the project root, or `~/…`).
    /// With one, the cluster target is a live cluster; without one (and
    /// without `inCluster`), it is the embedded default (rendered files).
    /// `terrace --cluster TARGET=KUBECONFIG` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Reach the cluster terrace runs in, through the pod's service
    /// account (instead of a kubeconfig).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<bool>,
}

impl TargetBinding {
    /// `self` with every field `other` sets replaced. A new place
    /// replaces the old one whole: `inCluster: true` drops the kubeconfig
    /// and its context, and a kubeconfig drops `inCluster`.
    pub fn overlay(&self, other: &TargetBinding) -> TargetBinding {
        if other.in_cluster == Some(true) {
            return TargetBinding {
                kubeconfig: None,
                context: other.context.clone(),
                in_cluster: Some(true),
            };
        }
        TargetBinding {
            kubeconfig: other.kubeconfig.clone().or_else(|| self.kubeconfig.clone()),
            context: other.context.clone().or_else(|| self.context.clone()),
            in_cluster: if other.kubeconfig.is_some() {
                other.in_cluster
            } else {
                other.in_cluster.or(self.in_cluster)
            },
        }
    }

    /// Whether this binding reaches a live cluster (else it is the
    /// embedded default: rendered files).
    pub fn is_live(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster == Some(true)
    }
}

/// `unit.yaml`: one unit of infrastructure.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "terrace unit (unit.yaml)")]
pub struct UnitFile {
    /// The unit's name, unique in the project. Defaults to the directory name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The layer this unit belongs to; one of the project's `layers`.
    pub layer: String,
    /// What kind of unit this is; the kind's own settings go under a key of
    /// the same name.
    pub kind: UnitKind,
    /// Units that must be applied before this one. References to
    /// `${unit.NAME.outputs...}` add dependencies on their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Values the kind works with; may use `${...}` expressions.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// The name of the project target this unit acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The environments this unit exists in (all, by default).
    #[serde(default, skip_serializing_if = "EnvironmentFilter::is_empty")]
    pub environments: EnvironmentFilter,
    /// Per-environment changes, by environment name. Each input key and
    /// settings key given here replaces the unit's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, UnitOverride>,
    /// Settings of a `manifests` unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<ManifestsSettings>,
    /// Settings of a `template` unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSettings>,
    /// Settings of a `terraform` unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform: Option<TerraformSettings>,
    /// Settings of a `kustomize` unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizeSettings>,
}

impl UnitFile {
    /// The settings block of `kind`, as a map (`None` when absent).
    pub fn settings_of(&self, kind: UnitKind) -> Option<Map<String, Value>> {
        fn to_map<T: Serialize>(t: &T) -> Map<String, Value> {
            match serde_json::to_value(t) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            }
        }
        match kind {
            UnitKind::Manifests => self.manifests.as_ref().map(to_map),
            UnitKind::Template => self.template.as_ref().map(to_map),
            UnitKind::Terraform => self.terraform.as_ref().map(to_map),
            UnitKind::Kustomize => self.kustomize.as_ref().map(to_map),
        }
    }
}

/// The unit kinds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum UnitKind {
    /// A directory of Kubernetes YAML with `${...}` substitution.
    Manifests,
    /// Files rendered from Jinja templates, optionally once per list item.
    Template,
    /// A Terraform or OpenTofu root module (the unit directory), with state
    /// per environment and unit.
    Terraform,
    /// A kustomization directory, built by terrace's own Kustomize engine
    /// (the same objects `kustomize build` prints).
    Kustomize,
}

impl UnitKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [UnitKind; 4] = [
        UnitKind::Manifests,
        UnitKind::Kustomize,
        UnitKind::Template,
        UnitKind::Terraform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Manifests => "manifests",
            UnitKind::Template => "template",
            UnitKind::Terraform => "terraform",
            UnitKind::Kustomize => "kustomize",
        }
    }

    /// Whether this kind acts on a target, and which kind of target.
    pub fn target_kind(self) -> Option<TargetKind> {
        match self {
            UnitKind::Manifests | UnitKind::Kustomize => Some(TargetKind::Cluster),
            UnitKind::Template | UnitKind::Terraform => None,
        }
    }
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which environments a unit exists in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvironmentFilter {
    /// Only these environments (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never these environments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl EnvironmentFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn admits(&self, env: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|e| e == env))
            && !self.exclude.iter().any(|e| e == env)
    }
}

/// What one environment changes in a unit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UnitOverride {
    /// Input keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// Another target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `manifests` settings keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Map<String, Value>>,
    /// `template` settings keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Map<String, Value>>,
    /// `terraform` settings keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform: Option<Map<String, Value>>,
    /// `kustomize` settings keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<Map<String, Value>>,
}

impl UnitOverride {
    /// The settings keys this override gives for `kind`.
    pub fn settings_of(&self, kind: UnitKind) -> Option<&Map<String, Value>> {
        match kind {
            UnitKind::Manifests => self.manifests.as_ref(),
            UnitKind::Template => self.template.as_ref(),
            UnitKind::Terraform => self.terraform.as_ref(),
            UnitKind::Kustomize => self.kustomize.as_ref(),
        }
    }
}

/// Settings of a `terraform` unit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TerraformSettings {
    /// `terrace` (default): terrace owns the backend, with local state under
    /// `.terrace/terraform/<env>/<unit>/` (it writes
    /// `terrace_backend_override.tf.json` into the module). `own`: the
    /// module's own `backend` block is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The binary for this unit (default: the project's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Whether plans refresh from real infrastructure (default true);
    /// `false` is the fast path that trusts the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<bool>,
}

/// Settings of a `manifests` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestsSettings {
    /// The directory of YAML files, relative to the unit directory
    /// (default: the unit directory itself, without `unit.yaml`). Every
    /// `*.yaml` and `*.yml` file under it is read, in path order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplySettings>,
}

/// How a unit's objects are applied to a live cluster (a cluster target
/// bound to a kubeconfig or in-cluster).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplySettings {
    /// When a field the unit sets is owned by another field manager (an
    /// autoscaler's `spec.replicas`): `yield` leaves it to its owner and
    /// says so in the plan (default), `force` takes it over, `error` fails
    /// the plan naming the fields and their owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<ConflictPolicy>,
    /// Wait after apply until the objects are healthy (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// How long the waits of one apply may take, as `90s`, `5m` or `1h`
    /// (default `5m`). Dependents of a unit that is not healthy in time do
    /// not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// What to do with a field another field manager owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    Yield,
    Force,
    Error,
}

/// Settings of a `kustomize` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeSettings {
    /// The kustomization directory, relative to the unit directory (default:
    /// the unit directory itself). One unit usually serves every
    /// environment through its overlay: `overlays/${env}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplySettings>,
}

/// Settings of a `template` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateSettings {
    /// A template file or a directory of them, relative to the unit
    /// directory (default `templates`). A file's `.j2` or `.jinja` suffix is
    /// dropped from the name of what it renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where rendered files go, relative to the project root (default
    /// `.terrace/generated/<env>/<unit>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A list: the templates are rendered once per item, each into its own
    /// subdirectory, with the item as `item` and its position as `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Value>,
    /// The subdirectory for each item, as a template (default
    /// `{{ item.name }}` when items have a name, else the index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(path: &str, context: Option<&str>) -> TargetBinding {
        TargetBinding {
            kubeconfig: Some(path.into()),
            context: context.map(Into::into),
            in_cluster: None,
        }
    }

    #[test]
    fn an_overlay_replaces_the_place_whole() {
        let base = kubeconfig("a.yaml", Some("admin"));
        // A context alone keeps the kubeconfig.
        let ctx = TargetBinding {
            context: Some("ci".into()),
            ..TargetBinding::default()
        };
        assert_eq!(base.overlay(&ctx), kubeconfig("a.yaml", Some("ci")));
        // In-cluster drops the kubeconfig and its context.
        let inside = TargetBinding {
            in_cluster: Some(true),
            ..TargetBinding::default()
        };
        let b = base.overlay(&inside);
        assert_eq!(
            (b.kubeconfig, b.context, b.in_cluster),
            (None, None, Some(true))
        );
        // A kubeconfig drops in-cluster.
        let b = base.overlay(&inside).overlay(&kubeconfig("b.yaml", None));
        assert_eq!(b, kubeconfig("b.yaml", None));
        assert!(b.is_live());
    }
}
