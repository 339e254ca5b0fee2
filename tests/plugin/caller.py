#!/usr/bin/env python3
"""Python as the caller of a plugin, as Nova / os-xenapi and xapi are.

Builds the methodCall, runs the shim as xapi runs it (`env -i PATH=... dash SHIM XML`,
no stdin), and parses stdout with xmlrpc.client.loads and the pickled Value with
pickle.loads. Prints one JSON object:
  {"exit": N, "stderr": "...", "status": "Success"|"Failure", "value": ..., "error": [...]}

Input (JSON on stdin):
  shim, fn, session (default "OpaqueRef:session"),
  form: "python" (xmlrpc.client.dumps) | "xapi" (bare values, <value/>, no declaration)
  one of:
    kwargs: {...}      -> params = pickle of {'args': tuple(args), 'kwargs': kwargs}
    diablo: {...}      -> params = pickle of the flat dict
    plain: {...}       -> the struct itself (string -> string), no pickle
    raw_params: "..."  -> params is this exact string (latin-1 for bytes)
    xml: "..."         -> this exact argv
    argv: [...]        -> these exact arguments (any number)
  args: [...] (positional, with kwargs), protocol (0 or 2, default 0),
  py2: true to pickle as Python 2's pickle.dumps did (protocol 0, str as S'...'), as
    the Nova releases before Python 3 built params,
  unpickle: true to pickle.loads the Value, env: {...} extra environment for the shim
  parse: read the Value as a Nova release read download_vhd's answer:
    "seed"   the original: the string is the VDI UUID (VDI.get_by_uuid(reply)) ->
             "parsed": {"os_vdi_uuid": ...}, or "parse_error" if it is not a UUID
    "diablo" Diablo/Essex: json.loads, a list of {"vdi_type", "vdi_uuid"}, the first the
             OS disk -> "parsed": {"os_vdi_uuid": ..., "vdis": [...]}, or "parse_error"
"""
import io, json, os, pickle, resource, subprocess, sys, uuid, xmlrpc.client
from xml.sax.saxutils import escape

req = json.load(sys.stdin)
fn = req.get("fn", "")
session = req.get("session", "OpaqueRef:session")
proto = req.get("protocol", 0)


class Py2Pickler(pickle._Pickler):
    """Python 2's protocol 0: a str is `S` + its repr (Python 3 writes `V` + unicode);
    dicts, lists, ints, None and the memo are written alike by both."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(b"S" + repr(obj).encode("ascii") + b"\n")
        self.memoize(obj)

    dispatch[str] = save_py2_str


def pickled(obj):
    if req.get("py2"):
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=0).dump(obj)
        return buf.getvalue().decode("ascii")
    data = pickle.dumps(obj, protocol=proto)
    # Protocol 0 is ASCII and travels as a string; a binary pickle as bytes, which
    # xmlrpc.client sends as <base64>.
    return data.decode("ascii") if proto == 0 else data


struct = None
if "kwargs" in req:
    struct = {"params": pickled({"args": tuple(req.get("args", [])), "kwargs": req["kwargs"]})}
elif "diablo" in req:
    struct = {"params": pickled(req["diablo"])}
elif "plain" in req:
    struct = req["plain"]
elif "raw_params" in req:
    struct = {"params": req["raw_params"]}

if "argv" in req:
    argv = req["argv"]
elif "xml" in req:
    argv = [req["xml"]]
elif req.get("form", "python") == "python":
    argv = [xmlrpc.client.dumps((session, struct), methodname=fn)]
else:
    def value(v):
        if isinstance(v, bytes):
            raise SystemExit("xapi form carries strings only")
        return "<value/>" if v == "" else "<value>%s</value>" % escape(v)
    members = "".join("<member><name>%s</name>%s</member>" % (escape(k), value(v))
                      for k, v in struct.items())
    argv = ["<methodCall><methodName>%s</methodName><params><param>%s</param>"
            "<param><value><struct>%s</struct></value></param></params></methodCall>"
            % (escape(fn), value(session), members)]

env = {"PATH": "/sbin:/usr/sbin:/bin:/usr/bin"}
env.update(req.get("env", {}))
p = subprocess.run(["env", "-i"] + ["%s=%s" % kv for kv in env.items()]
                   + ["dash", req["shim"]] + argv,
                   stdin=subprocess.DEVNULL, capture_output=True)
out = {"exit": p.returncode, "stderr": p.stderr.decode("utf-8", "replace"),
       "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
# Exactly what xapi does with stdout: parse it as one methodResponse.
(result,), _ = xmlrpc.client.loads(p.stdout.decode("utf-8"))
out["status"] = result["Status"]
if result["Status"] == "Success":
    v = result["Value"]
    out["raw_value"] = v
    out["value"] = pickle.loads(v.encode("ascii")) if req.get("unpickle") else v
    try:
        if req.get("parse") == "seed":
            # xapi finds a VDI by its exact UUID string only.
            if str(uuid.UUID(v)) != v:
                raise ValueError("not a canonical UUID: %r" % v)
            out["parsed"] = {"os_vdi_uuid": v}
        elif req.get("parse") == "diablo":
            vdis = json.loads(v)
            for vdi in vdis:
                "xapi 'download_vhd' returned VDI of type '%(vdi_type)s' with UUID '%(vdi_uuid)s'" % vdi
            out["parsed"] = {"os_vdi_uuid": vdis[0]["vdi_uuid"], "vdis": vdis}
    except (ValueError, TypeError, KeyError, IndexError) as e:
        out["parse_error"] = "%s: %s" % (type(e).__name__, e)
else:
    out["error"] = result["ErrorDescription"]
print(json.dumps(out))
