//! Records per second on one core: building (seal + sign), and verifying with the follow key
//! alone and in pushed batches. Run: `cargo bench -p threads-core --bench record`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use threads_core::{
    verify_batch, Keypair, LogId, SignaturePolicy, ThreadKey, UnverifiedRecord, VerifiedRecord,
};

/// 1 KiB bodies, as the follower's target is stated for.
const BODY_LEN: usize = 1024;
/// Enough records that one pass takes a measurable time; cycled for longer runs.
const RECORDS: usize = 4096;
/// A typical pushed batch; batch verification gains little beyond a few hundred.
const BATCH: usize = 256;
/// Logs of the batches that hold one record of each, as concurrent one-record pushes do.
const LOGS: usize = 32;
/// Each figure is the best of several passes of at least this long.
const MIN_PASS: Duration = Duration::from_millis(500);
const PASSES: usize = 5;

fn rate(label: &str, per_pass: usize, mut pass: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..PASSES {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < MIN_PASS {
            pass();
            n += per_pass;
        }
        best = best.min(start.elapsed().as_secs_f64() / n as f64);
    }
    println!(
        "{label:<44} {:>10.0} records/s  {:>7.2} µs/record",
        1.0 / best,
        best * 1e6
    );
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let keys = ThreadKey::random(&mut rng);
    let log = Keypair::generate(&mut rng);
    let author = Keypair::generate(&mut rng).public();
    let log_id = LogId::from(log.public());
    let service = keys.service().clone();
    let body = vec![0x42u8; BODY_LEN];

    let mut prev = None;
    let records: Vec<UnverifiedRecord> = (0..RECORDS)
        .map(|_| {
            let r = VerifiedRecord::create(&body, &keys, &log, &author, prev, &mut rng).unwrap();
            prev = Some(r.cid());
            r.into_blocks()
        })
        .collect();

    println!("threads-core record benchmark: {BODY_LEN} B bodies, one core");
    rate("create (content key, 3 seals, sign)", 64, || {
        for _ in 0..64 {
            black_box(VerifiedRecord::create(&body, &keys, &log, &author, prev, &mut rng).unwrap());
        }
    });
    let mut i = 0;
    rate("verify one at a time (follow key)", 64, || {
        for _ in 0..64 {
            let r = records[i % RECORDS].clone();
            i += 1;
            black_box(
                r.verify(&service, &log_id, SignaturePolicy::CurrentOnly)
                    .unwrap(),
            );
        }
    });
    // Small sizes show where a batch starts to pay (a push of one record is common).
    for size in [1, 2, 3, 4, BATCH] {
        let mut start = 0;
        rate(
            &format!("verify in batches of {size} (follow key)"),
            size,
            || {
                let batch = records[start..start + size]
                    .iter()
                    .map(|r| (r.clone(), &service, &log_id));
                start = (start + size) % (RECORDS - size);
                for verdict in verify_batch(batch, SignaturePolicy::CurrentOnly) {
                    black_box(verdict.unwrap());
                }
            },
        );
    }
    // One record of each of many logs, as one-record pushes arriving together are checked.
    let logs: Vec<(Keypair, LogId)> = (0..LOGS)
        .map(|_| {
            let pair = Keypair::generate(&mut rng);
            let id = LogId::from(pair.public());
            (pair, id)
        })
        .collect();
    let firsts: Vec<UnverifiedRecord> = logs
        .iter()
        .map(|(pair, _)| {
            VerifiedRecord::create(&body, &keys, pair, &author, None, &mut rng)
                .unwrap()
                .into_blocks()
        })
        .collect();
    for size in [4, LOGS] {
        rate(
            &format!("verify in batches of {size}, one record per log"),
            size,
            || {
                let batch = firsts[..size]
                    .iter()
                    .zip(&logs)
                    .map(|(r, (_, id))| (r.clone(), &service, id));
                for verdict in verify_batch(batch, SignaturePolicy::CurrentOnly) {
                    black_box(verdict.unwrap());
                }
            },
        );
    }
    let read = keys.read().unwrap();
    let verified: Vec<VerifiedRecord> = records[..64]
        .iter()
        .map(|r| {
            r.clone()
                .verify(&service, &log_id, SignaturePolicy::CurrentOnly)
                .unwrap()
        })
        .collect();
    rate("read (open header and body, read key)", 64, || {
        for r in &verified {
            black_box(r.read(read).unwrap());
        }
    });
}
