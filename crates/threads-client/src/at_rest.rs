//! Keystore files sealed at rest (envelope encryption): each file's contents are encrypted
//! with a data key of its own (AES-256-GCM), and the data key with the operator's main key.
//! Rotating the main key re-seals the data keys only; the contents are not touched.
//!
//! A sealed file is JSON: `{"sealed": 1, "main_key": ID, "data_key": B64, "body": B64}`, where
//! `ID` names the main key (a hash of it, never the key) so a file sealed under an earlier
//! main key is opened with that one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use threads_core::crypto::{open, seal};
use zeroize::Zeroizing;

use crate::{Error, Result};

const ID_DOMAIN: &[u8] = b"threads/keystore-main-key-id/v1";

/// One main key: 32 bytes the operator keeps outside the data directory.
#[derive(Clone)]
pub struct MainKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MainKey({})", self.id())
    }
}

impl MainKey {
    /// Reads a key written as base64 (standard alphabet) or hex, 32 bytes either way.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| B64.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::Keystore("a main key is 32 bytes, written as base64 or hex".into())
            })?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *key);
        Self(key)
    }

    /// The key as base64, for writing it to a file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(*self.0))
    }

    /// What sealed files record to name this key: 8 bytes of a domain-separated hash, hex.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(ID_DOMAIN)
            .chain_update(*self.0)
            .finalize();
        hex::encode(&digest[..8])
    }
}

/// The main key files are sealed under, and earlier ones still accepted when opening (while a
/// rotation re-seals what they sealed).
#[derive(Debug, Clone)]
pub struct MainKeys {
    pub current: MainKey,
    pub earlier: Vec<MainKey>,
}

impl MainKeys {
    fn find(&self, id: &str) -> Option<&MainKey> {
        std::iter::once(&self.current)
            .chain(&self.earlier)
            .find(|k| k.id() == id)
    }
}

#[derive(Serialize, Deserialize)]
struct SealedFile {
    sealed: u8,
    main_key: String,
    data_key: String,
    body: String,
}

/// What a keystore file holds, as read from disk.
pub(crate) enum Contents {
    Clear(Vec<u8>),
    Sealed(Zeroizing<Vec<u8>>),
}

impl Contents {
    pub(crate) fn plain(&self) -> &[u8] {
        match self {
            Contents::Clear(bytes) => bytes,
            Contents::Sealed(plain) => plain,
        }
    }
}

/// Opens a file's bytes: sealed ones with the main key they name, others as they are.
pub(crate) fn read(bytes: Vec<u8>, keys: Option<&MainKeys>, what: &str) -> Result<Contents> {
    let Ok(file) = serde_json::from_slice::<SealedFile>(&bytes) else {
        return Ok(Contents::Clear(bytes));
    };
    let bad = |why: &str| Error::Keystore(format!("{what}: {why}"));
    let keys = keys.ok_or_else(|| {
        bad("it is sealed under a main key, and none was given: supply the main key")
    })?;
    let main = keys.find(&file.main_key).ok_or_else(|| {
        bad(&format!(
            "it is sealed under another main key (ID {})",
            file.main_key
        ))
    })?;
    let data_key = B64
        .decode(&file.data_key)
        .ok()
        .and_then(|sealed| open(&main.0, &sealed).ok())
        .filter(|k| k.len() == 32)
        .map(Zeroizing::new)
        .ok_or_else(|| bad("its data key does not open"))?;
    let data_key: &[u8; 32] = data_key[..].try_into().expect("checked above");
    let plain = B64
        .decode(&file.body)
        .ok()
        .and_then(|sealed| open(data_key, &sealed).ok())
        .ok_or_else(|| bad("its contents do not open: the file is damaged"))?;
    Ok(Contents::Sealed(Zeroizing::new(plain)))
}

/// The bytes to write for `plain`: sealed under a fresh data key when there is a main key.
pub(crate) fn write(plain: &[u8], keys: Option<&MainKeys>) -> Vec<u8> {
    let Some(keys) = keys else {
        return plain.to_vec();
    };
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut *data_key);
    let file = SealedFile {
        sealed: 1,
        main_key: keys.current.id(),
        data_key: B64.encode(seal(&keys.current.0, &*data_key, &mut OsRng)),
        body: B64.encode(seal(&data_key, plain, &mut OsRng)),
    };
    serde_json::to_vec(&file).expect("strings serialize")
}

