//! `vhd repair` (blktap's `vhd-util repair`) on damaged copies of the shared samples:
//! `check` says invalid before and valid after, the content reads the same, libvhdi and
//! qemu-img read the result, and where only the footer was damaged the file is again the
//! blktap-made original byte for byte. Everything refused writes nothing.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::{content_sha, run, sha256_file, stderr, stdout, unpacked_samples, vhdi};

/// Every blktap- or qemu-made dynamic and differencing sample whose footer sits at the
/// end of its data (the Windows-made one has slack before it: see below).
const SAMPLES: [&str; 11] = [
    "parent.vhd",
    "child.vhd",
    "grandchild.vhd",
    "parent2.vhd",
    "child-relinked.vhd",
    "child-hidden.vhd",
    "empty-child.vhd",
    "empty-child-relinked.vhd",
    "qemu-parent.vhd",
    "tap-child-of-qemu.vhd",
    "ext2.vhd",
];

fn repair(dir: &Path, args: &[&str]) -> Output {
    let mut a = vec!["vhd", "repair"];
    a.extend_from_slice(args);
    run(dir, &a)
}

fn repair_json(dir: &Path, file: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--json", file];
    args.extend_from_slice(extra);
    let o = repair(dir, &args);
    assert!(o.status.success(), "repair {file}: {}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(&text).expect("repair --json")
}

fn check(dir: &Path, file: &str) -> Output {
    run(dir, &["vhd", "check", file])
}

fn assert_invalid(dir: &Path, file: &str) {
    let o = check(dir, file);
    assert_eq!(o.status.code(), Some(22), "{file}: {}", stdout(&o));
    assert!(stdout(&o).contains("is invalid"), "{}", stdout(&o));
}

fn assert_valid(dir: &Path, file: &str) {
    let o = check(dir, file);
    assert_eq!(stdout(&o), format!("{file} is valid\n"), "{}", stderr(&o));
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

/// Overwrite `n` bytes at `at` with `byte`.
fn scribble(p: &Path, at: u64, n: usize, byte: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&vec![byte; n], at).unwrap();
}

fn truncate(p: &Path, size: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(size)
        .unwrap();
}

/// Damage `file` in place in the samples directory (its parents stay beside it), repair
/// it, and require: check invalid before and valid after, the same content hash, and the
/// undamaged bytes back exactly. `damage` returns what it did, for messages.
fn damaged_and_repaired(dir: &Path, file: &str, damage: impl Fn(&Path) -> String) -> Value {
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    let content = content_sha(dir, &path);
    let what = damage(&path);
    assert_invalid(dir, file);
    let r = repair_json(dir, file, &[]);
    assert_eq!(r["action"], "footer", "{file} ({what}): {r}");
    assert_eq!(r["written"], true, "{file}: {r}");
    assert_valid(dir, file);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after.len(), original.len(), "{file} ({what}): size");
    let diff: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != original[i])
        .take(8)
        .collect();
    assert!(diff.is_empty(), "{file} ({what}): differs at {diff:?}");
    assert_eq!(content_sha(dir, &path), content, "{file}: content");
    r
}

#[test]
fn an_overwritten_footer_is_written_back_byte_for_byte() {
    let d = unpacked_samples();
    for file in SAMPLES {
        let r = damaged_and_repaired(d.path(), file, |p| {
            scribble(p, len(p) - 512, 512, 0x5a);
            "last 512 bytes overwritten".into()
        });
        let size = len(&d.path().join(file));
        assert_eq!(r["offset"].as_u64(), Some(size - 512), "{file}: {r}");
        assert_eq!(r["size_before"].as_u64(), Some(size), "{file}: {r}");
        assert_eq!(r["size_after"].as_u64(), Some(size), "{file}: {r}");
    }
    // A checksum broken by one changed byte, not a foreign sector.
    damaged_and_repaired(d.path(), "child.vhd", |p| {
        scribble(p, len(p) - 512 + 60, 1, 0x07);
        "disk type byte changed".into()
    });
}

