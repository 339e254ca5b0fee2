//! Gzip bombs and sparse imports (issue 12, item 1): how much of the SR a download takes
//! while it runs, measured as the high-water mark of the bytes allocated to files under
//! the SR (staging included), polled every millisecond or two on a thread.
//!
//! * A dynamic VHD header in front of 900 MiB of one repeated byte (≈1000:1 after gzip)
//!   must be refused from its first KiBs — its header and BAT say it is a few MiB at
//!   most — with nothing written to the SR and no staging left.
//! * A legitimate fixed disk of 256 MiB, almost all zeros, must import, cost the SR only
//!   its data (zero runs become holes) and read back identical.

use crate::helpers::{self, run, staging_dirs, stderr, stdout};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes allocated (not apparent size: holes cost nothing) to the regular files under
/// `dir`, recursively, each inode once (publishing hard-links staging files into the
/// SR). Files and directories may vanish while it walks.
fn allocated(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), seen),
                Ok(m) if m.is_file() && seen.insert((m.dev(), m.ino())) => m.blocks() * 512,
                _ => 0,
            })
            .sum()
    }
    walk(dir, &mut HashSet::new())
}

/// Run `f` while a thread polls [`allocated`] of `sr`; `f`'s result and the largest
/// value seen.
fn high_water<T>(sr: &Path, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, sr) = (Arc::clone(&stop), sr.to_path_buf());
        std::thread::spawn(move || {
            let mut max = 0;
            loop {
                max = max.max(allocated(&sr));
                if stop.load(Ordering::Relaxed) {
                    return max;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let max = poller.join().expect("the poller");
    (out, max)
}

/// A tarball whose one member `0.vhd` declares `size` bytes: the bytes of `prefix`, then
/// 0x5a to the end. Not zeros: holes must not be what saves the SR here. Made with
/// Python's tarfile (the header) and gzip; the filler is one compressed MiB repeated as
/// concatenated gzip members (RFC 1952 allows them, GNU gzip and we read them), so
/// building 900 MiB takes a moment rather than Python's 18 s of deflate.
fn bomb(out: &Path, prefix: &Path, size: u64) {
    const SCRIPT: &str = r#"
import gzip, sys, tarfile
out, prefix, size = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3])
ti = tarfile.TarInfo("0.vhd")
ti.size, ti.mtime, ti.mode = size, 1700000000, 0o644
mib = 1 << 20
chunks, rest = divmod(size - len(prefix), mib)
one = gzip.compress(b"\x5a" * mib, 9)
with open(out, "wb") as f:
    f.write(gzip.compress(ti.tobuf(format=tarfile.GNU_FORMAT) + prefix))
    for _ in range(chunks):
        f.write(one)
    # the member's padding to 512 bytes, then tar's end: two zero blocks
    f.write(gzip.compress(b"\x5a" * rest + bytes(-size % 512) + bytes(1024)))
"#;
    let o = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(out)
        .arg(prefix)
        .arg(size.to_string())
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", stderr(&o));
}

struct Scratch {
    dir: tempfile::TempDir,
    sr: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let sr = helpers::new_sr(dir.path());
        Scratch { dir, sr }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn download(&self, tgz: &Path) -> std::process::Output {
        helpers::download_file(self.dir.path(), tgz, &self.sr, &self.path("lock"), &[])
    }
}

#[test]
fn a_dynamic_vhd_bomb_is_refused_before_it_takes_room_in_the_sr() {
    let s = Scratch::new();
    // A real header: an empty 8 MiB dynamic disk (footer copy, header, BAT, batmap).
    let header = s.path("empty.vhd");
    let o = run(
        s.dir.path(),
        &["vhd", "create", header.to_str().unwrap(), "8M"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let declared: u64 = 900 << 20;
    let tgz = s.path("bomb.tgz");
    bomb(&tgz, &header, declared);
    let gz = std::fs::metadata(&tgz).unwrap().len();
    assert!(gz < 2 << 20, "the bomb is {gz} bytes of gzip");

    let start = std::time::Instant::now();
    let (o, hwm) = high_water(&s.sr, || s.download(&tgz));
    let took = start.elapsed();
    eprintln!(
        "bomb: {gz} bytes of gzip declaring {declared}: SR high-water mark {hwm} bytes, \
         refused after {took:?}"
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("tar member \"0.vhd\""), "{err}");
    assert!(
        err.contains(&format!("declared {declared} bytes")) && err.contains("allow at most"),
        "{err}"
    );
    // Nothing of it reached the SR: the refusal came from its first KiBs.
    assert!(
        hwm < 64 << 10,
        "the SR held {hwm} bytes of the bomb at its peak"
    );
    assert!(staging_dirs(&s.sr).is_empty(), "{:?}", staging_dirs(&s.sr));
    assert!(helpers::listing(&s.sr).is_empty());
}

#[test]
fn a_fixed_disk_of_zeros_imports_as_holes_and_reads_back_identical() {
    let s = Scratch::new();
    // 256 MiB, zeros but for three runs of data (start, middle, end) that must survive.
    let raw = s.path("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(256 << 20).unwrap();
    let mut data = vec![0u8; 64 << 10];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8 + 1;
    }
    use std::os::unix::fs::FileExt;
    for at in [0u64, 100 << 20, (256 << 20) - (64 << 10)] {
        f.write_all_at(&data, at).unwrap();
    }
    drop(f);
    let fixed = s.path("fixed.vhd");
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
        .arg(&raw)
        .arg(&fixed)
        .output()
        .expect("qemu-img");
    assert!(o.status.success(), "{}", stderr(&o));
    let size = std::fs::metadata(&fixed).unwrap().len();
    assert!(size > 256 << 20, "{size}");
    let tgz = s.path("fixed.tgz");
    helpers::gnu_tar(s.dir.path(), &[("0.vhd", "fixed.vhd")], &tgz);

    let (o, hwm) = high_water(&s.sr, || s.download(&tgz));
    eprintln!("fixed disk of {size} bytes (192 KiB of data): SR high-water mark {hwm} bytes");
    assert!(o.status.success(), "{}", stderr(&o));
    let uuid = stdout(&o).trim().to_string();
    let imported = s.sr.join(format!("{uuid}.vhd"));
    assert_eq!(std::fs::metadata(&imported).unwrap().len(), size);
    // The data and the footer, in 4 KiB blocks: well under a few MiB, not 256.
    assert!(hwm < 4 << 20, "the SR held {hwm} bytes at its peak");
    assert_eq!(
        helpers::content_sha(s.dir.path(), &imported),
        helpers::content_sha(s.dir.path(), &fixed),
        "the imported disk reads differently"
    );
    assert!(staging_dirs(&s.sr).is_empty());
}
