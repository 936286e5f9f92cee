//! Bounded reads of the files audsync is given (`.env`, the config file, `*_FILE` secrets):
//! regular files only, never more than a cap, so a FIFO, a device or an endless file fails
//! fast with a clear error instead of hanging or eating memory.
//!
//! Errors name the path, never the content.

use std::io::Read;
use std::path::Path;

/// The largest `.env` or config file read.
pub const MAX_TEXT: u64 = 4 * 1024 * 1024;
/// The largest secret file (`*_FILE`) read.
pub const MAX_SECRET: u64 = 64 * 1024;

/// The file's text; `None` when it does not exist.
pub fn read_text(path: &Path) -> Result<Option<String>, String> {
    match read_bounded(path, MAX_TEXT) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| format!("{}: not UTF-8 text", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A secret file's text (a missing file is an error).
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let b = read_bounded(path, MAX_SECRET).map_err(|e| format!("cannot read the file: {e}"))?;
    String::from_utf8(b).map_err(|_| "the file is not UTF-8 text".to_string())
}

/// Read a regular file (following symlinks), at most `cap` bytes.
pub fn read_bounded(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device, FIFO or socket); point it at a regular file",
        ));
    }
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(meta.len().min(cap) as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {} KiB audsync reads", cap / 1024),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_regular_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_text(dir.path())
                .unwrap_err()
                .contains("not a regular file")
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
        assert!(read_secret_file(&big).unwrap_err().contains("64 KiB"));
        assert_eq!(read_text(&dir.path().join("missing")).unwrap(), None);
    }
}
