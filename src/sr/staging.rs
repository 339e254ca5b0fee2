//! Staging directories: `<sr>/.glance-vhd-staging-<uuid>`, mode 0700, on the SR's own
//! file system. The process that owns one holds an exclusive `flock` on it for its whole
//! life, so `sweep` can tell a live import from one left by a killed process.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Result, SrError};

/// Every staging directory starts with this; nothing else is ever swept.
pub const STAGING_PREFIX: &str = ".glance-vhd-staging-";

/// A staging directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Staging {
    pub fn create(sr: &Path) -> Result<Staging> {
        let path = sr.join(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err(&path, "create the staging directory"))?;
        let dir = File::open(&path).map_err(io_err(&path, "open the staging directory"));
        let lock = dir.and_then(|d| {
            Flock::lock(d, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| SrError::Io {
                path: path.clone(),
                op: "lock the staging directory",
                source: e.into(),
            })
        });
        match lock {
            Ok(l) => Ok(Staging { path, _lock: l }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move `files` (in staging, leaf first) into `sr` under the same names, never
    /// replacing an existing file: each is hard-linked into the SR (link(2) fails rather
    /// than overwrite, on NFS too), leaf first; if any link fails, the links already made
    /// are removed again. The staging names go with the directory on drop.
    pub fn publish(&self, files: &[PathBuf], sr: &Path) -> Result<Vec<PathBuf>> {
        let mut done: Vec<PathBuf> = Vec::new();
        for f in files {
            // VHDs in an SR are 0644, as vhd-util creates them; staging kept them private.
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err(f, "set the mode"))?;
            let name = f.file_name().expect("staging files have names");
            let to = sr.join(name);
            if let Err(e) = std::fs::hard_link(f, &to) {
                for p in &done {
                    let _ = std::fs::remove_file(p);
                }
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    SrError::Exists { path: to }
                } else {
                    SrError::Io {
                        path: to,
                        op: "move into the SR",
                        source: e,
                    }
                });
            }
            done.push(to);
        }
        if let Ok(d) = File::open(sr) {
            let _ = d.sync_all();
        }
        Ok(done)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What `sweep` did with one staging directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swept {
    pub path: PathBuf,
    pub removed: bool,
    pub reason: &'static str,
}

/// Remove staging directories under `sr` that no live process holds and that are older
/// than `older_than`. Only directories named with [`STAGING_PREFIX`] are considered;
/// symlinks never are.
pub fn sweep(sr: &Path, older_than: Duration) -> Result<Vec<Swept>> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for entry in std::fs::read_dir(sr).map_err(io_err(sr, "list the SR"))? {
        let entry = entry.map_err(io_err(sr, "list the SR"))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            out.push(Swept {
                path,
                removed: false,
                reason: "not a directory we own",
            });
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < older_than {
            out.push(Swept {
                path,
                removed: false,
                reason: "too recent",
            });
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(_held) => {
                std::fs::remove_dir_all(&path).map_err(io_err(&path, "remove"))?;
                out.push(Swept {
                    path,
                    removed: true,
                    reason: "stale",
                });
            }
            Err(_) => out.push(Swept {
                path,
                removed: false,
                reason: "in use by a live process",
            }),
        }
    }
    Ok(out)
}
