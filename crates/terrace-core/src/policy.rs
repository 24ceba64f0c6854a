//! Policy over rendered Kubernetes objects: the Pod Security Standards'
//! baseline and restricted checks (as the API server's Pod Security
//! admission makes them, v1.33) and common best practices, evaluated at
//! plan time on every object a unit renders, whatever its kind.
//!
//! [`findings`] is pure: an object in, what it breaks out, each with the
//! field at fault. [`PolicyConfig`] (terrace.yaml's `policy:`) says how
//! much each rule matters where: `enforce` fails the unit's plan, `audit`
//! lists it, `off` ignores it. An object is exempted from rules by its
//! annotation `terrace.dev/policy-exempt: "rule,rule  # reason"` (the
//! reason is required).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The annotation that exempts an object from rules.
pub const EXEMPT: &str = "terrace.dev/policy-exempt";

/// How much a rule matters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Off,
    Audit,
    Enforce,
}

/// `policy:` in terrace.yaml. Keys of `rules`, `layers.*` and
/// `namespaces.*` are rule names or groups (`pss-baseline`,
/// `pss-restricted`, which includes the baseline, `best-practices`); a
/// namespace's setting wins over its layer's, a layer's over `rules`, a
/// rule over its group.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyConfig {
    /// The level of every rule not named (default `audit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Level>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, Level>,
    /// By layer name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, BTreeMap<String, Level>>,
    /// By namespace of the object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, BTreeMap<String, Level>>,
}

/// Which standard a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Baseline,
    Restricted,
    BestPractices,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Baseline => "pss-baseline",
            Group::Restricted => "pss-restricted",
            Group::BestPractices => "best-practices",
        }
    }
}

macro_rules! rules {
    ($($variant:ident = $id:literal, $group:ident, $about:literal;)*) => {
        /// A built-in rule.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Rule { $($variant,)* }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// Its name in `policy:` and in exemptions.
            pub fn id(self) -> &'static str {
                match self { $(Rule::$variant => $id,)* }
            }

            pub fn group(self) -> Group {
                match self { $(Rule::$variant => Group::$group,)* }
            }

            /// What it requires.
            pub fn about(self) -> &'static str {
                match self { $(Rule::$variant => $about,)* }
            }
        }
    };
}

rules! {
    HostProcess = "host-process", Baseline, "no Windows HostProcess containers";
    HostNamespaces = "host-namespaces", Baseline, "no hostNetwork, hostPID or hostIPC";
    Privileged = "privileged", Baseline, "no privileged containers";
    CapabilitiesBaseline = "capabilities-baseline", Baseline, "no capabilities added beyond the default set";
    HostPathVolumes = "host-path-volumes", Baseline, "no hostPath volumes";
    HostPorts = "host-ports", Baseline, "no host ports";
    AppArmor = "app-armor", Baseline, "AppArmor not turned off";
    SeLinux = "se-linux", Baseline, "no custom SELinux user, role or type";
    ProcMount = "proc-mount", Baseline, "the default /proc mount";
    SeccompBaseline = "seccomp-baseline", Baseline, "seccomp not Unconfined";
    Sysctls = "sysctls", Baseline, "only safe sysctls";
    VolumeTypes = "volume-types", Restricted, "only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected and secret volumes";
    PrivilegeEscalation = "privilege-escalation", Restricted, "allowPrivilegeEscalation: false in every container";
    RunAsNonRoot = "run-as-non-root", Restricted, "runAsNonRoot: true";
    RunAsUser = "run-as-user", Restricted, "no runAsUser: 0";
    SeccompRestricted = "seccomp-restricted", Restricted, "seccomp RuntimeDefault or Localhost";
    CapabilitiesRestricted = "capabilities-restricted", Restricted, "capabilities drop ALL, and add at most NET_BIND_SERVICE";
    Resources = "resources", BestPractices, "CPU and memory requests and a memory limit on every container";
    Probes = "probes", BestPractices, "liveness and readiness probes on long-running containers";
    ImageTag = "image-tag", BestPractices, "images pinned by a tag other than latest, or a digest";
    ReadOnlyRootFilesystem = "read-only-root-filesystem", BestPractices, "readOnlyRootFilesystem: true";
    ServiceAccountToken = "service-account-token", BestPractices, "the service account token not mounted (automountServiceAccountToken: false)";
    PriorityClass = "priority-class", BestPractices, "a priorityClassName on every pod";
}

