//! A strict reader and a writer for the small, fixed DAG-CBOR shapes of record nodes.
//!
//! Record nodes come from untrusted peers and their CIDs are hashes of their exact bytes, so
//! the reader accepts only the canonical DAG-CBOR encoding: shortest integer and length heads,
//! definite lengths, map keys in length-first order without duplicates, links as tag 42 over
//! `00 || cid`, nothing after the item. Anything else is refused with a precise [`DecodeError`]
//! rather than canonicalised, so a node's CID is always the hash of the bytes that were received.
//! Application bodies (arbitrary DAG-CBOR) go through `serde_ipld_dagcbor` instead.

use cid::Cid;
use thiserror::Error;

/// Why untrusted node bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("input ends early")]
    Truncated,
    #[error("{0} bytes follow the encoded item")]
    TrailingBytes(usize),
    #[error("an integer or length is not in its shortest form")]
    NotCanonical,
    #[error("indefinite-length or reserved encodings are not DAG-CBOR")]
    Indefinite,
    #[error("expected {expected}, found CBOR major type {found}")]
    UnexpectedType { expected: &'static str, found: u8 },
    #[error("unexpected map key {0:?}")]
    UnexpectedKey(String),
    #[error("missing map key {0:?}")]
    MissingKey(&'static str),
    #[error("map key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("map key {0:?} is out of canonical order")]
    KeyOrder(String),
    #[error("map key is not UTF-8")]
    KeyNotUtf8,
    #[error("bad link: {0}")]
    BadLink(&'static str),
    #[error("{what} is {len} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
}

const MAJOR_UINT: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;
const TAG_CID: u64 = 42;

/// Cursor over untrusted bytes. Every read checks bounds and canonical form.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads an item head: major type and argument, refusing non-shortest forms.
    fn head(&mut self) -> Result<(u8, u64), DecodeError> {
        let initial = self.take(1)?[0];
        let major = initial >> 5;
        let info = initial & 0x1f;
        let arg = match info {
            0..=23 => return Ok((major, u64::from(info))),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().unwrap())),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().unwrap())),
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap()),
            _ => return Err(DecodeError::Indefinite),
        };
        let shortest = match info {
            24 => arg >= 24,
            25 => arg > 0xff,
            26 => arg > 0xffff,
            _ => arg > 0xffff_ffff,
        };
        if !shortest {
            return Err(DecodeError::NotCanonical);
        }
        Ok((major, arg))
    }

    fn expect(&mut self, major: u8, expected: &'static str) -> Result<u64, DecodeError> {
        let (found, arg) = self.head()?;
        if found != major {
            return Err(DecodeError::UnexpectedType { expected, found });
        }
        Ok(arg)
    }

    fn sized(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.expect(MAJOR_BYTES, "a byte string")?;
        self.sized(len)
    }

    pub(crate) fn map_len(&mut self) -> Result<u64, DecodeError> {
        self.expect(MAJOR_MAP, "a map")
    }

    pub(crate) fn key(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.expect(MAJOR_TEXT, "a text map key")?;
        std::str::from_utf8(self.sized(len)?).map_err(|_| DecodeError::KeyNotUtf8)
    }

    pub(crate) fn link(&mut self) -> Result<Cid, DecodeError> {
        let tag = self.expect(MAJOR_TAG, "a link (tag 42)")?;
        if tag != TAG_CID {
            return Err(DecodeError::BadLink("tag is not 42"));
        }
        let raw = self.bytes()?;
        let Some((&0, mut cid_bytes)) = raw.split_first() else {
            return Err(DecodeError::BadLink("missing the 0x00 multibase prefix"));
        };
        // Refuses non-minimal varints too.
        let cid = Cid::read_bytes(&mut cid_bytes).map_err(|_| DecodeError::BadLink("not a CID"))?;
        if !cid_bytes.is_empty() {
            return Err(DecodeError::BadLink("bytes follow the CID"));
        }
        Ok(cid)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Reads the keys of a map whose allowed keys are `keys`, given in canonical order.
///
/// Calls `field(index_in_keys, reader)` once per present key; absent keys are the caller's check.
pub(crate) fn read_map<'a, const N: usize>(
    r: &mut Reader<'a>,
    keys: [&'static str; N],
    mut field: impl FnMut(usize, &mut Reader<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.map_len()?;
    let mut seen = [false; N];
    let mut last: Option<usize> = None;
    for _ in 0..len {
        let key = r.key()?;
        let Some(index) = keys.iter().position(|k| *k == key) else {
            return Err(DecodeError::UnexpectedKey(key.to_owned()));
        };
        if seen[index] {
            return Err(DecodeError::DuplicateKey(key.to_owned()));
        }
        if last.is_some_and(|last| last > index) {
            return Err(DecodeError::KeyOrder(key.to_owned()));
        }
        seen[index] = true;
        last = Some(index);
        field(index, r)?;
    }
    Ok(())
}

/// Appends DAG-CBOR items to a buffer, each with its shortest head. Canonical order is the
/// caller's part: a map's keys must come length first, then bytewise.
#[derive(Default)]
pub struct Writer(pub(crate) Vec<u8>);

impl Writer {
    #[inline]
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    #[inline]
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Bytes written so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[inline]
    fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        match arg {
            0..=23 => self.0.push(m | arg as u8),
            24..=0xff => self.0.extend_from_slice(&[m | 24, arg as u8]),
            0x100..=0xffff => {
                self.0.push(m | 25);
                self.0.extend_from_slice(&(arg as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(m | 26);
                self.0.extend_from_slice(&(arg as u32).to_be_bytes());
            }
            _ => {
                self.0.push(m | 27);
                self.0.extend_from_slice(&arg.to_be_bytes());
            }
        }
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.head(MAJOR_BYTES, b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A byte string whose content `write` puts straight into this buffer, where filling a
    /// buffer of its own would copy it (a view's snapshot, tens of MiB, inside the
    /// snapshot's map). Its shortest head is known only once the content is written: room
    /// for the longest is left, and the content moved back behind the head that fits.
    pub fn bytes_with(&mut self, write: impl FnOnce(&mut Self)) {
        const ROOM: usize = 9;
        let start = self.0.len();
        self.0.extend_from_slice(&[0; ROOM]);
        write(self);
        let len = self.0.len() - start - ROOM;
        let mut head = Writer::with_capacity(ROOM);
        head.head(MAJOR_BYTES, len as u64);
        let fit = head.0.len();
        self.0[start..start + fit].copy_from_slice(&head.0);
        self.0.copy_within(start + ROOM.., start + fit);
        self.0.truncate(start + fit + len);
    }

    /// Appends an item already encoded as DAG-CBOR (by `serde_ipld_dagcbor`, say); the caller
    /// vouches that it is exactly one well-formed item.
    #[inline]
    pub fn encoded(&mut self, item: &[u8]) {
        self.0.extend_from_slice(item);
    }

    #[inline]
    pub fn text(&mut self, s: &str) {
        self.head(MAJOR_TEXT, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    #[inline]
    pub fn map(&mut self, len: u64) {
        self.head(MAJOR_MAP, len);
    }

    #[inline]
    pub fn list(&mut self, len: u64) {
        self.head(MAJOR_ARRAY, len);
    }

    #[inline]
    pub fn key(&mut self, k: &str) {
        self.text(k);
    }

    #[inline]
    pub fn link(&mut self, cid: &Cid) {
        self.head(MAJOR_TAG, TAG_CID);
        let len = cid.encoded_len();
        self.head(MAJOR_BYTES, len as u64 + 1);
        self.0.push(0);
        cid.write_bytes(&mut self.0)
            .expect("writing to a Vec cannot fail");
    }

    #[inline]
    pub fn uint(&mut self, n: u64) {
        self.head(MAJOR_UINT, n);
    }

    #[inline]
    pub fn int(&mut self, n: i64) {
        match u64::try_from(n) {
            Ok(n) => self.head(MAJOR_UINT, n),
            // -1 - n, which fits in a u64 for every negative i64.
            Err(_) => self.head(MAJOR_NEGATIVE, !(n as u64)),
        }
    }

    #[inline]
    pub fn bool(&mut self, b: bool) {
        // Simple values 20 (false) and 21 (true).
        self.0.push(MAJOR_SIMPLE << 5 | if b { 21 } else { 20 });
    }

    #[inline]
    pub fn null(&mut self) {
        // Simple value 22.
        self.0.push(MAJOR_SIMPLE << 5 | 22);
    }

    /// A float, always in 64 bits (DAG-CBOR's one width for floats).
    #[inline]
    pub fn f64(&mut self, x: f64) {
        self.0.push(MAJOR_SIMPLE << 5 | 27);
        self.0.extend_from_slice(&x.to_be_bytes());
    }
}

/// The CBOR head length of a byte string of `len` bytes.
pub(crate) fn bytes_head_len(len: usize) -> usize {
    match len {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_must_be_shortest() {
        // 5 encoded with a one-byte argument.
        assert_eq!(
            Reader::new(&[0x18, 5]).head(),
            Err(DecodeError::NotCanonical)
        );
        assert_eq!(
            Reader::new(&[0x19, 0, 0xff]).head(),
            Err(DecodeError::NotCanonical)
        );
        assert_eq!(Reader::new(&[0x18, 24]).head(), Ok((MAJOR_UINT, 24)));
        assert_eq!(Reader::new(&[0x5f]).head(), Err(DecodeError::Indefinite));
        assert_eq!(Reader::new(&[0x1c]).head(), Err(DecodeError::Indefinite));
        assert_eq!(Reader::new(&[0x19, 1]).head(), Err(DecodeError::Truncated));
    }

    #[test]
    fn writer_round_trips_every_head_width() {
        for n in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut w = Writer::with_capacity(9);
            w.uint(n);
            let mut r = Reader::new(&w.0);
            assert_eq!(r.head(), Ok((MAJOR_UINT, n)));
            r.finish().unwrap();
            assert_eq!(w.0.len(), bytes_head_len(n as usize));
        }
    }

    #[test]
    fn bytes_written_in_place_equal_bytes_copied() {
        for len in [0usize, 1, 23, 24, 255, 256, 65535, 65536, 70_000] {
            let content: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut copied = Writer::default();
            copied.uint(1);
            copied.bytes(&content);
            copied.uint(2);
            let mut in_place = Writer::default();
            in_place.uint(1);
            in_place.bytes_with(|w| w.encoded(&content));
            in_place.uint(2);
            assert_eq!(in_place.0, copied.0, "{len} bytes");
        }
    }
}
