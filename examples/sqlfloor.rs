//! How fast can the SQL alone go? Runs the statements a refund needs, with no XML, no
//! engine and no report, against a synthetic store of the same size as
//! `scripts/bench-process.sh` (100k orders, 3 items each, 4 charged components per item),
//! one transaction and a durable commit (WAL, `synchronous = FULL`), and prints
//! messages per second for three store designs:
//!
//! - `naive`: one INSERT and one UPDATE per message, on two bare tables: the figure issue 3
//!   quotes (65-70k/s) as the yardstick.
//! - `adjustd`: adjustd's own schema (created by its real migrations, with its CHECKs, foreign
//!   keys and indexes) and, per message, the minimum its rows need: read the order with its
//!   items and component totals, insert the adjustment, its two amounts and its idempotency
//!   key, update the two component totals. `adjustd-writes` is the same without the read.
//!   `adjustd-sorted` writes the same rows with no read, but in groups of `SQLFLOOR_GROUP`
//!   messages (default 32768) and, within a group, each table's rows in key order: the cost of
//!   the same rows when a store holds back a group's writes and sorts them.
//! - `packed`: the leanest relational design that still keeps a CHECKed running total per
//!   component: the four totals are columns of the item row and the amounts columns of the
//!   adjustment row, so a message reads two B-tree ranges and writes three rows.
//!   `packed-writes` is the same without the read: the ceiling of any design that keeps an
//!   audit row, a unique key and a CHECKed running total per adjusted item.
//!
//! The messages touch random orders, each order at most 3 times, 1 item and 2 components
//! (Principal, Tax) per message, like `genfeed --max-per-order 3`.
//!
//! ```text
//! cargo run --release --example sqlfloor -- [MESSAGES] [ORDERS]    # default 200000 100000
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rusqlite::{Connection, params};

const ITEMS: i64 = 3;
const COMPONENTS: [&str; 4] = ["Principal", "Shipping", "ShippingTax", "Tax"];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: i64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let orders: i64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let plan = messages_plan(messages, orders);
    let dir = tempfile::tempdir()?;
    for case in [
        "naive",
        "adjustd-writes",
        "adjustd-sorted",
        "adjustd",
        "packed-writes",
        "packed",
    ] {
        let path = dir.path().join(format!("{case}.db"));
        let conn = match case {
            "naive" => setup_naive(&path, orders)?,
            "packed" | "packed-writes" => setup_packed(&path, orders)?,
            _ => setup_adjustd(&path, orders)?,
        };
        let started = Instant::now();
        match case {
            "naive" => run_naive(conn, &plan)?,
            "adjustd-writes" => run_adjustd(conn, &plan, false)?,
            "adjustd-sorted" => run_adjustd_sorted(conn, &plan)?,
            "adjustd" => run_adjustd(conn, &plan, true)?,
            "packed-writes" => run_packed(conn, &plan, false)?,
            _ => run_packed(conn, &plan, true)?,
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{case:<15} {messages} messages {secs:6.2} s {:9.0} messages/s",
            messages as f64 / secs
        );
    }
    Ok(())
}

/// One message: order number, item number within the order (0..ITEMS), two amounts.
struct Msg {
    order: i64,
    item: i64,
    principal: i64,
    tax: i64,
}

/// Each order at most 3 times, in a random order (a fixed-seed xorshift shuffle).
fn messages_plan(messages: i64, orders: i64) -> Vec<Msg> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut slots: Vec<i64> = (0..messages).map(|m| m % orders).collect();
    for i in (1..slots.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        slots.swap(i, j);
    }
    slots
        .into_iter()
        .map(|order| Msg {
            order,
            item: (next() % ITEMS as u64) as i64,
            principal: 100 + (next() % 400) as i64,
            tax: 10 + (next() % 40) as i64,
        })
        .collect()
}

fn amazon_order_id(order: i64) -> String {
    format!("902-{:07}-{:07}", order / 10_000_000, order % 10_000_000)
}

fn pragmas(conn: &Connection) -> anyhow::Result<()> {
    // adjustd's own settings (src/store/sqlite.rs `configure`).
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; \
         PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(())
}

fn setup_naive(path: &Path, orders: i64) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    pragmas(&conn)?;
    conn.execute_batch(&format!(
        "CREATE TABLE totals (item_id INTEGER PRIMARY KEY, refunded INTEGER NOT NULL);
         CREATE TABLE adjustments (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL,
                                   amount INTEGER NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {})
         INSERT INTO totals SELECT i, 0 FROM n;",
        orders * ITEMS
    ))?;
    Ok(conn)
}

