//! The crash tester's on-disk record: written by the guest writer, checked by the host verifier.
//! One definition for both sides.
//!
//! A record fills one *slot* of `size` bytes (a multiple of 512) at byte offset `slot * size` of
//! the disk under test. Slots are written append-only: the record with sequence number `n`
//! goes to slot `n` and no slot is written twice in a run. Layout (little endian):
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
    pub fn new(run_id: u64, seed: u64, size: usize) -> Result<RecordSpec, String> {
        if size < SECTOR || size % SECTOR != 0 || size > MAX_RECORD_SIZE {
            return Err(format!(
                "record size {size} must be a multiple of {SECTOR} between {SECTOR} and {MAX_RECORD_SIZE}"
            ));
        }
        Ok(RecordSpec { run_id, seed, size })
    }

    /// The slot the record with sequence number `seq` goes to (append-only: the same number).
    pub fn slot_of(&self, seq: u64) -> u64 {
        seq
    }

    /// Byte offset of `slot` on the disk.
    pub fn offset(&self, slot: u64) -> u64 {
        slot * self.size as u64
    }

    /// How many slots a disk of `disk_bytes` holds.
    pub fn slots(&self, disk_bytes: u64) -> u64 {
        disk_bytes / self.size as u64
    }

    /// Writes the complete record with sequence number `seq` into `buf` (exactly `size`
    /// bytes) and returns its digest.
    pub fn fill(&self, seq: u64, buf: &mut [u8]) -> Digest {
        assert_eq!(buf.len(), self.size, "record buffer size");
        let slot = self.slot_of(seq);
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
