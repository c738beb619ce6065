"""A local stand-in for the Hugging Face hub and for a shard server, on 127.0.0.1, so no test needs the network.

The hub side speaks as much of the hub's resolve protocol as huggingface_hub reads: HEAD and GET on
/[datasets/]{owner}/{name}/resolve/{revision}/{file}, answered with X-Repo-Commit and an ETag; a large file (.pt, .bin,
.safetensors, .tar) is a redirect (302, Location) to a second server, the CDN, with X-Linked-Etag and X-Linked-Size,
as the hub does for LFS files; errors carry X-Error-Code (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound).
Plain paths (`files`) are served as they are. Every body honours Range requests (206, Content-Range) unless told not
to, and the server can fail on purpose: answer statuses first (`fail`), drop a connection half-way (`cut`), ignore
ranges (`no_ranges`), deliver slowly (`delay`), and want a token for a repository (`gated`). `requests` logs what
it was asked: (method, path, Range header).

The hub side also takes uploads as huggingface_hub's create_repo and upload_folder make them without hf_xet's
storage (HF_HUB_DISABLE_XET; the hub's xet storage is a protocol of its own): POST /api/repos/create, POST
/api/validate-yaml (a README's front matter), POST /api/models/{repo}/preupload/{revision} (each file "lfs" or
"regular"), POST /{repo}.git/info/lfs/objects/batch (an upload href on the CDN for each LFS object it lacks), PUT
there (the bytes, checked against their sha256), and POST /api/models/{repo}/commit/{revision} (ndjson: a header,
then "file" lines with base64 content and "lfsFile" lines naming an uploaded object). Each commit gets a new id that
"main" then resolves to; files of earlier commits stay readable by their id. Writes want the token `writer`
(401 without a token, 403 with another)."""
import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

LFS = (".pt", ".bin", ".safetensors", ".tar")


def commit_of(repo):
    """The one commit of a repository on the local hub ("main" points at it)."""
    return hashlib.sha1(repo.encode()).hexdigest()


def cdn_path(data):
    return f"/lfs/{hashlib.sha256(data).hexdigest()}"


