"""The azureblob backend: <prefix>/<name>.json per spec in a container, locked by a lease on <prefix>/<name>.lock."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.backends.azure_client import code_of, errors, service_client
from pipeline.backends.base import Holder, LockInfo
from pipeline.backends.lease import BlobLock
from pipeline.errors import StateConflict, StateError, StateLocked, UsageError

SCHEME = "azureblob"
LEASE_DEFAULT = 60
LEASE_MIN, LEASE_MAX = 15, 60  # what Azure allows for a finite lease
ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
CONTAINER = re.compile(r"(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*")
FORMAT = "azureblob://<account>/<container>/<prefix>"


def parse(url: str) -> tuple[str, str, str, int | None]:
    """(account, container, prefix, lease_seconds or None) of a state URL; UsageError naming what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SCHEME or not parts.netloc:
        raise UsageError(f"state URL {url!r} is not {FORMAT}")
    account = parts.netloc
    container, _, prefix = parts.path.lstrip("/").partition("/")
    if not ACCOUNT.fullmatch(account):
        raise UsageError(f"state URL {url!r}: storage account {account!r} must be 3-24 lowercase letters and digits")
    if not CONTAINER.fullmatch(container):
        raise UsageError(
            f"state URL {url!r}: container {container!r} must be 3-63 lowercase letters, digits and "
            f"single '-' between them ({FORMAT})"
        )
    prefix = prefix.strip("/")
    if "//" in prefix or "\\" in prefix or any(p in (".", "..") for p in prefix.split("/")) or parts.fragment:
        raise UsageError(f"state URL {url!r}: the prefix must be folder names separated by single '/'")
    lease: int | None = None
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key != "lease_seconds":
            what = "a credential" if key in ("sig", "sv", "se", "sp", "skoid") else f"unknown parameter {key!r}"
            raise UsageError(
                f"state URL {url!r}: {what}; the only parameter is lease_seconds, and credentials come "
                f"from the environment (AZURE_STORAGE_CONNECTION_STRING, else DefaultAzureCredential)"
            )
        if not value.isdigit() or not LEASE_MIN <= int(value) <= LEASE_MAX:
            raise UsageError(f"state URL {url!r}: lease_seconds must be {LEASE_MIN}-{LEASE_MAX}, got {value!r}")
        lease = int(value)
    return account, container, prefix, lease


