//! The 1024-byte dynamic disk header and its eight parent locator entries
//! (vhd-format.md §3, §3.2).

use super::bytes::{be_u32, be_u64, checksum, put_u32, put_u64};

pub const HEADER_SIZE: usize = 1024;
pub const COOKIE: &[u8; 8] = b"cxsparse";
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// blktap's one block size, and the largest it opens.
pub const BLOCK_SIZE_2M: u32 = 2 << 20;
pub const LOCATOR_SLOTS: usize = 8;
pub const PARENT_NAME_SIZE: usize = 512;

pub mod off {
    pub const COOKIE: usize = 0;
    pub const DATA_OFFSET: usize = 8;
    pub const TABLE_OFFSET: usize = 16;
    pub const VERSION: usize = 24;
    pub const MAX_BAT: usize = 28;
    pub const BLOCK_SIZE: usize = 32;
    pub const CHECKSUM: usize = 36;
    pub const PARENT_UUID: usize = 40;
    pub const PARENT_TIMESTAMP: usize = 56;
    pub const RESERVED1: usize = 60;
    pub const PARENT_NAME: usize = 64;
    pub const LOCATORS: usize = 576;
    pub const LOCATOR_SIZE: usize = 24;
    pub const RESERVED2: usize = 768;
}

/// Platform codes of parent locators.
pub mod code {
    pub const NONE: u32 = 0;
    pub const WI2R: u32 = 0x5769_3272;
    pub const WI2K: u32 = 0x5769_326B;
    pub const W2RU: u32 = 0x5732_7275;
    pub const W2KU: u32 = 0x5732_6B75;
    pub const MAC: u32 = 0x4D61_6320;
    pub const MACX: u32 = 0x4D61_6358;

    /// Every code blktap's `vhd_validate_platform_code` accepts.
    pub fn is_known(c: u32) -> bool {
        matches!(c, NONE | WI2R | WI2K | W2RU | W2KU | MAC | MACX)
    }

    /// The codes whose data blktap can read and rewrite (paths).
    pub fn is_path(c: u32) -> bool {
        matches!(c, W2RU | W2KU | MACX)
    }

    pub fn name(c: u32) -> String {
        match c {
            NONE => "none".into(),
            _ => {
                let b = c.to_be_bytes();
                if b.iter().all(|x| x.is_ascii_graphic() || *x == b' ') {
                    String::from_utf8_lossy(&b).into_owned()
                } else {
                    format!("{c:#010x}")
                }
            }
        }
    }
}

/// One parent locator entry (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Locator {
    pub code: u32,
    pub data_space: u32,
    pub data_len: u32,
    pub reserved: u32,
    pub data_offset: u64,
}

impl Locator {
    /// Room for the data in bytes, by blktap's rule (`vhd_parent_locator_size`): the MS
    /// spec says sectors, Windows and blktap write bytes. Below 512 it is sectors; a
    /// multiple of 512 is bytes; anything else is invalid (0).
    pub fn space_bytes(&self) -> u64 {
        let s = self.data_space as u64;
        if s < 512 {
            s * 512
        } else if s % 512 == 0 {
            s
        } else {
            0
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Locator::default()
    }

    fn decode(b: &[u8]) -> Locator {
        Locator {
            code: be_u32(b, 0),
            data_space: be_u32(b, 4),
            data_len: be_u32(b, 8),
            reserved: be_u32(b, 12),
            data_offset: be_u64(b, 16),
        }
    }

    fn encode(&self, b: &mut [u8]) {
        put_u32(b, 0, self.code);
        put_u32(b, 4, self.data_space);
        put_u32(b, 8, self.data_len);
        put_u32(b, 12, self.reserved);
        put_u64(b, 16, self.data_offset);
    }
}

/// The decoded dynamic header. `raw` keeps the bytes read so that reserved areas are
/// written back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub raw: [u8; HEADER_SIZE],
    pub data_offset: u64,
    pub table_offset: u64,
    pub version: u32,
    pub max_bat: u32,
    pub block_size: u32,
    pub checksum: u32,
    pub parent_uuid: [u8; 16],
    pub parent_timestamp: u32,
    pub parent_name: [u8; PARENT_NAME_SIZE],
    pub locators: [Locator; LOCATOR_SLOTS],
}

