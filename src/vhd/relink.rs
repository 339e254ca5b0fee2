//! Change parent (`vhd-util modify -p`) and the hidden flag (`vhd-util set -f hidden`),
//! byte-identical to blktap (vhd-format.md §2.1, §7).
//!
//! Safer than blktap: every locator is encoded and size-checked, and every target area
//! checked to lie where locator data may live, before the first byte is written; the
//! locator data goes first, the header last, then fsync. A parent that would close a loop
//! is refused. Only the header and locator sectors are written, so a relink costs the
//! same on any disk size.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::chain::{ancestors_best_effort, same_file, MAX_CHAIN_DEPTH};
use super::error::{EINVAL, ELOOP, ENAMETOOLONG, ENOENT};
use super::header::code;
use super::locator::{canonical, ParentLink};
use super::{OpenMode, Result, Vhd, VhdError, BAT_UNUSED};
use super::{FOOTER_SIZE, HEADER_SIZE};

/// What [`set_parent`] wrote, for logs and the `--json` output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Relinked {
    pub child: PathBuf,
    pub parent: PathBuf,
    pub parent_uuid: String,
    pub relative_path: String,
    pub slots_rewritten: usize,
    pub bytes_written: u64,
}

/// Make `parent` the parent of the differencing disk `child`. With `raw`, the parent is
/// a raw file and the parent UUID is zeroed (blktap `-m`).
pub fn set_parent(child: &Path, parent: &Path, raw: bool) -> Result<Relinked> {
    let vhd = Vhd::open(child, OpenMode::WRITE)?;
    let new_parent = if raw { NewParent::Raw } else { NewParent::Vhd };
    relink(&vhd, parent, new_parent)
}

/// What the new parent is, for [`relink`].
#[derive(Debug, Clone, Copy)]
pub enum NewParent<'a> {
    /// A raw file: the parent UUID is zeroed (blktap `-m`).
    Raw,
    /// A VHD, opened here; refused if its chain leads back to the child.
    Vhd,
    /// A VHD the caller already has open (the handle of `parent`), and whose ancestors
    /// the caller knows cannot include the child: [`super::link::link_chain`], where the
    /// list itself is the chain and its walk is checked once everything is linked.
    Open(&'a Vhd),
}

