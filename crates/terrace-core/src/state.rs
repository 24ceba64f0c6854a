//! The records terrace keeps: what was applied per environment and unit
//! ([`UnitState`]), the history of runs ([`RunRecord`]) and who holds a
//! unit's lock ([`LockInfo`]). Backends store them; this module only says
//! what they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::UnitKind;
use crate::plan::{Action, Outcome};

/// The version of the state format this build writes. It reads this one
/// and format 1 ([`UnitState::from_json`] upgrades it).
pub const STATE_FORMAT: u32 = 2;

/// What was applied for one unit in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitState {
    pub format: u32,
    pub unit: String,
    pub kind: UnitKind,
    pub layer: String,
    pub environment: String,
    /// Incremented on every write.
    pub serial: u64,
    /// The Git commit the project was at, with `+dirty` for uncommitted
    /// changes; absent outside Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A hash of the unit's evaluated inputs and settings.
    pub input_hash: String,
    /// A hash of everything the unit rendered.
    pub render_hash: String,
    /// Outputs that may be stored: every output but the sensitive ones.
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// Names of the outputs that are sensitive: their values are never
    /// stored here (the kind keeps them, see `Driver::read_outputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_outputs: Vec<String>,
    /// What the unit manages, for prune and destroy.
    #[serde(default)]
    pub inventory: Vec<InventoryItem>,
    pub status: UnitStatus,
    /// RFC 3339, UTC.
    pub updated_at: String,
    pub run_id: String,
}

/// One thing a unit manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum InventoryItem {
    /// A file the unit wrote: a rendered object or a generated file.
    #[serde(rename_all = "camelCase")]
    File {
        /// How plans name it (an object's address, or the path itself).
        address: String,
        /// Relative to the project root, `/`-separated.
        path: String,
        /// `sha256:` of its content as written.
        digest: String,
    },
    /// An object on a live cluster.
    #[serde(rename_all = "camelCase")]
    Object {
        object: ObjectRef,
        /// `sha256:` of what was applied; none for an object that holds
        /// secrets (a digest of a secret could be guessed at).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// A Terraform root module and how it was run.
    #[serde(rename_all = "camelCase")]
    TerraformModule {
        /// The module directory, relative to the project root.
        dir: String,
        /// The binary that applied it.
        binary: String,
        /// Who owns its backend: `terrace` or `own`.
        backend: String,
    },
    /// A resource instance in a Terraform module's state.
    #[serde(rename_all = "camelCase")]
    TerraformResource { address: String },
    /// A container on a Docker host, running a compose service.
    #[serde(rename_all = "camelCase")]
    Container { name: String, service: String },
    /// A network on a Docker host.
    #[serde(rename_all = "camelCase")]
    DockerNetwork { name: String },
    /// A volume on a Docker host (kept unless destroyed with `--volumes`).
    #[serde(rename_all = "camelCase")]
    DockerVolume { name: String },
    /// A script applied on a host: the digest of what was applied there
    /// (its inputs, files and commands).
    #[serde(rename_all = "camelCase")]
    HostScript {
        host: String,
        digest: String,
        /// The host's own variables when it was applied (`HOST_*` from
        /// its `hosts` item): its destroy command has them after it has
        /// left the unit's list.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        vars: BTreeMap<String, String>,
    },
    /// A file a script unit put on a host.
    #[serde(rename_all = "camelCase")]
    HostFile {
        host: String,
        path: String,
        digest: String,
    },
}

impl InventoryItem {
    /// How plans name it.
    pub fn address(&self) -> String {
        match self {
            InventoryItem::File { address, .. } => address.clone(),
            InventoryItem::Object { object, .. } => object.to_string(),
            InventoryItem::TerraformModule { dir, .. } => format!("terraform module {dir}"),
            InventoryItem::TerraformResource { address } => address.clone(),
            InventoryItem::Container { service, .. } => format!("service {service}"),
            InventoryItem::DockerNetwork { name } => format!("network {name}"),
            InventoryItem::DockerVolume { name } => format!("volume {name}"),
            InventoryItem::HostScript { host, .. } => format!("script on {host}"),
            InventoryItem::HostFile { host, path, .. } => format!("file {path} on {host}"),
        }
    }

    /// The file holding it, for a file.
    pub fn path(&self) -> Option<&str> {
        match self {
            InventoryItem::File { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A Kubernetes object by identity: group, version, kind, namespace
/// (none for a cluster-scoped object) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// The API group; empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    pub version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// From an address as plans write it: `apps/v1 Deployment apps/web`,
    /// `v1 Namespace apps`.
    pub fn parse(address: &str) -> Option<ObjectRef> {
        let mut parts = address.split(' ');
        let (api_version, kind, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || kind.is_empty() || rest.is_empty() {
            return None;
        }
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), api_version.to_owned()),
        };
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
            None => (None, rest.to_owned()),
        };
        Some(ObjectRef {
            group,
            version,
            kind: kind.to_owned(),
            namespace,
            name,
        })
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ", self.api_version(), self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// Why a state record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "state format {found}; this terrace reads formats 1 and {STATE_FORMAT} (a newer terrace wrote it)"
    )]
    Format { found: u64 },
}

