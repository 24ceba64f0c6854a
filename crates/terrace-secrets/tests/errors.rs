//! Each way a secrets file can fail gets its own error, naming the file and,
//! where there is one, the key path.

use std::path::Path;

use terrace_secrets::config::Settings;
use terrace_secrets::{Format, Keyring, Recipient, SecretsError, encrypt, open};

fn ring_with_new_key() -> (Keyring, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let mut ring = Keyring::empty();
    use age::secrecy::ExposeSecret;
    ring.add_key_text(id.to_string().expose_secret(), "test", Path::new("test"))
        .expect("key text");
    (ring, public)
}

fn to(public: &str) -> Settings {
    Settings {
        recipients: vec![Recipient::parse(public).expect("recipient")],
        ..Settings::default()
    }
}

fn sample() -> (Keyring, String) {
    let (ring, public) = ring_with_new_key();
    let settings = to(&public);
    let text = encrypt(
        "db:\n  password: hunter2\n  user: admin\n",
        Path::new("s.yaml"),
        Format::Yaml,
        &settings,
    )
    .expect("encrypts");
    (ring, text)
}

#[test]
fn a_tampered_value_names_its_path() {
    let (ring, text) = sample();
    // Swap the two encrypted values: each is still a valid ENC[] string,
    // but bound to the other key path.
    let lines: Vec<&str> = text.lines().collect();
    let pw = lines[1].trim_start().trim_start_matches("password: ");
    let user = lines[2].trim_start().trim_start_matches("user: ");
    let swapped = text
        .replacen(pw, "@@PW@@", 1)
        .replacen(user, pw, 1)
        .replacen("@@PW@@", user, 1);
    let err = open(&swapped, Path::new("s.yaml"), Format::Yaml, &ring).expect_err("tampered");
    assert!(
        matches!(&err, SecretsError::Tampered { path, .. } if path == "db.password"),
        "{err}"
    );
    assert!(err.to_string().contains("s.yaml"));
}

#[test]
fn a_changed_plain_value_fails_the_mac() {
    let (ring, public) = ring_with_new_key();
    let settings = to(&public);
    let text = encrypt(
        "name_unencrypted: a\nkey: b\n",
        Path::new("m.yaml"),
        Format::Yaml,
        &settings,
    )
    .expect("encrypts");
    let edited = text.replace("name_unencrypted: a", "name_unencrypted: z");
    let err = open(&edited, Path::new("m.yaml"), Format::Yaml, &ring).expect_err("mac");
    assert!(matches!(err, SecretsError::MacMismatch { .. }), "{err}");
}

#[test]
fn a_wrong_key_lists_the_recipients() {
    let (_, text) = sample();
    let (other, other_public) = ring_with_new_key();
    let err = open(&text, Path::new("s.yaml"), Format::Yaml, &other).expect_err("wrong key");
    let SecretsError::WrongKey {
        recipients, tried, ..
    } = &err
    else {
        panic!("expected WrongKey, got {err}")
    };
    assert_eq!(recipients.len(), 1);
    assert_eq!(tried, &vec![other_public]);
    assert!(err.hint().is_some());
}

#[test]
fn no_key_at_all_says_where_it_looked() {
    let (_, text) = sample();
    let ring = Keyring::load(&terrace_secrets::KeySources {
        default_file: Some("/nonexistent/keys.txt".into()),
        ..Default::default()
    })
    .expect("loads nothing");
    let err = open(&text, Path::new("s.yaml"), Format::Yaml, &ring).expect_err("no key");
    assert!(
        matches!(&err, SecretsError::NoIdentities { searched, .. } if searched == &vec!["/nonexistent/keys.txt".to_string()]),
        "{err}"
    );
}

#[test]
fn truncated_files_are_reported_as_damage() {
    let (ring, text) = sample();
    // Cut before the metadata, in the middle of the age armor, and in the
    // middle of a value.
    let before_meta = &text[..text.find("sops:").expect("metadata")];
    let mid_armor = &text[..text.find("-----END").expect("armor end")];
    let mid_value = {
        let i = text.find("iv:").expect("a value");
        format!(
            "{}]\n{}",
            &text[..i + 10],
            &text[text.find("sops:").expect("metadata")..]
        )
    };
    for (what, cut) in [
        ("before metadata", before_meta.to_string()),
        ("mid armor", mid_armor.to_string()),
    ] {
        let err = open(&cut, Path::new("s.yaml"), Format::Yaml, &ring).expect_err(what);
        assert!(
            matches!(err, SecretsError::Truncated { .. }),
            "{what}: {err}"
        );
    }
    let err = open(&mid_value, Path::new("s.yaml"), Format::Yaml, &ring).expect_err("cut value");
    assert!(
        matches!(&err, SecretsError::BadValue { path, .. } if path == "db.password"),
        "{err}"
    );
    // JSON cut short does not parse at all.
    let (ring2, public) = ring_with_new_key();
    let settings = to(&public);
    let json = encrypt(
        r#"{"a": "b"}"#,
        Path::new("s.json"),
        Format::Json,
        &settings,
    )
    .expect("json");
    let err = open(
        &json[..json.len() / 2],
        Path::new("s.json"),
        Format::Json,
        &ring2,
    )
    .expect_err("cut json");
    assert!(matches!(err, SecretsError::Truncated { .. }), "{err}");
}

#[test]
fn a_plain_file_is_not_a_sops_file() {
    let (ring, _) = ring_with_new_key();
    let err = open("a: 1\n", Path::new("p.yaml"), Format::Yaml, &ring).expect_err("plain");
    assert!(matches!(err, SecretsError::NotEncrypted { .. }), "{err}");
}
