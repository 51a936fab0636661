//! A data dir that loses what was written but not synced, as a power cut does (the idea of
//! lazyfs, which Jepsen mounts for the same fault). `kill -9` alone never loses a write: the
//! kernel's page cache outlives the process, so a missing `fsync` goes unseen until a machine
//! loses power. Here a FUSE filesystem over a backing directory keeps every file's writes in
//! memory until that file is synced (`fsync` or `fdatasync`) and only then writes them to the
//! backing file; `LazyDisk::cut_power` forgets them, as a power cut forgets the page cache.
//!
//! The model, kept simple and on the strict side for data:
//! - file contents and sizes (writes, truncations) are durable only once their file is synced;
//! - on a torn disk, a cut may find some unsynced pages already written back, as the kernel
//!   writes dirty pages back whenever it likes: for each file none, the first few, or any of
//!   them, each page as it stood (the file grows to hold it; truncations since the sync are
//!   lost). A log's unsynced tail may so come back torn, with holes, or whole;
//! - namespace operations (create, mkdir, rename, unlink) are durable at once, as on a journaled
//!   filesystem that commits them before returning (lazyfs does the same), so a missing
//!   directory `fsync` goes unseen;
//! - the backing files are the platter, so a sync only writes to them: they are never
//!   `fsync`ed themselves, since no fault here touches the real machine's page cache.
//!
//! The kernel caches nothing of it: files open with `FOPEN_DIRECT_IO` and every attribute and
//! name lives for 0 s, so what a restarted node reads after a loss is what the filesystem
//! says. One thread serves the mount (fuser's session loop); the harness reaches the state
//! through a mutex to cut the power.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use rand::rngs::StdRng;
use rand::Rng;

/// Unsynced data is kept in pages of this size.
const PAGE: u64 = 4096;
/// How long the kernel may trust a name or an attribute: not at all, since a loss changes
/// sizes behind its back.
const NO_CACHE: Duration = Duration::ZERO;

/// One file's writes since its last sync, as whole pages over the backing file.
#[derive(Debug)]
struct Unsynced {
    /// The size the file's writers see.
    size: u64,
    /// The backing file's bytes count only below this (a truncation since the last sync cut
    /// the rest); above it the file reads zeros wherever no page was written. Never above
    /// `size`.
    backing_valid: u64,
    /// Page index to its content. Bytes at or past `size` are zero.
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Unsynced {
    fn over(backing: &File) -> io::Result<Unsynced> {
        let size = backing.metadata()?.len();
        Ok(Unsynced {
            size,
            backing_valid: size,
            pages: BTreeMap::new(),
        })
    }

    /// The page `index` as the backing file gives it: its bytes below `backing_valid`, zeros
    /// after.
    fn backing_page(&self, backing: &File, index: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        let valid = self.backing_valid.saturating_sub(start).min(PAGE) as usize;
        let mut filled = 0;
        while filled < valid {
            let read = backing.read_at(&mut page[filled..valid], start + filled as u64)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        Ok(page)
    }

    fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = ((PAGE - at % PAGE).min(end - at)) as usize;
            match self.pages.get(&index) {
                Some(page) => out.extend_from_slice(&page[within..within + take]),
                None => {
                    let page = self.backing_page(backing, index)?;
                    out.extend_from_slice(&page[within..within + take]);
                }
            }
            at += take as u64;
        }
        Ok(out)
    }

    fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = (PAGE as usize - within).min(rest.len());
            if !self.pages.contains_key(&index) {
                let page = self.backing_page(backing, index)?;
                self.pages.insert(index, page);
            }
            let page = self.pages.get_mut(&index).expect("inserted above");
            page[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if size % PAGE != 0 {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[(size % PAGE) as usize..].fill(0);
                }
            }
            self.backing_valid = self.backing_valid.min(size);
        }
        self.size = size;
    }

    /// Writes what waited to the backing file, which then holds the file as its writers see it.
    fn write_back(&self, backing: &File) -> io::Result<()> {
        backing.set_len(self.backing_valid)?;
        for (&index, page) in &self.pages {
            let start = index * PAGE;
            let len = (self.size - start).min(PAGE) as usize;
            backing.write_all_at(&page[..len], start)?;
        }
        backing.set_len(self.size)
    }

    /// Writes these of its pages to the backing file as they stand (what the kernel wrote
    /// back before a power cut): the file grows to hold them, and nothing else changes.
    fn write_back_pages(&self, backing: &File, indexes: &[u64]) -> io::Result<()> {
        for index in indexes {
            let start = index * PAGE;
            let len = (self.size.saturating_sub(start)).min(PAGE) as usize;
            backing.write_all_at(&self.pages[index][..len], start)?;
        }
        Ok(())
    }
}

/// Which of a file's unsynced pages the kernel wrote back before the power went: none, the
/// first few (written back in order), or any of them (in any order). The cut keeps those.
fn written_back_before_cut(pages: &[u64], rng: &mut StdRng) -> Vec<u64> {
    match rng.gen_range(0..3) {
        0 => Vec::new(),
        1 => pages[..rng.gen_range(0..=pages.len())].to_vec(),
        _ => pages
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect(),
    }
}

/// What a power cut did to one file: of its unsynced pages, how many reached the disk anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutFile {
    /// Its path on the disk.
    pub path: PathBuf,
    pub pages: usize,
    pub kept: usize,
}

/// What a power cut did, file by file. Shown as `path kept/pages`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    pub files: Vec<CutFile>,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.files.is_empty() {
            return f.write_str("nothing unsynced");
        }
        for (i, file) in self.files.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            let CutFile { path, pages, kept } = file;
            write!(f, "{separator}{} {kept}/{pages}", path.display())?;
        }
        Ok(())
    }
}

struct State {
    /// The backing directory's inode, which the mount calls `FUSE_ROOT_ID` (and the other way
    /// round, so that no two paths share a number).
    root_ino: u64,
    /// Inode (the backing file's number) to its backing path. No hard links here.
    paths: HashMap<u64, PathBuf>,
    files: HashMap<u64, File>,
    /// An open directory's listing, taken at `opendir` so that offsets stay stable.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_handle: u64,
    unsynced: HashMap<u64, Unsynced>,
}

impl State {
    fn ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_ino {
            fuser::FUSE_ROOT_ID
        } else if backing_ino == fuser::FUSE_ROOT_ID {
            self.root_ino
        } else {
            backing_ino
        }
    }

    fn path(&self, ino: u64) -> Result<&PathBuf, i32> {
        self.paths.get(&ino).ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, metadata: &fs::Metadata) -> FileAttr {
        let ino = self.ino(metadata.ino());
        let size = self
            .unsynced
            .get(&ino)
            .map_or(metadata.len(), |unsynced| unsynced.size);
        let time = |secs: i64, nanos: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(metadata.atime(), metadata.atime_nsec()),
            mtime: time(metadata.mtime(), metadata.mtime_nsec()),
            ctime: time(metadata.ctime(), metadata.ctime_nsec()),
            crtime: time(metadata.ctime(), metadata.ctime_nsec()),
            kind: file_type(metadata.file_type()),
            perm: (metadata.mode() & 0o7777) as u16,
            nlink: metadata.nlink() as u32,
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, i32> {
        let metadata = fs::symlink_metadata(self.path(ino)?).map_err(errno)?;
        Ok(self.attr(&metadata))
    }

    /// Looks `path` up on the backing directory and remembers it under its inode.
    fn enter(&mut self, path: PathBuf) -> Result<FileAttr, i32> {
        let metadata = fs::symlink_metadata(&path).map_err(errno)?;
        let attr = self.attr(&metadata);
        self.paths.insert(attr.ino, path);
        Ok(attr)
    }

    fn open_handle(&mut self, file: File) -> u64 {
        self.next_handle += 1;
        self.files.insert(self.next_handle, file);
        self.next_handle
    }

    fn handle(&self, fh: u64) -> Result<&File, i32> {
        self.files.get(&fh).ok_or(libc::EBADF)
    }

    /// Forgets the unsynced writes of a file that is gone (unlinked or renamed over).
    fn forget_file(&mut self, path: &Path) {
        if let Ok(metadata) = fs::symlink_metadata(path) {
            let ino = self.ino(metadata.ino());
            self.unsynced.remove(&ino);
            self.paths.remove(&ino);
        }
    }
}

