//! gzip levels and the defaults that fit dom0 (issue 15): every level's tarball read back
//! byte-identical by GNU tar and Python `tarfile` `r|gz` (Nova's reader); the CLI's own
//! default level and thread count; the plugin keeping Nova's level semantics
//! (`xenapi_image_compression_level`, else 6); and a download hashing SHA-512 only where
//! the store declares one or the store is local.

use crate::helpers;
use crate::plugin::{call, install_shim, success};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// What `upload --help` documents and the CLI uses without `--compression-level`.
const CLI_DEFAULT_LEVEL: u64 = 2;

const UUIDS: [&str; 3] = [
    "dddddddd-0000-4000-8000-000000000001",
    "dddddddd-0000-4000-8000-000000000002",
    "dddddddd-0000-4000-8000-000000000003",
];

/// The tap sample chain in an SR as `UUIDS`.
struct Sr {
    dir: tempfile::TempDir,
    sr: PathBuf,
}

impl Sr {
    fn with_chain() -> Sr {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        helpers::import_tap_chain(dir.path(), &sr, &UUIDS);
        Sr { dir, sr }
    }

    fn vdi(&self, i: usize) -> PathBuf {
        self.sr.join(format!("{}.vhd", UUIDS[i]))
    }

    /// `upload --json` of the chain into the local store `out`, with `extra` flags; the
    /// JSON it printed.
    fn upload(&self, out: &Path, extra: &[&str]) -> Value {
        let url = format!("file://{}", out.display());
        let mut args = vec![
            "upload",
            "--endpoint",
            &url,
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--leaf",
            UUIDS[0],
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = helpers::run(self.dir.path(), &args);
        assert!(o.status.success(), "{extra:?}: {}", helpers::stderr(&o));
        serde_json::from_slice(&o.stdout).expect("upload --json")
    }
}

/// gzip's XFL byte for a level: 4 "fastest" for 1, 2 "maximum compression" for 9, 0
/// between (RFC 1952; GNU gzip and zlib write the same).
fn xfl(level: u32) -> u8 {
    match level {
        1 => 4,
        9 => 2,
        _ => 0,
    }
}

/// The members of `tgz` as `name sha256` lines, read by Python `tarfile` in stream mode
/// (`r|gz`, as Nova's plugin read them: one gzip member only).
fn python_members(tgz: &Path) -> Vec<String> {
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys,tarfile,hashlib\n\
             t=tarfile.open(sys.argv[1],'r|gz')\n\
             for m in t:\n  f=t.extractfile(m)\n  print(m.name, hashlib.sha256(f.read()).hexdigest() if f else '-')",
        )
        .arg(tgz)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "tarfile r|gz could not read {}: {}",
        tgz.display(),
        helpers::stderr(&py)
    );
    helpers::stdout(&py).lines().map(str::to_string).collect()
}

fn gnu_untar(tgz: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let st = Command::new("tar")
        .arg("-zxf")
        .arg(tgz)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "GNU tar could not read {}", tgz.display());
}

#[test]
fn every_level_reads_back_byte_identical_with_gnu_tar_and_python_tarfile() {
    let s = Sr::with_chain();
    let want: Vec<String> = std::iter::once(". -".to_string()) // tarfile names ./ "."
        .chain((0..3).map(|i| format!("./{i}.vhd {}", helpers::sha256_file(&s.vdi(i)))))
        .collect();
    let mut sizes = Vec::new();
    for level in 1..=9u32 {
        let out = s.dir.path().join(format!("l{level}.tgz"));
        // Two threads: blocks primed from another worker's input, stitched into one member.
        let v = s.upload(
            &out,
            &["--compression-level", &level.to_string(), "--threads", "2"],
        );
        assert_eq!(v["compression"]["level"], json!(level), "{v}");
        let gz = std::fs::read(&out).unwrap();
        assert_eq!(
            &gz[..3],
            b"\x1f\x8b\x08",
            "level {level}: a gzip deflate member"
        );
        assert_eq!(gz[8], xfl(level), "level {level}: XFL");
        let x = s.dir.path().join(format!("x{level}"));
        gnu_untar(&out, &x);
        for i in 0..3 {
            assert!(
                std::fs::read(x.join(format!("{i}.vhd"))).unwrap()
                    == std::fs::read(s.vdi(i)).unwrap(),
                "level {level}: GNU tar's {i}.vhd differs from the SR's"
            );
        }
        assert_eq!(python_members(&out), want, "level {level}: tarfile r|gz");
        sizes.push(gz.len());
    }
    assert!(
        sizes[8] < sizes[0],
        "level 9 ({}) not smaller than level 1 ({})",
        sizes[8],
        sizes[0]
    );
}

