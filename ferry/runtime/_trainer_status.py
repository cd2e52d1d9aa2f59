"""Progress for Kubeflow Trainer v2 (``status.trainerStatus`` of a TrainJob).

With the Trainer's ``TrainJobStatus`` feature gate on, every pod of a TrainJob gets the URL of
the Trainer's status server, the CA file that signs its certificate and the path of a
ServiceAccount token that rotates (hourly). Rank 0's tracking sidecar posts there how far the
training is, an estimate of the time left and the latest value of each metric the job logged:

    POST $KUBEFLOW_TRAINER_SERVER_URL
    Authorization: Bearer <the token file, read again for each post>
    {"trainerStatus": {"progressPercentage": 45, "estimatedRemainingSeconds": 120,
                       "metrics": [{"name": "loss", "value": "0.15"}],
                       "lastUpdatedTime": "2026-06-12T03:00:00Z"}}

``kubectl get trainjob NAME -o jsonpath='{.status.trainerStatus}'`` then shows it.

- At most one post per ``interval`` (5 s), from a thread of the sidecar: never in the trainer's
  path. When the input ends, one last post goes out whatever the interval: 100 % when the
  trainer said it finished, else the last state it reported.
- Progress is the trainer's ``step``/``total``; the time left comes from the step rate measured
  over the last two minutes.
- A failure (unreachable, TLS, a missing token or CA file, an HTTP error) is logged once per
  kind, at warning level, and never raised; after two failures in a row the interval doubles at
  each failure, up to five minutes, and goes back to ``interval`` after a success.
- Without ``KUBEFLOW_TRAINER_SERVER_URL`` nothing starts (``from_env`` is None) and neither
  ``ssl`` nor ``http.client`` is imported.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ferry.settings import EnvSetting

log = logging.getLogger("ferry.trainer_status")

# Set by Kubeflow Trainer (plugins/trainjobstatus) in every container of a TrainJob's pods.
KUBEFLOW_TRAINER_SERVER_URL = EnvSetting(
    "KUBEFLOW_TRAINER_SERVER_URL", None, "Kubeflow Trainer's status endpoint of this TrainJob (set by the Trainer)."
)
KUBEFLOW_TRAINER_SERVER_CA_CERT = EnvSetting(
    "KUBEFLOW_TRAINER_SERVER_CA_CERT", None, "The CA file that signs the status server's certificate (set by the Trainer)."
)
KUBEFLOW_TRAINER_SERVER_TOKEN = EnvSetting(
    "KUBEFLOW_TRAINER_SERVER_TOKEN", None, "The file of the rotating token the status server takes (set by the Trainer)."
)

MAX_METRICS = 256  # the CRD's maxItems
MAX_CHARS = 64  # the CRD's maxLength of a metric's name and value
MAX_BACKOFF_S = 300.0
_RATE_WINDOW_S = 120.0
_INT32_MAX = 2**31 - 1


class PostError(Exception):
    """A post that did not go through. ``kind`` groups failures for logging (each kind is
    logged once): ``token``, ``ca``, ``tls``, ``unreachable``, ``http 403``, ..."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class StatusClient:
    """Posts one body to the status server: TLS verified against the CA file, the bearer token
    read from its file at each post (it rotates). Raises PostError, nothing else."""

    def __init__(self, url: str, ca_file: str | None, token_file: str | None, timeout: float = 5.0):
        self.url, self.ca_file, self.token_file, self.timeout = url, ca_file, token_file, timeout

    def _token(self) -> str:
        if not self.token_file:
            raise PostError("token", f"{KUBEFLOW_TRAINER_SERVER_TOKEN.name} is not set")
        try:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise PostError("token", f"cannot read the token file {self.token_file}: {exc}") from exc
        if not token:
            raise PostError("token", f"the token file {self.token_file} is empty")
        return token

    def _tls(self) -> Any:
        import ssl

        try:  # read for each post: the CA is a mounted ConfigMap, renewed with the server's certificate
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise PostError("ca", f"cannot load the CA file {self.ca_file}: {exc}") from exc

    def post(self, body: dict[str, Any]) -> None:
        import http.client
        import ssl

        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise PostError("url", f"{KUBEFLOW_TRAINER_SERVER_URL.name}={self.url!r} is not an http(s) URL")
        headers = {"Authorization": f"Bearer {self._token()}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=self._tls())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request("POST", path or "/", body=json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
            text = response.read(4096).decode(errors="replace")
        except ssl.SSLCertVerificationError as exc:
            raise PostError("tls", f"the server's certificate does not verify against {self.ca_file}: "
                                   f"{exc.verify_message}") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset, TLS failures
            raise PostError("unreachable", f"{self.url}: {exc or type(exc).__name__}") from exc
        finally:
            conn.close()
        if response.status >= 300:
            raise PostError(f"http {response.status}", f"{self.url}: {_status_message(text)}")


def _status_message(text: str) -> str:
    """The message of a ``metav1.Status`` answer, else the start of the answer."""
    try:
        return str(json.loads(text).get("message") or text)[:300]
    except (ValueError, AttributeError):
        return text[:300]


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    """Keeps the latest progress and metrics the trainer sent (``observe``, from the sidecar's
    reader) and posts them at most once per ``interval`` (``post_due``, from its own thread)."""

    def __init__(self, client: StatusClient, *, interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], str] = _utc_now, max_backoff: float = MAX_BACKOFF_S):
        self.client, self.interval, self.max_backoff = client, interval, max_backoff
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[int, int, float]] = {}  # name -> (step, ts, value): MLflow's "latest"
        self._samples: deque[tuple[float, int]] = deque()  # (seconds, step): the step rate
        self._step: int | None = None
        self._total: int | None = None
        self._done = False
        self._changed = False
        self._next_at = float("-inf")
        self._failures = 0
        self._warned: set[str] = set()
        self.posts = 0  # posts that went through
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- input (the sidecar's reader thread) -----------------------------------------------
    def observe(self, message: dict[str, Any]) -> None:
        """One message of the trainer's pipe: metric points ``m`` ([name, value, ts, step]) and
        the progress ``g`` ({step, total, ts} and, at a finished end, done)."""
        points, progress = message.get("m") or [], message.get("g") or {}
        if not points and not progress:
            return
        try:
            with self._lock:
                self._observe(points, progress)
                self._changed = True
                self._wake.set()
        except (TypeError, ValueError, AttributeError) as exc:  # never stop the sidecar's reader
            self._warn_once("input", f"a message it cannot read ({exc})")

    def _observe(self, points: list[Any], progress: dict[str, Any]) -> None:
        for name, value, ts, step in points:
            latest = self._metrics.get(name)
            if latest is None or (int(step), int(ts)) >= latest[:2]:
                self._metrics[name] = (int(step), int(ts), float(value))
        if "step" in progress and "total" in progress:
            self._step, self._total = int(progress["step"]), int(progress["total"])
            seconds = float(progress["ts"]) / 1000 if "ts" in progress else time.time()
            self._samples.append((seconds, self._step))
            while len(self._samples) > 2 and seconds - self._samples[0][0] > _RATE_WINDOW_S:
                self._samples.popleft()
        self._done = self._done or bool(progress.get("done"))

    # ---- the body -----------------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        """``{"trainerStatus": ...}`` as the CRD declares it, from what was observed so far."""
        with self._lock:
            status: dict[str, Any] = {}
            if self._done:
                status["progressPercentage"], status["estimatedRemainingSeconds"] = 100, 0
            elif self._step is not None and self._total:
                status["progressPercentage"] = max(0, min(100, self._step * 100 // self._total))
                if (eta := self._remaining()) is not None:
                    status["estimatedRemainingSeconds"] = eta
            if metrics := self._metric_list():
                status["metrics"] = metrics
            status["lastUpdatedTime"] = self._now()
        return {"trainerStatus": status}

    def _remaining(self) -> int | None:
        if len(self._samples) < 2 or self._step is None or self._total is None:
            return None
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        left = max(0, self._total - self._step) * (t1 - t0) / (s1 - s0)
        return min(_INT32_MAX, math.ceil(left))

    def _metric_list(self) -> list[dict[str, str]]:
        """Each metric's latest value (as a string), names and values cut to 64 characters, the
        first 256 names the job logged."""
        out: list[dict[str, str]] = []
        seen: set[str] = set()
        for name, (_, _, value) in self._metrics.items():
            short = str(name)[:MAX_CHARS]
            if not short or short in seen:
                continue
            seen.add(short)
            out.append({"name": short, "value": str(value)[:MAX_CHARS]})
            if len(out) == MAX_METRICS:
                break
        return out

    # ---- posting (the reporter's thread) -------------------------------------------------------
    def post_due(self, *, final: bool = False) -> bool:
        """Post what changed since the last post, if the interval (or the backoff) has passed
        (``final``: whatever the interval). True when a post went through."""
        with self._lock:
            if not self._changed:
                self._wake.clear()
                return False
            if not final and self._clock() < self._next_at:
                return False
            self._changed = False
            self._wake.clear()
        body = self.body()
        try:
            self.client.post(body)
        except PostError as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - reporting progress must never stop training
            self._failed(PostError(type(exc).__name__, str(exc)))
            return False
        self.posts += 1
        if self._failures:
            log.info("Kubeflow Trainer's status server took the progress again after %d failed post(s)", self._failures)
        self._failures = 0
        self._next_at = self._clock() + self.interval
        return True

    def _failed(self, exc: PostError) -> None:
        self._failures += 1
        delay = min(self.max_backoff, self.interval * 2 ** max(0, self._failures - 2))
        with self._lock:  # tried again after the delay, with whatever is newest then
            self._next_at = self._clock() + delay
            self._changed = True
            self._wake.set()
        self._warn_once(exc.kind, f"{exc}; next try in {delay:.0f}s")

    def _warn_once(self, kind: str, what: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("progress not posted to Kubeflow Trainer's status server: %s; training goes on", what)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                break
            delay = self._next_at - self._clock()
            if delay > 0 and self._stop.wait(delay):
                break
            self.post_due()
        self.post_due(final=True)

    def start(self) -> StatusReporter:
        self._thread = threading.Thread(target=self._loop, name="ferry-trainer-status", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The input has ended: send the last state (at once) and end the thread."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def from_env(**kwargs: Any) -> StatusReporter | None:
    """A reporter for this pod's TrainJob when Kubeflow Trainer gave it a status server, else
    None (and nothing is started or imported)."""
    url = KUBEFLOW_TRAINER_SERVER_URL.get()
    if not url:
        return None
    client = StatusClient(url, KUBEFLOW_TRAINER_SERVER_CA_CERT.get(), KUBEFLOW_TRAINER_SERVER_TOKEN.get())
    return StatusReporter(client, **kwargs)
