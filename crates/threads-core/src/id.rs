//! Thread IDs and log IDs.
//!
//! A thread ID is `uvarint(1) || uvarint(variant) || random`, printed as multibase base32.
//! A log ID is the libp2p peer ID of the log's Ed25519 public key, printed as base58btc.

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::keys::{KeyError, PublicKey, ServiceKey};

/// The only thread ID version there is.
pub const THREAD_ID_VERSION: u64 = 1;
/// Random bytes in a thread ID made by [`ThreadId::random`].
pub const DEFAULT_RANDOM_LEN: usize = 32;
/// What the random part of a bound thread ID hashes before the follow key.
const BOUND_ID_DOMAIN: &[u8] = b"threads/thread-id-bound-to-follow-key/v1";
/// A generous bound on the random part, so a hostile ID cannot be made arbitrarily large.
pub const MAX_RANDOM_LEN: usize = 128;

/// Why a thread ID or log ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("not multibase text: {0}")]
    Multibase(String),
    #[error("bad varint in {0}")]
    Varint(&'static str),
    #[error("unsupported thread ID version {0} (only 1 exists)")]
    Version(u64),
    #[error("unknown thread ID variant {0:#x} (0x55 raw, 0x70 access-controlled)")]
    Variant(u64),
    #[error("thread ID has no random part")]
    EmptyRandom,
    #[error("thread ID random part is {0} bytes; at most {MAX_RANDOM_LEN} are allowed")]
    RandomTooLong(usize),
    #[error("not base58btc: {0}")]
    Base58(String),
    #[error("not an identity multihash of an Ed25519 key")]
    NotIdentityMultihash,
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The kind of a thread: raw, or with access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Raw,
    AccessControlled,
}

impl Variant {
    pub const fn code(self) -> u64 {
        match self {
            Variant::Raw => 0x55,
            Variant::AccessControlled => 0x70,
        }
    }

    pub fn from_code(code: u64) -> Result<Self, IdError> {
        match code {
            0x55 => Ok(Variant::Raw),
            0x70 => Ok(Variant::AccessControlled),
            other => Err(IdError::Variant(other)),
        }
    }
}

/// A thread's identity: version, variant and a random part. Prints as multibase base32.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(Box<[u8]>);

impl ThreadId {
    /// A new thread ID with [`DEFAULT_RANDOM_LEN`] random bytes.
    pub fn random(variant: Variant, rng: &mut impl CryptoRngCore) -> Self {
        let mut random = [0u8; DEFAULT_RANDOM_LEN];
        rng.fill_bytes(&mut random);
        Self::new(variant, &random).expect("32 random bytes are a valid random part")
    }

    /// A new thread's ID bound to its follow key: the random part is
    /// `SHA-256(domain || follow key)`. Anyone may register any ID at a follower first, with a
    /// key of their own; a bound ID lets the follower tell the thread's real key from such a
    /// squatter's. The hash says nothing of the key (32 random bytes).
    pub fn bound_to(variant: Variant, follow: &ServiceKey) -> Self {
        Self::new(variant, &bound_random_part(follow)).expect("32 bytes are a valid random part")
    }

    /// Whether this ID was made by [`ThreadId::bound_to`] for `follow`. IDs made elsewhere
    /// (go-threads and js-threads pick random parts) are bound to no key.
    pub fn is_bound_to(&self, follow: &ServiceKey) -> bool {
        self.random_part() == bound_random_part(follow)
    }

    pub fn new(variant: Variant, random: &[u8]) -> Result<Self, IdError> {
        check_random(random.len())?;
        let mut buf = unsigned_varint::encode::u64_buffer();
        let mut bytes = unsigned_varint::encode::u64(THREAD_ID_VERSION, &mut buf).to_vec();
        bytes.extend_from_slice(unsigned_varint::encode::u64(variant.code(), &mut buf));
        bytes.extend_from_slice(random);
        Ok(Self(bytes.into()))
    }

