//! A CAR of records comes from anyone: a push, a gossip message, a replicated page. Whatever
//! its bytes, the reader does not panic, names at most the records it was allowed, and never
//! hands back more node bytes than the CAR holds (blocks named again and again cannot
//! multiply memory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use threads_client::car::{read_car_at_most, CarError};

fuzz_target!(|input: (u8, &[u8])| {
    let (max, bytes) = input;
    let max = usize::from(max % 8);
    match futures::executor::block_on(read_car_at_most(bytes, max)) {
        Ok(records) => {
            assert!(records.len() <= max);
            let held: usize = records
                .iter()
                .map(|r| {
                    let b = &r.blocks;
                    b.record.len() + b.event.len() + b.header.len() + b.body.len()
                })
                .sum();
            assert!(held <= bytes.len(), "{held} node bytes from a CAR of {}", bytes.len());
        }
        Err(CarError::TooManyRecords { records, max: limit }) => {
            assert_eq!(limit, max);
            assert!(records > max);
        }
        Err(CarError::Malformed(_)) => {}
    }
});
