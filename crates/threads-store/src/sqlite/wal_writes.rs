//! A VFS that hands each commit's write-ahead log to the kernel in a few large writes.
//!
//! SQLite writes a WAL frame as two `pwrite`s (its 24-byte header, then the page), and a
//! one-record push adds about six frames: a group of 26 pushes made some 380 system calls
//! before its fsync, and on a small VM each costs microseconds of the kernel's bookkeeping.
//! This VFS is the default one (`unix`) but for the `-wal` file, whose appends it gathers in
//! memory until SQLite syncs, reads, truncates or asks the size of that file, and then writes
//! them in calls of up to 128 KiB.
//!
//! It also grows the log ahead of its frames, 256 KiB of zeros at a time. A commit that
//! appends past the file's end changes its size and allocates blocks, so its `fsync` writes
//! the inode as well (a journaling file system commits its journal too): appending six pages
//! and syncing them cost 63–67 µs of CPU and 185 µs at the median here, and 40–47 µs and
//! 87–118 µs in a file grown this way, its zeros included. SQLite deletes the log when the
//! store closes, so a server regrows it after every restart, and a quiet one may never fill
//! it. Zeros past the last frame are what SQLite already expects there: it reads frames until
//! one fails its checksum, and a frame of zeros names page 0, which none is.
//!
//! That is sound only where nothing gathered outlives a transaction, which [`prepare`]
//! ensures of its connection: every commit syncs the log (`synchronous = FULL`), and pages
//! are never spilled to the log before the commit (`cache_spill = OFF`: frames of a
//! transaction then rolled back would otherwise wait here while another connection appends
//! its own at the same offsets). SQLite syncs after the last frame of a commit and only then
//! publishes it in the shared index, so no other connection reads a frame still gathered,
//! provided the commit does not pad its last frame past the sync (the file overwrites sectors
//! safely and is not sequential, as `unix` says of local files; otherwise writes are passed on
//! as they come). Files other than the log are the default VFS's own, untouched; so are
//! locks, which every connection of the process shares through that VFS.
//!
//! SQLite calls the functions below only with handles this VFS opened, and a handle from one
//! thread at a time (the connection's), which is what their raw pointers rely on.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name a connection opens the file with.
const NAME: &CStr = c"threads-wal-writes";
/// Most bytes gathered, then written in one call: the most the default VFS writes at once
/// (it keeps 17 bits of a write's length), about 30 frames of 4 KiB pages.
const MAX_GATHERED: usize = 0x1ffff;
/// The log grows by this much at a time: ten lone commits' frames. Larger steps wrote more
/// zeros at once, which showed in the commits that wrote them (a lone commit's p99 rose with
/// 1 MiB steps).
const GROWTH: i64 = 256 << 10;
/// What the log grows with, written in pieces of this size.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Registers the VFS (once per process); its name, for
/// [`rusqlite::Connection::open_with_flags_and_vfs`].
pub fn register() -> Result<&'static str, rusqlite::Error> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| unsafe {
        // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the VFS is
        // leaked, so it outlives every connection.
        let default = ffi::sqlite3_vfs_find(ptr::null());
        if default.is_null() {
            return ffi::SQLITE_ERROR;
        }
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            szOsFile: (REAL_AT + (*default).szOsFile as usize) as c_int,
            pNext: ptr::null_mut(),
            zName: NAME.as_ptr(),
            pAppData: default.cast(),
            xOpen: Some(open),
            // The rest are the default VFS's: `unix` ignores which VFS they are called through.
            ..*default
        }));
        ffi::sqlite3_vfs_register(vfs, 0)
    });
    match rc {
        ffi::SQLITE_OK => Ok(NAME.to_str().expect("the name is ASCII")),
        code => Err(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)),
    }
}

/// Makes a connection opened with this VFS keep what [`LogFile`]s gather within a commit: it
/// must sync every commit (checked, once its pragmas are set) and never spill pages early.
pub fn prepare(conn: &rusqlite::Connection) -> Result<(), crate::StoreError> {
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if synchronous < 2 {
        return Err(crate::StoreError::Other(sqlx::Error::Configuration(
            "the committing connection must sync each commit (synchronous = FULL)".into(),
        )));
    }
    conn.pragma_update(None, "cache_spill", "OFF")?;
    Ok(())
}

/// A log file: SQLite's handle, the appends gathered, and the default VFS's handle after it.
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    gathered: Gathered,
}

struct Gathered {
    /// Buffering only where the file overwrites sectors safely (see the module's comment).
    on: bool,
    /// File offset of `bytes[0]`.
    at: i64,
    bytes: Vec<u8>,
    /// How far the file is known to extend (grown or found so), if known.
    grown_to: Option<i64>,
}

