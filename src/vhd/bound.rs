//! How large a VHD file can legitimately be, from its first bytes — so an image import
//! can refuse a tar member whose declared size its own metadata contradicts before
//! writing it (a gzip bomb: a few KiB of valid-looking header in front of gigabytes of
//! one repeated byte, ≈1000:1 after gzip).
//!
//! A dynamic or differencing disk starts with a copy of its footer (offset 0), and that
//! footer names the dynamic header (normally at 512), which names the BAT (normally at
//! 1536): all in the first KiBs. From them the end of the file is fixed: blktap's
//! `vhd_end_of_data` (the end of the header, BAT, batmap, parent locator areas and of
//! every block a used BAT entry points to) plus the 512-byte primary footer — exactly
//! [`super::Vhd::end_of_data`] + 512 once the file is whole. The bound is computed the
//! same way, from the same fields, so a file that opens has a size within it.
//!
//! Room between the end of data and the primary footer ("slack") is allowed, up to
//! [`MAX_SLACK`]. The format puts the primary footer in the last 512 bytes and `vhd-util
//! check` only asks that blocks stop before it. blktap's own footer writes
//! (`vhd_write_footer`: every block allocation, `set hidden`) put it right at the end of
//! data and truncate a regular file after it, and qemu appends it after its last block,
//! but Windows rounds the file up to 4 KiB: the Windows-made sample
//! `dfvfs/fat-differential.vhd` has 3584 zero bytes (7 sectors) of slack. We do not know
//! every writer's rounding unit, but none should be larger than the unit a dynamic disk
//! grows by, one block; so one block of the largest size opened (2 MiB and its bitmap).
//! More slack than that is refused: unbounded slack *is* the bomb (any number of bytes
//! in front of a valid footer). What one member can still waste is `MAX_SLACK`, and at
//! most 16 members make an image.
//!
//! The bound is as tight as the file's own offsets, no tighter: a header whose BAT or
//! locators point near the top of the range (one entry of `0xfffffffe`) allows a file
//! of that size, and filler up to it is then limited only by the SR's free space (zero
//! filler costs nothing: holes). Requiring densely packed blocks would catch that, but
//! the format does not, and a legitimate file may have gaps.
//!
//! What cannot be bounded is said so ([`SizeBound::Unbounded`]): a first sector that is
//! not a valid dynamic/differencing footer copy is a fixed disk (its only footer is at
//! the end, after the data) or not a VHD at all, and is checked whole after writing.
//! The same holds when the header or the BAT lie beyond [`MAX_PREFIX`]: no tool puts
//! them there, but the format does not forbid it, so it is not refused. Everything this
//! module refuses is a rule [`super::Vhd::open`] enforces on the whole file too.
//!
//! Memory: the caller holds the prefix; this module asks for at most [`MAX_PREFIX`]
//! bytes of it (the header, the used BAT entries, the batmap header), and reads the BAT
//! in place without copying it.

use std::path::Path;

use super::bytes::{be_u32, be_u64};
use super::footer::{Footer, FOOTER_SIZE};
use super::header::{self, Header, HEADER_SIZE};
use super::{batmap, Result, VhdError, BAT_UNUSED, MAX_BAT_ENTRIES};

/// The most of a file's first bytes [`size_bound`] asks for: a BAT of the largest size
/// opened ([`MAX_BAT_ENTRIES`] entries, 16 MiB) with its batmap header, starting within
/// the first 16 MiB. blktap and qemu put the header at 512 and the BAT at 1536, Windows
/// the BAT at a few KiB after its parent locators; a real prefix is a few KiB.
pub const MAX_PREFIX: usize = 32 << 20;

/// Bytes accepted between the end of data and the primary footer (see the module docs):
/// one 2 MiB block with its one-sector bitmap, the unit a dynamic disk grows by.
pub const MAX_SLACK: u64 = header::BLOCK_SIZE_2M as u64 + 512;

/// What the first bytes of a file say about its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeBound {
    /// Ask again with (at least) the first this many bytes; never over [`MAX_PREFIX`].
    /// A file shorter than that cannot be bounded this way (and is that short anyway).
    Need(usize),
    /// A dynamic or differencing disk: the file is at most this many bytes (its end of
    /// data, [`MAX_SLACK`] and the footer).
    AtMost(u64),
    /// A fixed disk or not a VHD (no valid dynamic footer copy at offset 0), or metadata
    /// further out than [`MAX_PREFIX`]: the whole file is needed to judge it.
    Unbounded,
}

