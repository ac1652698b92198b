//! Keys on disk: one identity, and per thread its key set, this peer's own log key, and the
//! followers it pushes to. Files and the directory are readable by the owner only; secrets are
//! written as multibase text and never printed unless the user asks (`share`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use threads_core::{Keypair, LogId, ReadKey, ThreadId, ThreadKey};

use crate::{Error, Result};

/// What this peer knows of one thread.
#[derive(Debug, Clone)]
pub struct ThreadEntry {
    pub thread: ThreadId,
    /// The key set: service (follow) key always, read key unless this peer only follows.
    pub key: ThreadKey,
    /// Read keys the thread used before its current one (newest first): rotated out when a
    /// reader was revoked, kept to read the events written before.
    pub earlier_read_keys: Vec<ReadKey>,
    /// This peer's own log in the thread, if it writes.
    pub log: Option<Keypair>,
    /// This peer's second log, of database snapshots it published for others to start from.
    pub snapshot_log: Option<Keypair>,
    /// The snapshot log this peer trusts to start its database from: the one of whoever
    /// invited it (who held the keys anyway).
    pub snapshots_from: Option<LogId>,
    pub public: bool,
    pub followers: Vec<Follower>,
    /// Records signed under go-threads' weaker rule are accepted from this thread's followers
    /// (the user said so: js-threads and go-threads write them). See `docs/protocol.md`.
    pub allow_legacy_signatures: bool,
}

/// A follower server this peer pushes to and pulls from, and how far it has pulled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Follower {
    pub url: String,
    /// The thread cursor of the last page pulled from it (opaque, the server's).
    #[serde(default)]
    pub cursor: String,
}

impl ThreadEntry {
    /// The signature rules this peer accepts in the thread's records.
    pub fn signature_policy(&self) -> threads_core::SignaturePolicy {
        match self.allow_legacy_signatures {
            true => threads_core::SignaturePolicy::AllowLegacy,
            false => threads_core::SignaturePolicy::CurrentOnly,
        }
    }

    /// The read keys to try on an event: the current one, then earlier ones, newest first.
    pub fn read_keys(&self) -> impl Iterator<Item = &ReadKey> {
        self.key.read().into_iter().chain(&self.earlier_read_keys)
    }

    pub fn log_id(&self) -> Option<LogId> {
        self.log.as_ref().map(|pair| LogId::from(pair.public()))
    }

    /// The logs this peer writes: its own, then its snapshot log if it has one.
    pub fn own_logs(&self) -> impl Iterator<Item = &Keypair> {
        self.log
            .iter()
            .chain(self.log.as_ref().and(self.snapshot_log.as_ref()))
    }
}

#[derive(Serialize, Deserialize)]
struct ThreadFile {
    thread: String,
    key: String,
    /// Hex, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    earlier_read_keys: Vec<String>,
    #[serde(default)]
    log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot_log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshots_from: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    followers: Vec<Follower>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    allow_legacy_signatures: bool,
}

/// A keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// Opens (creating if needed, owner-only) the keystore in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("threads"))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// This peer's identity: made on first use.
    pub fn identity(&self) -> Result<Keypair> {
        let path = self.dir.join("identity.key");
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| Error::Keystore(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = Keypair::generate(&mut OsRng);
                write_private(&path, pair.to_multibase().as_bytes())?;
                Ok(pair)
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn thread_path(&self, thread: &ThreadId) -> PathBuf {
        self.dir.join("threads").join(format!("{thread}.json"))
    }

    pub fn thread(&self, thread: &ThreadId) -> Result<ThreadEntry> {
        let path = self.thread_path(thread);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::UnknownThread(thread.to_string()))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |what: &str| Error::Keystore(format!("{}: bad {what}", path.display()));
        let file: ThreadFile = serde_json::from_str(&text).map_err(|_| bad("file"))?;
        Ok(ThreadEntry {
            thread: file.thread.parse().map_err(|_| bad("thread ID"))?,
            key: file.key.parse().map_err(|_| bad("thread key"))?,
            earlier_read_keys: file
                .earlier_read_keys
                .iter()
                .map(|k| {
                    let bytes = hex::decode(k).map_err(|_| bad("earlier read key"))?;
                    ReadKey::from_slice(&bytes).map_err(|_| bad("earlier read key"))
                })
                .collect::<Result<_>>()?,
            log: file
                .log
                .map(|l| l.parse().map_err(|_| bad("log key")))
                .transpose()?,
            snapshot_log: file
                .snapshot_log
                .map(|l| l.parse().map_err(|_| bad("snapshot log key")))
                .transpose()?,
            snapshots_from: file
                .snapshots_from
                .map(|l| l.parse().map_err(|_| bad("snapshot log ID")))
                .transpose()?,
            public: file.public,
            followers: file.followers,
            allow_legacy_signatures: file.allow_legacy_signatures,
        })
    }

    pub fn save(&self, entry: &ThreadEntry) -> Result<()> {
        let file = ThreadFile {
            thread: entry.thread.to_string(),
            key: entry.key.to_multibase().to_string(),
            earlier_read_keys: entry
                .earlier_read_keys
                .iter()
                .map(|k| hex::encode(k.as_bytes()))
                .collect(),
            log: entry.log.as_ref().map(|l| l.to_multibase().to_string()),
            snapshot_log: entry
                .snapshot_log
                .as_ref()
                .map(|l| l.to_multibase().to_string()),
            snapshots_from: entry.snapshots_from.as_ref().map(ToString::to_string),
            public: entry.public,
            followers: entry.followers.clone(),
            allow_legacy_signatures: entry.allow_legacy_signatures,
        };
        let text = serde_json::to_string_pretty(&file).expect("strings serialize");
        let path = self.thread_path(&entry.thread);
        // Write then rename, so a crash never leaves half a key file.
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, text.as_bytes())?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Every thread this peer knows, in ID order.
    pub fn threads(&self) -> Result<Vec<ThreadEntry>> {
        let dir = self.dir.join("threads");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let name = item.map_err(|e| Error::io(&dir, e))?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(thread) = id.parse() {
                out.push(self.thread(&thread)?);
            }
        }
        out.sort_by(|a, b| a.thread.as_bytes().cmp(b.thread.as_bytes()));
        Ok(out)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}
