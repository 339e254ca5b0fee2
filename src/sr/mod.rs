//! The storage repository (DESIGN §5) and nothing else: staging directories inside the
//! SR, the import of a chain unpacked into one ([`Import`]), the export of a chain for
//! upload ([`export`]), the SM SR lock and our job lock, and `sweep`. This module knows
//! files and directories; it imports nothing from the image store or the tarball code —
//! [`crate::transfer`] drives both ends.
//!
//! Import: unpack into a fresh mode-0700 staging directory on the SR's own file system
//! (so renames are atomic), name each file after its UUID, relink children to parents
//! natively, validate every file and the chain, then move the chain into the SR while
//! holding the SR lock that `SR.scan` takes. Nothing reaches the SR before the whole
//! chain is valid; the staging directory is removed on every path.

mod check;
mod export;
mod lock;
mod staging;

pub use check::{check_new_vdis, check_sr_dir, parse_vdi_uuid, sr_path_of};
pub use export::{check_chain, export, ChainSpec, Exported, Member};
pub use lock::{sm_lock_dir, JobLock, SrLock};
pub use staging::{sweep, Staging, STAGING_PREFIX};

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, Kind};
use crate::vhd::{self, LinkError, VhdError};

pub use crate::vhd::MAX_IMAGE_CHAIN;

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error(transparent)]
    Vhd(#[from] VhdError),
    #[error("{file}: {rule}")]
    Chain { file: String, rule: String },
    /// The cause is the source, so `image member <name> (<uuid>.vhd): <cause>` in the
    /// printed chain.
    #[error("image member {member}")]
    Link {
        member: String,
        #[source]
        source: LinkError,
    },
    #[error("{}: cannot {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Args(String),
    #[error("{} already exists in the SR; refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{} is held by another run ({holder}); not waiting longer", path.display())]
    Locked { path: PathBuf, holder: String },
    /// A lock path another user could have planted or could replace (DESIGN §10).
    #[error("{}: {rule}; refusing to use it", path.display())]
    Unsafe { path: PathBuf, rule: String },
}

impl Kind for SrError {
    fn kind(&self) -> ErrorKind {
        match self {
            SrError::Vhd(e) => e.kind(),
            SrError::Link { source, .. } => source.kind(),
            SrError::Chain { .. } | SrError::Args(_) => ErrorKind::InvalidInput,
            SrError::Io { .. } | SrError::Exists { .. } => ErrorKind::Io,
            SrError::Locked { .. } => ErrorKind::Locked,
            // The host's set-up, not the call: retrying cannot help until an admin looks.
            SrError::Unsafe { .. } => ErrorKind::Permanent,
        }
    }
}

pub type Result<T, E = SrError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SrError {
    let path = path.to_path_buf();
    move |source| SrError::Io { path, op, source }
}

/// The imported chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    /// VDI UUIDs, leaf first.
    pub uuids: Vec<String>,
    pub files: Vec<PathBuf>,
    /// The swap VDI imported beside the chain (Diablo/Essex `download_vhd` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<String>,
    /// Bytes of VHD data.
    pub bytes: u64,
}

impl Imported {
    /// The plugin's return shape: `{'root': {'uuid': leaf}}`.
    pub fn root_uuid(&self) -> &str {
        &self.uuids[0]
    }
}

/// One import into an SR, from an empty staging directory to a published chain. The
/// caller fills [`Import::dir`] (the tarball's members); every step after that is here.
/// Dropping it before [`Import::publish`] removes the staging directory and everything
/// in it: the SR is as it was.
#[derive(Debug)]
pub struct Import {
    sr: PathBuf,
    staging: Staging,
}

impl Import {
    /// Check that `sr` is an SR directory ([`check_sr_dir`]) and create a staging
    /// directory in it.
    pub fn begin(sr: &Path) -> Result<Import> {
        check_sr_dir(sr)?;
        Ok(Import {
            sr: sr.to_path_buf(),
            staging: Staging::create(sr)?,
        })
    }

    /// Where the chain's files are to be written.
    pub fn dir(&self) -> &Path {
        self.staging.path()
    }

    /// Bytes available to us on the SR's file system.
    pub fn free_space(&self) -> Result<u64> {
        free_space(&self.sr)
    }

