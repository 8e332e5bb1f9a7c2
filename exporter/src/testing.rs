//! What the unit tests share.

/// A temporary directory holding `files` (`(relative path, contents)`, parents created): a
/// `/proc` or `/sys` tree as the code under test reads it.
pub(crate) fn file_tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
    }
    dir
}
