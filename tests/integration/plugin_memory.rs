//! Memory in plugin mode (issue 12, item 7): any call that fits in one argv string —
//! 128 KiB, the kernel's `MAX_ARG_STRLEN` and so the most xapi can pass (DESIGN §1) —
//! is refused by the plugin with peak RSS under 32 MiB: hostile pickles of every shape
//! in `params` (protocol 0 as a string, protocol 2 as base64, as Nova sends them), and
//! hostile XML-RPC calls around them.
//!
//! Each input runs through the shim as xapi runs it (`env -i … dash SHIM XML`, no
//! stdin) under GNU time, whose `%M` is the peak RSS of that one process (the binary
//! the shim execs). caller.py's `maxrss_kib` cannot be used here: it reports at least
//! Python's own peak (≈22 MiB), recorded when the spawned child execs. The response is
//! parsed by Python's `xmlrpc.client`, as xapi's caller does.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::plugin::install_shim;

/// The largest argv string: 128 KiB with its terminating NUL.
const ARGV_MAX: usize = (128 << 10) - 1;
/// The promise: peak RSS of the plugin for any one-argv input.
const RSS_LIMIT_KIB: u64 = 32 << 10;

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A `download_vhd2` call as Python's `xmlrpc.client.dumps` writes it, around `value`.
fn call_xml(value: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>download_vhd2</methodName>\n\
         <params>\n<param>\n<value><string>OpaqueRef:session</string></value>\n</param>\n\
         <param>\n<value><struct>\n<member>\n<name>params</name>\n{value}\n</member>\n\
         </struct></value>\n</param>\n</params>\n</methodCall>\n"
    )
}

/// `params` carrying `pickle`: a protocol-0 pickle (ASCII) as a string, a binary one as
/// base64 (what Python 3's `xmlrpc.client` makes of `bytes`).
fn params_xml(pickle: &[u8]) -> String {
    if pickle.is_ascii() && !pickle.starts_with(b"\x80") {
        let s = std::str::from_utf8(pickle).unwrap();
        call_xml(&format!(
            "<value><string>{}</string></value>",
            xml_escape(s)
        ))
    } else {
        call_xml(&format!(
            "<value><base64>{}</base64></value>",
            base64(pickle)
        ))
    }
}

/// `head`, then `open` and `close` each repeated as often as the call still fits in
/// one argv string (`close` as often as `open`), then `tail`: nesting when both are
/// given, width when `close` is empty.
fn fill(head: &[u8], open: &[u8], close: &[u8], tail: &[u8]) -> Vec<u8> {
    fill_with(head, |_| open.to_vec(), close, tail)
}

