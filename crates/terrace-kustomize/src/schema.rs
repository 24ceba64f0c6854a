//! The types of a kustomization's fields. kustomize decodes the file into
//! Go structs, so `newTag: 3` or `commonLabels: {version: 2}` are errors
//! there; they are errors here too, with the field's path and a fix.

use std::path::Path;

use serde_json::Value;

use crate::KustomizeError;

/// What a field must hold.
enum Ty {
    Str,
    Bool,
    Int,
    /// A list of strings.
    Strs,
    /// A map of strings to strings.
    StrMap,
    /// A map with these typed fields (others are not checked here).
    Obj(&'static [(&'static str, Ty)]),
    /// A list whose items have this type.
    List(&'static Ty),
}

const GENERATOR_OPTIONS: Ty = Ty::Obj(&[
    ("labels", Ty::StrMap),
    ("annotations", Ty::StrMap),
    ("disableNameSuffixHash", Ty::Bool),
    ("immutable", Ty::Bool),
]);

const GENERATOR: Ty = Ty::List(&Ty::Obj(&[
    ("name", Ty::Str),
    ("namespace", Ty::Str),
    ("behavior", Ty::Str),
    ("type", Ty::Str),
    ("literals", Ty::Strs),
    ("files", Ty::Strs),
    ("envs", Ty::Strs),
    ("env", Ty::Str),
    ("options", GENERATOR_OPTIONS),
]));

const SELECTOR: Ty = Ty::Obj(&[
    ("group", Ty::Str),
    ("version", Ty::Str),
    ("kind", Ty::Str),
    ("name", Ty::Str),
    ("namespace", Ty::Str),
    ("labelSelector", Ty::Str),
    ("annotationSelector", Ty::Str),
]);

const KUSTOMIZATION: &[(&str, Ty)] = &[
    ("apiVersion", Ty::Str),
    ("kind", Ty::Str),
    ("namespace", Ty::Str),
    ("namePrefix", Ty::Str),
    ("nameSuffix", Ty::Str),
    ("resources", Ty::Strs),
    ("bases", Ty::Strs),
    ("components", Ty::Strs),
    ("commonLabels", Ty::StrMap),
    ("commonAnnotations", Ty::StrMap),
    (
        "labels",
        Ty::List(&Ty::Obj(&[
            ("pairs", Ty::StrMap),
            ("includeSelectors", Ty::Bool),
            ("includeTemplates", Ty::Bool),
        ])),
    ),
    (
        "images",
        Ty::List(&Ty::Obj(&[
            ("name", Ty::Str),
            ("newName", Ty::Str),
            ("newTag", Ty::Str),
            ("digest", Ty::Str),
        ])),
    ),
    (
        "replicas",
        Ty::List(&Ty::Obj(&[("name", Ty::Str), ("count", Ty::Int)])),
    ),
    ("configMapGenerator", GENERATOR),
    ("secretGenerator", GENERATOR),
    ("generatorOptions", GENERATOR_OPTIONS),
    (
        "patches",
        Ty::List(&Ty::Obj(&[
            ("path", Ty::Str),
            ("patch", Ty::Str),
            ("target", SELECTOR),
            (
                "options",
                Ty::Obj(&[("allowNameChange", Ty::Bool), ("allowKindChange", Ty::Bool)]),
            ),
        ])),
    ),
    ("patchesStrategicMerge", Ty::Strs),
    (
        "patchesJson6902",
        Ty::List(&Ty::Obj(&[
            ("path", Ty::Str),
            ("patch", Ty::Str),
            ("target", SELECTOR),
        ])),
    ),
    (
        "sortOptions",
        Ty::Obj(&[
            ("order", Ty::Str),
            (
                "legacySortOptions",
                Ty::Obj(&[("orderFirst", Ty::Strs), ("orderLast", Ty::Strs)]),
            ),
        ]),
    ),
    ("replacements", Ty::List(&Ty::Obj(&[("path", Ty::Str)]))),
];

