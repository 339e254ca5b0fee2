//! Fuzz the write side: change parent, set hidden, then `check -p` the result.
//!
//! Input layout: a little-endian u32, then the child file, then the parent file. The
//! low 30 bits of the u32 are the child's length (clamped to what is there); bit 31
//! asks for a raw parent (`set_parent(.., raw = true)`), bit 30 is the hidden value.
//! Both files are written to a per-process directory on /dev/shm and run once as they
//! are and once with their checksums recomputed. Nothing may panic, whatever the bytes.

#![no_main]

mod common;

use std::path::Path;

use glance_vhd::vhd::check::{check, CheckOptions};
use glance_vhd::vhd::relink::{set_hidden, set_parent};
use libfuzzer_sys::fuzz_target;

fn run(dir: &Path, child: &[u8], parent: &[u8], raw: bool, hidden: u8) {
    let (c, p) = (dir.join("child.vhd"), dir.join("parent.vhd"));
    if std::fs::write(&c, child).is_err() || std::fs::write(&p, parent).is_err() {
        return;
    }
    let _ = set_parent(&c, &p, raw);
    let _ = set_hidden(&c, hidden);
    let _ = check(
        &c,
        CheckOptions {
            parents: true,
            ignore_timestamps: true,
        },
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((word, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let word = u32::from_le_bytes(*word);
    let raw = word & (1 << 31) != 0;
    let hidden = ((word >> 30) & 1) as u8;
    let len = ((word & 0x3fff_ffff) as usize).min(rest.len());
    let (child, parent) = rest.split_at(len);
    let dir = common::workdir("vhd_relink", false);
    run(dir, child, parent, raw, hidden);
    let fc = common::fix_checksums(child);
    let fp = common::fix_checksums(parent);
    if fc.is_some() || fp.is_some() {
        run(
            dir,
            fc.as_deref().unwrap_or(child),
            fp.as_deref().unwrap_or(parent),
            raw,
            hidden,
        );
    }
});
