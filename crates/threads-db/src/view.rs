//! What a store is to the dispatcher: a reducer over its state, and that state's snapshot.
//! Queries (resolvers) are the store type's own methods, reached through
//! [`crate::Dispatcher::query`].

use std::any::Any;

use serde::Serialize;
use serde_json::Value;
use threads_core::CborWriter;

use crate::action::{Action, Position};

/// Where the action being reduced sits: replicas pass the same context for the same action.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub pos: Position,
    /// The action's index among its event's actions.
    pub index: usize,
}

/// A change a store made, broadcast to subscribers after its event is committed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub store: String,
    pub pos: Option<Position>,
    /// What the store says changed, e.g. `{"type": "put", "key": "a"}`; `{"type": "rebuilt"}`
    /// when an event that sorts earlier arrived and the views were reduced again.
    pub change: Value,
}

/// A materialized view. Reducers must be deterministic: their result depends only on the
/// state, the action and the context, so every replica ends with the same state.
pub trait View: Any + Send + Sync {
    /// Whether the action could be applied now: a dispatch is refused with this error before
    /// anything is written. Replicas never call it; they reduce.
    fn check(&self, action: &Action) -> Result<(), String> {
        let _ = action;
        Ok(())
    }

    /// The entity (document, key) an action targets, whose own ACL, if one is set, decides
    /// who may write it: see [`crate::acl`]. `None`: the thread's ACL decides.
    fn entity(&self, action: &Action) -> Option<String> {
        let _ = action;
        None
    }

    /// Applies one action addressed to this store. An action that cannot apply is ignored by
    /// every replica alike (`Err` says why, for the log); `Ok(None)` means nothing changed.
    fn reduce(&mut self, at: &Context, action: &Action) -> Result<Option<Value>, String>;

    /// Writes the whole state as one deterministic DAG-CBOR item: the same state gives the
    /// same bytes anywhere. Written into the snapshot's own buffer, not one of its own.
    fn write_snapshot(&self, w: &mut CborWriter);

    /// The state's snapshot bytes alone.
    fn snapshot(&self) -> Vec<u8> {
        let mut w = CborWriter::default();
        self.write_snapshot(&mut w);
        w.into_bytes()
    }

    /// Replaces the state with a snapshot's.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;

    /// Back to the empty state.
    fn clear(&mut self);

    fn as_any(&self) -> &dyn Any;
}
