//! `upload --flatten` (issue 14 item 4): one dynamic VHD holding the leaf's whole
//! content instead of the chain. Read back by our download (depth 1, no relink), by
//! libvhdi and by qemu-img; its layout read by a parser of this file (not ours): blocks
//! a child overwrote sent once, blocks absent from the whole chain unallocated, sectors
//! absent everywhere with their bitmap bit clear (what `vhd-util coalesce` leaves).
//! One round trip through the real Glance; the rest through the local store.

use crate::helpers;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Work {
    dir: tempfile::TempDir,
    sr: PathBuf,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        Work { dir, sr }
    }

    /// The tap sample chain grandchild → child → parent in the SR; VDI UUIDs, leaf
    /// first.
    fn tap_chain(&self) -> Vec<String> {
        helpers::import_tap_chain(self.dir.path(), &self.sr, &[])
    }

    /// Samples (member name, sample file) imported by our download; VDI UUIDs, leaf
    /// first.
    fn import(&self, files: &[(&str, &str)]) -> Vec<String> {
        let samples = helpers::unpacked_samples();
        let tgz = self.path(&format!("{}.tgz", uuid::Uuid::new_v4()));
        helpers::gnu_tar(samples.path(), files, &tgz);
        let o = helpers::download_file(self.dir.path(), &tgz, &self.sr, &self.path("lock"), &[]);
        assert!(o.status.success(), "{}", helpers::stderr(&o));
        helpers::stdout(&o).lines().map(str::to_string).collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn vdi(&self, uuid: &str) -> PathBuf {
        self.sr.join(format!("{uuid}.vhd"))
    }

    fn upload(&self, endpoint: &str, leaf: &str, extra: &[&str]) -> Output {
        self.upload_env(endpoint, leaf, extra, &[])
    }

    fn upload_env(
        &self,
        endpoint: &str,
        leaf: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = vec![
            "upload",
            "--endpoint",
            endpoint,
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--leaf",
            leaf,
            "--retry-delay",
            "0.01",
        ];
        args.extend_from_slice(extra);
        helpers::run_env(self.dir.path(), &args, env)
    }

    /// Upload the chain of `leaf` to a local file `name` (flattened or not); the JSON
    /// answer and the tarball.
    fn upload_file(&self, leaf: &str, name: &str, flatten: bool) -> (serde_json::Value, PathBuf) {
        let out = self.path(name);
        let url = format!("file://{}", out.display());
        let mut extra = vec!["--json"];
        if flatten {
            extra.push("--flatten");
        }
        let o = self.upload(&url, leaf, &extra);
        assert!(o.status.success(), "{}", helpers::stderr(&o));
        (serde_json::from_slice(&o.stdout).unwrap(), out)
    }

    /// GNU tar's member list and the members unpacked into a new directory.
    fn untar(&self, tgz: &Path) -> (String, PathBuf) {
        let list = Command::new("tar").arg("-tzf").arg(tgz).output().unwrap();
        assert!(list.status.success());
        let x = self.path(&format!("x-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-zxf")
            .arg(tgz)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success(), "GNU tar could not read {}", tgz.display());
        (helpers::stdout(&list), x)
    }

    /// Our download of `tgz` into a new SR: the VHD paths, leaf first.
    fn download(&self, tgz: &Path) -> Vec<PathBuf> {
        let sr = helpers::new_sr(self.dir.path());
        let o = helpers::download_file(self.dir.path(), tgz, &sr, &self.path("lock"), &[]);
        assert!(o.status.success(), "{}", helpers::stderr(&o));
        helpers::stdout(&o)
            .lines()
            .map(|u| sr.join(format!("{u}.vhd")))
            .collect()
    }

    fn content(&self, vhd: &Path) -> String {
        helpers::content_sha(self.dir.path(), vhd)
    }

    /// qemu-img's reading of a single VHD: the SHA-256 of `qemu-img convert -O raw`.
    fn qemu_content(&self, vhd: &Path) -> String {
        let raw = self.path(&format!("{}.raw", uuid::Uuid::new_v4()));
        let o = Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(vhd)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(o.status.success(), "qemu-img: {}", helpers::stderr(&o));
        let sum = helpers::sha256_file(&raw);
        std::fs::remove_file(&raw).unwrap();
        sum
    }
}

/// A dynamic or differencing VHD as this test reads it, by the spec, with no code of
/// ours: disk type, size, the BAT and each allocated block's sector bitmap.
struct Parsed {
    disk_type: u32,
    virtual_size: u64,
    block_size: u64,
    bat: Vec<u32>,
    bytes: Vec<u8>,
}

