#!/usr/bin/env python3
"""Is a Kafka broker up and serving clients? Python stdlib only (no client library needed).

    python3 services/kafka_ready.py [HOST:PORT] [--node-id N] [--timeout SECONDS] [--quiet]
        [--tls-ca CA.pem] [--sasl-scram-sha-512 USER --password-env VARIABLE]

Sends two real Kafka protocol requests on one connection:
  1. ApiVersions (v0, understood by every broker) -> the versions of Metadata the broker serves;
  2. Metadata for no topics -> the live (unfenced) brokers and the active controller.
Exit 0 when the broker lists node N (default 1) among its live brokers and knows a controller,
i.e. it is unfenced and can create topics and serve produce/fetch; exit 1 otherwise (reason on
stderr unless --quiet). Prints "cluster_id=<id> controller=<id> brokers=<ids>" on success.

For a SASL_SSL listener (services/secure.sh): --tls-ca wraps the connection in TLS and checks the
broker's certificate (and its host name / IP) against that CA; --sasl-scram-sha-512 USER then logs
in with SCRAM-SHA-512 (SaslHandshake + SaslAuthenticate, RFC 5802 / 7677, server signature
checked) between the two requests, the password read from the environment variable named by
--password-env (never from the command line).
"""

import argparse
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import sys

API_METADATA = 3
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
SASL_AUTHENTICATION_FAILED = 58


class NotReady(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise NotReady("short response")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self):
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def string(self):  # nullable STRING (int16 length)
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def compact_string(self):  # COMPACT_(NULLABLE_)STRING (uvarint length + 1)
        n = self.uvarint() - 1
        return None if n < 0 else self.take(n).decode()

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def request(sock, api_key, version, corr, body, flexible):
    client_id = b"s3ts-kafka-ready"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    if flexible:
        header += b"\x00"  # request header v2: empty tagged fields
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    r = Reader(recv_exact(sock, size))
    if r.i32() != corr:
        raise NotReady("correlation id mismatch")
    return r


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NotReady("connection closed by broker")
        buf += chunk
    return buf


def _sasl_authenticate(sock, versions, corr, auth_bytes):
    """One SaslAuthenticate round trip (v1, or v2 flexible); returns the server's auth bytes."""
    lo, hi = versions.get(API_SASL_AUTHENTICATE, (0, -1))
    if lo <= 2 <= hi:
        n = len(auth_bytes) + 1
        body = b""
        while True:  # compact bytes: uvarint length + 1
            if n < 0x80:
                body += bytes([n])
                break
            body += bytes([(n & 0x7F) | 0x80])
            n >>= 7
        r = request(sock, API_SASL_AUTHENTICATE, 2, corr, body + auth_bytes + b"\x00", flexible=True)
        r.skip_tags()
        err, msg = r.i16(), r.compact_string()
        data = r.take(r.uvarint() - 1)
    elif lo <= 1 <= hi:
        r = request(sock, API_SASL_AUTHENTICATE, 1, corr,
                    struct.pack(">i", len(auth_bytes)) + auth_bytes, flexible=False)
        err, msg = r.i16(), r.string()
        data = r.take(r.i32())
    else:
        raise NotReady(f"broker serves no SaslAuthenticate version this check speaks ({lo}..{hi})")
    if err == SASL_AUTHENTICATION_FAILED:
        raise NotReady(f"SASL authentication failed: {msg}")
    if err:
        raise NotReady(f"SaslAuthenticate error code {err}: {msg}")
    return data


