-- adjustd PostgreSQL schema, version 2: units returned per item (refund-rules c1 qty_returned,
-- invariant I3: returned <= shipped), as SQLite's migration 0003. An adjustment's `Quantity`
-- counts as returned units; existing items get the sum of their adjustments' Quantity, at
-- most what was shipped.

ALTER TABLE order_items ADD COLUMN quantity_returned BIGINT NOT NULL DEFAULT 0
    CHECK (quantity_returned >= 0 AND quantity_returned <= quantity_shipped);

UPDATE order_items SET quantity_returned = LEAST(quantity_shipped, (
    SELECT COALESCE(SUM(a.quantity), 0) FROM adjustments a WHERE a.item_id = order_items.id
));
