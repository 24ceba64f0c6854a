//! age keys where sops users already keep them, and recipients.
//!
//! Identities are read, in this order, from `SOPS_AGE_KEY` (key text),
//! `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY_CMD` (a command printing keys), the
//! default sops key file (`$XDG_CONFIG_HOME/sops/age/keys.txt`, else
//! `~/.config/sops/age/keys.txt`), and SSH keys
//! (`SOPS_AGE_SSH_PRIVATE_KEY_FILE`, else `~/.ssh/id_ed25519` and
//! `~/.ssh/id_rsa`). Recipients are `age1…` keys or SSH public keys
//! (`ssh-ed25519 …`, `ssh-rsa …`).
//!
//! Key text read from any source is zeroized once parsed, and neither
//! [`KeySources`] nor [`Keyring`] prints a private key in its `Debug`.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format as ArmorFormat};
use zeroize::Zeroizing;

use crate::Redacted;
use crate::cipher::KEY_LEN;
use crate::error::SecretsError;
use crate::metadata::{AgeStanza, Metadata};

type BoxedIdentity = Box<dyn age::Identity + Send + Sync>;

/// The age identities this process can decrypt with.
pub struct Keyring {
    identities: Vec<(BoxedIdentity, String)>,
    /// Where keys were looked for (for "no key found" messages).
    searched: Vec<String>,
    /// Public keys of the x25519 identities, for status.
    publics: Vec<String>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("sources", &self.sources())
            .field("public_keys", &self.publics)
            .field("searched", &self.searched)
            .field("identities", &Redacted)
            .finish()
    }
}

/// Where to look for keys; [`KeySources::from_env`] reads the process
/// environment the way sops does. `key_text` (`SOPS_AGE_KEY`) is zeroized
/// on drop and redacted in `Debug`.
#[derive(Clone, Default)]
pub struct KeySources {
    pub key_text: Option<Zeroizing<String>>,
    pub key_file: Option<PathBuf>,
    pub key_cmd: Option<String>,
    pub default_file: Option<PathBuf>,
    pub ssh_files: Vec<PathBuf>,
}

impl fmt::Debug for KeySources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySources")
            .field("key_text", &self.key_text.as_ref().map(|_| Redacted))
            .field("key_file", &self.key_file)
            .field("key_cmd", &self.key_cmd)
            .field("default_file", &self.default_file)
            .field("ssh_files", &self.ssh_files)
            .finish()
    }
}

impl KeySources {
    pub fn from_env() -> KeySources {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let config = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".config")));
        let ssh_files = match var("SOPS_AGE_SSH_PRIVATE_KEY_FILE") {
            Some(f) => vec![PathBuf::from(f)],
            None => home
                .map(|h| vec![h.join(".ssh/id_ed25519"), h.join(".ssh/id_rsa")])
                .unwrap_or_default(),
        };
        KeySources {
            key_text: var("SOPS_AGE_KEY").map(Zeroizing::new),
            key_file: var("SOPS_AGE_KEY_FILE").map(PathBuf::from),
            key_cmd: var("SOPS_AGE_KEY_CMD"),
            default_file: config.map(|c| c.join("sops/age/keys.txt")),
            ssh_files,
        }
    }
}

impl Keyring {
    /// A keyring with no identities (encryption only).
    pub fn empty() -> Keyring {
        Keyring {
            identities: Vec::new(),
            searched: Vec::new(),
            publics: Vec::new(),
        }
    }