/// As [`fill`], with the repeated unit made from its index (distinct memo ids).
fn fill_with(head: &[u8], open: impl Fn(usize) -> Vec<u8>, close: &[u8], tail: &[u8]) -> Vec<u8> {
    let build = |n: usize| {
        let mut p = head.to_vec();
        for i in 0..n {
            p.extend_from_slice(&open(i));
        }
        for _ in 0..n {
            p.extend_from_slice(close);
        }
        p.extend_from_slice(tail);
        p
    };
    // The size grows with n: binary search for the largest n that fits.
    let (mut lo, mut hi) = (0usize, ARGV_MAX);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if params_xml(&build(mid)).len() <= ARGV_MAX {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    build(lo)
}

/// A run of `unit` as long as fits into `room` bytes of XML (for XML-level cases).
fn xml_fill(open: &str, close: &str, around: impl Fn(&str) -> String) -> String {
    let fixed = around("").len();
    let n = (ARGV_MAX - fixed) / (open.len() + close.len());
    around(&format!("{}{}", open.repeat(n), close.repeat(n)))
}

/// Every hostile shape: (name, the argv string, what the refusal must say).
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let p2 = |body: &[u8]| [b"\x80\x02".as_slice(), body].concat();
    let mut pickles: Vec<(&'static str, Vec<u8>, &'static str)> = vec![
        // Protocol 0 (text).
        (
            "p0 nested MARK…TUPLE",
            fill(b"", b"(", b"t", b"."),
            "nests deeper",
        ),
        (
            "p0 nested MARK…LIST",
            fill(b"(l", b"(l", b"a", b"."),
            "MARK opcodes",
        ),
        (
            "p0 nested dicts",
            fill(b"(d", b"S'k'\n(d", b"s", b"."),
            "MARK opcodes",
        ),
        (
            "p0 open MARKs only",
            fill(b"", b"(", b"", b"N."),
            "nests deeper",
        ),
        (
            "p0 MARK…TUPLE chain",
            fill(b"(", b"(t", b"", b"t."),
            "MARK opcodes",
        ),
        ("p0 list of Nones", fill(b"(", b"N", b"", b"l."), ""),
        ("p0 list of strings", fill(b"(", b"S'a'\n", b"", b"l."), ""),
        ("p0 list of ints", fill(b"(", b"I1\n", b"", b"l."), ""),
        ("p0 GET repeated", fill(b"((lp0\n", b"g0\n", b"", b"l."), ""),
        (
            "p0 PUT distinct ids",
            fill_with(b"(", |i| format!("Np{i}\n").into_bytes(), b"", b"l."),
            "",
        ),
        ("p0 LONG of many digits", fill(b"L", b"9", b"", b"L\n."), ""),
        ("p0 INT of many digits", fill(b"I", b"9", b"", b"\n."), ""),
        (
            "p0 FLOAT of many digits",
            fill(b"F1.", b"1", b"", b"\n."),
            "",
        ),
        ("p0 long STRING", fill(b"S'", b"a", b"", b"'\n."), ""),
        (
            "p0 UNICODE escapes",
            fill(b"V", b"\\u0041", b"", b"\n."),
            "",
        ),
        // Protocol 2 (binary, base64).
        (
            "p2 nested MARK…TUPLE",
            fill(&p2(b""), b"(", b"t", b"."),
            "nests deeper",
        ),
        (
            "p2 nested lists",
            fill(&p2(b"]"), b"]", b"a", b"."),
            "nests deeper",
        ),
        (
            "p2 nested dicts",
            fill(&p2(b"}"), b"K\x00}", b"s", b"."),
            "nests deeper",
        ),
        (
            "p2 nested TUPLE1",
            fill(&p2(b"N"), b"\x85", b"", b"."),
            "nests deeper",
        ),
        (
            "p2 nested lists with MARKs",
            fill(&p2(b""), b"](", b"e", b"."),
            "nests deeper",
        ),
        (
            "p2 MARK…TUPLE chain",
            fill(&p2(b"("), b"(t", b"", b"t."),
            "MARK opcodes",
        ),
        (
            "p2 MARK…LIST chain",
            fill(&p2(b"("), b"(l", b"", b"t."),
            "MARK opcodes",
        ),
        (
            "p2 list of EMPTY_TUPLEs",
            fill(&p2(b"("), b")", b"", b"l."),
            "",
        ),
        (
            "p2 APPENDS of Nones",
            fill(&p2(b"]("), b"N", b"", b"e."),
            "",
        ),
        ("p2 SETITEMS", fill(&p2(b"}("), b"K\x01N", b"", b"u."), ""),
        (
            "p2 BINGET repeated",
            fill(&p2(b"(]q\x00"), b"h\x00", b"", b"l."),
            "",
        ),
        (
            "p2 LONG_BINPUT distinct ids",
            fill_with(
                &p2(b"("),
                |i| [b"]r".as_slice(), &(i as u32).to_le_bytes()].concat(),
                b"",
                b"l.",
            ),
            "",
        ),
        (
            "p2 MEMOIZE after each None",
            fill(&p2(b"("), b"N\x94", b"", b"l."),
            "",
        ),
        (
            // Lists linked through the memo after each was taken: the chain is only
            // seen when converted.
            "p2 lists chained through the memo",
            {
                let n = 5_000u32;
                let mut p = p2(b"(");
                for i in 0..n {
                    p.extend(b"]r");
                    p.extend(i.to_le_bytes());
                }
                for i in 0..n - 1 {
                    p.push(b'j');
                    p.extend(i.to_le_bytes());
                    p.push(b'j');
                    p.extend((i + 1).to_le_bytes());
                    p.push(b'a');
                }
                p.extend(b"l.");
                p
            },
            "nests deeper",
        ),
        (
            "p2 BINUNICODE length beyond the data",
            fill(&p2(b"X\xff\xff\xff\x7f"), b"a", b"", b"."),
            "past the end",
        ),
        (
            "p2 BINUNICODE8 length beyond the data",
            fill(
                &p2(b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"),
                b"a",
                b"",
                b".",
            ),
            "",
        ),
        (
            "p2 LONG4 of many bytes",
            {
                let n = 96_000u32;
                let mut p = p2(b"\x8b");
                p.extend_from_slice(&n.to_le_bytes());
                p.extend(std::iter::repeat_n(0x7f, n as usize));
                p.push(b'.');
                p
            },
            "",
        ),
        (
            "p2 BINUNICODE of 96 KB",
            {
                let n = 96_000u32;
                let mut p = p2(b"X");
                p.extend_from_slice(&n.to_le_bytes());
                p.extend(std::iter::repeat_n(b'a', n as usize));
                p.push(b'.');
                p
            },
            "",
        ),
    ];
    let mut out: Vec<(&'static str, String, &'static str)> = pickles
        .drain(..)
        .map(|(n, p, why)| (n, params_xml(&p), why))
        .collect();
    // XML-RPC around the pickle: nesting, width and references.
    out.push((
        "xml nested arrays",
        xml_fill("<value><array><data>", "</data></array></value>", |inner| {
            call_xml(inner)
        }),
        "",
    ));
    out.push((
        "xml many empty values",
        xml_fill("<value/>", "", |inner| {
            call_xml(&format!(
                "<value><array><data>{inner}</data></array></value>"
            ))
        }),
        "",
    ));
    out.push((
        "xml many struct members",
        xml_fill("<member><name>a</name><value/></member>", "", |inner| {
            call_xml(&format!("<value><struct>{inner}</struct></value>"))
        }),
        "",
    ));
    out.push((
        "xml many empty elements",
        xml_fill("<a/>", "", |inner| {
            call_xml(&format!("<value>{inner}</value>"))
        }),
        "",
    ));
    out.push((
        "xml character references",
        xml_fill("&#x10FFFF;", "", |inner| {
            call_xml(&format!("<value><string>{inner}</string></value>"))
        }),
        "",
    ));
    out
}

/// Run one argv through the shim under GNU time: (exit code, the parsed response as
/// JSON from Python's xmlrpc.client, peak RSS in KiB).
fn run_plugin(shim: &Path, xml: &str, dir: &Path) -> (i32, serde_json::Value, u64) {
    assert!(
        xml.len() <= ARGV_MAX,
        "{} bytes do not fit in argv",
        xml.len()
    );
    assert!(
        Path::new("/usr/bin/time").exists(),
        "GNU time is needed to measure peak RSS (apt-get install -y time)"
    );
    let rss_file = dir.join("rss");
    let o = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .args(["env", "-i", "PATH=/sbin:/usr/sbin:/bin:/usr/bin", "dash"])
        .arg(shim)
        .arg(xml)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time");
    let rss: u64 = std::fs::read_to_string(&rss_file)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("time's %M");
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, xmlrpc.client\n\
             (r,), _ = xmlrpc.client.loads(sys.stdin.read())\n\
             print(json.dumps(r))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let p = py.wait_with_output().unwrap();
    assert!(
        p.status.success(),
        "the response does not parse: {}\n{}",
        String::from_utf8_lossy(&p.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    let v = serde_json::from_slice(&p.stdout).unwrap();
    (o.status.code().unwrap_or(-1), v, rss)
}

#[test]
fn every_one_argv_input_is_refused_under_32_mib() {
    let dir = tempfile::tempdir().unwrap();
    let shim = install_shim(dir.path(), "glance");
    let mut bad = Vec::new();
    eprintln!("| input | argv bytes | peak RSS KiB | refusal |");
    for (name, xml, why) in cases() {
        let (code, v, rss) = run_plugin(&shim, &xml, dir.path());
        let e: Vec<String> = v["ErrorDescription"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let msg = e.get(3).cloned().unwrap_or_default();
        eprintln!(
            "| {name} | {} | {rss} | {} |",
            xml.len(),
            msg.chars().take(90).collect::<String>()
        );
        if code != 0 {
            bad.push(format!("{name}: exit {code}"));
        }
        if v["Status"] != "Failure" || e.get(2).map(String::as_str) != Some("ArgumentError") {
            bad.push(format!("{name}: not an ArgumentError: {v}"));
        }
        if !msg.contains(why) {
            bad.push(format!("{name}: the refusal does not say {why:?}: {msg}"));
        }
        if rss >= RSS_LIMIT_KIB {
            bad.push(format!("{name}: peak RSS {rss} KiB"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
