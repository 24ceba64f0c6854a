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
    let o = command(&remote.workdir().join("tree"))
        .args(["runs", "--output", "json"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(runs.iter().all(|r| r["command"] == "serve"));
    assert!(runs.iter().any(|r| r["revision"] == status["applied"]));
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
            "--no-listen",
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

/// One HTTP/1.1 request to 127.0.0.1:`port`: the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    // A server may answer (413) before reading a large body whole.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Webhooks: with the poll an hour away, a push is applied as soon as a
/// signed webhook says so; a bad signature is 401, a body over 1 MiB 413,
/// a replayed delivery is ignored; `/metrics` is Prometheus text that
/// counts all of it.
#[test]
fn webhooks_trigger_a_fetch_and_metrics_count_it() {
    let p = project();
    let remote = Remote::new(&files(&p));
    let secret = b"hook-secret-Vb7q";
    let secret_file = remote.dir.path().join("webhook.secret");
    std::fs::write(&secret_file, [secret.as_slice(), b"\n"].concat()).expect("write");
    let port = crate::helm::free_port();
    let child = std_command(remote.dir.path())
        .args([
            "serve",
            "--repo",
            &remote.url(),
            "--interval",
            "1h",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-secret-file",
        ])
        .arg(&secret_file)
        .arg("--workdir")
        .arg(remote.workdir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace serve runs");
    let started = Instant::now();
    loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200;
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    remote.push(&[("apps/b/cm.yaml", &cm("b", "7"))], &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        remote
            .rendered("b", "v1_configmap_b.yaml")
            .is_some_and(|t| t.contains("v: \"1\"")),
        "not applied before the webhook"
    );
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signed = vec![
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign(secret, body)),
        ),
        ("X-GitHub-Delivery", "d-1".to_owned()),
    ];
    assert_eq!(http(port, "POST", "/hooks/github", &signed, body).0, 202);
    let started = Instant::now();
    while !remote
        .rendered("b", "v1_configmap_b.yaml")
        .is_some_and(|t| t.contains("v: \"7\""))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "applied within 10 s of the webhook"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, text) = http(port, "POST", "/hooks/github", &signed, body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("seen before"), "{text}");
    let forged = vec![(
        "X-Hub-Signature-256",
        format!("sha256={}", sign(b"guess", body)),
    )];
    assert_eq!(http(port, "POST", "/hooks/github", &forged, body).0, 401);
    assert_eq!(http(port, "POST", "/hooks/generic", &[], body).0, 401);
    let big = vec![b'x'; 2 << 20];
    let big_signed = vec![("X-Signature", format!("sha256={}", sign(secret, &big)))];
    assert_eq!(
        http(port, "POST", "/hooks/generic", &big_signed, &big).0,
        413
    );
    let gitlab = vec![(
        "X-Gitlab-Token",
        String::from_utf8_lossy(secret).into_owned(),
    )];
    assert_eq!(http(port, "POST", "/hooks/gitlab", &gitlab, body).0, 202);

    let (status, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (_, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    for needle in [
        "terrace_webhook_requests_total{provider=\"github\",result=\"accepted\"} 1",
        "terrace_webhook_requests_total{provider=\"github\",result=\"replayed\"} 1",
        "terrace_webhook_requests_total{provider=\"github\",result=\"bad-signature\"} 1",
        "terrace_webhook_requests_total{provider=\"generic\",result=\"bad-signature\"} 1",
        "terrace_reconciles_total{outcome=\"applied\"}",
        "terrace_reconcile_duration_seconds_count",
        "terrace_applied_revision_info{revision=",
        "terrace_units{state=\"applied\"}",
        "terrace_unit_apply_duration_seconds_count{layer=\"apps\"}",
        "terrace_drifted_units 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{metrics}");
    }
    // Prometheus's own parser (PyPI prometheus-client), when installed.
    let parsed = std::process::Command::new("python3")
        .args(["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(sum(len(f.samples) for f in p(sys.stdin.read())))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(metrics.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3 runs");
    if parsed.status.success() {
        let samples: usize = String::from_utf8_lossy(&parsed.stdout)
            .trim()
            .parse()
            .expect("a count");
        assert!(samples >= 10, "{samples} samples");
    } else {
        eprintln!(
            "note: /metrics not checked with prometheus_client (pip install prometheus-client): {}",
            String::from_utf8_lossy(&parsed.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        );
    }
    stop(child);
}

/// A local HTTP sink: every request's signature header and body, in
/// order. Answers 200.
struct Sink {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Sink {
    fn start() -> Sink {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let keep = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let (mut length, mut signature) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-terrace-signature:") {
                        signature = line
                            .split_once(':')
                            .map(|(_, v)| v.trim().to_owned())
                            .unwrap_or_default();
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                keep.lock()
                    .expect("lock")
                    .push((signature, String::from_utf8_lossy(&body).into_owned()));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Sink { port, got }
    }

    fn messages(&self) -> Vec<(String, String)> {
        self.got.lock().expect("lock").clone()
    }
}

fn wait_until(what: &str, limit: Duration, f: &dyn Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_serve(remote: &Remote, extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = std_command(remote.dir.path());
    cmd.args(["serve", "--repo", &remote.url(), "--no-listen", "--workdir"])
        .arg(remote.workdir())
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("terrace serve runs")
}

fn stop(mut child: std::process::Child) -> String {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Notifications reach a local sink once per revision, unit and state,
/// signed: the first revision, a unit that fails (told once however often
/// it is retried), and its recovery; drift found by the drift interval
/// is healed (`selfHeal`) and told as drift and recovery.
#[test]
fn notifications_are_sent_once_and_drift_is_healed() {
    let sink = Sink::start();
    let mut p = project();
    p[0].1 = format!(
        "name: sv\nlayers: [apps]\ntargets:\n  k8s: {{ type: cluster }}\nserve:\n  layers:\n    apps: {{selfHeal: true, driftInterval: 1s}}\n  notify:\n    - {{kind: webhook, url: \"http://127.0.0.1:{}/hook\", secretEnv: TEST_NOTIFY_SECRET}}\n",
        sink.port
    );
    let remote = Remote::new(&files(&p));
    let child = spawn_serve(
        &remote,
        &["--interval", "1s"],
        &[("TEST_NOTIFY_SECRET", "notify-Zx9")],
    );
    wait_until("the first revision told", Duration::from_secs(30), &|| {
        !sink.messages().is_empty()
    });
    let (signature, body) = sink.messages()[0].clone();
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"notify-Zx9").expect("key");
        mac.update(body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256={hex}")
    };
    assert_eq!(signature, expected, "signed: {body}");
    assert!(body.contains("applied: a, b, k"), "{body}");

    // A unit that fails: told once, though retried every second.
    remote.push(
        &[("apps/b/cm.yaml", "apiVersion: v1\nkind: ConfigMap\n")],
        &[],
    );
    wait_until("the failure told", Duration::from_secs(30), &|| {
        sink.messages().len() >= 2
    });
    std::thread::sleep(Duration::from_secs(3));
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[1].1.contains("failed: b"), "{:?}", messages[1]);

    // Fixed: a recovery.
    remote.push(&[("apps/b/cm.yaml", &cm("b", "5"))], &[]);
    wait_until("the recovery told", Duration::from_secs(30), &|| {
        sink.messages().len() >= 3
    });
    assert!(
        sink.messages()[2].1.contains("recovered: b"),
        "{:?}",
        sink.messages()[2]
    );

    // Drift: a rendered file changed by hand is put back.
    let rendered = remote
        .workdir()
        .join("tree/.terrace/rendered/default/k8s/a/v1_configmap_a.yaml");
    let before = std::fs::read_to_string(&rendered).expect("rendered");
    std::fs::write(&rendered, before.replace("v: \"1\"", "v: \"hand\"")).expect("write");
    wait_until("the drift healed", Duration::from_secs(30), &|| {
        std::fs::read_to_string(&rendered).is_ok_and(|t| t == before)
    });
    wait_until("the drift told", Duration::from_secs(30), &|| {
        sink.messages().len() >= 4
    });
    let told = &sink.messages()[3].1;
    assert!(
        told.contains("drift: a") && told.contains("recovered: a"),
        "{told}"
    );
    let out = stop(child);
    assert!(
        out.contains("drift: a") && out.contains("healed a: applied"),
        "{out}"
    );
    // The failing revision was retried with backoff (1 s, then 2 s, ...),
    // not every second.
    assert!(out.contains("failed 1 time(s): tried again in 2s"), "{out}");
    assert!(!out.contains("failed 3 time(s)"), "{out}");
}

/// A layer whose policy is `plan` is planned, never applied.
#[test]
fn a_plan_layer_is_only_planned() {
    let mut p = project();
    p[0].1 = "name: sv\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\nserve:\n  layers:\n    apps: {policy: plan}\n".to_owned();
    let remote = Remote::new(&files(&p));
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("planned: a, b, k"), "{out}");
    assert!(
        remote.rendered("a", "v1_configmap_a.yaml").is_none(),
        "nothing applied"
    );
    // A layer serve.layers names must exist.
    let mut p = project();
    p[0].1 = "name: sv\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\nserve:\n  layers:\n    aps: {policy: plan}\n".to_owned();
    let remote = Remote::new(&files(&p));
    let (c, out) = remote.serve_once();
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("names layer `aps`"), "{out}");
}

/// A project of two layers, `base` (unit `a`) and `apps` (unit `b`,
/// whose layer's policy is `approve`), served with read and write tokens
/// (`read-Tk1`, `write-Tk2`) on a free port: the remote, the daemon and
/// the port, once it is ready.
fn approve_daemon(b_depends_on_a: bool) -> (Remote, std::process::Child, u16) {
    let b_unit = if b_depends_on_a {
        "layer: apps\nkind: manifests\ndependsOn: [a]\n"
    } else {
        "layer: apps\nkind: manifests\n"
    };
    let remote = Remote::new(&[
        (
            "terrace.yaml",
            "name: sv\nlayers: [base, apps]\ntargets:\n  k8s: { type: cluster }\nserve:\n  layers:\n    apps: {policy: approve}\n",
        ),
        ("base/a/unit.yaml", "layer: base\nkind: manifests\n"),
        ("base/a/cm.yaml", &cm("a", "1")),
        ("apps/b/unit.yaml", b_unit),
        ("apps/b/cm.yaml", &cm("b", "1")),
    ]);
    let read = remote.dir.path().join("read.token");
    let write = remote.dir.path().join("write.token");
    std::fs::write(&read, "read-Tk1\n").expect("write");
    std::fs::write(&write, "write-Tk2\n").expect("write");
    let port = crate::helm::free_port();
    let child = std_command(remote.dir.path())
        .args([
            "serve",
            "--repo",
            &remote.url(),
            "--interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--read-token-file",
        ])
        .arg(&read)
        .arg("--write-token-file")
        .arg(&write)
        .arg("--workdir")
        .arg(remote.workdir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace serve runs");
    wait_until("ready", Duration::from_secs(30), &|| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    (remote, child, port)
}

/// An `approve` layer: its changes are planned and wait, the API says
/// why; tokens are checked; approving applies exactly that plan. A paused
/// unit's changes are held until it is resumed. Without tokens the API
/// is served on loopback only.
#[test]
fn an_approve_layer_waits_for_approval_and_pause_holds_a_unit() {
    let (remote, child, port) = approve_daemon(false);
    let reader = vec![("Authorization", "Bearer read-Tk1".to_owned())];
    let writer = vec![("Authorization", "Bearer write-Tk2".to_owned())];
    assert_eq!(http(port, "GET", "/api/v1/units", &[], b"").0, 401);
    let (status, body) = http(port, "GET", "/api/v1/units", &reader, b"");
    assert_eq!(status, 200, "{body}");
    let units: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(units["a"]["state"], "applied", "{units}");
    assert_eq!(units["b"]["state"], "approval", "{units}");
    assert!(
        units["b"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for approval")),
        "{units}"
    );
    assert!(
        remote.rendered("b", "v1_configmap_b.yaml").is_none(),
        "not applied before approval"
    );
    let (_, body) = http(port, "GET", "/api/v1/status", &reader, b"");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    let revision = status["pendingRevision"]
        .as_str()
        .expect("a revision waits")
        .to_owned();
    assert_eq!(status["pending"], serde_json::json!(["b"]));

    // The same, through `terrace status --server`.
    let o = command(remote.dir.path())
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--output",
            "json",
        ])
        .env("TERRACE_TOKEN", "read-Tk1")
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let b = seen["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "b")
        .expect("b")
        .clone();
    assert_eq!(
        (b["state"].as_str(), b["layer"].as_str()),
        (Some("approval"), Some("apps")),
        "{seen}"
    );
    let o = command(remote.dir.path())
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1, "no token: refused");
    assert!(stderr(&o).contains("TERRACE_TOKEN"), "{}", stderr(&o));
    let (status, plan) = http(port, "GET", "/api/v1/approval", &reader, b"");
    assert_eq!(status, 200, "{plan}");
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("a saved plan");
    assert!(plan.to_string().contains("v1 ConfigMap b"), "{plan}");
    let approve = format!("{{\"revision\": \"{revision}\"}}");
    assert_eq!(
        http(port, "POST", "/api/v1/approve", &reader, approve.as_bytes()).0,
        401,
        "a read token does not approve"
    );
    assert_eq!(
        http(
            port,
            "POST",
            "/api/v1/approve",
            &writer,
            b"{\"revision\": \"0000\"}"
        )
        .0,
        409
    );
    assert_eq!(
        http(port, "POST", "/api/v1/approve", &writer, approve.as_bytes()).0,
        202
    );
    wait_until(
        "the approved plan applied",
        Duration::from_secs(30),
        &|| remote.rendered("b", "v1_configmap_b.yaml").is_some(),
    );
    wait_until("the approval cleared", Duration::from_secs(10), &|| {
        http(port, "GET", "/api/v1/approval", &reader, b"").0 == 404
    });

    // Pause holds a unit's changes until it is resumed.
    assert_eq!(
        http(port, "POST", "/api/v1/units/a/pause", &writer, b"").0,
        200
    );
    remote.push(&[("base/a/cm.yaml", &cm("a", "2"))], &[]);
    wait_until("the paused unit reported", Duration::from_secs(30), &|| {
        let (_, body) = http(port, "GET", "/api/v1/units", &reader, b"");
        body.contains("\"paused\"")
    });
    assert!(
        remote
            .rendered("a", "v1_configmap_a.yaml")
            .expect("a")
            .contains("v: \"1\""),
        "held while paused"
    );
    assert_eq!(
        http(port, "POST", "/api/v1/units/a/resume", &writer, b"").0,
        200
    );
    wait_until("the resumed unit applied", Duration::from_secs(30), &|| {
        remote
            .rendered("a", "v1_configmap_a.yaml")
            .is_some_and(|t| t.contains("v: \"2\""))
    });
    let (status, runs) = http(port, "GET", "/api/v1/runs", &reader, b"");
    assert_eq!(status, 200, "{runs}");
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("runs are JSON");
    let triggers: Vec<&str> = runs
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["trigger"].as_str().unwrap_or_default())
        .collect();
    // The first revision (polled), its approval, the revision held while
    // a was paused, and the resume that applied it.
    assert_eq!(triggers, ["poll", "approval", "poll", "manual"], "{runs}");
    let resumed = &runs[3];
    assert_eq!(resumed["units"][0]["unit"], "a", "{runs}");
    assert_eq!(resumed["units"][0]["outcome"], "applied", "{runs}");
    // Who did what, and when.
    let (status, actions) = http(port, "GET", "/api/v1/actions", &reader, b"");
    assert_eq!(status, 200, "{actions}");
    let actions: serde_json::Value = serde_json::from_str(&actions).expect("actions are JSON");
    let done: Vec<(String, String)> = actions
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| {
            assert!(
                a["who"].as_str().is_some_and(|w| w.contains("write token")),
                "{a}"
            );
            assert!(a["at"].as_str().is_some_and(|w| w.starts_with("20")), "{a}");
            (
                a["action"].as_str().unwrap_or_default().to_owned(),
                a["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        done,
        [
            (
                "approve".to_owned(),
                runs[0]["revision"].as_str().unwrap_or_default().to_owned()
            ),
            ("pause".to_owned(), "unit/a".to_owned()),
            ("resume".to_owned(), "unit/a".to_owned()),
        ],
        "{actions}"
    );
    // The resumed run's log, as a finished run streams it.
    let (status, log) = http(
        port,
        "GET",
        &format!("/api/v1/runs/{}/log", resumed["id"]),
        &reader,
        b"",
    );
    assert_eq!(status, 200, "{log}");
    assert!(
        log.contains("event: line") && log.contains("a: applied in"),
        "{log}"
    );
    assert!(log.contains("event: end"), "{log}");
    // The unit's page: its record, the last plan with its diff, its runs.
    let (status, page) = http(port, "GET", "/api/v1/units/a", &reader, b"");
    assert_eq!(status, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).expect("a unit page is JSON");
    assert_eq!(page["view"]["state"], "applied", "{page}");
    assert_eq!(page["record"]["status"], "applied", "{page}");
    assert!(
        page["record"]["inventory"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "{page}"
    );
    assert_eq!(page["lastPlan"]["outcome"], "applied", "{page}");
    assert!(
        page["lastPlan"]["changes"][0]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+  v: \"2\"") || d.contains("v: \"2\"")),
        "{page}"
    );
    // Newest first: the resume that applied it, and the revision whose
    // change to its file it held while paused.
    assert_eq!(page["runs"][0]["trigger"], "manual", "{page}");
    assert_eq!(page["runs"][1]["outcome"], "paused", "{page}");
    assert_eq!(page["runs"][1]["files"][0], "base/a/cm.yaml", "{page}");
    assert_eq!(http(port, "GET", "/api/v1/units/nope", &reader, b"").0, 404);
    // Hostile requests: unknown or malformed ids, a path out of the tree,
    // a layer that does not exist, a name full of escapes and far too
    // long, reads without a token.
    for (method, path, want) in [
        ("GET", "/api/v1/runs/999999", 404),
        ("GET", "/api/v1/runs/999999/log", 404),
        ("GET", "/api/v1/runs/-1", 400),
        ("GET", "/api/v1/runs/x/log", 400),
        ("GET", "/api/v1/units/..%2F..%2Fetc%2Fpasswd", 404),
        ("POST", "/api/v1/layers/nope/pause", 404),
        ("POST", "/api/v1/layers/base/explode", 404),
    ] {
        let headers = if method == "POST" { &writer } else { &reader };
        assert_eq!(
            http(port, method, path, headers, b"").0,
            want,
            "{method} {path}"
        );
    }
    for path in [
        "/api/v1/actions",
        "/api/v1/runs/1",
        "/api/v1/runs/1/log",
        "/api/v1/units/a",
    ] {
        assert_eq!(http(port, "GET", path, &[], b"").0, 401, "{path}");
    }
    // (Escapes never arrive: the server refuses control characters in a
    // header, but a tab.)
    let mut named = writer.to_vec();
    named.push(("X-Terrace-Actor", format!("mallory\t{}", "x".repeat(500))));
    assert_eq!(
        http(port, "POST", "/api/v1/layers/base/pause", &named, b"").0,
        200
    );
    assert_eq!(
        http(port, "POST", "/api/v1/layers/base/resume", &writer, b"").0,
        200
    );
    let (_, actions) = http(port, "GET", "/api/v1/actions", &reader, b"");
    let actions: serde_json::Value = serde_json::from_str(&actions).expect("json");
    let who = actions[3]["who"].as_str().expect("who").to_owned();
    assert!(
        who.starts_with("mallory\txxx") && who.ends_with("x (write token)"),
        "{who}"
    );
    assert!(who.chars().count() <= 80, "{who}");
    assert_eq!(actions[3]["target"], "layer/base");
    assert_eq!(actions[4]["action"], "resume");
    let out = stop(child);
    assert!(out.contains("approved revision"), "{out}");

    // No token: loopback only.
    let o = command(remote.dir.path())
        .args([
            "serve",
            "--repo",
            &remote.url(),
            "--listen",
            "0.0.0.0:0",
            "--workdir",
        ])
        .arg(remote.dir.path().join("other"))
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("reachable from other machines"),
        "{}",
        stderr(&o)
    );
}

/// Two replicas against the real API server of `../shared/kube`: one
/// leads (applies), the other stands by (applies nothing); killed without
/// a word, the leader is replaced within the lease's duration.
#[test]
fn real_cluster_two_replicas_elect_one_leader() {
    const TEST: &str = "real_cluster_two_replicas_elect_one_leader";
    let Some(kubeconfig) = crate::real_cluster(TEST) else {
        return;
    };
    let p = project();
    let remote = Remote::new(&files(&p));
    let lease = format!("terrace-rt-lease-{}", std::process::id());
    let delete_lease = || {
        crate::kubectl(
            &kubeconfig,
            &[
                "delete",
                "lease",
                &lease,
                "-n",
                "default",
                "--ignore-not-found",
            ],
        )
    };
    let _ = delete_lease();
    let replica = |n: u32| {
        let mut cmd = std_command(remote.dir.path());
        cmd.args([
            "serve",
            "--repo",
            &remote.url(),
            "--interval",
            "1s",
            "--no-listen",
            "--leader-election",
            "--lease-name",
            &lease,
            "--lease-duration",
            "4s",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .arg("--workdir")
        .arg(remote.dir.path().join(format!("replica-{n}")))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("terrace serve runs")
    };
    let applied = |n: u32| {
        let status = remote.dir.path().join(format!("replica-{n}/serve.json"));
        std::fs::read_to_string(status).is_ok_and(|t| t.contains("\"applied\""))
    };
    let mut first = replica(1);
    wait_until(
        "the first replica leads and applies",
        Duration::from_secs(30),
        &|| applied(1),
    );
    let mut second = replica(2);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !applied(2),
        "the standby applies nothing while the leader renews"
    );
    // The leader dies without giving the Lease up.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first.id().to_string()])
        .status();
    let killed = Instant::now();
    wait_until("the standby takes over", Duration::from_secs(20), &|| {
        applied(2)
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "took over {took:?} after the leader died (lease 4 s)"
    );
    let _ = second.kill();
    let out = second.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("standby:") && text.contains("leading as"),
        "{text}"
    );
    let _ = delete_lease();
    let _ = first.wait();
}

/// `deploy/` runs `terrace serve` in a cluster and is a terrace project:
/// it validates and renders a Deployment with leader election, the RBAC
/// its Lease needs, and probes on the daemon's health endpoints; on the
/// real API server it applies and is destroyed again.
#[test]
fn the_in_cluster_deployment_renders_and_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("deploy");
    copy_tree(&crate::repo_root().join("deploy"), &root);
    let o = command(&root).args(["validate"]).output().expect("runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = command(&root)
        .args(["render", "serve", "--output", "json"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let all: String = out["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect::<Vec<_>>()
        .join("---\n");
    for needle in [
        "kind: Deployment",
        "- --leader-election",
        "- --lease-namespace=terrace-system",
        "replicas: 2",
        "resources:\n  - leases",
        "path: /readyz",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(all.contains(needle), "{needle} in:\n{all}");
    }
    let Some(kubeconfig) =
        crate::real_cluster("the_in_cluster_deployment_renders_and_applies (apply)")
    else {
        return;
    };
    let binding = format!("home={}", kubeconfig.display());
    let ns = format!("terrace-rt-deploy-{}", std::process::id());
    let run = |args: &[&str]| {
        std_command(&root)
            .args(["--cluster", &binding])
            .args(args)
            .env("TERRACE_KUBE_WAIT", "false")
            .output()
            .expect("runs")
    };
    // In a namespace of the test's own.
    let vars = root.join("terrace.yaml");
    let text = std::fs::read_to_string(&vars).expect("read");
    std::fs::write(
        &vars,
        text.replace("namespace: terrace-system", &format!("namespace: {ns}")),
    )
    .expect("write");
    let o = run(&["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let got = crate::kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment,role,rolebinding,serviceaccount,service",
            "-n",
            &ns,
            "-o",
            "name",
        ],
    );
    let names = stdout(&got);
    for want in [
        "deployment.apps/terrace-serve",
        "role.rbac.authorization.k8s.io/terrace-serve-leader",
        "serviceaccount/terrace-serve",
        "service/terrace-serve",
    ] {
        assert!(names.contains(want), "{want} in {names}");
    }
    let o = run(&["destroy", "--unit", "serve", "--yes"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let _ = crate::kubectl(
        &kubeconfig,
        &[
            "delete",
            "namespace",
            &ns,
            "--ignore-not-found",
            "--wait=false",
        ],
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        if entry.file_name() == ".terrace" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The same daemon over the Git protocol: `git daemon` serving the bare
/// remote on 127.0.0.1, fetched by gix's own git:// transport.
#[test]
fn serve_fetches_over_the_git_protocol() {
    let p = project();
    let remote = Remote::new(&files(&p));
    let port = crate::helm::free_port();
    // Stopped when the test ends, passed or failed.
    let mut daemon = crate::helm::Server::default();
    let mut cmd = std::process::Command::new("git");
    cmd.args([
        "daemon".to_owned(),
        "--reuseaddr".to_owned(),
        "--export-all".to_owned(),
        "--listen=127.0.0.1".to_owned(),
        format!("--port={port}"),
        format!("--base-path={}", remote.dir.path().display()),
        remote.dir.path().display().to_string(),
    ]);
    daemon.start(cmd, port);
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let run = || {
        command(remote.dir.path())
            .args(["serve", "--repo", &url, "--once", "--workdir"])
            .arg(remote.workdir())
            .output()
            .expect("runs")
    };
    let o = run();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: a, b, k"), "{}", stdout(&o));
    remote.push(&[("apps/a/cm.yaml", &cm("a", "git"))], &[]);
    let o = run();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: a"), "{}", stdout(&o));
    assert!(
        remote
            .rendered("a", "v1_configmap_a.yaml")
            .expect("a")
            .contains("v: git")
    );
    daemon.stop();
}

/// An https remote: the real `git http-backend` behind TLS on 127.0.0.1
/// (a certificate made for the test, trusted through SSL_CERT_FILE).
#[test]
fn serve_fetches_over_https() {
    let p = project();
    let remote = Remote::new(&files(&p));
    let certs = remote.dir.path().join("tls");
    std::fs::create_dir_all(&certs).expect("mkdir");
    // A CA made for the test, and the server's certificate it signs.
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .current_dir(&certs)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=terrace-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        certs.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = crate::helm::free_port();
    let script = crate::repo_root().join("crates/terrace/tests/cli/support/git_https.py");
    // Stopped when the test ends, passed or failed.
    let mut server = crate::helm::Server::default();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg(remote.dir.path())
        .arg(port.to_string())
        .arg(certs.join("cert.pem"))
        .arg(certs.join("key.pem"));
    server.start(cmd, port);
    let url = format!("https://127.0.0.1:{port}/remote.git");
    let run = |trusted: bool| {
        let mut cmd = command(remote.dir.path());
        cmd.args(["serve", "--repo", &url, "--once", "--workdir"])
            .arg(remote.workdir());
        if trusted {
            cmd.env("SSL_CERT_FILE", certs.join("ca.pem"));
        } else {
            cmd.env("SSL_CERT_FILE", "/nonexistent");
        }
        cmd.output().expect("runs")
    };
    // A certificate nobody trusts is refused.
    let o = run(false);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("certificate must be trusted"),
        "{}",
        stderr(&o)
    );
    let o = run(true);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: a, b, k"), "{}", stdout(&o));
    remote.push(&[("apps/b/cm.yaml", &cm("b", "tls"))], &[]);
    let o = run(true);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: b"), "{}", stdout(&o));
    server.stop();
}

/// A tag is followed instead of a branch: commits on the branch change
/// nothing, moving the tag is a new revision.
#[test]
fn serve_follows_a_tag() {
    let p = project();
    let remote = Remote::new(&files(&p));
    git(&remote.work(), &["tag", "release"]);
    git(&remote.work(), &["push", "-q", "origin", "release"]);
    let run = || {
        command(remote.dir.path())
            .args([
                "serve",
                "--repo",
                &remote.url(),
                "--tag",
                "release",
                "--once",
                "--workdir",
            ])
            .arg(remote.workdir())
            .output()
            .expect("runs")
    };
    let o = run();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: a, b, k"), "{}", stdout(&o));
    remote.push(&[("apps/a/cm.yaml", &cm("a", "7"))], &[]);
    let o = run();
    assert!(
        stdout(&o).contains("up to date"),
        "the branch moved, not the tag: {}",
        stdout(&o)
    );
    git(&remote.work(), &["tag", "-f", "release"]);
    git(&remote.work(), &["push", "-q", "-f", "origin", "release"]);
    let o = run();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applied: a"), "{}", stdout(&o));
}

/// The dashboard in a real headless Chromium (playwright-core), over the
/// example homelab served by the daemon: every unit drawn in its layer,
/// approval through the page, a unit's page with its secret inputs shown
/// as sensitive, the action log, a run's log streamed while the run
/// runs, a failing unit's blocked dependents marked, keyboard
/// navigation, dark theme, a phone's width. No request leaves 127.0.0.1
/// and no secret value is in any page or API response. Screenshots go to
/// `target/dashboard/`.
#[test]
fn the_dashboard_works_in_a_browser() {
    const TEST: &str = "the_dashboard_works_in_a_browser";
    let Some((chromium, playwright)) = browser(TEST) else {
        return;
    };
    let example = crate::repo_root().join("examples/homelab");
    let mut files: Vec<(String, String)> = Vec::new();
    collect_files(&example, &example, &mut files);
    let project = files
        .iter_mut()
        .find(|(p, _)| p == "terrace.yaml")
        .expect("the example's terrace.yaml");
    project
        .1
        .push_str("serve:\n  layers:\n    apps: {policy: approve}\n");
    // A slow unit whose run prints a line a second: its log is followed
    // live.
    files.push(("infra/clock/unit.yaml".to_owned(), clock_unit("1")));
    files.push(("infra/clock/main.tf".to_owned(), CLOCK_TF.to_owned()));
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let remote = Remote::new(&borrowed);
    let key = remote.work().join("keys/demo.agekey");
    // Every secret value of the example, to be searched for.
    let mut secrets: Vec<String> = Vec::new();
    for file in ["secrets/web.yaml", "services/postgres/secret.sops.yaml"] {
        let o = command(&remote.work())
            .env("SOPS_AGE_KEY_FILE", &key)
            .args(["secrets", "decrypt", file])
            .output()
            .expect("terrace runs");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        // The secret values: db_password, session_key, POSTGRES_PASSWORD
        // (not the Secret's kind or name).
        for line in stdout(&o).lines() {
            if let Some((k, v)) = line.split_once(": ") {
                let k = k.trim().to_lowercase();
                let v = v.trim().trim_matches('"');
                if (k.contains("password") || k.contains("key")) && v.len() >= 6 {
                    secrets.push(v.to_owned());
                }
            }
        }
    }
    assert_eq!(secrets.len(), 3, "three secret values");
    let units: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| p.strip_suffix("/unit.yaml"))
        .map(|d| d.rsplit('/').next().unwrap_or(d).to_owned())
        .collect();
    let read = remote.dir.path().join("read.token");
    let write = remote.dir.path().join("write.token");
    std::fs::write(&read, "read-Tk1\n").expect("write");
    std::fs::write(&write, "write-Tk2\n").expect("write");
    let port = crate::helm::free_port();
    let child = std_command(remote.dir.path())
        .args([
            "serve",
            "--repo",
            &remote.url(),
            "--interval",
            "1s",
            "-j",
            "4",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--read-token-file")
        .arg(&read)
        .arg("--write-token-file")
        .arg(&write)
        .arg("--workdir")
        .arg(remote.workdir())
        .env("SOPS_AGE_KEY_FILE", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace serve runs");
    let reader = [("Authorization", "Bearer read-Tk1".to_owned())];
    wait_until(
        "the first revision reconciled",
        Duration::from_secs(120),
        &|| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/api/v1/status", &reader, b"")
                    .1
                    .contains("\"pendingRevision\":\"")
        },
    );
    // What the page's push does: the clock ticks (a slow run) and
    // postgres breaks (web, which needs its outputs, is blocked).
    let push = remote.dir.path().join("push.sh");
    let tick = remote.work().join("infra/clock/unit.yaml");
    let broken = remote.work().join("services/postgres/statefulset.yaml");
    std::fs::write(
        &push,
        format!(
            "set -e\ncd '{work}'\nprintf '%s' '{unit}' > '{tick}'\nprintf 'kind: [not, an, object\\n' > '{broken}'\ngit -c user.email=t@example.org -c user.name=t commit -qam tick\ngit push -q origin main\n",
            work = remote.work().display(),
            unit = clock_unit("2"),
            tick = tick.display(),
            broken = broken.display(),
        ),
    )
    .expect("write");
    let shots = crate::repo_root().join("target/dashboard");
    std::fs::create_dir_all(&shots).expect("mkdir");
    let layers = "[\"bootstrap\",\"infra\",\"os\",\"platform\",\"services\",\"apps\"]";
    let script = crate::repo_root().join("crates/terrace/tests/cli/support/dashboard.cjs");
    let o = std::process::Command::new("node")
        .arg(&script)
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", &chromium)
        .env("URL", format!("http://127.0.0.1:{port}/"))
        .env("READ", "read-Tk1")
        .env("WRITE", "write-Tk2")
        .env("PUSH", &push)
        .env("UNITS", serde_json::to_string(&units).expect("json"))
        .env("LAYERS", layers)
        .env("SECRETS", serde_json::to_string(&secrets).expect("json"))
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    // The API, searched as well: no secret in any answer.
    let mut answers = Vec::new();
    let mut paths: Vec<String> = [
        "/",
        "/api/v1/status",
        "/api/v1/units",
        "/api/v1/runs",
        "/api/v1/actions",
        "/api/v1/approval",
        "/metrics",
    ]
    .map(str::to_owned)
    .to_vec();
    paths.extend(units.iter().map(|u| format!("/api/v1/units/{u}")));
    paths.extend((1..=4).map(|n| format!("/api/v1/runs/{n}")));
    for path in &paths {
        let (_, body) = http(port, "GET", path, &reader, b"");
        answers.push((path.clone(), body));
    }
    let out = stop(child);
    assert!(
        o.status.success(),
        "{}{}\n-- daemon:\n{out}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for (path, body) in &answers {
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "a secret in {path}: {body}"
            );
        }
    }
    assert!(
        answers
            .iter()
            .any(|(p, b)| p == "/api/v1/units/web" && b.contains("db_password")),
        "web's page names its secret input"
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        report["asked"].to_string().contains("Write token"),
        "{report}"
    );
    assert_eq!(report["units"], units.len(), "{report}");
    assert!(
        report["streamed"].as_u64().is_some_and(|n| n >= 1),
        "{report}"
    );
    for shot in ["graph", "unit", "run", "failing", "dark", "phone"] {
        let png = shots.join(format!("dashboard-{shot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
    }
}

/// Chromium and playwright-core, or `None` with the reason printed.
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let playwright = std::env::var_os("TERRACE_PLAYWRIGHT")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(".cache/terrace-tools/node/node_modules/playwright-core")
            })
        })
        .filter(|p| p.is_dir());
    let found = chromium.zip(playwright);
    if found.is_none() {
        eprintln!(
            "skipped {test}: needs chromium (Debian) and playwright-core (npm); scripts/setup-tools.sh installs both"
        );
    }
    found
}

/// Every file under `dir` (but `.terrace/`), with its path from `root`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read") {
        let entry = entry.expect("entry");
        if entry.file_name() == ".terrace" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().expect("type").is_dir() {
            collect_files(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).expect("text")));
        }
    }
}

fn clock_unit(tick: &str) -> String {
    format!("layer: infra\nkind: terraform\ninputs:\n  tick: \"{tick}\"\n")
}

const CLOCK_TF: &str = r#"variable "tick" {
  type = string
}

