#!/usr/bin/env python3
"""The PEER for the upload benchmark: the old Python plugin's upload data path
(os-xenapi `glance.py` `_upload_tarball_by_url_v2` + `utils.create_tarball`), written
from its description: `tar -zc --directory=STAGING .` as a subprocess (gzip level from
the GZIP environment variable, as the plugin set it), its stdout read in 8 KiB chunks,
each sent as a hand-framed HTTP chunk on an http.client connection, then the final
`0\\r\\n\\r\\n`.

Usage: old_plugin_upload.py URL STAGING_DIR LEVEL"""
import http.client, os, subprocess, sys, urllib.parse

url, staging, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
conn.putrequest("PUT", u.path)
conn.putheader("Content-Type", "application/octet-stream")
conn.putheader("Transfer-Encoding", "chunked")
conn.endheaders()
env = dict(os.environ, GZIP="-%d" % level)
tar = subprocess.Popen(["tar", "-zc", "--directory=%s" % staging, "."], stdout=subprocess.PIPE, env=env)
while True:
    chunk = tar.stdout.read(8192)
    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if not chunk:
        break
if tar.wait() != 0:
    sys.exit("tar failed")
resp = conn.getresponse()
resp.read()
if resp.status not in (200, 204):
    sys.exit("HTTP %d" % resp.status)
