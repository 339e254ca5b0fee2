//! The mutants: every footer and header field (locators, BAT, batmap too) of a file,
//! changed one at a time, each with what `check` must say of it.

use super::*;

// ---------------------------------------------------------------------------------------
// Mutants.

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Expect {
    Valid,
    Invalid,
    /// Defensible either way (blktap's rules and ours may differ); only robustness and
    /// the error rules are checked.
    Either,
}
pub(super) use Expect::{Either, Invalid, Valid};

/// One corrupted version of a file: byte patches over the original.
pub(super) struct Mutant {
    pub(super) what: String,
    pub(super) patches: Vec<(u64, Vec<u8>)>,
    pub(super) expect: Expect,
}

/// A field change: offset inside the structure, new bytes, what `check` must say once
/// the checksum is recomputed.
pub(super) struct Change {
    pub(super) field: String,
    pub(super) at: usize,
    pub(super) bytes: Vec<u8>,
    pub(super) expect: Expect,
}

pub(super) fn ch(
    field: impl Into<String>,
    at: usize,
    bytes: impl Into<Vec<u8>>,
    expect: Expect,
) -> Change {
    Change {
        field: field.into(),
        at,
        bytes: bytes.into(),
        expect,
    }
}

pub(super) fn u32b(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(super) fn u64b(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Fixed,
    Dynamic,
    Differencing,
}

/// Every named footer field (vhd-format.md §2), with a few bad (and a few harmless)
/// values each. The first value of each field is also tried with a stale checksum.
pub(super) fn footer_changes(kind: Kind, footer: &[u8], file_size: u64) -> Vec<Change> {
    let primary_at = file_size - 512;
    let curr = be64(footer, 48);
    let dynamic = kind != Kind::Fixed;
    // A fixed disk's data offset must be all ones; a dynamic one's must point at the
    // header.
    let mut v = vec![
        ch("cookie", 0, *b"conectiy", Invalid),
        ch("cookie", 0, [0u8; 8], Invalid),
        ch("cookie", 0, *b"v_poison", Invalid),
        ch("features", 8, u32b(0), Invalid),
        ch("features", 8, u32b(3), Valid), // reserved + temporary
        ch("features", 8, u32b(1), Invalid),
        ch("features", 8, u32b(u32::MAX), Invalid),
        ch("file format version", 12, u32b(0), Invalid),
        ch("file format version", 12, u32b(0x0002_0000), Invalid),
        ch("data offset", 16, u64b(0), Invalid),
        ch("data offset", 16, u64b(511), Invalid),
        ch("data offset", 16, u64b(1 << 62), Invalid),
        ch("data offset", 16, u64b(primary_at), Invalid),
        ch("data offset", 16, u64b(file_size), Invalid),
        ch("timestamp", 24, u32b(u32::MAX), Invalid), // in the future
        ch("timestamp", 24, u32b(0), Valid),
        ch("creator application", 28, *b"xxxx", Valid),
        ch("creator application", 28, [0u8; 4], Valid),
        ch("creator version", 32, u32b(u32::MAX), Either),
        ch("creator version", 32, u32b(0x0000_0001), Either), // tap 0.1 rules
        ch("creator version", 32, u32b(0x0001_0001), Either), // tap 1.1 rules
        ch("creator host OS", 36, u32b(u32::MAX), Valid),
        ch("original size", 40, u64b(u64::MAX), Valid),
        ch("original size", 40, u64b(0), Valid),
        ch("current size", 48, u64b(0), Invalid),
        ch("current size", 48, u64b(u64::MAX), Invalid),
        ch("current size", 48, u64b(1 << 40), Invalid),
        ch("current size", 48, u64b(1 << 62), Invalid),
        ch("current size", 48, u64b(511), Invalid),
        ch("current size", 48, u64b(curr + (4 << 20)), Invalid),
        ch("current size", 48, u64b(curr - 512), Either),
        ch("current size", 48, u64b(curr + 512), Either),
        ch("geometry", 56, u32b(u32::MAX), Invalid),
        ch("geometry", 56, u32b(0), Valid),
        ch("disk type", 60, u32b(0), Invalid),
        ch("disk type", 60, u32b(1), Invalid),
        ch("disk type", 60, u32b(5), Invalid),
        ch("disk type", 60, u32b(u32::MAX), Invalid),
        ch("checksum", 64, u32b(be32(footer, 64) ^ 1), Invalid),
        ch("unique id", 68, [0u8; 16], Invalid),
        ch("unique id", 68, [0xffu8; 16], Valid),
        ch("saved state", 84, [2u8], Invalid),
        ch("saved state", 84, [1u8], Valid),
        ch("hidden", 85, [2u8], Invalid),
        ch("hidden", 85, [0xffu8], Invalid),
        ch("hidden", 85, [1u8], Valid),
        ch("reserved", 86, [1u8], Invalid),
        ch("reserved", 511, [0xffu8], Invalid),
    ];
    if dynamic {
        v.push(ch("data offset", 16, u64b(u64::MAX), Invalid));
        v.push(ch("data offset", 16, u64b(1536), Invalid)); // the BAT
        v.push(ch("disk type", 60, u32b(2), Invalid)); // fixed with a data offset
    } else {
        v.push(ch("data offset", 16, u64b(512), Invalid));
        v.push(ch("disk type", 60, u32b(3), Invalid));
        v.push(ch("disk type", 60, u32b(4), Invalid));
    }
    match kind {
        Kind::Differencing => v.push(ch("disk type", 60, u32b(3), Invalid)),
        Kind::Dynamic => v.push(ch("disk type", 60, u32b(4), Invalid)),
        Kind::Fixed => {}
    }
    v
}

/// Every named dynamic-header field (§3), every field of the locator entries (§3.2).
pub(super) fn header_changes(kind: Kind, header: &[u8], file_size: u64) -> Vec<Change> {
    let primary_at = file_size - 512;
    let diff = kind == Kind::Differencing;
    let if_diff = |d: Expect, other: Expect| if diff { d } else { other };
    let mut v = vec![
        ch("cookie", 0, *b"cxsparsf", Invalid),
        ch("cookie", 0, [0u8; 8], Invalid),
        ch("data offset", 8, u64b(0), Invalid),
        ch("data offset", 8, u64b(1536), Invalid),
        ch("table offset", 16, u64b(0), Invalid),
        ch("table offset", 16, u64b(1), Invalid),
        ch("table offset", 16, u64b(512), Invalid), // the header itself
        ch("table offset", 16, u64b(2048), Invalid), // the batmap header
        ch("table offset", 16, u64b(primary_at - 512), Invalid),
        ch("table offset", 16, u64b(primary_at), Invalid),
        ch("table offset", 16, u64b(file_size), Invalid), // at EOF
        ch("table offset", 16, u64b(u64::MAX), Invalid),
        ch("table offset", 16, u64b(u64::MAX - 511), Invalid),
        ch("header version", 24, u32b(0), Invalid),
        ch("header version", 24, u32b(0x0001_0001), Invalid),
        ch("max table entries", 28, u32b(0), Invalid),
        ch("max table entries", 28, u32b(3), Invalid),
        ch("max table entries", 28, u32b(5), Valid), // the zero padding of the BAT
        ch("max table entries", 28, u32b(129), Invalid), // the batmap moves
        ch("max table entries", 28, u32b(0x10000), Invalid),
        ch(
            "max table entries",
            28,
            u32b(((primary_at - 1536) / 4) as u32),
            Invalid,
        ),
        ch("max table entries", 28, u32b(1 << 22), Invalid),
        ch("max table entries", 28, u32b((1 << 22) + 1), Invalid),
        ch("max table entries", 28, u32b(u32::MAX), Invalid),
        ch("block size", 32, u32b(0), Invalid),
        ch("block size", 32, u32b(3), Invalid),
        ch("block size", 32, u32b(1 << 31), Invalid),
        ch("block size", 32, u32b(512), Invalid),
        ch("block size", 32, u32b(1 << 20), Invalid),
        ch("block size", 32, u32b(4 << 20), Invalid),
        ch("block size", 32, u32b(u32::MAX), Invalid),
        ch("checksum", 36, u32b(be32(header, 36) ^ 1), Invalid),
        ch("parent unique id", 40, [0xffu8; 16], Invalid),
        // Null: a raw parent for blktap (the locators still lead to a file).
        ch("parent unique id", 40, [0u8; 16], if_diff(Either, Valid)),
        ch("parent time stamp", 56, u32b(u32::MAX), Invalid),
        ch("parent time stamp", 56, u32b(1), if_diff(Valid, Invalid)),
        ch("reserved", 60, u32b(1), Invalid),
        ch("parent unicode name", 64, [0u8, b'x'], Invalid),
        ch("parent unicode name", 64, [0xd8u8, 0x00], Invalid), // lone surrogate
        ch("parent unicode name", 64, [0x00u8, 0xe9], Invalid), // non-ASCII
        ch("parent unicode name", 64, vec![0xffu8; 512], Invalid),
        ch(
            "parent unicode name",
            575,
            [0x41u8],
            if_diff(Either, Invalid),
        ),
        ch("reserved", 768, [1u8], Invalid),
        ch("reserved", 1023, [0xffu8], Invalid),
    ];
    if diff {
        v.push(ch("parent unicode name", 64, vec![0u8; 512], Invalid));
    }
    let macx = 0x4D61_6358u32;
    for slot in 0..8usize {
        let at = 576 + 24 * slot;
        let used = be32(header, at) != 0;
        let name = |f: &str| format!("locator {slot} {f}");
        v.push(ch(name("platform code"), at, u32b(0xDEAD_BEEF), Invalid));
        if used {
            // Wi2r is a known (deprecated) code that is not a path: blktap skips such a
            // slot as long as another one leads to the parent.
            v.push(ch(name("platform code"), at, u32b(0x5769_3272), Either));
            v.push(ch(name("platform code"), at, u32b(0), Invalid));
            if slot > 0 {
                v.push(ch(name("platform code"), at, u32b(macx), Invalid)); // duplicate
            }
        } else {
            v.push(ch(name("platform code"), at, u32b(0x5769_3272), Invalid)); // Wi2r
            v.push(ch(name("platform code"), at, u32b(macx), Invalid));
        }
        // Every field of the few slots tried in full (the used ones, one empty in the
        // middle and the last).
        if !(used || slot == 3 || slot == 7) {
            continue;
        }
        v.push(ch(name("data space"), at + 4, u32b(513), Invalid));
        v.push(ch(name("data space"), at + 4, u32b(u32::MAX), Invalid));
        v.push(ch(name("data space"), at + 4, u32b(65536), Invalid)); // runs into block 0
        v.push(ch(name("data length"), at + 8, u32b(u32::MAX), Invalid));
        v.push(ch(name("data length"), at + 8, u32b(513), Invalid));
        v.push(ch(name("reserved"), at + 12, u32b(1), Invalid));
        v.push(ch(name("data offset"), at + 16, u64b(u64::MAX), Invalid));
        v.push(ch(name("data offset"), at + 16, u64b(file_size), Invalid));
        v.push(ch(name("data offset"), at + 16, u64b(primary_at), Invalid));
        v.push(ch(name("data offset"), at + 16, u64b(512), Invalid)); // the header
        v.push(ch(name("data offset"), at + 16, u64b(1), Invalid));
        if used {
            v.push(ch(name("data space"), at + 4, u32b(0), Invalid));
            v.push(ch(name("data space"), at + 4, u32b(1), Valid)); // 1 sector = 512 B
            v.push(ch(name("data length"), at + 8, u32b(0), Invalid));
            v.push(ch(name("data length"), at + 8, u32b(1), Invalid));
            v.push(ch(name("data offset"), at + 16, u64b(0), Invalid));
        } else {
            v.push(ch(name("data space"), at + 4, u32b(1), Invalid));
            v.push(ch(name("data length"), at + 8, u32b(1), Invalid));
        }
    }
    v
}

/// Footer mutants: each change in the primary, in the copy at 0 and in both (dynamic and
/// differencing disks), with the checksum recomputed; the first value of each field
/// also with the checksum left stale.
pub(super) fn footer_mutants(kind: Kind, data: &[u8]) -> Vec<Mutant> {
    let size = data.len() as u64;
    let primary_at = (size - 512) as usize;
    let primary = &data[primary_at..];
    let locations: &[(&str, &[u64])] = if kind == Kind::Fixed {
        &[("primary footer", &[1])]
    } else {
        &[
            ("primary footer", &[1]),
            ("footer copy at 0", &[0]),
            ("both footers", &[0, 1]),
        ]
    };
    let mut out = Vec::new();
    let mut seen_field = std::collections::HashSet::new();
    for c in footer_changes(kind, primary, size) {
        let first = seen_field.insert(c.field.clone());
        for stale in [false, true] {
            if stale && !first && c.field != "checksum" {
                continue;
            }
            if !stale && c.field == "checksum" {
                continue; // recomputing would undo it
            }
            for (loc, which) in locations {
                let mut f = primary.to_vec();
                f[c.at..c.at + c.bytes.len()].copy_from_slice(&c.bytes);
                if !stale {
                    fix_checksum(&mut f, 64);
                }
                if f == primary {
                    continue;
                }
                // A stale checksum, or two copies that differ, is invalid whatever the
                // field holds.
                let expect = if !checksum_ok(&f, 64) || (which.len() == 1 && kind != Kind::Fixed) {
                    Invalid
                } else {
                    c.expect
                };
                let patches = which
                    .iter()
                    .map(|&w| (if w == 0 { 0 } else { primary_at as u64 }, f.clone()))
                    .collect();
                out.push(Mutant {
                    what: format!(
                        "{loc}: {} ({}) = {:02x?}{}",
                        c.field,
                        c.at,
                        c.bytes.iter().take(16).collect::<Vec<_>>(),
                        if stale { ", checksum stale" } else { "" }
                    ),
                    patches,
                    expect,
                });
            }
        }
    }
    out
}

pub(super) fn header_mutants(kind: Kind, data: &[u8]) -> Vec<Mutant> {
    let size = data.len() as u64;
    let hat = be64(&data[data.len() - 512..], 16) as usize;
    let header = &data[hat..hat + 1024];
    let mut out = Vec::new();
    let mut seen_field = std::collections::HashSet::new();
    for c in header_changes(kind, header, size) {
        let first = seen_field.insert(c.field.clone());
        for stale in [false, true] {
            if (stale && !first && c.field != "checksum") || (!stale && c.field == "checksum") {
                continue;
            }
            let mut h = header.to_vec();
            h[c.at..c.at + c.bytes.len()].copy_from_slice(&c.bytes);
            if !stale {
                fix_checksum(&mut h, 36);
            }
            if h == header {
                continue;
            }
            let expect = if checksum_ok(&h, 36) {
                c.expect
            } else {
                Invalid
            };
            out.push(Mutant {
                what: format!(
                    "header: {} ({}) = {:02x?}{}",
                    c.field,
                    c.at,
                    c.bytes.iter().take(16).collect::<Vec<_>>(),
                    if stale { ", checksum stale" } else { "" }
                ),
                patches: vec![(hat as u64, h)],
                expect,
            });
        }
    }
    out
}

/// BAT entries out of the file, into the metadata, overlapping; the batmap broken.
pub(super) fn bat_and_batmap_mutants(data: &[u8]) -> Vec<Mutant> {
    let size = data.len() as u64;
    let primary_at = size - 512;
    let bat_at = 1536usize;
    let bat: Vec<u32> = (0..4).map(|i| be32(data, bat_at + 4 * i)).collect();
    let used: Vec<usize> = (0..4).filter(|&i| bat[i] != u32::MAX).collect();
    let free: Vec<usize> = (0..4).filter(|&i| bat[i] == u32::MAX).collect();
    let (a, b) = (used[0], used[1]);
    let entry = |i: usize, v: u32, what: &str, expect: Expect| Mutant {
        what: format!("BAT[{i}] = {v:#x} ({what})"),
        patches: vec![((bat_at + 4 * i) as u64, u32b(v))],
        expect,
    };
    let mut v = vec![
        entry(a, 0x7FFF_FFFF, "past EOF", Invalid),
        entry(a, (size / 512) as u32, "at EOF", Invalid),
        entry(a, (primary_at / 512) as u32, "the primary footer", Invalid),
        entry(
            a,
            ((primary_at - 512) / 512) as u32,
            "runs into the footer",
            Invalid,
        ),
        entry(a, 0, "the footer copy", Invalid),
        entry(a, 1, "the header", Invalid),
        entry(a, 3, "the BAT", Invalid),
        entry(a, 5, "the batmap", Invalid),
        entry(a, 0xFFFF_FFFE, "almost unused", Invalid),
        entry(b, bat[a], "same block as another", Invalid),
        entry(b, bat[a] + 1, "overlaps another block", Invalid),
        entry(b, bat[a] + 2048, "starts inside another block", Invalid),
    ];
    for &f in &free {
        v.push(entry(f, bat[a], "an unused entry sharing a block", Invalid));
        v.push(entry(f, 0x7FFF_FFFF, "an unused entry past EOF", Invalid));
    }
    // Batmap header at 2048, map at 2560.
    let bm = 2048u64;
    let patch = |at: u64, bytes: Vec<u8>, what: &str, expect: Expect| Mutant {
        what: format!("batmap: {what}"),
        patches: vec![(at, bytes)],
        expect,
    };
    v.extend([
        patch(bm, b"tdbatmaq".to_vec(), "cookie", Invalid),
        patch(bm + 8, u64b(0), "offset 0", Invalid),
        patch(bm + 8, u64b(1 << 62), "offset huge", Invalid),
        patch(bm + 8, u64b(2561), "offset unaligned", Invalid),
        patch(bm + 8, u64b(primary_at), "map at the footer", Invalid),
        patch(bm + 16, u32b(0), "size 0", Invalid),
        patch(bm + 16, u32b(u32::MAX), "size huge", Invalid),
        patch(bm + 20, u32b(0x0001_0003), "version 1.3", Invalid),
        patch(
            bm + 24,
            u32b(be32(data, bm as usize + 24) ^ 1),
            "checksum",
            Invalid,
        ),
        patch(
            2560,
            vec![data[2560] ^ 0x01],
            "map bit, checksum stale",
            Invalid,
        ),
    ]);
    // A full-block bit for an unallocated block, with the map checksum recomputed.
    if let Some(&f) = free.first() {
        let mut map = data[2560..3072].to_vec();
        map[f / 8] |= 0x80 >> (f % 8);
        let sum = map.iter().fold(0u32, |a, &x| a.wrapping_add(x as u32));
        v.push(Mutant {
            what: format!("batmap: unallocated block {f} marked full"),
            patches: vec![(2560, map), (bm + 24, u32b(!sum))],
            expect: Invalid,
        });
    }
    v
}
