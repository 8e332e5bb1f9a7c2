//! The simulated disk: a durable layer (the backing file) under a volatile write cache.
//!
//! Both of kvmio's simulated hosts use it: the NBD server (a fixed-size export) and
//! `kvmio-fusedisk` (a file that grows, shrinks and has holes punched, under QEMU's file driver).
//! The file's length is volatile too: it becomes durable with the data, at a flush, and a power
//! failure takes the file back to its last durable length (or to the end of the writes a seeded
//! subset keeps).
//!
//! Every unflushed write is kept, in arrival order, as an [`Entry`]; the data of all of them is
//! appended to one arena that is reused after each flush, so steady-state writes allocate nothing.
//! A per-sector index points at the newest entry holding each sector, which is what reads see.
//! Older entries stay in the log even when a later write supersedes them, because a power failure
//! that persists a random subset of the unflushed writes may persist the older one and lose the
//! newer one, exactly as a disk with a volatile cache may.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::{PowerFailMode, PowerFailReport, SECTOR_SIZE};

const SECTOR: u64 = SECTOR_SIZE;
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where an entry's data lives.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// In the arena, starting at this byte index.
    Arena(usize),
    /// All zeroes (NBD_CMD_WRITE_ZEROES); no memory used.
    Zero,
    /// Already durable (a FUA write). Kept only as a barrier: an older unflushed write must never
    /// be replayed over it at a power failure.
    Durable,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    first: u64,
    sectors: u64,
    payload: Payload,
}

/// Multiplicative hash for sector numbers; sectors are trusted small integers, so SipHash's
/// flooding resistance buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
struct SectorHasher(u64);

impl Hasher for SectorHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type SectorMap<V> = HashMap<u64, V, BuildHasherDefault<SectorHasher>>;
type SectorSet = HashSet<u64, BuildHasherDefault<SectorHasher>>;

/// What a disk operation did to the durable layer, for the statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    pub bytes: u64,
    pub syncs: u64,
}

impl Persisted {
    fn add(&mut self, other: Persisted) {
        self.bytes += other.bytes;
        self.syncs += other.syncs;
    }
}

/// SplitMix64: a tiny, fully specified generator, so a seed means the same crash on every build.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// The fate of one unflushed write at a power failure.
#[derive(Debug, Clone)]
enum Fate {
    Lost,
    Whole,
    /// One flag per sector: persisted or not.
    Torn(Vec<bool>),
}

/// A file under a volatile write cache. See the module documentation.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// The length readers see (volatile).
    size: u64,
    /// The backing file's length: the length a power failure leaves.
    durable_size: u64,
    /// Writes may grow the file up to this length.
    capacity: u64,
    lie_about_flush: bool,
    /// Test-only misbehaviour: a flush leaves the newest write volatile, as if the disk had
    /// reordered it after the flush.
    reorder_flush: bool,
    /// After [`Disk::freeze`] (the power cut) nothing changes the disk but the power failure.
    frozen: bool,
    max_volatile_bytes: u64,
    entries: Vec<Entry>,
    /// Number of entries that are not `Durable` barriers.
    volatile_entries: u64,
    /// Bytes covered by volatile entries (superseded ones included): the destage trigger.
    volatile_data_bytes: u64,
    arena: Vec<u8>,
    /// Newest volatile entry per sector.
    index: SectorMap<u32>,
    /// Scratch for sorting the index at flush time (kept to reuse its allocation).
    sorted: Vec<(u64, u32)>,
    /// Scratch for read-modify-write of unaligned writes.
    rmw: Vec<u8>,
    /// Scratch for gathering neighbouring sectors into one `pwrite`.
    staging: Vec<u8>,
}

impl Disk {
    /// A disk of `size` bytes over `file` (whose length must be `size`); it cannot grow until
    /// [`Disk::with_capacity`].
    pub fn new(file: File, size: u64, lie_about_flush: bool, max_volatile_bytes: u64) -> Self {
        Disk {
            file,
            size,
            durable_size: size,
            capacity: size,
            lie_about_flush,
            reorder_flush: false,
            frozen: false,
            max_volatile_bytes,
            entries: Vec::new(),
            volatile_entries: 0,
            volatile_data_bytes: 0,
            arena: Vec::new(),
            index: SectorMap::default(),
            sorted: Vec::new(),
            rmw: Vec::new(),
            staging: Vec::new(),
        }
    }

