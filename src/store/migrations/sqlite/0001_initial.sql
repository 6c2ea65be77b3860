-- adjustd SQLite schema, version 1. The PostgreSQL backend has the same tables, columns and
-- CHECKs (src/store/migrations/postgres/). Money is integer minor units of the order currency.

CREATE TABLE feeds (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant              TEXT NULL,
    file_name             TEXT NOT NULL,
    content_hash          TEXT NOT NULL,
    claim_token           TEXT NULL UNIQUE,
    status                TEXT NOT NULL CHECK (status IN ('Processing', 'Complete', 'Rejected')),
    duplicate_of          INTEGER NULL REFERENCES feeds(id),
    received_at           TEXT NOT NULL,
    processed_at          TEXT NULL,
    messages_processed    INTEGER NOT NULL DEFAULT 0 CHECK (messages_processed >= 0),
    messages_successful   INTEGER NOT NULL DEFAULT 0 CHECK (messages_successful >= 0),
    messages_with_error   INTEGER NOT NULL DEFAULT 0 CHECK (messages_with_error >= 0),
    messages_with_warning INTEGER NOT NULL DEFAULT 0 CHECK (messages_with_warning >= 0),
    report_json           TEXT NULL
);

-- One applied feed per merchant and content: a second instance committing the same bytes
-- fails here and retries, then finds the first one as a duplicate.
CREATE UNIQUE INDEX feeds_applied_content
    ON feeds(merchant, content_hash)
    WHERE status = 'Complete' AND duplicate_of IS NULL;

CREATE TABLE orders (
    id                  INTEGER PRIMARY KEY,
    merchant            TEXT NOT NULL,
    amazon_order_id     TEXT NOT NULL,
    merchant_order_id   TEXT NULL,
    currency            TEXT NOT NULL,
    fulfillment_channel TEXT NOT NULL CHECK (fulfillment_channel IN ('MFN', 'AFN')),
    purchase_date       TEXT NULL,
    UNIQUE (merchant, amazon_order_id),
    UNIQUE (merchant, merchant_order_id)
);

CREATE TABLE order_items (
    id                     INTEGER PRIMARY KEY,
    order_id               INTEGER NOT NULL REFERENCES orders(id),
    position               INTEGER NOT NULL,
    amazon_order_item_code TEXT NOT NULL,
    merchant_order_item_id TEXT NULL,
    sku                    TEXT NOT NULL,
    quantity_ordered       INTEGER NOT NULL CHECK (quantity_ordered > 0),
    quantity_shipped       INTEGER NOT NULL CHECK (quantity_shipped >= 0),
    quantity_cancelled     INTEGER NOT NULL DEFAULT 0 CHECK (quantity_cancelled >= 0),
    CHECK (quantity_shipped + quantity_cancelled <= quantity_ordered),
    UNIQUE (order_id, amazon_order_item_code),
    UNIQUE (order_id, merchant_order_item_id)
);

-- Running totals per item and component: what was charged and the net signed sum of all
-- applied adjustment amounts. The CHECK is the refund invariant per component class.
CREATE TABLE item_components (
    item_id   INTEGER NOT NULL REFERENCES order_items(id),
    component TEXT NOT NULL,
    class     TEXT NOT NULL CHECK (class IN ('charge', 'fee', 'concession', 'promotion')),
    charged   INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0),
    refunded  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, component),
    CHECK (
        (class = 'charge' AND refunded BETWEEN 0 AND charged)
        OR (class = 'fee' AND refunded <= 0)
        OR (class = 'concession' AND refunded >= 0)
        OR (class = 'promotion' AND refunded BETWEEN -charged AND 0)
    )
) WITHOUT ROWID;

CREATE TABLE adjustments (
    id                          INTEGER PRIMARY KEY,
    feed_id                     INTEGER NOT NULL REFERENCES feeds(id),
    message_id                  INTEGER NOT NULL,
    item_id                     INTEGER NOT NULL REFERENCES order_items(id),
    reason                      TEXT NOT NULL,
    action_type                 TEXT NULL,
    quantity_cancelled          INTEGER NOT NULL CHECK (quantity_cancelled >= 0),
    quantity                    INTEGER NULL CHECK (quantity > 0),
    merchant_adjustment_item_id TEXT NULL,
    payload_hash                TEXT NOT NULL,
    net                         INTEGER NOT NULL,
    created_at                  TEXT NOT NULL,
    CHECK (net > 0 OR (net = 0 AND quantity_cancelled > 0))
);

CREATE INDEX adjustments_item ON adjustments(item_id);

CREATE TABLE adjustment_amounts (
    adjustment_id INTEGER NOT NULL REFERENCES adjustments(id),
    component     TEXT NOT NULL,
    amount        INTEGER NOT NULL,
    PRIMARY KEY (adjustment_id, component)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    merchant       TEXT NOT NULL,
    key            TEXT NOT NULL,
    payload_hash   TEXT NOT NULL,
    feed_id        INTEGER NOT NULL REFERENCES feeds(id),
    message_id     INTEGER NOT NULL,
    rejection_code INTEGER NULL,
    PRIMARY KEY (merchant, key)
) WITHOUT ROWID;

-- Adjustments are append-only (invariant I7): history is never rewritten.
CREATE TRIGGER adjustments_no_update BEFORE UPDATE ON adjustments
BEGIN
    SELECT RAISE(ABORT, 'adjustments are append-only');
END;

CREATE TRIGGER adjustments_no_delete BEFORE DELETE ON adjustments
BEGIN
    SELECT RAISE(ABORT, 'adjustments are append-only');
END;

CREATE TRIGGER adjustment_amounts_no_update BEFORE UPDATE ON adjustment_amounts
BEGIN
    SELECT RAISE(ABORT, 'adjustment amounts are append-only');
END;

CREATE TRIGGER adjustment_amounts_no_delete BEFORE DELETE ON adjustment_amounts
BEGIN
    SELECT RAISE(ABORT, 'adjustment amounts are append-only');
END;
