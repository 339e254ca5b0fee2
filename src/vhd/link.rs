//! A list of files made into one validated chain: what an image import does with the
//! VHDs it unpacked (DESIGN §5), before any of them may reach the SR.
//!
//! The image names no parents that can be trusted (its locators point into the
//! uploader's directories), so the list order is the chain: leaf first, base last. Four
//! steps, each opening every file once:
//!
//! 1. **roles**, before anything is written: at most [`MAX_IMAGE_CHAIN`] files, each a
//!    VHD, the base not differencing (a base that claims a parent could reach another
//!    VDI in the SR), every other file differencing;
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
