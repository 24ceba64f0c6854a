//! Secrets end to end: the example with SOPS files leaves no plaintext on
//! disk or in logs; `edit` keeps ciphertext and cleans up; the merge
//! driver; status, updatekeys and rotate.

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use terrace_secrets::{Format, KeySources, Keyring, Node};

use crate::{code, command, homelab, std_command, stderr, stdout, terrace};

fn demo_keys(dir: &Path) -> Keyring {
    Keyring::load(&KeySources {
        key_file: Some(dir.join("keys/demo.agekey")),
        ..KeySources::default()
    })
    .expect("demo key")
}

fn open(dir: &Path, file: &str) -> terrace_secrets::Opened {
    let text = std::fs::read_to_string(dir.join(file)).expect("read");
    terrace_secrets::open(
        &text,
        Path::new(file),
        Format::from_path(Path::new(file)),
        &demo_keys(dir),
    )
    .expect("opens")
}

fn strings(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Str(s) if s.len() >= 8 => out.push(s.clone()),
        Node::Seq(items) => items.iter().for_each(|n| strings(n, out)),
        Node::Map(items) => items.iter().for_each(|(_, n)| strings(n, out)),
        _ => {}
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_example_with_secrets_leaves_no_plaintext_on_disk_or_in_logs() {
    let dir = homelab();
    let tmp = tempfile::tempdir().expect("tmp");
    // The secret values, read from the example's SOPS files.
    let mut secrets = Vec::new();
    for (f, key) in [
        ("secrets/web.yaml", "db_password"),
        ("secrets/web.yaml", "session_key"),
        (
            "services/postgres/secret.sops.yaml",
            "stringData.POSTGRES_PASSWORD",
        ),
    ] {
        strings(
            open(dir.path(), f).lookup(key).expect("a secret"),
            &mut secrets,
        );
    }
    assert_eq!(secrets.len(), 3, "{secrets:?}");

    let mut logs = String::new();
    for args in [
        vec!["-v", "-v", "validate"],
        vec!["-v", "-v", "plan"],
        vec!["-v", "-v", "apply", "-j", "2"],
        vec!["render", "web"],
        vec!["render", "postgres"],
        vec!["plan", "--output", "json"],
        vec!["state", "show", "web"],
        vec!["output", "web"],
    ] {
        let o = command(dir.path())
            .env("TMPDIR", tmp.path())
            .env("RUST_LOG", "debug")
            .args(&args)
            .output()
            .expect("runs");
        assert!(
            matches!(code(&o), 0 | 2),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        logs.push_str(&stdout(&o));
        logs.push_str(&stderr(&o));
    }
    let mut files = Vec::new();
    files_under(&dir.path().join(".terrace"), &mut files);
    files_under(tmp.path(), &mut files);
    assert!(files.len() > 20, "the apply wrote its files");
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} holds a plaintext secret",
                f.display()
            );
        }
    }
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "the output shows a plaintext secret"
        );
    }

    // The secrets were used: the rendered Secrets decrypt to them.
    let rendered = ".terrace/rendered/homelab/k3s";
    let web = open(
        dir.path(),
        &format!("{rendered}/web/v1_secret_apps_web-db.yaml"),
    );
    let web_pw = web.lookup("stringData.password").expect("password");
    let source = open(dir.path(), "secrets/web.yaml");
    assert_eq!(web_pw, source.lookup("db_password").expect("source"));
    let pg = open(
        dir.path(),
        &format!("{rendered}/postgres/v1_secret_databases_postgres-auth.yaml"),
    );
    // Sealed under the source's rule: names stay readable.
    assert_eq!(
        pg.meta.rule.parts(),
        ("encrypted_regex", "^(data|stringData)$")
    );
    assert!(
        std::fs::read_to_string(dir.path().join(format!(
            "{rendered}/postgres/v1_secret_databases_postgres-auth.yaml"
        )))
        .expect("read")
        .contains("name: postgres-auth")
    );
    // Sealed files are stable: nothing to do on the next plan.
    assert_eq!(code(&terrace(dir.path(), &["plan"])), 0);
    // A plan that changes a secret shows no plaintext diff.
    let pw_file = dir.path().join("secrets/web.yaml");
    let opened = open(dir.path(), "secrets/web.yaml");
    let mut plain = opened.plain.clone();
    if let Node::Map(items) = &mut plain[0] {
        for (k, v) in items.iter_mut() {
            if *k == terrace_secrets::Key::Name("db_password".into()) {
                *v = Node::Str("rotated-Zq81xVv".into());
            }
        }
    }
    std::fs::write(&pw_file, opened.seal(&plain).expect("seals")).expect("write");
    let o = terrace(dir.path(), &["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let web = plan["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "web")
        .expect("web");
    assert_eq!(web["changes"][0]["address"], "v1 Secret apps/web-db");
    assert!(
        web["changes"][0]["diff"]
            .as_str()
            .expect("diff")
            .starts_with("(sensitive"),
        "{web}"
    );
    assert!(!stdout(&o).contains("rotated-Zq81xVv"));
}