impl Parsed {
    fn read(p: &Path) -> Parsed {
        let bytes = std::fs::read(p).unwrap();
        let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let f = bytes.len() - 512;
        assert_eq!(&bytes[f..f + 8], b"conectix", "{}", p.display());
        assert_eq!(bytes[..512], bytes[f..], "footer copy = footer");
        let disk_type = be32(f + 60);
        let virtual_size = be64(f + 48);
        let h = be64(f + 16) as usize;
        assert_eq!(&bytes[h..h + 8], b"cxsparse");
        let table = be64(h + 16) as usize;
        let max_bat = be32(h + 28) as usize;
        let block_size = be32(h + 32) as u64;
        let bat = (0..max_bat).map(|i| be32(table + 4 * i)).collect();
        Parsed {
            disk_type,
            virtual_size,
            block_size,
            bat,
            bytes,
        }
    }

    fn allocated(&self) -> usize {
        self.bat.iter().filter(|&&e| e != u32::MAX).count()
    }

    /// The sector bitmap of block `b` (one sector for 2 MiB blocks).
    fn bitmap(&self, b: usize) -> &[u8] {
        let at = self.bat[b] as usize * 512;
        &self.bytes[at..at + (self.block_size as usize / 512 / 8)]
    }
}

/// The one VHD of a flattened image: checked as a dynamic VHD of `virtual_size`.
fn the_flat_vhd(w: &Work, tgz: &Path, virtual_size: u64) -> (PathBuf, Parsed) {
    let (list, x) = w.untar(tgz);
    assert_eq!(list, "./\n./0.vhd\n", "one member, as download expects");
    let vhd = x.join("0.vhd");
    let p = Parsed::read(&vhd);
    assert_eq!(p.disk_type, 3, "dynamic");
    assert_eq!(p.virtual_size, virtual_size, "the leaf's virtual size");
    (vhd, p)
}

/// The sha256 libvhdi reads a single VHD as.
fn vhdi_content(w: &Work, vhd: &Path) -> serde_json::Value {
    helpers::vhdi(w.dir.path(), &[vhd], true)["sha256"].clone()
}

