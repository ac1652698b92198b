//! Encryption as go-threads deploys it.
//!
//! - Every symmetric layer: AES-256-GCM, random 12-byte nonce, no associated data;
//!   output `nonce || ciphertext || tag`.
//! - Sealing to an identity (key sets, invites): the recipient's Ed25519 key mapped to X25519,
//!   a fresh ephemeral X25519 key, NaCl box (XSalsa20-Poly1305); output
//!   `nonce(24) || ephemeral public(32) || box`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use crypto_box::{PublicKey as BoxPublicKey, SalsaBox, SecretKey as BoxSecretKey};
use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::keys::{Keypair, PublicKey, KEY_LEN};

pub const AES_NONCE_LEN: usize = 12;
pub const AES_TAG_LEN: usize = 16;
/// Bytes AES-GCM sealing adds to a plaintext.
pub const AES_OVERHEAD: usize = AES_NONCE_LEN + AES_TAG_LEN;
pub const BOX_NONCE_LEN: usize = 24;
/// Bytes sealing to an identity adds: nonce, ephemeral key, Poly1305 tag.
pub const BOX_OVERHEAD: usize = BOX_NONCE_LEN + 32 + 16;

/// Why a ciphertext could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    #[error("ciphertext is {0} bytes, shorter than its nonce and tag")]
    TooShort(usize),
    #[error("decryption failed: wrong key or tampered ciphertext")]
    DecryptFailed,
    #[error("recipient key has no X25519 form")]
    BadRecipient,
}

/// Encrypts with AES-256-GCM under a fresh random nonce: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], rng: &mut impl CryptoRngCore) -> Vec<u8> {
    let mut nonce = [0u8; AES_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(key.into());
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .expect("AES-GCM encrypts any input below 64 GiB");
    let mut out = Vec::with_capacity(AES_NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens `nonce || ciphertext || tag` made by [`seal`].
pub fn open(key: &[u8; KEY_LEN], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < AES_OVERHEAD {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let (nonce, ciphertext) = sealed.split_at(AES_NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| CryptoError::DecryptFailed)
}

/// Encrypts to the holder of `recipient`'s private key.
pub fn seal_to(
    recipient: &PublicKey,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, CryptoError> {
    let recipient = BoxPublicKey::from(recipient.verifying_key().to_montgomery().to_bytes());
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *secret);
    let ephemeral = BoxSecretKey::from(*secret);
    let mut nonce = [0u8; BOX_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let sealed = SalsaBox::new(&recipient, &ephemeral)
        .encrypt(&nonce.into(), plaintext)
        .map_err(|_| CryptoError::BadRecipient)?;
    let mut out = Vec::with_capacity(BOX_NONCE_LEN + 32 + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(ephemeral.public_key().as_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a message made by [`seal_to`] with the recipient's key pair.
pub fn open_from(recipient: &Keypair, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < BOX_OVERHEAD {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let (nonce, rest) = sealed.split_at(BOX_NONCE_LEN);
    let (ephemeral, boxed) = rest.split_at(32);
    let ephemeral: [u8; 32] = ephemeral.try_into().expect("split at 32");
    let secret = BoxSecretKey::from(*recipient.x25519_secret());
    SalsaBox::new(&BoxPublicKey::from(ephemeral), &secret)
        .decrypt(nonce.into(), boxed)
        .map_err(|_| CryptoError::DecryptFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn aes_layout_and_errors() {
        let key = [5u8; 32];
        let sealed = seal(&key, b"hello", &mut OsRng);
        assert_eq!(sealed.len(), 5 + AES_OVERHEAD);
        assert_eq!(open(&key, &sealed).unwrap(), b"hello");
        assert_eq!(open(&[6u8; 32], &sealed), Err(CryptoError::DecryptFailed));
        assert_eq!(open(&key, &sealed[..27]), Err(CryptoError::TooShort(27)));
    }

    #[test]
    fn box_to_identity() {
        let bob = Keypair::generate(&mut OsRng);
        let sealed = seal_to(&bob.public(), b"keys", &mut OsRng).unwrap();
        assert_eq!(sealed.len(), 4 + BOX_OVERHEAD);
        assert_eq!(open_from(&bob, &sealed).unwrap(), b"keys");
        let eve = Keypair::generate(&mut OsRng);
        assert_eq!(open_from(&eve, &sealed), Err(CryptoError::DecryptFailed));
    }
}
