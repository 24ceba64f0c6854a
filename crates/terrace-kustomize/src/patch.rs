//! Strategic-merge and JSON 6902 patches.

use serde_json::{Map, Value};

/// The merge key of a list in the built-in Kubernetes types, by field name
/// (`x-kubernetes-patch-merge-key` in their OpenAPI schema). Lists without
/// one (`args`, `tolerations`, `envFrom`, …) are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "secrets"
        | "webhooks" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// API groups whose kinds kustomize knows the schema of; lists in other
/// kinds (custom resources) have no merge keys and are replaced.
fn builtin_group(api_version: &str) -> bool {
    let group = match api_version.split_once('/') {
        Some((g, _)) => g,
        None => return true,
    };
    !group.contains('.') || group.ends_with(".k8s.io")
}

/// Applies a strategic-merge patch to `target` the way kustomize (kyaml)
/// does: maps merge; lists with a merge key merge by it, the patch's items
/// first and then the target's items it did not name; other lists are
/// replaced; `$patch: delete` and `$patch: replace` are honoured; `null`
/// deletes a field. Other `$` directives are kept as fields, as kustomize
/// keeps them.
pub fn merge_strategic(target: &mut Value, patch: &Value) {
    merge_strategic_with(target, patch, None);
}

/// [`merge_strategic`], with a kustomization's `openapi` schema: a kind
/// it defines (`x-kubernetes-group-version-kind`) merges its lists by the
/// schema's `x-kubernetes-patch-merge-key`.
pub fn merge_strategic_with(target: &mut Value, patch: &Value, custom: Option<&Schema>) {
    let api_version = target["apiVersion"].as_str().unwrap_or("").to_owned();
    let kind = target["kind"].as_str().unwrap_or("").to_owned();
    if let Some(schema) = custom
        && let Some(root) = schema.definition_of(&api_version, &kind)
    {
        merge_value(target, patch, &Guide::Schema(Some(root), None, schema));
        return;
    }
    let known = builtin_group(&api_version);
    merge_value(target, patch, &Guide::Builtin(None, known));
}

/// A custom OpenAPI schema (kustomize's `openapi: {path: ...}`): its
/// `definitions`, found by name and by the kinds they define.
#[derive(Debug, Default)]
pub struct Schema {
    definitions: Map<String, Value>,
    /// (group, version, kind) to definition name.
    kinds: Vec<((String, String, String), String)>,
}

impl Schema {
    /// From a schema document; `None` when it has no `definitions` map.
    pub fn new(doc: &Value) -> Option<Schema> {
        let definitions = doc.get("definitions")?.as_object()?.clone();
        let mut kinds = Vec::new();
        for (name, def) in &definitions {
            for gvk in def["x-kubernetes-group-version-kind"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let text = |f: &str| gvk[f].as_str().unwrap_or_default().to_owned();
                kinds.push(((text("group"), text("version"), text("kind")), name.clone()));
            }
        }
        Some(Schema { definitions, kinds })
    }

    fn definition_of(&self, api_version: &str, kind: &str) -> Option<&Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let name = self.kinds.iter().find_map(|((g, v, k), name)| {
            (g == group && v == version && k == kind).then_some(name)
        })?;
        self.definitions.get(name)
    }

    /// `node` with a `$ref` to one of the definitions followed (a few
    /// times at most: a definition may refer to another).
    fn resolve<'a>(&'a self, mut node: &'a Value) -> Option<&'a Value> {
        for _ in 0..8 {
            let Some(r) = node.get("$ref").and_then(Value::as_str) else {
                return Some(node);
            };
            node = self.definitions.get(r.strip_prefix("#/definitions/")?)?;
        }
        None
    }
}

