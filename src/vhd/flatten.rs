//! One dynamic VHD holding a chain's whole content, made as a stream (`upload
//! --flatten`): what `vhd-util coalesce` leaves in the base once every child has been
//! merged into it, in the layout `vhd-util create` gives a new file — but laid out up
//! front and then emitted front to back, so that a tar header can promise its size
//! before a byte of data is read, and nothing is written anywhere.
//!
//! * [`Flat::plan`] looks at every layer's BAT (in memory since open) and the sector
//!   bitmaps of their allocated blocks. A sector is *present* when a read through the
//!   chain takes it from some layer (its bit set in a layer below every child's
//!   virtual size, or a fixed base). An output block is allocated when one of its
//!   sectors is present, and its bitmap is the union of the present sectors. That is
//!   what coalesce leaves: `vhd_util_coalesce_block` writes only the runs whose child
//!   bit is set, through `vhd_io_write`, which zero-fills a newly allocated block and
//!   sets the bits of the sectors written. So a sector absent from the whole chain
//!   stays zero with its bit clear, a block absent everywhere stays unallocated, and a
//!   block some child overwrote is sent once. The batmap marks the blocks whose bitmap
//!   is full, as libvhd's write path keeps it.
//! * [`Flat::reader`] emits the footer copy, header, BAT, batmap, then the allocated
//!   blocks in block order, each placed as blktap's `__vhd_io_allocate_block` places
//!   one (its data on a 4 KiB boundary), then the footer. Data is read through the
//!   chain (`Chain::read_at`, which reads zeros for absent sectors); each block's
//!   bitmap is computed again as the block is emitted and must be what the plan
//!   promised (the BAT and batmap are already out): a chain that changes under the
//!   reader fails the stream rather than producing a torn image.
//!
//! Identity: creator `tap` 1.3 and host OS 0 as every file we create, type dynamic,
//! 2 MiB blocks, the leaf's virtual size and geometry (the guest's disk, unchanged).
//! The UUID is a new one, not the leaf's: this is another file, and the leaf stays in
//! its SR under its own UUID — downloading the flattened image back into that SR would
//! otherwise put two VHDs with one UUID side by side, where a parent check by UUID
//! would take one for the other (qemu-img convert and vhd-util create make new UUIDs
//! for the same reason). It is derived from the layers' footers and mtimes (SHA-256,
//! RFC 9562 version 8) rather than random, and the timestamp is the newest layer's
//! mtime rather than the clock, so an unchanged chain flattens to the same bytes on
//! every attempt: the same checksum in the store, as a chain upload has.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use sha2::{Digest, Sha256};

use super::batmap::Batmap;
use super::chain::{Chain, Layer};
use super::create::{new_footer, Stamp, BAT_AT, HEADER_AT};
use super::footer::VHD_EPOCH;
use super::header::{Header, BLOCK_SIZE_2M};
use super::{DiskType, Result, Vhd, BAT_UNUSED, FOOTER_SIZE, HEADER_SIZE, MAX_VIRTUAL_SIZE};

const BLOCK: u64 = BLOCK_SIZE_2M as u64;
/// Sectors per output block.
const SPB: u64 = BLOCK / 512;
/// An output block's sector bitmap: one bit per sector, exactly one sector.
const BITMAP: usize = (SPB / 8) as usize;
const BITMAP_SECTORS: u64 = BITMAP as u64 / 512;
/// blktap starts a block's data (after its bitmap) on a 4 KiB boundary.
const ALIGN_SECTORS: u64 = 4096 / 512;

/// The layout of the flattened VHD, computed from the chain before any data is read.
#[derive(Debug)]
pub struct Flat {
    virtual_size: u64,
    /// Bytes 0 to the end of the batmap: footer copy, header, BAT, batmap header, map.
    meta: Vec<u8>,
    footer: [u8; FOOTER_SIZE],
    /// Sector of each output block's bitmap, or [`BAT_UNUSED`].
    bat: Vec<u32>,
    batmap: Batmap,
    allocated: u64,
    size: u64,
    uuid: [u8; 16],
}

