//! Ed25519 batch verification over keys that are already decompressed.
//!
//! A [`PublicKey`] holds its curve point (a [`LogId`](crate::LogId) is parsed once), so a
//! batch need not decompress it again for every signature: with one-record pushes of many
//! logs checked together, that decompression was a sixth of each signature's cost. The
//! signatures of one key share one term, so a page of a few logs costs about one point per
//! signature.
//!
//! The equation is the cofactored one of ZIP 215: for random 128-bit `z_i`,
//! `[8]( -(Σ z_i s_i) B + Σ z_i R_i + Σ_A (Σ_{i by A} z_i k_i) A ) = 0`, where
//! `k_i = SHA-512(R_i || A || M_i) mod ℓ`. `s` must be canonical; `R` and `A` may be any
//! encoding that decompresses.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};

use crate::keys::PublicKey;

/// Signatures queued for one check.
pub(crate) struct SignatureBatch<'k> {
    /// Each signature's `s` and `k` and its key's index in `keys`.
    queued: Vec<(Scalar, Scalar, CompressedEdwardsY, usize)>,
    keys: Vec<&'k PublicKey>,
    key_index: HashMap<&'k [u8; 32], usize>,
    /// A signature that cannot verify whatever the others are (`s` not canonical).
    malformed: bool,
}

impl<'k> SignatureBatch<'k> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            queued: Vec::with_capacity(n),
            keys: Vec::new(),
            key_index: HashMap::new(),
            malformed: false,
        }
    }

    pub(crate) fn queue(&mut self, key: &'k PublicKey, signature: &[u8; 64], message: &[u8]) {
        let (r, s) = signature.split_at(32);
        let r: [u8; 32] = r.try_into().expect("32 bytes");
        let Some(s) = Option::from(Scalar::from_canonical_bytes(
            s.try_into().expect("32 bytes"),
        )) else {
            self.malformed = true;
            return;
        };
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(r)
                .chain_update(key.as_bytes())
                .chain_update(message),
        );
        let next = self.keys.len();
        let index = *self.key_index.entry(key.as_bytes()).or_insert(next);
        if index == next {
            self.keys.push(key);
        }
        self.queued.push((s, k, CompressedEdwardsY(r), index));
    }

    /// True when every queued signature holds (with overwhelming probability).
    pub(crate) fn verify(self, rng: &mut impl CryptoRngCore) -> bool {
        if self.malformed {
            return false;
        }
        let n = self.queued.len();
        let mut scalars = Vec::with_capacity(n + self.keys.len() + 1);
        let mut points = Vec::with_capacity(n + self.keys.len() + 1);
        let mut key_terms = vec![Scalar::ZERO; self.keys.len()];
        let mut base = Scalar::ZERO;
        for (s, k, r, key) in self.queued {
            let Some(r) = r.decompress() else {
                return false;
            };
            let mut z = [0u8; 32];
            rng.fill_bytes(&mut z[..16]);
            let z = Scalar::from_bytes_mod_order(z);
            base -= z * s;
            key_terms[key] += z * k;
            scalars.push(z);
            points.push(r);
        }
        for (term, key) in key_terms.into_iter().zip(self.keys) {
            scalars.push(term);
            points.push(key.point());
        }
        scalars.push(base);
        points.push(ED25519_BASEPOINT_POINT);
        EdwardsPoint::vartime_multiscalar_mul(scalars, points)
            .mul_by_cofactor()
            .is_identity()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::keys::Keypair;

    /// Signatures by `keys` (key i signs message i), checked as one batch after `tamper`.
    fn batch_holds(keys: &[&Keypair], tamper: impl FnOnce(&mut Vec<[u8; 64]>)) -> bool {
        let messages: Vec<Vec<u8>> = (0..keys.len()).map(|i| vec![i as u8; 40]).collect();
        let mut sigs: Vec<[u8; 64]> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
        tamper(&mut sigs);
        let publics: Vec<PublicKey> = keys.iter().map(|k| k.public()).collect();
        let mut batch = SignatureBatch::with_capacity(keys.len());
        for ((key, sig), message) in publics.iter().zip(&sigs).zip(&messages) {
            batch.queue(key, sig, message);
        }
        batch.verify(&mut ChaCha20Rng::seed_from_u64(7))
    }

    #[test]
    fn signatures_of_several_keys_hold_together_and_a_bad_one_fails_them() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (a, b, c) = (
            Keypair::generate(&mut rng),
            Keypair::generate(&mut rng),
            Keypair::generate(&mut rng),
        );
        let keys = [&a, &b, &a, &c, &a];
        assert!(batch_holds(&keys, |_| {}));
        assert!(!batch_holds(&keys, |s| s[3][40] ^= 1));
        // Two signatures of one key swapped: each is a valid signature, of the other message.
        assert!(!batch_holds(&keys, |s| s.swap(0, 2)));
        // `s + ℓ` satisfies the equation but is not canonical: refused.
        assert!(!batch_holds(&keys, |s| {
            const L: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut carry = 0u16;
            for (byte, l) in s[1][32..].iter_mut().zip(L) {
                let sum = *byte as u16 + l as u16 + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
            assert_eq!(carry, 0, "s + ℓ fits 256 bits");
        }));
        // An R that is not a point.
        assert!(!batch_holds(&keys, |s| {
            let not_a_point = (0u8..=255)
                .map(|y| [[y; 31].as_slice(), &[0]].concat())
                .find(|r| {
                    CompressedEdwardsY(r[..].try_into().unwrap())
                        .decompress()
                        .is_none()
                })
                .unwrap();
            s[4][..32].copy_from_slice(&not_a_point);
        }));
    }
}
