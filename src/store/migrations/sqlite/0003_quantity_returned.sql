-- adjustd SQLite schema, version 3: units returned per item (refund-rules c1 qty_returned,
-- invariant I3: returned <= shipped). An adjustment's `Quantity` counts as returned units.
-- Existing items get the sum of their adjustments' Quantity, at most what was shipped (an
-- older build checked each Quantity alone, not their sum).

ALTER TABLE order_items ADD COLUMN quantity_returned INTEGER NOT NULL DEFAULT 0
    CHECK (quantity_returned >= 0 AND quantity_returned <= quantity_shipped);

UPDATE order_items SET quantity_returned = MIN(quantity_shipped, (
    SELECT COALESCE(SUM(a.quantity), 0) FROM adjustments a WHERE a.item_id = order_items.id
));

-- The load index covers the new column, so loading a feed's items stays one index search.
DROP INDEX order_items_load;
CREATE INDEX order_items_load
    ON order_items(order_id, position, id, amazon_order_item_code, merchant_order_item_id,
                   quantity_ordered, quantity_shipped, quantity_cancelled, quantity_returned);
