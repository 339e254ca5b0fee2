#!/usr/bin/env python3
"""The fault suite's HTTP-aware loopback proxy: forwards 127.0.0.1:<printed port> to
127.0.0.1:TARGET_PORT, request by request (keep-alive connections included), and injects
one fault into the body of the first request or response that matches:

  --direction download   the body of the response to a request whose path contains MATCH
  --direction upload     the body of a request whose path contains MATCH (chunked bodies
                         are counted in decoded data bytes: offset N is byte N of the file)
  --direction upload-answer
                         the answer to a PUT whose path contains MATCH: the server has the
                         whole upload, the client never hears so (AT is ignored)
  --fault cut            at body offset AT: pass AT bytes, then close both sides (FIN)
  --fault reset          at AT: pass AT bytes, then RST to the client and close the server
  --fault stall          at AT: pass AT bytes, then forward nothing more (the client's idle
                         timeout must fire); the connection stays open until it gives up
  --fault drip           from AT on: 64 bytes every 0.25 s (no idle timeout fires; the
                         client's deadline must)

Other requests and connections pass untouched, and so does everything after the one
fault (a retry succeeds). --strip-range drops the Range header of every request (a proxy
that ignores ranges: the server answers 200 with the whole body); --shift-range K asks
for K bytes later than the client did (a store that answers 206 with another range).
--log FILE gets a line
per request, per fault, and per response ("response N bytes": head and body as passed on
to the client, so a test can count what a download fetched). Stops after 300 s without a
connection."""
import argparse, select, socket, struct, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("target_port", type=int)
ap.add_argument("--direction", choices=["download", "upload", "upload-answer"], required=True)
ap.add_argument("--match", default="/file")
ap.add_argument("--fault", choices=["cut", "reset", "stall", "drip"], required=True)
ap.add_argument("--at", type=int, required=True)
ap.add_argument("--log")
ap.add_argument("--strip-range", action="store_true")
ap.add_argument("--shift-range", type=int, default=0)
args = ap.parse_args()

fired = [False]
fire_lock = threading.Lock()
last = [time.time()]


def log(msg):
    if args.log:
        with open(args.log, "a") as f:
            f.write(msg + "\n")


class Stop(Exception):
    """The fault ended this connection."""


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise EOFError
            self.fill()
        i = self.buf.index(b"\r\n\r\n") + 4
        h, self.buf = self.buf[:i], self.buf[i:]
        return h

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        i = self.buf.index(b"\r\n") + 2
        h, self.buf = self.buf[:i], self.buf[i:]
        return h

    def some(self, n):
        if not self.buf:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d


class Conn:
    def __init__(self, client, server):
        self.client, self.server = client, server
        self.dead = threading.Event()

    def close(self, rst=False):
        self.dead.set()
        if rst:
            try:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # The RST goes out when the last reference to the socket closes, and the
                # other thread's blocked recv is one: wake it first (SHUT_RD sends
                # nothing to the peer), then close.
                self.client.shutdown(socket.SHUT_RD)
                time.sleep(0.05)
            except OSError:
                pass
        for s in (self.client, self.server):
            try:
                if not rst or s is self.server:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def claim():
    with fire_lock:
        if fired[0]:
            return False
        fired[0] = True
        return True


class Body:
    """Forwards one message body to dst, applying the fault if it is armed."""

    def __init__(self, conn, dst, armed, what):
        self.conn, self.dst, self.armed, self.what = conn, dst, armed, what
        self.pos = 0

    def data(self, d):
        if not self.armed or self.pos + len(d) <= args.at:
            self.dst.sendall(d)
            self.pos += len(d)
            return
        k = max(0, args.at - self.pos)
        self.dst.sendall(d[:k])
        self.pos += k
        rest = d[k:]
        log("fault %s at %d in %s" % (args.fault, args.at, self.what))
        if args.fault == "cut":
            self.conn.close()
            raise Stop
        if args.fault == "reset":
            self.conn.close(rst=True)
            raise Stop
        if args.fault == "stall":
            # Hold everything until the client gives up (closes: POLLRDHUP) or 120 s.
            p = select.poll()
            p.register(self.conn.client, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            end = time.time() + 120
            while time.time() < end and not self.conn.dead.is_set() and not p.poll(200):
                pass
            log("stall ended after the client %s" % ("gave up" if time.time() < end else "did not"))
            self.conn.close()
            raise Stop
        # drip: the rest of this piece, then every later one, slowly.
        self.armed = False
        self.dripping = True
        self.slow(rest)

    def slow(self, d):
        for i in range(0, len(d), 64):
            self.dst.sendall(d[i:i + 64])
            time.sleep(0.25)
        self.pos += len(d)

    def send(self, d):
        """Framing bytes (chunk sizes): never faulted, but dripped like the rest."""
        if getattr(self, "dripping", False):
            self.slow(d)
        else:
            self.dst.sendall(d)

    def feed(self, d):
        if getattr(self, "dripping", False):
            self.slow(d)
        else:
            self.data(d)


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v.strip())
    return None


