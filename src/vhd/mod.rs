//! Native VHD (Microsoft Virtual Hard Disk v1) as blktap / XenServer uses it:
//! `../shared/vhd-format.md` is the spec followed here, blktap's `vhd-util` the reference
//! for every byte written.
//!
//! [`Vhd::open`] reads and validates what blktap's `vhd_open` validates (footer with the
//! fallback to the copy at offset 0, dynamic header, BAT, batmap), with checked arithmetic
//! on every offset and caps on every allocation, so a hostile file gives an error that
//! names the file, the field and the value. The operations live in their own files:
//! `check` (vhd-util check), `chain` (parents and reads through them), `relink`
//! (change parent, hidden), `create` (new dynamic disks and snapshots), `link` (a list
//! of files made into one validated chain, as an image import needs).

mod batmap;
pub mod bound;
mod bytes;
pub mod chain;
pub mod check;
pub mod create;
pub mod error;
pub mod flatten;
pub mod footer;
pub mod header;
pub mod info;
pub mod link;
pub mod locator;
pub mod relink;
pub mod repair;
#[cfg(test)]
pub(crate) mod test_samples;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use batmap::Batmap;
pub use bound::{size_bound, SizeBound};
pub use error::{Result, VhdError};
pub use footer::{DiskType, Footer, FOOTER_SIZE};
pub use header::{Header, Locator, HEADER_SIZE};
pub use link::{link_chain, LinkCause, LinkError, MAX_IMAGE_CHAIN};

/// A BAT entry that points nowhere.
pub const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// Caps that keep hostile files from making us allocate without bound: 2^22 entries
/// is a 16 MiB BAT, 8 TiB of 2 MiB blocks (VHD itself stops at 2040 GiB).
pub const MAX_BAT_ENTRIES: u32 = 1 << 22;
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest virtual size we create (the MS spec's limit).
pub const MAX_VIRTUAL_SIZE: u64 = 2040 << 30;

/// How to open a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub write: bool,
    /// Accept the `v_poison` cookie, as `vhd-util query` does.
    pub ignore_disabled: bool,
}

impl OpenMode {
    pub const READ: OpenMode = OpenMode {
        write: false,
        ignore_disabled: false,
    };
    pub const WRITE: OpenMode = OpenMode {
        write: true,
        ignore_disabled: false,
    };
}

/// An open VHD file.
#[derive(Debug)]
pub struct Vhd {
    pub path: PathBuf,
    file: File,
    pub file_size: u64,
    pub footer: Footer,
    /// The bytes of the footer in use, as read.
    pub footer_raw: [u8; FOOTER_SIZE],
    /// Where the primary footer is (end − 512, or end − 511 for a short one).
    pub primary_at: u64,
    /// The primary footer was bad and the copy at offset 0 is in use.
    pub backup_used: bool,
    /// Dynamic and differencing disks only.
    pub header: Option<Header>,
    /// All `max_bat` entries (dynamic and differencing disks).
    pub bat: Vec<u32>,
    /// blktap's tdbatmap, when the file should have one and it is readable.
    pub batmap: Option<Batmap>,
}

impl Vhd {
    pub fn open(path: &Path, mode: OpenMode) -> Result<Vhd> {
        use std::os::unix::fs::FileTypeExt;
        let file = open_without_blocking(path, mode.write)?;
        let meta = file.metadata().map_err(|e| VhdError::io(path, "stat", e))?;
        let kind = meta.file_type();
        // Files, and block devices (VHDs on the LVs of an LVM SR).
        if !kind.is_file() && !kind.is_block_device() {
            return Err(VhdError::Refused {
                path: path.to_path_buf(),
                what: "is not a regular file or a block device (a FIFO, socket, directory or character device)".into(),
                errno: error::EINVAL,
            });
        }
        let file_size = if kind.is_file() {
            meta.len()
        } else {
            block_device_size(&file).map_err(|e| VhdError::io(path, "size the device", e))?
        };
        Vhd::from_file(path, file, file_size, mode)
    }