    /// Reads every source that exists. A source that exists but cannot be
    /// read is an error naming it; a missing default file is not.
    pub fn load(sources: &KeySources) -> Result<Keyring, SecretsError> {
        let mut ring = Keyring::empty();
        if let Some(text) = &sources.key_text {
            ring.searched.push("SOPS_AGE_KEY".into());
            ring.add_key_text(text, "SOPS_AGE_KEY", Path::new("SOPS_AGE_KEY"))?;
        }
        if let Some(file) = &sources.key_file {
            ring.searched
                .push(format!("SOPS_AGE_KEY_FILE ({})", file.display()));
            let text = Zeroizing::new(
                fs_err::read_to_string(file).map_err(|e| SecretsError::io(file, e))?,
            );
            ring.add_key_text(&text, &file.display().to_string(), file)?;
        }
        if let Some(cmd) = &sources.key_cmd {
            ring.searched.push(format!("SOPS_AGE_KEY_CMD ({cmd})"));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| SecretsError::io("SOPS_AGE_KEY_CMD", e))?;
            if !out.status.success() {
                return Err(SecretsError::Config {
                    file: "SOPS_AGE_KEY_CMD".into(),
                    message: format!("`{cmd}` failed with {}", out.status),
                });
            }
            let stdout = Zeroizing::new(out.stdout);
            let text = Zeroizing::new(String::from_utf8_lossy(&stdout).into_owned());
            ring.add_key_text(&text, "SOPS_AGE_KEY_CMD", Path::new("SOPS_AGE_KEY_CMD"))?;
        }
        if let Some(file) = &sources.default_file {
            ring.searched.push(file.display().to_string());
            if file.is_file() {
                let text = Zeroizing::new(
                    fs_err::read_to_string(file).map_err(|e| SecretsError::io(file, e))?,
                );
                ring.add_key_text(&text, &file.display().to_string(), file)?;
            }
        }
        for file in &sources.ssh_files {
            ring.searched.push(file.display().to_string());
            if !file.is_file() {
                continue;
            }
            let bytes = Zeroizing::new(fs_err::read(file).map_err(|e| SecretsError::io(file, e))?);
            // Passphrase-protected or unsupported SSH keys are skipped:
            // terrace never prompts.
            if let Ok(id @ age::ssh::Identity::Unencrypted(_)) =
                age::ssh::Identity::from_buffer(bytes.as_slice(), Some(file.display().to_string()))
            {
                ring.identities
                    .push((Box::new(id), file.display().to_string()));
            }
        }
        Ok(ring)
    }

    /// Adds the identities in an age key file's text (`AGE-SECRET-KEY-…`
    /// lines; `#` comments and blank lines are skipped).
    pub fn add_key_text(
        &mut self,
        text: &str,
        source: &str,
        file: &Path,
    ) -> Result<(), SecretsError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| SecretsError::Config {
                file: file.to_owned(),
                message: format!(
                    "line {} is not an age secret key (AGE-SECRET-KEY-1…)",
                    i + 1
                ),
            })?;
            self.publics.push(id.to_public().to_string());
            self.identities.push((Box::new(id), source.to_owned()));
        }
        Ok(())
    }

    /// Where the identities came from.
    pub fn sources(&self) -> Vec<String> {
        let mut s: Vec<String> = self.identities.iter().map(|(_, s)| s.clone()).collect();
        s.dedup();
        s
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Public keys of the age identities held.
    pub fn public_keys(&self) -> &[String] {
        &self.publics
    }

    /// Recovers the data key from the first age stanza one of the
    /// identities opens.
    pub fn data_key(
        &self,
        meta: &Metadata,
        file: &Path,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, SecretsError> {
        if self.identities.is_empty() {
            return Err(SecretsError::NoIdentities {
                file: file.to_owned(),
                searched: self.searched.clone(),
            });
        }
        if meta.age.is_empty() {
            return Err(SecretsError::Unsupported {
                file: file.to_owned(),
                what: format!(
                    "the file has no age recipients, only {} keys, which terrace cannot use",
                    meta.other_keys
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for stanza in &meta.age {
            let reader = ArmoredReader::new(stanza.enc.as_bytes());
            let decryptor = match age::Decryptor::new(reader) {
                Ok(d) => d,
                Err(_) => {
                    return Err(SecretsError::Truncated {
                        file: file.to_owned(),
                        detail: format!(
                            "the data key encrypted to {} is not a valid age file",
                            stanza.recipient
                        ),
                    });
                }
            };
            let ids = self
                .identities
                .iter()
                .map(|(i, _)| i.as_ref() as &dyn age::Identity);
            match decryptor.decrypt(ids) {
                Ok(mut r) => {
                    let mut key = Zeroizing::new(Vec::new());
                    r.read_to_end(&mut key)
                        .map_err(|_| SecretsError::Truncated {
                            file: file.to_owned(),
                            detail: format!(
                                "the data key encrypted to {} does not decrypt whole",
                                stanza.recipient
                            ),
                        })?;
                    return <[u8; KEY_LEN]>::try_from(key.as_slice())
                        .map(Zeroizing::new)
                        .map_err(|_| SecretsError::Truncated {
                            file: file.to_owned(),
                            detail: "the data key is not 32 bytes".into(),
                        });
                }
                Err(age::DecryptError::NoMatchingKeys) => continue,
                Err(e) => {
                    return Err(SecretsError::Truncated {
                        file: file.to_owned(),
                        detail: format!(
                            "the data key encrypted to {} does not decrypt: {e}",
                            stanza.recipient
                        ),
                    });
                }
            }
        }
        Err(SecretsError::WrongKey {
            file: file.to_owned(),
            recipients: meta.age.iter().map(|s| s.recipient.clone()).collect(),
            tried: self.describe_identities(),
        })
    }

    fn describe_identities(&self) -> Vec<String> {
        let mut out: Vec<String> = self.publics.clone();
        for (_, source) in &self.identities {
            if source.contains(".ssh") || source.contains("SSH") {
                out.push(format!("ssh key {source}"));
            }
        }
        out
    }
}

impl Keyring {
    /// The plaintext of an age file (binary or armored) one of the
    /// identities opens; `what` names it in errors.
    pub fn open_age(&self, data: &[u8], what: &Path) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        if self.identities.is_empty() {
            return Err(SecretsError::NoIdentities {
                file: what.to_owned(),
                searched: self.searched.clone(),
            });
        }
        let reader = ArmoredReader::new(data);
        let decryptor = age::Decryptor::new(reader).map_err(|_| SecretsError::Truncated {
            file: what.to_owned(),
            detail: "not a valid age file".into(),
        })?;
        let ids = self
            .identities
            .iter()
            .map(|(i, _)| i.as_ref() as &dyn age::Identity);
        let mut r = match decryptor.decrypt(ids) {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => {
                return Err(SecretsError::WrongKey {
                    file: what.to_owned(),
                    recipients: Vec::new(),
                    tried: self.sources(),
                });
            }
            Err(e) => {
                return Err(SecretsError::Truncated {
                    file: what.to_owned(),
                    detail: format!("does not decrypt: {e}"),
                });
            }
        };
        let mut out = Zeroizing::new(Vec::new());
        r.read_to_end(&mut out)
            .map_err(|e| SecretsError::Truncated {
                file: what.to_owned(),
                detail: format!("does not decrypt whole: {e}"),
            })?;
        Ok(out)
    }
}

/// `data` as an age file (binary) encrypted to every one of `recipients`.
pub fn seal_age(recipients: &[Recipient], data: &[u8]) -> Vec<u8> {
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|r| r.inner.as_ref() as &dyn age::Recipient),
    )
    .expect("at least one valid recipient");
    let mut out = Vec::new();
    let mut stream = encryptor.wrap_output(&mut out).expect("writing to memory");
    stream.write_all(data).expect("writing to memory");
    stream.finish().expect("writing to memory");
    out
}

/// A parsed recipient and its text.
pub struct Recipient {
    pub text: String,
    inner: Box<dyn age::Recipient + Send + Sync>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Recipient {
    pub fn parse(text: &str) -> Result<Recipient, SecretsError> {
        let text = text.trim();
        let err = |message: &str| SecretsError::Recipient {
            value: text.to_owned(),
            message: message.to_owned(),
        };
        let inner: Box<dyn age::Recipient + Send + Sync> = if text.starts_with("age1") {
            Box::new(age::x25519::Recipient::from_str(text).map_err(&err)?)
        } else if text.starts_with("ssh-") {
            Box::new(
                age::ssh::Recipient::from_str(text)
                    .map_err(|_| err("not a supported SSH public key (ssh-ed25519 or ssh-rsa)"))?,
            )
        } else {
            return Err(err(
                "expected an age public key (age1…) or an SSH public key (ssh-ed25519 …)",
            ));
        };
        Ok(Recipient {
            text: text.to_owned(),
            inner,
        })
    }

    /// Parses a comma-separated list, as `.sops.yaml` and `--age` take.
    pub fn parse_list(text: &str) -> Result<Vec<Recipient>, SecretsError> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Recipient::parse)
            .collect()
    }

    /// The data key encrypted to this recipient alone, armored.
    pub fn seal(&self, data_key: &[u8; KEY_LEN]) -> AgeStanza {
        let encryptor = age::Encryptor::with_recipients(std::iter::once(
            self.inner.as_ref() as &dyn age::Recipient
        ))
        .expect("one valid recipient");
        let mut armored = Vec::new();
        let writer = ArmoredWriter::wrap_output(&mut armored, ArmorFormat::AsciiArmor)
            .expect("writing to memory");
        let mut stream = encryptor.wrap_output(writer).expect("writing to memory");
        stream.write_all(data_key).expect("writing to memory");
        stream
            .finish()
            .and_then(|w| w.finish())
            .expect("writing to memory");
        let mut enc = String::from_utf8(armored).expect("armor is ASCII");
        if !enc.ends_with('\n') {
            enc.push('\n');
        }
        AgeStanza {
            recipient: self.text.clone(),
            enc,
        }
    }
}
