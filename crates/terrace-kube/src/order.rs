//! The order objects reach a cluster in.
//!
//! A unit's objects are applied in steps. Steps go by phase (Argo CD's
//! `argocd.argoproj.io/hook: PreSync`, the normal sync, then `PostSync`),
//! then by sync wave (`argocd.argoproj.io/sync-wave`, an integer, default
//! 0, lowest first). Within a wave, CustomResourceDefinitions form a step
//! of their own, so the applier can wait until they are Established before
//! anything that may be one of their custom resources; then come
//! Namespaces and the rest in Helm's install order, kinds Helm does not
//! know (custom resources) last. Objects keep their given order within a
//! kind. Pruning deletes in exactly the reverse order.
//!
//! Helm's hook annotations map onto the same phases, as Argo CD maps
//! them: `pre-install`/`pre-upgrade` run as PreSync, `post-install`/
//! `post-upgrade` as PostSync, `helm.sh/hook-weight` is the wave and
//! `helm.sh/hook-delete-policy` the delete policy (Helm's default,
//! `before-hook-creation`, when none is given). Test hooks and hooks that
//! run only on delete or rollback are never applied. Argo CD's own
//! annotations win where both are given.

use serde_json::Value;

/// The sync-wave annotation (Argo CD's).
pub const SYNC_WAVE: &str = "argocd.argoproj.io/sync-wave";
/// The hook annotation (Argo CD's).
pub const HOOK: &str = "argocd.argoproj.io/hook";
/// When a hook object is deleted (Argo CD's).
pub const HOOK_DELETE_POLICY: &str = "argocd.argoproj.io/hook-delete-policy";

/// Helm's hook annotation (`pre-install,post-upgrade`).
pub const HELM_HOOK: &str = "helm.sh/hook";
/// Helm's hook weight: the wave of a Helm hook.
pub const HELM_HOOK_WEIGHT: &str = "helm.sh/hook-weight";
/// When Helm deletes a hook object.
pub const HELM_HOOK_DELETE_POLICY: &str = "helm.sh/hook-delete-policy";

/// Helm's install order (`InstallOrder` in its kind sorter), after which
/// unknown kinds follow.
const INSTALL_ORDER: [&str; 37] = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
];

/// When a step runs relative to the unit's sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `hook: PreSync`: before everything else.
    PreSync,
    /// The objects themselves.
    Sync,
    /// `hook: PostSync`: after the sync is healthy.
    PostSync,
}

/// When a hook object is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeletePolicy {
    /// Delete the previous one before creating it again (Argo CD's default).
    pub before_creation: bool,
    /// Delete it once it succeeded.
    pub on_success: bool,
    /// Delete it when it failed.
    pub on_failure: bool,
}

/// One step: objects (indices into the given list) applied together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    pub wave: i64,
    /// A step of CustomResourceDefinitions: wait until they are Established
    /// before the next step.
    pub crds: bool,
    pub objects: Vec<usize>,
}

/// An object's part in the sync, read from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub phase: Phase,
    pub wave: i64,
    /// For hooks: when they are deleted.
    pub delete: DeletePolicy,
    /// `hook: Skip`: never applied.
    pub skip: bool,
}

/// A bad annotation, naming the object and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {message}")]
pub struct OrderError {
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
}

fn describe(v: &Value) -> String {
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["metadata"]["name"].as_str().unwrap_or("?");
    match v["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Reads an object's hook, wave and delete policy.
pub fn role(v: &Value) -> Result<Role, OrderError> {
    let annotations = &v["metadata"]["annotations"];
    let err = |message: String| OrderError {
        object: describe(v),
        message,
    };
    let argo_hook = annotations.get(HOOK).and_then(Value::as_str).is_some();
    let helm_hooks = annotations
        .get(HELM_HOOK)
        .and_then(Value::as_str)
        .filter(|_| !argo_hook);
    if let Some(hooks) = helm_hooks {
        return helm_role(v, hooks, annotations);
    }
    let wave = wave_of(annotations, SYNC_WAVE).map_err(err)?;
    let mut phase = Phase::Sync;
    let mut skip = false;
    if let Some(hooks) = annotations.get(HOOK).and_then(Value::as_str) {
        for hook in hooks.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match hook {
                "PreSync" => phase = Phase::PreSync,
                "Sync" => {}
                "PostSync" => phase = Phase::PostSync,
                "Skip" => skip = true,
                other => {
                    return Err(err(format!(
                        "annotation {HOOK} is `{other}`; terrace runs PreSync, Sync, PostSync and Skip hooks"
                    )));
                }
            }
        }
    }
    let delete = delete_policy(
        annotations,
        HOOK_DELETE_POLICY,
        ["BeforeHookCreation", "HookSucceeded", "HookFailed"],
        phase != Phase::Sync,
    )
    .map_err(err)?;
    Ok(Role {
        phase,
        wave,
        delete,
        skip,
    })
}

/// An integer annotation (a sync wave, a hook weight); 0 when absent.
fn wave_of(annotations: &Value, key: &str) -> Result<i64, String> {
    match annotations.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(w) => {
            let text = w.as_str().map_or_else(|| w.to_string(), str::to_owned);
            text.trim().parse::<i64>().map_err(|_| {
                format!(
                    "annotation {key} is `{text}`; it must be an integer such as \"-1\" or \"2\""
                )
            })
        }
    }
}