    /// [`Vhd::open`] on a file already open (with the access `mode` asks for) whose size
    /// the caller has taken.
    pub(crate) fn from_file(
        path: &Path,
        file: File,
        file_size: u64,
        mode: OpenMode,
    ) -> Result<Vhd> {
        if file_size < FOOTER_SIZE as u64 - 1 {
            return Err(VhdError::invalid(
                path,
                "file size",
                file_size,
                "smaller than a VHD footer (512 bytes)",
            ));
        }
        let primary_at = primary_footer_at(file_size);
        let mut raw = [0u8; FOOTER_SIZE];
        let len = (file_size - primary_at) as usize;
        read_exact_at(&file, path, &mut raw[..len], primary_at, "read the footer")?;
        let footer = Footer::decode(&raw);
        let mut backup_used = false;
        if let Some(problem) = footer.problem() {
            // blktap falls back to the copy at offset 0 (dynamic and differencing
            // disks keep one there) when the primary is unusable.
            let mut copy = [0u8; FOOTER_SIZE];
            let usable = file_size >= 2 * FOOTER_SIZE as u64 && {
                read_exact_at(&file, path, &mut copy, 0, "read the footer copy")?;
                usable_copy(&Footer::decode(&copy))
            };
            if !usable {
                return Err(footer_error(path, &footer, problem));
            }
            raw = copy;
            backup_used = true;
        }
        Vhd::with_footer(path, file, file_size, primary_at, raw, backup_used, mode)
    }

    /// The rest of [`Vhd::from_file`] once the footer in use (`raw`) is chosen: its
    /// rules, then the header, BAT and batmap, each required to lie before `primary_at`.
    /// `vhd repair` calls it with the copy at offset 0 and `primary_at` at the end of
    /// the file, where a footer that was cut off would have started.
    pub(crate) fn with_footer(
        path: &Path,
        file: File,
        file_size: u64,
        primary_at: u64,
        raw: [u8; FOOTER_SIZE],
        backup_used: bool,
        mode: OpenMode,
    ) -> Result<Vhd> {
        let footer = Footer::decode(&raw);
        if footer.is_poisoned() && !mode.ignore_disabled {
            return Err(VhdError::invalid(
                path,
                "footer cookie",
                "v_poison",
                "the VHD is disabled (blktap poisoned it)",
            ));
        }
        // Current blktap refuses tap 0.1 files, whose hidden flag and parent name follow
        // older rules; we read them but do not write into them.
        if mode.write && footer.creator_is_tap() && footer.creator_version == footer::version(0, 1)
        {
            return Err(VhdError::invalid(
                path,
                "footer creator version",
                "tap 0.1",
                "files from tapdisk 0.1 are not modified",
            ));
        }
        let Some(disk_type) = footer.disk_type() else {
            return Err(VhdError::invalid(
                path,
                "footer disk type",
                footer.disk_type_raw,
                "must be 2 (fixed), 3 (dynamic) or 4 (differencing)",
            ));
        };
        let mut vhd = Vhd {
            path: path.to_path_buf(),
            file,
            file_size,
            footer,
            footer_raw: raw,
            primary_at,
            backup_used,
            header: None,
            bat: Vec::new(),
            batmap: None,
        };
        if disk_type == DiskType::Fixed {
            if vhd.footer.curr_size > primary_at {
                return Err(vhd.invalid(
                    "footer current size",
                    vhd.footer.curr_size,
                    format!("a fixed disk holds only {primary_at} bytes of data"),
                ));
            }
            return Ok(vhd);
        }
        vhd.read_header()?;
        vhd.read_bat()?;
        vhd.batmap = batmap::read(&vhd)?;
        Ok(vhd)
    }

    fn read_header(&mut self) -> Result<()> {
        let at = self.footer.data_offset;
        let end = at.checked_add(HEADER_SIZE as u64);
        if at % 512 != 0 || end.is_none_or(|e| e > self.primary_at) {
            return Err(self.invalid(
                "footer data offset",
                at,
                "the dynamic header must lie sector-aligned before the footer",
            ));
        }
        let mut raw = [0u8; HEADER_SIZE];
        self.read_at(&mut raw, at, "read the dynamic header")?;
        let h = Header::decode(&raw);
        if let Some((field, value, rule)) = header_problem(&h) {
            return Err(self.invalid(field, value, rule));
        }
        self.header = Some(h);
        Ok(())
    }