class Hub(BaseHTTPRequestHandler):
    repos, files, gated = {}, {}, {}     # {repo: {file: bytes}}, {path: bytes}, {repo: its token}
    fail, cut = {}, Counter()            # {path: [statuses to answer first; None: serve]}, {path: drops to make}
    no_ranges, requests, delay, cdn = set(), [], 0.0, ""
    heads, history, objects = {}, {}, {}   # {repo: main's commit}, {repo: {commit: files}}, {sha256: uploaded bytes}
    writer = "hf_writer"

    @classmethod
    def reset(cls, cdn):
        for state in (cls.repos, cls.files, cls.gated, cls.fail, cls.cut, cls.no_ranges, cls.requests, cls.heads,
                      cls.history, cls.objects):
            state.clear()
        cls.delay, cls.cdn = 0.0, cdn

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.fail.get(self.path) and (status := self.fail[self.path].pop(0)):
            return self.error(status)
        if m := re.fullmatch(r"/((?:datasets/)?[^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path):
            return self.resolve(*m.groups(), body)
        lfs = {cdn_path(d): d for files in [*self.repos.values(), *(f for h in self.history.values()
                                                                     for f in h.values())] for d in files.values()}
        data = self.files.get(self.path, lfs.get(self.path))
        return self.error(404) if data is None else self.send(data, body)

    def resolve(self, repo, revision, name, body):
        if repo not in self.repos:   # as the hub answers a client without a token
            return self.error(401, "RepoNotFound")
        if repo in self.gated and self.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
            return self.error(401 if "Authorization" not in self.headers else 403, "GatedRepo")
        commit = revision if revision in self.history.get(repo, {}) else self.heads.get(repo, commit_of(repo))
        if revision not in ("main", commit):
            return self.error(404, "RevisionNotFound")
        files = self.history.get(repo, {}).get(commit, self.repos[repo])
        if name not in files:
            return self.error(404, "EntryNotFound", commit)
        data = files[name]
        if name.endswith(LFS):
            sha = hashlib.sha256(data).hexdigest()
            return self.reply(302, [("X-Repo-Commit", commit), ("X-Linked-Etag", f'"{sha}"'),
                                    ("X-Linked-Size", len(data)), ("Location", self.cdn + cdn_path(data)),
                                    ("Content-Length", 0)])
        self.send(data, body, [("X-Repo-Commit", commit), ("ETag", f'"{hashlib.sha1(data).hexdigest()}"')])

    def send(self, data, body, headers=()):
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(m[1]) if m and self.path not in self.no_ranges else 0
        self.reply(206 if start else 200, [*headers, ("Accept-Ranges", "bytes"), ("Content-Length", len(data) - start),
                                           *([("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")]
                                             if start else [])])
        if not body:
            return
        rest = data[start:]
        if self.cut[self.path] > 0:   # the connection drops half-way through
            self.cut[self.path] -= 1
            rest = rest[:len(rest) // 2]
        for i in range(0, len(rest), 1 << 16):
            self.wfile.write(rest[i:i + (1 << 16)])
            time.sleep(self.delay)

    # ------------------------------------------------------------------------------------------------------------
    # Uploads.

    def do_POST(self):
        self.requests.append((self.command, self.path, None))
        body = self.body()
        if not self.may_write():
            return
        if self.path == "/api/repos/create":
            ask = json.loads(body)
            repo = ("datasets/" if ask.get("type") == "dataset" else "") + f"{ask['organization']}/{ask['name']}"
            url = f"http://{self.headers['Host']}/{repo}"
            if repo in self.repos:   # (huggingface_hub's exist_ok reads the url from this answer too)
                return self.json(409, {"error": "You already created this model repo", "url": url})
            self.repos[repo] = {}
            return self.json(200, {"url": url, "name": repo})
        if self.path == "/api/validate-yaml":   # the hub's check of a README's front matter, in brief
            text = json.loads(body)["content"]
            ok = text.startswith("---\n") and "\n---\n" in text[3:]
            return self.json(200 if ok else 400, {"errors": [] if ok else [{"message": "no YAML front matter"}],
                                                  "warnings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/?]+)", self.path):
            if m[1] not in self.repos:
                return self.error(404, "RepoNotFound")
            return self.json(200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS)
                                              else "regular", "shouldIgnore": False}
                                             for f in json.loads(body)["files"]]})
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", self.path):
            objects = [dict(oid=o["oid"], size=o["size"], **({} if o["oid"] in self.objects else {"actions": {
                "upload": {"href": f"{self.cdn}/upload/{o['oid']}"}}})) for o in json.loads(body)["objects"]]
            return self.json(200, {"transfer": "basic", "objects": objects})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/?]+)", self.path):
            return self.commit(m[1], body)
        self.error(404)

    def do_PUT(self):   # an LFS object's bytes, at the href the batch endpoint gave
        self.requests.append((self.command, self.path, None))
        data = self.body()
        oid = self.path.removeprefix("/upload/")
        if hashlib.sha256(data).hexdigest() != oid:
            return self.error(400)
        self.objects[oid] = data
        self.reply(200, [("Content-Length", 0)])

    def commit(self, repo, body):
        """A new commit on main: the files before it, with the added ones (inline, or an uploaded LFS object)."""
        if repo not in self.repos:
            return self.error(404, "RepoNotFound")
        files = dict(self.repos[repo])
        for line in map(json.loads, body.decode().splitlines()):
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.objects:
                    return self.json(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = self.objects[value["oid"]]
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
        parent = self.heads.get(repo, commit_of(repo))
        commit = hashlib.sha1((parent + json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(
            files.items())})).encode()).hexdigest()
        self.history.setdefault(repo, {})[commit] = files
        self.heads[repo], self.repos[repo] = commit, files
        self.json(200, {"success": True, "commitOid": commit, "hookOutput": "",
                        "commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{commit}"})

    def may_write(self):
        """Writes need the writer's token: 401 without a token, 403 with another (as the hub answers)."""
        auth = self.headers.get("Authorization")
        if auth == f"Bearer {self.writer}":
            return True
        self.json(401 if auth is None else 403, {"error": "Invalid credentials in Authorization header"})
        return False

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def json(self, status, obj):
        data = json.dumps(obj).encode()
        self.reply(status, [("Content-Type", "application/json"), ("Content-Length", len(data))])
        self.wfile.write(data)

    def error(self, status, code=None, commit=None):
        self.reply(status, [("Content-Length", 0), *([("X-Error-Code", code)] if code else []),
                            *([("X-Repo-Commit", commit)] if commit else [])])

    def reply(self, status, headers):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, str(value))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The local hub's URL. HF_ENDPOINT points at it; huggingface_hub's cache, token file and offline switch are in
    tmp_path and its xet uploads off, for this process (whose huggingface_hub read them at import: set on its
    constants) and for the processes a test starts (set in the environment)."""
    from huggingface_hub import constants
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)   # uploads by the LFS protocol, which this hub speaks
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Hub) for _ in range(2)]   # the hub, and its CDN
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    url, cdn = (f"http://127.0.0.1:{server.server_port}" for server in servers)
    monkeypatch.setenv("HF_ENDPOINT", url)
    Hub.reset(cdn)
    yield url
    for server in servers:
        server.shutdown()
        server.server_close()
