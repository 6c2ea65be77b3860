-- adjustd SQLite schema, version 4: the order load index covers purchase_date, which the
-- engine reads for the refund window (refund-rules c4 step 15, OUTSIDE_REFUND_WINDOW). The
-- load query names this index (INDEXED BY orders_load); without the column it would read
-- every order row from the table as well.

DROP INDEX orders_load;
CREATE INDEX orders_load
    ON orders(merchant, amazon_order_id, id, merchant_order_id, currency, fulfillment_channel,
              purchase_date);
