//! Plan and apply a unit's objects on a live cluster.
//!
//! **Plan** reads, never writes: each object is fetched; an object that
//! exists is applied server-side with `dryRun=All`, and the answer is
//! compared with the live object (both [`normalize`]d), so defaulted
//! fields, mutating webhooks and fields other managers own never show as
//! drift. An object that does not exist is a create. Objects of the prior
//! inventory that the unit no longer renders are planned for deletion,
//! unless they opt out ([`PRUNE`]) or another unit took them over.
//!
//! **Apply** carries out exactly that plan: steps in [`order`]'s order,
//! server-side apply under the field manager `terrace`, only for objects
//! the plan says change; CRDs are waited for until Established before the
//! next step; after each wave the applied objects are waited for until
//! healthy (per-unit timeout); PostSync hooks run after; then pruning in
//! reverse order. Every applied object carries [`MANAGED_BY`] and the
//! [`PROJECT`], [`ENVIRONMENT`] and [`UNIT`] annotations.
//!
//! **Conflicts.** When a field terrace sets is owned by another field
//! manager with a different value, the API server refuses the apply. What
//! happens then is the unit's [`Conflicts`] policy:
//! - `yield` (the default): a field a controller owns (an autoscaler's
//!   `spec.replicas`) is left to it, and the plan says so; a field changed
//!   by hand ([`is_hand_edit`]: `kubectl edit`/`patch`/`scale`, k9s, the
//!   dashboard) is drift: the plan shows it and apply takes it back;
//! - `force`: every such field is taken over;
//! - `error`: the plan fails, naming the fields and their owners.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{debug, info};

use terrace_core::plan::{Action, Change};
use terrace_core::state::{InventoryItem, ObjectRef};

use crate::diff::{self, normalize};
use crate::gitops::GitOpsOwner;
use crate::health::{Health, health};
use crate::order::{self, Phase, Role};
use crate::{Cluster, FIELD_MANAGER, KubeError, Resource};

/// The label every applied object carries.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The project an object belongs to.
pub const PROJECT: &str = "terrace.dev/project";
/// The environment an object belongs to.
pub const ENVIRONMENT: &str = "terrace.dev/environment";
/// The unit an object belongs to.
pub const UNIT: &str = "terrace.dev/unit";
/// `terrace.dev/prune: disabled` keeps an object in the cluster when it
/// leaves the unit (Flux's `kustomize.toolkit.fluxcd.io/prune: disabled`
/// and Argo CD's `argocd.argoproj.io/sync-options: Prune=false` are
/// honoured too).
pub const PRUNE: &str = "terrace.dev/prune";

/// How many requests run at once within a step.
const CONCURRENCY: usize = 8;

/// Who owns the objects of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub project: String,
    pub environment: String,
    pub unit: String,
}

impl Owner {
    fn describe(&self) -> String {
        format!(
            "unit `{}` of project `{}`, environment `{}`",
            self.unit, self.project, self.environment
        )
    }

    /// The owner an object's annotations name, if any.
    fn of(v: &Value) -> Option<Owner> {
        let a = &v["metadata"]["annotations"];
        Some(Owner {
            project: a[PROJECT].as_str()?.to_owned(),
            environment: a[ENVIRONMENT].as_str()?.to_owned(),
            unit: a[UNIT].as_str()?.to_owned(),
        })
    }

    fn stamp(&self, v: &mut Value) {
        let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.entry(MANAGED_BY).or_insert_with(|| json!("terrace"));
        }
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(PROJECT.to_owned(), json!(self.project));
            a.insert(ENVIRONMENT.to_owned(), json!(self.environment));
            a.insert(UNIT.to_owned(), json!(self.unit));
        }
    }
}

/// What to do when another field manager owns a field terrace sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conflicts {
    /// Leave the field to its owner, and say so in the plan.
    #[default]
    Yield,
    /// Take the field over (`force=true`).
    Force,
    /// Fail, naming the fields and their owners.
    Error,
}

/// How a unit is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub conflicts: Conflicts,
    /// Wait for applied objects to become healthy.
    pub wait: bool,
    /// How long the waits of one apply may take in all.
    pub timeout: Duration,
    /// How often a wait looks again.
    pub poll: Duration,
    /// Where namespaced objects that name no namespace land (a Helm
    /// release's namespace); `None`: the cluster's default namespace.
    pub namespace: Option<String>,
    /// Units of the same project and environment whose objects this unit
    /// takes over (they handed them over): applying stamps this unit's
    /// marks on them instead of failing on another owner.
    pub adopt_from: Vec<String>,
    /// Objects the unit asked to have deleted whoever made them (Helm's
    /// release records after terrace took the release over).
    pub remove: Vec<Removal>,
}

/// Objects to delete, picked by kind, namespace and labels, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    /// A label selector (`owner=helm,name=web`).
    pub labels: String,
    /// Shown after each address in the plan.
    pub why: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            conflicts: Conflicts::Yield,
            wait: true,
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(2),
            namespace: None,
            adopt_from: Vec::new(),
            remove: Vec::new(),
        }
    }
}

/// One object the unit renders.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// `apps/v1 Deployment default/web`.
    pub address: String,
    /// The file it came from, for messages.
    pub source: String,
    /// The object, decrypted when it holds secrets: it lives only in memory.
    pub value: Value,
    /// Holds secrets: plans show no values of it.
    pub sensitive: bool,
}

/// Where an object lives on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    /// `None` for a custom resource whose CRD this unit creates: found
    /// once the CRD is established.
    resource: Option<Resource>,
}

impl Target {
    /// The object's identity, as the inventory records it.
    fn object_ref(&self) -> ObjectRef {
        let (group, version) = match self.api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), self.api_version.clone()),
        };
        ObjectRef {
            group,
            version,
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// kube's requests for this object's kind, in its namespace.
    fn requests(&self, cluster: &Cluster, resource: &Resource) -> kube::core::Request {
        cluster.requests(
            &self.api_version,
            &self.kind,
            resource,
            self.namespace.as_deref(),
        )
    }

    /// The object as the cluster has it.
    async fn get(&self, cluster: &Cluster, resource: &Resource) -> Result<Value, KubeError> {
        let request = self
            .requests(cluster, resource)
            .get(&self.name, &GetParams::default());
        cluster.send(request, &format!("get {}", self.name)).await
    }

    /// Which list this object is in: its kind and namespace.
    fn list_key(&self, resource: &Resource) -> String {
        let namespace = self.namespace.as_deref().filter(|_| resource.namespaced);
        format!(
            "{} {} {}",
            self.api_version,
            resource.plural,
            namespace.unwrap_or("")
        )
    }
}

