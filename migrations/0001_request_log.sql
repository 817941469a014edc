-- One row per GET /. Lengths are bounded here as well as in the app, so no client can grow
-- a row past what the page is built to show.
CREATE TABLE request_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    method      text NOT NULL CHECK (length(method) <= 16),
    path        text NOT NULL CHECK (length(path) <= 2048),
    client_addr text NOT NULL CHECK (length(client_addr) <= 64),
    user_agent  text NOT NULL CHECK (length(user_agent) <= 512),
    instance    text NOT NULL CHECK (length(instance) <= 64),
    session_tag text CHECK (length(session_tag) <= 16)
);
-- "The last 25" is a backwards walk of the primary key index: constant time at any size.
