//! A list of files made into one validated chain: what an image import does with the
//! VHDs it unpacked (DESIGN §5), before any of them may reach the SR.
//!
//! The image names no parents that can be trusted (its locators point into the
//! uploader's directories), so the list order is the chain: leaf first, base last. Four
//! steps, each opening every file once:
//!
//! 1. **roles**, before anything is written: at most [`MAX_IMAGE_CHAIN`] files, each a
//!    VHD, the base not differencing (a base that claims a parent could reach another
//!    VDI in the SR), every other file differencing, and each child's recorded parent
//!    UUID the next file's own UUID (DESIGN §5 step 4: relinking overwrites that UUID,
//!    so a child made on another base would otherwise read through a foreign parent —
//!    a valid chain with different content);
//! 2. **relink** each file to the next, exactly as [`relink::set_parent`] does (the
//!    bytes of `vhd-util modify -p`), through the handles opened in step 1;
//! 3. **check** every file as `vhd-util check` does (timestamps aside), still through
//!    those handles;
//! 4. **chain**: the leaf's chain, found through the new locators, has every file, and
//!    the leaf is not hidden.
//!
//! A failure names the file by its index in the list and keeps its kind: a disk error
//! while relinking is an I/O error, not a broken image.

use std::fmt;
use std::path::PathBuf;

use super::chain::Chain;
use super::check::{check_open, CheckOptions};
use super::relink::{self, NewParent};
use super::{DiskType, OpenMode, Vhd, VhdError};
use crate::error::{ErrorKind, Kind};

/// The most files an image may hold (the old plugins' limit; the bundle reader stops at
/// the same number before unpacking more).
pub const MAX_IMAGE_CHAIN: usize = 16;

/// Why a list of files could not be linked: the file (`index` in the list, 0 the leaf)
/// and the cause, whose kind is the error's kind.
#[derive(Debug)]
pub struct LinkError {
    pub index: usize,
    pub source: LinkCause,
}

/// What went wrong with one file of the list. Every variant but `Vhd` is a rule the
/// image breaks; `Vhd` keeps the VHD error as it came (I/O, invalid file, missing
/// parent).
#[derive(Debug, thiserror::Error)]
pub enum LinkCause {
    #[error("no files to link")]
    Empty,
    #[error("chain of {count} files; at most {MAX_IMAGE_CHAIN}")]
    TooMany { count: usize },
    #[error("the base of the image is a differencing disk (it claims a parent)")]
    BaseHasParent,
    #[error("is a {} disk but has a parent in the image", disk_type.name())]
    NotDifferencing { disk_type: DiskType },
    /// The child was made on another disk than the next file (index + 1) of the list.
    #[error(
        "records parent UUID {recorded}, but the next file in the image, {next}, has UUID \
         {found}: a child is never grafted onto a parent it was not made from"
    )]
    ForeignParent {
        recorded: uuid::Uuid,
        next: String,
        found: uuid::Uuid,
    },
    /// The first rule `vhd-util check` finds broken.
    #[error("{problem}")]
    Check { problem: String },
    #[error("chain has {found} files after relinking, the image {files}")]
    ChainLength { found: usize, files: usize },
    #[error("the leaf is hidden: the SR garbage collector would delete it")]
    HiddenLeaf,
    #[error(transparent)]
    Vhd(#[from] VhdError),
}

impl LinkError {
    fn new(index: usize, source: impl Into<LinkCause>) -> LinkError {
        LinkError {
            index,
            source: source.into(),
        }
    }

    fn at<E: Into<LinkCause>>(index: usize) -> impl Fn(E) -> LinkError {
        move |e| LinkError::new(index, e)
    }
}

// By hand rather than `thiserror`'s `transparent`: the cause is the message (the caller
// adds the file's label from `index`), and its own source comes next in the chain, so
// an error-chain printer never repeats it.
impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.source)
    }
}

impl Kind for LinkCause {
    fn kind(&self) -> ErrorKind {
        match self {
            LinkCause::Vhd(e) => e.kind(),
            _ => ErrorKind::InvalidInput,
        }
    }
}

impl Kind for LinkError {
    fn kind(&self) -> ErrorKind {
        self.source.kind()
    }
}