    /// Lets writes grow the file up to `capacity` bytes.
    pub fn with_capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity.max(self.size);
        self
    }

    /// Test-only misbehaviour: every flush leaves the newest unflushed write volatile.
    pub fn with_reordered_flush(mut self, reorder: bool) -> Self {
        self.reorder_flush = reorder;
        self
    }

    /// The length readers see now.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The power cut: from now on every write, flush and resize fails with `EIO` and changes
    /// nothing; only [`Disk::power_fail`] still acts.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    fn check_live(&self) -> io::Result<()> {
        if self.frozen {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Defence in depth: callers check ranges before calling in. A range past the capacity is
    /// `EFBIG`.
    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EFBIG)),
        }
    }

    /// Distinct bytes whose newest content is only in the volatile layer.
    pub fn volatile_bytes(&self) -> u64 {
        self.index.len() as u64 * SECTOR
    }

    /// Unflushed writes that a power failure could lose.
    pub fn volatile_writes(&self) -> u64 {
        self.volatile_entries
    }

    /// Reads `buf.len()` bytes at `offset` (any alignment) as the client sees them: the volatile
    /// layer over the backing file; past the backing file's end, zeroes. The caller checks the
    /// range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        read_or_zero(&self.file, buf, offset)?;
        if self.index.is_empty() || buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let mut sector = offset / SECTOR;
        while sector * SECTOR < end {
            if let Some(&idx) = self.index.get(&sector) {
                let s_start = sector * SECTOR;
                let lo = s_start.max(offset);
                let hi = (s_start + SECTOR).min(end);
                let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
                let entry = self.entries[idx as usize];
                match entry.payload {
                    Payload::Arena(start) => {
                        let src =
                            start + ((sector - entry.first) * SECTOR + (lo - s_start)) as usize;
                        dst.copy_from_slice(&self.arena[src..src + dst.len()]);
                    }
                    Payload::Zero => dst.fill(0),
                    Payload::Durable => {}
                }
            }
            sector += 1;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Unaligned writes are widened to whole sectors by
    /// read-modify-write, so that the volatile layer (and tearing) works on 512-byte sectors.
    /// A write past the end grows the file (volatile, like the data).
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<Persisted> {
        self.check_live()?;
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Persisted::default());
        }
        self.size = self.size.max(offset + len);
        if offset % SECTOR == 0 && len % SECTOR == 0 {
            return self.write_aligned(offset, Some(data), len, fua);
        }
        let start = offset / SECTOR * SECTOR;
        let end = (offset + len).div_ceil(SECTOR) * SECTOR;
        let mut buf = std::mem::take(&mut self.rmw);
        buf.clear();
        buf.resize((end - start) as usize, 0);
        let result = (|| {
            self.read(start, &mut buf[..SECTOR as usize])?;
            let tail = buf.len() - SECTOR as usize;
            self.read(end - SECTOR, &mut buf[tail..])?;
            buf[(offset - start) as usize..(offset - start + len) as usize].copy_from_slice(data);
            self.write_aligned(start, Some(&buf), end - start, fua)
        })();
        self.rmw = buf;
        result
    }

    /// Zeroes `len` bytes at `offset`; unaligned edges are handled by read-modify-write.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, fua: bool) -> io::Result<Persisted> {
        self.check_live()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Persisted::default());
        }
        self.size = self.size.max(offset + len);
        let start = offset.div_ceil(SECTOR) * SECTOR;
        let end = (offset + len) / SECTOR * SECTOR;
        if start >= end {
            // No whole sector inside: at most two partial sectors (len < 1024).
            return self.write(offset, &ZEROES[..len as usize], fua);
        }
        let mut done = Persisted::default();
        if offset < start {
            done.add(self.write(offset, &ZEROES[..(start - offset) as usize], fua)?);
        }
        done.add(self.write_aligned(start, None, end - start, fua)?);
        if end < offset + len {
            done.add(self.write(end, &ZEROES[..(offset + len - end) as usize], fua)?);
        }
        Ok(done)
    }

    /// `data == None` means zeroes.
    fn write_aligned(
        &mut self,
        offset: u64,
        data: Option<&[u8]>,
        len: u64,
        fua: bool,
    ) -> io::Result<Persisted> {
        let first = offset / SECTOR;
        let sectors = len / SECTOR;
        if fua && !self.lie_about_flush {
            match data {
                Some(d) => self.file.write_all_at(d, offset)?,
                None => write_zeroes_at(&self.file, offset, len)?,
            }
            // A FUA write past the durable end makes the file's new length durable too (as
            // O_DSYNC does), but no longer than the file: the last sector may be partial.
            if offset + len > self.durable_size {
                let end = (offset + len).min(self.size).max(self.durable_size);
                if end < offset + len {
                    self.file.set_len(end)?;
                }
                self.durable_size = end;
            }
            self.file.sync_data()?;
            // Did an older unflushed write cover any of these sectors? (The index holds each
            // sector's newest unflushed write.) Only then is a barrier needed: without this
            // test every FUA write after one unflushed write added an entry until the next flush.
            let mut overlaps = false;
            for s in first..first + sectors {
                overlaps |= self.index.remove(&s).is_some();
            }
            if overlaps {
                // Remember that these sectors are durable from this point of the write order
                // on: the older unflushed writes must not be replayed over them.
                self.entries.push(Entry {
                    first,
                    sectors,
                    payload: Payload::Durable,
                });
            }
            return Ok(Persisted {
                bytes: len,
                syncs: 1,
            });
        }
        let payload = match data {
            Some(d) => {
                let start = self.arena.len();
                self.arena.extend_from_slice(d);
                Payload::Arena(start)
            }
            None => Payload::Zero,
        };
        let idx = u32::try_from(self.entries.len())
            .map_err(|_| io::Error::other("too many unflushed writes"))?;
        self.entries.push(Entry {
            first,
            sectors,
            payload,
        });
        self.volatile_entries += 1;
        self.volatile_data_bytes += len;
        for s in first..first + sectors {
            self.index.insert(s, idx);
        }
        if self.volatile_data_bytes > self.max_volatile_bytes {
            // The cache is full: destage it, as a real disk writes back its cache on its own.
            return self.persist_all();
        }
        Ok(Persisted::default())
    }

    /// Sets the file's length (volatile): a shrink zeroes what it cuts off, so that a later
    /// growth reads zeroes there, and a power failure before the next flush keeps the old length.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.check_live()?;
        self.check_range(len, 0)?;
        if len < self.size {
            let old = self.size;
            self.write_zeroes(len, old - len, false)?;
        }
        self.size = len;
        Ok(())
    }

    /// NBD_CMD_FLUSH, fsync: every write received so far becomes durable (unless the disk lies;
    /// a disk that reorders keeps its newest write volatile).
    pub fn flush(&mut self) -> io::Result<Persisted> {
        self.check_live()?;
        if self.lie_about_flush {
            return Ok(Persisted::default());
        }
        // Misbehaviour for the checker's tests: the newest write is held back, as if the disk
        // had written it after the flush. Its sectors keep their durable bytes from before
        // the flush, and the write stays volatile.
        let held = match (self.reorder_flush, self.entries.last()) {
            (
                true,
                Some(&Entry {
                    first,
                    sectors,
                    payload: Payload::Arena(start),
                }),
            ) => {
                let data = self.arena[start..start + (sectors * SECTOR) as usize].to_vec();
                let mut before = vec![0u8; data.len()];
                read_or_zero(&self.file, &mut before, first * SECTOR)?;
                Some((first * SECTOR, data, before))
            }
            _ => None,
        };
        let done = self.persist_all()?;
        if let Some((offset, data, before)) = held {
            self.file.write_all_at(&before, offset)?;
            self.file.sync_data()?;
            self.write_aligned(offset, Some(&data), data.len() as u64, false)?;
        }
        Ok(done)
    }

    /// Writes the newest volatile data of every sector to the backing file, syncs it and empties
    /// the volatile layer.
    pub fn persist_all(&mut self) -> io::Result<Persisted> {
        let mut sorted = std::mem::take(&mut self.sorted);
        sorted.clear();
        sorted.extend(self.index.iter().map(|(&s, &i)| (s, i)));
        sorted.sort_unstable_by_key(|&(s, _)| s);
        let mut staging = std::mem::take(&mut self.staging);
        let result = self.write_sectors(&sorted, &mut staging);
        self.sorted = sorted;
        self.staging = staging;
        let bytes = result?;
        let mut done = Persisted { bytes, syncs: 0 };
        let resized = self.durable_size != self.size;
        if resized {
            self.file.set_len(self.size)?;
            self.durable_size = self.size;
        }
        if bytes > 0 || resized {
            self.file.sync_data()?;
            done.syncs = 1;
        }
        self.clear();
        Ok(done)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.arena.clear();
        self.index.clear();
        self.volatile_entries = 0;
        self.volatile_data_bytes = 0;
        // Do not hoard memory after an unusually large burst.
        const KEEP: usize = 64 << 20;
        if self.arena.capacity() > KEEP {
            self.arena.shrink_to(KEEP);
        }
        if self.index.capacity() > KEEP / 32 {
            self.index.shrink_to(KEEP / 32);
        }
    }

    /// Writes the given (sector, entry) pairs, sorted by sector. Sectors contiguous on disk are
    /// written with one `pwrite` however their data is laid out in the arena (pipelined clients
    /// send neighbouring writes out of order).
    fn write_sectors(&self, sorted: &[(u64, u32)], staging: &mut Vec<u8>) -> io::Result<u64> {
        let mut out = Gather {
            file: &self.file,
            staging,
            start: 0,
            held: None,
            written: 0,
        };
        // Current piece: first sector, number of sectors, source of its first byte (None: zero).
        let mut piece: Option<(u64, u64, Option<usize>)> = None;
        for &(sector, idx) in sorted {
            let entry = self.entries[idx as usize];
            let src = match entry.payload {
                Payload::Arena(start) => Some(start + ((sector - entry.first) * SECTOR) as usize),
                Payload::Zero => None,
                Payload::Durable => continue,
            };
            if let Some((first, n, piece_src)) = piece {
                let contiguous = first + n == sector
                    && match (piece_src, src) {
                        (Some(a), Some(b)) => a + (n * SECTOR) as usize == b,
                        (None, None) => true,
                        _ => false,
                    };
                if contiguous {
                    piece = Some((first, n + 1, piece_src));
                    continue;
                }
                out.push(first * SECTOR, self.piece(n, piece_src))?;
            }
            piece = Some((sector, 1, src));
        }
        if let Some((first, n, src)) = piece {
            out.push(first * SECTOR, self.piece(n, src))?;
        }
        out.finish()
    }

    fn piece(&self, sectors: u64, src: Option<usize>) -> Piece<'_> {
        let len = sectors * SECTOR;
        match src {
            Some(start) => Piece::Data(&self.arena[start..start + len as usize]),
            None => Piece::Zero(len),
        }
    }

    /// Simulates a power failure (frozen or not): decides the fate of every unflushed write according to `mode`,
    /// writes what survives to the backing file, syncs it and empties the volatile layer.
    ///
    /// The file's length goes back to its durable length, or, if a kept write reaches past it,
    /// to that write's end (no further than the length readers saw).
    pub fn power_fail(&mut self, mode: PowerFailMode) -> io::Result<PowerFailReport> {
        let mut report = PowerFailReport {
            mode,
            unflushed_writes: self.volatile_entries,
            volatile_bytes: self.volatile_bytes(),
            ..PowerFailReport::default()
        };
        let mut fates: Vec<Fate> = Vec::with_capacity(self.entries.len());
        let mut rng = match mode {
            PowerFailMode::DropAll => None,
            PowerFailMode::Subset { seed } | PowerFailMode::SubsetTorn { seed } => {
                Some(SplitMix64::new(seed))
            }
        };
        // Draw fates in write order, so that the outcome depends only on the seed and the
        // sequence of writes.
        for entry in &self.entries {
            let fate = match (&mut rng, mode, entry.payload) {
                (_, _, Payload::Durable) => Fate::Whole,
                (Some(rng), PowerFailMode::Subset { .. }, _) => {
                    if rng.coin() {
                        Fate::Whole
                    } else {
                        Fate::Lost
                    }
                }
                (Some(rng), PowerFailMode::SubsetTorn { .. }, _) => match rng.next_u64() % 3 {
                    0 => Fate::Lost,
                    1 => Fate::Whole,
                    _ => Fate::Torn((0..entry.sectors).map(|_| rng.coin()).collect()),
                },
                _ => Fate::Lost,
            };
            if !matches!(entry.payload, Payload::Durable) {
                match &fate {
                    Fate::Lost => report.lost_writes += 1,
                    Fate::Whole => report.persisted_writes += 1,
                    Fate::Torn(kept) => {
                        if kept.iter().all(|&k| k) {
                            report.persisted_writes += 1;
                        } else if kept.iter().all(|&k| !k) {
                            report.lost_writes += 1;
                        } else {
                            report.torn_writes += 1;
                        }
                    }
                }
            }
            fates.push(fate);
        }
        // Newest first: the first surviving version of a sector wins; a durable (FUA) barrier
        // means the backing file already has the newest surviving version.
        let mut decided = SectorSet::default();
        let mut survivors: Vec<(u64, u32)> = Vec::new();
        for (idx, (entry, fate)) in self.entries.iter().zip(&fates).enumerate().rev() {
            for (k, sector) in (entry.first..entry.first + entry.sectors).enumerate() {
                let kept = match fate {
                    Fate::Lost => false,
                    Fate::Whole => true,
                    Fate::Torn(kept) => kept[k],
                };
                if kept && decided.insert(sector) && !matches!(entry.payload, Payload::Durable) {
                    survivors.push((sector, idx as u32));
                }
            }
        }
        survivors.sort_unstable_by_key(|&(s, _)| s);
        let mut staging = std::mem::take(&mut self.staging);
        let result = self.write_sectors(&survivors, &mut staging);
        self.staging = staging;
        let bytes = result?;
        let kept_end = survivors.last().map_or(0, |&(s, _)| (s + 1) * SECTOR);
        let len = self.durable_size.max(kept_end.min(self.size));
        let resized = self.file.metadata()?.len() != len;
        if resized {
            self.file.set_len(len)?;
        }
        if bytes > 0 || resized {
            self.file.sync_data()?;
        }
        self.durable_size = len;
        self.size = len;
        report.bytes_persisted = bytes;
        self.clear();
        // The power is back: the disk serves what survived.
        self.frozen = false;
        Ok(report)
    }
}

