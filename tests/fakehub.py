"""A small stand-in for the Hub's HTTP API on loopback: repo creation, pre-upload, commit, and the
read routes a download takes (model and dataset info, ``resolve`` with HEAD and GET, and the tree
listing and paths-info that 🤗 datasets reads a dataset repo through). Dataset repos live under
``store/datasets/<owner>/<name>`` (:meth:`FakeHub.repo` with ``kind="dataset"``).

Like the real Hub, answers carry public ``https://huggingface.co/...`` URLs (huggingface_hub parses
them against its default endpoint).

Enough of the endpoints ``HfApi.create_repo`` and ``HfApi.upload_folder`` call to store uploaded
files on disk, so tests can check what arrives byte for byte. Unknown routes answer 404 and are
recorded in ``unknown`` so a test fails with the route that is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


PUBLIC = "https://huggingface.co"


class FakeHub:
    def __init__(self, store: Path, token: str = "hf_test_token"):
        self.store, self.token = Path(store), token
        self.unknown: list[str] = []
        self.commits: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str, kind: str = "model") -> Path:
        return self.store / repo_id if kind == "model" else self.store / "datasets" / repo_id

    def head(self, repo_id: str) -> str:
        """The newest commit of ``repo_id`` (40 hex digits, as the Hub's X-Repo-Commit)."""
        ours = [c for c in self.commits if c["repo"] == repo_id]
        return ours[-1]["oid"] if ours else "0" * 40

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: dict | list | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self._reply(401, {"error": "Invalid credentials"})
                return False

            def _entry(self, folder: Path, file: Path) -> dict:
                name = file.relative_to(folder).as_posix()
                if file.is_dir():
                    return {"type": "directory", "path": name, "oid": "0" * 40}
                data = file.read_bytes()
                return {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                body = self._body()
                match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path)
                if match:  # read-only: no token needed
                    folder = hub.repo(match.group(1), "dataset")
                    asked = parse_qs(body.decode()).get("paths", [])  # form-encoded, as huggingface_hub sends it
                    found = [self._entry(folder, folder / name) for name in asked if (folder / name).exists()]
                    return self._reply(200, found)
                if not self._authorized():
                    return
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = (
                        f"{request.get('organization') or 'user'}/{request['name']}"
                        if "/" not in request["name"]
                        else request["name"]
                    )
                    folder = hub.repo(repo_id)
                    if folder.exists():
                        return self._reply(
                            409, {"error": "You already created this model repo", "url": f"{PUBLIC}/{repo_id}"}
                        )
                    folder.mkdir(parents=True)
                    private = bool(request.get("private")) or request.get("visibility") == "private"  # hub < 1 / >= 1
                    (folder / ".private").write_text(str(private))
                    return self._reply(200, {"url": f"{PUBLIC}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/(.+)/preupload/([^/]+)", path)
                if match:
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                match = re.fullmatch(r"/api/models/(.+)/commit/([^/]+)", path)
                if match:
                    return self._commit(match.group(1), body)
                hub.unknown.append(f"POST {path}")
                return self._reply(404, {"error": f"no route POST {path}"})

            def _commit(self, repo_id: str, body: bytes) -> None:
                folder = hub.repo(repo_id)
                if not folder.is_dir():
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                summary, paths = None, []
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if item["key"] == "header":
                        summary = item["value"].get("summary")
                    elif item["key"] == "file":
                        target = folder / item["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(item["value"]["content"]))
                        paths.append(item["value"]["path"])
                oid = hashlib.sha1(f"{repo_id}{len(hub.commits)}".encode()).hexdigest()
                hub.commits.append({"repo": repo_id, "summary": summary, "files": paths, "oid": oid})
                return self._reply(
                    200, {"commitUrl": f"{PUBLIC}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
                )

            def _send_file(self, file: Path, repo_id: str, head: bool) -> None:
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", hub.head(repo_id))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                path = unquote(urlparse(self.path).path)
                match = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if match:
                    dataset, repo_id, _, name = match.groups()
                    kind = "dataset" if dataset else "model"
                    file = hub.repo(repo_id, kind) / name
                    if not hub.repo(repo_id, kind).is_dir():
                        return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if not file.is_file() or file.name == ".private":
                        return self._reply(
                            404,
                            {"error": "Entry not found"},
                            {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.head(repo_id)},
                        )
                    return self._send_file(file, repo_id, head)
                match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                if match:
                    folder = hub.repo(match.group(1), "dataset")
                    start = folder / (match.group(3) or "")
                    if not start.is_dir():
                        return self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    walk = start.rglob("*") if "recursive=true" in self.path.lower() else start.iterdir()
                    return self._reply(200, [self._entry(folder, p) for p in sorted(walk) if p.name != ".private"])
                match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+?)(?:/revision/([^/]+))?", path)
                if match:
                    repo_id = match.group(2)
                    folder = hub.repo(repo_id, match.group(1)[:-1])
                    if not folder.is_dir():
                        return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    siblings = [
                        {"rfilename": p.relative_to(folder).as_posix()}
                        for p in sorted(folder.rglob("*"))
                        if p.is_file() and p.name != ".private"
                    ]
                    return self._reply(
                        200,
                        {
                            "id": repo_id,
                            "modelId": repo_id,
                            "sha": hub.head(repo_id),
                            "private": False,
                            "siblings": siblings,
                            "tags": [],
                        },
                    )
                if path == "/api/agent-harnesses":  # huggingface_hub >= 2 asks once, for its user agent
                    return self._reply(200, {"standardEnvVars": [], "harnesses": {}})
                hub.unknown.append(f"{'HEAD' if head else 'GET'} {path}")
                self._reply(404, {"error": f"no route GET {path}"})

        return Handler
