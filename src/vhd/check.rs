//! `vhd-util check` (vhd-format.md §9): the first rule a file breaks, or none.
//!
//! The rules and their order follow blktap's `vhd-util-check.c`. With `parents`, every
//! ancestor is checked too, plus what blktap misses: a loop in the chain, a parent whose
//! UUID is not the one the child names, a parent larger than its child.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::batmap;
use super::chain::{Chain, Layer, MAX_CHAIN_DEPTH};
use super::footer::{self, Footer, Geometry, FOOTER_SIZE, TAP_CURRENT_VERSION};
use super::header::{code, HEADER_SIZE};
use super::locator::{read_slot, resolve};
use super::{fmt_uuid, DiskType, OpenMode, Result, Vhd, VhdError, BAT_UNUSED};

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
    if let Some(p) = check_one(path, opts)? {
        return Ok(Some(p));
    }
    if !opts.parents {
        return Ok(None);
    }
    let chain = match Chain::open(path) {
        Ok(c) => c,
        Err(e @ (VhdError::Io { .. } | VhdError::Invalid { .. })) if !is_open_io(&e) => {
            return Ok(Some(format!("parent chain: {e}")))
        }
        Err(e) => return Ok(Some(format!("parent chain: {e}"))),
    };
    let mut child_size = chain.virtual_size();
    let mut child_path = path.to_path_buf();
    for layer in &chain.layers[1..] {
        let Layer::Vhd(p) = layer else { break };
        if let Some(problem) = check_one(&p.path, opts)? {
            return Ok(Some(format!("parent {}: {problem}", p.path.display())));
        }
        if p.virtual_size() > child_size {
            return Ok(Some(format!(
                "parent {} is larger ({} bytes) than its child {} ({} bytes)",
                p.path.display(),
                p.virtual_size(),
                child_path.display(),
                child_size
            )));
        }
        child_size = p.virtual_size();
        child_path = p.path.clone();
    }
    Ok(None)
}

fn is_open_io(e: &VhdError) -> bool {
    matches!(e, VhdError::Io { .. })
}

/// The rules for one file.
fn check_one(path: &Path, opts: CheckOptions) -> Result<Option<String>> {
    let file = std::fs::File::open(path).map_err(|e| VhdError::io(path, "open", e))?;
    let size = file
        .metadata()
        .map_err(|e| VhdError::io(path, "stat", e))?
        .len();
    if size < FOOTER_SIZE as u64 {
        return Ok(Some(format!("file is {size} bytes, smaller than a VHD footer")));
    }
    let primary_at = if size % 512 == 511 { size - 511 } else { size - 512 };
    let mut raw = [0u8; FOOTER_SIZE];
    let len = (size - primary_at) as usize;
    super::read_exact_at(&file, path, &mut raw[..len], primary_at, "read the footer")?;
    let primary = Footer::decode(&raw);
    if let Some(p) = footer_problem(&primary, opts) {
        return Ok(Some(format!("primary footer invalid: {p}")));
    }
    let fixed = primary.disk_type() == Some(DiskType::Fixed);
    if !fixed {
        let mut copy = [0u8; FOOTER_SIZE];
        super::read_exact_at(&file, path, &mut copy, 0, "read the footer copy")?;
        let backup = Footer::decode(&copy);
        if let Some(p) = footer_problem(&backup, opts) {
            return Ok(Some(format!("backup footer invalid: {p}")));
        }
        // Early tapdisk set "hidden" only in the copy; blktap tolerates that difference.
        let same = copy == raw
            || (primary.is_old_tap() && {
                let mut b = backup.clone();
                b.hidden = primary.hidden;
                b.checksum = primary.checksum;
                b.encode_raw() == primary.encode_raw()
            });
        if !same {
            return Ok(Some("primary and backup footers do not match".into()));
        }
    }
    let vhd = match Vhd::open(path, OpenMode::READ) {
        Ok(v) => v,
        Err(e @ VhdError::Invalid { .. }) => return Ok(Some(e.to_string())),
        Err(e) => return Err(e),
    };
    if fixed {
        return Ok(None);
    }
    if let Some(p) = header_problem(&vhd) {
        return Ok(Some(format!("header is invalid: {p}")));
    }
    if let Some(p) = bat_problem(&vhd) {
        return Ok(Some(format!("bat is invalid: {p}")));
    }
    if let Some(p) = batmap_problem(&vhd) {
        return Ok(Some(format!("batmap is invalid: {p}")));
    }
    if vhd.is_differencing() {
        if let Some(p) = locator_problem(&vhd)? {
            return Ok(Some(format!("parent locators are invalid: {p}")));
        }
    }
    Ok(None)
}

