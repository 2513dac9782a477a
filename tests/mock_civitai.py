#!/usr/bin/env python3
"""mock_civitai.py: a local stand-in for the Civitai API and its file storage, for the tests.

Serves on 127.0.0.1 (an ephemeral port, written to --port-file once listening) the shapes of
../shared/docs/ecosystem.md §1.11 with its invented ids and the 220-byte mock_ink_style file:

  GET /api/v1/model-versions/by-hash/{hash}   any hash kind of a served file, any case; else 404
  POST /api/v1/model-versions/by-hash         a JSON array of at most 100 full SHA-256s (any
                                              case): the records of those it knows, in reverse
                                              order (the order is not guaranteed), unknown ones
                                              dropped; 400 for more than 100, an entry that is
                                              not 64 hex digits, or a body that is not an array
  POST /api/v1/model-versions/by-hash/ids     the same body: [{modelVersionId, modelId, hash}]
  GET /api/v1/model-versions/{id}             the version record (C); unknown: 404
  GET /api/v1/models/{id}                     the model record (B); 424242: 404; not a number: 400
  GET /api/download/models/{id}               401 without `Authorization: Bearer good-key` (or
                                              ?token=good-key), else 307 to the storage host
                                              (`localhost`, not 127.0.0.1, so that the client
                                              must not forward the token there)
  GET /storage/{mode}/{name}                  the file; honours Range unless mode is "norange";
                                              "noauth" rejects any Authorization header (403);
                                              "cut" sends half the body to a request without
                                              Range; "cutflip" does that once, then serves the
                                              file with one byte changed (another version of
                                              the same size: a new ETag); "cutbare" is "cut"
                                              without ETag (every other mode sends one, and
                                              honours If-Range: a stale validator gets the
                                              whole file, 200)
  GET /images/{name}.png                      a tiny PNG preview

Versions of model 900001 (each one has the same kind of record):
  900107 v2.0  the latest: mock_ink_style_v2.safetensors (the same file with the value 2.0)
  900101 v1.0  mock_ink_style.safetensors, the normal flow
  900102       early access: the download answers 403 {"error":"Early Access",...}
  900103       archived: the download answers 410
  900104       storage serves bytes that do not match the published SHA-256
  900105       storage cuts the body off half-way unless the request resumes with Range
  900106       the first request of each of its API and download paths answers 429 (Retry-After 1)
  900108       the version endpoint answers 503 twice, then the record

--lora and --lora-v2 serve other files under those two names (with their own hashes); --known DIR
serves each *.safetensors file in DIR as its own version of model 900001 (ids 910001 and up, in
name order), found by its hashes; --base-model NAME=BASE (repeatable) makes the record of the
version serving file NAME say baseModel BASE instead of "SD 1.5". --batch-status 404 (or 405, ...) makes both POST endpoints
answer that status, as a server without them does.
Every request is appended to --log as one line: "METHOD PATH auth=yes|no range=VALUE ua=AGENT",
a POST with " n=COUNT" (the hashes in its body) after the path.
The server exits on SIGTERM, on GET /__shutdown, or after --lifetime seconds (a bound for a
test that dies without stopping it). Python standard library only.
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "good-key"
MODEL_ID = 900001
HEADER = (b'{"__metadata__":{"ss_base_model_version":"sd_v1","ss_output_name":"mock_ink_style",'
          b'"modelspec.architecture":"stable-diffusion-v1/lora"},"lora_unet_mock.alpha":'
          b'{"dtype":"F32","shape":[],"data_offsets":[0,4]}}')


def safetensors(value):
    header = HEADER + b" "
    return struct.pack("<Q", len(header)) + header + struct.pack("<f", value)


def hashes(data, blake3=None):
    sha = hashlib.sha256(data).hexdigest().upper()
    n = struct.unpack("<Q", data[:8])[0]
    crc = zlib.crc32(data)
    h = {"AutoV2": sha[:10], "AutoV3": hashlib.sha256(data[8 + n:]).hexdigest().upper()[:12],
         "SHA256": sha, "CRC32": struct.pack("<I", crc).hex().upper()}
    if blake3:
        h["BLAKE3"] = blake3
    return h


FILES = {
    "mock_ink_style.safetensors": safetensors(1.0),
    "mock_ink_style_v2.safetensors": safetensors(2.0),
}
# BLAKE3 is not in hashlib; ecosystem.md gives the value for the fixture.
HASHES = {
    "mock_ink_style.safetensors": hashes(
        FILES["mock_ink_style.safetensors"],
        "06F644A02FCF0BEFD0212B14ABC91ABC9E066D7949E05A8D731526533E7B7C25"),
    "mock_ink_style_v2.safetensors": hashes(FILES["mock_ink_style_v2.safetensors"]),
}
assert HASHES["mock_ink_style.safetensors"]["SHA256"] == \
    "3B4B65D6428F8F873A91DB79353C66EA470C0DE01E159CD805DFC4527EA37A59"


def serve_instead(name, path):
    """Serves the bytes of the file at path as `name` (--lora, --lora-v2): the 220-byte mock is
    not a LoRA a registry accepts, so the end-to-end tests give a real one."""
    with open(path, "rb") as f:
        FILES[name] = f.read()
    HASHES[name] = hashes(FILES[name])

# version id -> (name, file, storage mode, download behaviour)
VERSIONS = {
    900107: ("v2.0", "mock_ink_style_v2.safetensors", "noauth", None),
    900101: ("v1.0", "mock_ink_style.safetensors", "noauth", None),
    900102: ("v1.0-ea", "mock_ink_style.safetensors", "noauth", "early"),
    900103: ("v1.0-archived", "mock_ink_style.safetensors", "noauth", "archived"),
    900104: ("v1.0-bad", "mock_ink_style.safetensors", "bad", None),
    900105: ("v1.0-cut", "mock_ink_style.safetensors", "cut", None),
    900106: ("v1.0-busy", "mock_ink_style.safetensors", "noauth", None),
    900108: ("v1.0-flaky", "mock_ink_style.safetensors", "noauth", None),
}
LISTED = [900107, 900101]  # the versions the model page shows, newest first
# file name -> the version its hashes find
FILE_VERSION = {"mock_ink_style.safetensors": 900101, "mock_ink_style_v2.safetensors": 900107}
# file name -> its version's baseModel, when not "SD 1.5" (--base-model)
BASE_MODEL = {}
BATCH_MAX = 100
BATCH_ERROR = "Request must include an array of SHA256 Hashes. Max 100 hashes per request."


def serve_known(folder):
    """--known: each LoRA in folder as a version of the model (a folder of many for link --all)."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    for i, name in enumerate(names):
        vid = 910001 + i
        with open(os.path.join(folder, name), "rb") as f:
            FILES[name] = f.read()
        HASHES[name] = hashes(FILES[name])
        VERSIONS[vid] = ("v-" + name[:-12], name, "noauth", None)
        FILE_VERSION[name] = vid

