//! What a hostile or unusual repository tries, each finding of the
//! "fail closed" review reproduced and refused: secrets that would reach
//! disk or output in plain text, paths that would leave the project, input
//! that would exhaust memory, signals that would leave locks behind, and
//! command lines that would panic.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{code, command, homelab, std_command, stderr, stdout, terrace, write_files};

/// The dashboard's admin password (apps/dashboard/base/admin-secret.yaml).
const DASHBOARD_PASSWORD: &str = "dashboard-demo-password";
/// secrets/web.yaml's values.
const DB_PASSWORD: &str = "web-db-Pq7xZ2wR";
const SESSION_KEY: &str = "sess-9f3kLm0aQ7";

/// Every file under `dir` whose content holds one of `needles`.
fn files_holding(dir: &Path, needles: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && let Ok(bytes) = std::fs::read(&p)
            {
                let text = String::from_utf8_lossy(&bytes);
                if needles.iter().any(|n| text.contains(n)) {
                    found.push(p);
                }
            }
        }
    }
    found
}

/// Whether a process whose command line holds `needle` runs (read from
/// /proc, so no procps is needed).
fn process_running_with(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
}

fn all_output(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).expect("read");
    s.push_str(text);
    std::fs::write(path, s).expect("write");
}

/// Applies `dashboard` and checks that the password is nowhere in plain
/// text: not under `.terrace/`, not in plan, render or apply output.
fn dashboard_leaks_nothing(dir: &Path) {
    for args in [
        &["plan", "--unit", "dashboard"][..],
        &["plan", "--unit", "dashboard", "--output", "json"],
        &[
            "plan",
            "--unit",
            "dashboard",
            "--output",
            "markdown",
            "--full-diff",
        ],
        &["render", "dashboard"],
        &["apply", "--unit", "dashboard"],
    ] {
        let o = terrace(dir, args);
        assert!(
            code(&o) != 1 || args[0] == "plan",
            "{args:?}: {}",
            all_output(&o)
        );
        assert!(
            !all_output(&o).contains(DASHBOARD_PASSWORD),
            "{args:?} printed the password:\n{}",
            all_output(&o)
        );
    }
    let leaked = files_holding(&dir.join(".terrace"), &[DASHBOARD_PASSWORD]);
    assert!(leaked.is_empty(), "plain text on disk: {leaked:?}");
    // And the rendered objects are really there, sealed.
    let rendered = dir.join(".terrace/rendered/homelab/k3s/dashboard");
    assert!(rendered.is_dir(), "apply wrote the unit");
}

// 1. A generator that reads a SOPS file writes the decrypted text.
#[test]
fn a_generator_reading_a_sops_file_is_sealed() {
    let dir = homelab();
    append(
        &dir.path().join("apps/dashboard/base/kustomization.yaml"),
        "- name: leak\n  files:\n  - admin-secret.yaml\n",
    );
    dashboard_leaks_nothing(dir.path());
}

// 2. A JSON 6902 patch dropping the provenance annotation.
#[test]
fn a_patch_removing_annotations_keeps_the_secret_sealed() {
    let dir = homelab();
    append(
        &dir.path().join("apps/dashboard/base/kustomization.yaml"),
        "patches:\n- target:\n    kind: Secret\n  patch: |\n    - op: remove\n      path: /metadata/annotations\n",
    );
    dashboard_leaks_nothing(dir.path());
}

// 3. A replacement copying a secret value into a ConfigMap.
#[test]
fn a_replacement_copying_a_secret_value_is_sealed() {
    let dir = homelab();
    append(
        &dir.path().join("apps/dashboard/base/kustomization.yaml"),
        "replacements:\n- source:\n    kind: Secret\n    name: dashboard-admin\n    fieldPath: stringData.ADMIN_PASSWORD\n  targets:\n  - select:\n      kind: Deployment\n    fieldPaths:\n    - metadata.annotations.copied\n    options:\n      create: true\n",
    );
    dashboard_leaks_nothing(dir.path());
}

