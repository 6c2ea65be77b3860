//! Model-based property test of the whole pipeline (issue 3 item 6, refund-rules §c7.2-3):
//! the engine model's random orders are written as a tab-separated order report and
//! imported into a fresh SQLite store; its random feeds (replays, reordered duplicates,
//! reused MerchantAdjustmentItemIDs) are written as Order Adjustment XML and run through
//! `pipeline::process_file`. The naive reference model of `engine_model` predicts every
//! message's result codes, and the report must agree message by message.
//!
//! After every feed the invariants I1-I7 are checked on the SQLite file itself through a
//! read-only rusqlite connection (I4 on the messages that applied), the order views of
//! `Store::orders` are compared with it, and the model's recomputed totals with the store's.
//! Every feed is then processed a second time: byte-identical, it must come back as a
//! DUPLICATE_FEED warning naming the first feed, with the store unchanged; and half the
//! time once more with `DuplicatePolicy::Process`, where the model predicts the replay too
//! (keyed messages come back as duplicates or with their pinned codes; a fully keyed feed
//! changes nothing, and a replay of the very same bytes says which feed it repeats). The
//! replay reads either the same file or a respelled copy (more trailing newlines). Between
//! feeds the order report is now and then imported again (New Orders or Unshipped style):
//! more units shipped, or an older report with fewer, which must not lower the count; the
//! model follows the shipped quantities and the refund history must not move. Another
//! merchant holds the same orders and must never change. Most seeds run the pipeline with
//! chunks of one to three messages, so chunk boundaries fall inside every feed.
//!
//! Not covered here: validation errors (generated messages are normalised to the
//! validator's contract, and every feed is first checked to validate to exactly the
//! messages the model sees), order imports with cancelled quantities (the order report has
//! no such column, so imported orders start with none cancelled), PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use adjustd::canon;
use adjustd::engine::{OrderState, Rules};
use adjustd::feed::Limits;
use adjustd::model::{
    ActionType, AdjustmentMessage, Amount, Component, ComponentClass, Currency, FulfillmentChannel,
    ItemPositions, ItemRef, MerchantId, OrderRef, Position, format_minor,
};
use adjustd::pipeline::{self, Context, DuplicatePolicy, Processed, Source};
use adjustd::problem::{Code, Severity};
use adjustd::report::FeedOutcome;
use adjustd::store::{AnyStore, FeedStatus, import};
use adjustd::validate::{ValidatedMessage, Validator};
use proptest::prelude::*;
use rusqlite::{Connection, OpenFlags, types::Value};

use crate::engine_model::{self, Expected, GENERATED_CODES, Model, Rng, STATE_CODES};

const MERCHANT: &str = "M_MODEL";
/// Holds the same orders (same AmazonOrderIDs and MerchantOrderIDs) and sends no feeds.
const OTHER_MERCHANT: &str = "M_OTHER";

fn merchant() -> MerchantId {
    MerchantId::new(MERCHANT).expect("valid merchant")
}

// ---------------------------------------------------------------------------------------
// Writing the inputs as files.

const REPORT_COLUMNS: &[&str] = &[
    "order-id",
    "order-item-id",
    "purchase-date",
    "merchant-order-id",
    "merchant-order-item-id",
    "sku",
    "product-name",
    "quantity-purchased",
    "quantity-shipped",
    "currency",
    "item-price",
    "item-tax",
    "shipping-price",
    "shipping-tax",
    "item-promotion-discount",
    "ship-promotion-discount",
    "fulfillment-channel",
];

/// The orders as a New Orders report (§8.2 column names). A component the order does not
/// charge is an empty field; promotion discounts are written with either sign.
fn order_report(rng: &mut Rng, orders: &[OrderState]) -> String {
    use adjustd::model::{PriceComponent as P, PromotionComponent as Pr};
    let mut text = REPORT_COLUMNS.join("\t");
    text.push('\n');
    for order in orders {
        for item in &order.items {
            let amount = |rng: &mut Rng, component: Component| {
                item.components
                    .get(&component)
                    .map_or_else(String::new, |t| {
                        let negative = component.class() == ComponentClass::Promotion
                            && t.charged > 0
                            && rng.chance(50);
                        format_minor(
                            if negative { -t.charged } else { t.charged },
                            order.currency,
                        )
                    })
            };
            let fields = [
                order.amazon_order_id.as_str().to_owned(),
                item.code.as_str().to_owned(),
                "2026-11-01T10:00:00+00:00".to_owned(),
                order
                    .merchant_order_id
                    .as_ref()
                    .map_or_else(String::new, |id| id.as_str().to_owned()),
                item.merchant_item_id
                    .as_ref()
                    .map_or_else(String::new, |id| id.as_str().to_owned()),
                format!("SKU-{}", item.code.as_str()),
                "Widget".to_owned(),
                item.quantity_ordered.to_string(),
                item.quantity_shipped.to_string(),
                order.currency.code().to_owned(),
                amount(rng, Component::Price(P::Principal)),
                amount(rng, Component::Price(P::Tax)),
                amount(rng, Component::Price(P::Shipping)),
                amount(rng, Component::Price(P::ShippingTax)),
                amount(rng, Component::Promotion(Pr::Principal)),
                amount(rng, Component::Promotion(Pr::Shipping)),
                match order.channel {
                    FulfillmentChannel::Amazon => "AFN".to_owned(),
                    FulfillmentChannel::Merchant => "MFN".to_owned(),
                },
            ];
            text.push_str(&fields.join("\t"));
            text.push('\n');
        }
    }
    text
}

/// The orders as an Unshipped Orders style report: no prices, no currency, no channel.
fn unshipped_report(orders: &[OrderState]) -> String {
    let mut text =
        String::from("order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\n");
    for order in orders {
        for item in &order.items {
            let _ = writeln!(
                text,
                "{}\t{}\tSKU-{}\t{}\t{}",
                order.amazon_order_id.as_str(),
                item.code.as_str(),
                item.code.as_str(),
                item.quantity_ordered,
                item.quantity_shipped
            );
        }
    }
    text
}

/// Currencies no generated order uses, by exponent: a declared currency that must not
/// match the order and must hold amounts of up to 4 fraction digits.
const FOREIGN: &[&str] = &["EUR", "BHD", "CLF"];

