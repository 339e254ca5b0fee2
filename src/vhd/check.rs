//! `vhd-util check` (vhd-format.md §9): the first rule a file breaks, or none.
//!
//! Rules, order and wording follow blktap's `vhd-util-check.c` (footer, backup footer,
//! raw header, differencing header, BAT, batmap, parent locators); the numbers involved
//! are appended so an admin sees what is wrong. With `parents`, every ancestor is checked
//! too, plus what blktap misses: a loop in the chain, a parent whose UUID is not the one
//! the child names, a parent larger than its child, chains deeper than the cap.
//!
//! Deliberate differences: a fixed disk that passes prints "is valid" (blktap prints
//! nothing), and every used BAT entry is checked (blktap skips the last one of a size
//! that is not a multiple of 2 MiB).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::batmap;
use super::chain::{Chain, Layer};
use super::footer::{self, Footer, Geometry, FOOTER_SIZE, TAP_CURRENT_VERSION};
use super::header::{self, code, Header, HEADER_SIZE};
use super::locator::{read_slot, resolve};
use super::{OpenMode, Result, Vhd, VhdError, BAT_UNUSED};

/// Options of `check`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Check every ancestor too (`-p`), and the chain as a whole.
    pub parents: bool,
    /// Do not reject timestamps in the future (`-t`).
    pub ignore_timestamps: bool,
}

/// Seconds of clock skew blktap tolerates for "in the future".
const FUTURE_SLACK: u32 = 1800;

/// The first broken rule of `path`, or `None` when it is valid. Errors only when the
/// file cannot be read at all.
pub fn check(path: &Path, opts: CheckOptions) -> Result<Option<String>> {
    if let Some(p) = check_path(path, opts)? {
        return Ok(Some(p));
    }
    if !opts.parents {
        return Ok(None);
    }
    // The chain as a whole: strict parent UUIDs, no loops, bounded depth.
    let chain = match Chain::open(path) {
        Ok(c) => c,
        Err(e) => return Ok(Some(format!("error checking parents: {e}"))),
    };
    let mut child = (path.to_path_buf(), chain.virtual_size());
    for layer in &chain.layers[1..] {
        let Layer::Vhd(p) = layer else { break };
        if let Some(problem) = check_path(&p.path, opts)? {
            return Ok(Some(format!("parent {}: {problem}", p.path.display())));
        }
        if p.virtual_size() > child.1 {
            return Ok(Some(format!(
                "parent {} is larger ({} bytes) than its child {} ({} bytes)",
                p.path.display(),
                p.virtual_size(),
                child.0.display(),
                child.1
            )));
        }
        child = (p.path.clone(), p.virtual_size());
    }
    Ok(None)
}

fn check_path(path: &Path, opts: CheckOptions) -> Result<Option<String>> {
    // `check_one` calls anything but a file or a block device invalid; it must get
    // there rather than wait in open(2) on a FIFO.
    let file = super::open_without_blocking(path, false)?;
    check_one(path, file, opts, None)
}

/// [`check`] without `parents`, on a file the caller already has open (`path` names it
/// in messages). `parent`, when given, is the open parent the caller expects: a locator
/// that leads to that very file (same device and inode) is compared with its footer
/// UUID instead of opening the file again. Used by [`super::link::link_chain`], which
/// holds every file of the chain open.
pub fn check_open(
    path: &Path,
    file: &File,
    opts: CheckOptions,
    parent: Option<&Vhd>,
) -> Result<Option<String>> {
    // A second descriptor of the same open file, not a second open: `Vhd` owns its file.
    let file = file
        .try_clone()
        .map_err(|e| VhdError::io(path, "duplicate the descriptor", e))?;
    // `check_one` checks one file whatever `opts.parents` says.
    check_one(path, file, opts, parent)
}