#[test]
fn a_footer_cut_off_is_appended_at_the_end_of_the_data() {
    let d = unpacked_samples();
    for file in SAMPLES {
        // (A 1-byte cut leaves a 511-byte footer, which blktap reads: no damage.)
        for cut in [512u64, 100, 511] {
            let r = damaged_and_repaired(d.path(), file, |p| {
                truncate(p, len(p) - cut);
                format!("{cut} bytes cut off")
            });
            let size = len(&d.path().join(file));
            assert_eq!(r["offset"].as_u64(), Some(size - 512), "{file}: {r}");
            assert_eq!(r["size_before"].as_u64(), Some(size - cut), "{file}: {r}");
            assert_eq!(r["size_after"].as_u64(), Some(size), "{file}: {r}");
        }
    }
}

#[test]
fn a_damaged_copy_at_offset_0_is_written_from_the_footer_at_the_end() {
    let d = unpacked_samples();
    for file in ["parent.vhd", "child.vhd", "empty-child.vhd"] {
        let path = d.path().join(file);
        let original = sha256_file(&path);
        scribble(&path, 0, 512, 0);
        assert_invalid(d.path(), file);
        let r = repair_json(d.path(), file, &[]);
        assert_eq!(r["action"], "copy", "{file}: {r}");
        assert_eq!(r["offset"].as_u64(), Some(0), "{file}: {r}");
        assert_valid(d.path(), file);
        assert_eq!(sha256_file(&path), original, "{file}");
    }
}

