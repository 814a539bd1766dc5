"""The Azure Storage client of the azureblob backend: credentials from the environment only, errors as StateError."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.errors import StateConflict, StateError, UsageError

EXTRA_HINT = "pip install '.[azureblob]'"
NO_CREDENTIALS = (
    "set AZURE_STORAGE_CONNECTION_STRING, or sign in for DefaultAzureCredential (az login; "
    "AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID; or a managed identity)"
)


def service_client(account: str, environ: Mapping[str, str], credential: Any = None) -> Any:
    """A BlobServiceClient for `account`: AZURE_STORAGE_CONNECTION_STRING, else `credential` (default:
    DefaultAzureCredential). Nothing in the spec or the URL is a credential; building sends nothing yet."""
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise UsageError(f"the azureblob state backend needs azure-storage-blob: {EXTRA_HINT}") from None
    # azure-identity logs every credential it tried, at each try: the one-line reason in our error says enough
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    options: dict[str, Any] = {"retry_policy": _retry_policy(), "connection_timeout": 10, "read_timeout": 30}
    connection = environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        try:
            client = BlobServiceClient.from_connection_string(connection, **options)
        except ValueError as exc:
            raise StateError(f"AZURE_STORAGE_CONNECTION_STRING is not a storage connection string ({exc})") from None
        if client.account_name != account:
            raise StateError(
                f"AZURE_STORAGE_CONNECTION_STRING is for storage account {client.account_name!r}, "
                f"but the state URL names {account!r}"
            )
        return client
    if credential is None:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise UsageError(
                f"the azureblob state backend needs azure-identity without "
                f"AZURE_STORAGE_CONNECTION_STRING: {EXTRA_HINT}"
            ) from None
        credential = DefaultAzureCredential()
    return BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=credential, **options)


def _retry_policy() -> Any:
    """Three tries 2 s apart, none for a missing credential. The SDK's default waits 15 s, then 18 and 24, and
    retries failed sign-ins too: over a minute before an unreachable backend or an absent login is named."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.storage.blob import LinearRetry

    class Retry(LinearRetry):
        def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
            if isinstance(error, ClientAuthenticationError):
                return False
            return bool(super().increment(settings, request, response, error))

    return Retry(backoff=2, random_jitter_range=1, retry_total=3)


def code_of(exc: BaseException) -> str:
    """The storage error code (`LeaseAlreadyPresent`, `ConditionNotMet`, ...) of an SDK error, or ''."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


@contextlib.contextmanager
def errors(what: str, where: str) -> Iterator[None]:
    """Turn the SDK's exceptions into one-line StateErrors naming what was being done, and where."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceModifiedError,
        ServiceRequestError,
    )

    try:
        yield
    except ResourceModifiedError:
        raise StateConflict(
            f"{where} was changed by another writer since it was read (its ETag moved); nothing was saved"
        ) from None
    except ClientAuthenticationError as exc:
        if isinstance(exc, HttpResponseError) and exc.status_code:
            raise StateError(
                f"not allowed to {what} {where}: HTTP {exc.status_code} {code_of(exc)}".rstrip()
                + " (the identity needs the Storage Blob Data Contributor role)"
            ) from None
        raise StateError(f"no Azure credentials to {what} {where}: {NO_CREDENTIALS} ({_first_line(exc)})") from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise StateError(
                f"not allowed to {what} {where}: HTTP 403 {code_of(exc)} (the identity needs the "
                f"Storage Blob Data Contributor role on the container)"
            ) from None
        raise StateError(f"cannot {what} {where}: HTTP {exc.status_code} {code_of(exc) or _first_line(exc)}") from None
    except ServiceRequestError as exc:
        raise StateError(f"cannot reach the state backend to {what} {where}: {_reason(exc)}") from None
    except AzureError as exc:
        raise StateError(f"cannot {what} {where}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    text = _first_line(exc)
    # urllib3 buries the cause: "...: Failed to establish a new connection: [Errno 111] Connection refused"
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") if "Failed to establish" in text else text
