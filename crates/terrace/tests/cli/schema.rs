//! The committed JSON Schemas match the types.

use crate::repo_root;

#[test]
fn committed_schemas_are_current() {
    for (name, text) in terrace::schema::schemas() {
        let path = repo_root().join("schemas").join(&name);
        if std::env::var_os("TERRACE_UPDATE_SCHEMAS").is_some() {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &text).expect("write schema");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/{name} is stale: run `TERRACE_UPDATE_SCHEMAS=1 cargo test -p terrace --test cli schema` and commit it"
        );
    }
}

#[test]
fn schemas_reject_unknown_fields() {
    let (_, unit) = terrace::schema::schemas()
        .into_iter()
        .find(|(n, _)| *n == "unit.schema.json")
        .expect("unit schema");
    let v: serde_json::Value = serde_json::from_str(&unit).expect("json");
    assert_eq!(v["additionalProperties"], serde_json::json!(false));
    assert!(v["properties"]["kind"].is_object());
}