/// A delete-policy annotation (`key`), whose words for before creation,
/// on success and on failure are `names`; `default_before` when absent.
fn delete_policy(
    annotations: &Value,
    key: &str,
    names: [&str; 3],
    default_before: bool,
) -> Result<DeletePolicy, String> {
    let mut delete = DeletePolicy::default();
    let Some(policies) = annotations.get(key).and_then(Value::as_str) else {
        delete.before_creation = default_before;
        return Ok(delete);
    };
    for p in policies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match names.iter().position(|n| *n == p) {
            Some(0) => delete.before_creation = true,
            Some(1) => delete.on_success = true,
            Some(_) => delete.on_failure = true,
            None => {
                return Err(format!(
                    "annotation {key} is `{p}`; it must be {}, {} or {}",
                    names[0], names[1], names[2]
                ));
            }
        }
    }
    Ok(delete)
}

/// The role of an object with Helm hook annotations (and no Argo CD
/// hook).
fn helm_role(v: &Value, hooks: &str, annotations: &Value) -> Result<Role, OrderError> {
    let err = |message: String| OrderError {
        object: describe(v),
        message,
    };
    let mut phase = None;
    for hook in hooks.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        match hook {
            "pre-install" | "pre-upgrade" => phase = Some(Phase::PreSync),
            "post-install" | "post-upgrade" => {
                phase = Some(phase.unwrap_or(Phase::PostSync));
            }
            // Run by `helm test`, or only on delete and rollback, which a
            // sync never does.
            "test" | "test-success" | "test-failure" | "pre-delete" | "post-delete"
            | "pre-rollback" | "post-rollback" => {}
            // Helm 2's CRD hook: an ordinary object (CRDs go first anyway).
            "crd-install" => phase = Some(phase.unwrap_or(Phase::Sync)),
            other => {
                return Err(err(format!(
                    "annotation {HELM_HOOK} is `{other}`; Helm's hooks are pre-install, post-install, pre-upgrade, post-upgrade, pre-delete, post-delete, pre-rollback, post-rollback and test"
                )));
            }
        }
    }
    let wave = wave_of(annotations, HELM_HOOK_WEIGHT).map_err(err)?;
    let delete = delete_policy(
        annotations,
        HELM_HOOK_DELETE_POLICY,
        ["before-hook-creation", "hook-succeeded", "hook-failed"],
        true,
    )
    .map_err(err)?;
    Ok(Role {
        phase: phase.unwrap_or(Phase::Sync),
        wave,
        delete,
        skip: phase.is_none(),
    })
}

/// An object's rank within its wave: CRDs, then Namespaces, then Helm's
/// install order, then every other kind.
fn kind_rank(kind: &str) -> usize {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        other => INSTALL_ORDER
            .iter()
            .position(|k| *k == other)
            .map_or(INSTALL_ORDER.len() + 2, |i| i + 2),
    }
}

/// The steps `objects` are applied in. Skipped hooks are left out.
pub fn apply_steps(objects: &[Value]) -> Result<Vec<Step>, OrderError> {
    let mut keyed = Vec::with_capacity(objects.len());
    for (i, o) in objects.iter().enumerate() {
        let r = role(o)?;
        if r.skip {
            continue;
        }
        let kind = o["kind"].as_str().unwrap_or("");
        keyed.push((
            (r.phase, r.wave, kind_rank(kind)),
            i,
            kind == "CustomResourceDefinition",
        ));
    }
    // Stable: objects keep their given order within a kind.
    keyed.sort_by_key(|(key, _, _)| *key);
    let mut steps: Vec<Step> = Vec::new();
    for ((phase, wave, _), i, crd) in keyed {
        match steps.last_mut() {
            Some(s) if s.phase == phase && s.wave == wave && s.crds == crd => s.objects.push(i),
            _ => steps.push(Step {
                phase,
                wave,
                crds: crd,
                objects: vec![i],
            }),
        }
    }
    Ok(steps)
}