    fn read_bat(&mut self) -> Result<()> {
        let h = self.header.as_ref().expect("dynamic disk has a header");
        let (table_offset, max_bat) = (h.table_offset, h.max_bat);
        if max_bat > MAX_BAT_ENTRIES {
            return Err(self.invalid(
                "header max table entries",
                max_bat,
                format!("more than {MAX_BAT_ENTRIES} BAT entries"),
            ));
        }
        let end = table_offset.checked_add(max_bat as u64 * 4);
        if table_offset == 0 || end.is_none_or(|e| e > self.primary_at) {
            return Err(self.invalid(
                "header table offset",
                table_offset,
                format!("a BAT of {max_bat} entries there does not fit before the footer"),
            ));
        }
        // blktap `check`'s "VHD size exceeds BAT size", enforced at open: a footer that
        // claims more blocks than the BAT has would make reads stream zeros without end.
        let block_size = h.block_size as u64;
        if self.footer.curr_size / block_size > max_bat as u64 {
            return Err(self.invalid(
                "footer current size",
                self.footer.curr_size,
                format!("more than the {max_bat} BAT entries of {block_size}-byte blocks hold"),
            ));
        }
        let mut raw = vec![0u8; max_bat as usize * 4];
        self.read_at(&mut raw, table_offset, "read the BAT")?;
        self.bat = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(())
    }

    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type().expect("validated at open")
    }

    pub fn is_differencing(&self) -> bool {
        self.disk_type() == DiskType::Differencing
    }

    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    pub fn virtual_size(&self) -> u64 {
        self.footer.curr_size
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// BAT entries that cover the virtual size (blktap reads only these).
    pub fn used_bat_entries(&self) -> usize {
        let Some(h) = &self.header else { return 0 };
        let n = self.footer.curr_size.div_ceil(h.block_size as u64);
        (n.min(h.max_bat as u64)) as usize
    }

    /// Number of allocated blocks among the used BAT entries (`vhd-util query -a`).
    pub fn allocated_blocks(&self) -> usize {
        self.bat[..self.used_bat_entries()]
            .iter()
            .filter(|&&e| e != BAT_UNUSED)
            .count()
    }

    /// blktap `vhd_end_of_headers`: the end of the header, BAT, batmap and locator areas.
    pub fn end_of_headers(&self) -> u64 {
        let Some(h) = &self.header else {
            return self.primary_at;
        };
        let mut end = self.footer.data_offset.saturating_add(HEADER_SIZE as u64);
        end = end.max(h.table_offset.saturating_add(h.bat_bytes()));
        if let Some(bm) = &self.batmap {
            end = end.max(bm.header_offset.saturating_add(512));
            end = end.max(bm.map_end());
        }
        for l in h.locators.iter().filter(|l| l.code != header::code::NONE) {
            end = end.max(l.data_offset.saturating_add(l.space_bytes()));
        }
        end
    }

    /// blktap `vhd_end_of_data`: where the primary footer belongs. For fixed disks the
    /// current footer position; otherwise the end of the metadata or of the last block.
    pub fn end_of_data(&self) -> u64 {
        let Some(h) = &self.header else {
            return self.primary_at;
        };
        let block_span = h.bitmap_bytes() + h.block_size as u64;
        self.bat[..self.used_bat_entries()]
            .iter()
            .filter(|&&e| e != BAT_UNUSED)
            .map(|&e| (e as u64 * 512).saturating_add(block_span))
            .fold(self.end_of_headers(), u64::max)
            // A hostile locator or BAT entry can put the "end" anywhere; leave room for
            // the footer so callers can add it without overflowing.
            .min(u64::MAX - FOOTER_SIZE as u64)
    }

    /// File offset where the data of `block` starts (after its bitmap), or `None` when
    /// the block is not allocated. Errors when an allocated block leaves the file.
    pub fn block_data_offset(&self, block: u64) -> Result<Option<(u64, u64)>> {
        let h = self.header.as_ref().expect("dynamic disk");
        let Some(&entry) = self.bat.get(block as usize) else {
            return Ok(None);
        };
        if entry == BAT_UNUSED {
            return Ok(None);
        }
        let bitmap_at = entry as u64 * 512;
        let data_at = bitmap_at + h.bitmap_bytes();
        if data_at + h.block_size as u64 > self.primary_at {
            return Err(self.invalid(
                "BAT entry",
                format!("block {block} at sector {entry}"),
                "the block runs past the footer",
            ));
        }
        Ok(Some((bitmap_at, data_at)))
    }

    /// The sector bitmap of an allocated block.
    pub fn read_bitmap(&self, bitmap_at: u64) -> Result<Vec<u8>> {
        let h = self.header.as_ref().expect("dynamic disk");
        let mut bm = vec![0u8; h.bitmap_bytes() as usize];
        self.read_at(&mut bm, bitmap_at, "read a sector bitmap")?;
        Ok(bm)
    }

    pub fn read_at(&self, buf: &mut [u8], at: u64, what: &'static str) -> Result<()> {
        read_exact_at(&self.file, &self.path, buf, at, what)
    }

    pub fn write_at(&self, buf: &[u8], at: u64, what: &'static str) -> Result<()> {
        self.file
            .write_all_at(buf, at)
            .map_err(|e| VhdError::io(&self.path, what, e))
    }

    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| VhdError::io(&self.path, "fsync", e))
    }

    pub fn invalid(
        &self,
        field: &'static str,
        value: impl ToString,
        rule: impl Into<String>,
    ) -> VhdError {
        VhdError::invalid(&self.path, field, value, rule)
    }

    /// The footer UUID as text (stored byte order, as blktap and libvhdi print it).
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.footer.uuid)
    }
}