/// [`set_parent`] on a child already open for writing: the same checks, the same bytes.
pub fn relink(vhd: &Vhd, parent: &Path, new_parent: NewParent<'_>) -> Result<Relinked> {
    let child = vhd.path.as_path();
    if !vhd.is_differencing() {
        return Err(VhdError::refused(
            child,
            "would-be child is not a differencing disk",
            EINVAL,
        ));
    }
    // blktap canonicalises both paths with realpath(3) before relating them, and later
    // resolves the locator against the canonical child: so must we.
    let child_abs = canonical(child).map_err(|e| VhdError::io(child, "resolve", e))?;
    let parent_abs =
        std::fs::canonicalize(parent).and_then(|p| std::fs::metadata(&p).map(|m| (p, m)));
    let (parent_abs, meta) = parent_abs.map_err(|e| {
        let errno = if e.kind() == std::io::ErrorKind::NotFound {
            ENOENT
        } else {
            EINVAL
        };
        VhdError::refused(parent, format!("cannot stat the new parent: {e}"), errno)
    })?;
    if !(meta.is_file() || super::locator::is_block_device(&meta)) {
        return Err(VhdError::refused(
            parent,
            "the new parent is neither a regular file nor a block device",
            EINVAL,
        ));
    }
    if same_file(child, &parent_abs) {
        return Err(VhdError::refused(
            child,
            "a VHD cannot be its own parent",
            ELOOP,
        ));
    }
    let parent_uuid = match new_parent {
        NewParent::Raw => [0u8; 16],
        NewParent::Open(p) => p.footer.uuid,
        NewParent::Vhd => {
            let p = Vhd::open(&parent_abs, OpenMode::READ).map_err(|e| {
                VhdError::refused(
                    parent,
                    format!("the new parent is not a usable VHD: {e}"),
                    EINVAL,
                )
            })?;
            // blktap accepts a parent whose chain leads back to the child; `query -d`
            // then loops forever. Refuse it.
            for (anc, uuid) in ancestors_best_effort(&parent_abs, MAX_CHAIN_DEPTH) {
                if same_file(&anc, child) || uuid == vhd.footer.uuid {
                    return Err(VhdError::refused(
                        child,
                        format!(
                            "{} descends from this disk: the chain would loop",
                            parent.display()
                        ),
                        ELOOP,
                    ));
                }
            }
            p.footer.uuid
        }
    };

    // Everything is computed and checked before anything is written.
    let link = ParentLink::new(child, &child_abs, &parent_abs, parent_uuid, meta.mtime())?;
    let mut header = vhd.header().expect("differencing disk").clone();
    let forbidden = forbidden_regions(vhd);
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, loc) in header.locators.iter_mut().enumerate() {
        if !code::is_path(loc.code) {
            continue;
        }
        let data = link.locator_data(loc.code);
        let padded = data.len().div_ceil(512) * 512;
        if padded as u64 > loc.space_bytes() {
            return Err(VhdError::refused(
                child,
                format!(
                    "{}: {} bytes of {} path {:?} do not fit its {} bytes",
                    super::LOCATOR_FIELDS[i],
                    data.len(),
                    code::name(loc.code),
                    link.relative,
                    loc.space_bytes()
                ),
                ENAMETOOLONG,
            ));
        }
        let start = loc.data_offset;
        let end = start.saturating_add(padded as u64);
        if start % 512 != 0 || end > vhd.primary_at || overlaps(&forbidden, start, end) {
            return Err(VhdError::invalid(
                child,
                super::LOCATOR_FIELDS[i],
                format!("data at {start}..{end}"),
                "locator data would overwrite the footer, header, BAT, batmap or a block",
            ));
        }
        let mut buf = data.clone();
        buf.resize(padded, 0);
        loc.data_len = data.len() as u32;
        loc.data_space = padded as u32;
        loc.reserved = 0;
        writes.push((start, buf));
    }
    link.apply(&mut header);
    let header_bytes = header.encode();

    let mut written = 0u64;
    for (at, buf) in &writes {
        vhd.write_at(buf, *at, "write parent locator data")?;
        written += buf.len() as u64;
    }
    vhd.write_at(
        &header_bytes,
        vhd.footer.data_offset,
        "write the dynamic header",
    )?;
    written += HEADER_SIZE as u64;
    vhd.sync()?;
    Ok(Relinked {
        child: child.to_path_buf(),
        parent: parent_abs,
        parent_uuid: super::fmt_uuid(&parent_uuid),
        relative_path: link.relative,
        slots_rewritten: writes.len(),
        bytes_written: written,
    })
}

/// Areas locator data must never be written over: both footers, the header, the BAT,
/// the batmap, and every allocated block.
fn forbidden_regions(vhd: &Vhd) -> Vec<(u64, u64)> {
    let h = vhd.header().expect("dynamic disk");
    let mut r = vec![
        (0, FOOTER_SIZE as u64),
        (vhd.primary_at, vhd.file_size.max(vhd.primary_at + 1)),
        (
            vhd.footer.data_offset,
            vhd.footer.data_offset + HEADER_SIZE as u64,
        ),
        (h.table_offset, h.table_offset.saturating_add(h.bat_bytes())),
    ];
    if let Some(bm) = &vhd.batmap {
        r.push((bm.header_offset, bm.header_offset + 512));
        r.push((bm.offset, bm.map_end()));
    }
    let span = h.bitmap_bytes() + h.block_size as u64;
    for &e in vhd.bat.iter().filter(|&&e| e != BAT_UNUSED) {
        let at = e as u64 * 512;
        r.push((at, at.saturating_add(span)));
    }
    r
}

fn overlaps(regions: &[(u64, u64)], start: u64, end: u64) -> bool {
    regions.iter().any(|&(a, b)| start < b && a < end)
}