#[test]
fn the_cli_default_level_and_threads_leave_dom0_room() {
    let s = Sr::with_chain();
    let default = s.dir.path().join("default.tgz");
    let v = s.upload(&default, &[]);
    // Half the cores, at least 1, at most 4.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(
        v["compression"],
        json!({"level": CLI_DEFAULT_LEVEL, "threads": (cores / 2).clamp(1, 4)}),
        "{v}"
    );
    // The bytes are the default level's, not gzip's 6.
    let explicit = s.dir.path().join("explicit.tgz");
    s.upload(
        &explicit,
        &["--compression-level", &CLI_DEFAULT_LEVEL.to_string()],
    );
    let six = s.dir.path().join("six.tgz");
    s.upload(&six, &["--compression-level", "6"]);
    let default = std::fs::read(&default).unwrap();
    assert!(default == std::fs::read(&explicit).unwrap());
    assert!(default != std::fs::read(&six).unwrap());
    // --threads overrides; the property still sets the level.
    let v = s.upload(
        &s.dir.path().join("t.tgz"),
        &[
            "--threads",
            "3",
            "--property",
            "xenapi_image_compression_level=8",
        ],
    );
    assert_eq!(v["compression"], json!({"level": 8, "threads": 3}), "{v}");
    // --help says what the default is.
    let o = helpers::run(s.dir.path(), &["upload", "--help"]);
    let help = helpers::stdout(&o)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains(&format!("1-9, else {CLI_DEFAULT_LEVEL}")),
        "{help}"
    );
    assert!(
        help.contains("half the cores, at least 1, at most 4"),
        "{help}"
    );
}

#[test]
fn the_plugin_keeps_novas_level_six_unless_the_property_says() {
    let s = Sr::with_chain();
    let six = s.dir.path().join("six.tgz");
    s.upload(&six, &["--compression-level", "6"]);
    let three = s.dir.path().join("three.tgz");
    s.upload(&three, &["--compression-level", "3"]);
    let store = s.dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let g = helpers::Peer::start(&store, &[]);
    let shim = install_shim(s.dir.path(), "glance");
    let env = json!({"GLANCE_VHD_LOCK_DIR": s.dir.path().join("lock").to_str().unwrap()});
    for (image, properties, want) in [
        ("no-property", json!({"os_type": "linux"}), &six),
        (
            "property-3",
            json!({"xenapi_image_compression_level": 3}),
            &three,
        ),
    ] {
        let up = call(json!({
            "shim": shim, "fn": "upload_vhd2", "form": "python", "protocol": 2,
            "env": env, "unpickle": true,
            "args": [UUIDS],
            "kwargs": {
                "image_id": image, "endpoint": g.url(), "sr_path": s.sr,
                "extra_headers": {"X-Auth-Token": "t"}, "properties": properties,
                "api_version": 1,
            },
        }));
        assert_eq!(success(&up), &Value::Null, "{up}");
        assert!(
            std::fs::read(store.join(image)).unwrap() == std::fs::read(want).unwrap(),
            "{image}: the plugin's stream is not the CLI's at level {}",
            want.display()
        );
    }
}

fn download_json(s: &Sr, args: &[&str]) -> Value {
    let sr = helpers::new_sr(s.dir.path());
    let lock = s.dir.path().join("lock-dl");
    let mut all = vec![
        "download",
        "--sr-path",
        sr.to_str().unwrap(),
        "--lock-dir",
        lock.to_str().unwrap(),
        "--no-scan",
        "--json",
    ];
    all.extend_from_slice(args);
    let o: Output = helpers::run(s.dir.path(), &all);
    assert!(o.status.success(), "{args:?}: {}", helpers::stderr(&o));
    serde_json::from_slice(&o.stdout).expect("download --json")
}

#[test]
fn a_download_hashes_sha512_only_where_the_store_declares_it_or_for_a_local_store() {
    let s = Sr::with_chain();
    let tgz = s.dir.path().join("img");
    s.upload(&tgz, &[]);
    let md5 =
        helpers::stdout(&Command::new("md5sum").arg(&tgz).output().unwrap())[..32].to_string();
    let sha512 =
        helpers::stdout(&Command::new("sha512sum").arg(&tgz).output().unwrap())[..128].to_string();
    // The local store declares nothing: the summary's digests are all its user gets.
    let url = format!("file://{}", tgz.display());
    let v = download_json(&s, &["--endpoint", &url]);
    assert_eq!(v["stream"]["md5"], json!(md5));
    assert_eq!(v["stream"]["sha512"], json!(sha512));
    assert_eq!(v["summary"]["sha512"], json!(sha512));
    // Glance v1 declares MD5 only: nothing to compare a SHA-512 with.
    let store = s.dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(&tgz, store.join("img-1")).unwrap();
    let g = helpers::Peer::start(&store, &[]);
    let v = download_json(
        &s,
        &[
            "--endpoint",
            &g.url(),
            "--api-version",
            "1",
            "--image-id",
            "img-1",
        ],
    );
    assert_eq!(v["stream"]["md5"], json!(md5));
    assert_eq!(v["summary"]["md5"], json!(md5));
    assert_eq!(v["stream"]["sha512"], Value::Null, "{v}");
    assert_eq!(v["summary"]["sha512"], Value::Null, "{v}");
    // (A Glance v2 record declaring os_hash_algo sha512: glance_v2.rs
    // download_every_layout_made_by_gnu_tar compares ours with its os_hash_value.)
}
