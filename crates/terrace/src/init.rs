//! `terrace init`: a small project that validates and applies as created.

use std::path::Path;

use crate::diagnostics::CliError;

const FILES: &[(&str, &str)] = &[
    (
        "terrace.yaml",
        "# yaml-language-server: $schema=https://raw.githubusercontent.com/terrace-infra/terrace/main/schemas/terrace.schema.json\nname: {{name}}\nlayers: [infra, platform, apps]\ndefaultEnvironment: dev\nvars:\n  domain: home.arpa\nenvironments:\n  dev:\n    vars:\n      replicas: 1\n  prod:\n    vars:\n      replicas: 2\ntargets:\n  cluster:\n    type: cluster\n",
    ),
    (
        "infra/nodes/unit.yaml",
        "# One file per node, rendered from a template.\nlayer: infra\nkind: template\ninputs:\n  domain: ${var.domain}\ntemplate:\n  forEach:\n    - { name: node1, ip: 10.0.0.11 }\n    - { name: node2, ip: 10.0.0.12 }\n",
    ),
    (
        "infra/nodes/templates/cloud-init.yaml.j2",
        "#cloud-config\nhostname: {{ item.name }}.{{ domain }}\n",
    ),
    (
        "apps/hello/unit.yaml",
        "layer: apps\nkind: manifests\ntarget: cluster\ndependsOn: [nodes]\ninputs:\n  replicas: ${var.replicas}\n",
    ),
    (
        "apps/hello/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hello\n  namespace: default\nspec:\n  replicas: ${input.replicas}\n  selector:\n    matchLabels: { app: hello }\n  template:\n    metadata:\n      labels: { app: hello }\n    spec:\n      containers:\n        - name: hello\n          image: nginx:1.27\n",
    ),
    (".gitignore", ".terrace/\n"),
];

/// Writes the skeleton into `dir`; refuses to overwrite a project.
pub fn init(dir: &Path, name: Option<&str>) -> Result<Vec<String>, CliError> {
    if dir.join("terrace.yaml").exists() {
        return Err(CliError::message(
            format!("{} already has a terrace.yaml", dir.display()),
            Some("pick an empty directory".to_owned()),
        ));
    }
    let abs = std::path::absolute(dir)?;
    let name = name.map(str::to_owned).unwrap_or_else(|| {
        abs.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "homelab".to_owned())
    });
    if !terrace_core::expr::is_valid_name(&name) {
        return Err(CliError::message(
            format!("`{name}` is not a valid project name"),
            Some("pass --name with letters, digits, `-` and `_`".to_owned()),
        ));
    }
    let mut written = Vec::new();
    for (path, body) in FILES {
        let target = dir.join(path);
        if target.exists() {
            continue;
        }
        if let Some(parent) = target.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::write(&target, body.replace("{{name}}", &name))?;
        written.push((*path).to_owned());
    }
    Ok(written)
}
