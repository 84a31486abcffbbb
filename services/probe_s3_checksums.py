#!/usr/bin/env python3
"""Probe how the local S3 server handles S3 additional checksums, with boto3.

    . services/env.sh && bash services/seaweedfs.sh start
    python services/probe_s3_checksums.py            # table on stdout
    python services/probe_s3_checksums.py --json     # the raw findings as JSON

Uses ENDPOINT_URL / ACCESS_KEY_ID / SECRET_KEY_ID / REGION (services/env.sh defaults) and a
client with path-style addressing and request_checksum_calculation=response_checksum_validation=
"when_required", so every checksum on the wire is one we pass explicitly. Each case PUTs with a
correct and with a WRONG (well-formed, but of other data) value and reads back what HEAD
(ChecksumMode=ENABLED), GET and GetObjectAttributes report. CRC-64/NVME is computed here
(awscrt if installed, else pure Python). Everything happens in a fresh bucket that is deleted
at the end. Exit status 0 unless the probe itself broke (findings are findings, not failures).
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

MiB = 1024 * 1024

# ---------------------------------------------------------------- CRC-64/NVME
# poly 0xad93d23594c93659 (reflected: 0x9a6c9329ac4bc9b5), init = xorout = 0xffffffffffffffff
_POLY_R = 0x9A6C9329AC4BC9B5
_MASK = 0xFFFFFFFFFFFFFFFF


def _tables():
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY_R if c & 1 else c >> 1
        t0.append(c)
    tabs = [t0]
    for _ in range(7):  # slicing-by-8
        prev = tabs[-1]
        tabs.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tabs


_T = None


def crc64nvme_py(data, crc=0):
    """Pure-Python CRC-64/NVME (slicing-by-8); crc is a previous result to continue from."""
    global _T
    if _T is None:
        _T = _tables()
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    c = crc ^ _MASK
    mv = memoryview(data)
    n8 = len(mv) // 8 * 8
    for (w,) in __import__("struct").iter_unpack("<Q", mv[:n8]):
        c ^= w
        c = (t7[c & 0xFF] ^ t6[(c >> 8) & 0xFF] ^ t5[(c >> 16) & 0xFF] ^ t4[(c >> 24) & 0xFF]
             ^ t3[(c >> 32) & 0xFF] ^ t2[(c >> 40) & 0xFF] ^ t1[(c >> 48) & 0xFF] ^ t0[c >> 56])
    for b in mv[n8:]:
        c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ _MASK


try:
    from awscrt.checksums import crc64nvme as _crc64nvme_crt  # type: ignore

    def crc64nvme(data):
        return _crc64nvme_crt(bytes(data))

    CRC_IMPL = "awscrt"
except ImportError:  # pragma: no cover - depends on the environment
    crc64nvme = crc64nvme_py
    CRC_IMPL = "pure-python"

assert crc64nvme_py(b"123456789") == 0xAE8B14860A799888, "CRC-64/NVME check value"


def b64_crc64nvme(data):
    return base64.b64encode(crc64nvme(data).to_bytes(8, "big")).decode()


def b64_sha256(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64_sha512(data):
    return base64.b64encode(hashlib.sha512(data).digest()).decode()


# ---------------------------------------------------------------- helpers
def client():
    env = os.environ
    cfg = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                 response_checksum_validation="when_required", retries={"max_attempts": 1})
    return boto3.client(
        "s3",
        endpoint_url=env.get("ENDPOINT_URL") or "http://127.0.0.1:" + env.get("S3TS_S3_PORT", "38333"),
        region_name=env.get("REGION") or "us-east-1",
        aws_access_key_id=env.get("ACCESS_KEY_ID") or env.get("S3TS_S3_ACCESS_KEY_ID") or "s3ts-local",
        aws_secret_access_key=env.get("SECRET_KEY_ID") or env.get("S3TS_S3_SECRET_ACCESS_KEY") or "s3ts-local-secret",
        config=cfg,
    )


def outcome(fn):
    """Run fn; return ("ok", response) or ("<ErrorCode> (HTTP n)", None)."""
    try:
        return "ok", fn()
    except ClientError as e:
        err = e.response.get("Error", {})
        return f"{err.get('Code', '?')} (HTTP {e.response.get('ResponseMetadata', {}).get('HTTPStatusCode')})", None
    except (BotoCoreError, ValueError) as e:
        return f"client error: {type(e).__name__}: {e}", None


CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256",
                   "ChecksumSHA512", "ChecksumMD5", "ChecksumXXHASH64", "ChecksumXXHASH3", "ChecksumXXHASH128",
                   "ChecksumType")


def checksums_of(resp):
    return {k: resp[k] for k in CHECKSUM_FIELDS if resp and k in resp}


def head(s3, bucket, key):
    res, resp = outcome(lambda: s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    return checksums_of(resp) if res == "ok" else res


def get_checksums(s3, bucket, key):
    res, resp = outcome(lambda: s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    if res != "ok":
        return res
    resp["Body"].read()
    return checksums_of(resp)


def attributes(s3, bucket, key):
    res, resp = outcome(lambda: s3.get_object_attributes(
        Bucket=bucket, Key=key, ObjectAttributes=["Checksum", "ObjectParts", "ObjectSize", "ETag"]))
    if res != "ok":
        return res
    resp.pop("ResponseMetadata", None)
    resp.pop("LastModified", None)
    return resp


# ---------------------------------------------------------------- probes
def probe_single_put(s3, bucket, findings):
    data = os.urandom(256 * 1024)
    other = b"not the object" * 7
    findings["put_no_checksum"] = {"put": outcome(lambda: s3.put_object(Bucket=bucket, Key="plain", Body=data))[0],
                                   "head": head(s3, bucket, "plain")}
    cases = {
        "SHA256": (b64_sha256(data), b64_sha256(other)),
        "SHA512": (b64_sha512(data), b64_sha512(other)),
        "CRC64NVME": (b64_crc64nvme(data), b64_crc64nvme(other)),
    }
    for alg, (good, bad) in cases.items():
        key = f"single-{alg.lower()}"
        param = "Checksum" + alg
        res_ok, resp = outcome(lambda: s3.put_object(Bucket=bucket, Key=key, Body=data, **{param: good}))
        res_bad, _ = outcome(lambda: s3.put_object(Bucket=bucket, Key=key + "-wrong", Body=data, **{param: bad}))
        if alg == "SHA512":
            # the same again, but naming the algorithm (x-amz-sdk-checksum-algorithm: SHA512) too
            findings["put_SHA512_with_ChecksumAlgorithm"] = {
                "put_correct": outcome(lambda: s3.put_object(Bucket=bucket, Key=key + "-alg", Body=data,
                                                             ChecksumAlgorithm="SHA512", **{param: good}))[0],
                "put_wrong": outcome(lambda: s3.put_object(Bucket=bucket, Key=key + "-alg-wrong", Body=data,
                                                           ChecksumAlgorithm="SHA512", **{param: bad}))[0],
            }
        findings[f"put_{alg}"] = {
            "sent": good,
            "put_correct": res_ok,
            "put_response_checksums": checksums_of(resp),
            "put_wrong": res_bad,
            "wrong_object_exists": head(s3, bucket, key + "-wrong") if res_bad != "ok" else "n/a (accepted)",
            "head": head(s3, bucket, key),
            "get": get_checksums(s3, bucket, key),
            "attributes": attributes(s3, bucket, key),
        }


def probe_multipart(s3, bucket, findings):
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1 * MiB + 12345)]
    whole = b"".join(parts_data)
    full = b64_crc64nvme(whole)
    wrong_full = b64_crc64nvme(whole[:-1])

    def run(key, alg, ctype, b64, complete_value, part_value=None):
        out = {}
        param = "Checksum" + alg
        res, resp = outcome(lambda: s3.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm=alg, ChecksumType=ctype))
        out["create"] = res
        out["create_response"] = {k: resp[k] for k in ("ChecksumAlgorithm", "ChecksumType") if resp and k in resp}
        if res != "ok":
            return out
        upload_id = resp["UploadId"]
        parts = []
        for n, pdata in enumerate(parts_data, 1):
            value = part_value(n, pdata) if part_value else b64(pdata)
            res, presp = outcome(lambda: s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=pdata,
                ChecksumAlgorithm=alg, **{param: value}))
            out[f"upload_part_{n}"] = res
            if res != "ok":
                outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
                out["head"] = head(s3, bucket, key)
                return out
            out.setdefault("part_response_checksums", []).append(checksums_of(presp))
            parts.append({"PartNumber": n, "ETag": presp["ETag"], param: value})
        res, lresp = outcome(lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id))
        out["list_parts"] = res if res != "ok" else {
            "ChecksumAlgorithm": lresp.get("ChecksumAlgorithm"), "ChecksumType": lresp.get("ChecksumType"),
            "parts": [checksums_of(p) for p in lresp.get("Parts", [])]}
        extra = {param: complete_value, "ChecksumType": ctype} if complete_value else {}
        res, cresp = outcome(lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra))
        out["complete"] = res
        out["complete_response_checksums"] = checksums_of(cresp)
        if res != "ok":
            r2, _ = outcome(lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id))
            out["upload_after_failed_complete"] = "still open (list_parts ok)" if r2 == "ok" else r2
            outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
        out["head"] = head(s3, bucket, key)
        if res == "ok":
            out["get"] = get_checksums(s3, bucket, key)
            out["attributes"] = attributes(s3, bucket, key)
        return out

    findings["multipart_full_object_crc64nvme"] = {
        "expected_full": full, **run("mpu-crc64nvme", "CRC64NVME", "FULL_OBJECT", b64_crc64nvme, full)}
    findings["multipart_wrong_full_object_value"] = run(
        "mpu-crc64nvme-wrong-full", "CRC64NVME", "FULL_OBJECT", b64_crc64nvme, wrong_full)
    findings["multipart_wrong_part_value"] = run(
        "mpu-crc64nvme-wrong-part", "CRC64NVME", "FULL_OBJECT", b64_crc64nvme, full,
        part_value=lambda n, d: b64_crc64nvme(d[:-1]) if n == 2 else b64_crc64nvme(d))
    # what a composite (per-part) SHA256 upload gives: S3 reports base64(sha256(concat(part digests)))-N
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in parts_data)).digest())
    findings["multipart_composite_sha256"] = {
        "expected_composite": f"{composite.decode()}-{len(parts_data)}",
        **run("mpu-sha256", "SHA256", "COMPOSITE", b64_sha256, None)}


def probe_abort_and_list(s3, bucket, findings):
    out = {}
    key = "mpu-abort"
    _, resp = outcome(lambda: s3.create_multipart_upload(Bucket=bucket, Key=key))
    upload_id = resp["UploadId"]
    outcome(lambda: s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=os.urandom(MiB)))
    res, lresp = outcome(lambda: s3.list_multipart_uploads(Bucket=bucket))
    out["list_before_abort"] = res if res != "ok" else [
        {"Key": u["Key"], "UploadId_matches": u["UploadId"] == upload_id} for u in lresp.get("Uploads", [])]
    res, aresp = outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
    out["abort"] = res if res != "ok" else f"ok (HTTP {aresp['ResponseMetadata']['HTTPStatusCode']})"
    res, lresp = outcome(lambda: s3.list_multipart_uploads(Bucket=bucket))
    out["list_after_abort"] = res if res != "ok" else [u["Key"] for u in lresp.get("Uploads", [])]
    out["list_parts_after_abort"] = outcome(lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id))[0]
    out["complete_after_abort"] = outcome(lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]}))[0]
    res, aresp = outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
    out["abort_again"] = res if res != "ok" else f"ok (HTTP {aresp['ResponseMetadata']['HTTPStatusCode']})"
    out["abort_unknown_id"] = outcome(lambda: s3.abort_multipart_upload(
        Bucket=bucket, Key=key, UploadId="does-not-exist-" + uuid.uuid4().hex))[0]
    out["object_after_abort"] = head(s3, bucket, key)
    findings["abort_and_list"] = out


def cleanup(s3, bucket):
    for _ in range(3):
        res, lresp = outcome(lambda: s3.list_multipart_uploads(Bucket=bucket))
        for u in (lresp or {}).get("Uploads", []):
            outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]))
        res, lresp = outcome(lambda: s3.list_objects_v2(Bucket=bucket))
        for o in (lresp or {}).get("Contents", []):
            outcome(lambda: s3.delete_object(Bucket=bucket, Key=o["Key"]))
        if outcome(lambda: s3.delete_bucket(Bucket=bucket))[0] == "ok":
            return
    print(f"warning: could not delete bucket {bucket}", file=sys.stderr)


# ---------------------------------------------------------------- report
def short(v):
    if isinstance(v, dict):
        return ", ".join(f"{k}={short(x)}" for k, x in v.items()) or "(none)"
    if isinstance(v, list):
        return "[" + "; ".join(short(x) for x in v) + "]"
    return str(v)


def table(f):
    rows = [("botocore / checksum impl", f"botocore {f['botocore']}, boto3 {f['boto3']}, CRC64NVME via {f['crc_impl']}")]
    p = f["put_no_checksum"]
    rows.append(("PUT, no checksum sent", f"{p['put']}; HEAD: {short(p['head'])}"))
    for alg in ("SHA256", "SHA512", "CRC64NVME"):
        p = f[f"put_{alg}"]
        rows.append((f"PUT Checksum{alg} correct", f"{p['put_correct']}; PUT response: {short(p['put_response_checksums'])}"))
        rows.append((f"PUT Checksum{alg} WRONG", f"{p['put_wrong']}; object stored anyway: {short(p['wrong_object_exists'])}"))
        rows.append((f"  HEAD ChecksumMode=ENABLED", short(p["head"])))
        rows.append((f"  GET ChecksumMode=ENABLED", short(p["get"])))
        rows.append((f"  GetObjectAttributes", short(p["attributes"])))
    p = f["put_SHA512_with_ChecksumAlgorithm"]
    rows.append(("PUT ChecksumAlgorithm=SHA512 + ChecksumSHA512", f"correct: {p['put_correct']}; wrong: {p['put_wrong']}"))
    m = f["multipart_full_object_crc64nvme"]
    rows.append(("MPU CRC64NVME FULL_OBJECT create", f"{m['create']}; {short(m['create_response'])}"))
    rows.append(("  upload_part x3 (5 MiB, 5 MiB, 1 MiB+) with per-part CRC64NVME",
                 ", ".join(m.get(f"upload_part_{n}", "-") for n in (1, 2, 3)) + f"; responses: {short(m.get('part_response_checksums', []))}"))
    rows.append(("  list_parts", short(m.get("list_parts"))))
    rows.append(("  complete with correct full-object CRC64NVME", f"{m.get('complete')}; response: {short(m.get('complete_response_checksums', {}))}"))
    rows.append(("  HEAD ChecksumMode=ENABLED", f"{short(m.get('head'))} (expected full CRC {m['expected_full']})"))
    rows.append(("  GET ChecksumMode=ENABLED", short(m.get("get"))))
    rows.append(("  GetObjectAttributes", short(m.get("attributes"))))
    w = f["multipart_wrong_full_object_value"]
    rows.append(("MPU complete with WRONG full-object CRC64NVME",
                 f"{w.get('complete')}; upload afterwards: {w.get('upload_after_failed_complete', '-')}; object: {short(w.get('head'))}"))
    w = f["multipart_wrong_part_value"]
    rows.append(("MPU upload_part with WRONG part CRC64NVME",
                 f"part 2: {w.get('upload_part_2')}; complete: {w.get('complete', '-')}; object: {short(w.get('head'))}"))
    m = f["multipart_composite_sha256"]
    rows.append(("MPU SHA256 COMPOSITE create", f"{m['create']}; {short(m['create_response'])}"))
    rows.append(("  upload_part x3 with per-part SHA256", ", ".join(m.get(f"upload_part_{n}", "-") for n in (1, 2, 3))))
    rows.append(("  complete (parts carry their SHA256)", f"{m.get('complete')}; response: {short(m.get('complete_response_checksums', {}))}"))
    rows.append(("  HEAD ChecksumMode=ENABLED", f"{short(m.get('head'))} (AWS would say {m['expected_composite']})"))
    rows.append(("  GetObjectAttributes", short(m.get("attributes"))))
    a = f["abort_and_list"]
    for k in ("list_before_abort", "abort", "list_after_abort", "list_parts_after_abort", "complete_after_abort",
              "abort_again", "abort_unknown_id", "object_after_abort"):
        rows.append((k.replace("_", " "), short(a[k])))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)} | {v}" for k, v in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the findings as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="do not delete the probe bucket")
    a = ap.parse_args()
    s3 = client()
    bucket = "s3ts-checksum-probe-" + uuid.uuid4().hex[:8]
    findings = {"endpoint": s3.meta.endpoint_url, "boto3": boto3.__version__, "botocore": botocore.__version__,
                "crc_impl": CRC_IMPL, "bucket": bucket}
    s3.create_bucket(Bucket=bucket)
    try:
        probe_single_put(s3, bucket, findings)
        probe_multipart(s3, bucket, findings)
        probe_abort_and_list(s3, bucket, findings)
    finally:
        if not a.keep:
            cleanup(s3, bucket)
    print(json.dumps(findings, indent=2, default=str) if a.json else table(findings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
