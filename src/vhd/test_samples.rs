//! The blktap-made samples (`../shared/vhd-samples`, or `GLANCE_VHD_SAMPLES`) for unit
//! tests, unpacked into a scratch directory with the parent mtimes their README pins
//! (a child's parent timestamp is its parent's mtime, so byte comparisons need them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

pub fn samples_dir() -> PathBuf {
    let p = std::env::var_os("GLANCE_VHD_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vhd-samples"));
    assert!(
        p.join("README.md").exists(),
        "VHD samples not found at {} (set GLANCE_VHD_SAMPLES)",
        p.display()
    );
    p
}

/// Unix seconds of the mtimes the samples README gives (`touch -d`).
const MTIMES: [(&str, u64); 3] = [
    ("parent.vhd", 1_704_067_230),  // 2024-01-01 00:00:30 UTC
    ("child.vhd", 1_704_067_350),   // 2024-01-01 00:02:30 UTC
    ("parent2.vhd", 1_704_164_645), // 2024-01-02 03:04:05 UTC
];

/// `tap-chain/<name>.gz` unpacked to `dir/<as_name>`.
pub fn unpack_as(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let gz = samples_dir().join("tap-chain").join(format!("{name}.gz"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).expect("open sample"))
        .read_to_end(&mut out)
        .expect("gunzip sample");
    let to = dir.join(as_name);
    std::fs::write(&to, out).expect("write sample");
    if let Some((_, secs)) = MTIMES.iter().find(|(n, _)| *n == name) {
        std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(*secs)))
            .expect("set the mtime");
    }
    to
}
