//! The crash tester's on-disk record: written by the guest writer, checked by the host verifier.
//! One definition for both sides.
//!
//! A record fills one *slot* of `size` bytes (a multiple of 512) at byte offset `slot * size` of
//! the disk under test. What the writer does at each sequence number is its [`SlotPlan`]'s
//! [`Op`], a pure function of the seed and the sequence number:
//!
//! * [`SlotPlan::Append`] (`raw-append`): the record with sequence number `n` goes to slot `n`,
//!   and no slot is written twice in a run;
//! * [`SlotPlan::Overwrite`] (`raw-overwrite`): each record goes to a seeded slot among the
//!   first [`REGION_SLOTS`], so slots are rewritten again and again;
//! * [`SlotPlan::Discard`] (`raw-discard`): the same, with one operation in [`DISCARD_ONE_IN`] a
//!   discard and one a write-zeroes of a seeded range of 1 to [`MAX_RANGE_SLOTS`] region slots.
//!
//! The sequence number is the record's **version**: every write has a new one, and of two
//! records of one slot the one with the higher sequence number is the newer. Layout (little
//! endian):
//!
//! | bytes            | field                                                |
//! |------------------|------------------------------------------------------|
//! | 0..8             | magic `KVMIOREC`                                     |
//! | 8..12            | format version (1)                                   |
//! | 12..16           | record size in bytes                                 |
//! | 16..24           | run id                                               |
//! | 24..32           | sequence number                                      |
//! | 32..40           | slot                                                 |
//! | 40..48           | zero                                                 |
//! | 48..size-32      | payload: SplitMix64 stream seeded by (seed, sequence) |
//! | size-32..size    | sha256 over bytes 0..size-32                          |
//!
//! Since the payload is a pure function of the seed and the sequence number, the host can
//! rebuild the exact bytes any slot should hold: a sector that is neither those bytes nor zero
//! was never written by the writer.

use sha2::{Digest as _, Sha256};

/// First bytes of every record.
pub const MAGIC: [u8; 8] = *b"KVMIOREC";
/// Record layout version.
pub const VERSION: u32 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 48;
/// The trailing sha256.
pub const DIGEST_LEN: usize = 32;
/// Sector size: records are whole sectors, and torn writes tear at sector boundaries.
pub const SECTOR: usize = 512;
/// Default record size: one 4 KiB page, the usual O_DIRECT unit.
pub const DEFAULT_RECORD_SIZE: usize = 4096;
/// Largest record size accepted.
pub const MAX_RECORD_SIZE: usize = 1 << 20;

/// A record's sha256.
pub type Digest = [u8; 32];

/// What identifies the records of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpec {
    pub run_id: u64,
    pub seed: u64,
    pub size: usize,
    pub plan: SlotPlan,
}

/// Which slot each sequence number writes (or which range it discards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SlotPlan {
    /// Sequence `n` writes slot `n`.
    #[default]
    Append,
    /// Sequence `n` writes a seeded slot of the region.
    Overwrite,
    /// Like [`SlotPlan::Overwrite`], with discards and write-zeroes of region ranges.
    Discard,
}

/// Slots the rewriting plans use (fewer on a smaller disk): small, so that the few hundred
/// records a crash window holds rewrite each slot many times.
pub const REGION_SLOTS: u64 = 16;
/// Operations of a rewriting plan, whatever the disk's size.
pub const MAX_REWRITE_OPS: u64 = 1 << 16;
/// One operation in this many is a discard, and one a write-zeroes ([`SlotPlan::Discard`]).
pub const DISCARD_ONE_IN: u64 = 8;
/// The longest discarded or zeroed range, in slots.
pub const MAX_RANGE_SLOTS: u64 = 4;

/// What the writer does at one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Write the record of this sequence number to `slot`.
    Write { slot: u64 },
    /// `BLKDISCARD` slots `first..first + count`.
    Discard { first: u64, count: u64 },
    /// `BLKZEROOUT` slots `first..first + count`.
    Zero { first: u64, count: u64 },
}

