//! The engine's secrets: files under the project root decrypted on first
//! use and kept in memory for the run; keys loaded once, when first needed
//! (a project without secrets never touches them).
//!
//! The store's `Debug` lists the files it holds, never their values, and
//! dropping it zeroizes the plaintext it cached.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use terrace_core::expr::SecretError;
use terrace_core::secrets::{Plaintexts, SecretSource};
use terrace_core::value_path::Seg;
use terrace_yaml::tree::Node;

use crate::config::Settings;
use crate::metadata::Metadata;
use crate::{Format, KeySources, Keyring, Opened, Recipient, Redacted, SecretsError};

/// Secrets of one project, for one run.
pub struct SecretStore {
    root: PathBuf,
    sources: KeySources,
    keys: OnceLock<Result<Keyring, String>>,
    opened: Mutex<HashMap<PathBuf, Arc<Opened>>>,
    /// Every opened file's secret values, made again after a file opens.
    plaintexts: Mutex<Option<Plaintexts>>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SecretStore");
        s.field("root", &self.root)
            .field("sources", &self.sources)
            .field("keys", &self.keys.get());
        // `try_lock`: a `{:?}` while this thread holds the lock must not
        // deadlock. Only the file names are shown.
        match self.opened.try_lock() {
            Ok(cache) => {
                let mut files: Vec<&PathBuf> = cache.keys().collect();
                files.sort();
                s.field("opened", &files)
            }
            Err(_) => s.field("opened", &Redacted),
        };
        s.finish()
    }
}

impl Drop for SecretStore {
    /// Zeroizes the plaintext of every cached file no one else still holds.
    fn drop(&mut self) {
        let cache = self.opened.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, mut opened) in cache.drain() {
            if let Some(o) = Arc::get_mut(&mut opened) {
                o.zeroize_plaintext();
            }
        }
    }
}

fn failed(e: SecretsError) -> SecretError {
    if matches!(e, SecretsError::NoIdentities { .. }) {
        return SecretError::NoKeys {
            hint: e.hint(),
            message: e.to_string(),
        };
    }
    SecretError::Failed {
        hint: e.hint(),
        message: e.to_string(),
    }
}

impl SecretStore {
    /// A store reading keys from the process environment, as sops does.
    pub fn new(root: &Path) -> SecretStore {
        SecretStore::with_sources(root, KeySources::from_env())
    }

    pub fn with_sources(root: &Path, sources: KeySources) -> SecretStore {
        SecretStore {
            root: root.to_owned(),
            sources,
            keys: OnceLock::new(),
            opened: Mutex::new(HashMap::new()),
            plaintexts: Mutex::new(None),
        }
    }

    fn keys(&self) -> Result<&Keyring, SecretError> {
        self.keys
            .get_or_init(|| Keyring::load(&self.sources).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| SecretError::Failed {
                message: message.clone(),
                hint: None,
            })
    }

    /// Opens `file` (relative to the root) once per run.
    fn open(&self, file: &Path, text: Option<&str>) -> Result<Arc<Opened>, SecretError> {
        if let Some(o) = self.lock().get(file) {
            return Ok(o.clone());
        }
        let owned;
        let text = match text {
            Some(t) => t,
            None => {
                owned = self.read(file)?;
                &owned
            }
        };
        let opened = Arc::new(
            crate::open(text, file, Format::from_path(file), self.keys()?).map_err(failed)?,
        );
        self.lock().insert(file.to_owned(), opened.clone());
        *self.plaintexts.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(opened)
    }

