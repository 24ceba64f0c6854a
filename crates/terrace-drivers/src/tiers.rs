//! Tiers (terrace.yaml's `tiers:`), done at render time where a cluster
//! would need admission webhooks (Kyverno's generate and mutate rules):
//!
//! - the `tiers` kind renders one PriorityClass per tier;
//! - every object kind's render is expanded by [`expand`]: a Namespace
//!   labelled `terrace.dev/tier: T` brings its tier's LimitRange and
//!   ResourceQuota, and a pod of a tier (its namespace's, or its own
//!   `terrace.dev/tier` label) gets the tier's `priorityClassName`.
//!
//! So the plan shows every object the tier adds, and the API server
//! enforces the quota.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use terrace_core::config::{PROJECT_FILE, TargetKind, TierConfig, UNIT_FILE};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_core::kind::TypedKind;

use crate::manifests::{Object, ObjectsDriver, identify};
use terrace_kube::ClusterPool;

/// The label naming an object's tier.
pub const TIER_LABEL: &str = "terrace.dev/tier";

/// The `tiers` kind.
pub fn kind(clusters: &std::sync::Arc<ClusterPool>) -> TypedKind<TiersSettings> {
    TypedKind::new(
        "tiers",
        "The PriorityClass of every tier in terrace.yaml's `tiers:`.",
        Some(TargetKind::Cluster),
        ObjectsDriver::in_process(clusters, render_objects, true),
    )
}

/// `tiers:` in unit.yaml (the tiers themselves are terrace.yaml's).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TiersSettings {
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::ApplySettings>,
}

fn object(value: Value, source: &str) -> Result<Object, DriverError> {
    let id = identify(&value).map_err(|m| Diagnostic::new(m).in_file(source))?;
    Ok(Object {
        address: id.address,
        object: id.object,
        source: source.to_owned(),
        value,
        file_name: id.file_name,
        secret_sources: Vec::new(),
        rule_from: None,
        secret_scope: Vec::new(),
    })
}

/// One PriorityClass per tier.
pub fn render_objects(ctx: &UnitContext<'_>) -> Result<Vec<Object>, DriverError> {
    let _: TiersSettings = crate::unit_settings(ctx)?;
    if ctx.tiers.is_empty() {
        return Err(
            Diagnostic::new("a `tiers` unit, and terrace.yaml has no `tiers:`")
                .in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir))
                .with_hint(
                    "define the tiers in terrace.yaml (`tiers: {0-core: {priority: 1000000}}`)",
                )
                .into(),
        );
    }
    ctx.tiers
        .iter()
        .map(|(name, t)| {
            check_tier(name, t)?;
            let mut v = json!({
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name, "labels": {TIER_LABEL: name}},
                "value": t.priority,
                "globalDefault": false,
            });
            if let Some(d) = &t.description {
                v["description"] = json!(d);
            }
            object(v, PROJECT_FILE)
        })
        .collect()
}

fn check_tier(name: &str, t: &TierConfig) -> Result<(), DriverError> {
    let valid = crate::app::is_label(name) && !name.starts_with("system-");
    if !valid {
        return Err(
            Diagnostic::new(format!("tier `{name}` is not a valid PriorityClass name"))
                .in_file(PROJECT_FILE)
                .with_hint(
                    "lowercase letters, digits and `-` (not starting with `system-`), as `0-core`",
                )
                .into(),
        );
    }
    if !(-2_147_483_648..=1_000_000_000).contains(&t.priority) {
        return Err(Diagnostic::new(format!(
            "tier `{name}`: priority {} is above 1000000000, which Kubernetes keeps for its own classes",
            t.priority
        ))
        .in_file(PROJECT_FILE)
        .into());
    }
    Ok(())
}

/// Quantities as the API server reads them: strings.
fn quantities(m: &BTreeMap<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let q = match v {
                Value::Number(n) => Value::String(n.to_string()),
                other => other.clone(),
            };
            (k.clone(), q)
        })
        .collect()
}

/// The pod template of a workload (a Pod itself), mutable: its
/// `metadata` and `spec`.
fn pod_template(v: &mut Value) -> Option<&mut Value> {
    let path = terrace_core::policy::pod_template_path(v["kind"].as_str()?)?;
    let mut at = v;
    for p in path {
        at = at.get_mut(*p)?;
    }
    Some(at)
}

/// Adds what the project's tiers bring to a unit's objects.
/// `namespace`: where objects naming none land.
pub(crate) fn expand(
    ctx: &UnitContext<'_>,
    objects: &mut Vec<Object>,
    namespace: Option<&str>,
) -> Result<(), DriverError> {
    // Without tiers, `terrace.dev/tier` is only a label.
    if ctx.tiers.is_empty() {
        return Ok(());
    }
    let tier_of_name = |t: &str, source: &str, what: &str| -> Result<(), DriverError> {
        if ctx.tiers.contains_key(t) {
            Ok(())
        } else {
            Err(Diagnostic::new(format!(
                "{what} names tier `{t}`, which terrace.yaml's `tiers:` does not define (it has {})",
                ctx.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .in_file(source)
            .with_hint("add the tier to terrace.yaml, or fix the name")
            .into())
        }
    };
    let mut namespaces: BTreeMap<String, String> = BTreeMap::new();
    for (name, t) in ctx.tiers {
        for ns in &t.namespaces {
            namespaces.insert(ns.clone(), name.clone());
        }
    }
    let mut added = Vec::new();
    for o in objects.iter() {
        if o.value["kind"] != "Namespace" || o.value["apiVersion"] != "v1" {
            continue;
        }
        let Some(tier) = o.value["metadata"]["labels"][TIER_LABEL].as_str() else {
            continue;
        };
        let ns = o.object.name.clone();
        tier_of_name(tier, &o.source, &format!("namespace `{ns}`"))?;
        namespaces.insert(ns.clone(), tier.to_owned());
        let t = &ctx.tiers[tier];
        let meta = json!({"name": "terrace-tier", "namespace": ns, "labels": {TIER_LABEL: tier}});
        let mut limit = Map::new();
        limit.insert("type".into(), json!("Container"));
        if let Some(d) = &t.defaults {
            if !d.limits.is_empty() {
                limit.insert("default".into(), Value::Object(quantities(&d.limits)));
            }
            if !d.requests.is_empty() {
                limit.insert(
                    "defaultRequest".into(),
                    Value::Object(quantities(&d.requests)),
                );
            }
        }
        if !t.max.is_empty() {
            limit.insert("max".into(), Value::Object(quantities(&t.max)));
        }
        if limit.len() > 1 {
            added.push(object(
                json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta, "spec": {"limits": [limit]}}),
                &o.source,
            )?);
        }
        if !t.quota.is_empty() {
            added.push(object(
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta, "spec": {"hard": quantities(&t.quota)}}),
                &o.source,
            )?);
        }
    }
    for o in objects.iter_mut() {
        let ns = o
            .object
            .namespace
            .clone()
            .or_else(|| namespace.map(str::to_owned));
        let source = o.source.clone();
        let address = o.address.clone();
        let Some(template) = pod_template(&mut o.value) else {
            continue;
        };
        let own = template["metadata"]["labels"][TIER_LABEL]
            .as_str()
            .map(str::to_owned);
        let tier = match own {
            Some(t) => {
                tier_of_name(&t, &source, &address)?;
                Some(t)
            }
            None => ns.and_then(|n| namespaces.get(&n).cloned()),
        };
        if let Some(t) = tier
            && template["spec"]["priorityClassName"].is_null()
        {
            template["spec"]["priorityClassName"] = json!(t);
        }
    }
    objects.extend(added);
    Ok(())
}
