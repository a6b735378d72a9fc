"""Scale-out benchmark: one gateway instance behind nginx against two, same load, one run.

    .venv/bin/python bench/scale.py [--rounds 4] [--duration 10] [--connections 50]

Two gateway instances (``python -m muxer_project.serve --workers 1``, A and B) run for the whole
benchmark, with one fake upstream, one usage writer, PostgreSQL ``muxer_bench`` and Redis db 5. One
nginx listens on two ports: the first proxies to A alone, the second to A and B (upstream keep-alive
to both). wrk loads one port per round, in the order 1,2,2,1,1,2,... so that a drift of the box's
other load over the run weighs on both configurations alike. Each round records req/s, latency and
the CPU of every process group (bench/run.py's /proc accounting).

The demo key has no rate limit and the demo organization no budget, as in bench/run.py; with
``--limits`` the key gets rate limits and the organization a budget, both far above the load.

Then a Redis census: with MONITOR attached, a short load through the two-instance port, counting
every command on db 5 by issuer (instance, usage writer, inside a Lua script), and the CPU of each
process per request. The run also measures the ledger's row size, the PostgreSQL work per ledger
row (pg_stat_database, WAL) and Redis's time per command (INFO commandstats) during the rounds.
See bench/README.md ("Scaling out", "Sizing for 10,000 requests/s").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    CHAT_BODY,
    CHAT_PATH,
    HOST,
    NOISY_CPU_PCT,
    PSQL,
    PYTHON,
    REDIS_URL,
    REPO,
    RESULTS_DIR,
    Bench,
    BenchError,
    CpuSnapshot,
    Managed,
    WrkResult,
    _proc_table,
    check_chat,
    cpu_breakdown,
    ensure_wrk,
    free_port,
    git_head,
    hold_bench_lock,
    log,
    parse_wrk,
    run_guarded,
    run_step,
    scan_log,
    usage_rows,
    wait_healthy,
    wait_usage_drained,
)
from bench.soak import REDIS_PORT, _socket_inodes, tcp_sockets

REDIS_DB = int(REDIS_URL.rsplit("/", 1)[1])
INSTANCES = ("gateway_a", "gateway_b")
# CPU groups reported per round, in this order ("gateways" = both instances together).
CPU_LABELS = ("gateways", "gateway_a", "gateway_b", "nginx", "upstream", "usage_writer", "postgres", "redis", "wrk")
# The census's "limits on" pass: rate limits the load never reaches, and a budget it never exhausts.
CENSUS_RPM = 100_000_000
CENSUS_TPM = 2_000_000_000
CENSUS_BUDGET_NAME = "bench scale census"

NGINX_CONF = """\
# Written by bench/scale.py for one run.
{user}
worker_processes {nginx_workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The gateway writes its own access line per request; nginx's would only add to the load.
    access_log off;

    upstream one_instance {{
        server 127.0.0.1:{port_a};
        keepalive 64;
        keepalive_timeout 60s;
    }}

    upstream two_instances {{
        server 127.0.0.1:{port_a};
        server 127.0.0.1:{port_b};
        keepalive 64;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port_one};
        location / {{
            proxy_pass http://one_instance;
{proxy}
        }}
    }}

    server {{
        listen 127.0.0.1:{port_two};
        location / {{
            proxy_pass http://two_instances;
{proxy}
        }}
    }}
}}
"""
PROXY_DIRECTIVES = """\
            proxy_http_version 1.1;
            # Keep-alive to the instances: no "Connection: close" passed on from the client.
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout;
            proxy_read_timeout 60s;"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise SystemExit("bench/scale.py needs nginx: `make nginx` (Debian's nginx-light)")
    return found


def psql(sql: str, database: str = "muxer_bench") -> str:
    done = subprocess.run([*PSQL, "-d", database, "-Atc", sql], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


# --------------------------------------------------------------------------- PostgreSQL figures

_DB_COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched", "tup_returned")


@dataclass
class PgMark:
    lsn: str
    ours: dict[str, int]  # pg_stat_database counters of muxer_bench
    others_changed: int  # rows inserted/updated/deleted in every other database

    @classmethod
    def take(cls) -> PgMark:
        # The statistics of a backend's transactions reach pg_stat_database within a second.
        time.sleep(1.1)
        lsn = psql("select pg_current_wal_lsn()")
        cols = ", ".join(f"sum({c})" for c in _DB_COUNTERS)
        ours = psql(f"select {cols} from pg_stat_database where datname = 'muxer_bench'").split("|")
        others = psql(
            "select coalesce(sum(tup_inserted + tup_updated + tup_deleted), 0) from pg_stat_database "
            "where datname is distinct from 'muxer_bench'"
        )
        return cls(lsn, {c: int(v or 0) for c, v in zip(_DB_COUNTERS, ours, strict=True)}, int(others))


def pg_between(before: PgMark, after: PgMark, rows: int) -> dict[str, Any]:
    wal = int(psql(f"select pg_wal_lsn_diff('{after.lsn}', '{before.lsn}')::bigint"))
    deltas = {c: after.ours[c] - before.ours[c] for c in _DB_COUNTERS}
    per_row = {f"{c}_per_ledger_row": round(v / rows, 3) for c, v in deltas.items()} if rows else {}
    return {
        "ledger_rows": rows,
        "wal_bytes": wal,
        # Server-wide: other databases' writes land in the same WAL (their row changes are given next to it).
        "wal_bytes_per_ledger_row": round(wal / rows, 1) if rows else None,
        "other_databases_rows_changed": after.others_changed - before.others_changed,
        "muxer_bench": deltas,
        **per_row,
    }


def ledger_row_size(first_id: int) -> dict[str, Any]:
    """Average row size of the rows this run wrote, and the table's size per row (heap, indexes)."""
    mine = psql(
        "select count(*), coalesce(avg(pg_column_size(u.*)), 0)::int, "
        "coalesce(avg(pg_column_size(u.prompt_features)), 0)::int "
        f"from billing_usagerecord u where id > {first_id}"
    ).split("|")
    table = psql(
        "select count(*), pg_relation_size('billing_usagerecord'), pg_indexes_size('billing_usagerecord'), "
        "(select count(*) from pg_indexes where tablename = 'billing_usagerecord') from billing_usagerecord"
    ).split("|")
    count, heap, indexes, index_count = (int(v) for v in table)
    return {
        "rows_this_run": int(mine[0]),
        "row_bytes_this_run": int(mine[1]),  # pg_column_size of the whole row (tuple data + header)
        "prompt_features_bytes_this_run": int(mine[2]),
        "table_rows": count,
        "heap_bytes_per_row": round(heap / count, 1) if count else None,
        "index_bytes_per_row": round(indexes / count, 1) if count else None,
        "indexes": index_count,
    }


# --------------------------------------------------------------------------- Redis census

_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] "([^"]*)"')


