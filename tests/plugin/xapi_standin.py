#!/usr/bin/env python3
"""A stand-in for xapi (it cannot run here), for the kernel calls' VBD plumbing: an
XML-RPC server on a Unix socket answering as xapi does ({'Status': 'Success', 'Value': …}
or {'Status': 'Failure', 'ErrorDescription': [...]}) for
  session.get_this_host, VM.get_all_records_where (the control domain resident on the
  host), VM.get_all_records, VDI.get_uuid, VBD.create, VBD.plug (the "device" is a
  symlink <devdir>/xvdN to the VDI's backing file, a plain file or a loop device),
  VBD.get_device, VBD.unplug (DEVICE_DETACH_REJECTED once per VBD with
  --reject-unplug-once; DEVICE_ALREADY_DETACHED when not plugged), VBD.destroy.
Any other session than --session is SESSION_INVALID. Every call is appended to
<state>.calls as a JSON line; the VBDs left are written to <state>.vbds after each call.

usage: xapi_standin.py SOCKET STATE DEVDIR --vdi REF=UUID=FILE ... [--reject-unplug-once]
Prints "ready" once listening. Stops after 120 s idle.
"""
import argparse, json, os, socketserver, sys, threading, time
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

ap = argparse.ArgumentParser()
ap.add_argument("socket")
ap.add_argument("state")
ap.add_argument("devdir")
ap.add_argument("--vdi", action="append", default=[])
ap.add_argument("--session", default="OpaqueRef:session")
ap.add_argument("--reject-unplug-once", action="store_true")
args = ap.parse_args()

HOST = "OpaqueRef:host-1"
DOM0 = "OpaqueRef:dom0-1"
vdis = {}
for v in args.vdi:
    ref, uuid, path = v.split("=", 2)
    vdis[ref] = {"uuid": uuid, "file": path}
vbds = {}
counter = [0]
last = [time.time()]
lock = threading.Lock()


class Failure(Exception):
    def __init__(self, *details):
        self.details = list(details)


def save():
    with open(args.state + ".vbds", "w") as f:
        json.dump(vbds, f)


def vm_records():
    return {
        DOM0: {"uuid": "dom0-uuid", "is_control_domain": True, "resident_on": HOST},
        "OpaqueRef:dom0-2": {"uuid": "other", "is_control_domain": True, "resident_on": "OpaqueRef:host-2"},
        "OpaqueRef:guest": {"uuid": "guest", "is_control_domain": False, "resident_on": HOST},
    }


def call(method, params):
    if not params or params[0] != args.session:
        raise Failure("SESSION_INVALID", params[0] if params else "")
    p = params[1:]
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
