//! The 512-byte hard disk footer (vhd-format.md §2).
//!
//! The on-disk layout is declared once, as named big-endian offsets; [`Footer`] is the
//! decoded form. `encode` writes every byte back, reserved ones included, so a footer that
//! is decoded and encoded again is byte-identical (blktap's hidden byte lives in the MS
//! "reserved" area and must survive).

use super::bytes::{be_u16, be_u32, be_u64, checksum, put_u32, put_u64};

pub const FOOTER_SIZE: usize = 512;
pub const COOKIE: &[u8; 8] = b"conectix";
/// blktap's "disabled VHD" cookie (`VHD_POISON_COOKIE`).
pub const POISON_COOKIE: &[u8; 8] = b"v_poison";
pub const FEATURE_TEMPORARY: u32 = 0x1;
pub const FEATURE_RESERVED: u32 = 0x2;
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// Fixed disks have no dynamic header: the data offset is all ones.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH: i64 = 946_684_800;

/// `tap` with a NUL, blktap's creator application.
pub const CREATOR_TAP: [u8; 4] = *b"tap\0";
pub const fn version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}
/// The creator version blktap writes today (1.3).
pub const TAP_CURRENT_VERSION: u32 = version(1, 3);

pub mod off {
    pub const COOKIE: usize = 0;
    pub const FEATURES: usize = 8;
    pub const VERSION: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const TIMESTAMP: usize = 24;
    pub const CREATOR_APP: usize = 28;
    pub const CREATOR_VERSION: usize = 32;
    pub const CREATOR_OS: usize = 36;
    pub const ORIG_SIZE: usize = 40;
    pub const CURR_SIZE: usize = 48;
    pub const GEOMETRY: usize = 56;
    pub const DISK_TYPE: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const UUID: usize = 68;
    pub const SAVED: usize = 84;
    /// blktap's "hidden" flag: the first byte of the MS spec's reserved area.
    pub const HIDDEN: usize = 85;
    pub const RESERVED: usize = 86;
}

/// Disk types as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Cylinders, heads, sectors per track, as the footer stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
}

impl Geometry {
    /// The MS spec's CHS algorithm (blktap `vhd_chs`).
    pub fn for_size(size: u64) -> Geometry {
        let mut total = size / 512;
        let max = 65535 * 16 * 255;
        if total > max {
            total = max;
        }
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024);
            if h < 4 {
                h = 4;
            }
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        Geometry {
            cylinders: (cth / heads) as u16,
            heads: heads as u8,
            sectors: spt as u8,
        }
    }

    pub fn encode(self) -> u32 {
        ((self.cylinders as u32) << 16) | ((self.heads as u32) << 8) | self.sectors as u32
    }

    pub fn decode(v: u32) -> Geometry {
        Geometry {
            cylinders: (v >> 16) as u16,
            heads: (v >> 8) as u8,
            sectors: v as u8,
        }
    }
}

/// A decoded footer. Every byte of the 512 lands in a field (the 426 after `hidden` in
/// `reserved`), so [`Footer::encode_raw`] gives back the exact bytes decoded and
/// rewriting one field (`set_hidden`) never disturbs another. The bytes as read are
/// also kept whole in [`super::Vhd::footer_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub cookie: [u8; 8],
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: u32,
    pub orig_size: u64,
    pub curr_size: u64,
    pub geometry: Geometry,
    pub disk_type_raw: u32,
    pub checksum: u32,
    pub uuid: [u8; 16],
    pub saved: u8,
    pub hidden: u8,
    pub reserved: [u8; 426],
}

impl Footer {
    /// Decode 512 bytes. No validation: see [`Footer::problem`].
    pub fn decode(b: &[u8; FOOTER_SIZE]) -> Footer {
        let mut reserved = [0u8; 426];
        reserved.copy_from_slice(&b[off::RESERVED..]);
        Footer {
            cookie: b[0..8].try_into().expect("8 bytes"),
            features: be_u32(b, off::FEATURES),
            version: be_u32(b, off::VERSION),
            data_offset: be_u64(b, off::DATA_OFFSET),
            timestamp: be_u32(b, off::TIMESTAMP),
            creator_app: b[28..32].try_into().expect("4 bytes"),
            creator_version: be_u32(b, off::CREATOR_VERSION),
            creator_os: be_u32(b, off::CREATOR_OS),
            orig_size: be_u64(b, off::ORIG_SIZE),
            curr_size: be_u64(b, off::CURR_SIZE),
            geometry: Geometry {
                cylinders: be_u16(b, off::GEOMETRY),
                heads: b[58],
                sectors: b[59],
            },
            disk_type_raw: be_u32(b, off::DISK_TYPE),
            checksum: be_u32(b, off::CHECKSUM),
            uuid: b[68..84].try_into().expect("16 bytes"),
            saved: b[off::SAVED],
            hidden: b[off::HIDDEN],
            reserved,
        }
    }

