//! Access control (paper 4.3.2): ACLs are event-sourced JSON documents, enforced by every
//! reader as it reduces, so an event without the right role at its place in the order is
//! ignored by every replica alike.
//!
//! - `thread`: the thread's ACL. With none, the thread is open: every log may write, and
//!   delete its own events.
//! - `<store>:<entity>`: a document's ACL (e.g. `docs:people/42`, `kv:color`). Where one
//!   exists it decides writes to that entity instead of the thread's.
//! - `<id>-acl`: who may change ACL `<id>`; `thread-acl` also governs every ACL without one
//!   of its own, and itself. The first ACL set in an open thread makes its author the
//!   admin: `{"default": "no-access", "peers": {author: ["write", "delete"]}}`.
//!
//! Roles are log IDs (the peer IDs writers sign with) mapped to `no-access`, `follow`,
//! `read`, `write` and `delete`; `default` applies to logs not listed. `write` lets a log's
//! events take effect; `delete` lets it mark earlier events deleted, which removes their
//! effects from every view.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use threads_core::LogId;

use crate::action::{Action, Position, KEY_LEN};

pub const STORE: &str = "acl";
/// The thread's ACL, and the ACL that governs every ACL.
pub const THREAD: &str = "thread";
pub const ADMIN: &str = "thread-acl";
const GOVERNS: &str = "-acl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    NoAccess,
    Follow,
    Read,
    Write,
    Delete,
}

/// An ACL document as the thread carries it (the paper's Example 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclDoc {
    pub default: Role,
    #[serde(default)]
    pub peers: BTreeMap<String, Vec<Role>>,
}

/// Sets ACL `id` (see the module's documentation for ids).
pub fn set(id: &str, doc: &AclDoc) -> Action {
    let mut payload = serde_json::to_value(doc).expect("an ACL is plain JSON");
    payload["_id"] = json!(id);
    Action::new(STORE, "set", payload)
}

/// Marks an earlier event deleted (needs the `delete` role).
pub fn delete_event(event: Position) -> Action {
    Action::new(
        STORE,
        "delete_event",
        json!({"event": hex::encode(event.key())}),
    )
}

/// An ACL with its peers' keys parsed, for cheap checks.
#[derive(Debug, Clone)]
struct Acl {
    doc: AclDoc,
    by_key: BTreeMap<[u8; 32], Vec<Role>>,
}

impl Acl {
    fn new(doc: AclDoc) -> Result<Self, String> {
        let mut by_key = BTreeMap::new();
        for (peer, roles) in &doc.peers {
            let log: LogId = peer
                .parse()
                .map_err(|e| format!("{peer:?} is not a log ID: {e}"))?;
            by_key.insert(*log.public_key().as_bytes(), roles.clone());
        }
        Ok(Self { doc, by_key })
    }

    fn grants(&self, log: &[u8; 32], role: Role) -> bool {
        match self.by_key.get(log) {
            Some(roles) => roles.contains(&role),
            None => self.doc.default == role,
        }
    }
}

/// What an ACL action asks of the dispatcher.
pub enum Effect {
    /// Nothing more: the ACLs changed (or not).
    Done(Option<Value>),
    /// An earlier event was deleted: the views must be reduced again without it.
    Deleted(Position),
}

/// The ACLs in force at a point of the order, and the events deleted so far.
#[derive(Debug, Default, Clone)]
pub struct Acls {
    acls: BTreeMap<String, Acl>,
    deleted: BTreeSet<[u8; KEY_LEN]>,
}

#[derive(Serialize, Deserialize)]
struct AclsState {
    acls: BTreeMap<String, AclDoc>,
    deleted: Vec<serde_bytes::ByteBuf>,
}

impl Acls {
    pub fn get(&self, id: &str) -> Option<&AclDoc> {
        self.acls.get(id).map(|a| &a.doc)
    }