#[test]
fn a_flattened_chain_round_trips_through_glance_as_one_vhd_with_the_leafs_content() {
    let _turn = helpers::glance_turn();
    let w = Work::new();
    let uuids = w.tap_chain();
    let o = w.upload(
        helpers::glance_url(),
        &uuids[0],
        &[
            "--create",
            "--name",
            "flattened",
            "--flatten",
            "--header",
            "X-Auth-Token: test-token",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["members"], serde_json::json!(["0.vhd"]));
    assert_eq!(v["vdis"], serde_json::json!(uuids), "the chain read");
    assert_eq!(v["flattened"], true);
    let id = v["image_id"].as_str().unwrap().to_string();
    let rec = helpers::glance_record(&id);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["checksum"], v["stream"]["md5"]);
    // To Glance only MD5 is hashed (README "JSON output").
    assert_eq!(v["stream"]["sha512"], serde_json::Value::Null);
    // A plain HTTP download: one dynamic VHD that libvhdi and qemu-img read as the leaf.
    let got = w.path("got.tgz");
    let o = helpers::glance_client(&["download", &id, got.to_str().unwrap()]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    assert_eq!(v["stream"]["md5"], helpers::sum_file("md5sum", &got));
    assert_eq!(rec["os_hash_value"], helpers::sum_file("sha512sum", &got));
    let (vhd, p) = the_flat_vhd(&w, &got, 8 * MIB);
    assert_eq!(p.allocated(), 4);
    assert_eq!(vhdi_content(&w, &vhd), helpers::GRANDCHILD_CONTENT);
    assert_eq!(w.qemu_content(&vhd), helpers::GRANDCHILD_CONTENT);
    // Our download from Glance: depth 1 (a dynamic disk, nothing to relink), the leaf's
    // content, valid for `vhd check`.
    let sr2 = helpers::new_sr(w.dir.path());
    let lock = w.path("lock");
    let o = helpers::run(
        w.dir.path(),
        &[
            "download",
            "--endpoint",
            helpers::glance_url(),
            "--image-id",
            &id,
            "--sr-path",
            sr2.to_str().unwrap(),
            "--lock-dir",
            lock.to_str().unwrap(),
            "--header",
            "X-Auth-Token: test-token",
        ],
    );
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let chain: Vec<String> = helpers::stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(chain.len(), 1, "depth 1: {chain:?}");
    let leaf = sr2.join(format!("{}.vhd", chain[0]));
    assert_eq!(w.content(&leaf), helpers::GRANDCHILD_CONTENT);
    assert_eq!(Parsed::read(&leaf).disk_type, 3);
    let check = helpers::run(
        w.dir.path(),
        &["vhd", "check", "--parents", leaf.to_str().unwrap()],
    );
    assert!(check.status.success(), "{}", helpers::stdout(&check));
    assert_eq!(
        std::fs::read(&leaf).unwrap(),
        std::fs::read(&vhd).unwrap(),
        "downloaded as sent: no relink touched it"
    );
}

#[test]
fn overwritten_parent_blocks_are_sent_once_and_the_image_is_smaller_than_the_chain() {
    let w = Work::new();
    let uuids = w.tap_chain();
    let (chain_json, chain_tgz) = w.upload_file(&uuids[0], "chain.tgz", false);
    assert_eq!(chain_json["flattened"], false);
    assert_eq!(w.untar(&chain_tgz).0, "./\n./0.vhd\n./1.vhd\n./2.vhd\n");
    let (flat_json, flat_tgz) = w.upload_file(&uuids[0], "flat.tgz", true);
    let (vhd, p) = the_flat_vhd(&w, &flat_tgz, 8 * MIB);
    // The chain holds 3 (parent) + 3 (child) + 1 (grandchild) blocks over the 4 blocks
    // of the disk: flattened, each block once.
    let layers: Vec<Parsed> = uuids.iter().map(|u| Parsed::read(&w.vdi(u))).collect();
    let chain_blocks: usize = layers.iter().map(Parsed::allocated).sum();
    assert_eq!(chain_blocks, 7);
    assert_eq!(p.allocated(), 4);
    let chain_bytes: u64 = uuids
        .iter()
        .map(|u| std::fs::metadata(w.vdi(u)).unwrap().len())
        .sum();
    let flat_bytes = std::fs::metadata(&vhd).unwrap().len();
    assert!(
        flat_bytes + 3 * 2 * MIB <= chain_bytes,
        "flattened {flat_bytes} bytes, the chain {chain_bytes}: three blocks fewer"
    );
    let (chain_gz, flat_gz) = (
        chain_json["stream"]["bytes"].as_u64().unwrap(),
        flat_json["stream"]["bytes"].as_u64().unwrap(),
    );
    assert!(
        flat_gz < chain_gz,
        "flattened image {flat_gz} bytes sent, the chain {chain_gz}"
    );
    // Block 0: the parent's first MiB (the child's 4 KiB inside it) and nothing else;
    // block 2, which the child wrote whole, full.
    let bm0 = p.bitmap(0);
    assert!(bm0[..256].iter().all(|&b| b == 0xff), "[0, 1 MiB) present");
    assert!(
        bm0[256..].iter().all(|&b| b == 0),
        "[1, 2 MiB) absent: bits clear"
    );
    assert!(p.bitmap(2).iter().all(|&b| b == 0xff));
    // Its content is the leaf's; downloaded, it is one VDI with that content.
    assert_eq!(w.content(&vhd), helpers::GRANDCHILD_CONTENT);
    let got = w.download(&flat_tgz);
    assert_eq!(got.len(), 1, "depth 1");
    assert_eq!(w.content(&got[0]), helpers::GRANDCHILD_CONTENT);
    // The same chain flattens to the same bytes (the same checksum on every attempt).
    let (again, _) = w.upload_file(&uuids[0], "again.tgz", true);
    assert_eq!(again["stream"], flat_json["stream"]);
    // And the SR is as it was: nothing staged left, the chain untouched.
    assert!(helpers::staging_dirs(&w.sr).is_empty());
    assert_eq!(w.content(&w.vdi(&uuids[0])), helpers::GRANDCHILD_CONTENT);
}

#[test]
fn blocks_absent_from_the_whole_chain_stay_unallocated() {
    let w = Work::new();
    // parent2 holds blocks 0 and 3; its empty child adds nothing.
    let uuids = w.import(&[
        ("0.vhd", "empty-child-relinked.vhd"),
        ("1.vhd", "parent2.vhd"),
    ]);
    assert_eq!(uuids.len(), 2);
    let want = helpers::content_sums()
        .into_iter()
        .find(|(f, _)| f == "empty-child-relinked.vhd")
        .unwrap()
        .1;
    assert_eq!(w.content(&w.vdi(&uuids[0])), want);
    let (_, tgz) = w.upload_file(&uuids[0], "flat.tgz", true);
    let (vhd, p) = the_flat_vhd(&w, &tgz, 8 * MIB);
    assert_eq!(p.bat[1], u32::MAX, "block 1 absent everywhere: unallocated");
    assert_eq!(p.bat[2], u32::MAX, "block 2 absent everywhere: unallocated");
    assert_eq!(p.allocated(), 2);
    // Block 3: parent2 wrote [6M, 6M+4K), its first 8 sectors, and nothing else.
    assert_eq!(p.bitmap(3)[0], 0xff);
    assert!(p.bitmap(3)[1..].iter().all(|&b| b == 0));
    // Two blocks of data and the metadata: not a byte of the absent blocks.
    assert!(std::fs::metadata(&vhd).unwrap().len() < 2 * (2 * MIB + 4096) + 8192);
    // qemu-img sees the same allocation: data only in blocks 0 and 3.
    let o = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "vpc"])
        .arg(&vhd)
        .output()
        .unwrap();
    assert!(o.status.success(), "qemu-img map: {}", helpers::stderr(&o));
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    for e in &map {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let in_hole = start < 6 * MIB && start + len > 2 * MIB;
        if e["data"] == true {
            assert!(!in_hole, "qemu-img map: data in blocks 1-2: {map:?}");
        }
    }
    assert!(
        map.iter().any(|e| e["data"] == true && e["start"] == 0),
        "{map:?}"
    );
    assert_eq!(vhdi_content(&w, &vhd), want.as_str());
    assert_eq!(w.qemu_content(&vhd), want);
    let got = w.download(&tgz);
    assert_eq!(got.len(), 1);
    assert_eq!(w.content(&got[0]), want);
}

