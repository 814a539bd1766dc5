"""A service's auth keys, in one layout for every target: service_dir/keys.json, mode 0600, never printed."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pipeline.errors import TargetError
from pipeline.files import atomic_write

KEYS_FILE = "keys.json"


def write(service_dir: Path, primary: str, secondary: str | None) -> Path:
    """Store the keys (generated here, or fetched from the cloud) for the smoke test and `status --show-keys`."""
    path = service_dir / KEYS_FILE
    atomic_write(path, json.dumps({"primary": primary, "secondary": secondary}).encode(), mode=0o600)
    return path


def read_primary(service_dir: Path) -> str:
    path = service_dir / KEYS_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["primary"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TargetError(
            f"cannot read the service key in {path} ({type(exc).__name__}); deploy again to fetch it"
        ) from None


def read(service_dir: Path) -> dict[str, str]:
    """Both keys for `status --show-keys`, or {} when there are none (or the file is unreadable)."""
    try:
        data = json.loads((service_dir / KEYS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and v} if isinstance(data, dict) else {}


def remove(service_dir: Path) -> None:
    (service_dir / KEYS_FILE).unlink(missing_ok=True)


def ensure(service_dir: Path, auth: bool) -> Path | None:
    """Keys for a service we host: kept across redeploys while auth stays on (clients keep working)."""
    if not auth:
        remove(service_dir)
        return None
    path = service_dir / KEYS_FILE
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("primary") and data.get("secondary"):
            return path
    except (OSError, ValueError):
        pass
    return write(service_dir, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
