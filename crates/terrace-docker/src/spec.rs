//! A container as terrace wants it, and the API's create body for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bollard::models as m;
use serde::{Deserialize, Serialize};

/// A container as terrace wants it. Serialized (without environment
/// values: only their names) into the container's [`crate::SPEC_LABEL`],
/// so the next plan compares field by field with what it asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The environment's values: sent in the create request only.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    /// The environment's names (what the label keeps).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub env_keys: BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// Network name → aliases. The first is the container's network mode.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Name → (soft, hard).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, (i64, i64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthSpec>,
}

/// A published (or only exposed) port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// A port or a range; `None`: exposed only, or an ephemeral port
    /// when `publish` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<String>,
    pub container_port: u16,
    pub protocol: String,
    /// Published on the host (with `host_port`, or a port the engine
    /// picks).
    #[serde(default)]
    pub publish: bool,
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A health check, durations in nanoseconds as the API takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

fn nanos(n: Option<i64>, default: Duration) -> Duration {
    n.filter(|n| *n > 0)
        .map_or(default, |n| Duration::from_nanos(n.unsigned_abs()))
}

impl HealthSpec {
    /// `NONE`: the image's check turned off.
    pub fn disabled(&self) -> bool {
        self.test.first().is_some_and(|t| t == "NONE") || self.test.is_empty()
    }

    /// Docker's defaults: 30 s each.
    pub fn interval(&self) -> Duration {
        nanos(self.interval, Duration::from_secs(30))
    }

    pub fn timeout(&self) -> Duration {
        nanos(self.timeout, Duration::from_secs(30))
    }

    /// The check as a command to exec.
    pub fn argv(&self) -> Vec<String> {
        match self.test.split_first() {
            Some((first, rest)) if first == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            Some((first, rest)) if first == "CMD" => rest.to_vec(),
            _ => self.test.clone(),
        }
    }
}

impl ContainerSpec {
    /// The JSON kept in the spec label: no environment values.
    pub fn label(&self) -> String {
        let mut s = self.clone();
        s.env_keys = self.env.keys().cloned().collect();
        s.labels.remove(crate::SPEC_LABEL);
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// This spec as the spec label holds it (names, not values, of the
    /// environment), for comparison with a live container's label.
    pub fn as_labelled(&self) -> ContainerSpec {
        let mut s = self.clone();
        s.env_keys = self.env.keys().cloned().collect();
        s.env.clear();
        s
    }

    /// The create request, and the networks to join after creation
    /// (all but the first).
    pub(crate) fn create_body(&self) -> (m::ContainerCreateBody, Vec<(String, Vec<String>)>) {
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        labels.insert(crate::SPEC_LABEL.to_owned(), self.label());
        let mut bindings: HashMap<String, Option<Vec<m::PortBinding>>> = HashMap::new();
        let mut exposed = Vec::new();
        for p in &self.ports {
            let key = format!("{}/{}", p.container_port, p.protocol);
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            if p.publish {
                bindings
                    .entry(key)
                    .or_insert_with(|| Some(Vec::new()))
                    .get_or_insert_with(Vec::new)
                    .push(m::PortBinding {
                        host_ip: p.host_ip.clone(),
                        host_port: Some(p.host_port.clone().unwrap_or_default()),
                    });
            }
        }
        let mounts = self
            .mounts
            .iter()
            .map(|mt| m::Mount {
                target: Some(mt.target.clone()),
                source: mt.source.clone(),
                typ: Some(match mt.kind.as_str() {
                    "bind" => m::MountType::BIND,
                    "tmpfs" => m::MountType::TMPFS,
                    _ => m::MountType::VOLUME,
                }),
                read_only: Some(mt.read_only),
                ..Default::default()
            })
            .collect();
        let restart = self.restart.as_deref().map(|r| {
            let (name, count) = r.split_once(':').unwrap_or((r, ""));
            m::RestartPolicy {
                name: Some(match name {
                    "always" => m::RestartPolicyNameEnum::ALWAYS,
                    "unless-stopped" => m::RestartPolicyNameEnum::UNLESS_STOPPED,
                    "on-failure" => m::RestartPolicyNameEnum::ON_FAILURE,
                    _ => m::RestartPolicyNameEnum::NO,
                }),
                maximum_retry_count: count.parse().ok(),
            }
        });
        let mut networks = self.networks.iter();
        let first = networks.next();
        let more: Vec<(String, Vec<String>)> =
            networks.map(|(n, a)| (n.clone(), a.clone())).collect();
        let host_config = m::HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: Some(mounts),
            restart_policy: restart,
            cap_add: (!self.cap_add.is_empty()).then(|| self.cap_add.clone()),
            cap_drop: (!self.cap_drop.is_empty()).then(|| self.cap_drop.clone()),
            readonly_rootfs: Some(self.read_only),
            tmpfs: (!self.tmpfs.is_empty()).then(|| {
                self.tmpfs
                    .iter()
                    .map(|t| {
                        let (path, opts) = t.split_once(':').unwrap_or((t, ""));
                        (path.to_owned(), opts.to_owned())
                    })
                    .collect()
            }),
            ulimits: (!self.ulimits.is_empty()).then(|| {
                self.ulimits
                    .iter()
                    .map(|(name, (soft, hard))| m::ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*soft),
                        hard: Some(*hard),
                    })
                    .collect()
            }),
            nano_cpus: self.nano_cpus,
            memory: self.memory,
            network_mode: first.map(|(n, _)| n.clone()),
            ..Default::default()
        };
        let body = m::ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.command.clone(),
            entrypoint: self.entrypoint.clone(),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: self.user.clone(),
            working_dir: self.working_dir.clone(),
            hostname: self.hostname.clone(),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: self.healthcheck.as_ref().map(|h| m::HealthConfig {
                test: Some(h.test.clone()),
                interval: h.interval,
                timeout: h.timeout,
                start_period: h.start_period,
                retries: h.retries,
                ..Default::default()
            }),
            host_config: Some(host_config),
            networking_config: first.map(|(n, aliases)| m::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    n.clone(),
                    m::EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        (body, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_holds_the_names_of_the_environment_but_not_its_values() {
        let spec = ContainerSpec {
            name: "p-db-1".into(),
            image: "postgres:16".into(),
            env: BTreeMap::from([("POSTGRES_PASSWORD".into(), "hunter2-secret".into())]),
            ..Default::default()
        };
        let label = spec.label();
        assert!(!label.contains("hunter2"), "{label}");
        assert!(label.contains("POSTGRES_PASSWORD"), "{label}");
        let back: ContainerSpec = serde_json::from_str(&label).expect("reads back");
        assert_eq!(back, spec.as_labelled());
        let (body, _) = spec.create_body();
        assert_eq!(
            body.env,
            Some(vec!["POSTGRES_PASSWORD=hunter2-secret".to_owned()])
        );
        let labels = body.labels.expect("labels");
        assert!(!labels[crate::SPEC_LABEL].contains("hunter2"));
    }

    #[test]
    fn a_shell_check_runs_through_sh() {
        let h = HealthSpec {
            test: vec!["CMD-SHELL".into(), "pg_isready -U app".into()],
            interval: Some(2_000_000_000),
            timeout: None,
            start_period: None,
            retries: None,
        };
        assert_eq!(h.argv(), ["/bin/sh", "-c", "pg_isready -U app"]);
        assert_eq!(h.interval(), Duration::from_secs(2));
        assert_eq!(h.timeout(), Duration::from_secs(30));
        assert!(!h.disabled());
    }
}
