//! `threads db ...`: a thread as a database. Key/value entries and document collections are
//! events in the thread, so every member holding the read key ends with the same views. The
//! journal lives in `<home>/db/<thread>.sqlite`, its snapshots in `<thread>.sqlite.snapshots/`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};
use threads_client::Client;
use threads_core::{PublicKey, ThreadId};
use threads_db::acl::{self, AclDoc};
use threads_db::{
    crdt, docs, kv, Action, Config, CrdtStore, Database, DocStore, KvStore, Position,
};

use tokio::sync::broadcast::error::TryRecvError;

use super::BadInput;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set a key to a JSON value.
    Put {
        thread: ThreadId,
        key: String,
        value: String,
    },
    /// Print a key's value.
    Get { thread: ThreadId, key: String },
    /// Delete a key (an event, so every replica deletes it).
    Delete { thread: ThreadId, key: String },
    /// List entries in key order.
    List {
        thread: ThreadId,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only entries after this key.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Create a document collection; its definition travels through the thread.
    CreateCollection {
        thread: ThreadId,
        name: String,
        /// A JSON Schema every document must match (JSON, or @FILE).
        #[arg(long)]
        schema: Option<String>,
        /// A field to index (repeatable; dotted paths reach into objects).
        #[arg(long = "index")]
        indexes: Vec<String>,
    },
    /// Index a field of a collection, existing documents included.
    CreateIndex {
        thread: ThreadId,
        collection: String,
        field: String,
    },
    /// List collections with their document counts, indexes and schemas.
    Collections { thread: ThreadId },
    /// Insert a document (JSON, or @FILE); one without `_id` is given one. Prints the `_id`.
    Insert {
        thread: ThreadId,
        collection: String,
        doc: String,
    },
    /// Replace the document with the same `_id` (or insert it).
    Save {
        thread: ThreadId,
        collection: String,
        doc: String,
    },
    /// Delete a document.
    Remove {
        thread: ThreadId,
        collection: String,
        id: String,
    },
    /// Find documents. The query is JSON (or @FILE): {"where": {"and": [{"field": "age",
    /// "gte": 30}, ...]}, "sort": {"field": "age", "desc": true}, "skip": 0, "limit": 20,
    /// "after": CURSOR}. Prints one document per line, then the next page's cursor.
    Find {
        thread: ThreadId,
        collection: String,
        #[arg(default_value = "{}")]
        query: String,
    },
    /// Set a field of a shared JSON document (a CRDT: concurrent edits of different fields
    /// all survive). PATH is dotted (`body.title`); missing objects are made, and two writers
    /// making the same missing object at once make two, of which one wins: create shared
    /// objects once, before editing inside them concurrently.
    CrdtSet {
        thread: ThreadId,
        doc: String,
        path: String,
        value: String,
    },
    /// Print a shared JSON document.
    CrdtGet { thread: ThreadId, doc: String },
    /// Set an ACL (JSON, or @FILE): {"default": ROLE, "peers": {LOG_ID: [ROLES]}}, ROLE one
    /// of no-access, follow, read, write, delete. ID is `thread`, `thread-acl` (who may
    /// change ACLs), `STORE:ENTITY` for one document or key (`docs:people/42`, `kv:color`),
    /// or `ID-acl` (who may change ACL ID).
    AclSet {
        thread: ThreadId,
        id: String,
        acl: String,
    },
    /// Print the ACLs in force (or one of them).
    Acl {
        thread: ThreadId,
        id: Option<String>,
    },
    /// Mark an earlier event deleted (the `event` a command printed): its effects leave
    /// every view. Needs the delete role.
    DeleteEvent { thread: ThreadId, event: String },
    /// Revoke reading for the future: hand a fresh read key to the members who keep reading
    /// (sealed to their identities, `threads id` on their side) and write with it from now
    /// on. Also change the ACL to say who reads.
    RotateReadKey {
        thread: ThreadId,
        /// A member who keeps reading (repeatable).
        #[arg(long = "to")]
        members: Vec<PublicKey>,
    },
    /// Free journal space: keep the newest KEEP snapshots and the events after the oldest of
    /// them (the records stay in the local store; a late event that needs more rebuilds).
    Compact {
        thread: ThreadId,
        #[arg(long, default_value_t = 1)]
        keep: u32,
    },
    /// Publish the database's current state as a snapshot, in a log of its own that `push`
    /// sends to followers: peers you invite from now on start from it instead of reducing
    /// every event.
    PublishSnapshot { thread: ThreadId },
    /// How far the database is: events applied, events its journal holds, the last position.
    Status { thread: ThreadId },
    /// Print each change as it is applied, following the thread live from a follower
    /// (catching up first). Runs until interrupted.
    Watch {
        thread: ThreadId,
        /// Which follower (default: the thread's first).
        #[arg(long)]
        follower: Option<String>,
    },
}