fn run_naive(mut conn: Connection, plan: &[Msg]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO adjustments (item_id, amount) VALUES (?1, ?2)")?;
        let mut update =
            tx.prepare("UPDATE totals SET refunded = refunded + ?2 WHERE item_id = ?1")?;
        for m in plan {
            let item = m.order * ITEMS + m.item;
            insert.execute(params![item, m.principal + m.tax])?;
            update.execute(params![item, m.principal + m.tax])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn setup_adjustd(path: &Path, orders: i64) -> anyhow::Result<Connection> {
    // adjustd's real migrations create the schema; then the lock is let go.
    drop(adjustd::store::sqlite::SqliteStore::open(path).context("creating the schema")?);
    let conn = Connection::open(path)?;
    pragmas(&conn)?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut order = tx.prepare(
            "INSERT INTO orders (id, merchant, amazon_order_id, currency, fulfillment_channel) \
             VALUES (?1, 'M_FLOOR', ?2, 'USD', 'MFN')",
        )?;
        let mut item = tx.prepare(
            "INSERT INTO order_items (id, order_id, position, amazon_order_item_code, sku, \
             quantity_ordered, quantity_shipped) VALUES (?1, ?2, ?3, ?4, 'SKU', 2, 0)",
        )?;
        let mut component = tx.prepare(
            "INSERT INTO item_components (item_id, component, class, charged) \
             VALUES (?1, ?2, 'charge', 100000)",
        )?;
        for o in 0..orders {
            order.execute(params![o, amazon_order_id(o)])?;
            for i in 0..ITEMS {
                let id = o * ITEMS + i;
                item.execute(params![id, o, i, format!("{:014}", id)])?;
                for c in COMPONENTS {
                    component.execute(params![id, c])?;
                }
            }
        }
        tx.execute(
            "INSERT INTO feeds (id, merchant, file_name, content_hash, status, received_at) \
             VALUES (1, 'M_FLOOR', 'floor.xml', 'h', 'Processing', 'now')",
            [],
        )?;
    }
    tx.commit()?;
    Ok(conn)
}

/// adjustd's statements, with no read.
struct AdjustdWrites<'t> {
    adjustment: rusqlite::Statement<'t>,
    amount: rusqlite::Statement<'t>,
    total: rusqlite::Statement<'t>,
    key: rusqlite::Statement<'t>,
}

impl AdjustdWrites<'_> {
    fn prepare<'t>(tx: &'t rusqlite::Transaction<'_>) -> anyhow::Result<AdjustdWrites<'t>> {
        Ok(AdjustdWrites {
            adjustment: tx.prepare(
                "INSERT INTO adjustments (id, feed_id, message_id, item_id, reason, action_type, \
                 quantity_cancelled, quantity, merchant_adjustment_item_id, payload_hash, net, \
                 created_at) VALUES (?1, 1, ?1, ?2, 'CustomerReturn', 'Refund', 0, NULL, ?3, \
                 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', ?4, 'now')",
            )?,
            amount: tx.prepare(
                "INSERT INTO adjustment_amounts (adjustment_id, component, amount) \
                 VALUES (?1, ?2, ?3)",
            )?,
            total: tx.prepare(
                "UPDATE item_components SET refunded = refunded + ?3 \
                 WHERE item_id = ?1 AND component = ?2",
            )?,
            key: tx.prepare(
                "INSERT INTO idempotency_keys (merchant, key, payload_hash, feed_id, message_id) \
                 VALUES ('M_FLOOR', ?1, \
                 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 1, ?2)",
            )?,
        })
    }
}

fn run_adjustd_sorted(mut conn: Connection, plan: &[Msg]) -> anyhow::Result<()> {
    let group: usize = std::env::var("SQLFLOOR_GROUP").map_or(Ok(32_768), |g| g.parse())?;
    let tx = conn.transaction()?;
    {
        let mut w = AdjustdWrites::prepare(&tx)?;
        let mut first = 1_i64;
        for part in plan.chunks(group.max(1)) {
            let ids = first..first + part.len() as i64;
            for (n, m) in ids.clone().zip(part) {
                let item = m.order * ITEMS + m.item;
                w.adjustment
                    .execute(params![n, item, format!("K-{n}"), m.principal + m.tax])?;
                w.amount.execute(params![n, "Principal", m.principal])?;
                w.amount.execute(params![n, "Tax", m.tax])?;
            }
            let mut totals: Vec<(i64, i64, i64)> = part
                .iter()
                .map(|m| (m.order * ITEMS + m.item, m.principal, m.tax))
                .collect();
            totals.sort_unstable();
            for (item, principal, tax) in totals {
                w.total.execute(params![item, "Principal", principal])?;
                w.total.execute(params![item, "Tax", tax])?;
            }
            let mut keys: Vec<(String, i64)> = ids.map(|n| (format!("K-{n}"), n)).collect();
            keys.sort_unstable();
            for (k, n) in keys {
                w.key.execute(params![k, n])?;
            }
            first += part.len() as i64;
        }
    }
    tx.commit()?;
    Ok(())
}

