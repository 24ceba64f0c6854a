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
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): a key
// that is neither a field nor a kind's name is refused by the project check.
#[serde(rename_all = "camelCase")]
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
    /// Rules checked on every Kubernetes object a unit renders, at plan
    /// time (the Pod Security Standards and best practices). Without it,
    /// none are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyConfig>,
    /// Tiers of workloads by importance (`0-core` … `4-aux`): each a
    /// PriorityClass (rendered by a `tiers` unit), and for every namespace
    /// of the tier a LimitRange and a ResourceQuota.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Where units act: clusters, Docker hosts, machines.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// How `terrace serve` treats each layer, and whom it tells.
    #[serde(default, skip_serializing_if = "ServeConfig::is_empty")]
    pub serve: ServeConfig,
    /// Defaults for every unit of a kind, under the kind's name
    /// (`terraform: {binary: tofu}`): the same settings as the kind's block
    /// in `unit.yaml`, which wins key by key.
    #[serde(flatten)]
    pub defaults: BTreeMap<String, Value>,
}

/// `serve:` in terrace.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServeConfig {
    /// Per layer, by name; a layer not listed is `auto` with drift
    /// reported every 10 minutes and not healed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, LayerServe>,
    /// Where events are sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyConfig>,
}

impl ServeConfig {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.notify.is_empty()
    }
}

/// How the daemon treats one layer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LayerServe {
    /// `auto` applies what a revision changes (default); `approve` plans
    /// it and applies that plan once approved (`POST /api/v1/approve`);
    /// `plan` only reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServePolicy>,
    /// Apply again what drifted (default false: drift is reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_heal: Option<bool>,
    /// How often every unit of the layer is planned against what is live,
    /// as `10m` (default) or `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_interval: Option<crate::kind::Timeout>,
}

/// What the daemon does with a layer's changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServePolicy {
    #[default]
    Auto,
    Approve,
    Plan,
}

/// One place events are sent to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyConfig {
    /// `webhook` (JSON, signed with HMAC-SHA256 in `X-Terrace-Signature`
    /// when `secretEnv` names a secret), `slack` or `discord` (their
    /// incoming-webhook payloads).
    pub kind: NotifyKind,
    /// The URL; or `urlEnv`, the environment variable that holds it (a
    /// Slack or Discord URL is a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The environment variable holding the signing secret (`webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Which events (default: all): `applied`, `failed`, `drift`,
    /// `recovered`, `planned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Webhook,
    Slack,
    Discord,
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

/// One tier of `tiers:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierConfig {
    /// The PriorityClass's value: higher is scheduled first and evicted
    /// last (at most 1000000000).
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Namespaces of the tier, besides those whose Namespace object is
    /// labelled `terrace.dev/tier: <tier>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Requests and limits a container of the tier gets when it sets
    /// none (the LimitRange's defaults, and an app's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<TierResources>,
    /// The most one container may ask for (`{cpu: "2", memory: 2Gi}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, Value>,
    /// The namespace's ResourceQuota (`requests.cpu: "4"`, `pods: 50`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota: BTreeMap<String, Value>,
}

/// Requests and limits of a tier's containers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Value>,
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
    /// For `s3`: the bucket. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), never from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// For `s3`: a key prefix (`terrace/homelab`); records live under
    /// `<prefix>/<environment>/units/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// For `s3`: an S3-compatible store's URL (MinIO, R2, SeaweedFS:
    /// `https://s3.home.arpa`); without one, AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// For `s3`: the region (default `AWS_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// For `etcd`: the members' client URLs, as `https://etcd1:2379`
    /// (plain `http://` only to this machine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// For `etcd`: TLS files, relative to the project root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StateTls>,
    /// For `etcd`: how long the lock of a holder that died stays (default
    /// `30s`); a live holder renews it every third of that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_ttl: Option<crate::kind::Timeout>,
    /// Encryption at rest of every record and run (for `s3` and `etcd`):
    /// a leaked bucket or etcd snapshot leaks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<StateEncryption>,
}

/// TLS to a state server, files relative to the project root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateTls {
    /// The CA that signed the servers' certificates (PEM).
    pub ca: String,
    /// A client certificate (PEM), for servers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The client certificate's key (PEM). It is read as it is: keep it
    /// out of the repository (a path under `~` or `/etc` works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How state is encrypted at rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateEncryption {
    /// The age recipients (`age1…`, `ssh-ed25519 …`) every record is
    /// encrypted to; decrypted with keys from where SOPS keys are found.
    /// Rotation: add the new recipient, apply or migrate, remove the old.
    pub age: Vec<String>,
    /// `plaintext`: read records written before encryption was turned on
    /// (each is encrypted at its next write). Without it a plaintext
    /// record is refused: someone who can write to the bucket could
    /// plant one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<EncryptionFallback>,
}

