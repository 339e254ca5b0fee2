//! Keystone sign-in against the real thing (issue 13, "Show it"): a Keystone 30 and a
//! Glance 33 that checks every token through keystonemiddleware (tests/openstack), plain
//! and over TLS with a private CA. The binary gets a clean environment and only the `OS_*`
//! variables or flags each test names: no endpoint (the catalog gives it), no token.
//! Images are checked through Glance's own record, read with a real token by the tests'
//! own client.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::helpers::{self, stderr, stdout, CHILD_CONTENT, GRANDCHILD_CONTENT, PARENT_CONTENT};
use crate::openstack_stack::{
    self as stack, env_refs, run_clean, run_clean_logged, Stack, TOKEN_EXPIRATION_SECS,
};

/// A scratch directory with an SR holding the tap sample chain (leaf first).
struct Work {
    dir: tempfile::TempDir,
    sr: PathBuf,
    chain: Vec<String>,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        let sr = helpers::new_sr(dir.path());
        let chain = helpers::import_tap_chain(dir.path(), &sr, &[]);
        Work { dir, sr, chain }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `upload --json` of the whole chain with `extra` (the image: `--image-id ID` or
    /// `--create --name N`) under a clean environment plus `env`.
    fn upload(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec![
            "upload",
            "--sr-path",
            self.sr.to_str().unwrap(),
            "--no-lock",
            "--retry-delay",
            "0.01",
            "--json",
        ];
        for u in &self.chain {
            args.extend(["--vdi", u.as_str()]);
        }
        args.extend_from_slice(extra);
        run_clean(self.path(), &args, env)
    }

    /// `download --json` of image `id` into a new SR, under a clean environment plus
    /// `env`; checks that the tap chain arrived whole and returns the JSON.
    fn download_checked(&self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let sr = helpers::new_sr(self.path());
        let mut args = vec![
            "download",
            "--image-id",
            id,
            "--sr-path",
            sr.to_str().unwrap(),
            "--no-lock",
            "--retry-delay",
            "0.01",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run_clean(self.path(), &args, env);
        assert!(o.status.success(), "download {id}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("download --json");
        let chain: Vec<&str> = v["chain"]
            .as_array()
            .expect("chain")
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert_eq!(chain.len(), 3, "{v}");
        for (u, want) in chain
            .iter()
            .zip([GRANDCHILD_CONTENT, CHILD_CONTENT, PARENT_CONTENT])
        {
            let got = helpers::content_sha(self.path(), &sr.join(format!("{u}.vhd")));
            assert_eq!(got, want, "downloaded VDI {u}");
        }
        v
    }
}

/// The upload succeeded, and Glance's record says active with the checksum of what we
/// sent: its id.
fn assert_active(s: &Stack, o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: exit {:?}: {}",
        o.status.code(),
        stderr(o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{what}: upload --json: {e}: {}", stdout(o));
    });
    let id = v["image_id"].as_str().expect("image_id").to_string();
    let rec = s.record(&id);
    assert_eq!(rec["status"], "active", "{what}: {rec}");
    assert_eq!(rec["checksum"], v["stream"]["md5"], "{what}: {rec} vs {v}");
    // To Glance only MD5 is hashed (README "JSON output").
    assert_eq!(v["stream"]["sha512"], Value::Null, "{what}");
    // Through the catalog: the project of the signed-in user owns it.
    assert_eq!(rec["owner"], s.get("PROJECT_ID"), "{what}: {rec}");
    id
}

/// Lines of `log` added since `before` lines that contain `needle`.
fn new_lines(log: &[String], before: usize, needle: &str) -> Vec<String> {
    log[before..]
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Keystone's access log lines since `before` that contain `needle`, once gunicorn has
/// written them: it logs a request after sending the answer, so the client may exit
/// first. Waits for the first such line (at most 10 s), then a little longer for any
/// later one.
fn keystone_lines_settled(s: &Stack, before: usize, needle: &str) -> Vec<String> {
    let t0 = std::time::Instant::now();
    while new_lines(&s.keystone_log(), before, needle).is_empty()
        && t0.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    new_lines(&s.keystone_log(), before, needle)
}

#[test]
fn password_from_os_variables_uploads_and_downloads_through_the_catalog() {
    let _turn = stack::stack_turn();
    let s = stack::plain();
    let w = Work::new();
    let env = s.password_env();
    let env = env_refs(&env);
    let id = s.queued_image("keystone-password");
    let o = w.upload(&["--image-id", &id], &env);
    assert_eq!(assert_active(s, &o, "password upload"), id);
    let v = w.download_checked(&id, &[], &env);
    assert_eq!(v["stream"]["md5"], s.record(&id)["checksum"]);
}

#[test]
fn an_application_credential_from_clouds_yaml_uploads_and_downloads() {
    let _turn = stack::stack_turn();
    let s = stack::plain();
    let w = Work::new();
    let env = s.cloud_env("CLOUD_APPCRED");
    let env = env_refs(&env);
    let o = w.upload(&["--create", "--name", "keystone-appcred"], &env);
    let id = assert_active(s, &o, "application credential upload");
    w.download_checked(&id, &[], &env);
    // The flag names the cloud as well as OS_CLOUD does.
    let file = [("OS_CLIENT_CONFIG_FILE", s.clouds_yaml())];
    w.download_checked(&id, &["--os-cloud", s.get("CLOUD_APPCRED")], &file);
}

/// How a test gives the CA: its name, the flags, the environment.
type Way<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn tls_with_the_ca_given_each_of_the_three_ways() {
    let _turn = stack::stack_turn();
    let s = stack::tls();
    assert!(s.auth_url().starts_with("https://"), "{}", s.auth_url());
    let w = Work::new();
    let password = s.password_env();
    let with_ca = |extra: &[(&'static str, String)]| {
        let mut e = password.clone();
        e.extend_from_slice(extra);
        e
    };
    let cacert_env = with_ca(&[("OS_CACERT", s.cacert().to_string())]);
    let cloud_env = s.cloud_env("CLOUD_APPCRED");
    let ways: [Way; 3] = [
        (
            "--cacert",
            vec!["--cacert", s.cacert()],
            env_refs(&password),
        ),
        ("OS_CACERT", vec![], env_refs(&cacert_env)),
        ("clouds.yaml cacert", vec![], env_refs(&cloud_env)),
    ];
    for (what, flags, env) in ways {
        let name = format!("keystone-tls-{what}");
        let mut extra = vec!["--create", "--name", &name];
        extra.extend_from_slice(&flags);
        let o = w.upload(&extra, &env);
        let id = assert_active(s, &o, what);
        let v = w.download_checked(&id, &flags, &env);
        assert_eq!(v["stream"]["md5"], s.record(&id)["checksum"], "{what}");
    }
}

#[test]
fn an_upload_that_outlives_its_token_ends_active() {
    let _turn = stack::stack_turn();
    let s = stack::plain();
    let dir = tempfile::tempdir().unwrap();
    let sr = helpers::new_sr(dir.path());
    // 2 MiB of random data at 64 KiB/s: about 32 s on the wire, longer than a token lives.
    let vdi = helpers::random_vdi(&sr, 2);
    let env = s.password_env();
    let o = run_clean(
        dir.path(),
        &[
            "upload",
            "--sr-path",
            sr.to_str().unwrap(),
            "--vdi",
            &vdi,
            "--create",
            "--name",
            "keystone-long",
            "--rate-limit",
            "64K",
            "--no-lock",
            "--json",
        ],
        &env_refs(&env),
    );
    let id = assert_active(s, &o, "long upload");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    // The premise, not a speed: the upload lasted longer than the token it began with.
    let secs = v["summary"]["seconds"].as_f64().expect("summary.seconds");
    assert!(
        secs > TOKEN_EXPIRATION_SECS as f64,
        "the upload took {secs} s, not longer than a token ({TOKEN_EXPIRATION_SECS} s): {v}"
    );
    assert_eq!(v["summary"]["attempts"], 1, "{v}");
    assert_eq!(o.status.code(), Some(0));
    let _ = id;
}

#[test]
fn a_wrong_password_or_secret_fails_once_naming_the_auth_url_and_is_never_shown() {
    let _turn = stack::stack_turn();
    let s = stack::plain();
    let w = Work::new();
    const WRONG: &str = "wrong-pw-Xy9q3Lm7";
    let mut password = s.password_env();
    password.retain(|(k, _)| *k != "OS_PASSWORD");
    password.push(("OS_PASSWORD", WRONG.to_string()));
    let appcred: Vec<(&'static str, String)> = vec![
        ("OS_AUTH_URL", s.auth_url().to_string()),
        ("OS_AUTH_TYPE", "v3applicationcredential".to_string()),
        (
            "OS_APPLICATION_CREDENTIAL_ID",
            s.get("APP_CRED_ID").to_string(),
        ),
        ("OS_APPLICATION_CREDENTIAL_SECRET", WRONG.to_string()),
    ];
    for (what, env) in [("password", password), ("application credential", appcred)] {
        let ks_before = s.keystone_log().len();
        let gl_before = s.glance_log().len();
        let args = [
            "upload",
            "--sr-path",
            w.sr.to_str().unwrap(),
            "--leaf",
            &w.chain[0],
            "--create",
            "--name",
            "never",
            "--no-lock",
            "--retry-delay",
            "0.01",
            "-v",
        ];
        let (o, syslog) = run_clean_logged(w.path(), &args, &env_refs(&env));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("authentication failed") && err.contains(s.auth_url()),
            "{what}: the message names the failure and the auth URL: {err}"
        );
        // Exactly one sign-in refused by Keystone: a wrong secret is not retried.
        let refused = keystone_lines_settled(s, ks_before, "POST /v3/auth/tokens");
        assert_eq!(refused.len(), 1, "{what}: {refused:?}\n{err}");
        assert!(refused[0].contains("\" 401 "), "{what}: {refused:?}");
        // Nothing reached Glance.
        let glance = new_lines(&s.glance_log(), gl_before, "");
        assert!(glance.is_empty(), "{what}: {glance:?}");
        let all = format!("{}\n{err}\n{}", stdout(&o), syslog.join("\n"));
        assert!(!all.contains(WRONG), "{what}: the secret was shown:\n{all}");
        // Not vacuous: a failed CLI run says so in syslog (issue 13, item 3).
        assert!(
            syslog.iter().any(|l| l.contains("authentication failed")),
            "{what}: the failure is not in syslog: {syslog:?}"
        );
    }
}

#[test]
fn tls_without_the_ca_is_a_certificate_error_and_is_not_retried() {
    let _turn = stack::stack_turn();
    let s = stack::tls();
    let w = Work::new();
    // Keystone behind a proxy that counts connections (it forwards bytes, TLS intact: the
    // certificate is for 127.0.0.1, which the proxy is too).
    let ks_port: u16 = s
        .get("KEYSTONE_URL")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("Keystone's port");
    let count = w.path().join("connections");
    let proxy = helpers::Peer::flaky_proxy(ks_port, 0, &count);
    let mut env = s.password_env();
    env.retain(|(k, _)| *k != "OS_AUTH_URL");
    let auth_url = format!("https://127.0.0.1:{}/v3", proxy.port);
    env.push(("OS_AUTH_URL", auth_url.clone()));
    let gl_before = s.glance_log().len();
    let o = w.upload(&["--create", "--name", "never"], &env_refs(&env));
    drop(proxy);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "a certificate error: {err}"
    );
    assert!(err.contains(&auth_url), "names the auth URL: {err}");
    let connections = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(connections.lines().count(), 1, "{connections}\n{err}");
    assert!(new_lines(&s.glance_log(), gl_before, "").is_empty());
    assert!(!format!("{}{err}", stdout(&o)).contains(s.password()));
}

#[test]
fn a_versioned_endpoint_does_not_become_v2_v2() {
    let _turn = stack::stack_turn();
    let s = stack::plain();
    let w = Work::new();
    let gl_before = s.glance_log().len();
    let env = s.password_env();
    // Given: --endpoint …/v2 (with a token from Keystone).
    let versioned = format!("{}/v2", s.glance_url());
    let o = w.upload(
        &[
            "--create",
            "--name",
            "keystone-versioned",
            "--endpoint",
            &versioned,
        ],
        &env_refs(&env),
    );
    let id = assert_active(s, &o, "--endpoint …/v2");
    // From the catalog: RegionTwo lists the image endpoint as …/v2.
    let mut region_two = s.password_env();
    region_two.retain(|(k, _)| *k != "OS_REGION_NAME");
    region_two.push(("OS_REGION_NAME", s.get("REGION_V2").to_string()));
    let v = w.download_checked(&id, &[], &env_refs(&region_two));
    assert_eq!(v["stream"]["md5"], s.record(&id)["checksum"]);
    let doubled = new_lines(&s.glance_log(), gl_before, "/v2/v2");
    assert!(doubled.is_empty(), "{doubled:?}");
    let used = new_lines(&s.glance_log(), gl_before, &format!("/v2/images/{id}"));
    assert!(!used.is_empty(), "the image was never requested");
}
