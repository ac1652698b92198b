//! JSON values and actions written as DAG-CBOR straight into one buffer by the core's
//! [`CborWriter`], for snapshots and journaled actions: the same bytes `serde_ipld_dagcbor`
//! makes for the same values, without the buffer it fills and copies for every map entry in
//! order to sort it. For a snapshot of 100,000 documents, that copying (each document's bytes
//! moved once per map it sits in) was most of the time taken. Both are still read with
//! `serde_ipld_dagcbor`.

use serde_json::Value;
use threads_core::CborWriter;

use crate::action::Action;

/// A map with text keys, in DAG-CBOR's key order (shorter keys first, then bytewise), each
/// value written by `value`.
pub(crate) fn map<K: AsRef<str>, V>(
    w: &mut CborWriter,
    entries: impl IntoIterator<Item = (K, V)>,
    mut value: impl FnMut(&mut CborWriter, V),
) {
    let mut entries: Vec<(K, V)> = entries.into_iter().collect();
    entries.sort_by(|(a, _), (b, _)| {
        let (a, b) = (a.as_ref(), b.as_ref());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    });
    w.map(entries.len() as u64);
    for (key, v) in entries {
        w.key(key.as_ref());
        value(w, v);
    }
}

/// A JSON value: integers as CBOR integers, other numbers as 64-bit floats (as serde_json
/// hands them to a serializer).
pub(crate) fn value(w: &mut CborWriter, v: &Value) {
    match v {
        Value::Null => w.null(),
        Value::Bool(b) => w.bool(*b),
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                w.uint(n);
            } else if let Some(n) = n.as_i64() {
                w.int(n);
            } else {
                w.f64(n.as_f64().unwrap_or_default());
            }
        }
        Value::String(s) => w.text(s),
        Value::Array(items) => {
            w.list(items.len() as u64);
            items.iter().for_each(|item| value(w, item));
        }
        Value::Object(fields) => map(w, fields, value),
    }
}

/// A dispatch's actions, as [`Action`]'s serde form: a list of `{type, store, payload}` maps
/// (their keys here in DAG-CBOR's order).
pub(crate) fn actions(w: &mut CborWriter, actions: &[Action]) {
    w.list(actions.len() as u64);
    for action in actions {
        w.map(3);
        w.key("type");
        w.text(&action.kind);
        w.key("store");
        w.text(&action.store);
        w.key("payload");
        value(w, &action.payload);
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
            let mut w = CborWriter::default();
            value(&mut w, &v);
            prop_assert_eq!(w.into_bytes(), serde_ipld_dagcbor::to_vec(&v).unwrap());
        }

        #[test]
        fn writes_actions_as_serde_ipld_dagcbor_does(
            list in prop::collection::vec((".{0,10}", ".{0,10}", json()), 0..4)
        ) {
            let list: Vec<Action> = list
                .into_iter()
                .map(|(store, kind, payload)| Action::new(&store, &kind, payload))
                .collect();
            let mut w = CborWriter::default();
            actions(&mut w, &list);
            prop_assert_eq!(w.into_bytes(), serde_ipld_dagcbor::to_vec(&list).unwrap());
        }
    }

    #[test]
    fn long_texts_and_maps_have_long_heads() {
        let fields: BTreeMap<String, Value> = (0..300)
            .map(|i| (format!("k{i}"), Value::from("y".repeat(i * 300))))
            .collect();
        let v = Value::Object(fields.into_iter().collect());
        let mut w = CborWriter::default();
        value(&mut w, &v);
        assert_eq!(w.into_bytes(), serde_ipld_dagcbor::to_vec(&v).unwrap());
    }
}
