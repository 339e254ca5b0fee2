//! Fuzz the upload side's list check (`sr::check_chain`, and `sr::export` that stages
//! what it accepts): a few small files made from the input in a scratch SR, a list of
//! them (any order, repeats allowed), checked as a chain. Nothing may panic; a list that
//! is accepted must really be a chain (checked again here, independently: each file's
//! recorded parent UUID is the next one's footer UUID, the last has no parent, no file
//! twice), and an export leaves no staging directory once dropped.
//!
//! Input layout: byte 0 gives the list length (`b % 5 + 1`); the next bytes are the
//! list, each an index into the files (`b % files`); then up to four files, each but the
//! last as a little-endian u32 length and its bytes, the last taking the rest. Each input
//! runs as is and once more with its files' checksums recomputed.

#![no_main]

mod common;

use std::path::Path;

use glance_vhd::sr::{check_chain, export, ChainSpec};
use glance_vhd::vhd::{OpenMode, Vhd};
use libfuzzer_sys::fuzz_target;

const MAX_FILES: usize = 4;

/// The VDI UUID of file `i`.
fn uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn split(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    while files.len() < MAX_FILES - 1 {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = (u32::from_le_bytes(*len) as usize).min(tail.len());
        let (f, r) = tail.split_at(len);
        files.push(f);
        rest = r;
    }
    files.push(rest);
    files
}

fn run(sr: &Path, files: &[&[u8]], list: &[usize]) {
    for i in 0..MAX_FILES {
        let p = sr.join(format!("{}.vhd", uuid(i)));
        let _ = std::fs::remove_file(&p);
        if let Some(b) = files.get(i) {
            if std::fs::write(&p, b).is_err() {
                return;
            }
        }
    }
    let vdis: Vec<String> = list.iter().map(|&i| uuid(i)).collect();
    let spec = ChainSpec::Vdis(vdis.clone());
    let Ok(checked) = check_chain(sr, &spec) else {
        return;
    };
    assert_eq!(checked, vdis, "the VDIs accepted are the VDIs given");
    // Accepted: it must be a chain.
    let vhds: Vec<Vhd> = list
        .iter()
        .map(|&i| {
            Vhd::open(&sr.join(format!("{}.vhd", uuid(i))), OpenMode::READ)
                .expect("an accepted VDI opens")
        })
        .collect();
    for (i, v) in vhds.iter().enumerate() {
        let parent = v
            .header()
            .filter(|_| v.is_differencing())
            .map(|h| h.parent_uuid);
        match (parent, vhds.get(i + 1)) {
            (None, None) => {}
            (Some(p), Some(next)) => assert_eq!(p, next.footer.uuid, "link {i} is not a chain"),
            _ => panic!("accepted a list whose base is not last (at {i})"),
        }
    }
    let mut seen = list.to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), list.len(), "accepted a file twice");
    drop(export(sr, &spec));
    let left = std::fs::read_dir(sr)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "staging left after an export was dropped");
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = n as usize % 5 + 1;
    if rest.len() < n {
        return;
    }
    let (list, rest) = rest.split_at(n);
    let files = split(rest);
    let list: Vec<usize> = list.iter().map(|&b| b as usize % files.len()).collect();
    let dir = common::workdir("upload_list", false);
    run(dir, &files, &list);
    let fixed: Vec<Option<Vec<u8>>> = files.iter().map(|f| common::fix_checksums(f)).collect();
    if fixed.iter().any(Option::is_some) {
        let files: Vec<&[u8]> = files
            .iter()
            .zip(&fixed)
            .map(|(f, x)| x.as_deref().unwrap_or(f))
            .collect();
        run(dir, &files, &list);
    }
});
