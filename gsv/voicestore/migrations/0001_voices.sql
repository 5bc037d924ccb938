-- One row per voice: who owns it, the model it was prepared for, the prepared features and the
-- reference audio (encrypted with key key_id when it is not empty), the consent statement and who
-- submitted it, creation/update times and a version that every re-registration increments.
CREATE TABLE voices (
    owner           text        NOT NULL,  -- namespace: the owner name with bearer tokens, '' without
    voice_id        text        NOT NULL,
    model_id        text        NOT NULL,  -- bundle id the features were prepared for
    language        text        NOT NULL,
    meta            jsonb       NOT NULL,  -- ref_text, norm_text, prompt_phones, display_name, ...
    features        bytea       NOT NULL,
    reference_audio bytea[]     NOT NULL,
    key_id          text        NOT NULL DEFAULT '',
    consent         text        NOT NULL,
    consent_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    PRIMARY KEY (owner, voice_id)
);

CREATE INDEX voices_by_key ON voices (key_id);
CREATE INDEX voices_by_model ON voices (model_id);
