//! Hostile input: every footer field, every dynamic-header field (locator entries, BAT,
//! batmap too) of real files corrupted one at a time, with the checksum left stale and
//! with it recomputed so the deeper rules are reached; truncated and tiny files; relinks
//! that must be refused before anything is written.
//!
//! For each file `vhd check`, `vhd info`, `vhd query -n F -vsfpda` and `vhd read F -` must
//! end on their own within a few seconds, without a panic or a signal. `check` must call
//! an invalid file invalid and say why (and a valid one valid, with `info`, `query` and
//! `read` then working); `info` and `read` errors must name the file.

use crate::helpers;
use crate::helpers::{samples_dir, stderr};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// "A few seconds": the healthy files take milliseconds.
const DEADLINE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------
// Running the binary under a deadline.

struct Outcome {
    args: Vec<String>,
    code: Option<i32>,
    stdout: Vec<u8>,
    /// Bytes written to stdout (only the first 64 KiB are kept).
    stdout_len: u64,
    stderr: String,
}

impl Outcome {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run the binary in `cwd`; fail the test if it runs past the deadline (it is killed).
fn run_limited(cwd: &Path, args: &[&str]) -> Outcome {
    let mut child = Command::new(helpers::bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glance-vhd");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let (mut kept, mut total, mut buf) = (Vec::new(), 0u64, vec![0u8; 1 << 16]);
        while let Ok(n) = so.read(&mut buf) {
            if n == 0 {
                break;
            }
            if kept.len() < 1 << 16 {
                kept.extend_from_slice(&buf[..n.min((1 << 16) - kept.len())]);
            }
            total += n as u64;
        }
        (kept, total)
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "glance-vhd {args:?} in {} still running after {DEADLINE:?}",
                cwd.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let (stdout, stdout_len) = out.join().unwrap();
    let stderr = err.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.signal().is_none(),
        "glance-vhd {args:?} killed by signal {:?}: {stderr}",
        status.signal()
    );
    let o = Outcome {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code(),
        stdout,
        stdout_len,
        stderr,
    };
    assert!(
        !o.stderr.contains("panicked") && o.code != Some(101),
        "glance-vhd {:?} panicked (exit {:?}): {}",
        o.args,
        o.code,
        o.stderr
    );
    o
}

// ---------------------------------------------------------------------------------------
// Files and checksums.

/// Unpack the named tap-chain samples into `dir` (gunzip(1): the in-process inflate is
/// unoptimised in test builds).
fn unpack(dir: &Path, names: &[&str]) {
    for n in names {
        helpers::gunzip(
            &samples_dir().join("tap-chain").join(format!("{n}.gz")),
            &dir.join(n),
        );
    }
}

/// A fixed disk made by qemu-img (4 MiB of patterned data, CHS-rounded).
fn make_fixed(dir: &Path, name: &str) {
    let mut raw = vec![0u8; 4 << 20];
    raw[..4096].fill(0x11);
    let n = raw.len();
    raw[n - 4096..].fill(0x22);
    let rp = dir.join(format!("{name}.raw"));
    std::fs::write(&rp, &raw).unwrap();
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
        .arg(&rp)
        .arg(dir.join(name))
        .output()
        .expect("qemu-img is installed (make setup)");
    assert!(o.status.success(), "qemu-img: {}", stderr(&o));
    std::fs::remove_file(rp).unwrap();
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The VHD checksum: NOT of the byte sum, the checksum's own 4 bytes counted as zero.
fn fix_checksum(b: &mut [u8], at: usize) {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |a, (_, &v)| a.wrapping_add(v as u32));
    b[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

fn checksum_ok(b: &[u8], at: usize) -> bool {
    let mut c = b.to_vec();
    fix_checksum(&mut c, at);
    c == b
}

// ---------------------------------------------------------------------------------------
// Mutants.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Valid,
    Invalid,
    /// Defensible either way (blktap's rules and ours may differ); only robustness and
    /// the error rules are checked.
    Either,
}
use Expect::{Either, Invalid, Valid};

/// One corrupted version of a file: byte patches over the original.
struct Mutant {
    what: String,
    patches: Vec<(u64, Vec<u8>)>,
    expect: Expect,
}

/// A field change: offset inside the structure, new bytes, what `check` must say once
/// the checksum is recomputed.
struct Change {
    field: String,
    at: usize,
    bytes: Vec<u8>,
    expect: Expect,
}

fn ch(field: impl Into<String>, at: usize, bytes: impl Into<Vec<u8>>, expect: Expect) -> Change {
    Change {
        field: field.into(),
        at,
        bytes: bytes.into(),
        expect,
    }
}

fn u32b(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn u64b(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fixed,
    Dynamic,
    Differencing,
}

/// Every named footer field (vhd-format.md §2), with a few bad (and a few harmless)
/// values each. The first value of each field is also tried with a stale checksum.
fn footer_changes(kind: Kind, footer: &[u8], file_size: u64) -> Vec<Change> {
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
fn header_changes(kind: Kind, header: &[u8], file_size: u64) -> Vec<Change> {
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
fn footer_mutants(kind: Kind, data: &[u8]) -> Vec<Mutant> {
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

fn header_mutants(kind: Kind, data: &[u8]) -> Vec<Mutant> {
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
fn bat_and_batmap_mutants(data: &[u8]) -> Vec<Mutant> {
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

// ---------------------------------------------------------------------------------------
// The four commands and what they must do.

/// Run check, info, query and read on `name` in `dir` and hold them to the rules. With
/// `through`, also read that child (whose parent `name` is) through the damaged file.
fn verify(dir: &Path, name: &str, what: &str, expect: Expect, through: Option<&str>) {
    let ctx = format!("{name} with {what}");
    let check = run_limited(dir, &["vhd", "check", name]);
    let text = check.out();
    let valid = match check.code {
        Some(0) => {
            assert_eq!(text, format!("{name} is valid\n"), "{ctx}: check");
            true
        }
        Some(22) => {
            let prefix = format!("{name} is invalid: ");
            assert!(
                text.starts_with(&prefix) && text.trim_end().len() > prefix.len() + 3,
                "{ctx}: check must say what is invalid, said {text:?} / {}",
                check.stderr
            );
            false
        }
        c => panic!("{ctx}: check exited {c:?}: {text:?} {}", check.stderr),
    };
    match expect {
        Valid => assert!(valid, "{ctx}: check calls a valid file invalid: {text}"),
        Invalid => assert!(!valid, "{ctx}: check calls an invalid file valid"),
        Either => {}
    }

    let info = run_limited(dir, &["vhd", "info", "--json", name]);
    let vsize = match info.code {
        Some(0) => {
            let v: serde_json::Value = serde_json::from_slice(&info.stdout)
                .unwrap_or_else(|e| panic!("{ctx}: info --json is not JSON: {e}"));
            v["virtual_size"].as_u64()
        }
        Some(3 | 4) => {
            assert!(
                info.stderr.contains(name),
                "{ctx}: info error does not name the file: {}",
                info.stderr
            );
            None
        }
        c => panic!("{ctx}: info exited {c:?}: {}", info.stderr),
    };

    let query = run_limited(dir, &["vhd", "query", "-n", name, "-vsfpda"]);
    let q = query.out();
    if q.starts_with("error opening") {
        assert!(
            q.starts_with(&format!("error opening {name}: -")),
            "{ctx}: query: {q}"
        );
        assert_ne!(query.code, Some(0), "{ctx}: query failed with exit 0");
    } else {
        let lines: Vec<&str> = q.lines().collect();
        assert!(
            lines.len() >= 5,
            "{ctx}: query printed {q:?}: {}",
            query.stderr
        );
        assert!(lines[0].parse::<u64>().is_ok(), "{ctx}: query -v: {q:?}");
        assert!(lines[1].parse::<u64>().is_ok(), "{ctx}: query -s: {q:?}");
    }

    let read = run_limited(dir, &["vhd", "read", name, "-"]);
    match read.code {
        Some(0) => {
            if let Some(vs) = vsize {
                assert_eq!(read.stdout_len, vs, "{ctx}: read length vs virtual size");
            }
        }
        Some(3 | 4) => assert!(
            read.stderr.contains(name),
            "{ctx}: read error does not name the file: {}",
            read.stderr
        ),
        c => panic!("{ctx}: read exited {c:?}: {}", read.stderr),
    }

    if valid {
        for o in [&info, &query, &read] {
            assert_eq!(
                o.code,
                Some(0),
                "{ctx}: check says valid but {:?} fails: {} {}",
                o.args,
                o.out(),
                o.stderr
            );
        }
    }

    if let Some(child) = through {
        let r = run_limited(dir, &["vhd", "read", child, "-"]);
        match r.code {
            Some(0) => assert_eq!(r.stdout_len, 8 << 20, "{ctx}: read {child}"),
            Some(3 | 4) => assert!(
                r.stderr.contains(name),
                "{ctx}: read {child}: the error does not name {name}: {}",
                r.stderr
            ),
            c => panic!("{ctx}: read {child} exited {c:?}: {}", r.stderr),
        }
        let c = run_limited(dir, &["vhd", "check", "-p", child]);
        assert!(
            matches!(c.code, Some(0 | 22)),
            "{ctx}: check -p {child}: {:?} {}",
            c.code,
            c.stderr
        );
        if !valid {
            assert_eq!(
                c.code,
                Some(22),
                "{ctx}: check -p {child} passes a bad parent"
            );
        }
    }
}

/// Apply each mutant to `dir/name` in place, verify, restore. Every mutant is tried;
/// the failures are reported together at the end.
fn run_mutants(dir: &Path, name: &str, mutants: &[Mutant], through: Option<&str>) {
    let path = dir.join(name);
    let orig = std::fs::read(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut failures = Vec::new();
    for m in mutants {
        for (at, bytes) in &m.patches {
            f.write_all_at(bytes, *at).unwrap();
        }
        let r = std::panic::catch_unwind(|| verify(dir, name, &m.what, m.expect, through));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{}] {msg}", m.what));
        }
        for (at, bytes) in &m.patches {
            let at = *at as usize;
            f.write_all_at(&orig[at..at + bytes.len()], at as u64)
                .unwrap();
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), orig, "restored");
    eprintln!("{} mutants of {name} tried", mutants.len());
    assert!(
        failures.is_empty(),
        "{} of {} mutants of {name} failed:\n{}",
        failures.len(),
        mutants.len(),
        failures.join("\n")
    );
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    unpack(&p, &["parent.vhd", "child.vhd"]);
    // The pristine files pass, and read as before.
    verify(&p, "child.vhd", "nothing changed", Valid, None);
    verify(
        &p,
        "parent.vhd",
        "nothing changed",
        Valid,
        Some("child.vhd"),
    );
    (d, p)
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn every_footer_field_of_a_differencing_disk() {
    let (_d, dir) = setup();
    let data = std::fs::read(dir.join("child.vhd")).unwrap();
    let m = footer_mutants(Kind::Differencing, &data);
    assert!(m.len() > 150, "{} mutants", m.len());
    run_mutants(&dir, "child.vhd", &m, None);
}

#[test]
fn every_footer_field_of_a_dynamic_disk_read_directly_and_as_a_parent() {
    let (_d, dir) = setup();
    let data = std::fs::read(dir.join("parent.vhd")).unwrap();
    let m = footer_mutants(Kind::Dynamic, &data);
    assert!(m.len() > 150, "{} mutants", m.len());
    run_mutants(&dir, "parent.vhd", &m, Some("child.vhd"));
}

#[test]
fn every_footer_field_of_a_fixed_disk() {
    let d = tempfile::tempdir().unwrap();
    make_fixed(d.path(), "fixed.vhd");
    verify(d.path(), "fixed.vhd", "nothing changed", Valid, None);
    let data = std::fs::read(d.path().join("fixed.vhd")).unwrap();
    let m = footer_mutants(Kind::Fixed, &data);
    assert!(m.len() > 50, "{} mutants", m.len());
    run_mutants(d.path(), "fixed.vhd", &m, None);
}

#[test]
fn every_header_and_locator_field_of_a_differencing_disk() {
    let (_d, dir) = setup();
    let data = std::fs::read(dir.join("child.vhd")).unwrap();
    let m = header_mutants(Kind::Differencing, &data);
    assert!(m.len() > 100, "{} mutants", m.len());
    run_mutants(&dir, "child.vhd", &m, None);
}

#[test]
fn every_header_field_of_a_dynamic_disk_read_directly_and_as_a_parent() {
    let (_d, dir) = setup();
    let data = std::fs::read(dir.join("parent.vhd")).unwrap();
    let m = header_mutants(Kind::Dynamic, &data);
    assert!(m.len() > 100, "{} mutants", m.len());
    run_mutants(&dir, "parent.vhd", &m, Some("child.vhd"));
}

#[test]
fn bat_entries_and_batmap_of_both_disks() {
    let (_d, dir) = setup();
    let child = std::fs::read(dir.join("child.vhd")).unwrap();
    run_mutants(&dir, "child.vhd", &bat_and_batmap_mutants(&child), None);
    let parent = std::fs::read(dir.join("parent.vhd")).unwrap();
    run_mutants(
        &dir,
        "parent.vhd",
        &bat_and_batmap_mutants(&parent),
        Some("child.vhd"),
    );
}

#[test]
fn truncated_and_tiny_files() {
    let (_d, dir) = setup();
    let data = std::fs::read(dir.join("child.vhd")).unwrap();
    let size = data.len();
    // The metadata region ends where block 0's bitmap starts (BAT[0] sectors).
    let first_block = 512 * be32(&data, 1536) as usize;
    assert_eq!(first_block, 7680);
    let mut cuts: Vec<usize> = (0..=first_block).step_by(512).collect();
    cuts.extend([
        100,
        511,
        513,
        first_block + 512,
        first_block + 512 + 4096,
        1 << 20,
        (2 << 20) + first_block,
        4 << 20,
        size - 1024,
        size - 513,
        size - 512,
        size - 511, // a 511-byte "footer" made of data
    ]);
    for cut in cuts {
        let name = format!("cut-{cut}.vhd");
        std::fs::write(dir.join(&name), &data[..cut]).unwrap();
        verify(
            &dir,
            &name,
            &format!("only {cut} of {size} bytes"),
            Invalid,
            None,
        );
        std::fs::remove_file(dir.join(&name)).unwrap();
    }
    // The last byte gone: blktap reads a 511-byte footer (the real one, its last
    // reserved byte missing), so this one may pass.
    let name = "short-footer.vhd";
    std::fs::write(dir.join(name), &data[..size - 1]).unwrap();
    verify(&dir, name, "a 511-byte footer", Either, None);
    // Grown by a byte: the footer is no longer at the end.
    let mut grown = data.clone();
    grown.push(0);
    std::fs::write(dir.join("grown.vhd"), &grown).unwrap();
    verify(&dir, "grown.vhd", "one byte appended", Invalid, None);
    // The parent truncated under an intact child.
    let parent = std::fs::read(dir.join("parent.vhd")).unwrap();
    for cut in [0, 100, 512, 1536, 3072, 1 << 20, parent.len() - 512] {
        std::fs::write(dir.join("parent.vhd"), &parent[..cut]).unwrap();
        verify(
            &dir,
            "parent.vhd",
            &format!("only {cut} bytes"),
            Invalid,
            Some("child.vhd"),
        );
    }
    std::fs::write(dir.join("parent.vhd"), &parent).unwrap();
    // Empty and tiny files: every command fails, naming the file.
    for (name, bytes) in [("empty.vhd", vec![]), ("tiny.vhd", vec![0x42u8; 100])] {
        std::fs::write(dir.join(name), &bytes).unwrap();
        verify(&dir, name, "no VHD at all", Invalid, None);
        for args in [
            vec!["vhd", "info", name],
            vec!["vhd", "read", name, "-"],
            vec!["vhd", "query", "-n", name, "-v"],
        ] {
            let o = run_limited(&dir, &args);
            assert_ne!(
                o.code,
                Some(0),
                "{args:?} accepted a {}-byte file",
                bytes.len()
            );
            assert!(
                o.stderr.contains(name),
                "{args:?}: error does not name the file: {}",
                o.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Relinks refused before anything is written.

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn set_parent_with_a_path_too_long_for_the_locator_slots_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd", "child.vhd"]);
    // ./<200 a>/<200 b>/p.vhd: 410 characters. MacX (file://...) still fits its 512-byte
    // slot; the UTF-16 W2ku/W2ru copies (820 bytes) do not. blktap wrote slot 0 before
    // finding that out; we must refuse before writing anything.
    let deep = dir.join("a".repeat(200)).join("b".repeat(200));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(dir.join("parent.vhd"), deep.join("p.vhd")).unwrap();
    let before = sha(&dir.join("child.vhd"));
    let mtime = std::fs::metadata(dir.join("child.vhd"))
        .unwrap()
        .modified()
        .unwrap();
    let rel = format!("{}/{}/p.vhd", "a".repeat(200), "b".repeat(200));
    let o = run_limited(dir, &["vhd", "set-parent", "child.vhd", &rel]);
    assert_eq!(o.code, Some(3), "refused as invalid input: {}", o.stderr);
    assert!(o.stderr.contains("child.vhd"), "{}", o.stderr);
    assert!(
        o.stderr.contains("do not fit") || o.stderr.contains("too long"),
        "{}",
        o.stderr
    );
    assert!(
        sha(&dir.join("child.vhd")) == before,
        "child.vhd was modified"
    );
    assert_eq!(
        std::fs::metadata(dir.join("child.vhd"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "child.vhd was written to"
    );
    // Still the same, valid, working child.
    let o = run_limited(dir, &["vhd", "check", "child.vhd"]);
    assert_eq!(o.out(), "child.vhd is valid\n");
    let o = run_limited(dir, &["vhd", "query", "-n", "child.vhd", "-p", "-u"]);
    assert_eq!(o.out(), "./parent.vhd\n");

    // Same with the slots shrunk to the smallest blktap ever writes for a name that
    // fits only MacX: a W2ku slot of 512 bytes holds 254 characters after ".\".
    let mid = dir.join("c".repeat(250));
    std::fs::create_dir(&mid).unwrap();
    std::fs::copy(dir.join("parent.vhd"), mid.join("p.vhd")).unwrap();
    let rel = format!("{}/p.vhd", "c".repeat(250)); // 256 chars: 514 bytes in UTF-16
    let o = run_limited(dir, &["vhd", "set-parent", "child.vhd", &rel]);
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        sha(&dir.join("child.vhd")) == before,
        "child.vhd was modified"
    );
}

#[test]
fn set_parent_that_would_make_a_loop_is_refused_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd"]);
    for n in ["a.vhd", "b.vhd", "c.vhd"] {
        let o = run_limited(dir, &["vhd", "snapshot", "parent.vhd", n]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
    // a's parent b: fine.
    let o = run_limited(dir, &["vhd", "set-parent", "a.vhd", "b.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    // b's parent a would loop: refused, b unchanged.
    let b_before = sha(&dir.join("b.vhd"));
    let o = run_limited(dir, &["vhd", "set-parent", "b.vhd", "a.vhd"]);
    assert_eq!(o.code, Some(3), "loop accepted: {}", o.stderr);
    assert!(
        o.stderr.contains("b.vhd") && o.stderr.contains("loop"),
        "{}",
        o.stderr
    );
    assert!(sha(&dir.join("b.vhd")) == b_before, "b.vhd was modified");
    // A longer loop: b's parent c, then c's parent a (a -> b -> c -> a).
    let o = run_limited(dir, &["vhd", "set-parent", "b.vhd", "c.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let c_before = sha(&dir.join("c.vhd"));
    let o = run_limited(dir, &["vhd", "set-parent", "c.vhd", "a.vhd"]);
    assert_eq!(o.code, Some(3), "3-file loop accepted: {}", o.stderr);
    assert!(sha(&dir.join("c.vhd")) == c_before, "c.vhd was modified");
    // Its own parent, by another name (a hard link).
    std::fs::hard_link(dir.join("c.vhd"), dir.join("c-link.vhd")).unwrap();
    let o = run_limited(dir, &["vhd", "set-parent", "c.vhd", "c-link.vhd"]);
    assert_eq!(o.code, Some(3), "self-parent accepted: {}", o.stderr);
    assert!(sha(&dir.join("c.vhd")) == c_before, "c.vhd was modified");
    // The chain still reads: a -> b -> c -> parent, depth 4, all valid.
    let o = run_limited(dir, &["vhd", "query", "-n", "a.vhd", "-d"]);
    assert_eq!(o.out(), "chain depth: 4\n");
    let o = run_limited(dir, &["vhd", "check", "-p", "a.vhd"]);
    assert_eq!(o.out(), "a.vhd is valid\n", "{}", o.stderr);
    let o = run_limited(dir, &["vhd", "read", "a.vhd", "-"]);
    assert_eq!((o.code, o.stdout_len), (Some(0), 8 << 20));
}

#[test]
fn a_loop_made_behind_our_back_is_reported_not_followed() {
    // blktap would accept this relink; make the loop by copying bytes, then every
    // command must stop (no endless walk) and name a file.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    unpack(dir, &["parent.vhd"]);
    for n in ["a.vhd", "b.vhd"] {
        let o = run_limited(dir, &["vhd", "snapshot", "parent.vhd", n]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
    let o = run_limited(dir, &["vhd", "set-parent", "a.vhd", "b.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    // b's header and locators made to point at a, as blktap's modify would write them.
    std::fs::copy(dir.join("b.vhd"), dir.join("b0.vhd")).unwrap();
    let o = run_limited(dir, &["vhd", "set-parent", "b0.vhd", "parent.vhd"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let a = std::fs::read(dir.join("a.vhd")).unwrap();
    let mut b = std::fs::read(dir.join("b.vhd")).unwrap();
    // Header: parent uuid = a's uuid, name "a.vhd"; locators: "./a.vhd".
    let a_uuid = &a[a.len() - 512 + 68..a.len() - 512 + 84];
    b[512 + 40..512 + 56].copy_from_slice(a_uuid);
    let mut name = [0u8; 512];
    for (i, c) in "a.vhd".bytes().enumerate() {
        name[2 * i + 1] = c;
    }
    b[512 + 64..512 + 576].copy_from_slice(&name);
    let macx = b"file://./a.vhd".to_vec();
    let w2: Vec<u8> = ".\\a.vhd"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    for (slot, data) in [(0usize, &macx), (1, &w2), (2, &w2)] {
        let e = 512 + 576 + 24 * slot;
        let off = be64(&b, e + 16) as usize;
        b[off..off + 512].fill(0);
        b[off..off + data.len()].copy_from_slice(data);
        b[e + 8..e + 12].copy_from_slice(&(data.len() as u32).to_be_bytes());
    }
    fix_checksum(&mut b[512..1536], 36);
    std::fs::write(dir.join("b.vhd"), &b).unwrap();
    for name in ["a.vhd", "b.vhd"] {
        let o = run_limited(dir, &["vhd", "read", name, "-"]);
        assert_eq!(o.code, Some(3), "{name}: read through a loop: {}", o.stderr);
        assert!(o.stderr.contains("loop"), "{}", o.stderr);
        let o = run_limited(dir, &["vhd", "check", "-p", name]);
        assert_eq!(o.code, Some(22), "{name}: {}", o.out());
        let o = run_limited(dir, &["vhd", "query", "-n", name, "-d"]);
        assert_ne!(o.code, Some(0), "{name}: depth of a loop: {}", o.out());
        let o = run_limited(dir, &["vhd", "info", name]);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(o.out().contains("loop"), "{}", o.out());
    }
}
