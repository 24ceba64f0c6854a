//! Bad input: every error names the file, line and column, with a caret.
//! The messages are snapshots.

use crate::{code, stderr, terrace, write_files};

const PROJECT: &str = "name: t\nlayers: [infra, apps]\nvars:\n  replicas: 2\n  nodes: [a, b]\ntargets:\n  k8s: { type: cluster }\n";

/// Runs `validate` on a project with `files` and returns stderr.
fn validate(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(dir.path(), &[("terrace.yaml", PROJECT)]);
    write_files(dir.path(), files);
    let o = terrace(dir.path(), &["validate"]);
    assert_eq!(code(&o), 1, "validate should fail: {}", stderr(&o));
    stderr(&o)
}

const MANIFEST: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: x\n";

#[test]
fn unknown_field_in_unit_file() {
    insta::assert_snapshot!(validate(&[(
        "apps/web/unit.yaml",
        "layer: apps\nkind: manifests\ndependson: [db]\n"
    )]));
}

#[test]
fn unknown_variable_in_input() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  host: \"web.${var.domian}\"\n"
        ),
        ("apps/web/m.yaml", MANIFEST),
    ]));
}

#[test]
fn unterminated_expression() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  a: ok\n  b: \"${var.replicas\"\n"
        ),
        ("apps/web/m.yaml", MANIFEST),
    ]));
}

#[test]
fn list_interpolated_into_a_string() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  a: \"nodes: ${var.nodes}\"\n"
        ),
        ("apps/web/m.yaml", MANIFEST),
    ]));
}

#[test]
fn bad_expression_in_a_manifest() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  replicas: 2\n"
        ),
        (
            "apps/web/m.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"${input.replica}\"\n"
        ),
    ]));
}

#[test]
fn dependency_on_a_higher_layer() {
    insta::assert_snapshot!(validate(&[
        (
            "infra/net/unit.yaml",
            "layer: infra\nkind: manifests\ndependsOn:\n  - web\n"
        ),
        ("infra/net/m.yaml", MANIFEST),
        ("apps/web/unit.yaml", "layer: apps\nkind: manifests\n"),
        ("apps/web/m.yaml", MANIFEST),
    ]));
}

#[test]
fn dependency_cycle() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/a/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  x: ${unit.b.outputs.objects}\n"
        ),
        (
            "apps/b/unit.yaml",
            "layer: apps\nkind: manifests\ndependsOn: [c]\n"
        ),
        (
            "apps/c/unit.yaml",
            "layer: apps\nkind: manifests\ndependsOn: [a]\n"
        ),
    ]));
}

#[test]
fn secret_reference_to_a_missing_file() {
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  password: ${secret.secrets/db.sops.yaml#password}\n"
        ),
        ("apps/web/m.yaml", MANIFEST),
    ]));
}

#[test]
fn duplicate_unit_names_and_unknown_layer() {
    insta::assert_snapshot!(validate(&[
        ("apps/web/unit.yaml", "layer: apps\nkind: manifests\n"),
        ("other/web/unit.yaml", "layer: aps\nkind: template\n"),
    ]));
}

#[test]
fn template_with_an_undefined_name() {
    insta::assert_snapshot!(validate(&[
        (
            "infra/cfg/unit.yaml",
            "layer: infra\nkind: template\ninputs:\n  domain: x\n"
        ),
        ("infra/cfg/templates/a.conf.j2", "ok\nhost = {{ domian }}\n"),
    ]));
}

#[test]
fn not_a_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("no terrace.yaml in"), "{err}");
    assert!(err.contains("terrace init"), "{err}");
}

#[test]
fn terraceignore_hides_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", PROJECT),
            ("apps/web/unit.yaml", "layer: apps\nkind: manifests\n"),
            ("apps/web/m.yaml", MANIFEST),
            ("attic/old/unit.yaml", "this is: [not valid"),
            ("node_modules/x/unit.yaml", "nor: [this"),
            (".terraceignore", "attic/\n"),
        ],
    );
    let o = terrace(dir.path(), &["validate"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn terraform_backend_that_does_not_exist() {
    // Used to pass `validate` and fail at plan.
    insta::assert_snapshot!(validate(&[(
        "infra/net/unit.yaml",
        "layer: infra\nkind: terraform\nterraform:\n  backend: bogus\n"
    )]));
}

#[test]
fn typo_in_an_environment_override() {
    // Used to be an unlocated driver error at plan.
    insta::assert_snapshot!(validate(&[
        (
            "apps/web/unit.yaml",
            "layer: apps\nkind: manifests\nmanifests:\n  path: m\noverrides:\n  default:\n    manifests:\n      pth: other\n"
        ),
        ("apps/web/m/m.yaml", MANIFEST),
        (
            "apps/api/unit.yaml",
            "layer: apps\nkind: manifests\noverrides:\n  default:\n    manifests:\n      apply:\n        timeout: 5 minutes-ish\n"
        ),
        ("apps/api/m.yaml", MANIFEST),
    ]));
}

#[test]
fn unknown_kind_and_another_kinds_settings() {
    insta::assert_snapshot!(validate(&[
        ("apps/web/unit.yaml", "layer: apps\nkind: helmm\n"),
        (
            "apps/api/unit.yaml",
            "layer: apps\nkind: manifests\nterraform:\n  refresh: false\n"
        ),
        ("apps/api/m.yaml", MANIFEST),
    ]));
}
