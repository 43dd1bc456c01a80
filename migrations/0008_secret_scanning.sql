-- Keys found leaked by GitHub's secret scanning (POST /api/v1/secret-scanning/reports):
-- one row per reported token that is one of our keys, written in the same statement that
-- revokes it. download_audit cannot hold these: it has no place for where the token was
-- found, and every one of its rows is a download. Few rows (one per leak), so neither
-- partitions nor retention.

CREATE TABLE leaked_key_reports (
    at              timestamptz NOT NULL DEFAULT now(),
    key_id          uuid        NOT NULL,
    workspace_id    uuid        NOT NULL,
    key_prefix      text        NOT NULL,
    -- Whether this report revoked the key (false: it was revoked already).
    revoked         boolean     NOT NULL,
    token_type      text        NOT NULL,   -- the report's `type`
    url             text,                   -- where GitHub found the token
    source          text,                   -- what it was found in: 'content', 'commit', ...
    client_address  inet                    -- who sent the report
);

CREATE INDEX leaked_key_reports_workspace_at ON leaked_key_reports (workspace_id, at);