def chunked(head):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            return True
    return False


def forward_body(reader, body, head, is_response, request_method):
    if is_response:
        status = int(head.split(b" ", 2)[1])
        if request_method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            return
    if chunked(head):
        while True:
            size_line = reader.line()
            body.send(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    t = reader.line()
                    body.send(t)
                    if t == b"\r\n":
                        return
            left = size
            while left:
                d = reader.some(left)
                left -= len(d)
                body.feed(d)
            body.send(reader.line())  # the CRLF after the data
    n = content_length(head)
    if n is None:
        if not is_response:
            return
        while True:  # close-delimited response
            try:
                d = reader.some(65536)
            except EOFError:
                return
            body.feed(d)
    while n:
        d = reader.some(n)
        n -= len(d)
        body.feed(d)


def requests(conn, queue, cv):
    r = Reader(conn.client)
    try:
        while True:
            head = r.head()
            method, path = head.split(b" ", 2)[:2]
            match = args.match.encode() in path
            with cv:
                queue.append((method, match))
                cv.notify()
            log("request %s %s" % (method.decode(), path.decode()))
            if args.strip_range or args.shift_range:
                lines = []
                for l in head.split(b"\r\n"):
                    if l.lower().startswith(b"range:"):
                        if args.strip_range:
                            continue
                        n = int(l.split(b"=", 1)[1].rstrip(b"-"))
                        l = b"Range: bytes=%d-" % (n + args.shift_range)
                    lines.append(l)
                head = b"\r\n".join(lines)
            conn.server.sendall(head)
            armed = args.direction == "upload" and match and method in (b"PUT", b"POST") and claim()
            forward_body(r, Body(conn, conn.server, armed, "request " + path.decode()), head, False, method)
    except (EOFError, OSError, Stop, ValueError, IndexError):
        pass
    conn.dead.set()
    try:
        conn.server.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def responses(conn, queue, cv):
    r = Reader(conn.server)
    try:
        while True:
            head = r.head()
            with cv:
                while not queue:
                    cv.wait(1)
                    if conn.dead.is_set() and not queue:
                        raise EOFError
                method, match = queue.pop(0)
            if args.direction == "upload-answer" and match and method == b"PUT" and claim():
                log("fault %s instead of the answer to PUT: %s" % (args.fault, head.split(b"\r\n")[0].decode()))
                conn.close(rst=args.fault == "reset")
                raise Stop
            conn.client.sendall(head)
            armed = args.direction == "download" and match and method == b"GET" and claim()
            body = Body(conn, conn.client, armed, "response")
            try:
                forward_body(r, body, head, True, method)
            finally:
                log("response %d bytes" % (len(head) + body.pos))
    except (EOFError, OSError, Stop, ValueError, IndexError):
        pass
    conn.dead.set()
    for s in (conn.client, conn.server):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def handle(client):
    try:
        server = socket.create_connection(("127.0.0.1", args.target_port))
    except OSError:
        client.close()
        return
    conn = Conn(client, server)
    queue, cv = [], threading.Condition()
    threading.Thread(target=requests, args=(conn, queue, cv), daemon=True).start()
    threading.Thread(target=responses, args=(conn, queue, cv), daemon=True).start()


lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", 0))
lsock.listen(32)
lsock.settimeout(1)
print(lsock.getsockname()[1], flush=True)
while time.time() - last[0] < 300:
    try:
        c, _ = lsock.accept()
    except socket.timeout:
        continue
    last[0] = time.time()
    handle(c)
