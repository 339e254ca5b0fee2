//! The xapi plugin, driven as xapi drives it: the shim run under `dash` with an empty
//! environment and one argument, the call built and the response read by Python
//! (`xmlrpc.client`, `pickle`: tests/plugin/caller.py). Glance is the v1 stand-in here;
//! the helpers take an endpoint and an API version so a real Glance plugs in the same
//! way. Kernel calls run against a xapi stand-in (tests/plugin/xapi_standin.py).

use crate::helpers;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

pub(crate) fn helper(name: &str) -> PathBuf {
    helpers::repo().join("tests/plugin").join(name)
}

/// A copy of a shim as `make install` writes it, pointing at the binary under test,
/// installed under `name` (glance, glance.py, kernel, kernel.py).
pub(crate) fn install_shim(dir: &Path, name: &str) -> PathBuf {
    install_shim_running(dir, name, helpers::bin().to_str().expect("utf-8 path"))
}

/// The same, with the shim's one `exec` running `command` in place of the installed
/// binary's path (the binary under strace, say).
pub(crate) fn install_shim_running(dir: &Path, name: &str, command: &str) -> PathBuf {
    assert!(
        Path::new("/usr/bin/dash").exists() || Path::new("/bin/dash").exists(),
        "dash is needed to run the shims as xapi's /bin/sh would (apt-get install dash)"
    );
    let base = name.strip_suffix(".py").unwrap_or(name);
    let text =
        std::fs::read_to_string(helpers::repo().join("plugin-wrapper").join(base)).expect("shim");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("exec ")).count(),
        1,
        "one exec line"
    );
    let text = text.replace("/usr/local/bin/glance-vhd", command);
    assert!(text.contains(command), "the shim names the binary: {text}");
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Run one call through caller.py; returns its JSON (status, value or error, exit).
pub(crate) fn call(req: Value) -> Value {
    let mut child = Command::new("python3")
        .arg(helper("caller.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "caller.py failed (the response did not parse?): {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("caller.py JSON");
    assert_eq!(v["exit"], 0, "the plugin must exit 0: {v}");
    v
}

pub(crate) fn success(v: &Value) -> &Value {
    assert_eq!(v["status"], "Success", "{v}");
    &v["value"]
}

pub(crate) fn failure(v: &Value) -> Vec<String> {
    assert_eq!(v["status"], "Failure", "{v}");
    v["error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// ---- an SR with the sample chain, and a Glance ----

const UUIDS: [&str; 3] = [
    "bbbbbbbb-0000-4000-8000-000000000001",
    "bbbbbbbb-0000-4000-8000-000000000002",
    "bbbbbbbb-0000-4000-8000-000000000003",
];

struct Sr {
    dir: tempfile::TempDir,
    sr: PathBuf,
}

impl Sr {
    /// The tap sample chain grandchild → child → parent as VDIs `UUIDS`, imported by our
    /// own CLI from a GNU tar tarball.
    fn with_chain() -> Sr {
        let dir = tempfile::tempdir().unwrap();
        let sr = Sr::fresh(&dir);
        helpers::import_tap_chain(dir.path(), &sr, &UUIDS);
        Sr { dir, sr }
    }

    /// An empty SR directory named like one (its name is the SR UUID for the lock).
    fn fresh(dir: &tempfile::TempDir) -> PathBuf {
        helpers::new_sr(dir.path())
    }

    fn env(&self) -> Value {
        json!({"GLANCE_VHD_LOCK_DIR": self.dir.path().join("lock").to_str().unwrap()})
    }

    /// The virtual disk a VHD chain reads as, hashed (through the parents).
    fn disk_sha(&self, leaf: &Path) -> String {
        helpers::content_sha(self.dir.path(), leaf)
    }
}

/// The Glance v1 stand-in (tests/peers/glance_v1_standin.py).
use crate::helpers::Peer as Standin;

/// `upload_vhd2` of the SR's chain as `image_id`, then `download_vhd2` of it into a fresh
/// SR: the downloaded chain reads as the same disk. `endpoint`/`api_version` pick the
/// Glance (the v1 stand-in here; a real Glance v2 in tests/glance).
fn upload2_then_download2(endpoint: &str, api_version: i64, image_id: &str, token: &str) {
    let s = Sr::with_chain();
    let dir = tempfile::tempdir().unwrap();
    let shim = install_shim(dir.path(), "glance");
    let headers = json!({"X-Auth-Token": token, "X-Tenant-Id": "t1", "X-Roles": "admin"});
    // Python form, protocol 2 (base64 in the call); positional image id.
    let up = call(json!({
        "shim": shim, "fn": "upload_vhd2", "form": "python", "protocol": 2,
        "env": s.env(), "unpickle": true,
        "args": [UUIDS],
        "kwargs": {
            "image_id": image_id, "endpoint": endpoint, "sr_path": s.sr,
            "extra_headers": headers,
            "properties": {"os_type": "linux", "auto_disk_config": true,
                           "xenapi_image_compression_level": 9},
            "api_version": api_version,
        },
    }));
    assert_eq!(success(&up), &Value::Null, "pickle of None: {up}");
    assert_eq!(up["raw_value"], "N.");
    // xapi form (bare values), protocol 0, into a fresh SR.
    let fresh = Sr::fresh(&s.dir);
    let stack = [
        "cccccccc-0000-4000-8000-000000000003",
        "cccccccc-0000-4000-8000-000000000002",
        "cccccccc-0000-4000-8000-000000000001",
    ];
    let down = call(json!({
        "shim": shim, "fn": "download_vhd2", "form": "xapi", "protocol": 0,
        "env": s.env(), "unpickle": true,
        "kwargs": {
            "image_id": image_id, "endpoint": endpoint, "uuid_stack": stack,
            "sr_path": fresh, "extra_headers": headers, "api_version": api_version,
        },
    }));
    // Popped from the end: the leaf is the last UUID given.
    assert_eq!(
        success(&down),
        &json!({"root": {"uuid": stack[2]}}),
        "{down}"
    );
    assert!(down["raw_value"]
        .as_str()
        .unwrap()
        .starts_with("(dp0\nS'root'\np1\n(dp2\nS'uuid'"));
    for u in stack {
        assert!(fresh.join(format!("{u}.vhd")).exists(), "{u}");
    }
    assert_eq!(
        s.disk_sha(&fresh.join(format!("{}.vhd", stack[2]))),
        s.disk_sha(&s.sr.join(format!("{}.vhd", UUIDS[0])))
    );
}

#[test]
fn upload_vhd2_then_download_vhd2_api_v1() {
    let dir = tempfile::tempdir().unwrap();
    let g = Standin::start(&dir.path().join("store"), &["--require-token", "tok-1"]);
    upload2_then_download2(&g.url(), 1, "img-v1", "tok-1");
    let h: Value = serde_json::from_str(
        &std::fs::read_to_string(g.dir.join("img-v1.put-headers.json")).unwrap(),
    )
    .unwrap();
    let h: std::collections::HashMap<String, String> = h
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(h["x-auth-token"], "tok-1");
    assert_eq!(h["x-tenant-id"], "t1");
    assert_eq!(h["x-image-meta-property-os_type"], "linux");
    // Python's str(True), as the old plugin sent it.
    assert_eq!(h["x-image-meta-property-auto_disk_config"], "True");
    // Level 9: the gzip header's XFL byte says "maximum compression".
    let stored = std::fs::read(g.dir.join("img-v1")).unwrap();
    assert_eq!(&stored[..2], b"\x1f\x8b");
    assert_eq!(stored[8], 2, "XFL of a level-9 gzip");
}

#[test]
fn diablo_upload_vhd_and_download_vhd() {
    let s = Sr::with_chain();
    let g = Standin::start(&s.dir.path().join("store"), &["--require-token", "tok-d"]);
    let shim = install_shim(s.dir.path(), "glance.py");
    let up = call(json!({
        "shim": shim, "fn": "upload_vhd", "env": s.env(),
        "diablo": {
            "vdi_uuids": {"snap": UUIDS[0], "image": UUIDS[1], "base": UUIDS[2]},
            "image_id": "img-d", "glance_host": "127.0.0.1", "glance_port": g.port,
            "sr_path": s.sr, "auth_token": "tok-d", "os_type": "linux",
        },
    }));
    assert_eq!(success(&up), "", "Diablo returns an empty string: {up}");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(g.dir.join("img-d"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    for n in ["snap.vhd", "image.vhd", "base.vhd"] {
        assert!(names.contains(n), "{names}");
    }
    let fresh = Sr::fresh(&s.dir);
    let stack = [
        "dddddddd-0000-4000-8000-000000000003",
        "dddddddd-0000-4000-8000-000000000002",
        "dddddddd-0000-4000-8000-000000000001",
    ];
    let down = call(json!({
        "shim": shim, "fn": "download_vhd", "env": s.env(),
        "diablo": {
            "image_id": "img-d", "glance_host": "127.0.0.1", "glance_port": g.port.to_string(),
            "uuid_stack": stack, "sr_path": fresh, "auth_token": "tok-d",
        },
    }));
    // Diablo's json.dumps of the imported VDIs.
    assert_eq!(
        success(&down),
        &json!(format!(
            r#"[{{"vdi_type": "os", "vdi_uuid": "{}"}}]"#,
            stack[2]
        ))
    );
    assert_eq!(
        s.disk_sha(&fresh.join(format!("{}.vhd", stack[2]))),
        s.disk_sha(&s.sr.join(format!("{}.vhd", UUIDS[0])))
    );
    // Folsom's download_vhd (host/port kwargs, /v1/images) of the same image.
    let fresh = Sr::fresh(&s.dir);
    let down = call(json!({
        "shim": shim, "fn": "download_vhd", "env": s.env(), "unpickle": true,
        "kwargs": {
            "image_id": "img-d", "glance_host": "127.0.0.1", "glance_port": g.port,
            "glance_use_ssl": false, "uuid_stack": stack, "sr_path": fresh,
            "extra_headers": {"X-Auth-Token": "tok-d"},
        },
    }));
    assert_eq!(success(&down), &json!({"root": {"uuid": stack[2]}}));
    // And Folsom's upload_vhd (pickled None).
    let up = call(json!({
        "shim": shim, "fn": "upload_vhd", "env": s.env(), "unpickle": true,
        "kwargs": {
            "vdi_uuids": UUIDS, "image_id": "img-f", "glance_host": "127.0.0.1",
            "glance_port": g.port, "glance_use_ssl": false, "sr_path": s.sr,
            "extra_headers": {"X-Auth-Token": "tok-d"}, "properties": {},
        },
    }));
    assert_eq!(success(&up), &Value::Null);
    assert!(g.dir.join("img-f").exists());
}

pub(crate) fn plugin_failure(shim: &Path, env: &Value, req: Value) -> Vec<String> {
    let mut req = req;
    req["shim"] = json!(shim);
    req["env"] = env.clone();
    failure(&call(req))
}

#[test]
fn store_failures_have_nova_shapes() {
    let s = Sr::with_chain();
    let shim = install_shim(s.dir.path(), "glance");
    let env = s.env();
    let upload = |g: &Standin, id: &str| {
        json!({"fn": "upload_vhd2", "kwargs": {
            "vdi_uuids": UUIDS, "image_id": id, "endpoint": g.url(), "sr_path": s.sr,
            "extra_headers": {}, "properties": {}, "api_version": 1}})
    };
    let download = |g: &Standin, id: &str| {
        let fresh = Sr::fresh(&s.dir);
        json!({"fn": "download_vhd2", "kwargs": {
            "image_id": id, "endpoint": g.url(), "sr_path": fresh,
            "uuid_stack": UUIDS, "extra_headers": {}, "api_version": 1}})
    };
    {
        let g = Standin::start(&s.dir.path().join("s404"), &["--status", "404"]);
        assert_eq!(
            plugin_failure(&shim, &env, upload(&g, "img")),
            [
                "XENAPI_PLUGIN_FAILURE",
                "upload_vhd2",
                "PluginError",
                "ImageNotFound"
            ]
        );
        let f = plugin_failure(&shim, &env, download(&g, "img"));
        assert_eq!(
            f[..3],
            ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "PluginError"]
        );
        assert!(f[3].contains("HTTP 404"), "{f:?}");
    }
    {
        let g = Standin::start(&s.dir.path().join("s409"), &["--status", "409"]);
        let f = plugin_failure(&shim, &env, upload(&g, "img"));
        assert_eq!(
            f[..3],
            ["XENAPI_PLUGIN_FAILURE", "upload_vhd2", "PluginError"]
        );
        assert!(f[3].contains("HTTP 409"), "{f:?}");
    }
    {
        let g = Standin::start(&s.dir.path().join("s503"), &["--status", "503"]);
        let f = plugin_failure(&shim, &env, upload(&g, "img"));
        assert_eq!(f[2], "RetryableError", "{f:?}");
        let f = plugin_failure(&shim, &env, download(&g, "img"));
        assert_eq!(f[2], "RetryableError", "{f:?}");
    }
    {
        // An image that already has data is not queued: refused before any byte.
        let g = Standin::start(&s.dir.path().join("active"), &[]);
        std::fs::write(g.dir.join("done"), b"x").unwrap();
        let f = plugin_failure(&shim, &env, upload(&g, "done"));
        assert_eq!(
            f[..3],
            ["XENAPI_PLUGIN_FAILURE", "upload_vhd2", "PluginError"]
        );
        assert!(f[3].contains("not \"queued\""), "{f:?}");
        // A tarball that is not one.
        std::fs::write(g.dir.join("bad"), b"this is not a gzipped tarball").unwrap();
        let f = plugin_failure(&shim, &env, download(&g, "bad"));
        assert_eq!(
            f[..3],
            ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "PluginError"]
        );
        // Nothing left in the SRs.
        for e in std::fs::read_dir(s.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir()
                && uuid::Uuid::parse_str(&p.file_name().unwrap().to_string_lossy()).is_ok()
                && p != s.sr
            {
                assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0, "{}", p.display());
            }
        }
    }
}

#[test]
fn protocol_failures_have_documented_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let shim = install_shim(dir.path(), "glance");
    let env = json!({});
    let f = |req: Value| plugin_failure(&shim, &env, req);
    assert_eq!(
        f(
            json!({"fn": "download_vhd2", "kwargs": {"endpoint": "http://g", "sr_path": "/x", "uuid_stack": []}})
        ),
        [
            "XENAPI_PLUGIN_FAILURE",
            "download_vhd2",
            "ArgumentError",
            "Argument image_id is required."
        ]
    );
    assert_eq!(
        f(json!({"fn": "download_vhd2", "form": "xapi", "plain": {"host_uuid": "x"}})),
        [
            "XENAPI_PLUGIN_FAILURE",
            "download_vhd2",
            "ArgumentError",
            "Argument params is required."
        ]
    );
    assert_eq!(
        f(json!({"fn": "no_such_call", "plain": {}})),
        ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "no_such_call"]
    );
    // A kernel call is not a glance call.
    assert_eq!(
        f(json!({"fn": "create_kernel_ramdisk", "plain": {}})),
        ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "create_kernel_ramdisk"]
    );
    for xml in [
        "",
        "garbage",
        "<methodCall><methodName>x",
        "<!DOCTYPE a [<!ENTITY e 'x'>]><methodCall/>",
    ] {
        let e = f(json!({"xml": xml}));
        assert_eq!(
            e[..3],
            ["XENAPI_PLUGIN_FAILURE", "", "ArgumentError"],
            "{xml:?}"
        );
        assert!(e[3].starts_with("cannot parse the XML-RPC call"), "{e:?}");
    }
    for argv in [json!([]), json!(["a", "b"])] {
        let e = f(json!({"argv": argv}));
        assert_eq!(e[2], "ArgumentError", "{e:?}");
    }
    for garbage in ["", "not a pickle", "(dp0\nS'a'\n", "\u{80}\u{02}}q\u{01}"] {
        let e = f(json!({"fn": "download_vhd2", "raw_params": garbage}));
        assert_eq!(
            e[..3],
            ["XENAPI_PLUGIN_FAILURE", "download_vhd2", "ArgumentError"],
            "{garbage:?}"
        );
        assert!(e[3].starts_with("params: "), "{e:?}");
    }
    // Protocol 0 params that are not the Folsom shape.
    let e = f(json!({"fn": "upload_vhd2", "diablo": {"image_id": "x"}}));
    assert_eq!(e[2], "ArgumentError", "{e:?}");
}

#[test]
fn a_pickle_that_runs_code_in_python_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let shim = install_shim(dir.path(), "glance");
    for p in [
        format!("cos\nsystem\n(S'touch {}'\ntR.", pwned.display()),
        format!("cposix\nsystem\n(S'touch {}'\ntR.", pwned.display()),
        format!(
            "(dp0\nS'kwargs'\np1\ncos\nsystem\n(S'touch {}'\ntRs.",
            pwned.display()
        ),
    ] {
        for f in ["download_vhd", "upload_vhd2"] {
            let e = failure(&call(json!({"shim": shim, "fn": f, "raw_params": p})));
            assert_eq!(e[..3], ["XENAPI_PLUGIN_FAILURE", f, "ArgumentError"]);
            assert!(e[3].contains("globals are not accepted"), "{e:?}");
        }
    }
    // The very pickle of the issue: Python would create /tmp/pwned.
    let before = Path::new("/tmp/pwned").exists();
    let e = failure(&call(
        json!({"shim": shim, "fn": "download_vhd2", "raw_params": "cos\nsystem\n(S'touch /tmp/pwned'\ntR."}),
    ));
    assert_eq!(e[2], "ArgumentError");
    assert_eq!(Path::new("/tmp/pwned").exists(), before, "the pickle ran");
    assert!(!pwned.exists(), "the pickle ran");
}

