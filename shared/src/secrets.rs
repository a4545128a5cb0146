//! Secrets at rest: the keyring, sealed SourceConfig credentials, and the
//! [`Secret`] wrapper that keeps plaintext out of logs.
//!
//! The credential fields of `SourceConfig.AuthInfo` (`Password`, `PrivateKey`,
//! `ConsumerKey`, `Token`) are stored as
//! `aegis:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, sealed with AES-256-GCM.
//! The associated data binds each value to its SourceConfig and field
//! (`aegis:SourceConfig:<id>:<field>`), so a value copied to another row or field
//! fails to open. The key id lets keys rotate: the keyring's first key seals new
//! values, every key in it opens old ones, and `aegis secrets rotate` re-seals all
//! values under the first key.
//!
//! Invariant: plaintext credentials exist only in memory, inside [`Secret`], whose
//! `Debug` and `Display` print `[redacted]`.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde_json::{Map, Value};

/// The AuthInfo keys that hold credentials and are sealed at rest.
pub const SECRET_FIELDS: [&str; 4] = ["Password", "PrivateKey", "ConsumerKey", "Token"];

const PREFIX: &str = "aegis:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("no encryption key entries found; expected `<key id>:<base64 of 32 bytes>` (generate one with `aegis secrets generate-key`)")]
    EmptyKeyring,
    #[error("key entry {index} is not `<key id>:<base64 of 32 bytes>`: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("key id {0:?} appears twice in the keyring")]
    DuplicateKeyId(String),
    #[error("{field} of SourceConfig {source_config} is encrypted but no encryption key is configured; set AEGIS_ENCRYPTION_KEY or AEGIS_ENCRYPTION_KEY_FILE")]
    NoKey {
        source_config: String,
        field: String,
    },
    #[error("{field} of SourceConfig {source_config} was sealed with key id {key_id:?}, which is not in the configured keyring")]
    UnknownKeyId {
        source_config: String,
        field: String,
        key_id: String,
    },
    #[error("{field} of SourceConfig {source_config} cannot be decrypted: the value is damaged, was copied from another row or field, or the key is wrong")]
    Undecryptable {
        source_config: String,
        field: String,
    },
    #[error("AuthInfo of SourceConfig {source_config} is not a JSON object: {reason}")]
    BadAuthInfo {
        source_config: String,
        reason: String,
    },
}