impl Rule {
    pub fn parse(id: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.id() == id)
    }

    /// Whether `name` (a rule or a group) names this rule.
    fn named_by(self, name: &str) -> bool {
        name == self.id()
            || name == self.group().name()
            || (name == Group::Restricted.name() && self.group() == Group::Baseline)
    }
}

/// Whether `name` is a rule or a group.
pub fn is_known(name: &str) -> bool {
    Rule::parse(name).is_some()
        || [
            Group::Baseline.name(),
            Group::Restricted.name(),
            Group::BestPractices.name(),
        ]
        .contains(&name)
}

/// The setting of `rule` in one map: its own, else its group's.
fn setting(map: &BTreeMap<String, Level>, rule: Rule) -> Option<Level> {
    map.get(rule.id()).copied().or_else(|| {
        map.iter()
            .filter(|(k, _)| *k != rule.id() && rule.named_by(k))
            // The narrower group wins: pss-baseline over pss-restricted.
            .min_by_key(|(k, _)| k.as_str() != rule.group().name())
            .map(|(_, v)| *v)
    })
}

impl PolicyConfig {
    /// How much `rule` matters for an object of `layer` in `namespace`.
    pub fn level(&self, rule: Rule, layer: &str, namespace: Option<&str>) -> Level {
        namespace
            .and_then(|ns| self.namespaces.get(ns))
            .and_then(|m| setting(m, rule))
            .or_else(|| self.layers.get(layer).and_then(|m| setting(m, rule)))
            .or_else(|| setting(&self.rules, rule))
            .unwrap_or(self.default.unwrap_or(Level::Audit))
    }

    /// Names in the settings that are neither rules nor groups.
    pub fn unknown_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .keys()
            .chain(self.layers.values().flat_map(BTreeMap::keys))
            .chain(self.namespaces.values().flat_map(BTreeMap::keys))
            .filter(|k| !is_known(k))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One rule an object breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// The field at fault, as `spec.template.spec.containers[0].securityContext.privileged`.
    pub field: String,
    pub message: String,
}

