//! Openers of ciphertexts: AES-GCM layers and boxes sealed to an identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use threads_core::{crypto, Keypair};

fuzz_target!(|bytes: &[u8]| {
    let _ = crypto::open(&[3; 32], bytes);
    let _ = crypto::open_from(&Keypair::from_seed(&[4; 32]), bytes);
});
