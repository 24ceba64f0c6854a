//! The built-in transformers: namespace, name prefix/suffix, labels,
//! annotations, images, replicas, and name references.

use serde_json::{Map, Value};

/// Kinds that are not namespaced (kustomize's list).
pub const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "Cluster",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "NodeProxyOptions",
    "PersistentVolume",
    "PodSecurityPolicy",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "SelfSubjectAccessReview",
    "SelfSubjectRulesReview",
    "StorageClass",
    "SubjectAccessReview",
    "TokenReview",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// The group (empty for the core group) and version of `apiVersion`.
pub fn group_version(v: &Value) -> (&str, &str) {
    let api = v["apiVersion"].as_str().unwrap_or("");
    match api.split_once('/') {
        Some((g, ver)) => (g, ver),
        None => ("", api),
    }
}

/// Namespaces as kustomize compares them in ids: none is `default`.
pub fn same_namespace(a: &str, b: &str) -> bool {
    a == b || (a.is_empty() && b == "default") || (a == "default" && b.is_empty())
}

pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

pub fn namespace(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or("")
}

fn meta(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = Value::Object(Map::new());
    }
    v["metadata"].as_object_mut().expect("just made an object")
}

/// A nested map, created when `create` and missing.
fn map_at<'a>(v: &'a mut Value, path: &[&str], create: bool) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        if !cur.is_object() {
            return None;
        }
        if cur.get(*p).is_none_or(Value::is_null) {
            if !create {
                return None;
            }
            cur[*p] = Value::Object(Map::new());
        }
        cur = cur.get_mut(*p)?;
    }
    cur.as_object_mut()
}

fn not_a_map(kind: &str, field: &str) -> String {
    format!(
        "a {kind} has a `metadata` or `metadata.{field}` that is not a map; kustomize refuses it too (wrong node kind)"
    )
}

fn set_all(m: &mut Map<String, Value>, pairs: &Map<String, Value>) {
    for (k, v) in pairs {
        m.insert(k.clone(), v.clone());
    }
}

/// `namespace:`, with kustomize's field specs: the object's own
/// namespace, an APIService's service (created), a CRD's conversion
/// webhook service (when it names one), and RBAC subjects named `default`.
/// Other subjects and webhook services follow the objects they name
/// through name references ([`fix_references`]).
pub fn set_namespace(v: &mut Value, ns: &str) {
    set_namespace_with(v, ns, &NamespaceOptions::default());
}

/// How kustomize's namespace transformer is configured: the `namespace:`
/// field's way (the default), or a `NamespaceTransformer` configuration's.
#[derive(Debug, Clone, Default)]
pub struct NamespaceOptions {
    /// Only fields that are missing or empty are set (`unsetOnly`).
    pub unset_only: bool,
    /// Which RoleBinding/ClusterRoleBinding subjects move.
    pub subjects: SubjectMode,
    /// Only `metadata.namespace` (a configuration whose field specs are
    /// that one): no Namespace renaming, no service namespaces.
    pub metadata_only: bool,
}

/// kustomize's `setRoleBindingSubjects`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubjectMode {
    /// Subjects named `default`, whatever their kind (`defaultOnly`).
    #[default]
    DefaultOnly,
    /// Every ServiceAccount subject (`allServiceAccounts`).
    AllServiceAccounts,
    /// None (`none`).
    None,
}

impl SubjectMode {
    pub fn parse(text: &str) -> Result<SubjectMode, String> {
        match text {
            "" | "defaultOnly" => Ok(SubjectMode::DefaultOnly),
            "allServiceAccounts" => Ok(SubjectMode::AllServiceAccounts),
            "none" => Ok(SubjectMode::None),
            other => Err(format!(
                "invalid value `{other}` for setRoleBindingSubjects: must be one of defaultOnly, none or allServiceAccounts"
            )),
        }
    }
}

