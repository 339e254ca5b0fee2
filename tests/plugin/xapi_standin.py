#!/usr/bin/env python3
"""A stand-in for xapi (it cannot run here): an XML-RPC server on a Unix socket answering
as xapi does ({'Status': 'Success', 'Value': …} or {'Status': 'Failure',
'ErrorDescription': [...]}).

For the kernel calls' VBD plumbing:
  session.get_this_host, VM.get_all_records_where (the control domain resident on the
  host), VM.get_all_records, VDI.get_uuid, VBD.create, VBD.plug (the "device" is a
  symlink <devdir>/xvdN to the VDI's backing file, a plain file or a loop device),
  VBD.get_device, VBD.unplug (DEVICE_DETACH_REJECTED once per VBD with
  --reject-unplug-once; DEVICE_ALREADY_DETACHED when not plugged), VBD.destroy.
For the CLI's scan after a download (file SRs given with --sr UUID=DIR):
  session.login_with_password (no password check: xapi trusts its local Unix socket;
  a fresh session ref each time), session.logout (that session is SESSION_INVALID from
  then on), SR.get_by_uuid (UUID_INVALID for an SR it does not know), SR.get_record,
  SR.scan (as sm's ScanRecord does for a file SR: a new VDI record for every
  <uuid>.vhd in the directory it has no record of — name_label and name_description
  empty, managed unless the VHD is hidden, virtual size and parent from the VHD — and
  the records whose file is gone forgotten), VDI.get_by_uuid (UUID_INVALID),
  VDI.get_record, VDI.get_all_records (what `xe vdi-list` lists), VDI.set_name_label,
  VDI.set_name_description.
Any session but --session and the logged-in ones is SESSION_INVALID. --fail METHOD
makes METHOD fail as xapi's would (SR.scan: SR_BACKEND_FAILURE_40, sm's "The SR scan
failed"). Every call is appended to <state>.calls as a JSON line; the VBDs left are
written to <state>.vbds and the VDI records to <state>.vdis after each call.

usage: xapi_standin.py SOCKET STATE DEVDIR [--vdi REF=UUID=FILE ...] [--sr UUID=DIR ...]
       [--reject-unplug-once] [--fail METHOD ...]
Prints "ready" once listening. Stops after 120 s idle.
"""
import argparse, json, os, re, socketserver, struct, sys, threading, time
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

ap = argparse.ArgumentParser()
ap.add_argument("socket")
ap.add_argument("state")
ap.add_argument("devdir")
ap.add_argument("--vdi", action="append", default=[])
ap.add_argument("--session", default="OpaqueRef:session")
ap.add_argument("--reject-unplug-once", action="store_true")
ap.add_argument("--sr", action="append", default=[])
ap.add_argument("--fail", action="append", default=[])
args = ap.parse_args()

HOST = "OpaqueRef:host-1"
DOM0 = "OpaqueRef:dom0-1"
vdis = {}
for v in args.vdi:
    ref, uuid, path = v.split("=", 2)
    vdis[ref] = {"uuid": uuid, "file": path}
srs = {}
for i, v in enumerate(args.sr):
    uuid, path = v.split("=", 1)
    srs["OpaqueRef:sr-%d" % i] = {"uuid": uuid, "dir": path}
sessions = {args.session}
vbds = {}
counter = [0]  # VBD refs and device names (the kernel tests' expectations)
minted = [0]  # session and scanned-VDI refs
last = [time.time()]
lock = threading.Lock()


class Failure(Exception):
    def __init__(self, *details):
        self.details = list(details)


def save():
    with open(args.state + ".vbds", "w") as f:
        json.dump(vbds, f)
    with open(args.state + ".vdis", "w") as f:
        json.dump(vdi_records(), f)


NULL = "OpaqueRef:NULL"
VHD_NAME = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.vhd$")