/// Field names of the eight locator slots, for error messages.
pub const LOCATOR_FIELDS: [&str; 8] = [
    "parent locator 0",
    "parent locator 1",
    "parent locator 2",
    "parent locator 3",
    "parent locator 4",
    "parent locator 5",
    "parent locator 6",
    "parent locator 7",
];

/// Where blktap reads the primary footer of a file of `size` bytes: its last 512 bytes,
/// or a 511-byte short footer (very old Microsoft tools wrote those); 0 for a file
/// shorter than a footer.
pub(crate) fn primary_footer_at(size: u64) -> u64 {
    if size % 512 == 511 {
        size - 511
    } else {
        size.saturating_sub(FOOTER_SIZE as u64)
    }
}

/// Open `path` for reading (and writing if `write`) without ever blocking in open(2):
/// a FIFO planted where a VHD, or a parent a locator names, should be would wait for a
/// writer forever. `O_NONBLOCK` changes nothing for files and block devices and is
/// cleared once open; the caller refuses any other kind of file.
pub(crate) fn open_without_blocking(path: &Path, write: bool) -> Result<File> {
    crate::fsutil::open_nonblocking(path, write, 0).map_err(|e| VhdError::io(path, "open", e))
}

/// blktap `vhd_validate_header`, in its order: the first rule the dynamic header `h`
/// breaks, as (field, value, rule). One list for [`Vhd::open`] and for
/// [`bound::size_bound`], which must refuse exactly what opening would.
pub(crate) fn header_problem(h: &Header) -> Option<(&'static str, String, String)> {
    if h.cookie() != header::COOKIE {
        // The bytes are not quoted: this is not a VHD header, and a file that is not a
        // VHD may be anyone's (root reads it; its content is not ours to print).
        return Some((
            "header cookie",
            "(not shown)".into(),
            "must be \"cxsparse\"".into(),
        ));
    }
    if h.version != header::HEADER_VERSION {
        return Some((
            "header version",
            format!("{:#010x}", h.version),
            "must be 0x00010000".into(),
        ));
    }
    if h.data_offset != u64::MAX {
        return Some((
            "header data offset",
            format!("{:#x}", h.data_offset),
            "must be 0xffffffffffffffff".into(),
        ));
    }
    if !h.block_size.is_power_of_two()
        || h.block_size < MIN_BLOCK_SIZE
        || h.block_size > header::BLOCK_SIZE_2M
    {
        return Some((
            "header block size",
            h.block_size.to_string(),
            "must be a power of two from 512 bytes to 2 MiB (blktap opens nothing larger)".into(),
        ));
    }
    for (i, l) in h.locators.iter().enumerate() {
        if !header::code::is_known(l.code) {
            return Some((
                LOCATOR_FIELDS[i],
                format!("{:#010x}", l.code),
                "unknown platform code".into(),
            ));
        }
    }
    let computed = h.computed_checksum();
    if computed != h.checksum {
        return Some((
            "header checksum",
            format!("{:#010x}", h.checksum),
            format!("computed {computed:#010x}"),
        ));
    }
    None
}

/// Whether the footer copy at offset 0 can stand in for the primary: valid, and of a
/// disk that keeps a copy (dynamic or differencing; a fixed disk's first sector is data).
pub(crate) fn usable_copy(f: &Footer) -> bool {
    f.problem().is_none() && f.is_dynamic_or_diff()
}

fn footer_error(path: &Path, f: &Footer, problem: footer::FooterProblem) -> VhdError {
    match problem {
        footer::FooterProblem::Cookie => VhdError::invalid(
            path,
            "footer cookie",
            // Not quoted: the file is not a VHD, and its content is not ours to print.
            "(not shown)",
            "must be \"conectix\" (and the copy at offset 0 is no better)",
        ),
        footer::FooterProblem::Checksum { computed } => VhdError::invalid(
            path,
            "footer checksum",
            format!("{:#010x}", f.checksum),
            format!("computed {computed:#010x} (and the copy at offset 0 is no better)"),
        ),
    }
}

pub(crate) fn read_exact_at(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    at: u64,
    what: &'static str,
) -> Result<()> {
    file.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            VhdError::invalid(
                path,
                "file size",
                "too small",
                format!("cannot {what} at offset {at}"),
            )
        } else {
            VhdError::io(path, what, e)
        }
    })
}

fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// Format a UUID stored as 16 raw bytes.
pub fn fmt_uuid(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}
