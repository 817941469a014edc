-- The id nginx gives each client request ($request_id, the same on every retry). Unique, so
-- when nginx retries a request on another instance because the first died mid-request, the
-- retry finds the row the first may already have written instead of writing a second one.
ALTER TABLE request_log ADD COLUMN request_id text CHECK (length(request_id) <= 64);
CREATE UNIQUE INDEX request_log_request_id ON request_log (request_id);