/// The object's exemptions: the rules (and groups) it names, when it
/// gives a reason; `Err` with the annotation when it gives none.
pub fn exemptions(object: &Value) -> Result<Vec<String>, String> {
    let Some(text) = object["metadata"]["annotations"][EXEMPT].as_str() else {
        return Ok(Vec::new());
    };
    let (names, reason) = text.split_once('#').unwrap_or((text, ""));
    if reason.trim().is_empty() {
        return Err(text.to_owned());
    }
    Ok(names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Whether `exempt` (names from [`exemptions`]) exempts `rule`.
pub fn is_exempt(exempt: &[String], rule: Rule) -> bool {
    exempt.iter().any(|n| rule.named_by(n))
}

/// Where the pod template of an object of `kind` sits (its `metadata`
/// and `spec`): the object itself for a Pod; `None` for kinds that make
/// no pod.
pub fn pod_template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The pod spec an object makes, with where it sits and its pod
/// metadata; `None` for objects that make no pod.
fn pod_of(object: &Value) -> Option<(&Value, &Value, String)> {
    let path = pod_template_path(object["kind"].as_str()?)?;
    let template = path.iter().fold(object, |v, k| &v[*k]);
    let at = path
        .iter()
        .chain(&["spec"])
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    Some((&template["spec"], &template["metadata"], at))
}

/// Every container of a pod spec: (field, container).
fn containers<'a>(spec: &'a Value, at: &str) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            out.push((format!("{at}.{list}[{i}]"), c));
        }
    }
    out
}

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Whether an image reference is pinned (a tag other than `latest`, or a
/// digest).
pub fn image_pinned(image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    matches!(last.split_once(':'), Some((_, tag)) if !tag.is_empty() && tag != "latest")
}

/// Every rule the object breaks.
pub fn findings(object: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |rule: Rule, field: String, message: String| {
        out.push(Finding {
            rule,
            field,
            message,
        });
    };
    if object["kind"] == "ServiceAccount" && object["automountServiceAccountToken"] != false {
        add(
            Rule::ServiceAccountToken,
            "automountServiceAccountToken".into(),
            "the service account's token is mounted into its pods".into(),
        );
    }
    let Some((spec, pod_meta, at)) = pod_of(object) else {
        return out;
    };
    let at = at.as_str();
    let pod_sc = &spec["securityContext"];
    let all = containers(spec, at);
    let long_running = !matches!(object["kind"].as_str(), Some("Job" | "CronJob" | "Pod"));

    // Baseline.
    if pod_sc["windowsOptions"]["hostProcess"] == true {
        add(
            Rule::HostProcess,
            format!("{at}.securityContext.windowsOptions.hostProcess"),
            "is true".into(),
        );
    }
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[ns] == true {
            add(Rule::HostNamespaces, format!("{at}.{ns}"), "is true".into());
        }
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let Some(m) = v.as_object() else { continue };
        if m.contains_key("hostPath") {
            add(
                Rule::HostPathVolumes,
                format!("{at}.volumes[{i}].hostPath"),
                format!(
                    "volume `{}` mounts a path of the node",
                    v["name"].as_str().unwrap_or("?")
                ),
            );
        }
        if let Some(kind) = m.keys().find(|k| *k != "name")
            && !RESTRICTED_VOLUMES.contains(&kind.as_str())
        {
            add(
                Rule::VolumeTypes,
                format!("{at}.volumes[{i}].{kind}"),
                format!(
                    "volume `{}` is of type {kind}",
                    v["name"].as_str().unwrap_or("?")
                ),
            );
        }
    }
    for (i, s) in pod_sc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(name) = s["name"].as_str()
            && !SAFE_SYSCTLS.contains(&name)
        {
            add(
                Rule::Sysctls,
                format!("{at}.securityContext.sysctls[{i}]"),
                format!("sysctl {name} is not among the safe ones"),
            );
        }
    }
    for (field, sc) in std::iter::once((format!("{at}.securityContext"), pod_sc)).chain(
        all.iter()
            .map(|(f, c)| (format!("{f}.securityContext"), &c["securityContext"])),
    ) {
        let o = &sc["seLinuxOptions"];
        if let Some(t) = o["type"].as_str()
            && !SELINUX_TYPES.contains(&t)
        {
            add(
                Rule::SeLinux,
                format!("{field}.seLinuxOptions.type"),
                format!("type {t} is not allowed"),
            );
        }
        for part in ["user", "role"] {
            if o[part].as_str().is_some_and(|s| !s.is_empty()) {
                add(
                    Rule::SeLinux,
                    format!("{field}.seLinuxOptions.{part}"),
                    format!("sets a {part}"),
                );
            }
        }
        if let Some(t) = sc["appArmorProfile"]["type"].as_str()
            && t != "RuntimeDefault"
            && t != "Localhost"
        {
            add(
                Rule::AppArmor,
                format!("{field}.appArmorProfile.type"),
                format!("is {t}"),
            );
        }
        if sc["seccompProfile"]["type"] == "Unconfined" {
            add(
                Rule::SeccompBaseline,
                format!("{field}.seccompProfile.type"),
                "is Unconfined".into(),
            );
        }
        if sc["windowsOptions"]["hostProcess"] == true && field != format!("{at}.securityContext") {
            add(
                Rule::HostProcess,
                format!("{field}.windowsOptions.hostProcess"),
                "is true".into(),
            );
        }
    }
    for (k, v) in pod_meta["annotations"].as_object().into_iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && let Some(v) = v.as_str()
            && v != "runtime/default"
            && !v.starts_with("localhost/")
        {
            add(
                Rule::AppArmor,
                format!("metadata.annotations[{k}]"),
                format!("is {v}"),
            );
        }
    }

    // Restricted, pod level.
    let pod_non_root = pod_sc["runAsNonRoot"].as_bool();
    if pod_non_root == Some(false) {
        add(
            Rule::RunAsNonRoot,
            format!("{at}.securityContext.runAsNonRoot"),
            "is false".into(),
        );
    }
    if pod_sc["runAsUser"] == 0 {
        add(
            Rule::RunAsUser,
            format!("{at}.securityContext.runAsUser"),
            "is 0 (root)".into(),
        );
    }
    let pod_seccomp = pod_sc["seccompProfile"]["type"].as_str();
    let allowed_seccomp = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    if let Some(t) = pod_seccomp.filter(|t| !allowed_seccomp(t)) {
        add(
            Rule::SeccompRestricted,
            format!("{at}.securityContext.seccompProfile.type"),
            format!("is {t}"),
        );
    }

    for (field, c) in &all {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or("?");
        if sc["privileged"] == true {
            add(
                Rule::Privileged,
                format!("{field}.securityContext.privileged"),
                format!("container {name} is privileged"),
            );
        }
        let added: Vec<&str> = sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let beyond: Vec<&str> = added
            .iter()
            .copied()
            .filter(|c| !BASELINE_CAPABILITIES.contains(c))
            .collect();
        if !beyond.is_empty() {
            add(
                Rule::CapabilitiesBaseline,
                format!("{field}.securityContext.capabilities.add"),
                format!("container {name} adds {}", beyond.join(", ")),
            );
        }
        let beyond: Vec<&str> = added
            .iter()
            .copied()
            .filter(|c| *c != "NET_BIND_SERVICE")
            .collect();
        if !beyond.is_empty() {
            add(
                Rule::CapabilitiesRestricted,
                format!("{field}.securityContext.capabilities.add"),
                format!("container {name} adds {}", beyond.join(", ")),
            );
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            add(
                Rule::CapabilitiesRestricted,
                format!("{field}.securityContext.capabilities.drop"),
                format!("container {name} does not drop ALL"),
            );
        }
        for (i, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                add(
                    Rule::HostPorts,
                    format!("{field}.ports[{i}].hostPort"),
                    format!("container {name} takes host port {}", p["hostPort"]),
                );
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            add(
                Rule::ProcMount,
                format!("{field}.securityContext.procMount"),
                format!("is {}", sc["procMount"]),
            );
        }
        if sc["allowPrivilegeEscalation"] != false {
            add(
                Rule::PrivilegeEscalation,
                format!("{field}.securityContext.allowPrivilegeEscalation"),
                format!("container {name} does not set it to false"),
            );
        }
        match sc["runAsNonRoot"].as_bool() {
            Some(false) => add(
                Rule::RunAsNonRoot,
                format!("{field}.securityContext.runAsNonRoot"),
                format!("container {name} sets it to false"),
            ),
            None if pod_non_root != Some(true) => add(
                Rule::RunAsNonRoot,
                format!("{field}.securityContext.runAsNonRoot"),
                format!("container {name} does not set it, nor does the pod"),
            ),
            _ => {}
        }
        if sc["runAsUser"] == 0 {
            add(
                Rule::RunAsUser,
                format!("{field}.securityContext.runAsUser"),
                format!("container {name} runs as 0 (root)"),
            );
        }
        match sc["seccompProfile"]["type"].as_str() {
            Some(t) if !allowed_seccomp(t) => add(
                Rule::SeccompRestricted,
                format!("{field}.securityContext.seccompProfile.type"),
                format!("container {name}: {t}"),
            ),
            None if pod_seccomp.is_none() => add(
                Rule::SeccompRestricted,
                format!("{field}.securityContext.seccompProfile"),
                format!("container {name} sets none, nor does the pod"),
            ),
            _ => {}
        }

        // Best practices: regular containers only.
        if !field.contains(".containers[") {
            continue;
        }
        let r = &c["resources"];
        let missing: Vec<&str> = [
            ("requests.cpu", &r["requests"]["cpu"]),
            ("requests.memory", &r["requests"]["memory"]),
            ("limits.memory", &r["limits"]["memory"]),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k)
        .collect();
        if !missing.is_empty() {
            add(
                Rule::Resources,
                format!("{field}.resources"),
                format!("container {name} sets no {}", missing.join(", ")),
            );
        }
        if long_running {
            for probe in ["livenessProbe", "readinessProbe"] {
                if c[probe].is_null() {
                    add(
                        Rule::Probes,
                        format!("{field}.{probe}"),
                        format!("container {name} has none"),
                    );
                }
            }
        }
        if let Some(image) = c["image"].as_str()
            && !image_pinned(image)
        {
            add(
                Rule::ImageTag,
                format!("{field}.image"),
                format!("`{image}` is not pinned"),
            );
        }
        if sc["readOnlyRootFilesystem"] != true {
            add(
                Rule::ReadOnlyRootFilesystem,
                format!("{field}.securityContext.readOnlyRootFilesystem"),
                format!("container {name} may write its root file system"),
            );
        }
    }
    if spec["automountServiceAccountToken"] != false {
        add(
            Rule::ServiceAccountToken,
            format!("{at}.automountServiceAccountToken"),
            "the pod may mount its service account's token".into(),
        );
    }
    if spec["priorityClassName"].as_str().is_none_or(str::is_empty) {
        add(
            Rule::PriorityClass,
            format!("{at}.priorityClassName"),
            "is not set".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: Value, pod_sc: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"securityContext": pod_sc, "containers": [container]},
        })
    }

    fn good_container() -> Value {
        json!({
            "name": "c", "image": "nginx:1.27",
            "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        })
    }

    fn rules_of(o: &Value) -> Vec<&'static str> {
        let mut r: Vec<&str> = findings(o).iter().map(|f| f.rule.id()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// One violating and one passing object per rule: the violation is
    /// found, with the field at fault, and the fix removes it.
    #[test]
    fn each_rule_finds_its_violation_and_only_it() {
        let base = || {
            let mut p = pod(good_container(), json!({}));
            p["spec"]["automountServiceAccountToken"] = json!(false);
            p["spec"]["priorityClassName"] = json!("normal");
            p
        };
        assert_eq!(rules_of(&base()), Vec::<&str>::new(), "the passing pod");
        type Break = fn(&mut Value);
        let cases: Vec<(Rule, Break, &str)> = vec![
            (
                Rule::HostProcess,
                |p| p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true}),
                "spec.securityContext.windowsOptions.hostProcess",
            ),
            (
                Rule::HostNamespaces,
                |p| p["spec"]["hostNetwork"] = json!(true),
                "spec.hostNetwork",
            ),
            (
                Rule::Privileged,
                |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
                "spec.containers[0].securityContext.privileged",
            ),
            (
                Rule::CapabilitiesBaseline,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                        json!(["SYS_ADMIN"])
                },
                "spec.containers[0].securityContext.capabilities.add",
            ),
            (
                Rule::HostPathVolumes,
                |p| p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/"}}]),
                "spec.volumes[0].hostPath",
            ),
            (
                Rule::HostPorts,
                |p| {
                    p["spec"]["containers"][0]["ports"] =
                        json!([{"containerPort": 80, "hostPort": 80}])
                },
                "spec.containers[0].ports[0].hostPort",
            ),
            (
                Rule::AppArmor,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                        json!({"type": "Unconfined"})
                },
                "spec.containers[0].securityContext.appArmorProfile.type",
            ),
            (
                Rule::SeLinux,
                |p| p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"}),
                "spec.securityContext.seLinuxOptions.type",
            ),
            (
                Rule::ProcMount,
                |p| p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked"),
                "spec.containers[0].securityContext.procMount",
            ),
            (
                Rule::SeccompBaseline,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                        json!({"type": "Unconfined"})
                },
                "spec.containers[0].securityContext.seccompProfile.type",
            ),
            (
                Rule::Sysctls,
                |p| {
                    p["spec"]["securityContext"]["sysctls"] =
                        json!([{"name": "kernel.msgmax", "value": "1"}])
                },
                "spec.securityContext.sysctls[0]",
            ),
            (
                Rule::VolumeTypes,
                |p| {
                    p["spec"]["volumes"] =
                        json!([{"name": "n", "nfs": {"server": "s", "path": "/"}}])
                },
                "spec.volumes[0].nfs",
            ),
            (
                Rule::PrivilegeEscalation,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]
                        .as_object_mut()
                        .expect("sc")
                        .remove("allowPrivilegeEscalation");
                },
                "spec.containers[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                Rule::RunAsNonRoot,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]
                        .as_object_mut()
                        .expect("sc")
                        .remove("runAsNonRoot");
                },
                "spec.containers[0].securityContext.runAsNonRoot",
            ),
            (
                Rule::RunAsUser,
                |p| p["spec"]["securityContext"]["runAsUser"] = json!(0),
                "spec.securityContext.runAsUser",
            ),
            (
                Rule::SeccompRestricted,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]
                        .as_object_mut()
                        .expect("sc")
                        .remove("seccompProfile");
                },
                "spec.containers[0].securityContext.seccompProfile",
            ),
            (
                Rule::CapabilitiesRestricted,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                        json!({"drop": ["NET_RAW"]})
                },
                "spec.containers[0].securityContext.capabilities.drop",
            ),
            (
                Rule::Resources,
                |p| {
                    p["spec"]["containers"][0]
                        .as_object_mut()
                        .expect("c")
                        .remove("resources");
                },
                "spec.containers[0].resources",
            ),
            (
                Rule::ImageTag,
                |p| p["spec"]["containers"][0]["image"] = json!("nginx:latest"),
                "spec.containers[0].image",
            ),
            (
                Rule::ReadOnlyRootFilesystem,
                |p| {
                    p["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                        json!(false)
                },
                "spec.containers[0].securityContext.readOnlyRootFilesystem",
            ),
            (
                Rule::ServiceAccountToken,
                |p| {
                    p["spec"]
                        .as_object_mut()
                        .expect("spec")
                        .remove("automountServiceAccountToken");
                },
                "spec.automountServiceAccountToken",
            ),
            (
                Rule::PriorityClass,
                |p| {
                    p["spec"]
                        .as_object_mut()
                        .expect("spec")
                        .remove("priorityClassName");
                },
                "spec.priorityClassName",
            ),
        ];
        let mut covered: Vec<Rule> = cases.iter().map(|c| c.0).collect();
        covered.push(Rule::Probes);
        covered.sort();
        covered.dedup();
        assert_eq!(covered.len(), Rule::ALL.len(), "a case per rule");
        for (rule, breaks, field) in cases {
            let mut p = base();
            breaks(&mut p);
            let found = findings(&p);
            assert!(
                found.iter().any(|f| f.rule == rule && f.field == field),
                "{}: {found:?}",
                rule.id()
            );
        }
        // Probes: long-running workloads only.
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"metadata": {}, "spec": base()["spec"].clone()}},
        });
        assert_eq!(rules_of(&deployment), vec!["probes"]);
        let mut probed = deployment.clone();
        probed["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
            json!({"tcpSocket": {"port": 80}});
        probed["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
            json!({"tcpSocket": {"port": 80}});
        assert_eq!(rules_of(&probed), Vec::<&str>::new());
        // A ServiceAccount that mounts its token.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "s"}});
        assert_eq!(rules_of(&sa), vec!["service-account-token"]);
        // Objects that make no pod break nothing else.
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert!(findings(&cm).is_empty());
    }

    #[test]
    fn a_pod_level_setting_covers_its_containers() {
        let mut c = good_container();
        let sc = c["securityContext"].as_object_mut().expect("sc");
        sc.remove("runAsNonRoot");
        sc.remove("seccompProfile");
        let p = pod(
            c,
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
        );
        let r = rules_of(&p);
        assert!(
            !r.contains(&"run-as-non-root") && !r.contains(&"seccomp-restricted"),
            "{r:?}"
        );
    }

    #[test]
    fn levels_follow_namespace_then_layer_then_rules_then_groups() {
        let c: PolicyConfig = serde_json::from_value(json!({
            "default": "off",
            "rules": {"pss-restricted": "enforce", "pss-baseline": "audit", "image-tag": "enforce"},
            "layers": {"platform": {"privileged": "off"}},
            "namespaces": {"kube-system": {"pss-restricted": "off"}},
        }))
        .expect("config");
        assert_eq!(c.level(Rule::RunAsNonRoot, "apps", None), Level::Enforce);
        assert_eq!(
            c.level(Rule::Privileged, "apps", None),
            Level::Audit,
            "the narrower group"
        );
        assert_eq!(c.level(Rule::Privileged, "platform", None), Level::Off);
        assert_eq!(
            c.level(Rule::Privileged, "apps", Some("kube-system")),
            Level::Off
        );
        assert_eq!(c.level(Rule::ImageTag, "apps", None), Level::Enforce);
        assert_eq!(c.level(Rule::Probes, "apps", None), Level::Off);
        assert!(c.unknown_names().is_empty());
        let typo: PolicyConfig =
            serde_json::from_value(json!({"rules": {"run-as-nonroot": "enforce"}}))
                .expect("config");
        assert_eq!(typo.unknown_names(), vec!["run-as-nonroot".to_owned()]);
    }

    #[test]
    fn exemptions_need_a_reason() {
        let with = |a: &str| json!({"metadata": {"annotations": {EXEMPT: a}}});
        assert_eq!(
            exemptions(&with("privileged, host-namespaces # the CNI agent")).expect("ok"),
            vec!["privileged".to_owned(), "host-namespaces".to_owned()]
        );
        assert!(exemptions(&with("privileged")).is_err());
        assert!(exemptions(&with("privileged #  ")).is_err());
        assert!(is_exempt(&["pss-baseline".to_owned()], Rule::Privileged));
        assert!(is_exempt(&["pss-restricted".to_owned()], Rule::Privileged));
        assert!(!is_exempt(&["pss-baseline".to_owned()], Rule::RunAsNonRoot));
    }
}