/// Data for one stretch of the backing file.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Zero(n) => *n,
        }
    }
}

/// Largest run gathered into the staging buffer before it is written.
const GATHER_MAX: u64 = 8 << 20;

/// Turns pieces given in increasing disk order into as few `pwrite`s as possible: a lone piece is
/// written from where it is, neighbouring pieces are gathered into the staging buffer first.
struct Gather<'a, 'b> {
    file: &'a File,
    staging: &'b mut Vec<u8>,
    /// Disk offset of the held piece or of the staging buffer's first byte.
    start: u64,
    held: Option<Piece<'a>>,
    written: u64,
}

impl<'a> Gather<'a, '_> {
    fn pending(&self) -> u64 {
        match self.held {
            Some(p) => p.len(),
            None => self.staging.len() as u64,
        }
    }

    fn push(&mut self, offset: u64, piece: Piece<'a>) -> io::Result<()> {
        let pending = self.pending();
        if pending > 0 && offset == self.start + pending && pending + piece.len() <= GATHER_MAX {
            if let Some(held) = self.held.take() {
                self.staging.clear();
                stage(self.staging, held);
            }
            stage(self.staging, piece);
            return Ok(());
        }
        self.write_pending()?;
        self.start = offset;
        self.held = Some(piece);
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let n = self.pending();
        match self.held.take() {
            Some(Piece::Data(d)) => self.file.write_all_at(d, self.start)?,
            Some(Piece::Zero(len)) => write_zeroes_at(self.file, self.start, len)?,
            None if n > 0 => self.file.write_all_at(self.staging, self.start)?,
            None => {}
        }
        self.staging.clear();
        self.written += n;
        Ok(())
    }

    fn finish(mut self) -> io::Result<u64> {
        self.write_pending()?;
        Ok(self.written)
    }
}

