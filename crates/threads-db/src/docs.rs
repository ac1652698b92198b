//! The document store: collections of JSON documents keyed by `_id`, with an optional JSON
//! Schema, secondary indexes and a query language.
//!
//! Collections are defined by events like any other (`create_collection`, `create_index`), so
//! a peer that joins the thread learns them from the thread itself.
//!
//! A query is JSON:
//!
//! ```json
//! {"where": {"and": [{"field": "age", "gte": 30}, {"or": [{"field": "city", "eq": "Oslo"},
//!                                                         {"field": "city", "eq": "Bergen"}]}]},
//!  "sort": {"field": "age", "desc": true}, "skip": 0, "limit": 20, "after": "<cursor>"}
//! ```
//!
//! Conditions: `eq`, `ne`, `gt`, `gte`, `lt`, `lte` on a dotted field path. Sorting comes
//! before `skip` and `limit`; each page ends with a cursor that `after` resumes from. Values
//! order as null < false < true < numbers < strings < arrays < objects; ranges (`gt`...)
//! only match values of the same kind; numbers compare as 64-bit floats.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use threads_core::CborWriter;

use crate::action::Action;
use crate::cbor;
use crate::view::{Context, View};

/// The name the action creators address.
pub const STORE: &str = "docs";
/// The field every document is keyed by, always indexed.
pub const ID: &str = "_id";
/// Longest collection name, field path and `_id`, in bytes.
pub const MAX_NAME: usize = 256;

pub fn create_collection(name: &str, schema: Option<Value>, indexes: &[&str]) -> Action {
    let mut payload = json!({"name": name, "indexes": indexes});
    if let Some(schema) = schema {
        payload["schema"] = schema;
    }
    Action::new(STORE, "create_collection", payload)
}

pub fn create_index(collection: &str, field: &str) -> Action {
    Action::new(
        STORE,
        "create_index",
        json!({"collection": collection, "field": field}),
    )
}

/// Inserts a new document; one without `_id` gets a fresh one (time-ordered, then random),
/// chosen here by the writer so that every replica sees the same.
pub fn insert(collection: &str, mut doc: Value) -> Action {
    if let Some(fields) = doc.as_object_mut() {
        fields.entry(ID).or_insert_with(|| Value::String(new_id()));
    }
    Action::new(
        STORE,
        "insert",
        json!({"collection": collection, "doc": doc}),
    )
}

/// Replaces the document with the same `_id`, or inserts it.
pub fn save(collection: &str, doc: Value) -> Action {
    Action::new(STORE, "save", json!({"collection": collection, "doc": doc}))
}

pub fn delete(collection: &str, id: &str) -> Action {
    Action::new(STORE, "delete", json!({"collection": collection, ID: id}))
}

fn new_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 8];
    OsRng.fill_bytes(&mut random);
    format!("{millis:012x}{}", hex::encode(random))
}

#[derive(Default)]
pub struct DocStore {
    collections: BTreeMap<String, Collection>,
}

struct Collection {
    schema: Option<Value>,
    validator: Option<Validator>,
    docs: BTreeMap<String, Value>,
    /// Per indexed field: (the field's order key, `_id`). Every document is in every index
    /// (a missing field has the empty key, first), so an index walk sees them all.
    indexes: BTreeMap<String, BTreeSet<(Vec<u8>, String)>>,
}

/// A collection as snapshots hold it: indexes are rebuilt on restore.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct CollectionState {
    schema: Option<Value>,
    indexes: Vec<String>,
    docs: BTreeMap<String, Value>,
}

/// A collection's description.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub documents: usize,
    pub indexes: Vec<String>,
    pub schema: Option<Value>,
}

/// One page of a query's results, and the cursor after its last document when the page
/// is full (more may follow).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub docs: Vec<Value>,
    pub next: Option<String>,
}

/// A collection's compiled JSON Schema (draft 2020-12 unless `$schema` names another). A
/// schema is one document: it may not refer to files or URLs, which every reader of the
/// thread would have to fetch alike.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

/// Where a collection's schema sits for the compiler; `.invalid` is never looked up.
const SCHEMA_URL: &str = "https://collection.invalid/schema.json";

struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, _: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err("a schema may not refer to another document".into())
    }
}

