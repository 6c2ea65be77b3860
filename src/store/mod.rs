//! The order store: a small trait, the SQLite backend (embedded default) and the PostgreSQL
//! backend (several instances), with versioned migrations and CHECK constraints that make
//! the refund invariants impossible to break even by a bug in the engine.
//!
//! The store knows SQL and nothing about XML. One feed is one transaction
//! ([`FeedTx`]): load what the engine needs, apply its changes, commit the feed record.

pub mod import;
pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::engine::{Change, ComponentTotals, ItemBalance, Needs, Snapshot, money};
use crate::model::{
    AmazonOrderId, Component, ComponentClass, Currency, FulfillmentChannel, MerchantId,
    OrderItemCode, OrderRef, PriceComponent, PromotionComponent, SellerId, format_minor,
    purchase_instant, same_purchase_date,
};
use crate::store::import::{ImportError, column_for};

/// Errors of the store. At start, [`StoreError::is_transient`] says which errors the daemon
/// waits out; for a feed, [`StoreError::is_caused_by_request`] says which errors may fail it
/// (every other one holds the feed until the store takes it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, the connection broke, or (SQLite) another process
    /// held the database beyond the busy timeout; retry later.
    #[error("database unavailable: {detail}")]
    Unavailable {
        /// What the driver said.
        detail: String,
    },
    /// A race with another instance on the same database (PostgreSQL's serialization
    /// failures and deadlocks, a unique key taken first); retry the whole feed at once.
    #[error("transaction conflict: {detail}")]
    Conflict {
        /// What the driver said.
        detail: String,
    },
    /// Another process holds the single-writer lock of this SQLite database.
    #[error("database {path} is locked by another adjustd process ({holder})")]
    Locked {
        /// The database file.
        path: String,
        /// Who holds the lock, as written in the lock file.
        holder: String,
    },
    /// The database was written by a newer adjustd (schema version above ours).
    #[error(
        "database schema version {found} is newer than this adjustd supports ({supported}): a newer adjustd migrated it; upgrade this adjustd to that release"
    )]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The request would break a store invariant (a CHECK or UNIQUE constraint, or bad
    /// input such as an order report that lowers a charged amount below what was refunded),
    /// holds values the store cannot take (PostgreSQL's data exceptions and program limits),
    /// or reads back a feed's own record that cannot be used; or a reader found no schema,
    /// or an older one, that it may not create or migrate. The one kind caused by the
    /// request itself ([`StoreError::is_caused_by_request`]).
    #[error("{detail}")]
    Invalid {
        /// What is wrong, naming the order, item and column.
        detail: String,
    },
    /// Any other database error: the store's state, not the request's (permissions, a
    /// schema this build does not expect, an error nobody foresaw), so a feed waits for it
    /// to be mended rather than fail.
    #[error("database error: {detail}")]
    Other {
        /// What the driver said.
        detail: String,
    },
}

impl StoreError {
    /// True for errors where retrying the same work later can succeed (connection loss,
    /// a busy SQLite database, serialization failure, deadlock). The daemon keeps the file
    /// and retries.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Conflict { .. }
        )
    }

    /// True only for errors the request itself causes ([`StoreError::Invalid`]): the same
    /// work fails the same way however often it is tried. Every other error is about the
    /// store (away, busy, migrated by a newer adjustd, a privilege revoked, an error of no
    /// known kind): the same work can succeed once that is mended, so the daemon holds a
    /// feed that meets one rather than fail it without a report.
    pub fn is_caused_by_request(&self) -> bool {
        matches!(self, StoreError::Invalid { .. })
    }
}

impl StoreError {
    /// The conflict's detail when this is a [`StoreError::Conflict`].
    pub fn conflict(&self) -> Option<&str> {
        match self {
            StoreError::Conflict { detail } => Some(detail),
            _ => None,
        }
    }
}

/// A conflict (serialization failure, deadlock, lost race on a unique key) runs the whole
/// transaction again, this many times in all, before the caller gets it.
pub const CONFLICT_ATTEMPTS: u32 = 8;

/// Runs `attempt` again while it fails with a conflict with another instance or process
/// (`conflict` finds the [`StoreError::Conflict`] detail in its error), pausing a little
/// longer each time, at most [`CONFLICT_ATTEMPTS`] times in all: the retry sees the
/// winner's rows. `retrying` is told the failed attempt's number and the conflict, for
/// the log. Feeds ([`crate::pipeline`]) and PostgreSQL's order imports retry this way.
///
/// # Errors
/// The attempt's error when it is no conflict, or the last conflict.
pub fn retry_conflicts<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    conflict: impl Fn(&E) -> Option<&str>,
    mut retrying: impl FnMut(u32, &str),
) -> Result<T, E> {
    let mut attempt_number = 1;
    loop {
        match attempt() {
            Err(error) if attempt_number < CONFLICT_ATTEMPTS => match conflict(&error) {
                Some(detail) => {
                    retrying(attempt_number, detail);
                    std::thread::sleep(std::time::Duration::from_millis(
                        5 << attempt_number.min(6),
                    ));
                    attempt_number += 1;
                }
                None => return Err(error),
            },
            other => return other,
        }
    }
}

/// Final status of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum FeedStatus {
    /// Processed: messages applied or rejected one by one.
    Complete,
    /// Rejected as a whole: nothing applied.
    Rejected,
}