/// One object's part of a plan.
#[derive(Debug, Clone)]
pub struct ObjectPlan {
    pub desired: Desired,
    pub action: Action,
    /// A hook: applied on every apply of the unit, never compared.
    pub hook: bool,
    /// Who holds its fields, as the plan found.
    pub ownership: Ownership,
    role: Role,
    target: Target,
}

/// An object to delete.
#[derive(Debug, Clone)]
pub struct PruneItem {
    pub address: String,
    live: Value,
    target: Target,
}

/// What apply carries out: the plan payload of a unit on a live cluster.
#[derive(Debug, Clone)]
pub struct KubePlan {
    pub cluster: Arc<Cluster>,
    pub owner: Owner,
    pub options: Options,
    pub objects: Vec<ObjectPlan>,
    pub prune: Vec<PruneItem>,
    /// The inventory before this apply, kept for what a failed apply may
    /// have left behind.
    pub prior: Vec<InventoryItem>,
}

/// A plan and what it says.
#[derive(Debug)]
pub struct Planned {
    pub plan: KubePlan,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    pub notes: Vec<String>,
}

/// An apply that stopped part way: what is in the cluster now, and why.
#[derive(Debug)]
pub struct ApplyFailure {
    pub inventory: Vec<InventoryItem>,
    pub error: KubeError,
}

/// The group versions and kinds the CRDs among `objects` define.
fn defined_by_crds(objects: &[Desired]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for o in objects {
        let v = &o.value;
        if v["kind"] != "CustomResourceDefinition" {
            continue;
        }
        let (Some(group), Some(kind)) = (
            v["spec"]["group"].as_str(),
            v["spec"]["names"]["kind"].as_str(),
        ) else {
            continue;
        };
        for version in v["spec"]["versions"].as_array().into_iter().flatten() {
            if let Some(name) = version["name"].as_str() {
                out.insert((format!("{group}/{name}"), kind.to_owned()));
            }
        }
    }
    out
}

/// The digest an inventory records of an applied object.
fn digest(o: &Desired) -> Option<String> {
    if o.sensitive {
        // A hash of a secret's plaintext could be guessed at; record none.
        return None;
    }
    let text = serde_json::to_string(&o.value).expect("values serialize");
    Some(terrace_fs::digest::digest(text.as_bytes()))
}

/// Plans `desired` on `cluster` for `owner`, against the prior inventory.
pub async fn plan(
    cluster: Arc<Cluster>,
    owner: Owner,
    desired: Vec<Desired>,
    prior: &[InventoryItem],
    options: Options,
) -> Result<Planned, KubeError> {
    let crd_kinds = defined_by_crds(&desired);
    let mut objects = Vec::with_capacity(desired.len());
    let mut skipped_notes = Vec::new();
    for mut d in desired {
        let role = order::role(&d.value).map_err(|e| KubeError::Object {
            object: d.address.clone(),
            source_file: d.source.clone(),
            message: e.message,
        })?;
        // `hook: Skip` is never applied, so it is never planned either.
        if role.skip {
            skipped_notes.push(format!("{}: not applied (hook: Skip)", d.address));
            continue;
        }
        owner.stamp(&mut d.value);
        let target = locate(&cluster, &mut d, &crd_kinds, options.namespace.as_deref()).await?;
        objects.push(ObjectPlan {
            hook: role.phase != Phase::Sync,
            role,
            target,
            action: Action::Create,
            ownership: Ownership::default(),
            desired: d,
        });
    }

    // What is live: one LIST per kind and namespace that holds several of
    // the unit's objects, else one GET per object (in `compare`).
    let listed = list_live(&cluster, &objects).await?;
    let digests: HashMap<String, &str> = prior
        .iter()
        .filter_map(|i| match i {
            InventoryItem::Object {
                object,
                digest: Some(d),
            } => Some((object.to_string(), d.as_str())),
            _ => None,
        })
        .collect();
    // Compare every object with the cluster, a few at a time.
    // The futures are made before the stream, so it holds no closure
    // (whose lifetimes would keep the whole future from being `Send`).
    let comparisons: Vec<_> = objects
        .iter()
        .map(|o| {
            let live = o
                .target
                .resource
                .as_ref()
                .and_then(|r| listed.get(&o.target.list_key(r)))
                .map(|items| items.get(&o.target.name));
            let last = digests.get(o.desired.address.as_str()).copied();
            compare(&cluster, &owner, o, live, last, &options)
        })
        .collect();
    let compared: Vec<(Action, Ownership, Option<String>)> = futures::stream::iter(comparisons)
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let mut unchanged = 0;
    for (o, (action, ownership, diff)) in objects.iter_mut().zip(compared) {
        o.action = action;
        if !ownership.yielded.is_empty() {
            notes.push(format!(
                "{}: left to the controllers that own them: {}",
                o.desired.address,
                ownership.yielded.join(", ")
            ));
        }
        if !ownership.taken_back.is_empty() {
            notes.push(format!(
                "{}: changed by hand, taken back: {}",
                o.desired.address,
                ownership.taken_back.join(", ")
            ));
        }
        if let Some(from) = &ownership.adopted_from {
            notes.push(format!("{}: adopting it from {from}", o.desired.address));
        }
        if let Some(why) = &ownership.still_applied_by {
            notes.push(format!(
                "{}: {why}; apply refuses until then (`apply --force` takes it over all the same, and the two will fight)",
                o.desired.address
            ));
        }
        o.ownership = ownership;
        if o.hook {
            continue;
        }
        match action {
            Action::NoOp => unchanged += 1,
            a => changes.push(Change {
                address: o.desired.address.clone(),
                object: Some(o.target.object_ref()),
                action: a,
                diff,
            }),
        }
    }

    // What left the unit. An inventory entry that names one of the
    // unit's objects another way (written before its namespace was filled
    // in) is still that object, never pruned.
    let wanted: BTreeSet<ObjectRef> = objects.iter().map(|o| o.target.object_ref()).collect();
    let gone: Vec<&ObjectRef> = objects_of(prior).filter(|o| !wanted.contains(*o)).collect();
    let kept: BTreeSet<(String, String, Option<String>, String)> = objects
        .iter()
        .map(|o| {
            let t = &o.target;
            (
                group_of(&t.api_version),
                t.kind.clone(),
                t.namespace.clone(),
                t.name.clone(),
            )
        })
        .collect();
    let (mut prune, prune_changes, prune_notes) =
        plan_prune(&cluster, &owner, &gone, &kept).await?;
    changes.extend(prune_changes);
    notes.extend(prune_notes);
    for removal in &options.remove {
        for item in plan_removal(&cluster, removal).await? {
            changes.push(Change {
                address: item.address.clone(),
                object: Some(item.target.object_ref()),
                action: Action::Delete,
                diff: None,
            });
            notes.push(format!("{}: {}", item.address, removal.why));
            prune.push(item);
        }
    }
    notes.extend(skipped_notes);
    Ok(Planned {
        plan: KubePlan {
            cluster,
            owner,
            options,
            objects,
            prune,
            prior: prior.to_vec(),
        },
        changes,
        unchanged,
        notes,
    })
}