/// What is read besides encrypted records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EncryptionFallback {
    Plaintext,
}

/// The state backends terrace knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StateBackendKind {
    /// Files under the project's `.terrace/state/`.
    #[default]
    Local,
    /// An S3-compatible bucket: locks by conditional create, records
    /// written by compare-and-swap, so a team and a daemon share them.
    S3,
    /// An etcd v3 cluster: records written in transactions comparing
    /// revisions, locks on leases that lapse when their holder dies.
    Etcd,
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
    /// For a Docker host: the engine's address, `unix:///var/run/docker.sock`,
    /// `tcp://HOST:2376` (with `tls`) or `ssh://USER@HOST[:PORT]`. Without
    /// one, a docker target is the embedded default (rendered files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For a Docker host over TCP: client certificate, key and CA files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DockerTls>,
    /// For a Docker host over SSH: the known_hosts file that holds the
    /// host's key (an unknown or changed key is refused), the private key,
    /// and the engine's socket on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<DockerSsh>,
    /// For a Docker host: the address other units reach its published
    /// ports at (outputs' `host`). Default: the host's name, or
    /// `127.0.0.1` for a Unix socket. For a host: where SSH reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// For a host: the SSH login, connection and key settings.
    #[serde(flatten)]
    pub ssh_host: HostSsh,
}

/// How a host target is reached over SSH (or run locally).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostSsh {
    /// The user to log in as (default: ssh's own choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The SSH port (default 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The private key to log in with (relative to the project root, or
    /// `~/…`); a SOPS-encrypted key is decrypted in memory and handed to
    /// a private ssh-agent, never written out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The host's public key, as `ssh-ed25519 AAAA…`: an unknown or
    /// changed key is refused, never accepted on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Or a known_hosts file holding the host's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// Run commands as root through `sudo -n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<bool>,
    /// This machine: commands run here, without SSH (in the project
    /// root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// Where the host's file system starts for units' files and scripts
    /// (`$TERRACE_ROOT`), as a staging directory or `DESTDIR`: absolute, or
    /// for a local host relative to the project root. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

impl HostSsh {
    /// `self` with every field `other` sets replaced.
    pub fn overlay(&self, other: &HostSsh) -> HostSsh {
        HostSsh {
            user: other.user.clone().or_else(|| self.user.clone()),
            port: other.port.or(self.port),
            identity: other.identity.clone().or_else(|| self.identity.clone()),
            host_key: other.host_key.clone().or_else(|| self.host_key.clone()),
            known_hosts: other
                .known_hosts
                .clone()
                .or_else(|| self.known_hosts.clone()),
            sudo: other.sudo.or(self.sudo),
            local: other.local.or(self.local),
            root: other.root.clone().or_else(|| self.root.clone()),
        }
    }
}

/// TLS client files of a Docker host reached over TCP (paths relative to
/// the project root, or `~/…`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// How a Docker host is reached over SSH.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerSsh {
    /// A known_hosts file holding the host's key (required: the key is
    /// checked, never accepted on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// The private key to log in with (default: ssh's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The engine's socket on the host. Default `/var/run/docker.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl TargetConfig {
    /// The target's own settings, before any environment's binding.
    pub fn binding(&self) -> TargetBinding {
        TargetBinding {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            in_cluster: None,
            host: self.host.clone(),
            tls: self.tls.clone(),
            ssh: self.ssh.clone(),
            address: self.address.clone(),
            ssh_host: self.ssh_host.clone(),
            kubeconfig_inline: None,
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
    /// A Docker (or Podman) engine. Without a `host` it is the embedded
    /// default: the planned containers are written under
    /// `.terrace/rendered/`.
    Docker,
    /// A machine reached over SSH (or this one, `local: true`), where
    /// `script` and `ansible` units run.
    Host,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKind::Cluster => f.write_str("cluster"),
            TargetKind::Docker => f.write_str("docker"),
            TargetKind::Host => f.write_str("host"),
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
    /// A Docker host's engine address (see the target's `host`).
    /// `terrace --docker TARGET=HOST` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A Docker host's TLS client files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DockerTls>,
    /// How a Docker host is reached over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<DockerSsh>,
    /// Where other units reach a Docker host's published ports; where
    /// SSH reaches a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A host's SSH settings in this environment.
    #[serde(flatten)]
    pub ssh_host: HostSsh,
    /// A cluster's kubeconfig given whole by a unit's output
    /// (`kubeconfig: ${unit.k3s.outputs.kubeconfig}`), resolved for each
    /// unit that acts on the target: kept in memory, never written out.
    #[serde(skip)]
    #[schemars(skip)]
    pub kubeconfig_inline: Option<InlineKubeconfig>,
}

/// A kubeconfig's text, from a unit's output: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct InlineKubeconfig(pub std::sync::Arc<String>);

impl fmt::Debug for InlineKubeconfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InlineKubeconfig(from a unit output)")
    }
}