pub fn set_namespace_with(v: &mut Value, ns: &str, options: &NamespaceOptions) {
    let ns_value = Value::String(ns.to_owned());
    let set = |m: &mut Map<String, Value>, key: &str| {
        let empty = m
            .get(key)
            .is_none_or(|old| old.is_null() || old.as_str() == Some(""));
        if !options.unset_only || empty {
            m.insert(key.to_owned(), ns_value.clone());
        }
    };
    let core_namespace = kind(v) == "Namespace" && v["apiVersion"] == "v1";
    if core_namespace {
        if !options.metadata_only {
            // kustomize names a Namespace object after the namespace.
            set(meta(v), "name");
        }
    } else if kind(v) == "Namespace" || !CLUSTER_SCOPED.contains(&kind(v)) {
        // A `Namespace` of another API group is a namespaced resource.
        set(meta(v), "namespace");
    }
    if matches!(kind(v), "RoleBinding" | "ClusterRoleBinding")
        && let Some(subjects) = v.get_mut("subjects").and_then(Value::as_array_mut)
    {
        for s in subjects {
            let moves = match options.subjects {
                SubjectMode::DefaultOnly => s["name"] == "default",
                SubjectMode::AllServiceAccounts => s["kind"] == "ServiceAccount",
                SubjectMode::None => false,
            };
            if moves && let Some(m) = s.as_object_mut() {
                set(m, "namespace");
            }
        }
    }
    if options.metadata_only {
        return;
    }
    match kind(v) {
        "APIService" if group_version(v).0 == "apiregistration.k8s.io" => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut)
                && let Some(service) = spec
                    .entry("service")
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
            {
                service.insert("namespace".into(), ns_value.clone());
            }
        }
        "CustomResourceDefinition" => {
            if let Some(service) = v
                .pointer_mut("/spec/conversion/webhook/clientConfig/service")
                .and_then(Value::as_object_mut)
                && service.contains_key("namespace")
            {
                service.insert("namespace".into(), ns_value.clone());
            }
        }
        _ => {}
    }
}

/// Whether prefixes and suffixes apply to this kind.
pub fn takes_prefix(v: &Value) -> bool {
    !matches!(kind(v), "Namespace" | "CustomResourceDefinition")
}

/// Where a kind keeps its pod template's metadata and spec.
fn template_paths(kind: &str) -> &'static [&'static str] {
    match kind {
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => &[],
    }
}

