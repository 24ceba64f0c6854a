//! `kind: helm` through the binary, with the real helm binary: the
//! conformance corpus (`crates/terrace-drivers/tests/helm`, expected
//! outputs made by `helm template` through its `make_cases.py`), values
//! that hold secrets, and remote charts pinned in terrace.lock.
//!
//! Each test needs helm (`TERRACE_HELM`, `helm` on the PATH, or where
//! `scripts/setup-tools.sh` installs it) and says it is skipped without.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{code, command, repo_root, stderr, stdout, write_files};

/// The helm binary the tests run, or `None` (the test says it skips).
pub fn helm(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TERRACE_HELM").map(PathBuf::from),
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|c| c.is_file())
        }),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/terrace-tools/bin/helm")),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            eprintln!(
                "skipped {test}: no helm binary (set TERRACE_HELM, or run scripts/setup-tools.sh)"
            );
            None
        }
    }
}

/// terrace with `helm` as its helm binary.
pub fn terrace_helm(dir: &Path, helm: &Path, args: &[&str]) -> std::process::Output {
    command(dir)
        .env("TERRACE_HELM", helm)
        .args(args)
        .output()
        .expect("terrace runs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The objects of a YAML stream, empty documents left out.
fn objects_of(yaml: &str) -> Vec<Value> {
    terrace_yaml::tree::parse_stream_with(yaml, Path::new("x"), terrace_yaml::tree::Schema::Kyaml)
        .expect("valid YAML")
        .iter()
        .map(terrace_yaml::tree::Node::to_json)
        .filter(|v| v.is_object() && v.as_object().is_some_and(|m| !m.is_empty()))
        .collect()
}

fn id(v: &Value) -> String {
    format!(
        "{} {} {}",
        v["apiVersion"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// A demo age key (`keys/demo.agekey`, which [`command`] hands to
/// terrace) and a `.sops.yaml` sealing every file to it.
pub fn with_demo_key(root: &Path) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    write_files(
        root,
        &[
            ("keys/demo.agekey", identity.to_string().expose_secret()),
            (
                ".sops.yaml",
                &format!("creation_rules:\n  - age: {}\n", identity.to_public()),
            ),
        ],
    );
}

/// The objects of rendered documents, sealed ones decrypted by `terrace
/// secrets decrypt`.
fn open_documents(root: &Path, out: &Value) -> Vec<Value> {
    let mut objects = Vec::new();
    for (i, d) in out["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .enumerate()
    {
        let content = d["content"].as_str().expect("content");
        if content.contains("\nsops:\n") {
            let rel = format!("sealed-{i}.yaml");
            std::fs::write(root.join(&rel), content).expect("write");
            let o = command(root)
                .args(["secrets", "decrypt", &rel])
                .output()
                .expect("runs");
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            objects.extend(objects_of(&stdout(&o)));
        } else {
            objects.extend(objects_of(content));
        }
    }
    objects
}

/// The directories of `dir` that hold `marker`, sorted.
fn case_dirs(dir: &Path, marker: &str) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("cases")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join(marker).is_file())
        .collect();
    cases.sort();
    cases
}

/// What a case renders, as terrace renders it.
fn render_case(helm: &Path, case: &Path) -> Result<Vec<Value>, String> {
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.yaml")).expect("case.yaml"))
            .expect("case.yaml is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&case.join("chart"), &dir.path().join("apps/rel/chart"));
    let mut block = json!({
        "chart": "./chart",
        "releaseName": settings["releaseName"],
        "namespace": settings["namespace"],
    });
    for key in ["includeCRDs", "kubeVersion", "apiVersions", "values"] {
        if !settings[key].is_null() {
            block[key] = settings[key].clone();
        }
    }
    let unit = json!({"layer": "apps", "kind": "helm", "helm": block});
    with_demo_key(dir.path());
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                "name: corpus\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            ("apps/rel/unit.yaml", &unit.to_string()),
        ],
    );
    let o = terrace_helm(dir.path(), helm, &["render", "rel", "--output", "json"]);
    if code(&o) != 0 {
        return Err(format!("{}{}", stdout(&o), stderr(&o)));
    }
    let out: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    Ok(open_documents(dir.path(), &out))
}

/// Every case of the corpus: the objects terrace would apply are the
/// objects `helm template` printed for the same chart and values (test
/// hooks left out: terrace never applies them), in the same order.
#[test]
fn conformance_corpus_matches_helm_template() {
    let Some(helm) = helm("conformance_corpus_matches_helm_template") else {
        return;
    };
    let cases = case_dirs(
        &repo_root().join("crates/terrace-drivers/tests/helm/cases"),
        "case.yaml",
    );
    assert!(cases.len() >= 15, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let expected: Vec<Value> = objects_of(
            &std::fs::read_to_string(case.join("expected.yaml")).expect("expected.yaml"),
        )
        .into_iter()
        .filter(|v| {
            let hooks = v["metadata"]["annotations"]["helm.sh/hook"]
                .as_str()
                .unwrap_or("");
            !hooks.split(',').any(|h| h.trim().starts_with("test"))
        })
        .collect();
        match render_case(&helm, case) {
            Err(e) => failures.push(format!("{name}: terrace failed: {e}")),
            Ok(got) if got == expected => {}
            Ok(got) => {
                let g: Vec<String> = got.iter().map(id).collect();
                let e: Vec<String> = expected.iter().map(id).collect();
                let first = got
                    .iter()
                    .zip(&expected)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("\n  terrace: {a}\n  helm:    {b}"))
                    .unwrap_or_default();
                failures.push(format!(
                    "{name}: objects differ\n  terrace: {g:?}\n  helm:    {e:?}{first}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every file under `root` except the key, as text.
fn all_files(root: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(root).expect("read") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if entry.file_type().expect("type").is_dir() {
            all_files(&path, out);
        } else if !path.ends_with("keys/demo.agekey") {
            let bytes = std::fs::read(&path).expect("read");
            out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
}

/// Values from a SOPS-encrypted values file and from `${secret...}` in
/// `values:` reach Helm (the objects hold them) but appear nowhere on
/// disk or in any output, in plain text or base64.
#[test]
fn secret_values_reach_helm_and_nothing_else() {
    let Some(helm) = helm("secret_values_reach_helm_and_nothing_else") else {
        return;
    };
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    with_demo_key(root);
    const PASSWORD: &str = "pw-Zq8vLk3mNw";
    const TOKEN: &str = "tok-Hx5rTy9pQs";
    write_files(
        root,
        &[
            (
                "terrace.yaml",
                "name: hs\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            (
                "apps/db/unit.yaml",
                "layer: apps\nkind: helm\nhelm:\n  chart: ./chart\n  valuesFiles: [values.yaml, secret-values.yaml]\n  values:\n    token: ${secret.secrets/app.yaml#token}\n",
            ),
            ("apps/db/values.yaml", "replicas: 2\n"),
            (
                "apps/db/secret-values.yaml",
                &format!("password: {PASSWORD}\n"),
            ),
            ("secrets/app.yaml", &format!("token: {TOKEN}\n")),
            (
                "apps/db/chart/Chart.yaml",
                "apiVersion: v2\nname: db\nversion: 0.1.0\n",
            ),
            (
                "apps/db/chart/values.yaml",
                "replicas: 1\npassword: \"\"\ntoken: \"\"\n",
            ),
            (
                "apps/db/chart/templates/config.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-config\ndata:\n  encoded: {{ .Values.password | b64enc | quote }}\n  replicas: {{ .Values.replicas | quote }}\n",
            ),
            (
                "apps/db/chart/templates/plain.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-plain\ndata:\n  replicas: {{ .Values.replicas | quote }}\n",
            ),
            (
                "apps/db/chart/templates/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-token\nstringData:\n  token: {{ .Values.token | quote }}\n",
            ),
        ],
    );
    for file in ["apps/db/secret-values.yaml", "secrets/app.yaml"] {
        let o = command(root)
            .args(["secrets", "encrypt", "-i", file])
            .output()
            .expect("runs");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let mut printed = String::new();
    for args in [
        &["plan"][..],
        &["plan", "--output", "json"],
        &["apply"],
        &["plan", "--output", "json"],
        &["render", "db"],
        &["render", "db", "--output", "json"],
    ] {
        let o = terrace_helm(root, &helm, args);
        assert!(
            code(&o) == 0 || code(&o) == 2,
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        printed.push_str(&stdout(&o));
        printed.push_str(&stderr(&o));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    let mut files = Vec::new();
    all_files(root, &mut files);
    for secret in [PASSWORD, TOKEN, encoded.as_str()] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        for (path, text) in &files {
            assert!(!text.contains(secret), "{secret} in {}", path.display());
        }
    }
    // The values did reach Helm: the sealed objects hold them.
    let rendered = root.join(".terrace/rendered/default/k8s/db");
    let config =
        std::fs::read_to_string(rendered.join("v1_configmap_db-config.yaml")).expect("written");
    assert!(config.contains("ENC["), "sealed: {config}");
    let o = command(root)
        .args([
            "secrets",
            "decrypt",
            ".terrace/rendered/default/k8s/db/v1_configmap_db-config.yaml",
        ])
        .output()
        .expect("runs");
    assert!(
        stdout(&o).contains(&encoded),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("replicas: \"2\""), "{}", stdout(&o));
    let o = command(root)
        .args([
            "secrets",
            "decrypt",
            ".terrace/rendered/default/k8s/db/v1_secret_db-token.yaml",
        ])
        .output()
        .expect("runs");
    assert!(stdout(&o).contains(TOKEN), "{}{}", stdout(&o), stderr(&o));
    // Only what a secret reaches is sealed: the ConfigMap that does not
    // use one is written, and planned, in the clear.
    let plain =
        std::fs::read_to_string(rendered.join("v1_configmap_db-plain.yaml")).expect("written");
    assert!(
        !plain.contains("ENC[") && plain.contains("replicas: \"2\""),
        "{plain}"
    );
    // Nothing of it was kept by the render cache.
    assert!(!root.join(".terrace/cache/default/helm/db.json").exists());
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A server the test started, on a port of 127.0.0.1, in a process group
/// of its own; the whole group is stopped when dropped (`git daemon`
/// runs `git-daemon` as a child, which outlives a kill of its parent).
#[derive(Default)]
pub struct Server {
    child: Option<std::process::Child>,
}

impl Server {
    /// Runs `cmd` and waits until `port` takes connections.
    pub fn start(&mut self, mut cmd: std::process::Command, port: u16) {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the server runs");
        self.child = Some(child);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{cmd:?} listens on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes chart `widgets` at `version` under `dir` and packages it there
/// with helm (private homes); the archive, and a way to run helm the
/// same way.
fn package_widgets(helm: &Path, dir: &Path, version: &str) -> (PathBuf, impl Fn(&[&str])) {
    let src = dir.join(format!("src-{version}"));
    write_files(
        &src,
        &[
            (
                "widgets/Chart.yaml",
                &format!("apiVersion: v2\nname: widgets\nversion: {version}\n"),
            ),
            (
                "widgets/templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n  labels:\n    chart: {{ .Chart.Version | quote }}\n",
            ),
        ],
    );
    let homes = src.join("homes");
    let helm = helm.to_owned();
    let run = move |args: &[&str]| {
        let o = std::process::Command::new(&helm)
            .args(args)
            .env("HELM_CACHE_HOME", homes.join("c"))
            .env("HELM_CONFIG_HOME", homes.join("f"))
            .env("HELM_DATA_HOME", homes.join("d"))
            .output()
            .expect("helm runs");
        assert_eq!(code(&o), 0, "helm {args:?}: {}", stderr(&o));
    };
    let dest = src.display().to_string();
    run(&[
        "package",
        &src.join("widgets").display().to_string(),
        "--destination",
        &dest,
    ]);
    (src.join(format!("widgets-{version}.tgz")), run)
}

/// A chart repository served over HTTP by Python's http.server.
pub(crate) struct Repo {
    dir: tempfile::TempDir,
    port: u16,
    server: Server,
}

impl Repo {
    pub(crate) fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            server: Server::default(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Packages chart `widgets` at `version` into the repository and
    /// indexes it.
    pub(crate) fn publish(&self, helm: &Path, version: &str) {
        let scratch = tempfile::tempdir().expect("tempdir");
        let (archive, run) = package_widgets(helm, scratch.path(), version);
        std::fs::copy(
            &archive,
            self.dir.path().join(archive.file_name().expect("name")),
        )
        .expect("copy");
        run(&[
            "repo",
            "index",
            &self.dir.path().display().to_string(),
            "--url",
            &self.url(),
        ]);
    }

    pub(crate) fn start(&mut self) {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "-d",
        ])
        .arg(self.dir.path());
        self.server.start(cmd, self.port);
    }

    fn stop(&mut self) {
        self.server.stop();
    }
}

/// With chart `widgets` pinned at 1.0.0 and 1.1.0 published: plans hold
/// the pin, `terrace charts update` moves it, and the plan says so.
fn assert_pin_moves_when_asked(root: &Path, helm: &Path) {
    let o = terrace_helm(root, helm, &["plan"]);
    assert_eq!(code(&o), 0, "the pin holds: {}{}", stdout(&o), stderr(&o));
    let o = terrace_helm(root, helm, &["charts", "update"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("widgets: 1.0.0 → 1.1.0"),
        "{}",
        stdout(&o)
    );
    let o = terrace_helm(root, helm, &["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).expect("json");
    let notes = plan["units"][0]["notes"].to_string();
    assert!(notes.contains("chart widgets: 1.0.0 → 1.1.0"), "{notes}");
}

/// A chart from an HTTP repository is pulled once, pinned in terrace.lock
/// and cached by digest: later plans work with the repository gone, a
/// newer version in the repository changes nothing until `terrace charts
/// update` moves the pin, and the plan then shows the version change.
#[test]
fn remote_charts_are_pinned_cached_and_updated() {
    let Some(helm) = helm("remote_charts_are_pinned_cached_and_updated") else {
        return;
    };
    let mut repo = Repo::new();
    repo.publish(&helm, "1.0.0");
    repo.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_files(
        root,
        &[
            (
                "terrace.yaml",
                "name: hr\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            (
                "apps/w/unit.yaml",
                &format!(
                    "layer: apps\nkind: helm\nhelm:\n  repo: {}\n  chart: widgets\n  version: \"1.x\"\n",
                    repo.url()
                ),
            ),
        ],
    );
    let o = terrace_helm(root, &helm, &["plan", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).expect("json");
    let notes = plan["units"][0]["notes"].to_string();
    assert!(
        notes.contains("chart widgets 1.0.0 pinned in terrace.lock"),
        "{notes}"
    );
    let lock = std::fs::read_to_string(root.join("terrace.lock")).expect("lock written");
    assert!(
        lock.contains("version: \"1.0.0\"") && lock.contains("constraint: 1.x"),
        "{lock}"
    );
    let o = terrace_helm(root, &helm, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Offline: the pinned archive is in the cache.
    repo.stop();
    let o = terrace_helm(root, &helm, &["plan"]);
    assert_eq!(code(&o), 0, "planned offline: {}{}", stdout(&o), stderr(&o));

    // A newer version is published: the pin holds until it is moved.
    repo.publish(&helm, "1.1.0");
    repo.start();
    assert_pin_moves_when_asked(root, &helm);

    // A cached archive that was changed is refused (its digest), then
    // pulled again and checked against the pin.
    let lock = std::fs::read_to_string(root.join("terrace.lock")).expect("lock");
    let digest = lock
        .lines()
        .find_map(|l| l.trim().strip_prefix("digest: sha256:"))
        .expect("a digest")
        .to_owned();
    let cached = root.join(format!(".terrace/charts/{digest}.tgz"));
    assert!(cached.is_file());
    std::fs::write(&cached, b"tampered").expect("write");
    let o = terrace_helm(root, &helm, &["plan"]);
    assert_eq!(code(&o), 2, "pulled again: {}{}", stdout(&o), stderr(&o));
    assert_ne!(std::fs::read(&cached).expect("cached"), b"tampered");
}

/// `helmCharts` in kustomizations (kustomize's HelmChartInflationGenerator
/// with `--enable-helm`): each case under `tests/cli/kustomize_helm` builds
/// to the objects kubectl's kustomize printed (`make_expected.sh`), and
/// without `--enable-helm` the build is refused; a `kustomize` unit renders
/// the same objects.
#[test]
fn kustomize_helm_charts_match_kubectl_kustomize() {
    let Some(helm) = helm("kustomize_helm_charts_match_kubectl_kustomize") else {
        return;
    };
    let cases = repo_root().join("crates/terrace/tests/cli/kustomize_helm");
    let names = case_dirs(&cases, "expected.yaml");
    assert_eq!(names.len(), 3);
    for case in &names {
        let dir = if case.join("kustomization.yaml").is_file() {
            case.clone()
        } else {
            case.join("prod")
        };
        let o = terrace_helm(
            &cases,
            &helm,
            &[
                "kustomize",
                "build",
                "--enable-helm",
                &dir.display().to_string(),
            ],
        );
        assert_eq!(code(&o), 0, "{}: {}", case.display(), stderr(&o));
        let expected =
            objects_of(&std::fs::read_to_string(case.join("expected.yaml")).expect("expected"));
        let got = objects_of(&stdout(&o));
        assert_eq!(got, expected, "{}", case.display());
    }
    let o = terrace_helm(
        &cases,
        &helm,
        &[
            "kustomize",
            "build",
            &cases.join("inline-override").display().to_string(),
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("--enable-helm"), "{}", stderr(&o));

    // A kustomize unit has Helm.
    let project = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &cases.join("inline-override"),
        &project.path().join("apps/charted"),
    );
    std::fs::remove_file(project.path().join("apps/charted/expected.yaml")).expect("rm");
    write_files(
        project.path(),
        &[
            (
                "terrace.yaml",
                "name: kh\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            ("apps/charted/unit.yaml", "layer: apps\nkind: kustomize\n"),
        ],
    );
    let o = terrace_helm(
        project.path(),
        &helm,
        &["render", "charted", "--output", "json"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).expect("json");
    let expected = objects_of(
        &std::fs::read_to_string(cases.join("inline-override/expected.yaml")).expect("expected"),
    );
    assert_eq!(open_documents(project.path(), &out), expected);
}

/// A small project with one helm unit `h` (chart `apps/h/chart`) and the
/// settings block `settings`.
fn hostile_project(settings: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                "name: hh\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            (
                "apps/h/unit.yaml",
                &format!("layer: apps\nkind: helm\nhelm:\n{settings}"),
            ),
            (
                "apps/h/chart/Chart.yaml",
                "apiVersion: v2\nname: h\nversion: 0.1.0\n",
            ),
            (
                "apps/h/chart/templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: h\ndata:\n  v: {{ .Values.v | default \"x\" | quote }}\n",
            ),
        ],
    );
    dir
}

/// What a hostile repository tries with a helm unit: charts and values
/// files outside the project (by path or symlink), a bad release name, an
/// unknown setting, a broken lock file, an alias bomb in a template. Each
/// is refused, naming the file, and nothing outside is read.
#[test]
fn hostile_helm_units_are_refused() {
    let Some(helm) = helm("hostile_helm_units_are_refused") else {
        return;
    };
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("values.yaml"), "v: outside-value-7Kq\n").expect("write");
    std::fs::write(
        outside.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stolen\ndata:\n  v: outside-template-3Jd\n",
    )
    .expect("write");
    let refused = |dir: &Path, needle: &str| {
        let o = terrace_helm(dir, &helm, &["plan"]);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(code(&o), 1, "{all}");
        assert!(all.contains(needle), "expected `{needle}` in:\n{all}");
        assert!(
            !all.contains("outside-value-7Kq") && !all.contains("outside-template-3Jd"),
            "{all}"
        );
        assert!(
            !dir.join(".terrace/rendered").exists()
                || std::fs::read_dir(dir.join(".terrace/rendered"))
                    .expect("dir")
                    .next()
                    .is_none()
        );
    };
    // A chart directory outside the project.
    let d = hostile_project("  chart: ../../../../../../../../tmp\n");
    refused(d.path(), "leads outside the project");
    // A template symlinked to a file outside: refused before Helm runs.
    let d = hostile_project("  chart: ./chart\n");
    std::os::unix::fs::symlink(
        outside.path().join("cm.yaml"),
        d.path().join("apps/h/chart/templates/stolen.yaml"),
    )
    .expect("symlink");
    refused(d.path(), "apps/h/chart/templates/stolen.yaml");
    // A values file outside, by path and by symlink.
    let d =
        hostile_project("  chart: ./chart\n  valuesFiles: [../../../../../../../../tmp/v.yaml]\n");
    refused(d.path(), "leads outside the project");
    let d = hostile_project("  chart: ./chart\n  valuesFiles: [values.yaml]\n");
    std::os::unix::fs::symlink(
        outside.path().join("values.yaml"),
        d.path().join("apps/h/values.yaml"),
    )
    .expect("symlink");
    refused(d.path(), "apps/h/values.yaml");
    // Names Helm would refuse, and settings that do not exist.
    let d = hostile_project("  chart: ./chart\n  releaseName: Bad_Name\n");
    refused(d.path(), "release name `Bad_Name`");
    let d = hostile_project("  chart: ./chart\n  valueFiles: [x.yaml]\n");
    refused(d.path(), "unknown field `valueFiles`");
    // A lock file that is not one.
    let d = hostile_project("  repo: http://127.0.0.1:9/charts\n  chart: x\n");
    std::fs::write(d.path().join("terrace.lock"), "charts: {not: a list}\n").expect("write");
    refused(d.path(), "terrace.lock");
    // An alias bomb in a template: refused, quickly.
    let d = hostile_project("  chart: ./chart\n");
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    std::fs::write(d.path().join("apps/h/chart/templates/bomb.yaml"), bomb).expect("write");
    refused(d.path(), "alias");
}

/// The CNCF distribution registry (Debian's `docker-registry`) on
/// 127.0.0.1, storing in a temporary directory.
pub(crate) struct Registry {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    binary: PathBuf,
    server: Server,
}

impl Registry {
    pub(crate) fn new(binary: &Path) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("write");
        Registry {
            dir,
            port,
            binary: binary.to_owned(),
            server: Server::default(),
        }
    }

    /// Serves (again: the same port and storage).
    pub(crate) fn start(&mut self) {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("serve").arg(self.dir.path().join("config.yml"));
        self.server.start(cmd, self.port);
    }

    fn stop(&mut self) {
        self.server.stop();
    }

    /// Packages chart `widgets` at `version` and pushes it to `charts/`.
    pub(crate) fn push(&self, helm: &Path, version: &str) {
        let (archive, run) = package_widgets(helm, self.dir.path(), version);
        let url = format!("oci://127.0.0.1:{}/charts", self.port);
        run(&["push", &archive.display().to_string(), &url, "--plain-http"]);
    }
}

/// A chart from an OCI registry (the real distribution registry, over
/// plain HTTP): pulled by its constraint, pinned with `plainHttp`,
/// planned offline, and moved by `terrace charts update`.
#[test]
fn oci_charts_are_pinned_and_updated() {
    const TEST: &str = "oci_charts_are_pinned_and_updated";
    let Some(helm) = helm(TEST) else {
        return;
    };
    let Some(registry_bin) = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!(
            "skipped {TEST}: no docker-registry (Debian package docker-registry; scripts/setup-tools.sh installs it)"
        );
        return;
    };
    let mut registry = Registry::new(&registry_bin);
    registry.start();
    registry.push(&helm, "1.0.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_files(
        root,
        &[
            (
                "terrace.yaml",
                "name: ho\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            (
                "apps/w/unit.yaml",
                &format!(
                    "layer: apps\nkind: helm\nhelm:\n  chart: oci://127.0.0.1:{}/charts/widgets\n  version: \"^1.0.0\"\n  plainHttp: true\n",
                    registry.port
                ),
            ),
        ],
    );
    let o = terrace_helm(root, &helm, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let lock = std::fs::read_to_string(root.join("terrace.lock")).expect("lock written");
    assert!(
        lock.contains(&format!("source: oci://127.0.0.1:{}/charts", registry.port))
            && lock.contains("version: \"1.0.0\"")
            && lock.contains("plainHttp: true"),
        "{lock}"
    );
    let rendered =
        std::fs::read_to_string(root.join(".terrace/rendered/default/k8s/w/v1_configmap_w.yaml"))
            .expect("rendered");
    assert!(rendered.contains("chart: \"1.0.0\""), "{rendered}");

    // Offline: the pin is in the cache.
    registry.stop();
    let o = terrace_helm(root, &helm, &["plan"]);
    assert_eq!(code(&o), 0, "planned offline: {}{}", stdout(&o), stderr(&o));

    // A newer version: the pin moves only when asked.
    registry.start();
    registry.push(&helm, "1.1.0");
    assert_pin_moves_when_asked(root, &helm);
}
