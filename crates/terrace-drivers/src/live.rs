//! Objects on a live cluster: a cluster target whose binding names a
//! kubeconfig (or `inCluster: true`). Planning and applying are
//! `terrace-kube`'s; this module turns a unit into its terms and back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Map, Value, json};
use terrace_core::config::UNIT_FILE;
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{Applied, DestroyContext, DriverError, ResolvedTarget, UnitContext};
use terrace_core::kind::Timeout;
use terrace_core::plan::UnitPlan;
use terrace_kube::sync::{self, Conflicts, Desired, KubePlan, Options, Owner};
use terrace_kube::{ClusterPool, Endpoint, KubeError};

use crate::digest;
use crate::manifests::Objects;

/// The plan payload: what `terrace-kube` carries out, and the outputs the
/// unit will have.
#[derive(Debug)]
struct LivePlan {
    kube: KubePlan,
    outputs: Map<String, Value>,
}

/// Where a live target is; `None` for the embedded default.
pub(crate) fn endpoint(root: &Path, target: &ResolvedTarget) -> Option<Endpoint> {
    let b = &target.binding;
    if let Some(inline) = &b.kubeconfig_inline {
        return Some(Endpoint::Inline {
            kubeconfig: terrace_kube::InlineText(std::sync::Arc::clone(&inline.0)),
            context: b.context.clone(),
        });
    }
    if let Some(path) = &b.kubeconfig {
        // `~/…` is the user's home; other relative paths are the project's.
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let path = match (path.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => root.join(path),
        };
        return Some(Endpoint::Kubeconfig {
            path,
            context: b.context.clone(),
        });
    }
    (b.in_cluster == Some(true)).then_some(Endpoint::InCluster)
}

fn kube_error(e: KubeError) -> DriverError {
    match e {
        KubeError::Object {
            object,
            source_file,
            message,
        } => Diagnostic::new(format!("{object}: {message}"))
            .in_file(source_file)
            .into(),
        other => DriverError::Target(other.to_string()),
    }
}

/// The unit's `apply:` settings as options.
fn options(ctx: &UnitContext<'_>) -> Result<Options, DriverError> {
    let file = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    let settings = match ctx.unit.settings.get("apply") {
        None | Some(Value::Null) => ApplySettings::default(),
        Some(v) => ApplySettings::deserialize(v).map_err(|e| {
            Diagnostic::new(format!("invalid `apply` settings: {e}")).in_file(&file)
        })?,
    };
    let mut options = Options::default();
    if let Some(c) = settings.conflicts {
        options.conflicts = match c {
            ConflictPolicy::Yield => Conflicts::Yield,
            ConflictPolicy::Force => Conflicts::Force,
            ConflictPolicy::Error => Conflicts::Error,
        };
    }
    if let Some(w) = settings.wait {
        options.wait = w;
    }
    if let Some(t) = &settings.timeout {
        options.timeout = t.duration();
    }
    options.namespace = settings.namespace.clone();
    // For CI against clusters where pods never start (no nodes), and for
    // tests: the environment can turn waiting off, or poll faster.
    if let Ok(w) = std::env::var("TERRACE_KUBE_WAIT") {
        options.wait = !matches!(w.trim(), "false" | "0" | "no");
    }
    if let Ok(poll) = std::env::var("TERRACE_KUBE_POLL_MS")
        && let Ok(ms) = poll.parse::<u64>()
    {
        options.poll = Duration::from_millis(ms.max(1));
    }
    Ok(options)
}

/// Starts connecting to a cluster (and reading the core group's
/// discovery) in the background, when a runtime is there to run it.
pub(crate) fn warm_up(clusters: &Arc<ClusterPool>, target: String, endpoint: Endpoint) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let clusters = Arc::clone(clusters);
    runtime.spawn(async move {
        if let Ok(cluster) = clusters.get(&target, &endpoint).await {
            let _ = cluster.resource("v1", "Namespace").await;
        }
    });
}

/// Plans `objects` on the live cluster `target` names.
pub(crate) async fn plan(
    ctx: &UnitContext<'_>,
    clusters: &ClusterPool,
    target: &str,
    endpoint: &Endpoint,
    rendered: Objects,
) -> Result<UnitPlan, DriverError> {
    let Objects {
        objects,
        outputs: extra_outputs,
        notes: extra_notes,
        namespace,
        remove,
    } = rendered;
    let mut options = options(ctx)?;
    if namespace.is_some() {
        options.namespace = namespace;
    }
    options.remove = remove;
    options.adopt_from = ctx.unit.adopts_from.clone();
    let cluster = clusters.get(target, endpoint).await.map_err(kube_error)?;
    // Secret values never enter the render hash; which cluster does (a
    // saved plan is for the cluster it was made on, whatever file its
    // kubeconfig is read from).
    let mut hashed = format!("{}\0", cluster.identity());
    for o in &objects {
        hashed.push_str(&o.address);
        hashed.push('\0');
        if o.hides_diff() {
            let sources: Vec<String> = o
                .secret_sources
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            hashed.push_str(&crate::sealed_sources_digest(ctx.root, &sources));
        } else {
            hashed.push_str(&o.value.to_string());
        }
        hashed.push('\0');
    }
    let mut outputs = json!({
        "cluster": target,
        "objects": objects.iter().map(|o| o.address.clone()).collect::<Vec<_>>(),
    })
    .as_object()
    .cloned()
    .expect("a map");
    outputs.extend(extra_outputs);
    let desired: Vec<Desired> = objects
        .into_iter()
        .map(|o| Desired {
            sensitive: o.hides_diff(),
            address: o.address,
            source: o.source,
            value: o.value,
        })
        .collect();
    let owner = Owner {
        project: ctx.project.to_owned(),
        environment: ctx.environment.to_owned(),
        unit: ctx.unit.name.clone(),
    };
    let prior = ctx
        .prior
        .map(|p| p.inventory.as_slice())
        .unwrap_or_default();
    let planned = sync::plan(cluster, owner, desired, prior, options)
        .await
        .map_err(kube_error)?;
    Ok(UnitPlan {
        action: UnitPlan::action_for(ctx.prior.is_some(), &planned.changes),
        changes: planned.changes,
        unchanged: planned.unchanged,
        outputs: Some(outputs.clone()),
        render_hash: digest(hashed.as_bytes()),
        notes: extra_notes.into_iter().chain(planned.notes).collect(),
        payload: Some(Arc::new(LivePlan {
            kube: planned.plan,
            outputs,
        })),
    })
}

