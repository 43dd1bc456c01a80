-- Gateways record when each key was last used (a batched UPDATE of last_used_at, about
-- once a minute per key). That must not announce the key as changed, or every gateway
-- would drop it from its cache each time: an UPDATE notifies only when something other
-- than last_used_at changed (compared as JSON, so that columns added later count too).

DROP TRIGGER api_keys_notify_invalidation ON api_keys;

CREATE TRIGGER api_keys_notify_invalidation
    AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_invalidation();

CREATE TRIGGER api_keys_notify_invalidation_on_change
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
    EXECUTE FUNCTION gateway_notify_invalidation();