/// What tells a merge the merge key of each list.
enum Guide<'a> {
    /// The built-in Kubernetes kinds: by the list's field name (when the
    /// kind is of a group kustomize knows).
    Builtin(Option<&'a str>, bool),
    /// A custom schema's node for the value being merged, and its field
    /// name: where the schema has no node (a `$ref` to a definition it
    /// does not hold, as kustomize's own Kubernetes definitions would
    /// answer), the built-in merge keys apply.
    Schema(Option<&'a Value>, Option<&'a str>, &'a Schema),
}

impl<'a> Guide<'a> {
    fn field(&self, key: &'a str) -> Guide<'a> {
        match self {
            Guide::Builtin(_, known) => Guide::Builtin(Some(key), *known),
            Guide::Schema(node, _, schema) => Guide::Schema(
                node.and_then(|n| n.get("properties"))
                    .and_then(|p| p.get(key))
                    .and_then(|n| schema.resolve(n)),
                Some(key),
                schema,
            ),
        }
    }

    fn item(&self) -> Guide<'a> {
        match self {
            Guide::Builtin(_, known) => Guide::Builtin(None, *known),
            Guide::Schema(node, _, schema) => Guide::Schema(
                node.and_then(|n| n.get("items"))
                    .and_then(|n| schema.resolve(n)),
                None,
                schema,
            ),
        }
    }

    /// The key a list here merges by; `None` to replace it.
    fn merge_key(&self, patch: &[Value], target: &[Value]) -> Option<&'a str> {
        match self {
            Guide::Builtin(field, known) => {
                let key = field.filter(|_| *known).and_then(merge_key);
                // `ports` of a Service merge by `port`.
                match (key, patch.first().or(target.first())) {
                    (Some("containerPort"), Some(first))
                        if first.get("containerPort").is_none() =>
                    {
                        Some("port")
                    }
                    (k, _) => k,
                }
            }
            Guide::Schema(None, field, _) => Guide::Builtin(*field, true).merge_key(patch, target),
            Guide::Schema(Some(node), _, _) => {
                let merges = node["x-kubernetes-patch-strategy"]
                    .as_str()
                    .is_some_and(|s| s.split(',').any(|s| s == "merge"));
                node["x-kubernetes-patch-merge-key"]
                    .as_str()
                    .filter(|_| merges)
            }
        }
    }
}

impl Guide<'_> {
    /// A custom schema's list of scalars with the `merge` strategy: the
    /// patch's items, then the target's others (a set union).
    fn merges_scalars(&self) -> bool {
        match self {
            Guide::Schema(Some(node), _, _) => {
                node["x-kubernetes-patch-strategy"]
                    .as_str()
                    .is_some_and(|s| s.split(',').any(|s| s == "merge"))
                    && node.get("x-kubernetes-patch-merge-key").is_none()
            }
            _ => false,
        }
    }
}

fn is_directive(v: &Value, what: &str) -> bool {
    v.get("$patch").and_then(Value::as_str) == Some(what)
}

fn merge_value(target: &mut Value, patch: &Value, guide: &Guide<'_>) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            if is_directive(patch, "replace") {
                let mut p = p.clone();
                p.remove("$patch");
                *t = p;
                return;
            }
            for (k, v) in p {
                if k == "$patch" {
                    continue;
                }
                if v.is_null() || is_directive(v, "delete") {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) => merge_value(existing, v, &guide.field(k)),
                    None => {
                        let mut fresh = v.clone();
                        strip_directives(&mut fresh);
                        t.insert(k.clone(), fresh);
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) => {
            let key = guide.merge_key(p, t);
            let replace = p.iter().any(|item| is_directive(item, "replace"));
            let scalars = |l: &[Value]| l.iter().all(|v| !v.is_object() && !v.is_array());
            if key.is_none() && !replace && guide.merges_scalars() && scalars(p) && scalars(t) {
                let mut items: Vec<Value> = Vec::new();
                for v in p.iter().chain(t.iter()) {
                    if !items.contains(v) {
                        items.push(v.clone());
                    }
                }
                *t = items;
                return;
            }
            let Some(key) = key.filter(|_| !replace) else {
                let mut items: Vec<Value> = p
                    .iter()
                    .filter(|item| !is_directive(item, "replace"))
                    .cloned()
                    .collect();
                items.iter_mut().for_each(strip_directives);
                *t = items;
                return;
            };
            let mut original: Vec<Option<Value>> = t.drain(..).map(Some).collect();
            for item in p {
                let id = item.get(key);
                let found = original
                    .iter()
                    .position(|x| id.is_some() && x.as_ref().and_then(|x| x.get(key)) == id);
                let existing = found.and_then(|i| original[i].take());
                if is_directive(item, "delete") {
                    continue;
                }
                match existing {
                    Some(mut merged) => {
                        merge_value(&mut merged, item, &guide.item());
                        t.push(merged);
                    }
                    None => {
                        let mut fresh = item.clone();
                        strip_directives(&mut fresh);
                        t.push(fresh);
                    }
                }
            }
            t.extend(original.into_iter().flatten());
        }
        (t, p) => {
            let mut p = p.clone();
            strip_directives(&mut p);
            *t = p;
        }
    }
}