/// The first sector at or after `s` where a block can start: its data, after the
/// bitmap, on a 4 KiB boundary.
fn block_start(s: u64) -> u64 {
    (s + BITMAP_SECTORS).next_multiple_of(ALIGN_SECTORS) - BITMAP_SECTORS
}

impl Flat {
    /// Lay out the flattened image of `chain` (leaf first).
    pub fn plan(chain: &Chain) -> Result<Flat> {
        let leaf = chain.leaf();
        let virtual_size = leaf.virtual_size();
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(leaf.invalid(
                "footer current size",
                virtual_size,
                format!(
                    "larger than a VHD can be ({MAX_VIRTUAL_SIZE} bytes): it cannot be flattened, upload the chain"
                ),
            ));
        }
        // Fits: MAX_VIRTUAL_SIZE / 2 MiB entries.
        let max_bat = virtual_size.div_ceil(BLOCK) as u32;
        let mut header = Header::new(BAT_AT, max_bat, BLOCK_SIZE_2M);
        let bat_bytes = header.bat_bytes();
        let mut batmap = Batmap::new(BAT_AT + bat_bytes, max_bat, virtual_size);
        let meta_end = batmap.map_end();
        let mut bat = vec![BAT_UNUSED; max_bat as usize];
        let mut next = block_start(meta_end / 512);
        let mut end = meta_end;
        let mut allocated = 0u64;
        let mut map = [0u8; BITMAP];
        for b in 0..max_bat as u64 {
            present(chain, b, &mut map)?;
            if map.iter().all(|&x| x == 0) {
                continue;
            }
            if map.iter().all(|&x| x == 0xff) {
                let m = batmap.map.as_mut().expect("a fresh batmap has its map");
                m[(b / 8) as usize] |= 0x80 >> (b % 8);
            }
            // Below 2040 GiB of blocks plus metadata every sector number fits.
            bat[b as usize] = u32::try_from(next).map_err(|_| {
                leaf.invalid(
                    "footer current size",
                    virtual_size,
                    "the flattened blocks would lie beyond what a BAT entry can address",
                )
            })?;
            end = (next + BITMAP_SECTORS + SPB) * 512;
            next = block_start(next + BITMAP_SECTORS + SPB);
            allocated += 1;
        }
        batmap.checksum = batmap
            .computed_checksum(virtual_size)
            .expect("a fresh map is large enough");
        let stamp = stamp(chain)?;
        let mut footer = new_footer(DiskType::Dynamic, virtual_size, &stamp);
        footer.geometry = leaf.footer.geometry;
        let uuid = footer.uuid;
        let footer = footer.encode();
        let mut meta = Vec::with_capacity(meta_end as usize);
        meta.extend_from_slice(&footer);
        debug_assert_eq!(meta.len() as u64, HEADER_AT);
        meta.extend_from_slice(&header.encode());
        debug_assert_eq!(meta.len() as u64, HEADER_AT + HEADER_SIZE as u64);
        debug_assert_eq!(meta.len() as u64, BAT_AT);
        for e in &bat {
            meta.extend_from_slice(&e.to_be_bytes());
        }
        // The padding after the last entry is zero, as blktap leaves it.
        meta.resize((BAT_AT + bat_bytes) as usize, 0);
        meta.extend_from_slice(&batmap.encode_header());
        meta.extend_from_slice(batmap.map.as_deref().expect("a fresh batmap has its map"));
        debug_assert_eq!(meta.len() as u64, meta_end);
        Ok(Flat {
            virtual_size,
            meta,
            footer,
            bat,
            batmap,
            allocated,
            size: end + FOOTER_SIZE as u64,
            uuid,
        })
    }

    /// The size of the flattened file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Blocks allocated in the flattened file.
    pub fn allocated_blocks(&self) -> u64 {
        self.allocated
    }

    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }

    /// The file's bytes, front to back, read through `chain` (the chain planned).
    pub fn reader<'a>(&'a self, chain: &'a Chain) -> FlatReader<'a> {
        FlatReader {
            flat: self,
            chain,
            buf: Vec::new(),
            at: 0,
            next_block: 0,
            emitted: 0,
            footer_sent: false,
        }
    }
}