impl Op {
    /// The first slot the operation touches (the slot its `ACK` names).
    pub fn first_slot(self) -> u64 {
        match self {
            Op::Write { slot } => slot,
            Op::Discard { first, .. } | Op::Zero { first, .. } => first,
        }
    }

    /// The slots the operation touches.
    pub fn slots(self) -> std::ops::Range<u64> {
        match self {
            Op::Write { slot } => slot..slot + 1,
            Op::Discard { first, count } | Op::Zero { first, count } => first..first + count,
        }
    }
}

/// The fields of a self-consistent record (magic and sha256 check out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub size: u32,
    pub run_id: u64,
    pub seq: u64,
    pub slot: u64,
}

impl RecordSpec {
    /// Checks the record size: a multiple of 512 between 512 and [`MAX_RECORD_SIZE`].
    /// An append-only spec ([`SlotPlan::Append`]; see [`RecordSpec::with_plan`]).
    pub fn new(run_id: u64, seed: u64, size: usize) -> Result<RecordSpec, String> {
        if size < SECTOR || size % SECTOR != 0 || size > MAX_RECORD_SIZE {
            return Err(format!(
                "record size {size} must be a multiple of {SECTOR} between {SECTOR} and {MAX_RECORD_SIZE}"
            ));
        }
        Ok(RecordSpec {
            run_id,
            seed,
            size,
            plan: SlotPlan::Append,
        })
    }

    pub fn with_plan(self, plan: SlotPlan) -> RecordSpec {
        RecordSpec { plan, ..self }
    }

    /// How many operations the writer runs on a disk of `slots` slots.
    pub fn ops(&self, slots: u64) -> u64 {
        match self.plan {
            SlotPlan::Append => slots,
            SlotPlan::Overwrite | SlotPlan::Discard => MAX_REWRITE_OPS,
        }
    }

    /// The region the rewriting plans use on a disk of `slots` slots.
    pub fn region(&self, slots: u64) -> u64 {
        match self.plan {
            SlotPlan::Append => slots,
            SlotPlan::Overwrite | SlotPlan::Discard => slots.min(REGION_SLOTS),
        }
    }

    /// What sequence number `seq` does on a disk of `slots` slots (`seq < self.ops(slots)`).
    pub fn op(&self, seq: u64, slots: u64) -> Op {
        if self.plan == SlotPlan::Append {
            return Op::Write { slot: seq };
        }
        let region = self.region(slots).max(1);
        let h =
            SplitMix64::new(self.seed ^ seq.wrapping_add(1).wrapping_mul(0x9FB2_1C65_1E98_DF25))
                .next();
        let slot = h % region;
        if self.plan == SlotPlan::Discard {
            let first = (h >> 20) % region;
            let count = (1 + (h >> 40) % MAX_RANGE_SLOTS).min(region - first);
            match (h >> 8) % DISCARD_ONE_IN {
                0 => return Op::Discard { first, count },
                1 => return Op::Zero { first, count },
                _ => {}
            }
        }
        Op::Write { slot }
    }

    /// The digest a discard or write-zeroes operation is acknowledged with: sha256 over what it
    /// did (run, sequence, kind, range), so that an ack names exactly one operation.
    pub fn op_digest(&self, seq: u64, op: Op) -> Digest {
        let (kind, range) = match op {
            Op::Write { slot } => (b'W', slot..slot + 1),
            Op::Discard { first, count } => (b'D', first..first + count),
            Op::Zero { first, count } => (b'Z', first..first + count),
        };
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update(self.run_id.to_le_bytes());
        h.update(seq.to_le_bytes());
        h.update([kind]);
        h.update(range.start.to_le_bytes());
        h.update(range.end.to_le_bytes());
        h.finalize().into()
    }

    /// Byte offset of `slot` on the disk.
    pub fn offset(&self, slot: u64) -> u64 {
        slot * self.size as u64
    }

