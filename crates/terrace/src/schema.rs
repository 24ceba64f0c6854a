//! The JSON Schemas of `terrace.yaml`, `unit.yaml` and each kind's
//! settings, generated from the types that parse them and from the kind
//! registry. `schemas/` holds the committed copies; a test fails when they
//! are stale.

use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};
use terrace_core::config::{ProjectFile, UnitFile, UnitOverride};
use terrace_core::kind::Registry;

/// (file name under `schemas/`, schema JSON) for each published schema.
pub fn schemas() -> Vec<(String, String)> {
    let kinds = terrace_drivers::registry();
    let render = |s: &Value| {
        let mut text = serde_json::to_string_pretty(s).expect("schemas serialize");
        text.push('\n');
        text
    };
    let mut out = vec![
        (
            "terrace.schema.json".to_owned(),
            render(&project_schema(&kinds)),
        ),
        ("unit.schema.json".to_owned(), render(&unit_schema(&kinds))),
    ];
    for kind in kinds.iter() {
        let mut generator = schemars::SchemaGenerator::default();
        let reference = kind.settings_schema(&mut generator);
        let mut schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("settings of a `{}` unit", kind.name()),
            "description": kind.summary(),
            "allOf": [ordered(&reference)],
        });
        let defs = generator.take_definitions(true);
        if !defs.is_empty() {
            schema["$defs"] = Value::Object(defs);
        }
        out.push((
            format!("kinds/{}.schema.json", kind.name()),
            render(&schema),
        ));
    }
    out
}

/// `terrace.yaml`: its fields, and defaults for each kind under its name.
fn project_schema(kinds: &Registry) -> Value {
    let mut generator = schemars::SchemaGenerator::default();
    let blocks: Vec<(&str, Schema)> = kinds
        .iter()
        .map(|k| (k.name(), k.settings_schema(&mut generator)))
        .collect();
    let mut root = ordered(&generator.into_root_schema_for::<ProjectFile>());
    root["additionalProperties"] = Value::Bool(false);
    for (name, schema) in blocks {
        let mut s = ordered(&schema);
        if let Value::Object(m) = &mut s {
            m.insert(
                "description".into(),
                Value::String(format!(
                    "Defaults for every `{name}` unit; a unit's own `{name}` block wins key by key."
                )),
            );
        }
        root["properties"][name] = s;
    }
    root
}

/// `unit.yaml`: the common fields, `kind` one of the registered kinds, and
/// each kind's settings block under its name (in the unit and in each
/// environment's override). Keys that are neither are refused, as the
/// project check refuses them.
fn unit_schema(kinds: &Registry) -> Value {
    let mut generator = schemars::SchemaGenerator::default();
    let blocks: Vec<(&str, &str, Schema)> = kinds
        .iter()
        .map(|k| (k.name(), k.summary(), k.settings_schema(&mut generator)))
        .collect();
    // The override type is named so its properties can be extended too.
    let _ = generator.subschema_for::<UnitOverride>();
    let mut root = ordered(&generator.into_root_schema_for::<UnitFile>());
    let add_blocks = |object: &mut Value| {
        object["additionalProperties"] = Value::Bool(false);
        for (name, summary, schema) in &blocks {
            let mut s = ordered(schema);
            if let Value::Object(m) = &mut s {
                m.insert("description".into(), Value::String((*summary).to_owned()));
            }
            object["properties"][*name] = s;
        }
    };
    add_blocks(&mut root);
    root["properties"]["kind"] = json!({
        "description": "What kind of unit this is; the kind's own settings go under a key of the same name.",
        "enum": kinds.names().collect::<Vec<_>>(),
    });
    let override_name = <UnitOverride as JsonSchema>::schema_name();
    if let Some(def) = root
        .get_mut("$defs")
        .and_then(|d| d.get_mut(override_name.as_ref()))
    {
        add_blocks(def);
    }
    root
}

/// The schema as JSON in schemars' own key order (`$schema`, `title`,
/// `description` first), as it serializes.
fn ordered(schema: &Schema) -> Value {
    serde_json::to_value(schema).expect("schemas serialize")
}
