//! State in an S3-compatible bucket (SeaweedFS's `weed mini`, started
//! per test on free loopback ports): two processes share it without
//! losing an update, a killed holder's lock names it until `state
//! unlock`, and records are never written in a local file.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::compose::{S3_KEY, S3_SECRET, Seaweed};
use crate::{code, std_command, stderr, stdout, write_files};

fn s3_yaml(s3: &Seaweed, name: &str) -> String {
    format!(
        "name: {name}\nlayers: [apps]\ntargets:\n  k8s: {{ type: cluster }}\nstate:\n  backend: s3\n  bucket: backups\n  prefix: state/{name}\n  endpoint: http://127.0.0.1:{}\n",
        s3.s3_port
    )
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    std_command(dir)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .output()
        .expect("terrace runs")
}

/// A project of `units` template units writing local files.
fn project(s3: &Seaweed, name: &str, units: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![("terrace.yaml".to_owned(), s3_yaml(s3, name))];
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
fn two_processes_sharing_s3_state_never_lose_an_update() {
    let Some(s3) = Seaweed::start("two_processes_sharing_s3_state_never_lose_an_update") else {
        return;
    };
    // A laptop and CI: two copies of the project, one bucket.
    let a = project(&s3, "shared", 12);
    let b = project(&s3, "shared", 12);
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
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
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
    // Nothing was written locally.
    assert!(!a.path().join(".terrace/state").exists());
    // Each copy plans clean against the shared records (its own files
    // are there: each applied what it lacked under the lock).
    for d in [&a, &b] {
        let o = run(d.path(), &["plan"]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
}

/// Two concurrent applies (their JSON reports `oa` and `ob`) of units
/// `u0`…: each record's serial (read with `show`) counts the writes both
/// made to it, so a write based on a stale read would leave it short.
pub(crate) fn assert_serials_count_writes(
    oa: &std::process::Output,
    ob: &std::process::Output,
    units: usize,
    show: impl Fn(&str) -> std::process::Output,
) {
    let writes = |o: &std::process::Output| -> Vec<String> {
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v["units"]
            .as_array()
            .expect("units")
            .iter()
            .filter(|u| u["outcome"] == "applied")
            .map(|u| u["unit"].as_str().expect("unit").to_owned())
            .collect()
    };
    let (wa, wb) = (writes(oa), writes(ob));
    for i in 0..units {
        let unit = format!("u{i}");
        let o = show(&unit);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let record: Value = serde_json::from_slice(&o.stdout).expect("record");
        let count =
            wa.iter().filter(|u| **u == unit).count() + wb.iter().filter(|u| **u == unit).count();
        assert!(count >= 1, "{unit} was applied by one of them");
        assert_eq!(record["serial"], count as u64, "{unit}: {record}");
    }
}

const SLOW_TF: &str = r#"resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "sleep 31"
  }
}
"#;

#[test]
fn a_killed_holder_of_an_s3_lock_is_named_until_unlocked() {
    let Some(s3) = Seaweed::start("a_killed_holder_of_an_s3_lock_is_named_until_unlocked") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                &s3_yaml(&s3, "killed").replace("layers: [apps]", "layers: [infra]"),
            ),
            ("infra/slow/unit.yaml", "layer: infra\nkind: terraform\n"),
            ("infra/slow/main.tf", SLOW_TF),
        ],
    );
    let log = dir.path().join("apply.log");
    let mut child = std_command(dir.path())
        .args(["apply"])
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("terrace runs");
    // The provisioner runs: the unit's lock is held.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::process::Command::new("pgrep")
        .args(["-f", "sleep 31"])
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
    let pid = child.id().to_string();
    // Another process is told who holds it.
    let o = run(dir.path(), &["apply", "--lock-timeout", "0"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("is locked by") && out.contains(&pid), "{out}");
    // Killed outright: its lock object stays in the bucket, naming it.
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    let _ = child.wait();
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 31"])
        .status();
    let o = run(dir.path(), &["state", "unlock", "slow"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(code(&o), 0, "{out}");
    assert!(
        out.contains(&pid),
        "unlock names the holder it freed: {out}"
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

/// Compare-and-swap, below the locks: a process that writes a record it
/// read before another process wrote it is refused, and nothing is
/// overwritten.
#[test]
fn a_write_based_on_a_stale_read_is_refused() {
    use terrace_state::{StateBackend, StateError};
    let Some(s3) = Seaweed::start("a_write_based_on_a_stale_read_is_refused") else {
        return;
    };
    let dir = project(&s3, "cas", 1);
    let o = run(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let settings = terrace_state_s3::S3Settings {
        bucket: "backups".into(),
        prefix: "state/cas".into(),
        endpoint: Some(format!("http://127.0.0.1:{}", s3.s3_port)),
        region: None,
        cache_root: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let with_keys = |s: terrace_state_s3::S3Settings| {
            terrace_state_s3::S3Backend::with_credentials(s, S3_KEY, S3_SECRET).expect("backend")
        };
        let (a, b) = (with_keys(settings.clone()), with_keys(settings));
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
        let fresh = with_keys(terrace_state_s3::S3Settings {
            bucket: "backups".into(),
            prefix: "state/cas".into(),
            endpoint: Some(format!("http://127.0.0.1:{}", s3.s3_port)),
            region: None,
            cache_root: None,
        });
        let kept = fresh
            .read("default", "u0")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(kept.run_id, "b", "b's record was kept");
        assert_eq!(kept.serial, seen_by_a.serial + 1);
    });
}

/// The example's state moved local → S3 → etcd → local: every step
/// plans with no changes; a held lock or a destination that holds state
/// refuses.
#[test]
fn the_example_migrates_local_to_s3_to_etcd_and_back_and_plans_clean() {
    let test = "the_example_migrates_local_to_s3_to_etcd_and_back_and_plans_clean";
    let Some(s3) = Seaweed::start(test) else {
        return;
    };
    let Some(etcd) = crate::state_etcd::Etcd::start(test) else {
        return;
    };
    let dir = crate::homelab();
    let d = dir.path();
    let o = run(d, &["apply", "-j", "2"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let yaml = std::fs::read_to_string(d.join("terrace.yaml")).expect("terrace.yaml");
    let endpoint = format!("http://127.0.0.1:{}", s3.s3_port);
    let to_s3 = format!("s3://backups/homelab?endpoint={endpoint}");

    let o = run(d, &["state", "migrate", "--to", &to_s3, "--output", "json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let homelab = v["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .find(|e| e["environment"] == "homelab")
        .expect("homelab")
        .clone();
    assert_eq!(homelab["records"], 18, "{v}");
    assert!(homelab["runs"].as_u64().expect("runs") >= 1, "{v}");

    write_files(
        d,
        &[(
            "terrace.yaml",
            &format!(
                "{yaml}\nstate:\n  backend: s3\n  bucket: backups\n  prefix: homelab\n  endpoint: {endpoint}\n"
            ),
        )],
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "from S3: {}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("18 of 18 units unchanged"),
        "{}",
        stdout(&o)
    );

    // Into S3 again: it already holds state.
    let o = run(
        d,
        &[
            "state",
            "migrate",
            "--to",
            &format!("s3://backups/homelab?endpoint={endpoint}"),
        ],
    );
    assert_ne!(code(&o), 0);
    let o = run(
        d,
        &[
            "state",
            "migrate",
            "--to",
            &to_s3.replace("/homelab", "/elsewhere"),
        ],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // S3 → etcd: Terraform's states come down to local files under
    // `.terrace/terraform/` (Terraform has no etcd backend).
    let to_etcd = format!("etcd://127.0.0.1:{}/terrace/homelab", etcd.port);
    let o = run(
        d,
        &["state", "migrate", "--to", &to_etcd, "--output", "json"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["to"].as_str().expect("to").starts_with("etcd://"), "{v}");
    write_files(
        d,
        &[(
            "terrace.yaml",
            &format!(
                "{yaml}\nstate:\n  backend: etcd\n  endpoints: [{}]\n",
                etcd.endpoint()
            ),
        )],
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "from etcd: {}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("18 of 18 units unchanged"),
        "{}",
        stdout(&o)
    );

    let o = run(d, &["state", "migrate", "--to", "local:state-back"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    write_files(
        d,
        &[(
            "terrace.yaml",
            &format!("{yaml}\nstate:\n  backend: local\n  path: state-back\n"),
        )],
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "back to local: {}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("18 of 18 units unchanged"),
        "{}",
        stdout(&o)
    );

    // A unit locked by a live process: nothing is copied.
    let holder = serde_json::json!({
        "pid": std::process::id(), "host": terrace_state::hostname(), "command": "apply",
        "acquiredAt": "2026-12-01T00:00:00Z", "runId": "held"
    });
    write_files(
        d,
        &[("state-back/homelab/locks/web.lock", &holder.to_string())],
    );
    let o = run(d, &["state", "migrate", "--to", "local:state-third"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("locked by"), "{out}");
    assert!(
        !d.join("state-third/homelab/units").exists(),
        "nothing was copied"
    );
}

const DEMO_RECIPIENT: &str = "age1epsvnx3rgls9gquzvp6jzxmg0yn0px98yqsa522ad0vhf98tj3hszlc2et";

/// `state.encryption`: what lands in the bucket is age-encrypted to the
/// recipients (no output value, no record field readable there), read
/// back with the SOPS keys; a plaintext record is refused unless the
/// fallback allows it while encryption is turned on.
#[test]
fn encrypted_s3_state_leaks_nothing_into_the_bucket() {
    let Some(s3) = Seaweed::start("encrypted_s3_state_leaks_nothing_into_the_bucket") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let base = s3_yaml(&s3, "sealed").replace("layers: [apps]", "layers: [infra]");
    let encrypted = format!("{base}  encryption:\n    age: [{DEMO_RECIPIENT}]\n");
    std::fs::create_dir_all(d.join("keys")).expect("mkdir");
    std::fs::copy(
        crate::repo_root().join("examples/homelab/keys/demo.agekey"),
        d.join("keys/demo.agekey"),
    )
    .expect("key");
    write_files(
        d,
        &[
            ("terrace.yaml", &base),
            ("infra/net/unit.yaml", "layer: infra\nkind: terraform\n"),
            (
                "infra/net/main.tf",
                "output \"cidr\" {\n  value = \"plain-output-value-7731\"\n}\n",
            ),
        ],
    );
    // Applied before encryption: a plaintext record in the bucket (the
    // control: the search below finds what the store holds).
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let record = |s3: &Seaweed| {
        String::from_utf8_lossy(
            &s3.raw("backups", "state/sealed/default/units/net.json")
                .expect("the record is in the bucket"),
        )
        .into_owned()
    };
    assert!(
        record(&s3).contains("plain-output-value-7731"),
        "{}",
        record(&s3)
    );
    // Encryption on: the plaintext record is refused...
    write_files(d, &[("terrace.yaml", &encrypted)]);
    let o = run(d, &["plan"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("fallback: plaintext"), "{out}");
    // ...read with the fallback, and sealed at its next write.
    write_files(
        d,
        &[(
            "terrace.yaml",
            &format!("{encrypted}    fallback: plaintext\n"),
        )],
    );
    write_files(
        d,
        &[(
            "infra/net/main.tf",
            "output \"cidr\" {\n  value = \"plain-output-value-7731\"\n}\noutput \"gateway\" {\n  value = \"plain-gateway-value-5520\"\n}\n",
        )],
    );
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    write_files(d, &[("terrace.yaml", &encrypted)]);
    let o = run(d, &["plan"]);
    assert_eq!(
        code(&o),
        0,
        "sealed and read back: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = run(d, &["output", "net", "gateway"]);
    assert_eq!(
        stdout(&o).trim(),
        "plain-gateway-value-5520",
        "{}",
        stderr(&o)
    );
    // The record and the runs written since are age files: nothing of
    // them reads in the bucket.
    let sealed = record(&s3);
    assert!(sealed.starts_with("age-encryption.org/v1"), "{sealed}");
    assert!(!sealed.contains("plain-gateway-value-5520") && !sealed.contains("serial"));
    let runs = s3.names("backups", "state/sealed/default/runs");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let mut sealed_runs = 0;
    for r in &runs {
        let body = s3
            .raw("backups", &format!("state/sealed/default/runs/{r}"))
            .expect("run");
        if body.starts_with(b"age-encryption.org/v1") {
            sealed_runs += 1;
        }
    }
    assert_eq!(
        sealed_runs, 1,
        "the run after encryption is sealed, the one before is not"
    );
    // Without the key, nothing is read.
    std::fs::remove_file(d.join("keys/demo.agekey")).expect("rm");
    std::fs::remove_dir_all(d.join(".terrace/cache")).expect("rm cache");
    let o = run(d, &["plan"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(!out.contains("plain-gateway-value-5520"), "{out}");
}

/// With S3 state, Terraform units keep their state in the same bucket
/// (Terraform's own `s3` backend, one key per environment and unit,
/// `use_lockfile`): outputs reach dependents, and a second Terraform
/// working on the same state meets Terraform's lock.
#[test]
fn terraform_units_keep_their_state_in_the_bucket_with_terraforms_lock() {
    let Some(s3) =
        Seaweed::start("terraform_units_keep_their_state_in_the_bucket_with_terraforms_lock")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                &s3_yaml(&s3, "tfs3").replace("layers: [apps]", "layers: [infra, apps]"),
            ),
            ("infra/net/unit.yaml", "layer: infra\nkind: terraform\n"),
            (
                "infra/net/main.tf",
                "output \"cidr\" {\n  value = \"10.7.0.0/16\"\n}\noutput \"token\" {\n  value     = \"tf-sensitive-8841\"\n  sensitive = true\n}\n",
            ),
            (
                "apps/cfg/unit.yaml",
                "layer: apps\nkind: template\ninputs:\n  cidr: ${unit.net.outputs.cidr}\n",
            ),
            ("apps/cfg/templates/net.txt.j2", "{{ cidr }}\n"),
        ],
    );
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let tfstate = s3
        .raw("backups", "state/tfs3/default/terraform/net.tfstate")
        .expect("Terraform's state is in the bucket");
    assert!(String::from_utf8_lossy(&tfstate).contains("\"terraform_version\""));
    assert!(
        std::fs::read_to_string(d.join(".terrace/generated/default/cfg/net.txt"))
            .expect("the dependent rendered")
            .contains("10.7.0.0/16")
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // While terrace applies (a slow provisioner), Terraform itself, on
    // the same module and backend, meets the lock file in the bucket.
    write_files(
        d,
        &[(
            "infra/net/slow.tf",
            "resource \"terraform_data\" \"slow\" {\n  provisioner \"local-exec\" {\n    command = \"sleep 33\"\n  }\n}\n",
        )],
    );
    let mut child = std_command(d)
        .args(["apply", "--unit", "net"])
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("terrace runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::process::Command::new("pgrep")
        .args(["-f", "sleep 33"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty())
    {
        assert!(
            Instant::now() < deadline && child.try_wait().expect("wait").is_none(),
            "the slow apply never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let other = tempfile::tempdir().expect("tempdir");
    for f in ["main.tf", "slow.tf", "terrace_backend_override.tf.json"] {
        std::fs::copy(d.join("infra/net").join(f), other.path().join(f)).expect("copy");
    }
    let terraform = |args: &[&str]| {
        std::process::Command::new("terraform")
            .args(args)
            .current_dir(other.path())
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_CLI_CONFIG_FILE", "")
            .output()
            .expect("terraform runs")
    };
    let o = terraform(&["init", "-input=false", "-no-color"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = terraform(&["plan", "-input=false", "-no-color", "-lock-timeout=0s"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 33"])
        .status();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("Error acquiring the state lock"), "{err}");
}

/// Without keys in the environment, they come from the AWS shared files'
/// profile (`AWS_PROFILE`), as the AWS tools find them; a profile that
/// is not there is named in the error.
#[test]
fn s3_credentials_come_from_the_shared_profile() {
    let Some(s3) = Seaweed::start("s3_credentials_come_from_the_shared_profile") else {
        return;
    };
    let dir = project(&s3, "profile", 1);
    let aws = tempfile::tempdir().expect("tempdir");
    let credentials = aws.path().join("credentials");
    let config = aws.path().join("config");
    let with_profile = |profile: &str| {
        std_command(dir.path())
            .arg("apply")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_PROFILE", profile)
            .output()
            .expect("terrace runs")
    };
    std::fs::write(
        &config,
        "[default]\nregion = eu-west-1\n\n[profile ci]\nregion = us-east-1\n",
    )
    .expect("config");
    // The control: a profile with a wrong secret is refused by the store.
    std::fs::write(
        &credentials,
        format!("[ci]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = not-the-secret\n"),
    )
    .expect("credentials");
    let o = with_profile("ci");
    assert_ne!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[ci]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = {S3_SECRET}\n"
        ),
    )
    .expect("credentials");
    let o = with_profile("ci");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = with_profile("staging");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("profile `staging`"), "{out}");
}

/// The bucket's server stopped while a Terraform unit applies: the run
/// fails, no record is written, and once the server is back the next
/// apply (taking over the dead run's locks, terrace's and Terraform's)
/// converges.
#[test]
fn s3_stopped_in_the_middle_of_an_apply_fails_cleanly_and_the_next_apply_converges() {
    let Some(mut s3) = Seaweed::start(
        "s3_stopped_in_the_middle_of_an_apply_fails_cleanly_and_the_next_apply_converges",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                &s3_yaml(&s3, "stopped").replace("layers: [apps]", "layers: [infra]"),
            ),
            ("infra/slow/unit.yaml", "layer: infra\nkind: terraform\n"),
            ("infra/slow/main.tf", &crate::state_etcd::slow_tf(14)),
        ],
    );
    let keys = [
        ("AWS_ACCESS_KEY_ID", S3_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
    ];
    let (child, log) = crate::state_etcd::start_slow_apply(dir.path(), 14, &keys);
    s3.kill();
    let stopped = Instant::now();
    let o = child.wait_with_output().expect("apply ends");
    let out = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("apply.err")).unwrap_or_default()
    );
    assert_ne!(code(&o), 0, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{}", s3.s3_port)),
        "the error names the store: {out}"
    );
    // Terraform's own retries take about a minute; terrace's add at most
    // 20s (object_store's default would retry for three minutes).
    assert!(
        stopped.elapsed() < Duration::from_secs(150),
        "the apply failed only {:?} after the store stopped",
        stopped.elapsed()
    );
    s3.run();
    assert!(
        s3.raw("backups", "state/stopped/default/units/slow.json")
            .is_none(),
        "no record was written"
    );
    write_files(
        dir.path(),
        &[(
            "infra/slow/main.tf",
            "resource \"terraform_data\" \"slow\" {}\n",
        )],
    );
    let o = run(dir.path(), &["apply", "--lock-timeout", "30"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = run(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unchanged"), "{}", stdout(&o));
}
