-- Key rotation (`attachments-gateway key rotate`): a key rotated has a successor, made in
-- the same transaction, and names it here. UNIQUE: a key has at most one successor and
-- succeeds at most one key, so rotations form a line (the index also serves the lookups
-- of a key's predecessor and the foreign key's checks).
-- Nullable without a default: no table rewrite and no UPDATE, so adding it announces no
-- row to the gateways' caches. Setting it later, with the old key's shortened expiry, is
-- an UPDATE of columns other than last_used_at, which the trigger of 0003 announces to
-- every gateway like a revocation: no new trigger is needed.
ALTER TABLE api_keys ADD COLUMN replaced_by uuid UNIQUE REFERENCES api_keys (id);