// ---- kernel calls against the xapi stand-in ----

pub(crate) struct Xapi(helpers::XapiStandin);

pub(crate) const VDI_UUID: &str = "eeeeeeee-0000-4000-8000-00000000000e";

impl Xapi {
    /// A stand-in with one VDI `OpaqueRef:vdi-k` backed by `device` (a plain file),
    /// which refuses the first VBD unplug (as a busy dom0 does).
    fn start(device: &Path) -> Xapi {
        Xapi::start_with(device, true)
    }

    /// The same; `reject_unplug_once` false: every unplug succeeds.
    pub(crate) fn start_with(device: &Path, reject_unplug_once: bool) -> Xapi {
        let vdi = format!("OpaqueRef:vdi-k={VDI_UUID}={}", device.display());
        let mut args = vec!["--vdi", &vdi];
        if reject_unplug_once {
            args.push("--reject-unplug-once");
        }
        Xapi(helpers::XapiStandin::start(&args))
    }

    pub(crate) fn env(&self) -> Value {
        let p = |n: &str| self.0.path(n).to_str().unwrap().to_string();
        json!({
            "GLANCE_VHD_XAPI_SOCKET": p("xapi.sock"),
            "GLANCE_VHD_BOOT_GUEST": p("boot"),
            "GLANCE_VHD_DEV_DIR": p("dev"),
        })
    }

