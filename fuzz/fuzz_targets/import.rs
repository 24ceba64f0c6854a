//! The importers' own parsing: Argo CD's template parameters and Go's
//! path.Match, Terragrunt's dependency references rewritten for terrace,
//! and whole imports of a tree whose one file is the input, as a Flux
//! manifest, an Argo CD manifest and a terragrunt.hcl. Nothing panics;
//! everything answers within its budget.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use terrace_import::{Options, argocd, terragrunt};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let params = json!({"path": {"path": "apps/x", "basename": "x", "segments": ["apps", "x"]}, "env": "dev"});
    let _ = argocd::fill(s, &params, false);
    let _ = argocd::fill(s, &params, true);
    let (pattern, name) = s.split_once('\n').unwrap_or((s, "apps/guestbook"));
    let _ = argocd::path_match(pattern, name);
    let units: BTreeMap<String, String> = [("vpc".to_owned(), "live-vpc".to_owned())].into();
    let _ = terragrunt::rewrite_dependencies(s, &units);
    if s.len() > 4096 {
        return;
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let root = dir.path();
    let write = |rel: &str| {
        let p = root.join(rel);
        let _ = std::fs::create_dir_all(p.parent().unwrap_or(root));
        let _ = std::fs::write(p, s);
    };
    write("flux/app.yaml");
    write("argo/app.yaml");
    write("live/a/terragrunt.hcl");
    let _ = std::fs::create_dir_all(root.join("m"));
    let _ = std::fs::write(root.join("m/main.tf"), "variable \"a\" {}\n");
    for (tool, sub) in [("flux", "flux"), ("argocd", "argo"), ("terragrunt", "live")] {
        let opts = Options {
            root: root.to_path_buf(),
            dir: root.join(sub),
            out: "terrace".to_owned(),
            layers: Vec::new(),
            default_layer: "apps".to_owned(),
            target: "cluster".to_owned(),
        };
        let _ = match tool {
            "flux" => terrace_import::flux(&opts),
            "argocd" => argocd::argocd(&opts),
            _ => terragrunt::terragrunt(&opts),
        };
    }
});