/// Link `files` (leaf first, base last) into one chain, validate every file and the
/// chain, and return the chain, opened read-only from the leaf.
///
/// Nothing is written before every file has passed the roles step. Once relinking
/// starts, an error leaves the files partly relinked: the caller throws them away (the
/// import's staging directory).
pub fn link_chain(files: &[PathBuf]) -> Result<Chain, LinkError> {
    let Some(base) = files.len().checked_sub(1) else {
        return Err(LinkError::new(0, LinkCause::Empty));
    };
    if files.len() > MAX_IMAGE_CHAIN {
        return Err(LinkError::new(0, LinkCause::TooMany { count: files.len() }));
    }

    // 1. Roles. The children are opened for writing now so that step 2 writes through
    // these handles; the base is never written.
    let mut vhds = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let mode = if i == base {
            OpenMode::READ
        } else {
            OpenMode::WRITE
        };
        let v = Vhd::open(f, mode).map_err(LinkError::at(i))?;
        if i == base && v.is_differencing() {
            return Err(LinkError::new(i, LinkCause::BaseHasParent));
        }
        if i != base && !v.is_differencing() {
            return Err(LinkError::new(
                i,
                LinkCause::NotDifferencing {
                    disk_type: v.disk_type(),
                },
            ));
        }
        vhds.push(v);
    }
    // Every file is open: now each child against the next file. Step 2 overwrites the
    // recorded parent UUID, so this is the last moment a graft can be seen.
    for i in 0..base {
        let recorded = vhds[i].header().expect("differencing disk").parent_uuid;
        let found = vhds[i + 1].footer.uuid;
        if recorded != found {
            return Err(LinkError::new(
                i,
                LinkCause::ForeignParent {
                    recorded: uuid::Uuid::from_bytes(recorded),
                    next: file_label(&files[i + 1]),
                    found: uuid::Uuid::from_bytes(found),
                },
            ));
        }
    }

    // 2. Relink, leaf first. The parent's ancestors need no loop walk here: the list is
    // the chain, every file in it distinct and the base without parent, and step 4
    // walks the result (refusing loops) once every link is written.
    for i in 0..base {
        crate::testhooks::pause("relink", i);
        crate::testhooks::fail("relink", i).map_err(|e| {
            LinkError::new(i, VhdError::io(&files[i], "write parent locator data", e))
        })?;
        relink::relink(&vhds[i], &files[i + 1], NewParent::Open(&vhds[i + 1]))
            .map_err(LinkError::at(i))?;
    }

    // 3. Check what is now on disk, through the same handles. A locator that leads to
    // the next file is compared with that file's open handle.
    let opts = CheckOptions {
        parents: false,
        // A clock-skewed creator should not make an image unusable.
        ignore_timestamps: true,
    };
    for (i, (f, v)) in files.iter().zip(&vhds).enumerate() {
        if let Some(problem) =
            check_open(f, v.file(), opts, vhds.get(i + 1)).map_err(LinkError::at(i))?
        {
            return Err(LinkError::new(i, LinkCause::Check { problem }));
        }
    }
    drop(vhds);

    // 4. The chain as a reader will find it: through the locators just written.
    let chain = Chain::open(&files[0]).map_err(LinkError::at(0))?;
    if chain.layers.len() != files.len() {
        return Err(LinkError::new(
            0,
            LinkCause::ChainLength {
                found: chain.layers.len(),
                files: files.len(),
            },
        ));
    }
    if chain.leaf().footer.hidden != 0 {
        // The SR garbage collector deletes a hidden VHD that has no children.
        return Err(LinkError::new(0, LinkCause::HiddenLeaf));
    }
    Ok(chain)
}

