"""`/v1/files`: upload (streamed to storage), list, retrieve, download (streamed) and delete."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from tide.api.errors import APIError, not_found
from tide.api.pages import list_page
from tide.api.services import Services, owner, services
from tide.jobs.catalog.records import FileRecord
from tide.jobs.storage import READ_BUFFER

router = APIRouter(prefix="/v1/files", tags=["files"])
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 86400


def file_object(record: FileRecord) -> dict:
    return {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": record.created_at,
            "filename": record.filename, "purpose": record.purpose, "expires_at": record.expires_at,
            "status": "processed", "status_details": None}


def owned_file(svc: Services, who: str, file_id: str) -> FileRecord:
    """The caller's live file, else 404 (another key's file answers the same)."""
    record = svc.catalog.get_file(file_id)
    if record is None or record.owner != who:
        raise not_found("File", file_id)
    if record.expired(time.time()):
        delete_file(svc, record)
        raise not_found("File", file_id)
    return record


def delete_file(svc: Services, record: FileRecord) -> None:
    from tide.jobs.storage import resolve

    resolve(record.uri, svc.storage_config).delete()
    svc.catalog.delete_file(record)


@router.post("")
def upload_file(file: Annotated[UploadFile, File(description="the JSONL file")],
                purpose: Annotated[str, Form()],
                anchor: Annotated[Literal["created_at"] | None, Form(alias="expires_after[anchor]")] = None,
                seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
                who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    if purpose != "batch":
        raise APIError(400, f"purpose must be 'batch', got {purpose!r}", param="purpose", code="invalid_value")
    if seconds is not None and not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise APIError(400, f"expires_after[seconds] must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
                       param="expires_after[seconds]", code="invalid_value")
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    location = svc.storage.child("files").child(file_id)
    size = location.write_stream(file.file)  # the multipart parser spooled it to disk: memory stays flat
    now = int(time.time())
    record = FileRecord(id=file_id, owner=who, filename=file.filename or "upload.jsonl", purpose="batch",
                        bytes=size, created_at=now, expires_at=None if seconds is None else now + seconds,
                        uri=location.uri)
    svc.catalog.put_file(record)
    return file_object(record)


@router.get("")
def list_files(after: str | None = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None,
               who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    ids, cursor, now = [], after, time.time()
    while len(ids) <= limit:  # filter by purpose while paging, so a page is full whenever more exist
        chunk = svc.catalog.page(who, "files", cursor, limit + 1, newest_first=order == "desc")
        for file_id in chunk:
            record = svc.catalog.get_file(file_id)
            if record is not None and not record.expired(now) and purpose in (None, record.purpose):
                ids.append(file_id)
        if len(chunk) <= limit:
            break
        cursor = chunk[-1]
    return list_page(ids, limit, lambda i: _view(svc, i))


def _view(svc: Services, file_id: str) -> dict | None:
    record = svc.catalog.get_file(file_id)
    return None if record is None else file_object(record)


@router.get("/{file_id}")
def retrieve_file(file_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    return file_object(owned_file(svc, who, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> StreamingResponse:
    from tide.jobs.storage import resolve

    record = owned_file(svc, who, file_id)
    reader = resolve(record.uri, svc.storage_config).open_read()

    def chunks():
        with reader:
            while chunk := reader.read(READ_BUFFER):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(record.bytes)})


@router.delete("/{file_id}")
def remove_file(file_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    delete_file(svc, owned_file(svc, who, file_id))
    return {"id": file_id, "object": "file", "deleted": True}
