//! Retries against the real Glance: across endpoints through a proxy that resets
//! connections, a 404 not retried, an upload retry that re-checks `queued`.

use super::*;

// ---- Retries against the real Glance ------------------------------------------------

fn connections(count_file: &Path) -> usize {
    std::fs::read_to_string(count_file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn download_retries_move_to_the_next_endpoint() {
    let _turn = helpers::glance_turn();
    let s = Scratch::new(2);
    let url = s.image("img.tgz");
    let id = helpers::glance_image(Some(Path::new(url.trim_start_matches("file://"))));
    let (count_a, count_b) = (s.path("a.count"), s.path("b.count"));
    // A resets its first 2 connections, B its first 1: A, B, A fail; B's second works.
    let a = Peer::flaky_proxy(helpers::glance_port(), 2, &count_a);
    let b = Peer::flaky_proxy(helpers::glance_port(), 1, &count_b);
    let o = s.run(&[
        "download",
        "--endpoint",
        &a.url(),
        "--endpoint",
        &b.url(),
        "--image-id",
        &id,
        "--sr-path",
        s.sr2.to_str().unwrap(),
        "--lock-dir",
        &s.lock_dir(),
        "--retries",
        "3",
        "--retry-delay",
        "0.1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["attempts"], 4, "{v}");
    assert_eq!(v["summary"]["endpoint"], b.url().as_str());
    assert_eq!(v["summary"]["image_id"], id.as_str());
    let err = stderr(&o);
    let retried: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(retried.len(), 3, "{err}");
    assert!(retried[0].contains(&format!("via {}", b.url())), "{err}");
    assert!(retried[1].contains(&format!("via {}", a.url())), "{err}");
    assert_eq!(connections(&count_a), 2);
    assert!(connections(&count_b) >= 2);
    // The chain arrived whole.
    let leaf = v["root"]["uuid"].as_str().unwrap();
    let o = s.run(&[
        "vhd",
        "check",
        "--parents",
        s.sr2.join(format!("{leaf}.vhd")).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));

    // Too few retries: exit 5 (retryable, retries used up), nothing in the SR.
    let a = Peer::flaky_proxy(helpers::glance_port(), 10, &s.path("c.count"));
    let sr3 = s.path(&uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&sr3).unwrap();
    let o = s.run(&[
        "download",
        "--endpoint",
        &a.url(),
        "--image-id",
        &id,
        "--sr-path",
        sr3.to_str().unwrap(),
        "--lock-dir",
        &s.lock_dir(),
        "--retries",
        "2",
        "--retry-delay",
        "0.05",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(connections(&s.path("c.count")), 3);
    assert_eq!(std::fs::read_dir(&sr3).unwrap().count(), 0);
}

#[test]
fn not_found_is_not_retried() {
    let _turn = helpers::glance_turn();
    let s = Scratch::new(1);
    let count = s.path("count");
    let proxy = Peer::flaky_proxy(helpers::glance_port(), 0, &count);
    let t = Instant::now();
    let o = s.run(&[
        "download",
        "--endpoint",
        &proxy.url(),
        "--endpoint",
        &proxy.url(),
        "--image-id",
        "00000000-0000-4000-8000-000000000404",
        "--sr-path",
        s.sr2.to_str().unwrap(),
        "--lock-dir",
        &s.lock_dir(),
        "--retries",
        "3",
        "--retry-delay",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 404"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("retrying"), "{}", stderr(&o));
    assert_eq!(connections(&count), 1);
    assert!(t.elapsed() < Duration::from_secs(1), "it waited to retry");
}

/// An upload cut halfway (the proxy resets the first connection after 1 MiB of the
/// request) is retried: the image is checked to be still queued, the whole tarball goes
/// again, and the image becomes active with our checksum — one image, not two.
#[test]
fn upload_retry_rechecks_queued_and_completes() {
    let _turn = helpers::glance_turn();
    let s = Scratch::new(6);
    let count = s.path("count");
    let cut = Peer::spawn_cut_first(helpers::glance_port(), 1 << 20, &count);
    let name = format!("retry-{}", uuid::Uuid::new_v4());
    let o = s.run(&[
        "upload",
        "--endpoint",
        &cut.url(),
        "--sr-path",
        s.sr.to_str().unwrap(),
        "--leaf",
        &s.vdi,
        "--create",
        "--name",
        &name,
        "--retries",
        "2",
        "--retry-delay",
        "0.1",
        "--json",
        "-v",
        "--no-lock",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["image_id"].as_str().unwrap();
    assert_eq!(v["summary"]["attempts"], 2, "{v}");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("checking that image {id} is still queued")),
        "{err}"
    );
    assert_eq!(err.matches("created image").count(), 1, "{err}");
    let o = helpers::glance_client(&["show", id]);
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["checksum"], v["summary"]["md5"]);
    assert_eq!(rec["size"], v["summary"]["bytes"]);
}
