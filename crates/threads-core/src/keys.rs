//! Keys: the symmetric keys of the three encryption layers, thread keys, and Ed25519 key pairs
//! for logs and identities.
//!
//! Secret keys zeroize on drop and their `Debug` prints nothing secret. Text forms of secrets
//! are produced only by explicit calls that return [`Zeroizing`] strings.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Every symmetric key is 32 bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// libp2p's protobuf key header: field 1 (type) = 1 (Ed25519), field 2 (data) of 32 or 64 bytes.
const ED25519_PUBLIC_HEADER: [u8; 4] = [0x08, 0x01, 0x12, 0x20];
const ED25519_PRIVATE_HEADER: [u8; 4] = [0x08, 0x01, 0x12, 0x40];
/// go-threads' older private form repeats the public key: header `08 01 12 60`.
const ED25519_LEGACY_PRIVATE_HEADER: [u8; 4] = [0x08, 0x01, 0x12, 0x60];

/// Why key bytes or a key string were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{what} must be {expected} bytes, got {found}")]
    Length {
        what: &'static str,
        expected: &'static str,
        found: usize,
    },
    #[error("not a marshalled libp2p key")]
    NotMarshalled,
    #[error("unsupported key type {0} (only Ed25519, type 1, is supported)")]
    UnsupportedKeyType(u8),
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
    #[error("the public half does not belong to the private half")]
    Mismatch,
    #[error("not multibase text: {0}")]
    Multibase(String),
}

macro_rules! symmetric_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            pub fn random(rng: &mut impl CryptoRngCore) -> Self {
                let mut key = [0u8; KEY_LEN];
                rng.fill_bytes(&mut key);
                Self(key)
            }

            pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
                let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length {
                    what: stringify!($name),
                    expected: "32",
                    found: bytes.len(),
                })?;
                Ok(Self(key))
            }

            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

symmetric_key!(
    /// The follow key (go-threads' "service key"): opens record envelopes, never content.
    ServiceKey
);
symmetric_key!(
    /// The read key: opens event headers, which hold each event's content key.
    ReadKey
);
symmetric_key!(
    /// A single-use key that encrypts one event's body.
    ContentKey
);

/// The keys of a thread: always the follow (service) key, the read key for readers.
///
/// Binary form: `service(32) || read(32)` or `service(32)` alone; text form: multibase base32.
#[derive(Clone, PartialEq, Eq)]
pub struct ThreadKey {
    service: ServiceKey,
    read: Option<ReadKey>,
}

impl ThreadKey {
    /// A fresh key with both halves, for a new thread.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            service: ServiceKey::random(rng),
            read: Some(ReadKey::random(rng)),
        }
    }

    pub fn new(service: ServiceKey, read: Option<ReadKey>) -> Self {
        Self { service, read }
    }

    pub fn service(&self) -> &ServiceKey {
        &self.service
    }

    pub fn read(&self) -> Option<&ReadKey> {
        self.read.as_ref()
    }

    /// The same thread key without its read half: what a follower receives.
    pub fn follow_only(&self) -> Self {
        Self {
            service: self.service.clone(),
            read: None,
        }
    }

    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN));
        out.extend_from_slice(self.service.as_bytes());
        if let Some(read) = &self.read {
            out.extend_from_slice(read.as_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes.len() {
            KEY_LEN => Ok(Self::new(ServiceKey::from_slice(bytes)?, None)),
            64 => Ok(Self::new(
                ServiceKey::from_slice(&bytes[..KEY_LEN])?,
                Some(ReadKey::from_slice(&bytes[KEY_LEN..])?),
            )),
            found => Err(KeyError::Length {
                what: "a thread key",
                expected: "32 or 64",
                found,
            }),
        }
    }

    /// The multibase base32 text form. It is a secret: handle it as one.
    pub fn to_multibase(&self) -> Zeroizing<String> {
        Zeroizing::new(multibase::encode(
            multibase::Base::Base32Lower,
            &*self.to_bytes(),
        ))
    }
}

