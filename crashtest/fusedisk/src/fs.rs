//! The filesystem: one flat directory of files, each a [`Disk`] (the volatile layer over a
//! backing file of the same name in the backing directory).
//!
//! The kernel sends every write here before it completes (kvmio does not ask for FUSE's
//! writeback cache, so the kernel's page cache is write-through): the volatile layer *is* the
//! host's page cache and disk cache. What makes data durable is what makes it durable on a real
//! host: `fsync`/`fdatasync` (FUSE_FSYNC), and writes on a file opened `O_SYNC`/`O_DSYNC`
//! (written through by themselves, as FUA). Opens with `O_DIRECT` are accepted as they come
//! (the kernel's FUSE sends them as direct requests, not through its page cache). Nothing here
//! knows about QEMU or its cache modes.
//!
//! After [`State::cut`] (the power cut) no request is processed: each is parked without an
//! answer until [`State::release`], which answers them `EIO` once the caller has SIGKILLed the
//! processes that sent them (a killed process never sees the answer), and answers every later
//! one `EIO` at once.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use kvmio_nbd::{Disk, PowerFailMode, PowerFailReport};

use crate::{Misbehaviour, Options};

/// Attributes may be cached this long: every change goes through the kernel anyway.
const TTL: Duration = Duration::from_secs(1);

/// One file.
#[derive(Debug)]
struct Node {
    name: OsString,
    disk: Disk,
    mtime: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    /// Inode (from 2) by name, and the nodes by inode.
    names: BTreeMap<OsString, u64>,
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    /// Set at the power cut: nothing is processed afterwards.
    cut: bool,
    /// Replies of the requests that came after the cut, unanswered until [`State::release`].
    parked: Vec<Box<dyn Parked>>,
    /// Set by [`State::release`]: requests after it are answered `EIO` at once (a dying
    /// process closing its files must not wait for an answer).
    released: bool,
}

/// The filesystem's state, shared by the FUSE session thread and the control handle.
#[derive(Debug)]
pub(crate) struct State {
    backing: PathBuf,
    options: Options,
    uid: u32,
    gid: u32,
    inner: Mutex<Inner>,
}