    /// How many slots a disk of `disk_bytes` holds.
    pub fn slots(&self, disk_bytes: u64) -> u64 {
        disk_bytes / self.size as u64
    }

    /// Writes the complete append-only record with sequence number `seq` (in slot `seq`) into
    /// `buf` (exactly `size` bytes) and returns its digest.
    pub fn fill(&self, seq: u64, buf: &mut [u8]) -> Digest {
        self.fill_at(seq, seq, buf)
    }

    /// Writes the complete record with sequence number `seq` for `slot` into `buf` and returns
    /// its digest.
    pub fn fill_at(&self, seq: u64, slot: u64, buf: &mut [u8]) -> Digest {
        assert_eq!(buf.len(), self.size, "record buffer size");
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf[12..16].copy_from_slice(&(self.size as u32).to_le_bytes());
        buf[16..24].copy_from_slice(&self.run_id.to_le_bytes());
        buf[24..32].copy_from_slice(&seq.to_le_bytes());
        buf[32..40].copy_from_slice(&slot.to_le_bytes());
        buf[40..48].fill(0);
        let body_end = self.size - DIGEST_LEN;
        fill_payload(self.seed, seq, &mut buf[HEADER_LEN..body_end]);
        let digest: Digest = Sha256::digest(&buf[..body_end]).into();
        buf[body_end..].copy_from_slice(&digest);
        digest
    }

    /// Whether `buf` holds exactly the payload record `seq` should carry (header and digest
    /// are not looked at).
    pub fn payload_matches(&self, seq: u64, buf: &[u8]) -> bool {
        let body = &buf[HEADER_LEN..self.size - DIGEST_LEN];
        let mut rng = SplitMix64::new(payload_seed(self.seed, seq));
        body.chunks(8).all(|chunk| {
            let word = rng.next().to_le_bytes();
            chunk == &word[..chunk.len()]
        })
    }
}

/// Parses a record of any run: `None` unless the magic, version, size field and sha256 agree.
pub fn parse(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN + DIGEST_LEN || buf[0..8] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let header = Header {
        version: u32_at(8),
        size: u32_at(12),
        run_id: u64_at(16),
        seq: u64_at(24),
        slot: u64_at(32),
    };
    if header.version != VERSION || header.size as usize != buf.len() {
        return None;
    }
    let body_end = buf.len() - DIGEST_LEN;
    let digest: Digest = Sha256::digest(&buf[..body_end]).into();
    (digest[..] == buf[body_end..]).then_some(header)
}

