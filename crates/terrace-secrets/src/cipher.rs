//! One encrypted value: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
//!
//! AES-256-GCM with a 32-byte nonce (as sops uses), the value's key path
//! (`a:b:c:`) as authenticated data, and the plaintext written the way
//! sops writes it (`True`/`False` for booleans, shortest decimal for
//! numbers).
//!
//! Plaintext copies made here are zeroized once used; an error never
//! carries the decrypted text.

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use terrace_yaml::tree::Node;
use zeroize::{Zeroize, Zeroizing};

type Gcm = AesGcm<Aes256, U32>;

/// Length of the data key, the IV, and the GCM tag.
pub const KEY_LEN: usize = 32;
const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The parts of an `ENC[...]` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncValue {
    pub data: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub kind: String,
}

/// Why an `ENC[...]` string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncParseError {
    #[error("not an ENC[AES256_GCM,...] value")]
    NotEncrypted,
    #[error("the {0} field is missing")]
    Missing(&'static str),
    #[error("the {0} field is not valid base64")]
    Base64(&'static str),
    #[error("the iv is {0} bytes, not 32; the value was cut or altered")]
    IvLength(usize),
    #[error("the tag is {0} bytes, not 16; the value was cut or altered")]
    TagLength(usize),
}

/// Whether a string looks like an encrypted value at all.
pub fn is_encrypted(s: &str) -> bool {
    s.starts_with("ENC[AES256_GCM,")
}

/// Parses `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
pub fn parse(s: &str) -> Result<EncValue, EncParseError> {
    let body = s
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|b| b.strip_suffix(']'))
        .ok_or(EncParseError::NotEncrypted)?;
    let mut data = None;
    let mut iv = None;
    let mut tag = None;
    let mut kind = None;
    for part in body.split(',') {
        let (name, value) = part.split_once(':').unwrap_or((part, ""));
        match name {
            "data" => data = Some(value),
            "iv" => iv = Some(value),
            "tag" => tag = Some(value),
            "type" => kind = Some(value),
            _ => {}
        }
    }
    let decode = |field: &'static str, v: Option<&str>| -> Result<Vec<u8>, EncParseError> {
        let v = v.ok_or(EncParseError::Missing(field))?;
        STANDARD.decode(v).map_err(|_| EncParseError::Base64(field))
    };
    let data = decode("data", data)?;
    let iv = decode("iv", iv)?;
    let tag = decode("tag", tag)?;
    if iv.len() != IV_LEN {
        return Err(EncParseError::IvLength(iv.len()));
    }
    if tag.len() != TAG_LEN {
        return Err(EncParseError::TagLength(tag.len()));
    }
    let kind = kind.ok_or(EncParseError::Missing("type"))?.to_owned();
    Ok(EncValue {
        data,
        iv,
        tag,
        kind,
    })
}

/// A leaf's plaintext bytes and type name, as sops encrypts and MACs them.
/// `None` for values that are never encrypted (null, collections).
pub fn plain_bytes(node: &Node) -> Option<(Vec<u8>, &'static str)> {
    Some(match node {
        Node::Str(s) => (s.as_bytes().to_vec(), "str"),
        Node::Int(i) => (i.to_string().into_bytes(), "int"),
        Node::Float(f) => (format_go_float(*f).into_bytes(), "float"),
        Node::Bool(b) => (
            (if *b { "True" } else { "False" }).as_bytes().to_vec(),
            "bool",
        ),
        Node::Comment(c) => (c.as_bytes().to_vec(), "comment"),
        Node::Null | Node::Seq(_) | Node::Map(_) => return None,
    })
}

/// `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that reads
/// back as the same number, never with an exponent.
pub fn format_go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{f}")
    }
}

/// Fresh random bytes (IVs, data keys).
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the operating system's random source works");
    out
}

/// Encrypts one leaf. Empty strings and empty comments stay empty, as
/// sops leaves them.
pub fn encrypt(node: &Node, key: &[u8; KEY_LEN], aad: &str) -> Option<String> {
    let (bytes, kind) = plain_bytes(node)?;
    let bytes = Zeroizing::new(bytes);
    if bytes.is_empty() && matches!(node, Node::Str(_) | Node::Comment(_)) {
        return Some(String::new());
    }
    let iv: [u8; IV_LEN] = random();
    let cipher = Gcm::new(key.into());
    let sealed = cipher
        .encrypt(
            Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: bytes.as_slice(),
                aad: aad.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of in-memory data does not fail");
    let (data, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    Some(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag),
    ))
}

