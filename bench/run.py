"""ModelMuxer load benchmark: one command, four targets, ratios within one run.

Targets, each loaded with wrk at 1 connection (1 thread) and 50 connections (2 threads):

  upstream     the fake OpenAI upstream, hit directly (the floor for latency)
  bare_django  bench/bare_django.py: the framework ceiling, same uvicorn command line
  gateway      ModelMuxer (muxer_project.asgi) in front of the fake upstream, usage writer running
  litellm      LiteLLM proxy (bench/.litellm-venv) in front of the same fake upstream

The machine is small and shared, so only ratios measured in the same run are meaningful.
Run from the repo root:  .venv/bin/python bench/run.py [--workers 2] [--duration 15]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
UVICORN = VENV_BIN / "uvicorn"
LITELLM_VENV = BENCH_DIR / ".litellm-venv"
LITELLM_REQUIREMENTS = BENCH_DIR / "requirements-litellm.txt"
LITELLM_STAMP = LITELLM_VENV / ".bench-requirements.sha256"
LITELLM_CONFIG = BENCH_DIR / "litellm_config.yaml"
WRK_SCRIPT = BENCH_DIR / "chat.lua"
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = json.dumps(
    {"model": "fake-small", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16},
    separators=(",", ":"),
)
UPSTREAM_KEY = "sk-bench-upstream-any-key"
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/muxer_bench"
PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
REDIS_URL = "redis://127.0.0.1:6379/5"
TARGETS = ("upstream", "bare_django", "gateway", "litellm")
TARGET_LABELS = {
    "upstream": "fake upstream (direct)",
    "bare_django": "bare Django view",
    "gateway": "ModelMuxer gateway",
    "litellm": "LiteLLM proxy",
}
LOADS = ((1, 1), (50, 2))  # (connections, wrk threads)
HIGH_LOAD = 50
LOW_LOAD = 1
# Targets the project is judged on.
TARGET_VS_DJANGO = 1.0
TARGET_VS_LITELLM = 10.0
TARGET_OVERHEAD_MS = 2.0
# A run during which processes that are not the benchmark's used this much CPU (% of one core) is flagged.
NOISY_CPU_PCT = 25.0

# Uvicorn flags shared by the gateway and the bare Django view (the workers count is added).
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


class BenchError(Exception):
    """A target could not be prepared, started or checked."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session=True: the leader's pid is the group id

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join("    | " + line for line in text[-lines:])
        return "    | (no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Processes:
    """Every long-running process the benchmark starts, each in its own process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[Managed] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        log_file.write(f"$ {shlex.join(cmd)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        managed = Managed(name, proc, log_path, log_file)
        self.running.append(managed)
        return managed

    def stop(self, managed: Managed, grace: float = 10.0) -> None:
        """SIGTERM the whole group, wait for every member, then SIGKILL what is left."""
        if managed not in self.running:
            return
        self.running.remove(managed)
        pgid = managed.pgid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if managed.proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            log(f"{managed.name} did not stop within {grace:.0f}s: killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                managed.proc.wait(timeout=5)
        managed.log_file.close()

    def stop_all(self) -> None:
        for managed in reversed(list(self.running)):
            try:
                self.stop(managed)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"could not stop {managed.name}: {exc}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def run_step(title: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a short setup command to completion; raise BenchError with its output on failure."""
    log(f"{title}: {shlex.join(cmd)}")
    try:
        done = subprocess.run(
            cmd,
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{title} timed out after {timeout:.0f}s") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = "\n".join("    | " + line for line in output.splitlines()[-25:])
        raise BenchError(f"{title} failed (exit {done.returncode}):\n{tail}")
    return output


# --------------------------------------------------------------------------- HTTP checks

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy


def http_request(url: str, body: str | None = None, auth: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(
        url, data=body.encode() if body is not None else None, headers=headers, method="POST" if body else "GET"
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_healthy(managed: Managed, url: str, timeout: float, log_marker: str | None = None) -> None:
    """Poll ``url`` until it answers 200 (and ``log_marker`` is in the log, if given)."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if managed.proc.poll() is not None:
            raise BenchError(
                f"{managed.name} exited with code {managed.proc.returncode} while starting:\n{managed.log_tail()}"
            )
        marker_ok = log_marker is None or log_marker in managed.log_path.read_text(errors="replace")
        try:
            status, _ = http_request(url, timeout=2)
            if status == 200 and marker_ok:
                return
            last_error = f"HTTP {status}" if status != 200 else f"{log_marker!r} not printed yet"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{managed.name} not healthy after {timeout:.0f}s at {url} ({last_error}):\n{managed.log_tail()}")


def check_chat(name: str, url: str, auth: str | None) -> None:
    """One chat completion through the target must answer 200 with an OpenAI-shaped body."""
    try:
        status, raw = http_request(url, body=CHAT_BODY, auth=auth, timeout=30)
    except (OSError, urllib.error.URLError) as exc:
        raise BenchError(f"{name}: check request failed: {exc}") from exc
    snippet = raw[:400].decode(errors="replace")
    if status != 200:
        raise BenchError(f"{name}: check request answered HTTP {status}: {snippet}")
    try:
        payload = json.loads(raw)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"{name}: check request answered 200 but not a chat completion: {snippet}") from exc
    log(f"{name}: check request OK (HTTP 200, reply {content!r})")


# --------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (process group, command name, CPU seconds used so far) for every process."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[2]), comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def _short_cmdline(pid: int) -> str:
    """``python -m pytest tests/x.py`` style name of a process, to say who else loads the box."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [
        os.path.basename(a.decode(errors="replace")) if i == 0 else a.decode(errors="replace")
        for i, a in enumerate(argv)
    ]
    return " ".join(w for w in words if w)[:60]


_PG_BACKEND = re.compile(r"^postgres: (?:[^:]+: )?\S+ (\S+) ")


def _serves_bench_db(pid: int) -> bool:
    """A PostgreSQL process is ours unless it is a backend connected to another database."""
    match = _PG_BACKEND.match(_short_cmdline(pid))
    return match is None or match.group(1) == "muxer_bench"


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[int, tuple[int, str, float]]
    machine: tuple[int, int]
    children: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.monotonic(), _proc_table(), _machine_ticks(), usage.ru_utime + usage.ru_stime)


def cpu_breakdown(before: CpuSnapshot, after: CpuSnapshot, groups: dict[str, int]) -> dict[str, float]:
    """CPU used between two snapshots, in % of one core, per component.

    ``groups`` maps a label to a process group we started; PostgreSQL and Redis are found by
    name; wrk is a reaped child of this process (so it is counted through RUSAGE_CHILDREN).
    """
    wall = max(after.at - before.at, 1e-6)
    by_group = {pgid: label for label, pgid in groups.items()}
    used: dict[str, float] = dict.fromkeys(groups, 0.0)
    used.update(postgres=0.0, redis=0.0, other=0.0)
    me = os.getpid()
    others: dict[str, float] = {}
    for pid, (pgid, comm, cpu) in after.procs.items():
        if pid == me:
            continue
        start = before.procs.get(pid)
        delta = cpu - (start[2] if start else 0.0)
        if delta <= 0:
            continue
        if pgid in by_group:
            label = by_group[pgid]
        elif comm.startswith(("postgres", "postmaster")) and _serves_bench_db(pid):
            label = "postgres"
        elif comm.startswith("redis-server"):
            label = "redis"
        else:
            label = "other"
            name = _short_cmdline(pid) or comm
            others[name] = others.get(name, 0.0) + delta
        used[label] += delta
    used["wrk"] = after.children - before.children
    busy = after.machine[0] - before.machine[0]
    total = max(after.machine[1] - before.machine[1], 1)
    result = {label: round(100.0 * seconds / wall, 1) for label, seconds in used.items()}
    result["machine_busy_pct"] = round(100.0 * busy / total, 1)  # of all cores
    # Busy time no live process accounts for: short-lived processes (someone else's builds and
    # tests), kernel work. Together with "other" it is the load that is not the benchmark's.
    box_core_pct = 100.0 * busy / total * (os.cpu_count() or 1)
    result["unaccounted"] = round(max(0.0, box_core_pct - 100.0 * sum(used.values()) / wall), 1)
    result["not_ours"] = round(result["other"] + result["unaccounted"], 1)
    # What serving the requests cost: every process of ours except the load generator.
    result["stack_cpu_s"] = round(sum(v for k, v in used.items() if k not in {"wrk", "other"}), 3)
    for comm, seconds in sorted(others.items(), key=lambda kv: -kv[1])[:3]:
        if seconds / wall >= 0.05:
            result[f"other:{comm}"] = round(100.0 * seconds / wall, 1)
    return result


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    target: str
    connections: int
    threads: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    errors: int
    cpu_pct: dict[str, float] = field(default_factory=dict)
    # CPU (ms) the whole stack (server, usage writer, upstream, PostgreSQL, Redis; not wrk) spent
    # per answered request. Other load on the box changes req/s a lot and this much less.
    cpu_ms_per_req: float | None = None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, target: str, connections: int, threads: int) -> WrkResult:
    """Prefer the JSON line printed by chat.lua's done(); fall back to wrk's text report."""
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            errs = data["errors"]
            lat = data["latency_us"]
            duration = data["duration_us"] / 1e6
            socket_errors = {k: int(errs[k]) for k in ("connect", "read", "write", "timeout")}
            return WrkResult(
                target=target,
                connections=connections,
                threads=threads,
                requests=int(data["requests"]),
                duration_s=round(duration, 3),
                rps=round(data["requests"] / duration, 1) if duration else 0.0,
                p50_ms=lat["p50"] / 1e3,
                p90_ms=lat["p90"] / 1e3,
                p99_ms=lat["p99"] / 1e3,
                mean_ms=round(lat["mean"] / 1e3, 3),
                max_ms=lat["max"] / 1e3,
                non_2xx=int(errs["status"]),
                socket_errors=socket_errors,
                errors=int(errs["status"]) + sum(socket_errors.values()),
            )
    # Text fallback (e.g. a wrk build without the done() hook output).
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    pct = dict(re.findall(r"^\s+(50|90|99)(?:\.000)?%\s+(\S+)", output, re.MULTILINE))
    if not rps or not {"50", "90", "99"} <= pct.keys():
        raise BenchError(f"could not parse wrk output:\n{output}")
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)) if sock else {}
    )
    bad = int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        target=target,
        connections=connections,
        threads=threads,
        requests=int(total.group(1)) if total else 0,
        duration_s=_parse_duration_ms(total.group(2)) / 1e3 if total else 0.0,
        rps=float(rps.group(1)),
        p50_ms=_parse_duration_ms(pct["50"]),
        p90_ms=_parse_duration_ms(pct["90"]),
        p99_ms=_parse_duration_ms(pct["99"]),
        mean_ms=0.0,
        max_ms=0.0,
        non_2xx=bad,
        socket_errors=socket_errors,
        errors=bad + sum(socket_errors.values()),
    )