    /// Encode with the stored `checksum` field as is.
    pub fn encode_raw(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&self.cookie);
        put_u32(&mut b, off::FEATURES, self.features);
        put_u32(&mut b, off::VERSION, self.version);
        put_u64(&mut b, off::DATA_OFFSET, self.data_offset);
        put_u32(&mut b, off::TIMESTAMP, self.timestamp);
        b[28..32].copy_from_slice(&self.creator_app);
        put_u32(&mut b, off::CREATOR_VERSION, self.creator_version);
        put_u32(&mut b, off::CREATOR_OS, self.creator_os);
        put_u64(&mut b, off::ORIG_SIZE, self.orig_size);
        put_u64(&mut b, off::CURR_SIZE, self.curr_size);
        put_u32(&mut b, off::GEOMETRY, self.geometry.encode());
        put_u32(&mut b, off::DISK_TYPE, self.disk_type_raw);
        put_u32(&mut b, off::CHECKSUM, self.checksum);
        b[68..84].copy_from_slice(&self.uuid);
        b[off::SAVED] = self.saved;
        b[off::HIDDEN] = self.hidden;
        b[off::RESERVED..].copy_from_slice(&self.reserved);
        b
    }

    /// Recompute the checksum and encode.
    pub fn encode(&mut self) -> [u8; FOOTER_SIZE] {
        self.checksum = self.computed_checksum();
        self.encode_raw()
    }

    pub fn computed_checksum(&self) -> u32 {
        checksum(&self.encode_raw(), off::CHECKSUM)
    }

    pub fn disk_type(&self) -> Option<DiskType> {
        DiskType::from_u32(self.disk_type_raw)
    }

    pub fn is_dynamic_or_diff(&self) -> bool {
        matches!(
            self.disk_type(),
            Some(DiskType::Dynamic | DiskType::Differencing)
        )
    }

    pub fn creator_is_tap(&self) -> bool {
        self.creator_app[..3] == CREATOR_TAP[..3]
    }

    /// Early tapdisk (0.1, 1.1) set "hidden" without updating the checksum and only in
    /// the copy at offset 0; blktap reads and validates such files specially.
    pub fn is_old_tap(&self) -> bool {
        self.creator_is_tap()
            && (self.creator_version == version(0, 1) || self.creator_version == version(1, 1))
    }

    /// blktap's `vhd_validate_footer`: cookie and checksum (with the old-tap hidden
    /// exception). `None` when the footer is usable.
    pub fn problem(&self) -> Option<FooterProblem> {
        if &self.cookie != COOKIE && &self.cookie != POISON_COOKIE {
            return Some(FooterProblem::Cookie);
        }
        let computed = self.computed_checksum();
        if computed != self.checksum {
            if self.hidden != 0 && self.is_old_tap() {
                let mut f = self.clone();
                f.hidden = 0;
                if f.computed_checksum() == self.checksum {
                    return None;
                }
            }
            return Some(FooterProblem::Checksum { computed });
        }
        None
    }

    pub fn is_poisoned(&self) -> bool {
        &self.cookie == POISON_COOKIE
    }
}

/// Whether the primary footer and the copy at offset 0 say the same: byte for byte, or
/// differing only in the hidden flag of an early tapdisk file (0.1, 1.1), which set it
/// in the copy alone without updating the checksum. blktap tolerates that difference.
pub fn copies_agree(primary: &[u8; FOOTER_SIZE], copy: &[u8; FOOTER_SIZE]) -> bool {
    if primary == copy {
        return true;
    }
    let c = Footer::decode(copy);
    c.hidden != 0 && c.is_old_tap() && {
        let mut b = c.clone();
        b.hidden = 0;
        b.encode_raw() == *primary
    }
}

/// Why a footer cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterProblem {
    Cookie,
    Checksum { computed: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_the_spec_for_small_and_large_disks() {
        // 8 MiB: 16384 sectors -> spt 17, cth 963, heads 4, cylinders 240.
        let g = Geometry::for_size(8 << 20);
        assert_eq!((g.cylinders, g.heads, g.sectors), (240, 4, 17));
        // The cap: anything beyond 65535*16*255 sectors clamps to it.
        let g = Geometry::for_size(u64::MAX);
        assert_eq!((g.cylinders, g.heads, g.sectors), (65535, 16, 255));
        assert_eq!(Geometry::decode(g.encode()), g);
    }

    #[test]
    fn decode_encode_is_identity_and_checksum_covers_hidden() {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[85] = 1;
        b[300] = 0x5a;
        let mut f = Footer::decode(&b);
        let enc = f.encode();
        let mut f2 = Footer::decode(&enc);
        assert_eq!(f2.encode(), enc);
        assert_eq!(enc[300], 0x5a);
        let with_hidden = f2.checksum;
        f2.hidden = 0;
        assert_eq!(f2.computed_checksum(), with_hidden.wrapping_add(1));
    }
}
