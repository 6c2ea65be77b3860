-- adjustd PostgreSQL schema, version 1. The same tables, names and CHECK constraints as the
-- SQLite schema; integers are BIGINT, money is integer minor units of the order currency.
-- Timestamps are TEXT in RFC 3339 UTC, written by adjustd (same as SQLite).

CREATE TABLE feeds (
    id                    BIGSERIAL PRIMARY KEY,
    merchant              TEXT NULL,
    file_name             TEXT NOT NULL,
    content_hash          TEXT NOT NULL,
    claim_token           TEXT NULL UNIQUE,
    status                TEXT NOT NULL CHECK (status IN ('Processing', 'Complete', 'Rejected')),
    duplicate_of          BIGINT NULL REFERENCES feeds(id),
    received_at           TEXT NOT NULL,
    processed_at          TEXT NULL,
    messages_processed    BIGINT NOT NULL DEFAULT 0 CHECK (messages_processed >= 0),
    messages_successful   BIGINT NOT NULL DEFAULT 0 CHECK (messages_successful >= 0),
    messages_with_error   BIGINT NOT NULL DEFAULT 0 CHECK (messages_with_error >= 0),
    messages_with_warning BIGINT NOT NULL DEFAULT 0 CHECK (messages_with_warning >= 0),
    report_json           TEXT NULL
);

-- One applied feed per merchant and content: a second instance committing the same bytes
-- gets a unique violation (a Conflict: its retry then sees the first as the original).
CREATE UNIQUE INDEX feeds_applied_content ON feeds(merchant, content_hash)
    WHERE status = 'Complete' AND duplicate_of IS NULL;

CREATE TABLE orders (
    id                  BIGSERIAL PRIMARY KEY,
    merchant            TEXT NOT NULL,
    amazon_order_id     TEXT NOT NULL,
    merchant_order_id   TEXT NULL,
    currency            TEXT NOT NULL,
    fulfillment_channel TEXT NOT NULL CHECK (fulfillment_channel IN ('MFN', 'AFN')),
    purchase_date       TEXT NULL,
    UNIQUE (merchant, amazon_order_id),
    UNIQUE (merchant, merchant_order_id)
);
CREATE INDEX orders_amazon_order_id ON orders(amazon_order_id);

CREATE TABLE order_items (
    id                     BIGSERIAL PRIMARY KEY,
    order_id               BIGINT NOT NULL REFERENCES orders(id),
    position               BIGINT NOT NULL,
    amazon_order_item_code TEXT NOT NULL,
    merchant_order_item_id TEXT NULL,
    sku                    TEXT NOT NULL,
    quantity_ordered       BIGINT NOT NULL CHECK (quantity_ordered > 0),
    quantity_shipped       BIGINT NOT NULL CHECK (quantity_shipped >= 0),
    quantity_cancelled     BIGINT NOT NULL DEFAULT 0 CHECK (quantity_cancelled >= 0),
    CHECK (quantity_shipped + quantity_cancelled <= quantity_ordered),
    UNIQUE (order_id, amazon_order_item_code),
    UNIQUE (order_id, merchant_order_item_id)
);

CREATE TABLE item_components (
    item_id   BIGINT NOT NULL REFERENCES order_items(id),
    component TEXT NOT NULL,
    class     TEXT NOT NULL CHECK (class IN ('charge', 'fee', 'concession', 'promotion')),
    charged   BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0),
    refunded  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, component),
    CHECK ((class = 'charge' AND refunded BETWEEN 0 AND charged)
        OR (class = 'fee' AND refunded <= 0)
        OR (class = 'concession' AND refunded >= 0)
        OR (class = 'promotion' AND refunded BETWEEN -charged AND 0))
);

CREATE TABLE adjustments (
    id                          BIGSERIAL PRIMARY KEY,
    feed_id                     BIGINT NOT NULL REFERENCES feeds(id),
    message_id                  BIGINT NOT NULL,
    item_id                     BIGINT NOT NULL REFERENCES order_items(id),
    reason                      TEXT NOT NULL,
    action_type                 TEXT NULL,
    quantity_cancelled          BIGINT NOT NULL CHECK (quantity_cancelled >= 0),
    quantity                    BIGINT NULL CHECK (quantity > 0),
    merchant_adjustment_item_id TEXT NULL,
    payload_hash                TEXT NOT NULL,
    net                         BIGINT NOT NULL,
    created_at                  TEXT NOT NULL,
    CHECK (net > 0 OR (net = 0 AND quantity_cancelled > 0))
);
CREATE INDEX adjustments_item_id ON adjustments(item_id);
CREATE INDEX adjustments_feed_id ON adjustments(feed_id);

CREATE TABLE adjustment_amounts (
    adjustment_id BIGINT NOT NULL REFERENCES adjustments(id),
    component     TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    PRIMARY KEY (adjustment_id, component)
);

CREATE TABLE idempotency_keys (
    merchant       TEXT NOT NULL,
    key            TEXT NOT NULL,
    payload_hash   TEXT NOT NULL,
    feed_id        BIGINT NOT NULL REFERENCES feeds(id),
    message_id     BIGINT NOT NULL,
    rejection_code BIGINT NULL,
    PRIMARY KEY (merchant, key)
);

-- Invariant I7: adjustments are append-only.
CREATE FUNCTION adjustd_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER adjustments_append_only
    BEFORE UPDATE OR DELETE ON adjustments
    FOR EACH ROW EXECUTE FUNCTION adjustd_append_only();
CREATE TRIGGER adjustments_no_truncate
    BEFORE TRUNCATE ON adjustments
    FOR EACH STATEMENT EXECUTE FUNCTION adjustd_append_only();
CREATE TRIGGER adjustment_amounts_append_only
    BEFORE UPDATE OR DELETE ON adjustment_amounts
    FOR EACH ROW EXECUTE FUNCTION adjustd_append_only();
CREATE TRIGGER adjustment_amounts_no_truncate
    BEFORE TRUNCATE ON adjustment_amounts
    FOR EACH STATEMENT EXECUTE FUNCTION adjustd_append_only();