/// A file of the list as an error names it: its file name (the list is one directory).
fn file_label(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Mutex, MutexGuard};

    use super::*;
    use crate::vhd::test_samples::unpack_as;

    /// `GLANCE_VHD_TEST_FAIL` is process-wide: the tests that link take turns.
    fn turn() -> MutexGuard<'static, ()> {
        static TURN: Mutex<()> = Mutex::new(());
        TURN.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    fn refused(files: &[PathBuf]) -> LinkError {
        let before: Vec<_> = files.iter().map(|f| std::fs::read(f).ok()).collect();
        let e = link_chain(files).expect_err("linked");
        let after: Vec<_> = files.iter().map(|f| std::fs::read(f).ok()).collect();
        assert!(before == after, "a refused list was written to: {e}");
        e
    }

    /// Make `child` record `parent`'s UUID as its parent (header checksum fixed), as if
    /// it had been made on it.
    fn record_parent(child: &Path, parent: &Path) {
        let p = Vhd::open(parent, OpenMode::READ).unwrap();
        let c = Vhd::open(child, OpenMode::READ).unwrap();
        let mut h = c.header().unwrap().clone();
        let at = c.footer.data_offset as usize;
        drop(c);
        h.parent_uuid = p.footer.uuid;
        let mut b = bytes(child);
        b[at..at + crate::vhd::HEADER_SIZE].copy_from_slice(&h.encode());
        std::fs::write(child, b).unwrap();
    }

    #[test]
    fn relinks_byte_for_byte_as_vhd_util_modify() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let child = unpack_as(d.path(), "child.vhd", "child.vhd");
        let parent = unpack_as(d.path(), "parent2.vhd", "parent2.vhd");
        // child-relinked.vhd is `vhd-util modify -p parent2.vhd` of child.vhd, which was
        // made on parent.vhd: linked as it is, that is a graft (refused below). Modify
        // overwrites the recorded parent UUID, so a child that records parent2's UUID
        // (and still points at parent.vhd) must come out as exactly the same bytes.
        record_parent(&child, &parent);
        let want = bytes(&unpack_as(d.path(), "child-relinked.vhd", "want.vhd"));
        let chain = link_chain(&[child.clone(), parent.clone()]).unwrap();
        assert_eq!(chain.layers.len(), 2);
        assert!(bytes(&child) == want, "not the bytes of vhd-util modify -p");
        assert_eq!(
            bytes(&parent),
            bytes(&unpack_as(d.path(), "parent2.vhd", "p.vhd"))
        );
    }

    #[test]
    fn links_three_renamed_files_into_one_chain() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let files = vec![
            unpack_as(d.path(), "grandchild.vhd", "a.vhd"),
            unpack_as(d.path(), "child.vhd", "b.vhd"),
            unpack_as(d.path(), "parent.vhd", "c.vhd"),
        ];
        let chain = link_chain(&files).unwrap();
        let found: Vec<_> = chain
            .layers
            .iter()
            .map(|l| l.path().to_path_buf())
            .collect();
        let want: Vec<_> = files.iter().map(|f| f.canonicalize().unwrap()).collect();
        assert_eq!(found[0], files[0]);
        assert_eq!(found[1..], want[1..]);
        let h = chain.leaf().header().unwrap();
        assert_eq!(h.parent_name_ascii().as_deref(), Some("b.vhd"));
    }

    #[test]
    fn a_child_made_on_another_parent_is_refused_before_writing() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        // child.vhd was made on parent.vhd; parent2.vhd is another disk.
        let files = [
            unpack_as(d.path(), "child.vhd", "0.vhd"),
            unpack_as(d.path(), "parent2.vhd", "1.vhd"),
        ];
        let e = refused(&files);
        assert_eq!(e.index, 0);
        assert_eq!(
            e.to_string(),
            "records parent UUID 7c9fe95e-7c58-43ac-a789-6e5c8fdcc6d4, but the next file in \
             the image, 1.vhd, has UUID 3ff96db3-f02c-434c-bd62-7702b5542fd3: a child is never \
             grafted onto a parent it was not made from"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        // The middle of a chain too: grandchild → parent skips child.
        let files = [
            unpack_as(d.path(), "grandchild.vhd", "a.vhd"),
            unpack_as(d.path(), "empty-child.vhd", "b.vhd"),
            unpack_as(d.path(), "parent.vhd", "c.vhd"),
        ];
        let e = refused(&files);
        assert_eq!(e.index, 0);
        assert!(e.to_string().contains("b.vhd, has UUID b1b42d11"), "{e}");
    }

    #[test]
    fn at_most_sixteen_files_and_at_least_one() {
        let files: Vec<PathBuf> = (0..17)
            .map(|i| PathBuf::from(format!("/nonexistent/{i}.vhd")))
            .collect();
        let e = link_chain(&files).unwrap_err();
        assert_eq!(
            (e.index, e.to_string().as_str()),
            (0, "chain of 17 files; at most 16")
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = link_chain(&[]).unwrap_err();
        assert!(matches!(e.source, LinkCause::Empty), "{e}");
    }

    #[test]
    fn a_base_that_claims_a_parent_is_refused_before_writing() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let files = [
            unpack_as(d.path(), "grandchild.vhd", "0.vhd"),
            unpack_as(d.path(), "child.vhd", "1.vhd"),
        ];
        let e = refused(&files);
        assert_eq!(e.index, 1);
        assert_eq!(
            e.to_string(),
            "the base of the image is a differencing disk (it claims a parent)"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn a_dynamic_disk_with_a_parent_is_refused_before_writing() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let files = [
            unpack_as(d.path(), "child.vhd", "0.vhd"),
            unpack_as(d.path(), "parent2.vhd", "1.vhd"),
            unpack_as(d.path(), "parent.vhd", "2.vhd"),
        ];
        let e = refused(&files);
        assert_eq!(e.index, 1);
        assert_eq!(
            e.to_string(),
            "is a dynamic disk but has a parent in the image"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn a_file_that_is_no_vhd_is_refused_before_writing() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.vhd");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        let files = [unpack_as(d.path(), "child.vhd", "0.vhd"), junk];
        let e = refused(&files);
        assert_eq!(e.index, 1);
        assert!(
            matches!(e.source, LinkCause::Vhd(VhdError::Invalid { .. })),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn a_rule_check_finds_broken_is_invalid_input() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let child = unpack_as(d.path(), "child.vhd", "0.vhd");
        // The footer copy at offset 0, which opening does not read but check does:
        // one timestamp byte changed, so its checksum no longer matches.
        let mut b = bytes(&child);
        b[off_timestamp()] ^= 1;
        std::fs::write(&child, b).unwrap();
        let files = [child, unpack_as(d.path(), "parent.vhd", "1.vhd")];
        let e = link_chain(&files).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(matches!(e.source, LinkCause::Check { .. }), "{e}");
        assert!(e.to_string().starts_with("backup footer invalid: "), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    fn off_timestamp() -> usize {
        crate::vhd::footer::off::TIMESTAMP
    }

    #[test]
    fn a_hidden_leaf_is_refused() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let files = [
            unpack_as(d.path(), "child-hidden.vhd", "0.vhd"),
            unpack_as(d.path(), "parent.vhd", "1.vhd"),
        ];
        let e = link_chain(&files).unwrap_err();
        assert_eq!(e.index, 0);
        assert_eq!(
            e.to_string(),
            "the leaf is hidden: the SR garbage collector would delete it"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn an_eio_while_relinking_is_an_io_error() {
        let _t = turn();
        let d = tempfile::tempdir().unwrap();
        let files = [
            unpack_as(d.path(), "grandchild.vhd", "0.vhd"),
            unpack_as(d.path(), "child.vhd", "1.vhd"),
            unpack_as(d.path(), "parent.vhd", "2.vhd"),
        ];
        let before: Vec<_> = files.iter().map(|f| bytes(f)).collect();
        std::env::set_var(crate::testhooks::FAIL, "relink:1");
        let e = link_chain(&files).unwrap_err();
        std::env::remove_var(crate::testhooks::FAIL);
        assert_eq!(e.index, 1);
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        let LinkCause::Vhd(VhdError::Io { source, .. }) = &e.source else {
            panic!("not an I/O error: {e:?}");
        };
        assert_eq!(source.raw_os_error(), Some(nix::libc::EIO));
        // Its cause follows it in the error chain, once.
        let cause = std::error::Error::source(&e).expect("a source").to_string();
        assert!(cause.contains("os error 5"), "{cause}");
        assert!(!e.to_string().contains(&cause), "{e}");
        // File 0 was relinked before the failure; 1 and 2 were not touched.
        assert!(bytes(&files[0]) != before[0]);
        assert!(bytes(&files[1]) == before[1] && bytes(&files[2]) == before[2]);
    }
}
