//! Inputs the fuzz target found that panicked the engine: each is now an
//! error naming the kustomization.

use std::path::Path;

use terrace_kustomize::{MemFs, build};

fn refused(kustomization: &str, resource: &str) -> String {
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", kustomization);
    fs.add("/app/d.yaml", resource);
    build(&fs, Path::new("/app"))
        .expect_err("refused, not a panic")
        .to_string()
}

#[test]
fn labels_on_a_resource_whose_labels_are_not_a_map() {
    let err = refused(
        "resources: [d.yaml]\ncommonLabels: {app: web}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: [x]\n",
    );
    assert!(
        err.contains("not a map") && err.contains("/app/kustomization.yaml"),
        "{err}"
    );
    let err = refused(
        "resources: [d.yaml]\ncommonAnnotations: {a: b}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  annotations: text\n",
    );
    assert!(err.contains("not a map"), "{err}");
}

#[test]
fn a_patch_that_leaves_no_metadata_map() {
    let err = refused(
        "resources: [d.yaml]\nnamePrefix: p-\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    - op: replace\n      path: /metadata\n      value: gone\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
    );
    assert!(
        err.contains("no longer an object with a `metadata` map"),
        "{err}"
    );
}

#[test]
fn crd_definitions_that_refer_to_each_other_end() {
    // A cycle is walked once; a lattice of shared types that would take
    // 10^40 steps is refused by the budget, naming the file.
    let mut types = vec![
        r#""x.v1.Thing": {"Schema": {"properties": {"kind": {}, "apiVersion": {}, "metadata": {}, "spec": {"$ref": "x.v1.T0"}}}}"#.to_owned(),
        r#""x.v1.Loop": {"Schema": {"properties": {"kind": {}, "apiVersion": {}, "metadata": {}, "next": {"$ref": "x.v1.Loop"}}}}"#.to_owned(),
    ];
    for level in 0..40 {
        let props: Vec<String> = (0..10)
            .map(|p| format!(r#""p{p}": {{"$ref": "x.v1.T{}"}}"#, level + 1))
            .collect();
        types.push(format!(
            r#""x.v1.T{level}": {{"Schema": {{"properties": {{{}}}}}}}"#,
            props.join(", ")
        ));
    }
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "crds: [crd.json]\n");
    fs.add("/app/crd.json", format!("{{{}}}", types.join(",\n")));
    let err = build(&fs, Path::new("/app"))
        .expect_err("refused, not endless")
        .to_string();
    assert!(
        err.contains("refer to each other") && err.contains("/app/crd.json"),
        "{err}"
    );
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "crds: [crd.json]\n");
    fs.add("/app/crd.json", format!("{{{}}}", types[1]));
    assert_eq!(
        build(&fs, Path::new("/app")).expect("a cycle ends"),
        Vec::<serde_json::Value>::new()
    );
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "crds: [crd.json]\n");
    fs.add("/app/crd.json", "[1, 2]\n");
    let err = build(&fs, Path::new("/app"))
        .expect_err("not a map")
        .to_string();
    assert!(
        err.contains("/app/crd.json") && err.contains("map of type names"),
        "{err}"
    );
}