/// A UUID and timestamp that depend only on the chain (see the module docs).
fn stamp(chain: &Chain) -> Result<Stamp> {
    let mut h = Sha256::new();
    h.update(b"glance-vhd flatten\0");
    let mut newest = 0i64;
    for layer in &chain.layers {
        let meta = match layer {
            Layer::Vhd(v) => {
                h.update(v.footer_raw);
                v.file().metadata()
            }
            Layer::Raw { file, size, .. } => {
                h.update(size.to_be_bytes());
                file.metadata()
            }
        }
        .map_err(|e| super::VhdError::io(layer.path(), "stat", e))?;
        h.update(meta.mtime().to_be_bytes());
        h.update(meta.mtime_nsec().to_be_bytes());
        newest = newest.max(meta.mtime());
    }
    let mut uuid: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
    // RFC 9562: version 8 (custom), variant 10.
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Ok(Stamp {
        uuid: Some(uuid),
        timestamp: Some((newest - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32),
    })
}

/// The sectors of output block `b` present in `chain` (see the module docs), as a
/// sector bitmap (sector i: bit `0x80 >> i % 8` of byte `i / 8`).
fn present(chain: &Chain, b: u64, map: &mut [u8; BITMAP]) -> Result<()> {
    map.fill(0);
    let first = b * SPB;
    let mut limit = u64::MAX;
    let mut layer_map = [0u8; BITMAP];
    for layer in &chain.layers {
        // A read stops at the first layer it is beyond (zeros): a layer counts only
        // below every virtual size down to it.
        limit = limit.min(layer.virtual_size());
        let below = limit.div_ceil(512).saturating_sub(first).min(SPB);
        if below == 0 {
            break;
        }
        match layer {
            Layer::Raw { .. } => layer_map.fill(0xff),
            Layer::Vhd(v) if v.disk_type() == DiskType::Fixed => layer_map.fill(0xff),
            Layer::Vhd(v) => layer_bits(v, b, &mut layer_map)?,
        }
        for s in below..SPB {
            layer_map[(s / 8) as usize] &= !(0x80 >> (s % 8));
        }
        for (m, l) in map.iter_mut().zip(&layer_map) {
            *m |= l;
        }
    }
    Ok(())
}

/// The layer blocks of a dynamic or differencing `v` that output block `b` covers
/// (2 MiB over blocks of at most 2 MiB, a power of two: whole blocks), with their
/// bitmap's offset, skipping BAT entries past the virtual size (blktap reads only the
/// entries in use).
fn layer_blocks(v: &Vhd, b: u64) -> impl Iterator<Item = Result<(u64, u64)>> + '_ {
    let bs = v.header().expect("dynamic disk").block_size as u64;
    let per_output = BLOCK / bs;
    let used = v.used_bat_entries() as u64;
    (0..per_output).filter_map(move |k| {
        let lb = b * per_output + k;
        if lb >= used {
            return None;
        }
        match v.block_data_offset(lb) {
            Ok(None) => None,
            Ok(Some((bitmap_at, _))) => Some(Ok((k, bitmap_at))),
            Err(e) => Some(Err(e)),
        }
    })
}

/// The sectors of output block `b` that `v` (dynamic or differencing) holds.
fn layer_bits(v: &Vhd, b: u64, out: &mut [u8; BITMAP]) -> Result<()> {
    out.fill(0);
    let per = v.header().expect("dynamic disk").block_size as u64 / 512;
    for r in layer_blocks(v, b) {
        let (k, bitmap_at) = r?;
        let bm = v.read_bitmap(bitmap_at)?;
        let base = k * per;
        if per % 8 == 0 {
            let at = (base / 8) as usize;
            let n = (per / 8) as usize;
            out[at..at + n].copy_from_slice(&bm[..n]);
        } else {
            for i in 0..per {
                if bm[(i / 8) as usize] & (0x80 >> (i % 8)) != 0 {
                    let s = base + i;
                    out[(s / 8) as usize] |= 0x80 >> (s % 8);
                }
            }
        }
    }
    Ok(())
}

