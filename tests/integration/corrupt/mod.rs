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

mod mutants;
mod relink;

use mutants::*;

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