/// Why a value did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error(transparent)]
    Parse(#[from] EncParseError),
    #[error(
        "authentication failed: the value, its place in the file, or the data key differ from what was encrypted"
    )]
    Authentication,
    /// The value decrypted, but not to its declared type (the decrypted
    /// text is a secret, so it is not kept).
    #[error("the decrypted value is not a valid {0}")]
    BadPlaintext(String),
    #[error("unknown value type `{0}`")]
    UnknownType(String),
}

/// Decrypts one `ENC[...]` string back to a typed leaf.
pub fn decrypt(s: &str, key: &[u8; KEY_LEN], aad: &str) -> Result<Node, DecryptError> {
    let v = parse(s)?;
    let cipher = Gcm::new(key.into());
    let mut sealed = v.data.clone();
    sealed.extend_from_slice(&v.tag);
    let plain = cipher
        .decrypt(
            Nonce::<U32>::from_slice(&v.iv),
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| DecryptError::Authentication)?;
    let bad = || DecryptError::BadPlaintext(v.kind.clone());
    // Zeroized on drop; strings move their buffer into the node instead.
    let mut text = Zeroizing::new(String::from_utf8(plain).map_err(|e| {
        e.into_bytes().zeroize();
        bad()
    })?);
    Ok(match v.kind.as_str() {
        "str" | "bytes" => Node::Str(std::mem::take(&mut *text)),
        "int" | "int64" => Node::Int(text.parse().map_err(|_| bad())?),
        "float" => Node::Float(match text.as_str() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            t => t.parse().map_err(|_| bad())?,
        }),
        "bool" => Node::Bool(match text.as_str() {
            "True" | "true" | "TRUE" | "t" | "T" | "1" => true,
            "False" | "false" | "FALSE" | "f" | "F" | "0" => false,
            _ => return Err(bad()),
        }),
        "comment" => Node::Comment(std::mem::take(&mut *text)),
        other => return Err(DecryptError::UnknownType(other.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_type_and_binds_the_path() {
        let key: [u8; 32] = random();
        for node in [
            Node::Str("hello".into()),
            Node::Int(-42),
            Node::Float(2.5),
            Node::Bool(true),
            Node::Comment(" note".into()),
        ] {
            let enc = encrypt(&node, &key, "a:b:").expect("a leaf");
            assert!(enc.starts_with("ENC[AES256_GCM,data:"), "{enc}");
            assert_eq!(decrypt(&enc, &key, "a:b:"), Ok(node));
            assert_eq!(
                decrypt(&enc, &key, "a:c:"),
                Err(DecryptError::Authentication)
            );
        }
        assert_eq!(
            encrypt(&Node::Str(String::new()), &key, "x:"),
            Some(String::new())
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_does_not_show_its_plaintext() {
        let key: [u8; 32] = random();
        let enc = encrypt(&Node::Str("hunter2".into()), &key, "a:").expect("a leaf");
        // The type is not authenticated: the value decrypts, then fails
        // to read as an int.
        let retyped = enc.replace("type:str", "type:int");
        let err = decrypt(&retyped, &key, "a:").expect_err("not an int");
        assert_eq!(err, DecryptError::BadPlaintext("int".into()));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn parse_rejects_cut_values() {
        assert_eq!(parse("hello"), Err(EncParseError::NotEncrypted));
        assert_eq!(
            parse("ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]"),
            Err(EncParseError::IvLength(1))
        );
        assert_eq!(
            parse("ENC[AES256_GCM,data:AA==,type:str]"),
            Err(EncParseError::Missing("iv"))
        );
    }

    #[test]
    fn floats_print_like_go() {
        assert_eq!(format_go_float(1.0), "1");
        assert_eq!(format_go_float(2.5), "2.5");
        assert_eq!(format_go_float(1e21), "1000000000000000000000");
        assert_eq!(format_go_float(1.5e-7), "0.00000015");
    }
}