/// Where the default VFS's handle starts inside the memory SQLite allocates for a file (a
/// multiple of the 8 bytes both handles align to).
const REAL_AT: usize = std::mem::size_of::<LogFile>();

const _: () = assert!(REAL_AT % 8 == 0);

/// The default VFS's handle of a file this VFS opened.
unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().add(REAL_AT).cast()
}

unsafe fn methods(real: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real).pMethods
}

/// Writes `len` bytes at `data` to the file at `offset`, through the default VFS's handle.
unsafe fn write_through(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    len: usize,
    offset: i64,
) -> c_int {
    let real = real(file);
    methods(real).xWrite.expect("a file is written")(real, data, len as c_int, offset)
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default: *mut ffi::sqlite3_vfs = (*vfs).pAppData.cast();
    let open = (*default).xOpen.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Any other file is the default VFS's handle, at the start of SQLite's memory.
        return open(default, name, file, flags, out_flags);
    }
    let real = real(file);
    let rc = open(default, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK || (*real).pMethods.is_null() {
        if !(*real).pMethods.is_null() {
            methods(real).xClose.expect("a file is closed")(real);
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    let device = methods(real).xDeviceCharacteristics.map_or(0, |f| f(real));
    let safe = device & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0
        && device & ffi::SQLITE_IOCAP_SEQUENTIAL == 0;
    ptr::write(
        file.cast::<LogFile>(),
        LogFile {
            base: ffi::sqlite3_file {
                pMethods: &LOG_METHODS,
            },
            gathered: Gathered {
                on: safe,
                at: 0,
                bytes: Vec::new(),
                grown_to: None,
            },
        },
    );
    rc
}

/// Version 1: a log file is never locked, mapped or shared memory.
static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Writes what is gathered, in one call; forgets it either way (a failed write fails the
/// transaction, and none of it is published).
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let gathered = &mut (*file.cast::<LogFile>()).gathered;
    if gathered.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let end = gathered.at + gathered.bytes.len() as i64;
    let rc = write_through(
        file,
        gathered.bytes.as_ptr().cast(),
        gathered.bytes.len(),
        gathered.at,
    );
    gathered.bytes.clear();
    if rc == ffi::SQLITE_OK {
        grow(file, end);
    }
    rc
}

/// Makes the file extend past `end` (the end of frames just written) to the next multiple of
/// [`GROWTH`], by writing zeros, unless it already extends past `end`. Only what lies past the
/// file's current end is written: nothing there is a frame. Growing only saves work, so it
/// fails nothing: on a full disk the frames are written, and the log grows frame by frame
/// again, as SQLite's own does.
unsafe fn grow(file: *mut ffi::sqlite3_file, end: i64) {
    let gathered = &mut (*file.cast::<LogFile>()).gathered;
    if gathered.grown_to.is_some_and(|to| end <= to) {
        return;
    }
    // Another connection may have appended since: ask the file itself.
    let real = real(file);
    let mut size = 0;
    if methods(real).xFileSize.expect("a file has a size")(real, &mut size) != ffi::SQLITE_OK {
        return;
    }
    let target = (end / GROWTH + 1) * GROWTH;
    let mut at = end.max(size);
    while at < target {
        let len = (target - at).min(ZEROS.len() as i64);
        if write_through(file, ZEROS.as_ptr().cast(), len as usize, at) != ffi::SQLITE_OK {
            return;
        }
        at += len;
    }
    gathered.grown_to = Some(at);
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let gathered = &mut (*file.cast::<LogFile>()).gathered;
    let len = amount as usize;
    if !gathered.on {
        return write_through(file, data, len, offset);
    }
    let end = gathered.at + gathered.bytes.len() as i64;
    if !gathered.bytes.is_empty() && (offset != end || gathered.bytes.len() + len > MAX_GATHERED) {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let gathered = &mut (*file.cast::<LogFile>()).gathered;
    if len > MAX_GATHERED {
        return write_through(file, data, len, offset);
    }
    if gathered.bytes.is_empty() {
        gathered.at = offset;
    }
    gathered
        .bytes
        .extend_from_slice(std::slice::from_raw_parts(data.cast(), len));
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let real = real(file);
    let closed = methods(real).xClose.expect("a file is closed")(real);
    ptr::drop_in_place(file.cast::<LogFile>());
    (*file).pMethods = ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Truncates the file (SQLite empties the log so), which then has to grow again.
unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let rc = flush(file);
    (*file.cast::<LogFile>()).gathered.grown_to = None;
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let real = real(file);
    methods(real).xTruncate.expect("a file is truncated")(real, size)
}

/// Defines methods that write what is gathered first, then call the default VFS's.
macro_rules! after_flush {
    ($($name:ident => $method:ident ($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let real = real(file);
            methods(real).$method.expect("the default VFS has the method")(real, $($arg),*)
        }
    )*};
}

/// Defines methods that only call the default VFS's.
macro_rules! passed_on {
    ($($name:ident => $method:ident ($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let real = real(file);
            methods(real).$method.expect("the default VFS has the method")(real, $($arg),*)
        }
    )*};
}

after_flush! {
    read => xRead(data: *mut c_void, amount: c_int, offset: i64);
    sync => xSync(flags: c_int);
    file_size => xFileSize(size: *mut i64);
    file_control => xFileControl(op: c_int, arg: *mut c_void);
}

passed_on! {
    lock => xLock(level: c_int);
    unlock => xUnlock(level: c_int);
    check_reserved_lock => xCheckReservedLock(out: *mut c_int);
    sector_size => xSectorSize();
    device_characteristics => xDeviceCharacteristics();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    /// A connection through this VFS, set up as the committing one is.
    fn gathering(path: &Path) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            register().unwrap(),
        )
        .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        // A small cache: a big transaction would spill pages early, were spilling allowed.
        conn.pragma_update(None, "cache_size", "10").unwrap();
        prepare(&conn).unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Commits of one row and of far more than one gathered write, a rolled-back transaction,
    /// and another connection (the default VFS) writing in between: after each commit, the
    /// files as they stand (a copy, as a crash would leave them) hold every committed row.
    #[test]
    fn every_commit_is_in_the_files_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut conn = gathering(&path);
        conn.execute_batch("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB)")
            .unwrap();
        let other = Connection::open(&path).unwrap();
        let mut committed = 0;
        for (round, n) in [1, 500, 3, 2000, 1].into_iter().enumerate() {
            let tx = conn.transaction().unwrap();
            for i in 0..n {
                let key = format!("{round}/{i}").repeat(8);
                tx.execute("INSERT INTO t VALUES (?1, randomblob(700))", [key])
                    .unwrap();
            }
            tx.commit().unwrap();
            committed += n;

            let abandoned = conn.transaction().unwrap();
            abandoned
                .execute_batch("INSERT INTO t SELECT k || 'x', v FROM t")
                .unwrap();
            drop(abandoned);
            other
                .execute(
                    "INSERT INTO t VALUES (?1, randomblob(700))",
                    [format!("other {round}")],
                )
                .unwrap();
            committed += 1;

            let copy = dir.path().join(format!("copy{round}"));
            for suffix in ["", "-wal"] {
                std::fs::copy(
                    format!("{}{suffix}", path.display()),
                    format!("{}{suffix}", copy.display()),
                )
                .unwrap();
            }
            let crashed = Connection::open(&copy).unwrap();
            let check: String = crashed
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
            assert_eq!(rows(&crashed), committed, "round {round}");
            assert_eq!(rows(&other), committed);
        }
        drop(conn);
        assert_eq!(rows(&gathering(&path)), committed);
    }

    /// The log's size changes once per [`GROWTH`], not with every commit, and the zeros past its
    /// frames read back as no frames, after SQLite empties it too.
    #[test]
    fn the_log_grows_ahead_of_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = gathering(&path);
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let log_size = || std::fs::metadata(dir.path().join("db-wal")).unwrap().len() as i64;
        let mut sizes = Vec::new();
        for round in 0..2 {
            for i in 0..20 {
                conn.execute("INSERT INTO t (v) VALUES (randomblob(3000))", [])
                    .unwrap();
                if i == 0 {
                    assert_eq!(log_size(), GROWTH, "round {round}");
                }
                sizes.push(log_size());
            }
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            assert_eq!(log_size(), 0);
        }
        assert!(sizes.iter().all(|size| size % GROWTH == 0));
        assert!(sizes.windows(2).filter(|w| w[0] != w[1]).count() <= 6);
        // A copy, as a crash would leave the files, holds what was committed.
        conn.execute("INSERT INTO t (v) VALUES (zeroblob(10))", [])
            .unwrap();
        for suffix in ["", "-wal"] {
            std::fs::copy(
                format!("{}{suffix}", path.display()),
                dir.path().join(format!("copy{suffix}")),
            )
            .unwrap();
        }
        assert_eq!(
            rows(&Connection::open(dir.path().join("copy")).unwrap()),
            41
        );
    }

    #[test]
    fn a_connection_that_does_not_sync_each_commit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_with_flags_and_vfs(
            dir.path().join("db"),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            register().unwrap(),
        )
        .unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        assert!(prepare(&conn).is_err());
    }
}
