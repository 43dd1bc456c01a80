-- Every change to a key, workspace or attachment is announced on one channel, so that
-- each gateway process can drop what it cached about that row (LISTEN gateway_invalidate).
-- NOTIFY is delivered at commit, and not at all if the transaction rolls back.

CREATE FUNCTION gateway_notify_invalidation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('gateway_invalidate', 'key:' || encode(changed.token_digest, 'hex'));
    ELSIF TG_TABLE_NAME = 'workspaces' THEN
        PERFORM pg_notify('gateway_invalidate', 'workspace:' || changed.id::text);
    ELSE
        PERFORM pg_notify('gateway_invalidate', 'attachment:' || changed.id::text);
    END IF;
    RETURN NULL;
END;
$$;

-- INSERT too: a process may have cached "no such key/attachment" a moment earlier.
CREATE TRIGGER api_keys_notify_invalidation
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_invalidation();
CREATE TRIGGER workspaces_notify_invalidation
    AFTER INSERT OR UPDATE OR DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_invalidation();
CREATE TRIGGER attachments_notify_invalidation
    AFTER INSERT OR UPDATE OR DELETE ON attachments
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_invalidation();