impl State {
    pub(crate) fn new(backing: PathBuf, options: Options) -> State {
        State {
            backing,
            options,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            inner: Mutex::new(Inner {
                next_ino: 2,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, unless the power is cut: then the reply is parked and `None` returned.
    fn live<R: Parked + 'static>(&self, reply: R) -> Option<(MutexGuard<'_, Inner>, R)> {
        let mut inner = self.lock();
        if inner.cut {
            if inner.released {
                Box::new(reply).fail(Errno::EIO);
            } else {
                inner.parked.push(Box::new(reply));
            }
            return None;
        }
        Some((inner, reply))
    }

    /// `op` on file `ino` with the lock held, unless the power is cut (the reply is parked) or
    /// there is no such file (`ENOENT`).
    fn on_node<R: Parked + 'static>(&self, ino: INodeNo, reply: R, op: impl FnOnce(&mut Node, R)) {
        let Some((mut inner, reply)) = self.live(reply) else {
            return;
        };
        match inner.nodes.get_mut(&ino.0) {
            Some(node) => op(node, reply),
            None => Box::new(reply).fail(Errno::ENOENT),
        }
    }

    /// Every file's volatile data made durable (the host's `sync`).
    pub(crate) fn sync_all(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        for node in inner.nodes.values_mut() {
            node.disk.persist_all()?;
        }
        Ok(())
    }

    /// The power cut: from now on no request is processed.
    pub(crate) fn cut(&self) {
        let mut inner = self.lock();
        inner.cut = true;
        for node in inner.nodes.values_mut() {
            node.disk.freeze();
        }
    }

    /// Answers the parked requests, and every later one, `EIO`; the cut stays.
    pub(crate) fn release(&self) -> usize {
        let parked = {
            let mut inner = self.lock();
            inner.released = inner.cut;
            std::mem::take(&mut inner.parked)
        };
        let n = parked.len();
        for reply in parked {
            reply.fail(Errno::EIO);
        }
        n
    }

    /// The power failure of every file; the reports summed.
    pub(crate) fn power_fail(&self, mode: PowerFailMode) -> std::io::Result<PowerFailReport> {
        let mut inner = self.lock();
        let mut total = PowerFailReport {
            mode,
            ..PowerFailReport::default()
        };
        for node in inner.nodes.values_mut() {
            let r = node.disk.power_fail(mode)?;
            total.unflushed_writes += r.unflushed_writes;
            total.persisted_writes += r.persisted_writes;
            total.torn_writes += r.torn_writes;
            total.lost_writes += r.lost_writes;
            total.volatile_bytes += r.volatile_bytes;
            total.bytes_persisted += r.bytes_persisted;
            // The power came back, but this host stays down until it is unmounted.
            node.disk.freeze();
        }
        Ok(total)
    }

    /// Bytes held by the volatile layers now.
    pub(crate) fn volatile_bytes(&self) -> u64 {
        self.lock()
            .nodes
            .values()
            .map(|n| n.disk.volatile_bytes())
            .sum()
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let size = node.disk.size();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Creates the backing file (never one kvmio did not create) and its node.
    fn create_node(&self, inner: &mut Inner, name: &OsStr) -> Result<u64, Errno> {
        if inner.names.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if inner.nodes.len() >= self.options.max_files {
            return Err(Errno::ENOSPC);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.backing.join(name))
            .map_err(Errno::from)?;
        let cap = self.options.max_file_size;
        let disk = Disk::new(
            file,
            0,
            self.options.misbehaviour == Misbehaviour::LieAboutFsync,
            // The volatile layer's memory is bounded by the file's size: past it, the layer is
            // written back whole, as a full disk cache destages.
            cap,
        )
        .with_capacity(cap)
        .with_reordered_flush(self.options.misbehaviour == Misbehaviour::ReorderFsync);
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.names.insert(name.to_owned(), ino);
        inner.nodes.insert(
            ino,
            Node {
                name: name.to_owned(),
                disk,
                mtime: SystemTime::now(),
            },
        );
        Ok(ino)
    }
}

/// A reply that can fail: held back at the power cut and answered `EIO` later, or `ENOENT`.
trait Parked: Send + std::fmt::Debug {
    fn fail(self: Box<Self>, errno: Errno);
}

macro_rules! parked {
    ($($t:ty),*) => {$(
        impl Parked for $t {
            fn fail(self: Box<Self>, errno: Errno) {
                self.error(errno);
            }
        }
    )*};
}
parked!(
    ReplyEntry,
    ReplyAttr,
    ReplyEmpty,
    ReplyOpen,
    ReplyCreate,
    ReplyData,
    ReplyWrite,
    ReplyDirectory,
    ReplyStatfs,
    ReplyXattr,
    ReplyIoctl
);

/// `O_SYNC` and `O_DSYNC` writes are durable when they complete (`O_SYNC` includes the
/// `O_DSYNC` bit).
fn sync_write(flags: OpenFlags) -> bool {
    flags.0 & libc::O_DSYNC != 0
}

/// The filesystem as fuser runs it.
#[derive(Debug)]
pub(crate) struct VolatileFs(pub(crate) std::sync::Arc<State>);

impl Filesystem for VolatileFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((inner, reply)) = self.0.live(reply) else {
            return;
        };
        match (parent, inner.names.get(name)) {
            (INodeNo::ROOT, Some(&ino)) => {
                reply.entry(&TTL, &self.0.attr(ino, &inner.nodes[&ino]), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some((inner, reply)) = self.0.live(reply) else {
            return;
        };
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.0.root_attr());
        }
        match inner.nodes.get(&ino.0) {
            Some(node) => reply.attr(&TTL, &self.0.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some((mut inner, reply)) = self.0.live(reply) else {
            return;
        };
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.0.root_attr());
        }
        let Some(node) = inner.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            if let Err(e) = node.disk.set_len(size) {
                return reply.error(Errno::from(e));
            }
            node.mtime = SystemTime::now();
        }
        reply.attr(&TTL, &self.0.attr(ino.0, node));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some((mut inner, reply)) = self.0.live(reply) else {
            return;
        };
        let Some(ino) = (parent == INodeNo::ROOT)
            .then(|| inner.names.remove(name))
            .flatten()
        else {
            return reply.error(Errno::ENOENT);
        };
        inner.nodes.remove(&ino);
        match std::fs::remove_file(self.0.backing.join(name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some((inner, reply)) = self.0.live(reply) else {
            return;
        };
        if inner.nodes.contains_key(&ino.0) {
            reply.opened(FileHandle(ino.0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let Some((mut inner, reply)) = self.0.live(reply) else {
            return;
        };
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self.0.create_node(&mut inner, name) {
            Ok(ino) => reply.created(
                &TTL,
                &self.0.attr(ino, &inner.nodes[&ino]),
                Generation(0),
                FileHandle(ino),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0.on_node(ino, reply, |node, reply| {
            let end = offset.saturating_add(u64::from(size)).min(node.disk.size());
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            match node.disk.read(offset, &mut buf) {
                Ok(()) => reply.data(&buf),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.0.on_node(ino, reply, |node, reply| {
            match node.disk.write(offset, data, sync_write(flags)) {
                Ok(_) => {
                    node.mtime = SystemTime::now();
                    reply.written(data.len() as u32)
                }
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        if let Some((_, reply)) = self.0.live(reply) {
            reply.ok();
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync and fsync alike: the file's length is the only metadata kept, and a
        // changed length is what fdatasync must make durable too.
        self.0
            .on_node(ino, reply, |node, reply| match node.disk.flush() {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(Errno::from(e)),
            });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some((inner, r)) = self.0.live(reply) else {
            return;
        };
        reply = r;
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
        ]
        .into_iter()
        .chain(
            inner
                .nodes
                .iter()
                .map(|(&i, n)| (INodeNo(i), FileType::RegularFile, n.name.as_os_str())),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some((_inner, reply)) = self.0.live(reply) else {
            return;
        };
        match nix::sys::statvfs::statvfs(&self.0.backing) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    /// No extended attributes (the kernel asks for `security.capability` on every write).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        if let Some((_, reply)) = self.0.live(reply) {
            reply.error(Errno::ENODATA);
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        if let Some((_, reply)) = self.0.live(reply) {
            reply.size(0);
        }
    }

    /// No ioctls: QEMU probes a few (block device ones) and takes `ENOTTY` as "not a device".
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if let Some((_, reply)) = self.0.live(reply) {
            reply.error(Errno::ENOTTY);
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0.on_node(ino, reply, |node, reply| {
            match fallocate(&mut node.disk, offset, length, mode) {
                Ok(()) => {
                    node.mtime = SystemTime::now();
                    reply.ok()
                }
                Err(e) => reply.error(e),
            }
        });
    }
}

/// `fallocate(2)` on the volatile layer: allocation (mode 0) grows the file, a punched hole and
/// a zeroed range are volatile zeroes (like any write), `KEEP_SIZE` keeps the length.
fn fallocate(disk: &mut Disk, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
    let size = disk.size();
    let io = |r: std::io::Result<()>| r.map_err(Errno::from);
    match mode {
        0 => {
            if end > size {
                io(disk.set_len(end))?;
            }
        }
        KEEP => {}
        m if m == PUNCH | KEEP || m == ZERO | KEEP => {
            if offset < size {
                io(disk
                    .write_zeroes(offset, end.min(size) - offset, false)
                    .map(drop))?;
            }
        }
        ZERO => io(disk.write_zeroes(offset, length, false).map(drop))?,
        _ => return Err(Errno::EOPNOTSUPP),
    }
    Ok(())
}
