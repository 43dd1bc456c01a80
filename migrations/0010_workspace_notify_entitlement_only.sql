-- A workspace's row reaches the gateways' caches only through its API-access entitlement,
-- cached with each of its keys. Every other change of it was announced too, and a
-- workspace's announcement makes every gateway forget all the keys it holds: a new
-- workspace (which has no keys yet) or a rename emptied every key cache of the cluster.
-- Deleting a workspace deletes its keys, each announced by its own trigger; it is still
-- announced itself.

DROP TRIGGER workspaces_notify_invalidation ON workspaces;

CREATE TRIGGER workspaces_notify_invalidation
    AFTER DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_invalidation();

CREATE TRIGGER workspaces_notify_invalidation_on_entitlement
    AFTER UPDATE ON workspaces
    FOR EACH ROW
    WHEN (OLD.api_access IS DISTINCT FROM NEW.api_access OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION gateway_notify_invalidation();
