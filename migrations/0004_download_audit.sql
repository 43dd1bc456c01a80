-- Who downloaded what: every URL issued and every refusal after authentication, written
-- by the gateways in batches (COPY). Partitioned by month so that retention is dropping
-- whole partitions; the gateways create the coming months' partitions themselves, and
-- the default partition keeps any row that arrives before its month exists.

CREATE TABLE download_audit (
    at              timestamptz NOT NULL,
    workspace_id    uuid        NOT NULL,
    key_id          uuid        NOT NULL,
    key_prefix      text        NOT NULL,
    attachment_id   uuid,                   -- NULL when the path's id was not a UUID
    method          text        NOT NULL,
    outcome         text        NOT NULL,   -- 'issued', or the problem: 'not_found', ...
    status          smallint    NOT NULL,
    client_address  inet,
    user_agent      text,
    expires_at      timestamptz             -- of the URL issued
) PARTITION BY RANGE (at);

CREATE TABLE download_audit_default PARTITION OF download_audit DEFAULT;

CREATE INDEX download_audit_workspace_at ON download_audit (workspace_id, at);
CREATE INDEX download_audit_attachment_at ON download_audit (attachment_id, at);
