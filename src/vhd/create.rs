//! New files in blktap's layout (vhd-format.md §3.2, §6.2): `vhd-util create` (dynamic
//! disk) and `vhd-util snapshot` (differencing child).
//!
//! Layout: footer copy at 0, header at 512, BAT at 1536 (padded to a sector), batmap
//! header right after the BAT, the batmap after that, then for a child the three locator
//! areas (MacX, W2ku, W2ru), then the primary footer. Blocks are 2 MiB; creator `tap`
//! 1.3, host OS 0.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::batmap::Batmap;
use super::bytes::round_up_sector;
use super::error::{EEXIST, EINVAL};
use super::footer::{
    Footer, Geometry, CREATOR_TAP, FEATURE_RESERVED, FILE_FORMAT_VERSION, TAP_CURRENT_VERSION,
    VHD_EPOCH,
};
use super::header::{code, Header, Locator, BLOCK_SIZE_2M};
use super::locator::{canonical, ParentLink};
use super::{
    DiskType, OpenMode, Result, Vhd, VhdError, FOOTER_SIZE, HEADER_SIZE, MAX_VIRTUAL_SIZE,
};

pub(super) const HEADER_AT: u64 = 512;
pub(super) const BAT_AT: u64 = 1536;

/// Values normally random or taken from the clock; tests pin them to reproduce
/// blktap-made files byte for byte.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp {
    pub uuid: Option<[u8; 16]>,
    /// VHD-epoch seconds.
    pub timestamp: Option<u32>,
}

impl Stamp {
    fn uuid(&self) -> [u8; 16] {
        self.uuid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes())
    }
    fn timestamp(&self) -> u32 {
        self.timestamp.unwrap_or_else(now_vhd)
    }
}

pub fn now_vhd() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(VHD_EPOCH);
    (now - VHD_EPOCH) as u32
}

pub(super) fn new_footer(disk_type: DiskType, size: u64, stamp: &Stamp) -> Footer {
    let mut raw = [0u8; FOOTER_SIZE];
    raw[..8].copy_from_slice(super::footer::COOKIE);
    let mut f = Footer::decode(&raw);
    f.features = FEATURE_RESERVED;
    f.version = FILE_FORMAT_VERSION;
    f.data_offset = HEADER_AT;
    f.timestamp = stamp.timestamp();
    f.creator_app = CREATOR_TAP;
    f.creator_version = TAP_CURRENT_VERSION;
    f.creator_os = 0;
    f.orig_size = size;
    f.curr_size = size;
    f.geometry = Geometry::for_size(size);
    f.disk_type_raw = disk_type.code();
    f.uuid = stamp.uuid();
    f
}

fn check_size(path: &Path, size: u64) -> Result<u32> {
    if size == 0 || size % 512 != 0 || size > MAX_VIRTUAL_SIZE {
        return Err(VhdError::invalid(
            path,
            "virtual size",
            size,
            format!("must be a non-zero multiple of 512 up to {MAX_VIRTUAL_SIZE} bytes"),
        ));
    }
    Ok(size.div_ceil(BLOCK_SIZE_2M as u64) as u32)
}

/// The metadata of a new file, laid out and encoded, ready to be written.
struct NewFile {
    footer: [u8; FOOTER_SIZE],
    header: [u8; HEADER_SIZE],
    bat: Vec<u8>,
    batmap: Batmap,
    locators: Vec<(u64, Vec<u8>)>,
    footer_at: u64,
}

impl NewFile {
    fn layout(
        disk_type: DiskType,
        size: u64,
        max_bat: u32,
        stamp: &Stamp,
        parent: Option<ParentLink>,
    ) -> NewFile {
        let mut header = Header::new(BAT_AT, max_bat, BLOCK_SIZE_2M);
        let bat_bytes = header.bat_bytes();
        let batmap = Batmap::new(BAT_AT + bat_bytes, max_bat, size);
        let mut at = batmap.map_end();
        let mut locators = Vec::new();
        if let Some(p) = parent {
            p.apply(&mut header);
            for (slot, c) in [code::MACX, code::W2KU, code::W2RU].into_iter().enumerate() {
                let data = p.locator_data(c);
                let space = round_up_sector(data.len() as u64)
                    .expect("short path")
                    .max(512);
                header.locators[slot] = Locator {
                    code: c,
                    data_space: space as u32,
                    data_len: data.len() as u32,
                    reserved: 0,
                    data_offset: at,
                };
                let mut padded = data;
                padded.resize(space as usize, 0);
                locators.push((at, padded));
                at += space;
            }
        }
        let mut bat = vec![0xFFu8; bat_bytes as usize];
        // The padding after the last entry is zero, as blktap leaves it.
        bat[max_bat as usize * 4..].fill(0);
        let mut footer = new_footer(disk_type, size, stamp);
        NewFile {
            footer: footer.encode(),
            header: header.encode(),
            bat,
            batmap,
            locators,
            footer_at: at,
        }
    }

    fn write(&self, path: &Path) -> Result<()> {
        let file = create_new(path)?;
        let res = self.write_into(&file, path);
        if res.is_err() {
            let _ = std::fs::remove_file(path);
        }
        res
    }

