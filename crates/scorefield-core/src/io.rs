//! Files written so that nothing a user saved is lost: [`write_atomically`].

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically: into a temporary file with a unique name in the same
/// directory (`tempfile`), synced to disk, renamed over `path`, and the directory synced, so a
/// reader (or a crash at any point) sees the old content or the new, never a part. The
/// directory is created if missing; the temporary file is removed if anything fails.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("scorefield-io-doc-{}", std::process::id()));
/// let path = dir.join("notes.txt");
/// scorefield_core::io::write_atomically(&path, b"first")?;
/// scorefield_core::io::write_atomically(&path, b"second")?;
/// assert_eq!(std::fs::read(&path)?, b"second");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut file = tempfile::Builder::new().prefix(&format!(".{name}.")).tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Syncs a directory's entries, so that a rename into it survives a crash (best effort: not
/// every platform can open a directory).
pub fn sync_dir(path: &Path) {
    if let Ok(dir) = std::fs::File::open(path) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("scorefield-io-{}", std::process::id()));
        let path = dir.join("sub").join("a.csv");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two, longer");
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the file itself remains");
        // A directory in the way: an error, and the directory is untouched.
        let blocked = dir.join("sub");
        assert!(write_atomically(&blocked, b"x").is_err());
        assert!(blocked.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
