"""ModelMuxer soak: sustained mixed load against the gateway, watching memory and connections for a trend.

The same stack as bench/run.py's gateway target (uvicorn workers, the usage writer, the fake upstream,
PostgreSQL muxer_bench, Redis db 5), loaded for a long time by three wrk processes, one per class:

  chat    plain chat completions in six shapes (explicit models, "auto" routing, a cached answer)
  stream  stream: true, the fake upstream pacing its chunks (SOAK_STREAM directive), so streams last
  fault   failures on purpose, about --fault-share of all requests: upstream 500 and 429 on every model
          (retries, fallbacks, the circuit breaker), a stream the upstream breaks, unknown and
          malformed keys

Each class holds a target rate (wrk's delay() hook, retuned every window), so the load stays moderate
and steady whatever else runs on the box. Every --interval seconds is one window: a fresh wrk run per
class (so window boundaries also cut a few streams short, a client disconnect the gateway must
survive), sampled halfway for each process's RSS, threads, descriptors and ESTABLISHED sockets.

The report: RSS per process at the start (after the warm-up), at the end, its growth and its slope
over the second half with a plateau verdict; p99 per class, first against last windows; the error
rate (answers nobody asked for) apart from the injected faults' outcomes. The JSON goes to
bench/results/soak-<timestamp>.json.

Run from the repo root:  .venv/bin/python bench/soak.py --minutes 12
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    HOST,
    KEY_ALPHABET,
    REDIS_URL,
    REPO,
    RESULTS_DIR,
    Bench,
    BenchError,
    CpuSnapshot,
    Started,
    _proc_table,
    check_chat,
    cpu_breakdown,
    ensure_wrk,
    git_head,
    hold_bench_lock,
    http_request,
    log,
    run_guarded,
    usage_rows,
    well_formed_key,
)

SOAK_SCRIPT = Path(__file__).resolve().parent / "soak.lua"
REDIS_PORT = 6379
POSTGRES_PORT = 5432
USAGE_STREAM = "muxer:usage"
CLASSES = ("chat", "stream", "fault")
# /proc/net/tcp states.
ESTABLISHED, CLOSE_WAIT = "01", "08"


# --------------------------------------------------------------------------- sampling


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _kb_to_mb(text: str | None) -> float:
    return round(int(text.split()[0]) / 1024, 2) if text else 0.0


def tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) for every TCP socket on the box."""
    table: dict[int, tuple[int, int, str]] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            if inode:
                table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


def _socket_inodes(pid: int) -> tuple[int, list[int]]:
    """(open descriptors, inodes of the sockets among them) of one process."""
    fd_dir = f"/proc/{pid}/fd"
    inodes = []
    names = os.listdir(fd_dir)
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return len(names), inodes


@dataclass
class ProcSample:
    pid: int
    rss_mb: float
    anon_mb: float
    threads: int
    fds: int
    # ESTABLISHED sockets by peer: clients (to the port this process serves), upstream, redis, postgres, other;
    # plus close_wait: the peer hung up and this process has not closed its end (a leak when it grows).
    conns: dict[str, int]


class Watched:
    """The processes the soak watches, labelled once and followed by pid (a respawned worker is a new row)."""

    def __init__(self, groups: dict[str, tuple[int, int | None]], upstream_port: int) -> None:
        self.groups = groups  # group label -> (process group id, port its processes serve)
        self.upstream_port = upstream_port
        self.labels: dict[int, str] = {}
        self.workers_seen = 0

    def _label(self, group: str, pgid: int, pid: int) -> str:
        if pid in self.labels:
            return self.labels[pid]
        if pid == pgid:
            label = group if group != "gateway" else "gateway supervisor"
        else:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "resource_tracker" in cmdline:
                label = f"{group} resource tracker"
            else:
                self.workers_seen += 1
                label = f"{group} worker {self.workers_seen}"
        self.labels[pid] = label
        return label

    def sample(self) -> dict[str, ProcSample]:
        sockets = tcp_sockets()
        by_group = {pgid: (group, port) for group, (pgid, port) in self.groups.items()}
        samples: dict[str, ProcSample] = {}
        for pid, (pgid, _comm, _cpu) in sorted(_proc_table().items()):
            if pgid not in by_group:
                continue
            group, served_port = by_group[pgid]
            try:
                label = self._label(group, pgid, pid)
                status = _status_fields(pid)
                fds, inodes = _socket_inodes(pid)
            except OSError:
                continue  # exited between the listing and the read
            conns = dict.fromkeys(("clients", "upstream", "redis", "postgres", "other", "close_wait"), 0)
            for inode in inodes:
                entry = sockets.get(inode)
                if entry is None:
                    continue
                local_port, remote_port, state = entry
                if state == CLOSE_WAIT:
                    conns["close_wait"] += 1
                if state != ESTABLISHED:
                    continue
                if served_port is not None and local_port == served_port:
                    conns["clients"] += 1
                elif remote_port == self.upstream_port:
                    conns["upstream"] += 1
                elif remote_port == REDIS_PORT:
                    conns["redis"] += 1
                elif remote_port == POSTGRES_PORT:
                    conns["postgres"] += 1
                else:
                    conns["other"] += 1
            samples[label] = ProcSample(
                pid=pid,
                rss_mb=_kb_to_mb(status.get("VmRSS")),
                anon_mb=_kb_to_mb(status.get("RssAnon")),
                threads=int(status.get("Threads", "0")),
                fds=fds,
                conns=conns,
            )
        return samples