    /// Parses the binary form, refusing wrong versions, unknown variants and bad varints.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let (version, rest) =
            unsigned_varint::decode::u64(bytes).map_err(|_| IdError::Varint("version"))?;
        if version != THREAD_ID_VERSION {
            return Err(IdError::Version(version));
        }
        let (variant, random) =
            unsigned_varint::decode::u64(rest).map_err(|_| IdError::Varint("variant"))?;
        Variant::from_code(variant)?;
        check_random(random.len())?;
        Ok(Self(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Version and variant always take one byte each, as `from_bytes` and `new` guarantee.
    pub fn variant(&self) -> Variant {
        Variant::from_code(u64::from(self.0[1])).expect("checked at construction")
    }

    pub fn random_part(&self) -> &[u8] {
        &self.0[2..]
    }
}

fn bound_random_part(follow: &ServiceKey) -> [u8; 32] {
    Sha256::new()
        .chain_update(BOUND_ID_DOMAIN)
        .chain_update(follow.as_bytes())
        .finalize()
        .into()
}

fn check_random(len: usize) -> Result<(), IdError> {
    match len {
        0 => Err(IdError::EmptyRandom),
        n if n > MAX_RANDOM_LEN => Err(IdError::RandomTooLong(n)),
        _ => Ok(()),
    }
}

impl FromStr for ThreadId {
    type Err = IdError;

    /// Accepts any multibase prefix, as go-threads does.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (_, bytes) = multibase::decode(s).map_err(|e| IdError::Multibase(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&multibase::encode(multibase::Base::Base32Lower, &self.0))
    }
}

impl fmt::Debug for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ThreadId({self})")
    }
}

/// The prefix of an identity multihash holding a 36-byte marshalled key.
const IDENTITY_MULTIHASH_PREFIX: [u8; 2] = [0x00, 0x24];

/// A log's identity: the libp2p peer ID of its Ed25519 public key. Prints as base58btc.
///
/// Holding the parsed key makes signature checks cheap: no decompression per record.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LogId(PublicKey);

impl LogId {
    pub fn public_key(&self) -> &PublicKey {
        &self.0
    }

    /// The peer ID bytes: identity multihash over the marshalled public key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = IDENTITY_MULTIHASH_PREFIX.to_vec();
        out.extend_from_slice(&self.0.marshal());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let key = bytes
            .strip_prefix(&IDENTITY_MULTIHASH_PREFIX[..])
            .ok_or(IdError::NotIdentityMultihash)?;
        Ok(Self(PublicKey::unmarshal(key)?))
    }
}

impl From<PublicKey> for LogId {
    fn from(key: PublicKey) -> Self {
        Self(key)
    }
}

impl FromStr for LogId {
    type Err = IdError;

    /// The peer ID's base58 text (`12D3KooW…`), or its CIDv1 form with the `libp2p-key`
    /// codec (`bafzaa…`, what js-threads' `LogID.toString()` prints).
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.starts_with('b') {
            if let Ok(cid) = crate::parse_cid(s) {
                if cid.codec() != LIBP2P_KEY {
                    return Err(IdError::NotIdentityMultihash);
                }
                return Self::from_bytes(&cid.hash().to_bytes());
            }
        }
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|e| IdError::Base58(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

/// The multicodec of a CID that names a libp2p public key.
const LIBP2P_KEY: u64 = 0x72;

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogId({self})")
    }
}

impl PartialOrd for LogId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Log IDs order by their public key bytes, which is also their binary peer ID order.
impl Ord for LogId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

/// IDs are strings for people (JSON) and bytes for machines (CBOR).
macro_rules! serde_as_string_or_bytes {
    ($ty:ty, $to_bytes:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&$to_bytes(self))
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    s.parse().map_err(D::Error::custom)
                } else {
                    let b = serde_bytes::ByteBuf::deserialize(d)?;
                    <$ty>::from_bytes(&b).map_err(D::Error::custom)
                }
            }
        }
    };
}