impl FeedStatus {
    /// `Complete` or `Rejected`, as in the ProcessingReport `StatusCode`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedStatus::Complete => "Complete",
            FeedStatus::Rejected => "Rejected",
        }
    }
}

/// The start of a feed record, written when its transaction begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeed {
    /// The merchant the feed speaks for (`None` when the header could not be read).
    pub merchant: Option<MerchantId>,
    /// The file name as dropped (no folder).
    pub file_name: String,
    /// Hex SHA-256 of the file's bytes, or [`crate::pipeline::UNREAD_CONTENT_HASH`] for
    /// a feed rejected for its size before it was read.
    pub content_hash: String,
    /// Unique token of the claim (the name in `work/`), so a restart after a crash can tell
    /// its own earlier attempt from a new upload of the same bytes. `None` for
    /// `adjustd process`.
    pub claim_token: Option<String>,
    /// Where the feed's reports go: [`ReportFolder::Merchant`] for a feed from
    /// `inbox/<merchant>/`, else [`ReportFolder::Outbox`].
    pub report_folder: ReportFolder,
    /// [`FeedTx::load`] gives each order item the adjustments applied to it on or after
    /// this (UTC) day, [`crate::engine::ItemState::recent_adjustments`], for the
    /// resubmission warning ([`crate::engine::Rules::recent_adjustments_since`]); `None`
    /// (the warning is off): none. Not part of the feed record.
    pub recent_adjustments_since: Option<chrono::NaiveDate>,
}

/// The end of a feed record, written in the same transaction as its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedDone {
    /// Complete or Rejected.
    pub status: FeedStatus,
    /// The earlier feed with the same bytes, when this one was not applied because of it.
    pub duplicate_of: Option<u64>,
    /// Messages processed.
    pub messages_processed: u64,
    /// Messages applied (warnings included).
    pub messages_successful: u64,
    /// Messages with an error.
    pub messages_with_error: u64,
    /// Messages with a warning.
    pub messages_with_warning: u64,
    /// The JSON report, kept so a retry after a crash can re-emit it unchanged. Megabytes
    /// for a report of 20 000 results: [`FeedTx::commit`] takes it and drops it as soon as
    /// the database holds its own copy.
    pub report_json: String,
}

/// A committed feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedRecord {
    /// The feed id (the report's DocumentTransactionID).
    pub id: u64,
    /// Merchant, when known.
    pub merchant: Option<String>,
    /// File name as dropped.
    pub file_name: String,
    /// Hex SHA-256 of the bytes, or [`crate::pipeline::UNREAD_CONTENT_HASH`] (rejected
    /// for its size, not read).
    pub content_hash: String,
    /// Complete or Rejected.
    pub status: FeedStatus,
    /// Earlier feed with the same bytes, for duplicates.
    pub duplicate_of: Option<u64>,
    /// RFC 3339 UTC time of the commit.
    pub processed_at: String,
    /// Counts as in [`FeedDone`].
    pub messages_processed: u64,
    /// Messages applied.
    pub messages_successful: u64,
    /// Messages with an error.
    pub messages_with_error: u64,
    /// Messages with a warning.
    pub messages_with_warning: u64,
    /// The JSON report as committed.
    #[serde(skip)]
    pub report_json: String,
    /// Where its reports went.
    #[serde(skip)]
    pub report_folder: ReportFolder,
}

/// The folder of the outbox a feed's reports go to, as recorded with the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportFolder {
    /// The outbox itself (a feed from the top-level inbox or from outside the inbox).
    Outbox,
    /// `outbox/<merchant>/` (a feed from `inbox/<merchant>/`).
    Merchant(MerchantId),
    /// Not recorded: the feed was recorded before schema version 5 (SQLite) or 3
    /// (PostgreSQL).
    Unrecorded,
}

impl ReportFolder {
    /// The folder of a feed from `merchant_folder` (`inbox/<merchant>/`, `None`: elsewhere).
    pub fn of(merchant_folder: Option<&MerchantId>) -> ReportFolder {
        merchant_folder.map_or(ReportFolder::Outbox, |m| ReportFolder::Merchant(m.clone()))
    }

    /// The column value: `''` for the outbox, the merchant id for its folder.
    pub fn to_column(&self) -> Option<&str> {
        match self {
            ReportFolder::Outbox => Some(""),
            ReportFolder::Merchant(merchant) => Some(merchant.as_str()),
            ReportFolder::Unrecorded => None,
        }
    }

    /// Reads the column back.
    ///
    /// # Errors
    /// A value that is neither empty nor a merchant id.
    pub fn from_column(value: Option<String>) -> Result<ReportFolder, StoreError> {
        match value.as_deref() {
            None => Ok(ReportFolder::Unrecorded),
            Some("") => Ok(ReportFolder::Outbox),
            Some(merchant) => MerchantId::new(merchant)
                .map(ReportFolder::Merchant)
                .ok_or_else(|| StoreError::Other {
                    detail: format!("corrupt report folder in the store: {merchant:?}"),
                }),
        }
    }
}

