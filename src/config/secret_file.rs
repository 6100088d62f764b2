//! Reading a secret from a file, bounded: a key is small, so a file that is not a regular
//! file (a FIFO would block, a device could be endless) or is larger than
//! [`MAX_SECRET_FILE_BYTES`] is refused with a message saying so. A final newline (`\n` or
//! `\r\n`), which editors add, is not part of the secret.

use std::io::Read;
use std::path::Path;

/// The largest secret file read.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The secret in `path`.
///
/// # Errors
/// What is wrong with the file, as a sentence for a config or command-line error.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes",
            path.display()
        ));
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_loses_its_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "secret-of-sixteen-bytes\r\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), b"secret-of-sixteen-bytes");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let e = read_secret_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert!(read_secret_file(dir.path())
            .unwrap_err()
            .contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert!(read_secret_file(&fifo)
                .unwrap_err()
                .contains("not a regular file"));
        }
    }

    #[test]
    fn a_file_over_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'k'; 70_000]).unwrap();
        assert!(read_secret_file(&p).unwrap_err().contains("larger than"));
    }
}