    /// No ACL has been set: the thread is open.
    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.acls.keys()
    }

    pub fn is_deleted(&self, event: &Position) -> bool {
        self.deleted.contains(&event.key())
    }

    /// Whether `log` may write to `entity` (of `store`), or to the thread when `None`.
    pub fn may_write(&self, log: &[u8; 32], store: &str, entity: Option<&str>) -> bool {
        let document = entity.and_then(|e| self.acls.get(&format!("{store}:{e}")));
        match document.or_else(|| self.acls.get(THREAD)) {
            Some(acl) => acl.grants(log, Role::Write),
            None => true,
        }
    }

    /// Whether `key` may read `entity` (of `store`), or the thread when `None`: any role from
    /// `read` up, by the entity's own ACL where one is set, else by the thread's. With no
    /// ACL the thread is open to its members (the caller decides who they are).
    pub fn may_read(&self, key: &[u8; 32], store: &str, entity: Option<&str>) -> bool {
        let document = entity.and_then(|e| self.acls.get(&format!("{store}:{e}")));
        match document.or_else(|| self.acls.get(THREAD)) {
            Some(acl) => match acl.by_key.get(key) {
                Some(roles) => roles.iter().any(|r| *r >= Role::Read),
                None => acl.doc.default >= Role::Read,
            },
            None => true,
        }
    }

    /// Whether any ACL names `key` among its peers (a reader with no log of its own is a
    /// member that way).
    pub fn names(&self, key: &[u8; 32]) -> bool {
        self.acls.values().any(|acl| acl.by_key.contains_key(key))
    }

    /// Whether `log` may change ACL `id`.
    fn may_set(&self, log: &[u8; 32], id: &str) -> bool {
        let own = if id.ends_with(GOVERNS) {
            id.to_owned()
        } else {
            format!("{id}{GOVERNS}")
        };
        match self.acls.get(&own).or_else(|| self.acls.get(ADMIN)) {
            Some(acl) => acl.grants(log, Role::Write),
            None => true,
        }
    }

    fn may_delete(&self, log: &[u8; 32], event: &Position) -> bool {
        match self.acls.get(THREAD) {
            Some(acl) => acl.grants(log, Role::Delete),
            None => event.log == *log,
        }
    }

    /// Why `log` may not dispatch this ACL action now, if it may not.
    pub fn check(&self, log: &[u8; 32], at: Position, action: &Action) -> Result<(), String> {
        self.plan(log, at, action).map(|_| ())
    }

    fn plan(&self, log: &[u8; 32], at: Position, action: &Action) -> Result<Plan, String> {
        match action.kind.as_str() {
            "set" => {
                let mut payload = action.payload.clone();
                let id = payload
                    .as_object_mut()
                    .and_then(|p| p.remove("_id"))
                    .and_then(|id| id.as_str().map(str::to_owned))
                    .filter(|id| !id.is_empty() && id.len() <= 512)
                    .ok_or("an ACL needs a string \"_id\" (1 to 512 bytes)")?;
                let doc: AclDoc = serde_json::from_value(payload).map_err(|e| {
                    format!("an ACL is {{\"default\": role, \"peers\": {{log: [roles]}}}}: {e}")
                })?;
                let acl = Acl::new(doc)?;
                if !self.may_set(log, &id) {
                    return Err(format!("this log may not change ACL {id:?}"));
                }
                Ok(Plan::Set(id, acl))
            }
            "delete_event" => {
                let event = action
                    .payload
                    .get("event")
                    .and_then(Value::as_str)
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|k| Position::from_key(&k).ok())
                    .ok_or("delete_event needs the \"event\" position (hex)")?;
                if event >= at {
                    return Err("only an earlier event can be deleted".into());
                }
                if !self.may_delete(log, &event) {
                    return Err("this log lacks the delete role".into());
                }
                Ok(Plan::Delete(event))
            }
            other => Err(format!("no action {other:?}: set or delete_event")),
        }
    }

    /// Applies an ACL action of `log`'s at `at`; an unauthorized one is an error, ignored.
    pub fn reduce(
        &mut self,
        log: &[u8; 32],
        at: Position,
        action: &Action,
    ) -> Result<Effect, String> {
        match self.plan(log, at, action)? {
            Plan::Set(id, acl) => {
                // The first ACL of an open thread makes its author the admin.
                if !self.acls.contains_key(ADMIN)
                    && !self.acls.contains_key(&format!("{id}{GOVERNS}"))
                {
                    let author = LogId::from(
                        threads_core::PublicKey::from_bytes(log).map_err(|e| e.to_string())?,
                    );
                    let admin = AclDoc {
                        default: Role::NoAccess,
                        peers: BTreeMap::from([(
                            author.to_string(),
                            vec![Role::Write, Role::Delete],
                        )]),
                    };
                    let admin = Acl::new(admin)?;
                    self.acls.entry(ADMIN.to_owned()).or_insert(admin);
                }
                let change = json!({"type": "set", "_id": id});
                self.acls.insert(id, acl);
                Ok(Effect::Done(Some(change)))
            }
            Plan::Delete(event) => {
                if self.deleted.insert(event.key()) {
                    Ok(Effect::Deleted(event))
                } else {
                    Ok(Effect::Done(None))
                }
            }
        }
    }

    /// Forgets the ACLs but keeps the deleted events (as a delete's rewind needs).
    pub fn deleted(&self) -> BTreeSet<[u8; KEY_LEN]> {
        self.deleted.clone()
    }

    pub fn set_deleted(&mut self, deleted: BTreeSet<[u8; KEY_LEN]>) {
        self.deleted = deleted;
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let state = AclsState {
            acls: self
                .acls
                .iter()
                .map(|(id, a)| (id.clone(), a.doc.clone()))
                .collect(),
            deleted: self
                .deleted
                .iter()
                .map(|k| serde_bytes::ByteBuf::from(k.to_vec()))
                .collect(),
        };
        serde_ipld_dagcbor::to_vec(&state).expect("ACLs encode")
    }

    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: AclsState = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        self.acls = state
            .acls
            .into_iter()
            .map(|(id, doc)| Ok((id, Acl::new(doc)?)))
            .collect::<Result<_, String>>()?;
        self.deleted = state
            .deleted
            .iter()
            .map(|k| {
                <[u8; KEY_LEN]>::try_from(k.as_slice())
                    .map_err(|_| "a deleted event key".to_owned())
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.acls.clear();
        self.deleted.clear();
    }
}

enum Plan {
    Set(String, Acl),
    Delete(Position),
}