/// One line of an order report, parsed (see [`import`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// 1-based line in the file, for messages.
    pub line: u32,
    /// `order-id` / `amazon-order-id`.
    pub amazon_order_id: AmazonOrderId,
    /// `merchant-order-id`.
    pub merchant_order_id: Option<SellerId>,
    /// `order-item-id`.
    pub item_code: OrderItemCode,
    /// `merchant-order-item-id`.
    pub merchant_item_id: Option<SellerId>,
    /// `purchase-date` as written.
    pub purchase_date: Option<String>,
    /// `sku`.
    pub sku: String,
    /// `quantity-purchased`.
    pub quantity_ordered: u32,
    /// `quantity-shipped`, when the report has it.
    pub quantity_shipped: Option<u32>,
    /// `currency`, when the report has it (the New Orders report does; Unshipped does not).
    pub currency: Option<Currency>,
    /// Charged amounts from the price columns, in minor units; empty when the report has
    /// no price columns.
    pub charged: Vec<(Component, i64)>,
    /// `fulfillment-channel` (AFN/MFN; `Amazon`/`Merchant` accepted too).
    pub channel: Option<FulfillmentChannel>,
}

/// The rows of an order report, as [`import::OrderReport`] parses them.
pub type Rows<'a> = Box<dyn Iterator<Item = Result<OrderRow, ImportError>> + 'a>;

/// Where [`Store::import_orders`] reads an order report. Each call of `rows` starts again
/// from the first line: a backend that retries its transaction (PostgreSQL after a
/// conflict with another import, [`retry_conflicts`]) reads the rows again, so none need be held in memory
/// ([`import::ReportFile`] streams a file; rows already in memory serve tests).
pub trait RowSource {
    /// The rows from the first.
    ///
    /// # Errors
    /// The report cannot be opened, or its header is bad.
    fn rows(&self) -> Result<Rows<'_>, ImportError>;
}

impl RowSource for [OrderRow] {
    fn rows(&self) -> Result<Rows<'_>, ImportError> {
        Ok(Box::new(self.iter().cloned().map(Ok)))
    }
}

impl RowSource for Vec<OrderRow> {
    fn rows(&self) -> Result<Rows<'_>, ImportError> {
        self.as_slice().rows()
    }
}

impl<const N: usize> RowSource for [OrderRow; N] {
    fn rows(&self) -> Result<Rows<'_>, ImportError> {
        self.as_slice().rows()
    }
}

/// False when `item` (as loaded, with its running totals) can have no adjustment at all, so
/// loading its recent adjustments needs no search. Every adjustment has a positive net or
/// cancels units (the CHECK on `adjustments`), and the running totals are the sums of the
/// adjustments' amounts (written in the same transaction): an item whose totals are all
/// zero and that has no unit cancelled or returned was never adjusted. Most items a feed
/// touches are in that state the first time, so only items refunded before cost a search.
pub(crate) fn may_have_adjustments(item: &crate::engine::ItemState) -> bool {
    item.quantity_cancelled > 0
        || item.quantity_returned > 0
        || item.components.values().any(|totals| totals.refunded != 0)
}

/// The UTC day of an adjustment's `created_at` (RFC 3339 in UTC, as both backends write
/// it), for [`crate::engine::RecentAdjustment::applied_on`].
pub(crate) fn created_on(created_at: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(created_at.get(..10)?, "%Y-%m-%d").ok()
}

/// A bad line of the report fails the import like a row that contradicts the store: it
/// names the line (and column), and nothing is imported.
impl From<ImportError> for StoreError {
    fn from(error: ImportError) -> StoreError {
        StoreError::Invalid {
            detail: error.to_string(),
        }
    }
}

/// An order report line that contradicts the store or itself, as an import error naming
/// the line, the column and the order item.
pub(crate) fn import_invalid(row: &OrderRow, column: &str, detail: String) -> StoreError {
    StoreError::Invalid {
        detail: format!(
            "line {}, column {column}: order {} item {}: {detail}",
            row.line, row.amazon_order_id, row.item_code
        ),
    }
}

/// The shipped units of a stored item after an import line: the line's quantity-shipped,
/// but never fewer than `shipped_before` (units do not come back once shipped: an older
/// report imported again, taken before the shipment, must not lower the count).
///
/// # Errors
/// [`StoreError::Invalid`] when the units would not fit in the line's quantity-purchased,
/// naming the column at fault: quantity-purchased when it is below the units already
/// shipped and cancelled (which no report can lower), else quantity-shipped.
pub(crate) fn shipped_after_import(
    row: &OrderRow,
    shipped_before: i64,
    cancelled: i64,
) -> Result<i64, StoreError> {
    let ordered = i64::from(row.quantity_ordered);
    if shipped_before + cancelled > ordered {
        return Err(import_invalid(
            row,
            "quantity-purchased",
            format!(
                "{ordered} ordered, but {shipped_before} {} already shipped and {cancelled} \
                 cancelled",
                if shipped_before == 1 {
                    "unit was"
                } else {
                    "units were"
                }
            ),
        ));
    }
    let shipped = row
        .quantity_shipped
        .map_or(shipped_before, |given| i64::from(given).max(shipped_before));
    if shipped + cancelled > ordered {
        return Err(import_invalid(
            row,
            "quantity-shipped",
            format!(
                "{shipped} shipped + {cancelled} already cancelled is more than the {ordered} ordered"
            ),
        ));
    }
    Ok(shipped)
}

