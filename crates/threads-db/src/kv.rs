//! The key/value store: `put` and `delete` actions; `get` and `list` by prefix.
//!
//! A delete is an event like any other (the tombstone lives in the journal and the thread),
//! so a key deleted on one replica is deleted on all, whatever order they learn of it in.

use std::any::Any;
use std::collections::BTreeMap;

use serde_json::{json, Value};
use threads_core::CborWriter;

use crate::action::Action;
use crate::cbor;
use crate::view::{Context, View};

/// The name [`put`] and [`delete`] address.
pub const STORE: &str = "kv";
/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;

pub fn put(key: &str, value: Value) -> Action {
    Action::new(STORE, "put", json!({"key": key, "value": value}))
}

pub fn delete(key: &str) -> Action {
    Action::new(STORE, "delete", json!({"key": key}))
}

#[derive(Default)]
pub struct KvStore {
    entries: BTreeMap<String, Value>,
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Entries whose key starts with `prefix`, in key order, after `after` (for paging).
    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        self.entries
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The key of a put or delete, or why the action is malformed.
fn key_of(action: &Action) -> Result<&str, String> {
    let key = action
        .payload
        .get("key")
        .and_then(Value::as_str)
        .ok_or("the payload needs a string \"key\"")?;
    if key.len() > MAX_KEY {
        return Err(format!("a key is at most {MAX_KEY} bytes"));
    }
    Ok(key)
}

impl View for KvStore {
    fn check(&self, action: &Action) -> Result<(), String> {
        key_of(action)?;
        match action.kind.as_str() {
            "put" if action.payload.get("value").is_none() => Err("a put needs a \"value\"".into()),
            "put" | "delete" => Ok(()),
            other => Err(format!("no action {other:?}: put or delete")),
        }
    }

    fn entity(&self, action: &Action) -> Option<String> {
        key_of(action).ok().map(str::to_owned)
    }

    fn reduce(&mut self, _: &Context, action: &Action) -> Result<Option<Value>, String> {
        self.check(action)?;
        let key = key_of(action)?.to_owned();
        Ok(match action.kind.as_str() {
            "put" => {
                self.entries
                    .insert(key.clone(), action.payload["value"].clone());
                Some(json!({"type": "put", "key": key}))
            }
            _ => self
                .entries
                .remove(&key)
                .map(|_| json!({"type": "delete", "key": key})),
        })
    }

    /// The entries as `serde_ipld_dagcbor` encodes the map, written straight into the buffer.
    fn write_snapshot(&self, w: &mut CborWriter) {
        cbor::map(w, &self.entries, cbor::value);
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.entries = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Position;

    /// Snapshots written before the view wrote its own bytes were `serde_ipld_dagcbor`'s.
    #[test]
    fn a_snapshot_is_the_dag_cbor_of_the_entries() {
        let mut store = KvStore::default();
        let at = Context {
            pos: Position {
                clock: 1,
                log: [1; 32],
                counter: 1,
            },
            index: 0,
        };
        for (key, value) in [
            ("b", json!({"n": -3, "f": 1.5, "list": [null, true, "x"]})),
            ("aa", json!("text")),
            ("", json!(u64::MAX)),
        ] {
            store.reduce(&at, &put(key, value)).unwrap();
        }
        let snapshot = store.snapshot();
        assert_eq!(
            snapshot,
            serde_ipld_dagcbor::to_vec(&store.entries).unwrap()
        );
        let mut restored = KvStore::default();
        restored.restore(&snapshot).unwrap();
        assert_eq!(restored.entries, store.entries);
    }
}