impl TargetBinding {
    /// Whether the kubeconfig is a unit's output (an expression).
    pub fn kubeconfig_from_output(&self) -> Option<&str> {
        self.kubeconfig.as_deref().filter(|k| k.contains("${"))
    }
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
                ..TargetBinding::default()
            };
        }
        if other.host.is_some() {
            // A new engine: its TLS and SSH settings go with it.
            return TargetBinding {
                host: other.host.clone(),
                tls: other.tls.clone(),
                ssh: other.ssh.clone(),
                address: other.address.clone(),
                ..TargetBinding::default()
            };
        }
        let ssh_host = self.ssh_host.overlay(&other.ssh_host);
        TargetBinding {
            host: self.host.clone(),
            tls: other.tls.clone().or_else(|| self.tls.clone()),
            ssh: other.ssh.clone().or_else(|| self.ssh.clone()),
            address: other.address.clone().or_else(|| self.address.clone()),
            kubeconfig: other.kubeconfig.clone().or_else(|| self.kubeconfig.clone()),
            context: other.context.clone().or_else(|| self.context.clone()),
            in_cluster: if other.kubeconfig.is_some() {
                other.in_cluster
            } else {
                other.in_cluster.or(self.in_cluster)
            },
            ssh_host,
            kubeconfig_inline: None,
        }
    }

    /// Whether this binding reaches a live cluster (else it is the
    /// embedded default: rendered files).
    pub fn is_live(&self) -> bool {
        self.kubeconfig.is_some()
            || self.kubeconfig_inline.is_some()
            || self.in_cluster == Some(true)
            || self.host.is_some()
    }
}

/// `unit.yaml`: one unit of infrastructure.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): a key
// that is neither a field nor the kind's name is refused by the project check.
#[serde(rename_all = "camelCase")]
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
    /// `always` (the default): every apply reconciles the unit. `once`:
    /// applied when it never was; afterwards plans show it as applied and
    /// never change it (a bootstrap that GitOps then owns), unless
    /// `terrace apply --unit NAME --replace`.
    #[serde(default, skip_serializing_if = "Lifecycle::is_always")]
    pub lifecycle: Lifecycle,
    /// Gives this unit's objects to another unit without deleting them:
    /// that unit's first apply adopts them, and this unit's prune and
    /// destroy leave them alone. Needs `lifecycle: once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over: Option<HandOver>,
    /// The kind's own settings, under the key of the kind's name
    /// (`terraform: {...}` in a `terraform` unit). Checked against the kind
    /// when the project loads (`terrace_core::kind`).
    #[serde(flatten)]
    pub settings: BTreeMap<String, Value>,
}

/// When a unit is reconciled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// On every apply.
    #[default]
    Always,
    /// Once; later plans leave it alone.
    Once,
}

impl Lifecycle {
    pub fn is_always(&self) -> bool {
        *self == Lifecycle::Always
    }
}

/// Where a unit's objects go: `handOver: {to: UNIT}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandOver {
    /// The unit that takes the objects over (its first apply adopts them).
    pub to: String,
}

impl UnitFile {
    /// The settings block of the unit's own kind (`None` when absent).
    pub fn own_settings(&self) -> Option<&Value> {
        self.settings.get(self.kind.as_str())
    }
}

/// The name of a unit kind (`manifests`, `terraform`, ...): one of the
/// kinds of the [`crate::kind::Registry`] the engine was given, checked when
/// the project loads.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(transparent)]
pub struct UnitKind(String);

impl UnitKind {
    pub fn new(name: impl Into<String>) -> Self {
        UnitKind(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for UnitKind {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for UnitKind {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
// Unknown keys are refused by the project check, as in `UnitFile`.
#[serde(rename_all = "camelCase")]
pub struct UnitOverride {
    /// Input keys that replace the unit's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// Another target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Settings keys of the unit's kind that replace the unit's own, under
    /// the kind's name (`terraform: {refresh: false}`).
    #[serde(flatten)]
    pub settings: BTreeMap<String, Value>,
}

impl UnitOverride {
    /// The settings keys this override gives for `kind`.
    pub fn settings_of(&self, kind: &UnitKind) -> Option<&Value> {
        self.settings.get(kind.as_str())
    }
}