/// Checks the amounts an import line charges an item (`row.charged`), new or already in
/// the store, against what was charged and refunded of it; `stored` holds every component
/// of the item with its totals as stored (empty for a new item). The caller then writes
/// the line's amounts.
///
/// # Errors
/// [`StoreError::Invalid`] naming the line and the column when the line
/// - leaves a promotion discount larger than the charge it discounts
///   (item-promotion-discount above item-price, ship-promotion-discount above
///   shipping-price): no buyer pays less than nothing for a part of an item, and such a
///   line is a report read wrong (a misspelt item-price column reads as no price). Only a
///   line that gives one of the two amounts is held to it;
/// - charges a component less than was refunded of it, or gives a promotion discount
///   lower than was reversed of it (the store's CHECK constraints would refuse that too);
/// - lowers what the buyer paid for the item (its charges less its promotion discounts:
///   a lower price, a higher discount) below the item's net refunds, the engine's item
///   rule ([`crate::engine::ItemBalance`]), which the per-component check alone lets
///   through (a discount raised after a full refund). The column is the first of the line
///   that lowers what was paid. A line that leaves the paid amount as it was, or an item
///   with nothing refunded, is never refused by this rule.
pub(crate) fn check_charged_after_import(
    row: &OrderRow,
    currency: Currency,
    stored: &BTreeMap<Component, ComponentTotals>,
) -> Result<(), StoreError> {
    let amount = |minor: i64| format_minor(minor, currency);
    let was = |component: &Component| stored.get(component).copied().unwrap_or_default();
    for (component, charged) in &row.charged {
        let refunded = was(component).refunded;
        let refusal = match component.class() {
            ComponentClass::Charge if refunded > *charged => format!(
                "{} of {} was already refunded; the report lowers what was charged to {}",
                amount(refunded),
                component.name(),
                amount(*charged)
            ),
            ComponentClass::Promotion if refunded.saturating_neg() > *charged => format!(
                "{} of the {} discount was already reversed; the report lowers the discount to {}",
                amount(refunded.saturating_neg()),
                component.name(),
                amount(*charged)
            ),
            _ => continue,
        };
        return Err(import_invalid(row, column_for(*component), refusal));
    }

    let mut after = stored.clone();
    for (component, charged) in &row.charged {
        after.entry(*component).or_default().charged = *charged;
    }
    check_discounts_within_charges(row, currency, stored, &after)?;
    let before = ItemBalance::of_components(stored);
    let balance = ItemBalance::of_components(&after);
    if balance.refunded <= 0 || balance.remaining() >= 0 || balance.paid() >= before.paid() {
        return Ok(());
    }
    // Lowers what the buyer paid: a lower charge or a higher discount.
    let lowers = |(component, charged): &&(Component, i64)| match component.class() {
        ComponentClass::Charge => *charged < was(component).charged,
        ComponentClass::Promotion => *charged > was(component).charged,
        ComponentClass::Fee | ComponentClass::Concession => false,
    };
    let column = row
        .charged
        .iter()
        .find(lowers)
        .map_or("item-price", |(component, _)| column_for(*component));
    let changes = row
        .charged
        .iter()
        .filter(|(component, charged)| *charged != was(component).charged)
        .map(|(component, charged)| {
            format!(
                "{} from {} to {}",
                column_for(*component),
                amount(was(component).charged),
                amount(*charged)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let money = |minor: i128| money(minor, currency);
    Err(import_invalid(
        row,
        column,
        format!(
            "the buyer would have paid {} for this item (charges {} less promotion discounts {}), \
             less than the {} already refunded for it (net of fees and reversed discounts); the \
             line changes {changes}: an item's refunds may not exceed what the buyer paid for it, \
             so check the line against the order (an empty field keeps the stored amount)",
            money(balance.paid()),
            money(balance.charged),
            money(balance.discounts),
            money(balance.refunded)
        ),
    ))
}

/// The discount rule of [`check_charged_after_import`]: in `after` (the item's amounts once
/// the line is written), each promotion discount the line touches is at most the charge it
/// discounts. A pair the line leaves as `stored` is not refused: an item an earlier build
/// took in with a larger discount must not stop every later import of the report.
fn check_discounts_within_charges(
    row: &OrderRow,
    currency: Currency,
    stored: &BTreeMap<Component, ComponentTotals>,
    after: &BTreeMap<Component, ComponentTotals>,
) -> Result<(), StoreError> {
    let charged = |component: Component| after.get(&component).map_or(0, |t| t.charged);
    let was = |component: Component| stored.get(&component).map_or(0, |t| t.charged);
    let given = |component: Component| row.charged.iter().any(|(c, _)| *c == component);
    for (promotion, price) in [
        (PromotionComponent::Principal, PriceComponent::Principal),
        (PromotionComponent::Shipping, PriceComponent::Shipping),
    ] {
        let (discount, charge) = (Component::Promotion(promotion), Component::Price(price));
        let unchanged = charged(discount) == was(discount) && charged(charge) == was(charge);
        if !(given(discount) || given(charge)) || unchanged || charged(discount) <= charged(charge)
        {
            continue;
        }
        let column = if given(discount) { discount } else { charge };
        // No amount for the charge on the line: the likelier fault is its column.
        let hint = if given(charge) {
            String::new()
        } else {
            format!(
                " (the line gives no {0}: is the {0} column missing or misspelt in the header, \
                 or its field empty?)",
                column_for(charge)
            )
        };
        return Err(import_invalid(
            row,
            column_for(column),
            format!(
                "{} {} is more than the {} {} it discounts: a promotion cannot take off more \
                 than was charged; check the line against the order{hint}",
                column_for(discount),
                format_minor(charged(discount), currency),
                column_for(charge),
                format_minor(charged(charge), currency),
            ),
        ));
    }
    Ok(())
}

/// The line gives its order a merchant-order-id that order `holder` of the merchant has
/// (the stores keep them unique per merchant).
pub(crate) fn merchant_order_id_taken(row: &OrderRow, holder: &str) -> StoreError {
    let id = row.merchant_order_id.as_ref().map_or("", SellerId::as_str);
    import_invalid(
        row,
        "merchant-order-id",
        format!(
            "merchant-order-id {id} is already the MerchantOrderID of order {holder}; a \
             merchant-order-id names one order of the merchant"
        ),
    )
}

/// The line gives its item a merchant-order-item-id that item `holder` of the same order
/// has (the stores keep them unique per order).
pub(crate) fn merchant_item_id_taken(row: &OrderRow, holder: &str) -> StoreError {
    let id = row.merchant_item_id.as_ref().map_or("", SellerId::as_str);
    import_invalid(
        row,
        "merchant-order-item-id",
        format!(
            "merchant-order-item-id {id} is already the MerchantOrderItemID of item {holder} \
             of this order; a merchant-order-item-id names one item of its order"
        ),
    )
}

/// Which orders and items an import created, changed or left as they were, by database
/// id: an order created by one line and named again by a later one counts once, as
/// created. Also the first line of each order item, to tell a repeated line from two lines
/// that disagree, and the order-level values each order's lines gave
/// ([`ImportSeen::repeat`]).
#[derive(Debug, Default)]
pub(crate) struct ImportSeen {
    orders_created: HashSet<i64>,
    /// Orders in the store before the import that a line named.
    orders_found: HashSet<i64>,
    /// Of [`ImportSeen::orders_found`], those the import changed: a column of the order,
    /// or one of its items (a new one included).
    orders_updated: HashSet<i64>,
    items_created: HashSet<i64>,
    /// Items in the store before the import that a line named.
    items_found: HashSet<i64>,
    /// Of [`ImportSeen::items_found`], those whose values the import changed.
    items_updated: HashSet<i64>,
    /// (order, item) → the first line naming it and a digest of its values.
    item_lines: HashMap<(AmazonOrderId, OrderItemCode), (u32, u64)>,
    /// Order → the order-level values its lines gave so far.
    order_lines: HashMap<AmazonOrderId, OrderValues>,
    /// Lines that repeated an earlier line of the same item value for value.
    repeated_lines: u64,
}

/// The values of an order's order-level columns given by the lines of an import so far,
/// each with the first line that gave it; `None` while every line left the column empty.
#[derive(Debug, Default)]
struct OrderValues {
    merchant_order_id: Option<(u32, SellerId)>,
    purchase_date: Option<(u32, String)>,
    currency: Option<(u32, Currency)>,
    channel: Option<(u32, FulfillmentChannel)>,
}

impl ImportSeen {
    /// Checks `row` against the earlier lines of this import. `Ok(false)`: the first line
    /// of its order item, to import. `Ok(true)`: a repeat of that line with the same
    /// values (a report exported twice into one file, say), counted and to be skipped.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming both lines when they give the same order item
    /// (order-id + order-item-id) different values, or when they give one order (on the
    /// lines of two of its items, say) different values in an order-level column
    /// ([`ImportSeen::agree_on_order`]): which one is right cannot be told, and taking the
    /// later one silently would import whichever came last.
    pub(crate) fn repeat(&mut self, row: &OrderRow) -> Result<bool, StoreError> {
        self.agree_on_order(row)?;
        let digest = row_digest(row);
        match self
            .item_lines
            .entry((row.amazon_order_id.clone(), row.item_code.clone()))
        {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert((row.line, digest));
                Ok(false)
            }
            std::collections::hash_map::Entry::Occupied(entry) => {
                let (first, first_digest) = *entry.get();
                if first_digest != digest {
                    return Err(StoreError::Invalid {
                        detail: format!(
                            "line {}: order {} item {} is on line {first} too, with other \
                             values; an order item may appear once in a report: keep the \
                             right line and import again",
                            row.line, row.amazon_order_id, row.item_code
                        ),
                    });
                }
                self.repeated_lines += 1;
                Ok(true)
            }
        }
    }

    /// Checks the order-level columns of `row` (merchant-order-id, purchase-date, currency,
    /// fulfillment-channel: Amazon's reports repeat them on every line of an order) against
    /// the values the earlier lines of its order gave, and remembers the ones it gives
    /// first. An empty field gives no value, so it agrees with any: the order takes the
    /// value its other lines give.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the line, the column, both values and the earlier line
    /// when they differ.
    fn agree_on_order(&mut self, row: &OrderRow) -> Result<(), StoreError> {
        // Destructured so that a new field of a line must be placed here, as an order-level
        // value to compare or as one of the item's.
        let OrderRow {
            line: _,
            amazon_order_id,
            merchant_order_id,
            item_code: _,
            merchant_item_id: _,
            purchase_date,
            sku: _,
            quantity_ordered: _,
            quantity_shipped: _,
            currency,
            charged: _,
            channel,
        } = row;
        let first = self.order_lines.entry(amazon_order_id.clone()).or_default();
        agree(
            row,
            "merchant-order-id",
            &mut first.merchant_order_id,
            merchant_order_id.as_ref(),
            PartialEq::eq,
        )?;
        // The same instant spelled two ways (`Z`, `+00:00`) agrees.
        agree(
            row,
            "purchase-date",
            &mut first.purchase_date,
            purchase_date.as_ref(),
            |a, b| same_purchase_date(a, b),
        )?;
        agree(
            row,
            "currency",
            &mut first.currency,
            currency.as_ref(),
            PartialEq::eq,
        )?;
        agree(
            row,
            "fulfillment-channel",
            &mut first.channel,
            channel.as_ref(),
            PartialEq::eq,
        )
    }

    /// Checks `row` against its order `order_id` as the store held it before this import
    /// (stored in `currency`, fulfilled by `channel`): those never change, at Amazon or
    /// here. An order this import created is left to [`ImportSeen::agree_on_order`] (a
    /// later line may give the channel an earlier one left empty).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the line, the column, the stored and the given value
    /// when the line gives another currency or fulfillment channel.
    pub(crate) fn agree_with_stored(
        &self,
        row: &OrderRow,
        order_id: i64,
        currency: Currency,
        channel: FulfillmentChannel,
    ) -> Result<(), StoreError> {
        if self.orders_created.contains(&order_id) {
            return Ok(());
        }
        if let Some(given) = row.currency
            && given != currency
        {
            return Err(import_invalid(
                row,
                "currency",
                format!("the order is stored in {currency}; the report says {given}"),
            ));
        }
        if let Some(given) = row.channel
            && given != channel
        {
            // The store's refund history was decided by the channel (the seller cannot
            // refund an AFN order), so it is not rewritten by a report.
            return Err(import_invalid(
                row,
                "fulfillment-channel",
                format!(
                    "the order is stored as {channel}; the report says {given}; an order's \
                     fulfillment channel does not change, and the refunds applied to it were \
                     checked against the stored one (an order first imported without \
                     fulfillment-channel is stored as MFN): correct the report"
                ),
            ));
        }
        Ok(())
    }

    /// Counts order `id` as created by this import.
    pub(crate) fn order_created(&mut self, id: i64) {
        self.orders_created.insert(id);
    }

    /// Counts order `id`, found in the store, as named by a line (unchanged unless
    /// [`ImportSeen::order_changed`] says otherwise), unless this import created it.
    pub(crate) fn order_found(&mut self, id: i64) {
        if !self.orders_created.contains(&id) {
            self.orders_found.insert(id);
        }
    }

    /// Counts order `id`, found in the store, as updated: a line changed one of its
    /// columns or items. Nothing for an order this import created.
    pub(crate) fn order_changed(&mut self, id: i64) {
        if !self.orders_created.contains(&id) {
            self.orders_found.insert(id);
            self.orders_updated.insert(id);
        }
    }

    /// Counts item `id` of order `order_id` as created by this import, which changes its
    /// order.
    pub(crate) fn item_created(&mut self, order_id: i64, id: i64) {
        self.items_created.insert(id);
        self.order_changed(order_id);
    }

    /// Counts item `id` of order `order_id`, found in the store, as named by a line that
    /// `changed` one of its values (then its order is updated too) or not.
    pub(crate) fn item_found(&mut self, order_id: i64, id: i64, changed: bool) {
        if self.items_created.contains(&id) {
            return;
        }
        self.items_found.insert(id);
        if changed {
            self.items_updated.insert(id);
            self.order_changed(order_id);
        }
    }

    /// The summary of an import of `lines` order lines.
    pub(crate) fn summary(&self, lines: u64) -> ImportSummary {
        let count = |set: &HashSet<i64>| set.len() as u64;
        ImportSummary {
            lines,
            repeated_lines: self.repeated_lines,
            orders_created: count(&self.orders_created),
            orders_updated: count(&self.orders_updated),
            orders_unchanged: count(&self.orders_found) - count(&self.orders_updated),
            items_created: count(&self.items_created),
            items_updated: count(&self.items_updated),
            items_unchanged: count(&self.items_found) - count(&self.items_updated),
        }
    }
}

/// One order-level column of [`ImportSeen::agree_on_order`]: `given` (this line's value,
/// `None` when its field is empty) must be `same` as `first`, the value an earlier line of
/// the order gave, if any; else it becomes `first`.
fn agree<T: Clone + fmt::Display>(
    row: &OrderRow,
    column: &str,
    first: &mut Option<(u32, T)>,
    given: Option<&T>,
    same: impl Fn(&T, &T) -> bool,
) -> Result<(), StoreError> {
    let Some(given) = given else {
        return Ok(());
    };
    match first {
        None => {
            *first = Some((row.line, given.clone()));
            Ok(())
        }
        Some((_, earlier)) if same(earlier, given) => Ok(()),
        Some((line, earlier)) => Err(import_invalid(
            row,
            column,
            format!(
                "this line says {given} but line {line} of the same order says {earlier}; \
                 an order has one {column}, so its lines must agree (or leave it empty): \
                 correct the wrong line and import again"
            ),
        )),
    }
}

/// A digest of every value of an order line but its line number: equal for lines that
/// say the same. Two lines of one item that differ collide with a chance of 2^-64.
fn row_digest(row: &OrderRow) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    // Destructured so that a new field cannot be left out of the comparison.
    let OrderRow {
        line: _,
        amazon_order_id,
        merchant_order_id,
        item_code,
        merchant_item_id,
        purchase_date,
        sku,
        quantity_ordered,
        quantity_shipped,
        currency,
        charged,
        channel,
    } = row;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // A purchase-date by the instant it names, when it has a zone: `Z` and `+00:00` say
    // the same (`same_purchase_date`).
    let purchase_date = purchase_date
        .as_deref()
        .map(|date| purchase_instant(date).ok_or(date));
    (
        amazon_order_id,
        merchant_order_id,
        item_code,
        merchant_item_id,
        purchase_date,
        sku,
        quantity_ordered,
        quantity_shipped,
        currency,
        charged,
        channel,
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ImportSummary {
    /// Order lines read, repeats included.
    pub lines: u64,
    /// Lines that repeated an earlier line of the same order item with the same values:
    /// read but not imported again (`lines - repeated_lines` lines were imported).
    pub repeated_lines: u64,
    /// Orders created.
    pub orders_created: u64,
    /// Orders already in the store that the import changed: one of the order's columns
    /// (merchant-order-id, purchase-date, ...), or one of its items, a new one included.
    pub orders_updated: u64,
    /// Orders already in the store that the report named and left as they were.
    pub orders_unchanged: u64,
    /// Items created.
    pub items_created: u64,
    /// Items already in the store whose values the import changed (quantities, SKU,
    /// merchant-order-item-id, charged amounts).
    pub items_updated: u64,
    /// Items already in the store that the report named and left as they were (a charge
    /// of 0 where none was stored is no change).
    pub items_unchanged: u64,
}

/// `orders show --json`: one order, its items and adjustments (the fields DESIGN.md names,
/// which other tools read, plus a few more; see README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    /// Merchant.
    pub merchant: String,
    /// `AmazonOrderID`.
    pub amazon_order_id: String,
    /// `MerchantOrderID`.
    pub merchant_order_id: Option<String>,
    /// Currency code.
    pub currency: String,
    /// `MFN` or `AFN`.
    pub fulfillment_channel: String,
    /// Purchase date as imported.
    pub purchase_date: Option<String>,
    /// Items in import order.
    pub items: Vec<ItemView>,
    /// Applied adjustments in commit order.
    pub adjustments: Vec<AdjustmentView>,
}

/// One item of an [`OrderView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemView {
    /// `AmazonOrderItemCode`.
    pub amazon_order_item_code: String,
    /// `MerchantOrderItemID`.
    pub merchant_order_item_id: Option<String>,
    /// SKU.
    pub sku: String,
    /// Units ordered.
    pub quantity_ordered: u32,
    /// Units shipped.
    pub quantity_shipped: u32,
    /// Units cancelled.
    pub quantity_cancelled: u32,
    /// Units returned: the sum of the `Quantity` of the applied adjustments, which
    /// QUANTITY_EXCEEDS_SHIPPED counts against the units shipped. Not in DESIGN.md's
    /// shape, which it extends.
    pub quantity_returned: u32,
    /// Charged per component, as decimal strings.
    pub charged: std::collections::BTreeMap<String, String>,
    /// Net signed refunded sum per component, as decimal strings.
    pub refunded: std::collections::BTreeMap<String, String>,
}

/// One adjustment of an [`OrderView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjustmentView {
    /// The feed that applied it.
    pub feed_id: u64,
    /// Its MessageID.
    pub message_id: u64,
    /// `AmazonOrderItemCode`.
    pub amazon_order_item_code: String,
    /// `AdjustmentReason`.
    pub reason: String,
    /// `ActionType`, when given.
    pub action_type: Option<String>,
    /// Units cancelled.
    pub quantity_cancelled: u32,
    /// `Quantity`, when given.
    pub quantity: Option<u32>,
    /// `MerchantAdjustmentItemID`.
    pub merchant_adjustment_item_id: Option<String>,
    /// Signed amounts per component, as decimal strings.
    pub amounts: std::collections::BTreeMap<String, String>,
    /// RFC 3339 UTC time of the commit.
    pub created_at: String,
}

