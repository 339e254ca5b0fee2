//! blktap's "tdbatmap" extension (vhd-format.md §5): one bit per block, set when the
//! block is full, so tapdisk can skip its bitmap. Nothing in it depends on the parent,
//! so relinking and hiding never touch it.

use super::bytes::{
    be_u32, be_u64, byte_sum_not, put_u32, put_u64, secs_round_up_no_zero, signed_byte_sum_not,
};
use super::footer::version;
use super::{Result, Vhd};

pub const COOKIE: &[u8; 8] = b"tdbatmap";
pub const BATMAP_VERSION: u32 = version(1, 2);
pub const HEADER_SIZE: usize = 512;
/// Largest map read: one bit per entry of the largest BAT opened (512 KiB).
pub const MAX_MAP_SECTORS: u32 = super::MAX_BAT_ENTRIES / 8 / 512;

pub mod off {
    pub const OFFSET: usize = 8;
    pub const SIZE: usize = 16;
    pub const VERSION: usize = 20;
    pub const CHECKSUM: usize = 24;
    pub const MARKER: usize = 28;
    pub const KEYHASH: usize = 29;
    pub const KEYHASH_LEN: usize = 65;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batmap {
    /// Where the batmap header sits (right after the BAT).
    pub header_offset: u64,
    pub raw_header: [u8; HEADER_SIZE],
    pub offset: u64,
    /// In sectors.
    pub size: u32,
    pub version: u32,
    pub checksum: u32,
    pub marker: u8,
    /// The map itself, `size` sectors, when they lie inside the file.
    pub map: Option<Vec<u8>>,
}

impl Batmap {
    pub fn map_end(&self) -> u64 {
        self.offset.saturating_add(self.size as u64 * 512)
    }

    /// A fresh header and empty map for a new tap file (create/snapshot).
    pub fn new(header_offset: u64, max_bat: u32, curr_size: u64) -> Batmap {
        let size = secs_round_up_no_zero((max_bat as u64).div_ceil(8)) as u32;
        let mut b = Batmap {
            header_offset,
            raw_header: [0; HEADER_SIZE],
            offset: header_offset + HEADER_SIZE as u64,
            size,
            version: BATMAP_VERSION,
            checksum: 0,
            marker: 0,
            map: Some(vec![0; size as usize * 512]),
        };
        b.checksum = b
            .computed_checksum(curr_size)
            .expect("fresh map is large enough");
        b
    }

    /// blktap `vhd_checksum_batmap`: the sum covers 512·max(1, ⌈(curr_size >> 24) / 512⌉)
    /// bytes of the map, summed as signed chars in version 1.1. `None` when the map is
    /// missing or shorter than that.
    pub fn computed_checksum(&self, curr_size: u64) -> Option<u32> {
        let n = secs_round_up_no_zero(curr_size >> 24) * 512;
        let map = self.map.as_ref()?;
        let bytes = map.get(..usize::try_from(n).ok()?)?;
        Some(if self.version == version(1, 1) {
            signed_byte_sum_not(bytes)
        } else {
            byte_sum_not(bytes)
        })
    }

    /// The key hash of an encrypted disk: cookie byte (1 = set), nonce, SHA-256.
    pub fn keyhash(&self) -> &[u8] {
        &self.raw_header[off::KEYHASH..off::KEYHASH + off::KEYHASH_LEN]
    }

    pub fn set_keyhash(&mut self, kh: &[u8]) {
        self.raw_header[off::KEYHASH..off::KEYHASH + off::KEYHASH_LEN].copy_from_slice(kh);
    }

    pub fn is_full(&self, block: usize) -> bool {
        self.map
            .as_ref()
            .and_then(|m| m.get(block / 8))
            .is_some_and(|b| b & (0x80 >> (block % 8)) != 0)
    }

    pub fn encode_header(&self) -> [u8; HEADER_SIZE] {
        let mut b = self.raw_header;
        b[..8].copy_from_slice(COOKIE);
        put_u64(&mut b, off::OFFSET, self.offset);
        put_u32(&mut b, off::SIZE, self.size);
        put_u32(&mut b, off::VERSION, self.version);
        put_u32(&mut b, off::CHECKSUM, self.checksum);
        b[off::MARKER] = self.marker;
        b
    }
}

/// Whether blktap expects a batmap in this file (`vhd_has_batmap`): tap ≥ 1.2 always,
/// tap 1.1 only if the header is really there, never for tap 0.1 or other creators.
fn expected(vhd: &Vhd) -> Expect {
    let f = &vhd.footer;
    if !f.creator_is_tap() {
        return Expect::No;
    }
    match f.creator_version {
        v if v <= version(0, 1) => Expect::No,
        v if v >= version(1, 2) => Expect::Yes,
        _ => Expect::IfPresent,
    }
}

enum Expect {
    Yes,
    IfPresent,
    No,
}

/// Read the batmap at open. A tap ≥ 1.2 file whose batmap is missing or damaged still
/// opens (reads do not need it); `check` reports it.
pub fn read(vhd: &Vhd) -> Result<Option<Batmap>> {
    if matches!(expected(vhd), Expect::No) {
        return Ok(None);
    }
    let h = vhd.header().expect("dynamic disk");
    let Some(header_offset) = h.table_offset.checked_add(h.bat_bytes()) else {
        return Ok(None);
    };
    if header_offset.saturating_add(HEADER_SIZE as u64) > vhd.primary_at {
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_SIZE];
    vhd.read_at(&mut raw, header_offset, "read the batmap header")?;
    if &raw[..8] != COOKIE {
        return Ok(None);
    }
    let mut bm = Batmap {
        header_offset,
        raw_header: raw,
        offset: be_u64(&raw, off::OFFSET),
        size: be_u32(&raw, off::SIZE),
        version: be_u32(&raw, off::VERSION),
        checksum: be_u32(&raw, off::CHECKSUM),
        marker: raw[off::MARKER],
        map: None,
    };
    // The map is read only when it lies inside the file and is no larger than one bit
    // per BAT entry we accept can need. The file size alone is no bound: a sparse file
    // (or one `set_hidden` extended to a hostile map end) can be terabytes (fuzz:
    // tests/fixtures/fuzz/vhd_relink-batmap-size-oom.bin). A larger map stays unread
    // and `check` reports its size.
    let len = bm.size as u64 * 512;
    if bm.offset % 512 == 0
        && bm.size <= MAX_MAP_SECTORS
        && bm
            .offset
            .checked_add(len)
            .is_some_and(|e| e <= vhd.primary_at)
    {
        let mut map = vec![0u8; len as usize];
        vhd.read_at(&mut map, bm.offset, "read the batmap")?;
        bm.map = Some(map);
    }
    Ok(Some(bm))
}

/// Whether a batmap is required but absent (for `check`).
pub fn missing(vhd: &Vhd) -> bool {
    matches!(expected(vhd), Expect::Yes) && vhd.batmap.is_none()
}