class RedisMonitor:
    """Every command Redis runs on one database, from MONITOR: (time, client address or 'lua', command)."""

    def __init__(self, db: int) -> None:
        self.db = str(db).encode()
        self.entries: list[tuple[float, str, str]] = []
        self.sock = socket.create_connection((HOST, REDIS_PORT), timeout=5)
        self.sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self.stopping = False
        self.thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        self.sock.settimeout(0.2)
        while not self.stopping:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                match = _MONITOR_LINE.match(line)
                if match and match.group(2) == self.db:
                    self.entries.append(
                        (float(match.group(1)), match.group(3).decode(), match.group(4).decode().upper())
                    )

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()


def redis_client_ports(groups: dict[str, int]) -> dict[int, str]:
    """Local port of each of our processes' connections to Redis -> the process group's label."""
    sockets = tcp_sockets()
    by_group = {pgid: label for label, pgid in groups.items()}
    ports: dict[int, str] = {}
    for pid, (pgid, _comm, _cpu) in _proc_table().items():
        if pgid not in by_group:
            continue
        try:
            _fds, inodes = _socket_inodes(pid)
        except OSError:
            continue
        for inode in inodes:
            entry = sockets.get(inode)
            if entry is not None and entry[1] == REDIS_PORT:
                ports[entry[0]] = by_group[pgid]
    return ports


class PortSampler:
    """redis_client_ports() every 0.2 s while it runs: catches connections a process opens for one call only
    (the usage writer's channel-layer message to the console, after each batch)."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self.ports = redis_client_ports(groups)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="redis-ports", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            self.ports.update(redis_client_ports(self.groups))

    def stop(self) -> dict[int, str]:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.ports.update(redis_client_ports(self.groups))
        return self.ports


def redis_commandstats() -> dict[str, tuple[int, int]]:
    """Server-wide ``INFO commandstats``: command -> (calls, microseconds spent in it)."""
    with socket.create_connection((HOST, REDIS_PORT), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        reply = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            reply += chunk
            header, _, body = reply.partition(b"\r\n")
            if header.startswith(b"$") and len(body) >= int(header[1:]):
                break
    stats: dict[str, tuple[int, int]] = {}
    for match in re.finditer(rb"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", reply):
        stats[match.group(1).decode().upper()] = (int(match.group(2)), int(match.group(3)))
    return stats


def commandstats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], ours: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per command we sent: the server-wide calls and mean microseconds per call over the window, and the share
    of those calls that were ours (the rest: other users of this Redis, on other databases)."""
    out: dict[str, dict[str, float]] = {}
    for command, count in ours.items():
        calls = after.get(command, (0, 0))[0] - before.get(command, (0, 0))[0]
        usec = after.get(command, (0, 0))[1] - before.get(command, (0, 0))[1]
        if calls > 0 and count > 0:
            out[command] = {
                "calls_server_wide": calls,
                "usec_per_call": round(usec / calls, 2),
                "our_share": round(min(count / calls, 1.0), 3),
            }
    return out