fn run_adjustd(mut conn: Connection, plan: &[Msg], read: bool) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut load = tx.prepare(
            "SELECT o.id, o.amazon_order_id, o.merchant_order_id, o.currency, \
             o.fulfillment_channel, i.id, i.amazon_order_item_code, i.merchant_order_item_id, \
             i.quantity_ordered, i.quantity_shipped, i.quantity_cancelled, i.position, \
             c.component, c.charged, c.refunded \
             FROM orders o INDEXED BY orders_load LEFT JOIN order_items i ON i.order_id = o.id \
             LEFT JOIN item_components c ON c.item_id = i.id \
             WHERE o.merchant = 'M_FLOOR' AND o.amazon_order_id = ?1",
        )?;
        let mut w = AdjustdWrites::prepare(&tx)?;
        for (n, m) in (1_i64..).zip(plan) {
            if read {
                let mut rows = load.query([amazon_order_id(m.order)])?;
                let mut refunded = 0_i64;
                while let Some(row) = rows.next()? {
                    refunded += row.get::<_, Option<i64>>(14)?.unwrap_or(0);
                }
                std::hint::black_box(refunded);
            }
            let item = m.order * ITEMS + m.item;
            let merchant_key = format!("K-{n}");
            w.adjustment
                .execute(params![n, item, merchant_key, m.principal + m.tax])?;
            w.amount.execute(params![n, "Principal", m.principal])?;
            w.amount.execute(params![n, "Tax", m.tax])?;
            w.total.execute(params![item, "Principal", m.principal])?;
            w.total.execute(params![item, "Tax", m.tax])?;
            w.key.execute(params![merchant_key, n])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn setup_packed(path: &Path, orders: i64) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    pragmas(&conn)?;
    let columns: String = COMPONENTS
        .iter()
        .map(|c| {
            let c = c.to_lowercase();
            format!(
                "{c}_charged INTEGER NOT NULL DEFAULT 0, {c}_refunded INTEGER NOT NULL DEFAULT 0 \
                 CHECK ({c}_refunded BETWEEN 0 AND {c}_charged), "
            )
        })
        .collect();
    let amounts: String = COMPONENTS
        .iter()
        .map(|c| format!("{} INTEGER NOT NULL DEFAULT 0, ", c.to_lowercase()))
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, merchant TEXT NOT NULL,
             amazon_order_id TEXT NOT NULL, currency TEXT NOT NULL,
             UNIQUE (merchant, amazon_order_id));
         CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id),
             code TEXT NOT NULL, quantity_ordered INTEGER NOT NULL,
             quantity_cancelled INTEGER NOT NULL DEFAULT 0, {columns}
             UNIQUE (order_id, code));
         CREATE TABLE adjustments (id INTEGER PRIMARY KEY,
             item_id INTEGER NOT NULL REFERENCES items(id), {amounts}
             merchant TEXT NOT NULL, key TEXT NOT NULL, payload_hash TEXT NOT NULL,
             UNIQUE (merchant, key));
         CREATE INDEX adjustments_item ON adjustments(item_id);"
    ))?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut order = tx.prepare(
            "INSERT INTO orders (id, merchant, amazon_order_id, currency) \
             VALUES (?1, 'M_FLOOR', ?2, 'USD')",
        )?;
        let mut item = tx.prepare(
            "INSERT INTO items (id, order_id, code, quantity_ordered, principal_charged, \
             shipping_charged, shippingtax_charged, tax_charged) \
             VALUES (?1, ?2, ?3, 2, 100000, 100000, 100000, 100000)",
        )?;
        for o in 0..orders {
            order.execute(params![o, amazon_order_id(o)])?;
            for i in 0..ITEMS {
                let id = o * ITEMS + i;
                item.execute(params![id, o, format!("{:014}", id)])?;
            }
        }
    }
    tx.commit()?;
    Ok(conn)
}

fn run_packed(mut conn: Connection, plan: &[Msg], read: bool) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut load = tx.prepare(
            "SELECT o.id, o.currency, i.id, i.code, i.quantity_ordered, i.quantity_cancelled, \
             i.principal_charged, i.principal_refunded, i.shipping_charged, i.shipping_refunded, \
             i.shippingtax_charged, i.shippingtax_refunded, i.tax_charged, i.tax_refunded \
             FROM orders o JOIN items i ON i.order_id = o.id \
             WHERE o.merchant = 'M_FLOOR' AND o.amazon_order_id = ?1",
        )?;
        let mut adjustment = tx.prepare(
            "INSERT INTO adjustments (id, item_id, principal, tax, merchant, key, payload_hash) \
             VALUES (?1, ?2, ?3, ?4, 'M_FLOOR', ?5, \
             'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')",
        )?;
        let mut total = tx.prepare(
            "UPDATE items SET principal_refunded = principal_refunded + ?2, \
             tax_refunded = tax_refunded + ?3 WHERE id = ?1",
        )?;
        for (n, m) in (1_i64..).zip(plan) {
            if read {
                let mut rows = load.query([amazon_order_id(m.order)])?;
                let mut refunded = 0_i64;
                while let Some(row) = rows.next()? {
                    refunded += row.get::<_, i64>(7)?;
                }
                std::hint::black_box(refunded);
            }
            let item = m.order * ITEMS + m.item;
            adjustment.execute(params![n, item, m.principal, m.tax, format!("K-{n}")])?;
            total.execute(params![item, m.principal, m.tax])?;
        }
    }
    tx.commit()?;
    Ok(())
}