impl Validator {
    fn new(schema: &Value) -> Result<Self, String> {
        let mut compiler = boon::Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        let mut schemas = boon::Schemas::new();
        // On one line, naming places inside the schema rather than the URL it sits at here.
        let reason = |e: boon::CompileError| match &e {
            boon::CompileError::ValidationError { src, .. } => {
                format!(
                    "it does not match its draft's meta-schema: {}",
                    failures(src)
                )
            }
            _ => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
            .replace(SCHEMA_URL, ""),
        };
        compiler
            .add_resource(SCHEMA_URL, schema.clone())
            .map_err(reason)?;
        let index = compiler.compile(SCHEMA_URL, &mut schemas).map_err(reason)?;
        Ok(Self { schemas, index })
    }

    fn check(&self, doc: &Value) -> Result<(), String> {
        self.schemas
            .validate(doc, self.index)
            .map_err(|e| failures(&e))
    }
}

/// Names each failed keyword and where in the value it failed, on one line.
fn failures(e: &boon::ValidationError) -> String {
    fn leaves(e: &boon::ValidationError, out: &mut Vec<String>) {
        if e.causes.is_empty() {
            out.push(format!("at '{}': {}", e.instance_location, e.kind));
        }
        e.causes.iter().for_each(|c| leaves(c, out));
    }
    let mut out = Vec::new();
    leaves(e, &mut out);
    out.join("; ")
}

impl Collection {
    fn new(schema: Option<Value>, indexes: &[String]) -> Result<Self, String> {
        let validator = schema
            .as_ref()
            .map(|s| Validator::new(s).map_err(|e| format!("the schema: {e}")))
            .transpose()?;
        let mut collection = Self {
            schema,
            validator,
            docs: BTreeMap::new(),
            indexes: BTreeMap::new(),
        };
        collection.add_index(ID);
        for field in indexes {
            collection.add_index(field);
        }
        Ok(collection)
    }

    /// Builds an index over the documents already held.
    fn add_index(&mut self, field: &str) {
        let index = self
            .docs
            .iter()
            .map(|(id, doc)| (order_key(lookup(doc, field)), id.clone()))
            .collect();
        self.indexes.insert(field.to_owned(), index);
    }

    fn validate(&self, doc: &Value) -> Result<String, String> {
        let id = doc
            .as_object()
            .ok_or("a document is a JSON object")?
            .get(ID)
            .and_then(Value::as_str)
            .ok_or("a document needs a string \"_id\"")?;
        if id.is_empty() || id.len() > MAX_NAME {
            return Err(format!("an _id is 1 to {MAX_NAME} bytes"));
        }
        if let Some(validator) = &self.validator {
            validator
                .check(doc)
                .map_err(|e| format!("the document does not match the schema: {e}"))?;
        }
        Ok(id.to_owned())
    }

    fn put(&mut self, id: String, doc: Value) {
        self.remove(&id);
        for (field, index) in &mut self.indexes {
            index.insert((order_key(lookup(&doc, field)), id.clone()));
        }
        self.docs.insert(id, doc);
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.docs.remove(id) else {
            return false;
        };
        for (field, index) in &mut self.indexes {
            index.remove(&(order_key(lookup(&old, field)), id.to_owned()));
        }
        true
    }
}

impl DocStore {
    pub fn get(&self, collection: &str, id: &str) -> Option<&Value> {
        self.collections.get(collection)?.docs.get(id)
    }

    pub fn collections(&self) -> Vec<CollectionInfo> {
        self.collections
            .iter()
            .map(|(name, c)| CollectionInfo {
                name: name.clone(),
                documents: c.docs.len(),
                indexes: c.indexes.keys().cloned().collect(),
                schema: c.schema.clone(),
            })
            .collect()
    }

    /// Runs a query (see the module's documentation) on a collection.
    pub fn find(&self, collection: &str, query: &Value) -> Result<Page, String> {
        let c = self
            .collections
            .get(collection)
            .ok_or_else(|| format!("no collection {collection:?}"))?;
        let query = Query::parse(query)?;
        query.run(c)
    }