/// The rules for one file, in blktap's order.
fn check_one(
    path: &Path,
    file: File,
    opts: CheckOptions,
    known_parent: Option<&Vhd>,
) -> Result<Option<String>> {
    let meta = file.metadata().map_err(|e| VhdError::io(path, "stat", e))?;
    if !(meta.is_file() || super::locator::is_block_device(&meta)) {
        return Ok(Some("not a regular file or block device".into()));
    }
    let size = meta.len();
    if size < FOOTER_SIZE as u64 {
        return Ok(Some(format!(
            "error reading primary footer: file is {size} bytes"
        )));
    }
    let primary_at = super::primary_footer_at(size);
    let mut raw = [0u8; FOOTER_SIZE];
    let len = (size - primary_at) as usize;
    super::read_exact_at(&file, path, &mut raw[..len], primary_at, "read the footer")?;
    let primary = Footer::decode(&raw);
    if let Some(p) = footer_problem(&primary, opts) {
        return Ok(Some(format!("primary footer invalid: {p}")));
    }
    if !primary.is_dynamic_or_diff() {
        // blktap stops here; we also refuse what our own open refuses, so that "valid"
        // always means readable.
        if primary.curr_size > primary_at {
            return Ok(Some(format!(
                "invalid current size {} for a fixed disk holding {primary_at} bytes",
                primary.curr_size
            )));
        }
        return Ok(None);
    }
    if primary_at < FOOTER_SIZE as u64 {
        return Ok(Some(format!(
            "backup footer invalid: a {size}-byte file has no room for the copy at offset 0"
        )));
    }
    let mut copy = [0u8; FOOTER_SIZE];
    super::read_exact_at(&file, path, &mut copy, 0, "read the backup footer")?;
    let backup = Footer::decode(&copy);
    if let Some(p) = footer_problem(&backup, opts) {
        return Ok(Some(format!("backup footer invalid: {p}")));
    }
    if !footer::copies_agree(&raw, &copy) {
        return Ok(Some("primary and backup footers do not match".into()));
    }
    // The raw header, before `Vhd::open` validates it its own way.
    let at = primary.data_offset;
    if at
        .checked_add(HEADER_SIZE as u64)
        .is_none_or(|e| e > primary_at)
    {
        return Ok(Some(format!(
            "header is invalid: error reading header at {at}: beyond the footer"
        )));
    }
    let mut hraw = [0u8; HEADER_SIZE];
    super::read_exact_at(&file, path, &mut hraw, at, "read the dynamic header")?;
    if let Some(p) = raw_header_problem(&Header::decode(&hraw), primary_at) {
        return Ok(Some(format!("header is invalid: {p}")));
    }
    let vhd = match Vhd::from_file(path, file, size, OpenMode::READ) {
        Ok(v) => v,
        Err(e @ VhdError::Invalid { .. }) => return Ok(Some(format!("error opening: {e}"))),
        Err(e) => return Err(e),
    };
    if let Some(p) = parent_fields_problem(&vhd, opts) {
        return Ok(Some(format!("differencing header is invalid: {p}")));
    }
    if let Some(p) = bat_problem(&vhd) {
        return Ok(Some(p));
    }
    if let Some(p) = batmap_problem(&vhd) {
        return Ok(Some(format!("batmap is invalid: {p}")));
    }
    if vhd.is_differencing() {
        return locator_problem(&vhd, known_parent);
    }
    Ok(None)
}

/// `vhd_util_check_validate_footer`, in its order.
fn footer_problem(f: &Footer, opts: CheckOptions) -> Option<String> {
    if &f.cookie != footer::COOKIE {
        // The bytes are not quoted: a file that is not a VHD is not ours to print.
        return Some("invalid cookie (not \"conectix\": not a VHD footer)".into());
    }
    if let Some(footer::FooterProblem::Checksum { computed }) = f.problem() {
        return Some(format!(
            "invalid checksum {:#010x}, computed {computed:#010x}",
            f.checksum
        ));
    }
    if f.features & footer::FEATURE_RESERVED == 0 {
        return Some(format!("invalid 'reserved' feature {:#010x}", f.features));
    }
    if f.features & !(footer::FEATURE_RESERVED | footer::FEATURE_TEMPORARY) != 0 {
        return Some(format!("invalid extra features {:#010x}", f.features));
    }
    if f.version != footer::FILE_FORMAT_VERSION {
        return Some(format!("invalid file format version {:#010x}", f.version));
    }
    if !f.is_dynamic_or_diff() && f.data_offset != footer::NO_DATA_OFFSET {
        return Some(format!("invalid data offset {:#x}", f.data_offset));
    }
    let now = super::create::now_vhd();
    if !opts.ignore_timestamps && f.timestamp > now.saturating_add(FUTURE_SLACK) {
        return Some(format!("creation time in future ({} > {now})", f.timestamp));
    }
    if f.creator_is_tap() && f.creator_version > TAP_CURRENT_VERSION {
        return Some(format!(
            "unsupported tap creator version {:#010x}",
            f.creator_version
        ));
    }
    let max = Geometry::for_size(f.curr_size);
    if f.geometry.encode() > max.encode() {
        return Some(format!(
            "geometry too large ({:#010x} > {:#010x} for {} bytes)",
            f.geometry.encode(),
            max.encode(),
            f.curr_size
        ));
    }
    if f.disk_type().is_none() {
        return Some(format!("invalid type {}", f.disk_type_raw));
    }
    if f.saved > 1 {
        return Some(format!("invalid 'saved' state {}", f.saved));
    }
    if f.hidden > 1 {
        return Some(format!("invalid 'hidden' state {}", f.hidden));
    }
    if f.reserved.iter().any(|&b| b != 0) {
        return Some("invalid 'reserved' bits".into());
    }
    if f.uuid == [0; 16] {
        return Some("invalid (NULL) uuid".into());
    }
    None
}

