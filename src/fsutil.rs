//! File-system steps more than one module needs, done one way.
//!
//! [`write_atomically`]: a reader of the path sees the old file or the whole new one, and
//! after a crash the new one is there or the old one is: the bytes go to a fresh
//! temporary name beside the file (`O_CREAT|O_EXCL`, so nothing another user planted
//! under that name is followed or written through, DESIGN §10), are fsynced, renamed
//! over the path, and the directory is fsynced so the rename itself survives a crash
//! (without it ext4 and XFS may come back with the old name or none).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::libc;

/// Open `path` with `O_NONBLOCK` (and `O_CLOEXEC`, and `flags` such as `O_NOFOLLOW`), then
/// clear `O_NONBLOCK`: a FIFO or device planted under the name cannot hang open(2), and
/// the caller refuses anything that is not a regular file after an `fstat`. The open's
/// own error is returned as is, for the caller to name.
pub fn open_nonblocking(path: &Path, write: bool, flags: i32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | flags)
        .open(path)?;
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok(file)
}

/// The step of [`write_atomically`] that failed, on which path. The wording of the
/// steps is what the kernel calls have always reported.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {step}", path.display())]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// For callers whose fill step is plain `io`: the kind is kept, the message names the
/// step and the path.
impl From<AtomicWriteError> for io::Error {
    fn from(e: AtomicWriteError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// Write `path` as `fill` writes its file, atomically (see the module docs). The file
/// is created with `mode` (less the umask); on any error the temporary file is removed
/// and `path` is as it was, unless the error is the directory's fsync, which comes after
/// the rename.
pub fn write_atomically<E: From<AtomicWriteError>>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    // `Path::new("x").parent()` is `Some("")`: the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name, so directory listings and globs pass it by; unique, so two writers of
    // the same path never share one.
    let tmp = dir.join(format!(".{name}.{}.partial", uuid::Uuid::new_v4()));
    let err = |path: &Path, step| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { path, step, source }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err(&tmp, "create"))?;
    let written = fill(&mut f)
        .and_then(|()| Ok(f.sync_all().map_err(err(&tmp, "fsync"))?))
        .and_then(|()| Ok(std::fs::rename(&tmp, path).map_err(err(path, "rename into place"))?));
    drop(f);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename is an entry in the directory: durable only once the directory is.
    // O_DIRECTORY: the parent is opened as the directory it must be, never as a file.
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(err(dir, "open the directory"))?;
    d.sync_all().map_err(err(dir, "fsync the directory"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kernel");
        std::fs::write(&p, b"old").unwrap();
        write_atomically::<io::Error>(&p, 0o600, |f| f.write_all(b"new contents")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        assert_eq!(names(d.path()), ["kernel"]);
        // The new file's mode, not the old one's (the umask may only take bits away).
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "{mode:o}");
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kernel");
        std::fs::write(&p, b"old").unwrap();
        let e = write_atomically(&p, 0o644, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("device gone"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "device gone");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(d.path()), ["kernel"]);
    }

    #[test]
    fn failed_steps_name_the_step_and_the_path() {
        let d = tempfile::tempdir().unwrap();
        // The target is a directory that is not empty: the rename fails, after the fill.
        let p = d.path().join("busy");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"").unwrap();
        let e = write_atomically::<AtomicWriteError>(&p, 0o644, |_| Ok(())).unwrap_err();
        assert_eq!(e.step, "rename into place");
        assert_eq!(e.path, p);
        assert_eq!(names(d.path()), ["busy"]);
        // No such directory: the temporary file cannot be created.
        let p = d.path().join("missing/kernel");
        let e = write_atomically::<io::Error>(&p, 0o644, |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("cannot create"), "{e}");
    }
}