    /// What an action would do, checked against the current state without changing it.
    fn plan(&self, action: &Action) -> Result<Plan, String> {
        let p = &action.payload;
        let name = |key: &str| -> Result<String, String> {
            let name = p
                .get(key)
                .and_then(Value::as_str)
                .ok_or(format!("the payload needs a string {key:?}"))?;
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(format!("{key} is 1 to {MAX_NAME} bytes"));
            }
            Ok(name.to_owned())
        };
        if action.kind == "create_collection" {
            let collection = name("name")?;
            if self.collections.contains_key(&collection) {
                return Err(format!("collection {collection:?} exists"));
            }
            let indexes: Vec<String> = match p.get("indexes") {
                None => Vec::new(),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| "indexes is a list of field paths")?,
            };
            if let Some(long) = indexes.iter().find(|f| f.is_empty() || f.len() > MAX_NAME) {
                return Err(format!(
                    "an indexed field is 1 to {MAX_NAME} bytes: {long:?}"
                ));
            }
            let new = Collection::new(p.get("schema").cloned(), &indexes)?;
            return Ok(Plan::CreateCollection(collection, Box::new(new)));
        }
        let collection = name("collection")?;
        let c = self
            .collections
            .get(&collection)
            .ok_or_else(|| format!("no collection {collection:?}"))?;
        match action.kind.as_str() {
            "create_index" => {
                let field = name("field")?;
                if c.indexes.contains_key(&field) {
                    return Err(format!("{field:?} is indexed already"));
                }
                Ok(Plan::CreateIndex(collection, field))
            }
            kind @ ("insert" | "save") => {
                let doc = p.get("doc").ok_or("the payload needs a \"doc\"")?;
                let id = c.validate(doc)?;
                let insert = kind == "insert";
                if insert && c.docs.contains_key(&id) {
                    return Err(format!("a document with _id {id:?} exists"));
                }
                Ok(Plan::Put {
                    collection,
                    id,
                    doc: doc.clone(),
                    insert,
                })
            }
            "delete" => Ok(Plan::Delete(collection, name(ID)?)),
            other => Err(format!(
                "no action {other:?}: create_collection, create_index, insert, save or delete"
            )),
        }
    }

    /// Carries out a plan; returns the change, if any.
    fn execute(&mut self, plan: Plan) -> Option<Value> {
        match plan {
            Plan::CreateCollection(name, collection) => {
                let change = json!({"type": "create_collection", "collection": name});
                self.collections.insert(name, *collection);
                Some(change)
            }
            Plan::CreateIndex(name, field) => {
                let c = self.collections.get_mut(&name)?;
                c.add_index(&field);
                Some(json!({"type": "create_index", "collection": name, "field": field}))
            }
            Plan::Put {
                collection,
                id,
                doc,
                insert,
            } => {
                let c = self.collections.get_mut(&collection)?;
                c.put(id.clone(), doc);
                let kind = if insert { "insert" } else { "save" };
                Some(json!({"type": kind, "collection": collection, ID: id}))
            }
            Plan::Delete(collection, id) => {
                let c = self.collections.get_mut(&collection)?;
                c.remove(&id)
                    .then(|| json!({"type": "delete", "collection": collection, ID: id}))
            }
        }
    }
}

enum Plan {
    CreateCollection(String, Box<Collection>),
    CreateIndex(String, String),
    Put {
        collection: String,
        id: String,
        doc: Value,
        insert: bool,
    },
    Delete(String, String),
}

impl View for DocStore {
    fn check(&self, action: &Action) -> Result<(), String> {
        self.plan(action).map(|_| ())
    }

    /// `collection/_id` for document actions.
    fn entity(&self, action: &Action) -> Option<String> {
        let p = &action.payload;
        let collection = p.get("collection")?.as_str()?;
        let id = match action.kind.as_str() {
            "insert" | "save" => p.get("doc")?.get(ID)?.as_str()?,
            "delete" => p.get(ID)?.as_str()?,
            _ => return None,
        };
        Some(format!("{collection}/{id}"))
    }

    fn reduce(&mut self, _: &Context, action: &Action) -> Result<Option<Value>, String> {
        let plan = self.plan(action)?;
        Ok(self.execute(plan))
    }