def redis_int(url: str, *command: str) -> int | None:
    """One integer-valued command against the bench's Redis database (None when it cannot be read)."""
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/(\d+)", url)
    if not match:
        return None

    def encode(*parts: str) -> bytes:
        return f"*{len(parts)}\r\n".encode() + b"".join(f"${len(p)}\r\n{p}\r\n".encode() for p in parts)

    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=2) as sock:
            sock.sendall(encode("SELECT", match.group(3)) + encode(*command))
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    lines = reply.split(b"\r\n")
    if len(lines) < 2 or not lines[1].startswith(b":"):
        return None
    return int(lines[1][1:])


# --------------------------------------------------------------------------- load


@dataclass
class ClassResult:
    """One traffic class during one window (one wrk run)."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    status_errors: int  # wrk: responses with status > 399
    socket_errors: dict[str, int]
    counts: dict[str, int]  # "<class or fault kind> <status>[ incomplete | <error code>[ crash]]" -> responses
    delay_ms: float  # the mean pause between requests per connection that was in force


def parse_soak(output: str) -> ClassResult:
    for line in output.splitlines():
        if line.startswith("SOAK_RESULT "):
            data = json.loads(line.removeprefix("SOAK_RESULT "))
            lat = data["latency_us"]
            duration = data["duration_us"] / 1e6
            errs = data["errors"]
            return ClassResult(
                requests=int(data["requests"]),
                duration_s=round(duration, 3),
                rps=round(data["requests"] / duration, 2) if duration else 0.0,
                p50_ms=lat["p50"] / 1e3,
                p90_ms=lat["p90"] / 1e3,
                p99_ms=lat["p99"] / 1e3,
                max_ms=lat["max"] / 1e3,
                mean_ms=round(lat["mean"] / 1e3, 3),
                status_errors=int(errs["status"]),
                socket_errors={k: int(errs[k]) for k in ("connect", "read", "write", "timeout")},
                counts={str(k): int(v) for k, v in data["counts"].items()},
                delay_ms=0.0,
            )
    raise BenchError(f"no SOAK_RESULT line in wrk's output:\n{output}")


def unexpected_errors(name: str, result: ClassResult) -> int:
    """Answers no request asked for: socket errors and timeouts anywhere; a plain request that was not
    answered 200; a stream that was not a whole 200 stream; the gateway's catch-all 500 anywhere."""
    bad = sum(result.socket_errors.values())
    for key, value in result.counts.items():
        planned = not key.endswith(" crash") if name == "fault" else key == f"{name} 200"
        if not planned:
            bad += value
    return bad


@dataclass
class LoadClass:
    name: str
    connections: int
    target_rps: float  # 0: as fast as the connections go
    timeout_s: float
    delay_ms: float = 0.0

    def retune(self, achieved_rps: float) -> None:
        """Move the pause so the next window runs at the target (the latency assumed unchanged)."""
        if self.target_rps <= 0:
            self.delay_ms = 0.0
        elif achieved_rps <= 0:
            self.delay_ms /= 2
        else:
            step = 1000.0 * self.connections * (1 / self.target_rps - 1 / achieved_rps)
            # Half a step: a class's latency moves with its pace (back-off, queueing), so a full step overshoots.
            self.delay_ms = min(max(self.delay_ms + 0.5 * step, 0.0), 60_000.0)