def _issuer(client: str, ports: dict[int, str]) -> str:
    if client == "lua":
        return "lua"
    port = client.rsplit(":", 1)[-1]
    label = ports.get(int(port)) if port.isdigit() else None
    if label in INSTANCES:
        return "gateway"
    return label or "unattributed"


def census_counts(
    entries: list[tuple[float, str, str]], ports: dict[int, str], idle: tuple[float, float], busy: tuple[float, float]
) -> dict[str, dict[str, float]]:
    """Commands by issuer and name in the busy window, less the idle window's rate (background work)."""
    idle_counts: Counter[tuple[str, str]] = Counter()
    busy_counts: Counter[tuple[str, str]] = Counter()
    for at, client, command in entries:
        key = (_issuer(client, ports), command)
        if idle[0] <= at < idle[1]:
            idle_counts[key] += 1
        elif busy[0] <= at < busy[1]:
            busy_counts[key] += 1
    scale = (busy[1] - busy[0]) / max(idle[1] - idle[0], 1e-6)
    net: dict[str, dict[str, float]] = {}
    for issuer, command in set(idle_counts) | set(busy_counts):
        value = busy_counts[(issuer, command)] - idle_counts[(issuer, command)] * scale
        net.setdefault(issuer, {})[command] = round(value, 1)
    return net


# --------------------------------------------------------------------------- the stack


@dataclass
class Round:
    index: int
    instances: int
    result: WrkResult
    wall_s: float
    cpu_s: dict[str, float]  # CPU seconds per group during the round