/// Tell the kernel the bytes of output block `b` are read and will not be again:
/// streaming a multi-GiB chain out of dom0 should not evict everything else (as
/// `stream::DropBehind` does for a chain upload). Advice only: errors are ignored.
fn drop_behind(chain: &Chain, b: u64) {
    for layer in &chain.layers {
        let Layer::Vhd(v) = layer else { continue };
        if v.disk_type() == DiskType::Fixed {
            let _ = posix_fadvise(
                v.file(),
                (b * BLOCK) as i64,
                BLOCK as i64,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            continue;
        }
        let h = v.header().expect("dynamic disk");
        let span = h.bitmap_bytes() + h.block_size as u64;
        for (_, bitmap_at) in layer_blocks(v, b).flatten() {
            let _ = posix_fadvise(
                v.file(),
                bitmap_at as i64,
                span as i64,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// The flattened file as a byte stream ([`Flat::reader`]).
pub struct FlatReader<'a> {
    flat: &'a Flat,
    chain: &'a Chain,
    /// The piece being handed out (metadata, one block with the gap before it, or the
    /// footer), and how much of it is out.
    buf: Vec<u8>,
    at: usize,
    /// The next BAT index to look at.
    next_block: usize,
    /// File offset at the end of the pieces made so far.
    emitted: u64,
    footer_sent: bool,
}

impl FlatReader<'_> {
    /// Make the next piece; an empty one at the end.
    fn refill(&mut self) -> io::Result<()> {
        self.at = 0;
        self.buf.clear();
        if self.emitted == 0 {
            self.buf.extend_from_slice(&self.flat.meta);
        } else if let Some(b) =
            (self.next_block..self.flat.bat.len()).find(|&b| self.flat.bat[b] != BAT_UNUSED)
        {
            self.next_block = b + 1;
            self.block(b as u64)?;
        } else if !self.footer_sent {
            self.footer_sent = true;
            self.buf.extend_from_slice(&self.flat.footer);
        }
        self.emitted += self.buf.len() as u64;
        Ok(())
    }

    /// Output block `b`: the gap before it, its bitmap and its data.
    fn block(&mut self, b: u64) -> io::Result<()> {
        let start = self.flat.bat[b as usize] as u64 * 512;
        let gap = (start - self.emitted) as usize;
        self.buf.resize(gap + BITMAP + BLOCK as usize, 0);
        let mut map = [0u8; BITMAP];
        present(self.chain, b, &mut map).map_err(io::Error::other)?;
        let full = map.iter().all(|&x| x == 0xff);
        if map.iter().all(|&x| x == 0) || full != self.flat.batmap.is_full(b as usize) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: block {b} of the chain changed while it was being flattened (its sectors are not those the BAT and batmap already sent promised): the upload is abandoned rather than sent torn",
                    self.chain.leaf().path.display()
                ),
            ));
        }
        self.buf[gap..gap + BITMAP].copy_from_slice(&map);
        let pos = b * BLOCK;
        let n = (self.flat.virtual_size - pos).min(BLOCK) as usize;
        let data = &mut self.buf[gap + BITMAP..gap + BITMAP + n];
        self.chain.read_at(pos, data).map_err(io::Error::other)?;
        drop_behind(self.chain, b);
        Ok(())
    }
}

impl Read for FlatReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.at == self.buf.len() {
            self.refill()?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::test_samples::unpack_as;
    use crate::vhd::OpenMode;
    use std::path::Path;

    fn flatten_into(leaf: &Path, out: &Path) -> Flat {
        let chain = Chain::open(leaf).unwrap();
        let flat = Flat::plan(&chain).unwrap();
        let mut bytes = Vec::new();
        flat.reader(&chain).read_to_end(&mut bytes).unwrap();
        assert_eq!(
            bytes.len() as u64,
            flat.size(),
            "the size promised up front"
        );
        std::fs::write(out, &bytes).unwrap();
        flat
    }