    /// Each collection as [`CollectionState`] encodes, written straight into the buffer.
    fn write_snapshot(&self, w: &mut CborWriter) {
        cbor::map(w, &self.collections, |w, c| {
            // The state's fields, in DAG-CBOR's key order.
            w.map(3);
            w.key("docs");
            cbor::map(w, &c.docs, cbor::value);
            w.key("schema");
            match &c.schema {
                Some(schema) => cbor::value(w, schema),
                None => w.null(),
            }
            w.key("indexes");
            let indexes: Vec<&String> = c.indexes.keys().filter(|f| *f != ID).collect();
            w.list(indexes.len() as u64);
            indexes.into_iter().for_each(|field| w.text(field));
        });
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: BTreeMap<String, CollectionState> =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        self.collections.clear();
        for (name, state) in state {
            let mut c = Collection::new(state.schema, &[])?;
            c.docs = state.docs;
            c.add_index(ID);
            for field in &state.indexes {
                c.add_index(field);
            }
            self.collections.insert(name, c);
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.collections.clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The value at a dotted path (`address.city`, `tags.0`); `None` when a step is missing.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |value, step| match value {
        Value::Object(fields) => fields.get(step),
        Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Bytes that order as values do (see the module's documentation); empty when missing.
fn order_key(value: Option<&Value>) -> Vec<u8> {
    let Some(value) = value else {
        return Vec::new();
    };
    let (tag, body) = match value {
        Value::Null => (0, Vec::new()),
        Value::Bool(false) => (1, Vec::new()),
        Value::Bool(true) => (2, Vec::new()),
        Value::Number(n) => {
            // -0 and 0 are one number; flipping the bits of an IEEE float makes unsigned
            // byte order its numeric order.
            let f = n.as_f64().unwrap_or(0.0) + 0.0;
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | 1 << 63
            };
            (3, ordered.to_be_bytes().to_vec())
        }
        Value::String(s) => (4, s.as_bytes().to_vec()),
        Value::Array(_) => (5, value.to_string().into_bytes()),
        Value::Object(_) => (6, value.to_string().into_bytes()),
    };
    let mut key = Vec::with_capacity(1 + body.len());
    key.push(tag);
    key.extend(body);
    key
}

/// Range conditions compare values of one kind only: booleans, numbers, strings...
fn kind(key: &[u8]) -> Option<u8> {
    key.first().map(|&tag| if tag == 2 { 1 } else { tag })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

const OPS: [(&str, Op); 6] = [
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("gt", Op::Gt),
    ("gte", Op::Gte),
    ("lt", Op::Lt),
    ("lte", Op::Lte),
];

#[derive(Debug)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Cond { field: String, op: Op, key: Vec<u8> },
}

impl Filter {
    fn parse(value: &Value) -> Result<Self, String> {
        let fields = value
            .as_object()
            .ok_or_else(|| format!("a condition is an object, not {value}"))?;
        for (word, combine) in [("and", Filter::And as fn(_) -> _), ("or", Filter::Or)] {
            if let Some(list) = fields.get(word) {
                let list = list
                    .as_array()
                    .filter(|l| fields.len() == 1 && !l.is_empty())
                    .ok_or_else(|| format!("\"{word}\" takes a non-empty list, alone"))?;
                return list
                    .iter()
                    .map(Filter::parse)
                    .collect::<Result<_, _>>()
                    .map(combine);
            }
        }
        let field = fields.get("field").and_then(Value::as_str).ok_or_else(|| {
            format!("a condition needs a \"field\" and one of eq, ne, gt, gte, lt, lte: {value}")
        })?;
        let mut ops = fields.iter().filter(|(k, _)| *k != "field");
        let (Some((name, operand)), None) = (ops.next(), ops.next()) else {
            return Err(format!("a condition takes exactly one comparison: {value}"));
        };
        let op = OPS
            .iter()
            .find(|(word, _)| word == name)
            .map(|(_, op)| *op)
            .ok_or_else(|| format!("no comparison {name:?}: eq, ne, gt, gte, lt or lte"))?;
        Ok(Filter::Cond {
            field: field.to_owned(),
            op,
            key: order_key(Some(operand)),
        })
    }

    fn matches(&self, doc: &Value) -> bool {
        match self {
            Filter::And(all) => all.iter().all(|f| f.matches(doc)),
            Filter::Or(any) => any.iter().any(|f| f.matches(doc)),
            Filter::Cond { field, op, key } => compare(&order_key(lookup(doc, field)), *op, key),
        }
    }
}

fn compare(value: &[u8], op: Op, operand: &[u8]) -> bool {
    let same_kind = !value.is_empty() && kind(value) == kind(operand);
    match op {
        Op::Eq => value == operand,
        Op::Ne => value != operand,
        Op::Gt => same_kind && value > operand,
        Op::Gte => same_kind && value >= operand,
        Op::Lt => same_kind && value < operand,
        Op::Lte => same_kind && value <= operand,
    }
}

/// Results per page when a query names no limit, and the most it may name.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

/// Candidates from a condition's index beyond which a query walks its sort index instead.
const NARROW_AT_MOST: usize = 1_000;

/// An index entry: a field's order key and a document's `_id`.
type Entry = (Vec<u8>, String);

#[derive(Debug)]
struct Query {
    filter: Option<Filter>,
    sort: String,
    desc: bool,
    skip: usize,
    limit: usize,
    /// Resume strictly after this (sort key, `_id`), in the query's direction.
    after: Option<(Vec<u8>, String)>,
}

impl Query {
    fn parse(value: &Value) -> Result<Self, String> {
        let fields = value.as_object().ok_or("a query is a JSON object")?;
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["where", "sort", "skip", "limit", "after"].contains(&k.as_str()))
        {
            return Err(format!(
                "no query part {unknown:?}: where, sort, skip, limit or after"
            ));
        }
        let count = |name: &str, default: usize| -> Result<usize, String> {
            fields.get(name).map_or(Ok(default), |v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| format!("{name} is a whole number"))
            })
        };
        let limit = count("limit", DEFAULT_LIMIT)?;
        if limit == 0 || limit > MAX_LIMIT {
            return Err(format!("limit is 1 to {MAX_LIMIT}"));
        }
        let (sort, desc) = match fields.get("sort") {
            None => (ID.to_owned(), false),
            Some(sort) => (
                sort.get("field")
                    .and_then(Value::as_str)
                    .ok_or("sort is {\"field\": ..., \"desc\": true|false}")?
                    .to_owned(),
                sort.get("desc").and_then(Value::as_bool).unwrap_or(false),
            ),
        };
        let after = match fields.get("after") {
            None | Some(Value::Null) => None,
            Some(cursor) => Some(
                cursor
                    .as_str()
                    .and_then(parse_cursor)
                    .ok_or("after is a cursor from an earlier page's \"next\"")?,
            ),
        };
        Ok(Self {
            filter: fields.get("where").map(Filter::parse).transpose()?,
            sort,
            desc,
            skip: count("skip", 0)?,
            limit,
            after,
        })
    }

    fn run(&self, c: &Collection) -> Result<Page, String> {
        let wanted = self.skip.saturating_add(self.limit);
        let matches = |id: &String| -> Option<&Value> {
            let doc = c.docs.get(id)?;
            self.filter
                .as_ref()
                .is_none_or(|f| f.matches(doc))
                .then_some(doc)
        };
        let mut narrowing = self.indexed_condition(c);
        if let (Some((index, op, key)), true) = (narrowing, c.indexes.contains_key(&self.sort)) {
            // Many candidates: walking the sort index finds a page sooner than sorting them.
            if index_range(index, op, key).nth(NARROW_AT_MOST).is_some() {
                narrowing = None;
            }
        }
        let mut hits: Vec<(Vec<u8>, &String, &Value)> = Vec::new();
        match (c.indexes.get(&self.sort), narrowing) {
            // Walk the sort field's index between the bounds its conditions and the cursor
            // set, and stop at a full page.
            (Some(index), None) => {
                let (low, high) = self.walk_bounds();
                if high.as_ref().is_some_and(|high| low >= *high) {
                    return Ok(Page {
                        docs: Vec::new(),
                        next: None,
                    });
                }
                let high = high.map_or(Bound::Unbounded, Bound::Excluded);
                let range = index.range((Bound::Included(low), high));
                let walk: Box<dyn Iterator<Item = &(Vec<u8>, String)>> = if self.desc {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                for (key, id) in walk {
                    if let Some(doc) = matches(id) {
                        hits.push((key.clone(), id, doc));
                        if hits.len() == wanted {
                            break;
                        }
                    }
                }
            }
            // Read candidates from an index of a condition (or every document), then sort.
            (_, narrowing) => {
                let ids: Box<dyn Iterator<Item = &String>> = match narrowing {
                    Some((index, op, key)) => Box::new(index_range(index, op, key)),
                    None => Box::new(c.docs.keys()),
                };
                for id in ids {
                    if let Some(doc) = matches(id) {
                        let key = order_key(lookup(doc, &self.sort));
                        let past = self.after.as_ref().is_none_or(|(k, i)| {
                            let here = (&key, id);
                            if self.desc {
                                here < (k, i)
                            } else {
                                here > (k, i)
                            }
                        });
                        if past {
                            hits.push((key, id, doc));
                        }
                    }
                }
                hits.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                if self.desc {
                    hits.reverse();
                }
                hits.truncate(wanted);
            }
        }
        let full = hits.len() == wanted;
        let next = full
            .then(|| hits.last().map(|(key, id, _)| cursor(key, id)))
            .flatten();
        Ok(Page {
            docs: hits
                .into_iter()
                .skip(self.skip)
                .map(|(_, _, doc)| doc.clone())
                .collect(),
            next,
        })
    }

    /// The part of the sort index a walk needs: from an inclusive low to an exclusive high
    /// entry, narrowed by top-level range conditions on the sort field and by the cursor.
    /// `(key, id + "\0")` is the first entry after `(key, id)`; `(key + [0], "")` the first
    /// after every entry of `key`.
    fn walk_bounds(&self) -> (Entry, Option<Entry>) {
        let mut low: Entry = (Vec::new(), String::new());
        let mut high: Option<Entry> = None;
        let mut raise = |entry: Entry| low = low.clone().max(entry);
        let mut cap =
            |entry: Entry| high = Some(high.take().map_or(entry.clone(), |h| h.min(entry)));
        let after = |key: &[u8]| -> Entry { ([key, &[0]].concat(), String::new()) };
        let conditions: Vec<&Filter> = match &self.filter {
            Some(Filter::And(all)) => all.iter().collect(),
            Some(single) => vec![single],
            None => Vec::new(),
        };
        for condition in conditions {
            let Filter::Cond { field, op, key } = condition else {
                continue;
            };
            if *field != self.sort {
                continue;
            }
            let kind_start = vec![kind(key).unwrap_or(0)];
            let kind_end = vec![if kind(key) == Some(1) { 3 } else { key[0] + 1 }];
            match op {
                Op::Eq => {
                    raise((key.clone(), String::new()));
                    cap(after(key));
                }
                Op::Gt | Op::Gte => {
                    raise(if *op == Op::Gt {
                        after(key)
                    } else {
                        (key.clone(), String::new())
                    });
                    cap((kind_end, String::new()));
                }
                Op::Lt | Op::Lte => {
                    raise((kind_start, String::new()));
                    cap(if *op == Op::Lt {
                        (key.clone(), String::new())
                    } else {
                        after(key)
                    });
                }
                Op::Ne => {}
            }
        }
        if let Some((key, id)) = &self.after {
            if self.desc {
                cap((key.clone(), id.clone()));
            } else {
                raise((key.clone(), format!("{id}\0")));
            }
        }
        (low, high)
    }

    /// An index that narrows the candidates: a top-level condition (alone or in an `and`) on
    /// an indexed field, equality first. `None` when the sort index is as good.
    #[allow(clippy::type_complexity)]
    fn indexed_condition<'a>(
        &'a self,
        c: &'a Collection,
    ) -> Option<(&'a BTreeSet<(Vec<u8>, String)>, Op, &'a [u8])> {
        let conditions: Vec<&Filter> = match self.filter.as_ref()? {
            Filter::And(all) => all.iter().collect(),
            single => vec![single],
        };
        let usable = |want_eq: bool| {
            conditions.iter().find_map(|f| match f {
                Filter::Cond { field, op, key } if *op != Op::Ne && (*op == Op::Eq) == want_eq => {
                    // A range on the sort field is walked in sort order instead.
                    if !want_eq && *field == self.sort {
                        return None;
                    }
                    c.indexes
                        .get(field)
                        .map(|index| (index, *op, key.as_slice()))
                }
                _ => None,
            })
        };
        usable(true).or_else(|| usable(false))
    }
}

/// The `_id`s an index holds for a comparison, in index order.
fn index_range<'a>(
    index: &'a BTreeSet<(Vec<u8>, String)>,
    op: Op,
    key: &'a [u8],
) -> impl Iterator<Item = &'a String> + 'a {
    let start = match op {
        // Values of the operand's kind begin at its kind's first tag.
        Op::Lt | Op::Lte => vec![kind(key).unwrap_or(0)],
        _ => key.to_vec(),
    };
    index
        .range((Bound::Included((start, String::new())), Bound::Unbounded))
        .skip_while(move |(k, _)| op == Op::Gt && k.as_slice() == key)
        .take_while(move |(k, _)| match op {
            Op::Eq => k.as_slice() == key,
            Op::Lt => k.as_slice() < key,
            Op::Lte => k.as_slice() <= key,
            _ => kind(k) == kind(key),
        })
        .filter(move |(k, _)| compare(k, op, key))
        .map(|(_, id)| id)
}