#[test]
fn a_tap_child_of_a_qemu_made_base_flattens_to_what_every_reader_reads() {
    let w = Work::new();
    let uuids = w.import(&[
        ("0.vhd", "tap-child-of-qemu.vhd"),
        ("1.vhd", "qemu-parent.vhd"),
    ]);
    let want = helpers::content_sums()
        .into_iter()
        .find(|(f, _)| f == "tap-child-of-qemu.vhd")
        .unwrap()
        .1;
    let size = Parsed::read(&w.vdi(&uuids[0])).virtual_size;
    let (_, tgz) = w.upload_file(&uuids[0], "flat.tgz", true);
    let (vhd, _) = the_flat_vhd(&w, &tgz, size);
    assert_eq!(w.content(&vhd), want);
    assert_eq!(vhdi_content(&w, &vhd), want.as_str());
    assert_eq!(w.qemu_content(&vhd), want);
}

#[test]
fn a_flattened_stream_that_breaks_is_never_terminated() {
    let w = Work::new();
    let uuids = w.tap_chain();
    let g = helpers::Peer::start(&w.path("store"), &[]);
    for after in ["0", "10", "5000"] {
        let id = format!("img-flat-broken-{after}");
        let o = w.upload_env(
            &g.url(),
            &uuids[0],
            &["--flatten", "--api-version", "1", "--image-id", &id],
            &[("GLANCE_VHD_TEST_FAIL_UPLOAD_AFTER", after)],
        );
        assert!(!o.status.success(), "after {after}: accepted");
        assert!(
            helpers::stderr(&o).contains("injected failure"),
            "{}",
            helpers::stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !g.dir.join(&id).exists(),
            "after {after}: the store took a complete image"
        );
        assert!(
            g.dir.join(format!("{id}.broken")).exists(),
            "after {after}: no broken upload seen"
        );
    }
    assert!(helpers::staging_dirs(&w.sr).is_empty());
}

#[test]
fn a_leaf_that_changes_while_it_is_flattened_is_never_an_image() {
    let w = Work::new();
    let vdi = helpers::random_vdi(&w.sr, 32);
    let out = w.path("torn.tgz");
    let url = format!("file://{}", out.display());
    let args = [
        "upload",
        "--endpoint",
        &url,
        "--sr-path",
        w.sr.to_str().unwrap(),
        "--leaf",
        &vdi,
        "--flatten",
        "--rate-limit",
        "4M",
    ];
    let child = Command::new(helpers::bin())
        .args(args)
        .current_dir(w.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while helpers::staging_dirs(&w.sr).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no staging directory"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Grown (as tapdisk grows a VHD when it allocates a block), its old footer left.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(w.vdi(&vdi))
        .unwrap()
        .write_all(&[0x5a; 4096])
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = helpers::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("changed while it was being read"), "{err}");
    assert!(!out.exists(), "a torn image was written");
    assert!(helpers::staging_dirs(&w.sr).is_empty());
}