/// Operations of an order store. Implemented by [`sqlite::SqliteStore`] and
/// [`postgres::PgStore`]; [`AnyStore`] picks one from a URL.
pub trait Store {
    /// Starts the transaction of one feed and writes the start of its record.
    ///
    /// # Errors
    /// Transient errors when the database is busy or away.
    fn begin_feed(&mut self, feed: &NewFeed) -> Result<Box<dyn FeedTx + '_>, StoreError>;

    /// The committed feed whose claim token is `claim_token`, if any.
    ///
    /// # Errors
    /// Database errors.
    fn feed_by_claim(&mut self, claim_token: &str) -> Result<Option<FeedRecord>, StoreError>;

    /// The first committed, applied (not duplicate, not rejected) feed of `merchant` with
    /// these bytes, if any.
    ///
    /// # Errors
    /// Database errors.
    fn feed_by_hash(
        &mut self,
        merchant: &MerchantId,
        content_hash: &str,
    ) -> Result<Option<FeedRecord>, StoreError>;

    /// The most recent feeds, newest first.
    ///
    /// # Errors
    /// Database errors.
    fn recent_feeds(&mut self, limit: u32) -> Result<Vec<FeedRecord>, StoreError>;

    /// Imports an order report in one transaction, reading its rows as it goes: creates
    /// orders and items, updates shipped quantities (and charged amounts when given) of
    /// existing ones. Never touches adjustments.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the line when a line is bad or contradicts the store
    /// (other currency, charged below refunded, an item charged less in all than its net
    /// refunds, ...); nothing is imported then.
    fn import_orders(
        &mut self,
        merchant: &MerchantId,
        rows: &dyn RowSource,
    ) -> Result<ImportSummary, StoreError>;