/// `commonLabels` (and `labels` with their options).
/// An object whose `metadata.labels` is not a map is an error, as in
/// kustomize ("wrong node kind").
pub fn add_labels(
    v: &mut Value,
    pairs: &Map<String, Value>,
    selectors: bool,
    templates: bool,
) -> Result<(), String> {
    let k = kind(v).to_owned();
    set_all(
        map_at(v, &["metadata", "labels"], true).ok_or_else(|| not_a_map(&k, "labels"))?,
        pairs,
    );
    if templates || selectors {
        let t = template_paths(&k);
        if !t.is_empty() {
            let mut path: Vec<&str> = t.to_vec();
            path.extend(["metadata", "labels"]);
            if let Some(m) = map_at(v, &path, true) {
                set_all(m, pairs);
            }
            if k == "CronJob"
                && let Some(m) = map_at(v, &["spec", "jobTemplate", "metadata", "labels"], true)
            {
                set_all(m, pairs);
            }
            if k == "StatefulSet" {
                // `pointer_mut`, not indexing: indexing would create the
                // field (as null) where it was absent.
                let claims = v
                    .pointer_mut("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array_mut);
                for claim in claims.into_iter().flatten() {
                    if let Some(m) = map_at(claim, &["metadata", "labels"], true) {
                        set_all(m, pairs);
                    }
                }
            }
        }
    }
    if selectors {
        match k.as_str() {
            "Service" => {
                if let Some(m) = map_at(v, &["spec", "selector"], true) {
                    set_all(m, pairs);
                }
            }
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
                if let Some(m) = map_at(v, &["spec", "selector", "matchLabels"], true) {
                    set_all(m, pairs);
                }
            }
            "Job" | "PodDisruptionBudget" => {
                if let Some(m) = map_at(v, &["spec", "selector", "matchLabels"], false) {
                    set_all(m, pairs);
                }
            }
            // kustomize's field specs: the policy's own selector and its
            // peers' selectors, each only where `matchLabels` exists.
            "NetworkPolicy" => {
                if let Some(m) = map_at(v, &["spec", "podSelector", "matchLabels"], false) {
                    set_all(m, pairs);
                }
                for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
                    let rules = v
                        .get_mut("spec")
                        .and_then(|s| s.get_mut(rules))
                        .and_then(Value::as_array_mut);
                    for rule in rules.into_iter().flatten() {
                        let peers = rule.get_mut(peers).and_then(Value::as_array_mut);
                        for peer in peers.into_iter().flatten() {
                            if let Some(m) = map_at(peer, &["podSelector", "matchLabels"], false) {
                                set_all(m, pairs);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sets `pairs` in the map at a kustomize field-spec path (`a/b[]/c`:
/// `[]` visits every item of a list), creating missing maps on the way
/// only with `create`.
pub fn set_at_field_spec(v: &mut Value, path: &[&str], create: bool, pairs: &Map<String, Value>) {
    at_field_spec(v, path, create, &mut |m| set_all(m, pairs));
}

/// Sets the scalar at `path` (`[]` walks each item of a list): the maps
/// on the way, and the field itself, are created only with `create`.
pub fn set_scalar_at(v: &mut Value, path: &[String], create: bool, value: &Value) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if last.ends_with("[]") {
        return;
    }
    let parent: Vec<&str> = parent.iter().map(String::as_str).collect();
    at_field_spec(v, &parent, create, &mut |m| {
        if create || m.contains_key(last.as_str()) {
            m.insert(last.clone(), value.clone());
        }
    });
}

/// Calls `f` on every map at `path` under `v`: `[]` visits every item of
/// a list; a missing (or null) map on the way is created only with
/// `create`.
fn at_field_spec(
    v: &mut Value,
    path: &[&str],
    create: bool,
    f: &mut dyn FnMut(&mut Map<String, Value>),
) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    let Some((first, rest)) = path.split_first() else {
        f(obj);
        return;
    };
    if let Some(key) = first.strip_suffix("[]") {
        if let Some(items) = obj.get_mut(key).and_then(Value::as_array_mut) {
            for item in items {
                at_field_spec(item, rest, create, f);
            }
        }
        return;
    }
    if !obj.contains_key(*first) || obj[*first].is_null() {
        if !create {
            return;
        }
        obj.insert((*first).to_owned(), Value::Object(Map::new()));
    }
    if let Some(next) = obj.get_mut(*first) {
        at_field_spec(next, rest, create, f);
    }
}

/// `commonAnnotations`: the object and its pod template.
pub fn add_annotations(v: &mut Value, pairs: &Map<String, Value>) -> Result<(), String> {
    let k = kind(v).to_owned();
    set_all(
        map_at(v, &["metadata", "annotations"], true)
            .ok_or_else(|| not_a_map(&k, "annotations"))?,
        pairs,
    );
    let t = template_paths(&k);
    if !t.is_empty() {
        let mut path: Vec<&str> = t.to_vec();
        path.extend(["metadata", "annotations"]);
        if let Some(m) = map_at(v, &path, true) {
            set_all(m, pairs);
        }
        if k == "CronJob"
            && let Some(m) = map_at(v, &["spec", "jobTemplate", "metadata", "annotations"], true)
        {
            set_all(m, pairs);
        }
    }
    Ok(())
}

/// Every pod spec of an object.
fn pod_specs(v: &mut Value) -> Vec<&mut Value> {
    let k = kind(v).to_owned();
    let mut out = Vec::new();
    if k == "Pod" {
        if let Some(s) = v.get_mut("spec") {
            out.push(s);
        }
        return out;
    }
    let t = template_paths(&k);
    if t.is_empty() {
        return out;
    }
    let mut cur = Some(v);
    for p in t {
        cur = cur.and_then(|c| c.get_mut(*p));
    }
    if let Some(s) = cur.and_then(|c| c.get_mut("spec")) {
        out.push(s);
    }
    out
}

/// The items of every container list in `v`, at any depth.
fn containers_anywhere(v: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(cur) = stack.pop() {
        match cur {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    let listed = matches!(
                        k.as_str(),
                        "containers" | "initContainers" | "ephemeralContainers"
                    );
                    if listed && child.is_array() {
                        if let Value::Array(items) = child {
                            out.extend(items.iter_mut());
                        }
                    } else {
                        stack.push(child);
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
    out
}

/// One `images` entry.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

/// Splits `repo[:tag][@digest]`.
fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    // A colon after the last slash is a tag (not a registry port).
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].find(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

/// `images`: as kustomize does, every `containers` and `initContainers`
/// list anywhere in the object, whatever its kind (custom kinds too).
pub fn set_images(v: &mut Value, images: &[Image], extra: &[&FieldSpec]) {
    for c in containers_anywhere(v) {
        let Some(current) = c["image"].as_str() else {
            continue;
        };
        if let Some(new) = new_image(current, images) {
            c["image"] = Value::String(new);
        }
    }
    // Fields `configurations` name (`images:` field specs): the image
    // itself is at the path.
    for spec in extra {
        if spec.selects(v) {
            let mut found = Vec::new();
            at_path(v, &spec.path, &mut found);
            for field in found {
                if let Some(new) = field.as_str().and_then(|cur| new_image(cur, images)) {
                    *field = Value::String(new);
                }
            }
        }
    }
}

/// What an image becomes under the first `images` entry of its name.
fn new_image(current: &str, images: &[Image]) -> Option<String> {
    let (repo, tag, digest) = split_image(current);
    let img = images.iter().find(|i| i.name == repo)?;
    let repo = img.new_name.clone().unwrap_or_else(|| repo.to_owned());
    Some(if let (Some(t), Some(d)) = (&img.new_tag, &img.digest) {
        format!("{repo}:{t}@{d}")
    } else if let Some(d) = &img.digest {
        format!("{repo}@{d}")
    } else if let Some(t) = &img.new_tag {
        format!("{repo}:{t}")
    } else {
        let mut s = repo;
        if let Some(t) = tag {
            s = format!("{s}:{t}");
        }
        if let Some(d) = digest {
            s = format!("{s}@{d}");
        }
        s
    })
}

/// Every string at `path` under `v` (lists on the way walked into), to
/// change in place.
pub fn strings_at<'a>(v: &'a mut Value, path: &[String]) -> Vec<&'a mut Value> {
    let mut out = Vec::new();
    at_path(v, path, &mut out);
    out
}

/// A reference from one object to another by name.
struct Ref<'a> {
    target_kind: &'a str,
    /// A second kind the name may refer to (RBAC `resourceNames`: a
    /// ConfigMap or a Secret).
    also_kind: Option<&'a str>,
    /// The name; with `map`, the mapping holding `name` and `namespace`.
    value: &'a mut Value,
    /// A mapping with `name` and `namespace` (RBAC subjects, webhook
    /// services): candidates are those in the namespace it names, and
    /// both fields take the chosen object's.
    map: bool,
}

impl<'a> Ref<'a> {
    fn to(target_kind: &'a str, value: &'a mut Value) -> Ref<'a> {
        Ref {
            target_kind,
            also_kind: None,
            value,
            map: false,
        }
    }

    fn refers_to(&self, kind: &str) -> bool {
        kind == self.target_kind || self.also_kind == Some(kind)
    }
}

/// Every name reference an object holds.
fn refs(v: &mut Value) -> Vec<Ref<'_>> {
    let k = kind(v).to_owned();
    let mut out: Vec<Ref<'_>> = Vec::new();
    match k.as_str() {
        // kustomize's name references: `rules[].resourceNames` of roles
        // name ConfigMaps and Secrets.
        "Role" | "ClusterRole" => {
            let rules = v.get_mut("rules").and_then(Value::as_array_mut);
            for rule in rules.into_iter().flatten() {
                let names = rule.get_mut("resourceNames").and_then(Value::as_array_mut);
                for n in names.into_iter().flatten() {
                    out.push(Ref {
                        also_kind: Some("Secret"),
                        ..Ref::to("ConfigMap", n)
                    });
                }
            }
            return out;
        }
        // A webhook's service, in the namespace it names.
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
            let hooks = v.get_mut("webhooks").and_then(Value::as_array_mut);
            for hook in hooks.into_iter().flatten() {
                let service = hook
                    .get_mut("clientConfig")
                    .and_then(|c| c.get_mut("service"));
                if let Some(service) = service.filter(|s| s.is_object()) {
                    out.push(Ref {
                        map: true,
                        ..Ref::to("Service", service)
                    });
                }
            }
            return out;
        }
        "ValidatingAdmissionPolicyBinding" => {
            if let Some(n) = v.get_mut("spec").and_then(|s| s.get_mut("policyName")) {
                out.push(Ref::to("ValidatingAdmissionPolicy", n));
            }
            return out;
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let obj = v.as_object_mut().expect("objects are maps");
            let mut role_ref = None;
            let mut subjects = None;
            for (key, val) in obj.iter_mut() {
                match key.as_str() {
                    "roleRef" => role_ref = Some(val),
                    "subjects" => subjects = Some(val),
                    _ => {}
                }
            }
            if let Some(r) = role_ref {
                let target = if r["kind"] == "ClusterRole" {
                    "ClusterRole"
                } else {
                    "Role"
                };
                if let Some(n) = r.get_mut("name") {
                    out.push(Ref::to(target, n));
                }
            }
            if let Some(Value::Array(subjects)) = subjects {
                for s in subjects {
                    if s["kind"] == "ServiceAccount" && s.is_object() {
                        out.push(Ref {
                            map: true,
                            ..Ref::to("ServiceAccount", s)
                        });
                    }
                }
            }
            return out;
        }
        "Ingress" => {
            let mut stack: Vec<&mut Value> = vec![v];
            while let Some(node) = stack.pop() {
                match node {
                    Value::Object(m) => {
                        for (key, val) in m.iter_mut() {
                            if key == "service" {
                                if let Some(n) = val.get_mut("name") {
                                    out.push(Ref::to("Service", n));
                                }
                            } else if key == "serviceName" {
                                out.push(Ref::to("Service", val));
                            } else if key == "secretName" {
                                out.push(Ref::to("Secret", val));
                            } else {
                                stack.push(val);
                            }
                        }
                    }
                    Value::Array(a) => stack.extend(a.iter_mut()),
                    _ => {}
                }
            }
            return out;
        }
        "HorizontalPodAutoscaler" => {
            if let Some(r) = v.get_mut("spec").and_then(|s| s.get_mut("scaleTargetRef")) {
                let target = r["kind"].as_str().unwrap_or("Deployment").to_owned();
                let target: &'static str = match target.as_str() {
                    "StatefulSet" => "StatefulSet",
                    "ReplicaSet" => "ReplicaSet",
                    _ => "Deployment",
                };
                if let Some(n) = r.get_mut("name") {
                    out.push(Ref::to(target, n));
                }
            }
            return out;
        }
        "ServiceAccount" => {
            let obj = v.as_object_mut().expect("objects are maps");
            for (key, val) in obj.iter_mut() {
                if matches!(key.as_str(), "secrets" | "imagePullSecrets")
                    && let Some(a) = val.as_array_mut()
                {
                    for s in a {
                        if let Some(n) = s.get_mut("name") {
                            out.push(Ref::to("Secret", n));
                        }
                    }
                }
            }
            return out;
        }
        _ => {}
    }
    let specs = pod_specs(v);
    for spec in specs {
        pod_spec_refs(spec, &mut out);
    }
    out
}

fn pod_spec_refs<'a>(spec: &'a mut Value, out: &mut Vec<Ref<'a>>) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    for (key, val) in m.iter_mut() {
        match key.as_str() {
            "serviceAccountName" | "serviceAccount" => out.push(Ref::to("ServiceAccount", val)),
            "priorityClassName" => out.push(Ref::to("PriorityClass", val)),
            "imagePullSecrets" => {
                for s in val.as_array_mut().into_iter().flatten() {
                    if let Some(n) = s.get_mut("name") {
                        out.push(Ref::to("Secret", n));
                    }
                }
            }
            "volumes" => {
                for vol in val.as_array_mut().into_iter().flatten() {
                    let Some(vm) = vol.as_object_mut() else {
                        continue;
                    };
                    for (vk, vv) in vm.iter_mut() {
                        match vk.as_str() {
                            "configMap" => {
                                if let Some(n) = vv.get_mut("name") {
                                    out.push(Ref::to("ConfigMap", n));
                                }
                            }
                            "secret" => {
                                if let Some(n) = vv.get_mut("secretName") {
                                    out.push(Ref::to("Secret", n));
                                }
                            }
                            "persistentVolumeClaim" => {
                                if let Some(n) = vv.get_mut("claimName") {
                                    out.push(Ref::to("PersistentVolumeClaim", n));
                                }
                            }
                            "projected" => {
                                for src in vv
                                    .get_mut("sources")
                                    .and_then(Value::as_array_mut)
                                    .into_iter()
                                    .flatten()
                                {
                                    let Some(sm) = src.as_object_mut() else {
                                        continue;
                                    };
                                    for (sk, sv) in sm.iter_mut() {
                                        let target = match sk.as_str() {
                                            "configMap" => "ConfigMap",
                                            "secret" => "Secret",
                                            _ => continue,
                                        };
                                        if let Some(n) = sv.get_mut("name") {
                                            out.push(Ref::to(target, n));
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            "containers" | "initContainers" | "ephemeralContainers" => {
                for c in val.as_array_mut().into_iter().flatten() {
                    let Some(cm) = c.as_object_mut() else {
                        continue;
                    };
                    for (ck, cv) in cm.iter_mut() {
                        match ck.as_str() {
                            "env" => {
                                for e in cv.as_array_mut().into_iter().flatten() {
                                    let Some(from) =
                                        e.get_mut("valueFrom").and_then(Value::as_object_mut)
                                    else {
                                        continue;
                                    };
                                    for (fk, fv) in from.iter_mut() {
                                        let target = match fk.as_str() {
                                            "configMapKeyRef" => "ConfigMap",
                                            "secretKeyRef" => "Secret",
                                            _ => continue,
                                        };
                                        if let Some(n) = fv.get_mut("name") {
                                            out.push(Ref::to(target, n));
                                        }
                                    }
                                }
                            }
                            "envFrom" => {
                                for e in cv.as_array_mut().into_iter().flatten() {
                                    let Some(em) = e.as_object_mut() else {
                                        continue;
                                    };
                                    for (ek, ev) in em.iter_mut() {
                                        let target = match ek.as_str() {
                                            "configMapRef" => "ConfigMap",
                                            "secretRef" => "Secret",
                                            _ => continue,
                                        };
                                        if let Some(n) = ev.get_mut("name") {
                                            out.push(Ref::to(target, n));
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// An object's identity for name references: its kind, every name it has
/// had, its current name and namespace.
pub struct Renamed {
    pub kind: String,
    pub old: Vec<String>,
    pub new: String,
    pub namespace: String,
    /// The namespace it had when it entered the build.
    pub first_namespace: String,
    /// The name prefixes and suffixes given to it, innermost first.
    pub affixes: Vec<(String, String)>,
}

/// A name reference a kustomization's `configurations` add: fields of
/// other kinds (by `fieldSpecs`) that name an object of `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    pub kind: String,
    pub specs: Vec<FieldSpec>,
}

/// Where a field is: in objects of `kind` (and `group`) when given, at
/// `path` (`/`-separated; lists on the way are walked into).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub kind: Option<String>,
    pub group: Option<String>,
    pub path: Vec<String>,
    /// The field is created where it is missing (`create: true`).
    pub create: bool,
}

impl FieldSpec {
    /// Whether the spec's kind and group (when given) are `v`'s.
    pub fn selects(&self, v: &Value) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind(v))
            && self
                .group
                .as_deref()
                .is_none_or(|g| g == group_version(v).0)
    }

    /// A spec of the object's own name.
    pub fn is_name(&self) -> bool {
        self.path.len() == 2 && self.path[0] == "metadata" && self.path[1] == "name"
    }
}

/// Every string at `path` under `v`, lists on the way walked into.
fn at_path<'a>(v: &'a mut Value, path: &[String], out: &mut Vec<&'a mut Value>) {
    match v {
        Value::Array(items) => {
            for item in items {
                at_path(item, path, out);
            }
        }
        Value::Object(m) => {
            let Some((first, rest)) = path.split_first() else {
                return;
            };
            let key = first.strip_suffix("[]").unwrap_or(first);
            if let Some(next) = m.get_mut(key) {
                if rest.is_empty() {
                    match next {
                        Value::String(_) => out.push(next),
                        Value::Array(items) => {
                            out.extend(items.iter_mut().filter(|i| i.is_string()));
                        }
                        _ => {}
                    }
                } else {
                    at_path(next, rest, out);
                }
            }
        }
        _ => {}
    }
}

/// kustomize's `PrefixesSuffixesEquals`: the prefixes (and the suffixes)
/// two objects were given end the same way; with `allow_empty`, an
/// object given none matches any.
fn affixes_match(a: &[(String, String)], b: &[(String, String)], allow_empty: bool) -> bool {
    let list = |x: &[(String, String)], prefix: bool| -> Vec<String> {
        x.iter()
            .map(|(p, s)| if prefix { p.clone() } else { s.clone() })
            .filter(|v| !v.is_empty())
            .collect()
    };
    let same_ending = |x: Vec<String>, y: Vec<String>| {
        let (short, long) = if x.len() <= y.len() { (x, y) } else { (y, x) };
        if short.is_empty() {
            return long.is_empty();
        }
        long.ends_with(&short)
    };
    [true, false].into_iter().all(|prefix| {
        let (x, y) = (list(a, prefix), list(b, prefix));
        (allow_empty && (x.is_empty() || y.is_empty())) || same_ending(x, y)
    })
}

/// What a reference is resolved against: every object with all its names,
/// indexed by name.
struct Referrals<'a> {
    by_name: std::collections::HashMap<&'a str, Vec<&'a Renamed>>,
}

/// Who refers: for kustomize's choice among candidates.
struct Referrer<'a> {
    label: String,
    namespace: String,
    cluster_scoped: bool,
    affixes: &'a [(String, String)],
}

impl<'a> Referrals<'a> {
    fn new(objects_named: &'a [Renamed]) -> Referrals<'a> {
        let mut by_name: std::collections::HashMap<&str, Vec<&Renamed>> =
            std::collections::HashMap::new();
        for x in objects_named {
            for n in &x.old {
                let list = by_name.entry(n.as_str()).or_default();
                if !list.iter().any(|y| std::ptr::eq(*y, x)) {
                    list.push(x);
                }
            }
        }
        Referrals { by_name }
    }

    /// The object a reference of `referrer` named `current` goes to (one
    /// of a kind `wanted` accepts; for a mapping reference (`map`) with a
    /// namespace `explicit_ns`, one that was, or else is, in that
    /// namespace); `None` when there is none. Several that differ in name
    /// (or, for a mapping, in namespace) are an error.
    fn resolve(
        &self,
        current: &str,
        wanted: impl Fn(&str) -> bool,
        map: bool,
        explicit_ns: Option<&str>,
        referrer: &Referrer<'_>,
    ) -> Result<Option<&'a Renamed>, String> {
        let mut candidates: Vec<&Renamed> = self
            .by_name
            .get(current)
            .into_iter()
            .flatten()
            .copied()
            .filter(|x| wanted(&x.kind))
            .collect();
        if let Some(ns) = explicit_ns {
            // As kustomize groups them: by the namespace each had when it
            // entered the build, else by the one it has now.
            // (no namespace is `default`).
            if candidates
                .iter()
                .any(|x| same_namespace(&x.first_namespace, ns))
            {
                candidates.retain(|x| same_namespace(&x.first_namespace, ns));
            } else {
                candidates.retain(|x| same_namespace(&x.namespace, ns));
            }
        }
        let mut candidates: Vec<&Renamed> = candidates
            .into_iter()
            .filter(|x| {
                referrer.cluster_scoped
                    || CLUSTER_SCOPED.contains(&x.kind.as_str())
                    || x.kind == "ServiceAccount"
                    || same_namespace(&x.namespace, &referrer.namespace)
            })
            .collect();
        if candidates.len() > 1 {
            // Those given the same prefixes and suffixes as the referrer
            // (none left: the reference stays), as kustomize sieves them:
            // first where either has none, then strictly.
            candidates.retain(|x| affixes_match(&x.affixes, referrer.affixes, true));
            if candidates.len() > 1 {
                candidates.retain(|x| affixes_match(&x.affixes, referrer.affixes, false));
            }
        }
        let chosen = match candidates.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            [first, rest @ ..]
                if rest
                    .iter()
                    .all(|x| x.new == first.new && (!map || x.namespace == first.namespace)) =>
            {
                *first
            }
            several => {
                let ids: Vec<String> = several
                    .iter()
                    .map(|x| format!("{} {}/{}", x.kind, x.namespace, x.new))
                    .collect();
                return Err(format!(
                    "{}: the reference to `{current}` could be any of {}: found multiple possible referrals",
                    referrer.label,
                    ids.join(", ")
                ));
            }
        };
        Ok(Some(chosen))
    }
}

/// Rewrites name references as kustomize's name-reference filter does.
/// The candidates for a reference are the objects of its kind that ever
/// had the name; a namespaced referrer keeps those in its namespace (and
/// cluster-scoped objects and ServiceAccounts); of several, those with
/// the referrer's prefixes and suffixes (its own overlay in a diamond).
/// None left: the reference stays; several with different names (or, for
/// a mapping such as an RBAC subject, namespaces): an error, as in
/// kustomize. `affixes` hold each object's name prefixes and suffixes,
/// innermost first; `objects_named` lists every
/// object with all its names; `custom` adds the name references of
/// `configurations`.
pub fn fix_references(
    objects: &mut [Value],
    affixes: &[Vec<(String, String)>],
    objects_named: &[Renamed],
    custom: &[NameRef],
) -> Result<(), String> {
    let referrals = Referrals::new(objects_named);
    for (i, o) in objects.iter_mut().enumerate() {
        let blank_subject_namespace = kind(o) == "RoleBinding"
            && o["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s.get("namespace").is_some_and(|n| !n.is_string())
                })
            });
        // kustomize refuses such a RoleBinding whenever it looks for what
        // it refers to, which it always does.
        if blank_subject_namespace {
            return Err(format!(
                "{} {}: Invalid Input: namespace is blank for resource (a ServiceAccount subject has `namespace:` with no value)",
                kind(o),
                name(o)
            ));
        }
        let referrer = Referrer {
            label: format!("{} {}", kind(o), name(o)),
            namespace: namespace(o).to_owned(),
            cluster_scoped: CLUSTER_SCOPED.contains(&kind(o)),
            affixes: affixes.get(i).map(Vec::as_slice).unwrap_or_default(),
        };
        let own_kind = kind(o).to_owned();
        let own_group = group_version(o).0.to_owned();
        let statefulset_service = if own_kind == "StatefulSet" {
            o["spec"]["serviceName"].as_str().map(str::to_owned)
        } else {
            None
        };
        for r in refs(o) {
            if r.map {
                let Some(current) = r.value["name"].as_str().map(str::to_owned) else {
                    continue;
                };
                let explicit = r.value["namespace"].as_str().map(str::to_owned);
                let Some(chosen) = referrals.resolve(
                    &current,
                    |k| r.refers_to(k),
                    true,
                    explicit.as_deref(),
                    &referrer,
                )?
                else {
                    continue;
                };
                if let Some(m) = r.value.as_object_mut() {
                    if chosen.new != current {
                        m.insert("name".into(), Value::String(chosen.new.clone()));
                    }
                    // Never an empty namespace: that one means `default`.
                    if !chosen.namespace.is_empty() {
                        m.insert("namespace".into(), Value::String(chosen.namespace.clone()));
                    }
                }
                continue;
            }
            let Some(current) = r.value.as_str().map(str::to_owned) else {
                continue;
            };
            if let Some(chosen) =
                referrals.resolve(&current, |k| r.refers_to(k), false, None, &referrer)?
                && chosen.new != current
            {
                *r.value = Value::String(chosen.new.clone());
            }
        }
        for nr in custom {
            for spec in &nr.specs {
                if spec.kind.as_ref().is_some_and(|k| *k != own_kind)
                    || spec.group.as_ref().is_some_and(|g| *g != own_group)
                {
                    continue;
                }
                let mut found = Vec::new();
                at_path(o, &spec.path, &mut found);
                for value in found {
                    let Some(current) = value.as_str().map(str::to_owned) else {
                        continue;
                    };
                    if let Some(chosen) =
                        referrals.resolve(&current, |k| k == nr.kind, false, None, &referrer)?
                        && chosen.new != current
                    {
                        *value = Value::String(chosen.new.clone());
                    }
                }
            }
        }
        if let Some(svc) = statefulset_service
            && let Some(x) = objects_named
                .iter()
                .find(|x| x.kind == "Service" && x.old.contains(&svc) && x.new != svc)
        {
            o["spec"]["serviceName"] = Value::String(x.new.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_like_kustomize() {
        assert_eq!(split_image("nginx:1.0"), ("nginx", Some("1.0"), None));
        assert_eq!(split_image("reg:5000/app"), ("reg:5000/app", None, None));
        assert_eq!(
            split_image("reg:5000/app:2@sha256:ab"),
            ("reg:5000/app", Some("2"), Some("sha256:ab"))
        );
    }
}
