//! Shell-style globs for socket discovery (`--qmp.socket-glob '/run/kvmio/*.qmp'`), through the
//! `glob` crate: `*`, `?`, `[abc]`, `[a-z]`, `[!abc]`, `[*]` as a literal `*`. Wildcards never match
//! `/`, a leading `.` of a file name is only matched by a literal `.` (hidden sockets stay
//! hidden, as in the shell), and components without wildcards are taken literally (no directory
//! listing). Results are sorted and deduplicated; unreadable directories are skipped.
//!
//! Where the crate differs from kvmio's former hand-written matcher (it matters only for unusual
//! patterns): a `**` component descends into every subdirectory level (it was one level, like
//! `*`); a backslash is a literal character, escape with `[*]`/`[?]`/`[[]`; and a pattern the
//! crate rejects (`[` without `]`, `***`) matches nothing and is logged once, where an unclosed `[`
//! used to be literal. Nothing bounds the directories a pattern reads (the former cap was 4,096):
//! the operator writes the pattern, and `--layout` presets list one directory.
//!
//! Hidden files: the crate's own `require_literal_leading_dot` drops every hidden entry of a
//! listed directory, even for a pattern like `.*.qmp`, and panics on a file name that is not
//! UTF-8 while doing so. So the walk runs without it, and its results are filtered through the
//! crate's [`::glob::Pattern`] with it, which applies the rule per component and skips names that
//! are not UTF-8 (as kvmio always did).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use ::glob::{MatchOptions, Pattern, PatternError};

/// How results are matched: wildcards never cross `/` nor match a leading `.`.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// How directories are walked (see the module doc for the leading dot).
const WALK: MatchOptions = MatchOptions {
    require_literal_leading_dot: false,
    ..MATCH
};

/// Expands `pattern` to the existing paths it matches, sorted. A glob over a directory that does
/// not exist matches nothing, and so does an empty or invalid pattern.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    // `a//b/./c` -> `a/b/c`: the walk's paths are written that way, and the filter compares text.
    let components: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.is_empty() {
        return Vec::new();
    }
    let root = if pattern.starts_with('/') { "/" } else { "" };
    let pattern = format!("{root}{}", components.join("/"));
    let (filter, paths) = match Pattern::new(&pattern)
        .and_then(|filter| Ok((filter, ::glob::glob_with(&pattern, WALK)?)))
    {
        Ok(found) => found,
        Err(e) => {
            warn_once(&pattern, &e);
            return Vec::new();
        }
    };
    // Entries the crate could not read (an unreadable directory) come as errors: skipped.
    let mut out: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| filter.matches_path_with(p, MATCH))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Discovery runs at every scrape: an invalid pattern is said once per process, not per scrape.
fn warn_once(pattern: &str, e: &PatternError) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.insert(pattern.to_owned()) {
        tracing::warn!(pattern, error = %e, "invalid socket glob: it matches nothing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_directories_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.qmp",
            "a.qmp",
            "a.qga",
            ".hidden.qmp",
            "vm12.qmp",
            "vmx.qmp",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.qmp"), b"").unwrap();
        let base = dir.path().to_str().unwrap();
        let cases: [(&str, &[&str]); 7] = [
            ("*.qmp", &["a.qmp", "b.qmp", "vm12.qmp", "vmx.qmp"]),
            ("*/*.qmp", &["sub/c.qmp"]),
            (".*.qmp", &[".hidden.qmp"]),
            ("vm[0-9]*.qmp", &["vm12.qmp"]),
            ("vm[!0-9]*", &["vmx.qmp"]),
            ("?.qga", &["a.qga"]),
            ("a.qga", &["a.qga"]),
        ];
        for (pattern, want) in cases {
            let want: Vec<PathBuf> = want.iter().map(|n| dir.path().join(n)).collect();
            assert_eq!(expand(&format!("{base}/{pattern}")), want, "{pattern}");
        }
        assert!(expand(&format!("{base}/missing/*.qmp")).is_empty());
        assert!(expand("").is_empty());
    }

    #[test]
    fn an_invalid_pattern_matches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x[.qmp"), b"").unwrap();
        let base = dir.path().to_str().unwrap();
        assert!(expand(&format!("{base}/x[*.qmp")).is_empty());
        assert!(expand(&format!("{base}/***.qmp")).is_empty());
        // Said once, matched nothing again.
        assert!(expand(&format!("{base}/x[*.qmp")).is_empty());
    }

    #[test]
    fn hidden_directories_odd_names_and_spelling() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["vm", ".hid"] {
            std::fs::create_dir(d.join(sub)).unwrap();
            std::fs::write(d.join(sub).join("qmp.sock"), b"").unwrap();
        }
        // A file name that is not UTF-8 is skipped, never a panic.
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"\xff.qmp")), b"").unwrap();
        let base = d.to_str().unwrap();
        assert_eq!(
            expand(&format!("{base}/*/qmp.sock")),
            vec![d.join("vm/qmp.sock")]
        );
        assert_eq!(
            expand(&format!("{base}/.*/qmp.sock")),
            vec![d.join(".hid/qmp.sock")]
        );
        assert!(expand(&format!("{base}/*.qmp")).is_empty());
        assert_eq!(
            expand(&format!("{base}//./vm/*.sock")),
            vec![d.join("vm/qmp.sock")]
        );
    }
}