    fn read(&self, file: &Path) -> Result<String, SecretError> {
        match terrace_fs::read_to_string(&self.root, &self.root.join(file)) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::Failed {
                message: format!("secrets file `{}` does not exist", file.display()),
                hint: Some(format!(
                    "paths are relative to the project root; create it with `terrace secrets edit {}`",
                    file.display()
                )),
            }),
            Err(e) => Err(failed(SecretsError::Io {
                file: file.to_owned(),
                source: e,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Opened>>> {
        self.opened.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who a source's values are sealed to: the recipients of a SOPS file;
    /// for a plain file (a `Secret` written in the clear in the
    /// repository), those of its creation rule in the nearest `.sops.yaml`.
    fn recipients_of(&self, file: &Path) -> Result<Vec<String>, SecretError> {
        let abs = self.root.join(file);
        // A kustomization directory is where a generated Secret comes from.
        let text = if abs.is_dir() {
            String::new()
        } else {
            self.read(file)?
        };
        if terrace_core::secrets::looks_encrypted(&text) {
            return Ok(self
                .metadata(file)?
                .age
                .into_iter()
                .map(|s| s.recipient)
                .collect());
        }
        let Some(config) = crate::config::find(abs.parent().unwrap_or(&self.root)) else {
            return Err(SecretError::Failed {
                message: format!(
                    "`{}` holds a Secret in plain text, and there is no .sops.yaml to say whom to seal it to; terrace writes Secrets only sealed",
                    file.display()
                ),
                hint: Some(
                    "encrypt the file (`terrace secrets encrypt -i FILE`), or add a .sops.yaml creation rule with your age recipients".into(),
                ),
            });
        };
        let settings = crate::config::settings_for(&config, &abs).map_err(failed)?;
        Ok(settings.recipients.into_iter().map(|r| r.text).collect())
    }

    /// The metadata of a secrets file, without decrypting it.
    fn metadata(&self, file: &Path) -> Result<Metadata, SecretError> {
        if let Some(o) = self.lock().get(file) {
            return Ok(o.meta.clone());
        }
        let text = self.read(file)?;
        crate::read_encrypted(&text, file, Format::from_path(file))
            .map(|(_, meta)| meta)
            .map_err(failed)
    }
}

impl SecretSource for SecretStore {
    fn plaintexts_of(&self, files: &[PathBuf]) -> Plaintexts {
        Plaintexts::new(
            self.lock()
                .iter()
                .filter(|(file, _)| files.contains(file))
                .flat_map(|(file, o)| o.secret_values().into_iter().map(|v| (v, file.clone())))
                .collect::<Vec<_>>(),
        )
    }

    fn plaintexts(&self) -> Plaintexts {
        let mut cached = self.plaintexts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = &*cached {
            return p.clone();
        }
        let made = Plaintexts::new(
            self.lock()
                .iter()
                .flat_map(|(file, o)| o.secret_values().into_iter().map(|v| (v, file.clone())))
                .collect::<Vec<_>>(),
        );
        *cached = Some(made.clone());
        made
    }

    fn value(&self, file: &str, key: &[Seg]) -> Result<Value, SecretError> {
        let opened = self.open(Path::new(file), None)?;
        let dotted = key
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        opened.lookup(&dotted).map(Node::to_json).map_err(failed)
    }

    fn open_documents(&self, file: &Path, text: &str) -> Result<Option<Vec<Value>>, SecretError> {
        if !terrace_core::secrets::looks_encrypted(text) {
            return Ok(None);
        }
        let opened = self.open(file, Some(text))?;
        Ok(Some(opened.plain.iter().map(Node::to_json).collect()))
    }

    fn seal(
        &self,
        docs: &[Value],
        sources: &[PathBuf],
        rule_from: Option<&Path>,
        prior: Option<&str>,
    ) -> Result<String, SecretError> {
        if let Some(output) = sources
            .iter()
            .find(|s| s.to_string_lossy().starts_with("unit "))
        {
            return Err(SecretError::Failed {
                message: format!(
                    "this object holds a sensitive value ({}), and a rendered file can only be sealed to the recipients of SOPS files",
                    output.display()
                ),
                hint: Some(
                    "keep the value in a SOPS file and use ${secret.FILE#KEY}, or pass it only to terraform units".into(),
                ),
            });
        }
        let mut recipients: Vec<String> = Vec::new();
        for s in sources {
            for recipient in self.recipients_of(s)? {
                if !recipients.contains(&recipient) {
                    recipients.push(recipient);
                }
            }
        }
        let rule = match rule_from {
            Some(f) => Some(self.metadata(f)?.rule),
            None => None,
        };
        let nodes: Vec<Node> = docs.iter().map(Node::from_json).collect();
        let rendered = Path::new("(rendered)");
        if let Some(prior) = prior
            && let Ok(old) = crate::open(prior, rendered, Format::Yaml, self.keys()?)
        {
            let same_recipients = old.meta.age.len() == recipients.len()
                && old
                    .meta
                    .age
                    .iter()
                    .all(|s| recipients.contains(&s.recipient));
            let same_rule = rule.as_ref().map(|r| r.parts()) == Some(old.meta.rule.parts())
                || (rule.is_none()
                    && old.meta.rule.parts() == crate::rules::Rule::default().parts());
            if same_recipients && same_rule {
                let old_json: Vec<Value> = old.plain.iter().map(Node::to_json).collect();
                if old_json == docs {
                    return Ok(prior.to_owned());
                }
                return old.seal(&nodes).map_err(failed);
            }
        }
        let settings = Settings {
            recipients: recipients
                .iter()
                .map(|r| Recipient::parse(r))
                .collect::<Result<_, _>>()
                .map_err(failed)?,
            rule,
            mac_only_encrypted: false,
        };
        let text = terrace_yaml::tree::emit_stream(&nodes, 4);
        crate::encrypt(&text, rendered, Format::Yaml, &settings).map_err(failed)
    }
}