/// Rewrites a generated message into what a valid feed can say, so the validator hands the
/// engine exactly this message: promotion amounts are not positive; a declared currency is only expressible on amounts, and a
/// `currency` attribute too coarse for an amount is the validator's AmountPrecision (the
/// engine's check is exercised without the attribute); ActionType Cancel needs QuantityCancelled
/// on every item (joined bodies may lack it); price components come before promotion ones
/// in a feed. Deterministic, so repeated bodies stay equal.
fn normalise(message: &AdjustmentMessage, orders: &[OrderState]) -> AdjustmentMessage {
    let mut message = without_positions(message);
    for item in &mut message.items {
        // A promotion reversal is never positive (the generator's extra digit can make a
        // zero one +0.005; the validator's NegativeRefundComponent).
        for amount in &mut item.amounts {
            if amount.component.class() == ComponentClass::Promotion
                && amount.amount.value() > rust_decimal::Decimal::ZERO
            {
                amount.amount =
                    Amount::parse(&format!("-{}", amount.amount.value())).expect("a decimal");
            }
        }
        // A feed lists price components before promotions.
        item.amounts
            .sort_by_key(|a| matches!(a.component, Component::Promotion(_)));
    }
    if message.action == Some(ActionType::Cancel)
        && message.items.iter().any(|i| i.quantity_cancelled.is_none())
    {
        message.action = None;
    }
    let digits = message
        .items
        .iter()
        .flat_map(|i| i.amounts.iter().map(|a| a.amount))
        .map(Amount::fraction_digits)
        .max();
    message.currency = match (message.currency, digits) {
        (_, None) | (None, _) => None,
        (Some(declared), Some(digits)) if digits <= declared.exponent() => Some(declared),
        (Some(declared), Some(digits)) => {
            let order_currency = orders
                .iter()
                .find(|o| match &message.order {
                    OrderRef::Amazon(id) => &o.amazon_order_id == id,
                    OrderRef::Merchant(id) => o.merchant_order_id.as_ref() == Some(id),
                })
                .map(|o| o.currency);
            if order_currency == Some(declared) {
                None
            } else {
                FOREIGN
                    .iter()
                    .map(|code| Currency::from_code(code).expect("ISO 4217"))
                    .find(|c| c.exponent() >= digits)
            }
        }
    };
    message
}

/// The message with every position zeroed (positions are the reader's business).
fn without_positions(message: &AdjustmentMessage) -> AdjustmentMessage {
    let mut message = message.clone();
    let zero = Position { line: 0, column: 0 };
    message.position = zero;
    message.order_position = zero;
    for item in &mut message.items {
        item.position = zero;
        item.positions = ItemPositions::default();
        for amount in &mut item.amounts {
            amount.position = zero;
        }
    }
    message
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An amount as XML text, now and then with trailing zeros (the same value must be the
/// same payload).
fn amount_text(rng: &mut Rng, amount: Amount) -> String {
    let plain = amount.value().to_string();
    if rng.chance(20) && amount.fraction_digits() < 4 {
        let pad = "0".repeat(usize::try_from(4 - amount.fraction_digits()).expect("small"));
        if plain.contains('.') {
            format!("{plain}{pad}")
        } else {
            format!("{plain}.{pad}")
        }
    } else {
        plain
    }
}

/// The messages as an Order Adjustment feed (rev #12 element order).
fn feed_xml(rng: &mut Rng, messages: &[AdjustmentMessage]) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AmazonEnvelope>\n  <Header>\n    \
         <DocumentVersion>1.02</DocumentVersion>\n    <MerchantIdentifier>{MERCHANT}</MerchantIdentifier>\n  \
         </Header>\n  <MessageType>OrderAdjustment</MessageType>\n"
    );
    for message in messages {
        let attribute = message
            .currency
            .map_or_else(String::new, |c| format!(" currency=\"{}\"", c.code()));
        let amount = |rng: &mut Rng, kind: &str, value: Amount| {
            format!(
                "<Component><Type>{kind}</Type><Amount{attribute}>{}</Amount></Component>",
                amount_text(rng, value)
            )
        };
        let _ = writeln!(
            xml,
            "  <Message>\n    <MessageID>{}</MessageID>\n    <OrderAdjustment>",
            message.message_id
        );
        let _ = writeln!(
            xml,
            "      {}",
            match &message.order {
                OrderRef::Amazon(id) =>
                    format!("<AmazonOrderID>{}</AmazonOrderID>", escape(id.as_str())),
                OrderRef::Merchant(id) =>
                    format!("<MerchantOrderID>{}</MerchantOrderID>", escape(id.as_str())),
            }
        );
        if let Some(action) = message.action {
            let _ = writeln!(xml, "      <ActionType>{}</ActionType>", action.as_str());
        }
        for item in &message.items {
            xml.push_str("      <AdjustedItem>\n        ");
            match &item.item {
                ItemRef::Amazon(code) => {
                    let _ = write!(
                        xml,
                        "<AmazonOrderItemCode>{}</AmazonOrderItemCode>",
                        code.as_str()
                    );
                }
                ItemRef::Merchant(id) => {
                    let _ = write!(
                        xml,
                        "<MerchantOrderItemID>{}</MerchantOrderItemID>",
                        escape(id.as_str())
                    );
                }
            }
            if let Some(key) = &item.key {
                let _ = write!(
                    xml,
                    "\n        <MerchantAdjustmentItemID>{}</MerchantAdjustmentItemID>",
                    escape(key.as_str())
                );
            }
            let _ = write!(
                xml,
                "\n        <AdjustmentReason>{}</AdjustmentReason>",
                item.reason.as_str()
            );
            let prices: Vec<String> = item
                .amounts
                .iter()
                .filter_map(|a| match a.component {
                    Component::Price(p) => Some(amount(rng, p.as_str(), a.amount)),
                    Component::Promotion(_) => None,
                })
                .collect();
            if !prices.is_empty() {
                let _ = write!(
                    xml,
                    "\n        <ItemPriceAdjustments>{}</ItemPriceAdjustments>",
                    prices.concat()
                );
            }
            let promotions: Vec<String> = item
                .amounts
                .iter()
                .filter_map(|a| match a.component {
                    Component::Promotion(p) => Some(amount(rng, p.as_str(), a.amount)),
                    Component::Price(_) => None,
                })
                .collect();
            if !promotions.is_empty() {
                let _ = write!(
                    xml,
                    "\n        <PromotionAdjustments>{}</PromotionAdjustments>",
                    promotions.concat()
                );
            }
            if let Some(q) = item.quantity_cancelled {
                let _ = write!(
                    xml,
                    "\n        <QuantityCancelled>{}</QuantityCancelled>",
                    q.get()
                );
            }
            if let Some(q) = item.quantity {
                let _ = write!(xml, "\n        <Quantity>{}</Quantity>", q.get());
            }
            xml.push_str("\n      </AdjustedItem>\n");
        }
        xml.push_str("    </OrderAdjustment>\n  </Message>\n");
    }
    xml.push_str("</AmazonEnvelope>\n");
    xml
}

