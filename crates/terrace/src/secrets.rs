//! `terrace secrets …`: the sops workflows over `terrace-secrets`.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use serde_json::json;
use terrace_secrets::config::{self, Settings};
use terrace_secrets::rules::Rule;
use terrace_secrets::{Format, KeySources, Keyring, Node, Opened, Recipient, SecretsError};

use crate::cli::{
    DecryptArgs, EditArgs, EncryptArgs, FileArgs, MergeArgs, OutputFormat, RotateArgs,
    SecretsCommand, StatusArgs, UpdatekeysArgs,
};
use crate::diagnostics::CliError;
use crate::output::{err, errln, out, outln};

pub async fn run(cmd: &SecretsCommand, output: OutputFormat) -> Result<u8, CliError> {
    match cmd {
        SecretsCommand::Encrypt(a) => encrypt(a),
        SecretsCommand::Decrypt(a) => decrypt(a),
        SecretsCommand::Edit(a) => edit(a).await,
        SecretsCommand::Rotate(a) => rotate(a),
        SecretsCommand::Updatekeys(a) => updatekeys(a, output),
        SecretsCommand::Status(a) => status(a, output),
        SecretsCommand::MergeDriver(a) => merge_driver(a),
    }
}

fn format_of(args: &FileArgs) -> Result<Format, CliError> {
    match &args.input_type {
        None => Ok(Format::from_path(&args.file)),
        Some(t) => Format::parse(t).ok_or_else(|| {
            CliError::message(
                format!("unknown --input-type `{t}`"),
                Some("use yaml, json or dotenv".into()),
            )
        }),
    }
}

fn read(path: &Path) -> Result<String, CliError> {
    fs_err::read_to_string(path).map_err(|e| {
        CliError::from(SecretsError::Io {
            file: path.to_owned(),
            source: e,
        })
    })
}

/// Writes a file whole or not at all.
fn write(path: &Path, text: &str) -> Result<(), CliError> {
    terrace_fs::atomic::write(path, text.as_bytes(), terrace_fs::Mode::Shared).map_err(|e| {
        CliError::from(SecretsError::Io {
            file: path.to_owned(),
            source: e,
        })
    })
}

fn keyring() -> Result<Keyring, CliError> {
    Ok(Keyring::load(&KeySources::from_env())?)
}

fn open_file(path: &Path, format: Format, keys: &Keyring) -> Result<Opened, CliError> {
    let text = read(path)?;
    Ok(terrace_secrets::open(&text, path, format, keys)?)
}

/// Creation settings: `--age` and rule flags win; otherwise the nearest
/// `.sops.yaml` rule for the file.
fn settings_for(file: &Path, age: Option<&str>) -> Result<Settings, CliError> {
    if let Some(age) = age {
        return Ok(Settings {
            recipients: Recipient::parse_list(age)?,
            ..Settings::default()
        });
    }
    let cwd = std::env::current_dir()?;
    match config::find(&cwd) {
        Some(cfg) => Ok(config::settings_for(&cfg, file)?),
        None => Err(CliError::message(
            format!("no recipients for {}", file.display()),
            Some("pass --age age1…, or add a .sops.yaml with creation_rules (see `terrace secrets --help`)".into()),
        )),
    }
}

fn rule_from_flags(a: &EncryptArgs) -> Result<Option<Rule>, CliError> {
    let flags = [
        ("encrypted_regex", &a.encrypted_regex),
        ("unencrypted_regex", &a.unencrypted_regex),
        ("encrypted_suffix", &a.encrypted_suffix),
        ("unencrypted_suffix", &a.unencrypted_suffix),
        ("encrypted_comment_regex", &a.encrypted_comment_regex),
        ("unencrypted_comment_regex", &a.unencrypted_comment_regex),
    ];
    for (name, value) in flags {
        if let Some(v) = value {
            return Rule::from_parts(name, v)
                .map(Some)
                .map_err(|m| CliError::message(m, None));
        }
    }
    Ok(None)
}

fn encrypt(a: &EncryptArgs) -> Result<u8, CliError> {
    let format = format_of(&a.file)?;
    let path = &a.file.file;
    let text = read(path)?;
    let mut settings = settings_for(path, a.age.as_deref())?;
    if let Some(rule) = rule_from_flags(a)? {
        settings.rule = Some(rule);
    }
    settings.mac_only_encrypted |= a.mac_only_encrypted;
    let out = terrace_secrets::encrypt(&text, path, format, &settings)?;
    emit(path, &out, a.in_place)
}

fn emit(path: &Path, text: &str, in_place: bool) -> Result<u8, CliError> {
    if in_place {
        write(path, text)?;
    } else {
        out!("{text}");
    }
    Ok(0)
}

