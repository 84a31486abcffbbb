#!/usr/bin/env python3
"""Is the local S3 server up and serving signed requests? Python stdlib only (no boto3 needed).

    python3 services/s3_ready.py [ENDPOINT] [--write] [--timeout SECONDS] [--quiet]

Sends a SigV4-signed ListBuckets (GET /) with the keys from S3TS_S3_ACCESS_KEY_ID /
S3TS_S3_SECRET_ACCESS_KEY (see services/env.sh) to ENDPOINT (default $ENDPOINT_URL, else
http://127.0.0.1:$S3TS_S3_PORT) and wants a 200 with a ListAllMyBucketsResult.
With --write it then proves the data path too (the S3 gateway answers before the volume
server can take writes, and SeaweedFS holds volume growth for ~15 s after a restart): create the
bucket s3ts-readiness-probe, PUT and GET an object, then delete it and the bucket (and any
s3ts-ready-* bucket an earlier, timed-out probe left behind).
Exit 0 when everything answered as S3 should, 1 otherwise (reason on stderr unless --quiet).
"""

import argparse
import datetime
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def s3_request(endpoint, method, path, access_key, secret_key, region, body=b"", timeout=5.0, query=None):
    """One path-style S3 request signed with SigV4; returns (status, body bytes)."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_uri = urllib.parse.quote(path, safe="/-_.~")
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted((query or {}).items()))
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, canonical_uri, canonical_query,
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
        signed, payload_hash,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = _sign(("AWS4" + secret_key).encode(), day)
    k = _sign(_sign(_sign(k, region), "s3"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    url = endpoint.rstrip("/") + canonical_uri + ("?" + canonical_query if canonical_query else "")
    req = urllib.request.Request(url, data=body if method == "PUT" else None,
                                 method=method)
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header("Authorization",
                   f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}")
    # never go through an HTTP proxy from the environment for a loopback server
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


PROBE_BUCKET = "s3ts-readiness-probe"


def check(endpoint, access_key, secret_key, region, write, timeout):
    def call(method, path, body=b"", want=(200,), query=None):
        status, data = s3_request(endpoint, method, path, access_key, secret_key, region, body, timeout, query)
        if status not in want:
            raise RuntimeError(f"{method} {path} -> HTTP {status} {data[:300]!r}")
        return data

    data = call("GET", "/")
    if b"ListAllMyBucketsResult" not in data:
        raise RuntimeError(f"GET / answered 200 but not with ListAllMyBucketsResult: {data[:200]!r}")
    if write:
        # One fixed bucket name, created and deleted each time (a new bucket is a new SeaweedFS
        # collection, so this also proves that volumes can be grown); 409 = left by an earlier probe.
        payload = b"s3ts readiness probe " + uuid.uuid4().hex.encode() + b"\n"
        call("PUT", f"/{PROBE_BUCKET}", want=(200, 409))
        call("PUT", f"/{PROBE_BUCKET}/probe.txt", payload)
        got = call("GET", f"/{PROBE_BUCKET}/probe.txt")
        if got != payload:
            raise RuntimeError(f"GET returned {len(got)} bytes, not the {len(payload)} written")
        sweep(call)


def names(xml_bytes, tag):
    root = ET.fromstring(xml_bytes)
    return [el.text for el in root.iter() if el.tag.rsplit("}", 1)[-1] == tag and el.text]


def sweep(call):
    """Delete the probe bucket and any left by earlier (timed-out) probes, objects first."""
    buckets = [b for b in names(call("GET", "/"), "Name") if b == PROBE_BUCKET or b.startswith("s3ts-ready-")]
    for bucket in buckets:
        listing = call("GET", f"/{bucket}", query={"list-type": "2"}, want=(200, 404))
        for key in names(listing, "Key") if listing.startswith(b"<") else []:
            call("DELETE", f"/{bucket}/{key}", want=(200, 204, 404))
        call("DELETE", f"/{bucket}", want=(200, 204, 404))


def main():
    env = os.environ
    default = env.get("ENDPOINT_URL") or "http://127.0.0.1:" + env.get("S3TS_S3_PORT", "38333")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", nargs="?", default=default)
    ap.add_argument("--write", action="store_true", help="also create a bucket and write/read/delete an object")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    access_key = env.get("S3TS_S3_ACCESS_KEY_ID") or env.get("ACCESS_KEY_ID") or "s3ts-local"
    secret_key = env.get("S3TS_S3_SECRET_ACCESS_KEY") or env.get("SECRET_KEY_ID") or "s3ts-local-secret"
    region = env.get("S3TS_S3_REGION") or env.get("REGION") or "us-east-1"
    try:
        check(a.endpoint, access_key, secret_key, region, a.write, a.timeout)
    except (OSError, RuntimeError) as e:
        if not a.quiet:
            print(f"s3 at {a.endpoint} not ready: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"s3 at {a.endpoint} ready" + (" (bucket create + object put/get/delete ok)" if a.write else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
