"""Upload records: what an uploaded input image is and until when it is kept (its bytes are
the blob store's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.records import UploadRecord

if TYPE_CHECKING:
    from storage.sql import Conn, SqlDatabase


class UploadStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._db.query(
            lambda conn: conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        )
        return UploadRecord.from_row(row) if row else None

    async def record_upload(self, upload: UploadRecord) -> None:
        def record(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO uploads (id, sha256, content_type, bytes, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (upload.id, upload.sha256, upload.content_type, upload.bytes, upload.created_at,
                 upload.expires_at),
            )

        await self._db.transact(record)
