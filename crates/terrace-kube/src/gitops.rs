//! The GitOps controller an object in the cluster came from: Flux
//! (kustomize-controller or helm-controller, by the labels they stamp) or
//! Argo CD (its tracking annotation or instance label), and whether that
//! controller still runs it. Taking an object over while its controller
//! still applies it would make the two fight; the apply refuses until the
//! owner is suspended (Flux `spec.suspend: true`, Argo CD without
//! `syncPolicy.automated`), unless forced.

use serde_json::Value;

use crate::KubeError;
use crate::cluster::Cluster;

/// The GitOps object that applied a cluster object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitOpsOwner {
    /// `Flux` or `Argo CD`.
    pub tool: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// The labels kustomize-controller and helm-controller put on what they
/// apply.
const FLUX_KS: (&str, &str) = (
    "kustomize.toolkit.fluxcd.io/name",
    "kustomize.toolkit.fluxcd.io/namespace",
);
const FLUX_HR: (&str, &str) = (
    "helm.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/namespace",
);
/// Argo CD's annotation tracking (`<app>:<group>/<kind>:<ns>/<name>`,
/// the app as `<namespace>_<name>` outside Argo CD's own namespace) and
/// its default label tracking.
const ARGO_TRACKING: &str = "argocd.argoproj.io/tracking-id";
const ARGO_INSTANCE: &str = "app.kubernetes.io/instance";
/// Where Argo CD's Applications live unless they say otherwise.
const ARGO_NAMESPACE: &str = "argocd";

