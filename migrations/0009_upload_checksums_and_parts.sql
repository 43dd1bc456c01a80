-- Uploads through the API may declare their SHA-256 (S3 is then told to refuse other
-- bytes, and `complete` checks what was stored), and above one PUT they are S3 multipart
-- uploads: the row keeps the upload's id until it is completed (or aborted by purge), and
-- the part size its parts were planned with.
-- Nullable without defaults: no table rewrite, and no row is announced to the caches.
ALTER TABLE attachments
    ADD COLUMN sha256 bytea CHECK (length(sha256) = 32),
    ADD COLUMN multipart_upload_id text CHECK (length(multipart_upload_id) BETWEEN 1 AND 1024),
    ADD COLUMN part_size_bytes bigint CHECK (part_size_bytes > 0);