#[test]
fn dry_run_says_what_it_would_write_and_writes_nothing() {
    let d = unpacked_samples();
    let p = d.path().join("child.vhd");
    let size = len(&p);
    truncate(&p, size - 512);
    let before = sha256_file(&p);
    let o = repair(d.path(), &["--dry-run", "child.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("the footer is missing")
            && text.contains(&format!(
                "would write the footer copy from offset 0 at offset {}",
                size - 512
            ))
            && text.contains("nothing written"),
        "{text}"
    );
    let r = repair_json(d.path(), "child.vhd", &["--dry-run"]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["written"], false);
    assert_eq!(r["offset"].as_u64(), Some(size - 512));
    assert_eq!(sha256_file(&p), before, "--dry-run wrote");
    assert_invalid(d.path(), "child.vhd");
    // vhd-util's form, -n, repairs it for real.
    let o = repair(d.path(), &["-n", "child.vhd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("wrote the footer copy"),
        "{}",
        stdout(&o)
    );
    assert_valid(d.path(), "child.vhd");
}

#[test]
fn a_sound_file_is_left_alone() {
    let d = unpacked_samples();
    for file in [
        "parent.vhd",
        "grandchild.vhd",
        "ext2.vhd",
        "qemu-parent.vhd",
    ] {
        let p = d.path().join(file);
        let before = sha256_file(&p);
        let r = repair_json(d.path(), file, &[]);
        assert_eq!(r["action"], "none", "{file}: {r}");
        assert_eq!(r["written"], false, "{file}: {r}");
        assert_eq!(sha256_file(&p), before, "{file}");
    }
}

/// Runs a refused repair: the exit code, the message, and the file unchanged.
fn refused(dir: &Path, file: &str, code: i32, words: &str) {
    let p = dir.join(file);
    let before = (sha256_file(&p), len(&p));
    let o = repair(dir, &[file]);
    assert_eq!(o.status.code(), Some(code), "{file}: {}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("glance-vhd: {file}: ")) && stderr(&o).contains(words),
        "{file}: {}",
        stderr(&o)
    );
    assert_eq!((sha256_file(&p), len(&p)), before, "{file} was written");
    let o = repair(dir, &["--json", file]);
    let v: Value = serde_json::from_str(&stdout(&o)).expect("an error in JSON");
    assert_eq!(v["error"]["exit_code"].as_i64(), Some(code as i64), "{v}");
}

#[test]
fn both_footers_invalid_is_refused_with_vhd_util_s_einval() {
    let d = unpacked_samples();
    let p = d.path().join("child.vhd");
    scribble(&p, len(&p) - 512, 512, 0x5a);
    scribble(&p, 0, 512, 0);
    refused(d.path(), "child.vhd", 22, "no valid footer to repair from");
    // A fixed disk keeps no copy: its first sector is the guest's, never written.
    let raw = d.path().join("fixed.raw");
    std::fs::write(&raw, vec![0x11u8; 1 << 20]).unwrap();
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
        .arg(&raw)
        .arg(d.path().join("fixed.vhd"))
        .output()
        .expect("qemu-img (make setup)");
    assert!(o.status.success(), "{}", stderr(&o));
    let p = d.path().join("fixed.vhd");
    assert_eq!(repair_json(d.path(), "fixed.vhd", &[])["action"], "none");
    scribble(&p, len(&p) - 512, 512, 0x5a);
    refused(d.path(), "fixed.vhd", 22, "no valid footer to repair from");
    // Shorter than a footer.
    std::fs::write(d.path().join("tiny.vhd"), b"conectix").unwrap();
    refused(d.path(), "tiny.vhd", 22, "shorter than a footer");
    std::fs::write(d.path().join("empty.vhd"), b"").unwrap();
    refused(d.path(), "empty.vhd", 22, "no valid footer");
}

#[test]
fn two_valid_footers_that_differ_are_refused() {
    let d = unpacked_samples();
    // child.vhd with parent.vhd's footer as its copy: both valid, not the same disk.
    let parent_footer = std::fs::read(d.path().join("parent.vhd")).unwrap()[..512].to_vec();
    let p = d.path().join("child.vhd");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&parent_footer, 0)
        .unwrap();
    refused(
        d.path(),
        "child.vhd",
        3,
        "both valid but differ (timestamp, disk type, uuid)",
    );
}

#[test]
fn more_than_the_footer_missing_or_extra_is_refused() {
    let d = unpacked_samples();
    // Cut into the last block: blocks are gone, not just the footer.
    let p = d.path().join("child.vhd");
    truncate(&p, len(&p) - 4096);
    refused(d.path(), "child.vhd", 3, "more than the footer is missing");
    // Bytes no BAT entry covers after the end of data (an allocation cut short), the
    // footer lost among them: blktap would write the footer before them.
    let p = d.path().join("parent.vhd");
    let size = len(&p);
    truncate(&p, size + 4096);
    refused(
        d.path(),
        "parent.vhd",
        3,
        "4096 bytes lie between the end of the data",
    );
    // The Windows-made sample keeps 3 KiB of slack before its footer: overwritten, the
    // footer's place is not the end of the data, where blktap would write it.
    let p = d.path().join("fat-differential.vhd");
    scribble(&p, len(&p) - 512, 512, 0);
    refused(
        d.path(),
        "fat-differential.vhd",
        3,
        "3584 bytes lie between the end of the data",
    );
}

#[test]
fn symlinks_fifos_directories_and_devices_are_refused() {
    let d = unpacked_samples();
    let dir = d.path();
    let p = dir.join("child.vhd");
    truncate(&p, len(&p) - 512);
    let before = sha256_file(&p);
    std::os::unix::fs::symlink("child.vhd", dir.join("link.vhd")).unwrap();
    let o = repair(dir, &["link.vhd"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
    assert_eq!(sha256_file(&p), before, "written through the link");
    let fifo = dir.join("fifo.vhd");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    for target in [fifo.to_str().unwrap(), "/dev/null", "/dev/loop0", "."] {
        if !Path::new(target).exists() {
            continue;
        }
        // A FIFO with no writer would hang an open(2) that blocks: it must not.
        let o = run(dir, &["vhd", "repair", target]);
        assert_eq!(o.status.code(), Some(3), "{target}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a regular file"),
            "{target}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn hostile_copies_give_errors_not_panics_and_no_write() {
    let d = unpacked_samples();
    let dir = d.path();
    let copy = std::fs::read(dir.join("child.vhd")).unwrap()[..512].to_vec();
    // The copy at offset 0 valid, the rest of the file hostile: a header that is not
    // there, a BAT of 2^32 entries, a BAT entry far beyond the end.
    let with_copy = |name: &str, body: &[(u64, Vec<u8>)], size: u64| {
        let p = dir.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&copy, 0).unwrap();
        for (at, b) in body {
            f.write_all_at(b, *at).unwrap();
        }
    };
    let header = std::fs::read(dir.join("child.vhd")).unwrap()[512..1536].to_vec();
    let mut huge_bat = header.clone();
    huge_bat[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    fix_header_checksum(&mut huge_bat);
    let mut far_bat = [0xffu8; 512];
    far_bat[..4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    for (name, body, size) in [
        ("no-header.vhd", vec![], 8192u64),
        ("huge-bat.vhd", vec![(512, huge_bat)], 8192),
        (
            "far-block.vhd",
            vec![(512, header.clone()), (1536, far_bat.to_vec())],
            64 << 10,
        ),
    ] {
        with_copy(name, &body, size);
        let before = sha256_file(&dir.join(name));
        let o = repair(dir, &[name]);
        assert!(
            matches!(o.status.code(), Some(3 | 22)),
            "{name}: exit {:?}: {}",
            o.status.code(),
            stderr(&o)
        );
        assert!(
            stderr(&o).starts_with(&format!("glance-vhd: {name}: ")),
            "{}",
            stderr(&o)
        );
        assert_eq!(sha256_file(&dir.join(name)), before, "{name} was written");
        assert_eq!(len(&dir.join(name)), size, "{name} grew");
    }
}

/// The dynamic header's checksum after an edit (one's complement of the byte sum).
fn fix_header_checksum(h: &mut [u8]) {
    h[36..40].fill(0);
    let sum = h.iter().fold(0u32, |s, &b| s.wrapping_add(b as u32));
    h[36..40].copy_from_slice(&(!sum).to_be_bytes());
}

#[test]
fn libvhdi_and_qemu_img_read_the_repaired_files() {
    let d = unpacked_samples();
    let dir = d.path();
    let before_chain = vhdi(dir, &["grandchild.vhd", "child.vhd", "parent.vhd"], true);
    let before_qemu = [
        qemu_raw_sha(dir, "qemu-parent.vhd"),
        qemu_raw_sha(dir, "parent.vhd"),
    ];
    for file in ["grandchild.vhd", "parent.vhd", "qemu-parent.vhd"] {
        let p = dir.join(file);
        truncate(&p, len(&p) - 512);
        let o = repair(dir, &[file]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
    }
    let after_chain = vhdi(dir, &["grandchild.vhd", "child.vhd", "parent.vhd"], true);
    assert_eq!(after_chain["sha256"], before_chain["sha256"]);
    assert_eq!(
        after_chain["sha256"].as_str(),
        Some(crate::helpers::GRANDCHILD_CONTENT)
    );
    let after_qemu = [
        qemu_raw_sha(dir, "qemu-parent.vhd"),
        qemu_raw_sha(dir, "parent.vhd"),
    ];
    assert_eq!(after_qemu, before_qemu);
}

/// qemu-img's reading of a dynamic VHD: the sha256 of its raw conversion.
fn qemu_raw_sha(dir: &Path, file: &str) -> String {
    let out = dir.join(format!("{file}.qemu.raw"));
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw", file])
        .arg(&out)
        .current_dir(dir)
        .output()
        .expect("qemu-img (make setup)");
    assert!(
        o.status.success(),
        "qemu-img convert {file}: {}",
        stderr(&o)
    );
    let sum = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    sum
}