def vhd_facts(path):
    """What sm reads of a VHD on a scan (vhd-util query -v -p -f): virtual size, hidden
    flag, parent VDI. The footer is the last 512 bytes (its copy at offset 0 if the
    end is torn); a differencing disk names its parent in the dynamic header."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(size - 512, 0))
        footer = f.read(512)
        if footer[:8] != b"conectix":
            f.seek(0)
            footer = f.read(512)
        if footer[:8] != b"conectix":
            raise Failure("SR_BACKEND_FAILURE_46", "", "The VDI is not available [opterr=not a VHD: %s]" % path, "")
        (data_offset,) = struct.unpack(">Q", footer[16:24])
        (virtual,) = struct.unpack(">Q", footer[48:56])
        (disk_type,) = struct.unpack(">I", footer[60:64])
        hidden = footer[85] != 0
        parent = None
        if disk_type == 4:
            # sm's vhd-parent is the parent's VDI UUID, taken from its file name
            # (vhdutil.getParent with extractUuid), not the VHD's parent unique id:
            # the dynamic header's parent name, UTF-16BE at offset 64.
            f.seek(data_offset + 64)
            name = f.read(512).decode("utf-16-be", "replace").split("\0", 1)[0]
            parent = os.path.basename(name)[: -len(".vhd")] if name.endswith(".vhd") else name
    return {"virtual_size": virtual, "physical_utilisation": size, "hidden": hidden, "parent": parent}


def vdi_record(ref):
    v = vdis[ref]
    return {
        "uuid": v["uuid"],
        "name_label": v.get("name_label", ""),
        "name_description": v.get("name_description", ""),
        "SR": v.get("SR", NULL),
        "location": v.get("location", v["uuid"]),
        "managed": v.get("managed", True),
        "missing": False,
        "type": "user",
        "sharable": False,
        "read_only": False,
        "is_a_snapshot": False,
        "virtual_size": str(v.get("virtual_size", 0)),
        "physical_utilisation": str(v.get("physical_utilisation", 0)),
        "sm_config": v.get("sm_config", {}),
        "VBDs": [r for r, b in vbds.items() if b["record"].get("VDI") == ref],
    }


def vdi_records():
    return {ref: vdi_record(ref) for ref in vdis}


def scan(sr_ref):
    """sm's ScanRecord.synchronise for a file SR: introduce the new, forget the gone."""
    sr = srs[sr_ref]
    on_disk = {}
    for name in os.listdir(sr["dir"]):
        m = VHD_NAME.match(name)
        if m:
            on_disk[m.group(1)] = os.path.join(sr["dir"], name)
    known = {v["location"]: ref for ref, v in vdis.items() if v.get("SR") == sr_ref}
    for uuid in sorted(set(on_disk) - set(known)):
        facts = vhd_facts(on_disk[uuid])
        minted[0] += 1
        vdis["OpaqueRef:vdi-scan-%d" % minted[0]] = {
            "uuid": uuid, "file": on_disk[uuid], "SR": sr_ref, "location": uuid,
            "name_label": "", "name_description": "",
            # sm's FileVDI.load: a hidden VHD (an inner node of a chain) is not managed.
            "managed": not facts["hidden"],
            "virtual_size": facts["virtual_size"],
            "physical_utilisation": facts["physical_utilisation"],
            "sm_config": {"vhd-parent": facts["parent"]} if facts["parent"] else {},
        }
    for location in set(known) - set(on_disk):
        del vdis[known[location]]


def failure_of(method):
    if method == "SR.scan":
        return Failure("SR_BACKEND_FAILURE_40", "", "The SR scan failed  [opterr=injected by the stand-in]", "")
    return Failure("INTERNAL_ERROR", "injected by the stand-in: " + method)


def vm_records():
    return {
        DOM0: {"uuid": "dom0-uuid", "is_control_domain": True, "resident_on": HOST},
        "OpaqueRef:dom0-2": {"uuid": "other", "is_control_domain": True, "resident_on": "OpaqueRef:host-2"},
        "OpaqueRef:guest": {"uuid": "guest", "is_control_domain": False, "resident_on": HOST},
    }