impl Command {
    fn thread(&self) -> &ThreadId {
        match self {
            Command::Put { thread, .. }
            | Command::Get { thread, .. }
            | Command::Delete { thread, .. }
            | Command::List { thread, .. }
            | Command::CreateCollection { thread, .. }
            | Command::CreateIndex { thread, .. }
            | Command::Collections { thread }
            | Command::Insert { thread, .. }
            | Command::Save { thread, .. }
            | Command::Remove { thread, .. }
            | Command::Find { thread, .. }
            | Command::CrdtSet { thread, .. }
            | Command::CrdtGet { thread, .. }
            | Command::AclSet { thread, .. }
            | Command::Acl { thread, .. }
            | Command::DeleteEvent { thread, .. }
            | Command::RotateReadKey { thread, .. }
            | Command::Compact { thread, .. }
            | Command::PublishSnapshot { thread }
            | Command::Status { thread }
            | Command::Watch { thread, .. } => thread,
        }
    }
}

pub async fn execute(
    client: Client,
    home: &Path,
    command: Command,
    json_lines: bool,
) -> anyhow::Result<Value> {
    let thread = command.thread().clone();
    let dir = home.join("db");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = Config {
        path: Some(dir.join(format!("{thread}.sqlite"))),
        ..Config::default()
    };
    let client = Arc::new(client);
    let db = Database::open(
        client.clone(),
        thread.clone(),
        threads_db::standard_stores(),
        config,
    )
    .await?;
    // The event's position, which `delete-event` takes.
    if let Some(after) = db.unreadable_after() {
        eprintln!(
            "threads: events after local #{after} are sealed with a read key this peer was not \
             handed (its reading was revoked?): the database stops before them"
        );
    }
    let dispatch = |action: Action| async {
        let pos = db.dispatch(vec![action]).await?;
        anyhow::Ok(hex::encode(pos.key()))
    };
    Ok(match command {
        Command::Put { key, value, .. } => {
            let value = parse(&value, "the value")?;
            json!({"put": key, "event": dispatch(kv::put(&key, value)).await?})
        }
        Command::Get { key, .. } => {
            let value = db
                .query(kv::STORE, |kv: &KvStore| kv.get(&key).cloned())
                .await?
                .ok_or_else(|| BadInput(format!("no key {key:?}")))?;
            json!({"value": value})
        }
        Command::Delete { key, .. } => {
            json!({"deleted": key, "event": dispatch(kv::delete(&key)).await?})
        }
        Command::List {
            prefix,
            after,
            limit,
            ..
        } => {
            let entries = db
                .query(kv::STORE, |kv: &KvStore| {
                    kv.list(&prefix, after.as_deref())
                        .take(limit)
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect::<Vec<_>>()
                })
                .await?;
            json!({"entries": entries})
        }
        Command::CreateCollection {
            name,
            schema,
            indexes,
            ..
        } => {
            let schema = schema.map(|s| parse(&s, "the schema")).transpose()?;
            let indexes: Vec<&str> = indexes.iter().map(String::as_str).collect();
            let event = dispatch(docs::create_collection(&name, schema, &indexes)).await?;
            json!({"collection": name, "event": event})
        }
        Command::CreateIndex {
            collection, field, ..
        } => {
            let event = dispatch(docs::create_index(&collection, &field)).await?;
            json!({"collection": collection, "indexed": field, "event": event})
        }
        Command::Collections { .. } => {
            let list = db
                .query(docs::STORE, |d: &DocStore| d.collections())
                .await?;
            json!({"collections": list})
        }
        Command::Insert {
            collection, doc, ..
        } => {
            let action = docs::insert(&collection, parse(&doc, "the document")?);
            let id = action.payload["doc"][docs::ID].clone();
            json!({"_id": id, "event": dispatch(action).await?})
        }
        Command::Save {
            collection, doc, ..
        } => {
            let doc = parse(&doc, "the document")?;
            let id = doc[docs::ID].clone();
            json!({"_id": id, "event": dispatch(docs::save(&collection, doc)).await?})
        }
        Command::Remove { collection, id, .. } => {
            json!({"removed": id, "event": dispatch(docs::delete(&collection, &id)).await?})
        }
        Command::Find {
            collection, query, ..
        } => {
            let query = parse(&query, "the query")?;
            let page = db
                .query(docs::STORE, |d: &DocStore| d.find(&collection, &query))
                .await?
                .map_err(BadInput)?;
            json!({"docs": page.docs, "next": page.next})
        }
        Command::CrdtSet {
            doc, path, value, ..
        } => {
            let value = parse(&value, "the value")?;
            let log = client
                .thread(&thread)?
                .log_id()
                .ok_or(threads_client::Error::NotAWriter)?;
            let actor = *log.public_key().as_bytes();
            let action = db
                .query(crdt::STORE, |c: &CrdtStore| {
                    c.set(&doc, &actor, &path, &value)
                })
                .await?
                .map_err(BadInput)?;
            json!({"doc": doc, "event": dispatch(action).await?})
        }
        Command::CrdtGet { doc, .. } => {
            let value = db
                .query(crdt::STORE, |c: &CrdtStore| c.get(&doc))
                .await?
                .ok_or_else(|| BadInput(format!("no document {doc:?}")))?;
            json!({"value": value})
        }
        Command::AclSet { id, acl, .. } => {
            let doc: AclDoc = serde_json::from_value(parse(&acl, "the ACL")?)
                .map_err(|e| BadInput(format!("the ACL: {e}")))?;
            json!({"acl": id, "event": dispatch(acl::set(&id, &doc)).await?})
        }
        Command::Acl { id, .. } => {
            let acls = db
                .dispatcher()
                .acls(|acls| {
                    acls.ids()
                        .filter(|i| id.as_ref().is_none_or(|id| id == *i))
                        .map(|i| (i.clone(), json!(acls.get(i))))
                        .collect::<serde_json::Map<_, _>>()
                })
                .await;
            if let Some(id) = id.filter(|id| !acls.contains_key(id)) {
                return Err(BadInput(format!("no ACL {id:?}")).into());
            }
            json!({"acls": acls})
        }
        Command::DeleteEvent { event, .. } => {
            let pos = hex::decode(&event)
                .ok()
                .and_then(|key| Position::from_key(&key).ok())
                .ok_or_else(|| BadInput(format!("{event:?} is not an event position")))?;
            json!({"deleted_event": event, "event": dispatch(acl::delete_event(pos)).await?})
        }
        Command::RotateReadKey { members, .. } => {
            let pos = db.rotate_read_key(&members).await?;
            let members: Vec<String> = members.iter().map(ToString::to_string).collect();
            json!({"rotated": true, "handed_to": members, "event": hex::encode(pos.key())})
        }
        Command::PublishSnapshot { .. } => {
            let (pos, bytes) = db.publish_snapshot().await?;
            json!({"snapshot_at": hex::encode(pos.key()), "bytes": bytes})
        }
        Command::Status { .. } => {
            let (applied, last) = db.dispatcher().applied().await;
            json!({
                "applied": applied,
                "journaled": db.dispatcher().journaled().await?,
                "last": last.map(|p| hex::encode(p.key())),
                "unreadable_after": db.unreadable_after(),
            })
        }
        Command::Compact { keep, .. } => {
            json!({"freed_events": db.dispatcher().compact(keep).await?})
        }
        Command::Watch { follower, .. } => {
            watch(&client, &db, &thread, follower.as_deref(), json_lines).await?;
            Value::Null
        }
    })
}

