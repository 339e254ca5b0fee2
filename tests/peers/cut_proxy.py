#!/usr/bin/env python3
"""A loopback TCP proxy for fault tests: forwards 127.0.0.1:<printed port> to TARGET_PORT
and cuts the connection once CUT_AT bytes of the server's response (or, with --upload,
of the client's request) have been passed on (--cut-at), or after the first connection
only (--first-only), or only the first connection to reach CUT_AT (--cut-once: an
HTTP/1.0-style server closes after every request, so "first connection" would be the
smallest one). With --refuse-first N it resets the first N connections at once
(a server that is down or restarting). --count-file F gets one line per connection.
Prints its port on stdout.
Stops after 120 s without a connection."""
import argparse, socket, struct, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("target_port", type=int)
ap.add_argument("--cut-at", type=int)
ap.add_argument("--refuse-first", type=int, default=0)
ap.add_argument("--count-file")
ap.add_argument("--first-only", action="store_true")
ap.add_argument("--cut-once", action="store_true")
ap.add_argument("--upload", action="store_true", help="cut the client-to-server direction")
args = ap.parse_args()
count = [0]
last = [time.time()]
cuts = [0]
cut_lock = threading.Lock()


def may_cut():
    with cut_lock:
        if args.cut_once and cuts[0] > 0:
            return False
        cuts[0] += 1
        return True


def pipe(src, dst, limit):
    passed = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if limit is not None and passed + len(data) >= limit and may_cut():
                dst.sendall(data[: limit - passed])
                break
            dst.sendall(data)
            passed += len(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def handle(client):
    count[0] += 1
    if args.count_file:
        with open(args.count_file, "a") as f:
            f.write("connection %d\n" % count[0])
    if count[0] <= args.refuse_first:
        # RST, not FIN: the client sees "connection reset", as from a dead server.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        return
    cut = args.cut_at if (count[0] == 1 or not args.first_only) else None
    server = socket.create_connection(("127.0.0.1", args.target_port))
    up, down = (cut, None) if args.upload else (None, cut)
    threading.Thread(target=pipe, args=(client, server, up), daemon=True).start()
    threading.Thread(target=pipe, args=(server, client, down), daemon=True).start()


lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
lsock.settimeout(1)
print(lsock.getsockname()[1], flush=True)
while time.time() - last[0] < 120:
    try:
        c, _ = lsock.accept()
    except socket.timeout:
        continue
    last[0] = time.time()
    handle(c)