class ScaleBench:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        bench_args = argparse.Namespace(
            workers=1, timeout=args.timeout, upstream_workers=args.upstream_workers, warmup=0, duration=0
        )
        self.bench = Bench(bench_args, log_dir)
        self.tmp = Path(tempfile.mkdtemp(prefix="muxer-bench-scale-"))
        self.nginx_dir = self.tmp / "nginx"
        self.env: dict[str, str] = {}
        self.instances: dict[str, Managed] = {}
        self.ports = {name: free_port() for name in INSTANCES}
        self.front_ports = {1: free_port(), 2: free_port()}
        self.nginx: Managed | None = None
        self.writer: Managed | None = None
        self.auth = ""
        self.rows_before: int | None = None
        self.first_id = 0
        self.answered = 0
        self.rounds: list[Round] = []
        self.census: dict[str, Any] = {}  # the Redis census's figures
        self.notes: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.budget_created = False

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log(f"WARNING: {message}")

    def url(self, instances: int) -> str:
        return f"http://{HOST}:{self.front_ports[instances]}{CHAT_PATH}"

    def groups(self) -> dict[str, int]:
        groups = {name: managed.pgid for name, managed in self.instances.items()}
        if self.nginx:
            groups["nginx"] = self.nginx.pgid
        if self.writer:
            groups["usage_writer"] = self.writer.pgid
        return {**groups, **self.bench.upstream_groups()}

    # -- starting

    def start(self) -> None:
        bench = self.bench
        bench.versions["wrk"] = ensure_wrk()
        nginx = nginx_binary()
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        bench.versions["nginx"] = (version.stderr or version.stdout).strip()
        log(f"server logs go to {self.log_dir.relative_to(REPO)}/")
        bench.start_upstream()
        env = bench.gateway_env()
        with contextlib.suppress(OSError):
            os.rmdir(env["PROMETHEUS_MULTIPROC_DIR"])
        # The set-up commands and the writer share one metrics directory; each instance gets its own (as a container).
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.tmp / "metrics")
        (self.tmp / "metrics").mkdir()
        env["MUXER_SHUTDOWN_DRAIN_SECONDS"] = "0.5"  # nothing routes to a stopping instance here
        self.env = env
        self.auth = f"Bearer {env['MUXER_DEMO_API_KEY']}"
        self.rows_before = bench.prepare_gateway(env)
        if self.args.limits:
            self.limits_on()
        self.first_id = int(psql("select coalesce(max(id), 0) from billing_usagerecord"))
        self.writer = bench.start_usage_writer(env)
        self.start_instances()
        self.start_nginx(nginx)
        for instances in (1, 2):
            check_chat(f"nginx -> {instances} instance(s)", self.url(instances), self.auth)
            self.answered += 1

    def start_instances(self) -> None:
        for name in INSTANCES:
            metrics_dir = self.tmp / f"metrics-{name}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir()
            env = {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            cmd = [
                str(PYTHON), "-m", "muxer_project.serve", "--host", HOST, "--port", str(self.ports[name]),
                "--workers", "1", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
                "--proxy-headers", "--forwarded-allow-ips", HOST,
                # Longer than nginx's keepalive_timeout: nginx closes an idle connection before the instance does.
                "--timeout-keep-alive", "75",
            ]  # fmt: skip
            self.instances[name] = self.bench.procs.start(name, cmd, env=env)
        for name, managed in self.instances.items():
            wait_healthy(managed, f"http://{HOST}:{self.ports[name]}/healthz", timeout=90)
            log(f"{name} up on port {self.ports[name]} (pid {managed.proc.pid})")

    def start_nginx(self, binary: str) -> None:
        self.nginx_dir.mkdir(exist_ok=True)
        for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.nginx_dir / temp).mkdir(exist_ok=True)
        config = self.nginx_dir / "nginx.conf"
        config.write_text(
            NGINX_CONF.format(
                # As root, nginx's workers would otherwise switch to "nobody", who cannot enter the temp directory.
                user="user root;" if os.geteuid() == 0 else "",
                nginx_workers=self.args.nginx_workers,
                dir=self.nginx_dir,
                port_a=self.ports["gateway_a"],
                port_b=self.ports["gateway_b"],
                port_one=self.front_ports[1],
                port_two=self.front_ports[2],
                proxy=PROXY_DIRECTIVES,
            )
        )
        shutil.copy(config, self.log_dir / "nginx.conf")
        cmd = [binary, "-p", str(self.nginx_dir), "-e", str(self.nginx_dir / "error.log"), "-c", str(config)]
        cmd += ["-g", "daemon off;"]
        self.nginx = self.bench.procs.start("nginx", cmd)
        for instances in (1, 2):
            wait_healthy(self.nginx, f"http://{HOST}:{self.front_ports[instances]}/healthz", timeout=30)
        log(f"nginx up: port {self.front_ports[1]} -> 1 instance, port {self.front_ports[2]} -> 2 instances")

    # -- load

    def wrk(self, label: str, instances: int, connections: int, threads: int, seconds: float) -> WrkResult:
        output = self.bench.wrk.run(label, self.url(instances), self.auth, connections, threads, seconds)
        result = parse_wrk(output, label, connections, threads)
        self.answered += result.requests - result.non_2xx
        return result

    def warm_up(self) -> None:
        if self.args.warmup <= 0:
            return
        for instances in (1, 2):
            log(f"warm-up {self.args.warmup:g}s through nginx -> {instances} instance(s)")
            warm = self.wrk(
                f"warmup-{instances}", instances, self.args.connections, self.args.threads, self.args.warmup
            )
            if warm.errors:
                self.warn(f"{warm.errors} errors during the warm-up with {instances} instance(s)")

    def order(self) -> list[int]:
        """1,2,2,1,1,2,...: each pair of rounds flips, so a linear drift of the box cancels over two pairs."""
        pairs = [(1, 2) if i % 2 == 0 else (2, 1) for i in range((self.args.rounds + 1) // 2)]
        return [n for pair in pairs for n in pair][: self.args.rounds]

    def run_rounds(self) -> None:
        args = self.args
        groups = self.groups()
        offsets = {m.name: m.log_path.stat().st_size for m in self.watched()}
        for index, instances in enumerate(self.order()):
            time.sleep(1)
            before = CpuSnapshot.take()
            result = self.wrk(f"{instances}-instance", instances, args.connections, args.threads, args.duration)
            after = CpuSnapshot.take()
            wall = after.at - before.at
            result.cpu_pct = cpu_breakdown(before, after, groups)
            cpu_s = {k: result.cpu_pct.get(k, 0.0) * wall / 100 for k in CPU_LABELS if k != "gateways"}
            cpu_s["gateways"] = cpu_s["gateway_a"] + cpu_s["gateway_b"]
            if result.requests:
                result.cpu_ms_per_req = round(1000.0 * result.cpu_pct["stack_cpu_s"] / result.requests, 3)
            self.rounds.append(
                Round(index, instances, result, round(wall, 3), {k: round(v, 3) for k, v in cpu_s.items()})
            )
            busy = result.cpu_pct["machine_busy_pct"]
            log(
                f"round {index + 1}/{args.rounds}, {instances} instance(s): {result.rps:,.0f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
                f"gateways {1000 * cpu_s['gateways'] / max(result.requests, 1):.3f} CPU ms/req, box {busy:.0f}% busy"
            )
        self.check_logs(offsets, "the rounds")

    def watched(self) -> list[Managed]:
        return [
            *self.instances.values(),
            *([self.writer] if self.writer else []),
            *([self.nginx] if self.nginx else []),
            *([self.bench.upstream] if self.bench.upstream else []),
        ]

    def check_logs(self, offsets: dict[str, int], during: str) -> None:
        for managed in self.watched():
            if managed.proc.poll() is not None:
                self.warn(f"{managed.name} exited during {during} (code {managed.proc.returncode})")
            count, example = scan_log(managed.log_path, offsets.get(managed.name, 0))
            if count:
                self.warn(f"{managed.name} logged {count} warning/error line(s) during {during}, e.g. {example!r}")

    # -- PostgreSQL and Redis

    def drain(self) -> dict[str, Any]:
        drained = wait_usage_drained(self.rows_before, self.answered, timeout=60)
        log(f"usage: {drained}")
        return drained

    def run_census(self, label: str) -> dict[str, Any]:
        args = self.args
        groups = self.groups()
        rows_before = usage_rows()
        answered_before = self.answered
        monitor = RedisMonitor(REDIS_DB)
        sampler = PortSampler(groups)
        try:
            idle_start = time.time()
            time.sleep(args.census_idle)
            idle_end = time.time()
            stats_before = redis_commandstats()
            cpu_before = CpuSnapshot.take()
            result = self.wrk(f"census-{label}", 2, args.census_connections, 1, args.census_seconds)
            # The writer's last batch, and its next (empty) poll, belong to the load too.
            drained = wait_usage_drained(rows_before, self.answered - answered_before, timeout=30)
            time.sleep(1.5)
            busy_end = time.time()
            cpu_after = CpuSnapshot.take()
            stats_after = redis_commandstats()
        finally:
            ports = sampler.stop()
            monitor.stop()
        requests = result.requests - result.non_2xx
        if requests <= 0:
            raise BenchError(f"the Redis census ({label}) got no answered request")
        net = census_counts(monitor.entries, ports, (idle_start, idle_end), (idle_end, busy_end))
        per_request = {
            issuer: {cmd: round(n / requests, 3) for cmd, n in sorted(cmds.items()) if abs(n / requests) >= 0.0005}
            for issuer, cmds in sorted(net.items())
        }
        client_issuers = [i for i in net if i != "lua"]
        cpu_pct = cpu_breakdown(cpu_before, cpu_after, groups)
        wall = cpu_after.at - cpu_before.at
        cpu_ms = {
            k: round(10 * cpu_pct.get(k, 0.0) * wall / requests, 4)
            for k in ("gateway_a", "gateway_b", "nginx", "upstream", "usage_writer", "postgres", "redis")
        }
        cpu_ms["gateways"] = round(cpu_ms["gateway_a"] + cpu_ms["gateway_b"], 4)
        ours: Counter[str] = Counter()
        for commands in net.values():
            ours.update({cmd: n for cmd, n in commands.items() if n > 0})
        writer_batches = net.get("usage_writer", {}).get("XACK", 0.0)
        census = {
            "requests": requests,
            "errors": result.errors,
            "rps": result.rps,
            "connections": args.census_connections,
            "seconds": args.census_seconds,
            "idle_window_s": round(idle_end - idle_start, 2),
            "busy_window_s": round(busy_end - idle_end, 2),
            "usage": drained,
            # Round trips: the commands clients sent (a MULTI ... EXEC pipeline's commands each count).
            "client_commands_per_request": round(sum(sum(net[i].values()) for i in client_issuers) / requests, 3),
            "gateway_commands_per_request": round(sum(net.get("gateway", {}).values()) / requests, 3),
            "writer_commands_per_request": round(sum(net.get("usage_writer", {}).values()) / requests, 3),
            "lua_commands_per_request": round(sum(net.get("lua", {}).values()) / requests, 3),
            "writer_batches": round(writer_batches, 1),
            "rows_per_writer_batch": round(requests / writer_batches, 1) if writer_batches else None,
            "writer_commands_per_batch": (
                round(sum(net.get("usage_writer", {}).values()) / writer_batches, 1) if writer_batches else None
            ),
            "per_request": per_request,
            # CPU per request over the busy window (load, then the writer's last batch). Redis's is inflated by
            # MONITOR itself (Redis formats every command for it) and includes other users of this Redis.
            "cpu_ms_per_request": cpu_ms,
            "cpu_pct": cpu_pct,
            # Inflated by MONITOR too: notes["redis_commandstats_during_rounds"] has the figures without it.
            "redis_commandstats": commandstats_delta(stats_before, stats_after, dict(ours)),
        }
        log(
            f"census ({label}): {census['client_commands_per_request']} client commands per request "
            f"(gateway {census['gateway_commands_per_request']}, writer {census['writer_commands_per_request']}), "
            f"{census['lua_commands_per_request']} inside scripts"
        )
        return census

    def limits_on(self) -> None:
        """The demo key's rate limits on (never reached) and an organization budget (never exhausted)."""
        run_step(
            "demo_setup with rate limits",
            [str(PYTHON), "manage.py", "demo_setup", "--rpm", str(CENSUS_RPM), "--tpm", str(CENSUS_TPM)],
            env=self.env,
        )
        self.budget_created = True
        run_step("census budget", [str(PYTHON), "manage.py", "shell", "-c", _budget_code(create=True)], env=self.env)

    def limits_off(self) -> None:
        if not self.budget_created:
            return
        try:
            run_step("remove census budget", [str(PYTHON), "manage.py", "shell", "-c", _budget_code(create=False)],
                     env=self.env)  # fmt: skip
            run_step("demo_setup", [str(PYTHON), "manage.py", "demo_setup", "--rpm", "0", "--tpm", "0"], env=self.env)
            self.budget_created = False
        except BenchError as exc:
            self.warn(f"could not restore the demo organization: {exc}")

    # -- the whole run

    def run(self) -> None:
        self.start()
        self.warm_up()
        pg_before = PgMark.take()
        rows_at_start = usage_rows() or 0
        stats_before = redis_commandstats()
        self.run_rounds()
        stats_after = redis_commandstats()
        self.notes["usage_after_rounds"] = self.drain()
        pg_after = PgMark.take()
        rows_written = (usage_rows() or 0) - rows_at_start
        self.notes["postgres_during_rounds"] = pg_between(pg_before, pg_after, rows_written)
        self.notes["ledger_row_size"] = ledger_row_size(self.first_id)
        if self.args.census_seconds > 0:
            self.census = self.run_census("rate limits and a budget on" if self.args.limits else "no limits")
            # Redis's cost per command without MONITOR, over the rounds; "our_share" counts the rounds' requests
            # times the census's commands per request.
            requests = sum(r.result.requests for r in self.rounds)
            ours: Counter[str] = Counter()
            for commands in self.census["per_request"].values():
                ours.update({cmd: n * requests for cmd, n in commands.items() if n > 0})
            self.notes["redis_commandstats_during_rounds"] = commandstats_delta(stats_before, stats_after, dict(ours))
        self.notes["usage_at_end"] = self.drain()

    def stop(self) -> None:
        self.bench.wrk.kill()
        self.bench.procs.stop_all()
        self.limits_off()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _budget_code(*, create: bool) -> str:
    remove = f"Budget.objects.filter(organization__slug='demo', name={CENSUS_BUDGET_NAME!r}).delete()"
    lines = ["from decimal import Decimal", "from billing.models import Budget", remove]
    if create:
        lines += [
            "from accounts.models import Organization",
            "Budget.objects.create(organization=Organization.objects.get(slug='demo'), "
            f"name={CENSUS_BUDGET_NAME!r}, scope='organization', period='monthly', "
            "limit_usd=Decimal('1000000000'), hard_limit=True, alert_thresholds=[])",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def summarise(rounds: list[Round], instances: int) -> dict[str, Any]:
    mine = [r for r in rounds if r.instances == instances]
    if not mine:
        return {}
    requests = sum(r.result.requests for r in mine)
    seconds = sum(r.result.duration_s for r in mine)
    wall = sum(r.wall_s for r in mine)
    cpus = os.cpu_count() or 1
    cpu_s = {k: sum(r.cpu_s.get(k, 0.0) for r in mine) for k in CPU_LABELS}
    box_s = sum(r.result.cpu_pct.get("machine_busy_pct", 0.0) / 100 * cpus * r.wall_s for r in mine)
    stack_s = sum(r.result.cpu_pct.get("stack_cpu_s", 0.0) for r in mine)
    return {
        "rounds": len(mine),
        "requests": requests,
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "rps_by_round": [r.result.rps for r in mine],
        "p50_ms": round(statistics.mean(r.result.p50_ms for r in mine), 3),
        "p99_ms": round(statistics.mean(r.result.p99_ms for r in mine), 3),
        "p99_ms_by_round": [r.result.p99_ms for r in mine],
        "errors": sum(r.result.errors for r in mine),
        "cpu_s": {k: round(v, 2) for k, v in cpu_s.items()},
        "cpu_cores": {k: round(v / wall, 3) for k, v in cpu_s.items()},
        "cpu_ms_per_request": {k: round(1000 * v / requests, 4) for k, v in cpu_s.items()} if requests else {},
        "stack_cpu_ms_per_request": round(1000 * stack_s / requests, 4) if requests else None,
        "box_busy_cores": round(box_s / wall, 3),
        "box_cpu_ms_per_request": round(1000 * box_s / requests, 4) if requests else None,
        "not_ours_cores": round(statistics.mean(r.result.cpu_pct.get("not_ours", 0.0) for r in mine) / 100, 3),
        # What the box could serve if every core did this run's mix of work and nothing else.
        "box_bound_rps": round(cpus * 1000 / (1000 * box_s / requests), 0) if requests and box_s else None,
    }


def ratios(rounds: list[Round], one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    if not one or not two:
        return {}
    pairs = []
    ones = [r for r in rounds if r.instances == 1]
    twos = [r for r in rounds if r.instances == 2]
    for a, b in zip(ones, twos, strict=False):
        pairs.append(round(b.result.rps / a.result.rps, 3) if a.result.rps else None)
    gw1, gw2 = one["cpu_ms_per_request"]["gateways"], two["cpu_ms_per_request"]["gateways"]
    return {
        "throughput_2_vs_1": round(two["rps"] / one["rps"], 3) if one["rps"] else None,
        "throughput_2_vs_1_by_pair": pairs,
        "p99_2_vs_1": round(two["p99_ms"] / one["p99_ms"], 3) if one["p99_ms"] else None,
        "p50_2_vs_1": round(two["p50_ms"] / one["p50_ms"], 3) if one["p50_ms"] else None,
        "gateway_cpu_ms_per_request_2_vs_1": round(gw2 / gw1, 3) if gw1 else None,
        "box_busy_cores_1_2": [one["box_busy_cores"], two["box_busy_cores"]],
    }


_SHOWN_STATS = {"EVAL", "XADD", "HGET", "HINCRBY", "GET", "SET", "XACK", "XREADGROUP"}


def print_report(scale: ScaleBench, summary: dict[int, dict[str, Any]], ratio: dict[str, Any]) -> None:
    args = scale.args
    cpus = os.cpu_count()
    print()
    print(
        f"ModelMuxer scale-out{' (rate limits and a budget on)' if args.limits else ''}: nginx -> 1 or 2 gateway "
        f"instances (1 worker each), {args.connections} connections, "
        f"{args.threads} wrk threads, {args.rounds} rounds of {args.duration:g}s "
        f"({', '.join(map(str, scale.order()))}), {cpus} CPUs"
    )
    header = f"{'round':>5} {'inst':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  CPU % of one core"
    print(header)
    print("-" * 110)
    for r in scale.rounds:
        pct = r.result.cpu_pct
        cpu = " ".join(
            f"{k.removeprefix('gateway_')}:{pct.get(k, 0):.0f}"
            for k in ("gateway_a", "gateway_b", "nginx", "upstream", "usage_writer", "postgres", "redis", "wrk")
        )
        noisy = " NOISY" if pct.get("not_ours", 0) >= NOISY_CPU_PCT else ""
        print(
            f"{r.index + 1:>5} {r.instances:>4} {r.result.rps:>9,.0f} {r.result.p50_ms:>8.2f} {r.result.p99_ms:>8.2f} "
            f"{r.result.errors:>6}  {cpu} | not ours:{pct.get('not_ours', 0):.0f} "
            f"box:{pct.get('machine_busy_pct', 0):.0f}%{noisy}"
        )
    print()
    print(f"{'per configuration':<28} {'1 instance':>12} {'2 instances':>12}")
    one, two = summary.get(1, {}), summary.get(2, {})

    def row(name: str, get: Any, fmt: str = "{:,.1f}") -> None:
        values = [get(s) if s else None for s in (one, two)]
        cells = [fmt.format(v) if v is not None else "n/a" for v in values]
        print(f"{name:<28} {cells[0]:>12} {cells[1]:>12}")

    row("req/s", lambda s: s["rps"])
    row("p50 ms (mean of rounds)", lambda s: s["p50_ms"], "{:.2f}")
    row("p99 ms (mean of rounds)", lambda s: s["p99_ms"], "{:.2f}")
    row("errors", lambda s: s["errors"], "{:d}")
    print("CPU ms per request:")
    for label in ("gateways", "nginx", "upstream", "usage_writer", "postgres", "redis", "wrk"):
        row(f"  {label}", lambda s, k=label: s["cpu_ms_per_request"].get(k), "{:.3f}")
    row("  whole box", lambda s: s["box_cpu_ms_per_request"], "{:.3f}")
    print("CPU in cores (average):")
    for label in ("gateway_a", "gateway_b", "nginx", "upstream", "usage_writer", "postgres", "redis", "wrk"):
        row(f"  {label}", lambda s, k=label: s["cpu_cores"].get(k), "{:.2f}")
    row("  box busy", lambda s: s["box_busy_cores"], "{:.2f}")
    row("  not ours", lambda s: s["not_ours_cores"], "{:.2f}")
    if ratio:
        print()
        print(
            f"2 vs 1 instance: throughput x{ratio['throughput_2_vs_1']:.2f} "
            f"(by pair: {', '.join(f'{p:.2f}' for p in ratio['throughput_2_vs_1_by_pair'] if p)}), "
            f"p99 x{ratio['p99_2_vs_1']:.2f}, p50 x{ratio['p50_2_vs_1']:.2f}, "
            f"gateway CPU ms/request x{ratio['gateway_cpu_ms_per_request_2_vs_1']:.2f}"
        )
    pg = scale.notes.get("postgres_during_rounds")
    size = scale.notes.get("ledger_row_size")
    if pg and size:
        print()
        print(
            f"Ledger: {size['row_bytes_this_run']} bytes per row (pg_column_size, this run's rows); table "
            f"{size['heap_bytes_per_row']} heap + {size['index_bytes_per_row']} index bytes per row "
            f"({size['indexes']} indexes)"
        )
        print(
            f"PostgreSQL during the rounds: {pg['ledger_rows']} ledger rows, WAL {pg['wal_bytes_per_ledger_row']} "
            f"bytes per row (server-wide; other databases changed {pg['other_databases_rows_changed']} rows), "
            f"{pg.get('xact_commit_per_ledger_row')} commits per row"
        )
    census = scale.census
    if census:
        print()
        print(
            f"Redis census ({'limits on' if args.limits else 'no limits'}): {census['requests']} requests at "
            f"{census['rps']:,.0f} req/s, "
            f"{census['client_commands_per_request']} client commands per request (gateway "
            f"{census['gateway_commands_per_request']}, usage writer {census['writer_commands_per_request']}, "
            f"{census['rows_per_writer_batch']} rows per writer batch), {census['lua_commands_per_request']} "
            "run inside scripts"
        )
        for issuer, commands in census["per_request"].items():
            listed = ", ".join(f"{cmd} {n:g}" for cmd, n in commands.items())
            print(f"  {issuer:<13} {listed}")
        cpu = census["cpu_ms_per_request"]
        shown = ("gateways", "usage_writer", "postgres", "redis")
        print("  CPU ms/request: " + ", ".join(f"{k} {cpu[k]:.3f}" for k in shown))
        stats = scale.notes.get("redis_commandstats_during_rounds", {})
        print(
            "  Redis usec/call during the rounds (server-wide, our share): "
            + ", ".join(
                f"{cmd} {v['usec_per_call']:g} ({100 * v['our_share']:.0f}%)"
                for cmd, v in sorted(stats.items())
                if cmd in _SHOWN_STATS
            )
        )
    for key in ("usage_after_rounds", "usage_at_end"):
        usage = scale.notes.get(key)
        if usage and "usage_caught_up" in usage:
            verdict = "caught up" if usage["usage_caught_up"] else "DID NOT catch up"
            print(
                f"\nUsage writer ({key.replace('_', ' ')}): {usage['usage_rows_written']} rows for "
                f"{usage['usage_requests_answered']} answered requests; {verdict}"
            )
    for message in scale.warnings:
        print(f"\nWARNING: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds, alternating 1,2,2,1,... (default 4)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per round (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per configuration (default 3)")
    parser.add_argument("--timeout", type=float, default=10, help="wrk per-request timeout in seconds (default 10)")
    parser.add_argument("--upstream-workers", type=int, default=1, help="fake upstream worker processes (default 1)")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    parser.add_argument(
        "--limits",
        action="store_true",
        help="the demo key's rate limits and an organization budget on (never reached), as in production",
    )
    parser.add_argument(
        "--census-seconds", type=float, default=4, help="seconds of load per Redis census pass; 0 skips the census"
    )
    parser.add_argument("--census-connections", type=int, default=8, help="wrk connections during the census")
    parser.add_argument("--census-idle", type=float, default=3, help="seconds of idle MONITOR before each census")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.duration <= 0 or args.connections < 1:
        parser.error("--rounds must be >= 2, --duration > 0 and --connections >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _lock = hold_bench_lock()  # held until the process exits
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / f"scale-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    scale = ScaleBench(args, log_dir)
    failure = run_guarded(scale)
    summary = {n: summarise(scale.rounds, n) for n in (1, 2)}
    ratio = ratios(scale.rounds, summary[1], summary[2])
    if scale.rounds:
        print_report(scale, summary, ratio)
    if failure:
        print(f"\nFAILED: {failure}")
    report = {
        "timestamp": stamp,
        "command": shlex.join([sys.executable, *sys.argv]),
        "config": {**vars(args), "order": scale.order(), "request_body": json.loads(CHAT_BODY)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": {**scale.bench.versions, "git_head": git_head()},
        "summary": {f"{n}_instance{'s' if n > 1 else ''}": s for n, s in summary.items()},
        "ratios": ratio,
        "rounds": [
            {**asdict(r.result), "round": r.index + 1, "instances": r.instances, "wall_s": r.wall_s, "cpu_s": r.cpu_s}
            for r in scale.rounds
        ],
        "redis_census": scale.census,
        "notes": scale.notes,
        "warnings": scale.warnings,
        "failure": failure,
        "logs": str(log_dir.relative_to(REPO)),
    }
    out = RESULTS_DIR / f"scale-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport written to {out.relative_to(REPO)}")
    if failure == "interrupted":
        return 130
    errors = any(r.result.errors for r in scale.rounds)
    return 1 if failure or errors else 0


if __name__ == "__main__":
    sys.exit(main())
