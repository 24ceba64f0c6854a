//! `replacements`: copy one field of one object into fields of others.
//!
//! Field paths are dotted (`spec.template.spec.containers.[name=web].image`):
//! `[key=value]` picks list items by a field, `[=value]` a primitive list
//! item, `*` every item of a list, a number an item by index, and
//! `[a.b/c]` a map key that contains dots. A scalar target keeps its type
//! (a string stays a string, a number must stay a number); a list or map
//! target is replaced whole. Replacements run after every other
//! transformer of the kustomization, before hash suffixes are added.

use std::path::Path;

use serde_json::{Map, Value};

use crate::KustomizeError;
use crate::build::Res;
use crate::select::{Match, Selector};
use crate::transform;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    /// A map key, or a list index when the node is a list.
    Field(String),
    /// `[key=value]`: list items whose `key` reads `value`.
    Item(String, String),
    /// `[=value]`: primitive list items equal to `value`.
    Primitive(String),
    /// `*`: every item of a list.
    All,
}

/// A concrete step to one found node.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits a field path at dots outside brackets.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in path.chars() {
        match c {
            '[' => {
                depth += 1;
                current.push(c);
            }
            ']' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            '.' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| {
            if p == "*" {
                return Seg::All;
            }
            match p.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(inner) => match inner.split_once('=') {
                    Some(("", v)) => Seg::Primitive(v.to_owned()),
                    Some((k, v)) => Seg::Item(k.to_owned(), v.to_owned()),
                    None => Seg::Field(inner.to_owned()),
                },
                None => Seg::Field(p),
            }
        })
        .collect()
}