/// The feed file validates to exactly `messages` (positions aside): the serializer and
/// the normalisation keep the model and the pipeline looking at the same messages.
fn check_round_trip(path: &Path, messages: &[AdjustmentMessage]) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut validator = Validator::new(
        std::io::BufReader::new(file),
        Limits::default(),
        &Rules::default(),
    );
    let header = validator
        .header()
        .map_err(|p| format!("header rejected: {p:?}"))?;
    if header.merchant != merchant() {
        return Err(format!("header merchant {:?}", header.merchant));
    }
    for expected in messages {
        match validator.next_message() {
            Ok(Some(ValidatedMessage::Valid(message))) => {
                let message = without_positions(&message);
                if &message != expected {
                    return Err(format!(
                        "the feed reads back differently:\nwritten {expected:#?}\nread {message:#?}"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "message {} does not read back as valid: {other:?}",
                    expected.message_id
                ));
            }
        }
    }
    match validator.next_message() {
        Ok(None) => Ok(()),
        other => Err(format!("trailing content: {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// Reading the store.

/// Every row of the tables that hold orders, refunds and keys, as text, per table.
type Dump = BTreeMap<&'static str, Vec<String>>;

const TABLES: &[(&str, &str)] = &[
    ("orders", "SELECT * FROM orders ORDER BY id"),
    ("order_items", "SELECT * FROM order_items ORDER BY id"),
    (
        "item_components",
        "SELECT * FROM item_components ORDER BY item_id, component",
    ),
    ("adjustments", "SELECT * FROM adjustments ORDER BY id"),
    (
        "adjustment_amounts",
        "SELECT * FROM adjustment_amounts ORDER BY adjustment_id, component",
    ),
    (
        "idempotency_keys",
        "SELECT * FROM idempotency_keys ORDER BY merchant, key",
    ),
];

fn dump(db: &Connection) -> Result<Dump, String> {
    let mut out = Dump::new();
    for (table, sql) in TABLES {
        let mut statement = db.prepare(sql).map_err(|e| format!("{table}: {e}"))?;
        let n = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                let values = (0..n)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(format!("{values:?}"))
            })
            .map_err(|e| format!("{table}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{table}: {e}"))?;
        out.insert(table, rows);
    }
    Ok(out)
}

/// One row per (item, component) of `item_components` with what the item is.
#[derive(Debug)]
struct ComponentRow {
    order: String,
    item: String,
    component: String,
    class: String,
    charged: i64,
    refunded: i64,
    sum_of_adjustments: i64,
}

fn sql_u64(value: i64) -> u64 {
    u64::try_from(value).expect("ids are positive")
}

fn query<T>(
    db: &Connection,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, String> {
    let mut statement = db.prepare(sql).map_err(|e| format!("{sql}: {e}"))?;
    statement
        .query_map([], map)
        .map_err(|e| format!("{sql}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{sql}: {e}"))
}

/// I1-I7 on the SQLite file, and the model's recomputed totals against the store's.
/// `before` is the dump taken before the feed, `feed_ids` maps the model's feed indexes.
fn check_store(
    db: &Connection,
    model: &Model,
    orders: &[OrderState],
    before: &Dump,
    feed_ids: &[u64],
) -> Result<Dump, String> {
    let after = dump(db)?;
    // I7: adjustments and their amounts are only ever appended.
    for table in ["adjustments", "adjustment_amounts"] {
        let (old, new) = (&before[table], &after[table]);
        let kept: HashSet<&String> = new.iter().collect();
        if new.len() < old.len() || old.iter().any(|row| !kept.contains(row)) {
            return Err(format!("I7: {table} rows were rewritten or removed"));
        }
    }
    if after["adjustments"][..before["adjustments"].len()] != before["adjustments"][..] {
        return Err("I7: earlier adjustments changed or were reordered".into());
    }
    // Orders and items are what was imported, apart from cancelled quantities.
    if after["orders"] != before["orders"] {
        return Err("orders rows changed".into());
    }

    // I1 and I6 per (item, component).
    let components = query(
        db,
        "SELECT o.amazon_order_id, i.amazon_order_item_code, c.component, c.class, c.charged, \
         c.refunded, (SELECT COALESCE(SUM(aa.amount), 0) FROM adjustments a \
         JOIN adjustment_amounts aa ON aa.adjustment_id = a.id \
         WHERE a.item_id = c.item_id AND aa.component = c.component) \
         FROM item_components c JOIN order_items i ON i.id = c.item_id \
         JOIN orders o ON o.id = i.order_id WHERE o.merchant = 'M_MODEL' \
         ORDER BY c.item_id, c.component",
        |r| {
            Ok(ComponentRow {
                order: r.get(0)?,
                item: r.get(1)?,
                component: r.get(2)?,
                class: r.get(3)?,
                charged: r.get(4)?,
                refunded: r.get(5)?,
                sum_of_adjustments: r.get(6)?,
            })
        },
    )?;
    let mut stored: HashMap<(String, String, Component), i64> = HashMap::new();
    for row in &components {
        let component = Component::from_name(&row.component)
            .ok_or_else(|| format!("unknown component {row:?}"))?;
        let class = match component.class() {
            ComponentClass::Charge => "charge",
            ComponentClass::Fee => "fee",
            ComponentClass::Concession => "concession",
            ComponentClass::Promotion => "promotion",
        };
        let ok = match component.class() {
            ComponentClass::Charge => (0..=row.charged).contains(&row.refunded),
            ComponentClass::Promotion => (-row.charged..=0).contains(&row.refunded),
            ComponentClass::Fee => row.refunded <= 0,
            ComponentClass::Concession => row.refunded >= 0,
        };
        if row.class != class || !ok {
            return Err(format!("I1: {row:?}"));
        }
        if row.refunded != row.sum_of_adjustments {
            return Err(format!("I6: {row:?}"));
        }
        let order = orders
            .iter()
            .find(|o| o.amazon_order_id.as_str() == row.order)
            .ok_or_else(|| format!("unknown order {row:?}"))?;
        let item = order
            .items
            .iter()
            .find(|i| i.code.as_str() == row.item)
            .ok_or_else(|| format!("unknown item {row:?}"))?;
        let charged = item.components.get(&component).map_or(0, |t| t.charged);
        if row.charged != charged {
            return Err(format!("charged changed from {charged}: {row:?}"));
        }
        stored.insert(
            (row.order.clone(), row.item.clone(), component),
            row.refunded,
        );
    }
    let orphans = query(
        db,
        "SELECT COUNT(*) FROM adjustment_amounts aa JOIN adjustments a ON a.id = aa.adjustment_id \
         WHERE NOT EXISTS (SELECT 1 FROM item_components c \
         WHERE c.item_id = a.item_id AND c.component = aa.component)",
        |r| r.get::<_, i64>(0),
    )?;
    if orphans != [0] {
        return Err(format!("I6: {orphans:?} adjusted amounts without a total"));
    }

    // I2: every adjustment credits the buyer, or is a pure cancellation.
    let adjustments = query(
        db,
        "SELECT a.id, a.net, a.quantity_cancelled, COUNT(aa.component), \
         COALESCE(SUM(aa.amount), 0) FROM adjustments a \
         LEFT JOIN adjustment_amounts aa ON aa.adjustment_id = a.id GROUP BY a.id",
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        },
    )?;
    for (id, net, cancelled, n_amounts, sum) in adjustments {
        let pure_cancellation = n_amounts == 0 && cancelled > 0;
        if net != sum || !(net > 0 || pure_cancellation) {
            return Err(format!(
                "I2: adjustment {id} net {net}, amounts sum {sum} ({n_amounts}), cancelled {cancelled}"
            ));
        }
    }

    // I3 and the model's totals, item by item.
    let items = query(
        db,
        "SELECT o.amazon_order_id, i.amazon_order_item_code, i.quantity_ordered, \
         i.quantity_shipped, i.quantity_cancelled, \
         (SELECT COALESCE(SUM(a.quantity_cancelled), 0) FROM adjustments a WHERE a.item_id = i.id) \
         FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.merchant = 'M_MODEL'",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, u32>(5)?,
            ))
        },
    )?;
    let n_items: usize = orders.iter().map(|o| o.items.len()).sum();
    if items.len() != n_items {
        return Err(format!("{} items stored, {n_items} imported", items.len()));
    }
    for (order_id, code, ordered, shipped, cancelled, cancelled_by_adjustments) in items {
        let order = orders
            .iter()
            .find(|o| o.amazon_order_id.as_str() == order_id)
            .ok_or("unknown order")?;
        let item = order
            .items
            .iter()
            .find(|i| i.code.as_str() == code)
            .ok_or("unknown item")?;
        let expected = model.cancelled(&[], &order.amazon_order_id, &item.code, 0);
        if ordered != item.quantity_ordered
            || shipped != item.quantity_shipped
            || cancelled != cancelled_by_adjustments
            || cancelled != expected
            || shipped + cancelled > ordered
        {
            return Err(format!(
                "I3: {code} ordered {ordered} shipped {shipped} cancelled {cancelled} \
                 (adjustments {cancelled_by_adjustments}, model {expected})"
            ));
        }
        let components: HashSet<Component> = item
            .components
            .keys()
            .copied()
            .chain(
                stored
                    .keys()
                    .filter(|(o, i, _)| *o == order_id && *i == code)
                    .map(|(_, _, c)| *c),
            )
            .collect();
        for component in components {
            let refunded = stored
                .get(&(order_id.clone(), code.clone(), component))
                .copied()
                .unwrap_or(0);
            let expected = model.refunded(&[], &order.amazon_order_id, &item.code, component);
            if refunded != expected {
                return Err(format!(
                    "{code} {component} refunded {refunded} but the model says {expected}"
                ));
            }
        }
    }

    // I5: one key row per key, recorded by the message the model says, pinned alike.
    let keys = query(
        db,
        "SELECT merchant, key, feed_id, message_id, rejection_code FROM idempotency_keys \
         ORDER BY key",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                sql_u64(r.get(2)?),
                sql_u64(r.get(3)?),
                r.get::<_, Option<u32>>(4)?,
            ))
        },
    )?;
    let expected: Vec<(String, String, u64, u64, Option<u32>)> = model
        .key_records()
        .into_iter()
        .map(|(key, (feed, message), rejection)| {
            (
                MERCHANT.to_owned(),
                key,
                feed_ids[feed],
                message,
                rejection.map(Code::number),
            )
        })
        .collect();
    if keys != expected {
        return Err(format!(
            "I5: idempotency_keys {keys:?}, the model says {expected:?}"
        ));
    }
    let old_keys: HashSet<&String> = before["idempotency_keys"].iter().collect();
    let new_keys: HashSet<&String> = after["idempotency_keys"].iter().collect();
    if !old_keys.is_subset(&new_keys) {
        return Err("I5: a key record was rewritten".into());
    }
    Ok(after)
}