class Wrk:
    def __init__(self, timeout_s: float, log_dir: Path) -> None:
        self.timeout_s = timeout_s
        self.log_dir = log_dir
        self.current: subprocess.Popen[str] | None = None

    def run(self, target: str, url: str, auth: str | None, connections: int, threads: int, seconds: float) -> str:
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            f"--timeout={self.timeout_s:g}s",
            "--latency",
            "-s",
            str(WRK_SCRIPT),
            url,
        ]
        env = {**os.environ, "BENCH_BODY": CHAT_BODY, "BENCH_AUTH": auth or ""}
        self.current = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = self.current.communicate(timeout=seconds + self.timeout_s + 30)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise BenchError(f"wrk against {target} did not finish") from exc
        finally:
            rc = self.current.returncode if self.current else None
            self.current = None
        with (self.log_dir / "wrk.log").open("a") as wrk_log:
            wrk_log.write(f"$ {shlex.join(cmd)}\n{output}\n")
        if rc != 0:
            raise BenchError(f"wrk against {target} exited with {rc}:\n{output}")
        return output

    def kill(self) -> None:
        if self.current and self.current.poll() is None:
            self.current.kill()
            self.current.wait()


# --------------------------------------------------------------------------- setup


def ensure_wrk() -> str:
    if not shutil.which("wrk"):
        apt = ["apt-get", "install", "-y", "wrk"]
        if os.geteuid() != 0:
            if not shutil.which("sudo"):
                raise SystemExit("wrk is not installed and this user cannot run apt-get: install wrk first")
            apt = ["sudo", "-n", *apt]
        log(f"wrk not found on PATH: installing it with `{shlex.join(apt)}` (Debian package 'wrk')")
        if subprocess.run(apt, check=False).returncode != 0:
            update = [*apt[: apt.index("apt-get") + 1], "update"]
            log(f"apt-get install failed; refreshing package lists with `{shlex.join(update)}` and retrying")
            subprocess.run(update, check=True)
            subprocess.run(apt, check=True)
        if not shutil.which("wrk"):
            raise SystemExit("wrk still not on PATH after apt-get install")
    version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (version.stdout + version.stderr).strip().splitlines()[0] if (version.stdout + version.stderr) else "wrk"


