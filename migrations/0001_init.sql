-- Tenants, their API keys (digests only) and the attachments they own.

CREATE TABLE workspaces (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- The API-access entitlement: without it every key of the workspace gets 403.
    api_access  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id    uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name            text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    -- "ixk_" and the first 8 random characters: enough to recognise a key, useless to an attacker.
    display_prefix  text NOT NULL CHECK (display_prefix LIKE 'ixk\_%' AND length(display_prefix) = 12),
    -- SHA-256 of the whole token; the token itself is shown once and never stored.
    token_digest    bytea NOT NULL CHECK (length(token_digest) = 32),
    scope           text NOT NULL CHECK (scope IN ('read', 'write')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
CREATE UNIQUE INDEX api_keys_token_digest_key ON api_keys (token_digest);
CREATE INDEX api_keys_workspace_id_idx ON api_keys (workspace_id);

CREATE TABLE attachments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    bucket        text NOT NULL CHECK (length(bucket) BETWEEN 3 AND 63),
    object_key    text NOT NULL CHECK (length(object_key) BETWEEN 1 AND 1024),
    filename      text NOT NULL CHECK (length(filename) BETWEEN 1 AND 1024),
    content_type  text NOT NULL DEFAULT 'application/octet-stream'
                  CHECK (content_type ~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+/[!#$%&''*+.^_`|~0-9A-Za-z-]+( *; *[!#$%&''*+.^_`|~0-9A-Za-z-]+=("[ !#-\[\]-~]*"|[!#$%&''*+.^_`|~0-9A-Za-z-]+))* *$'
                  AND length(content_type) <= 255),
    size_bytes    bigint CHECK (size_bytes >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
-- The download lookup's whole predicate (id, tenant, not deleted) in one index.
CREATE INDEX attachments_tenant_lookup_idx ON attachments (id, workspace_id) WHERE deleted_at IS NULL;
-- Listing a workspace's attachments, newest first.
CREATE INDEX attachments_workspace_created_idx ON attachments (workspace_id, created_at DESC, id);