/// The order views agree with the SQL (`orders show` reads the same store).
fn check_views(
    context: &mut Context,
    db: &Connection,
    orders: &[OrderState],
) -> Result<(), String> {
    for order in orders {
        let views = context
            .store
            .as_store()
            .orders(Some(&merchant()), order.amazon_order_id.as_str())
            .map_err(|e| e.to_string())?;
        let [view] = views.as_slice() else {
            return Err(format!(
                "{} views of {}",
                views.len(),
                order.amazon_order_id
            ));
        };
        let count = query(
            db,
            &format!(
                "SELECT COUNT(*) FROM adjustments a JOIN order_items i ON i.id = a.item_id \
                 JOIN orders o ON o.id = i.order_id WHERE o.amazon_order_id = '{}'",
                order.amazon_order_id.as_str()
            ),
            |r| r.get::<_, i64>(0),
        )?;
        if count != [i64::try_from(view.adjustments.len()).expect("small")]
            || view.currency != order.currency.code()
            || view.items.len() != order.items.len()
            || view.merchant_order_id.as_deref()
                != order.merchant_order_id.as_ref().map(|id| id.as_str())
        {
            return Err(format!(
                "order view {view:?} disagrees with {count:?} adjustments"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The property.

fn source<'a>(path: &'a Path, name: &'a str) -> Source<'a> {
    Source {
        path,
        file_name: name,
        claim_token: None,
        bound_merchant: None,
        allowed_merchants: None,
        may_still_be_uploading: false,
    }
}

/// The result codes per MessageID, in report order.
fn codes_by_message(outcome: &FeedOutcome) -> BTreeMap<u64, Vec<Code>> {
    let mut map: BTreeMap<u64, Vec<Code>> = BTreeMap::new();
    for problem in &outcome.results {
        map.entry(problem.message_id.get())
            .or_default()
            .push(problem.code);
    }
    map
}

/// Compares one processed feed with the model, message by message, and returns the
/// model's expectations. `duplicate_of` is the feed that applied these bytes before (a
/// replay under `DuplicatePolicy::Process` is processed but says what it repeats).
fn compare(
    model: &mut Model,
    feed_index: usize,
    messages: &[AdjustmentMessage],
    processed: &Processed,
    duplicate_of: Option<u64>,
    db: &Connection,
) -> Result<Vec<Expected>, String> {
    let outcome = &processed.outcome;
    if outcome.status != FeedStatus::Complete || outcome.duplicate_of != duplicate_of {
        return Err(format!(
            "status {:?}, duplicate_of {:?}: {:?}",
            outcome.status, outcome.duplicate_of, outcome.results
        ));
    }
    let mut actual = codes_by_message(outcome);
    let mut expectations = Vec::new();
    let adjustment_rows = query(
        db,
        &format!(
            "SELECT message_id, COUNT(*) FROM adjustments WHERE feed_id = {} GROUP BY message_id",
            outcome.feed_id
        ),
        |r| Ok((sql_u64(r.get(0)?), r.get::<_, i64>(1)?)),
    )?;
    let adjustment_rows: HashMap<u64, i64> = adjustment_rows.into_iter().collect();
    for message in messages {
        let expected = model.step(feed_index, message);
        let id = message.message_id.get();
        let codes = actual.remove(&id).unwrap_or_default();
        if codes != expected.codes {
            let problems: Vec<_> = outcome
                .results
                .iter()
                .filter(|p| p.message_id == message.message_id)
                .collect();
            return Err(format!(
                "message {id}: model {:?}, pipeline {codes:?}\nmessage: {message:#?}\nproblems: {problems:#?}",
                expected.codes
            ));
        }
        // Applied now, not a replay (review warnings may come with it).
        let fresh = expected.applied && !expected.codes.contains(&Code::DuplicateAdjustment);
        // I4: what applied was in the order's currency.
        if fresh {
            let order = model
                .find_order(&message.order)
                .ok_or_else(|| format!("message {id} applied to an unknown order"))?;
            if message.currency.is_some_and(|c| c != order.currency) {
                return Err(format!(
                    "I4: message {id} applied in {:?}",
                    message.currency
                ));
            }
        }
        let rows = adjustment_rows.get(&id).copied().unwrap_or(0);
        if rows
            != if fresh {
                i64::try_from(message.items.len()).expect("small")
            } else {
                0
            }
        {
            return Err(format!(
                "message {id}: {rows} adjustment rows, model {expected:?}"
            ));
        }
        expectations.push(expected);
    }
    if !actual.is_empty() {
        return Err(format!("results for messages not in the feed: {actual:?}"));
    }
    let count = |f: &dyn Fn(&Expected) -> bool| {
        u64::try_from(expectations.iter().filter(|e| f(e)).count()).expect("small")
    };
    let counts = (
        outcome.messages_processed,
        outcome.messages_successful,
        outcome.messages_with_error,
        outcome.messages_with_warning,
    );
    let expected_counts = (
        u64::try_from(messages.len()).expect("small"),
        count(&|e| e.applied),
        count(&|e| e.codes.iter().any(|c| c.severity() == Severity::Error)),
        count(&|e| e.codes.iter().any(|c| c.severity() == Severity::Warning)),
    );
    if counts != expected_counts {
        return Err(format!(
            "counts (processed, successful, error, warning) {counts:?}, model {expected_counts:?}"
        ));
    }
    Ok(expectations)
}

/// What one scenario exercised.
#[derive(Debug, Default)]
struct Stats {
    messages: usize,
    applied: usize,
    codes: HashSet<Code>,
    duplicate_feeds: usize,
    process_replays: usize,
    reimports: usize,
}

/// A fresh folder for one scenario's store, order report, feeds and outbox: in `/dev/shm`
/// when there is one, because the commits' fsyncs would otherwise dominate the run time
/// (this test checks outcomes, not durability).
fn scratch_dir() -> Result<tempfile::TempDir, String> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("adjustd-model-")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.map_err(|e| format!("temp dir: {e}"))
}

/// What the `DuplicatePolicy::Process` replay of a feed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// The very file processed before.
    SameBytes,
    /// The same feed with more trailing newlines (another content hash).
    Respelled,
    /// One or the other, at random.
    Either,
}

/// `messages` with a derived key on every item that has none, from the content digest of
/// `xml`.
fn with_derived_keys(mut messages: Vec<AdjustmentMessage>, xml: &str) -> Vec<AdjustmentMessage> {
    let digests = canon::content_digests(xml.as_bytes()).expect("generated feeds have a digest");
    for message in &mut messages {
        message.derive_missing_keys(|| &digests);
    }
    messages
}

fn run_scenario(seed: u64, replay: Replay) -> Result<Stats, String> {
    let mut rng = Rng(seed);
    let mut orders = engine_model::generate_orders(&mut rng);
    // The order report cannot say that units were cancelled before.
    for item in orders.iter_mut().flat_map(|o| o.items.iter_mut()) {
        item.quantity_cancelled = 0;
    }
    let feeds = engine_model::generate_feeds(&mut rng, &orders);
    // Spelling choices (signs, trailing zeros, replays) from their own stream, so a seed
    // names the same orders and feeds as in the engine test.
    let mut writer = Rng(seed.rotate_left(17) ^ 0x5EED_F00D);
    let mut stats = Stats::default();

    let dir = scratch_dir()?;
    let db_path = dir.path().join("store.db");
    let mut store =
        AnyStore::open(&format!("sqlite:{}", db_path.display())).map_err(|e| e.to_string())?;
    let report_path = dir.path().join("orders.txt");
    std::fs::write(&report_path, order_report(&mut writer, &orders)).map_err(|e| e.to_string())?;
    let report = std::fs::read_to_string(&report_path).map_err(|e| e.to_string())?;
    let rows = import::parse_order_report(&report).map_err(|e| format!("order report: {e}"))?;
    // The same orders for another merchant first: nothing of theirs may ever change.
    let other = MerchantId::new(OTHER_MERCHANT).expect("valid merchant");
    for merchant in [other, merchant()] {
        store
            .as_store()
            .import_orders(&merchant, &rows)
            .map_err(|e| format!("import for {merchant}: {e}"))?;
    }
    let mut context = Context {
        store,
        rules: Rules::default(),
        limits: Limits::default(),
        duplicate_policy: DuplicatePolicy::Skip,
        outbox: dir.path().join("outbox"),
        // Three seeds in four plan in chunks of 1 to 3 messages, so the engine's snapshot is
        // dropped between messages and everything (orders, totals, idempotency keys of
        // earlier messages) must come back from the open transaction.
        chunk_messages: [1, 2, 3, pipeline::CHUNK_MESSAGES][(seed % 4) as usize],
        on_conflict: None,
    };
    let db = Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    check_import(&db, &orders)?;
    check_views(&mut context, &db, &orders)?;
    let other_state = other_merchant(&db)?;
    if other_state.len() < orders.len() {
        return Err(format!("{OTHER_MERCHANT}'s orders were not imported"));
    }

    let mut model = Model::new(orders.clone());
    let mut feed_ids: Vec<u64> = Vec::new();
    // Bytes of the feeds applied so far: the feed id that applied them, and whether that
    // run left messages for later (then the same bytes are processed again).
    let mut applied: HashMap<String, (u64, bool)> = HashMap::new();
    let mut state = dump(&db)?;
    for (index, feed) in feeds.iter().enumerate() {
        let messages: Vec<AdjustmentMessage> = feed.iter().map(|m| normalise(m, &orders)).collect();
        let xml = feed_xml(&mut writer, &messages);
        let name = format!("feed-{index}.xml");
        let path = dir.path().join(&name);
        std::fs::write(&path, &xml).map_err(|e| e.to_string())?;
        check_round_trip(&path, &messages).map_err(|e| format!("feed {index}: {e}"))?;
        // What the model sees: the items without a MerchantAdjustmentItemID keyed by the
        // feed's content, as the pipeline keys them (refund-rules c3.2).
        let messages = with_derived_keys(messages, &xml);
        let context_error = |e: pipeline::ProcessError| format!("feed {index}: {e:?}");

        let processed =
            pipeline::process_file(&mut context, &source(&path, &name)).map_err(context_error)?;
        let first_feed_id = if let Some(&(earlier, retried)) = applied.get(&xml) {
            // Generated twice byte for byte: the pipeline must see the duplicate, or retry
            // it when the first run left messages for later.
            if retried {
                state = check_retried(
                    &mut model,
                    &mut feed_ids,
                    &messages,
                    &processed,
                    earlier,
                    &db,
                    &orders,
                    &state,
                )
                .map_err(|e| format!("feed {index} (same bytes as feed {earlier}): {e}"))?;
                stats.process_replays += 1;
            } else {
                check_duplicate(&processed.outcome, earlier, &db, &state)
                    .map_err(|e| format!("feed {index} (same bytes as feed {earlier}): {e}"))?;
                stats.duplicate_feeds += 1;
            }
            earlier
        } else {
            let feed_index = feed_ids.len();
            feed_ids.push(processed.outcome.feed_id);
            let expectations = compare(&mut model, feed_index, &messages, &processed, None, &db)
                .map_err(|e| format!("feed {index}: {e}"))?;
            for expected in &expectations {
                stats.applied += usize::from(expected.applied);
                stats.codes.extend(expected.codes.iter().copied());
            }
            stats.messages += messages.len();
            state = check_store(&db, &model, &orders, &state, &feed_ids)
                .map_err(|e| format!("feed {index}: {e}"))?;
            applied.insert(
                xml.clone(),
                (
                    processed.outcome.feed_id,
                    left_for_later(&processed.outcome),
                ),
            );
            processed.outcome.feed_id
        };

        // The same file again: a duplicate naming the first feed, nothing changed (or,
        // when the first run left messages for later, processed again to the same effect).
        let again =
            pipeline::process_file(&mut context, &source(&path, &name)).map_err(context_error)?;
        if applied[&xml].1 {
            state = check_retried(
                &mut model,
                &mut feed_ids,
                &messages,
                &again,
                first_feed_id,
                &db,
                &orders,
                &state,
            )
            .map_err(|e| format!("feed {index} processed again: {e}"))?;
            stats.process_replays += 1;
        } else {
            check_duplicate(&again.outcome, first_feed_id, &db, &state)
                .map_err(|e| format!("feed {index} processed again: {e}"))?;
            stats.duplicate_feeds += 1;
        }

        // Half the time, once more with duplicates processed: only the idempotency keys
        // protect the store now, and the model predicts every message again.
        if writer.chance(50) {
            context.duplicate_policy = DuplicatePolicy::Process;
            let same_bytes = match replay {
                Replay::SameBytes => true,
                Replay::Respelled => false,
                Replay::Either => writer.chance(50),
            };
            let replay_path = if same_bytes {
                path.clone()
            } else {
                // Trailing newlines, one more per feed: bytes never processed before (a
                // feed generated twice is respelled differently each time).
                let respelled = dir.path().join(format!("replay-{index}.xml"));
                let newlines = "\n".repeat(index + 1);
                std::fs::write(&respelled, format!("{xml}{newlines}"))
                    .map_err(|e| e.to_string())?;
                respelled
            };
            let replayed = pipeline::process_file(&mut context, &source(&replay_path, &name));
            context.duplicate_policy = DuplicatePolicy::Skip;
            let replay = replayed.map_err(|e| format!("feed {index} replayed (Process): {e:?}"))?;
            let feed_index = feed_ids.len();
            feed_ids.push(replay.outcome.feed_id);
            let first_codes = codes_by_message(&processed.outcome);
            let expectations = compare(
                &mut model,
                feed_index,
                &messages,
                &replay,
                same_bytes.then_some(first_feed_id),
                &db,
            )
            .map_err(|e| format!("feed {index} replayed (Process): {e}"))?;
            check_replay(&messages, &first_codes, &processed, &expectations)
                .map_err(|e| format!("feed {index} replayed (Process): {e}"))?;
            let after = check_store(&db, &model, &orders, &state, &feed_ids)
                .map_err(|e| format!("feed {index} replayed (Process): {e}"))?;
            // Every item has a key (its own or one derived from the content, which a
            // respelled copy shares): a replay changes nothing.
            if after != state {
                return Err(format!(
                    "feed {index} replayed (Process): the replay changed the store"
                ));
            }
            state = after;
            stats.process_replays += 1;
        }
        // Now and then the order report again, downloaded later: more units shipped, and
        // for some items an older report with none shipped, which must not lower the
        // count. Refund history must not move; later feeds see the new quantities.
        if writer.chance(30) {
            let mut reported = orders.clone();
            for (order, report_order) in orders.iter_mut().zip(&mut reported) {
                for (item, report_item) in order.items.iter_mut().zip(&mut report_order.items) {
                    let cancelled = model.cancelled(&[], &order.amazon_order_id, &item.code, 0);
                    let room = item.quantity_ordered - cancelled;
                    if writer.chance(40) {
                        let shipped =
                            writer.range(i64::from(item.quantity_shipped), i64::from(room));
                        let shipped = u32::try_from(shipped).expect("small");
                        item.quantity_shipped = shipped;
                        report_item.quantity_shipped = shipped;
                        model.set_shipped(&order.amazon_order_id, &item.code, shipped);
                    } else if item.quantity_shipped > 0 && writer.chance(20) {
                        report_item.quantity_shipped = 0;
                    }
                }
            }
            let text = if writer.chance(50) {
                order_report(&mut writer, &reported)
            } else {
                unshipped_report(&reported)
            };
            let report_path = dir.path().join(format!("orders-{index}.txt"));
            std::fs::write(&report_path, &text).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(&report_path).map_err(|e| e.to_string())?;
            let rows = import::parse_order_report(&text)
                .map_err(|e| format!("after feed {index}: order report: {e}"))?;
            context
                .store
                .as_store()
                .import_orders(&merchant(), &rows)
                .map_err(|e| format!("after feed {index}: re-import: {e}"))?;
            state = check_store(&db, &model, &orders, &state, &feed_ids)
                .map_err(|e| format!("after feed {index}: re-import: {e}"))?;
            stats.reimports += 1;
        }
        check_views(&mut context, &db, &orders).map_err(|e| format!("feed {index}: {e}"))?;
        if other_merchant(&db)? != other_state {
            return Err(format!(
                "feed {index}: the orders of {OTHER_MERCHANT} (same order ids) changed"
            ));
        }
    }
    Ok(stats)
}

/// Items, totals and adjustments of the other merchant's orders.
fn other_merchant(db: &Connection) -> Result<Vec<String>, String> {
    query(
        db,
        "SELECT i.id, i.quantity_ordered, i.quantity_shipped, i.quantity_cancelled, \
         c.component, c.charged, c.refunded, \
         (SELECT COUNT(*) FROM adjustments a WHERE a.item_id = i.id) \
         FROM order_items i JOIN orders o ON o.id = i.order_id \
         LEFT JOIN item_components c ON c.item_id = i.id \
         WHERE o.merchant = 'M_OTHER' ORDER BY i.id, c.component",
        |r| {
            let values = (0..8)
                .map(|i| r.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("{values:?}"))
        },
    )
}

/// The imported store holds exactly the generated orders.
fn check_import(db: &Connection, orders: &[OrderState]) -> Result<(), String> {
    let stored = query(
        db,
        "SELECT o.merchant, o.amazon_order_id, o.merchant_order_id, o.currency, \
         o.fulfillment_channel, i.amazon_order_item_code, i.merchant_order_item_id, \
         i.quantity_ordered, i.quantity_shipped, i.quantity_cancelled \
         FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.merchant = 'M_MODEL' \
         ORDER BY i.id",
        |r| {
            Ok(format!(
                "{}|{}|{:?}|{}|{}|{}|{:?}|{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, u32>(7)?,
                r.get::<_, u32>(8)?,
                r.get::<_, u32>(9)?,
            ))
        },
    )?;
    let expected: Vec<String> = orders
        .iter()
        .flat_map(|o| {
            o.items.iter().map(move |i| {
                format!(
                    "{MERCHANT}|{}|{:?}|{}|{}|{}|{:?}|{}|{}|0",
                    o.amazon_order_id.as_str(),
                    o.merchant_order_id
                        .as_ref()
                        .map(|id| id.as_str().to_owned()),
                    o.currency.code(),
                    o.channel.as_str(),
                    i.code.as_str(),
                    i.merchant_item_id.as_ref().map(|id| id.as_str().to_owned()),
                    i.quantity_ordered,
                    i.quantity_shipped,
                )
            })
        })
        .collect();
    if stored != expected {
        return Err(format!(
            "import: stored {stored:#?}\nexpected {expected:#?}"
        ));
    }
    Ok(())
}

/// A byte-identical feed under the default policy: a DUPLICATE_FEED warning naming the
/// feed that applied these bytes, nothing processed, the store unchanged.
fn check_duplicate(
    outcome: &FeedOutcome,
    earlier: u64,
    db: &Connection,
    state: &Dump,
) -> Result<(), String> {
    let codes: Vec<(u64, Code)> = outcome
        .results
        .iter()
        .map(|p| (p.message_id.get(), p.code))
        .collect();
    if outcome.status != FeedStatus::Complete
        || outcome.duplicate_of != Some(earlier)
        || codes != [(0, Code::DuplicateFeed)]
        || Code::DuplicateFeed.severity() != Severity::Warning
        || outcome.messages_processed != 0
        || outcome.messages_with_warning != 0
    {
        return Err(format!(
            "not reported as a duplicate of feed {earlier}: {outcome:#?}"
        ));
    }
    if dump(db)? != *state {
        return Err("the duplicate feed changed the store".into());
    }
    Ok(())
}

/// True when a feed with this outcome left messages for later (an order not found, or
/// results the report left out): its bytes are processed again under the skip policy.
fn left_for_later(outcome: &FeedOutcome) -> bool {
    outcome
        .results
        .iter()
        .any(|p| matches!(p.code, Code::OrderNotFound | Code::ResultsOmitted))
}

/// The same bytes processed again under the skip policy because their first run (feed
/// `earlier`) left messages for later: the model predicts every message again, and nothing
/// changes (generated scenarios never import a missing order later). Returns the new dump.
// The scenario's state, passed whole; a struct for it would only rename the arguments.
#[allow(clippy::too_many_arguments)]
fn check_retried(
    model: &mut Model,
    feed_ids: &mut Vec<u64>,
    messages: &[AdjustmentMessage],
    processed: &Processed,
    earlier: u64,
    db: &Connection,
    orders: &[OrderState],
    state: &Dump,
) -> Result<Dump, String> {
    let feed_index = feed_ids.len();
    feed_ids.push(processed.outcome.feed_id);
    compare(model, feed_index, messages, processed, Some(earlier), db)?;
    let after = check_store(db, model, orders, state, feed_ids)?;
    if after != *state {
        return Err("processing the same bytes again changed the store".to_owned());
    }
    Ok(after)
}

/// A replay under `DuplicatePolicy::Process`: every fully keyed message that applied the
/// first time is a duplicate now, every fully keyed message whose rejection was pinned
/// fails with the same codes.
fn check_replay(
    messages: &[AdjustmentMessage],
    first_codes: &BTreeMap<u64, Vec<Code>>,
    first: &Processed,
    replay: &[Expected],
) -> Result<(), String> {
    // `first` may itself have been a duplicate feed; then its codes say nothing here.
    if first.outcome.duplicate_of.is_some() {
        return Ok(());
    }
    for (message, second) in messages.iter().zip(replay) {
        let mut keys = HashSet::new();
        let fully_keyed = message
            .items
            .iter()
            .all(|i| i.key.as_ref().is_some_and(|k| keys.insert(k)));
        if !fully_keyed {
            continue;
        }
        let codes = first_codes
            .get(&message.message_id.get())
            .cloned()
            .unwrap_or_default();
        let first_applied = codes.iter().all(|c| c.severity() == Severity::Warning);
        let pinned = !first_applied
            && codes
                .iter()
                .all(|c| *c == Code::LinkedItemFailed || STATE_CODES.contains(c));
        if first_applied
            && !(second.applied && second.codes.iter().all(|c| *c == Code::DuplicateAdjustment))
        {
            return Err(format!(
                "message {}: applied, then {:?}",
                message.message_id, second.codes
            ));
        }
        if pinned && (second.applied || second.codes != codes) {
            return Err(format!(
                "message {}: pinned {codes:?}, then {:?}",
                message.message_id, second.codes
            ));
        }
    }
    Ok(())
}

/// Scenarios per run: 64 (about a second in release), or `PROPTEST_CASES` for a soak.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_sqlite_pipeline_agrees_with_the_reference_model(seed in any::<u64>()) {
        if let Err(failure) = run_scenario(seed, Replay::Either) {
            prop_assert!(false, "seed {seed}: {failure}");
        }
    }
}

/// Fixed seeds, so the property is not vacuous: they reach every engine code through the
/// real pipeline, byte-identical feeds and `Process` replays.
#[test]
fn fixed_seeds_cover_the_engine_codes_through_the_pipeline() {
    let mut total = Stats::default();
    for seed in 0..24 {
        let stats =
            run_scenario(seed, Replay::Respelled).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        total.messages += stats.messages;
        total.applied += stats.applied;
        total.codes.extend(stats.codes);
        total.duplicate_feeds += stats.duplicate_feeds;
        total.process_replays += stats.process_replays;
        total.reimports += stats.reimports;
    }
    assert!(
        total.applied > 20,
        "only {} messages applied",
        total.applied
    );
    assert!(total.process_replays > 5, "{total:?}");
    assert!(total.reimports > 5, "{total:?}");
    // A restocking fee that passes every rule is rare in 24 seeds' few dozen applied
    // messages; the engine test's 300 seeds reach it, and tests/it/cli.rs runs it end to end.
    let missing: Vec<&str> = GENERATED_CODES
        .iter()
        .filter(|c| !total.codes.contains(c) && **c != Code::RestockingFeeReview)
        .map(|c| c.name())
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?} ({total:?})");
}

/// `DuplicatePolicy::Process` on the very bytes processed before, every time: the feed is
/// processed like any other (idempotency keys still protect against replays) and names the
/// feed it repeats; the model predicts every message, keyed ones come back as duplicates
/// or pinned rejections.
#[test]
fn the_same_bytes_under_the_process_policy_agree_with_the_model() {
    let mut replays = 0;
    for seed in 0..6 {
        let stats =
            run_scenario(seed, Replay::SameBytes).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        replays += stats.process_replays;
    }
    assert!(replays > 0, "no replay under the Process policy");
}

/// Seeds that once found a disagreement, kept so it stays fixed: 4874878524195661517 replays
/// a key with the order named by its other id, for an item the order does not have.
#[test]
fn seeds_that_once_failed_still_agree() {
    let seeds: &[u64] = &[4_874_878_524_195_661_517];
    for &seed in seeds {
        run_scenario(seed, Replay::Either).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}