fn decrypt(a: &DecryptArgs) -> Result<u8, CliError> {
    let format = format_of(&a.file)?;
    let path = &a.file.file;
    let opened = open_file(path, format, &keyring()?)?;
    if let Some(extract) = &a.extract {
        let key = extract_path(extract);
        let value = opened.lookup(&key)?;
        match value {
            Node::Str(s) => outln!("{s}"),
            Node::Map(_) | Node::Seq(_) => {
                out!(
                    "{}",
                    terrace_yaml::tree::emit_stream(std::slice::from_ref(value), 4)
                )
            }
            other => outln!("{}", other.to_json()),
        }
        return Ok(0);
    }
    emit(path, &opened.plaintext()?, a.in_place)
}

/// `["a"]["b"][0]` (sops) or `a.b.0` to the dotted form.
fn extract_path(s: &str) -> String {
    if !s.starts_with('[') {
        return s.to_owned();
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .split("][")
        .map(|p| p.trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// A private directory for plaintext: in memory where the system has one.
fn private_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("terrace-edit-");
    // TempDir is created with mode 0700.
    if shm.is_dir()
        && let Ok(d) = builder.tempdir_in(shm)
    {
        return Ok(d);
    }
    builder.tempdir()
}

async fn edit(a: &EditArgs) -> Result<u8, CliError> {
    let format = format_of(&a.file)?;
    let path = a.file.file.clone();
    let keys = keyring()?;
    let existing = if path.exists() {
        Some(open_file(&path, format, &keys)?)
    } else {
        None
    };
    let plaintext = match &existing {
        Some(o) => o.plaintext()?,
        None => String::new(),
    };
    // Ctrl-C reaches the editor; terrace stays to clean up. The handler is
    // in place before the editor starts.
    #[cfg(unix)]
    let guard = {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupts = signal(SignalKind::interrupt())?;
        let mut terminations = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = interrupts.recv() => {}
                    _ = terminations.recv() => {}
                }
            }
        })
    };
    let result = edit_in_private_dir(&path, format, &plaintext, existing.as_ref());
    #[cfg(unix)]
    guard.abort();
    result
}

fn edit_in_private_dir(
    path: &Path,
    format: Format,
    plaintext: &str,
    existing: Option<&Opened>,
) -> Result<u8, CliError> {
    let dir = private_dir()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret".into());
    let temp = dir.path().join(name);
    write_private(&temp, plaintext)?;
    loop {
        run_editor(&temp)?;
        let edited = fs_err::read_to_string(&temp)?;
        let docs = match terrace_secrets::format::load(format, &edited, path) {
            Ok(d) => d,
            Err(e) => {
                let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
                errln!("error: {e}");
                if interactive && ask("edit again? [Y/n] ") {
                    continue;
                }
                return Err(CliError::message(
                    format!(
                        "{} was not changed: the edited text is not valid",
                        path.display()
                    ),
                    None,
                ));
            }
        };
        let text = match existing {
            Some(o) if !o.changed(&docs) => {
                errln!("{}: no changes", path.display());
                return Ok(0);
            }
            Some(o) => o.seal(&docs)?,
            None => {
                let settings = settings_for(path, None)?;
                terrace_secrets::encrypt(&edited, path, format, &settings)?
            }
        };
        write(path, &text)?;
        errln!("{}: encrypted", path.display());
        return Ok(0);
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn run_editor(file: &Path) -> Result<(), CliError> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    // Through the shell, so EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("terrace-editor")
        .arg(file)
        .status()
        .map_err(|e| {
            CliError::message(format!("could not start the editor `{editor}`: {e}"), None)
        })?;
    if !status.success() {
        return Err(CliError::message(
            format!("the editor `{editor}` exited with {status}; nothing was changed"),
            None,
        ));
    }
    Ok(())
}

fn ask(prompt: &str) -> bool {
    err!("{prompt}");
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return false;
    }
    !line.trim().eq_ignore_ascii_case("n")
}

fn rotate(a: &RotateArgs) -> Result<u8, CliError> {
    let format = format_of(&a.file)?;
    let path = &a.file.file;
    let opened = open_file(path, format, &keyring()?)?;
    let mut recipients = opened.current_recipients()?;
    if let Some(rm) = &a.rm_age {
        let remove: Vec<String> = Recipient::parse_list(rm)?
            .into_iter()
            .map(|r| r.text)
            .collect();
        recipients.retain(|r| !remove.contains(&r.text));
    }
    if let Some(add) = &a.add_age {
        for r in Recipient::parse_list(add)? {
            if !recipients.iter().any(|x| x.text == r.text) {
                recipients.push(r);
            }
        }
    }
    if recipients.is_empty() {
        return Err(CliError::message(
            "rotate would leave the file with no recipients",
            None,
        ));
    }
    let text = opened.rotate(Some(&recipients))?;
    emit(path, &text, a.in_place)
}

