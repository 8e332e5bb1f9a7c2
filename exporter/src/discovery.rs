//! Which VMs to scrape, found again at every scrape: QMP sockets from `--qmp.socket-glob` (and
//! the `--layout` preset), guest-agent sockets from `--qga.socket-glob` or beside the QMP socket
//! with the same stem (`vm1.qmp` <-> `vm1.qga`), and `[[target]]`s from `--config`.
//!
//! A target's identity is its QMP socket path (or, for an agent without a QMP socket, its agent
//! socket path): per-VM state (pooled connections, caches) is keyed by it, and dropped when the
//! socket disappears.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::glob;

/// One VM to scrape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Stable identity: the QMP socket path, else the agent socket path.
    pub key: PathBuf,
    /// QMP monitor socket.
    pub qmp: Option<PathBuf>,
    /// Guest-agent socket.
    pub qga: Option<PathBuf>,
    /// VM label from the config file; overrides `query-name`.
    pub name: Option<String>,
    /// The socket's file name without its extension: the VM label when QMP has no name.
    pub stem: String,
}

/// `vm1.qmp` -> `vm1`; `/run/vm1/qmp.sock` -> `qmp`.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Finds the targets for `config` now. Sockets that are not Unix sockets (stale regular files,
/// directories) are skipped; configured targets are kept even if their socket is missing, so
/// they show up as down.
pub fn discover(config: &Config) -> Vec<Target> {
    let mut qmp_sockets: BTreeSet<PathBuf> = BTreeSet::new();
    for pattern in &config.qmp_socket_globs {
        qmp_sockets.extend(glob::expand(pattern).into_iter().filter(|p| is_socket(p)));
    }
    // Agent sockets from the globs, by stem; the first (sorted) wins a stem claimed twice.
    let mut qga_by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for pattern in &config.qga_socket_globs {
        for path in glob::expand(pattern) {
            if is_socket(&path) {
                qga_by_stem.entry(stem(&path)).or_insert(path);
            }
        }
    }

    let mut targets: BTreeMap<PathBuf, Target> = BTreeMap::new();
    let mut used_qga: BTreeSet<PathBuf> = BTreeSet::new();
    for t in &config.targets {
        if let Some(q) = &t.qga {
            used_qga.insert(q.clone());
        }
        targets.insert(
            t.qmp.clone(),
            Target {
                key: t.qmp.clone(),
                qmp: Some(t.qmp.clone()),
                qga: t.qga.clone(),
                name: t.name.clone(),
                stem: stem(&t.qmp),
            },
        );
    }
    for qmp in qmp_sockets {
        if targets.contains_key(&qmp) {
            continue;
        }
        let s = stem(&qmp);
        let sibling = qmp.with_extension("qga");
        let qga = qga_by_stem
            .get(&s)
            .filter(|p| !used_qga.contains(*p))
            .cloned()
            .or_else(|| (sibling != qmp && is_socket(&sibling)).then_some(sibling));
        if let Some(q) = &qga {
            used_qga.insert(q.clone());
        }
        targets.insert(
            qmp.clone(),
            Target {
                key: qmp.clone(),
                qmp: Some(qmp),
                qga,
                name: None,
                stem: s,
            },
        );
    }
    // Agents without a QMP socket of the same stem: scraped on their own, named by the stem.
    for (s, qga) in qga_by_stem {
        if used_qga.contains(&qga) {
            continue;
        }
        targets.insert(
            qga.clone(),
            Target {
                key: qga.clone(),
                qmp: None,
                qga: Some(qga),
                name: None,
                stem: s,
            },
        );
    }
    targets.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target as ConfiguredTarget;
    use std::os::unix::net::UnixListener;

    /// Listening sockets `dir/NAME` for each name, open while the result lives.
    fn sockets(dir: &Path, names: &[&str]) -> Vec<UnixListener> {
        names
            .iter()
            .map(|n| UnixListener::bind(dir.join(n)).unwrap())
            .collect()
    }

    #[test]
    fn pairs_by_stem_and_finds_lone_agents() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let _listening = sockets(d, &["vm1.qmp", "vm1.qga", "vm2.qmp", "vm3.qga"]);
        std::fs::write(d.join("stale.qmp"), b"").unwrap();
        let config = Config {
            qmp_socket_globs: vec![format!("{}/*.qmp", d.display())],
            qga_socket_globs: vec![format!("{}/*.qga", d.display())],
            ..Config::default()
        };
        let t = discover(&config);
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[0].qmp.as_deref(), Some(d.join("vm1.qmp").as_path()));
        assert_eq!(t[0].qga.as_deref(), Some(d.join("vm1.qga").as_path()));
        assert_eq!(t[0].stem, "vm1");
        assert_eq!(t[1].qga, None);
        assert_eq!(t[2].qmp, None);
        assert_eq!(t[2].stem, "vm3");
    }

    #[test]
    fn sibling_agent_without_qga_glob_and_configured_targets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let _listening = sockets(d, &["100.qmp", "100.qga"]);
        let config = Config {
            qmp_socket_globs: vec![format!("{}/*.qmp", d.display())],
            targets: vec![ConfiguredTarget {
                qmp: d.join("gone.sock"),
                qga: None,
                name: Some("db".into()),
            }],
            ..Config::default()
        };
        let t = discover(&config);
        assert_eq!(t.len(), 2);
        let vm = t.iter().find(|t| t.stem == "100").unwrap();
        assert_eq!(vm.qga.as_deref(), Some(d.join("100.qga").as_path()));
        let db = t.iter().find(|t| t.name.as_deref() == Some("db")).unwrap();
        assert_eq!(db.stem, "gone");
    }
}
