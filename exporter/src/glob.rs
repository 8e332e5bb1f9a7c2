//! Shell-style globs for socket discovery (`--qmp.socket-glob '/run/kvmio/*.qmp'`).
//!
//! Supported: `*` (any run of characters within one path component), `?` (one character),
//! `[abc]`, `[a-z]`, `[!abc]` / `[^abc]` (one character of / not of a set), and `\x` (a literal
//! `x`). As in the shell, wildcards never match `/`, and a leading `.` of a file name is only
//! matched by a literal `.`. Components without wildcards are taken literally (no directory
//! listing), so `/var/run/qemu-server/*.qmp` lists one directory. Results are sorted.

use std::path::{Path, PathBuf};

/// Directories read per pattern, at most: a bound against a pattern like `/*/*/*/*`.
const MAX_DIRS_READ: usize = 4096;

/// Whether a pattern component has a wildcard.
fn has_wildcard(component: &str) -> bool {
    let mut escaped = false;
    for c in component.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Removes backslash escapes from a literal component.
fn unescape(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands `pattern` to the existing paths it matches, sorted. Unreadable directories are
/// skipped (a glob over a directory that does not exist matches nothing).
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let absolute = pattern.starts_with('/');
    let mut current: Vec<PathBuf> = vec![if absolute {
        PathBuf::from("/")
    } else {
        PathBuf::from(".")
    }];
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut dirs_read = 0usize;
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let mut next = Vec::new();
        if has_wildcard(component) {
            for dir in &current {
                if dirs_read >= MAX_DIRS_READ {
                    break;
                }
                dirs_read += 1;
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if matches(component, name) {
                        let path = dir.join(name);
                        if last || path.is_dir() {
                            next.push(path);
                        }
                    }
                }
            }
        } else {
            let literal = unescape(component);
            for dir in &current {
                let path = dir.join(&literal);
                let exists = if last {
                    path.symlink_metadata().is_ok()
                } else {
                    path.is_dir()
                };
                if exists {
                    next.push(path);
                }
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    if components.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = current
        .into_iter()
        .map(|p| {
            if absolute {
                p
            } else {
                p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p)
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a file name matches one pattern component.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.first() == Some(&'.') && p.first() != Some(&'.') {
        // Hidden files only match a pattern that starts with a literal dot.
        return false;
    }
    match_from(&p, &n)
}

/// Iterative wildcard matching with one backtrack point for the last `*` (linear in practice).
fn match_from(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = match_class(&p[pi..], n[ni]) {
                        if matched {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c == n[ni] && c != '?' && c != '[' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) if n[sn] != '/' => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class at the start of `p` (`[...]`): `Some((matched, class length))`,
/// or `None` if the class is not closed.
fn match_class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        let mut lo = p[i];
        if lo == ']' && !first {
            return Some((matched != negate && c != '/', i + 1));
        }
        first = false;
        if lo == '\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("*.qmp", "vm1.qmp"));
        assert!(!matches("*.qmp", ".qmp"));
        assert!(matches(".*.qmp", ".x.qmp"));
        assert!(!matches("*.qmp", "vm1.qga"));
        assert!(matches("vm?.qmp", "vm1.qmp"));
        assert!(!matches("vm?.qmp", "vm12.qmp"));
        assert!(matches("vm[0-9]*.qmp", "vm12.qmp"));
        assert!(!matches("vm[!0-9]*", "vm1"));
        assert!(matches("vm[^0-9]*", "vmx"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("*a*b*c", "xxaybzzc"));
        assert!(!matches("*a*b*c", "xxaybzz"));
        assert!(matches("[]]", "]"));
        assert!(matches("x[", "x["));
        assert!(matches("*", "anything"));
        assert!(matches("**", ""));
    }

    #[test]
    fn expands_directories_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.qmp", "a.qmp", "a.qga", ".hidden.qmp"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.qmp"), b"").unwrap();
        let base = dir.path().to_str().unwrap();
        let got = expand(&format!("{base}/*.qmp"));
        assert_eq!(
            got,
            vec![dir.path().join("a.qmp"), dir.path().join("b.qmp")]
        );
        let got = expand(&format!("{base}/*/*.qmp"));
        assert_eq!(got, vec![dir.path().join("sub/c.qmp")]);
        assert_eq!(
            expand(&format!("{base}/a.qga")),
            vec![dir.path().join("a.qga")]
        );
        assert!(expand(&format!("{base}/missing/*.qmp")).is_empty());
        assert!(expand("").is_empty());
    }
}