impl UnitState {
    /// Reads a record of this format or of format 1, upgrading the
    /// latter: its inventory entries become typed items (files, objects,
    /// Terraform modules and resources), and outputs it held only as
    /// `(sensitive)` become names in `sensitive_outputs`.
    pub fn from_json(text: &str) -> Result<UnitState, RecordError> {
        /// Only the format, read without building the rest.
        #[derive(Deserialize)]
        struct Probe {
            format: Option<u64>,
        }
        let probe: Probe = serde_json::from_str(text)?;
        match probe.format {
            Some(1) => Ok(v1::upgrade(serde_json::from_str(text)?)),
            Some(f) if f == u64::from(STATE_FORMAT) => Ok(serde_json::from_str(text)?),
            Some(found) => Err(RecordError::Format { found }),
            None => Err(RecordError::Format { found: 0 }),
        }
    }
}

/// Format 1, as terrace 0.1 wrote it, and its upgrade.
mod v1 {
    use serde::Deserialize;
    use serde_json::{Map, Value};

    use super::{InventoryItem, ObjectRef, STATE_FORMAT, UnitState, UnitStatus};
    use crate::config::UnitKind;

    /// What format 1 stored in place of a sensitive output.
    const SENSITIVE: &str = "(sensitive)";
    /// Format 1's address of a Terraform module entry.
    const MODULE_ITEM: &str = "terraform module";

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Record {
        format: u32,
        unit: String,
        kind: UnitKind,
        layer: String,
        environment: String,
        serial: u64,
        #[serde(default)]
        revision: Option<String>,
        input_hash: String,
        render_hash: String,
        #[serde(default)]
        outputs: Map<String, Value>,
        #[serde(default)]
        inventory: Vec<Item>,
        status: UnitStatus,
        updated_at: String,
        run_id: String,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Item {
        address: String,
        #[serde(default)]
        path: Option<String>,
        digest: String,
    }

    pub(super) fn upgrade(r: Record) -> UnitState {
        debug_assert_eq!(r.format, 1);
        let mut outputs = Map::new();
        let mut sensitive_outputs = Vec::new();
        for (k, v) in r.outputs {
            if v.as_str() == Some(SENSITIVE) {
                sensitive_outputs.push(k);
            } else {
                outputs.insert(k, v);
            }
        }
        let inventory = r
            .inventory
            .into_iter()
            .filter_map(|i| item(r.kind.as_str(), i))
            .collect();
        UnitState {
            format: STATE_FORMAT,
            unit: r.unit,
            kind: r.kind,
            layer: r.layer,
            environment: r.environment,
            serial: r.serial,
            revision: r.revision,
            input_hash: r.input_hash,
            render_hash: r.render_hash,
            outputs,
            sensitive_outputs,
            inventory,
            status: r.status,
            updated_at: r.updated_at,
            run_id: r.run_id,
        }
    }

    /// One format-1 entry as a typed item: a path makes a file; the
    /// Terraform module entry carries its binary and backend as JSON in
    /// `digest`; other entries of a Terraform unit are its resources, and
    /// of any other unit, objects on a cluster.
    fn item(kind: &str, i: Item) -> Option<InventoryItem> {
        if let Some(path) = i.path {
            if i.address == MODULE_ITEM {
                let recorded: Value = serde_json::from_str(&i.digest).unwrap_or(Value::Null);
                return Some(InventoryItem::TerraformModule {
                    dir: path,
                    binary: recorded["binary"]
                        .as_str()
                        .unwrap_or("terraform")
                        .to_owned(),
                    backend: recorded["backend"].as_str().unwrap_or("terrace").to_owned(),
                });
            }
            return Some(InventoryItem::File {
                address: i.address,
                path,
                digest: i.digest,
            });
        }
        if kind == "terraform" {
            return Some(InventoryItem::TerraformResource { address: i.address });
        }
        let object = ObjectRef::parse(&i.address)?;
        Some(InventoryItem::Object {
            object,
            digest: (i.digest != "sensitive" && !i.digest.is_empty()).then_some(i.digest),
        })
    }
}

/// How a unit's last apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnitStatus {
    Applied,
    Failed,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub command: String,
    /// RFC 3339, UTC.
    pub acquired_at: String,
    pub run_id: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} ({}, run {})",
            self.pid, self.host, self.acquired_at, self.command, self.run_id
        )
    }
}

/// One `apply` or `destroy` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: String,
    pub command: String,
    pub environment: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A signal stopped the run before every unit was done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub units: Vec<RunUnit>,
}

/// What a run did to one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUnit {
    pub unit: String,
    /// None for a unit that was never planned (skipped, interrupted);
    /// older records wrote `-` for it.
    #[serde(default, deserialize_with = "action_or_dash")]
    pub action: Option<Action>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// An action as run history stores it: `-` (older records) or absent is
