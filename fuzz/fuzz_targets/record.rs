//! A peer holding the follow key controls every byte of a record, including the envelope
//! plaintext. Seal the fuzzed envelope with a fixed key so every decoder behind it is reached.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use threads_core::{crypto, Keypair, LogId, ServiceKey, SignaturePolicy, UnverifiedRecord};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    envelope: Vec<u8>,
    event: Vec<u8>,
    header: Vec<u8>,
    body: Vec<u8>,
    raw_record: Option<Vec<u8>>,
}

/// A CBOR byte string holding `inner`, built without the crate's private writer.
fn bytes_node(inner: &[u8]) -> Vec<u8> {
    let mut out = match inner.len() {
        n @ 0..=23 => vec![0x40 | n as u8],
        n @ 24..=0xff => vec![0x58, n as u8],
        n @ 0x100..=0xffff => vec![0x59, (n >> 8) as u8, n as u8],
        n => [&[0x5a][..], &(n as u32).to_be_bytes()].concat(),
    };
    out.extend_from_slice(inner);
    out
}

fuzz_target!(|input: Input| {
    let service = ServiceKey::from_bytes([1; 32]);
    let log = LogId::from(Keypair::from_seed(&[2; 32]).public());
    let record = input.raw_record.unwrap_or_else(|| {
        let sealed = crypto::seal(service.as_bytes(), &input.envelope, &mut rand_core::OsRng);
        bytes_node(&sealed)
    });
    let blocks = UnverifiedRecord { record, event: input.event, header: input.header, body: input.body };
    let _ = blocks.verify(&service, &log, SignaturePolicy::AllowLegacy);
});