    /// The orders with this `AmazonOrderID` (one per merchant that has it), optionally
    /// only `merchant`'s.
    ///
    /// # Errors
    /// Database errors.
    fn orders(
        &mut self,
        merchant: Option<&MerchantId>,
        amazon_order_id: &str,
    ) -> Result<Vec<OrderView>, StoreError>;
}

/// The open transaction of one feed. Dropping it without [`FeedTx::commit`] rolls back.
pub trait FeedTx {
    /// The feed id assigned when the transaction began.
    fn feed_id(&self) -> u64;

    /// Loads the orders and keys in `needs` (for `merchant`) into `snapshot`, locking the
    /// order rows in the order given (PostgreSQL). Orders that do not exist are recorded as
    /// missing; keys never used are recorded as `None`. Each item comes with the
    /// adjustments applied to it since [`NewFeed::recent_adjustments_since`] (this feed's
    /// own with no feed id in their origin), oldest first.
    ///
    /// # Errors
    /// Database errors; transient ones mean "retry the whole feed".
    fn load(
        &mut self,
        merchant: &MerchantId,
        needs: &Needs,
        snapshot: &mut Snapshot,
    ) -> Result<(), StoreError>;

    /// Writes the changes the engine planned (adjustments, totals, key records).
    ///
    /// # Errors
    /// Database errors; a CHECK violation is a bug in the engine and comes back as
    /// [`StoreError::Invalid`].
    fn apply(&mut self, merchant: &MerchantId, changes: &[Change]) -> Result<(), StoreError>;

