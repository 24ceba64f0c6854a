//! Fields kustomize has and terrace's engine does not: each one is an
//! error naming the field and the file, never a silent skip. (kustomize
//! accepts these, so they cannot be conformance cases.)

use std::path::Path;

use terrace_kustomize::{MemFs, build};

#[test]
fn every_unsupported_field_is_refused_by_name() {
    let fields = [
        "validators: [v.yaml]",
        "crds: [https://example.com/crd.json]",
        "openapi: {path: https://example.com/schema.json}",
        "helmChartInflationGenerator: []",
    ];
    for field in fields {
        let mut fs = MemFs::new();
        fs.add("/app/kustomization.yaml", format!("{field}\n"));
        let err = build(&fs, Path::new("/app"))
            .expect_err("an unsupported field is an error")
            .to_string();
        let name = field.split(':').next().unwrap_or_default();
        let named = if name == "openapi" {
            "`openapi: https://example.com/schema.json (remote schemas)` is not supported"
                .to_owned()
        } else if name == "crds" {
            "`crds: https://example.com/crd.json (remote definitions)` is not supported".to_owned()
        } else {
            format!("`{name}` is not supported")
        };
        assert!(
            err.contains(&named) && err.contains("/app/kustomization.yaml"),
            "{field}: {err}"
        );
    }
}

#[test]
fn configurations_other_than_name_references_are_refused_by_name() {
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "configurations: [c.yaml]\n");
    fs.add(
        "/app/c.yaml",
        "templateLabels:\n- path: spec/template/metadata/labels\n  kind: MyKind\n",
    );
    let err = build(&fs, Path::new("/app"))
        .expect_err("a templateLabels configuration is not supported")
        .to_string();
    assert!(
        err.contains("`configurations: templateLabels` is not supported")
            && err.contains("/app/c.yaml"),
        "{err}"
    );
}

#[test]
fn transformers_other_than_the_supported_builtins_are_refused_by_name() {
    for (config, named) in [
        (
            "apiVersion: builtin\nkind: HashTransformer\nmetadata:\n  name: n\n",
            "`transformers: HashTransformer` is not supported",
        ),
        (
            "apiVersion: builtin\nkind: NamespaceTransformer\nmetadata:\n  name: n\n  namespace: x\nfieldSpecs:\n- path: spec/targetNamespace\n",
            "`transformers: NamespaceTransformer field specs other than metadata/namespace` is not supported",
        ),
        (
            "apiVersion: example.com/v1\nkind: MyPlugin\nmetadata:\n  name: p\n",
            "`transformers: MyPlugin (only builtin transformers)` is not supported",
        ),
    ] {
        let mut fs = MemFs::new();
        fs.add("/app/kustomization.yaml", "transformers: [t.yaml]\n");
        fs.add("/app/t.yaml", config);
        let err = build(&fs, Path::new("/app"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains(named) && err.contains("/app/t.yaml"), "{err}");
    }
}

#[test]
fn plugin_configuration_entries_that_are_not_there_or_loop_are_refused() {
    // Neither a configuration nor a file: named as missing.
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "transformers: [nothing-here]\n");
    let err = build(&fs, Path::new("/app"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("nothing-here"), "{err}");
    // A directory of configurations that lists its parent: a cycle, not a
    // stack overflow.
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "transformers: [t]\n");
    fs.add("/app/t/kustomization.yaml", "transformers: [..]\n");
    let err = build(&fs, Path::new("/app"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn generators_other_than_the_builtin_ones_are_refused_by_name() {
    let mut fs = MemFs::new();
    fs.add("/app/kustomization.yaml", "generators: [g.yaml]\n");
    fs.add(
        "/app/g.yaml",
        "apiVersion: builtin\nkind: HelmChartInflationGenerator\nmetadata:\n  name: h\n",
    );
    let err = build(&fs, Path::new("/app"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("`generators: HelmChartInflationGenerator` is not supported"),
        "{err}"
    );
}

#[test]
fn generator_files_given_as_urls_are_refused_by_name() {
    for (field, entry) in [
        ("files", "dash.json=https://example.com/dash.json"),
        ("envs", "https://example.com/app.env"),
    ] {
        let mut fs = MemFs::new();
        fs.add(
            "/app/kustomization.yaml",
            format!("configMapGenerator:\n- name: c\n  {field}: [\"{entry}\"]\n"),
        );
        let err = build(&fs, Path::new("/app"))
            .expect_err("a URL is not a file of the project")
            .to_string();
        assert!(
            err.contains(&format!("`configMapGenerator {field}: "))
                && err
                    .contains("(remote files; download it into the repository)` is not supported")
                && err.contains("/app/kustomization.yaml"),
            "{err}"
        );
    }
}
