-- Rows written by the /test staleness probe. Each run deletes all but the newest rows, so the
-- table stays small however often /test runs.
CREATE TABLE probe (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    instance   text NOT NULL CHECK (length(instance) <= 64)
);
