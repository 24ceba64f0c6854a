//! `vars` (deprecated in kustomize for `replacements`, still common):
//! `$(NAME)` in the fields kustomize's var references list is replaced by
//! a field of another object, read after every other transformation.
//!
//! As kustomize (Kubernetes' expansion): `$$` is a literal `$`; a
//! `$(NAME)` that is no var stays as written; a string that is a single
//! `$(NAME)` takes the field's own type (a port stays a number).

use std::path::Path;

use serde_json::{Map, Value};

use crate::KustomizeError;
use crate::transform;

/// One var: a name, and where its value is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Var {
    pub name: String,
    pub kind: String,
    pub object: String,
    pub api_version: Option<String>,
    pub namespace: Option<String>,
    /// A dotted path (`spec.ports[0].port`); `metadata.name` by default.
    pub field: String,
}

impl Var {
    /// Whether the object (with every name it has had, and the namespace
    /// it came with) is the one the var names, as kustomize matches it
    /// when the var is declared: any namespace unless the var gives one.
    pub(crate) fn names(&self, v: &Value, names: &[String], first_namespace: &str) -> bool {
        transform::kind(v) == self.kind
            && names.contains(&self.object)
            && self
                .api_version
                .as_ref()
                .is_none_or(|a| v["apiVersion"].as_str() == Some(a.as_str()))
            && self.namespace.as_ref().is_none_or(|ns| {
                transform::same_namespace(transform::namespace(v), ns)
                    || transform::same_namespace(first_namespace, ns)
            })
    }
}

/// The `vars` of one kustomization.
pub(crate) fn parse(k: &Map<String, Value>, file: &Path) -> Result<Vec<Var>, KustomizeError> {
    let Some(list) = k.get("vars").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bad = |m: String| KustomizeError::invalid(file, m);
    let items = list
        .as_array()
        .ok_or_else(|| bad("`vars` must be a list".to_owned()))?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        // Go decodes field names case-insensitively.
        let get = |v: &Value, key: &str| -> Option<Value> {
            v.as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_owned));
        let name =
            text(get(item, "name")).ok_or_else(|| bad(format!("`vars[{i}]` needs a `name`")))?;
        let objref =
            get(item, "objref").ok_or_else(|| bad(format!("var `{name}` needs an `objref`")))?;
        let kind = text(get(&objref, "kind"))
            .ok_or_else(|| bad(format!("var `{name}`: `objref` needs a `kind`")))?;
        let object = text(get(&objref, "name"))
            .ok_or_else(|| bad(format!("var `{name}`: `objref` needs a `name`")))?;
        let field = get(item, "fieldref")
            .and_then(|f| text(get(&f, "fieldpath")))
            .unwrap_or_else(|| "metadata.name".to_owned());
        out.push(Var {
            name,
            kind,
            object,
            api_version: text(get(&objref, "apiVersion")),
            namespace: text(get(&objref, "namespace")),
            field,
        });
    }
    Ok(out)
}

/// The fields `$(NAME)` is replaced in (kustomize's default var
/// references): container args, commands, env values and mount paths of
/// workloads, NFS servers, Ingress hosts and TLS secrets, Service ports,
/// and every object's labels and annotations.
fn fields_of(kind: &str) -> Vec<String> {
    const POD_SPEC: &[&str] = &[
        "containers/args",
        "containers/command",
        "containers/env/value",
        "containers/volumeMounts/mountPath",
        "initContainers/args",
        "initContainers/command",
        "initContainers/env/value",
        "initContainers/volumeMounts/mountPath",
        "volumes/nfs/server",
    ];
    let pod_spec = match kind {
        "CronJob" => Some("spec/jobTemplate/spec/template/spec/"),
        "DaemonSet" | "Deployment" | "Job" | "ReplicaSet" | "StatefulSet" => {
            Some("spec/template/spec/")
        }
        "Pod" => Some("spec/"),
        _ => None,
    };
    let mut out: Vec<String> = pod_spec
        .map(|prefix| POD_SPEC.iter().map(|p| format!("{prefix}{p}")).collect())
        .unwrap_or_default();
    if kind == "CronJob" {
        // kustomize's own field spec for a CronJob's NFS volumes leaves
        // out the pod template's `spec`; it is matched as written.
        out.retain(|p| !p.ends_with("volumes/nfs/server"));
        out.push("spec/jobTemplate/spec/template/volumes/nfs/server".to_owned());
    }
    let own: &[&str] = match kind {
        "Deployment" => &["spec/template/metadata/annotations"],
        "StatefulSet" => &["spec/volumeClaimTemplates/spec/nfs/server"],
        "Ingress" => &["spec/rules/host", "spec/tls/hosts", "spec/tls/secretName"],
        "Service" => &["spec/ports/port", "spec/ports/targetPort"],
        "PersistentVolume" => &["spec/nfs/server"],
        _ => &[],
    };
    out.extend(own.iter().map(|p| (*p).to_owned()));
    out.push("metadata/labels".to_owned());
    out.push("metadata/annotations".to_owned());
    out
}

