//! QEMU's `cache=` modes.
//!
//! `-drive cache=MODE` is shorthand for three block-layer flags, and `query-block` reports the
//! flags, not the mode. The table (QEMU's `qemu-options.hx`, confirmed against QEMU 7.2 in
//! `shared/lab-notes.md`):
//!
//! | mode         | writeback | direct | no-flush |
//! |--------------|-----------|--------|----------|
//! | none         | true      | true   | false    |
//! | writeback    | true      | false  | false    |
//! | writethrough | false     | false  | false    |
//! | directsync   | false     | true   | false    |
//! | unsafe       | true      | false  | true     |
//!
//! `writeback` here means the guest sees a volatile write cache and must flush; `direct` means
//! the host page cache is bypassed (O_DIRECT); `no-flush` means guest flushes are ignored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of QEMU's five `cache=` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    None,
    Writeback,
    Writethrough,
    Directsync,
    Unsafe,
}

/// The three flags `query-block` reports under `inserted.cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheFlags {
    pub writeback: bool,
    pub direct: bool,
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

impl CacheMode {
    /// All modes, in the order QEMU's documentation lists them.
    pub const ALL: [CacheMode; 5] = [
        CacheMode::None,
        CacheMode::Writeback,
        CacheMode::Writethrough,
        CacheMode::Directsync,
        CacheMode::Unsafe,
    ];

    /// The `cache=` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Directsync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }

    /// The flags this mode sets.
    pub fn flags(self) -> CacheFlags {
        let (writeback, direct, no_flush) = match self {
            CacheMode::None => (true, true, false),
            CacheMode::Writeback => (true, false, false),
            CacheMode::Writethrough => (false, false, false),
            CacheMode::Directsync => (false, true, false),
            CacheMode::Unsafe => (true, false, true),
        };
        CacheFlags {
            writeback,
            direct,
            no_flush,
        }
    }

    /// The mode a set of flags corresponds to. Three combinations have no `cache=` name
    /// (e.g. `no-flush` without `writeback`, settable only through `-blockdev`); they return
    /// `None`, and callers report them as flags rather than guess.
    pub fn from_flags(flags: CacheFlags) -> Option<CacheMode> {
        CacheMode::ALL.into_iter().find(|m| m.flags() == flags)
    }

    /// Whether the guest-visible write cache is volatile (the guest must flush for durability).
    pub fn guest_write_cache(self) -> bool {
        self.flags().writeback
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `cache=` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cache mode {0:?}: use one of none, writeback, writethrough, directsync, unsafe")]
pub struct UnknownCacheMode(pub String);

impl FromStr for CacheMode {
    type Err = UnknownCacheMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownCacheMode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_for_every_mode() {
        for mode in CacheMode::ALL {
            assert_eq!(CacheMode::from_flags(mode.flags()), Some(mode));
            assert_eq!(mode.as_str().parse::<CacheMode>().unwrap(), mode);
        }
    }

    #[test]
    fn unnamed_flag_combination_is_not_guessed() {
        let flags = CacheFlags {
            writeback: false,
            direct: true,
            no_flush: true,
        };
        assert_eq!(CacheMode::from_flags(flags), None);
    }

    #[test]
    fn unknown_mode_error_says_what_to_use() {
        let err = "fast".parse::<CacheMode>().unwrap_err();
        assert!(err.to_string().contains("writethrough"), "{err}");
    }
}