    /// A hint: the next [`FeedTx::load`] will probably ask for `orders`. A backend may
    /// start reading them now, in parallel with the work on the current chunk (SQLite reads
    /// them on a second connection), as long as `load` still returns exactly what it would
    /// have without the hint. The default ignores it.
    fn prefetch(&mut self, _merchant: &MerchantId, _orders: Vec<OrderRef>) {}

    /// Drops what the transaction cached about the orders loaded so far, so memory stays
    /// flat over a long feed; later calls read what they need again (the pipeline reloads
    /// each chunk's orders). The default caches nothing worth dropping.
    fn forget_loaded(&mut self) {}

    /// Finishes the feed record and commits, durably.
    ///
    /// # Errors
    /// Database errors; a unique violation on the content hash (another instance committed
    /// the same bytes first) comes back as [`StoreError::Conflict`] so the feed is retried
    /// and then found to be a duplicate.
    fn commit(self: Box<Self>, done: FeedDone) -> Result<(), StoreError>;
}

/// True for a `postgres://…` or `postgresql://…` URL.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A store URL of no scheme adjustd knows.
fn unsupported(url: &str) -> StoreError {
    StoreError::Invalid {
        detail: format!(
            "unsupported store url {url:?}: use sqlite:PATH or postgres://USER@HOST/DB"
        ),
    }
}