    pub(crate) fn boot(&self) -> PathBuf {
        self.0.path("boot")
    }

    fn methods(&self) -> Vec<String> {
        self.0.methods()
    }

    /// Every VBD created was destroyed, and no device is left plugged.
    fn assert_clean(&self) {
        let vbds = std::fs::read_to_string(self.0.path("state.vbds")).unwrap();
        assert_eq!(vbds.trim(), "{}", "VBDs left: {vbds}");
        assert_eq!(std::fs::read_dir(self.0.path("dev")).unwrap().count(), 0);
        let m = self.methods();
        assert_eq!(
            m.iter().filter(|x| *x == "VBD.create").count(),
            m.iter().filter(|x| *x == "VBD.destroy").count(),
            "{m:?}"
        );
    }
}

/// A "device" of `len` bytes with a recognisable pattern.
fn device(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join("vdi.img");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn copy_vdi_copies_exactly_image_size_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    let dev = device(d.path(), 3 << 20);
    let x = Xapi::start(&dev);
    let kernel = install_shim(d.path(), "kernel");
    let size = (1 << 20) + 12345;
    let v = call(json!({
        "shim": kernel, "fn": "copy_vdi", "form": "xapi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": size.to_string(),
                  "cached-image": "cached-kernel-1", "host_uuid": "ignored"},
    }));
    let path = x.boot().join(VDI_UUID);
    assert_eq!(success(&v), path.to_str().unwrap());
    let copied = std::fs::read(&path).unwrap();
    assert_eq!(copied.len(), size);
    assert_eq!(copied[..], std::fs::read(&dev).unwrap()[..size]);
    assert_eq!(
        std::fs::read(x.boot().join("cached-kernel-1")).unwrap(),
        copied
    );
    // The rejected unplug was retried, then the VBD destroyed.
    let m = x.methods();
    assert_eq!(m.iter().filter(|x| *x == "VBD.unplug").count(), 2, "{m:?}");
    assert!(m.contains(&"VM.get_all_records_where".to_string()));
    x.assert_clean();
    // Only the copies are in the boot directory (no temporary names).
    let mut names: Vec<_> = std::fs::read_dir(x.boot())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cached-kernel-1", VDI_UUID]);

    // create_kernel_ramdisk: a copy of the cached image; "" when not cached.
    let v = call(json!({
        "shim": kernel, "fn": "create_kernel_ramdisk", "env": x.env(),
        "plain": {"cached-image": "cached-kernel-1", "new-image-uuid": "new-1"},
    }));
    assert_eq!(success(&v), x.boot().join("new-1").to_str().unwrap());
    assert_eq!(std::fs::read(x.boot().join("new-1")).unwrap(), copied);
    let v = call(json!({
        "shim": kernel, "fn": "create_kernel_ramdisk", "env": x.env(),
        "plain": {"cached-image": "not-cached", "new-image-uuid": "new-2"},
    }));
    assert_eq!(success(&v), "");

    // remove_kernel_ramdisk: inside the boot directory only.
    let outside = d.path().join("precious");
    std::fs::write(&outside, b"keep").unwrap();
    for bad in [
        format!("{}/../precious", x.boot().display()),
        outside.display().to_string(),
        "/etc/passwd".to_string(),
    ] {
        let e = failure(&call(json!({
            "shim": kernel, "fn": "remove_kernel_ramdisk", "env": x.env(),
            "plain": {"kernel-file": path.to_str().unwrap(), "ramdisk-file": bad},
        })));
        assert_eq!(
            e[..3],
            [
                "XENAPI_PLUGIN_FAILURE",
                "remove_kernel_ramdisk",
                "PluginError"
            ]
        );
        assert!(e[3].contains("not a file directly inside"), "{e:?}");
    }
    assert!(
        outside.exists() && path.exists(),
        "nothing removed when one path is refused"
    );
    let v = call(json!({
        "shim": kernel, "fn": "remove_kernel_ramdisk", "env": x.env(),
        "plain": {"kernel-file": path.to_str().unwrap(), "ramdisk-file": x.boot().join("gone").to_str().unwrap()},
    }));
    assert_eq!(success(&v), "ok");
    assert!(!path.exists());
    // `../` in a cache name is refused before xapi is asked anything.
    let e = failure(&call(json!({
        "shim": kernel, "fn": "create_kernel_ramdisk", "env": x.env(),
        "plain": {"cached-image": "../precious", "new-image-uuid": "x"},
    })));
    assert_eq!(e[2], "PluginError");
    let e = failure(&call(json!({
        "shim": kernel, "fn": "copy_vdi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": "10", "cached-image": "../x"},
    })));
    assert_eq!(e[2], "PluginError");
    let e = failure(&call(json!({
        "shim": kernel, "fn": "copy_vdi", "env": x.env(), "plain": {"vdi-ref": "OpaqueRef:vdi-k"},
    })));
    assert_eq!(
        e,
        [
            "XENAPI_PLUGIN_FAILURE",
            "copy_vdi",
            "ArgumentError",
            "Argument image-size is required."
        ]
    );
}