fn stage(staging: &mut Vec<u8>, piece: Piece<'_>) {
    match piece {
        Piece::Data(d) => staging.extend_from_slice(d),
        Piece::Zero(n) => staging.resize(staging.len() + n as usize, 0),
    }
}

/// Reads `buf.len()` bytes at `offset`; what lies past the file's end reads as zeroes.
fn read_or_zero(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Zeroes a range of the backing file: a punched hole where the filesystem can (sparse images
/// stay sparse), written zeroes where it cannot.
fn write_zeroes_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let file_len = file.metadata()?.len();
    // Past the end, a hole would not grow the file: write zeroes there.
    let inside = len.min(file_len.saturating_sub(offset));
    if inside > 0 && fallocate(file.as_raw_fd(), flags, offset as i64, inside as i64).is_ok() {
        return write_zeroes_slow(file, offset + inside, len - inside);
    }
    write_zeroes_slow(file, offset, len)
}

fn write_zeroes_slow(file: &File, mut offset: u64, mut len: u64) -> io::Result<()> {
    while len > 0 {
        let n = len.min(ZEROES.len() as u64);
        file.write_all_at(&ZEROES[..n as usize], offset)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sectors: u64) -> (tempfile::NamedTempFile, Disk) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(sectors * SECTOR).unwrap();
        let file = tmp.reopen().unwrap();
        (tmp, Disk::new(file, sectors * SECTOR, false, u64::MAX))
    }

    fn backing(tmp: &tempfile::NamedTempFile) -> Vec<u8> {
        std::fs::read(tmp.path()).unwrap()
    }

    fn view(d: &Disk) -> Vec<u8> {
        let mut v = vec![0; d.size() as usize];
        d.read(0, &mut v).unwrap();
        v
    }

    #[test]
    fn reads_see_volatile_over_durable() {
        let (tmp, mut d) = disk(16);
        d.write(512, &[7; 1024], false).unwrap();
        d.write(1024, &[9; 512], false).unwrap();
        let v = view(&d);
        assert_filled(&v, &[(0..512, 0), (512..1024, 7), (1024..1536, 9)]);
        assert!(backing(&tmp).iter().all(|&b| b == 0));
        assert_eq!(d.volatile_bytes(), 1024);
        assert_eq!(d.volatile_writes(), 2);
        // Unaligned read across the boundary.
        let mut b = [0u8; 10];
        d.read(1019, &mut b).unwrap();
        assert_eq!(b, [7, 7, 7, 7, 7, 9, 9, 9, 9, 9]);
    }

    #[test]
    fn flush_persists_newest_data_and_coalesces() {
        let (tmp, mut d) = disk(64);
        for i in 0..8u8 {
            d.write(u64::from(i) * 4096, &[i + 1; 4096], false).unwrap();
        }
        d.write(4096, &[0xee; 512], false).unwrap();
        let p = d.flush().unwrap();
        assert_eq!(p.syncs, 1);
        assert_eq!(p.bytes, 8 * 4096);
        let b = backing(&tmp);
        assert_filled(
            &b,
            &[
                (0..4096, 1),
                (4096..4608, 0xee),
                (4608..8192, 2),
                (7 * 4096..8 * 4096, 8),
            ],
        );
        assert_eq!(d.volatile_bytes(), 0);
        assert_eq!(d.flush().unwrap(), Persisted::default(), "nothing to sync");
    }

    #[test]
    fn flush_gathers_out_of_order_and_zero_pieces() {
        let (tmp, mut d) = disk(256);
        // Neighbouring 4 KiB writes arriving out of order, with zeroes in the middle.
        let order = [3u64, 0, 2, 7, 1, 5, 4, 6];
        for &i in &order {
            d.write(i * 4096, &[i as u8 + 1; 4096], false).unwrap();
        }
        d.write_zeroes(2 * 4096 + 512, 1024, false).unwrap();
        d.write(20 * 4096, &[0xaa; 512], false).unwrap();
        let expected = view(&d);
        let p = d.flush().unwrap();
        assert_eq!(p.bytes, 8 * 4096 + 512);
        assert_eq!(backing(&tmp), expected);
        assert!(all_eq(&expected[2 * 4096 + 512..2 * 4096 + 1536], 0));
        assert!(all_eq(&expected[7 * 4096..8 * 4096], 8));
    }

    fn all_eq(b: &[u8], v: u8) -> bool {
        b.iter().all(|&x| x == v)
    }

    /// Every byte of each `b[range]` is its `byte`.
    fn assert_filled(b: &[u8], runs: &[(std::ops::Range<usize>, u8)]) {
        for (range, byte) in runs {
            assert!(
                all_eq(&b[range.clone()], *byte),
                "{range:?} is not all {byte:#x}"
            );
        }
    }

    #[test]
    fn unaligned_write_is_read_modify_write() {
        let (tmp, mut d) = disk(4);
        d.write(0, &[1; 2048], true).unwrap();
        d.write(100, &[5; 1000], false).unwrap();
        let v = view(&d);
        assert_filled(&v, &[(0..100, 1), (100..1100, 5), (1100..2048, 1)]);
        // The volatile layer holds whole sectors 0..3.
        assert_eq!(d.volatile_bytes(), 3 * 512);
        d.power_fail(PowerFailMode::DropAll).unwrap();
        assert!(backing(&tmp)[..2048].iter().all(|&b| b == 1));
    }

    #[test]
    fn zeroes_are_volatile_too() {
        let (tmp, mut d) = disk(8);
        d.write(0, &[3; 4096], true).unwrap();
        d.write_zeroes(10, 3000, false).unwrap();
        let v = view(&d);
        assert_filled(&v, &[(0..10, 3), (10..3010, 0), (3010..4096, 3)]);
        assert!(backing(&tmp)[..4096].iter().all(|&b| b == 3));
        d.flush().unwrap();
        assert_eq!(backing(&tmp)[..4096], v[..4096]);
    }

    #[test]
    fn fua_is_a_barrier_for_older_unflushed_writes() {
        for seed in 0..64 {
            let (tmp, mut d) = disk(8);
            d.write(0, &[1; 1024], false).unwrap();
            d.write(0, &[2; 512], true).unwrap();
            let r = d.power_fail(PowerFailMode::Subset { seed }).unwrap();
            assert_eq!(r.unflushed_writes, 1);
            let b = backing(&tmp);
            assert!(b[..512].iter().all(|&x| x == 2), "seed {seed}");
            assert!(b[512..1024].iter().all(|&x| x == 1) || b[512..1024].iter().all(|&x| x == 0));
        }
    }

    /// FUA writes that overlap no unflushed write add no barrier: the entry list stays bounded
    /// by the unflushed writes, however many FUA writes come before the next flush.
    #[test]
    fn fua_writes_elsewhere_add_no_barrier() {
        let (_tmp, mut d) = disk(64);
        d.write(0, &[1; 512], false).unwrap();
        for i in 0..10_000u64 {
            d.write(512 * (1 + i % 60), &[2; 512], true).unwrap();
        }
        assert_eq!(d.entries.len(), 1);
        // One that does overlap still gets its barrier.
        d.write(0, &[3; 512], true).unwrap();
        assert_eq!(d.entries.len(), 2);
    }

    #[test]
    fn lying_disk_keeps_everything_volatile() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(4096).unwrap();
        let mut d = Disk::new(tmp.reopen().unwrap(), 4096, true, u64::MAX);
        d.write(0, &[1; 512], true).unwrap();
        d.flush().unwrap();
        assert!(backing(&tmp).iter().all(|&x| x == 0));
        assert_eq!(view(&d)[..512], [1; 512]);
        d.power_fail(PowerFailMode::DropAll).unwrap();
        assert!(backing(&tmp).iter().all(|&x| x == 0));
    }

    #[test]
    fn destage_when_cache_is_full() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(1 << 20).unwrap();
        let mut d = Disk::new(tmp.reopen().unwrap(), 1 << 20, false, 64 * 1024);
        for i in 0..16u64 {
            d.write(i * 4096, &[9; 4096], false).unwrap();
        }
        let p = d.write(16 * 4096, &[9; 4096], false).unwrap();
        assert_eq!(p.bytes, 17 * 4096);
        assert_eq!(d.volatile_bytes(), 0);
    }

    #[test]
    fn subset_is_deterministic_and_keeps_whole_writes() {
        let run = |seed| {
            let (tmp, mut d) = disk(64);
            for i in 0..32u8 {
                d.write(u64::from(i) * 1024, &[i + 1; 1024], false).unwrap();
            }
            let r = d.power_fail(PowerFailMode::Subset { seed }).unwrap();
            assert_eq!(r.unflushed_writes, 32);
            assert_eq!(r.torn_writes, 0);
            assert_eq!(r.persisted_writes + r.lost_writes, 32);
            let b = backing(&tmp);
            for i in 0..32usize {
                let w = &b[i * 1024..(i + 1) * 1024];
                assert!(w.iter().all(|&x| x == 0) || w.iter().all(|&x| x == i as u8 + 1));
            }
            (b, r)
        };
        let (a, ra) = run(42);
        let (b, rb) = run(42);
        let (c, _) = run(43);
        assert_eq!(a, b);
        assert_eq!(ra, rb);
        assert_ne!(a, c);
    }

    #[test]
    fn subset_torn_tears_at_sector_granularity() {
        let (tmp, mut d) = disk(512);
        for i in 0..16u8 {
            d.write(u64::from(i) * 16384, &[i + 1; 16384], false)
                .unwrap();
        }
        let r = d.power_fail(PowerFailMode::SubsetTorn { seed: 7 }).unwrap();
        assert!(r.torn_writes > 0, "{r:?}");
        let b = backing(&tmp);
        let mut torn = 0;
        for i in 0..16usize {
            let w = &b[i * 16384..(i + 1) * 16384];
            let kept: Vec<bool> = w
                .chunks(512)
                .map(|s| {
                    assert!(s.iter().all(|&x| x == 0) || s.iter().all(|&x| x == i as u8 + 1));
                    s[0] != 0
                })
                .collect();
            if kept.iter().any(|&k| k) && !kept.iter().all(|&k| k) {
                torn += 1;
            }
        }
        assert_eq!(torn, r.torn_writes);
    }

    fn growing(cap: u64) -> (tempfile::NamedTempFile, Disk) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let file = tmp.reopen().unwrap();
        (tmp, Disk::new(file, 0, false, u64::MAX).with_capacity(cap))
    }

    #[test]
    fn growth_is_volatile_until_a_flush_and_past_the_capacity_is_efbig() {
        let (tmp, mut d) = growing(8192);
        d.write(0, &[1; 1024], false).unwrap();
        d.flush().unwrap();
        d.write(4096, &[2; 512], false).unwrap();
        assert_eq!(d.size(), 4608);
        let e = d.write(8000, &[3; 512], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        d.power_fail(PowerFailMode::DropAll).unwrap();
        assert_eq!(backing(&tmp), vec![1; 1024]);
        assert_eq!(d.size(), 1024);
    }

    #[test]
    fn a_shrink_zeroes_what_it_cuts_and_a_subset_keeps_the_length_of_kept_writes() {
        let (tmp, mut d) = growing(1 << 20);
        d.write(0, &[1; 4096], false).unwrap();
        d.flush().unwrap();
        d.set_len(1000).unwrap();
        d.set_len(4096).unwrap();
        assert_eq!(view(&d)[1000..], vec![0; 3096][..]);
        d.flush().unwrap();
        assert_eq!(backing(&tmp).len(), 4096);
        assert!(all_eq(&backing(&tmp)[1000..], 0));
        for seed in 0..32 {
            let (tmp, mut d) = growing(1 << 20);
            d.write(0, &[1; 512], false).unwrap();
            d.write(512, &[2; 512], false).unwrap();
            let r = d.power_fail(PowerFailMode::Subset { seed }).unwrap();
            let b = backing(&tmp);
            let want = if r.persisted_writes == 0 {
                0
            } else if b.len() == 1024 {
                1024
            } else {
                512
            };
            assert_eq!(b.len(), want, "seed {seed}: {r:?}");
            assert_eq!(d.size(), b.len() as u64);
        }
    }

    #[test]
    fn after_the_freeze_nothing_changes_but_the_power_failure() {
        let (tmp, mut d) = disk(8);
        d.write(0, &[1; 512], false).unwrap();
        d.freeze();
        for e in [
            d.write(512, &[2; 512], true).unwrap_err(),
            d.flush().unwrap_err(),
            d.set_len(0).unwrap_err(),
        ] {
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
        }
        d.power_fail(PowerFailMode::DropAll).unwrap();
        assert!(all_eq(&backing(&tmp), 0));
        d.write(0, &[3; 512], true).unwrap();
    }

    #[test]
    fn a_reordering_disk_keeps_the_newest_write_volatile_across_a_flush() {
        let (tmp, d) = disk(8);
        let mut d = d.with_reordered_flush(true);
        d.write(0, &[1; 512], false).unwrap();
        d.write(512, &[2; 512], false).unwrap();
        d.flush().unwrap();
        assert_eq!(d.volatile_writes(), 1);
        d.power_fail(PowerFailMode::DropAll).unwrap();
        let b = backing(&tmp);
        assert!(all_eq(&b[..512], 1) && all_eq(&b[512..], 0));
    }
}
