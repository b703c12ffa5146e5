"""Limits over time for a served page, without Gradio: the upload janitor and the login limiter.

- `UploadJanitor`: removes uploads older than `ttl_s` (scored or not; Gradio's own
  `delete_cache` has one age for uploads and the pictures it caches for the page alike) and
  keeps the whole upload folder under `max_bytes`, oldest files first. Ages are read from
  each file's mtime (Gradio writes an upload as it arrives).
- `LoginLimiter` and the ASGI middleware `LoginGuard`: Gradio's `auth` callable receives
  only (username, password), not the client, so the limit sits in front of its `/login`
  route: at most `max_failures` failed logins per `window_s` per client address, then every
  login from that address (the right password included) is refused for `lockout_s`, and
  logged (one line a second per client at most, counting the refusals it stands for).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MB = 1024 * 1024
REQUEST_PREFIX = "req-"  # a request's private copies (`Service.score(private_dir=)`): never swept


def duration(seconds: float) -> str:
    """`seconds` for people: "300 seconds" reads worse than "5 minutes"."""
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


class UploadJanitor:
    """Sweeps `folder` (Gradio's upload and cache folder): `sweep()` once, or `start()` a
    thread that sweeps every `interval_s` until `stop()`.

    uploads: Gradio's record of the uploads it stored (`Blocks.upload_file_set`), or a
        callable returning it; files listed there older than `ttl_s` are removed, as are
        loose files at the top of `folder` (an interrupted upload's temporary file).
    max_bytes: the folder's size cap: above it, the oldest files go first (a request's own
        `req-*` folder excepted while it scores).
    """

    def __init__(
        self,
        folder: str | Path,
        ttl_s: float,
        max_bytes: int,
        uploads: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 5.0,
    ) -> None:
        self.folder = Path(folder)
        self.ttl_s, self.max_bytes, self.interval_s = float(ttl_s), int(max_bytes), float(interval_s)
        self._uploads = uploads
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def uploads(self) -> set[str]:
        found = self._uploads() if callable(self._uploads) else self._uploads
        return found if found is not None else set()

    def sweep(self) -> list[Path]:
        """Remove what is expired or over the cap; returns the removed files."""
        now = self.clock()
        uploads = self.uploads()
        expired = [Path(p) for p in list(uploads)]
        try:
            expired += [Path(e.path) for e in os.scandir(self.folder) if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        removed = [p for p in expired if self._inside(p) and self._age(p, now) > self.ttl_s and self._remove(p)]
        n_expired = len(removed)
        files: dict[tuple[int, int], list] = {}  # inode -> [mtime, size, its paths]: hard links count once
        for root, dirs, names in os.walk(self.folder):
            if Path(root) == self.folder:
                dirs[:] = [d for d in dirs if not d.startswith(REQUEST_PREFIX)]
            for name in names:
                path = Path(root, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.setdefault((st.st_dev, st.st_ino), [st.st_mtime, st.st_size, []])[2].append(path)
        total = sum(size for _, size, _ in files.values())
        for _, size, paths in sorted(files.values(), key=lambda f: (f[0], sorted(map(str, f[2])))):
            if total <= self.max_bytes:
                break
            gone = [p for p in sorted(paths) if self._remove(p)]
            removed += gone
            total -= size if gone else 0
        for path in removed:
            uploads.discard(str(path))
        if removed:
            log.info(
                "upload janitor: removed %d file(s) older than %g s and %d to keep %s under %.0f MB",
                n_expired,
                self.ttl_s,
                len(removed) - n_expired,
                self.folder,
                self.max_bytes / MB,
            )
        return removed

    def _inside(self, path: Path) -> bool:
        return self.folder in path.parents

    @staticmethod
    def _age(path: Path, now: float) -> float:
        try:
            return now - os.lstat(path).st_mtime
        except FileNotFoundError:
            return -math.inf

    def _remove(self, path: Path) -> bool:
        """Unlink `path`, then the folders above it (inside `folder`) that it leaves empty."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.warning("upload janitor: could not remove %s (%s)", path, err.strerror)
            return False
        parent = path.parent
        while parent != self.folder and self._inside(parent):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
        return True

    def start(self) -> UploadJanitor:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.sweep()
                except Exception as err:  # keep sweeping: a vanished folder, a permission problem
                    log.warning("upload janitor: sweep failed (%s: %s)", type(err).__name__, err)

        self._thread = threading.Thread(target=loop, name="upload-janitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class LoginLimiter:
    """Failed logins per client: at most `max_failures` within `window_s`; one more locks
    the client out for `lockout_s`. Each attempt counts as a failure when it starts (so a
    burst of concurrent attempts cannot slip past the count) and `success` forgets the
    client's failures."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        lockout_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10000,
    ) -> None:
        self.max_failures, self.window_s, self.lockout_s = int(max_failures), float(window_s), float(lockout_s)
        self.clock, self.max_clients = clock, int(max_clients)
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def attempt(self, client: str) -> float:
        """0 when `client` may try a password now (counted as a failure until `success`),
        else the seconds it stays locked out."""
        with self._lock:
            now = self.clock()
            until = self._locked_until.get(client, -math.inf)
            if now < until:
                return until - now
            self._locked_until.pop(client, None)
            failures = self._failures.setdefault(client, deque())
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) >= self.max_failures:
                self._locked_until[client] = now + self.lockout_s
                failures.clear()
                return self.lockout_s
            failures.append(now)
            self._forget_old(now)
            return 0.0

    def success(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _forget_old(self, now: float) -> None:
        """Bound the memory: drop clients with nothing recent, then the oldest."""
        if len(self._failures) + len(self._locked_until) <= self.max_clients:
            return
        for client, failures in list(self._failures.items()):
            if not failures or failures[-1] <= now - self.window_s:
                del self._failures[client]
        for client, until in list(self._locked_until.items()):
            if until <= now:
                del self._locked_until[client]
        while len(self._failures) > self.max_clients // 2:
            del self._failures[next(iter(self._failures))]
        while len(self._locked_until) > self.max_clients // 2:
            del self._locked_until[next(iter(self._locked_until))]


def client_key(host: str) -> str:
    """Who a login attempt counts against: the address, or for IPv6 its /64 network (one
    machine commonly holds a whole /64, so single addresses would be free to rotate)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if not address.is_loopback:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginGuard:
    """ASGI middleware: POST .../login goes through `limiter` per client address (the
    socket's peer, `client_key`: a reverse proxy in front makes every user one client). A
    locked-out client gets 429 with a one-line reason; a 2xx answer counts as a success.
    Refusals are logged one line per client per `log_every_s` at most, each line counting the
    refusals folded into it, so a flood of attempts cannot flood the log."""

    def __init__(self, app: Any, limiter: LoginLimiter, *, log_every_s: float = 1.0) -> None:
        self.app, self.limiter, self.log_every_s = app, limiter, float(log_every_s)
        self._logged: dict[str, list[float]] = {}  # client -> [time of its last line, refusals since]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or not scope.get("path", "").rstrip("/").endswith("/login")
        ):
            await self.app(scope, receive, send)
            return
        client = client_key((scope.get("client") or ("unknown",))[0])
        wait = self.limiter.attempt(client)
        if wait > 0:
            seconds = math.ceil(wait)
            self._log_refusal(client, seconds)
            body = json.dumps({"detail": f"Too many failed logins from this address: try again in {seconds} s."})
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(seconds).encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        status: list[int] = []

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and 200 <= status[0] < 300:
            self.limiter.success(client)

    def _log_refusal(self, client: str, seconds: int) -> None:
        now = self.limiter.clock()
        last, folded = self._logged.get(client, (-math.inf, 0))
        if now - last < self.log_every_s:
            self._logged[client] = [last, folded + 1]
            return
        if len(self._logged) >= self.limiter.max_clients:
            self._logged.clear()
        self._logged[client] = [now, 0]
        log.warning(
            "login refused for %s: %d failed logins within %g s; locked out for %d s more%s",
            client,
            self.limiter.max_failures,
            self.limiter.window_s,
            seconds,
            f" ({int(folded)} more refused since the last line)" if folded else "",
        )