/// `vhd_util_check_validate_header`, in its order.
fn raw_header_problem(h: &Header, primary_at: u64) -> Option<String> {
    if h.cookie() != header::COOKIE {
        return Some("invalid cookie (not \"cxsparse\": not a VHD header)".into());
    }
    let computed = h.computed_checksum();
    if computed != h.checksum {
        return Some(format!(
            "invalid checksum {:#010x}, computed {computed:#010x}",
            h.checksum
        ));
    }
    if h.version != header::HEADER_VERSION {
        return Some(format!("invalid header version {:#010x}", h.version));
    }
    if h.data_offset != u64::MAX {
        return Some(format!("invalid data offset {:#x}", h.data_offset));
    }
    if h.table_offset == 0
        || h.table_offset % 512 != 0
        || h.table_offset
            .checked_add(h.max_bat as u64 * 4)
            .is_none_or(|e| e > primary_at)
    {
        return Some(format!(
            "invalid table offset {} for {} entries",
            h.table_offset, h.max_bat
        ));
    }
    if h.block_size.count_ones() != 1 {
        return Some(format!("invalid block size {}", h.block_size));
    }
    if !h.reserved_is_zero() {
        return Some("invalid reserved bits".into());
    }
    None
}

fn parent_fields_problem(vhd: &Vhd, opts: CheckOptions) -> Option<String> {
    let h = vhd.header()?;
    if vhd.is_differencing() {
        let now = super::create::now_vhd();
        if !opts.ignore_timestamps && h.parent_timestamp > now.saturating_add(FUTURE_SLACK) {
            return Some(format!(
                "parent creation time in future ({} > {now})",
                h.parent_timestamp
            ));
        }
        if h.parent_name_ascii().is_none() {
            return Some("invalid parent name".into());
        }
        return None;
    }
    if h.parent_name.iter().any(|&b| b != 0) {
        return Some("invalid non-null parent name".into());
    }
    if h.locators.iter().any(|l| !l.is_empty()) {
        return Some("invalid non-null parent locators".into());
    }
    if h.parent_uuid != [0; 16] {
        return Some("invalid non-null parent uuid".into());
    }
    if h.parent_timestamp != 0 {
        return Some("invalid non-zero parent timestamp".into());
    }
    None
}

/// `vhd_util_check_bat`: blocks may not clobber the metadata, the footer or each other.
fn bat_problem(vhd: &Vhd) -> Option<String> {
    let h = vhd.header()?;
    let blocks = vhd.footer.curr_size / h.block_size as u64;
    if blocks > h.max_bat as u64 {
        return Some(format!(
            "VHD size ({blocks} blocks) exceeds BAT size ({})",
            h.max_bat
        ));
    }
    let eoh = vhd.end_of_headers();
    let span = h.bitmap_bytes() + h.block_size as u64;
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &e) in vhd.bat[..vhd.used_bat_entries()].iter().enumerate() {
        if e == BAT_UNUSED {
            continue;
        }
        let start = e as u64 * 512;
        if start < eoh {
            return Some(format!("block {i} (offset {e:#x}) clobbers headers"));
        }
        if start + span > vhd.primary_at {
            return Some(format!("block {i} (offset {e:#x}) clobbers footer"));
        }
        used.push((start, start + span, i));
    }
    used.sort_unstable();
    for w in used.windows(2) {
        if w[1].0 < w[0].1 {
            return Some(format!(
                "block {} (offset {:#x}) clobbers block {} (offset {:#x})",
                w[1].2,
                w[1].0 / 512,
                w[0].2,
                w[0].0 / 512
            ));
        }
    }
    None
}

