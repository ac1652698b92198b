//! JSON CRDT documents (paper 4.2) for concurrent editing, on Automerge: writers edit their
//! copy and dispatch the Automerge changes; every replica applies them, so concurrent edits
//! of different fields all survive and edits of one field settle the same way everywhere.
//!
//! A writer's Automerge actor is its log key, so its changes are numbered in its log's order.

use std::any::Any;
use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, AutoSerde, Change, ObjId, ObjType, ReadDoc, ROOT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use threads_core::CborWriter;

use crate::action::Action;
use crate::view::{Context, View};

pub const STORE: &str = "crdt";

#[derive(Default)]
pub struct CrdtStore {
    docs: BTreeMap<String, Doc>,
}

struct Doc {
    doc: AutoCommit,
    /// The changes applied, in order: the snapshot, so it is the same bytes on every replica.
    changes: Vec<serde_bytes::ByteBuf>,
}

#[derive(Serialize, Deserialize)]
struct DocState {
    changes: Vec<serde_bytes::ByteBuf>,
}

impl CrdtStore {
    /// A document as JSON.
    pub fn get(&self, name: &str) -> Option<Value> {
        let doc = &self.docs.get(name)?.doc;
        Some(serde_json::to_value(AutoSerde::from(doc)).expect("documents are JSON"))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.docs.keys()
    }

    /// The action that sets `path` (dotted; missing objects are made) of document `name` to
    /// `value`, as the writer whose log key is `actor`, on top of what this view holds.
    pub fn set(
        &self,
        name: &str,
        actor: &[u8; 32],
        path: &str,
        value: &Value,
    ) -> Result<Action, String> {
        let mut doc = match self.docs.get(name) {
            Some(held) => held.doc.clone(),
            None => AutoCommit::new(),
        }
        .with_actor(ActorId::from(actor));
        let before = doc.get_heads();
        let steps: Vec<&str> = path.split('.').collect();
        let (last, parents) = steps.split_last().ok_or("an empty path")?;
        if last.is_empty() || parents.iter().any(|s| s.is_empty()) {
            return Err(format!("{path:?} is not a dotted path"));
        }
        let mut obj = ROOT;
        for step in parents {
            obj = match doc.get(&obj, *step).map_err(|e| e.to_string())? {
                Some((automerge::Value::Object(ObjType::Map), id)) => id,
                _ => doc
                    .put_object(&obj, *step, ObjType::Map)
                    .map_err(|e| e.to_string())?,
            };
        }
        put(&mut doc, &obj, last, value).map_err(|e| e.to_string())?;
        let changes: Vec<String> = doc
            .get_changes(&before)
            .into_iter()
            .map(|mut c| hex::encode(c.bytes()))
            .collect();
        Ok(Action::new(
            STORE,
            "change",
            json!({"doc": name, "changes": changes}),
        ))
    }
}

/// Writes a JSON value under `key` of a map, as nested maps, lists and scalars.
fn put(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    match object_type(value) {
        Some(kind) => {
            let made = doc.put_object(obj, key, kind)?;
            fill(doc, &made, value)
        }
        None => doc.put(obj, key, scalar_of(value)),
    }
}

/// Inserts a JSON value at `at` of a list.
fn insert(
    doc: &mut AutoCommit,
    list: &ObjId,
    at: usize,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    match object_type(value) {
        Some(kind) => {
            let made = doc.insert_object(list, at, kind)?;
            fill(doc, &made, value)
        }
        None => doc.insert(list, at, scalar_of(value)),
    }
}

/// Writes an object's or array's members into the map or list just made for it.
fn fill(doc: &mut AutoCommit, obj: &ObjId, value: &Value) -> Result<(), automerge::AutomergeError> {
    match value {
        Value::Object(fields) => fields.iter().try_for_each(|(k, v)| put(doc, obj, k, v)),
        Value::Array(items) => {
            (items.iter().enumerate()).try_for_each(|(i, v)| insert(doc, obj, i, v))
        }
        _ => Ok(()),
    }
}

fn object_type(value: &Value) -> Option<ObjType> {
    match value {
        Value::Object(_) => Some(ObjType::Map),
        Value::Array(_) => Some(ObjType::List),
        _ => None,
    }
}

fn scalar_of(value: &Value) -> automerge::ScalarValue {
    use automerge::ScalarValue as S;
    match value {
        Value::Bool(b) => S::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => S::Int(i),
            (None, Some(u)) => S::Uint(u),
            _ => S::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => S::Str(s.as_str().into()),
        _ => S::Null,
    }
}

