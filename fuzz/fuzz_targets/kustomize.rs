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

/// CRD definitions (`crds: [crd.json]`): an object reference, every
/// marker, and types that refer to each other.
const CRDS: &str = r##"{"x.v1.Thing": {"Schema": {"properties": {"kind": {}, "apiVersion": {}, "metadata": {}, "spec": {"$ref": "x.v1.Spec"}}}}, "x.v1.Spec": {"Schema": {"properties": {"secretRef": {"x-kubernetes-object-ref-kind": "Secret", "x-kubernetes-object-ref-api-version": "v1", "$ref": "x.v1.Ref"}, "selector": {"x-kubernetes-label-selector": ""}, "notes": {"x-kubernetes-annotation": ""}, "alias": {"x-kubernetes-identity": ""}, "again": {"$ref": "x.v1.Spec"}}}}, "x.v1.Ref": {"Schema": {"properties": {"name": {}, "back": {"$ref": "x.v1.Spec"}}}}}"##;

/// A transformer configuration (`configurations: [conf.yaml]`) with
/// every section terrace reads.
const CONF: &str = "nameReference:\n- kind: Secret\n  fieldSpecs:\n  - {path: spec/secretRef/name, kind: Thing}\nnamePrefix:\n- {path: metadata/name, kind: Thing}\ncommonLabels:\n- {path: spec/selector, kind: Thing, create: true}\ncommonAnnotations:\n- {path: spec/notes, kind: Thing}\nimages:\n- {path: spec/image, kind: Thing}\nreplicas:\n- {path: spec/count, kind: Thing, create: true}\nvarReference:\n- {path: spec/text, kind: Thing}\n";

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
        .add("/k/crd.json", CRDS)
        .add("/k/conf.yaml", CONF)
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