/// A plaintext secret held in memory. It never prints its value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The plaintext, for the one place that sends it (an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One 256-bit key and its id.
#[derive(Clone)]
struct KeyEntry {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured keys; the first seals, all open.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<KeyEntry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// Parses `kid:base64key[,kid2:base64key…]` (commas or new lines between
    /// entries, `#` comments allowed). A bare base64 key gets the id `default`.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let mut keys: Vec<KeyEntry> = Vec::new();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (index, entry) in entries.enumerate() {
            let (id, material) = match entry.split_once(':') {
                Some((id, m)) => (id.trim().to_string(), m.trim()),
                None => ("default".to_string(), entry),
            };
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(SecretsError::BadKey {
                    index,
                    reason: "the key id must be letters, digits, '-' or '_'".into(),
                });
            }
            let bytes = B64.decode(material).map_err(|e| SecretsError::BadKey {
                index,
                reason: format!("not base64 ({e})"),
            })?;
            if bytes.len() != 32 {
                return Err(SecretsError::BadKey {
                    index,
                    reason: format!("decodes to {} bytes, expected 32", bytes.len()),
                });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(SecretsError::DuplicateKeyId(id));
            }
            keys.push(KeyEntry {
                id,
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            });
        }
        if keys.is_empty() {
            return Err(SecretsError::EmptyKeyring);
        }
        Ok(Keyring { keys })
    }

    /// A new random key entry, `kid:base64`, for `aegis secrets generate-key`.
    pub fn generate_entry(id: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{id}:{}", B64.encode(bytes))
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The id of the key that seals new values.
    pub fn active_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` as `field` of SourceConfig `source_config`.
    pub fn seal(&self, source_config: &str, field: &str, plaintext: &str) -> String {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = aad(source_config, field);
        // Encryption with a valid key and nonce cannot fail for in-memory input.
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, B64.encode(blob))
    }

    /// Opens a value produced by [`Keyring::seal`] for the same row and field.
    pub fn open(&self, source_config: &str, field: &str, value: &str) -> Result<Secret, SecretsError> {
        let undecryptable = || SecretsError::Undecryptable {
            source_config: source_config.to_string(),
            field: field.to_string(),
        };
        let rest = value.strip_prefix(PREFIX).ok_or_else(undecryptable)?;
        let (key_id, blob) = rest.split_once(':').ok_or_else(undecryptable)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretsError::UnknownKeyId {
                source_config: source_config.to_string(),
                field: field.to_string(),
                key_id: key_id.to_string(),
            })?;
        let blob = B64.decode(blob).map_err(|_| undecryptable())?;
        if blob.len() < 12 + 16 {
            return Err(undecryptable());
        }
        let (nonce, sealed) = blob.split_at(12);
        let aad = aad(source_config, field);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| undecryptable())
    }
}

fn aad(source_config: &str, field: &str) -> String {
    format!("aegis:SourceConfig:{source_config}:{field}")
}

/// Whether a stored value is sealed (as opposed to legacy plaintext).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// The key id a sealed value names, if it is sealed.
pub fn sealed_key_id(value: &str) -> Option<&str> {
    value.strip_prefix(PREFIX)?.split_once(':').map(|(id, _)| id)
}

/// Seals every non-empty credential field of an AuthInfo object in place.
/// Already-sealed values are left as they are. Without a keyring the values stay
/// plaintext and the returned count of plaintext fields lets the caller warn.
pub fn seal_auth_info(
    auth: &mut Map<String, Value>,
    source_config: &str,
    keyring: Option<&Keyring>,
) -> usize {
    let mut plaintext = 0;
    for field in SECRET_FIELDS {
        if let Some(Value::String(v)) = auth.get(field) {
            if v.is_empty() || is_sealed(v) {
                continue;
            }
            match keyring {
                Some(k) => {
                    let sealed = k.seal(source_config, field, v);
                    auth.insert(field.to_string(), Value::String(sealed));
                }
                None => plaintext += 1,
            }
        }
    }
    plaintext
}

/// The credentials of one SourceConfig, opened in memory.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    pub private_key: Secret,
    pub consumer_key: Secret,
    pub token: Secret,
    /// Fields that were stored as plaintext (accepted with a warning).
    pub plaintext_fields: Vec<String>,
}

/// Opens the credential fields of an AuthInfo JSON document.
pub fn open_credentials(
    auth: &Map<String, Value>,
    source_config: &str,
    keyring: Option<&Keyring>,
) -> Result<Credentials, SecretsError> {
    let mut creds = Credentials {
        username: auth
            .get("Username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    for field in SECRET_FIELDS {
        let value = match auth.get(field).and_then(Value::as_str) {
            Some(v) if !v.is_empty() => v,
            _ => continue,
        };
        let secret = if is_sealed(value) {
            let keyring = keyring.ok_or_else(|| SecretsError::NoKey {
                source_config: source_config.to_string(),
                field: field.to_string(),
            })?;
            keyring.open(source_config, field, value)?
        } else {
            creds.plaintext_fields.push(field.to_string());
            Secret::new(value)
        };
        match field {
            "Password" => creds.password = secret,
            "PrivateKey" => creds.private_key = secret,
            "ConsumerKey" => creds.consumer_key = secret,
            _ => creds.token = secret,
        }
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(entries: &[&str]) -> Keyring {
        let text = entries
            .iter()
            .map(|id| Keyring::generate_entry(id))
            .collect::<Vec<_>>()
            .join(",");
        Keyring::parse(&text).expect("generated keys parse")
    }

    #[test]
    fn sealed_value_round_trips_and_hides_plaintext() {
        let k = ring(&["k1"]);
        let sealed = k.seal("sc-1", "Password", "hunter2");
        assert!(sealed.starts_with("aegis:v1:k1:"));
        assert!(!sealed.contains("hunter2"));
        let opened = k.open("sc-1", "Password", &sealed).expect("opens");
        assert_eq!(opened.expose(), "hunter2");
        assert_eq!(format!("{opened:?} {opened}"), "[redacted] [redacted]");
    }

    #[test]
    fn value_moved_to_another_row_or_field_does_not_open() {
        let k = ring(&["k1"]);
        let sealed = k.seal("sc-1", "Password", "hunter2");
        assert!(matches!(
            k.open("sc-2", "Password", &sealed),
            Err(SecretsError::Undecryptable { .. })
        ));
        assert!(matches!(
            k.open("sc-1", "Token", &sealed),
            Err(SecretsError::Undecryptable { .. })
        ));
    }

    #[test]
    fn rotated_keyring_opens_old_values_and_seals_with_the_new_key() {
        let old = ring(&["old"]);
        let sealed = old.seal("sc", "Password", "p");
        let old_entry_text = Keyring::generate_entry("new");
        // Build "new,old" by re-using the old key material: parse the old ring's entry back.
        let new_ring_text = old_entry_text.to_string();
        let new_only = Keyring::parse(&new_ring_text).expect("parse");
        assert!(matches!(
            new_only.open("sc", "Password", &sealed),
            Err(SecretsError::UnknownKeyId { .. })
        ));
        let both = Keyring {
            keys: vec![new_only.keys[0].clone(), old.keys[0].clone()],
        };
        assert_eq!(both.open("sc", "Password", &sealed).expect("old key opens").expose(), "p");
        assert_eq!(sealed_key_id(&both.seal("sc", "Password", "p")), Some("new"));
    }

    #[test]
    fn bad_keys_are_rejected_with_the_reason() {
        assert!(matches!(Keyring::parse(""), Err(SecretsError::EmptyKeyring)));
        let e = Keyring::parse("k1:c2hvcnQ=").expect_err("short key");
        assert!(e.to_string().contains("expected 32"), "{e}");
        let e = Keyring::parse("k1:%%%").expect_err("not base64");
        assert!(e.to_string().contains("not base64"), "{e}");
        let entry = Keyring::generate_entry("k1");
        assert!(matches!(
            Keyring::parse(&format!("{entry},{entry}")),
            Err(SecretsError::DuplicateKeyId(_))
        ));
    }

    #[test]
    fn auth_info_is_sealed_field_by_field_and_opened_back() {
        let k = ring(&["k1"]);
        let mut auth: Map<String, Value> = serde_json::from_str(
            r#"{"Username":"svc","Password":"pw","Token":"","Delay":10,"Concurrency":10}"#,
        )
        .expect("json");
        assert_eq!(seal_auth_info(&mut auth, "sc", Some(&k)), 0);
        let text = serde_json::to_string(&auth).expect("json");
        assert!(!text.contains("\"pw\""));
        assert_eq!(auth["Delay"], 10);
        let creds = open_credentials(&auth, "sc", Some(&k)).expect("opens");
        assert_eq!(creds.password.expose(), "pw");
        assert!(creds.token.is_empty());
        assert!(format!("{creds:?}").contains("[redacted]"));
        assert!(!format!("{creds:?}").contains("pw\""));
        assert!(matches!(
            open_credentials(&auth, "sc", None),
            Err(SecretsError::NoKey { .. })
        ));
    }

    #[test]
    fn plaintext_values_are_counted_so_callers_can_warn() {
        let mut auth: Map<String, Value> =
            serde_json::from_str(r#"{"Password":"pw"}"#).expect("json");
        assert_eq!(seal_auth_info(&mut auth, "sc", None), 1);
        let creds = open_credentials(&auth, "sc", None).expect("plaintext accepted");
        assert_eq!(creds.plaintext_fields, vec!["Password"]);
    }
}
