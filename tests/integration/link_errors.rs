//! An import whose relink fails keeps the failure's kind: a disk error (EIO, injected
//! with `GLANCE_VHD_TEST_FAIL=relink:N`) exits 1 like any local I/O failure, a broken
//! image exits 3; either way the SR gets nothing and no staging directory is left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::{bin, stderr, unpacked_samples};

struct Site {
    dir: tempfile::TempDir,
    sr: PathBuf,
    samples: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let sr = dir.path().join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&sr).unwrap();
        // An existing VDI that must never be touched.
        std::fs::write(sr.join("existing.vhd"), b"not touched").unwrap();
        Site {
            dir,
            sr,
            samples: unpacked_samples(),
        }
    }

    /// The old plugin's tarball: `tar -zc --directory=STAGING .` of the members.
    fn image(&self, name: &str, members: &[(&str, &str)]) -> PathBuf {
        let stage = self.dir.path().join(format!("stage-{name}"));
        std::fs::create_dir(&stage).unwrap();
        for (member, sample) in members {
            std::fs::copy(self.samples.path().join(sample), stage.join(member)).unwrap();
        }
        let out = self.dir.path().join(format!("{name}.tgz"));
        let st = Command::new("tar")
            .arg("-zcf")
            .arg(&out)
            .arg("--directory")
            .arg(&stage)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    fn download(&self, tgz: &Path, env: &[(&str, &str)]) -> Output {
        Command::new(bin())
            .args(["download", "--endpoint"])
            .arg(format!("file://{}", tgz.display()))
            .arg("--sr-path")
            .arg(&self.sr)
            .arg("--lock-dir")
            .arg(self.dir.path().join("lock"))
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .expect("run glance-vhd")
    }

    /// Every name in the SR, sorted.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.sr)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn an_eio_while_relinking_exits_1_and_leaves_the_sr_as_it_was() {
    let site = Site::new();
    let tgz = site.image("two", &[("0.vhd", "child.vhd"), ("1.vhd", "parent.vhd")]);
    let before = site.names();
    let o = site.download(&tgz, &[("GLANCE_VHD_TEST_FAIL", "relink:0")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "not an I/O failure: {err}");
    assert!(err.contains("image member 0.vhd ("), "{err}");
    // EIO's text differs between libcs ("I/O error" in musl); its number does not.
    assert!(err.contains("(os error 5)"), "{err}");
    assert_eq!(site.names(), before, "the SR changed: {err}");
    assert_eq!(
        std::fs::read(site.sr.join("existing.vhd")).unwrap(),
        b"not touched"
    );

    // The same image without the fault imports: the failure was the disk's.
    let o = site.download(&tgz, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(site.names().len(), before.len() + 2);
}

#[test]
fn a_broken_image_exits_3_and_leaves_the_sr_as_it_was() {
    let site = Site::new();
    // The base claims a parent: a rule the image breaks, found before anything is
    // written.
    let tgz = site.image(
        "base-with-parent",
        &[("0.vhd", "grandchild.vhd"), ("1.vhd", "child.vhd")],
    );
    let before = site.names();
    let o = site.download(&tgz, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "not invalid input: {err}");
    assert!(
        err.contains("image member 1.vhd (",)
            && err.contains(
                ".vhd): the base of the image is a differencing disk (it claims a parent)"
            ),
        "{err}"
    );
    assert_eq!(site.names(), before, "the SR changed: {err}");
}