fn footer_problem(f: &Footer, opts: CheckOptions) -> Option<String> {
    if &f.cookie != footer::COOKIE {
        return Some(format!(
            "invalid cookie {:?}",
            String::from_utf8_lossy(&f.cookie)
        ));
    }
    if let Some(footer::FooterProblem::Checksum { computed }) = f.problem() {
        return Some(format!(
            "invalid checksum {:#010x}, computed {computed:#010x}",
            f.checksum
        ));
    }
    if f.features & footer::FEATURE_RESERVED == 0
        || f.features & !(footer::FEATURE_RESERVED | footer::FEATURE_TEMPORARY) != 0
    {
        return Some(format!("invalid 'features' field {:#010x}", f.features));
    }
    if f.version != footer::FILE_FORMAT_VERSION {
        return Some(format!("invalid file version {:#010x}", f.version));
    }
    if f.disk_type() == Some(DiskType::Fixed) && f.data_offset != u64::MAX {
        return Some(format!(
            "invalid data offset {:#x} for a fixed disk",
            f.data_offset
        ));
    }
    let now = super::create::now_vhd();
    if !opts.ignore_timestamps && f.timestamp > now.saturating_add(FUTURE_SLACK) {
        return Some(format!(
            "creation time in future: {} > {}",
            f.timestamp, now
        ));
    }
    if f.creator_is_tap() && f.creator_version > TAP_CURRENT_VERSION {
        return Some(format!(
            "unsupported tap creator version {:#010x}",
            f.creator_version
        ));
    }
    let max = Geometry::for_size(f.curr_size);
    let g = f.geometry;
    let sectors = |g: Geometry| g.cylinders as u64 * g.heads as u64 * g.sectors as u64;
    if sectors(g) > sectors(max) {
        return Some(format!(
            "geometry {}/{}/{} too large for the current size {} (at most {}/{}/{})",
            g.cylinders, g.heads, g.sectors, f.curr_size, max.cylinders, max.heads, max.sectors
        ));
    }
    if f.disk_type().is_none() {
        return Some(format!("invalid disk type {}", f.disk_type_raw));
    }
    if f.saved > 1 {
        return Some(format!("invalid 'saved' state {}", f.saved));
    }
    if f.hidden > 1 {
        return Some(format!("invalid 'hidden' state {}", f.hidden));
    }
    if f.reserved.iter().any(|&b| b != 0) {
        return Some("invalid 'reserved' field: not zero".into());
    }
    if f.uuid == [0; 16] {
        return Some("null uuid".into());
    }
    None
}

fn header_problem(vhd: &Vhd) -> Option<String> {
    let h = vhd.header()?;
    if h.table_offset == 0 || h.table_offset % 512 != 0 {
        return Some(format!("invalid table offset {}", h.table_offset));
    }
    if h.table_offset + h.max_bat as u64 * 4 > vhd.primary_at {
        return Some(format!(
            "max bat size {} runs into the footer",
            h.max_bat
        ));
    }
    if !h.reserved_is_zero() {
        return Some("invalid 'reserved' field: not zero".into());
    }
    if vhd.is_differencing() {
        let now = super::create::now_vhd();
        if h.parent_timestamp > now.saturating_add(FUTURE_SLACK) {
            return Some(format!(
                "parent creation time in future: {} > {now}",
                h.parent_timestamp
            ));
        }
        if h.parent_name_ascii().is_none() {
            return Some("invalid parent name: not ASCII UTF-16BE".into());
        }
    } else if h.parent_name.iter().any(|&b| b != 0)
        || h.parent_uuid != [0; 16]
        || h.parent_timestamp != 0
        || h.locators.iter().any(|l| !l.is_empty())
    {
        return Some("a disk without parent has parent fields set".into());
    }
    None
}

/// Areas a block may not overlap: both footers, header, BAT, batmap, locator data.
fn metadata_regions(vhd: &Vhd) -> Vec<(u64, u64, String)> {
    let h = vhd.header().expect("dynamic disk");
    let mut r = vec![
        (0, FOOTER_SIZE as u64, "the footer copy".to_string()),
        (
            vhd.footer.data_offset,
            vhd.footer.data_offset + HEADER_SIZE as u64,
            "the header".into(),
        ),
        (
            h.table_offset,
            h.table_offset.saturating_add(h.bat_bytes()),
            "the BAT".into(),
        ),
    ];
    if let Some(bm) = &vhd.batmap {
        r.push((bm.header_offset, bm.header_offset + 512, "the batmap header".into()));
        r.push((bm.offset, bm.map_end(), "the batmap".into()));
    }
    for (i, l) in h.locators.iter().enumerate() {
        if l.code != code::NONE {
            r.push((
                l.data_offset,
                l.data_offset.saturating_add(l.space_bytes()),
                format!("locator {i} data"),
            ));
        }
    }
    r
}