/// Renames the fields of the kustomization's typed parts to their
/// canonical names where they match case-insensitively (`images[].Name`
/// is `name`), as Go's JSON decoder matches struct fields. Maps of data
/// (labels, annotations) keep their keys as written.
pub(crate) fn canonical_names(k: &mut serde_json::Map<String, Value>) {
    for (field, ty) in KUSTOMIZATION {
        if let Some(v) = k.get_mut(*field) {
            canonical_value(v, ty);
        }
    }
}

fn canonical_value(v: &mut Value, ty: &Ty) {
    match (ty, v) {
        (Ty::Obj(fields), Value::Object(m)) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for key in keys {
                if fields.iter().any(|(f, _)| *f == key) {
                    continue;
                }
                if let Some((f, _)) = fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(&key))
                    && !m.contains_key(*f)
                    && let Some(value) = m.remove(&key)
                {
                    m.insert((*f).to_owned(), value);
                }
            }
            for (f, field_ty) in fields.iter() {
                if let Some(child) = m.get_mut(*f) {
                    canonical_value(child, field_ty);
                }
            }
        }
        (Ty::List(item_ty), Value::Array(items)) => {
            for item in items {
                canonical_value(item, item_ty);
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Checks the fields of a kustomization (or component) against the types
/// kustomize decodes them into. `null` is accepted everywhere, as Go
/// accepts it.
pub(crate) fn check(k: &serde_json::Map<String, Value>, file: &Path) -> Result<(), KustomizeError> {
    for (field, ty) in KUSTOMIZATION {
        if let Some(v) = k.get(*field) {
            check_value(v, ty, field).map_err(|m| KustomizeError::invalid(file, m))?;
        }
    }
    Ok(())
}

fn check_value(v: &Value, ty: &Ty, path: &str) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    let wrong = |want: &str| {
        let hint = match v {
            Value::Number(_) | Value::Bool(_) if want == "a string" => {
                format!("; quote it: \"{v}\"")
            }
            _ => String::new(),
        };
        Err(format!(
            "`{path}` must be {want}, not {}{hint}",
            type_name(v)
        ))
    };
    match ty {
        Ty::Str if !v.is_string() => wrong("a string"),
        Ty::Bool if !v.is_boolean() => wrong("a bool (true or false)"),
        Ty::Int if !(v.is_i64() || v.is_u64()) => wrong("a whole number"),
        Ty::Str | Ty::Bool | Ty::Int => Ok(()),
        Ty::Strs => match v.as_array() {
            None => wrong("a list of strings"),
            Some(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| check_value(item, &Ty::Str, &format!("{path}[{i}]"))),
        },
        Ty::StrMap => match v.as_object() {
            None => wrong("a map of strings"),
            Some(m) => m
                .iter()
                .try_for_each(|(key, item)| check_value(item, &Ty::Str, &format!("{path}.{key}"))),
        },
        Ty::Obj(fields) => match v.as_object() {
            None => wrong("a map"),
            Some(m) => fields
                .iter()
                .try_for_each(|(field, ty)| match m.get(*field) {
                    Some(item) => check_value(item, ty, &format!("{path}.{field}")),
                    None => Ok(()),
                }),
        },
        Ty::List(item_ty) => match v.as_array() {
            None => wrong("a list"),
            Some(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| check_value(item, item_ty, &format!("{path}[{i}]"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(k: Value) -> String {
        let k = k.as_object().cloned().unwrap_or_default();
        check(&k, Path::new("kustomization.yaml"))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn wrong_types_name_the_field_and_the_fix() {
        let e = err(json!({"images": [{"name": "a", "newTag": 3}]}));
        assert!(
            e.contains("`images[0].newTag` must be a string, not a number; quote it: \"3\""),
            "{e}"
        );
        let e = err(json!({"commonLabels": {"on": true}}));
        assert!(e.contains("`commonLabels.on` must be a string"), "{e}");
        let e = err(json!({"replicas": [{"name": "a", "count": "2"}]}));
        assert!(
            e.contains("`replicas[0].count` must be a whole number"),
            "{e}"
        );
        let ok = json!({"resources": ["a.yaml"], "namespace": null});
        assert!(check(ok.as_object().expect("map"), Path::new("k")).is_ok());
    }
}
