"""A fake Hugging Face hub: the file API huggingface-hub uses, on 127.0.0.1 (tests only).

`HEAD/GET /{repo}/resolve/{revision}/{filename}` answer with the headers huggingface-hub
reads (X-Repo-Commit, ETag, X-Linked-Etag = the sha256 for LFS files, X-Linked-Size,
Content-Length) and honour `Range`. Faults for tests: cut the connection mid-file on the
first GET, hang mid-file (for an interrupted client), announce a wrong size or sha256. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    cut_first_get_at: int | None = None  # drop the connection after this many bytes, once
    stall_first_get_at: int | None = None  # send this many bytes, then hang (until stop), once
    announced_size: int | None = None     # lie about the size in the HEAD answer
    announced_sha256: str | None = None   # lie about the sha256
    gets: int = 0

    @property
    def sha256(self) -> str:
        return self.announced_sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeHub:
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    url: str = ""
    stopping: threading.Event = field(default_factory=threading.Event)

    def add(self, repo: str, filename: str, data: bytes, **faults) -> HubFile:
        self.files[(repo, filename)] = f = HubFile(data, **faults)
        return f

    def start(self) -> "FakeHub":
        hub = self
        self.stopping.clear()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _lookup(self):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                path = self.path.split("?")[0].lstrip("/")
                repo, sep, rest = path.partition("/resolve/")
                if not sep:
                    return None
                _revision, _, filename = rest.partition("/")
                return hub.files.get((repo, filename))

            def _not_found(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _common_headers(self, f: HubFile):
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{f.sha256}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(f.announced_size or len(f.data)))
                self.send_header("Accept-Ranges", "bytes")

            def do_HEAD(self):
                f = self._lookup()
                if f is None:
                    return self._not_found()
                self.send_response(200)
                self._common_headers(f)
                self.send_header("Content-Length", str(len(f.data)))
                self.end_headers()

            def do_GET(self):
                f = self._lookup()
                if f is None:
                    return self._not_found()
                f.gets += 1
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                body = f.data[start:]
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
                else:
                    self.send_response(200)
                self._common_headers(f)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if f.stall_first_get_at is not None and f.gets == 1:
                    self.wfile.write(body[: f.stall_first_get_at])
                    self.wfile.flush()
                    hub.stopping.wait(120)
                    self.close_connection = True
                    return
                if f.cut_first_get_at is not None and f.gets == 1:
                    self.wfile.write(body[: f.cut_first_get_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