fn file_type(kind: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        FileType::Directory
    } else if kind.is_symlink() {
        FileType::Symlink
    } else if kind.is_fifo() {
        FileType::NamedPipe
    } else if kind.is_socket() {
        FileType::Socket
    } else if kind.is_block_device() {
        FileType::BlockDevice
    } else if kind.is_char_device() {
        FileType::CharDevice
    } else {
        FileType::RegularFile
    }
}

fn answer_attr(reply: ReplyAttr, result: Result<FileAttr, i32>) {
    match result {
        Ok(attr) => reply.attr(&NO_CACHE, &attr),
        Err(e) => reply.error(e),
    }
}

fn answer_entry(reply: ReplyEntry, result: Result<FileAttr, i32>) {
    match result {
        Ok(attr) => reply.entry(&NO_CACHE, &attr, 0),
        Err(e) => reply.error(e),
    }
}

fn answer_empty(reply: ReplyEmpty, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn errno(error: io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens a backing file for reading and, where allowed, writing: every handle may have to
/// write back what another handle of the same file wrote.
fn open_backing(path: &Path, create_mode: Option<u32>, exclusive: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if let Some(mode) = create_mode {
        options.mode(mode);
        if exclusive {
            options.create_new(true);
        } else {
            options.create(true);
        }
    }
    match options.open(path) {
        Err(e) if create_mode.is_none() && e.raw_os_error() == Some(libc::EACCES) => {
            File::open(path)
        }
        opened => opened,
    }
}

struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        // Go on serving after a call that panicked rather than fail every later one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| state.enter(path));
        answer_entry(reply, result);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        answer_attr(reply, self.state().attr_of(ino));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| -> Result<FileAttr, i32> {
            let path = state.path(ino)?.clone();
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(errno)?;
            }
            if let Some(size) = size {
                // A truncation is a write like any other: lost unless synced.
                if !state.unsynced.contains_key(&ino) {
                    let pending = match fh.and_then(|fh| state.files.get(&fh)) {
                        Some(file) => Unsynced::over(file),
                        None => open_backing(&path, None, false).and_then(|f| Unsynced::over(&f)),
                    };
                    state.unsynced.insert(ino, pending.map_err(errno)?);
                }
                state
                    .unsynced
                    .get_mut(&ino)
                    .expect("inserted above")
                    .truncate(size);
            }
            // Times, owners and flags: nothing in a data dir depends on them.
            state.attr_of(ino)
        })();
        answer_attr(reply, result);
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            fs::create_dir(&path).map_err(errno)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(errno)?;
            state.enter(path)
        });
        answer_entry(reply, result);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            state.forget_file(&path);
            fs::remove_file(&path).map_err(errno)
        });
        answer_empty(reply, result);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            fs::remove_dir(&path).map_err(errno)?;
            state.paths.retain(|_, known| known != &path);
            Ok(())
        });
        answer_empty(reply, result);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| -> Result<(), i32> {
            if flags != 0 {
                // RENAME_NOREPLACE / RENAME_EXCHANGE: nothing in a data dir asks for them.
                return Err(libc::EINVAL);
            }
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            let replaced = fs::symlink_metadata(&to).ok().map(|m| m.ino());
            fs::rename(&from, &to).map_err(errno)?;
            if let Some(replaced) = replaced {
                let ino = state.ino(replaced);
                state.unsynced.remove(&ino);
                state.paths.remove(&ino);
            }
            // The moved entry and everything under it (a directory) change paths.
            for known in state.paths.values_mut() {
                if let Ok(rest) = known.strip_prefix(&from) {
                    *known = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
            Ok(())
        })();
        answer_empty(reply, result);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state
            .path(ino)
            .and_then(|path| open_backing(path, None, false).map_err(errno))
            .map(|file| state.open_handle(file));
        match result {
            Ok(fh) => reply.opened(fh, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = (|| -> Result<(FileAttr, u64), i32> {
            let path = state.child(parent, name)?;
            let exclusive = flags & libc::O_EXCL != 0;
            let file =
                open_backing(&path, Some(mode & !umask & 0o7777), exclusive).map_err(errno)?;
            let ino = state.ino(file.metadata().map_err(errno)?.ino());
            // A number the backing filesystem reuses starts with nothing unsynced.
            state.unsynced.remove(&ino);
            let attr = state.enter(path)?;
            Ok((attr, state.open_handle(file)))
        })();
        match result {
            Ok((attr, fh)) => {
                reply.created(&NO_CACHE, &attr, 0, fh, fuser::consts::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let result = (|| -> Result<Vec<u8>, i32> {
            let offset = u64::try_from(offset).map_err(|_| libc::EINVAL)?;
            let backing = state.handle(fh)?;
            match state.unsynced.get(&ino) {
                Some(unsynced) => unsynced.read(backing, offset, size as u64).map_err(errno),
                None => {
                    let mut buf = vec![0u8; size as usize];
                    let mut filled = 0;
                    while filled < buf.len() {
                        let read = backing
                            .read_at(&mut buf[filled..], offset + filled as u64)
                            .map_err(errno)?;
                        if read == 0 {
                            break;
                        }
                        filled += read;
                    }
                    buf.truncate(filled);
                    Ok(buf)
                }
            }
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = (|| -> Result<(), i32> {
            let offset = u64::try_from(offset).map_err(|_| libc::EINVAL)?;
            let State {
                files, unsynced, ..
            } = &mut *state;
            let backing = files.get(&fh).ok_or(libc::EBADF)?;
            let pending = match unsynced.entry(ino) {
                Entry::Occupied(pending) => pending.into_mut(),
                Entry::Vacant(vacant) => vacant.insert(Unsynced::over(backing).map_err(errno)?),
            };
            pending.write(backing, offset, data).map_err(errno)
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) syncs nothing.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = (|| -> Result<(), i32> {
            let Some(unsynced) = state.unsynced.get(&ino) else {
                return Ok(());
            };
            unsynced.write_back(state.handle(fh)?).map_err(errno)?;
            state.unsynced.remove(&ino);
            Ok(())
        })();
        answer_empty(reply, result);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut state = self.state();
        let result = (|| -> Result<u64, i32> {
            let path = state.path(ino)?.clone();
            let parent_ino = path
                .parent()
                .and_then(|parent| fs::symlink_metadata(parent).ok())
                .map_or(ino, |m| state.ino(m.ino()));
            let mut listing = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (parent_ino, FileType::Directory, OsString::from("..")),
            ];
            for entry in fs::read_dir(&path).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let metadata = entry.metadata().map_err(errno)?;
                listing.push((
                    state.ino(metadata.ino()),
                    file_type(metadata.file_type()),
                    entry.file_name(),
                ));
            }
            state.next_handle += 1;
            let fh = state.next_handle;
            state.listings.insert(fh, listing);
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(listing) = state.listings.get(&fh) else {
            reply.error(libc::EBADF);
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(0);
        for (index, (ino, kind, name)) in listing.iter().enumerate().skip(skip) {
            if reply.add(*ino, index as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.state().listings.remove(&fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace operations were durable when they returned.
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let root = self.state().paths.get(&fuser::FUSE_ROOT_ID).cloned();
        let Some(root) = root else {
            reply.error(libc::ENOENT);
            return;
        };
        match nix_statvfs(&root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn nix_statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs fills the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut out: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut out) == 0 {
            Ok(out)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A mounted lazy data dir. Dropping it unmounts it.
pub struct LazyDisk {
    state: Arc<Mutex<State>>,
    /// Whether a cut may find unsynced pages written back (`written_back_before_cut`), or
    /// loses them all.
    torn: bool,
    /// Dropping it unmounts (fuser's mount guard); its thread ends when the kernel says so.
    _session: fuser::BackgroundSession,
}

impl LazyDisk {
    /// Mounts `backing` on `mount` (both directories), with `source` as the mount's source
    /// name (what `/proc/mounts` shows, and what a cleanup looks for).
    pub fn mount(
        backing: &Path,
        mount: &Path,
        source: &str,
        torn: bool,
    ) -> anyhow::Result<LazyDisk> {
        let backing = backing
            .canonicalize()
            .with_context(|| format!("the backing dir {}", backing.display()))?;
        let root_ino = fs::metadata(&backing)
            .context("stat the backing dir")?
            .ino();
        let state = Arc::new(Mutex::new(State {
            root_ino,
            paths: HashMap::from([(fuser::FUSE_ROOT_ID, backing)]),
            files: HashMap::new(),
            listings: HashMap::new(),
            next_handle: 0,
            unsynced: HashMap::new(),
        }));
        let options = [
            MountOption::FSName(source.to_string()),
            MountOption::Subtype("gavel-lazy".to_string()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let filesystem = LazyFs {
            state: state.clone(),
        };
        let session = fuser::spawn_mount2(filesystem, mount, &options)
            .with_context(|| format!("mount a lazy disk on {} (FUSE)", mount.display()))?;
        Ok(LazyDisk {
            state,
            torn,
            _session: session,
        })
    }

    /// Cuts the power: every write not synced is lost; on a torn disk, except the pages the
    /// kernel may have written back before (none, the first few or any, drawn from `rng` for
    /// each file). The processes using the disk should be dead by then, as after a power cut.
    pub fn cut_power(&self, rng: &mut StdRng) -> io::Result<Cut> {
        if self.torn {
            self.cut(|pages| written_back_before_cut(pages, rng))
        } else {
            self.cut(|_| Vec::new())
        }
    }

    fn cut(&self, mut written_back: impl FnMut(&[u64]) -> Vec<u64>) -> io::Result<Cut> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let root = state.paths[&fuser::FUSE_ROOT_ID].clone();
        // In inode order, so that a seed draws the same pages for the same files.
        let mut inodes: Vec<u64> = state.unsynced.keys().copied().collect();
        inodes.sort_unstable();
        let mut files = Vec::new();
        for ino in inodes {
            let unsynced = &state.unsynced[&ino];
            let pages: Vec<u64> = unsynced.pages.keys().copied().collect();
            let path = state.paths.get(&ino);
            let kept = match path {
                Some(path) => {
                    let kept = written_back(&pages);
                    if !kept.is_empty() {
                        let backing = open_backing(path, None, false)?;
                        unsynced.write_back_pages(&backing, &kept)?;
                    }
                    kept
                }
                // Unlinked while open: nothing on the disk to keep them in.
                None => Vec::new(),
            };
            files.push(CutFile {
                path: path.map_or_else(
                    || PathBuf::from(format!("(inode {ino})")),
                    |path| path.strip_prefix(&root).unwrap_or(path).to_path_buf(),
                ),
                pages: pages.len(),
                kept: kept.len(),
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        state.unsynced.clear();
        Ok(Cut { files })
    }
}

#[cfg(test)]
#[path = "lazyfs_tests.rs"]
mod tests;