fn text<'a>(live: &'a Value, pointer: &str, key: &str) -> Option<&'a str> {
    live.pointer(pointer)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl GitOpsOwner {
    /// The controller object behind `live`, by the marks it left.
    pub fn of(live: &Value) -> Option<GitOpsOwner> {
        for (labels, api_version, kind) in [
            (FLUX_KS, "kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
            (FLUX_HR, "helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ] {
            if let Some(name) = text(live, "/metadata/labels", labels.0) {
                return Some(GitOpsOwner {
                    tool: "Flux",
                    api_version,
                    kind,
                    namespace: text(live, "/metadata/labels", labels.1)
                        .unwrap_or("flux-system")
                        .to_owned(),
                    name: name.to_owned(),
                });
            }
        }
        // Only with Argo CD's annotation, or with its instance label on an
        // object Argo CD's field manager wrote (Helm charts set
        // `app.kubernetes.io/instance` too).
        let app = text(live, "/metadata/annotations", ARGO_TRACKING)
            .and_then(|t| t.split_once(':'))
            .map(|(app, _)| app.to_owned())
            .or_else(|| {
                let instance = text(live, "/metadata/labels", ARGO_INSTANCE)?;
                let argo_managed = live["metadata"]["managedFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| {
                        m["manager"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("argocd"))
                    });
                // Argo CD's own field manager decides it, whatever the
                // chart's managed-by label says.
                argo_managed.then(|| instance.to_owned())
            })?;
        let (namespace, name) = match app.split_once('_') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => (ARGO_NAMESPACE.to_owned(), app),
        };
        Some(GitOpsOwner {
            tool: "Argo CD",
            api_version: "argoproj.io/v1alpha1",
            kind: "Application",
            namespace,
            name,
        })
    }

    /// `Flux Kustomization flux-system/apps`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}/{}",
            self.tool, self.kind, self.namespace, self.name
        )
    }

    /// What to do to stop the controller applying it.
    pub fn how_to_suspend(&self) -> String {
        match (self.tool, self.kind) {
            ("Flux", "Kustomization") => format!(
                "`flux suspend kustomization {} -n {}` (or `spec.suspend: true` in Git)",
                self.name, self.namespace
            ),
            ("Flux", _) => format!(
                "`flux suspend helmrelease {} -n {}` (or `spec.suspend: true` in Git)",
                self.name, self.namespace
            ),
            _ => format!(
                "turn auto-sync off: `argocd app set {} --sync-policy none` (or remove `spec.syncPolicy.automated`)",
                self.name
            ),
        }
    }

    /// Why the controller still applies the object (`None`: it is
    /// suspended, or gone, or the cluster does not serve its kind).
    pub async fn still_running(&self, cluster: &Cluster) -> Result<Option<String>, KubeError> {
        // Whichever version of the kind the cluster serves (older Flux
        // serves HelmRelease v2beta2 or v2beta1 only).
        let (group, _) = self
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", self.api_version));
        let versions: &[&str] = match self.kind {
            "HelmRelease" => &["v2", "v2beta2", "v2beta1"],
            "Kustomization" => &["v1", "v1beta2", "v1beta1"],
            _ => &["v1alpha1"],
        };
        let mut served = None;
        for v in versions {
            let api = format!("{group}/{v}");
            if let Some(resource) = cluster.resource(&api, self.kind).await? {
                served = Some((api, resource));
                break;
            }
        }
        let Some((api_version, resource)) = served else {
            return Ok(None);
        };
        let request = cluster.requests(&api_version, self.kind, &resource, Some(&self.namespace));
        let what = format!("{} {}/{}", self.kind, self.namespace, self.name);
        let owner = match cluster
            .send(
                request.get(&self.name, &kube::api::GetParams::default()),
                &what,
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let running = if self.tool == "Flux" {
            owner["spec"]["suspend"].as_bool() != Some(true)
        } else {
            // Auto-sync is on while `automated` is there and not
            // `enabled: false`.
            let automated = &owner["spec"]["syncPolicy"]["automated"];
            !automated.is_null() && automated["enabled"].as_bool() != Some(false)
        };
        Ok(running.then(|| {
            format!(
                "{} still applies it: {}",
                self.describe(),
                self.how_to_suspend()
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn owners_are_read_from_the_marks_controllers_leave() {
        let ks = json!({"metadata": {"labels": {
            "kustomize.toolkit.fluxcd.io/name": "apps",
            "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}}});
        let o = GitOpsOwner::of(&ks).expect("flux");
        assert_eq!(o.describe(), "Flux Kustomization flux-system/apps");
        assert!(
            o.how_to_suspend()
                .contains("flux suspend kustomization apps -n flux-system")
        );
        let hr = json!({"metadata": {"labels": {"helm.toolkit.fluxcd.io/name": "web",
            "helm.toolkit.fluxcd.io/namespace": "default"}}});
        assert_eq!(GitOpsOwner::of(&hr).expect("hr").kind, "HelmRelease");
        let argo = json!({"metadata": {"annotations": {
            "argocd.argoproj.io/tracking-id": "guestbook:apps/Deployment:default/web"}}});
        let a = GitOpsOwner::of(&argo).expect("argo");
        assert_eq!(
            (a.namespace.as_str(), a.name.as_str()),
            ("argocd", "guestbook")
        );
        let anyns = json!({"metadata": {"annotations": {
            "argocd.argoproj.io/tracking-id": "team-a_guestbook:/ConfigMap:default/c"}}});
        let a = GitOpsOwner::of(&anyns).expect("argo");
        assert_eq!(
            (a.namespace.as_str(), a.name.as_str()),
            ("team-a", "guestbook")
        );
        // A Helm chart's own instance label is not Argo CD's.
        let helm = json!({"metadata": {"labels": {"app.kubernetes.io/instance": "web",
            "app.kubernetes.io/managed-by": "Helm"}, "managedFields": [{"manager": "helm"}]}});
        assert_eq!(GitOpsOwner::of(&helm), None);
        // A chart Argo CD synced (label tracking): Argo CD's.
        let argo_chart = json!({"metadata": {"labels": {"app.kubernetes.io/instance": "web",
            "app.kubernetes.io/managed-by": "Helm"}, "managedFields": [{"manager": "argocd-controller"}]}});
        assert_eq!(GitOpsOwner::of(&argo_chart).expect("argo").name, "web");
        let by_label = json!({"metadata": {"labels": {"app.kubernetes.io/instance": "guestbook"},
            "managedFields": [{"manager": "argocd-controller"}]}});
        assert_eq!(GitOpsOwner::of(&by_label).expect("argo").name, "guestbook");
        assert_eq!(GitOpsOwner::of(&json!({"metadata": {}})), None);
    }
}
