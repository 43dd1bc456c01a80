-- Attachments created through the API exist before their bytes do: the row is made with
-- the presigned upload and counts as present only once the upload is confirmed
-- (POST /api/v1/attachments/{id}/complete). Until then downloads answer 409.
-- A constant default: existing rows become "present" without a table rewrite, and
-- without an UPDATE (which would announce every row to every gateway's caches).
ALTER TABLE attachments ADD COLUMN upload_pending boolean NOT NULL DEFAULT false;

-- `attachments-gateway purge` finds what to remove by age: soft-deleted rows by when they
-- were deleted, uploads never confirmed by when they were created.
CREATE INDEX attachments_deleted_at_idx ON attachments (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX attachments_pending_created_idx ON attachments (created_at)
    WHERE upload_pending AND deleted_at IS NULL;
-- Purge removes an object only when no other row still names it.
CREATE INDEX attachments_object_idx ON attachments (bucket, object_key);