class Load:
    """Runs the three wrk processes of one window and keeps the classes' pacing."""

    def __init__(self, args: argparse.Namespace, url: str, auth: str, log_dir: Path) -> None:
        self.args = args
        self.url = url
        self.auth = auth
        self.log_dir = log_dir
        self.keys_file = log_dir / "forged-keys.txt"
        chat_conns = args.connections - args.stream_connections - args.fault_connections
        self.classes = {
            "chat": LoadClass("chat", chat_conns, args.chat_rate, args.timeout),
            "stream": LoadClass("stream", args.stream_connections, args.stream_rate, args.timeout),
            # Injected upstream failures are retried with back-off on every model before they are answered.
            "fault": LoadClass("fault", args.fault_connections, 0.0, max(args.timeout, 30.0)),
        }
        self.classes["fault"].target_rps = self.fault_target(args.chat_rate + args.stream_rate)
        # First guesses of each class's latency (ms); retune() corrects them after the first window.
        for load_class, latency in zip(self.classes.values(), (5.0, 250.0, 150.0), strict=True):
            if load_class.target_rps > 0:
                load_class.delay_ms = max(1000.0 * load_class.connections / load_class.target_rps - latency, 0.0)
        self.running: list[subprocess.Popen[str]] = []
        self.rng = random.Random()

    def fault_target(self, other_rps: float) -> float:
        share = self.args.fault_share
        return share / (1 - share) * other_rps if other_rps > 0 else 0.0

    def write_forged_keys(self, count: int = 200) -> None:
        """Fresh unknown keys every window: each is a key lookup in PostgreSQL and an entry in every
        worker's key cache, so a flood of forged keys would show as memory growth."""
        keys = ("".join(self.rng.choice(KEY_ALPHABET) for _ in range(32)) for _ in range(count))
        self.keys_file.write_text("".join(well_formed_key(k) + "\n" for k in keys))

    def start(self, window: int) -> None:
        self.write_forged_keys()
        for load_class in self.classes.values():
            if load_class.connections < 1:
                continue
            cmd = [
                "wrk",
                "-t1",
                f"-c{load_class.connections}",
                f"-d{self.args.interval:g}s",
                f"--timeout={load_class.timeout_s:g}s",
                "-s",
                str(SOAK_SCRIPT),
                self.url,
            ]
            env = {
                **os.environ,
                "SOAK_CLASS": load_class.name,
                "SOAK_AUTH": self.auth,
                "SOAK_DELAY_MS": f"{load_class.delay_ms:.1f}",
                "SOAK_WINDOW": str(window),
                "SOAK_KEYS_FILE": str(self.keys_file),
                "SOAK_STREAM": self.args.stream_directive,
                "SOAK_FAULT_MODEL": self.args.fault_model,
            }
            self.running.append(
                subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )

    def finish(self, window: int) -> dict[str, ClassResult]:
        results: dict[str, ClassResult] = {}
        active = [c for c in self.classes.values() if c.connections >= 1]
        outputs = []
        try:
            for proc in self.running:
                output, _ = proc.communicate(timeout=self.args.interval + 60)
                outputs.append((proc, output))
        except subprocess.TimeoutExpired as exc:
            raise BenchError("a wrk process did not finish its window") from exc
        finally:
            self.kill()
        with (self.log_dir / "wrk.log").open("a") as wrk_log:
            for load_class, (proc, output) in zip(active, outputs, strict=True):
                wrk_log.write(f"# window {window} {load_class.name} (exit {proc.returncode})\n{output}\n")
                if proc.returncode != 0:
                    raise BenchError(f"wrk ({load_class.name}) exited with {proc.returncode}:\n{output}")
                result = parse_soak(output)
                result.delay_ms = round(load_class.delay_ms, 1)
                results[load_class.name] = result
        for name, result in results.items():
            self.classes[name].retune(result.rps)
        other = sum(results[n].rps for n in ("chat", "stream") if n in results)
        self.classes["fault"].target_rps = self.fault_target(other)
        self.classes["fault"].retune(results["fault"].rps if "fault" in results else 0.0)
        return results

    def kill(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.running = []


@dataclass
class Window:
    index: int
    phase: str  # warmup or soak
    t_s: float  # seconds since the load began, at the sample
    classes: dict[str, ClassResult]
    procs: dict[str, ProcSample]
    usage_backlog: int | None  # events waiting in the usage stream
    ledger_rows: int | None
    cpu_pct: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- analysis


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per 10 minutes."""
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    if den == 0:
        return None
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return round(600.0 * num / den, 3)


def thirds(values: list[float]) -> tuple[list[float], list[float]]:
    size = max(len(values) // 3, 1)
    return values[:size], values[-size:]


def rss_summary(windows: list[Window], slope_limit: float, margin: float) -> dict[str, dict[str, Any]]:
    labels: list[str] = []
    for window in windows:
        labels.extend(label for label in window.procs if label not in labels)
    summary: dict[str, dict[str, Any]] = {}
    for label in labels:
        points = [(w.t_s, w.procs[label].rss_mb) for w in windows if label in w.procs]
        anon = [(w.t_s, w.procs[label].anon_mb) for w in windows if label in w.procs]
        values = [v for _, v in points]
        if not values:
            continue
        second_half = points[len(points) // 2 :]
        first, last = thirds(values)
        slope = slope_per_10min(second_half)
        entry: dict[str, Any] = {
            "pid": next(w.procs[label].pid for w in windows if label in w.procs),
            "samples": len(values),
            "start_mb": values[0],
            "end_mb": values[-1],
            "growth_mb": round(values[-1] - values[0], 2),
            "max_mb": max(values),
            "anon_start_mb": anon[0][1],
            "anon_end_mb": anon[-1][1],
            "slope_mb_per_10min_second_half": slope,
            "slope_mb_per_10min_all": slope_per_10min(points),
            "anon_slope_mb_per_10min_second_half": slope_per_10min(anon[len(anon) // 2 :]),
            "first_third_max_mb": max(first),
            "last_third_max_mb": max(last),
            "threads_start_end": [
                next(w.procs[label].threads for w in windows if label in w.procs),
                next(w.procs[label].threads for w in reversed(windows) if label in w.procs),
            ],
            "fds_start_end": [
                next(w.procs[label].fds for w in windows if label in w.procs),
                next(w.procs[label].fds for w in reversed(windows) if label in w.procs),
            ],
        }
        if len(values) < 6:
            verdict = "n/a (too few samples)"
        elif (slope is not None and slope < slope_limit) or max(last) <= max(first) + margin:
            verdict = "plateau"
        else:
            verdict = "GROWING"
        entry["verdict"] = verdict
        if len(values) < len(windows):
            entry["note"] = f"present in {len(values)} of {len(windows)} windows (started or exited mid-run)"
        summary[label] = entry
    return summary


def latency_summary(windows: list[Window]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in CLASSES:
        points = [(w.t_s, w.classes[name].p99_ms) for w in windows if name in w.classes and w.classes[name].requests]
        if not points:
            continue
        values = [v for _, v in points]
        first, last = thirds(values)
        p50s = [w.classes[name].p50_ms for w in windows if name in w.classes and w.classes[name].requests]
        other_load = [w.cpu_pct.get("not_ours", 0.0) for w in windows if name in w.classes and w.classes[name].requests]
        try:
            # On a shared box p99 moves with other people's load; a drift that tracks it is not the gateway's.
            with_other_load: float | None = round(statistics.correlation(values, other_load), 2)
        except statistics.StatisticsError:
            with_other_load = None
        summary[name] = {
            "p99_first_window_ms": values[0],
            "p99_last_window_ms": values[-1],
            "p99_first_third_median_ms": round(statistics.median(first), 2),
            "p99_last_third_median_ms": round(statistics.median(last), 2),
            "p99_drift_ms": round(statistics.median(last) - statistics.median(first), 2),
            "p99_slope_ms_per_10min": slope_per_10min(points),
            "p99_worst_window_ms": max(values),
            "p50_median_ms": round(statistics.median(p50s), 2),
            "rps_mean": round(statistics.fmean(w.classes[name].rps for w in windows if name in w.classes), 1),
            "p99_correlation_with_other_load": with_other_load,
        }
    return summary


def error_summary(windows: list[Window]) -> dict[str, Any]:
    per_class: dict[str, dict[str, Any]] = {}
    injected: Counter[str] = Counter()
    total_requests = total_unexpected = 0
    for name in CLASSES:
        results = [w.classes[name] for w in windows if name in w.classes]
        requests = sum(r.requests for r in results)
        unexpected = sum(unexpected_errors(name, r) for r in results)
        sockets: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        for r in results:
            sockets.update(r.socket_errors)
            outcomes.update(r.counts)
        per_class[name] = {
            "requests": requests,
            "unexpected_errors": unexpected,
            "socket_errors": {k: v for k, v in sockets.items() if v},
            "non_2xx": sum(r.status_errors for r in results),
            "outcomes": dict(sorted(outcomes.items())),
        }
        if name == "fault":
            injected = outcomes
        total_requests += requests
        total_unexpected += unexpected
    fault_requests = per_class.get("fault", {}).get("requests", 0)
    return {
        "requests": total_requests,
        "unexpected_errors": total_unexpected,
        "unexpected_error_rate_pct": round(100.0 * total_unexpected / total_requests, 4) if total_requests else None,
        "injected_requests": fault_requests,
        "injected_share_pct": round(100.0 * fault_requests / total_requests, 2) if total_requests else None,
        "injected_outcomes": dict(sorted(injected.items())),
        "per_class": per_class,
    }


def connection_summary(windows: list[Window]) -> dict[str, dict[str, Any]]:
    """Each kind of socket summed over a group's processes (gateway, usage_writer, upstream)."""
    series: dict[str, list[int]] = {}
    fd_series: dict[str, list[int]] = {}
    for index, window in enumerate(windows):
        totals: Counter[str] = Counter()
        fds: Counter[str] = Counter()
        for label, sample in window.procs.items():
            group = label.split(" ")[0]
            for kind, count in sample.conns.items():
                totals[f"{group} {kind}"] += count
            fds[group] += sample.fds
        for key in {*series, *totals}:
            series.setdefault(key, [0] * index).append(totals.get(key, 0))
        for key in {*fd_series, *fds}:
            fd_series.setdefault(key, [0] * index).append(fds.get(key, 0))
    summary = {
        key: {"start": values[0], "end": values[-1], "min": min(values), "max": max(values)}
        for key, values in sorted(series.items())
        if max(values) > 0
    }
    for key, values in sorted(fd_series.items()):
        summary[f"{key} open fds"] = {"start": values[0], "end": values[-1], "min": min(values), "max": max(values)}
    return summary


_JSON_LEVEL = re.compile(r'"level":\s*"(\w+)"')
_JSON_EVENT = re.compile(r'"event":\s*"((?:[^"\\]|\\.){0,90})')
_TEXT_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def scan_levels(path: Path, offset: int) -> dict[str, Any]:
    """Lines a process logged after ``offset``: counts by level and the most frequent warnings/errors."""
    levels: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    with path.open("rb") as fh:
        fh.seek(offset)
        for raw in fh:
            line = raw.decode(errors="replace")
            match = _JSON_LEVEL.search(line)
            if match:
                level = match.group(1).lower()
                levels[level] += 1
                if level in {"warning", "error", "critical"}:
                    event = _JSON_EVENT.search(line)
                    text = event.group(1) if event else line[:90]
                    # Request ids and numbers differ on every line; group the same message together.
                    problems[f"{level}: " + re.sub(r"\b(req_|soak-)[\w.-]+|\d+", "#", text)] += 1
            elif _TEXT_PROBLEM.search(line):
                levels["text-problem"] += 1
                problems[re.sub(r"\d+", "#", line.strip())[:100]] += 1
    return {"levels": dict(levels), "top_problems": dict(problems.most_common(6))}


# --------------------------------------------------------------------------- run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12, help="measured soak time, after the warm-up (default 12)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of the same load before it counts (60)")
    parser.add_argument("--interval", type=float, default=10, help="seconds per window and sample (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--connections", type=int, default=20, help="wrk connections in all (default 20)")
    parser.add_argument("--stream-connections", type=int, default=6, help="of which streaming (default 6)")
    parser.add_argument("--fault-connections", type=int, default=2, help="of which injected faults (default 2)")
    parser.add_argument("--chat-rate", type=float, default=250, help="plain req/s target, 0: unpaced (250)")
    parser.add_argument("--stream-rate", type=float, default=20, help="streams/s target, 0: unpaced (20)")
    parser.add_argument(
        "--fault-share", type=float, default=0.03, help="injected faults as a share of all requests (0.03)"
    )
    parser.add_argument(
        "--stream-directive",
        default="[fake words=20 chunk_delay_ms=10]",
        help="fake upstream directive in each streamed prompt (default: 20 chunks, 10 ms apart)",
    )
    parser.add_argument(
        "--fault-model",
        default="fake-small",
        help="model the injected upstream failures ask for (default fake-small, which plain traffic uses too)",
    )
    parser.add_argument("--timeout", type=float, default=10, help="wrk per-request timeout, s (default 10)")
    parser.add_argument("--upstream-workers", type=int, default=1, help="fake upstream processes (default 1)")
    parser.add_argument(
        "--plateau-slope", type=float, default=2.0, help="RSS slope (MB per 10 min) under which it is flat (2)"
    )
    parser.add_argument(
        "--plateau-margin", type=float, default=1.0, help="MB the last third's peak may exceed the first's (1)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="only print the report of a saved run (bench/results/soak-*.json), with the plateau options given here",
    )
    args = parser.parse_args(argv)
    chat = args.connections - args.stream_connections - args.fault_connections
    if chat < 1 or args.stream_connections < 0 or args.fault_connections < 0:
        parser.error("--connections must exceed --stream-connections + --fault-connections")
    if args.interval < 2 or args.minutes <= 0 or not 0 <= args.fault_share < 0.5:
        parser.error("--interval must be >= 2 s, --minutes > 0 and --fault-share in [0, 0.5)")
    return args


class Soak:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        bench_args = argparse.Namespace(
            workers=args.workers, timeout=args.timeout, upstream_workers=args.upstream_workers, warmup=0, duration=0
        )
        self.bench = Bench(bench_args, log_dir)
        self.load: Load | None = None
        self.windows: list[Window] = []
        self.notes: dict[str, Any] = {}
        self.warnings: list[str] = []

    def run(self) -> None:
        bench = self.bench
        bench.versions["wrk"] = ensure_wrk()
        log(f"server logs go to {self.log_dir.relative_to(REPO)}/")
        bench.start_upstream()
        log("=== gateway: starting")
        started: Started = bench.start_gateway()
        check_chat("gateway", started.url, started.auth)
        gateway_port = int(started.url.split(":")[2].split("/")[0])
        server, writer = started.processes
        watched_logs = [server, writer, *([bench.upstream] if bench.upstream else [])]
        offsets = {m.name: m.log_path.stat().st_size for m in watched_logs}
        groups: dict[str, tuple[int, int | None]] = {
            "gateway": (server.pgid, gateway_port),
            "usage_writer": (writer.pgid, None),
        }
        if bench.upstream:
            groups["upstream"] = (bench.upstream.pgid, bench.upstream_port)
        watched = Watched(groups, bench.upstream_port)
        cpu_groups = {"server": server.pgid, "usage_writer": writer.pgid, **bench.upstream_groups()}
        self.load = load = Load(self.args, started.url, started.auth or "", self.log_dir)

        interval = self.args.interval
        warm_windows = math.ceil(self.args.warmup / interval)
        total = warm_windows + math.ceil(self.args.minutes * 60 / interval)
        log(
            f"soak: {total} windows of {interval:g}s ({warm_windows} warm-up), "
            + ", ".join(f"{c.name} {c.connections} conns @{c.target_rps:g}/s" for c in load.classes.values())
        )
        began = time.monotonic()
        soak_cpu_before: CpuSnapshot | None = None
        answered = 1  # check_chat's request
        for index in range(total):
            phase = "warmup" if index < warm_windows else "soak"
            before = CpuSnapshot.take()
            if index == warm_windows:
                soak_cpu_before = before
            window_start = time.monotonic()
            load.start(index)
            time.sleep(max(window_start + interval / 2 - time.monotonic(), 0))
            sampled_at = time.monotonic() - began
            procs = watched.sample()
            backlog = redis_int(REDIS_URL, "XLEN", USAGE_STREAM)
            rows = usage_rows()
            results = load.finish(index)
            after = CpuSnapshot.take()
            window = Window(index, phase, round(sampled_at, 1), results, procs, backlog, rows)
            window.cpu_pct = cpu_breakdown(before, after, cpu_groups)
            self.windows.append(window)
            answered += sum(r.counts.get(f"{name} 200", 0) for name, r in results.items())
            self.log_window(window, total)
            for managed in (server, writer):
                if managed.proc.poll() is not None:
                    raise BenchError(f"{managed.name} exited during the soak (code {managed.proc.returncode})")
        soak_cpu_after = CpuSnapshot.take()
        if soak_cpu_before is not None:
            self.notes["cpu_pct_during_soak"] = cpu_breakdown(soak_cpu_before, soak_cpu_after, cpu_groups)
        if started.after_load is not None:
            self.notes["usage"] = started.after_load(answered)
            log(f"usage: {self.notes['usage']}")
        try:
            status, raw = http_request(f"http://{HOST}:{bench.upstream_port}/_fake/stats")
            if status == 200:
                self.notes["fake_upstream_stats"] = json.loads(raw)
        except (OSError, ValueError):
            pass
        self.notes["logs"] = {
            m.name: scan_levels(m.log_path, offsets[m.name]) for m in watched_logs if m.log_path.exists()
        }

    def log_window(self, window: Window, total: int) -> None:
        parts = []
        for name, r in window.classes.items():
            errors = unexpected_errors(name, r)
            parts.append(f"{name} {r.rps:.0f}/s p99 {r.p99_ms:.0f}ms" + (f" ERR {errors}" if errors else ""))
        rss = " ".join(
            f"{label.replace('gateway worker ', 'w')}={sample.rss_mb:.1f}"
            for label, sample in window.procs.items()
            if "worker" in label or label == "usage_writer"
        )
        clients = sum(s.conns["clients"] for label, s in window.procs.items() if label.startswith("gateway"))
        busy = window.cpu_pct.get("machine_busy_pct", 0)
        log(
            f"w{window.index + 1}/{total} {window.phase}: {' | '.join(parts)} | RSS MB {rss} | "
            f"clients {clients} | backlog {window.usage_backlog} | box {busy:.0f}% not ours "
            f"{window.cpu_pct.get('not_ours', 0):.0f}%"
        )

    def stop(self) -> None:
        if self.load is not None:
            self.load.kill()
        self.bench.procs.stop_all()


def analyse(soak: Soak) -> dict[str, Any]:
    args = soak.args
    measured = [w for w in soak.windows if w.phase == "soak"]
    return {
        "rss": rss_summary(measured, args.plateau_slope, args.plateau_margin),
        "latency": latency_summary(measured),
        "errors": error_summary(measured),
        "errors_during_warmup": error_summary([w for w in soak.windows if w.phase == "warmup"]),
        "connections": connection_summary(measured),
        "usage_backlog": {
            "max": max((w.usage_backlog or 0 for w in measured), default=None),
            "end": measured[-1].usage_backlog if measured else None,
        },
        "not_ours_cpu_pct_median": round(statistics.median(w.cpu_pct.get("not_ours", 0) for w in measured), 1)
        if measured
        else None,
        "not_ours_cpu_pct_by_third": [
            round(statistics.median(third), 1)
            for third in thirds([w.cpu_pct.get("not_ours", 0.0) for w in measured])
            if third
        ],
    }


def print_report(soak: Soak, summary: dict[str, Any]) -> None:
    args = soak.args
    measured = [w for w in soak.windows if w.phase == "soak"]
    minutes = (measured[-1].t_s - measured[0].t_s) / 60 if len(measured) > 1 else 0.0
    print()
    print(
        f"ModelMuxer soak: {len(measured)} windows of {args.interval:g}s after {args.warmup:g}s warm-up "
        f"({minutes:.1f} min between first and last sample), {args.workers} uvicorn workers, {os.cpu_count()} CPUs"
    )
    print()
    print("Memory (VmRSS, MB; start = first sample after the warm-up; slope = least squares over the second half)")
    header = (
        f"{'process':<28} {'start':>8} {'end':>8} {'growth':>8} {'max':>8} {'MB/10min':>9} "
        f"{'1st/3rd third max':>18}  verdict"
    )
    print(header)
    print("-" * len(header))
    for label, entry in summary["rss"].items():
        slope = entry["slope_mb_per_10min_second_half"]
        slope_text = "n/a" if slope is None else f"{slope:+.2f}"
        thirds_text = f"{entry['first_third_max_mb']:.1f}/{entry['last_third_max_mb']:.1f}"
        print(
            f"{label:<28} {entry['start_mb']:>8.1f} {entry['end_mb']:>8.1f} {entry['growth_mb']:>+8.1f} "
            f"{entry['max_mb']:>8.1f} {slope_text:>9} {thirds_text:>18}  {entry['verdict']}"
        )
    print(
        f"(plateau: slope < {args.plateau_slope:g} MB/10 min, or the last third's peak <= the first third's "
        f"+ {args.plateau_margin:g} MB)"
    )
    print()
    print("Latency per class (each window is one wrk run; drift = median p99 of the last third - of the first)")
    header = (
        f"{'class':<8} {'req/s':>7} {'p50 ms':>8} {'p99 first':>10} {'p99 last':>9} {'1st/3rd third':>14} "
        f"{'drift ms':>9} {'ms/10min':>9} {'worst p99':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, entry in summary["latency"].items():
        slope = entry["p99_slope_ms_per_10min"]
        thirds_text = f"{entry['p99_first_third_median_ms']:.1f}/{entry['p99_last_third_median_ms']:.1f}"
        print(
            f"{name:<8} {entry['rps_mean']:>7.1f} {entry['p50_median_ms']:>8.2f} {entry['p99_first_window_ms']:>10.1f} "
            f"{entry['p99_last_window_ms']:>9.1f} {thirds_text:>14} {entry['p99_drift_ms']:>+9.1f} "
            f"{'n/a' if slope is None else f'{slope:+.1f}':>9} {entry['p99_worst_window_ms']:>10.1f}"
        )
    by_third = summary.get("not_ours_cpu_pct_by_third") or []
    if len(by_third) == 2:
        correlations = ", ".join(
            f"{name} {entry['p99_correlation_with_other_load']:+.2f}"
            for name, entry in summary["latency"].items()
            if entry.get("p99_correlation_with_other_load") is not None
        )
        print(
            f"Other load on the box (CPU not ours, % of a core, median window): first third {by_third[0]:g}, "
            f"last third {by_third[1]:g}; correlation of p99 with it: {correlations}"
        )
    errors = summary["errors"]
    print()
    print(
        f"Errors: {errors['unexpected_errors']} unexpected in {errors['requests']:,} requests "
        f"({errors['unexpected_error_rate_pct']}%), injected faults excluded"
    )
    for name, entry in errors["per_class"].items():
        sockets = ", ".join(f"{k} {v}" for k, v in entry["socket_errors"].items()) or "none"
        print(
            f"  {name:<7} {entry['requests']:>9,} requests, {entry['unexpected_errors']} unexpected "
            f"(non-2xx {entry['non_2xx']}, socket errors: {sockets})"
        )
        if name != "fault":
            odd = {k.removeprefix(f"{name} "): v for k, v in entry["outcomes"].items() if k != f"{name} 200"}
            if odd:
                print(f"          answers other than a whole 200: {', '.join(f'{k} x{v}' for k, v in odd.items())}")
    print(
        f"Injected faults: {errors['injected_requests']:,} requests ({errors['injected_share_pct']}% of all); "
        "their answers:"
    )
    by_kind: dict[str, list[str]] = {}
    for key, value in errors["injected_outcomes"].items():
        kind, _, outcome = key.partition(" ")
        by_kind.setdefault(kind, []).append(f"{outcome} x{value}")
    for kind, outcomes in sorted(by_kind.items()):
        print(f"  {kind:<10} {', '.join(outcomes)}")
    print()
    print("Open connections and descriptors (ESTABLISHED sockets summed over each group's processes, mid-window):")
    for key, entry in summary["connections"].items():
        print(
            f"  {key:<30} start {entry['start']:>4}  end {entry['end']:>4}  "
            f"min {entry['min']:>4}  max {entry['max']:>4}"
        )
    backlog = summary["usage_backlog"]
    usage = soak.notes.get("usage", {})
    print()
    print(
        f"Usage stream backlog: max {backlog['max']}, at the end {backlog['end']}; after the load: "
        f"{usage.get('usage_rows_written', 'n/a')} ledger rows (failed and cut requests have rows too) for "
        f"{usage.get('usage_requests_answered', 'n/a')} answers of 200, "
        f"{'caught up' if usage.get('usage_caught_up') else 'NOT caught up'} "
        f"{usage.get('usage_drain_after_load_s', '?')}s after"
    )
    cpu = soak.notes.get("cpu_pct_during_soak", {})
    if cpu:
        print(
            f"CPU over the soak (% of one core): gateway {cpu.get('server', 0):.0f}, usage writer "
            f"{cpu.get('usage_writer', 0):.0f}, upstream {cpu.get('upstream', 0):.0f}, wrk {cpu.get('wrk', 0):.0f}, "
            f"postgres {cpu.get('postgres', 0):.0f}, redis {cpu.get('redis', 0):.0f}; not ours "
            f"{cpu.get('not_ours', 0):.0f} (median window {summary['not_ours_cpu_pct_median']}); box "
            f"{cpu.get('machine_busy_pct', 0):.0f}% of {os.cpu_count()} cores; load average at the end "
            + " ".join(f"{v:.2f}" for v in os.getloadavg())
        )
    for name, scan in soak.notes.get("logs", {}).items():
        levels = ", ".join(f"{k} {v}" for k, v in sorted(scan["levels"].items())) or "nothing"
        print(f"Log {name}: {levels}")
        for text, count in scan["top_problems"].items():
            print(f"    {count:>7} x {text}")
    verdicts = [e["verdict"] for e in summary["rss"].values()]
    print()
    if any(v == "GROWING" for v in verdicts):
        grow = [label for label, e in summary["rss"].items() if e["verdict"] == "GROWING"]
        print(f"VERDICT: memory still growing in {', '.join(grow)}")
    else:
        print("VERDICT: memory reached a plateau in every process")
    for message in soak.warnings:
        print(f"WARNING: {message}")


def uncommitted_files() -> list[str]:
    """What the measured tree holds beyond HEAD (the soak runs the working tree as it is)."""
    done = subprocess.run(["git", "status", "--short"], cwd=REPO, capture_output=True, text=True, check=False)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def window_from_json(data: dict[str, Any]) -> Window:
    return Window(
        index=data["index"],
        phase=data["phase"],
        t_s=data["t_s"],
        classes={name: ClassResult(**result) for name, result in data["classes"].items()},
        procs={label: ProcSample(**sample) for label, sample in data["procs"].items()},
        usage_backlog=data["usage_backlog"],
        ledger_rows=data["ledger_rows"],
        cpu_pct=data["cpu_pct"],
    )


def reprint(path: Path, args: argparse.Namespace) -> int:
    """The report of a saved run, analysed again (the plateau thresholds from this command line)."""
    data = json.loads(path.read_text())
    saved = argparse.Namespace(
        **{**data["config"], "plateau_slope": args.plateau_slope, "plateau_margin": args.plateau_margin}
    )
    soak = Soak(saved, REPO / data["logs"])
    soak.windows = [window_from_json(w) for w in data["windows"]]
    soak.notes = data["notes"]
    soak.warnings = data["warnings"]
    if not any(w.phase == "soak" for w in soak.windows):
        print(f"{path}: no measured window")
        return 1
    print(f"Report of {path} (run {data['timestamp']}, {data['versions'].get('git_head')}):")
    print_report(soak, analyse(soak))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return reprint(args.report, args)
    _lock = hold_bench_lock()  # held until the process exits
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / f"soak-{stamp}-logs"
    soak = Soak(args, log_dir)
    failure = run_guarded(soak)
    measured = [w for w in soak.windows if w.phase == "soak"]
    summary = analyse(soak) if measured else {}
    if summary:
        print_report(soak, summary)
    report = {
        "timestamp": stamp,
        "command": shlex.join([sys.executable, *sys.argv]),
        "config": dict(vars(args)),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": {**soak.bench.versions, "git_head": git_head(), "uncommitted_files": uncommitted_files()},
        "summary": summary,
        "notes": soak.notes,
        "warnings": soak.warnings,
        "failure": failure,
        "windows": [asdict(w) for w in soak.windows],
        "logs": str(log_dir.relative_to(REPO)),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport written to {out.relative_to(REPO)}")
    if failure == "interrupted":
        return 130
    growing = any(e["verdict"] == "GROWING" for e in summary.get("rss", {}).values())
    return 1 if failure or growing or summary.get("errors", {}).get("unexpected_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