/// Plans deleting every object of the prior inventory.
pub async fn plan_destroy(
    cluster: Arc<Cluster>,
    owner: Owner,
    prior: &[InventoryItem],
    options: Options,
) -> Result<Planned, KubeError> {
    let all: Vec<&ObjectRef> = objects_of(prior).collect();
    let (prune, changes, notes) = plan_prune(&cluster, &owner, &all, &BTreeSet::new()).await?;
    Ok(Planned {
        plan: KubePlan {
            cluster,
            owner,
            options,
            objects: Vec::new(),
            prune,
            prior: prior.to_vec(),
        },
        changes,
        unchanged: 0,
        notes,
    })
}

/// Finds how an object is served, filling in its namespace.
async fn locate(
    cluster: &Cluster,
    d: &mut Desired,
    crd_kinds: &BTreeSet<(String, String)>,
    default_namespace: Option<&str>,
) -> Result<Target, KubeError> {
    let err = |message: String| KubeError::Object {
        object: d.address.clone(),
        source_file: d.source.clone(),
        message,
    };
    let api_version = d.value["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kind = d.value["kind"].as_str().unwrap_or_default().to_owned();
    let name = d.value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let resource = cluster
        .resource(&api_version, &kind)
        .await
        .map_err(|e| err(format!("API discovery failed: {e}")))?;
    let given = d.value["metadata"]["namespace"].as_str().map(str::to_owned);
    let namespace = match &resource {
        Some(r) if r.namespaced => {
            let ns = match given {
                Some(ns) => ns,
                None => {
                    // Named where it lands, so the inventory (and a later
                    // prune) finds it there whatever the default
                    // namespace is then.
                    let ns = default_namespace
                        .unwrap_or_else(|| cluster.default_namespace())
                        .to_owned();
                    d.address = format!("{api_version} {kind} {ns}/{name}");
                    ns
                }
            };
            d.value["metadata"]["namespace"] = json!(ns);
            Some(ns)
        }
        Some(_) => {
            if let Some(meta) = d.value["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            None
        }
        None if crd_kinds.contains(&(api_version.clone(), kind.clone())) => given,
        None => {
            return Err(err(format!(
                "cluster `{}` does not serve kind `{kind}` of apiVersion `{api_version}`; check the apiVersion, or install the CustomResourceDefinition first (in this unit, or in a unit this one depends on)",
                cluster.name
            )));
        }
    };
    Ok(Target {
        api_version,
        kind,
        namespace,
        name,
        resource,
    })
}

/// Whether a field manager is a person's tool (its changes are drift,
/// taken back under `conflicts: yield`) rather than a controller (whose
/// fields are left to it). Helm and the GitOps controllers (Flux's
/// helm-controller and kustomize-controller, Argo CD's) count as people's
/// tools too: terrace takes over what they applied, so their fields are
/// terrace's to change.
pub fn is_hand_edit(manager: &str) -> bool {
    manager.starts_with("kubectl")
        || manager.starts_with("k9s")
        || manager.starts_with("Mozilla")
        || manager == "before-first-apply"
        || manager == "helm"
        || manager == "helm-controller"
        || manager == "kustomize-controller"
        || manager == "argocd-controller"
}

/// Who holds the fields of an object terrace applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Fields left to the controllers that own them.
    pub yielded: Vec<String>,
    /// Fields changed by hand, taken back (`force=true`).
    pub taken_back: Vec<String>,
    /// The object exists without this unit's marks and is taken over:
    /// who had it (a unit that handed it over, or the field managers that
    /// made it).
    pub adopted_from: Option<String>,
    /// A GitOps controller (Flux, Argo CD) still applies it: why, and how
    /// to suspend it. The apply refuses while it does, unless forced.
    pub still_applied_by: Option<String>,
}

/// Who owns the field at `path` (as a conflict names it:
/// `.spec.replicas`, `.spec.containers[name="web"].image`) of `live`, by
/// its `metadata.managedFields`: every manager but `terrace` whose
/// `fieldsV1` holds the path.
pub fn managers_of(live: &Value, path: &str) -> Vec<String> {
    live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] != FIELD_MANAGER)
        .filter(|m| holds(&m["fieldsV1"], path))
        .filter_map(|m| m["manager"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a `fieldsV1` set holds `path`: `f:<name>` for a field,
/// `k:{...}` for a list item picked by its keys.
fn holds(set: &Value, path: &str) -> bool {
    let Some(map) = set.as_object() else {
        return false;
    };
    match path.chars().next() {
        None => true,
        Some('.') => {
            let rest = &path[1..];
            // Field names may hold dots: the longest name that fits wins.
            let found = map
                .keys()
                .filter_map(|k| k.strip_prefix("f:").map(|name| (k, name)))
                .filter(|(_, name)| {
                    rest.starts_with(name)
                        && matches!(
                            rest[name.len()..].chars().next(),
                            None | Some('.') | Some('[')
                        )
                })
                .max_by_key(|(_, name)| name.len());
            found.is_some_and(|(k, name)| holds(&map[k], &rest[name.len()..]))
        }
        Some('[') => {
            let Some(end) = closing_bracket(path) else {
                return false;
            };
            let (selector, after) = (&path[1..end], &path[end + 1..]);
            map.iter().any(|(k, child)| {
                k.strip_prefix("k:")
                    .and_then(|keys| serde_json::from_str::<Value>(keys).ok())
                    .is_some_and(|item| selects(&item, selector))
                    && holds(child, after)
            })
        }
        Some(_) => false,
    }
}

/// The manager a conflict's message names (`conflict with
/// "kubectl-edit" using v1`), for a live object that does not say.
fn manager_in_message(message: &str) -> &str {
    message.split('"').nth(1).unwrap_or(message)
}

/// Server-side apply of an object, following the conflict policy from
/// what `known` already says; returns the object as the server answered
/// and who holds its fields.
async fn server_side_apply(
    cluster: &Cluster,
    o: &ObjectPlan,
    target: &Target,
    resource: &Resource,
    conflicts: Conflicts,
    dry_run: bool,
    live: Option<&Value>,
) -> Result<(Value, Ownership), KubeError> {
    let mut body = o.desired.value.clone();
    let mut owned = o.ownership.clone();
    for field in &owned.yielded {
        remove_field(&mut body, field);
    }
    // Each round settles at least one conflict more, so this ends.
    loop {
        let force = conflicts == Conflicts::Force || !owned.taken_back.is_empty();
        let what = format!("apply {}", o.desired.address);
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        let request =
            target
                .requests(cluster, resource)
                .patch(&target.name, &params, &Patch::Apply(&body));
        match cluster.send(request, &what).await {
            Ok(answer) => return Ok((answer, owned)),
            Err(KubeError::Api(status)) if status.code == 409 => {
                let causes: Vec<(String, String)> = status
                    .details
                    .as_ref()
                    .map(|d| {
                        d.causes
                            .iter()
                            .filter(|c| !c.field.is_empty())
                            .map(|c| (c.field.clone(), c.message.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let new: Vec<&(String, String)> = causes
                    .iter()
                    .filter(|(f, _)| !owned.yielded.contains(f) && !owned.taken_back.contains(f))
                    .collect();
                if conflicts == Conflicts::Yield && !new.is_empty() && !force {
                    for (field, message) in new {
                        // Who owns it: the live object's managedFields,
                        // else the conflict's own words.
                        let managers = live.map(|l| managers_of(l, field)).unwrap_or_default();
                        let hand = if managers.is_empty() {
                            is_hand_edit(manager_in_message(message))
                        } else {
                            managers.iter().all(|m| is_hand_edit(m))
                        };
                        if hand {
                            owned.taken_back.push(field.clone());
                        } else {
                            remove_field(&mut body, field);
                            owned.yielded.push(field.clone());
                        }
                    }
                    continue;
                }
                let fields: Vec<String> = causes
                    .iter()
                    .map(|(f, m)| {
                        let owners = live.map(|l| managers_of(l, f)).unwrap_or_default();
                        if owners.is_empty() {
                            format!("{f} ({m})")
                        } else {
                            let named: Vec<String> =
                                owners.iter().map(|o| format!("\"{o}\"")).collect();
                            format!("{f} (conflict with {})", named.join(", "))
                        }
                    })
                    .collect();
                let message = if fields.is_empty() {
                    status.message.clone()
                } else {
                    format!(
                        "fields owned by another field manager: {}; set `apply.conflicts: force` in the unit to take them over, or `yield` to leave them to their owner, or remove them from the manifest",
                        fields.join(", ")
                    )
                };
                return Err(KubeError::Object {
                    object: o.desired.address.clone(),
                    source_file: o.desired.source.clone(),
                    message,
                });
            }
            Err(e) => return Err(e.about(&o.desired.address, &o.desired.source)),
        }
    }
}

/// Compares one object with the cluster: its action, who holds its
/// fields, and the diff to show.
async fn compare(
    cluster: &Cluster,
    owner: &Owner,
    o: &ObjectPlan,
    listed: Option<Option<&Value>>,
    last_digest: Option<&str>,
    options: &Options,
) -> Result<(Action, Ownership, Option<String>), KubeError> {
    let conflicts = options.conflicts;
    let show_new = || {
        let lines = diff::leaves(&normalize(&o.desired.value));
        Some(diff::describe(&lines, o.desired.sensitive))
    };
    let (Some(resource), false) = (&o.target.resource, o.hook) else {
        return Ok((Action::Create, Ownership::default(), show_new()));
    };
    // What the LIST returned is read in place; a GET's answer is owned.
    let live: std::borrow::Cow<'_, Value> = match listed {
        Some(Some(v)) => std::borrow::Cow::Borrowed(v),
        Some(None) => return Ok((Action::Create, Ownership::default(), show_new())),
        None => match o.target.get(cluster, resource).await {
            Ok(v) => std::borrow::Cow::Owned(v),
            Err(e) if e.is_not_found() => {
                return Ok((Action::Create, Ownership::default(), show_new()));
            }
            Err(e) => return Err(e.about(&o.desired.address, &o.desired.source)),
        },
    };
    let mut adopted_from = None;
    let mut still_applied_by = None;
    match Owner::of(&live) {
        Some(other) if other == *owner => {}
        Some(other)
            if other.project == owner.project
                && other.environment == owner.environment
                && options.adopt_from.contains(&other.unit) =>
        {
            adopted_from = Some(format!("unit `{}`, which handed it over", other.unit));
        }
        Some(other) => {
            return Err(KubeError::Object {
                object: o.desired.address.clone(),
                source_file: o.desired.source.clone(),
                message: format!(
                    "the object in the cluster belongs to {}; one object must have one owning unit: remove it from one of the two units, or give it over with `handOver: {{to: {}}}` in the unit that has it",
                    other.describe(),
                    owner.unit
                ),
            });
        }
        None => {
            // Made by something else (`helm install`, Flux, kubectl):
            // applying takes it over, without recreating it.
            let mut managers: Vec<String> = live["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["manager"].as_str().map(str::to_owned))
                .filter(|m| m != FIELD_MANAGER)
                .collect();
            managers.dedup();
            let by = if managers.is_empty() {
                String::new()
            } else {
                format!("field manager(s) {}", managers.join(", "))
            };
            adopted_from = Some(match GitOpsOwner::of(&live) {
                Some(g) => {
                    still_applied_by = g.still_running(cluster).await?;
                    if by.is_empty() {
                        g.describe()
                    } else {
                        format!("{} ({by})", g.describe())
                    }
                }
                None if by.is_empty() => "no terrace unit (it has no ownership marks)".to_owned(),
                None => by,
            });
        }
    }
    // The fast path: the same object as last applied, every field of it
    // still as applied: the apply would change nothing, no dry-run needed.
    // (Anything else, including a value the server writes differently,
    // goes to the dry-run, which decides.)
    if last_digest.is_some()
        && last_digest == digest(&o.desired).as_deref()
        && contained(&normalize(&o.desired.value), &live)
    {
        return Ok((Action::NoOp, Ownership::default(), None));
    }
    let (dry, mut owned) = server_side_apply(
        cluster,
        o,
        &o.target,
        resource,
        conflicts,
        true,
        Some(&live),
    )
    .await?;
    owned.adopted_from = adopted_from;
    owned.still_applied_by = still_applied_by;
    let hide = o.desired.sensitive || o.target.kind == "Secret";
    let changes = diff::fields(&normalize(&live), &normalize(&dry));
    if changes.is_empty() {
        Ok((Action::NoOp, owned, None))
    } else {
        Ok((Action::Update, owned, Some(diff::describe(&changes, hide))))
    }
}

/// Whether every field of `want` is in `live` with the same value (lists
/// item by item, of the same length).
fn contained(want: &Value, live: &Value) -> bool {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => w
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| contained(v, lv))),
        (Value::Array(w), Value::Array(l)) => {
            w.len() == l.len() && w.iter().zip(l).all(|(a, b)| contained(a, b))
        }
        (w, l) => w == l,
    }
}

/// The live objects of every list (kind and namespace) that holds two or
/// more of `objects`, by list path and name.
async fn list_live(
    cluster: &Cluster,
    objects: &[ObjectPlan],
) -> Result<HashMap<String, HashMap<String, Value>>, KubeError> {
    let mut counts: HashMap<String, (usize, &ObjectPlan)> = HashMap::new();
    for o in objects.iter().filter(|o| !o.hook) {
        if let Some(r) = &o.target.resource {
            counts.entry(o.target.list_key(r)).or_insert((0, o)).0 += 1;
        }
    }
    // One after the other, on the one pooled connection: asked together
    // they open new connections (a TLS handshake each), which measured
    // slower (a no-op plan of 1,000 objects: 92 -> 115 ms). (The
    // futures are made before the stream, so it holds no closure.)
    let lists: Vec<_> = counts
        .into_iter()
        .filter(|(_, (n, _))| *n >= 2)
        .map(|(key, (_, o))| list_one(cluster, key, o))
        .collect();
    futures::stream::iter(lists).buffered(1).try_collect().await
}

/// One LIST of the kind and namespace `key` names, by object name.
async fn list_one(
    cluster: &Cluster,
    key: String,
    o: &ObjectPlan,
) -> Result<(String, HashMap<String, Value>), KubeError> {
    let Some(resource) = &o.target.resource else {
        return Ok((key, HashMap::new()));
    };
    let request = o
        .target
        .requests(cluster, resource)
        .list(&ListParams::default());
    let mut list = match cluster.send(request, &format!("list {key}")).await {
        Ok(v) => v,
        // A namespace this unit creates does not exist yet.
        Err(e) if e.is_not_found() => Value::Null,
        Err(e) => return Err(e.about(&o.desired.address, &o.desired.source)),
    };
    let listed = match list["items"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let mut items = HashMap::new();
    for mut item in listed {
        let Some(name) = item["metadata"]["name"].as_str().map(str::to_owned) else {
            continue;
        };
        // Items of a list carry no apiVersion and kind.
        item["apiVersion"] = json!(o.target.api_version);
        item["kind"] = json!(o.target.kind);
        items.insert(name, item);
    }
    Ok((key, items))
}

/// Whether a live object asks not to be pruned.
fn keeps_on_prune(live: &Value) -> bool {
    let a = &live["metadata"]["annotations"];
    let says = |key: &str| a[key].as_str().map(str::trim);
    matches!(says(PRUNE), Some("disabled" | "false"))
        || says("kustomize.toolkit.fluxcd.io/prune") == Some("disabled")
        || says("argocd.argoproj.io/sync-options")
            .is_some_and(|o| o.split(',').any(|x| x.trim() == "Prune=false"))
}

async fn plan_prune(
    cluster: &Cluster,
    owner: &Owner,
    gone: &[&ObjectRef],
    kept: &BTreeSet<(String, String, Option<String>, String)>,
) -> Result<(Vec<PruneItem>, Vec<Change>, Vec<String>), KubeError> {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for object in gone {
        let address = object.to_string();
        let (api_version, kind, namespace, name) = (
            object.api_version(),
            object.kind.clone(),
            object.namespace.clone(),
            object.name.clone(),
        );
        let Some(resource) = cluster.resource(&api_version, &kind).await? else {
            notes.push(format!(
                "{address}: not pruned: the cluster no longer serves its kind"
            ));
            continue;
        };
        let target = Target {
            api_version,
            kind,
            namespace: namespace.or_else(|| {
                resource
                    .namespaced
                    .then(|| cluster.default_namespace().to_owned())
            }),
            name,
            resource: Some(resource.clone()),
        };
        let key = (
            group_of(&target.api_version),
            target.kind.clone(),
            target.namespace.clone(),
            target.name.clone(),
        );
        if kept.contains(&key) {
            continue;
        }
        let live = match target.get(cluster, &resource).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.about(&address, "the unit's inventory")),
        };
        if keeps_on_prune(&live) {
            notes.push(format!(
                "{address}: left in the cluster: its annotations disable pruning"
            ));
            continue;
        }
        match Owner::of(&live) {
            Some(o) if o == *owner => {}
            Some(_) => {
                notes.push(format!(
                    "{address}: left in the cluster: another unit owns it now"
                ));
                continue;
            }
            None => {
                notes.push(format!(
                    "{address}: left in the cluster: it does not carry this unit's ownership marks (something else made it)"
                ));
                continue;
            }
        }
        found.push(PruneItem {
            address,
            live,
            target,
        });
    }
    // Reverse apply order.
    let values: Vec<Value> = found.iter().map(|p| p.live.clone()).collect();
    let order = order::delete_order(&values).unwrap_or_else(|_| (0..found.len()).rev().collect());
    let mut slots: Vec<Option<PruneItem>> = found.into_iter().map(Some).collect();
    let prune: Vec<PruneItem> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    let changes = prune
        .iter()
        .map(|p| Change {
            address: p.address.clone(),
            object: Some(p.target.object_ref()),
            action: Action::Delete,
            diff: None,
        })
        .collect();
    Ok((prune, changes, notes))
}

/// The live objects a removal picks.
async fn plan_removal(cluster: &Cluster, removal: &Removal) -> Result<Vec<PruneItem>, KubeError> {
    let Some(resource) = cluster
        .resource(&removal.api_version, &removal.kind)
        .await?
    else {
        return Ok(Vec::new());
    };
    let target = Target {
        api_version: removal.api_version.clone(),
        kind: removal.kind.clone(),
        namespace: resource.namespaced.then(|| removal.namespace.clone()),
        name: String::new(),
        resource: Some(resource.clone()),
    };
    let request = target
        .requests(cluster, &resource)
        .list(&ListParams::default().labels(&removal.labels));
    let what = format!(
        "list {} {} ({})",
        removal.kind, removal.namespace, removal.labels
    );
    let list = match cluster.send(request, &what).await {
        Ok(v) => v,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut items = Vec::new();
    for mut live in list["items"].as_array().cloned().unwrap_or_default() {
        let Some(name) = live["metadata"]["name"].as_str().map(str::to_owned) else {
            continue;
        };
        live["apiVersion"] = json!(removal.api_version);
        live["kind"] = json!(removal.kind);
        let mut t = target.clone();
        t.name = name;
        items.push(PruneItem {
            address: t.object_ref().to_string(),
            live,
            target: t,
        });
    }
    items.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(items)
}

/// Carries out a plan.
pub async fn apply(plan: &KubePlan) -> Result<Vec<InventoryItem>, ApplyFailure> {
    let mut applied = vec![false; plan.objects.len()];
    match run(plan, &mut applied).await {
        Ok(()) => Ok(inventory(plan, &applied, true)),
        Err(error) => Err(ApplyFailure {
            inventory: inventory(plan, &applied, false),
            error,
        }),
    }
}

/// The inventory after an apply: the unit's objects that are in the
/// cluster, and after a failure also what the prior inventory held and
/// was not pruned.
fn inventory(plan: &KubePlan, applied: &[bool], done: bool) -> Vec<InventoryItem> {
    let mut out: Vec<InventoryItem> = plan
        .objects
        .iter()
        .zip(applied)
        .filter(|(o, a)| !o.hook && (**a || o.action == Action::NoOp))
        .map(|(o, _)| InventoryItem::Object {
            object: o.target.object_ref(),
            digest: digest(&o.desired),
        })
        .collect();
    if !done {
        for p in &plan.prior {
            if !out.iter().any(|i| i.address() == p.address()) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// The cluster objects among inventory items.
fn objects_of(items: &[InventoryItem]) -> impl Iterator<Item = &ObjectRef> {
    items.iter().filter_map(|i| match i {
        InventoryItem::Object { object, .. } => Some(object),
        _ => None,
    })
}

async fn run(plan: &KubePlan, applied: &mut [bool]) -> Result<(), KubeError> {
    let cluster = &plan.cluster;
    let deadline = Instant::now() + plan.options.timeout;
    let values: Vec<Value> = plan
        .objects
        .iter()
        .map(|o| o.desired.value.clone())
        .collect();
    let steps = order::apply_steps(&values).map_err(|e| KubeError::Request(e.to_string()))?;
    let mut i = 0;
    while i < steps.len() {
        // One phase and wave at a time; its health is awaited at its end.
        let (phase, wave) = (steps[i].phase, steps[i].wave);
        let mut in_wave = Vec::new();
        while i < steps.len() && steps[i].phase == phase && steps[i].wave == wave {
            let step = &steps[i];
            let todo: Vec<usize> = step
                .objects
                .iter()
                .copied()
                .filter(|&k| plan.objects[k].hook || plan.objects[k].action != Action::NoOp)
                .collect();
            info!(
                ?phase,
                wave,
                objects = todo.len(),
                crds = step.crds,
                "applying a step"
            );
            let applies: Vec<_> = todo.iter().map(|&k| apply_one(plan, k, deadline)).collect();
            let results: Vec<usize> = futures::stream::iter(applies)
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            for k in results {
                applied[k] = true;
                in_wave.push(k);
            }
            // Unchanged objects whose health may have changed are waited
            // for too.
            in_wave.extend(step.objects.iter().copied().filter(|&k| {
                let o = &plan.objects[k];
                !applied[k] && !o.hook && crate::health::has_health(&o.desired.value)
            }));
            if step.crds {
                let crds: Vec<&ObjectPlan> =
                    step.objects.iter().map(|&k| &plan.objects[k]).collect();
                wait_healthy(plan, &crds, deadline).await?;
                for c in crds {
                    for (gv, _) in defined_by_crds(std::slice::from_ref(&c.desired)) {
                        cluster.forget(&gv);
                    }
                }
            }
            i += 1;
        }
        let waited: Vec<&ObjectPlan> = in_wave.iter().map(|&k| &plan.objects[k]).collect();
        let hooks: Vec<&ObjectPlan> = waited.iter().copied().filter(|o| o.hook).collect();
        if plan.options.wait || !hooks.is_empty() {
            let wait_for = if plan.options.wait {
                waited
            } else {
                hooks.clone()
            };
            let outcome = wait_healthy(plan, &wait_for, deadline).await;
            finish_hooks(plan, &hooks, outcome.is_ok()).await?;
            outcome?;
        }
    }
    for p in &plan.prune {
        let resource = p
            .target
            .resource
            .as_ref()
            .expect("pruned objects were found");
        info!(object = %p.address, "pruning");
        delete(cluster, &p.target, resource)
            .await
            .map_err(|e| e.about(&p.address, "the unit's inventory"))?;
    }
    Ok(())
}

/// Deletes an object; says whether it was there (gone already is fine).
async fn delete(
    cluster: &Cluster,
    target: &Target,
    resource: &Resource,
) -> Result<bool, KubeError> {
    let request = target
        .requests(cluster, resource)
        .delete(&target.name, &DeleteParams::background());
    match cluster
        .send(request, &format!("delete {}", target.name))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The resource of an object, found again after its CRD was established.
async fn resource_of(cluster: &Cluster, o: &ObjectPlan) -> Result<Resource, KubeError> {
    if let Some(r) = &o.target.resource {
        return Ok(r.clone());
    }
    // Discovery may serve a new kind a moment after its CRD is
    // Established: ask again for a few seconds.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = cluster
            .resource(&o.target.api_version, &o.target.kind)
            .await?
        {
            return Ok(r);
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        cluster.forget(&o.target.api_version);
    }
    Err(KubeError::Object {
        object: o.desired.address.clone(),
        source_file: o.desired.source.clone(),
        message: format!(
            "cluster `{}` still does not serve kind `{}` after its CustomResourceDefinition was established",
            cluster.name, o.target.kind
        ),
    })
}

/// Where an object is at apply time: a custom resource planned before its
/// CRD existed gets its resource now, and the default namespace if it is
/// namespaced and names none.
async fn placed(plan: &KubePlan, o: &ObjectPlan) -> Result<(Target, Resource), KubeError> {
    let cluster = &plan.cluster;
    let resource = resource_of(cluster, o).await?;
    let mut target = o.target.clone();
    if resource.namespaced && target.namespace.is_none() {
        let ns = plan.options.namespace.as_deref();
        target.namespace = Some(ns.unwrap_or_else(|| cluster.default_namespace()).to_owned());
    }
    Ok((target, resource))
}

async fn apply_one(plan: &KubePlan, k: usize, deadline: Instant) -> Result<usize, KubeError> {
    let o = &plan.objects[k];
    let cluster = &plan.cluster;
    let (target, resource) = placed(plan, o).await?;
    if o.hook && o.role.delete.before_creation {
        // A hook runs anew: the previous run's object goes first.
        let existed = delete(cluster, &target, &resource)
            .await
            .map_err(|e| e.about(&o.desired.address, &o.desired.source))?;
        if existed {
            wait_gone(plan, o, &target, &resource, deadline).await?;
        }
    }
    debug!(object = %o.desired.address, "server-side apply");
    server_side_apply(
        cluster,
        o,
        &target,
        &resource,
        plan.options.conflicts,
        false,
        None,
    )
    .await?;
    Ok(k)
}

async fn wait_gone(
    plan: &KubePlan,
    o: &ObjectPlan,
    target: &Target,
    resource: &Resource,
    deadline: Instant,
) -> Result<(), KubeError> {
    loop {
        match target.get(&plan.cluster, resource).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.about(&o.desired.address, &o.desired.source)),
            Ok(_) if Instant::now() >= deadline => {
                return Err(KubeError::Object {
                    object: o.desired.address.clone(),
                    source_file: o.desired.source.clone(),
                    message:
                        "the previous run of this hook was not deleted within the unit's timeout"
                            .to_owned(),
                });
            }
            Ok(_) => tokio::time::sleep(plan.options.poll).await,
        }
    }
}

/// Waits until every object in `objects` is healthy; names those that are
/// not, with why, when one fails or the deadline passes. Each object is
/// read, then watched (its changes arrive as they happen); where a watch
/// cannot be opened, it is read again every `poll`.
async fn wait_healthy(
    plan: &KubePlan,
    objects: &[&ObjectPlan],
    deadline: Instant,
) -> Result<(), KubeError> {
    let waits = objects.iter().map(|o| wait_one(plan, o, deadline));
    let outcomes = futures::future::join_all(waits).await;
    let mut late = Vec::new();
    for (o, outcome) in objects.iter().zip(outcomes) {
        match outcome? {
            Health::Ready => {}
            Health::Failed(why) => {
                return Err(unhealthy(&[(o.desired.address.clone(), why)], false));
            }
            Health::Progressing(why) => late.push((o.desired.address.clone(), why)),
        }
    }
    if late.is_empty() {
        Ok(())
    } else {
        Err(unhealthy(&late, true))
    }
}

/// How a watch of one object ended.
enum Watched {
    Settled(Health),
    /// Read the object again and watch anew.
    Again,
    /// The answer was no watch stream: poll instead.
    Unwatchable,
}

/// One object until it is ready, fails, or the deadline passes (then
/// `Progressing` with the last reason).
async fn wait_one(plan: &KubePlan, o: &ObjectPlan, deadline: Instant) -> Result<Health, KubeError> {
    let cluster = &plan.cluster;
    let (target, resource) = placed(plan, o).await?;
    let about = |e: KubeError| e.about(&o.desired.address, &o.desired.source);
    loop {
        let live = target.get(cluster, &resource).await.map_err(about)?;
        let why = match health(&live) {
            Health::Progressing(why) => why,
            settled => return Ok(settled),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Health::Progressing(why));
        }
        let version = live["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        let params = kube::api::WatchParams::default()
            .fields(&format!("metadata.name={}", target.name))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        let request = target.requests(cluster, &resource).watch(&params, &version);
        let watched = match cluster
            .watch(request, &format!("watch {}", o.desired.address))
            .await
        {
            Ok(events) => {
                let settle = async {
                    let mut events = std::pin::pin!(events);
                    loop {
                        match events.try_next().await {
                            Ok(Some(
                                kube::core::WatchEvent::Added(v)
                                | kube::core::WatchEvent::Modified(v),
                            )) => match health(&v) {
                                Health::Progressing(_) => {}
                                settled => return Watched::Settled(settled),
                            },
                            Ok(Some(kube::core::WatchEvent::Bookmark(_))) => {}
                            // Gone, the watch expired or ended: read it
                            // again.
                            Ok(Some(
                                kube::core::WatchEvent::Deleted(_)
                                | kube::core::WatchEvent::Error(_),
                            ))
                            | Ok(None) => return Watched::Again,
                            // Not a watch stream at all.
                            Err(_) => return Watched::Unwatchable,
                        }
                    }
                };
                match tokio::time::timeout(left, settle).await {
                    Ok(Watched::Settled(settled)) => return Ok(settled),
                    Ok(Watched::Again) => true,
                    Ok(Watched::Unwatchable) => false,
                    Err(_) => return Ok(Health::Progressing(why)),
                }
            }
            Err(_) => false,
        };
        // No watch here (a proxy that refuses them, a scripted fake): read
        // it again after the poll interval. After a watch that ended,
        // a short pause keeps a server that ends every watch at once from
        // being asked in a loop.
        let pause = if watched {
            Duration::from_millis(100)
        } else {
            plan.options.poll
        };
        tokio::time::sleep(pause.min(left)).await;
    }
}

fn unhealthy(objects: &[(String, String)], timed_out: bool) -> KubeError {
    let list: Vec<String> = objects
        .iter()
        .map(|(a, why)| format!("{a}: {why}"))
        .collect();
    KubeError::Request(if timed_out {
        format!(
            "not healthy within the unit's timeout (set `apply.timeout` in the unit to wait longer): {}",
            list.join("; ")
        )
    } else {
        format!("unhealthy: {}", list.join("; "))
    })
}

/// Deletes hooks as their policy says, once they succeeded or failed.
async fn finish_hooks(
    plan: &KubePlan,
    hooks: &[&ObjectPlan],
    succeeded: bool,
) -> Result<(), KubeError> {
    for h in hooks {
        let policy = h.role.delete;
        if (succeeded && policy.on_success) || (!succeeded && policy.on_failure) {
            let (target, resource) = placed(plan, h).await?;
            delete(&plan.cluster, &target, &resource)
                .await
                .map_err(|e| e.about(&h.desired.address, &h.desired.source))?;
        }
    }
    Ok(())
}

/// Removes the field a conflict names (`.spec.replicas`,
/// `.spec.containers[name="web"].image`, `.metadata.labels.app.kubernetes.io/name`)
/// from `v`; says whether it was there.
pub fn remove_field(v: &mut Value, path: &str) -> bool {
    match path.chars().next() {
        None => false,
        Some('.') => {
            let rest = &path[1..];
            let Some(map) = v.as_object_mut() else {
                return false;
            };
            // Field names may hold dots: the longest key that fits wins.
            let key = map
                .keys()
                .filter(|k| {
                    rest.starts_with(k.as_str())
                        && matches!(rest[k.len()..].chars().next(), None | Some('.') | Some('['))
                })
                .max_by_key(|k| k.len())
                .cloned();
            let Some(key) = key else { return false };
            let after = &rest[key.len()..];
            if after.is_empty() {
                map.remove(&key).is_some()
            } else {
                map.get_mut(&key)
                    .is_some_and(|child| remove_field(child, after))
            }
        }
        Some('[') => {
            let Some(end) = closing_bracket(path) else {
                return false;
            };
            let (selector, after) = (&path[1..end], &path[end + 1..]);
            let Some(items) = v.as_array_mut() else {
                return false;
            };
            let Some(index) = items.iter().position(|item| selects(item, selector)) else {
                return false;
            };
            if after.is_empty() {
                items.remove(index);
                true
            } else {
                remove_field(&mut items[index], after)
            }
        }
        Some(_) => false,
    }
}

/// The `]` that closes the `[` at the start of `path`, outside quotes.
fn closing_bracket(path: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in path.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ']' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Whether a list item matches `[3]`, `[=value]` or `[k="v",n=1]`.
fn selects(item: &Value, selector: &str) -> bool {
    if let Some(value) = selector.strip_prefix('=') {
        return serde_json::from_str::<Value>(value).is_ok_and(|v| v == *item);
    }
    if selector.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let mut rest = selector;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            return false;
        };
        // The value is JSON: read exactly one.
        let mut stream = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        let Some(Ok(value)) = stream.next() else {
            return false;
        };
        if item.get(key) != Some(&value) {
            return false;
        }
        rest = after[stream.byte_offset()..].trim_start_matches(',');
    }
    true
}

/// The API group of an `apiVersion` (`""` for the core group): objects are
/// the same object whatever version names them.
fn group_of(api_version: &str) -> String {
    api_version
        .rsplit_once('/')
        .map_or(String::new(), |(g, _)| g.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_managed_fields() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": "terrace", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "hpa-controller", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {
                "f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}}}}},
            {"manager": "other", "operation": "Apply", "fieldsV1": {"f:data": {"f:a.b": {}}}}
        ]}});
        assert_eq!(managers_of(&live, ".spec.replicas"), ["hpa-controller"]);
        assert_eq!(
            managers_of(&live, ".spec.template.spec.containers[name=\"web\"].image"),
            ["kubectl-edit"]
        );
        assert!(
            managers_of(&live, ".spec.template.spec.containers[name=\"api\"].image").is_empty()
        );
        assert_eq!(managers_of(&live, ".data.a.b"), ["other"]);
        assert!(managers_of(&live, ".data.a").is_empty());
        assert!(managers_of(&json!({}), ".spec.replicas").is_empty());
    }

    #[test]
    fn conflict_paths_remove_the_field_they_name() {
        let mut v = json!({"metadata": {"labels": {"app.kubernetes.io/name": "web", "app": "x"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "side", "image": "s"}, {"name": "web", "image": "w", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}},
                "finalizers": ["a", "b"]}});
        assert!(remove_field(&mut v, ".spec.replicas"));
        assert!(remove_field(
            &mut v,
            ".metadata.labels.app.kubernetes.io/name"
        ));
        assert!(remove_field(
            &mut v,
            ".spec.template.spec.containers[name=\"web\"].image"
        ));
        assert!(remove_field(
            &mut v,
            ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80,protocol=\"TCP\"]"
        ));
        assert!(remove_field(&mut v, ".spec.finalizers[=\"a\"]"));
        assert!(!remove_field(&mut v, ".spec.nothing"));
        assert_eq!(
            v,
            json!({"metadata": {"labels": {"app": "x"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "side", "image": "s"}, {"name": "web", "ports": []}]}},
                    "finalizers": ["b"]}})
        );
    }
}