/// `vhd_util_check_batmap`.
fn batmap_problem(vhd: &Vhd) -> Option<String> {
    if batmap::missing(vhd) {
        return Some("invalid cookie: no tdbatmap header after the BAT".into());
    }
    let bm = vhd.batmap.as_ref()?;
    let h = vhd.header()?;
    if bm.version > batmap::BATMAP_VERSION {
        return Some(format!("unsupported batmap version {:#010x}", bm.version));
    }
    if bm.size == 0 {
        return Some("invalid size zero".into());
    }
    if (bm.size as u64) * 4096 < h.max_bat as u64 {
        return Some(format!(
            "batmap-BAT size mismatch ({} sectors for {} entries)",
            bm.size, h.max_bat
        ));
    }
    if bm.offset == 0 || bm.offset % 512 != 0 {
        return Some(format!("invalid batmap offset {}", bm.offset));
    }
    if bm.map_end() > vhd.primary_at || bm.map.is_none() {
        return Some(format!(
            "invalid batmap size {} sectors at {}",
            bm.size, bm.offset
        ));
    }
    match bm.computed_checksum(vhd.footer.curr_size) {
        Some(c) if c == bm.checksum => {}
        Some(c) => {
            return Some(format!(
                "invalid checksum {:#010x}, computed {c:#010x}",
                bm.checksum
            ))
        }
        None => return Some("invalid checksum: map shorter than the checksummed area".into()),
    }
    for (i, &e) in vhd.bat[..vhd.used_bat_entries()].iter().enumerate() {
        if e == BAT_UNUSED && bm.is_full(i) {
            return Some(format!("batmap shows unallocated block {i} full"));
        }
    }
    None
}

/// `vhd_util_check_parent_locators`: every slot well formed, no duplicate codes, and
/// every path slot must decode, name the header's parent and lead to it.
fn locator_problem(vhd: &Vhd, known_parent: Option<&Vhd>) -> Result<Option<String>> {
    let h = vhd.header().expect("differencing disk");
    let pname = h.parent_name_ascii().unwrap_or_default();
    let mut seen = HashSet::new();
    let mut found = false;
    for (i, l) in h.locators.iter().enumerate() {
        let bad = |m: &str| Ok(Some(format!("invalid parent locator {i}: {m}")));
        if !code::is_known(l.code) {
            return bad("invalid platform code");
        }
        if l.code == code::NONE {
            if !l.is_empty() {
                return bad("non-zero locator");
            }
            continue;
        }
        if l.data_offset == 0 {
            return bad("invalid data offset");
        }
        if l.data_space == 0 {
            return bad("invalid data space");
        }
        if l.data_len == 0 {
            return bad("invalid data length");
        }
        if l.space_bytes() == 0 || l.data_offset.saturating_add(l.space_bytes()) > vhd.primary_at {
            return bad("invalid size");
        }
        if l.reserved != 0 {
            return bad("invalid reserved bits");
        }
        if !seen.insert(l.code) {
            return Ok(Some(format!(
                "duplicate platform code in locator {i}: {:#x}",
                l.code
            )));
        }
        if !code::is_path(l.code) {
            continue;
        }
        found = true;
        let Some(text) = read_slot(vhd, l)? else {
            return Ok(Some(format!("error reading parent locator {i}: -22")));
        };
        let base = Path::new(&text)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if base != pname {
            return Ok(Some(format!(
                "parent locator {i} name ({base}) does not match header name ({pname})"
            )));
        }
        let Some(parent) = resolve(&vhd.path, &text) else {
            return Ok(Some(format!("error resolving {text}: -2")));
        };
        if h.parent_uuid == [0; 16] {
            continue; // a raw parent has no uuid to compare
        }
        let opened;
        let found = match known_parent.filter(|k| is_open_file(k, &parent)) {
            Some(k) => Ok(k),
            None => {
                opened = Vhd::open(&parent, OpenMode::READ);
                opened.as_ref()
            }
        };
        match found {
            Ok(p) if p.footer.uuid == h.parent_uuid => {}
            Ok(p) => {
                return Ok(Some(format!(
                    "invalid parent {}: invalid parent uuid (it has {}, the header names {})",
                    parent.display(),
                    p.uuid(),
                    super::fmt_uuid(&h.parent_uuid)
                )))
            }
            Err(e) => {
                return Ok(Some(format!(
                    "invalid parent {}: error opening parent: {e}",
                    parent.display()
                )))
            }
        }
    }
    if !found {
        return Ok(Some(format!("could not find parent {pname}")));
    }
    Ok(None)
}

/// `path` names the file `vhd` has open (same device and inode).
fn is_open_file(vhd: &Vhd, path: &Path) -> bool {
    match (vhd.file().metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Depth of the chain (`vhd-util query -d`): 1 for a disk without parent.
pub fn chain_depth(path: &Path) -> Result<usize> {
    Ok(Chain::open(path)?.layers.len())
}