/// A project with one terraform unit that takes a secret input and echoes
/// it in a resource and in an output not marked sensitive.
fn terraform_echo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = crate::repo_root().join("examples/homelab");
    std::fs::create_dir_all(dir.path().join("keys")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir");
    std::fs::copy(
        example.join("keys/demo.agekey"),
        dir.path().join("keys/demo.agekey"),
    )
    .expect("key");
    std::fs::copy(
        example.join("secrets/web.yaml"),
        dir.path().join("secrets/web.yaml"),
    )
    .expect("secret");
    std::fs::copy(example.join(".sops.yaml"), dir.path().join(".sops.yaml")).expect("sops");
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra]\n"),
            (
                "infra/db/unit.yaml",
                "layer: infra\nkind: terraform\ninputs:\n  pw: ${secret.secrets/web.yaml#db_password}\n",
            ),
            (
                "infra/db/main.tf",
                "variable \"pw\" {\n  type = string\n}\nresource \"terraform_data\" \"db\" {\n  input = { password = var.pw }\n}\noutput \"echo\" {\n  value = \"pw=${var.pw}\"\n}\n",
            ),
        ],
    );
    dir
}

// 4. Terraform: a secret input in a resource attribute and in an output.
#[test]
fn terraform_secret_inputs_are_masked_in_plans_state_and_outputs() {
    let dir = terraform_echo();
    for args in [
        &["plan"][..],
        &["plan", "--output", "json"],
        &["plan", "--output", "markdown"],
        &["plan", "--full-diff"],
    ] {
        let o = terrace(dir.path(), args);
        assert_eq!(code(&o), 2, "{args:?}: {}", all_output(&o));
        assert!(
            !all_output(&o).contains(DB_PASSWORD),
            "{args:?} printed the password:\n{}",
            all_output(&o)
        );
    }
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    assert!(!all_output(&o).contains(DB_PASSWORD));
    let record = dir.path().join(".terrace/state/default/units/db.json");
    let state = std::fs::read_to_string(&record).expect("state record");
    assert!(!state.contains(DB_PASSWORD), "{state}");
    let record: serde_json::Value = serde_json::from_str(&state).expect("json");
    assert_eq!(
        record["sensitiveOutputs"],
        serde_json::json!(["echo"]),
        "the echoing output is sensitive: {state}"
    );
    assert!(record["outputs"].get("echo").is_none(), "{state}");
    for args in [
        &["output", "db"][..],
        &["output", "db", "echo"],
        &["output", "--output", "json"],
    ] {
        let o = terrace(dir.path(), args);
        assert!(
            !all_output(&o).contains(DB_PASSWORD),
            "{args:?}: {}",
            all_output(&o)
        );
    }
}

