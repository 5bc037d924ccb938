-- The append-only audit trail: register / overwrite / delete / read / load / rotate-key, who asked,
-- which process did it, when, and the consent statement of the voice.  Rows can be added, never
-- changed or removed (the triggers refuse UPDATE, DELETE and TRUNCATE).
CREATE TABLE voice_audit (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    event     text        NOT NULL,
    owner     text        NOT NULL,
    voice_id  text        NOT NULL,
    who       text        NOT NULL,
    actor     text        NOT NULL,
    consent   text        NOT NULL DEFAULT '',
    detail    jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX voice_audit_by_voice ON voice_audit (owner, voice_id);

CREATE FUNCTION voice_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'voice_audit is append-only (% refused)', TG_OP;
END
$$;

CREATE TRIGGER voice_audit_no_change BEFORE UPDATE OR DELETE ON voice_audit
    FOR EACH ROW EXECUTE FUNCTION voice_audit_append_only();
CREATE TRIGGER voice_audit_no_truncate BEFORE TRUNCATE ON voice_audit
    FOR EACH STATEMENT EXECUTE FUNCTION voice_audit_append_only();
