//! Relinking costs O(1) I/O whatever the disk size: only the header and the locator
//! sectors are written. Shown with strace on a child of a 1 GiB disk whose every block
//! is allocated.

use crate::helpers;
use std::process::Command;

#[test]
fn relink_of_a_child_of_a_1gib_disk_writes_only_header_and_locators() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // A 1 GiB raw disk with a byte in every 2 MiB block, so qemu-img allocates them all.
    let raw = p.join("base.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    for blk in 0..512u64 {
        f.write_all_at(&[0x5a], blk * (2 << 20) + 4096).unwrap();
    }
    drop(f);
    for (name, src) in [("big.vhd", &raw), ("other.vhd", &raw)] {
        helpers::qemu_vhd(src, &p.join(name));
    }
    let big = std::fs::metadata(p.join("big.vhd")).unwrap().len();
    assert!(big >= 1 << 30, "parent is {big} bytes");
    let o = helpers::run(p, &["vhd", "snapshot", "big.vhd", "child.vhd"]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let before = std::fs::read(p.join("child.vhd")).unwrap();

    let log = p.join("strace.log");
    let st = Command::new("strace")
        .args([
            "-f",
            "-e",
            "trace=open,openat,pwrite64,write,pwritev,ftruncate",
            "-o",
        ])
        .arg(&log)
        .arg(helpers::bin())
        .args(["vhd", "set-parent", "child.vhd", "other.vhd"])
        .current_dir(p)
        .status()
        .expect("strace");
    assert!(st.success());
    let log = std::fs::read_to_string(&log).unwrap();
    // The fd of child.vhd, then every write on it: (offset, length).
    let fd = log
        .lines()
        // glibc opens with openat(2), musl (the static build) with open(2).
        .find(|l| {
            (l.contains("openat(") || l.contains("open("))
                && l.contains("\"child.vhd\"")
                && l.contains("O_RDWR")
        })
        .and_then(|l| l.rsplit("= ").next())
        .map(|s| s.trim().to_string())
        .expect("child.vhd opened read-write");
    let mut writes = Vec::new();
    for l in log.lines() {
        let Some(i) = l.find("pwrite64(") else {
            assert!(
                !(l.contains("write(") || l.contains("ftruncate("))
                    || !l.contains(&format!("({fd},")),
                "unexpected write on the child: {l}"
            );
            continue;
        };
        let args = &l[i + "pwrite64(".len()..];
        if !args.starts_with(&format!("{fd},")) {
            continue;
        }
        // pwrite64(fd, "..."..., len, off) = len
        let tail = args.rsplit_once(')').unwrap().0;
        let mut parts = tail.rsplitn(3, ", ");
        let off: u64 = parts.next().unwrap().trim().parse().unwrap();
        let len: u64 = parts.next().unwrap().trim().parse().unwrap();
        writes.push((off, len));
    }
    writes.sort();
    // The header at 512, and the MacX, W2ku, W2ru areas right after the batmap (where
    // exactly depends on qemu's CHS-rounded size: read it from the child itself).
    let o = helpers::run(p, &["vhd", "info", "--json", "child.vhd"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut want = vec![(512, 1024)];
    for l in info["parent"]["locators"].as_array().unwrap() {
        want.push((l["data_offset"].as_u64().unwrap(), 512));
    }
    want.sort();
    assert_eq!(want.len(), 4);
    assert!(want[1].0 > 3584, "locators after BAT and batmap: {want:?}");
    assert_eq!(writes, want, "writes on the child");
    let total: u64 = writes.iter().map(|w| w.1).sum();
    assert_eq!(total, 2560);
    // And the child now points at other.vhd, valid, with the footers untouched.
    let after = std::fs::read(p.join("child.vhd")).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(before[..512], after[..512]);
    assert_eq!(before[before.len() - 512..], after[after.len() - 512..]);
    let o = helpers::run(p, &["vhd", "check", "child.vhd"]);
    assert_eq!(helpers::stdout(&o), "child.vhd is valid\n");
    let o = helpers::run(p, &["vhd", "query", "-n", "child.vhd", "-p", "-u"]);
    assert_eq!(helpers::stdout(&o), "./other.vhd\n");
}
