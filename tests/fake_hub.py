"""The Hub without the network: a stand-in server for uploads, and an HF cache laid out for downloads.

`FakeHub` is a small server on 127.0.0.1, spoken to by huggingface_hub's real HfApi.

It answers the endpoints a push uses, as the Hub does (paths and payloads read from
huggingface_hub's hf_api.py and _commit_api.py):

- POST /api/repos/create                          {"name", "organization", "visibility"?, "type"}
- GET  /api/models/{repo}[/revision/{rev}]         repo_info, which create_repo(exist_ok=True) calls after a 401/403
- POST /api/validate-yaml                          the README.md metadata check create_commit makes first
- POST /api/models/{repo}/preupload/{rev}          answered "regular" for every file, so each arrives inline
- POST /api/models/{repo}/commit/{rev}             NDJSON: a header line, then one base64 "file" line per file
- GET  /api/agent-harnesses                        the registry huggingface_hub fetches once for its user agent

and keeps what it receives: repositories, their commits and files, and every request's method, path and status.
`fail_commits=N` answers the first N commits with 503; `refuse_token=True` answers everything with the Hub's 401,
which echoes the Authorization header. A HEAD request (how huggingface_hub looks a file up before a download)
gets the status and headers alone.
Anything else gets a 404 and is recorded in `unexpected`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

INVALID_TOKEN = "Invalid credentials in Authorization header"
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    def __init__(self, token: str, fail_commits: int = 0, refuse_token: bool = False) -> None:
        self.token = token
        self.fail_commits = fail_commits
        self.refuse_token = refuse_token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unexpected: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method in (None, m)]

    # -- the endpoints -------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/api/agent-harnesses":  # public, no token
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if headers.get("authorization") != f"Bearer {self.token}" or self.refuse_token:
            # Echo what was received, as a careless server or proxy might: hf_tl must scrub it from its messages.
            echoed = f"{INVALID_TOKEN}: {headers.get('authorization')}"
            return _json(401, {"error": echoed}, {"X-Error-Message": echoed})
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if method == "GET" and (m := re.fullmatch(rf"/api/models/{REPO}(/revision/[^/]+)?", path)):
            return self._info(m["repo"])
        if method == "POST" and (m := re.fullmatch(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", path)):
            return self._preupload(m["repo"], json.loads(body))
        if method == "POST" and (m := re.fullmatch(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", path)):
            return self._commit(m["repo"], body, headers)
        self.unexpected.append(f"{method} {path}")
        return _json(404, {"error": f"fake Hub: no route for {method} {path}"})

    def _create(self, payload: dict) -> tuple[int, dict, bytes]:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return _json(200, {"url": f"{self.url}/{repo_id}"})

    def _validate_yaml(self, payload: dict) -> tuple[int, dict, bytes]:
        content = payload["content"]
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\r?\n", content, re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as e:
            return _json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
        if not isinstance(metadata, dict):
            return _json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _info(self, repo_id: str) -> tuple[int, dict, bytes]:
        if repo_id not in self.repos:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        repo = self.repos[repo_id]
        sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
        return _json(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": []})

    def _preupload(self, repo_id: str, payload: dict) -> tuple[int, dict, bytes]:
        if repo_id not in self.repos:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = self.repos[repo_id].files
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
            }
            for f in payload["files"]
        ]
        return _json(200, {"files": answer})

    def _commit(self, repo_id: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        if repo_id not in self.repos:
            return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        with self._lock:
            if self.fail_commits > 0:
                self.fail_commits -= 1
                return _json(503, {"error": "fake Hub: service unavailable, try again"})
        assert headers.get("content-type") == "application/x-ndjson", headers.get("content-type")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        assert header["key"] == "header"
        received = {}
        for op in operations:
            if op["key"] != "file":
                return _json(400, {"error": f"fake Hub: only inline files, got {op['key']}"})
            assert op["value"]["encoding"] == "base64"
            received[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
        repo = self.repos[repo_id]
        oid = hashlib.sha1(body).hexdigest()
        repo.files.update(received)
        repo.commits.append({"oid": oid, "summary": header["value"]["summary"], "files": received})
        return _json(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})


def fill_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str) -> Path:
    """Lay `files` out as huggingface_hub's cache does (blobs, refs/main, snapshots/<commit> of symlinks), so
    that with HF_HUB_OFFLINE=1 huggingface_hub's and transformers' own resolution finds them. Returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, content in files.items():
        etag = hashlib.sha256(content).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(content)
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def git_blob_sha1(content: bytes) -> str:
    """The oid git (and the Hub) gives a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _json(status: int, payload: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            with hub._lock:
                hub.headers_seen.append(headers)
            status, out_headers, payload = hub.handle(self.command, self.path, headers, body)
            with hub._lock:
                hub.requests.append((self.command, self.path.split("?", 1)[0], status))
            self.send_response(status)
            for key, value in out_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer is the headers alone (huggingface_hub reads its metadata so)
                self.wfile.write(payload)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_HEAD = do_POST = do_PUT = _serve

        def log_message(self, *args) -> None:  # quiet: the test asserts on hub.requests instead
            pass

    return Handler