/// Set blktap's hidden flag (`vhd-util set -f hidden -v N`): byte 85 of the footer,
/// written at the end of data (the file is truncated behind it, as blktap does) and,
/// for dynamic and differencing disks, as the copy at offset 0.
pub fn set_hidden(path: &Path, value: u8) -> Result<()> {
    let vhd = Vhd::open(path, OpenMode::WRITE)?;
    let mut footer = vhd.footer.clone();
    footer.hidden = value;
    let bytes = footer.encode();
    let meta = vhd
        .file()
        .metadata()
        .map_err(|e| VhdError::io(path, "stat", e))?;
    if meta.is_file() {
        let end = vhd.end_of_data();
        // blktap would write the footer wherever the metadata claims data ends; a hostile
        // file could grow to terabytes that way. The footer may move back, never past
        // the end of the file.
        if end > vhd.primary_at {
            return Err(vhd.invalid(
                "end of data",
                end,
                format!(
                    "beyond the footer at {}: the file is truncated or lies",
                    vhd.primary_at
                ),
            ));
        }
        vhd.write_at(&bytes, end, "write the footer")?;
        vhd.file()
            .set_len(end + FOOTER_SIZE as u64)
            .map_err(|e| VhdError::io(path, "truncate behind the footer", e))?;
    } else {
        vhd.write_at(
            &bytes,
            vhd.file_size - FOOTER_SIZE as u64,
            "write the footer",
        )?;
    }
    if vhd.footer.is_dynamic_or_diff() {
        vhd.write_at(&bytes, 0, "write the footer copy")?;
    }
    vhd.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::create::{snapshot, Stamp};
    use crate::vhd::error::ENAMETOOLONG;
    use crate::vhd::locator::first_decoded;
    use crate::vhd::test_samples::unpack_as;

    #[test]
    fn a_parent_name_too_long_for_blktaps_locators_is_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let child = unpack_as(d.path(), "child.vhd", "child.vhd");
        // "./" and 254 characters: the UTF-16 copy would just fill a 512-byte slot, but
        // blktap's snapshot refuses relative paths over 254, and so do both our writers.
        let long = format!("{}.vhd", "x".repeat(250));
        unpack_as(d.path(), "parent2.vhd", &long);
        let before = std::fs::read(&child).unwrap();
        let e = set_parent(&child, &d.path().join(&long), false).unwrap_err();
        assert_eq!(e.errno(), ENAMETOOLONG, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}: ", child.display())), "{msg}");
        assert!(
            msg.contains("parent path too long for blktap's locators"),
            "{msg}"
        );
        assert!(
            std::fs::read(&child).unwrap() == before,
            "child.vhd was written"
        );
        // Two characters fewer fit.
        let fits = format!("{}.vhd", "y".repeat(248));
        unpack_as(d.path(), "parent2.vhd", &fits);
        let r = set_parent(&child, &d.path().join(&fits), false).unwrap();
        assert_eq!(r.relative_path.len(), 254);
    }

    #[test]
    fn snapshot_and_set_parent_write_the_same_link() {
        let d = tempfile::tempdir().unwrap();
        let parent = unpack_as(d.path(), "parent2.vhd", "parent2.vhd");
        let child = unpack_as(d.path(), "empty-child.vhd", "relinked.vhd");
        set_parent(&child, &parent, false).unwrap();
        let snap = d.path().join("snap.vhd");
        snapshot(&parent, &snap, true, &Stamp::default()).unwrap();
        let (a, b) = (
            Vhd::open(&child, OpenMode::READ).unwrap(),
            Vhd::open(&snap, OpenMode::READ).unwrap(),
        );
        let (ha, hb) = (a.header().unwrap(), b.header().unwrap());
        assert_eq!(ha.parent_uuid, hb.parent_uuid);
        assert_eq!(ha.parent_timestamp, hb.parent_timestamp);
        assert_eq!(ha.parent_name, hb.parent_name);
        for slot in 0..3 {
            let (la, lb) = (ha.locators[slot], hb.locators[slot]);
            assert_eq!(
                (la.code, la.data_len),
                (lb.code, lb.data_len),
                "slot {slot}"
            );
        }
        assert_eq!(first_decoded(&a).unwrap().as_deref(), Some("./parent2.vhd"));
        assert_eq!(first_decoded(&b).unwrap().as_deref(), Some("./parent2.vhd"));
    }
}
