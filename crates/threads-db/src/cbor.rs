//! DAG-CBOR written straight into one buffer, for snapshots and journaled actions: the same
//! bytes `serde_ipld_dagcbor` makes for the same values, without the buffer it fills and copies
//! for every map entry in order to sort it. For a snapshot of 100,000 documents, that copying
//! (each document's bytes moved once per map it sits in) was most of the time taken. Both are
//! still read with `serde_ipld_dagcbor`.

use serde_json::Value;

use crate::action::Action;

const UINT: u8 = 0;
const NEGATIVE: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const FLOAT64: u8 = 0xfb;

/// A major type and its argument, in the shortest form.
pub(crate) fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    threads_core::write_cbor_head(out, major, n);
}

pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, UINT, n);
}

pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn array_head(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

/// The head of a map of `len` entries, whose keys the caller writes in DAG-CBOR's order.
pub(crate) fn map_head(out: &mut Vec<u8>, len: usize) {
    head(out, MAP, len as u64);
}

/// A map with text keys, in DAG-CBOR's key order (shorter keys first, then bytewise), each
/// value written by `value`.
pub(crate) fn map<K: AsRef<str>, V>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (K, V)>,
    mut value: impl FnMut(&mut Vec<u8>, V),
) {
    let mut entries: Vec<(K, V)> = entries.into_iter().collect();
    entries.sort_by(|(a, _), (b, _)| {
        let (a, b) = (a.as_ref(), b.as_ref());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    });
    map_head(out, entries.len());
    for (key, v) in entries {
        text(out, key.as_ref());
        value(out, v);
    }
}

pub(crate) fn null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// A JSON value: integers as CBOR integers, other numbers as 64-bit floats (as serde_json
/// hands them to a serializer).
pub(crate) fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => null(out),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                uint(out, n);
            } else if let Some(n) = n.as_i64() {
                // Negative: CBOR holds -1 - n.
                head(out, NEGATIVE, !(n as u64));
            } else {
                out.push(FLOAT64);
                out.extend_from_slice(&n.as_f64().unwrap_or_default().to_be_bytes());
            }
        }
        Value::String(s) => text(out, s),
        Value::Array(items) => {
            array_head(out, items.len());
            items.iter().for_each(|item| value(out, item));
        }
        Value::Object(fields) => map(out, fields, value),
    }
}

/// A dispatch's actions, as [`Action`]'s serde form: a list of `{type, store, payload}` maps
/// (their keys here in DAG-CBOR's order).
pub(crate) fn actions(out: &mut Vec<u8>, actions: &[Action]) {
    array_head(out, actions.len());
    for action in actions {
        map_head(out, 3);
        text(out, "type");
        text(out, &action.kind);
        text(out, "store");
        text(out, &action.store);
        text(out, "payload");
        value(out, &action.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            prop::sample::select(vec![
                0u64,
                23,
                24,
                255,
                256,
                65535,
                65536,
                u32::MAX as u64 + 1
            ])
            .prop_map(Value::from),
            ".{0,30}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 40, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{0,30}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the value, the bytes are serde_ipld_dagcbor's.
        #[test]
        fn writes_what_serde_ipld_dagcbor_writes(v in json()) {
            let mut out = Vec::new();
            value(&mut out, &v);
            prop_assert_eq!(out, serde_ipld_dagcbor::to_vec(&v).unwrap());
        }

        #[test]
        fn writes_actions_as_serde_ipld_dagcbor_does(
            list in prop::collection::vec((".{0,10}", ".{0,10}", json()), 0..4)
        ) {
            let list: Vec<Action> = list
                .into_iter()
                .map(|(store, kind, payload)| Action::new(&store, &kind, payload))
                .collect();
            let mut out = Vec::new();
            actions(&mut out, &list);
            prop_assert_eq!(out, serde_ipld_dagcbor::to_vec(&list).unwrap());
        }
    }

    #[test]
    fn long_texts_and_maps_have_long_heads() {
        let fields: BTreeMap<String, Value> = (0..300)
            .map(|i| (format!("k{i}"), Value::from("y".repeat(i * 300))))
            .collect();
        let v = Value::Object(fields.into_iter().collect());
        let mut out = Vec::new();
        value(&mut out, &v);
        assert_eq!(out, serde_ipld_dagcbor::to_vec(&v).unwrap());
    }
}