impl FromStr for ThreadKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (_, bytes) = multibase::decode(s).map_err(|e| KeyError::Multibase(e.to_string()))?;
        let bytes = Zeroizing::new(bytes);
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for ThreadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadKey")
            .field("service", &"<redacted>")
            .field("read", &self.read.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An Ed25519 public key: of a log (its ID) or of an identity (a record's author).
///
/// Text form (an "identity string"): multibase base32 of the marshalled key, `bbaareie...`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// Slots of each thread's cache of decompressed keys (about 200 bytes each).
const DECOMPRESSED_SLOTS: usize = 256;

thread_local! {
    /// Keys decompressed lately on this thread, each in the slot its first byte picks: a
    /// follower reads the same log IDs push after push, and decompressing a key (a square
    /// root in the field) costs about as much as a sixth of a signature check.
    static DECOMPRESSED: std::cell::RefCell<[Option<VerifyingKey>; DECOMPRESSED_SLOTS]> =
        const { std::cell::RefCell::new([None; DECOMPRESSED_SLOTS]) };
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let slot = usize::from(bytes[0]) % DECOMPRESSED_SLOTS;
        let kept = DECOMPRESSED.with_borrow(|keys| keys[slot].filter(|k| k.as_bytes() == bytes));
        if let Some(key) = kept {
            return Ok(Self(key));
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint)?;
        DECOMPRESSED.with_borrow_mut(|keys| keys[slot] = Some(key));
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The key's curve point, decompressed when the key was read.
    pub(crate) fn point(&self) -> curve25519_dalek::EdwardsPoint {
        self.0.to_edwards()
    }

    /// libp2p's protobuf form: `08 01 12 20 || key`.
    pub fn marshal(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[..4].copy_from_slice(&ED25519_PUBLIC_HEADER);
        out[4..].copy_from_slice(self.as_bytes());
        out
    }

    pub fn unmarshal(bytes: &[u8]) -> Result<Self, KeyError> {
        check_key_type(bytes)?;
        let key = bytes
            .strip_prefix(&ED25519_PUBLIC_HEADER[..])
            .ok_or(KeyError::NotMarshalled)?;
        let key: &[u8; 32] = key.try_into().map_err(|_| KeyError::Length {
            what: "an Ed25519 public key",
            expected: "32",
            found: key.len(),
        })?;
        Self::from_bytes(key)
    }

    /// Checks an Ed25519 signature the way Go's `crypto/ed25519` does (cofactorless).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl Hash for PublicKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// Identifies the key type of a marshalled key, so other types get a precise error.
fn check_key_type(bytes: &[u8]) -> Result<(), KeyError> {
    match bytes {
        [0x08, 1, ..] => Ok(()),
        [0x08, other, ..] => Err(KeyError::UnsupportedKeyType(*other)),
        _ => Err(KeyError::NotMarshalled),
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (_, bytes) = multibase::decode(s).map_err(|e| KeyError::Multibase(e.to_string()))?;
        Self::unmarshal(&bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&multibase::encode(
            multibase::Base::Base32Lower,
            self.marshal(),
        ))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 key pair: a log's signing key, or an identity's. `Debug` shows only the public half.
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::generate(rng))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The X25519 secret of this key, as libsodium's `crypto_sign_ed25519_sk_to_curve25519`.
    pub(crate) fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_scalar_bytes())
    }

    /// libp2p's protobuf form: `08 01 12 40 || seed || public`.
    pub fn marshal(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(68));
        out.extend_from_slice(&ED25519_PRIVATE_HEADER);
        out.extend_from_slice(self.0.as_bytes());
        out.extend_from_slice(self.public().as_bytes());
        out
    }

    /// Reads the 64-byte form and go-threads' older 96-byte form (public key repeated).
    pub fn unmarshal(bytes: &[u8]) -> Result<Self, KeyError> {
        check_key_type(bytes)?;
        let body = bytes
            .strip_prefix(&ED25519_PRIVATE_HEADER[..])
            .filter(|b| b.len() == 64)
            .or_else(|| {
                bytes
                    .strip_prefix(&ED25519_LEGACY_PRIVATE_HEADER[..])
                    .filter(|b| b.len() == 96 && b[32..64] == b[64..])
            })
            .ok_or(KeyError::NotMarshalled)?;
        let seed: &[u8; 32] = body[..32].try_into().expect("length checked");
        let pair = Self::from_seed(seed);
        if pair.public().as_bytes()[..] != body[32..64] {
            return Err(KeyError::Mismatch);
        }
        Ok(pair)
    }

    /// The multibase base32 text form of the marshalled private key. A secret.
    pub fn to_multibase(&self) -> Zeroizing<String> {
        Zeroizing::new(multibase::encode(
            multibase::Base::Base32Lower,
            &*self.marshal(),
        ))
    }
}

impl FromStr for Keypair {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (_, bytes) = multibase::decode(s).map_err(|e| KeyError::Multibase(e.to_string()))?;
        Self::unmarshal(&Zeroizing::new(bytes))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_service_key() {
        let text = "bp2vvqody5zm6yqycsnazb4kpqvycbdosos352zvpsorxce5koh7q";
        let key: ThreadKey = text.parse().unwrap();
        assert_eq!(
            hex::encode(key.service().as_bytes()),
            "7eab583878ee59ec4302934190f14f8570208dd274b7dd66af93a37113aa71ff"
        );
        assert!(key.read().is_none());
        assert_eq!(&*key.to_multibase(), text);
    }

    #[test]
    fn secrets_never_print() {
        let key = ThreadKey::new(
            ServiceKey::from_bytes([7; 32]),
            Some(ReadKey::from_bytes([9; 32])),
        );
        let shown = format!(
            "{key:?} {:?} {:?}",
            key.service(),
            Keypair::from_seed(&[7; 32])
        );
        assert!(!shown.contains("07") && !shown.contains("[7"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn keypair_marshal_forms() {
        let pair = Keypair::from_seed(&[3; 32]);
        let bytes = pair.marshal();
        assert_eq!(bytes.len(), 68);
        assert_eq!(Keypair::unmarshal(&bytes).unwrap().public(), pair.public());

        let mut legacy = ED25519_LEGACY_PRIVATE_HEADER.to_vec();
        legacy.extend_from_slice(&bytes[4..]);
        legacy.extend_from_slice(pair.public().as_bytes());
        assert_eq!(Keypair::unmarshal(&legacy).unwrap().public(), pair.public());

        let mut wrong = bytes.to_vec();
        wrong[40] ^= 1;
        assert_eq!(Keypair::unmarshal(&wrong).unwrap_err(), KeyError::Mismatch);
    }

    #[test]
    fn key_type_errors() {
        assert_eq!(
            PublicKey::unmarshal(&[0x08, 0x00, 0x12, 0x01, 0]),
            Err(KeyError::UnsupportedKeyType(0))
        );
        assert_eq!(
            PublicKey::unmarshal(&[1, 2, 3]),
            Err(KeyError::NotMarshalled)
        );
        assert!(matches!(
            ThreadKey::from_bytes(&[0; 40]),
            Err(KeyError::Length { found: 40, .. })
        ));
    }

    #[test]
    fn identity_string_prefix() {
        let text = Keypair::from_seed(&[1; 32]).public().to_string();
        assert!(text.starts_with("bbaareie"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap().to_string(), text);
    }
}
