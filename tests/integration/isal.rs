//! The deflate engine per level (issue 15): levels 1–3 by ISA-L's igzip, 4–9 by zlib-rs,
//! both in the pigz scheme — and whatever the engine, every level's tarball is one gzip
//! member that GNU tar and Python `tarfile` `r|gz` read back byte-identical.

use crate::helpers;
use std::path::{Path, PathBuf};
use std::process::Command;

const VDI: &str = "15151515-0000-4000-8000-000000000001";

/// An SR holding one VDI of ~3 MiB of compressible, varied content (text, records,
/// noise and zeros, from a fixed seed): several 512 KiB compressor blocks, each primed
/// with the one before.
fn sr_with_content() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    let mut x = 0x15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: Vec<String> = (0..2000)
        .map(|_| {
            let n = 2 + next() % 8;
            (0..n)
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect()
        })
        .collect();
    let mut data = Vec::new();
    while data.len() < 3 << 20 {
        match next() % 10 {
            0..=4 => {
                for _ in 0..40 {
                    for _ in 0..(3 + next() % 10) {
                        // Skewed towards the first words, as text is.
                        let w = (next() % 2000) * (next() % 2000) / 2000;
                        data.extend_from_slice(words[w as usize].as_bytes());
                        data.push(b' ');
                    }
                    data.push(b'\n');
                }
            }
            5..=7 => {
                let base = next() as u32;
                for i in 0..300u32 {
                    data.extend_from_slice(&base.wrapping_add(i * 16).to_le_bytes());
                    data.extend_from_slice(&(next() as u8 as u32).to_le_bytes());
                    data.extend_from_slice(&i.to_le_bytes());
                }
            }
            8 => data.extend((0..4096).map(|_| next() as u8)),
            _ => data.extend(std::iter::repeat_n(0u8, 64 << 10)),
        }
    }
    let raw = dir.path().join("content.raw");
    std::fs::write(&raw, &data).unwrap();
    helpers::qemu_vhd(&raw, &sr.join(format!("{VDI}.vhd")));
    (dir, sr)
}

/// `upload -v` of the VDI at `level` on two compressor threads into `out`; stderr.
fn upload(dir: &Path, sr: &Path, level: u32, out: &Path) -> String {
    let url = format!("file://{}", out.display());
    let level = level.to_string();
    let o = helpers::run(
        dir,
        &[
            "-v",
            "upload",
            "--endpoint",
            &url,
            "--sr-path",
            sr.to_str().unwrap(),
            "--vdi",
            VDI,
            "--image-id",
            "x",
            "--compression-level",
            &level,
            "--threads",
            "2",
        ],
    );
    assert!(o.status.success(), "level {level}: {}", helpers::stderr(&o));
    helpers::stderr(&o)
}

/// For each tarball: its members as `name=sha256` (tarfile `r|gz`), whether zlib saw the
/// gzip stream end, how many bytes followed that end, and the magic.
const READ_BACK: &str = r#"
import sys, tarfile, hashlib, zlib
for p in sys.argv[1:]:
    names = []
    with tarfile.open(p, "r|gz") as t:
        for m in t:
            f = t.extractfile(m)
            names.append(m.name + "=" + (hashlib.sha256(f.read()).hexdigest() if f else "-"))
    raw = open(p, "rb").read()
    d = zlib.decompressobj(31)
    d.decompress(raw)
    print(" ".join(names), d.eof, len(d.unused_data), raw[:2].hex())
"#;

#[test]
fn every_level_reads_back_byte_identical_as_one_gzip_member() {
    let (dir, sr) = sr_with_content();
    let vhd = sr.join(format!("{VDI}.vhd"));
    let want = std::fs::read(&vhd).unwrap();
    let mut tgzs = Vec::new();
    for level in 1..=9 {
        let out = dir.path().join(format!("l{level}.tgz"));
        upload(dir.path(), &sr, level, &out);
        // GNU tar (through gzip): the one member, byte-identical.
        let x = dir.path().join(format!("x{level}"));
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(&out)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success(), "level {level}: GNU tar could not read it");
        assert!(
            std::fs::read(x.join("0.vhd")).unwrap() == want,
            "level {level}: GNU tar read back other bytes"
        );
        tgzs.push(out);
    }
    // Python, as Nova reads it: tarfile in stream mode, and zlib on the raw file to see
    // that the gzip stream is one member with nothing after its trailer.
    let py = Command::new("python3")
        .arg("-c")
        .arg(READ_BACK)
        .args(&tgzs)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", helpers::stderr(&py));
    let lines: Vec<String> = helpers::stdout(&py).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 9, "{lines:?}");
    let sha = helpers::sha256(&want);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line,
            &format!(".=- ./0.vhd={sha} True 0 1f8b"),
            "level {}: tarfile r|gz / one gzip member",
            i + 1
        );
    }
}

/// The level picks the engine: ISA-L for 1–3, zlib-rs for 4–9 (`-v` says which). And it
/// shows in the stream: zlib-rs's level 1 codes every block with the fixed Huffman
/// code, ISA-L's level 1 with codes built for the data (a dynamic block, BTYPE 2).
#[test]
fn levels_one_to_three_deflate_with_isal_the_rest_with_zlib_rs() {
    let (dir, sr) = sr_with_content();
    for level in 1..=9 {
        let out = dir.path().join(format!("l{level}.tgz"));
        let err = upload(dir.path(), &sr, level, &out);
        let engine = if level <= 3 { "ISA-L igzip" } else { "zlib-rs" };
        assert!(
            err.contains(&format!(
                "gzip level {level} ({engine}) on 2 compressor threads"
            )),
            "level {level}: {err}"
        );
        let gz = std::fs::read(&out).unwrap();
        // The header is 10 bytes (no name, no extra); the first block's 3 header bits
        // follow: BFINAL, then BTYPE.
        assert_eq!(gz[3], 0, "level {level}: no optional header fields");
        let btype = (gz[10] >> 1) & 3;
        if level == 1 {
            assert_eq!(btype, 2, "level 1: first block type {btype}");
        }
    }
}