fn updatekeys(a: &UpdatekeysArgs, output: OutputFormat) -> Result<u8, CliError> {
    let keys = keyring()?;
    let mut changed_any = false;
    let mut report = Vec::new();
    for path in &a.files {
        let format = Format::from_path(path);
        let opened = open_file(path, format, &keys)?;
        let wanted = settings_for(path, None)?.recipients;
        let have: Vec<String> = opened
            .meta
            .age
            .iter()
            .map(|s| s.recipient.clone())
            .collect();
        let want: Vec<String> = wanted.iter().map(|r| r.text.clone()).collect();
        let added: Vec<&String> = want.iter().filter(|r| !have.contains(r)).collect();
        let removed: Vec<&String> = have.iter().filter(|r| !want.contains(r)).collect();
        let changes = !added.is_empty() || !removed.is_empty();
        changed_any |= changes;
        if changes && a.yes {
            write(path, &opened.rekey(&wanted)?)?;
        }
        if output != OutputFormat::Json {
            if !changes {
                outln!("{}: recipients up to date", path.display());
            }
            for r in &added {
                outln!("{}: + {r}", path.display());
            }
            for r in &removed {
                outln!("{}: - {r}", path.display());
            }
        }
        report.push(
            json!({"file": path, "added": added, "removed": removed, "written": changes && a.yes}),
        );
    }
    if output == OutputFormat::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"files": report})).expect("json")
        );
    } else if changed_any && !a.yes {
        outln!("\nRun again with --yes to write these changes.");
    }
    Ok(if changed_any && !a.yes { 2 } else { 0 })
}

fn status(a: &StatusArgs, output: OutputFormat) -> Result<u8, CliError> {
    let keys = keyring()?;
    let mut rows = Vec::new();
    let mut worst = 0;
    for path in &a.files {
        let format = Format::from_path(path);
        let text = read(path)?;
        let encrypted = terrace_secrets::is_encrypted(&text, format, path);
        let mut row = json!({
            "file": path,
            "format": format!("{format:?}").to_lowercase(),
            "encrypted": encrypted,
        });
        if encrypted {
            match terrace_secrets::open(&text, path, format, &keys) {
                Ok(o) => {
                    let (rule, value) = o.meta.rule.parts();
                    row["recipients"] =
                        json!(o.meta.age.iter().map(|s| &s.recipient).collect::<Vec<_>>());
                    row["canDecrypt"] = json!(true);
                    row["macValid"] = json!(true);
                    row["rule"] = json!({ rule: value });
                    row["macOnlyEncrypted"] = json!(o.meta.mac_only_encrypted);
                    row["lastModified"] = json!(o.meta.lastmodified);
                }
                Err(e) => {
                    worst = 1;
                    row["canDecrypt"] = json!(false);
                    row["error"] = json!(e.to_string());
                }
            }
        }
        rows.push(row);
    }
    if output == OutputFormat::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"files": rows})).expect("json")
        );
    } else {
        for r in &rows {
            let file = r["file"].as_str().unwrap_or_default();
            if r["encrypted"] == json!(false) {
                outln!("{file}: not encrypted");
            } else if let Some(err) = r["error"].as_str() {
                outln!("{file}: cannot decrypt: {err}");
            } else {
                let recipients = r["recipients"].as_array().map_or(0, Vec::len);
                outln!(
                    "{file}: encrypted to {recipients} recipient{}, you can decrypt it, MAC valid, last modified {}",
                    if recipients == 1 { "" } else { "s" },
                    r["lastModified"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(worst)
}

fn merge_driver(a: &MergeArgs) -> Result<u8, CliError> {
    let format = Format::from_path(a.path.as_deref().unwrap_or(&a.ours));
    let shown: PathBuf = a.path.clone().unwrap_or_else(|| a.ours.clone());
    let keys = keyring()?;
    let base = open_file(&a.base, format, &keys).map(|o| o.plain);
    let ours = open_file(&a.ours, format, &keys)?;
    let theirs = open_file(&a.theirs, format, &keys)?;
    // A file added on both branches has an empty ancestor.
    let base = base.unwrap_or_default();
    match terrace_secrets::merge::merge(&base, &ours.plain, &theirs.plain) {
        Ok(merged) => {
            let text = ours.seal_with(&theirs, &merged)?;
            write(&a.ours, &text)?;
            errln!("{}: merged by value", shown.display());
            Ok(0)
        }
        Err(conflicts) => {
            errln!(
                "{}: {} conflict{} (the file keeps this branch's version):",
                shown.display(),
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" }
            );
            for c in &conflicts {
                errln!("  {}: {}", c.path, c.what);
            }
            errln!(
                "Resolve with `terrace secrets edit {}`, then `git add` it.",
                shown.display()
            );
            Ok(1)
        }
    }
}
