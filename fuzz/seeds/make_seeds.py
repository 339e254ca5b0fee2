#!/usr/bin/env python3
"""Write the seeds of the tar_unpack, xmlrpc_call and pickle_params fuzz targets into
fuzz/seeds/<target>/ (the committed files came from this script).

    python3 fuzz/seeds/make_seeds.py

Python 2 pickles (what Diablo–Mitaka Nova sends) come from `python2` when there is one
($PYTHON2, else `python2` with PYENV_VERSION=2.7.18 for pyenv's shim); without it
those seeds are skipped.
"""
import gzip, io, os, pickle, shutil, subprocess, sys, tarfile, xmlrpc.client
from xml.sax.saxutils import escape

here = os.path.dirname(os.path.abspath(__file__))
# A member's content does not matter to the policy: the footer of a tiny fixed VHD.
VHD = open(os.path.join(here, "vhd_open", "fixed-64K.vhd"), "rb").read()[-512:]


def out(target, name, data):
    d = os.path.join(here, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- tar_unpack: uncompressed tar streams (the target gzips them), a few gzip ones ----

def tar(members, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            name, kind = m[0], m[1]
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode = 1700000000, 0o644
            if len(m) > 2 and isinstance(m[2], dict):
                ti.pax_headers = m[2]
            elif len(m) > 2:
                ti.mtime = m[2]
            data = None
            if kind == "file":
                data = VHD
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, "0.vhd"
            elif kind == "chardev":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    # Only the end marker of the record's zero padding: small seeds fuzz faster.
    raw = buf.getvalue().rstrip(b"\0")
    return raw + b"\0" * (-len(raw) % 512 + 1024)


T = "tar_unpack"
numbered = tar([("./", "dir"), ("./0.vhd", "file"), ("./1.vhd", "file")])
out(T, "gnu-numbered.tar", numbered)
out(T, "ustar-legacy.tar",
    tar([("snap.vhd", "file"), ("image.vhd", "file"), ("base.vhd", "file")], tarfile.USTAR_FORMAT))
out(T, "gnu-swap.tar", tar([("0.vhd", "file"), ("swap.vhd", "file")]))
out(T, "gnu-longname.tar", tar([("d" * 150 + ".vhd", "file")]))
out(T, "pax-single.tar", tar([("disk-\u00e9.vhd", "file", {"comment": "x"})], tarfile.PAX_FORMAT))
out(T, "pax-numbered.tar",
    tar([("0.vhd", "file", {"mtime": "1700000000.5"}), ("1.vhd", "file")], tarfile.PAX_FORMAT))
# A pax size record (how pax gives sizes over 8 GiB), a GNU base-256 mtime.
out(T, "pax-size.tar", tar([("0.vhd", "file", {"size": "512"})], tarfile.PAX_FORMAT))
out(T, "gnu-base256-mtime.tar", tar([("0.vhd", "file", 8 ** 11 + 5)]))
out(T, "gnu-hostile.tar",
    tar([("0.vhd", "file"), ("l", "symlink"), ("h", "hardlink"), ("c", "chardev"),
         ("../x.vhd", "file")]))
# Raw gzip (starts with 1f 8b): used as is, besides gzipped once more.
out(T, "gz-numbered.tar.gz", gzip.compress(numbered, mtime=0) + b"\0" * 16)
half = len(numbered) // 2
out(T, "gz-two-members.tar.gz",
    gzip.compress(numbered[:half], mtime=0) + gzip.compress(numbered[half:], mtime=0))

# ---- pickle_params: params as each caller generation pickles them ----

P = "pickle_params"
calls = {
    "diablo-download": {"image_id": "img-1", "glance_host": "glance.example", "glance_port": 9292,
                        "uuid_stack": ["u-1", "u-2"], "sr_path": "/var/run/sr-mount/sr",
                        "auth_token": "tok"},
    "diablo-upload": {"vdi_uuids": {"image": "u-1", "snap": "u-2"}, "image_id": "img-1",
                      "glance_host": "10.0.0.1", "glance_port": "9292",
                      "sr_path": "/var/run/sr-mount/sr", "auth_token": "tok", "os_type": "linux"},
    "folsom-download": {"args": (), "kwargs": {
        "image_id": "img-1", "glance_host": "::1", "glance_port": 9292, "glance_use_ssl": True,
        "uuid_stack": ["u-1"], "sr_path": "/sr", "extra_headers": {"X-Auth-Token": "tok",
                                                                   "X-Roles": "admin"}}},
    "folsom-upload": {"args": ("u",), "kwargs": {
        "image_id": "img-1", "glance_host": "glance", "glance_port": 9292, "glance_use_ssl": False,
        "sr_path": "/sr", "extra_headers": {}, "properties": {
            "auto_disk_config": True, "os_type": "linux", "xenapi_image_compression_level": 9}}},
    "v2-download": {"args": (), "kwargs": {
        "image_id": "img-1", "endpoint": "https://glance:9292", "uuid_stack": ["a", "b", "c"],
        "sr_path": "/sr", "extra_headers": {"X-Auth-Token": "t"}, "api_version": 2}},
    "v2-upload": {"args": (), "kwargs": {
        "vdi_uuids": ["a", "b"], "image_id": "img-1", "endpoint": "http://g:9292/",
        "sr_path": "/sr", "extra_headers": {"X-Auth-Token": "t"},
        "properties": {"os_type": "windows", "size": 1.5, "x": None}, "api_version": 1}},
}
for name, obj in calls.items():
    for proto in (0, 2, 4):
        out(P, "py3-%s-p%d.pickle" % (name, proto), pickle.dumps(obj, protocol=proto))
py2 = os.environ.get("PYTHON2") or shutil.which("python2")
env = dict(os.environ, PYENV_VERSION="2.7.18")


def py2_pickle(obj, proto):
    code = "import pickle,sys; sys.stdout.write(pickle.dumps(%r, %d))" % (obj, proto)
    return subprocess.run([py2, "-c", code], env=env, check=True, capture_output=True).stdout


try:
    if not py2:
        raise OSError("no python2")
    for name, obj in calls.items():
        for proto in (0, 2):
            out(P, "py2-%s-p%d.pickle" % (name, proto), py2_pickle(obj, proto))
except (OSError, subprocess.CalledProcessError) as e:
    print("python2: %s; skipping Python 2 pickles" % e, file=sys.stderr)

# ---- xmlrpc_call: calls as Python and xapi write them, responses as xapi writes them ----

X = "xmlrpc_call"
p0 = pickle.dumps(calls["v2-download"], protocol=0).decode("ascii")
p2 = pickle.dumps(calls["folsom-upload"], protocol=2)
out(X, "python-download_vhd2.xml",
    xmlrpc.client.dumps(("OpaqueRef:s", {"params": p0}), methodname="download_vhd2").encode())
out(X, "python-upload_vhd-base64.xml",
    xmlrpc.client.dumps(("OpaqueRef:s", {"params": p2}), methodname="upload_vhd").encode())
out(X, "python-copy_vdi.xml",
    xmlrpc.client.dumps(("OpaqueRef:s", {"vdi-ref": "OpaqueRef:v", "image-size": "4096",
                                         "cached-image": ""}), methodname="copy_vdi").encode())
out(X, "python-create_kernel_ramdisk.xml",
    xmlrpc.client.dumps(("OpaqueRef:s", {"cached-image": "c", "new-image-uuid": "n"}),
                        methodname="create_kernel_ramdisk").encode())


def xapi_call(fn, struct):
    v = lambda s: "<value/>" if s == "" else "<value>%s</value>" % escape(s)
    members = "".join("<member><name>%s</name>%s</member>" % (escape(k), v(s))
                      for k, s in struct.items())
    return ("<methodCall><methodName>%s</methodName><params><param>%s</param><param><value>"
            "<struct>%s</struct></value></param></params></methodCall>"
            % (escape(fn), v("OpaqueRef:s"), members)).encode()


out(X, "xapi-download_vhd.xml",
    xapi_call("download_vhd", {"params": pickle.dumps(calls["folsom-download"], 0).decode()}))
out(X, "xapi-remove_kernel_ramdisk.xml",
    xapi_call("remove_kernel_ramdisk", {"kernel-file": "/boot/guest/k", "ramdisk-file": ""}))
out(X, "python-response-types.xml", xmlrpc.client.dumps(
    ({"Status": "Success", "Value": "(dp0\n.", "i": 1, "b": True, "d": 1.5, "n": None,
      "bin": b"\x00\xff", "t": xmlrpc.client.DateTime("20240101T00:00:00"),
      "a": ["x", 2, [3]], "e": "&<>\u00e9"},), methodresponse=True, allow_none=True).encode())
out(X, "python-fault.xml",
    xmlrpc.client.dumps(xmlrpc.client.Fault(1, "HANDLE_INVALID"), methodresponse=True).encode())
out(X, "xapi-response.xml",
    b"<methodResponse><params><param><value><struct><member><name>Status</name><value>"
    b"Success</value></member><member><name>Value</name><value>OpaqueRef:vm</value></member>"
    b"</struct></value></param></params></methodResponse>")
