"""A local stand-in of the Hugging Face Hub: the resolve, repo-create, branch, preupload and commit endpoints.

It keeps repositories in memory (commits of files, branches) and answers ``huggingface_hub`` as the real hub does
for the calls this project makes: ``hf_hub_download`` / ``get_hf_file_metadata`` (with ``X-Repo-Commit`` and, for
LFS-tracked files, ``X-Linked-Etag`` = sha256) and ``HfApi.create_repo`` / ``create_branch`` / ``upload_folder``.
Point ``HF_ENDPOINT`` at it *before* huggingface_hub is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_sha_override: dict[str, str] = field(default_factory=dict)  # filename -> advertised sha256 (tampering)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubStandIn:
    """In-memory hub on 127.0.0.1; ``start()`` / ``stop()``; ``requests`` records (method, path)."""

    def __init__(self, port: int = 0) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit on ``branch`` with ``files`` on top of its current tree; return the commit id."""
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.branches.get(branch)
        tree = dict(repo.commits.get(parent, {})) if parent else {}
        tree.update(files)
        digest = hashlib.sha1(repr((parent, sorted((k, hashlib.sha1(v).hexdigest()) for k, v in tree.items())))
                              .encode()).hexdigest()
        repo.commits[digest] = tree
        repo.branches[branch] = digest
        return digest


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    resolve_re = re.compile(r"^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
    api_re = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|branch)/(?P<rev>[^/]+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  head: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
            body = b"" if head else json.dumps({"error": message}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                      "Content-Type": "application/json"}, head=head)

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _resolve(self, head: bool) -> None:
            match = resolve_re.match(self.path.split("?")[0])
            if not match:
                return self._error(404, "EntryNotFound", "unknown route", head)
            repo_id, revision, path = match["repo"], unquote(match["rev"]), unquote(match["path"])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"repository {repo_id} not found", head)
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"revision {revision} not found", head)
            content = repo.commits[commit].get(path)
            if content is None:
                return self._error(404, "EntryNotFound", f"{path} not found at {revision}", head)
            headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
            if path.endswith(LFS_SUFFIXES):
                sha = repo.lfs_sha_override.get(path, hashlib.sha256(content).hexdigest())
                headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(content))})
            else:
                headers["ETag"] = f'"{hashlib.sha1(content).hexdigest()}"'
            self._send(200, content, headers, head=head)

        def _validate_yaml(self, payload: dict) -> None:
            """The hub checks a README's front matter before a commit: it must be a YAML mapping."""
            import yaml

            content = payload.get("content", "")
            match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
            try:
                meta = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            if not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
            return self._json(200, {"warnings": []})

        def do_HEAD(self) -> None:
            hub.requests.append(("HEAD", self.path))
            self._resolve(head=True)

        def do_GET(self) -> None:
            hub.requests.append(("GET", self.path))
            self._resolve(head=False)

        def do_POST(self) -> None:
            hub.requests.append(("POST", self.path))
            body = self._read_body()
            path = self.path.split("?")[0]
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body or b"{}"))
            if path == "/api/repos/create":
                payload = json.loads(body or b"{}")
                org = payload.get("organization")
                repo_id = f"{org}/{payload['name']}" if org else payload["name"]
                if repo_id in hub.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": repo_id})
                hub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            match = api_re.match(path)
            if not match:
                return self._error(404, "NotFound", f"unknown route {path}")
            repo_id, op, revision = match["repo"], match["op"], unquote(match["rev"])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
            if op == "branch":
                if revision in repo.branches:
                    return self._error(409, "BranchExists", f"branch {revision} already exists")
                repo.branches[revision] = repo.branches["main"]
                return self._json(200, {})
            if op == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                ]})
            if repo.resolve(revision) is None:
                return self._error(404, "RevisionNotFound", f"revision {revision} not found")
            files: dict[str, bytes] = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("lfsFile", "deletedFile", "deletedFolder", "copyFile"):
                    return self._error(400, "Unsupported", f"stand-in does not support {item['key']}")
            commit = hub.commit(repo_id, files, branch=revision)
            return self._json(200, {"commitOid": commit, "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit}",
                                    "pullRequestUrl": None})

    return Handler