fn payload_seed(seed: u64, seq: u64) -> u64 {
    seed ^ seq.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn fill_payload(seed: u64, seq: u64, out: &mut [u8]) {
    let mut rng = SplitMix64::new(payload_seed(seed, seq));
    for chunk in out.chunks_mut(8) {
        let word = rng.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// SplitMix64: tiny and fully specified, so a seed means the same bytes on every build, in the
/// guest and on the host.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses 64 hex digits into a digest.
pub fn digest_from_hex(s: &str) -> Option<Digest> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_is_deterministic() {
        let spec = RecordSpec::new(0xfeed, 42, 4096).unwrap();
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        let da = spec.fill(7, &mut a);
        let db = spec.fill(7, &mut b);
        assert_eq!(a, b);
        assert_eq!(da, db);
        let h = parse(&a).expect("valid record");
        assert_eq!(
            h,
            Header {
                version: VERSION,
                size: 4096,
                run_id: 0xfeed,
                seq: 7,
                slot: 7
            }
        );
        assert!(spec.payload_matches(7, &a));
        assert!(!spec.payload_matches(8, &a));
        assert_eq!(&a[4096 - 32..], &da[..]);
    }

    #[test]
    fn any_flipped_byte_breaks_the_record() {
        let spec = RecordSpec::new(1, 2, 512).unwrap();
        let mut buf = vec![0u8; 512];
        spec.fill(0, &mut buf);
        for i in [0, 9, 20, 100, 479, 480, 511] {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(parse(&bad), None, "byte {i}");
        }
    }

    #[test]
    fn different_seeds_and_sequences_differ() {
        let s1 = RecordSpec::new(1, 1, 512).unwrap();
        let s2 = RecordSpec::new(1, 2, 512).unwrap();
        let (mut a, mut b, mut c) = (vec![0u8; 512], vec![0u8; 512], vec![0u8; 512]);
        s1.fill(0, &mut a);
        s2.fill(0, &mut b);
        s1.fill(1, &mut c);
        assert_ne!(a[HEADER_LEN..480], b[HEADER_LEN..480]);
        assert_ne!(a[HEADER_LEN..480], c[HEADER_LEN..480]);
    }

    #[test]
    fn sizes_are_checked() {
        for bad in [0, 100, 513, 2 * MAX_RECORD_SIZE] {
            assert!(RecordSpec::new(0, 0, bad).is_err(), "{bad}");
        }
        assert!(RecordSpec::new(0, 0, 512).is_ok());
    }

    /// The rewriting plans: every operation inside the region, every region slot rewritten,
    /// discards and write-zeroes about one in eight each, the same plan on both sides.
    #[test]
    fn rewriting_plans_stay_in_their_region_and_rewrite_it() {
        let spec = RecordSpec::new(1, 77, 4096).unwrap();
        assert_eq!(spec.op(5, 100), Op::Write { slot: 5 });
        assert_eq!(spec.ops(100), 100);
        for plan in [SlotPlan::Overwrite, SlotPlan::Discard] {
            let s = spec.with_plan(plan);
            assert_eq!(s.ops(1 << 30), MAX_REWRITE_OPS);
            assert_eq!(s.ops(16), MAX_REWRITE_OPS);
            let n = 4000;
            let mut writes = vec![0u64; REGION_SLOTS as usize];
            let (mut discards, mut zeros) = (0, 0);
            for seq in 0..n {
                let op = s.op(seq, 16384);
                assert_eq!(op, s.op(seq, 16384), "deterministic");
                assert!(
                    op.slots().end <= REGION_SLOTS && !op.slots().is_empty(),
                    "{op:?}"
                );
                assert!(op.slots().count() as u64 <= MAX_RANGE_SLOTS);
                match op {
                    Op::Write { slot } => writes[slot as usize] += 1,
                    Op::Discard { .. } => discards += 1,
                    Op::Zero { .. } => zeros += 1,
                }
            }
            assert!(writes.iter().all(|&w| w > 100), "{writes:?}");
            if plan == SlotPlan::Overwrite {
                assert_eq!((discards, zeros), (0, 0));
            } else {
                for k in [discards, zeros] {
                    assert!((n / 16..n / 5).contains(&k), "{discards} {zeros}");
                }
            }
            // A tiny disk: the region shrinks with it.
            assert!(s.op(3, 2).slots().end <= 2);
        }
        let a = spec.op_digest(3, Op::Zero { first: 1, count: 2 });
        assert_ne!(a, spec.op_digest(3, Op::Discard { first: 1, count: 2 }));
        assert_ne!(a, spec.op_digest(4, Op::Zero { first: 1, count: 2 }));
    }

    #[test]
    fn records_name_their_slot() {
        let spec = RecordSpec::new(1, 2, 512).unwrap();
        let mut buf = vec![0u8; 512];
        spec.fill_at(9, 3, &mut buf);
        let h = parse(&buf).unwrap();
        assert_eq!((h.seq, h.slot), (9, 3));
        assert!(spec.payload_matches(9, &buf));
    }

    #[test]
    fn hex_round_trip() {
        let d: Digest = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(digest_from_hex(&to_hex(&d)), Some(d));
        assert_eq!(digest_from_hex("zz"), None);
        assert_eq!(digest_from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 of the reference SplitMix64 (Steele, Lea, Flood 2014).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }
}
