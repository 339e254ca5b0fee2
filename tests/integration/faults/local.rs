//! The faults that need no network: SIGKILL in each phase of an import, a file system
//! that fills up mid-unpack, and concurrent runs on one SR.

use super::*;

/// A SIGKILL in each phase of an import, then `sweep`: no staging directory, no VHD
/// whose parent is missing, the SR as it was. During the move the SR holds only whole
/// chains (base first) even before the sweep.
#[test]
fn kill_9_in_every_phase_then_sweep() {
    let mut report = Report::new("crash");
    let site = Site::new();
    let tgz = site.tarball("img.tgz");
    let before = site.snapshot();
    let mark = site.path("paused");
    let start = |env: &[(&str, &str)], extra: &[&str]| -> Child {
        let url = format!("file://{}", tgz.display());
        Command::new(helpers::bin())
            .args(["download", "--endpoint", &url, "--sr-path"])
            .arg(&site.sr)
            .args(["--lock-dir", &site.lock_dir(), "--no-lock"])
            .args(extra)
            .envs(env.iter().copied())
            .env("GLANCE_VHD_TEST_PAUSE_MARK", &mark)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let kill = |mut c: Child| {
        // std's Child::kill is SIGKILL on Unix: no handler runs, no destructor.
        c.kill().unwrap();
        let st = c.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    };
    let wait_for = |cond: &dyn Fn() -> bool, what: &str| {
        let t = Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what} never happened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // During the stream: a slow download, killed once its staging directory exists.
    let c = start(&[], &["--rate-limit", "4K"]);
    wait_for(&|| !site.staging_dirs().is_empty(), "staging");
    std::thread::sleep(Duration::from_millis(500));
    kill(c);
    assert_eq!(
        site.staging_dirs().len(),
        1,
        "a killed run leaves its staging"
    );
    site.sweep();
    site.assert_untouched(&before, "kill during the stream");
    report.row(
        "SIGKILL during the stream (4 KiB/s)",
        "kill -9",
        None,
        "SR untouched; sweep removed the staging dir",
    );
    // During the relink and the move: a test hook stops the process at an exact step.
    for (step, what) in [
        ("relink:1", "during the relink (after 0.vhd → 1.vhd)"),
        ("move:1", "during the move (base linked into the SR)"),
        ("move:2", "during the move (base and middle linked)"),
    ] {
        let _ = std::fs::remove_file(&mark);
        let c = start(&[("GLANCE_VHD_TEST_PAUSE", step)], &[]);
        wait_for(&|| mark.exists(), step);
        kill(c);
        // Before any sweep: every VHD in the SR has its whole chain.
        site.assert_chains_whole(what);
        let linked = site.snapshot().len() - before.len() - site.staging_dirs().len();
        let o = site.sweep();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rolled = v["swept"][0]["rolled_back"].as_array().map_or(0, Vec::len);
        assert_eq!(rolled, linked, "{what}: {v}");
        site.assert_untouched(&before, what);
        report.row(
            format!("SIGKILL {what}"),
            "kill -9",
            None,
            &format!("{linked} VHD(s) in the SR before sweep, each with its parents; sweep rolled back {rolled}; SR untouched"),
        );
    }
    // And an import that is not disturbed still works afterwards.
    let c = start(&[], &[]);
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(site.snapshot().len(), before.len() + 3);
    site.assert_chains_whole("after the crashes");
}

/// The SR on a small tmpfs: an image whose declared sizes fit, but the file system
/// fills while it unpacks (another writer takes the space): a clean error naming the
/// file, nothing left.
#[test]
fn disk_full_during_unpack() {
    let mut report = Report::new("disk-full");
    let dir = tempfile::tempdir().unwrap();
    let mnt = helpers::new_sr(dir.path());
    let _u = helpers::Tmpfs::mount(&mnt, "8m");
    // 5 MiB of random data in one VHD: fits the 8 MiB SR until 4 MiB go elsewhere.
    let src = dir.path().join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&src).unwrap();
    let vdi = helpers::random_vdi(&src, 5);
    let tgz = dir.path().join("img.tgz");
    let o = helpers::run(
        dir.path(),
        &[
            "upload",
            "--endpoint",
            &format!("file://{}", tgz.display()),
            "--sr-path",
            src.to_str().unwrap(),
            "--leaf",
            &vdi,
            "--no-lock",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let child = Command::new(helpers::bin())
        .args([
            "download",
            "--endpoint",
            &format!("file://{}", tgz.display()),
            "--sr-path",
        ])
        .arg(&mnt)
        .args([
            "--lock-dir",
            dir.path().join("lock").to_str().unwrap(),
            "--no-lock",
            "--rate-limit",
            "2M",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the unpack is under way, another writer takes 4 MiB of the 8.
    let t = Instant::now();
    while !std::fs::read_dir(&mnt).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".glance-vhd-staging-")
    }) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let _ = filler.write_all(&vec![1u8; 4 << 20]);
    drop(filler);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("No space left on device") && err.contains(".glance-vhd-staging-"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["filler"], "only the other writer's file may remain");
    report.row(
        "8 MiB tmpfs SR, 5 MiB image, 4 MiB taken by another writer mid-unpack",
        "ENOSPC",
        o.status.code(),
        "I/O error naming the staging file; SR as before, no staging",
    );
}

/// Four downloads of different images into one SR at once, four uploads of one chain
/// into four images at once, and a download racing `sweep` every 20 ms.
#[test]
fn concurrent_runs_stay_correct() {
    let _turn = helpers::glance_turn();
    let mut report = Report::new("concurrency");
    let site = Site::new();
    let before = site.snapshot();
    // Four images (the same chain, uploaded four times: four ids, four imports).
    let ids: Vec<String> = (0..4)
        .map(|i| helpers::glance_image(Some(&site.tarball(&format!("img{i}.tgz")))))
        .collect();
    let runs: Vec<Child> = ids
        .iter()
        .map(|id| {
            Command::new(helpers::bin())
                .args([
                    "download",
                    "--endpoint",
                    helpers::glance_url(),
                    "--image-id",
                    id,
                    "--sr-path",
                ])
                .arg(&site.sr)
                .args(["--lock-dir", &site.lock_dir(), "--no-lock", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut leaves = Vec::new();
    for c in runs {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        leaves.push(v["root"]["uuid"].as_str().unwrap().to_string());
    }
    assert_eq!(site.snapshot().len(), before.len() + 12);
    site.assert_chains_whole("4 downloads");
    assert!(site.staging_dirs().is_empty());
    report.row(
        "4 downloads of different images into one SR at once",
        "-",
        Some(0),
        "12 new VHDs, 4 whole chains, no staging",
    );

    // Four uploads of chains from this SR at once. Glance 33 on sqlite cannot take
    // concurrent uploads (sqlite refuses the second writer at once, "database is
    // locked", and the image stays "saving"), so they go to the Glance v1 stand-in, a
    // threaded server that checks each body's checksum the way Glance does.
    let snap = site.snapshot();
    let store = site.path("v1-store");
    let standin = helpers::Peer::start(&store, &[]);
    let runs: Vec<Child> = (0..4)
        .map(|i| {
            Command::new(helpers::bin())
                .args(["upload", "--endpoint", &standin.url(), "--api-version", "1"])
                .args(["--image-id", &format!("concurrent-{i}"), "--sr-path"])
                .arg(&site.sr)
                .args([
                    "--leaf",
                    &leaves[i],
                    "--no-lock",
                    "--json",
                    "--threads",
                    "2",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in runs.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let body = store.join(format!("concurrent-{i}"));
        assert_eq!(
            std::fs::metadata(&body).unwrap().len(),
            v["summary"]["bytes"].as_u64().unwrap()
        );
        // The stored body unpacks with GNU tar into the three members.
        let o = Command::new("tar").arg("-tzf").arg(&body).output().unwrap();
        assert!(o.status.success());
        assert_eq!(stdout(&o).matches(".vhd").count(), 3, "{}", stdout(&o));
    }
    assert_eq!(site.snapshot(), snap, "an upload changed the SR");
    assert!(site.staging_dirs().is_empty());
    report.row("4 uploads of chains from one SR at once (v1 stand-in: sqlite Glance refuses concurrent writers)", "-", Some(0), "4 complete tarballs, verified; SR unchanged, no staging");

    // A slow download while sweep runs every 20 ms with --older-than 0.
    let snap = site.snapshot();
    let url = format!("file://{}", site.tarball("slow.tgz").display());
    let dl = Command::new(helpers::bin())
        .args(["download", "--endpoint", &url, "--sr-path"])
        .arg(&site.sr)
        .args([
            "--lock-dir",
            &site.lock_dir(),
            "--no-lock",
            "--rate-limit",
            "8K",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kept = 0;
    let t = Instant::now();
    let mut dl = Some(dl);
    let mut result = None;
    while result.is_none() {
        let o = site.sweep();
        if stdout(&o).contains("in use by a live process") {
            kept += 1;
        }
        if let Some(status) = dl.as_mut().unwrap().try_wait().unwrap() {
            let _ = status;
            result = dl.take().map(|c| c.wait_with_output().unwrap());
        }
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = result.unwrap();
    assert!(
        o.status.success(),
        "the download lost the race: {}",
        stderr(&o)
    );
    assert!(kept > 10, "sweep never saw the live staging dir ({kept})");
    assert_eq!(site.snapshot().len(), snap.len() + 3);
    site.assert_chains_whole("download vs sweep");
    report.row(
        format!(
            "a download at 8 KiB/s while sweep --older-than 0 runs every 20 ms ({kept} sweeps)"
        ),
        "-",
        Some(0),
        "sweep kept the live staging dir every time; whole chain arrived",
    );
}