/// What to write so that a file is sealed under the current main key, if it is not: clear
/// contents are sealed; under an earlier main key, only the data key is sealed again.
pub(crate) fn reseal(bytes: Vec<u8>, keys: &MainKeys, what: &str) -> Result<Option<Vec<u8>>> {
    let Ok(mut file) = serde_json::from_slice::<SealedFile>(&bytes) else {
        return Ok(Some(write(&bytes, Some(keys))));
    };
    if file.main_key == keys.current.id() {
        return Ok(None);
    }
    // Checks that everything opens before anything is rewritten.
    read(bytes, Some(keys), what)?;
    let main = keys.find(&file.main_key).expect("read found it");
    let data_key = B64
        .decode(&file.data_key)
        .ok()
        .and_then(|sealed| open(&main.0, &sealed).ok())
        .map(Zeroizing::new)
        .expect("read opened it");
    file.main_key = keys.current.id();
    file.data_key = B64.encode(seal(&keys.current.0, &data_key, &mut OsRng));
    Ok(Some(serde_json::to_vec(&file).expect("strings serialize")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_contents_open_with_the_key_they_name_only() {
        let (old, new) = (MainKey::random(), MainKey::random());
        let keys = MainKeys {
            current: old.clone(),
            earlier: vec![],
        };
        let sealed = write(b"secret", Some(&keys));
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
        let opened = read(sealed.clone(), Some(&keys), "f").unwrap();
        assert!(matches!(&opened, Contents::Sealed(_)));
        assert_eq!(opened.plain(), b"secret");

        // After a rotation the old key still opens it.
        let rotated = MainKeys {
            current: new.clone(),
            earlier: vec![old],
        };
        let opened = read(sealed.clone(), Some(&rotated), "f").unwrap();
        assert_eq!(opened.plain(), b"secret");

        let only_new = MainKeys {
            current: new,
            earlier: vec![],
        };
        let err = read(sealed.clone(), Some(&only_new), "f").err().unwrap();
        assert!(err.to_string().contains("another main key"), "{err}");
        let err = read(sealed, None, "f").err().unwrap();
        assert!(err.to_string().contains("supply the main key"), "{err}");
        assert!(matches!(
            read(b"plain".to_vec(), Some(&keys), "f").unwrap(),
            Contents::Clear(_)
        ));
    }

    #[test]
    fn resealing_changes_the_data_key_seal_and_keeps_the_body() {
        let (old, new) = (MainKey::random(), MainKey::random());
        let before = MainKeys {
            current: old.clone(),
            earlier: vec![],
        };
        let sealed = write(b"secret", Some(&before));
        assert!(reseal(sealed.clone(), &before, "f").unwrap().is_none());
        let after = MainKeys {
            current: new.clone(),
            earlier: vec![old],
        };
        let resealed = reseal(sealed.clone(), &after, "f").unwrap().unwrap();
        let (a, b): (SealedFile, SealedFile) = (
            serde_json::from_slice(&sealed).unwrap(),
            serde_json::from_slice(&resealed).unwrap(),
        );
        assert_eq!(a.body, b.body);
        assert_ne!(a.data_key, b.data_key);
        let only_new = MainKeys {
            current: new,
            earlier: vec![],
        };
        assert_eq!(
            read(resealed, Some(&only_new), "f").unwrap().plain(),
            b"secret"
        );
        let clear = reseal(b"plain".to_vec(), &only_new, "f").unwrap().unwrap();
        assert_eq!(read(clear, Some(&only_new), "f").unwrap().plain(), b"plain");
    }

    #[test]
    fn main_keys_parse_from_base64_or_hex() {
        let key = MainKey::random();
        let b64 = key.to_base64();
        assert_eq!(MainKey::parse(&b64).unwrap().id(), key.id());
        assert_eq!(MainKey::parse(&hex::encode(*key.0)).unwrap().id(), key.id());
        assert!(MainKey::parse("c2hvcnQ=").is_err());
    }
}
