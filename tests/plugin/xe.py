#!/usr/bin/env python3
"""`xe vdi-list` against a xapi socket (the stand-in in the tests), through XenAPI as
xe does: log in on the local Unix socket, VDI.get_all_records (+ SR.get_record for the
SR UUIDs), log out. Prints the records as xe does, or as JSON with --json (a list of
records sorted by UUID, each with its sr_uuid).

usage: xe.py SOCKET vdi-list [sr-uuid=UUID] [--json]
"""
import http.client, json, socket, sys, xmlrpc.client


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        return UnixConnection(self.path)


def main():
    path, cmd, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert cmd == "vdi-list", cmd
    want_sr = next((a.split("=", 1)[1] for a in rest if a.startswith("sr-uuid=")), None)
    server = xmlrpc.client.ServerProxy("http://localhost/", transport=UnixTransport(path), allow_none=True)

    def call(method, *params):
        r = getattr(server, method)(*params)
        if r["Status"] != "Success":
            sys.exit("xe: %s: %s" % (method, r["ErrorDescription"]))
        return r["Value"]

    session = call("session.login_with_password", "root", "", "1.0", "xe")
    try:
        records = call("VDI.get_all_records", session)
        sr_uuid = {}
        for rec in records.values():
            if rec["SR"] not in sr_uuid and rec["SR"] != "OpaqueRef:NULL":
                sr_uuid[rec["SR"]] = call("SR.get_record", session, rec["SR"])["uuid"]
    finally:
        call("session.logout", session)
    rows = []
    for rec in records.values():
        rec = dict(rec, sr_uuid=sr_uuid.get(rec["SR"], "<not in use>"))
        if want_sr is None or rec["sr_uuid"] == want_sr:
            rows.append(rec)
    rows.sort(key=lambda r: r["uuid"])
    if "--json" in rest:
        json.dump(rows, sys.stdout)
        return
    for r in rows:
        print("uuid ( RO)                : %s" % r["uuid"])
        print("          name-label ( RW): %s" % r["name_label"])
        print("    name-description ( RW): %s" % r["name_description"])
        print("             sr-uuid ( RO): %s" % r["sr_uuid"])
        print("        virtual-size ( RO): %s" % r["virtual_size"])
        print("            sharable ( RO): %s" % str(r["sharable"]).lower())
        print("           read-only ( RO): %s" % str(r["read_only"]).lower())
        print("             managed ( RO): %s" % str(r["managed"]).lower())
        print()


main()
