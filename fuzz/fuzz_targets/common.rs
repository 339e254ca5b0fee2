//! Shared by the fuzz targets: a per-process scratch directory on /dev/shm (the library
//! takes paths), the sample parents next to the fuzzed child, and a checksum fix-up so
//! mutations get past the footer/header/batmap checksums and reach the deeper code.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use glance_vhd::vhd::footer::Footer;
use glance_vhd::xapi::pickle::{decode, encode, Py, Reply};
use glance_vhd::vhd::header::Header;
use glance_vhd::vhd::{Batmap, FOOTER_SIZE, HEADER_SIZE};

/// Where the sample VHDs are: `$GLANCE_VHD_SAMPLES`, else `../../shared/vhd-samples`
/// relative to this crate.
fn samples_dir() -> PathBuf {
    std::env::var_os("GLANCE_VHD_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vhd-samples"))
}

/// `/dev/shm/glance-vhd-fuzz-<target>-<pid>/`, created once per process. Directories of
/// processes that are gone are removed first, so repeated runs do not fill /dev/shm.
/// With `parents`, the sample parents are unpacked into it under their own names, so
/// children from the corpus (locators `./parent.vhd` …) find a real chain.
pub fn workdir(target: &str, parents: bool) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let prefix = "glance-vhd-fuzz-";
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(prefix) else { continue };
                let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("{prefix}{target}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        if parents {
            let s = samples_dir();
            for rel in [
                "tap-chain/parent.vhd.gz",
                "tap-chain/parent2.vhd.gz",
                "tap-chain/child.vhd.gz",
                "qemu-parent/qemu-parent.vhd.gz",
                "dfvfs/image.vhd.gz",
            ] {
                let Ok(f) = std::fs::File::open(s.join(rel)) else { continue };
                let mut out = Vec::new();
                if flate2::read::GzDecoder::new(f).read_to_end(&mut out).is_ok() {
                    let name = Path::new(rel).file_stem().expect("file name");
                    let _ = std::fs::write(dir.join(name), out);
                }
            }
        }
        dir
    })
}

/// Recompute what a random mutation breaks first: the primary footer checksum (and copy
/// it to offset 0 for dynamic/differencing disks, so both footers match), the dynamic
/// header checksum, and the batmap checksum. `None` when nothing changed.
pub fn fix_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let len = data.len();
    if len < FOOTER_SIZE || len % 512 == 511 {
        return None;
    }
    let mut b = data.to_vec();
    let primary_at = len - FOOTER_SIZE;
    let raw: [u8; FOOTER_SIZE] = b[primary_at..].try_into().ok()?;
    let mut f = Footer::decode(&raw);
    let enc = f.encode();
    b[primary_at..].copy_from_slice(&enc);
    if f.is_dynamic_or_diff() && len >= 2 * FOOTER_SIZE {
        b[..FOOTER_SIZE].copy_from_slice(&enc);
        let at = f.data_offset;
        if let Some(at) = usize::try_from(at)
            .ok()
            .filter(|&a| a.checked_add(HEADER_SIZE).is_some_and(|e| e <= primary_at))
        {
            let hraw: [u8; HEADER_SIZE] = b[at..at + HEADER_SIZE].try_into().ok()?;
            let mut h = Header::decode(&hraw);
            let henc = h.encode();
            b[at..at + HEADER_SIZE].copy_from_slice(&henc);
            fix_batmap(&mut b, &f, &h, primary_at);
        }
    }
    (b != data).then_some(b)
}

fn fix_batmap(b: &mut [u8], f: &Footer, h: &Header, primary_at: usize) {
    let Some(hdr) = h
        .table_offset
        .checked_add(h.bat_bytes())
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v.checked_add(512).is_some_and(|e| e <= primary_at))
    else {
        return;
    };
    if &b[hdr..hdr + 8] != b"tdbatmap" {
        return;
    }
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let (offset, size, version) = (be64(hdr + 8), be32(hdr + 16), be32(hdr + 20));
    let Some((start, end)) = usize::try_from(offset).ok().and_then(|o| {
        o.checked_add(size as usize * 512)
            .filter(|&e| e <= primary_at)
            .map(|e| (o, e))
    }) else {
        return;
    };
    let bm = Batmap {
        header_offset: hdr as u64,
        raw_header: [0; 512],
        offset,
        size,
        version,
        checksum: 0,
        marker: 0,
        map: Some(b[start..end].to_vec()),
    };
    if let Some(c) = bm.computed_checksum(f.curr_size) {
        b[hdr + 24..hdr + 28].copy_from_slice(&c.to_be_bytes());
    }
}

/// The decoded params as a reply (strings and dicts of them), for the encoder.
fn reply(v: &Py) -> Reply {
    match v {
        Py::Dict(items) => Reply::Dict(
            items
                .iter()
                .map(|(k, v)| (k.to_python_str().unwrap_or_default(), reply(v)))
                .collect(),
        ),
        Py::None => Reply::None,
        other => Reply::Str(other.to_python_str().unwrap_or_default()),
    }
}

/// What our protocol-0 encoder makes of `v` must decode to the same strings (panics
/// otherwise: a finding).
pub fn assert_reply_round_trips(v: &Py) {
    let r = reply(v);
    if let Ok(p) = encode(&r) {
        match decode(p.as_bytes()) {
            Ok(back) => assert_eq!(reply(&back), r, "{p:?}"),
            Err(e) => panic!("our own reply does not decode: {e}\n{p:?}"),
        }
    }
}