/// An editor that records the file it was given, then runs `action` on it.
fn editor(dir: &Path, action: &str) -> (String, PathBuf) {
    let record = dir.join("editor-saw");
    let script = dir.join("editor.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1\" > '{}'\n{action}\n",
            record.display()
        ),
    )
    .expect("write");
    Std::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    (script.display().to_string(), record)
}

#[test]
fn edit_keeps_unchanged_ciphertext_and_removes_the_plaintext_copy() {
    let dir = homelab();
    let before = std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read");
    let (script, record) = editor(
        dir.path(),
        "sed -i 's/web-db-Pq7xZ2wR/web-db-NEWvalue1/' \"$1\"",
    );
    let o = command(dir.path())
        .env("EDITOR", &script)
        .args(["secrets", "edit", "secrets/web.yaml"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let copy = PathBuf::from(std::fs::read_to_string(&record).expect("recorded").trim());
    assert!(
        !copy.exists(),
        "the plaintext copy {} was removed",
        copy.display()
    );
    assert!(
        !copy.parent().expect("dir").exists(),
        "its private directory too"
    );
    let after = std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read");
    let changed: Vec<&str> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.trim_start().split(':').next().unwrap_or(""))
        .filter(|k| *k != "lastmodified")
        .collect();
    assert_eq!(changed, ["db_password", "mac"]);
    assert_eq!(
        open(dir.path(), "secrets/web.yaml")
            .lookup("db_password")
            .expect("pw"),
        &Node::Str("web-db-NEWvalue1".into())
    );
}

#[test]
fn a_failing_editor_changes_nothing_and_still_cleans_up() {
    let dir = homelab();
    let before = std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read");
    let (script, record) = editor(dir.path(), "echo broken: [ >> \"$1\"\nexit 3");
    let o = command(dir.path())
        .env("EDITOR", &script)
        .args(["secrets", "edit", "secrets/web.yaml"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("nothing was changed"), "{}", stderr(&o));
    let copy = PathBuf::from(std::fs::read_to_string(&record).expect("recorded").trim());
    assert!(!copy.exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read"),
        before
    );
    // Invalid YAML from a successful editor is refused too.
    let (script, _) = editor(dir.path(), "echo 'broken: [' >> \"$1\"");
    let o = command(dir.path())
        .env("EDITOR", &script)
        .args(["secrets", "edit", "secrets/web.yaml"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read"),
        before
    );
}

#[test]
fn ctrl_c_during_edit_still_removes_the_plaintext_copy() {
    use std::os::unix::process::CommandExt;
    let dir = homelab();
    let before = std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read");
    let (script, record) = editor(dir.path(), "sleep 30");
    let mut cmd = std_command(dir.path());
    let mut child = cmd
        .env("EDITOR", &script)
        .args(["secrets", "edit", "secrets/web.yaml"])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let start = std::time::Instant::now();
    while !record.exists()
        || std::fs::read_to_string(&record)
            .expect("read")
            .trim()
            .is_empty()
    {
        assert!(start.elapsed().as_secs() < 20, "the editor never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let copy = PathBuf::from(std::fs::read_to_string(&record).expect("recorded").trim());
    assert!(
        copy.exists(),
        "the plaintext copy exists while the editor runs"
    );
    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    let group = format!("-{}", child.id());
    let killed = Std::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = child.wait().expect("exits");
    assert_eq!(
        status.code(),
        Some(1),
        "terrace outlives the signal and reports it"
    );
    assert!(!copy.exists(), "the plaintext copy was removed");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/web.yaml")).expect("read"),
        before
    );
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Std::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("SOPS_AGE_KEY_FILE", dir.join("keys/demo.agekey"))
        .output()
        .expect("git runs")
}

fn edit_to(dir: &Path, file: &str, from: &str, to: &str) {
    let (script, _) = editor(dir, &format!("sed -i 's/{from}/{to}/' \"$1\""));
    let o = command(dir)
        .env("EDITOR", &script)
        .args(["secrets", "edit", file])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::remove_file(dir.join("editor.sh")).expect("rm");
    std::fs::remove_file(dir.join("editor-saw")).expect("rm");
}

#[test]
fn the_merge_driver_merges_by_value_and_reports_conflicts_by_path() {
    let dir = homelab();
    let d = dir.path();
    let bin = assert_cmd::cargo::cargo_bin("terrace");
    std::fs::write(
        d.join(".gitattributes"),
        "secrets/*.yaml merge=terrace-sops\n",
    )
    .expect("write");
    std::fs::write(d.join(".gitignore"), ".terrace/\n").expect("write");
    assert!(git(d, &["init", "-q", "-b", "main"]).status.success());
    git(
        d,
        &[
            "config",
            "merge.terrace-sops.driver",
            &format!("{} secrets merge-driver %O %A %B %P", bin.display()),
        ],
    );
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "base"]);
    git(d, &["checkout", "-qb", "other"]);
    edit_to(d, "secrets/web.yaml", "sess-9f3kLm0aQ7", "sess-fromOTHER1");
    git(d, &["commit", "-qam", "other: session key"]);
    git(d, &["checkout", "-q", "main"]);
    edit_to(d, "secrets/web.yaml", "web-db-Pq7xZ2wR", "web-db-fromMAIN");
    git(d, &["commit", "-qam", "main: db password"]);
    let o = git(d, &["merge", "-q", "--no-edit", "other"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let merged = open(d, "secrets/web.yaml");
    assert_eq!(
        merged.lookup("db_password").expect("pw"),
        &Node::Str("web-db-fromMAIN".into())
    );
    assert_eq!(
        merged.lookup("session_key").expect("sk"),
        &Node::Str("sess-fromOTHER1".into())
    );

    // Both branches change the same value: a conflict named by its path.
    git(d, &["checkout", "-qb", "other2"]);
    edit_to(d, "secrets/web.yaml", "web-db-fromMAIN", "web-db-OTHER2xx");
    git(d, &["commit", "-qam", "other2"]);
    git(d, &["checkout", "-q", "main"]);
    edit_to(d, "secrets/web.yaml", "web-db-fromMAIN", "web-db-MAIN2xxx");
    git(d, &["commit", "-qam", "main2"]);
    let o = git(d, &["merge", "-q", "--no-edit", "other2"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("db_password: changed differently on both branches"),
        "{err}"
    );
    assert!(!err.contains("ENC["), "{err}");
    // The file is left as this branch's version, still a valid SOPS file.
    let kept = open(d, "secrets/web.yaml");
    assert_eq!(
        kept.lookup("db_password").expect("pw"),
        &Node::Str("web-db-MAIN2xxx".into())
    );
}

#[test]
fn status_updatekeys_and_rotate() {
    let dir = homelab();
    let d = dir.path();
    let o = terrace(
        d,
        &[
            "--output",
            "json",
            "secrets",
            "status",
            "secrets/web.yaml",
            "terrace.yaml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["files"][0]["canDecrypt"], true);
    assert_eq!(v["files"][1]["encrypted"], false);

    // A second recipient in .sops.yaml: updatekeys shows, then writes.
    let second = age::x25519::Identity::generate();
    let second_pub = second.to_public().to_string();
    let cfg = std::fs::read_to_string(d.join(".sops.yaml")).expect("read");
    let first_pub = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("age: "))
        .expect("age")
        .to_owned();
    std::fs::write(
        d.join(".sops.yaml"),
        cfg.replace(
            &format!("age: {first_pub}"),
            &format!("age: {first_pub},{second_pub}"),
        ),
    )
    .expect("write");
    let before = std::fs::read_to_string(d.join("secrets/web.yaml")).expect("read");
    let o = terrace(d, &["secrets", "updatekeys", "secrets/web.yaml"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("+ {second_pub}")));
    assert_eq!(
        std::fs::read_to_string(d.join("secrets/web.yaml")).expect("read"),
        before
    );
    let o = terrace(d, &["secrets", "updatekeys", "--yes", "secrets/web.yaml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut ring = Keyring::empty();
    use age::secrecy::ExposeSecret;
    ring.add_key_text(
        second.to_string().expose_secret(),
        "second",
        Path::new("second"),
    )
    .expect("key");
    let text = std::fs::read_to_string(d.join("secrets/web.yaml")).expect("read");
    let by_second =
        terrace_secrets::open(&text, Path::new("secrets/web.yaml"), Format::Yaml, &ring)
            .expect("second key opens it");
    assert_eq!(
        by_second.lookup("session_key").expect("sk"),
        &Node::Str("sess-9f3kLm0aQ7".into())
    );
    // Values kept their ciphertext: only the sops block changed.
    assert_eq!(
        before.lines().take(3).collect::<Vec<_>>(),
        text.lines().take(3).collect::<Vec<_>>()
    );

    // rotate --rm-age: a new data key, every value re-encrypted.
    let o = terrace(
        d,
        &[
            "secrets",
            "rotate",
            "-i",
            "--rm-age",
            &second_pub,
            "secrets/web.yaml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rotated = std::fs::read_to_string(d.join("secrets/web.yaml")).expect("read");
    assert_ne!(rotated.lines().nth(1), text.lines().nth(1));
    assert!(
        terrace_secrets::open(&rotated, Path::new("secrets/web.yaml"), Format::Yaml, &ring)
            .is_err()
    );
    assert_eq!(
        open(d, "secrets/web.yaml")
            .lookup("session_key")
            .expect("sk"),
        &Node::Str("sess-9f3kLm0aQ7".into())
    );
}

#[test]
fn secrets_errors_name_the_file_and_say_what_to_do() {
    let dir = homelab();
    let d = dir.path();
    // No key at all.
    let keyless = |args: &[&str]| {
        command(d)
            .env_remove("SOPS_AGE_KEY_FILE")
            .args(args)
            .output()
            .expect("runs")
    };
    let o = keyless(&["secrets", "decrypt", "secrets/web.yaml"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("no age identity found to decrypt secrets/web.yaml"),
        "{err}"
    );
    assert!(err.contains("SOPS_AGE_KEY_FILE"), "{err}");
    // A plan that needs the secret fails on the unit, naming the file.
    let o = keyless(&["plan", "--unit", "web"]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("secrets/web.yaml") || stderr(&o).contains("secrets/web.yaml"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}