fn bat_problem(vhd: &Vhd) -> Option<String> {
    let h = vhd.header()?;
    let needed = vhd.footer.curr_size / h.block_size as u64;
    if needed > h.max_bat as u64 {
        return Some(format!(
            "max bat entries {} too small for the current size {}",
            h.max_bat, vhd.footer.curr_size
        ));
    }
    let meta = metadata_regions(vhd);
    let span = h.bitmap_bytes() + h.block_size as u64;
    let mut blocks: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &e) in vhd.bat[..vhd.used_bat_entries()].iter().enumerate() {
        if e == BAT_UNUSED {
            continue;
        }
        let start = e as u64 * 512;
        let end = start + span;
        if let Some((_, _, what)) = meta.iter().find(|(a, b, _)| start < *b && *a < end) {
            return Some(format!("block {i} at sector {e} overlaps {what}"));
        }
        if end > vhd.primary_at {
            return Some(format!("block {i} at sector {e} runs into the footer"));
        }
        blocks.push((start, end, i));
    }
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[1].0 < w[0].1 {
            return Some(format!("blocks {} and {} overlap", w[0].2, w[1].2));
        }
    }
    None
}

fn batmap_problem(vhd: &Vhd) -> Option<String> {
    if batmap::missing(vhd) {
        return Some("no tdbatmap header after the BAT (tap 1.2+ files must have one)".into());
    }
    let bm = vhd.batmap.as_ref()?;
    let h = vhd.header()?;
    if bm.version != batmap::BATMAP_VERSION && bm.version != footer::version(1, 1) {
        return Some(format!("invalid version {:#010x}", bm.version));
    }
    if bm.offset % 512 != 0 || bm.map_end() > vhd.primary_at || bm.map.is_none() {
        return Some(format!(
            "map at {} ({} sectors) is not sector-aligned before the footer",
            bm.offset, bm.size
        ));
    }
    if (bm.size as u64) * 512 * 8 < h.max_bat as u64 {
        return Some(format!(
            "{} sectors do not cover {} blocks",
            bm.size, h.max_bat
        ));
    }
    match bm.computed_checksum(vhd.footer.curr_size) {
        Some(c) if c == bm.checksum => {}
        Some(c) => {
            return Some(format!(
                "checksum {:#010x}, computed {c:#010x}",
                bm.checksum
            ))
        }
        None => return Some("map too small for its checksum".into()),
    }
    for (i, &e) in vhd.bat[..vhd.used_bat_entries()].iter().enumerate() {
        if e == BAT_UNUSED && bm.is_full(i) {
            return Some(format!("block {i} is marked full but not allocated"));
        }
    }
    None
}

fn locator_problem(vhd: &Vhd) -> Result<Option<String>> {
    let h = vhd.header().expect("differencing disk");
    let mut seen = HashSet::new();
    for (i, l) in h.locators.iter().enumerate() {
        if l.code == code::NONE {
            if !l.is_empty() {
                return Ok(Some(format!("locator {i}: empty slot with fields set")));
            }
            continue;
        }
        if l.data_offset == 0 || l.data_space == 0 || l.data_len == 0 || l.space_bytes() == 0 {
            return Ok(Some(format!(
                "locator {i} ({}): offset {}, space {}, length {}",
                code::name(l.code),
                l.data_offset,
                l.data_space,
                l.data_len
            )));
        }
        if l.data_offset.saturating_add(l.space_bytes()) > vhd.primary_at {
            return Ok(Some(format!("locator {i}: data runs into the footer")));
        }
        if l.reserved != 0 {
            return Ok(Some(format!("locator {i}: reserved field not zero")));
        }
        if !seen.insert(l.code) {
            return Ok(Some(format!(
                "locator {i}: duplicate platform code {}",
                code::name(l.code)
            )));
        }
    }
    // At least one path locator must decode, match the header's parent name, and lead to
    // the parent the header names.
    let want_name = h.parent_name_ascii().unwrap_or_default();
    let raw_parent = h.parent_uuid == [0; 16];
    let mut first_failure = None;
    for (i, l) in h.locators.iter().enumerate() {
        if !code::is_path(l.code) {
            continue;
        }
        let failure = match read_slot(vhd, l)? {
            None => format!("locator {i}: data does not decode"),
            Some(text) => {
                let base = Path::new(&text)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if base != want_name {
                    format!("locator {i}: {text:?} does not name the header's parent {want_name:?}")
                } else {
                    match resolve(&vhd.path, &text) {
                        None => format!("error resolving {text}: -2"),
                        Some(p) if raw_parent => return Ok(parent_ok(p)),
                        Some(p) => match Vhd::open(&p, OpenMode::READ) {
                            Ok(pv) if pv.footer.uuid == h.parent_uuid => return Ok(None),
                            Ok(pv) => format!(
                                "parent {} has uuid {}, the header names {}",
                                p.display(),
                                pv.uuid(),
                                fmt_uuid(&h.parent_uuid)
                            ),
                            Err(e) => format!("parent {}: {e}", p.display()),
                        },
                    }
                }
            }
        };
        first_failure.get_or_insert(failure);
    }
    Ok(Some(first_failure.unwrap_or_else(|| "no parent locator".into())))
}

fn parent_ok(_p: PathBuf) -> Option<String> {
    None
}

/// Depth of the chain (`vhd-util query -d`): 1 for a disk without parent.
pub fn chain_depth(path: &Path) -> Result<usize> {
    let chain = Chain::open(path)?;
    debug_assert!(chain.layers.len() <= MAX_CHAIN_DEPTH);
    Ok(chain.layers.len())
}