fn changes_of(action: &Action) -> Result<(String, Vec<Vec<u8>>), String> {
    let p = &action.payload;
    let name = p
        .get("doc")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 256)
        .ok_or("the payload needs a \"doc\" name (1 to 256 bytes)")?;
    let changes = p
        .get("changes")
        .and_then(Value::as_array)
        .ok_or("the payload needs \"changes\" (hex)")?
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|h| hex::decode(h).ok())
                .ok_or("a change is hex")
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_owned(), changes))
}

impl View for CrdtStore {
    fn check(&self, action: &Action) -> Result<(), String> {
        if action.kind != "change" {
            return Err(format!("no action {:?}: change", action.kind));
        }
        let (_, changes) = changes_of(action)?;
        for bytes in changes {
            Change::from_bytes(bytes).map_err(|e| format!("not an Automerge change: {e}"))?;
        }
        Ok(())
    }

    fn entity(&self, action: &Action) -> Option<String> {
        changes_of(action).ok().map(|(name, _)| name)
    }

    fn reduce(&mut self, _: &Context, action: &Action) -> Result<Option<Value>, String> {
        self.check(action)?;
        let (name, raw) = changes_of(action)?;
        let changes: Vec<Change> = raw
            .iter()
            .map(|b| Change::from_bytes(b.clone()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let held = self.docs.entry(name.clone()).or_insert_with(|| Doc {
            doc: AutoCommit::new(),
            changes: Vec::new(),
        });
        held.doc.apply_changes(changes).map_err(|e| e.to_string())?;
        held.changes
            .extend(raw.into_iter().map(serde_bytes::ByteBuf::from));
        Ok(Some(json!({"type": "change", "doc": name})))
    }

    fn write_snapshot(&self, w: &mut CborWriter) {
        let state: BTreeMap<&String, DocState> = self
            .docs
            .iter()
            .map(|(name, d)| {
                (
                    name,
                    DocState {
                        changes: d.changes.clone(),
                    },
                )
            })
            .collect();
        w.encoded(&serde_ipld_dagcbor::to_vec(&state).expect("changes encode"));
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: BTreeMap<String, DocState> =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        self.docs.clear();
        for (name, s) in state {
            let mut doc = AutoCommit::new();
            let changes = s
                .changes
                .iter()
                .map(|b| Change::from_bytes(b.to_vec()).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            doc.apply_changes(changes).map_err(|e| e.to_string())?;
            self.docs.insert(
                name,
                Doc {
                    doc,
                    changes: s.changes,
                },
            );
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.docs.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Position;

    fn at(n: u8) -> Context {
        Context {
            pos: Position {
                clock: 1,
                log: [n; 32],
                counter: 1,
            },
            index: 0,
        }
    }

    #[test]
    fn concurrent_edits_merge_alike_in_any_order() {
        let mut base = CrdtStore::default();
        let first = base
            .set("note", &[1; 32], "title", &json!("Plans"))
            .unwrap();
        base.reduce(&at(1), &first).unwrap();
        // Two writers edit from the same state without hearing of each other.
        let a = base
            .set("note", &[1; 32], "body.text", &json!("from A"))
            .unwrap();
        let b = base
            .set("note", &[2; 32], "tags", &json!(["x", {"y": 1}]))
            .unwrap();
        // B's next edit builds on B's own view, which holds its first.
        base.reduce(&at(2), &b).unwrap();
        let c = base
            .set("note", &[2; 32], "title", &json!("Plans (B)"))
            .unwrap();
        let mut one = CrdtStore::default();
        let mut two = CrdtStore::default();
        for action in [&first, &a, &b, &c] {
            one.reduce(&at(1), action).unwrap();
        }
        for action in [&first, &c, &b, &a] {
            two.reduce(&at(1), action).unwrap();
        }
        let expected = json!({"title": "Plans (B)", "body": {"text": "from A"},
                              "tags": ["x", {"y": 1}]});
        assert_eq!(one.get("note"), Some(expected.clone()));
        assert_eq!(two.get("note"), Some(expected));
        let mut restored = CrdtStore::default();
        restored.restore(&one.snapshot()).unwrap();
        assert_eq!(restored.get("note"), one.get("note"));
        assert!(base
            .check(&Action::new(
                STORE,
                "change",
                json!({"doc": "n", "changes": ["00"]})
            ))
            .is_err());
    }
}