/// none.
fn action_or_dash<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Action>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("-") => Ok(None),
        Some(text) => {
            Action::deserialize(serde::de::value::StrDeserializer::<'_, D::Error>::new(text))
                .map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{
      "format": 1, "unit": "db", "kind": "manifests", "layer": "services",
      "environment": "prod", "serial": 7, "inputHash": "sha256:i",
      "renderHash": "sha256:r",
      "outputs": {"host": "db.local", "password": "(sensitive)"},
      "inventory": [
        {"address": "apps/v1 StatefulSet databases/postgres", "digest": "sha256:a"},
        {"address": "v1 Secret databases/auth", "digest": "sensitive"},
        {"address": "v1 Namespace databases", "digest": "sha256:n"},
        {"address": "v1 ConfigMap databases/c", "path": ".terrace/rendered/x.yaml", "digest": "sha256:f"}
      ],
      "status": "applied", "updatedAt": "2026-01-01T00:00:00Z", "runId": "r1"
    }"#;

    #[test]
    fn a_format_1_record_upgrades_to_typed_items() {
        let s = UnitState::from_json(V1).expect("format 1 reads");
        assert_eq!(s.format, STATE_FORMAT);
        assert_eq!(s.serial, 7);
        assert_eq!(s.sensitive_outputs, ["password"]);
        assert!(!s.outputs.contains_key("password"));
        assert_eq!(s.outputs["host"], "db.local");
        assert_eq!(
            s.inventory[0],
            InventoryItem::Object {
                object: ObjectRef {
                    group: "apps".into(),
                    version: "v1".into(),
                    kind: "StatefulSet".into(),
                    namespace: Some("databases".into()),
                    name: "postgres".into(),
                },
                digest: Some("sha256:a".into()),
            }
        );
        // A secret's digest was never recorded; a cluster-scoped object
        // has no namespace.
        assert!(matches!(
            &s.inventory[1],
            InventoryItem::Object { digest: None, .. }
        ));
        assert!(matches!(
            &s.inventory[2],
            InventoryItem::Object { object, .. } if object.namespace.is_none() && object.group.is_empty()
        ));
        assert_eq!(s.inventory[3].path(), Some(".terrace/rendered/x.yaml"));
        // Addresses read back as they were written.
        for (item, address) in s.inventory.iter().zip([
            "apps/v1 StatefulSet databases/postgres",
            "v1 Secret databases/auth",
            "v1 Namespace databases",
            "v1 ConfigMap databases/c",
        ]) {
            assert_eq!(item.address(), address);
        }
        // Written again, it is format 2 and reads back the same.
        let text = serde_json::to_string(&s).expect("serializes");
        assert_eq!(UnitState::from_json(&text).expect("format 2 reads"), s);
    }

    #[test]
    fn terraform_entries_upgrade_to_module_and_resources() {
        let v1 = r#"{"format": 1, "unit": "vms", "kind": "terraform", "layer": "infra",
          "environment": "e", "serial": 1, "inputHash": "", "renderHash": "",
          "inventory": [
            {"address": "terraform module", "path": "infra/vms", "digest": "{\"backend\":\"own\",\"binary\":\"tofu\"}"},
            {"address": "terraform_data.vm[0]", "digest": ""}
          ],
          "status": "failed", "updatedAt": "t", "runId": "r"}"#;
        let s = UnitState::from_json(v1).expect("reads");
        assert_eq!(
            s.inventory,
            [
                InventoryItem::TerraformModule {
                    dir: "infra/vms".into(),
                    binary: "tofu".into(),
                    backend: "own".into(),
                },
                InventoryItem::TerraformResource {
                    address: "terraform_data.vm[0]".into(),
                },
            ]
        );
        assert_eq!(s.status, UnitStatus::Failed);
    }

    #[test]
    fn run_history_reads_older_records_and_typed_ones() {
        let old = r#"{"id": "r", "command": "apply", "environment": "e",
          "startedAt": "a", "finishedAt": "b", "units": [
            {"unit": "x", "action": "-", "outcome": "skipped", "durationMs": 0},
            {"unit": "y", "action": "no-op", "outcome": "unchanged", "durationMs": 3}
          ]}"#;
        let run: RunRecord = serde_json::from_str(old).expect("reads");
        assert_eq!(run.units[0].action, None);
        assert_eq!(run.units[0].outcome, Outcome::Skipped);
        assert_eq!(run.units[1].action, Some(Action::NoOp));
        let again: RunRecord =
            serde_json::from_str(&serde_json::to_string(&run).expect("writes")).expect("reads");
        assert_eq!(again, run);
        let bad = old.replace("\"no-op\"", "\"nothing\"");
        assert!(serde_json::from_str::<RunRecord>(&bad).is_err());
    }

    #[test]
    fn other_formats_are_refused() {
        for text in [r#"{"format": 3}"#, r#"{"unit": "x"}"#] {
            assert!(matches!(
                UnitState::from_json(text),
                Err(RecordError::Format { .. })
            ));
        }
        assert!(matches!(
            UnitState::from_json("{not json"),
            Err(RecordError::Json(_))
        ));
    }
}
