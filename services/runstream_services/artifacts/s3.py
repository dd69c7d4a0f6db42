"""Artifact bytes in an S3 bucket (MinIO or any S3), content-addressed per project:
`<project>/sha256/ab/<digest>` (legacy objects, from before per-project keys: `sha256/ab/<digest>`,
read only through `open(..., legacy=True)`; base.py says when).

Nothing reaches the final key before its digest was checked:
- through the server (`put`), the bytes are hashed into a spooled temporary file first and
  uploaded only when digest and size match;
- straight from the SDK (`presigned_put_url`), the bytes land under a staging key
  `incoming/<project>/<digest>` and `finish_upload` checks them before a server-side copy to the
  final key.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import BinaryIO

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.error import MinioException, S3Error

from runstream_services.artifacts.base import check_received, checked_digest, checked_project
from runstream_services.config import ServerSettings
from runstream_services.errors import ConfigError, InvalidArgument, NotFound, Unavailable

_SPOOL_IN_MEMORY_BYTES = 16 << 20
_MAX_SINGLE_COPY_BYTES = 5 << 30  # S3 CopyObject limit; larger objects are copied part by part
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})


def object_key(project: str, sha256: str) -> str:
    """The final key of a project's bytes with this digest."""
    digest = checked_digest(sha256)
    return f"{checked_project(project)}/sha256/{digest[:2]}/{digest}"


def legacy_object_key(sha256: str) -> str:
    """Where bytes were stored before keys were per project."""
    digest = checked_digest(sha256)
    return f"sha256/{digest[:2]}/{digest}"


def staging_key(project: str, sha256: str) -> str:
    """Where a direct (presigned) upload lands before `finish_upload` checks it."""
    return f"incoming/{checked_project(project)}/{checked_digest(sha256)}"


class S3ArtifactStore:
    """ArtifactStore on an S3 bucket (cluster mode)."""

    kind = "s3"

    def __init__(self, settings: ServerSettings, *, client: Minio | None = None):
        if not settings.s3_endpoint:
            raise ConfigError("artifact_store=s3 needs s3_endpoint / RUNSTREAM_S3_ENDPOINT (host:port)")
        self.endpoint = settings.s3_endpoint
        self.bucket = settings.s3_bucket
        self.client = client or Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=settings.s3_secure,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=120),
                maxsize=16,
                retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            ),
        )
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and self.client.bucket_exists(
                self.bucket
            ):
                return
            if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"S3 at {self.endpoint} refused the credentials for bucket {self.bucket!r} ({exc.code}): "
                    "check s3_access_key / s3_secret_key"
                ) from exc
            raise Unavailable(f"cannot create S3 bucket {self.bucket!r} at {self.endpoint}: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"cannot reach S3 at {self.endpoint}: {exc}") from exc

    def uri_for(self, project: str, sha256: str) -> str:
        return f"s3://{self.bucket}/{object_key(project, sha256)}"

    def _stat(self, key: str):
        try:
            return self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise Unavailable(f"S3 stat of {key} failed: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"cannot reach S3 at {self.endpoint}: {exc}") from exc

    def exists(self, project: str, sha256: str) -> bool:
        return self._stat(object_key(project, sha256)) is not None

    def put(self, project: str, sha256: str, data: BinaryIO, size: int) -> tuple[str, bool]:
        digest = checked_digest(sha256)
        key = object_key(project, digest)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
            hasher = hashlib.sha256()
            written = 0
            while chunk := data.read(1 << 20):
                written += len(chunk)
                if written > size:
                    raise InvalidArgument(f"artifact {digest}: more than the declared {size} bytes arrived")
                hasher.update(chunk)
                spool.write(chunk)
            check_received(digest, size, written, hasher.hexdigest())
            if self.exists(project, digest):
                return self.uri_for(project, digest), True
            spool.seek(0)
            try:
                self.client.put_object(self.bucket, key, spool, length=size)
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise Unavailable(f"S3 upload of artifact {digest} to {self.endpoint} failed: {exc}") from exc
        return self.uri_for(project, digest), False

    def open(
        self, project: str, sha256: str, chunk_size: int = 1 << 20, *, legacy: bool = False
    ) -> Iterator[bytes]:
        key = object_key(project, sha256)
        if legacy and self._stat(key) is None and self._stat(legacy_object_key(sha256)) is not None:
            key = legacy_object_key(sha256)
        return self._stream(key, chunk_size)

    def _stream(self, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound(f"artifact bytes {key} are not in bucket {self.bucket!r}") from None
            raise Unavailable(f"S3 read of {key} failed: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"cannot reach S3 at {self.endpoint}: {exc}") from exc
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def presigned_put_url(self, project: str, sha256: str, expires_s: int = 3600) -> str:
        """A URL the SDK PUTs the bytes to directly (single PUT, up to 5 GiB). The upload lands
        under the staging key; call `finish_upload` before publishing the manifest."""
        try:
            return self.client.presigned_put_object(
                self.bucket, staging_key(project, sha256), expires=timedelta(seconds=expires_s)
            )
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"cannot presign an S3 upload at {self.endpoint}: {exc}") from exc

    def finish_upload(self, project: str, sha256: str, size: int) -> tuple[str, bool]:
        """Checks a direct upload's digest and size, then moves it to its final key.
        Returns (uri, already_present). A mismatching upload is deleted and refused."""
        digest = checked_digest(sha256)
        if self.exists(project, digest):
            self._remove(staging_key(project, digest))
            return self.uri_for(project, digest), True
        incoming = staging_key(project, digest)
        if self._stat(incoming) is None:
            raise NotFound(f"no upload for artifact {digest}: PUT the bytes to the presigned URL first")
        hasher = hashlib.sha256()
        written = 0
        for chunk in self._stream(incoming, 1 << 20):
            written += len(chunk)
            hasher.update(chunk)
        try:
            check_received(digest, size, written, hasher.hexdigest())
        except InvalidArgument:
            self._remove(incoming)
            raise
        try:
            if size <= _MAX_SINGLE_COPY_BYTES:
                self.client.copy_object(
                    self.bucket, object_key(project, digest), CopySource(self.bucket, incoming)
                )
            else:
                self.client.compose_object(
                    self.bucket, object_key(project, digest), [ComposeSource(self.bucket, incoming)]
                )
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"S3 copy of artifact {digest} failed: {exc}") from exc
        self._remove(incoming)
        return self.uri_for(project, digest), False

    def _remove(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            pass  # a leftover staging object is harmless; a lifecycle rule can expire incoming/


__all__ = ["S3ArtifactStore", "legacy_object_key", "object_key", "staging_key"]
