//! Vectors produced by other implementations, so the formats are not only self-consistent.

use threads_core::crypto::open_from;
use threads_core::{Keypair, LogId, ThreadAddr, ThreadId, ThreadKey};

/// Made with libsodium (PyNaCl): recipient Ed25519 seed `11 * 32`, ephemeral X25519 secret
/// `22 * 32`, nonce `00..17`, `crypto_box` to `crypto_sign_ed25519_pk_to_curve25519(pk)`.
/// Go's `nacl/box`, which go-threads uses, produces the same bytes.
const LIBSODIUM_SEALED: &str = "000102030405060708090a0b0c0d0e0f10111213141516170faa684ed28867b9\
7f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20134cc6ff9e1e45a0e6dbdf36c71406f02c44e5d981ff02\
712a48f59dd14112b7d7101a0e3ce933bb42";

#[test]
fn opens_a_box_sealed_by_libsodium() {
    let recipient = Keypair::from_seed(&[0x11; 32]);
    assert_eq!(
        hex::encode(recipient.public().as_bytes()),
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
    );
    let sealed = hex::decode(LIBSODIUM_SEALED).unwrap();
    assert_eq!(
        open_from(&recipient, &sealed).unwrap(),
        b"key set for the recipient"
    );
}

/// The example strings of the go-threads formats reference.
#[test]
fn reference_examples() {
    let id: ThreadId = "bafk7ayo2xuuafgx6ubbcn2lro3s7oixgujdda6shv4"
        .parse()
        .unwrap();
    assert_eq!(
        hex::encode(id.as_bytes()),
        "0155f061dabd28029afea04226e97176e5f722e6a246307a47af"
    );
    let zero: ThreadId = "bafkqaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
    assert_eq!(zero.random_part(), &[0; 16]);

    let log = "12D3KooWFCXqmQTwvpfYFWK3DjXChEc4NoPt8pp5jjC8REZ3g6NZ";
    assert_eq!(log.parse::<LogId>().unwrap().to_string(), log);

    let key: ThreadKey = "bp2vvqody5zm6yqycsnazb4kpqvycbdosos352zvpsorxce5koh7q"
        .parse()
        .unwrap();
    assert_eq!(
        hex::encode(key.service().as_bytes()),
        "7eab583878ee59ec4302934190f14f8570208dd274b7dd66af93a37113aa71ff"
    );

    let addr = format!("/ip4/127.0.0.1/tcp/4006/p2p/{log}/thread/{id}");
    assert_eq!(addr.parse::<ThreadAddr>().unwrap().to_string(), addr);
}
