//! Every decoder of binary IDs and keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use threads_core::{Keypair, LogId, PublicKey, ThreadAddr, ThreadId, ThreadKey};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(id) = ThreadId::from_bytes(bytes) {
        assert_eq!(id.as_bytes(), bytes);
    }
    if let Ok(addr) = ThreadAddr::from_bytes(bytes) {
        assert_eq!(ThreadAddr::from_bytes(&addr.to_bytes()).unwrap(), addr);
    }
    if let Ok(log) = LogId::from_bytes(bytes) {
        assert_eq!(log.to_bytes(), bytes);
    }
    let _ = ThreadKey::from_bytes(bytes);
    let _ = PublicKey::unmarshal(bytes);
    let _ = Keypair::unmarshal(bytes);
});
