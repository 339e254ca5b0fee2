//! Export (upload): check that the VDIs to send are one chain, then hard-link the
//! chain's files into a staging directory under the names the tarball uses. Nothing in
//! the SR is copied or changed, and the links keep the files alive even if the SR
//! garbage collector removes a VDI during the upload.
//!
//! The check (DESIGN §5, Export) runs on every list, given or walked, before a byte is
//! sent or an image created ([`check_chain`] lets a front end run it before it creates
//! the image): each VDI a regular `<uuid>.vhd` in the SR itself, opened without
//! following a link and without blocking on a FIFO or device; each one's recorded
//! parent UUID the next one's footer UUID; the last without a parent; no VDI, file or
//! footer UUID twice (a loop needs one of those). A list that is not a chain would
//! upload as an image that downloads as a *valid* chain with other content.
//!
//! What was checked is kept for the stream: each member's open file, size and footer
//! bytes, which [`crate::bundle::pack`] must find unchanged as it reads them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{io_err, Result, SrError, Staging};
use crate::vhd::{chain::Chain, read_exact_at, OpenMode, Vhd, VhdError};

/// Which VDIs to upload.
#[derive(Debug, Clone)]
pub enum ChainSpec {
    /// VDI UUIDs, leaf first (Folsom and later): `0.vhd` … `n-1.vhd`.
    Vdis(Vec<String>),
    /// Only the leaf: the chain is walked through the parent locators.
    Leaf(String),
    /// Diablo: tar member name (`image`, `snap`, `base`) → VDI UUID, leaf first.
    Named(Vec<(String, String)>),
}

/// The staged chain, leaf first.
pub struct Exported {
    pub staging: Staging,
    pub members: Vec<Member>,
    /// VDI UUIDs, in member order.
    pub uuids: Vec<String>,
}

/// One VDI of a checked chain, as it was checked.
pub struct Member {
    /// The tar member name (`0.vhd`, `image.vhd`).
    pub name: String,
    /// Its hard link in staging.
    pub path: PathBuf,
    /// The file checked (the same inode as `path`), opened for reading.
    pub file: File,
    /// Its size when checked.
    pub size: u64,
    /// Its last bytes when checked, from the primary footer's offset to the end.
    pub tail: Vec<u8>,
}

/// A VDI opened and checked, not yet staged.
struct Checked {
    name: String,
    uuid: String,
    path: PathBuf,
    vhd: Vhd,
    file: File,
    tail: Vec<u8>,
}

fn vdi_path(sr: &Path, uuid: &str) -> Result<PathBuf> {
    let u = uuid::Uuid::parse_str(uuid)
        .map_err(|_| SrError::Args(format!("{uuid:?} is not a VDI UUID")))?;
    Ok(sr.join(format!("{u}.vhd")))
}

/// Check the VDIs `spec` names as one chain, opening nothing but them and writing
/// nothing: what [`export`] checks first, for a front end to run before it creates an
/// image. The VDI UUIDs, leaf first.
pub fn check_chain(sr: &Path, spec: &ChainSpec) -> Result<Vec<String>> {
    Ok(check(sr, spec)?.into_iter().map(|c| c.uuid).collect())
}

/// Check the chain ([`check_chain`]) and stage it.
pub fn export(sr: &Path, spec: &ChainSpec) -> Result<Exported> {
    let checked = check(sr, spec)?;
    let staging = Staging::create(sr)?;
    let mut members = Vec::with_capacity(checked.len());
    let mut uuids = Vec::with_capacity(checked.len());
    for c in checked {
        let to = staging.path().join(&c.name);
        std::fs::hard_link(&c.path, &to).map_err(io_err(&c.path, "hard-link into staging"))?;
        // The name may have been replaced since it was opened: the link must be the
        // file that was checked.
        let linked = std::fs::symlink_metadata(&to).map_err(io_err(&to, "stat"))?;
        let opened = c.file.metadata().map_err(io_err(&c.path, "stat"))?;
        if (linked.dev(), linked.ino()) != (opened.dev(), opened.ino()) {
            return Err(SrError::Chain {
                file: c.path.display().to_string(),
                rule: "was replaced while the chain was being checked".into(),
            });
        }
        members.push(Member {
            name: c.name,
            path: to,
            file: c.file,
            size: c.vhd.file_size,
            tail: c.tail,
        });
        uuids.push(c.uuid);
    }
    Ok(Exported {
        staging,
        members,
        uuids,
    })
}