// 5 and 14. SIGINT during a long terraform apply: the child is told,
// terrace waits, records the run as interrupted, releases the lock,
// removes the saved plan and exits 130.
#[test]
fn sigint_during_apply_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A marker only this test's terraform child carries on its command line.
    let marker = format!(
        "terrace-sigint-{}",
        dir.path().file_name().expect("name").to_string_lossy()
    );
    let main_tf = format!(
        "resource \"terraform_data\" \"slow\" {{\n  provisioner \"local-exec\" {{\n    command = \"sleep 20 && echo {marker}\"\n  }}\n}}\n"
    );
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra]\n"),
            ("infra/slow/unit.yaml", "layer: infra\nkind: terraform\n"),
            ("infra/slow/main.tf", &main_tf),
        ],
    );
    let child = std_command(dir.path())
        .args(["apply"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Wait until terraform's apply (the sleep) runs.
    let lock = dir.path().join(".terrace/state/default/locks/slow.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sleeping = process_running_with(&marker);
        if lock.exists() && sleeping {
            break;
        }
        assert!(Instant::now() < deadline, "apply never reached terraform");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 5. The saved plan (it holds the variables) is private while it exists.
    let plans: Vec<PathBuf> = [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("terrace-tfplan-{pid}-"))
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(plans.len(), 1, "one saved plan while apply runs: {plans:?}");
    let mode = std::fs::metadata(&plans[0])
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "{}", plans[0].display());
    let started = Instant::now();
    std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", all_output(&out));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "terraform was not interrupted"
    );
    assert!(
        all_output(&out).contains("Interrupt received"),
        "terraform itself got the interrupt: {}",
        all_output(&out)
    );
    assert!(!lock.exists(), "the lock was released");
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .chain(
            std::fs::read_dir(std::env::temp_dir())
                .into_iter()
                .flatten(),
        )
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("terrace-tfplan-{pid}-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "saved plans left: {leftovers:?}");
    let runs: Vec<_> = std::fs::read_dir(dir.path().join(".terrace/state/default/runs"))
        .expect("runs")
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1, "the run is recorded");
    let run = std::fs::read_to_string(runs[0].path()).expect("run");
    assert!(run.contains("\"interrupted\": true"), "{run}");
    // The next apply is not blocked by anything the first left.
    let o = terrace(dir.path(), &["plan"]);
    assert_ne!(code(&o), 1, "{}", all_output(&o));
}