class AzureBlobBackend:
    scheme = SCHEME

    def __init__(
        self,
        account: str,
        container: str,
        prefix: str = "",
        *,
        lease_seconds: int = LEASE_DEFAULT,
        environ: Mapping[str, str] | None = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.account, self.container, self.prefix = account, container, prefix
        self.lease_seconds = lease_seconds
        env = dict(os.environ if environ is None else environ)
        self._factory = client_factory or (lambda: service_client(account, env))
        self._client: Any = None
        query = "" if lease_seconds == LEASE_DEFAULT else f"?lease_seconds={lease_seconds}"
        self.url = f"{SCHEME}://{account}/{container}" + (f"/{prefix}" if prefix else "") + query

    @classmethod
    def from_url(
        cls, url: str, *, lease_seconds: int | None = None, environ: Mapping[str, str] | None = None
    ) -> AzureBlobBackend:
        account, container, prefix, in_url = parse(url)
        return cls(account, container, prefix, lease_seconds=in_url or lease_seconds or LEASE_DEFAULT, environ=environ)

    # -- addresses -------------------------------------------------------------------------------
    def blob_name(self, name: str, suffix: str) -> str:
        return f"{self.prefix}/{name}{suffix}" if self.prefix else f"{name}{suffix}"

    def where(self, name: str, suffix: str = ".json") -> str:
        return f"{SCHEME}://{self.account}/{self.container}/{self.blob_name(name, suffix)}"

    def _blob(self, name: str, suffix: str, client: Any = None) -> Any:
        return (client or self._service()).get_blob_client(self.container, self.blob_name(name, suffix))

    def _service(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def _with_container(self, action: Callable[[], Any]) -> Any:
        """Run `action`; if the container does not exist yet, create it once and run it again."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            return action()
        except ResourceNotFoundError as exc:
            if code_of(exc) != "ContainerNotFound":
                raise
        with errors("create the container for", self.url):
            try:
                self._service().create_container(self.container)
            except ResourceExistsError:  # another runner created it meanwhile
                pass
        return action()

    # -- the document ----------------------------------------------------------------------------
    def read(self, name: str) -> tuple[bytes | None, str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        with errors("read", self.where(name)):
            try:
                download = self._blob(name, ".json").download_blob()
            except ResourceNotFoundError:  # no blob yet, or not even the container
                return None, None
            return download.readall(), download.properties.etag

    def write(self, name: str, data: bytes, etag: str | None, lock: Any = None) -> str:
        """If-Match the ETag read (If-None-Match * for a first write), and only while our lease is alive."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        if lock is None:
            raise StateError(f"{self.where(name)} is written only under its lock (a bug: a write without it)")
        lock.check()
        blob = self._blob(name, ".json")
        condition: dict[str, Any] = (
            {"match_condition": MatchConditions.IfMissing}
            if etag is None
            else {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        )

        def upload() -> Any:
            return blob.upload_blob(
                data, overwrite=True, **condition, content_settings=ContentSettings(content_type="application/json")
            )

        with errors("write", self.where(name)):
            try:
                return str(self._with_container(upload)["etag"])
            except ResourceExistsError:
                raise StateConflict(
                    f"{self.where(name)} was created by another writer since it was read; nothing was saved"
                ) from None

    # -- the lock --------------------------------------------------------------------------------
    def try_lock(self, name: str, holder: Holder) -> BlobLock:
        """Name ourselves in the lock blob (possible only while nobody holds its lease), take the lease, then
        name ourselves again under it: a waiter reading the blob never finds a held lock that names nobody."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        where = self.where(name, ".lock")
        client = self._factory()  # the renewal thread gets a connection pool of its own
        blob = self._blob(name, ".lock", client)
        me = json.dumps(holder.to_dict()).encode()

        def refused() -> StateLocked:
            other = _holder_of(blob)
            # our own claim may still be there: the winner names itself right after it takes the lease
            for _ in range(20):
                if other is None or other.to_dict() != holder.to_dict():
                    break
                time.sleep(0.05)
                other = _holder_of(blob)
            if other is not None and other.to_dict() == holder.to_dict():
                other = None
            who = other.describe() if other else "unknown holder"
            return StateLocked(
                f"{name} is locked by another run ({who}) in {self.url}; wait for it to finish, "
                f"or wait for it with --lock-timeout 5m",
                other,
            )

        def claim() -> bool:
            try:
                blob.upload_blob(me, overwrite=True)
            except HttpResponseError as exc:
                if code_of(exc) == "LeaseIdMissing":  # leased: someone holds it
                    return False
                raise
            return True

        with errors("lock", where):
            if not self._with_container(claim):
                raise refused()
            try:
                lease = blob.acquire_lease(lease_duration=self.lease_seconds)
            except ResourceExistsError:  # taken between our claim and our lease
                raise refused() from None
            try:
                blob.upload_blob(me, overwrite=True, lease=lease)
            except BaseException:
                lease.release()
                raise

        def clear(lease: Any) -> None:  # a released lock names nobody
            blob.upload_blob(b"", overwrite=True, lease=lease)

        return BlobLock(lease, holder, seconds=self.lease_seconds, where=where, on_release=clear)

    def inspect(self, name: str) -> LockInfo:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(name, ".lock")
        with errors("read the lock", self.where(name, ".lock")):
            try:
                props = blob.get_blob_properties()
            except ResourceNotFoundError:
                return LockInfo(False, None, "not locked")
            holder = _holder_of(blob)
        lease = props.lease
        if lease.status == "locked":
            who = holder.describe() if holder else "unknown holder"
            return LockInfo(True, holder, f"locked by {who} (a {self.lease_seconds} s lease, renewed while it runs)")
        if holder and lease.state == "expired":
            return LockInfo(
                False,
                holder,
                f"not locked (the last holder, {holder.describe()}, never released it: its lease expired)",
            )
        if holder and lease.state == "broken":
            return LockInfo(False, holder, f"not locked (the lease of {holder.describe()} was broken)")
        return LockInfo(False, None, "not locked")

    def force_unlock(self, name: str) -> Holder | None:
        from azure.storage.blob import BlobLeaseClient

        info = self.inspect(name)
        if not info.locked:
            return None
        with errors("break the lock", self.where(name, ".lock")):
            BlobLeaseClient(self._blob(name, ".lock")).break_lease(lease_break_period=0)
        return info.holder or Holder("unknown", 0, "unknown", 0.0)


def open_backend(url: str, lease_seconds: int | None, home: Any, environ: Mapping[str, str]) -> AzureBlobBackend:
    return AzureBlobBackend.from_url(url, lease_seconds=lease_seconds, environ=environ)


def _holder_of(blob: Any) -> Holder | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        raw = blob.download_blob().readall()
    except ResourceNotFoundError:
        return None
    try:
        return Holder.from_dict(json.loads(raw or b"null"))
    except ValueError:
        return None