serde_as_string_or_bytes!(ThreadId, |id: &ThreadId| id.as_bytes().to_vec());
serde_as_string_or_bytes!(LogId, |id: &LogId| id.to_bytes());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_thread_ids() {
        let id: ThreadId = "bafk7ayo2xuuafgx6ubbcn2lro3s7oixgujdda6shv4"
            .parse()
            .unwrap();
        assert_eq!(
            hex::encode(id.as_bytes()),
            "0155f061dabd28029afea04226e97176e5f722e6a246307a47af"
        );
        assert_eq!(id.variant(), Variant::Raw);
        assert_eq!(id.random_part().len(), 24);

        let zero = ThreadId::new(Variant::Raw, &[0; 16]).unwrap();
        assert_eq!(zero.to_string(), "bafkqaaaaaaaaaaaaaaaaaaaaaaaaa");
    }

    #[test]
    fn a_bound_id_names_its_follow_key_only() {
        let key = ServiceKey::from_bytes([7; 32]);
        let id = ThreadId::bound_to(Variant::AccessControlled, &key);
        assert_eq!(id.variant(), Variant::AccessControlled);
        assert!(id.is_bound_to(&key));
        assert!(!id.is_bound_to(&ServiceKey::from_bytes([8; 32])));
        // SHA-256 of the domain and the key: other implementations can check the same binding.
        assert_eq!(
            hex::encode(id.random_part()),
            "2d62aff671172d488e393dc4f4d5bceea32af97534aacd400a054dcab8d9800f"
        );
        let random = ThreadId::new(Variant::Raw, &[7; 32]).unwrap();
        assert!(!random.is_bound_to(&key));
    }

    #[test]
    fn thread_id_errors_are_precise() {
        let parse = |hex_bytes: &str| ThreadId::from_bytes(&hex::decode(hex_bytes).unwrap());
        assert_eq!(parse("0255aa"), Err(IdError::Version(2)));
        assert_eq!(parse("0156aa"), Err(IdError::Variant(0x56)));
        assert_eq!(parse("0155"), Err(IdError::EmptyRandom));
        assert_eq!(parse("01"), Err(IdError::Varint("variant")));
        assert_eq!(
            parse("ffffffffffffffffffff01"),
            Err(IdError::Varint("version"))
        );
        // A non-minimal varint for the version (0x81 0x00 = 1).
        assert_eq!(parse("81005501"), Err(IdError::Varint("version")));
        assert!(matches!(
            "!nope".parse::<ThreadId>(),
            Err(IdError::Multibase(_))
        ));
        assert_eq!(
            ThreadId::new(Variant::Raw, &[1; MAX_RANDOM_LEN + 1]),
            Err(IdError::RandomTooLong(MAX_RANDOM_LEN + 1))
        );
    }

    #[test]
    fn reference_log_id() {
        let s = "12D3KooWFCXqmQTwvpfYFWK3DjXChEc4NoPt8pp5jjC8REZ3g6NZ";
        let id: LogId = s.parse().unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(&id.to_bytes()[..6], &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
    }

    /// js-threads prints a log ID as a CIDv1 (`libp2p-key` codec, base32): the same key.
    #[test]
    fn log_ids_in_their_cid_form() {
        let s = "12D3KooWFCXqmQTwvpfYFWK3DjXChEc4NoPt8pp5jjC8REZ3g6NZ";
        let id: LogId = s.parse().unwrap();
        let hash = multihash::Multihash::<64>::from_bytes(&id.to_bytes()).unwrap();
        let text = cid::Cid::new_v1(LIBP2P_KEY, hash).to_string();
        assert!(text.starts_with("bafzaa"), "{text}");
        assert_eq!(text.parse::<LogId>().unwrap(), id);
        // Another codec is not a key; trailing bytes are not a CID.
        let other = cid::Cid::new_v1(0x71, hash).to_string();
        assert!(other.parse::<LogId>().is_err());
        assert!(format!("{text}aa").parse::<LogId>().is_err());
    }

    #[test]
    fn log_id_errors() {
        assert!(matches!("0OIl".parse::<LogId>(), Err(IdError::Base58(_))));
        // A sha2-256 multihash (an RSA peer ID) is not an identity multihash.
        let qm = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N";
        assert_eq!(qm.parse::<LogId>(), Err(IdError::NotIdentityMultihash));
    }
}