    /// Name each unpacked file (leaf first, under its member name) after its VDI UUID —
    /// popped from the **end** of `uuid_stack`, leaf first, as the Python plugin did;
    /// generated when `None` — and link them into a valid chain ([`vhd::link_chain`]).
    /// Returns the files under their new names, leaf first.
    ///
    /// `swap` (a `swap.vhd` that Diablo/Essex imported as a VDI of its own) takes the
    /// next UUID after the chain's, as `_import_vhds` popped it, and must be a valid VHD
    /// on its own: not differencing (a parent could reach another VDI), not hidden, every
    /// `vhd-util check` rule. It is never linked to the chain.
    pub fn link(
        &self,
        files: &[PathBuf],
        swap: Option<&Path>,
        uuid_stack: Option<&[String]>,
    ) -> Result<Named> {
        let n = files.len() + usize::from(swap.is_some());
        let mut stack: Vec<String> = match uuid_stack {
            Some(s) => s.to_vec(),
            None => (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect(),
        };
        if stack.len() < n {
            return Err(SrError::Args(format!(
                "the image holds {n} VHDs but only {} UUIDs were given",
                stack.len()
            )));
        }
        let mut uuids = Vec::with_capacity(n);
        let mut named = Vec::with_capacity(n);
        for f in files {
            let u = stack.pop().expect("length checked");
            // Checked up front too ([`check_new_vdis`]); here for callers that did not.
            let u = parse_vdi_uuid(&u)?;
            if uuids.contains(&u) {
                return Err(SrError::Args(format!("UUID {u} given twice")));
            }
            let to = self.dir().join(format!("{u}.vhd"));
            std::fs::rename(f, &to).map_err(io_err(f, "rename in staging"))?;
            uuids.push(u);
            named.push(to);
        }
        // Errors name the image member and the VDI it was to become; the cause keeps its
        // kind (a disk error while relinking is I/O, not a broken image).
        vhd::link_chain(&named).map_err(|e| SrError::Link {
            member: format!(
                "{} ({})",
                files.get(e.index).map(|f| file_name(f)).unwrap_or_default(),
                named.get(e.index).map(|f| file_name(f)).unwrap_or_default()
            ),
            source: e,
        })?;
        let swap = match swap {
            None => None,
            Some(f) => {
                let u = parse_vdi_uuid(&stack.pop().expect("length checked"))?;
                if uuids.contains(&u) {
                    return Err(SrError::Args(format!("UUID {u} given twice")));
                }
                let to = self.dir().join(format!("{u}.vhd"));
                std::fs::rename(f, &to).map_err(io_err(f, "rename in staging"))?;
                // A chain of one: the same roles, check and hidden-leaf rules, and
                // nothing is written to it (a base is opened read-only).
                vhd::link_chain(std::slice::from_ref(&to)).map_err(|e| SrError::Link {
                    member: format!(
                        "{} ({}, the swap VDI: a disk of its own)",
                        file_name(f),
                        file_name(&to)
                    ),
                    source: e,
                })?;
                Some((u, to))
            }
        };
        Ok(Named {
            uuids,
            files: named,
            swap,
        })
    }

    /// Move the linked chain into the SR under the SM SR lock (in `lock_dir`, see
    /// [`sm_lock_dir`]), base first; the staging directory goes.
    ///
    /// A swap VDI goes in the same move (one journal, one lock): it is linked first, so
    /// at every instant of the move the chain is whole or absent as before, and a
    /// roll-back removes the swap VDI too.
    pub fn publish(self, named: Named, lock_dir: &Path, bytes: u64) -> Result<Imported> {
        let _lock = SrLock::acquire(lock_dir, &self.sr)?;
        let mut all = named.files.clone();
        // `Staging::publish` links from the end of the list: the swap VDI first.
        all.extend(named.swap.iter().map(|(_, p)| p.clone()));
        let mut files = self.staging.publish(&all, &self.sr)?;
        files.truncate(named.files.len());
        Ok(Imported {
            uuids: named.uuids,
            files,
            swap: named.swap.map(|(u, _)| u),
            bytes,
        })
    }
}

/// A chain linked and validated in staging, ready to publish.
#[derive(Debug)]
pub struct Named {
    /// VDI UUIDs, leaf first.
    pub uuids: Vec<String>,
    /// `<staging>/<uuid>.vhd`, leaf first.
    pub files: Vec<PathBuf>,
    /// The swap VDI's UUID and `<staging>/<uuid>.vhd`, if one was kept.
    pub swap: Option<(String, PathBuf)>,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bytes available to us on the SR's file system.
fn free_space(sr: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(sr).map_err(|e| SrError::Io {
        path: sr.to_path_buf(),
        op: "statvfs",
        source: io::Error::from(e),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}