fn check(sr: &Path, spec: &ChainSpec) -> Result<Vec<Checked>> {
    let (names, uuids): (Vec<String>, Vec<String>) = match spec {
        ChainSpec::Vdis(v) => (
            (0..v.len()).map(|i| format!("{i}.vhd")).collect(),
            v.clone(),
        ),
        ChainSpec::Named(v) => v
            .iter()
            .map(|(n, u)| (format!("{n}.vhd"), u.clone()))
            .unzip(),
        ChainSpec::Leaf(leaf) => {
            let chain = walk(sr, leaf)?;
            (
                (0..chain.len()).map(|i| format!("{i}.vhd")).collect(),
                chain,
            )
        }
    };
    if uuids.is_empty() || uuids.len() > super::MAX_IMAGE_CHAIN {
        return Err(SrError::Args(format!(
            "{} VDIs to upload; from 1 to {} are possible",
            uuids.len(),
            super::MAX_IMAGE_CHAIN
        )));
    }
    // Names first (no file opened for a list that names a VDI twice).
    let mut paths = Vec::with_capacity(uuids.len());
    for u in &uuids {
        let p = vdi_path(sr, u)?;
        if paths.contains(&p) {
            return Err(chain_err(&p, "is given twice: a chain holds each VDI once"));
        }
        paths.push(p);
    }
    let mut checked: Vec<Checked> = Vec::with_capacity(paths.len());
    let mut inodes = HashSet::new();
    let mut footers = HashSet::new();
    for (name, path) in names.into_iter().zip(paths) {
        let (file, vhd) = open_member(&path)?;
        let meta = file.metadata().map_err(io_err(&path, "stat"))?;
        if !inodes.insert((meta.dev(), meta.ino())) {
            return Err(chain_err(
                &path,
                "is the same file as another VDI of the list (a hard link): a chain holds each file once",
            ));
        }
        if !footers.insert(vhd.footer.uuid) {
            return Err(chain_err(
                &path,
                format!(
                    "has VHD UUID {}, as another VDI of the list: a chain holds each disk once",
                    vhd.uuid()
                ),
            ));
        }
        // The primary footer's bytes, which the stream must end with.
        let len = vhd.file_size - vhd.primary_at;
        let mut tail = vec![0u8; len as usize];
        read_exact_at(&file, &path, &mut tail, vhd.primary_at, "read the footer")?;
        let uuid = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        checked.push(Checked {
            name,
            uuid,
            path,
            vhd,
            file,
            tail,
        });
    }
    for (i, c) in checked.iter().enumerate() {
        match (c.vhd.header().filter(|_| c.vhd.is_differencing()), checked.get(i + 1)) {
            (None, None) => {}
            (Some(h), Some(next)) if h.parent_uuid == next.vhd.footer.uuid => {}
            (Some(h), Some(next)) => {
                return Err(chain_err(
                    &c.path,
                    format!(
                        "records parent UUID {}, but the next VDI of the list, {}, has VHD UUID {}: the list is not a chain (leaf first, each VDI's parent next)",
                        uuid::Uuid::from_bytes(h.parent_uuid),
                        next.path.display(),
                        next.vhd.uuid()
                    ),
                ))
            }
            (Some(h), None) => {
                return Err(chain_err(
                    &c.path,
                    format!(
                        "is the last VDI of the list but a differencing disk (its parent has VHD UUID {}): the list must end with the base",
                        uuid::Uuid::from_bytes(h.parent_uuid)
                    ),
                ))
            }
            (None, Some(next)) => {
                return Err(chain_err(
                    &c.path,
                    format!(
                        "is a {} disk (no parent), but the list goes on with {}: the base must be last",
                        c.vhd.disk_type().name(),
                        next.path.display()
                    ),
                ))
            }
        }
    }
    Ok(checked)
}

fn chain_err(path: &Path, rule: impl Into<String>) -> SrError {
    SrError::Chain {
        file: path.display().to_string(),
        rule: rule.into(),
    }
}

/// Open one VDI of the list: not through a symbolic link (which could lead out of the
/// SR), without blocking (opening a FIFO for reading waits for a writer; a device may
/// wait too), and only a regular file. `O_NONBLOCK` changes nothing for reads of a
/// regular file.
fn open_member(path: &Path) -> Result<(File, Vhd)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                chain_err(
                    path,
                    "is a symbolic link: VDIs are read only as regular files of the SR, never through a link",
                )
            } else {
                SrError::Vhd(VhdError::io(path, "open", e))
            }
        })?;
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(chain_err(
            path,
            format!("is {what}: a VDI of a file SR is a regular file"),
        ));
    }
    let handle = file
        .try_clone()
        .map_err(io_err(path, "duplicate the handle"))?;
    let vhd = Vhd::from_file(path, handle, meta.len(), OpenMode::READ)?;
    Ok((file, vhd))
}

/// The chain of `leaf`, leaf first, as VDI UUIDs. Every file must be `<uuid>.vhd` in
/// the SR directory itself: a chain that leaves the SR is refused.
fn walk(sr: &Path, leaf: &str) -> Result<Vec<String>> {
    let sr_canon = std::fs::canonicalize(sr).map_err(io_err(sr, "resolve the SR path"))?;
    // The leaf as every listed VDI: no link, no FIFO (the parents are then found
    // through its locators, inside the SR or refused below).
    let (_, leaf_vhd) = open_member(&vdi_path(sr, leaf)?)?;
    let chain = Chain::open_with(leaf_vhd)?;
    let mut uuids = Vec::new();
    for layer in &chain.layers {
        let p = std::fs::canonicalize(layer.path()).map_err(io_err(layer.path(), "resolve"))?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let in_sr = p.parent() == Some(sr_canon.as_path())
            && p.extension().is_some_and(|e| e == "vhd")
            && uuid::Uuid::parse_str(&stem).is_ok();
        if !in_sr {
            return Err(SrError::Chain {
                file: layer.path().display().to_string(),
                rule: format!(
                    "is in the chain of {leaf} but is not a <uuid>.vhd in the SR {}",
                    sr.display()
                ),
            });
        }
        uuids.push(stem);
    }
    Ok(uuids)
}
