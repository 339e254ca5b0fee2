//! Fuzz the image tarball's member policy: `bundle::unpack` into a scratch SR directory.
//!
//! The input is an uncompressed tar stream; it is gzipped here (stored blocks: cheap,
//! and mutations keep their meaning) and unpacked. An input that already starts with
//! the gzip magic is also unpacked as it is, so the gzip layer (concatenated members,
//! trailing data, corrupt streams) is fuzzed too. Limits are small: nothing larger
//! than the input reaches /dev/shm.
//!
//! Besides "no panic, hang or unbounded allocation": whatever the outcome, only regular
//! `*.vhd` files may appear, only inside the destination, within the free-space limit;
//! on success the files are exactly the layout's chain.

#![no_main]

mod common;

use std::io::Write;
use std::path::Path;

use glance_vhd::bundle::{unpack, Limits};
use libfuzzer_sys::fuzz_target;

/// Below the largest input (`-max_len`), so a member can go past them.
const LIMITS: Limits = Limits {
    free_space: 64 << 10,
    max_member: 32 << 10,
    max_vhds: glance_vhd::bundle::MAX_FILES,
    keep_swap: false,
};

fn run(work: &Path, body: &[u8]) {
    let dest = work.join("sr");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir(&dest).expect("create the scratch SR");
    let res = unpack(body, &dest, LIMITS);
    // Nothing but the destination in the work directory.
    for e in std::fs::read_dir(work)
        .expect("read the work directory")
        .flatten()
    {
        assert_eq!(e.file_name(), "sr", "unpack wrote outside its destination");
    }
    let mut total = 0u64;
    let mut present = Vec::new();
    for e in std::fs::read_dir(&dest)
        .expect("read the scratch SR")
        .flatten()
    {
        let meta = std::fs::symlink_metadata(e.path()).expect("stat");
        let name = e.file_name().into_string().expect("UTF-8 member name");
        assert!(meta.file_type().is_file(), "{name}: not a regular file");
        assert!(
            name.ends_with(".vhd") && name != "swap.vhd",
            "{name}: not allowed"
        );
        total += meta.len();
        present.push(name);
    }
    assert!(total <= LIMITS.free_space, "{total} bytes written");
    if let Ok(u) = res {
        assert!(u.bytes <= LIMITS.free_space);
        assert_eq!(u.bytes, total);
        let mut chain = u.layout.chain();
        chain.sort();
        present.sort();
        assert_eq!(chain, present, "files and layout disagree");
        for f in &u.files {
            assert!(f.starts_with(&dest));
        }
    }
    let _ = std::fs::remove_dir_all(&dest);
}

fuzz_target!(|data: &[u8]| {
    let work = common::workdir("tar_unpack", false);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(data).expect("gzip into memory");
    run(work, &gz.finish().expect("gzip into memory"));
    if data.starts_with(&[0x1f, 0x8b]) {
        run(work, data);
    }
});