/// Tails the thread; after each event, reduces what arrived and prints the changes.
async fn watch(
    client: &Client,
    db: &Database,
    thread: &ThreadId,
    follower: Option<&str>,
    json_lines: bool,
) -> anyhow::Result<()> {
    let mut changes = db.subscribe();
    let arrived = tokio::sync::Notify::new();
    // Held events are reduced already: only new ones need a signal.
    let tail = client.tail(thread, follower, i64::MAX as u64, |_| arrived.notify_one());
    tokio::pin!(tail);
    loop {
        tokio::select! {
            ended = &mut tail => return Ok(ended?),
            () = arrived.notified() => {
                db.sync().await?;
                loop {
                    let line = match changes.try_recv() {
                        Ok(change) if !json_lines => format!("{} {}", change.store, change.change),
                        Ok(change) => serde_json::to_string(&change).expect("changes serialize"),
                        // Printing fell behind: say so, and go on with what is newest.
                        Err(TryRecvError::Lagged(missed)) => json!({"lagged": missed}).to_string(),
                        Err(_) => break,
                    };
                    println!("{line}");
                }
            }
        }
    }
}

/// JSON from an argument, or from a file named `@FILE`.
fn parse(text: &str, what: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))?
        }
        None => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| BadInput(format!("{what} is not JSON: {e}")).into())
}