resource "terraform_data" "steps" {
  triggers_replace = var.tick
  provisioner "local-exec" {
    command = "for i in 1 2 3 4 5 6 7 8; do echo step $i; sleep 1; done"
  }
}
"#;

/// `terrace dashboard`: the same page over the local project without the
/// daemon, read-only and on loopback only.
#[test]
fn the_local_dashboard_is_read_only() {
    let dir = crate::two_file_units("dash");
    assert_eq!(code(&crate::terrace(dir.path(), &["apply"])), 0);
    let port = crate::helm::free_port();
    let child = std_command(dir.path())
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace dashboard runs");
    wait_until("the dashboard listens", Duration::from_secs(30), &|| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (status, page) = http(port, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(page.contains("<title>terrace</title>"));
    let (_, units) = http(port, "GET", "/api/v1/units", &[], b"");
    let units: serde_json::Value = serde_json::from_str(&units).expect("json");
    assert_eq!(units["settings"]["state"], "applied", "{units}");
    assert_eq!(units["docs"]["layer"], "apps", "{units}");
    let (_, st) = http(port, "GET", "/api/v1/status", &[], b"");
    assert!(st.contains("\"readOnly\":true"), "{st}");
    let (_, runs) = http(port, "GET", "/api/v1/runs", &[], b"");
    assert!(runs.contains("\"command\":\"apply\""), "{runs}");
    // A unit's page from the local state.
    let (status, page) = http(port, "GET", "/api/v1/units/docs", &[], b"");
    assert_eq!(status, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    assert_eq!(page["record"]["status"], "applied", "{page}");
    assert_eq!(page["dir"], "apps/docs", "{page}");
    assert!(page["runs"].as_array().is_some_and(Vec::is_empty), "{page}");
    let (_, run) = http(port, "GET", "/api/v1/runs/1", &[], b"");
    assert!(run.contains("\"command\":\"apply\""), "{run}");
    for path in [
        "/api/v1/reconcile",
        "/api/v1/units/docs/pause",
        "/api/v1/layers/apps/pause",
    ] {
        assert_eq!(http(port, "POST", path, &[], b"").0, 403, "{path}");
    }
    stop(child);
    let o = command(dir.path())
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("reachable from other machines"),
        "{}",
        stderr(&o)
    );
}

/// A compose unit's backup schedule fires under `terrace serve`: each
/// backup is a run of the history, and restic holds its snapshots.
#[test]
fn serve_runs_backups_on_their_schedule() {
    let test = "serve_runs_backups_on_their_schedule";
    if !super::compose::found("restic") {
        eprintln!("skipped {test}: no restic (Debian restic; scripts/setup-tools.sh installs it)");
        return;
    }
    let Some(p) = super::compose::Podman::start(test) else {
        return;
    };
    let repo = tempfile::tempdir().expect("tempdir");
    let homelab = crate::repo_root().join("examples/homelab");
    let sops = std::fs::read_to_string(homelab.join(".sops.yaml")).expect(".sops.yaml");
    let terrace_yaml = format!(
        "name: sv\nlayers: [data]\ntargets:\n  host: {{ type: docker, host: \"{}\" }}\n",
        p.host()
    );
    let unit = format!(
        "layer: data\nkind: compose\ntarget: host\ncompose:\n  backup:\n    db:\n      volume: data\n      repository: {}\n      password: ${{secret.secrets/backup.yaml#restic}}\n      schedule: \"*/2 * * * * *\"\n      keep: {{ last: 3 }}\n",
        repo.path().display()
    );
    let remote = Remote::new(&[
        ("terrace.yaml", &terrace_yaml),
        (".sops.yaml", &sops),
        ("data/pg/unit.yaml", &unit),
        (
            "data/pg/compose.yaml",
            "services:\n  db:\n    image: localhost/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo row > /data/rows; while true; do sleep 1; done\"]\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
        ),
    ]);
    // The key terrace's test command gives the daemon, and the secret
    // encrypted to it before it is pushed.
    let keys = remote.dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    std::fs::copy(homelab.join("keys/demo.agekey"), keys.join("demo.agekey")).expect("key");
    write_files(
        &remote.work(),
        &[(
            "secrets/backup.yaml",
            "restic: scheduled-backup-password-8812\n",
        )],
    );
    let o = std_command(remote.dir.path())
        .current_dir(remote.work())
        .args(["secrets", "encrypt", "-i", "secrets/backup.yaml"])
        .output()
        .expect("encrypt");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    remote.push(&[], &[]);

    let serve = spawn_serve(&remote, &["--interval", "1s"], &[]);
    let snapshots = || -> usize {
        let o = std::process::Command::new("restic")
            .args([
                "-r",
                &repo.path().display().to_string(),
                "snapshots",
                // The daemon may be pruning (an exclusive lock) when the
                // test looks, or was stopped part way through one.
                "--no-lock",
                "--json",
                "--tag",
                "service:db",
            ])
            .env("RESTIC_PASSWORD", "scheduled-backup-password-8812")
            .output()
            .expect("restic");
        serde_json::from_slice::<Option<Vec<serde_json::Value>>>(&o.stdout)
            .ok()
            .flatten()
            .map_or(0, |v| v.len())
    };
    let started = Instant::now();
    while snapshots() < 2 && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = stop(serve);
    assert!(snapshots() >= 2, "two scheduled backups: {log}");
    assert!(log.contains("backed up pg/db"), "{log}");
    assert!(!log.contains("scheduled-backup-password-8812"), "{log}");
    // The daemon's own history: a run per backup, triggered by the
    // schedule.
    let runs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(remote.workdir().join("history/runs.json")).expect("runs.json"),
    )
    .expect("json");
    let scheduled: Vec<&serde_json::Value> = runs
        .as_array()
        .or_else(|| runs["runs"].as_array())
        .expect("runs")
        .iter()
        .filter(|r| r["trigger"] == "schedule")
        .collect();
    assert!(scheduled.len() >= 2, "{runs}");
    assert!(
        scheduled.iter().all(|r| r["units"][0]["unit"] == "pg"),
        "{runs}"
    );
}

/// Two daemons with state in etcd share one status, approval and
/// history: a second replica, with a work directory of its own, goes on
/// where the first stopped (nothing applied again), shows the plan the
/// first left waiting, applies it once approved, and the first then
/// sees that run in its history.
#[test]
fn replicas_share_status_approval_and_history_through_etcd_state() {
    let Some(etcd) = crate::state_etcd::Etcd::start(
        "replicas_share_status_approval_and_history_through_etcd_state",
    ) else {
        return;
    };
    let yaml = format!(
        "name: sv\nlayers: [base, apps]\ntargets:\n  k8s: {{ type: cluster }}\nserve:\n  layers:\n    apps: {{policy: approve}}\nstate:\n  backend: etcd\n  endpoints: [{}]\n",
        etcd.endpoint()
    );
    let remote = Remote::new(&[
        ("terrace.yaml", &yaml),
        ("base/a/unit.yaml", "layer: base\nkind: manifests\n"),
        ("base/a/cm.yaml", &cm("a", "1")),
        ("apps/b/unit.yaml", "layer: apps\nkind: manifests\n"),
        ("apps/b/cm.yaml", &cm("b", "1")),
    ]);
    // The first daemon: `a` applied, `b` waits for approval.
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(
        remote.rendered("a", "v1_configmap_a.yaml").is_some(),
        "{out}"
    );
    assert!(
        remote.rendered("b", "v1_configmap_b.yaml").is_none(),
        "{out}"
    );
    assert!(
        etcd.dump("terrace/sv/_daemon/")
            .contains("terrace/sv/_daemon/approval.plan"),
        "the waiting plan is in the shared store"
    );

    // A second replica, its own work directory.
    let other = remote.dir.path().join("serve-2");
    let port = crate::helm::free_port();
    let child = std_command(remote.dir.path())
        .args(["serve", "--repo", &remote.url(), "--interval", "1s"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--workdir"])
        .arg(&other)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace serve runs");
    wait_until("ready", Duration::from_secs(30), &|| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    let (_, body) = http(port, "GET", "/api/v1/status", &[], b"");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["pending"], serde_json::json!(["b"]), "{status}");
    let revision = status["pendingRevision"]
        .as_str()
        .expect("the first daemon's plan waits")
        .to_owned();
    assert!(
        !other
            .join("tree/.terrace/rendered/default/k8s/a/v1_configmap_a.yaml")
            .exists(),
        "the applied revision was not applied again"
    );
    let (_, runs) = http(port, "GET", "/api/v1/runs", &[], b"");
    assert!(runs.contains(&revision), "the first daemon's run: {runs}");
    assert_eq!(
        http(port, "GET", "/api/v1/approval", &[], b"").0,
        200,
        "the first daemon's plan, shown by the second"
    );
    let approve = format!("{{\"revision\": \"{revision}\"}}");
    assert_eq!(
        http(port, "POST", "/api/v1/approve", &[], approve.as_bytes()).0,
        202
    );
    wait_until(
        "the approved plan applied by the second replica",
        Duration::from_secs(30),
        &|| {
            other
                .join("tree/.terrace/rendered/default/k8s/b/v1_configmap_b.yaml")
                .exists()
        },
    );
    wait_until("the approval cleared", Duration::from_secs(10), &|| {
        http(port, "GET", "/api/v1/approval", &[], b"").0 == 404
    });
    // Written out at the end of the pass that applied it.
    wait_until(
        "the approval left the store",
        Duration::from_secs(10),
        &|| {
            !etcd
                .dump("terrace/sv/_daemon/")
                .contains("terrace/sv/_daemon/approval.plan")
        },
    );
    let out = stop(child);
    assert!(!out.contains("not written"), "{out}");

    // The first daemon again: nothing waits, nothing to apply, and its
    // history holds the approval the other replica applied.
    let (c, out) = remote.serve_once();
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("up to date"), "{out}");
    let runs =
        std::fs::read_to_string(remote.workdir().join("history/runs.json")).expect("history");
    assert!(runs.contains("\"trigger\":\"approval\""), "{runs}");
    assert!(!remote.workdir().join("approval.plan").exists());
}