# a 1x1 PNG preview
def png(name=""):
    shade = zlib.crc32(name.encode()) & 0xFF  # each preview its own colour
    raw = zlib.compress(bytes([0, shade, 0x40, 0x60]))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


class State:
    def __init__(self, log):
        self.lock = threading.Lock()
        self.counts = {}
        self.log = log

    def count(self, path):
        with self.lock:
            self.counts[path] = self.counts.get(path, 0) + 1
            return self.counts[path]

    def record(self, line):
        if self.log:
            with self.lock, open(self.log, "a") as f:
                f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    server_version = "mock-civitai/1"

    def log_message(self, fmt, *args):
        pass

    # ----- helpers -----
    def origin(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def send(self, status, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        # every answer has a validator, as real servers' do: the client keeps it (If-Range)
        self.send_header("ETag", '"%s"' % hashlib.sha256(body).hexdigest()[:16])
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, what, **extra):
        body = {"error": what}
        body.update(extra)
        self.send(status, body)

    def authorized(self, query):
        auth = self.headers.get("Authorization", "")
        if auth:
            parts = auth.split()
            return len(parts) == 2 and parts[0] == "Bearer" and parts[1] == TOKEN
        return query.get("token", [""])[0] == TOKEN

    # ----- records -----
    def file_record(self, vid):
        name, fname, _, _ = VERSIONS[vid]
        return {
            "id": vid + 100, "name": fname, "type": "Model", "sizeKB": len(FILES[fname]) / 1024,
            "primary": True, "metadata": {"format": "SafeTensor", "size": None, "fp": None},
            "pickleScanResult": "Success", "pickleScanMessage": "No Pickle imports",
            "virusScanResult": "Success", "virusScanMessage": None,
            "scannedAt": "2026-01-02T03:04:05.000Z", "hashes": HASHES[fname],
            "downloadUrl": "%s/api/download/models/%d" % (self.origin(), vid),
        }

    def images(self, vid):
        return [
            {"url": "%s/images/%d-1.png" % (self.origin(), vid), "type": "image", "nsfwLevel": 1,
             "width": 512, "height": 768, "hash": "U9Nm.]~q00IU~qof%MRj00Rj-;t7", "minor": False,
             "poi": False, "availability": "Public", "hasMeta": True, "hasPositivePrompt": True,
             "onSite": False, "remixOfId": None,
             "meta": {"prompt": "a heron, inkwash style <lora:mock_ink_style:0.8>",
                      "negativePrompt": "photo", "steps": 20, "sampler": "Euler a",
                      "cfgScale": 7, "seed": 1234, "Size": "512x768"}},
            {"url": "%s/images/%d-2.png" % (self.origin(), vid), "type": "image", "nsfwLevel": 8,
             "width": 512, "height": 768, "hash": "U9Nm.]~q00IU~qof%MRj00Rj-;t7", "minor": False,
             "poi": False, "availability": "Public", "hasMeta": False,
             "hasPositivePrompt": False, "onSite": False, "remixOfId": None},
        ]

    def version_record(self, vid):
        name, fname, _, _ = VERSIONS[vid]
        published = "2026-02-01T00:00:00.000Z" if vid == 900107 else "2026-01-02T03:04:05.000Z"
        return {
            "id": vid, "modelId": MODEL_ID, "name": name, "status": "Published", "nsfwLevel": 1,
            "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": published,
            "publishedAt": published, "trainedWords": ["inkwash style"],
            "trainingStatus": None, "trainingDetails": None, "baseModel": BASE_MODEL.get(fname, "SD 1.5"),
            "baseModelType": "Standard", "description": None, "uploadType": "Created",
            "usageControl": "Download",
            "air": "urn:air:sd1:lora:civitai:%d@%d" % (MODEL_ID, vid),
            "stats": {"downloadCount": 42, "thumbsUpCount": 7},
            "model": {"name": "Mock Ink Wash Style", "type": "LORA", "nsfw": False, "poi": False},
            "files": [self.file_record(vid)], "images": self.images(vid),
            "downloadUrl": "%s/api/download/models/%d" % (self.origin(), vid),
        }

    def model_record(self):
        versions = []
        for vid in LISTED:
            v = self.version_record(vid)
            versions.append({k: v[k] for k in ("id", "name", "baseModel", "baseModelType",
                                                "publishedAt", "trainedWords", "stats", "files",
                                                "images", "downloadUrl")})
        return {
            "id": MODEL_ID, "name": "Mock Ink Wash Style", "description": "<p>Test LoRA.</p>",
            "type": "LORA", "poi": False, "nsfw": False, "nsfwLevel": 1,
            "availability": "Public", "minor": False, "sfwOnly": False,
            "supportsGeneration": False, "allowNoCredit": True, "allowCommercialUse": ["Image"],
            "allowDerivatives": True, "allowDifferentLicense": False,
            "stats": {"downloadCount": 42, "thumbsUpCount": 7, "thumbsDownCount": 0,
                      "commentCount": 1, "tippedAmountCount": 0},
            "creator": {"username": "mock_creator", "image": None}, "tags": ["style", "ink"],
            "modelVersions": versions,
        }

    # ----- routes -----
    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        self.server.state.record("GET %s auth=%s range=%s ua=%s" % (
            path, "yes" if self.headers.get("Authorization") else "no",
            self.headers.get("Range", "-"), self.headers.get("User-Agent", "-")))
        parts = [p for p in path.split("/") if p]
        try:
            if path == "/__shutdown":
                self.send(200, {"ok": True})
                threading.Thread(target=self.server.shutdown, daemon=True).start()
            elif parts[:4] == ["api", "v1", "model-versions", "by-hash"] and len(parts) == 5:
                self.by_hash(parts[4])
            elif parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 4:
                self.version(path, parts[3])
            elif parts[:3] == ["api", "v1", "models"] and len(parts) == 4:
                self.model(parts[3])
            elif parts[:3] == ["api", "download", "models"] and len(parts) == 4:
                self.download(path, parts[3], query)
            elif parts[:1] == ["storage"] and len(parts) == 3:
                self.storage(parts[1], parts[2])
            elif parts[:1] == ["images"] and len(parts) == 2:
                self.send(200, png(parts[1]), "image/png")
            else:
                self.error(404, "Not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def busy(self, path, vid):
        n = self.server.state.count(path)
        if vid == 900106 and n == 1:
            self.send(429, {"error": "Too many requests"}, headers=[("Retry-After", "1")])
            return True
        if vid == 900108 and n <= 2:
            self.error(503, "Service unavailable")
            return True
        return False

    def by_hash(self, h):
        h = h.upper()
        for fname, hs in HASHES.items():
            if h in hs.values() or (len(h) == 64 and hs["SHA256"] == h):
                return self.send(200, self.version_record(FILE_VERSION[fname]))
        self.error(404, "Model not found")

    # ----- POST: the batch lookups -----
    def do_POST(self):
        path = urlsplit(self.path).path
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        except ValueError:
            body = None
        self.server.state.record("POST %s n=%s auth=%s ua=%s" % (
            path, len(body) if isinstance(body, list) else "-",
            "yes" if self.headers.get("Authorization") else "no",
            self.headers.get("User-Agent", "-")))
        try:
            if path.rstrip("/") not in ("/api/v1/model-versions/by-hash",
                                        "/api/v1/model-versions/by-hash/ids"):
                return self.error(404, "Not found")
            if self.server.batch_status:
                return self.error(self.server.batch_status, "Method not allowed"
                                  if self.server.batch_status == 405 else "Not found")
            if not isinstance(body, list) or len(body) > BATCH_MAX or not all(
                    isinstance(h, str) and len(h) == 64 and
                    all(c in "0123456789abcdefABCDEF" for c in h) for h in body):
                return self.error(400, BATCH_ERROR)
            found = []  # (version id, hash) of the known hashes, each version once
            for h in body:
                for fname, hs in HASHES.items():
                    vid = FILE_VERSION.get(fname)
                    if hs["SHA256"] == h.upper() and vid not in [v for v, _ in found]:
                        found.append((vid, hs["SHA256"]))
            found.reverse()
            if path.rstrip("/").endswith("/ids"):
                return self.send(200, [{"modelVersionId": v, "modelId": MODEL_ID, "hash": h}
                                       for v, h in found])
            self.send(200, [self.version_record(v) for v, _ in found])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def version(self, path, ident):
        vid = int(ident) if ident.isdigit() else 0
        if vid not in VERSIONS:
            return self.error(404, "Model not found")
        if not self.busy(path, vid):
            self.send(200, self.version_record(vid))

    def model(self, ident):
        if not ident.isdigit():
            return self.error(400, "Invalid id: expected a number")
        if int(ident) != MODEL_ID:
            return self.error(404, "No model with id %s" % ident)
        self.send(200, self.model_record())

    def download(self, path, ident, query):
        vid = int(ident) if ident.isdigit() else 0
        if vid not in VERSIONS:
            return self.error(404, "File not found")
        if "mozilla" in self.headers.get("User-Agent", "").lower() and not self.authorized(query):
            return self.send(307, b"", headers=[("Location", "/login?returnUrl=%2Fmodel-versions%2F"
                                                 + ident + "&reason=download-auth")])
        if not self.authorized(query):
            return self.error(401, "Unauthorized", message="The creator of this asset requires "
                              "you to be logged in to download it")
        _, fname, mode, special = VERSIONS[vid]
        if special == "early":
            return self.error(403, "Early Access", deadline="2026-12-31T00:00:00.000Z",
                              message="This asset is in Early Access. You can use it with the "
                              "Early Access purchase.")
        if special == "archived":
            return self.error(410, "Model archived, not available for download")
        if self.busy(path, vid):
            return
        location = "http://localhost:%d/storage/%s/%s?X-Amz-Expires=86400&X-Amz-Signature=abc" % (
            self.server.server_address[1], mode, fname)
        self.send(307, b"", headers=[("Location", location), ("Cache-Control", "no-store")])

    def storage(self, mode, fname):
        if fname not in FILES:
            return self.error(404, "File not found")
        if self.headers.get("Authorization"):
            return self.error(403, "Forbidden: storage received an Authorization header")
        data = FILES[fname]
        if mode == "bad":
            data = data[:-1] + b"\x41"
        served = self.server.storage_served
        if mode == "cutflip" and served.get((mode, fname)):
            # the first byte of tensor data (a low mantissa byte): in the part sent first, so
            # that a splice of the old start and the new end is the old version
            at = 8 + struct.unpack("<Q", data[:8])[0]
            data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        rng = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        start = 0
        if rng.startswith("bytes=") and rng.endswith("-") and mode != "norange" and \
                (if_range is None or if_range == etag):
            start = int(rng[6:-1])
            if start >= len(data):
                return self.send(416, b"", headers=[("Content-Range", "bytes */%d" % len(data))])
        headers = [("Accept-Ranges", "bytes"),
                   ("Content-Disposition", 'attachment; filename="%s"' % fname)]
        if mode != "cutbare":
            headers.append(("ETag", etag))
        first = not served.get((mode, fname))
        served[(mode, fname)] = True
        if start:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data))))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if (mode in ("cut", "cutbare") or (mode == "cutflip" and first)) and not start:
            # half the body; cutflip past the byte its next version changes
            at = 8 + struct.unpack("<Q", data[:8])[0] + 64 if mode == "cutflip" else len(body) // 2
            self.wfile.write(body[:min(at, len(body) - 1)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--lifetime", type=float, default=300)
    ap.add_argument("--lora", help="serve this file as mock_ink_style.safetensors")
    ap.add_argument("--lora-v2", help="serve this file as mock_ink_style_v2.safetensors")
    ap.add_argument("--known", help="serve each LoRA in this folder as a version of the model")
    ap.add_argument("--base-model", action="append", default=[], metavar="NAME=BASE",
                    help="the baseModel of the version serving file NAME")
    ap.add_argument("--batch-status", type=int, default=0,
                    help="answer the POST endpoints with this status (404, 405: none there)")
    args = ap.parse_args()
    for pair in args.base_model:
        fname, _, base = pair.partition("=")
        BASE_MODEL[fname] = base
    if args.known:
        serve_known(args.known)
    if args.lora:
        serve_instead("mock_ink_style.safetensors", args.lora)
    if args.lora_v2:
        serve_instead("mock_ink_style_v2.safetensors", args.lora_v2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.storage_served = {}  # (mode, name) -> served once: cutflip and cutbare change after it
    server.daemon_threads = True
    server.state = State(args.log)
    server.batch_status = args.batch_status
    timer = threading.Timer(args.lifetime, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.rename(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
