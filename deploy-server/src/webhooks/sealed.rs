//! Webhook signing secrets sealed at rest. With a key file configured (`webhook_secrets_key_file`), a subscription's
//! secret is stored as `enc:v1:` and the base64 of a random nonce and its AES-256-GCM ciphertext, bound to the
//! subscription's id (the associated data), so a copy of the database (a backup, a replica's disk) does not hold
//! secrets that sign webhooks. Secrets stored before the key was configured keep working as they are.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The prefix of a sealed secret.
const SEALED: &str = "enc:v1:";

/// The key that seals webhook secrets.
pub struct SecretsKey(LessSafeKey);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(***)")
    }
}

/// Why a key could not be read, or a secret sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook secrets key: {0}")]
pub struct SealError(String);

fn aad(subscription: uuid::Uuid) -> String {
    format!("deployd webhook secret {subscription}")
}

impl SecretsKey {
    /// A key from its text: 32 bytes as 64 hex digits or as standard base64 (`openssl rand -base64 32`).
    ///
    /// # Errors
    /// [`SealError`] for anything else.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| text.get(i * 2..i * 2 + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
        } else {
            STANDARD.decode(text).ok()
        };
        let bytes = bytes.filter(|b| b.len() == 32).ok_or_else(|| {
            SealError("give 32 random bytes as 64 hex digits or in base64 (openssl rand -base64 32)".into())
        })?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError("unusable key".into()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Reads the key from a file.
    ///
    /// # Errors
    /// [`SealError`] when it cannot be read or holds no key.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SealError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SealError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// `secret` sealed for `subscription`.
    ///
    /// # Errors
    /// [`SealError`] when the random source fails.
    pub fn seal(&self, subscription: uuid::Uuid, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealError(format!("random source: {e}")))?;
        let mut data = secret.as_bytes().to_vec();
        let aad = aad(subscription);
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| SealError("cannot seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{SEALED}{}", STANDARD.encode(out)))
    }

    fn open(&self, subscription: uuid::Uuid, sealed: &str) -> Result<String, SealError> {
        let refuse = || SealError(format!("the secret of webhook {subscription} cannot be opened with this key"));
        let bytes = STANDARD.decode(sealed).map_err(|_| refuse())?;
        let (nonce, ciphertext) = bytes.split_at_checked(NONCE_LEN).ok_or_else(refuse)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refuse())?;
        let mut data = ciphertext.to_vec();
        let aad = aad(subscription);
        let plain = self.0.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data).map_err(|_| refuse())?;
        String::from_utf8(plain.to_vec()).map_err(|_| refuse())
    }
}

/// The secret to sign with: a sealed one opened with `key`, a plain one (stored before a key was configured) as is.
///
/// # Errors
/// [`SealError`] when the secret is sealed and there is no key, or another key sealed it.
pub(crate) fn reveal(key: Option<&SecretsKey>, subscription: uuid::Uuid, stored: &str) -> Result<String, SealError> {
    match (stored.strip_prefix(SEALED), key) {
        (None, _) => Ok(stored.to_owned()),
        (Some(sealed), Some(key)) => key.open(subscription, sealed),
        (Some(_), None) => Err(SealError(format!(
            "the secret of webhook {subscription} is sealed, and no webhook_secrets_key_file is configured"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_for_their_subscription() {
        let key = SecretsKey::parse(KEY).unwrap();
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let sealed = key.seal(a, "whsec_c2VjcmV0").unwrap();
        assert!(sealed.starts_with(SEALED) && !sealed.contains("c2VjcmV0"), "{sealed}");
        assert_ne!(sealed, key.seal(a, "whsec_c2VjcmV0").unwrap(), "a fresh nonce each time");
        assert_eq!(reveal(Some(&key), a, &sealed).unwrap(), "whsec_c2VjcmV0");
        assert!(reveal(Some(&key), b, &sealed).is_err(), "moved to another row");
        let other = SecretsKey::parse(&STANDARD.encode([7u8; 32])).unwrap();
        assert!(reveal(Some(&other), a, &sealed).is_err(), "another key");
        assert!(reveal(None, a, &sealed).is_err(), "no key");
        assert_eq!(reveal(None, a, "whsec_plain").unwrap(), "whsec_plain", "stored before a key was set");
        for bad in ["", "abc", &"0".repeat(63), &STANDARD.encode([1u8; 16])] {
            assert!(SecretsKey::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{key:?}"), "SecretsKey(***)");
    }
}