impl Header {
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        let mut locators = [Locator::default(); LOCATOR_SLOTS];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = off::LOCATORS + i * off::LOCATOR_SIZE;
            *l = Locator::decode(&b[at..at + off::LOCATOR_SIZE]);
        }
        Header {
            raw: *b,
            data_offset: be_u64(b, off::DATA_OFFSET),
            table_offset: be_u64(b, off::TABLE_OFFSET),
            version: be_u32(b, off::VERSION),
            max_bat: be_u32(b, off::MAX_BAT),
            block_size: be_u32(b, off::BLOCK_SIZE),
            checksum: be_u32(b, off::CHECKSUM),
            parent_uuid: b[40..56].try_into().expect("16 bytes"),
            parent_timestamp: be_u32(b, off::PARENT_TIMESTAMP),
            parent_name: b[64..576].try_into().expect("512 bytes"),
            locators,
        }
    }

    pub fn cookie(&self) -> &[u8] {
        &self.raw[..8]
    }

    /// Encode every field over the bytes read, with the stored checksum as is.
    pub fn encode_raw(&self) -> [u8; HEADER_SIZE] {
        let mut b = self.raw;
        put_u64(&mut b, off::DATA_OFFSET, self.data_offset);
        put_u64(&mut b, off::TABLE_OFFSET, self.table_offset);
        put_u32(&mut b, off::VERSION, self.version);
        put_u32(&mut b, off::MAX_BAT, self.max_bat);
        put_u32(&mut b, off::BLOCK_SIZE, self.block_size);
        put_u32(&mut b, off::CHECKSUM, self.checksum);
        b[40..56].copy_from_slice(&self.parent_uuid);
        put_u32(&mut b, off::PARENT_TIMESTAMP, self.parent_timestamp);
        b[64..576].copy_from_slice(&self.parent_name);
        for (i, l) in self.locators.iter().enumerate() {
            let at = off::LOCATORS + i * off::LOCATOR_SIZE;
            l.encode(&mut b[at..at + off::LOCATOR_SIZE]);
        }
        b
    }

    /// Recompute the checksum and encode.
    pub fn encode(&mut self) -> [u8; HEADER_SIZE] {
        self.checksum = self.computed_checksum();
        let b = self.encode_raw();
        self.raw = b;
        b
    }

    pub fn computed_checksum(&self) -> u32 {
        checksum(&self.encode_raw(), off::CHECKSUM)
    }

    /// A blank header as blktap initialises one (`vhd_initialize_header`).
    pub fn new(table_offset: u64, max_bat: u32, block_size: u32) -> Header {
        let mut raw = [0u8; HEADER_SIZE];
        raw[..8].copy_from_slice(COOKIE);
        let mut h = Header::decode(&raw);
        h.data_offset = u64::MAX;
        h.table_offset = table_offset;
        h.version = HEADER_VERSION;
        h.max_bat = max_bat;
        h.block_size = block_size;
        h
    }

    /// Bytes of the BAT area on disk: `max_bat` u32 entries padded to a sector.
    pub fn bat_bytes(&self) -> u64 {
        (self.max_bat as u64 * 4).div_ceil(512) * 512
    }

    /// Bytes of a block's sector bitmap: one bit per sector, padded to a sector.
    pub fn bitmap_bytes(&self) -> u64 {
        (self.block_size as u64 / 512).div_ceil(8).div_ceil(512) * 512
    }

    pub fn reserved_is_zero(&self) -> bool {
        self.raw[off::RESERVED1..off::RESERVED1 + 4] == [0; 4]
            && self.raw[off::RESERVED2..].iter().all(|&b| b == 0)
    }

    /// The parent's unicode name as blktap decodes it (`vhd_header_decode_parent`): all
    /// 512 bytes must be ASCII in UTF-16BE (even after the first NUL, where the name
    /// ends); `\` becomes `/` and a leading `C:` is dropped. `None` when it does not
    /// decode.
    pub fn parent_name_ascii(&self) -> Option<String> {
        let all_ascii = self
            .parent_name
            .chunks_exact(2)
            .all(|c| u16::from_be_bytes([c[0], c[1]]) < 0x80);
        if !all_ascii {
            return None;
        }
        let s = decode_utf16(&self.parent_name, u16::from_be_bytes)?.replace('\\', "/");
        Some(
            match s.strip_prefix("C:").or_else(|| s.strip_prefix("c:")) {
                Some(rest) => rest.to_string(),
                None => s,
            },
        )
    }

    /// The parent name as any reader would show it (non-ASCII allowed).
    pub fn parent_name_lossy(&self) -> String {
        decode_utf16(&self.parent_name, u16::from_be_bytes)
            .unwrap_or_else(|| "<undecodable>".to_string())
    }
}

/// Decode UTF-16 code units up to the first NUL.
pub fn decode_utf16(b: &[u8], unit: fn([u8; 2]) -> u16) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| unit([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_space_rule() {
        let l = |s| Locator {
            data_space: s,
            ..Default::default()
        };
        assert_eq!(l(1).space_bytes(), 512);
        assert_eq!(l(511).space_bytes(), 511 * 512);
        assert_eq!(l(512).space_bytes(), 512);
        assert_eq!(l(4096).space_bytes(), 4096);
        assert_eq!(l(65536).space_bytes(), 65536);
        assert_eq!(l(513).space_bytes(), 0);
    }

    #[test]
    fn header_roundtrip_keeps_reserved_bytes() {
        let mut h = Header::new(1536, 4, BLOCK_SIZE_2M);
        h.raw[900] = 7;
        let b = h.encode();
        let h2 = Header::decode(&b);
        assert_eq!(h2.encode_raw(), b);
        assert_eq!(b[900], 7);
        assert_eq!(h2.checksum, h2.computed_checksum());
        assert_eq!(h2.bat_bytes(), 512);
        assert_eq!(h2.bitmap_bytes(), 512);
    }
}