/// The largest size the file starting with `prefix` can have (see the module docs).
/// Errors are the rules of [`super::Vhd::open`] the prefix already breaks, naming
/// `name`, the field and the value.
pub fn size_bound(name: &Path, prefix: &[u8]) -> Result<SizeBound> {
    let Some(raw) = prefix.first_chunk::<FOOTER_SIZE>() else {
        return Ok(SizeBound::Need(FOOTER_SIZE));
    };
    let footer = Footer::decode(raw);
    if footer.problem().is_some() || !footer.is_dynamic_or_diff() {
        return Ok(SizeBound::Unbounded);
    }
    let bad = |field: &'static str, value: String, rule: &str| {
        Err(VhdError::invalid(name, field, value, rule))
    };
    // The dynamic header, by `Vhd::open`'s rules (`read_header`), in its order.
    let at = footer.data_offset;
    if at % 512 != 0 || at < FOOTER_SIZE as u64 {
        return bad(
            "footer data offset",
            at.to_string(),
            "the dynamic header must lie sector-aligned after the footer copy",
        );
    }
    let Some(header_end) = at
        .checked_add(HEADER_SIZE as u64)
        .and_then(|e| usize::try_from(e).ok())
        .filter(|&e| e <= MAX_PREFIX)
    else {
        return Ok(SizeBound::Unbounded);
    };
    let Some(hraw) = prefix
        .get(header_end - HEADER_SIZE..header_end)
        .and_then(|b| b.first_chunk::<HEADER_SIZE>())
    else {
        return Ok(SizeBound::Need(header_end));
    };
    let h = Header::decode(hraw);
    if let Some((field, value, rule)) = super::header_problem(&h) {
        return bad(field, value, &rule);
    }
    // The BAT, by `read_bat`'s rules.
    if h.max_bat > MAX_BAT_ENTRIES {
        return bad(
            "header max table entries",
            h.max_bat.to_string(),
            &format!("more than {MAX_BAT_ENTRIES} BAT entries"),
        );
    }
    if h.table_offset == 0 {
        return bad(
            "header table offset",
            "0".into(),
            "the BAT cannot be at offset 0",
        );
    }
    let block_size = h.block_size as u64;
    if footer.curr_size / block_size > h.max_bat as u64 {
        return bad(
            "footer current size",
            footer.curr_size.to_string(),
            &format!(
                "more than the {} BAT entries of {block_size}-byte blocks hold",
                h.max_bat
            ),
        );
    }
    // Only the entries that cover the virtual size count (blktap reads only those, and
    // `end_of_data` looks at no others): at most `max_bat`, so at most 16 MiB.
    let used = footer.curr_size.div_ceil(block_size).min(h.max_bat as u64);
    // The batmap header follows the whole BAT; blktap expects one from tap ≥ 1.1.
    let batmap_at = h.table_offset.checked_add(h.bat_bytes());
    let want_batmap =
        footer.creator_is_tap() && footer.creator_version > super::footer::version(0, 1);
    let need = if want_batmap {
        batmap_at.and_then(|b| b.checked_add(batmap::HEADER_SIZE as u64))
    } else {
        h.table_offset.checked_add(used * 4)
    };
    let Some(need) = need
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_PREFIX)
    else {
        return Ok(SizeBound::Unbounded);
    };
    if prefix.len() < need {
        return Ok(SizeBound::Need(need.max(header_end)));
    }
    // `need` fits in usize, so do the table bounds below it.
    let table = h.table_offset as usize;
    let bat = &prefix[table..table + used as usize * 4];
    // blktap `vhd_end_of_headers`: header, whole BAT, batmap, locator areas.
    let mut end = at + HEADER_SIZE as u64;
    end = end.max(h.table_offset.saturating_add(h.bat_bytes()));
    if let (true, Some(bm_at)) = (want_batmap, batmap_at) {
        let raw = &prefix[bm_at as usize..bm_at as usize + batmap::HEADER_SIZE];
        if &raw[..8] == batmap::COOKIE {
            let offset = be_u64(raw, batmap::off::OFFSET);
            let size = be_u32(raw, batmap::off::SIZE);
            end = end.max(bm_at + batmap::HEADER_SIZE as u64);
            end = end.max(offset.saturating_add(size as u64 * 512));
        }
    }
    for l in h.locators.iter().filter(|l| l.code != header::code::NONE) {
        end = end.max(l.data_offset.saturating_add(l.space_bytes()));
    }
    // blktap `vhd_end_of_data`: and the end of every allocated block.
    let span = h.bitmap_bytes() + block_size;
    for e in bat.chunks_exact(4).map(|c| be_u32(c, 0)) {
        if e != BAT_UNUSED {
            end = end.max((e as u64 * 512).saturating_add(span));
        }
    }
    // Then the slack some writers leave and the primary footer. A hostile offset can put
    // `end` anywhere: the bound is no tighter than the file's own structures say, but it
    // never wraps.
    Ok(SizeBound::AtMost(
        end.saturating_add(MAX_SLACK + FOOTER_SIZE as u64),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{OpenMode, Vhd};
    use super::*;
    use std::io::Read;

    /// Every sample (blktap, qemu, Windows-made), unpacked: (name, bytes).
    fn samples() -> Vec<(String, Vec<u8>)> {
        let dir = super::super::test_samples::samples_dir();
        let mut v = Vec::new();
        for sub in ["tap-chain", "qemu-parent", "dfvfs"] {
            for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".gz") else {
                    continue;
                };
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(std::fs::File::open(e.path()).unwrap())
                    .read_to_end(&mut out)
                    .unwrap();
                v.push((format!("{sub}/{stem}"), out));
            }
        }
        assert!(v.len() >= 10, "{} samples", v.len());
        v
    }

    /// As an import calls it: the first bytes, more as asked, until it decides.
    fn bound_of(bytes: &[u8]) -> Result<SizeBound> {
        let name = Path::new("t.vhd");
        let mut have = 0;
        loop {
            match size_bound(name, &bytes[..have])? {
                SizeBound::Need(n) => {
                    assert!(n > have && n <= MAX_PREFIX, "asked {n} with {have}");
                    if n > bytes.len() {
                        return Ok(SizeBound::Need(n));
                    }
                    have = n;
                }
                other => return Ok(other),
            }
        }
    }

    #[test]
    fn every_sample_is_within_its_bound_and_the_bound_is_its_end_of_data() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in samples() {
            let path = dir.path().join("s.vhd");
            std::fs::write(&path, &bytes).unwrap();
            let got = bound_of(&bytes);
            // dfvfs' hand-edited image*.vhd have bad checksums: no VHD reader opens them.
            let Ok(vhd) = Vhd::open(&path, OpenMode::READ) else {
                continue;
            };
            let got = got.unwrap();
            if vhd.header().is_none() {
                assert_eq!(got, SizeBound::Unbounded, "{name}");
                continue;
            }
            // The bound is what the whole file says, plus the slack allowed.
            let end = vhd.end_of_data();
            assert_eq!(got, SizeBound::AtMost(end + MAX_SLACK + 512), "{name}");
            let slack = bytes.len() as u64 - 512 - end;
            // blktap and qemu leave none; Windows rounds up to 4 KiB.
            if name.starts_with("dfvfs/fat") {
                assert_eq!(slack, 3584, "{name}");
            } else {
                assert_eq!(slack, 0, "{name}");
            }
        }
    }

    #[test]
    fn a_fixed_disk_or_a_non_vhd_is_unbounded() {
        let raw = vec![0x5au8; 4096];
        assert_eq!(bound_of(&raw).unwrap(), SizeBound::Unbounded);
        // A fixed disk's data may hold anything at offset 0, even a footer of type fixed.
        let (_, child) = samples()
            .into_iter()
            .find(|(n, _)| n == "tap-chain/child.vhd")
            .unwrap();
        let mut f = Footer::decode(child[..512].try_into().unwrap());
        f.disk_type_raw = 2;
        f.data_offset = u64::MAX;
        let mut fixed = f.encode().to_vec();
        fixed.resize(4096, 0);
        assert_eq!(bound_of(&fixed).unwrap(), SizeBound::Unbounded);
        assert_eq!(
            size_bound(Path::new("x"), &[]).unwrap(),
            SizeBound::Need(512)
        );
    }

    #[test]
    fn truncated_and_mutated_prefixes_give_answers_or_errors_never_panics() {
        // One sample of each writer: blktap, qemu, Windows.
        let writers = [
            "tap-chain/child.vhd",
            "qemu-parent/qemu-parent.vhd",
            "dfvfs/fat-differential.vhd",
        ];
        for (name, bytes) in samples()
            .into_iter()
            .filter(|(n, _)| writers.contains(&n.as_str()))
        {
            let head = &bytes[..bytes.len().min(8192)];
            for cut in 0..head.len() {
                let _ = size_bound(Path::new(&name), &head[..cut]);
            }
            // Every byte of footer copy, header and the first BAT sector, flipped (with
            // the checksums left stale and then fixed, to reach past them).
            for i in 0..head.len().min(2048) {
                let mut m = head.to_vec();
                m[i] ^= 0xff;
                let _ = bound_of(&m);
                let mut h = Header::decode(m[512..1536].try_into().unwrap());
                m[512..1536].copy_from_slice(&h.encode());
                let _ = bound_of(&m);
            }
        }
        // All ones and all zeros at every size up to two sectors past the header.
        for fill in [0u8, 0xff] {
            for n in 0..2048 {
                let _ = size_bound(Path::new("x"), &vec![fill; n]);
            }
        }
    }

    /// A dynamic disk's first 1536 bytes + BAT, with `edit` applied to the header.
    fn dynamic_with(edit: impl Fn(&mut Header, &mut Footer)) -> Vec<u8> {
        let mut f = Footer::decode(&[0; 512]);
        f.cookie = *super::super::footer::COOKIE;
        f.features = 2;
        f.version = super::super::footer::FILE_FORMAT_VERSION;
        f.data_offset = 512;
        f.curr_size = 8 << 20;
        f.disk_type_raw = 3;
        let mut h = Header::new(1536, 4, header::BLOCK_SIZE_2M);
        edit(&mut h, &mut f);
        let mut v = f.encode().to_vec();
        v.extend_from_slice(&h.encode());
        v.resize(1536 + 512, 0xff);
        v
    }

    #[test]
    fn the_bound_is_the_end_of_the_last_referenced_structure_plus_the_footer() {
        // Nothing allocated: header, BAT sector, footer.
        let empty = dynamic_with(|_, _| {});
        let tail = MAX_SLACK + 512;
        assert_eq!(bound_of(&empty).unwrap(), SizeBound::AtMost(2048 + tail));
        // Block 2 at sector 100: its bitmap (512) and 2 MiB of data.
        let mut one = empty.clone();
        one[1536 + 8..1536 + 12].copy_from_slice(&100u32.to_be_bytes());
        let end = 100 * 512 + 512 + (2 << 20);
        assert_eq!(bound_of(&one).unwrap(), SizeBound::AtMost(end + tail));
        // An entry past the virtual size (8 MiB = 4 blocks of 4) counts nowhere, as in
        // blktap; a locator area further out than the block does.
        let bigger = dynamic_with(|h, f| {
            h.max_bat = 8;
            f.disk_type_raw = 4;
            h.locators[0] = header::Locator {
                code: header::code::MACX,
                data_space: 1,
                data_len: 10,
                reserved: 0,
                data_offset: 10 << 20,
            };
        });
        let mut b = bigger.clone();
        b[1536 + 20..1536 + 24].copy_from_slice(&100_000u32.to_be_bytes());
        assert_eq!(
            bound_of(&b).unwrap(),
            SizeBound::AtMost((10 << 20) + 512 + tail)
        );
    }

    #[test]
    fn rules_the_first_bytes_break_are_errors_naming_the_field() {
        let field = |r: Result<SizeBound>| match r {
            Err(VhdError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut m = dynamic_with(|_, _| {});
        m[512] = b'X';
        assert_eq!(field(bound_of(&m)), "header cookie");
        let m = dynamic_with(|h, _| h.block_size = 3 << 20);
        assert_eq!(field(bound_of(&m)), "header block size");
        let m = dynamic_with(|h, _| h.max_bat = MAX_BAT_ENTRIES + 1);
        assert_eq!(field(bound_of(&m)), "header max table entries");
        let m = dynamic_with(|_, f| f.curr_size = 1 << 40);
        assert_eq!(field(bound_of(&m)), "footer current size");
        let m = dynamic_with(|h, _| h.table_offset = 0);
        assert_eq!(field(bound_of(&m)), "header table offset");
        let mut m = dynamic_with(|_, _| {});
        m[600] ^= 1;
        assert_eq!(field(bound_of(&m)), "header checksum");
        // A BAT further out than any tool puts it cannot be bounded from the first bytes.
        let m = dynamic_with(|h, _| h.table_offset = 1 << 40);
        assert_eq!(bound_of(&m).unwrap(), SizeBound::Unbounded);
        let m = dynamic_with(|_, f| f.data_offset = u64::MAX - 511);
        assert_eq!(bound_of(&m).unwrap(), SizeBound::Unbounded);
    }
}