#[test]
fn a_failed_copy_still_destroys_the_vbd() {
    let d = tempfile::tempdir().unwrap();
    let dev = device(d.path(), 4096);
    let x = Xapi::start(&dev);
    // The Diablo name, in the glance plugin.
    let glance = install_shim(d.path(), "glance");
    let e = failure(&call(json!({
        "shim": glance, "fn": "copy_kernel_vdi", "form": "xapi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": "8192"},
    })));
    assert_eq!(
        e[..3],
        ["XENAPI_PLUGIN_FAILURE", "copy_kernel_vdi", "PluginError"]
    );
    assert!(e[3].contains("4096 bytes, but the image is 8192"), "{e:?}");
    x.assert_clean();
    assert_eq!(
        std::fs::read_dir(x.boot()).unwrap().count(),
        0,
        "no partial file"
    );
    // A VDI xapi does not know: the failure is xapi's, nothing was created.
    let e = failure(&call(json!({
        "shim": glance, "fn": "copy_kernel_vdi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:nope", "image-size": "1"},
    })));
    assert!(e[3].contains("HANDLE_INVALID"), "{e:?}");
    x.assert_clean();
    // The session is the caller's, passed through.
    let e = failure(&call(json!({
        "shim": glance, "fn": "copy_kernel_vdi", "env": x.env(), "session": "OpaqueRef:other",
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": "1"},
    })));
    assert!(e[3].contains("SESSION_INVALID"), "{e:?}");
}

