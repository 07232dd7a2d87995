//! Reading the files a model comes in, when they may be hostile: only regular files (a FIFO
//! or a device would block or never end; `stat` never blocks, so it is checked first), and
//! small files (JSON, tokenizers) read up to a cap instead of to whatever end there is.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The most bytes of a config.json, tokenizer_config.json or index file.
pub const JSON_CAP: u64 = 64 << 20;
/// The most bytes of a tokenizer.model or tokenizer.json.
pub const TOKENIZER_CAP: u64 = 256 << 20;

/// `path`, opened, if it is a regular file.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::load(
            path,
            "is not a regular file (a FIFO, a device or a folder); give a model file",
        ));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// The bytes of the regular file `path`, at most `cap` of them (more is an error).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let mut bytes = vec![];
    open_regular(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::load(
            path,
            format!("is larger than {cap} bytes; this is not a file of that kind"),
        ));
    }
    Ok(bytes)
}

/// A read failure as `ModelLoad` (what a tokenizer file's callers expect), not `Io`.
pub fn as_load_error(e: Error) -> Error {
    match e {
        Error::Io { path, source } => Error::load(path, source.to_string()),
        e => e,
    }
}

/// `read_capped` as text.
pub fn read_text(path: &Path, cap: u64) -> Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| Error::load(path, "is not UTF-8 text"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_oversized_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("yangtuo-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("config.json");
        let _ = std::fs::remove_file(&fifo);
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            read_capped(&fifo, 10)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(
            read_capped(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        let big = dir.join("big");
        std::fs::write(&big, [b'x'; 11]).unwrap();
        assert!(
            read_capped(&big, 10)
                .unwrap_err()
                .to_string()
                .contains("larger than 10")
        );
        assert_eq!(read_capped(&big, 11).unwrap().len(), 11);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
