//! Whether a live object is ready, read from its status the way `kubectl
//! rollout status`, Flux and Argo CD read it.
//!
//! - Deployments, StatefulSets and DaemonSets: the controller has seen the
//!   latest generation, and every replica is updated and available.
//! - Jobs: `Complete`; `Failed` is a failure.
//! - PersistentVolumeClaims: `Bound`.
//! - CustomResourceDefinitions: `Established`.
//! - Namespaces: `Active`.
//! - Any other object with a `Ready` condition: `Ready` is `True`; a
//!   `Stalled` condition that is `True` is a failure.
//! - Everything else is ready once it exists.

use serde_json::Value;

/// An object's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Not ready yet, and why.
    Progressing(String),
    /// Will not become ready without a change, and why.
    Failed(String),
}

impl Health {
    pub fn is_ready(&self) -> bool {
        *self == Health::Ready
    }
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// The condition of `type_`, as (status, reason, message).
fn condition<'a>(v: &'a Value, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or(""),
            )
        })
}

fn because(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => "no reason given".to_owned(),
        (false, true) => reason.to_owned(),
        (true, false) => message.to_owned(),
        (false, false) => format!("{reason}: {message}"),
    }
}

/// Whether the controller has seen the object's latest spec.
fn observed(v: &Value) -> Option<Health> {
    let generation = int(&v["metadata"]["generation"])?;
    let seen = int(&v["status"]["observedGeneration"]).unwrap_or(0);
    (seen < generation).then(|| {
        Health::Progressing(format!(
            "the controller has not yet seen generation {generation}"
        ))
    })
}

/// Whether an object that did not change is still waited for when its unit
/// is applied (a unit whose last apply failed is applied again until its
/// objects are healthy): workloads, claims, CRDs and custom resources,
/// whose health can change without terrace changing them.
pub fn has_health(v: &Value) -> bool {
    let kind = v["kind"].as_str().unwrap_or("");
    let group = v["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    matches!(
        kind,
        "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "Job"
            | "PersistentVolumeClaim"
            | "CustomResourceDefinition"
    ) || (group.contains('.') && !group.ends_with("k8s.io"))
}

/// `v`'s health.
pub fn health(v: &Value) -> Health {
    let kind = v["kind"].as_str().unwrap_or("");
    let group = v["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    let status = &v["status"];
    let field = |name: &str| int(&status[name]).unwrap_or(0);
    match (group, kind) {
        ("apps", "Deployment") => {
            if let Some(h) = observed(v) {
                return h;
            }
            if let Some(("False", "ProgressDeadlineExceeded", msg)) = condition(v, "Progressing") {
                return Health::Failed(because("ProgressDeadlineExceeded", msg));
            }
            let want = int(&v["spec"]["replicas"]).unwrap_or(1);
            let (updated, total, available) = (
                field("updatedReplicas"),
                field("replicas"),
                field("availableReplicas"),
            );
            if updated < want {
                Health::Progressing(format!("{updated} of {want} replicas updated"))
            } else if total > updated {
                Health::Progressing(format!(
                    "{} old replicas are pending termination",
                    total - updated
                ))
            } else if available < updated {
                Health::Progressing(format!(
                    "{available} of {updated} updated replicas available"
                ))
            } else {
                Health::Ready
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(h) = observed(v) {
                return h;
            }
            let want = int(&v["spec"]["replicas"]).unwrap_or(1);
            let ready = field("readyReplicas");
            let rolling = v["spec"]["updateStrategy"]["type"].as_str() != Some("OnDelete");
            if ready < want {
                Health::Progressing(format!("{ready} of {want} replicas ready"))
            } else if rolling && status["updateRevision"] != status["currentRevision"] {
                Health::Progressing(format!(
                    "{} of {want} replicas updated",
                    field("updatedReplicas")
                ))
            } else {
                Health::Ready
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(h) = observed(v) {
                return h;
            }
            let want = field("desiredNumberScheduled");
            let (updated, available) = (field("updatedNumberScheduled"), field("numberAvailable"));
            if updated < want {
                Health::Progressing(format!("{updated} of {want} pods updated"))
            } else if available < want {
                Health::Progressing(format!("{available} of {want} pods available"))
            } else {
                Health::Ready
            }
        }
        ("batch", "Job") => {
            if let Some(("True", reason, msg)) = condition(v, "Failed") {
                Health::Failed(because(reason, msg))
            } else if let Some(("True", _, _)) = condition(v, "Complete") {
                Health::Ready
            } else {
                Health::Progressing(format!(
                    "{} succeeded, {} active",
                    field("succeeded"),
                    field("active")
                ))
            }
        }
        ("", "PersistentVolumeClaim") => match status["phase"].as_str() {
            Some("Bound") => Health::Ready,
            Some("Lost") => Health::Failed("the claim lost its volume".to_owned()),
            other => Health::Progressing(format!("phase {}", other.unwrap_or("unknown"))),
        },
        ("", "Namespace") => match status["phase"].as_str() {
            Some("Terminating") => Health::Progressing("the namespace is terminating".to_owned()),
            _ => Health::Ready,
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if let Some(("False", reason, msg)) = condition(v, "NamesAccepted") {
                return Health::Failed(because(reason, msg));
            }
            match condition(v, "Established") {
                Some(("True", _, _)) => Health::Ready,
                Some((_, reason, msg)) => Health::Progressing(because(reason, msg)),
                None => Health::Progressing("not established yet".to_owned()),
            }
        }
        _ => {
            if let Some(("True", reason, msg)) = condition(v, "Stalled") {
                return Health::Failed(because(reason, msg));
            }
            match condition(v, "Ready") {
                None | Some(("True", _, _)) => Health::Ready,
                Some((_, reason, msg)) => Health::Progressing(because(reason, msg)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "generation": generation},
               "spec": {"replicas": 2}, "status": status})
    }

    #[test]
    fn deployments_roll_out() {
        let h = health(&deployment(2, json!({"observedGeneration": 1})));
        assert!(matches!(h, Health::Progressing(ref m) if m.contains("generation 2")));
        let h = health(&deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        ));
        assert_eq!(
            h,
            Health::Progressing("1 of 2 updated replicas available".into())
        );
        let h = health(&deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        ));
        assert!(matches!(h, Health::Progressing(ref m) if m.contains("old replicas")));
        let ready = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2});
        assert_eq!(health(&deployment(2, ready)), Health::Ready);
        let stuck = json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]});
        assert!(
            matches!(health(&deployment(2, stuck)), Health::Failed(ref m) if m.contains("timed out"))
        );
    }

    #[test]
    fn conditions_jobs_claims_and_crds() {
        let job = |conds: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "status": {"conditions": conds}});
        assert_eq!(
            health(&job(json!([{"type": "Complete", "status": "True"}]))),
            Health::Ready
        );
        assert_eq!(
            health(&job(
                json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
            )),
            Health::Failed("BackoffLimitExceeded".into())
        );
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}});
        assert_eq!(health(&pvc), Health::Progressing("phase Pending".into()));
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(health(&crd), Health::Ready);
        let cr = |s: &str| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "status": {"conditions": [{"type": "Ready", "status": s, "reason": "Waiting", "message": "for the widget"}]}})
        };
        assert_eq!(health(&cr("True")), Health::Ready);
        assert_eq!(
            health(&cr("False")),
            Health::Progressing("Waiting: for the widget".into())
        );
        assert_eq!(
            health(&json!({"apiVersion": "v1", "kind": "ConfigMap"})),
            Health::Ready
        );
    }
}
