-- proco-serve: the shared prototype store, schema 1.
-- Every version of every model's prototypes, oldest first by id, and one row per model naming
-- the version served. Applied by the server itself on first use (proco_schema_migrations).

CREATE TABLE proco_prototype_versions (
    id         bigserial   PRIMARY KEY,
    model      text        NOT NULL,
    -- The content id of the document (what every answer names).
    version    text        NOT NULL,
    -- The version this one replaced; NULL for the seed read from a model folder.
    parent     text,
    cause      text        NOT NULL CHECK (cause IN ('file', 'learned', 'deleted', 'rollback')),
    created_at timestamptz NOT NULL DEFAULT now(),
    classes    integer     NOT NULL,
    -- The replica that made it (host name and process id), for the audit trail.
    replica    text        NOT NULL,
    -- The canonical prototypes.json, byte for byte.
    document   text        NOT NULL
);

CREATE INDEX proco_prototype_versions_by_model ON proco_prototype_versions (model, id DESC);

CREATE TABLE proco_prototype_current (
    model      text   PRIMARY KEY,
    version_id bigint NOT NULL REFERENCES proco_prototype_versions (id),
    version    text   NOT NULL
);
