//! The field-level difference between two versions of an object: what a
//! plan shows for an update or for drift.
//!
//! Both sides are first [`normalize`]d: fields the API server keeps for
//! itself (`managedFields`, `resourceVersion`, `generation`, `uid`,
//! `creationTimestamp`) and `status` are not part of what terrace manages.

use serde_json::{Map, Value};

/// Metadata fields the API server owns.
const SERVER_METADATA: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
];

/// `v` without the fields the server owns.
pub fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(k);
            }
        }
    }
    v
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// `spec.template.spec.containers[name=web].image`.
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl FieldChange {
    /// One line of a plan: `~ spec.replicas: 2 → 3`. With `hide_values`
    /// (Secrets), values are not shown.
    pub fn line(&self, hide_values: bool) -> String {
        let show = |v: &Value| {
            if hide_values {
                "(sensitive)".to_owned()
            } else {
                scalar(v)
            }
        };
        match (&self.old, &self.new) {
            (None, Some(n)) => format!("+ {}: {}", self.path, show(n)),
            (Some(o), None) => format!("- {}: {}", self.path, show(o)),
            (Some(_), Some(_)) if hide_values => {
                format!("~ {}: (sensitive value changed)", self.path)
            }
            (Some(o), Some(n)) => format!("~ {}: {} → {}", self.path, show(o), show(n)),
            (None, None) => format!("~ {}", self.path),
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if !s.contains('\n') && !s.is_empty() => s.clone(),
        other => other.to_string(),
    }
}

/// The fields of `new` that differ from `old`, in `new`'s order, then
/// fields only `old` has.
pub fn fields(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key}]"),
    }
}

fn walk(old: &Value, new: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => walk_maps(o, n, path, out),
        (Value::Array(o), Value::Array(n)) => {
            if let (Some(ok), Some(nk)) = (named(o), named(n)) {
                for (name, nv) in &nk {
                    let p = format!("{path}[name={name}]");
                    match ok.iter().find(|(k, _)| k == name) {
                        Some((_, ov)) => walk(ov, nv, &p, out),
                        None => out.push(FieldChange {
                            path: p,
                            old: None,
                            new: Some((*nv).clone()),
                        }),
                    }
                }
                for (name, ov) in &ok {
                    if !nk.iter().any(|(k, _)| k == name) {
                        out.push(FieldChange {
                            path: format!("{path}[name={name}]"),
                            old: Some((*ov).clone()),
                            new: None,
                        });
                    }
                }
            } else if o.len() == n.len() {
                for (i, (ov, nv)) in o.iter().zip(n).enumerate() {
                    walk(ov, nv, &format!("{path}[{i}]"), out);
                }
            } else {
                out.push(FieldChange {
                    path: path.to_owned(),
                    old: Some(old.clone()),
                    new: Some(new.clone()),
                });
            }
        }
        (o, n) if o == n => {}
        (o, n) => out.push(FieldChange {
            path: path.to_owned(),
            old: Some(o.clone()),
            new: Some(n.clone()),
        }),
    }
}

fn walk_maps(
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    path: &str,
    out: &mut Vec<FieldChange>,
) {
    for (k, nv) in n {
        let p = join(path, k);
        match o.get(k) {
            Some(ov) => walk(ov, nv, &p, out),
            None => out.push(FieldChange {
                path: p,
                old: None,
                new: Some(nv.clone()),
            }),
        }
    }
    for (k, ov) in o {
        if !n.contains_key(k) {
            out.push(FieldChange {
                path: join(path, k),
                old: Some(ov.clone()),
                new: None,
            });
        }
    }
}

/// A list whose items are all maps with a distinct string `name`.
fn named(items: &[Value]) -> Option<Vec<(String, &Value)>> {
    let mut out: Vec<(String, &Value)> = Vec::with_capacity(items.len());
    for item in items {
        let name = item.get("name")?.as_str()?;
        if out.iter().any(|(k, _)| k == name) {
            return None;
        }
        out.push((name.to_owned(), item));
    }
    (!out.is_empty()).then_some(out)
}

/// Every leaf of `v` as an added field: what a plan shows for an object
/// that does not exist yet.
pub fn leaves(v: &Value) -> Vec<FieldChange> {
    fields(&Value::Object(Map::new()), v)
        .into_iter()
        .flat_map(|c| {
            let mut out = Vec::new();
            flatten(&c.path, c.new.as_ref().unwrap_or(&Value::Null), &mut out);
            out
        })
        .collect()
}

fn flatten(path: &str, v: &Value, out: &mut Vec<FieldChange>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                flatten(&join(path, k), child, out);
            }
        }
        Value::Array(items) if !items.is_empty() => match named(items) {
            Some(named) => {
                for (name, child) in named {
                    flatten(&format!("{path}[name={name}]"), child, out);
                }
            }
            None => {
                for (i, child) in items.iter().enumerate() {
                    flatten(&format!("{path}[{i}]"), child, out);
                }
            }
        },
        leaf => out.push(FieldChange {
            path: path.to_owned(),
            old: None,
            new: Some(leaf.clone()),
        }),
    }
}

/// A plan's text for a set of changes, one line each.
pub fn describe(changes: &[FieldChange], hide_values: bool) -> String {
    let mut s = String::new();
    for c in changes {
        s.push_str(&c.line(hide_values));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_are_ignored_and_changes_are_named() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "resourceVersion": "7", "uid": "u", "generation": 3,
                         "managedFields": [{"manager": "terrace"}], "labels": {"app": "web", "app.kubernetes.io/part-of": "x"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:1"}, {"name": "side", "image": "side:1"}]}}},
            "status": {"readyReplicas": 2}
        });
        let mut want = live.clone();
        want["metadata"]["resourceVersion"] = json!("8");
        want["spec"]["replicas"] = json!(3);
        want["spec"]["template"]["spec"]["containers"][1]["image"] = json!("side:2");
        want["metadata"]["labels"]["app.kubernetes.io/part-of"] = json!("y");
        want["status"] = json!({});
        let changes = fields(&normalize(&live), &normalize(&want));
        let lines: Vec<String> = changes.iter().map(|c| c.line(false)).collect();
        assert_eq!(
            lines,
            vec![
                "~ metadata.labels[app.kubernetes.io/part-of]: x → y",
                "~ spec.replicas: 2 → 3",
                "~ spec.template.spec.containers[name=side].image: side:1 → side:2",
            ]
        );
        assert!(fields(&normalize(&live), &normalize(&live)).is_empty());
        let hidden = FieldChange {
            path: "data.password".into(),
            old: Some(json!("old-s3cret")),
            new: Some(json!("new-s3cret")),
        };
        assert!(!hidden.line(true).contains("s3cret"));
        assert_eq!(
            hidden.line(true),
            "~ data.password: (sensitive value changed)"
        );
    }
}