// 6. A secret in a name or a path.
#[test]
fn a_secret_in_a_name_or_a_path_is_refused() {
    let dir = homelab();
    write_files(
        dir.path(),
        &[(
            "apps/web/leak.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${input.db_password}\ndata: {}\n",
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "web"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(!all_output(&o).contains(DB_PASSWORD), "{}", all_output(&o));
    assert!(all_output(&o).contains("secret"), "{}", all_output(&o));

    let dir = homelab();
    write_files(
        dir.path(),
        &[
            (
                "infra/leaky/unit.yaml",
                "layer: infra\nkind: template\ninputs:\n  nodes: [{name: a}]\ntemplate:\n  forEach: ${var.nodes}\n  itemPath: \"{{ item.name }}-${secret.secrets/web.yaml#db_password}\"\n",
            ),
            ("infra/leaky/templates/x.j2", "x\n"),
        ],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "leaky"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(!all_output(&o).contains(DB_PASSWORD), "{}", all_output(&o));
    assert!(files_holding(&dir.path().join(".terrace"), &[DB_PASSWORD]).is_empty());
}

// 7. Debug of the engine (and so of SecretStore) with `-vv` logging.
// 8. `.terrace/` is private.
#[test]
fn terrace_files_are_private_and_logs_hold_no_secret() {
    let dir = homelab();
    std::fs::create_dir_all(dir.path().join(".terrace")).expect("mkdir");
    std::fs::set_permissions(
        dir.path().join(".terrace"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let o = command(dir.path())
        .env("RUST_LOG", "trace")
        .args(["apply"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    for secret in [
        DB_PASSWORD,
        SESSION_KEY,
        DASHBOARD_PASSWORD,
        "AGE-SECRET-KEY-",
    ] {
        assert!(
            !all_output(&o).contains(secret),
            "trace output holds {secret}"
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join(".terrace")), 0o700);
    let mut stack = vec![dir.path().join(".terrace")];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list").flatten() {
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                // Terraform makes its own directories (0755) below the
                // private .terrace, and the demo's nodes' scripts theirs
                // in the hosts' staged file systems; terrace's own are
                // private.
                if !e.path().starts_with(dir.path().join(".terrace/terraform"))
                    && !e.path().starts_with(dir.path().join(".terrace/demo-hosts"))
                {
                    assert_eq!(mode(&e.path()) & 0o077, 0, "{} is open", e.path().display());
                }
                stack.push(e.path());
            } else if ft.is_file() && e.path().starts_with(dir.path().join(".terrace/state")) {
                assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 5, "state files were checked");
}

// 9. Reads through symlinks that leave the project.
#[test]
fn symlinks_out_of_the_project_are_not_read() {
    let dir = homelab();
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("passwd");
    std::fs::write(&target, "root:x:0:0:hostile-marker:/root:/bin/bash\n").expect("write");
    symlink(&target, dir.path().join("apps/web/passwd.yaml")).expect("link");
    let o = terrace(dir.path(), &["plan", "--unit", "web"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(
        !all_output(&o).contains("hostile-marker"),
        "{}",
        all_output(&o)
    );
    assert!(all_output(&o).contains("passwd.yaml"), "{}", all_output(&o));

    // A kustomize resource symlinked outside its kustomization root.
    let dir = homelab();
    std::fs::write(
        outside.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hostile-marker\n",
    )
    .expect("write");
    symlink(
        outside.path().join("cm.yaml"),
        dir.path().join("apps/dashboard/base/cm.yaml"),
    )
    .expect("link");
    let k = dir.path().join("apps/dashboard/base/kustomization.yaml");
    let text = std::fs::read_to_string(&k).expect("read");
    std::fs::write(&k, text.replace("resources:\n", "resources:\n- cm.yaml\n")).expect("write");
    let o = terrace(dir.path(), &["plan", "--unit", "dashboard"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(
        !all_output(&o).contains("hostile-marker"),
        "{}",
        all_output(&o)
    );

    // A template source that is a link to a key.
    let dir = homelab();
    std::fs::write(outside.path().join("key.txt"), "AGE-SECRET-KEY-HOSTILE\n").expect("write");
    symlink(
        outside.path().join("key.txt"),
        dir.path().join("os/node-configs/templates/key.j2"),
    )
    .expect("link");
    let o = terrace(dir.path(), &["apply", "--unit", "node-configs"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(files_holding(dir.path(), &["AGE-SECRET-KEY-HOSTILE"]).is_empty());
}

fn template_unit(dir: &Path, output: &str) {
    write_files(
        dir,
        &[
            (
                "infra/gen/unit.yaml",
                &format!("layer: infra\nkind: template\ntemplate:\n  output: {output}\n"),
            ),
            ("infra/gen/templates/units", "{\"hostile\": true}\n"),
        ],
    );
}

// 10. Writes that follow symlinks out of the project.
#[test]
fn writes_never_follow_symlinks() {
    let outside = tempfile::tempdir().expect("tempdir");
    let dir = homelab();
    symlink(outside.path(), dir.path().join("out")).expect("link");
    template_unit(dir.path(), "out");
    let o = terrace(dir.path(), &["apply", "--unit", "gen"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(all_output(&o).contains("symlink"), "{}", all_output(&o));
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);

    // A symlinked directory under .terrace/rendered.
    let dir = homelab();
    std::fs::create_dir_all(dir.path().join(".terrace/rendered/homelab/k3s")).expect("mkdir");
    symlink(
        outside.path(),
        dir.path().join(".terrace/rendered/homelab/k3s/web"),
    )
    .expect("link");
    let o = terrace(dir.path(), &["apply", "--unit", "web"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
}

// 11. Outputs into terrace's state, Git's directory or another unit.
#[test]
fn outputs_may_not_land_in_state_git_or_another_unit() {
    for output in [".terrace/state/homelab/units", ".git/hooks", "apps/web"] {
        let dir = homelab();
        template_unit(dir.path(), output);
        let o = terrace(dir.path(), &["apply", "--unit", "gen"]);
        assert_eq!(code(&o), 1, "{output}: {}", all_output(&o));
        assert!(!dir.path().join(output).join("units").exists(), "{output}");
        let o = terrace(dir.path(), &["state", "list"]);
        assert_eq!(code(&o), 0, "{output}: {}", all_output(&o));
    }
}

// 12. Paths and names from state and from the command line.
#[test]
fn state_paths_and_names_cannot_reach_outside() {
    let dir = homelab();
    let o = terrace(dir.path(), &["apply", "--unit", "namespaces"]);
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").expect("write");
    let record = dir
        .path()
        .join(".terrace/state/homelab/units/namespaces.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("read")).expect("json");
    state["inventory"]
        .as_array_mut()
        .expect("inventory")
        .push(serde_json::json!({
            "address": "v1 ConfigMap hostile",
            "path": victim.display().to_string(),
            "digest": "sha256:0"
        }));
    std::fs::write(&record, serde_json::to_string(&state).expect("json")).expect("write");
    let o = terrace(dir.path(), &["apply", "--unit", "namespaces"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("still there"),
        "keep me"
    );

    let lock = victim_dir.path().join("x.lock");
    std::fs::write(&lock, "{}").expect("write");
    let rel = format!(
        "../../../../../../../../..{}",
        victim_dir.path().join("x").display()
    );
    let o = terrace(dir.path(), &["state", "unlock", &rel]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(lock.exists(), "a lock outside the project was deleted");
    let o = terrace(dir.path(), &["state", "show", "../../units/namespaces"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
}

const BOMB: &str = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";

// 13. Alias bombs in a kustomization and in a SOPS file.
#[test]
fn alias_bombs_are_refused_not_fatal() {
    let dir = homelab();
    let k = dir.path().join("apps/dashboard/base/kustomization.yaml");
    let text = std::fs::read_to_string(&k).expect("read");
    std::fs::write(&k, format!("{text}{}", BOMB.replace("a:", "x-a:"))).expect("write");
    for args in [&["validate"][..], &["plan", "--unit", "dashboard"]] {
        let o = terrace(dir.path(), args);
        assert_eq!(code(&o), 1, "{args:?}: {}", all_output(&o));
    }
    let o = terrace(dir.path(), &["kustomize", "build", "apps/dashboard/base"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));

    let dir = homelab();
    let f = dir.path().join("secrets/web.yaml");
    let text = std::fs::read_to_string(&f).expect("read");
    std::fs::write(&f, format!("{BOMB}{text}")).expect("write");
    for args in [
        &["secrets", "decrypt", "secrets/web.yaml"][..],
        &["secrets", "status"],
    ] {
        let o = terrace(dir.path(), args);
        assert!(matches!(code(&o), 0 | 1), "{args:?}: {}", all_output(&o));
        assert!(all_output(&o).len() < 20_000, "{args:?}");
    }
    let o = terrace(dir.path(), &["secrets", "decrypt", "secrets/web.yaml"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
}

// 16. A reader that goes away: `terrace state list | head -1`.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = homelab();
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    for args in [&["state", "list"][..], &["plan", "--output", "json"]] {
        let mut child = std_command(dir.path())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

// 16 and 17. Absurd numbers and usage errors exit 1, never 2 or 101.
#[test]
fn absurd_numbers_and_usage_errors_exit_1() {
    let dir = homelab();

    for args in [
        &["plan", "-j", "18446744073709551615"][..],
        &["apply", "--lock-timeout", "18446744073709551615"],
        &["plan", "--no-such-flag"],
        &["no-such-command"],
    ] {
        let o = terrace(dir.path(), args);
        assert_eq!(code(&o), 1, "{args:?}: {}", all_output(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}");
    }
    let o = terrace(dir.path(), &["--output", "json", "plan", "--no-such-flag"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON error");
    assert!(v["error"]["message"].is_string(), "{v}");
}

// 18. A huge line in an error.
#[test]
fn errors_do_not_quote_huge_lines() {
    let dir = homelab();
    let line = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\ndata: {{a: [{}\n",
        "y".repeat(5_000_000)
    );
    std::fs::write(dir.path().join("apps/web/huge.yaml"), line).expect("write");
    let o = terrace(dir.path(), &["plan", "--unit", "web"]);
    assert_eq!(
        code(&o),
        1,
        "{}",
        &all_output(&o)[..all_output(&o).len().min(2000)]
    );
    assert!(
        all_output(&o).len() < 20_000,
        "{} bytes of error",
        all_output(&o).len()
    );
}

// 19. Duplicate keys.
#[test]
fn duplicate_keys_are_refused() {
    let dir = homelab();
    // In a resource a duplicate key is an error, as kyaml has it (in a
    // kustomization file the last one wins, as kustomize reads it).
    let k = dir.path().join("apps/dashboard/base/service.yaml");
    let text = std::fs::read_to_string(&k).expect("read");
    std::fs::write(&k, format!("{text}kind: Service\n")).expect("write");
    let o = terrace(dir.path(), &["plan", "--unit", "dashboard"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(all_output(&o).contains("duplicate"), "{}", all_output(&o));

    write_files(dir.path(), &[("secrets/dup.yaml", "a: 1\nb: 2\na: 3\n")]);
    let o = terrace(
        dir.path(),
        &["secrets", "encrypt", "-i", "secrets/dup.yaml"],
    );
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/dup.yaml")).expect("read"),
        "a: 1\nb: 2\na: 3\n",
        "the file is left as it was"
    );
}

// A lock whose holder died on this host is taken over.
#[test]
fn a_dead_holders_lock_is_taken_over_with_a_note() {
    let dir = homelab();
    let locks = dir.path().join(".terrace/state/homelab/locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    std::fs::write(
        locks.join("namespaces.lock"),
        format!(
            "{{\"pid\": 4194000, \"host\": \"{}\", \"command\": \"apply\", \"acquiredAt\": \"2026-01-01T00:00:00Z\", \"runId\": \"dead\"}}",
            host.trim()
        ),
    )
    .expect("write");
    let o = terrace(
        dir.path(),
        &["apply", "--unit", "namespaces", "--output", "json"],
    );
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    assert!(stdout(&o).contains("took over the lock"), "{}", stdout(&o));
    assert!(!locks.join("namespaces.lock").exists());
}

// Every plaintext, after every command in every format, with trace logs:
// nowhere under .terrace/, the temporary directory or /dev/shm.
#[test]
fn no_plaintext_anywhere_after_every_command() {
    let dir = homelab();
    // With the ways in that the findings above use: a generator reading a
    // SOPS file, and a Terraform unit echoing a secret input.
    append(
        &dir.path().join("apps/dashboard/base/kustomization.yaml"),
        "- name: leak\n  files:\n  - admin-secret.yaml\n",
    );
    write_files(
        dir.path(),
        &[
            (
                "infra/echo/unit.yaml",
                "layer: infra\nkind: terraform\ninputs:\n  pw: ${secret.secrets/web.yaml#session_key}\n",
            ),
            (
                "infra/echo/main.tf",
                "variable \"pw\" {\n  type = string\n}\nresource \"terraform_data\" \"e\" {\n  input = var.pw\n}\noutput \"echo\" {\n  value = var.pw\n}\n",
            ),
        ],
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let secrets = [DB_PASSWORD, SESSION_KEY, DASHBOARD_PASSWORD];
    let mut outputs = String::new();
    for args in [
        &["plan"][..],
        &["plan", "--output", "json"],
        &["plan", "--output", "markdown", "--full-diff"],
        &["plan", "--out", ".terrace/saved-plan.json"],
        &["apply", ".terrace/saved-plan.json"],
        &["apply"],
        &["render", "web"],
        &["render", "web", "--output", "json"],
        &["render", "dashboard", "--output", "json"],
        &["output"],
        &["output", "--output", "json"],
        &["state", "list"],
        &["state", "show", "web"],
        &["state", "show", "echo"],
        &["output", "echo", "echo"],
        &["plan", "-e", "staging"],
        &["apply", "-e", "staging"],
    ] {
        let o = command(dir.path())
            .env("RUST_LOG", "trace")
            .env("TMPDIR", tmp.path())
            .args(args)
            .output()
            .expect("runs");
        assert_ne!(code(&o), 101, "{args:?}");
        outputs.push_str(&all_output(&o));
    }
    for s in secrets {
        assert!(!outputs.contains(s), "output holds {s}");
    }
    // Terraform's own state holds what its resources hold, as in every
    // Terraform setup: it is the one file allowed to, and it is 0600 in
    // the 0700 `.terrace`.
    let tfstate = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("terraform.tfstate"))
    };
    let mut leaked: Vec<PathBuf> = files_holding(&dir.path().join(".terrace"), &secrets)
        .into_iter()
        .filter(|p| {
            !tfstate(p) || std::fs::metadata(p).expect("stat").permissions().mode() & 0o077 != 0
        })
        .collect();
    leaked.extend(files_holding(tmp.path(), &secrets));
    leaked.extend(
        files_holding(Path::new("/dev/shm"), &secrets)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("terrace")),
    );
    assert!(leaked.is_empty(), "plain text in {leaked:?}");
}

// 15. A panic in one unit's task fails that unit alone.
#[test]
fn a_panicking_unit_fails_alone_and_releases_its_lock() {
    let dir = homelab();
    let o = command(dir.path())
        .env("TERRACE_FAULT_PANIC_UNIT", "namespaces")
        .args(["apply", "--output", "json"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let outcome = |unit: &str| {
        report["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["unit"] == unit)
            .map(|u| u["outcome"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(outcome("namespaces"), "failed", "{report}");
    let units = report["units"].as_array().expect("units");
    let bug = units
        .iter()
        .find(|u| u["unit"] == "namespaces")
        .and_then(|u| u["error"]["message"].as_str())
        .unwrap_or_default();
    assert!(bug.contains("terrace hit a bug"), "{bug}");
    assert!(
        units.iter().any(|u| u["outcome"] == "applied"),
        "units that do not depend on it were applied: {report}"
    );
    assert!(
        units
            .iter()
            .any(|u| u["outcome"] == "skipped" && u["skippedBecause"] == "namespaces"),
        "its dependents were skipped: {report}"
    );
    assert!(
        !dir.path()
            .join(".terrace/state/homelab/locks/namespaces.lock")
            .exists(),
        "its lock was released"
    );
}

// A Secret written in the clear in the repository is still sealed on
// disk (to its creation rule's recipients) and never diffed; without a
// rule for it, it is refused rather than written plain.
#[test]
fn a_plain_secret_is_sealed_or_refused() {
    let dir = homelab();
    let plain = "plain-secret-value-7Hq";
    write_files(
        dir.path(),
        &[(
            "apps/status/plain-secret.yaml",
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: plain\n  namespace: apps\nstringData:\n  token: {plain}\n"
            ),
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "status", "--full-diff"]);
    assert_eq!(code(&o), 2, "{}", all_output(&o));
    assert!(!all_output(&o).contains(plain), "{}", all_output(&o));
    let o = terrace(dir.path(), &["apply", "--unit", "status"]);
    assert_eq!(code(&o), 0, "{}", all_output(&o));
    assert!(files_holding(&dir.path().join(".terrace"), &[plain]).is_empty());
    assert!(
        !files_holding(&dir.path().join(".terrace/rendered"), &["ENC[AES256_GCM"]).is_empty(),
        "the Secret was written sealed"
    );

    let dir = homelab();
    write_files(
        dir.path(),
        &[(
            "apps/status/creds.yaml",
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: plain\n  namespace: apps\nstringData:\n  token: {plain}\n"
            ),
        )],
    );
    let o = terrace(dir.path(), &["apply", "--unit", "status"]);
    assert_eq!(code(&o), 1, "{}", all_output(&o));
    assert!(!all_output(&o).contains(plain), "{}", all_output(&o));
    assert!(files_holding(&dir.path().join(".terrace"), &[plain]).is_empty());
}