#[test]
fn copy_vdi_streams() {
    let d = tempfile::tempdir().unwrap();
    // A sparse 192 MiB device: the copy must not hold it in memory.
    let dev = d.path().join("big.img");
    std::fs::File::create(&dev)
        .unwrap()
        .set_len(192 << 20)
        .unwrap();
    let x = Xapi::start(&dev);
    let kernel = install_shim(d.path(), "kernel");
    let v = call(json!({
        "shim": kernel, "fn": "copy_vdi", "env": x.env(),
        "plain": {"vdi-ref": "OpaqueRef:vdi-k", "image-size": (160u64 << 20).to_string()},
    }));
    success(&v);
    assert_eq!(
        std::fs::metadata(x.boot().join(VDI_UUID)).unwrap().len(),
        160 << 20
    );
    let rss = v["maxrss_kib"].as_u64().unwrap();
    assert!(rss < 64 << 10, "peak RSS {rss} KiB for a 160 MiB copy");
    x.assert_clean();
}

/// The same round trip through the shim against the real Glance 33 (v2), as Nova /
/// os-xenapi drive it: `upload_vhd2` into a queued image, `download_vhd2` back.
#[test]
fn upload_vhd2_then_download_vhd2_against_the_real_glance_v2() {
    // One binary now: take turns with the other tests that use the test Glance.
    let _turn = helpers::glance_turn();
    let url = helpers::glance_url();
    let o = helpers::glance_client(&["create", "plugin-v2"]);
    assert!(o.status.success(), "{}", helpers::stderr(&o));
    let id = helpers::stdout(&o).trim().to_string();
    upload2_then_download2(url, 2, &id, "test-token");
    let rec = helpers::glance_record(&id);
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["disk_format"], "vhd");
    assert_eq!(rec["os_type"], "linux");
}