fn cursor(key: &[u8], id: &str) -> String {
    format!("{}.{}", hex::encode(key), hex::encode(id))
}

fn parse_cursor(text: &str) -> Option<(Vec<u8>, String)> {
    let (key, id) = text.split_once('.')?;
    Some((
        hex::decode(key).ok()?,
        String::from_utf8(hex::decode(id).ok()?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::action::Position;

    fn at() -> Context {
        Context {
            pos: Position {
                clock: 1,
                log: [1; 32],
                counter: 1,
            },
            index: 0,
        }
    }

    fn store(actions: &[Action]) -> DocStore {
        let mut store = DocStore::default();
        for action in actions {
            store.check(action).unwrap();
            store.reduce(&at(), action).unwrap();
        }
        store
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.docs.iter().map(|d| d[ID].as_str().unwrap()).collect()
    }

    #[test]
    fn schemas_refuse_bad_documents_with_the_reason() {
        let schema = json!({"type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}}});
        let mut s = store(&[create_collection("people", Some(schema), &[])]);
        let bad = insert("people", json!({"name": 42}));
        let err = s.check(&bad).unwrap_err();
        assert!(err.contains("does not match the schema"), "{err}");
        assert!(err.contains("at '/name'"), "{err}");
        assert!(s.reduce(&at(), &bad).is_err());
        assert_eq!(s.collections()[0].documents, 0);
        let odd = s
            .check(&create_collection("odd", Some(json!({"type": 12})), &[]))
            .unwrap_err();
        assert!(odd.contains("the schema"), "{odd}");
        assert!(odd.contains("meta-schema: at '/type'"), "{odd}");
        assert!(!odd.contains('\n') && !odd.contains(SCHEMA_URL), "{odd}");
        let dangling = s
            .check(&create_collection(
                "odd",
                Some(json!({"$ref": "#/nowhere"})),
                &[],
            ))
            .unwrap_err();
        assert!(dangling.contains("#/nowhere not found"), "{dangling}");
        assert!(!dangling.contains(SCHEMA_URL), "{dangling}");
        for elsewhere in [
            "file:///etc/passwd",
            "https://example.com/schema.json",
            "other.json",
        ] {
            let schema = json!({"$ref": elsewhere});
            let err = s
                .check(&create_collection("far", Some(schema), &[]))
                .unwrap_err();
            assert!(err.contains("may not refer to another document"), "{err}");
        }
        // Patterns are refused when Rust's regex cannot take them; formats assert in draft 7.
        let look_ahead = json!({"properties": {"a": {"pattern": "^(?=x)"}}});
        assert!(s
            .check(&create_collection("la", Some(look_ahead), &[]))
            .is_err());
        for (draft, asserted) in [
            ("http://json-schema.org/draft-07/schema#", true),
            ("https://json-schema.org/draft/2020-12/schema", false),
        ] {
            let schema = json!({"$schema": draft, "properties": {"at": {"format": "email"}}});
            let s = store(&[create_collection("f", Some(schema), &[])]);
            let doc = insert("f", json!({"at": "nowhere"}));
            assert_eq!(s.check(&doc).is_err(), asserted, "{draft}");
        }
        let digits = json!({"properties": {"n": {"pattern": "^\\d+$"}}});
        let mut d = store(&[create_collection("n", Some(digits), &[])]);
        assert!(d.check(&insert("n", json!({"n": "12a"}))).is_err());
        d.reduce(&at(), &insert("n", json!({"n": "12"}))).unwrap();
        assert!(s
            .check(&insert("nowhere", json!({})))
            .unwrap_err()
            .contains("no collection"));
        let doc = insert("people", json!({"name": "Jane"}));
        let id = doc.payload["doc"][ID].as_str().unwrap().to_owned();
        s.reduce(&at(), &doc).unwrap();
        assert!(s.check(&doc).unwrap_err().contains("exists"));
        assert_eq!(s.get("people", &id).unwrap()["name"], "Jane");
    }

    #[test]
    fn queries_sort_before_paging_and_cursors_resume() {
        let mut actions = vec![create_collection("people", None, &["age"])];
        for (i, age) in [40, 25, 33, 25, 61, 18].iter().enumerate() {
            let city = if i % 2 == 0 { "Oslo" } else { "Bergen" };
            actions.push(insert(
                "people",
                json!({"_id": format!("p{i}"), "age": age, "city": city}),
            ));
        }
        let s = store(&actions);
        let page = s
            .find(
                "people",
                &json!({"where": {"and": [{"field": "age", "gte": 20},
                                          {"or": [{"field": "city", "eq": "Oslo"},
                                                  {"field": "age", "lt": 30}]}]},
                        "sort": {"field": "age", "desc": true}, "skip": 1, "limit": 2}),
            )
            .unwrap();
        // Oslo or under 30, aged 20 or more: p4 (61), p0 (40), p2 (33), p1/p3 (25).
        assert_eq!(ids(&page), ["p0", "p2"]);
        let rest = s
            .find(
                "people",
                &json!({"where": {"field": "age", "gte": 20}, "sort": {"field": "age"},
                        "limit": 2, "after": page.next}),
            )
            .unwrap();
        // Ascending after p2 (33): p0 (40), p4 (61).
        assert_eq!(ids(&rest), ["p0", "p4"]);
        for bad in [
            json!({"where": {"field": "age", "near": 3}}),
            json!({"where": {"and": []}}),
            json!({"limit": 0}),
            json!({"order": "age"}),
            json!({"after": "zz"}),
        ] {
            assert!(s.find("people", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_index_created_later_covers_existing_documents() {
        let mut s = store(&[
            create_collection("c", None, &[]),
            insert("c", json!({"_id": "a", "n": 2})),
            insert("c", json!({"_id": "b", "n": 1})),
        ]);
        s.reduce(&at(), &create_index("c", "n")).unwrap();
        assert_eq!(s.collections()[0].indexes, ["_id", "n"]);
        let page = s
            .find("c", &json!({"where": {"field": "n", "eq": 1}}))
            .unwrap();
        assert_eq!(ids(&page), ["b"]);
        let restored = {
            let mut r = DocStore::default();
            r.restore(&s.snapshot()).unwrap();
            r
        };
        assert_eq!(restored.snapshot(), s.snapshot());
        assert_eq!(restored.collections(), s.collections());
    }

    /// The snapshot written by hand is the DAG-CBOR of the collections' states.
    #[test]
    fn a_snapshot_is_the_dag_cbor_of_the_collection_states() {
        let schema = json!({"type": "object", "required": ["n"]});
        let s = store(&[
            create_collection("people", Some(schema), &["n", "address.city"]),
            create_collection("a", None, &[]),
            insert(
                "people",
                json!({"_id": "x", "n": -3, "address": {"city": "Oslo"}}),
            ),
            insert(
                "people",
                json!({"_id": "long-id", "n": 2.5, "tags": [1, "two", null]}),
            ),
            insert("a", json!({"_id": "z", "b": true})),
        ]);
        let states: BTreeMap<&String, CollectionState> = s
            .collections
            .iter()
            .map(|(name, c)| {
                let state = CollectionState {
                    schema: c.schema.clone(),
                    indexes: c.indexes.keys().filter(|f| *f != ID).cloned().collect(),
                    docs: c.docs.clone(),
                };
                (name, state)
            })
            .collect();
        assert_eq!(s.snapshot(), serde_ipld_dagcbor::to_vec(&states).unwrap());
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            (-5.0f64..5.0).prop_map(|f| json!(f)),
            "[ab]{0,2}".prop_map(Value::from),
        ]
    }

    fn condition() -> impl Strategy<Value = Value> {
        let op = prop::sample::select(vec!["eq", "ne", "gt", "gte", "lt", "lte"]);
        let field = prop::sample::select(vec!["x", "y", "_id"]);
        (field, op, value()).prop_map(|(f, op, v)| json!({"field": f, op: v}))
    }

    fn filter() -> impl Strategy<Value = Value> {
        condition().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(|l| json!({"and": l})),
                prop::collection::vec(inner, 1..3).prop_map(|l| json!({"or": l})),
            ]
        })
    }

    proptest! {
        /// Indexes change how a query runs, never what it returns; following cursors page by
        /// page gives the whole result once, in order.
        #[test]
        fn indexes_and_cursors_never_change_results(
            docs in prop::collection::vec((prop::option::of(value()), value()), 0..30),
            filter in prop::option::of(filter()),
            sort in prop::sample::select(vec!["x", "y", "_id"]),
            desc in any::<bool>(),
            limit in 1usize..7,
        ) {
            let mut actions = vec![create_collection("c", None, &[])];
            for (i, (x, y)) in docs.iter().enumerate() {
                let mut doc = json!({"_id": format!("d{i:02}"), "y": y});
                if let Some(x) = x {
                    doc["x"] = x.clone();
                }
                actions.push(insert("c", doc));
            }
            let plain = store(&actions);
            actions.push(create_index("c", "x"));
            actions.push(create_index("c", "y"));
            let indexed = store(&actions);

            let mut query = json!({"sort": {"field": sort, "desc": desc}, "limit": MAX_LIMIT});
            if let Some(f) = &filter {
                query["where"] = f.clone();
            }
            let all = plain.find("c", &query).unwrap();
            prop_assert_eq!(&indexed.find("c", &query).unwrap().docs, &all.docs);

            query["limit"] = json!(limit);
            let mut paged = Vec::new();
            let mut after = Value::Null;
            loop {
                query["after"] = after;
                let page = indexed.find("c", &query).unwrap();
                paged.extend(page.docs.clone());
                match page.next {
                    Some(next) => after = json!(next),
                    None => break,
                }
                prop_assert!(paged.len() <= all.docs.len());
            }
            prop_assert_eq!(paged, all.docs);
        }
    }
}
