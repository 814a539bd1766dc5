"""Azurite, the real Azure Storage emulator, started for the tests on 127.0.0.1 and an ephemeral port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# where .ci/run installs it: npm install --prefix ~/.cache/pipeline-azurite azurite
AZURITE_DIR = Path(os.environ.get("PIPELINE_AZURITE_DIR") or Path.home() / ".cache" / "pipeline-azurite")
ACCOUNT = "devstoreaccount1"
# Azurite's published development key: the same on every machine, a secret nowhere
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LISTENING = re.compile(rb"listens on http://127\.0\.0\.1:(\d+)")


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )


def missing() -> str | None:
    """Why Azurite cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed: the azureblob backend is tested against Azurite, an npm package"
    if not (AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob").exists():
        return f"Azurite is not installed: npm install --prefix {AZURITE_DIR} azurite (.ci/run does it)"
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError:
        return "azure-storage-blob is not installed: pip install -e '.[azureblob]'"
    return None


def start(folder: Path, timeout: float = 30.0) -> Azurite:
    """Start azurite-blob on 127.0.0.1, port 0 (the kernel picks one; Azurite prints which), telemetry off."""
    log = folder / "azurite.log"
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                str(folder / "data"),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_bytes())
        if found:
            return Azurite(process, int(found.group(1)), log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"Azurite did not start: {log.read_text(errors='replace')[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """By its PID (its own process group): SIGTERM, then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