    fn content(path: &Path) -> Vec<u8> {
        let chain = Chain::open(path).unwrap();
        let mut v = vec![0u8; chain.virtual_size() as usize];
        chain.read_at(0, &mut v).unwrap();
        v
    }

    #[test]
    fn the_tap_chain_flattens_to_one_valid_dynamic_disk_with_its_content() {
        let d = tempfile::tempdir().unwrap();
        for n in ["parent.vhd", "child.vhd", "grandchild.vhd"] {
            unpack_as(d.path(), n, n);
        }
        let leaf = d.path().join("grandchild.vhd");
        let out = d.path().join("flat.vhd");
        let flat = flatten_into(&leaf, &out);
        // Blocks 0-3 are each present somewhere: 4 blocks, against 3 + 3 + 1 in the chain.
        assert_eq!(flat.allocated_blocks(), 4);
        let v = Vhd::open(&out, OpenMode::READ).unwrap();
        assert_eq!(v.disk_type(), DiskType::Dynamic);
        assert_eq!(v.virtual_size(), 8 << 20);
        assert_ne!(v.uuid(), Vhd::open(&leaf, OpenMode::READ).unwrap().uuid());
        // Placed as blktap places blocks (the parent's were at 7, 4111, 8215).
        assert_eq!(v.bat, vec![7, 4111, 8215, 12319]);
        assert_eq!(
            crate::vhd::check::check(&out, Default::default()).unwrap(),
            None,
            "vhd check"
        );
        assert_eq!(content(&out), content(&leaf));
        // Block 2 is full (the child wrote all of it): the batmap says so. Block 0
        // holds only the parent's first MiB and the child's 4 KiB inside it.
        assert!(v.batmap.as_ref().unwrap().is_full(2));
        assert!(!v.batmap.as_ref().unwrap().is_full(0));
        let bm = v.read_bitmap(7 * 512).unwrap();
        assert!(bm[..256].iter().all(|&x| x == 0xff), "[0, 1 MiB) present");
        assert!(bm[256..].iter().all(|&x| x == 0), "[1, 2 MiB) absent");
        // Deterministic: the same chain gives the same bytes.
        let again = d.path().join("again.vhd");
        flatten_into(&leaf, &again);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn blocks_absent_from_the_whole_chain_stay_unallocated() {
        let d = tempfile::tempdir().unwrap();
        unpack_as(d.path(), "parent2.vhd", "parent2.vhd");
        let leaf = unpack_as(d.path(), "empty-child-relinked.vhd", "e.vhd");
        let out = d.path().join("flat.vhd");
        let flat = flatten_into(&leaf, &out);
        assert_eq!(flat.allocated_blocks(), 2);
        let v = Vhd::open(&out, OpenMode::READ).unwrap();
        assert_eq!(v.bat, vec![7, BAT_UNUSED, BAT_UNUSED, 4111]);
        assert_eq!(content(&out), content(&leaf));
        // parent2 wrote [6M, 6M+4K) in block 3: 8 sectors, nothing else of the block.
        let bm = v.read_bitmap(4111 * 512).unwrap();
        assert_eq!(bm[0], 0xff);
        assert!(bm[1..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_chain_that_changes_under_the_reader_fails_the_stream() {
        let d = tempfile::tempdir().unwrap();
        unpack_as(d.path(), "parent2.vhd", "parent2.vhd");
        let leaf = unpack_as(d.path(), "empty-child-relinked.vhd", "e.vhd");
        let chain = Chain::open(&leaf).unwrap();
        let flat = Flat::plan(&chain).unwrap();
        // parent2's block 0 bitmap cleared after the plan: the block promised is gone.
        let p = d.path().join("parent2.vhd");
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 512], 7 * 512).unwrap();
        let err = flat
            .reader(&chain)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("changed while"), "{err}");
    }
}