/// The order objects are deleted in when pruned or destroyed: the reverse
/// of the apply order.
pub fn delete_order(objects: &[Value]) -> Result<Vec<usize>, OrderError> {
    let steps = apply_steps(objects)?;
    Ok(steps
        .iter()
        .rev()
        .flat_map(|s| s.objects.iter().rev().copied())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, name: &str, annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "annotations": annotations}})
    }

    fn names(objects: &[Value], steps: &[Step]) -> Vec<Vec<String>> {
        steps
            .iter()
            .map(|s| {
                s.objects
                    .iter()
                    .map(|&i| {
                        objects[i]["metadata"]["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn crds_then_namespaces_then_helm_order_then_custom_resources() {
        let objects = vec![
            obj("Widget", "w", json!({})),
            obj("Deployment", "d", json!({})),
            obj("Service", "s", json!({})),
            obj("Namespace", "ns", json!({})),
            obj("CustomResourceDefinition", "crd", json!({})),
            obj("ConfigMap", "cm", json!({})),
            obj("Deployment", "d2", json!({})),
        ];
        let steps = apply_steps(&objects).expect("order");
        assert_eq!(
            names(&objects, &steps),
            [vec!["crd"], vec!["ns", "cm", "s", "d", "d2", "w"]]
        );
        assert!(steps[0].crds && !steps[1].crds);
        let deletes: Vec<&str> = delete_order(&objects)
            .expect("order")
            .iter()
            .map(|&i| objects[i]["metadata"]["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(deletes, ["w", "d2", "d", "s", "cm", "ns", "crd"]);
    }

    #[test]
    fn waves_and_hooks_order_steps() {
        let objects = vec![
            obj("ConfigMap", "late", json!({SYNC_WAVE: "5"})),
            obj("ConfigMap", "early", json!({SYNC_WAVE: "-1"})),
            obj("Job", "migrate", json!({HOOK: "PreSync"})),
            obj(
                "Job",
                "smoke",
                json!({HOOK: "PostSync", HOOK_DELETE_POLICY: "HookSucceeded"}),
            ),
            obj("ConfigMap", "never", json!({HOOK: "Skip"})),
            obj("ConfigMap", "plain", json!({})),
        ];
        let steps = apply_steps(&objects).expect("order");
        assert_eq!(
            names(&objects, &steps),
            [
                vec!["migrate"],
                vec!["early"],
                vec!["plain"],
                vec!["late"],
                vec!["smoke"]
            ]
        );
        assert_eq!(steps[0].phase, Phase::PreSync);
        assert_eq!(steps[4].phase, Phase::PostSync);
        let smoke = role(&objects[3]).expect("role");
        assert!(smoke.delete.on_success && !smoke.delete.before_creation);
        let migrate = role(&objects[2]).expect("role");
        assert!(
            migrate.delete.before_creation,
            "Argo CD's default for hooks"
        );
    }

    #[test]
    fn bad_annotations_name_the_object() {
        let e =
            apply_steps(&[obj("ConfigMap", "x", json!({SYNC_WAVE: "soon"}))]).expect_err("refused");
        assert_eq!(e.object, "ConfigMap x");
        assert!(e.message.contains("must be an integer"), "{e}");
        let e = role(&obj("Job", "j", json!({HOOK: "SyncFail"}))).expect_err("refused");
        assert!(e.to_string().contains("SyncFail"), "{e}");
    }

    #[test]
    fn helm_hooks_map_onto_phases() {
        let r = role(&obj(
            "Job",
            "migrate",
            json!({HELM_HOOK: "pre-install,pre-upgrade", HELM_HOOK_WEIGHT: "-5", HELM_HOOK_DELETE_POLICY: "hook-succeeded"}),
        ))
        .expect("valid");
        assert_eq!((r.phase, r.wave, r.skip), (Phase::PreSync, -5, false));
        assert!(r.delete.on_success && !r.delete.before_creation);
        let r = role(&obj("Job", "notify", json!({HELM_HOOK: "post-install"}))).expect("valid");
        assert_eq!(r.phase, Phase::PostSync);
        // Helm's default delete policy.
        assert!(r.delete.before_creation);
        for skipped in ["test", "test-success", "pre-delete", "post-rollback"] {
            let r = role(&obj("Pod", "t", json!({HELM_HOOK: skipped}))).expect("valid");
            assert!(r.skip, "{skipped}");
        }
        // Argo CD's own annotation wins.
        let r = role(&obj(
            "Job",
            "j",
            json!({HELM_HOOK: "pre-install", HOOK: "PostSync"}),
        ))
        .expect("valid");
        assert_eq!(r.phase, Phase::PostSync);
        let e = role(&obj("Job", "j", json!({HELM_HOOK: "pre-instal"}))).expect_err("refused");
        assert!(e.to_string().contains("pre-instal"), "{e}");
        let e = role(&obj(
            "Job",
            "j",
            json!({HELM_HOOK: "post-install", HELM_HOOK_WEIGHT: "x"}),
        ))
        .expect_err("refused");
        assert!(e.to_string().contains(HELM_HOOK_WEIGHT), "{e}");
    }
}
