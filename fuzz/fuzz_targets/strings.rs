//! Every parser of protocol strings a user or peer may hand us.
#![no_main]

use libfuzzer_sys::fuzz_target;
use threads_core::{Cid, Keypair, LogId, PublicKey, ThreadAddr, ThreadId, ThreadKey};

fuzz_target!(|s: &str| {
    if let Ok(id) = s.parse::<ThreadId>() {
        assert_eq!(id.to_string().parse::<ThreadId>().unwrap(), id);
    }
    if let Ok(addr) = s.parse::<ThreadAddr>() {
        assert_eq!(addr.to_string().parse::<ThreadAddr>().unwrap(), addr);
    }
    let _ = s.parse::<LogId>();
    let _ = s.parse::<ThreadKey>();
    let _ = s.parse::<PublicKey>();
    let _ = s.parse::<Keypair>();
    let _ = s.parse::<Cid>();
});