def _litellm_venv_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def ensure_litellm() -> str:
    """Create bench/.litellm-venv and install the pinned litellm[proxy] when missing or outdated."""
    wanted = hashlib.sha256(LITELLM_REQUIREMENTS.read_bytes()).hexdigest()
    have = LITELLM_STAMP.read_text().strip() if LITELLM_STAMP.exists() else ""
    litellm_bin = LITELLM_VENV / "bin" / "litellm"
    if have != wanted or not litellm_bin.exists():
        if not _litellm_venv_python().exists():
            log(f"creating the LiteLLM virtualenv at {LITELLM_VENV.relative_to(REPO)}")
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
        cmd = [str(_litellm_venv_python()), "-m", "pip", "install", "-q", "-r", str(LITELLM_REQUIREMENTS)]
        log(f"installing LiteLLM (slow the first time): {shlex.join(cmd)}")
        subprocess.run(cmd, check=True)
        LITELLM_STAMP.write_text(wanted + "\n")
    version = subprocess.run(
        [str(_litellm_venv_python()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return version.stdout.strip()


KEY_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def well_formed_key(random_part: str) -> str:
    """``mm_live_`` + the 32 base62 characters given + their 6 base62 CRC32 characters."""
    body = "mm_live_" + random_part
    number, check = zlib.crc32(body.encode()), []
    for _ in range(6):
        number, rem = divmod(number, 62)
        check.append(KEY_ALPHABET[rem])
    return body + "".join(reversed(check))


def demo_api_key() -> str:
    """A well-formed ModelMuxer key, fixed so reruns reuse it."""
    override = os.environ.get("MUXER_DEMO_API_KEY")
    if override:
        return override
    return well_formed_key("BenchLoadTestKey0000000000000001")


def flush_redis_db(url: str) -> None:
    """FLUSHDB on the bench's own Redis database so that every run starts from the same state."""
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/(\d+)", url)
    if not match:
        raise BenchError(f"unexpected REDIS_URL {url}")
    host, port, db = match.group(1), int(match.group(2)), match.group(3)
    command = f"*2\r\n$6\r\nSELECT\r\n${len(db)}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode()
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(command)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        raise BenchError(f"cannot reach Redis at {host}:{port}: {exc}") from exc
    if reply != b"+OK\r\n+OK\r\n":
        raise BenchError(f"Redis FLUSHDB on db {db} answered {reply!r}")
    log(f"flushed Redis db {db} ({url})")


_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
# Start-up notices a late worker may print after the first one answered: not problems of the run.
_LOG_BENIGN = re.compile(r"login_throttle\.py")


def scan_log(path: Path, offset: int) -> tuple[int, str]:
    """Warning/error lines written to ``path`` after ``offset``: (count, first one)."""
    with path.open("rb") as fh:
        fh.seek(offset)
        lines = [
            line
            for line in fh.read().decode(errors="replace").splitlines()
            if _LOG_PROBLEM.search(line) and not _LOG_BENIGN.search(line)
        ]
    return len(lines), (lines[0].strip()[:200] if lines else "")


# --------------------------------------------------------------------------- targets


@dataclass
class Started:
    url: str
    auth: str | None
    groups: dict[str, int]  # label -> process group, for CPU accounting
    processes: list[Managed]
    # Called with the number of answered requests once the load is over; returns notes for the report.
    after_load: Callable[[int], dict[str, Any]] | None = None


def usage_rows() -> int | None:
    """Rows in the gateway's usage ledger (None when the table cannot be read)."""
    done = subprocess.run(
        [*PSQL, "-d", "muxer_bench", "-Atc", "select count(*) from billing_usagerecord"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def wait_usage_drained(rows_before: int | None, answered: int, timeout: float = 30.0) -> dict[str, Any]:
    """After the load: how long the usage writer needs to get every answered request into PostgreSQL."""
    if rows_before is None:
        return {"usage_rows": "n/a (cannot read billing_usagerecord)"}
    started = time.monotonic()
    written = 0
    while True:
        now = usage_rows()
        written = (now or rows_before) - rows_before
        waited = time.monotonic() - started
        if written >= answered or waited >= timeout:
            break
        time.sleep(0.5)
    return {
        "usage_requests_answered": answered,
        "usage_rows_written": written,
        "usage_drain_after_load_s": round(waited, 1),
        "usage_caught_up": written >= answered,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.workers: int = args.workers
        self.log_dir = log_dir
        self.procs = Processes(log_dir)
        self.wrk = Wrk(args.timeout, log_dir)
        self.upstream: Managed | None = None
        self.upstream_port = 0
        self.versions: dict[str, str] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log(f"WARNING: {message}")

    # -- fake upstream (shared by every target)

    def start_upstream(self) -> None:
        module = REPO / "providers" / "fake_upstream.py"
        if not module.exists():
            raise BenchError(f"{module.relative_to(REPO)} does not exist yet")
        self.upstream_port = free_port()
        cmd = [str(PYTHON), "-m", "providers.fake_upstream", "--host", HOST, "--port", str(self.upstream_port)]
        if self.args.upstream_workers != 1:
            cmd += ["--workers", str(self.args.upstream_workers)]
        self.upstream = self.procs.start("fake_upstream", cmd)
        wait_healthy(
            self.upstream,
            f"http://{HOST}:{self.upstream_port}/healthz",
            timeout=30,
            log_marker=f"fake upstream listening on http://{HOST}:{self.upstream_port}",
        )
        log(f"fake upstream up on port {self.upstream_port} (pid {self.upstream.proc.pid})")

    def upstream_groups(self) -> dict[str, int]:
        return {"upstream": self.upstream.pgid} if self.upstream else {}

    def start_target(self, name: str) -> Started:
        starters: dict[str, Callable[[], Started]] = {
            "upstream": self.start_upstream_target,
            "bare_django": self.start_bare_django,
            "gateway": self.start_gateway,
            "litellm": self.start_litellm,
        }
        return starters[name]()

    def start_upstream_target(self) -> Started:
        return Started(
            url=f"http://{HOST}:{self.upstream_port}{CHAT_PATH}", auth=f"Bearer {UPSTREAM_KEY}", groups={}, processes=[]
        )

    def _uvicorn(self, name: str, app: str, env: dict[str, str] | None = None) -> tuple[Managed, int]:
        port = free_port()
        cmd = [str(UVICORN), app, "--host", HOST, "--port", str(port), "--workers", str(self.workers), *UVICORN_FLAGS]
        return self.procs.start(name, cmd, env=env), port

    def start_bare_django(self) -> Started:
        server, port = self._uvicorn("bare_django", "bench.bare_django:application")
        wait_healthy(server, f"http://{HOST}:{port}/healthz", timeout=60)
        return Started(f"http://{HOST}:{port}{CHAT_PATH}", None, {"server": server.pgid}, [server])

    def gateway_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "MUXER_FAKE_BASE_URL": f"http://{HOST}:{self.upstream_port}/v1",
            "MUXER_DEMO_API_KEY": demo_api_key(),
            "DEBUG": "false",  # whatever a local .env says, never benchmark DEBUG mode
            # As in production: the workers share one metrics directory (muxer_project/metrics.py).
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="muxer-bench-metrics-"),
        }
        return env

    def prepare_gateway(self, env: dict[str, str]) -> int | None:
        """The gateway's state before a run: the database migrated, the demo key without rate limits, Redis db 5
        empty. Returns the usage ledger's row count (None when it cannot be read)."""
        missing = [p for p in ("manage.py", "muxer_project/asgi.py") if not (REPO / p).exists()]
        if missing:
            raise BenchError(f"gateway not available yet: missing {', '.join(missing)}")
        created = subprocess.run(
            [*PSQL, "-v", "ON_ERROR_STOP=1", "-c", "create database muxer_bench"],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode == 0:
            log("created database muxer_bench")
        elif "already exists" not in created.stderr:
            raise BenchError(f"create database muxer_bench failed: {created.stderr.strip()}")
        run_step("migrate", [str(PYTHON), "manage.py", "migrate", "--noinput"], env=env)
        # No rate limits on the demo key here: the figures compare with earlier runs made without them.
        run_step("demo_setup", [str(PYTHON), "manage.py", "demo_setup", "--rpm", "0", "--tpm", "0"], env=env)
        flush_redis_db(REDIS_URL)
        return usage_rows()

    def start_usage_writer(self, env: dict[str, str]) -> Managed:
        return self.procs.start("usage_writer", [str(PYTHON), "manage.py", "usage_writer"], env=env)

    def start_gateway(self) -> Started:
        env = self.gateway_env()
        rows_before = self.prepare_gateway(env)
        writer = self.start_usage_writer(env)
        server, port = self._uvicorn("gateway", "muxer_project.asgi:application", env=env)
        wait_healthy(server, f"http://{HOST}:{port}/healthz", timeout=90)
        if writer.proc.poll() is not None:
            raise BenchError(f"usage_writer exited with code {writer.proc.returncode}:\n{writer.log_tail()}")
        return Started(
            f"http://{HOST}:{port}{CHAT_PATH}",
            f"Bearer {env['MUXER_DEMO_API_KEY']}",
            {"server": server.pgid, "usage_writer": writer.pgid},
            [server, writer],
            after_load=lambda answered: wait_usage_drained(rows_before, answered),
        )

    def start_litellm(self) -> Started:
        port = free_port()
        master_key = "sk-" + os.urandom(32).hex()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "STORE_MODEL_IN_DB"}
        }
        env.update(
            LITELLM_MASTER_KEY=master_key,
            BENCH_FAKE_UPSTREAM_BASE_URL=f"http://{HOST}:{self.upstream_port}/v1",
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no network fetch at start-up
            LITELLM_LOG="WARNING",  # same as the gateway's --log-level warning: no access log
            LITELLM_TELEMETRY="False",
            NO_DOCS="True",
            DISABLE_ADMIN_UI="True",
        )
        cmd = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(LITELLM_CONFIG),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            str(self.workers),
        ]
        server = self.procs.start("litellm", cmd, env=env)
        wait_healthy(server, f"http://{HOST}:{port}/health/liveliness", timeout=180)
        return Started(f"http://{HOST}:{port}{CHAT_PATH}", f"Bearer {master_key}", {"server": server.pgid}, [server])

    # -- measuring

    def measure(self, name: str) -> list[WrkResult]:
        log(f"=== {TARGET_LABELS[name]}: starting")
        already_running = list(self.procs.running)
        try:
            started = self.start_target(name)
        except BaseException:
            # Do not leave a half-started target running while the next one is measured.
            for managed in reversed([m for m in self.procs.running if m not in already_running]):
                self.procs.stop(managed)
            raise
        try:
            check_chat(name, started.url, started.auth)
            watched = [*started.processes, *([self.upstream] if self.upstream else [])]
            log_offsets = {m.name: m.log_path.stat().st_size for m in watched}
            groups = {**self.upstream_groups(), **started.groups}
            answered = 1
            if self.args.warmup > 0:
                log(f"{name}: warm-up {self.args.warmup:g}s at {HIGH_LOAD} connections")
                output = self.wrk.run(name, started.url, started.auth, HIGH_LOAD, 2, self.args.warmup)
                warm = parse_wrk(output, name, HIGH_LOAD, 2)
                answered += warm.requests
                if warm.errors:
                    log(f"WARNING: {name}: {warm.errors} errors during the warm-up")
            results = []
            for connections, threads in LOADS:
                time.sleep(1)
                before = CpuSnapshot.take()
                output = self.wrk.run(name, started.url, started.auth, connections, threads, self.args.duration)
                after = CpuSnapshot.take()
                result = parse_wrk(output, name, connections, threads)
                result.cpu_pct = cpu_breakdown(before, after, groups)
                if result.requests:
                    result.cpu_ms_per_req = round(1000.0 * result.cpu_pct["stack_cpu_s"] / result.requests, 3)
                log(
                    f"{name} @{connections}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
                )
                results.append(result)
                answered += result.requests
            if started.after_load is not None:
                self.notes[name] = started.after_load(answered)
                log(f"{name}: {self.notes[name]}")
            for managed in watched:
                if managed.proc.poll() is not None:
                    self.warn(f"{managed.name} exited during the {name} runs (code {managed.proc.returncode})")
                count, example = scan_log(managed.log_path, log_offsets[managed.name])
                if count:
                    self.warn(
                        f"{managed.name} logged {count} warning/error line(s) during the {name} runs, "
                        f"e.g. {example!r} (see {managed.log_path.relative_to(REPO)})"
                    )
            return results
        finally:
            for managed in reversed(started.processes):
                self.procs.stop(managed)


# --------------------------------------------------------------------------- report


def _find(results: list[WrkResult], target: str, connections: int) -> WrkResult | None:
    return next((r for r in results if r.target == target and r.connections == connections), None)


def compute_ratios(results: list[WrkResult]) -> list[dict[str, Any]]:
    def ratio(name: str, num: WrkResult | None, den: WrkResult | None, goal: float, kind: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "goal": goal, "kind": kind, "value": None, "status": "n/a"}
        if num is None or den is None:
            entry["status"] = "n/a (target missing)"
            return entry
        if kind == "ratio":
            value = num.rps / den.rps if den.rps else float("inf")
            ok = value >= goal
            if num.cpu_ms_per_req and den.cpu_ms_per_req:
                entry["by_cpu_per_request"] = round(den.cpu_ms_per_req / num.cpu_ms_per_req, 3)
        else:
            value = num.p50_ms - den.p50_ms
            ok = value <= goal
        entry["value"] = round(value, 3)
        entry["status"] = "MET" if ok else "MISSED"
        if num.errors or den.errors:
            entry["status"] += " (INVALID: errors during the run)"
        return entry

    gw_hi, gw_lo = (_find(results, "gateway", HIGH_LOAD), _find(results, "gateway", LOW_LOAD))
    return [
        ratio(
            f"gateway req/s / bare Django req/s @{HIGH_LOAD} conns",
            gw_hi,
            _find(results, "bare_django", HIGH_LOAD),
            TARGET_VS_DJANGO,
            "ratio",
        ),
        ratio(
            f"gateway req/s / LiteLLM req/s @{HIGH_LOAD} conns",
            gw_hi,
            _find(results, "litellm", HIGH_LOAD),
            TARGET_VS_LITELLM,
            "ratio",
        ),
        ratio(
            f"gateway p50 - upstream p50 @{LOW_LOAD} conn (ms)",
            gw_lo,
            _find(results, "upstream", LOW_LOAD),
            TARGET_OVERHEAD_MS,
            "overhead_ms",
        ),
    ]


def _cpu_summary(cpu: dict[str, float]) -> str:
    order = ["server", "usage_writer", "upstream", "wrk", "postgres", "redis"]
    ours = ", ".join(f"{k} {cpu[k]:.0f}%" for k in order if k in cpu and (cpu[k] >= 1 or k == "server"))
    top_other = "; ".join(f"{k.removeprefix('other:')} {v:.0f}%" for k, v in cpu.items() if k.startswith("other:"))
    not_ours = f"not ours {cpu.get('not_ours', 0):.0f}%" + (f" ({top_other})" if top_other else "")
    noisy = "  <-- NOISY" if cpu.get("not_ours", 0) >= NOISY_CPU_PCT else ""
    return f"{ours} | {not_ours} | box {cpu.get('machine_busy_pct', 0):.0f}% of {os.cpu_count()} cores{noisy}"


def print_report(
    results: list[WrkResult],
    ratios: list[dict[str, Any]],
    failures: dict[str, str],
    notes: dict[str, dict[str, Any]],
    warnings: list[str],
    args: argparse.Namespace,
) -> None:
    print()
    print(
        f"ModelMuxer benchmark: {args.workers} worker(s) per server, {args.duration:g}s per run, "
        f"{args.warmup:g}s warm-up, {os.cpu_count()} CPUs"
    )
    header = f"{'target':<24} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>11}"
    print(header)
    print("-" * len(header))
    for name in TARGETS:
        if name in failures:
            print(f"{TARGET_LABELS[name]:<24} {'FAILED: ' + failures[name].splitlines()[0]}")
            continue
        for connections, _ in LOADS:
            r = _find(results, name, connections)
            if r is None:
                continue
            flag = "  <-- ERRORS" if r.errors else ""
            cost = f"{r.cpu_ms_per_req:.3f}" if r.cpu_ms_per_req is not None else "n/a"
            print(
                f"{TARGET_LABELS[name]:<24} {r.connections:>5} {r.rps:>10,.1f} {r.p50_ms:>8.2f} "
                f"{r.p99_ms:>8.2f} {r.errors:>7} {cost:>11}{flag}"
            )
    print("(CPU ms/req: CPU the serving stack - server, usage writer, upstream, PostgreSQL, Redis; not wrk -")
    print(" spent per answered request; much less sensitive to other load on the box than req/s)")
    print()
    print("CPU during each measured run, % of one core ('server' = the target's own processes; 'not ours' = the")
    print("rest of the box: other users' processes, short-lived ones, kernel):")
    for r in results:
        print(f"  {r.target:<12} @{r.connections:<3} {_cpu_summary(r.cpu_pct)}")
    print()
    print("Ratios the project is judged on:")
    for entry in ratios:
        value = "n/a" if entry["value"] is None else f"{entry['value']:.2f}"
        goal = f">= {entry['goal']:g}" if entry["kind"] == "ratio" else f"<= {entry['goal']:g} ms"
        print(f"  {entry['name']:<48} {value:>8}   (target {goal})  {entry['status']}")
        if "by_cpu_per_request" in entry:
            print(f"  {'    same ratio from CPU ms/req (noise check)':<48} {entry['by_cpu_per_request']:>8.2f}")
    gateway_notes = notes.get("gateway", {})
    if "usage_caught_up" in gateway_notes:
        print()
        verdict = "caught up" if gateway_notes["usage_caught_up"] else "DID NOT catch up"
        print(
            f"Usage writer: {gateway_notes['usage_rows_written']} ledger rows for "
            f"{gateway_notes['usage_requests_answered']} answered gateway requests; {verdict} "
            f"{gateway_notes['usage_drain_after_load_s']:g}s after the load ended"
        )
    errored = [f"{r.target}@{r.connections}" for r in results if r.errors]
    if errored:
        print()
        print(f"WARNING: runs with errors (non-2xx or socket errors): {', '.join(errored)} - their numbers are suspect")
    noisy = [f"{r.target}@{r.connections}" for r in results if r.cpu_pct.get("not_ours", 0) >= NOISY_CPU_PCT]
    if noisy:
        print()
        print(
            f"NOTE: other load on the box took >= {NOISY_CPU_PCT:g}% of a core during {', '.join(noisy)}; "
            "ratios that use those runs are less trustworthy - rerun when the box is quiet"
        )
    for message in warnings:
        print()
        print(f"WARNING: {message}")
    for name, message in failures.items():
        print()
        print(f"FAILED {name}: {message}")


def hold_bench_lock() -> IO[str]:
    """Refuse to start while another bench, soak or scale run is going: they share muxer_bench and Redis db 5,
    and each flushes that Redis database when it starts. The lock lasts as long as the returned file."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    handle = (RESULTS_DIR / ".lock").open("a+")  # not "w": the holder's pid stays readable
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit("another bench/run.py, soak.py or scale.py run is in progress (bench/results/.lock)") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "no commit"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn/LiteLLM workers per server (default 2)")
    parser.add_argument("--duration", type=float, default=15, help="seconds per measured wrk run (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per target (default 3)")
    parser.add_argument("--timeout", type=float, default=10, help="wrk per-request timeout in seconds (default 10)")
    parser.add_argument("--upstream-workers", type=int, default=1, help="fake upstream worker processes (default 1)")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)} (default: all)"
    )
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    if args.workers < 1 or args.duration <= 0:
        parser.error("--workers must be >= 1 and --duration > 0")
    return args


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt (even if inherited as ignored) so cleanup always runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_guarded(job: Any) -> str | None:
    """``job.run()`` with SIGINT/SIGTERM/SIGHUP turned into a clean stop, and ``job.stop()`` always run after it
    (with those signals ignored, so the cleanup finishes). Returns why the run failed, or None."""
    failure: str | None = None
    with terminate_on_signals():
        try:
            job.run()
        except BenchError as exc:
            failure = str(exc)
            log(f"FAILED: {exc}")
        except KeyboardInterrupt:
            failure = "interrupted"
            log("interrupted: stopping everything")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            job.stop()
    return failure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _lock = hold_bench_lock()  # held until the process exits
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / f"{stamp}-logs"
    bench = Bench(args, log_dir)
    results: list[WrkResult] = []
    failures: dict[str, str] = {}
    interrupted = False
    with terminate_on_signals():
        try:
            bench.versions["wrk"] = ensure_wrk()
            if "litellm" in args.targets:
                try:
                    bench.versions["litellm"] = ensure_litellm()
                except (subprocess.CalledProcessError, OSError) as exc:
                    failures["litellm"] = f"could not install LiteLLM: {exc}"
                    log(f"litellm: FAILED: {failures['litellm']}")
            log(f"server logs go to {log_dir.relative_to(REPO)}/")
            bench.start_upstream()
            for name in TARGETS:
                if name not in args.targets or name in failures:
                    continue
                try:
                    results.extend(bench.measure(name))
                except BenchError as exc:
                    failures[name] = str(exc)
                    log(f"{name}: FAILED: {exc}")
        except BenchError as exc:
            failures["setup"] = str(exc)
            log(f"FAILED: {exc}")
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: stopping everything")
        finally:
            # A second Ctrl-C must not cut the cleanup short; it is bounded (grace period, then SIGKILL).
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            bench.wrk.kill()
            bench.procs.stop_all()
    if interrupted:
        return 130

    ratios = compute_ratios(results)
    print_report(results, ratios, failures, bench.notes, bench.warnings, args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "timestamp": stamp,
        "command": shlex.join([sys.executable, *sys.argv]),
        "config": {
            "workers": args.workers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk_timeout_s": args.timeout,
            "loads": [{"connections": c, "threads": t} for c, t in LOADS],
            "targets": args.targets,
            "request_body": json.loads(CHAT_BODY),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": {**bench.versions, "git_head": git_head()},
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "runs_with_errors": [f"{r.target}@{r.connections}" for r in results if r.errors],
        "noisy_runs": [f"{r.target}@{r.connections}" for r in results if r.cpu_pct.get("not_ours", 0) >= NOISY_CPU_PCT],
        "notes": bench.notes,
        "warnings": bench.warnings,
        "failures": failures,
        "logs": str(log_dir.relative_to(REPO)),
    }
    out = RESULTS_DIR / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport written to {out.relative_to(REPO)}")
    return 1 if failures or report["runs_with_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
