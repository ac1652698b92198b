//! Webhook secrets at rest. With the operator's `webhooks.secret_key` set, each secret is
//! sealed (AES-256-GCM) before it is stored, so a copy of the database does not let anyone
//! sign deliveries as this server. Secrets stored before the key was set stay readable.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::OsRng;
use threads_core::crypto;

/// How a sealed secret begins in storage (a plain one begins `whsec_`).
const SEALED: &str = "sealed1:";

/// The key secrets are sealed with, if the operator gave one.
#[derive(Clone, Default)]
pub struct Secrets(Option<[u8; 32]>);

/// The key never prints.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secrets(sealed)"
        } else {
            "Secrets(plain)"
        })
    }
}

impl Secrets {
    /// From `webhooks.secret_key`: empty, or 32 bytes as 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self(None));
        }
        let bytes = hex::decode(text.trim()).map_err(|_| "not hex".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes; 32 are needed (64 hex digits)", b.len()))?;
        Ok(Self(Some(key)))
    }

    /// Sealing under a key of the server's own.
    pub fn from_key(key: [u8; 32]) -> Self {
        Self(Some(key))
    }

    /// What to store for `secret`.
    pub fn seal(&self, secret: &str) -> String {
        match &self.0 {
            None => secret.to_owned(),
            Some(key) => format!(
                "{SEALED}{}",
                B64.encode(crypto::seal(key, secret.as_bytes(), &mut OsRng))
            ),
        }
    }

    /// The secret a stored value holds.
    pub fn open(&self, stored: &str) -> Result<String, String> {
        let Some(sealed) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_owned());
        };
        let key = self
            .0
            .as_ref()
            .ok_or("the webhook's secret is sealed, and this server has no webhooks.secret_key")?;
        let bytes = B64.decode(sealed).map_err(|_| "a damaged sealed secret")?;
        let plain = crypto::open(key, &bytes)
            .map_err(|_| "the webhook's secret was sealed under another webhooks.secret_key")?;
        String::from_utf8(plain).map_err(|_| "a damaged sealed secret".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let key = Secrets::from_hex(&"ab".repeat(32)).unwrap();
        let stored = key.seal("whsec_abc");
        assert!(
            stored.starts_with(SEALED) && !stored.contains("abc"),
            "{stored}"
        );
        assert_eq!(key.open(&stored).unwrap(), "whsec_abc");
        assert!(Secrets::from_hex(&"cd".repeat(32))
            .unwrap()
            .open(&stored)
            .is_err());
        assert!(Secrets::default().open(&stored).is_err());
        // Stored before the key was set: still readable.
        assert_eq!(key.open("whsec_old").unwrap(), "whsec_old");
        assert_eq!(Secrets::default().seal("whsec_x"), "whsec_x");
        assert!(Secrets::from_hex("abcd").is_err());
        assert!(Secrets::from_hex("zz").is_err());
        assert!(!format!("{key:?}").contains("ab"));
    }
}