/// Whether a plan was made for a live cluster.
pub(crate) fn is_live(plan: &UnitPlan) -> bool {
    plan.payload::<LivePlan>().is_some()
}

/// Carries out a live plan.
pub(crate) async fn apply(plan: &UnitPlan, force: bool) -> Result<Applied, DriverError> {
    let live = plan
        .payload::<LivePlan>()
        .ok_or_else(|| DriverError::Other("plan was not made for a live cluster".into()))?;
    // A GitOps controller still applying what this unit takes over: the
    // two would undo each other's work.
    let held: Vec<String> = live
        .kube
        .objects
        .iter()
        .filter_map(|o| {
            o.ownership
                .still_applied_by
                .as_ref()
                .map(|why| format!("{}: {why}", o.desired.address))
        })
        .collect();
    if !held.is_empty() && !force {
        return Err(DriverError::Other(format!(
            "nothing was applied: {}. Suspend it, then apply again; `apply --force` takes the objects over all the same",
            held.join("; ")
        )
        .into()));
    }
    match sync::apply(&live.kube).await {
        Ok(inventory) => Ok(Applied {
            outputs: live.outputs.clone(),
            inventory,
            sensitive: Vec::new(),
        }),
        Err(failure) => Err(DriverError::Incomplete {
            message: kube_error(failure.error).to_string(),
            applied: Box::new(Applied {
                outputs: live.outputs.clone(),
                inventory: failure.inventory,
                sensitive: Vec::new(),
            }),
        }),
    }
}

/// Plans deleting what a unit applied to a live cluster; `None` when it
/// was applied to the embedded target.
pub(crate) async fn plan_destroy(
    ctx: &DestroyContext<'_>,
    clusters: &ClusterPool,
) -> Option<Result<UnitPlan, DriverError>> {
    let prior = ctx.prior;
    // What it applied says where: objects on a cluster, or files.
    if !prior
        .inventory
        .iter()
        .any(|i| matches!(i, terrace_core::state::InventoryItem::Object { .. }))
    {
        return None;
    }
    let name = ctx
        .unit
        .and_then(|u| u.target.as_ref().map(|t| t.name.clone()))
        .or_else(|| prior.outputs.get("cluster")?.as_str().map(str::to_owned))?;
    Some(
        async {
            // The unit's own target when it is still here (a kubeconfig
            // from a unit's output is resolved there), else the project's.
            let target = ctx
                .unit
                .and_then(|u| u.target.as_ref())
                .filter(|t| t.name == name)
                .or_else(|| ctx.targets.get(&name))
                .ok_or_else(|| {
                DriverError::Target(format!(
                    "unit `{}` was applied to cluster `{name}`, which terrace.yaml no longer defines; define the target again to destroy it",
                    prior.unit
                ))
            })?;
            let endpoint = endpoint(ctx.root, target).ok_or_else(|| {
                DriverError::Target(format!(
                    "unit `{}` was applied to the live cluster `{name}`, which is not bound to a kubeconfig now; bind it (`--cluster {name}=KUBECONFIG`) to destroy it",
                    prior.unit
                ))
            })?;
            let cluster = clusters.get(&name, &endpoint).await.map_err(kube_error)?;
            let owner = Owner {
                project: ctx.project.to_owned(),
                environment: ctx.environment.to_owned(),
                unit: prior.unit.clone(),
            };
            let planned = sync::plan_destroy(cluster, owner, &prior.inventory, Options::default())
                .await
                .map_err(kube_error)?;
            Ok(UnitPlan {
                action: terrace_core::plan::Action::Delete,
                changes: planned.changes,
                unchanged: 0,
                outputs: Some(Map::new()),
                render_hash: String::new(),
                notes: planned.notes,
                payload: Some(Arc::new(LivePlan {
                    kube: planned.plan,
                    outputs: Map::new(),
                })),
            })
        }
        .await,
    )
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
    /// Where namespaced objects that name no namespace land (Argo CD's
    /// `destination.namespace`); default: the kubeconfig's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How long the waits of one apply may take, as `90s`, `5m` or `1h`
    /// (default `5m`). Dependents of a unit that is not healthy in time do
    /// not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
}

/// What to do with a field another field manager owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    Yield,
    Force,
    Error,
}
