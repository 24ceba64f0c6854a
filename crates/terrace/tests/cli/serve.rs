//! `terrace serve` against a real Git remote (a bare repository over
//! `file://`, written with the git binary as a user would push to it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{code, command, std_command, stderr, stdout, write_files};

/// A working clone (`work/`) and the bare remote it pushes to
/// (`remote.git`).
struct Remote {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.email=t@example.org",
            "-c",
            "user.name=t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env_remove("GIT_DIR")
        .output()
        .expect("git runs");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Remote {
    fn new(files: &[(&str, &str)]) -> Remote {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        write_files(&work, files);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "first"]);
        git(dir.path(), &["clone", "-q", "--bare", "work", "remote.git"]);
        git(&work, &["remote", "add", "origin", "../remote.git"]);
        Remote { dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().join("remote.git").display())
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("serve")
    }

    /// Writes `files`, removes `gone`, commits and pushes.
    fn push(&self, files: &[(&str, &str)], gone: &[&str]) {
        write_files(&self.work(), files);
        for g in gone {
            std::fs::remove_file(self.work().join(g)).expect("remove");
        }
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-qm", "change"]);
        git(&self.work(), &["push", "-q", "origin", "main"]);
    }

    fn serve_once(&self) -> (i32, String) {
        let o = command(self.dir.path())
            .args(["serve", "--repo", &self.url(), "--workdir"])
            .arg(self.workdir())
            .arg("--once")
            .output()
            .expect("terrace runs");
        (code(&o), format!("{}{}", stdout(&o), stderr(&o)))
    }

    fn rendered(&self, unit: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(
            self.workdir()
                .join("tree/.terrace/rendered/default/k8s")
                .join(unit)
                .join(file),
        )
        .ok()
    }
}

fn cm(name: &str, v: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: \"{v}\"\n")
}

fn project() -> Vec<(&'static str, String)> {
    vec![
        (
            "terrace.yaml",
            "name: sv\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n".to_owned(),
        ),
        (
            "apps/a/unit.yaml",
            "layer: apps\nkind: manifests\n".to_owned(),
        ),
        ("apps/a/cm.yaml", cm("a", "1")),
        (
            "apps/b/unit.yaml",
            "layer: apps\nkind: manifests\n".to_owned(),
        ),
        ("apps/b/cm.yaml", cm("b", "1")),
        // A kustomization outside its unit's directory.
        (
            "apps/k/unit.yaml",
            "layer: apps\nkind: kustomize\nkustomize:\n  path: ../../shared/k\n".to_owned(),
        ),
        (
            "shared/k/kustomization.yaml",
            "resources: [cm.yaml]\n".to_owned(),
        ),
        ("shared/k/cm.yaml", cm("k", "1")),
    ]
}

fn files<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(a, b)| (*a, b.as_str())).collect()
}

/// Each new revision applies the units it touches: all the first time,
/// then only the unit whose file changed, or that read the changed file
/// outside its directory; nothing when nothing is new; files that left
/// the revision leave the work tree (and their objects are pruned).
#[test]
fn serve_applies_the_units_each_revision_touches() {
    let p = project();
    let remote = Remote::new(&files(&p));
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("applied: a, b, k"), "{out}");
    assert!(remote.rendered("k", "v1_configmap_k.yaml").is_some());

    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("up to date"), "{out}");

    remote.push(&[("apps/b/cm.yaml", &cm("b", "2"))], &[]);
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("1 file(s) changed; applied: b"), "{out}");
    assert!(
        remote
            .rendered("b", "v1_configmap_b.yaml")
            .expect("b")
            .contains("v: \"2\"")
    );

    // Outside every unit's directory: the unit that read it.
    remote.push(&[("shared/k/cm.yaml", &cm("k", "2"))], &[]);
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("applied: k") && !out.contains("a, "), "{out}");

    // A file that leaves the revision leaves the tree; its object goes.
    remote.push(
        &[("apps/a/other.yaml", &cm("a2", "1"))],
        &["apps/a/cm.yaml"],
    );
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(!remote.workdir().join("tree/apps/a/cm.yaml").exists());
    assert!(
        remote.rendered("a", "v1_configmap_a.yaml").is_none(),
        "pruned"
    );
    assert!(remote.rendered("a", "v1_configmap_a2.yaml").is_some());
    // The run history records the revision applied.
    let status: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(remote.workdir().join("serve.json")).expect("status"),
    )
    .expect("json");
    assert_eq!(status["applied"], status["checkedOut"]);
}

/// A revision that does not load fails the reconcile (exit 1, nothing
/// applied, the revision stays unapplied); the next good one applies.
/// What a hostile commit holds in terrace's own directory, and symlinks,
/// never reach the work tree.
#[test]
fn serve_refuses_broken_revisions_and_hostile_paths() {
    let p = project();
    let remote = Remote::new(&files(&p));
    assert_eq!(remote.serve_once().0, 0);
    remote.push(
        &[(
            "apps/b/unit.yaml",
            "layer: apps\nkind: manifests\nbogus: 1\n",
        )],
        &[],
    );
    let (c, out) = remote.serve_once();
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("bogus"), "{out}");
    let (c, out) = remote.serve_once();
    assert_eq!(c, 1, "still unapplied, tried again: {out}");

    remote.push(
        &[
            ("apps/b/unit.yaml", "layer: apps\nkind: manifests\n"),
            ("apps/b/cm.yaml", &cm("b", "3")),
        ],
        &[],
    );
    // A state record and a symlink committed to the repository.
    write_files(
        &remote.work(),
        &[(
            ".terrace/state/default/units/b.json",
            "{\"forged\": true}\n",
        )],
    );
    std::os::unix::fs::symlink("/etc/passwd", remote.work().join("apps/b/passwd.yaml"))
        .expect("symlink");
    git(&remote.work(), &["add", "-A", "-f"]);
    git(&remote.work(), &["commit", "-qm", "hostile"]);
    git(&remote.work(), &["push", "-q", "origin", "main"]);
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("left out of the work tree: .terrace/state/default/units/b.json"),
        "{out}"
    );
    assert!(out.contains("apps/b/passwd.yaml: a symlink"), "{out}");
    assert!(!remote.workdir().join("tree/apps/b/passwd.yaml").exists());
    let record = std::fs::read_to_string(
        remote
            .workdir()
            .join("tree/.terrace/state/default/units/b.json"),
    )
    .expect("record");
    assert!(!record.contains("forged"), "{record}");
    assert!(
        remote
            .rendered("b", "v1_configmap_b.yaml")
            .expect("b")
            .contains("v: \"3\"")
    );
}

/// The daemon: a push is applied at the next poll without any command,
/// and SIGTERM stops it.
#[test]
fn serve_applies_a_push_without_a_command_and_stops_on_sigterm() {
    let p = project();
    let remote = Remote::new(&files(&p));
    let mut child = std_command(remote.dir.path())
        .args([
            "serve",
            "--repo",
            &remote.url(),
            "--interval",
            "1s",
            "--workdir",
        ])
        .arg(remote.workdir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace serve runs");
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first revision applied", &|| {
        remote.rendered("b", "v1_configmap_b.yaml").is_some()
    });
    remote.push(&[("apps/b/cm.yaml", &cm("b", "9"))], &[]);
    wait_for("the push applied", &|| {
        remote
            .rendered("b", "v1_configmap_b.yaml")
            .is_some_and(|t| t.contains("v: \"9\""))
    });
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(matches!(status.code(), Some(0 | 143)), "{status:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("applied: b"), "{text}");
}
