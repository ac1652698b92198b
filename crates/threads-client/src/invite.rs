//! Sharing a thread. A *link* carries the thread ID, a key set and the followers to reach; an
//! *invite* is the same sealed to one recipient's identity key (the paper's Invite with its Key
//! Set), so only that recipient can open it. Both are text: `threads:link:…`, `threads:invite:…`
//! (URL-safe base64 of JSON, sealed for invites).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use threads_core::crypto::{open_from, seal_to};
use threads_core::{Keypair, LogId, PublicKey, ReadKey, ThreadId, ThreadKey};

use crate::{Error, Result};

const LINK: &str = "threads:link:";
const INVITE: &str = "threads:invite:";

/// What the joiner may do: write (gets its own log), read, or only follow (no read key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Writer,
    Reader,
    Follower,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "writer" => Ok(Role::Writer),
            "reader" => Ok(Role::Reader),
            "follower" => Ok(Role::Follower),
            other => Err(format!("{other:?}: use writer, reader or follower")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Invite {
    pub thread: ThreadId,
    pub key: ThreadKey,
    /// Read keys the thread used before (rotated out), to read its earlier events.
    pub earlier_read_keys: Vec<ReadKey>,
    pub role: Role,
    /// The inviter's snapshot log, whose database snapshots the joiner may start from.
    pub snapshots_from: Option<LogId>,
    pub public: bool,
    pub followers: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct InviteJson {
    thread: String,
    key: String,
    /// Hex, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    earlier_read_keys: Vec<String>,
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshots_from: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    followers: Vec<String>,
}

impl Invite {
    /// A link, or with `to` an invite only that identity can open.
    pub fn encode(&self, to: Option<&PublicKey>) -> Result<String> {
        let json = serde_json::to_vec(&InviteJson {
            thread: self.thread.to_string(),
            key: self.key.to_multibase().to_string(),
            earlier_read_keys: self
                .earlier_read_keys
                .iter()
                .map(|k| hex::encode(k.as_bytes()))
                .collect(),
            role: self.role,
            snapshots_from: self.snapshots_from.as_ref().map(ToString::to_string),
            public: self.public,
            followers: self.followers.clone(),
        })
        .expect("strings serialize");
        Ok(match to {
            None => format!("{LINK}{}", B64URL.encode(json)),
            Some(recipient) => {
                let sealed = seal_to(recipient, &json, &mut OsRng)
                    .map_err(|e| Error::BadInvite(format!("cannot seal to that identity: {e}")))?;
                format!("{INVITE}{}", B64URL.encode(sealed))
            }
        })
    }

    /// Reads a link, or opens an invite with this peer's identity.
    pub fn decode(text: &str, identity: &Keypair) -> Result<Self> {
        let text = text.trim();
        let bad = |why: &str| Error::BadInvite(why.to_owned());
        let json = if let Some(rest) = text.strip_prefix(LINK) {
            B64URL
                .decode(rest)
                .map_err(|_| bad("the link is damaged"))?
        } else if let Some(rest) = text.strip_prefix(INVITE) {
            let sealed = B64URL
                .decode(rest)
                .map_err(|_| bad("the invite is damaged"))?;
            open_from(identity, &sealed)
                .map_err(|_| bad("the invite is sealed to another identity"))?
        } else {
            return Err(bad("expected threads:link:… or threads:invite:…"));
        };
        let json: InviteJson =
            serde_json::from_slice(&json).map_err(|_| bad("the contents do not parse"))?;
        let key: ThreadKey = json.key.parse().map_err(|_| bad("bad key set"))?;
        if json.role != Role::Follower && key.read().is_none() {
            return Err(bad("a writer or reader invite must carry the read key"));
        }
        let earlier_read_keys = json
            .earlier_read_keys
            .iter()
            .map(|k| {
                hex::decode(k)
                    .ok()
                    .and_then(|b| ReadKey::from_slice(&b).ok())
                    .ok_or_else(|| bad("bad earlier read key"))
            })
            .collect::<Result<_>>()?;
        Ok(Invite {
            thread: json.thread.parse().map_err(|_| bad("bad thread ID"))?,
            key,
            earlier_read_keys,
            role: json.role,
            snapshots_from: json
                .snapshots_from
                .map(|l| l.parse().map_err(|_| bad("bad snapshot log ID")))
                .transpose()?,
            public: json.public,
            followers: json.followers,
        })
    }
}
