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