def call(method, params):
    if method == "session.login_with_password":
        # xapi trusts a login on its local Unix socket (Context.preauth): no password
        # check, whatever the user name; the originator is only recorded.
        if len(params) < 2:
            raise Failure("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "4", str(len(params)))
        minted[0] += 1
        ref = "OpaqueRef:session-%d" % minted[0]
        sessions.add(ref)
        return ref
    if not params or params[0] not in sessions:
        raise Failure("SESSION_INVALID", params[0] if params else "")
    if method in args.fail:
        raise failure_of(method)
    p = params[1:]
    if method == "session.logout":
        sessions.discard(params[0])
        return ""
    if method == "SR.get_by_uuid":
        for ref, sr in srs.items():
            if sr["uuid"] == p[0]:
                return ref
        raise Failure("UUID_INVALID", "SR", p[0])
    if method in ("SR.scan", "SR.get_record"):
        if p[0] not in srs:
            raise Failure("HANDLE_INVALID", "SR", p[0])
        if method == "SR.get_record":
            return {"uuid": srs[p[0]]["uuid"], "type": "ext", "VDIs": [r for r, v in vdis.items() if v.get("SR") == p[0]]}
        scan(p[0])
        return ""
    if method == "VDI.get_all_records":
        return vdi_records()
    if method == "VDI.get_by_uuid":
        for ref, v in vdis.items():
            if v["uuid"] == p[0]:
                return ref
        raise Failure("UUID_INVALID", "VDI", p[0])
    if method in ("VDI.get_record", "VDI.set_name_label", "VDI.set_name_description"):
        if p[0] not in vdis:
            raise Failure("HANDLE_INVALID", "VDI", p[0])
        if method == "VDI.get_record":
            return vdi_record(p[0])
        vdis[p[0]][method[len("VDI.set_"):]] = p[1]
        return ""
    if method == "session.get_this_host":
        return HOST
    if method == "VM.get_all_records":
        return vm_records()
    if method == "VM.get_all_records_where":
        expr = p[0]
        return {r: v for r, v in vm_records().items()
                if v["is_control_domain"] and ('"%s"' % v["resident_on"]) in expr
                and 'is_control_domain" = "true"' in expr}
    if method == "VDI.get_uuid":
        if p[0] not in vdis:
            raise Failure("HANDLE_INVALID", "VDI", p[0])
        return vdis[p[0]]["uuid"]
    if method == "VBD.create":
        rec = p[0]
        if rec.get("VM") != DOM0 or rec.get("VDI") not in vdis:
            raise Failure("HANDLE_INVALID", "VM or VDI", str(rec.get("VM")), str(rec.get("VDI")))
        counter[0] += 1
        ref = "OpaqueRef:vbd-%d" % counter[0]
        vbds[ref] = {"record": rec, "plugged": False, "device": "", "rejected": False}
        return ref
    if p[0] not in vbds:
        raise Failure("HANDLE_INVALID", "VBD", p[0])
    vbd = vbds[p[0]]
    if method == "VBD.plug":
        if vbd["plugged"]:
            raise Failure("DEVICE_ALREADY_ATTACHED", p[0])
        dev = "xvd" + "bcdefghijklmnop"[counter[0] % 15]
        os.symlink(vdis[vbd["record"]["VDI"]]["file"], os.path.join(args.devdir, dev))
        vbd.update(plugged=True, device=dev)
        return ""
    if method == "VBD.get_device":
        return vbd["device"]
    if method == "VBD.unplug":
        if not vbd["plugged"]:
            raise Failure("DEVICE_ALREADY_DETACHED", p[0])
        if args.reject_unplug_once and not vbd["rejected"]:
            vbd["rejected"] = True
            raise Failure("DEVICE_DETACH_REJECTED", "VBD", p[0], "device in use")
        os.unlink(os.path.join(args.devdir, vbd["device"]))
        vbd.update(plugged=False, device="")
        return ""
    if method == "VBD.destroy":
        if vbd["plugged"]:
            raise Failure("OPERATION_NOT_ALLOWED", "VBD is plugged")
        del vbds[p[0]]
        return ""
    raise Failure("MESSAGE_METHOD_UNKNOWN", method)


class Dispatcher(SimpleXMLRPCDispatcher):
    def _dispatch(self, method, params):
        last[0] = time.time()
        with lock:
            try:
                r = {"Status": "Success", "Value": call(method, list(params))}
            except Failure as f:
                r = {"Status": "Failure", "ErrorDescription": f.details}
            with open(args.state + ".calls", "a") as f:
                f.write(json.dumps({"method": method, "params": params, "result": r}) + "\n")
            save()
            return r


class Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/",)
    # TCP_NODELAY cannot be set on a Unix socket.
    disable_nagle_algorithm = False

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *a):
        sys.stderr.write("xapi-standin: " + (fmt % a) + "\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, Dispatcher):
    daemon_threads = True

    def __init__(self, path):
        Dispatcher.__init__(self, allow_none=True, encoding="utf-8")
        self.logRequests = True
        socketserver.UnixStreamServer.__init__(self, path, Handler)


if os.path.exists(args.socket):
    os.unlink(args.socket)
srv = Server(args.socket)
save()
print("ready", flush=True)


def idle():
    while time.time() - last[0] < 120:
        time.sleep(1)
    os._exit(0)


threading.Thread(target=idle, daemon=True).start()
srv.serve_forever()
