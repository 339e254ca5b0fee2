//! The storage manager's SR lock: `SR.scan` takes an fcntl write lock on
//! `/var/lock/sm/<sr-uuid>/sr` (sm `lock.py`), so holding it while we move a chain in
//! means no scan ever sees half a chain.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use super::{io_err, Result, SrError};

/// Held until dropped (closing the file releases the fcntl lock).
#[derive(Debug)]
pub struct SrLock {
    _file: File,
    pub path: PathBuf,
}

impl SrLock {
    /// Block until the lock for the SR at `sr_path` is ours. The SR UUID is the last
    /// component of the SR path (`/var/run/sr-mount/<sr-uuid>`).
    pub fn acquire(lock_dir: &Path, sr_path: &Path) -> Result<SrLock> {
        let sr_uuid = std::fs::canonicalize(sr_path)
            .map_err(io_err(sr_path, "resolve the SR path"))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| SrError::Args(format!("{} has no SR uuid", sr_path.display())))?;
        let dir = lock_dir.join(&sr_uuid);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create the lock directory"))?;
        let path = dir.join("sr");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open the SR lock"))?;
        // The whole file, for writing: what sm's WriteLock takes.
        let fl = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            match fcntl(&file, FcntlArg::F_SETLKW(&fl)) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(SrError::Io {
                        path,
                        op: "lock the SR",
                        source: e.into(),
                    })
                }
            }
        }
        Ok(SrLock { _file: file, path })
    }
}