def scram_sha512_login(sock, versions, user, password):
    """SaslHandshake(SCRAM-SHA-512) + the two SCRAM SaslAuthenticate rounds."""
    mech = b"SCRAM-SHA-512"
    r = request(sock, API_SASL_HANDSHAKE, 1, 3, struct.pack(">h", len(mech)) + mech, flexible=False)
    err = r.i16()
    if err:
        offered = [r.string() for _ in range(r.i32())]
        raise NotReady(f"SaslHandshake error code {err} (broker offers {offered})")
    name = user.replace("=", "=3D").replace(",", "=2C")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={name},r={nonce}"
    server_first = _sasl_authenticate(sock, versions, 4, ("n,," + first_bare).encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise NotReady("SCRAM: the server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha512).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(hashlib.sha512(client_key).digest(), auth_message, hashlib.sha512).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server_final = _sasl_authenticate(sock, versions, 5, f"{final_bare},p={proof}".encode()).decode()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha512).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha512).digest()).decode()
    if server_final != f"v={expected}":
        raise NotReady("SCRAM: the server's signature is wrong")


def check(host, port, node_id, timeout, tls_ca=None, scram=None):
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = raw
        if tls_ca:
            sock = ssl.create_default_context(cafile=tls_ca).wrap_socket(raw, server_hostname=host)
        sock.settimeout(timeout)
        # ApiVersions v0: empty body, response header v0
        r = request(sock, API_VERSIONS, 0, 1, b"", flexible=False)
        err = r.i16()
        if err:
            raise NotReady(f"ApiVersions error code {err}")
        versions = {}
        for _ in range(r.i32()):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            versions[key] = (lo, hi)
        if API_METADATA not in versions:
            raise NotReady("broker does not serve Metadata")
        if scram:
            scram_sha512_login(sock, versions, *scram)
        lo, hi = versions[API_METADATA]
        if lo <= 12 <= hi:
            # Metadata v12 (flexible): topics=[] (compact array, length+1), no auto-create,
            # no topic authorized operations, empty tagged fields
            r = request(sock, API_METADATA, 12, 6, b"\x01\x00\x00\x00", flexible=True)
            r.skip_tags()  # response header v1
            r.i32()  # throttle_time_ms
            brokers = []
            for _ in range(r.uvarint() - 1):
                nid = r.i32()
                r.compact_string()  # host
                r.i32()  # port
                r.compact_string()  # rack
                r.skip_tags()
                brokers.append(nid)
            cluster_id = r.compact_string()
            controller = r.i32()
        elif lo <= 4 <= hi:
            # Metadata v4: topics=[] (int32 length 0), allow_auto_topic_creation=false
            r = request(sock, API_METADATA, 4, 6, b"\x00\x00\x00\x00\x00", flexible=False)
            r.i32()  # throttle_time_ms
            brokers = []
            for _ in range(r.i32()):
                nid = r.i32()
                r.string()
                r.i32()
                r.string()
                brokers.append(nid)
            cluster_id = r.string()
            controller = r.i32()
        else:
            raise NotReady(f"no Metadata version this check speaks (broker: {lo}..{hi})")
    if node_id not in brokers:
        raise NotReady(f"node {node_id} not among live brokers {brokers} (still fenced/starting)")
    if controller < 0:
        raise NotReady("no active controller yet")
    return cluster_id, controller, brokers


def main():
    default = os.environ.get("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS") or "127.0.0.1:" + os.environ.get(
        "S3TS_KAFKA_PORT", "39092")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("address", nargs="?", default=default.split(",")[0])
    ap.add_argument("--node-id", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--tls-ca", help="speak TLS, trusting this CA file (PEM)")
    ap.add_argument("--sasl-scram-sha-512", metavar="USER", help="log in as USER with SCRAM-SHA-512")
    ap.add_argument("--password-env", metavar="VARIABLE", help="environment variable holding the password")
    a = ap.parse_args()
    host, _, port = a.address.rpartition(":")
    scram = None
    if a.sasl_scram_sha_512:
        if not a.password_env or a.password_env not in os.environ:
            ap.error("--sasl-scram-sha-512 needs --password-env naming a set environment variable")
        scram = (a.sasl_scram_sha_512, os.environ[a.password_env])
    try:
        cluster_id, controller, brokers = check(host or "127.0.0.1", int(port), a.node_id, a.timeout,
                                                a.tls_ca, scram)
    except (OSError, NotReady, struct.error, UnicodeDecodeError, KeyError, ValueError) as e:
        if not a.quiet:
            print(f"kafka at {a.address} not ready: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"cluster_id={cluster_id} controller={controller} brokers={','.join(map(str, brokers))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
