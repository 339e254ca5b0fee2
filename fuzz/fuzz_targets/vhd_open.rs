//! Fuzz the read side: open, `check -p`, `info`, and reads through the chain; and the
//! size bound an import takes from a file's first bytes (`vhd::size_bound`).
//!
//! The input is one VHD file, written to `input.vhd` in a per-process directory on
//! /dev/shm next to the unpacked sample parents (so corpus children resolve their
//! `./parent.vhd` locators). Each input runs as is, then once more with its checksums
//! recomputed (footer, footer copy, header, batmap) so mutations reach past them.
//! Nothing may panic, hang or allocate without bound, whatever the bytes.

#![no_main]

mod common;

use std::path::Path;

use glance_vhd::vhd::chain::Chain;
use glance_vhd::vhd::check::{check, CheckOptions};
use glance_vhd::vhd::info::info;
use glance_vhd::vhd::bound::MAX_PREFIX;
use glance_vhd::vhd::{size_bound, OpenMode, SizeBound, Vhd};
use libfuzzer_sys::fuzz_target;

/// Bytes read at each end of the virtual disk: bounded whatever the virtual size.
const READ_LEN: u64 = 64 * 1024;

/// As an import asks: the first bytes, more as asked, until it decides.
fn bound(path: &Path, data: &[u8]) {
    let mut have = 0;
    while let Ok(SizeBound::Need(n)) = size_bound(path, &data[..have]) {
        assert!(n > have && n <= MAX_PREFIX, "asked for {n} bytes with {have}");
        if n > data.len() {
            return;
        }
        have = n;
    }
}

fn run(path: &Path, data: &[u8]) {
    bound(path, data);
    if std::fs::write(path, data).is_err() {
        return;
    }
    let _ = Vhd::open(path, OpenMode::READ);
    let _ = Vhd::open(
        path,
        OpenMode {
            write: false,
            ignore_disabled: true,
        },
    );
    for ignore_timestamps in [false, true] {
        let _ = check(
            path,
            CheckOptions {
                parents: true,
                ignore_timestamps,
            },
        );
    }
    if let Ok(i) = info(path) {
        let _ = glance_vhd::vhd::info::render(&i);
    }
    if let Ok(chain) = Chain::open(path) {
        let size = chain.virtual_size();
        let n = size.min(READ_LEN);
        let mut buf = vec![0u8; n as usize];
        let _ = chain.read_at(0, &mut buf);
        let _ = chain.read_at(size - n, &mut buf);
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = common::workdir("vhd_open", true);
    let path = dir.join("input.vhd");
    run(&path, data);
    if let Some(fixed) = common::fix_checksums(data) {
        run(&path, &fixed);
    }
});
