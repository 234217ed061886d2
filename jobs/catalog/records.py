"""The stored records of uploaded files and OpenAI batches (a batch is a job with the same id plus these fields)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FilePurpose = Literal["batch", "batch_output"]


class FileRecord(BaseModel):
    """An uploaded file (or a batch's output or error file) and where its bytes live."""

    id: str
    owner: str
    filename: str
    purpose: FilePurpose
    bytes: int = Field(ge=0)
    created_at: int
    expires_at: int | None = None
    uri: str

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class BatchRecord(BaseModel):
    """What an OpenAI batch adds to its job: the owner, endpoint, input file and the output files' lifetime."""

    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after_s: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