/// Drops `$patch` directives from a value that is added as it is.
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$patch");
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "`{path}` is not a JSON pointer (it must start with /)"
        ));
    };
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    parts: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in &parts[..parts.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path `{path}` does not exist"))?;
    }
    Ok(cur)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, String> {
    doc.pointer(path)
        .ok_or_else(|| format!("path `{path}` does not exist"))
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let parts = pointer_parts(path)?;
    let last = parts
        .last()
        .ok_or("cannot remove the whole document")?
        .clone();
    match parent_mut(doc, &parts, path)? {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("path `{path}` does not exist")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not an index"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index {i} is out of range at `{path}`"))
            }
        }
        _ => Err(format!("path `{path}` does not exist")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), String> {
    let parts = pointer_parts(path)?;
    let Some(last) = parts.last().cloned() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, &parts, path)? {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(format!("path `{path}` does not exist"));
            }
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| format!("`{last}` is not an index"))?;
                if replace {
                    let slot = a
                        .get_mut(i)
                        .ok_or_else(|| format!("index {i} is out of range at `{path}`"))?;
                    *slot = value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(format!("index {i} is out of range at `{path}`"));
                }
            }
        }
        _ => return Err(format!("path `{path}` does not exist")),
    }
    Ok(())
}

/// Applies RFC 6902 operations.
pub fn apply_json6902(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let o = op
            .as_object()
            .ok_or("every JSON 6902 operation must be a mapping")?;
        let kind = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or("an operation lacks `op`")?;
        let path = o
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation lacks `path`")?;
        let value = || {
            o.get("value")
                .cloned()
                .ok_or(format!("`{kind}` at `{path}` needs a `value`"))
        };
        let from = || {
            o.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("`{kind}` at `{path}` needs `from`"))
        };
        match kind {
            "add" => add(doc, path, value()?, false)?,
            "replace" => add(doc, path, value()?, true)?,
            "remove" => {
                remove(doc, path)?;
            }
            "move" => {
                let v = remove(doc, from()?)?;
                add(doc, path, v, false)?;
            }
            "copy" => {
                let v = get(doc, from()?)?.clone();
                add(doc, path, v, false)?;
            }
            "test" => {
                if get(doc, path)? != &value()? {
                    return Err(format!("test at `{path}` failed"));
                }
            }
            other => return Err(format!("unknown JSON 6902 operation `{other}`")),
        }
    }
    Ok(())
}

/// A map from a JSON value, or empty.
pub(crate) fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_by_name_and_directives() {
        let mut d = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        merge_strategic(
            &mut d,
            &json!({"spec": {"containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "w"}]}}),
        );
        assert_eq!(
            d,
            json!({"spec": {"containers": [{"name": "a", "image": "z"}, {"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn json6902_operations() {
        let mut d = json!({"a": [1, 2], "b": {"c": 1}});
        apply_json6902(
            &mut d,
            &[
                json!({"op": "add", "path": "/a/-", "value": 3}),
                json!({"op": "replace", "path": "/b/c", "value": 2}),
                json!({"op": "copy", "from": "/b/c", "path": "/d"}),
                json!({"op": "remove", "path": "/a/0"}),
            ],
        )
        .expect("applies");
        assert_eq!(d, json!({"a": [2, 3], "b": {"c": 2}, "d": 2}));
        assert!(
            apply_json6902(
                &mut d,
                &[json!({"op": "replace", "path": "/zz", "value": 1})]
            )
            .is_err()
        );
    }
}
