//! Keys on disk: one identity, and per thread its key set, this peer's own log key, and the
//! followers it pushes to. Files and the directory are readable by the owner only; secrets are
//! written as multibase text and never printed unless the user asks (`share`). With main keys
//! ([`Keystore::open_with`]) every file is sealed at rest as [`crate::at_rest`] describes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use threads_core::{Keypair, LogId, ReadKey, ThreadId, ThreadKey};

use crate::at_rest::{self, MainKeys};
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
    main: Option<MainKeys>,
    /// Held while an entry is read, changed and written back, so two changes (a cursor moved,
    /// a read key adopted) never overwrite each other.
    updating: Arc<Mutex<()>>,
}

const IDENTITY: &str = "identity.key";

impl Keystore {
    /// Opens (creating if needed, owner-only) the keystore in `dir`; files are kept in clear.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, None)
    }

    /// Opens the keystore in `dir`; with main keys every file is written sealed under the
    /// current one. Files still in clear, or sealed under an earlier main key, open;
    /// [`Keystore::seal_all`] seals them again.
    pub fn open_with(dir: &Path, main: Option<MainKeys>) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("threads"))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            main,
            updating: Arc::default(),
        })
    }

    /// Reads a file, opening it if it is sealed; `None` when there is none.
    fn read(&self, path: &Path) -> Result<Option<at_rest::Contents>> {
        match fs::read(path) {
            Ok(bytes) => {
                at_rest::read(bytes, self.main.as_ref(), &path.display().to_string()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes a file whole (then renames it into place, so a crash never leaves half a key
    /// file), sealed when the keystore has a main key.
    fn write(&self, path: &Path, plain: &[u8]) -> Result<()> {
        let tmp = path.with_extension("tmp");
        write_private(&tmp, &at_rest::write(plain, self.main.as_ref()))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Seals every file that is in clear or sealed under an earlier main key, under the
    /// current one. Returns how many were rewritten. Refuses (changing nothing more) at the
    /// first file no given key opens.
    pub fn seal_all(&self) -> Result<usize> {
        let Some(keys) = &self.main else {
            return Ok(0);
        };
        let _updating = self.updating.lock().expect("no panics while held");
        let mut files = vec![self.dir.join(IDENTITY)];
        let threads = self.dir.join("threads");
        for item in fs::read_dir(&threads).map_err(|e| Error::io(&threads, e))? {
            let path = item.map_err(|e| Error::io(&threads, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
        let mut resealed = 0;
        for path in files {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            if let Some(bytes) = at_rest::reseal(bytes, keys, &path.display().to_string())? {
                let tmp = path.with_extension("tmp");
                write_private(&tmp, &bytes)?;
                fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// This peer's identity: made on first use.
    pub fn identity(&self) -> Result<Keypair> {
        let path = self.dir.join(IDENTITY);
        match self.read(&path)? {
            Some(contents) => std::str::from_utf8(contents.plain())
                .map_err(|e| e.to_string())
                .and_then(|text| text.trim().parse().map_err(|e| format!("{e}")))
                .map_err(|e| Error::Keystore(format!("{}: {e}", path.display()))),
            None => {
                let pair = Keypair::generate(&mut OsRng);
                self.write(&path, pair.to_multibase().as_bytes())?;
                Ok(pair)
            }
        }
    }

    fn thread_path(&self, thread: &ThreadId) -> PathBuf {
        self.dir.join("threads").join(format!("{thread}.json"))
    }

    pub fn thread(&self, thread: &ThreadId) -> Result<ThreadEntry> {
        let path = self.thread_path(thread);
        let contents = self
            .read(&path)?
            .ok_or_else(|| Error::UnknownThread(thread.to_string()))?;
        let bad = |what: &str| Error::Keystore(format!("{}: bad {what}", path.display()));
        let file: ThreadFile = serde_json::from_slice(contents.plain()).map_err(|_| bad("file"))?;
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

    /// Writes a thread's entry whole. Writes of one keystore take turns: two at once would
    /// share the temporary file.
    pub fn save(&self, entry: &ThreadEntry) -> Result<()> {
        let _updating = self.updating.lock().expect("no panics while held");
        self.save_held(entry)
    }

    /// [`Keystore::save`], with the turn already taken.
    fn save_held(&self, entry: &ThreadEntry) -> Result<()> {
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
        let text = zeroize::Zeroizing::new(
            serde_json::to_string_pretty(&file).expect("strings serialize"),
        );
        self.write(&self.thread_path(&entry.thread), text.as_bytes())
    }

    /// Reads a thread's entry, changes it and writes it back, with no other change between.
    pub fn update<R>(
        &self,
        thread: &ThreadId,
        change: impl FnOnce(&mut ThreadEntry) -> R,
    ) -> Result<R> {
        let _updating = self.updating.lock().expect("no panics while held");
        let mut entry = self.thread(thread)?;
        let answer = change(&mut entry);
        self.save_held(&entry)?;
        Ok(answer)
    }

    /// Remembers how far the thread was pulled from the follower at `url`.
    pub fn save_cursor(&self, thread: &ThreadId, url: &str, cursor: &str) -> Result<()> {
        self.update(thread, |entry| {
            if let Some(f) = entry.followers.iter_mut().find(|f| f.url == url) {
                f.cursor = cursor.to_owned();
            }
        })
    }

    /// Forgets a thread: its keys file is deleted.
    pub fn remove(&self, thread: &ThreadId) -> Result<()> {
        let _updating = self.updating.lock().expect("no panics while held");
        let path = self.thread_path(thread);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
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