/// The text of a scalar, as YAML holds it.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Finds every node `segs` leads to from `node`; with `create`, missing
/// fields and `[key=value]` items are made on the way. Each path comes with
/// whether its last node was created.
fn resolve(
    node: &mut Value,
    segs: &[Seg],
    create: bool,
    prefix: &mut Vec<Step>,
    out: &mut Vec<(Vec<Step>, bool)>,
    created: bool,
) -> Result<(), String> {
    let Some((seg, rest)) = segs.split_first() else {
        out.push((prefix.clone(), created));
        return Ok(());
    };
    // What a missing node should be made as, given the step after it.
    let empty_for = |next: Option<&Seg>| match next {
        None => Value::Null,
        Some(Seg::Item(..) | Seg::Primitive(_) | Seg::All) => Value::Array(Vec::new()),
        Some(Seg::Field(_)) => Value::Object(Map::new()),
    };
    if create && node.is_null() {
        *node = empty_for(Some(seg));
    }
    let mut visit = |node: &mut Value, step: Step, made: bool, out: &mut Vec<_>| {
        prefix.push(step);
        let r = resolve(node, rest, create, prefix, out, made);
        prefix.pop();
        r
    };
    match (seg, node) {
        (Seg::Field(f), Value::Array(items)) => match f.parse::<usize>() {
            Ok(i) if i < items.len() => visit(&mut items[i], Step::Index(i), false, out)?,
            Ok(i) if create => {
                return Err(format!(
                    "index {i} specified but only {} elements found",
                    items.len()
                ));
            }
            _ => {}
        },
        (Seg::Field(f), Value::Object(map)) => {
            let made = !map.contains_key(f);
            if made && !create {
                return Ok(());
            }
            let child = map
                .entry(f.clone())
                .or_insert_with(|| empty_for(rest.first()));
            visit(child, Step::Key(f.clone()), made, out)?;
        }
        (Seg::Item(k, v), Value::Array(items)) => {
            let hits: Vec<usize> = (0..items.len())
                .filter(|&i| scalar_text(&items[i][k.as_str()]).as_deref() == Some(v.as_str()))
                .collect();
            if hits.is_empty() && create {
                let mut item = Map::new();
                item.insert(k.clone(), terrace_yaml::tree::plain_scalar(v));
                items.push(Value::Object(item));
                let i = items.len() - 1;
                visit(&mut items[i], Step::Index(i), false, out)?;
            }
            for i in hits {
                visit(&mut items[i], Step::Index(i), false, out)?;
            }
        }
        (Seg::Primitive(v), Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                if scalar_text(item).as_deref() == Some(v.as_str()) && !item.is_null() {
                    visit(item, Step::Index(i), false, out)?;
                }
            }
        }
        (Seg::All, Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                visit(item, Step::Index(i), false, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn at_mut<'a>(mut node: &'a mut Value, steps: &[Step]) -> &'a mut Value {
    for s in steps {
        node = match s {
            Step::Key(k) => &mut node[k.as_str()],
            Step::Index(i) => &mut node[*i],
        };
    }
    node
}

/// `Kind.version.group/name.namespace`, the way kustomize names a selector.
fn describe(sel: &Value) -> String {
    let f = |field: &str, none: &str| {
        sel.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(|| none.to_owned(), str::to_owned)
    };
    format!(
        "{}.{}.{}/{}.{}",
        f("kind", "[noKind]"),
        f("version", "[noVer]"),
        f("group", "[noGrp]"),
        f("name", "[noName]"),
        f("namespace", "[noNs]")
    )
}

/// Splits `text` at `delimiter` and puts `value` at `index` (before the
/// first part when negative, after the last when past the end).
fn splice(text: &str, delimiter: &str, index: i64, value: &str) -> String {
    let mut parts: Vec<&str> = text.split(delimiter).collect();
    if index < 0 {
        parts.insert(0, value);
    } else if index as usize >= parts.len() {
        parts.push(value);
    } else {
        parts[index as usize] = value;
    }
    parts.join(delimiter)
}

/// Runs the kustomization's `replacements` over `acc`, in order.
pub(crate) fn run(
    fs: &dyn crate::Fs,
    dir: &Path,
    file: &Path,
    list: &[Value],
    acc: &mut [Res],
) -> Result<(), KustomizeError> {
    let invalid = |m: String| KustomizeError::invalid(file, format!("replacements: {m}"));
    for entry in list {
        let loaded;
        let reps: Vec<&Value> = match entry.get("path").and_then(Value::as_str) {
            Some(path) => {
                let text = crate::build::read_restricted(fs, dir, path, file)?;
                loaded = crate::build::yaml_documents(&text, file)?;
                loaded
                    .iter()
                    .flat_map(|d| match d {
                        Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    })
                    .collect()
            }
            None => vec![entry],
        };
        for rep in reps {
            replace_one(rep, acc).map_err(invalid)?;
        }
    }
    Ok(())
}

fn replace_one(rep: &Value, acc: &mut [Res]) -> Result<(), String> {
    let (Some(source), Some(targets)) = (
        rep.get("source"),
        rep.get("targets").and_then(Value::as_array),
    ) else {
        return Err("each replacement must specify a source and at least one target".into());
    };
    let value = source_value(source, acc)?;
    for target in targets {
        let select = target
            .get("select")
            .ok_or("each target must specify the resources to `select`")?;
        let rejects = target
            .get("reject")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let paths: Vec<&str> = match target.get("fieldPaths").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).collect(),
            _ => vec!["metadata.name"],
        };
        let options = target.get("options").cloned().unwrap_or(Value::Null);
        let create = options["create"] == Value::Bool(true);
        let select = Selector::new(select, Match::Exact)?;
        let rejects = rejects
            .iter()
            .map(|j| Selector::new(j, Match::Exact))
            .collect::<Result<Vec<_>, _>>()?;
        for r in acc.iter_mut() {
            if !select.selects(r) || rejects.iter().any(|j| j.selects(r)) {
                continue;
            }
            for fp in &paths {
                set_path(&mut r.value, fp, &value, &options, create).map_err(|m| {
                    format!(
                        "target {} `{}`: {m}",
                        transform::kind(&r.value),
                        transform::name(&r.value)
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// The value a replacement's `source` names, refined by its options.
fn source_value(source: &Value, acc: &mut [Res]) -> Result<Value, String> {
    let selector = Selector::new(source, Match::Exact)?;
    let mut hits = acc.iter_mut().filter(|r| selector.selects(r));
    let Some(found) = hits.next() else {
        return Err(format!("nothing selected by source {}", describe(source)));
    };
    if hits.next().is_some() {
        return Err(format!(
            "multiple matches for source selector {}",
            describe(source)
        ));
    }
    let fp = source
        .get("fieldPath")
        .and_then(Value::as_str)
        .unwrap_or("metadata.name");
    let mut paths = Vec::new();
    resolve(
        &mut found.value,
        &parse_path(fp),
        false,
        &mut Vec::new(),
        &mut paths,
        false,
    )?;
    let Some((steps, _)) = paths.first() else {
        return Err(format!(
            "fieldPath `{fp}` is missing for replacement source {}",
            describe(source)
        ));
    };
    let value = at_mut(&mut found.value, steps).clone();
    let options = &source["options"];
    let Some(delimiter) = options["delimiter"].as_str().filter(|d| !d.is_empty()) else {
        return Ok(value);
    };
    let text = scalar_text(&value)
        .filter(|_| !value.is_null())
        .ok_or("the delimiter option can only be used with scalar values")?;
    let index = options["index"].as_i64().unwrap_or(0);
    let parts: Vec<&str> = text.split(delimiter).collect();
    match usize::try_from(index).ok().and_then(|i| parts.get(i)) {
        Some(part) => Ok(Value::String((*part).to_owned())),
        None => Err(format!(
            "options.index {index} is out of bounds for value {text}"
        )),
    }
}

fn set_path(
    object: &mut Value,
    fp: &str,
    value: &Value,
    options: &Value,
    create: bool,
) -> Result<(), String> {
    let segs = parse_path(fp);
    let mut paths = Vec::new();
    resolve(object, &segs, create, &mut Vec::new(), &mut paths, false).map_err(|m| {
        format!("unable to find or create field \"{fp}\" in replacement target: {m}")
    })?;
    if paths.is_empty() {
        return Err(if create {
            format!("unable to find or create field \"{fp}\" in replacement target")
        } else {
            format!("unable to find field \"{fp}\" in replacement target")
        });
    }
    // Labels and annotations are strings whatever the source was.
    let meta_string = matches!(
        segs.as_slice(),
        [Seg::Field(m), Seg::Field(l), _] if m == "metadata" && (l == "labels" || l == "annotations")
    );
    for (steps, created) in paths {
        let target = at_mut(object, &steps);
        let mut value = value.clone();
        if let Some(delimiter) = options["delimiter"].as_str().filter(|d| !d.is_empty()) {
            let current = scalar_text(target)
                .ok_or("the delimiter option can only be used with scalar targets")?;
            let v = scalar_text(&value).unwrap_or_default();
            let index = options["index"].as_i64().unwrap_or(0);
            value = Value::String(splice(&current, delimiter, index, &v));
        }
        *target = retype(target, created, meta_string, value)?;
    }
    Ok(())
}

/// The new value of a target: a scalar keeps its type, a created scalar
/// reads as plain YAML, anything else is replaced by `value`.
fn retype(target: &Value, created: bool, meta_string: bool, value: Value) -> Result<Value, String> {
    let (Some(text), false) = (scalar_text(&value), value.is_null() && !created) else {
        return Ok(value);
    };
    if !created && (target.is_array() || target.is_object()) {
        return Ok(value);
    }
    if target.is_string() || (created && meta_string) {
        return Ok(Value::String(text));
    }
    let parsed = terrace_yaml::tree::plain_scalar(&text);
    let fits = match target {
        Value::Number(_) => parsed.is_number(),
        Value::Bool(_) => parsed.is_boolean(),
        _ => true,
    };
    if !fits {
        return Err(format!(
            "cannot put `{text}` into a field that holds {}",
            if target.is_number() {
                "a number"
            } else {
                "a bool"
            }
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_split_outside_brackets() {
        assert_eq!(
            parse_path("metadata.annotations.[a.b/c]"),
            vec![
                Seg::Field("metadata".into()),
                Seg::Field("annotations".into()),
                Seg::Field("a.b/c".into())
            ]
        );
        assert_eq!(
            parse_path("spec.containers.[name=web].args.[=--x].*"),
            vec![
                Seg::Field("spec".into()),
                Seg::Field("containers".into()),
                Seg::Item("name".into(), "web".into()),
                Seg::Field("args".into()),
                Seg::Primitive("--x".into()),
                Seg::All
            ]
        );
    }

    #[test]
    fn scalars_keep_their_type_and_created_fields_read_plain() {
        let mut o = json!({"spec": {"replicas": 1, "name": "x", "list": [{"name": "a"}]}});
        let opts = Value::Null;
        set_path(&mut o, "spec.replicas", &json!("3"), &opts, false).expect("sets");
        set_path(&mut o, "spec.name", &json!(3), &opts, false).expect("sets");
        set_path(&mut o, "spec.new.deep", &json!("4"), &opts, true).expect("sets");
        set_path(&mut o, "spec.list.[name=b].v", &json!("x"), &opts, true).expect("sets");
        assert_eq!(
            o,
            json!({"spec": {"replicas": 3, "name": "3", "new": {"deep": 4},
                "list": [{"name": "a"}, {"name": "b", "v": "x"}]}})
        );
        let err =
            set_path(&mut o, "spec.replicas", &json!("x"), &opts, false).expect_err("refused");
        assert!(err.contains("a number"), "{err}");
        let err = set_path(&mut o, "spec.missing", &json!("x"), &opts, false).expect_err("refused");
        assert!(err.contains("unable to find field"), "{err}");
    }

    #[test]
    fn delimiters_splice() {
        assert_eq!(splice("a:b", ":", 1, "c"), "a:c");
        assert_eq!(splice("a:b", ":", -1, "c"), "c:a:b");
        assert_eq!(splice("a:b", ":", 7, "c"), "a:b:c");
    }
}
