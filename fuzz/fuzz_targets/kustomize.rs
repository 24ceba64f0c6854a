//! Kustomization parsing and patch application: any text as a
//! kustomization (over a fixed resource) and as a patch builds or fails
//! cleanly, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrace_kustomize::{MemFs, apply_json6902, build, merge_strategic};

/// A custom kind, and an OpenAPI schema giving its list a merge key (for
/// `openapi: {path: schema.json}`).
const THING: &str = "apiVersion: example.com/v1\nkind: Thing\nmetadata:\n  name: t\nspec:\n  workers:\n  - {id: a, size: 1}\n";
const SCHEMA: &str = r##"{"definitions": {"Thing": {"type": "object", "properties": {"spec": {"properties": {"workers": {"type": "array", "items": {"$ref": "#/definitions/Worker"}, "x-kubernetes-patch-merge-key": "id", "x-kubernetes-patch-strategy": "merge"}, "loop": {"$ref": "#/definitions/Loop"}}}}, "x-kubernetes-group-version-kind": [{"group": "example.com", "kind": "Thing", "version": "v1"}]}, "Worker": {"properties": {"id": {"type": "string"}}}, "Loop": {"$ref": "#/definitions/Loop"}}}"##;

const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut fs = MemFs::new();
    fs.add("/k/kustomization.yaml", s)
        .add("/k/d.yaml", DEPLOY)
        .add("/k/c.yaml", THING)
        .add("/k/schema.json", SCHEMA)
        .add("/k/p.yaml", s);
    let _ = build(&fs, std::path::Path::new("/k"));
    // The same text as a patch, both kinds.
    if let Ok(docs) = terrace_yaml::tree::parse_stream(s, std::path::Path::new("p")) {
        let mut target = serde_json::json!({"spec": {"containers": [{"name": "web", "image": "x"}]}});
        for d in &docs {
            let v = d.to_json();
            match &v {
                serde_json::Value::Array(ops) => {
                    let _ = apply_json6902(&mut target, ops);
                }
                other => merge_strategic(&mut target, other),
            }
        }
    }
});
