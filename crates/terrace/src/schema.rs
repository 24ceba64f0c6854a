//! The JSON Schemas of `terrace.yaml` and `unit.yaml`, generated from the
//! types that parse them. `schemas/` holds the committed copies; a test
//! fails when they are stale.

use terrace_core::config::{ProjectFile, UnitFile};

/// (file name, schema JSON) for each published schema.
pub fn schemas() -> Vec<(&'static str, String)> {
    let render = |s: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&s).expect("schemas serialize");
        text.push('\n');
        text
    };
    vec![
        (
            "terrace.schema.json",
            render(schemars::schema_for!(ProjectFile)),
        ),
        ("unit.schema.json", render(schemars::schema_for!(UnitFile))),
    ]
}