/// A store chosen by URL: `sqlite:PATH` or `postgres://…`.
pub enum AnyStore {
    /// The embedded default.
    Sqlite(sqlite::SqliteStore),
    /// Several instances on one server.
    Postgres(postgres::PgStore),
}

impl AnyStore {
    /// Opens (and migrates) the store named by `url`.
    ///
    /// # Errors
    /// An unknown scheme, or the backend's open errors.
    pub fn open(url: &str) -> Result<AnyStore, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            sqlite::SqliteStore::open(std::path::Path::new(path)).map(AnyStore::Sqlite)
        } else if is_postgres(url) {
            postgres::PgStore::connect(url).map(AnyStore::Postgres)
        } else {
            Err(unsupported(url))
        }
    }

    /// Opens the store named by `url` for reading only, never creating or migrating it:
    /// SQLite without the single-writer lock (so it works while the daemon runs),
    /// PostgreSQL in a read-only session. Both refuse a store without adjustd's schema or
    /// with another version than this build's.
    ///
    /// # Errors
    /// An unknown scheme, or the backend's open errors.
    pub fn open_read_only(url: &str) -> Result<AnyStore, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            sqlite::SqliteStore::open_read_only(std::path::Path::new(path)).map(AnyStore::Sqlite)
        } else if is_postgres(url) {
            postgres::PgStore::connect_read_only(url).map(AnyStore::Postgres)
        } else {
            Err(unsupported(url))
        }
    }

    /// The backend as a trait object.
    pub fn as_store(&mut self) -> &mut dyn Store {
        match self {
            AnyStore::Sqlite(store) => store,
            AnyStore::Postgres(store) => store,
        }
    }
}