/// Replaces the vars in `objects` (each with the names of the vars bound
/// to it in `bound`, in the same order). A var bound to no object is an
/// error, as in kustomize.
pub(crate) fn apply(
    objects: &mut [Value],
    bound: &[Vec<String>],
    vars: &[Var],
    custom: &[transform::FieldSpec],
) -> Result<(), String> {
    if vars.is_empty() {
        return Ok(());
    }
    let mut values: Vec<(&str, Value)> = Vec::new();
    for var in vars {
        if values.iter().any(|(n, _)| *n == var.name) {
            return Err(format!("var `{}` is defined more than once", var.name));
        }
        // The object the var was bound to where it was declared.
        let found = objects
            .iter()
            .zip(bound)
            .find(|(_, names)| names.contains(&var.name));
        let value = found
            .and_then(|(o, _)| field(o, &var.field))
            .ok_or_else(|| {
                format!(
                    "var `{}` cannot be mapped to a field in the set of known resources ({} `{}`, field `{}`)",
                    var.name, var.kind, var.object, var.field
                )
            })?;
        values.push((var.name.as_str(), value));
    }
    for o in objects.iter_mut() {
        for path in fields_of(transform::kind(o)) {
            let path: Vec<&str> = path.split('/').collect();
            substitute_at(o, &path, &values);
        }
        // Fields `configurations: varReference` add.
        let (kind, group) = (
            transform::kind(o).to_owned(),
            transform::group_version(o).0.to_owned(),
        );
        for spec in custom {
            if spec.kind.as_ref().is_some_and(|k| *k != kind)
                || spec.group.as_ref().is_some_and(|g| *g != group)
            {
                continue;
            }
            let path: Vec<&str> = spec.path.iter().map(String::as_str).collect();
            substitute_at(o, &path, &values);
        }
    }
    Ok(())
}

/// The scalar at a dotted field path (`spec.ports[0].port`).
fn field(v: &Value, path: &str) -> Option<Value> {
    let mut node = v;
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            node = node.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let inner = index.strip_suffix(']')?;
            node = match inner.split_once('=') {
                Some((k, want)) => node
                    .as_array()?
                    .iter()
                    .find(|item| item[k].as_str() == Some(want))?,
                None => node.get(inner.parse::<usize>().ok()?)?,
            };
        }
    }
    match node {
        Value::Array(_) | Value::Object(_) => None,
        other => Some(other.clone()),
    }
}

/// Replaces vars in the strings at `path` under `v`, lists on the way
/// walked into, the values of a map at its end (labels).
fn substitute_at(v: &mut Value, path: &[&str], values: &[(&str, Value)]) {
    match v {
        Value::Array(items) => {
            for item in items {
                substitute_at(item, path, values);
            }
        }
        Value::Object(m) => match path.split_first() {
            None => {
                for value in m.values_mut() {
                    substitute(value, values);
                }
            }
            Some((first, rest)) => {
                if let Some(next) = m.get_mut(*first) {
                    if rest.is_empty() {
                        match next {
                            Value::Array(items) => {
                                for item in items {
                                    substitute(item, values);
                                }
                            }
                            Value::Object(map) => {
                                for value in map.values_mut() {
                                    substitute(value, values);
                                }
                            }
                            other => substitute(other, values),
                        }
                    } else {
                        substitute_at(next, rest, values);
                    }
                }
            }
        },
        _ => {}
    }
}

/// Expands the vars in one string value.
fn substitute(v: &mut Value, values: &[(&str, Value)]) {
    let Value::String(text) = v else {
        return;
    };
    // A string that is exactly one var takes the var's own type.
    if let Some(name) = text.strip_prefix("$(").and_then(|t| t.strip_suffix(')'))
        && let Some((_, value)) = values.iter().find(|(n, _)| *n == name)
    {
        *v = value.clone();
        return;
    }
    if !text.contains('$') {
        return;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            // `$$` is a literal `$`.
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = values.iter().find(|(n, _)| *n == &inner[..end])
        {
            match value {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    *text = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes() {
        let values = vec![("SVC", json!("p-web")), ("PORT", json!(8080))];
        let mut v = json!("--svc=$(SVC):$(PORT) $(NOPE) $$(SVC) $5");
        substitute(&mut v, &values);
        assert_eq!(v, json!("--svc=p-web:8080 $(NOPE) $(SVC) $5"));
        let mut v = json!("$(PORT)");
        substitute(&mut v, &values);
        assert_eq!(v, json!(8080));
    }

    #[test]
    fn fields_by_dotted_path() {
        let o = json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}});
        assert_eq!(field(&o, "spec.ports[1].port"), Some(json!(81)));
        assert_eq!(field(&o, "spec.ports[name=a].port"), Some(json!(80)));
        assert_eq!(field(&o, "spec.ports"), None);
    }
}
