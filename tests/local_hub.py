"""A local stand-in for the Hugging Face hub and for a shard server, on 127.0.0.1, so no test needs the network.

The hub side speaks as much of the hub's resolve protocol as huggingface_hub reads: HEAD and GET on
/[datasets/]{owner}/{name}/resolve/{revision}/{file}, answered with X-Repo-Commit and an ETag; a large file (.pt, .bin,
.safetensors, .tar) is a redirect (302, Location) to a second server, the CDN, with X-Linked-Etag and X-Linked-Size,
as the hub does for LFS files; errors carry X-Error-Code (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound).
Plain paths (`files`) are served as they are. Every body honours Range requests (206, Content-Range) unless told not
to, and the server can fail on purpose: answer statuses first (`fail`), drop a connection half-way (`cut`), ignore
ranges (`no_ranges`), deliver slowly (`delay`), and want a token for a repository (`gated`). `requests` logs what
it was asked: (method, path, Range header)."""
import hashlib
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

    @classmethod
    def reset(cls, cdn):
        for state in (cls.repos, cls.files, cls.gated, cls.fail, cls.cut, cls.no_ranges, cls.requests):
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
        lfs = {cdn_path(d): d for files in self.repos.values() for d in files.values()}
        data = self.files.get(self.path, lfs.get(self.path))
        return self.error(404) if data is None else self.send(data, body)

    def resolve(self, repo, revision, name, body):
        if repo not in self.repos:   # as the hub answers a client without a token
            return self.error(401, "RepoNotFound")
        if repo in self.gated and self.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
            return self.error(401 if "Authorization" not in self.headers else 403, "GatedRepo")
        commit = commit_of(repo)
        if revision not in ("main", commit):
            return self.error(404, "RevisionNotFound")
        if name not in self.repos[repo]:
            return self.error(404, "EntryNotFound", commit)
        data = self.repos[repo][name]
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
    tmp_path, for this process (whose huggingface_hub read them at import: set on its constants) and for the
    processes a test starts (set in the environment)."""
    from huggingface_hub import constants
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
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