    fn write_into(&self, file: &File, path: &Path) -> Result<()> {
        let w = |buf: &[u8], at: u64, what| {
            file.write_all_at(buf, at)
                .map_err(|e| VhdError::io(path, what, e))
        };
        w(&self.footer, 0, "write the footer copy")?;
        w(&self.header, HEADER_AT, "write the dynamic header")?;
        w(&self.bat, BAT_AT, "write the BAT")?;
        w(
            &self.batmap.encode_header(),
            self.batmap.header_offset,
            "write the batmap header",
        )?;
        w(
            self.batmap.map.as_deref().expect("fresh map"),
            self.batmap.offset,
            "write the batmap",
        )?;
        for (at, data) in &self.locators {
            w(data, *at, "write parent locator data")?;
        }
        w(&self.footer, self.footer_at, "write the footer")?;
        file.sync_all().map_err(|e| VhdError::io(path, "fsync", e))
    }
}

fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                VhdError::refused(path, "file exists; refusing to overwrite it", EEXIST)
            } else {
                VhdError::io(path, "create", e)
            }
        })
}

/// `vhd-util create -n PATH -s SIZE`: a new, empty dynamic disk of at least `size`
/// bytes. Like blktap, the size is rounded up to whole 2 MiB blocks. Returns the size.
pub fn create_dynamic(path: &Path, size: u64, stamp: &Stamp) -> Result<u64> {
    let size = round_up_block(size);
    let max_bat = check_size(path, size)?;
    NewFile::layout(DiskType::Dynamic, size, max_bat, stamp, None).write(path)?;
    Ok(size)
}

fn round_up_block(size: u64) -> u64 {
    let bs = BLOCK_SIZE_2M as u64;
    size.checked_next_multiple_of(bs).unwrap_or(u64::MAX)
}

/// What `snapshot` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub child: String,
    pub uuid: String,
    pub parent: String,
    pub parent_uuid: String,
    pub virtual_size: u64,
}

/// `vhd-util snapshot -n CHILD -p PARENT`: a new, empty differencing disk whose parent
/// is `parent`. Like vhd-util, and unless `keep_empty_parents`, it first walks up past
/// differencing parents that hold no block (they add nothing) and links to the first
/// one that does.
pub fn snapshot(
    parent: &Path,
    child: &Path,
    keep_empty_parents: bool,
    stamp: &Stamp,
) -> Result<Snapshot> {
    let mut parent_abs =
        std::fs::canonicalize(parent).map_err(|e| VhdError::io(parent, "resolve", e))?;
    let mut p = Vhd::open(&parent_abs, OpenMode::READ)?;
    let supplied_size = p.virtual_size();
    let mut skipped = false;
    if !keep_empty_parents {
        let mut hops = 0;
        while p.is_differencing() && p.allocated_blocks() == 0 {
            hops += 1;
            if hops > super::chain::MAX_CHAIN_DEPTH {
                return Err(VhdError::refused(
                    parent,
                    "chain of empty parents too deep",
                    EINVAL,
                ));
            }
            let (up, _) = super::locator::find_parent(&p)?;
            parent_abs = up;
            p = Vhd::open(&parent_abs, OpenMode::READ)?;
            skipped = true;
        }
    }
    if p.footer.uuid == [0; 16] {
        return Err(VhdError::invalid(
            &parent_abs,
            "footer uuid",
            "00000000-0000-0000-0000-000000000000",
            "a parent must have a uuid",
        ));
    }
    // blktap quirk kept for identical files: after skipping empty parents the child gets
    // the *supplied* parent's size rounded up to 2 MiB, else the parent's exact size.
    let size = if skipped {
        round_up_block(supplied_size)
    } else {
        supplied_size
    };
    if size < p.virtual_size() {
        return Err(VhdError::invalid(
            child,
            "virtual size",
            size,
            format!("smaller than the parent's {}", p.virtual_size()),
        ));
    }
    let max_bat = check_size(child, size)?;
    let child_abs = canonical(child).map_err(|e| VhdError::io(child, "resolve", e))?;
    let mtime = std::fs::metadata(&parent_abs)
        .map_err(|e| VhdError::io(&parent_abs, "stat", e))?
        .mtime();
    let link = ParentLink::new(child, &child_abs, &parent_abs, p.footer.uuid, mtime)?;
    let mut file = NewFile::layout(DiskType::Differencing, size, max_bat, stamp, Some(link));
    // An encrypted parent's key hash travels to the child (vhd_snapshot: cookie 1 only).
    if let Some(pbm) = &p.batmap {
        if pbm.keyhash()[0] == 1 {
            file.batmap.set_keyhash(pbm.keyhash());
        }
    }
    file.write(child)?;
    let footer = Footer::decode(&file.footer);
    Ok(Snapshot {
        child: child.display().to_string(),
        uuid: super::fmt_uuid(&footer.uuid),
        parent: parent_abs.display().to_string(),
        parent_uuid: p.uuid().to_string(),
        virtual_size: size,
    })
}
