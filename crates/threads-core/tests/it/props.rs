//! Round trips for arbitrary inputs: seal/open, encode/decode, sign/verify.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use threads_core::crypto::{open, open_from, seal, seal_to};
use threads_core::{
    Keypair, LogId, SignaturePolicy, ThreadAddr, ThreadId, ThreadKey, Variant, VerifiedRecord,
};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn aes_round_trip(key: [u8; 32], plaintext: Vec<u8>, seed: u64) {
        let sealed = seal(&key, &plaintext, &mut rng(seed));
        prop_assert_eq!(open(&key, &sealed).unwrap(), plaintext);
    }

    #[test]
    fn box_round_trip(recipient: [u8; 32], plaintext: Vec<u8>, seed: u64) {
        let pair = Keypair::from_seed(&recipient);
        let sealed = seal_to(&pair.public(), &plaintext, &mut rng(seed)).unwrap();
        prop_assert_eq!(open_from(&pair, &sealed).unwrap(), plaintext);
    }

    #[test]
    fn thread_id_round_trip(random in proptest::collection::vec(any::<u8>(), 1..=128), acl: bool) {
        let variant = if acl { Variant::AccessControlled } else { Variant::Raw };
        let id = ThreadId::new(variant, &random).unwrap();
        prop_assert_eq!(id.to_string().parse::<ThreadId>().unwrap(), id.clone());
        prop_assert_eq!(ThreadId::from_bytes(id.as_bytes()).unwrap(), id.clone());
        prop_assert_eq!(id.variant(), variant);
        let addr = ThreadAddr::new("/ip4/10.0.0.1/tcp/4006".parse().unwrap(), id);
        prop_assert_eq!(ThreadAddr::from_bytes(&addr.to_bytes()).unwrap(), addr.clone());
        prop_assert_eq!(addr.to_string().parse::<ThreadAddr>().unwrap(), addr);
    }

    #[test]
    fn key_round_trips(seed: [u8; 32], rng_seed: u64) {
        let pair = Keypair::from_seed(&seed);
        let log = LogId::from(pair.public());
        prop_assert_eq!(log.to_string().parse::<LogId>().unwrap(), log.clone());
        prop_assert_eq!(pair.public().to_string().parse::<threads_core::PublicKey>().unwrap(), pair.public());
        prop_assert_eq!(Keypair::unmarshal(&pair.marshal()).unwrap().public(), pair.public());
        let keys = ThreadKey::random(&mut rng(rng_seed));
        prop_assert_eq!(keys.to_multibase().parse::<ThreadKey>().unwrap(), keys.clone());
        prop_assert_eq!(ThreadKey::from_bytes(&keys.follow_only().to_bytes()).unwrap(), keys.follow_only());
    }

    #[test]
    fn record_round_trip(body: Vec<u8>, seed: u64, with_prev: bool) {
        let mut rng = rng(seed);
        let keys = ThreadKey::random(&mut rng);
        let log = Keypair::generate(&mut rng);
        let author = Keypair::generate(&mut rng).public();
        let first = VerifiedRecord::create(b"\xa0", &keys, &log, &author, None, &mut rng).unwrap();
        let prev = with_prev.then(|| first.cid());
        let record = VerifiedRecord::create(&body, &keys, &log, &author, prev, &mut rng).unwrap();
        let checked = record
            .blocks()
            .clone()
            .verify(keys.service(), &LogId::from(log.public()), SignaturePolicy::CurrentOnly)
            .unwrap();
        prop_assert_eq!(&checked, &record);
        prop_assert_eq!(checked.read(keys.read().unwrap()).unwrap(), body);
    }

    /// Arbitrary bytes in any node never panic the verifier.
    #[test]
    fn garbage_is_refused_not_panicked_on(
        record: Vec<u8>, event: Vec<u8>, header: Vec<u8>, body: Vec<u8>, key: [u8; 32], log: [u8; 32],
    ) {
        let blocks = threads_core::UnverifiedRecord { record, event, header, body };
        let service = threads_core::ServiceKey::from_bytes(key);
        let log = LogId::from(Keypair::from_seed(&log).public());
        prop_assert!(blocks.verify(&service, &log, SignaturePolicy::AllowLegacy).is_err());
    }
}
