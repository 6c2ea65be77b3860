//! The refund and cancellation rules: given a snapshot of the orders a feed touches and the
//! feed's validated messages, decide per message whether it applies, and produce the
//! changes to commit.
//!
//! Pure: no I/O, no clock, no store. The snapshot is a working copy that the engine updates
//! as messages apply, so a later message sees the effects of earlier ones (document order).
//! The store loads what the engine says it needs ([`needs`]) and commits the [`Change`]s.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use crate::model::{
    ActionType, AdjustmentMessage, AdjustmentReason, AmazonOrderId, Amount, Component,
    ComponentClass, Currency, FulfillmentChannel, ItemRef, MerchantId, MessageId, OrderItemCode,
    OrderRef, Position, PriceComponent, SellerId, format_minor,
};
use crate::problem::{Code, Problem, count, net_too_large_texts, precision_texts, too_large_texts};

/// Knobs of the rules that are policy rather than fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Restocking fees (RestockingFee + RestockingFeeTax) of one adjusted item may be at
    /// most this percentage of the Principal refunded in the same item. Default 50.
    pub restocking_fee_max_percent: u32,
    /// Restocking fees of at least this percentage of the Principal refunded in the same
    /// item apply with a `RESTOCKING_FEE_REVIEW` warning (Amazon asks for evidence from
    /// 20 %). Default 20; 0 turns the warning off.
    pub restocking_fee_review_percent: u32,
    /// Concessions (Goodwill, Other, FreeReplacementReturnShipping) of one item that add
    /// up to more than this percentage of what the buyer paid for it apply with a
    /// `CONCESSION_LIMIT` warning. Default 50; 0 turns the warning off.
    pub concession_review_percent: u32,
    /// An applied message whose order was purchased more than this many days before the
    /// feed is processed gets an `OutsideRefundWindow` warning (refund-rules §c4 step 15,
    /// R17: Amazon has no feed error for lateness, so it warns and still applies).
    /// `None` (the default): no window.
    pub refund_window_days: Option<NonZeroU32>,
    /// Whether the refund window and the concession limit warn or reject.
    pub policy: Policy,
    /// Pin `OrderNotFound` under the message's keys like the other state rejections
    /// (refund-rules §c3.4: "park and retry ... then pin it as a state rejection"). The
    /// daemon sets it for the last retry of a parked feed, once the order-not-found window
    /// has passed; otherwise (the default) `OrderNotFound` is not pinned, so the same
    /// message applies once the order is imported.
    pub pin_order_not_found: bool,
    /// When the daemon stops retrying this feed's `OrderNotFound`s (the end of its
    /// order-not-found window), when the feed is parked if one of its messages is
    /// deferred: the rejection then says that adjustd retries the message by itself until
    /// then, so importing the order report in time is enough and a resend is not needed.
    /// `None` (the default; `adjustd process`, a window of 0, the last retry): the
    /// rejection asks for the message to be resent. Not used with
    /// [`Rules::pin_order_not_found`], whose rejection is final.
    pub order_not_found_retry_until: Option<DateTime<Utc>>,
    /// An applied message with an adjusted item under a new key whose content (its
    /// [`payload_hash`]) equals that of an adjustment applied to the same item at most this
    /// many days before the feed is processed gets a `PossibleResubmission` warning
    /// (refund-rules §c3.2: Amazon applies two identical adjustments as two refunds,
    /// SC-30741). Default 7; 0 turns the warning off, and the store then loads no history.
    pub resubmission_window_days: u32,
}

impl Rules {
    /// The first (UTC) day whose applied adjustments count as recent for a feed processed
    /// on `processed_on` ([`Rules::resubmission_window_days`] before it); `None` when the
    /// resubmission warning is off. The store loads each item's adjustments applied on or
    /// after this day ([`ItemState::recent_adjustments`]).
    pub fn recent_adjustments_since(&self, processed_on: NaiveDate) -> Option<NaiveDate> {
        if self.resubmission_window_days == 0 {
            return None;
        }
        // A window beyond the calendar reaches back to its first day.
        Some(
            processed_on
                .checked_sub_days(chrono::Days::new(u64::from(self.resubmission_window_days)))
                .unwrap_or(NaiveDate::MIN),
        )
    }
}

/// What the policy checks of refund-rules §c4 step 15 (`OutsideRefundWindow`,
/// `ConcessionLimit`) do to a message that passes every other rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// They are warnings and the message applies (the default; Amazon has no such errors).
    #[default]
    Warn,
    /// They reject the message, as state rejections pinned under the message's keys like
    /// the caps: lateness depends on the order, and the concession limit on the concessions
    /// already given, so a replay must get the same answer however the store changed since
    /// (refund-rules §c5 calls the concession limit "V"; adjustd's limit is cumulative, so
    /// it cannot be a content-only rejection).
    Strict,
}

impl Policy {
    /// `warn` or `strict`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Warn => "warn",
            Policy::Strict => "strict",
        }
    }
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            restocking_fee_max_percent: 50,
            restocking_fee_review_percent: 20,
            concession_review_percent: 50,
            refund_window_days: None,
            policy: Policy::Warn,
            pin_order_not_found: false,
            order_not_found_retry_until: None,
            resubmission_window_days: 7,
        }
    }
}

/// Running totals of one component of one order item, in minor units of the order currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComponentTotals {
    /// What the buyer was charged (for promotions: the discount the buyer received).
    pub charged: i64,
    /// Net signed sum of all applied adjustment amounts.
    pub refunded: i64,
}

/// One order item as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    /// `AmazonOrderItemCode`.
    pub code: OrderItemCode,
    /// `MerchantOrderItemID`, when the order report supplied it.
    pub merchant_item_id: Option<SellerId>,
    /// Units ordered.
    pub quantity_ordered: u32,
    /// Units shipped.
    pub quantity_shipped: u32,
    /// Units cancelled so far.
    pub quantity_cancelled: u32,
    /// Units returned so far: the sum of the `Quantity` of the adjustments applied.
    pub quantity_returned: u32,
    /// Totals per component; components never charged nor adjusted are absent (all zero).
    pub components: BTreeMap<Component, ComponentTotals>,
    /// The adjustments applied to this item on or after
    /// [`Rules::recent_adjustments_since`], the latest of each content (empty when the
    /// resubmission warning is off): what a new key with the same content repeats.
    pub recent_adjustments: RecentAdjustments,
}

/// An adjustment applied to an item recently (see [`Rules::resubmission_window_days`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentAdjustment {
    /// Its [`payload_hash`], as bytes.
    pub payload: PayloadDigest,
    /// The feed and message that applied it (feed `None`: the feed being planned).
    pub origin: KeyOrigin,
    /// The (UTC) day it was applied.
    pub applied_on: NaiveDate,
}

/// The adjustments applied to an item recently ([`ItemState::recent_adjustments`]): of each
/// content ([`PayloadDigest`]) only the latest, which is all the resubmission warning names.
///
/// Built for an item adjusted very often within the window (a feed of a hundred thousand
/// refunds of one item, buggy or hostile): a lookup costs the same however many there are,
/// and the copy of the order the engine plans each message on shares them instead of
/// copying them, so no message costs more than the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentAdjustments(Option<Arc<HashMap<PayloadDigest, RecentAdjustment>>>);

impl RecentAdjustments {
    /// Adds an adjustment applied after every one added before (add them oldest first): it
    /// replaces an earlier one with the same content. Copies the set first if a copy of
    /// the item still shares it.
    pub fn push(&mut self, adjustment: RecentAdjustment) {
        Arc::make_mut(self.0.get_or_insert_default()).insert(adjustment.payload, adjustment);
    }

    /// The latest adjustment with this content.
    pub fn latest(&self, payload: &PayloadDigest) -> Option<&RecentAdjustment> {
        self.0.as_ref()?.get(payload)
    }

    /// Each remembered adjustment (the latest of its content), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RecentAdjustment> {
        self.0.iter().flat_map(|set| set.values())
    }

    /// How many contents are remembered.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.len())
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`payload_hash`] as its 32 bytes: what the snapshot keeps of each recent adjustment
/// (no allocation, half the size of the hex text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadDigest([u8; 32]);

impl PayloadDigest {
    /// The digest of a payload hash as [`payload_hash`] writes it (64 hex digits); `None`
    /// for any other text, which no payload hash can equal.
    pub fn from_hex(hex: &str) -> Option<PayloadDigest> {
        // The value of each lowercase hex digit, 0xff for every other byte: every loaded and
        // every applied adjustment is decoded once, so this is a table, not a match.
        const NIBBLE: [u8; 256] = {
            let mut table = [0xff_u8; 256];
            let mut digit = 0;
            while digit < 16 {
                table[HEX_DIGITS[digit] as usize] = digit as u8;
                digit += 1;
            }
            table
        };
        let hex: &[u8; 64] = hex.as_bytes().try_into().ok()?;
        let mut bytes = [0_u8; 32];
        let mut invalid = 0;
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            invalid |= high | low;
            *byte = (high << 4) | (low & 0x0f);
        }
        (invalid & 0xf0 == 0).then_some(PayloadDigest(bytes))
    }
}

/// One order as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    /// `AmazonOrderID`.
    pub amazon_order_id: AmazonOrderId,
    /// `MerchantOrderID`, when known.
    pub merchant_order_id: Option<SellerId>,
    /// The order's currency.
    pub currency: Currency,
    /// MFN or AFN.
    pub channel: FulfillmentChannel,
    /// The day the order was purchased (the order report's `purchase-date`, see
    /// [`crate::model::parse_purchase_date`]), when the report gave one.
    pub purchase_date: Option<NaiveDate>,
    /// The order's items.
    pub items: Vec<ItemState>,
}

/// Where an idempotency key was first used, or where an adjustment was applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyOrigin {
    /// The feed, or `None` for the feed being planned.
    pub feed_id: Option<u64>,
    /// The message in that feed.
    pub message_id: MessageId,
}

/// What the store remembers about a `MerchantAdjustmentItemID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Hex SHA-256 of the canonical adjusted-item payload (see [`payload_hash`]).
    pub payload_hash: String,
    /// Where the key was first used.
    pub origin: KeyOrigin,
    /// `None` when the adjustment was applied; the pinned state rejection otherwise.
    pub rejection: Option<crate::problem::Code>,
}

/// The engine's working copy of the part of the store a feed touches.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    orders: HashMap<AmazonOrderId, OrderState>,
    missing_orders: std::collections::HashSet<OrderRef>,
    merchant_order_ids: HashMap<SellerId, AmazonOrderId>,
    keys: HashMap<SellerId, Option<KeyRecord>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Drops everything loaded (orders and idempotency keys) so memory stays flat over a
    /// long feed. The store's transaction holds every change planned so far, so what is
    /// needed again is loaded again with those changes included (keys written by this feed
    /// come back with their origin in "this feed").
    pub fn forget(&mut self) {
        *self = Snapshot::default();
    }

    /// Adds an order loaded from the store.
    pub fn insert_order(&mut self, order: OrderState) {
        if let Some(merchant_order_id) = &order.merchant_order_id {
            self.merchant_order_ids
                .insert(merchant_order_id.clone(), order.amazon_order_id.clone());
        }
        self.orders.insert(order.amazon_order_id.clone(), order);
    }

    /// True when the order with this `AmazonOrderID` is loaded.
    pub fn has_order(&self, amazon_order_id: &AmazonOrderId) -> bool {
        self.orders.contains_key(amazon_order_id)
    }

    /// Records that the store has no such order for this merchant.
    pub fn insert_missing_order(&mut self, order: OrderRef) {
        self.missing_orders.insert(order);
    }

    /// Records what the store knows about a key (`None`: never used).
    pub fn insert_key(&mut self, key: SellerId, record: Option<KeyRecord>) {
        self.keys.insert(key, record);
    }

    /// The order a reference resolves to, if loaded.
    pub fn order(&self, order: &OrderRef) -> Option<&OrderState> {
        match order {
            OrderRef::Amazon(id) => self.orders.get(id),
            OrderRef::Merchant(id) => self
                .merchant_order_ids
                .get(id)
                .and_then(|amazon| self.orders.get(amazon)),
        }
    }

    /// Every loaded order, in no particular order.
    pub fn orders(&self) -> impl Iterator<Item = &OrderState> {
        self.orders.values()
    }

    /// What the snapshot knows about an idempotency key: `None` when it was never used
    /// (or was not loaded).
    pub fn key(&self, key: &SellerId) -> Option<&KeyRecord> {
        self.keys.get(key).and_then(Option::as_ref)
    }

    /// Every known key with its record, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = (&SellerId, &KeyRecord)> {
        self.keys
            .iter()
            .filter_map(|(key, record)| record.as_ref().map(|record| (key, record)))
    }

    fn is_loaded(&self, order: &OrderRef) -> bool {
        self.order(order).is_some() || self.missing_orders.contains(order)
    }
}

/// What the store must load into the snapshot before [`plan`] can run on some messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Orders not yet in the snapshot, sorted and without duplicates (the fixed lock order).
    pub orders: Vec<OrderRef>,
    /// Idempotency keys not yet in the snapshot, sorted and without duplicates.
    pub keys: Vec<SellerId>,
}

impl Needs {
    /// True when the snapshot already holds everything.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.keys.is_empty()
    }
}

/// Lists the orders and keys `messages` refer to that `snapshot` does not hold yet, and
/// the orders of `orders_only` (messages that need no keys: [`precision_problems`]).
pub fn needs(
    snapshot: &Snapshot,
    messages: &[AdjustmentMessage],
    orders_only: &[AdjustmentMessage],
) -> Needs {
    let mut orders: Vec<OrderRef> = messages
        .iter()
        .chain(orders_only)
        .map(|m| &m.order)
        .filter(|o| !snapshot.is_loaded(o))
        .cloned()
        .collect();
    orders.sort_by(|a, b| order_ref_sort_key(a).cmp(&order_ref_sort_key(b)));
    orders.dedup();
    let mut keys: Vec<SellerId> = messages
        .iter()
        .flat_map(|m| m.items.iter().flat_map(|i| [&i.key, &i.earlier_key]))
        .flatten()
        .filter(|k| !snapshot.keys.contains_key(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    Needs { orders, keys }
}

fn order_ref_sort_key(order: &OrderRef) -> (u8, &str) {
    match order {
        OrderRef::Amazon(id) => (0, id.as_str()),
        OrderRef::Merchant(id) => (1, id.as_str()),
    }
}

/// A new adjustment record: one applied adjusted item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAdjustment {
    /// The message it came from.
    pub message_id: MessageId,
    /// The order (resolved to Amazon's id).
    pub amazon_order_id: AmazonOrderId,
    /// The item (resolved to Amazon's code).
    pub item_code: OrderItemCode,
    /// `AdjustmentReason`.
    pub reason: AdjustmentReason,
    /// `ActionType`, when given.
    pub action: Option<ActionType>,
    /// Units cancelled by this adjustment (0 when none).
    pub quantity_cancelled: u32,
    /// `Quantity`, when given.
    pub quantity: Option<u32>,
    /// Signed amounts in minor units of the order currency, one per component.
    pub amounts: Vec<(Component, i64)>,
    /// The idempotency key: the `MerchantAdjustmentItemID`, or a key derived from the
    /// feed's content when the item has none ([`SellerId::derived`]).
    pub key: Option<SellerId>,
    /// Hex SHA-256 of the canonical payload.
    pub payload_hash: String,
}

impl NewAdjustment {
    /// The seller's `MerchantAdjustmentItemID`, as the adjustment record keeps it: `None`
    /// when the key was derived.
    pub fn merchant_adjustment_item_id(&self) -> Option<&str> {
        self.key
            .as_ref()
            .filter(|key| !key.is_derived())
            .map(SellerId::as_str)
    }
}

/// A change to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Append an adjustment and add it to the item's running totals (and record its key).
    Adjust(NewAdjustment),
    /// Pin a state rejection under a key so a replay gets the same answer.
    PinRejection {
        /// The key.
        key: SellerId,
        /// Hex SHA-256 of the canonical payload.
        payload_hash: String,
        /// The message that was rejected.
        message_id: MessageId,
        /// The rejection.
        code: crate::problem::Code,
    },
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    /// The message.
    pub message_id: MessageId,
    /// True when its adjustments were applied (warnings may still be present).
    pub applied: bool,
    /// Errors and warnings, in the order found.
    pub problems: Vec<Problem>,
    /// True when the message was rejected with `OrderNotFound` and that was not pinned: it
    /// may apply once the order is imported, which is what the daemon parks a feed for. A
    /// replay of a pinned `OrderNotFound` is not deferred.
    pub deferred: bool,
}

/// The result of planning some messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One outcome per message, in document order.
    pub outcomes: Vec<MessageOutcome>,
    /// The changes to commit, in order.
    pub changes: Vec<Change>,
}

/// Applies the rules to `messages` in order against `snapshot` (which must hold what
/// [`needs`] listed), updating the snapshot as messages apply.
///
/// Per message, in this precedence (the first failing rule wins per adjusted item, see
/// `reference/refund-rules.md` §c4 steps 9-16):
/// 0. for a message without a `currency` attribute whose order exists, `AmountPrecision` in
///    the order currency's minor unit: a content rule (c4 step 3), so it comes before the
///    keys and is not pinned;
/// 1. idempotency: a replay of an earlier message (every item keyed, every key known with
///    the same payload hash from that one message) gets the stored outcome back (a
///    `DuplicateAdjustment` warning, or the pinned rejection) and changes nothing; any
///    other use of a known key (or one key on two items) is an `IdempotencyConflict`, which
///    links the other items as in step 7 and is not pinned;
/// 2. lookup: `OrderNotFound`, `ItemNotInOrder`, `OrderNotAdjustable` (AFN, fully
///    cancelled);
/// 3. currency: `CurrencyMismatch` against the order;
/// 4. `PositiveChargeComponent`: a fee reversal larger than the fees charged so far;
/// 5. quantities: `CancelExceedsUnshipped`, `QuantityExceedsShipped`;
/// 6. caps: `ComponentExceedsRemaining` (and, defensively, `NegativeRefundComponent` when
///    a sign the validator guarantees is wrong);
/// 7. atomicity: when one item fails, the others get `LinkedItemFailed` and nothing of
///    the message applies;
/// 8. policy warnings on a message that applies: `OutsideRefundWindow` when the order was
///    purchased more than [`Rules::refund_window_days`] before `processed_on`, the (UTC)
///    day the feed is processed; then `PossibleResubmission` for each adjusted item whose
///    content equals that of an adjustment applied to the item within
///    [`Rules::resubmission_window_days`] (its [`ItemState::recent_adjustments`], which the
///    store loads and the engine extends as messages apply); then the review warnings. The
///    engine reads no clock: the caller says what day it is.
///
/// State rejections are pinned under every key of the message ([`Change::PinRejection`]);
/// rejections that depend on the content only (precision, sign) are not, so a corrected
/// payload may reuse the key. `OrderNotFound` is pinned only with
/// [`Rules::pin_order_not_found`]; without it the outcome says it is `deferred`.
pub fn plan(
    snapshot: &mut Snapshot,
    merchant: &MerchantId,
    messages: &[AdjustmentMessage],
    rules: &Rules,
    processed_on: NaiveDate,
) -> Plan {
    // The restocking-fee share is enforced by `validate`, which needs no store; the policy
    // knobs that need the order are checked here.
    let mut plan = Plan::default();
    for message in messages {
        let outcome = plan_message(
            snapshot,
            merchant,
            message,
            rules,
            processed_on,
            &mut plan.changes,
        );
        plan.outcomes.push(outcome);
    }
    plan
}

/// Hex SHA-256 of the canonical form of one adjusted item, used to tell a replay (same
/// key, same content) from a conflict (same key, other content).
///
/// The canonical form holds the order and item references as written, the reason, the
/// message's `ActionType`, the `currency` the amounts are in, both quantities, and every
/// component with its normalized amount (so `5.0` and `5.00` hash alike) sorted by
/// component name. Every value is length-prefixed, so no two payloads share a canonical
/// form. An `item_index` past the last item hashes the message without an item.
///
/// `currency` is the message's `currency` attribute or, without one, the order's currency,
/// so leaving the attribute off and spelling it out hash alike; `None` when neither is
/// known. Earlier builds hashed the attribute as written (empty when absent); the key
/// check of [`plan`] still accepts such a stored hash for a message in the order's
/// currency.
pub fn payload_hash(
    message: &AdjustmentMessage,
    item_index: usize,
    currency: Option<Currency>,
) -> String {
    let item = message.items.get(item_index).map(|item| &item.item);
    spelled_payload_hash(message, item_index, currency, &message.order, item)
}

/// [`payload_hash`] with the order and the item named by `order` and `item` instead of as
/// the message names them.
fn spelled_payload_hash(
    message: &AdjustmentMessage,
    item_index: usize,
    currency: Option<Currency>,
    order: &OrderRef,
    item_ref: Option<&ItemRef>,
) -> String {
    use sha2::Digest;
    use std::fmt::Write as _;

    // The canonical form is fed to the hasher piece by piece (no canonical String); numbers
    // and amounts are formatted into one reused scratch buffer.
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"adjustd-adjusted-item-v1\n");
    let mut scratch = String::with_capacity(32);
    let mut length = [0_u8; 20];
    let mut field = |hasher: &mut sha2::Sha256, name: &str, value: &str| {
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(decimal(value.len() as u64, &mut length));
        hasher.update(b":");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    };
    match order {
        OrderRef::Amazon(id) => field(&mut hasher, "AmazonOrderID", id.as_str()),
        OrderRef::Merchant(id) => field(&mut hasher, "MerchantOrderID", id.as_str()),
    }
    field(
        &mut hasher,
        "ActionType",
        message.action.map_or("", ActionType::as_str),
    );
    field(
        &mut hasher,
        "currency",
        currency.as_ref().map_or("", Currency::code),
    );
    if let (Some(item), Some(item_ref)) = (message.items.get(item_index), item_ref) {
        match item_ref {
            ItemRef::Amazon(code) => field(&mut hasher, "AmazonOrderItemCode", code.as_str()),
            ItemRef::Merchant(id) => field(&mut hasher, "MerchantOrderItemID", id.as_str()),
        }
        field(&mut hasher, "AdjustmentReason", item.reason.as_str());
        let mut number = [0_u8; 20];
        let cancelled = item
            .quantity_cancelled
            .map_or(&[][..], |q| decimal(u64::from(q.get()), &mut number));
        field(
            &mut hasher,
            "QuantityCancelled",
            std::str::from_utf8(cancelled).unwrap_or_default(),
        );
        let quantity = item
            .quantity
            .map_or(&[][..], |q| decimal(u64::from(q.get()), &mut number));
        field(
            &mut hasher,
            "Quantity",
            std::str::from_utf8(quantity).unwrap_or_default(),
        );
        // Sorted by name, then by the amount as written out (only for a repeated name).
        let mut components: Vec<(&str, Amount)> = item
            .amounts
            .iter()
            .map(|a| (a.component.name(), a.amount))
            .collect();
        components.sort_by(|a, b| {
            a.0.cmp(b.0)
                .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
        });
        for (name, amount) in components {
            field(&mut hasher, "Component", name);
            scratch.clear();
            // Writing into a String cannot fail.
            let _ = write!(scratch, "{amount}");
            field(&mut hasher, "Amount", &scratch);
        }
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// `n` in decimal ASCII, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` is a single digit.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// True for the rejections that depend on the store (an order, its items, its totals):
/// they are pinned under the message's keys so a replay gets the same answer even after
/// the store changed. Content-only rejections are not pinned, and neither is
/// `OrderNotFound`: an order the store does not know yet is often one whose order report
/// was not imported yet, and the same message must apply once it is (refund-rules c3.4
/// "park and retry": the daemon parks such a feed and retries it, and only its last retry
/// pins `OrderNotFound`, see [`Rules::pin_order_not_found`]).
/// `OutsideRefundWindow` and `ConcessionLimit` are rejections only under [`Policy::Strict`].
pub fn is_state_rejection(code: Code) -> bool {
    matches!(
        code,
        Code::ItemNotInOrder
            | Code::OrderNotAdjustable
            | Code::CurrencyMismatch
            | Code::PositiveChargeComponent
            | Code::CancelExceedsUnshipped
            | Code::QuantityExceedsShipped
            | Code::ComponentExceedsRemaining
            | Code::OutsideRefundWindow
            | Code::ConcessionLimit
    )
}

/// True for the rejections the engine reports once for the whole message (they concern
/// the order, not one item): `OrderNotFound`, `OrderNotAdjustable`, `CurrencyMismatch`,
/// and (under [`Policy::Strict`]) `OutsideRefundWindow`.
pub fn is_message_level(code: Code) -> bool {
    matches!(
        code,
        Code::OrderNotFound
            | Code::OrderNotAdjustable
            | Code::CurrencyMismatch
            | Code::OutsideRefundWindow
    )
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

const MESSAGE_PATH: &str = "Message/OrderAdjustment";

/// An element path with where that element starts in the file: a problem names both, so
/// they come from one place and cannot disagree.
struct At {
    element: String,
    position: Position,
}

/// The order facts every problem of one message carries.
struct Facts<'a> {
    message: &'a AdjustmentMessage,
    /// The order as loaded, when it exists; the names problems carry are derived from it
    /// only when a problem is built (the success path allocates nothing here).
    order: Option<&'a OrderState>,
}

impl<'a> Facts<'a> {
    fn of(snapshot: &'a Snapshot, message: &'a AdjustmentMessage) -> Facts<'a> {
        Facts {
            message,
            order: snapshot.order(&message.order),
        }
    }

    /// The `AmazonOrderID` problems carry: the loaded order's, else the one written.
    fn amazon_order_id(&self) -> Option<String> {
        match (self.order, &self.message.order) {
            (Some(order), _) => Some(order.amazon_order_id.to_string()),
            (None, OrderRef::Amazon(id)) => Some(id.to_string()),
            (None, OrderRef::Merchant(_)) => None,
        }
    }

    /// The `AmazonOrderItemCode` of adjusted item `item_index`, when it can be named.
    fn item_code(&self, item_index: usize) -> Option<String> {
        let item = self.message.items.get(item_index)?;
        match (
            self.order.and_then(|o| find_item(o, &item.item)),
            &item.item,
        ) {
            (Some(index), _) => self.order.map(|o| o.items[index].code.to_string()),
            (None, ItemRef::Amazon(code)) => Some(code.to_string()),
            (None, ItemRef::Merchant(_)) => None,
        }
    }

    fn message_problem(
        &self,
        code: Code,
        at: At,
        description: String,
        fix: impl Into<Cow<'static, str>>,
    ) -> Problem {
        // A problem about the whole message still names the item when there is only one.
        let item_code = match self.message.items.len() {
            1 => self.item_code(0),
            _ => None,
        };
        Problem::new(
            code,
            self.message.message_id,
            at.element,
            Some(at.position),
            description,
            fix,
        )
        .with_order(self.amazon_order_id())
        .with_item(item_code)
    }

    fn item_problem(
        &self,
        code: Code,
        item_index: usize,
        at: At,
        description: String,
        fix: impl Into<Cow<'static, str>>,
    ) -> Problem {
        self.message_problem(code, at, description, fix)
            .with_item(self.item_code(item_index))
    }

    /// `AmazonOrderID` or `MerchantOrderID`.
    fn order_at(&self) -> At {
        let name = match self.message.order {
            OrderRef::Amazon(_) => "AmazonOrderID",
            OrderRef::Merchant(_) => "MerchantOrderID",
        };
        At {
            element: format!("{MESSAGE_PATH}/{name}"),
            position: self.message.order_position,
        }
    }

    /// The `AdjustedItem` itself.
    fn item_at(&self, item_index: usize) -> At {
        At {
            element: format!("{MESSAGE_PATH}/AdjustedItem[{}]", item_index + 1),
            position: self
                .message
                .items
                .get(item_index)
                .map_or(self.message.position, |item| item.position),
        }
    }

    /// A child element `name` of the `AdjustedItem`, at the position `position` picks from
    /// the item; the item itself when it has no such child.
    fn item_child_at(
        &self,
        item_index: usize,
        name: &str,
        position: impl FnOnce(&crate::model::AdjustedItem) -> Option<Position>,
    ) -> At {
        let item = self.item_at(item_index);
        match self.message.items.get(item_index).and_then(position) {
            Some(position) => At {
                element: format!("{}/{name}", item.element),
                position,
            },
            None => item,
        }
    }

    /// `MerchantAdjustmentItemID`; the item itself when its key was derived (it has no such
    /// element).
    fn key_at(&self, item_index: usize) -> At {
        self.item_child_at(item_index, "MerchantAdjustmentItemID", |item| {
            item.positions.key
        })
    }

    /// `AmazonOrderItemCode` or `MerchantOrderItemID`.
    fn item_ref_at(&self, item_index: usize) -> At {
        let item = self.message.items.get(item_index);
        let name = match item.map(|item| &item.item) {
            Some(ItemRef::Merchant(_)) => "MerchantOrderItemID",
            _ => "AmazonOrderItemCode",
        };
        self.item_child_at(item_index, name, |item| Some(item.positions.item_ref))
    }

    /// `QuantityCancelled`.
    fn quantity_cancelled_at(&self, item_index: usize) -> At {
        self.item_child_at(item_index, "QuantityCancelled", |item| {
            item.positions.quantity_cancelled
        })
    }

    /// `Quantity`.
    fn quantity_at(&self, item_index: usize) -> At {
        self.item_child_at(item_index, "Quantity", |item| item.positions.quantity)
    }

    /// `AdjustedItem[n]/ItemPriceAdjustments/Component[k]/Amount` (or the promotion path),
    /// `k` counted among the components of the same group.
    fn amount_at(&self, item_index: usize, amount_index: usize) -> At {
        let item = self.item_at(item_index);
        let Some(amount) = self
            .message
            .items
            .get(item_index)
            .and_then(|i| i.amounts.get(amount_index))
        else {
            return item;
        };
        let amounts = &self.message.items[item_index].amounts;
        // The amount's place among the Components of its own group element.
        let k = amounts[..amount_index]
            .iter()
            .filter(|a| a.group == amount.group)
            .count()
            + 1;
        let group = match amount.group {
            0 => "ItemPriceAdjustments".to_owned(),
            n => format!("PromotionAdjustments[{n}]"),
        };
        At {
            element: format!("{}/{group}/Component[{k}]/Amount", item.element),
            position: amount.position,
        }
    }

    /// The fix sentence for a pinned rejection: a new key is needed to try again.
    fn retry_note(&self) -> &'static str {
        let keys = self
            .message
            .items
            .iter()
            .filter_map(|item| item.key.as_ref());
        if keys.clone().any(|key| !key.is_derived()) {
            if self.message.items.len() == 1 {
                " Then resend with a new MerchantAdjustmentItemID: this one now stands for the rejection."
            } else {
                // An item without an id of its own is keyed with the message (README), so
                // "this one" would name an id it does not have.
                " Then resend the message with a new MerchantAdjustmentItemID for every item: the message's MerchantAdjustmentItemIDs now stand for the rejection."
            }
        } else if keys.count() > 0 {
            " Then resend it in a feed of other content (or give it a MerchantAdjustmentItemID): a copy of this feed gets the same answer."
        } else {
            ""
        }
    }

    /// How to resend a whole message rejected as `resend` says, after "resend the whole
    /// message", for the items linked to a failing one.
    fn resend_note(&self, resend: Resend) -> &'static str {
        let mut keys = self
            .message
            .items
            .iter()
            .filter_map(|item| item.key.as_ref());
        let explicit = keys.clone().any(|key| !key.is_derived());
        match (resend, explicit, keys.next().is_some()) {
            (Resend::Pinned, true, _) => {
                " with a new MerchantAdjustmentItemID for every item: this message's keys now stand for the rejection, so a resend under any of them gets the same answer."
            }
            (Resend::Pinned, false, true) => {
                " in a feed of other content (or give its items MerchantAdjustmentItemIDs): a copy of this feed gets the same answer."
            }
            (Resend::NotRemembered, true, _) => {
                "; its MerchantAdjustmentItemIDs may be used again, as this rejection is not remembered."
            }
            (Resend::KeyConflict, true, _) => {
                "; a MerchantAdjustmentItemID that no earlier message used may be used again, as this rejection is not remembered."
            }
            _ => ".",
        }
    }

    fn item_names(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|i| format!("AdjustedItem[{}]", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The items of `order` by MerchantOrderItemID, for an ITEM_NOT_IN_ORDER of an item the
/// seller named by one: "its items by MerchantOrderItemID: MI-1, MI-2", and the items the
/// order report gave none by AmazonOrderItemCode; `None` when no item has one.
fn known_merchant_item_ids(order: &OrderState) -> Option<String> {
    let named: Vec<String> = order
        .items
        .iter()
        .filter_map(|item| item.merchant_item_id.as_ref().map(ToString::to_string))
        .collect();
    if named.is_empty() {
        return None;
    }
    let unnamed: Vec<String> = order
        .items
        .iter()
        .filter(|item| item.merchant_item_id.is_none())
        .map(|item| item.code.to_string())
        .collect();
    let mut text = format!("its items by MerchantOrderItemID: {}", named.join(", "));
    if !unnamed.is_empty() {
        text.push_str(&format!(
            "; without one, by AmazonOrderItemCode: {}",
            unnamed.join(", ")
        ));
    }
    Some(text)
}

fn find_item(order: &OrderState, item: &ItemRef) -> Option<usize> {
    order.items.iter().position(|state| match item {
        ItemRef::Amazon(code) => &state.code == code,
        ItemRef::Merchant(id) => state.merchant_item_id.as_ref() == Some(id),
    })
}

fn describe_origin(origin: &KeyOrigin) -> String {
    match origin.feed_id {
        Some(feed_id) => format!("message {} of feed {feed_id}", origin.message_id),
        None => format!("message {} earlier in this feed", origin.message_id),
    }
}

/// What the idempotency step decided.
enum KeyCheck {
    /// No key of the message is known: evaluate the rules.
    Fresh,
    /// The outcome is decided without evaluating the rules (replay or conflict).
    Decided(MessageOutcome),
}

/// What a rejection leaves of a message's keys, for the fix of its linked items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Pinned under every key: a resend needs new ones.
    Pinned,
    /// Not remembered: every key may be used again.
    NotRemembered,
    /// An `IdempotencyConflict`, not remembered: the keys no earlier message used may be
    /// used again; the known ones stand for what they were first used for.
    KeyConflict,
}

/// A rejection found by the rules: the problems and the code each item stands for.
struct Rejection {
    problems: Vec<Problem>,
    item_codes: Vec<Code>,
}

fn plan_message(
    snapshot: &mut Snapshot,
    merchant: &MerchantId,
    message: &AdjustmentMessage,
    rules: &Rules,
    processed_on: NaiveDate,
    changes: &mut Vec<Change>,
) -> MessageOutcome {
    let facts = Facts::of(snapshot, message);
    let currency = message.currency.or(facts.order.map(|order| order.currency));
    let hashes: Vec<String> = (0..message.items.len())
        .map(|index| payload_hash(message, index, currency))
        .collect();
    // Precision is a content rule (refund-rules c4 step 3) that comes before the keys and
    // the lookup; without a `currency` attribute it needs the order's currency, so it is
    // checked here, once the order is known. A content rejection is not pinned.
    if message.currency.is_none()
        && let Some(order) = facts.order
        && let Some(rejection) = precision_rejection(&facts, order.currency)
    {
        return reject(
            snapshot,
            message,
            &hashes,
            rejection,
            rules.pin_order_not_found,
            changes,
        );
    }
    if let KeyCheck::Decided(outcome) = check_keys(snapshot, &facts, &hashes) {
        return outcome;
    }
    match evaluate(snapshot, merchant, &facts) {
        Ok((order, mut adjustments)) => {
            let window = refund_window_problem(&facts, &order, rules, processed_on);
            let reviews = review_warnings(&facts, &order, &adjustments, rules);
            let policy_failed =
                window.is_some() || reviews.iter().any(|(_, warning)| warning.code.is_policy());
            if rules.policy == Policy::Strict && policy_failed {
                let rejection = strict_rejection(&facts, window, reviews);
                return reject(
                    snapshot,
                    message,
                    &hashes,
                    rejection,
                    rules.pin_order_not_found,
                    changes,
                );
            }
            let mut warnings: Vec<Problem> = window.into_iter().collect();
            let since = rules.recent_adjustments_since(processed_on);
            warnings.extend(resubmission_warnings(
                &facts,
                &adjustments,
                &hashes,
                since,
                processed_on,
            ));
            warnings.extend(reviews.into_iter().map(|(_, warning)| warning));
            // Adjustments are in item order (all items applied): each takes its item's hash.
            for (adjustment, hash) in adjustments.iter_mut().zip(hashes) {
                adjustment.payload_hash = hash;
                if let Some(key) = &adjustment.key {
                    snapshot.keys.insert(
                        key.clone(),
                        Some(KeyRecord {
                            payload_hash: adjustment.payload_hash.clone(),
                            origin: KeyOrigin {
                                feed_id: None,
                                message_id: message.message_id,
                            },
                            rejection: None,
                        }),
                    );
                }
            }
            let order_id = order.amazon_order_id.clone();
            match snapshot.orders.get_mut(&order_id) {
                // The common case: replace the working copy without re-keying the maps.
                Some(slot) => *slot = order,
                None => snapshot.insert_order(order),
            }
            // Each item remembers what it was given, so a later message of this feed that
            // repeats it is checked too (the store loads the same after a commit). Done on
            // the stored order: the copy it replaced no longer shares the items' sets.
            if since.is_some()
                && let Some(order) = snapshot.orders.get_mut(&order_id)
            {
                for adjustment in &adjustments {
                    if let Some(payload) = PayloadDigest::from_hex(&adjustment.payload_hash)
                        && let Some(item) = order
                            .items
                            .iter_mut()
                            .find(|item| item.code == adjustment.item_code)
                    {
                        item.recent_adjustments.push(RecentAdjustment {
                            payload,
                            origin: KeyOrigin {
                                feed_id: None,
                                message_id: message.message_id,
                            },
                            applied_on: processed_on,
                        });
                    }
                }
            }
            changes.extend(adjustments.into_iter().map(Change::Adjust));
            MessageOutcome {
                message_id: message.message_id,
                applied: true,
                problems: warnings,
                deferred: false,
            }
        }
        Err(mut rejection) => {
            for problem in &mut rejection.problems {
                if problem.code != Code::OrderNotFound {
                    continue;
                }
                if rules.pin_order_not_found {
                    word_final_order_not_found(&facts, merchant, problem);
                } else if let Some(until) = rules.order_not_found_retry_until {
                    word_retried_order_not_found(&facts, merchant, until, problem);
                }
            }
            reject(
                snapshot,
                message,
                &hashes,
                rejection,
                rules.pin_order_not_found,
                changes,
            )
        }
    }
}

/// The words of an `OrderNotFound` that is pinned ([`Rules::pin_order_not_found`]): the
/// last retry of a parked feed, so the answer is final and a new key is needed.
fn word_final_order_not_found(facts: &Facts<'_>, merchant: &MerchantId, problem: &mut Problem) {
    let check = NamedBy::of(&facts.message.order).check(merchant, "exists");
    problem.description = format!(
        "no order with {} exists for merchant {merchant}, and this was the last retry: the order was still not found when the order-not-found window ended (config [daemon] order_not_found_window_secs), so this rejection is now final and pinned to the message's keys",
        facts.message.order
    );
    problem.fix = format!("{check}.{}", facts.retry_note()).into();
}

/// The words of an `OrderNotFound` that the daemon retries by itself
/// ([`Rules::order_not_found_retry_until`]): the feed is parked, so importing the order
/// report before `until` is all it takes, and a resend would only be a second copy.
fn word_retried_order_not_found(
    facts: &Facts<'_>,
    merchant: &MerchantId,
    until: DateTime<Utc>,
    problem: &mut Problem,
) {
    (problem.description, problem.fix) = deferred_order_not_found_words(
        format!(
            "no order with {} exists for merchant {merchant}",
            facts.message.order
        ),
        NamedBy::of(&facts.message.order),
        merchant,
        Some(until),
    );
}

/// How a message names its order, which decides what an `OrderNotFound` asks to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamedBy {
    Amazon,
    Merchant,
}

impl NamedBy {
    const ALL: [NamedBy; 2] = [NamedBy::Amazon, NamedBy::Merchant];

    fn of(order: &OrderRef) -> NamedBy {
        match order {
            OrderRef::Amazon(_) => NamedBy::Amazon,
            OrderRef::Merchant(_) => NamedBy::Merchant,
        }
    }

    /// What to check: the id, and the order report imported for this merchant (orders are
    /// kept per merchant, so one imported under another `--merchant` is not found).
    /// `if_order` completes "if the order ...".
    fn check(self, merchant: &MerchantId, if_order: &str) -> String {
        let merchant_too = format!(
            "and the feed's MerchantIdentifier (orders are kept per merchant, and this feed speaks for {merchant})"
        );
        match self {
            NamedBy::Amazon => format!(
                "{} {merchant_too}; if the order {if_order}, import its order report for this merchant (adjustd orders import --merchant {merchant})",
                self.first_words()
            ),
            NamedBy::Merchant => format!(
                "{} (or use the AmazonOrderID) {merchant_too}; the order report must carry the merchant-order-id to resolve it (adjustd orders import --merchant {merchant})",
                self.first_words()
            ),
        }
    }

    /// How the fix of an `OrderNotFound` starts, which tells how the message named its
    /// order when the words are read back ([`reword_deferred_order_not_found`]); the words
    /// of earlier builds start the same way.
    fn first_words(self) -> &'static str {
        match self {
            NamedBy::Amazon => "Check the AmazonOrderID",
            NamedBy::Merchant => "Check the MerchantOrderID",
        }
    }
}

/// The end of a deferred `OrderNotFound`'s fix that asks for a resend.
const RESEND_UNCHANGED: &str =
    " Then resend the message unchanged: this rejection is not remembered.";

/// What follows "no order with ... exists for merchant ..." in a retried `OrderNotFound`.
const RETRIED_UNTIL: &str = " yet; adjustd retries this message automatically until ";

/// The description and fix of a deferred (not pinned) `OrderNotFound` whose plain
/// description is `missing` ("no order with ... exists for merchant ..."): retried by the
/// daemon until `retry_until`, or, with `None`, to be resent once the order is imported.
fn deferred_order_not_found_words(
    missing: String,
    named_by: NamedBy,
    merchant: &MerchantId,
    retry_until: Option<DateTime<Utc>>,
) -> (String, Cow<'static, str>) {
    match retry_until {
        None => (
            missing,
            format!("{}.{RESEND_UNCHANGED}", named_by.check(merchant, "is new")).into(),
        ),
        Some(until) => {
            // To the second: the window's end is what the operator has to beat.
            let until = until.format("%Y-%m-%d %H:%M:%S UTC");
            (
                format!(
                    "{missing}{RETRIED_UNTIL}{until} (config [daemon] order_not_found_window_secs), after which the rejection is final"
                ),
                format!(
                    "{} before {until}: the next retry then applies this message. No resend is needed.",
                    named_by.check(merchant, "is new")
                )
                .into(),
            )
        }
    }
}

/// Words a deferred `OrderNotFound` of a stored report again for what happens now: retried
/// by the daemon until `retry_until` (the feed is parked now, with this window), or, with
/// `None` (parking turned off since, or the feed's last retry), to be resent. The report of
/// a committed feed is stored with the words of its first run and re-emitted after a crash
/// ([`crate::pipeline`]), when the configuration may have changed. Any other problem, and a
/// pinned `OrderNotFound` (whose answer is final whatever happens now), is left as it is.
pub fn reword_deferred_order_not_found(
    problem: &mut Problem,
    merchant: &MerchantId,
    retry_until: Option<DateTime<Utc>>,
) {
    if problem.code != Code::OrderNotFound {
        return;
    }
    let Some(named_by) = NamedBy::ALL
        .into_iter()
        .find(|named_by| problem.fix.starts_with(named_by.first_words()))
    else {
        return;
    };
    let missing = match problem.description.split_once(RETRIED_UNTIL) {
        Some((missing, _)) => missing.to_owned(),
        // Asked to be resent: deferred, not pinned (a pinned one asks for a new key).
        None if problem.fix.ends_with(RESEND_UNCHANGED) => problem.description.clone(),
        None => return,
    };
    (problem.description, problem.fix) =
        deferred_order_not_found_words(missing, named_by, merchant, retry_until);
}

/// A message that is not applied: state rejections are pinned under every key of the
/// message (refund-rules §c3.4), content rejections are not, and neither is `OrderNotFound`
/// unless `pin_order_not_found` ([`Rules::pin_order_not_found`]); unpinned, it is deferred.
fn reject(
    snapshot: &mut Snapshot,
    message: &AdjustmentMessage,
    hashes: &[String],
    rejection: Rejection,
    pin_order_not_found: bool,
    changes: &mut Vec<Change>,
) -> MessageOutcome {
    let pinned = rejection.item_codes.iter().all(|code| {
        *code == Code::LinkedItemFailed
            || is_state_rejection(*code)
            || (pin_order_not_found && *code == Code::OrderNotFound)
    });
    let deferred = !pinned && rejection.item_codes.contains(&Code::OrderNotFound);
    if pinned {
        for ((item, hash), code) in message.items.iter().zip(hashes).zip(&rejection.item_codes) {
            let Some(key) = &item.key else { continue };
            snapshot.keys.insert(
                key.clone(),
                Some(KeyRecord {
                    payload_hash: hash.clone(),
                    origin: KeyOrigin {
                        feed_id: None,
                        message_id: message.message_id,
                    },
                    rejection: Some(*code),
                }),
            );
            changes.push(Change::PinRejection {
                key: key.clone(),
                payload_hash: hash.clone(),
                message_id: message.message_id,
                code: *code,
            });
        }
    }
    MessageOutcome {
        message_id: message.message_id,
        applied: false,
        problems: rejection.problems,
        deferred,
    }
}

/// Under [`Policy::Strict`], the policy checks that fired make the message a state
/// rejection (pinned): outside the refund window for the whole message, else every item
/// over the concession limit, its siblings linked to it. The review
/// warnings of a message that is not applied are dropped.
fn strict_rejection(
    facts: &Facts<'_>,
    window: Option<Problem>,
    reviews: Vec<(usize, Problem)>,
) -> Rejection {
    if let Some(problem) = window {
        return Rejection {
            item_codes: vec![problem.code; facts.message.items.len()],
            problems: vec![problem.into_error()],
        };
    }
    let mut failures: Vec<Option<Problem>> = vec![None; facts.message.items.len()];
    for (index, warning) in reviews {
        if warning.code.is_policy() {
            failures[index] = Some(warning.into_error());
        }
    }
    let failed: Vec<usize> = (0..failures.len())
        .filter(|index| failures[*index].is_some())
        .collect();
    linked_rejection(facts, failures, &failed)
}

/// Step 8 (refund-rules §c4 step 15, R17): a message to an order purchased more than
/// [`Rules::refund_window_days`] days before `processed_on` gets an `OutsideRefundWindow`
/// problem: a warning (the message applies) or, under [`Policy::Strict`], the reason it
/// does not. No window, no purchase date, or a purchase date after the processing day:
/// none.
fn refund_window_problem(
    facts: &Facts<'_>,
    order: &OrderState,
    rules: &Rules,
    processed_on: NaiveDate,
) -> Option<Problem> {
    let window = rules.refund_window_days?;
    let purchased = order.purchase_date?;
    let days = processed_on.signed_duration_since(purchased).num_days();
    if days <= i64::from(window.get()) {
        return None;
    }
    let id = &order.amazon_order_id;
    let (verdict, fix) = match rules.policy {
        Policy::Warn => (
            "but the adjustment was applied".to_owned(),
            format!(
                "Nothing to undo: the adjustment was applied. Check that this late adjustment to order {id} was meant (a return outside your return policy or a goodwill refund), and that the order report's purchase-date is right; if {} is the wrong window, change [rules] refund_window_days.",
                count(window.get(), "day")
            ),
        ),
        Policy::Strict => (
            "so under [rules] policy = \"strict\" nothing of this message was applied".to_owned(),
            format!(
                "If the late refund is meant, make it in Seller Central, or have the operator widen [rules] refund_window_days and resend under new MerchantAdjustmentItemIDs (this answer is pinned to the message's keys); if the order report's purchase-date for {id} is wrong, re-import it first."
            ),
        ),
    };
    Some(facts.message_problem(
        Code::OutsideRefundWindow,
        facts.order_at(),
        format!(
            "order {id} was purchased on {purchased} (UTC day of its purchase-date), {days} days before this feed's processing started ({processed_on}, UTC); that is more than the refund window of {} (config [rules] refund_window_days), {verdict}",
            count(window.get(), "day")
        ),
        fix,
    ))
}

/// Step 8, for the adjusted items under new keys (refund-rules §c3.2): an item whose
/// content ([`payload_hash`], which leaves the key out) equals that of an adjustment
/// applied to the same item on or after `since` still applies, with a
/// `PossibleResubmission` warning naming the latest such adjustment (an adjustment stored by
/// an earlier build, whose hash names no currency for a message without the attribute, is
/// matched too). Amazon applies two
/// identical adjustments as two refunds (SC-30741), so a sender that resends applied
/// adjustments under new keys (or in a re-exported file without keys, whose derived keys
/// change with its content) refunds twice. A replay under the same key never gets here:
/// [`check_keys`] answers it. `since` `None`: the warning is off.
fn resubmission_warnings(
    facts: &Facts<'_>,
    adjustments: &[NewAdjustment],
    hashes: &[String],
    since: Option<NaiveDate>,
    processed_on: NaiveDate,
) -> Vec<Problem> {
    let (Some(since), Some(before)) = (since, facts.order) else {
        return Vec::new();
    };
    let message = facts.message;
    let mut warnings = Vec::new();
    // All items applied, so adjustment `index` is adjusted item `index`; every key of the
    // message is new (a known key was decided by `check_keys`).
    for (index, (adjustment, hash)) in adjustments.iter().zip(hashes).enumerate() {
        let Some(item) = before
            .items
            .iter()
            .find(|item| item.code == adjustment.item_code)
        else {
            continue;
        };
        if item.recent_adjustments.is_empty() {
            continue;
        }
        let Some(payload) = PayloadDigest::from_hex(hash) else {
            continue;
        };
        // An adjustment stored by an earlier build has the hash that names no currency for
        // a message without the attribute, as in `check_keys`.
        let legacy = (message.currency.is_none() || message.currency == Some(before.currency))
            .then(|| PayloadDigest::from_hex(&payload_hash(message, index, None)))
            .flatten();
        // The latest under either hash (the legacy one only matches what an earlier build
        // stored, before this feed).
        let latest = item.recent_adjustments.latest(&payload);
        let latest_legacy = legacy.and_then(|legacy| item.recent_adjustments.latest(&legacy));
        let Some(earlier) = [latest, latest_legacy]
            .into_iter()
            .flatten()
            .filter(|earlier| earlier.applied_on >= since)
            // This feed's own come last, then by day, feed and message.
            .max_by_key(|earlier| {
                let origin = &earlier.origin;
                (
                    origin.feed_id.is_none(),
                    earlier.applied_on,
                    origin.feed_id,
                    origin.message_id,
                )
            })
        else {
            continue;
        };
        let when = match earlier.origin.feed_id {
            Some(_) => {
                let days = processed_on
                    .signed_duration_since(earlier.applied_on)
                    .num_days();
                format!(
                    "{} on {} ({})",
                    describe_origin(&earlier.origin),
                    earlier.applied_on,
                    match days {
                        ..=0 => "the day this feed was processed".to_owned(),
                        1 => "1 day before this feed was processed".to_owned(),
                        _ => format!("{days} days before this feed was processed"),
                    }
                )
            }
            None => describe_origin(&earlier.origin),
        };
        let key = match &facts.message.items[index].key {
            Some(key) if !key.is_derived() => format!("under the new MerchantAdjustmentItemID {key}"),
            _ => "without a MerchantAdjustmentItemID, so under a new key (derived from the file's content, the MessageID and the item's position)".to_owned(),
        };
        warnings.push(facts.item_problem(
            Code::PossibleResubmission,
            index,
            facts.key_at(index),
            format!(
                "AdjustedItem[{}] has the same content (order, item, reason, quantities and amounts) as the adjustment applied in {when}, but comes {key}; it was applied again, so item {} now has this adjustment twice",
                index + 1,
                adjustment.item_code
            ),
            "Nothing to do if a second refund was meant. Otherwise reverse it (Amazon reverses a refund only with the buyer's agreement to a recharge) and stop the sender from resending applied adjustments; to resend an adjustment on purpose, send it with the same MerchantAdjustmentItemID, so it is recognised as a duplicate and not applied again (an item without one is recognised only in a copy of the same file).",
        ));
    }
    warnings
}

/// Whether `record` holds the content of adjusted item `item_index` written another way
/// than its hash as written: by an earlier build (`legacy`: no currency, see
/// [`payload_hash`]), or naming the order or the item by its other id (`AmazonOrderID`
/// against `MerchantOrderID`, `AmazonOrderItemCode` against `MerchantOrderItemID`) where
/// the loaded order knows both. Only reached when the hashes differ, so the common path
/// computes nothing here.
fn stored_as_respelled(
    record: &KeyRecord,
    message: &AdjustmentMessage,
    item_index: usize,
    order: Option<&OrderState>,
    legacy: bool,
) -> bool {
    // `legacy` implies a loaded order; the spellings below include the one as written.
    let (Some(order), Some(written)) = (order, message.items.get(item_index)) else {
        return false;
    };
    let order_refs = std::iter::once(OrderRef::Amazon(order.amazon_order_id.clone()))
        .chain(order.merchant_order_id.clone().map(OrderRef::Merchant));
    // An item the order does not have keeps the name it was written with.
    let item_refs: Vec<ItemRef> = match find_item(order, &written.item) {
        Some(index) => {
            let item = &order.items[index];
            std::iter::once(ItemRef::Amazon(item.code.clone()))
                .chain(item.merchant_item_id.clone().map(ItemRef::Merchant))
                .collect()
        }
        None => vec![written.item.clone()],
    };
    let currencies: &[Option<Currency>] = if legacy {
        &[Some(order.currency), None]
    } else {
        &[message.currency.or(Some(order.currency))]
    };
    order_refs.into_iter().any(|order_ref| {
        item_refs.iter().any(|item_ref| {
            currencies.iter().any(|currency| {
                record.payload_hash
                    == spelled_payload_hash(
                        message,
                        item_index,
                        *currency,
                        &order_ref,
                        Some(item_ref),
                    )
            })
        })
    })
}

/// Step 1: lifts the per-item key records to the message (refund-rules §c3.2).
///
/// A conflict fails its message like any item's error: the items without a conflict of
/// their own get `LinkedItemFailed` (refund-rules §c4 step 16). Nothing of it is pinned.
fn check_keys(snapshot: &Snapshot, facts: &Facts<'_>, hashes: &[String]) -> KeyCheck {
    let message = facts.message;
    let conflict = |item_index: usize, description: String, fix: &str| {
        facts.item_problem(
            Code::IdempotencyConflict,
            item_index,
            facts.key_at(item_index),
            description,
            fix.to_owned(),
        )
    };
    // The problems found for some items; the others are linked to them.
    let decided = |failures: Vec<Option<Problem>>| {
        let failed: Vec<usize> = (0..failures.len())
            .filter(|index| failures[*index].is_some())
            .collect();
        KeyCheck::Decided(MessageOutcome {
            message_id: message.message_id,
            applied: false,
            problems: linked_rejection(facts, failures, &failed).problems,
            deferred: false,
        })
    };
    let only = |index: usize, problem: Problem| {
        let mut failures = vec![None; message.items.len()];
        failures[index] = Some(problem);
        decided(failures)
    };
    const FIX_NEW_KEY: &str = "Use a new MerchantAdjustmentItemID for a new adjustment (unique across all your orders, not per order); to replay an earlier one, resend that message unchanged.";

    // Conflicts of one item each: a key used twice in the message, a key known with other
    // content.
    let mut failures: Vec<Option<Problem>> = vec![None; message.items.len()];
    for (index, item) in message.items.iter().enumerate() {
        let Some(key) = &item.key else { continue };
        if let Some(first) = message.items[..index]
            .iter()
            .position(|other| other.key.as_ref() == Some(key))
        {
            failures[index] = Some(conflict(
                index,
                format!(
                    "MerchantAdjustmentItemID {key} is used by AdjustedItem[{}] and AdjustedItem[{}] of the same message; one key stands for one adjusted item",
                    first + 1,
                    index + 1
                ),
                "Give every AdjustedItem its own MerchantAdjustmentItemID.",
            ));
        }
    }

    // A key derived from the content may have been recorded by an earlier build under the
    // key it derived ([`AdjustedItem::earlier_key`]).
    let records: Vec<Option<&KeyRecord>> = message
        .items
        .iter()
        .map(|item| {
            [&item.key, &item.earlier_key]
                .into_iter()
                .flatten()
                .find_map(|key| snapshot.key(key))
        })
        .collect();
    // A hash stored by an earlier build names no currency for a message without the
    // attribute, which meant the order's currency ([`payload_hash`]).
    let order_currency = facts.order.map(|order| order.currency);
    let legacy = order_currency.is_some() && message.currency.or(order_currency) == order_currency;
    for (index, (record, hash)) in records.iter().zip(hashes).enumerate() {
        if let Some(record) = record
            && failures[index].is_none()
            && record.payload_hash != *hash
            && !stored_as_respelled(record, message, index, facts.order, legacy)
        {
            let key = message.items[index]
                .key
                .as_ref()
                .map_or_else(String::new, SellerId::to_string);
            failures[index] = Some(conflict(
                index,
                format!(
                    "MerchantAdjustmentItemID {key} was already used in {} for different content (order, item, reason, quantities or amounts differ)",
                    describe_origin(&record.origin)
                ),
                FIX_NEW_KEY,
            ));
        }
    }
    if failures.iter().any(Option::is_some) {
        return decided(failures);
    }
    let Some(first_known) = records.iter().position(Option::is_some) else {
        return KeyCheck::Fresh;
    };

    // Conflicts of the keys together: a replay must repeat one earlier message whole.
    let known: Vec<&KeyRecord> = records.iter().flatten().copied().collect();
    if let Some(unknown) = records.iter().position(Option::is_none) {
        let key = message.items[first_known]
            .key
            .as_ref()
            .map_or_else(String::new, SellerId::to_string);
        let what = match &message.items[unknown].key {
            Some(other) => format!("has the new key {other}"),
            None => "has no MerchantAdjustmentItemID".to_owned(),
        };
        return only(
            unknown,
            conflict(
                unknown,
                format!(
                    "AdjustedItem[{}] uses MerchantAdjustmentItemID {key}, already used in {}, but AdjustedItem[{}] {what}; a replay must repeat the whole earlier message",
                    first_known + 1,
                    describe_origin(&known[0].origin),
                    unknown + 1
                ),
                FIX_NEW_KEY,
            ),
        );
    }
    if let Some(other) = known.iter().position(|r| r.origin != known[0].origin) {
        return only(
            other,
            conflict(
                other,
                format!(
                    "the keys of this message come from different earlier messages: AdjustedItem[1] from {}, AdjustedItem[{}] from {}",
                    describe_origin(&known[0].origin),
                    other + 1,
                    describe_origin(&known[other].origin)
                ),
                FIX_NEW_KEY,
            ),
        );
    }
    if known.iter().any(|r| r.rejection.is_some()) && known.iter().any(|r| r.rejection.is_none()) {
        return only(
            0,
            conflict(
                0,
                format!(
                    "the keys of this message were recorded as partly applied and partly rejected in {}",
                    describe_origin(&known[0].origin)
                ),
                FIX_NEW_KEY,
            ),
        );
    }

    let origin = describe_origin(&known[0].origin);
    let codes: Vec<Option<Code>> = known.iter().map(|r| r.rejection).collect();
    let problems = match codes.first().copied().flatten() {
        None => (0..message.items.len())
            .map(|index| {
                facts.item_problem(
                    Code::DuplicateAdjustment,
                    index,
                    facts.key_at(index),
                    format!(
                        "identical to the adjustment applied under MerchantAdjustmentItemID {} in {origin}; not applied again",
                        message.items[index]
                            .key
                            .as_ref()
                            .map_or_else(String::new, SellerId::to_string)
                    ),
                    "Nothing to do if this is a resend. For a further refund, use a new MerchantAdjustmentItemID.",
                )
            })
            .collect(),
        // Only the last retry of a parked feed pins an `OrderNotFound`, so the replay says
        // that the order may exist by now and the answer still stands.
        Some(Code::OrderNotFound) => vec![facts.message_problem(
            Code::OrderNotFound,
            facts.order_at(),
            format!(
                "this message was already rejected with {} in {origin}, after its order was not found until the order-not-found window ended; the answer is pinned to its keys and not re-evaluated, even if the order exists now",
                Code::OrderNotFound
            ),
            format!(
                "Nothing was applied. If the order exists, make sure its order report is imported (adjustd orders import).{}",
                facts.retry_note()
            ),
        )],
        // `into_error`: a pinned `OutsideRefundWindow` (strict policy) too.
        Some(code) if is_message_level(code) => vec![
            facts
                .message_problem(
                    code,
                    facts.order_at(),
                    format!(
                        "this message was already rejected with {} {} in {origin}; the answer is pinned to its MerchantAdjustmentItemIDs and not re-evaluated",
                        code.number(),
                        code.name()
                    ),
                    "Use new MerchantAdjustmentItemIDs to try again once the cause is fixed.",
                )
                .into_error(),
        ],
        Some(_) => {
            let failed: Vec<usize> = codes
                .iter()
                .enumerate()
                .filter(|(_, code)| **code != Some(Code::LinkedItemFailed))
                .map(|(index, _)| index)
                .collect();
            codes
                .iter()
                .enumerate()
                .map(|(index, code)| {
                    let code = code.unwrap_or(Code::LinkedItemFailed);
                    let description = if code == Code::LinkedItemFailed {
                        // A resend of only some items of the earlier message may leave out
                        // every item that failed.
                        let cause = if failed.is_empty() {
                            "another AdjustedItem of that message".to_owned()
                        } else {
                            facts.item_names(&failed)
                        };
                        format!(
                            "this message was already rejected in {origin} because {cause} failed; the answer is pinned and not re-evaluated"
                        )
                    } else {
                        format!(
                            "this adjusted item was already rejected with {} {} in {origin}; the answer is pinned to its MerchantAdjustmentItemID and not re-evaluated",
                            code.number(),
                            code.name()
                        )
                    };
                    // `into_error`: a pinned `ConcessionLimit` (strict policy) too.
                    facts
                        .item_problem(
                            code,
                            index,
                            facts.key_at(index),
                            description,
                            "Use new MerchantAdjustmentItemIDs to try again once the cause is fixed.",
                        )
                        .into_error()
                })
                .collect()
        }
    };
    let applied = codes.iter().all(Option::is_none);
    KeyCheck::Decided(MessageOutcome {
        message_id: message.message_id,
        applied,
        problems,
        deferred: false,
    })
}

/// Steps 2-7 for a message whose keys are all new: the updated order and the adjustments,
/// or why not.
fn evaluate(
    snapshot: &Snapshot,
    merchant: &MerchantId,
    facts: &Facts<'_>,
) -> Result<(OrderState, Vec<NewAdjustment>), Rejection> {
    let message = facts.message;
    let n_items = message.items.len();
    let message_rejection = |problem: Problem| Rejection {
        item_codes: vec![problem.code; n_items],
        problems: vec![problem],
    };

    let Some(order) = snapshot.order(&message.order) else {
        let (description, fix) = deferred_order_not_found_words(
            format!(
                "no order with {} exists for merchant {merchant}",
                message.order
            ),
            NamedBy::of(&message.order),
            merchant,
            None,
        );
        return Err(message_rejection(facts.message_problem(
            Code::OrderNotFound,
            facts.order_at(),
            description,
            fix,
        )));
    };

    let positions: Vec<Option<usize>> = message
        .items
        .iter()
        .map(|item| find_item(order, &item.item))
        .collect();
    if positions.iter().any(Option::is_none) {
        let missing: Vec<usize> = (0..n_items).filter(|i| positions[*i].is_none()).collect();
        let by_code = order
            .items
            .iter()
            .map(|item| item.code.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let by_merchant_id = known_merchant_item_ids(order);
        return Err(linked_rejection(
            facts,
            positions
                .iter()
                .enumerate()
                .map(|(index, position)| match position {
                    Some(_) => None,
                    None => Some(facts.item_problem(
                        Code::ItemNotInOrder,
                        index,
                        facts.item_ref_at(index),
                        format!(
                            "{} is not an item of order {} ({})",
                            message.items[index].item,
                            order.amazon_order_id,
                            // The items in the scheme the seller named this one by.
                            match (&message.items[index].item, &by_merchant_id) {
                                (ItemRef::Merchant(_), Some(ids)) => ids.clone(),
                                (ItemRef::Merchant(_), None) => format!(
                                    "its items: {by_code}; the order report gave none of them a merchant-order-item-id"
                                ),
                                (ItemRef::Amazon(_), _) => format!("its items: {by_code}"),
                            }
                        ),
                        format!(
                            "Use the AmazonOrderItemCode (or a MerchantOrderItemID known from the order report) of an item of this order.{}",
                            facts.retry_note()
                        ),
                    )),
                })
                .collect(),
            &missing,
        ));
    }
    let positions: Vec<usize> = positions.into_iter().flatten().collect();

    if order.channel == FulfillmentChannel::Amazon {
        return Err(message_rejection(facts.message_problem(
            Code::OrderNotAdjustable,
            facts.order_at(),
            format!(
                "order {} is fulfilled by Amazon (AFN); the seller cannot refund it through this feed",
                order.amazon_order_id
            ),
            "Amazon handles refunds of the orders it fulfils; remove this message.",
        )));
    }
    if order
        .items
        .iter()
        .all(|item| item.quantity_cancelled >= item.quantity_ordered)
    {
        return Err(message_rejection(facts.message_problem(
            Code::OrderNotAdjustable,
            facts.order_at(),
            format!(
                "order {} is fully cancelled: every unit of every item was cancelled, so the order takes no further adjustments",
                order.amazon_order_id
            ),
            // No resend advice: no key can make a fully cancelled order adjustable again.
            "Remove this message. Amazon does not charge buyers for cancelled units; if money is to go back to the buyer anyway, refund it in Seller Central.",
        )));
    }

    let currency = order.currency;
    if let Some(declared) = message.currency
        && declared != currency
    {
        // The attribute is on the message's first Amount.
        let (item_index, at) = message
            .items
            .iter()
            .position(|item| !item.amounts.is_empty())
            .map_or_else(
                || (0, facts.order_at()),
                |index| {
                    let amount = facts.amount_at(index, 0);
                    let element = format!("{}/@currency", amount.element);
                    (index, At { element, ..amount })
                },
            );
        return Err(message_rejection(facts.item_problem(
            Code::CurrencyMismatch,
            item_index,
            at,
            format!(
                "the amounts are in {declared} but order {} is in {currency}",
                order.amazon_order_id
            ),
            format!(
                "Send the amounts in {currency} with currency=\"{currency}\" (or without the attribute).{}",
                facts.retry_note()
            ),
        )));
    }

    let mut work = order.clone();
    let mut failures: Vec<Option<Problem>> = Vec::with_capacity(n_items);
    let mut adjustments = Vec::with_capacity(n_items);
    for (index, position) in positions.iter().enumerate() {
        match evaluate_item(&mut work, *position, facts, index) {
            Ok(adjustment) => {
                adjustments.push(adjustment);
                failures.push(None);
            }
            Err(problem) => failures.push(Some(*problem)),
        }
    }
    if failures.iter().any(Option::is_some) {
        let failed: Vec<usize> = (0..n_items).filter(|i| failures[*i].is_some()).collect();
        return Err(linked_rejection(facts, failures, &failed));
    }
    Ok((work, adjustments))
}

/// A rejection where some items failed on their own and the others are linked to them.
fn linked_rejection(
    facts: &Facts<'_>,
    failures: Vec<Option<Problem>>,
    failed: &[usize],
) -> Rejection {
    let mut problems = Vec::with_capacity(failures.len());
    let mut item_codes = Vec::with_capacity(failures.len());
    // Pinned as `reject` pins: only when every failure is a state rejection.
    let resend = if failures
        .iter()
        .flatten()
        .all(|problem| is_state_rejection(problem.code))
    {
        Resend::Pinned
    } else if failures
        .iter()
        .flatten()
        .any(|problem| problem.code == Code::IdempotencyConflict)
    {
        Resend::KeyConflict
    } else {
        Resend::NotRemembered
    };
    let names = facts.item_names(failed);
    for (index, failure) in failures.into_iter().enumerate() {
        let problem = failure.unwrap_or_else(|| {
            facts.item_problem(
                Code::LinkedItemFailed,
                index,
                facts.item_at(index),
                format!(
                    "not applied because {names} of the same message failed; the items of a message apply together or not at all"
                ),
                format!("Fix {names} and resend the whole message{}", facts.resend_note(resend)),
            )
        });
        item_codes.push(problem.code);
        problems.push(problem);
    }
    Rejection {
        problems,
        item_codes,
    }
}

/// Steps 3-6 for one adjusted item; on success the item's totals in `order` are updated.
fn evaluate_item(
    order: &mut OrderState,
    position: usize,
    facts: &Facts<'_>,
    index: usize,
) -> Result<NewAdjustment, Box<Problem>> {
    let message = facts.message;
    let item = &message.items[index];
    let currency = order.currency;
    let retry = facts.retry_note();
    let state = &order.items[position];
    // The item as it was before this message: `state` also holds what earlier items of the
    // message did to it, which the texts below tell apart from what was applied before.
    let before = facts
        .order
        .and_then(|order| order.items.get(position))
        .unwrap_or(state);

    // Step 3: every amount in minor units of the order currency.
    let mut amounts: Vec<(Component, i64)> = Vec::with_capacity(item.amounts.len());
    for (amount_index, amount) in item.amounts.iter().enumerate() {
        match amount.amount.to_minor(currency) {
            Some(minor) => amounts.push((amount.component, minor)),
            None => {
                // `evaluate` (or the validator) reports precision first; what is left here
                // is an amount too large for minor units.
                if let Some(problem) = precision_problem(facts, index, currency) {
                    return Err(Box::new(problem));
                }
                let (description, fix) = too_large_texts(
                    &format!("{} amount", amount.component),
                    &amount.amount.written().to_string(),
                    currency,
                );
                return Err(Box::new(facts.item_problem(
                    Code::AmountFormat,
                    index,
                    facts.amount_at(index, amount_index),
                    description,
                    fix,
                )));
            }
        }
    }
    // The item's net credit, in minor units; NET_NOT_CREDIT (validation) already made sure
    // it is positive unless the item only cancels units.
    let Some(net) = amounts
        .iter()
        .try_fold(0_i64, |net, (_, minor)| net.checked_add(*minor))
    else {
        let (description, fix) = net_too_large_texts(currency);
        return Err(Box::new(facts.item_problem(
            Code::AmountFormat,
            index,
            facts.item_at(index),
            description,
            fix,
        )));
    };

    // Step 4: a positive fee reverses an earlier fee and may not take the total above zero.
    let mut running: Option<BTreeMap<Component, ComponentTotals>> = None;
    for (amount_index, (component, minor)) in amounts.iter().enumerate() {
        if component.class() != ComponentClass::Fee || *minor <= 0 {
            continue;
        }
        let totals = running
            .get_or_insert_with(|| state.components.clone())
            .entry(*component)
            .or_default();
        match totals.refunded.checked_add(*minor) {
            Some(total) if total <= 0 => totals.refunded = total,
            _ => {
                let reversible = totals.refunded.checked_neg().unwrap_or(i64::MAX).max(0);
                return Err(Box::new(facts.item_problem(
                    Code::PositiveChargeComponent,
                    index,
                    facts.amount_at(index, amount_index),
                    format!(
                        "{component}: requested +{} {currency} reverses more than the fees charged so far ({}); at most {} {currency} can be reversed",
                        format_minor(*minor, currency),
                        so_far(
                            i128::from(totals.refunded),
                            i128::from(before.components.get(component).map_or(0, |t| t.refunded)),
                            |minor| money(minor, currency),
                        ),
                        format_minor(reversible, currency)
                    ),
                    format!(
                        "A {component} charge to the buyer is negative; a positive amount only reverses an earlier one, at most {} {currency}.{retry}",
                        format_minor(reversible, currency)
                    ),
                )));
            }
        }
    }

    // Step 5: quantities.
    let quantity_cancelled = item.quantity_cancelled.map_or(0, |q| q.get());
    let unshipped = state
        .quantity_ordered
        .saturating_sub(state.quantity_shipped)
        .saturating_sub(state.quantity_cancelled);
    if quantity_cancelled > unshipped {
        return Err(Box::new(facts.item_problem(
            Code::CancelExceedsUnshipped,
            index,
            facts.quantity_cancelled_at(index),
            format!(
                "QuantityCancelled {quantity_cancelled} is more than the units not yet shipped or cancelled: {} (ordered {}, shipped {}, already cancelled {})",
                match unshipped {
                    0 => "there are none".to_owned(),
                    n => format!("only {}", count(n, "unit")),
                },
                state.quantity_ordered,
                state.quantity_shipped,
                so_far(
                    state.quantity_cancelled.into(),
                    before.quantity_cancelled.into(),
                    |n| n.to_string()
                )
            ),
            match unshipped {
                0 => format!(
                    "Every unit of this item is shipped or cancelled already, so none can be cancelled; refund shipped units as a return instead.{retry}"
                ),
                n => format!(
                    "Cancel at most {}; refund shipped units as a return instead.{retry}",
                    count(n, "unit")
                ),
            },
        )));
    }
    // Returned units (refund-rules I3: returned <= shipped), counted over every adjustment.
    let quantity_returned = item.quantity.map_or(0, |q| q.get());
    let returnable = state
        .quantity_shipped
        .saturating_sub(state.quantity_returned);
    if quantity_returned > returnable {
        return Err(Box::new(facts.item_problem(
            Code::QuantityExceedsShipped,
            index,
            facts.quantity_at(index),
            format!(
                "Quantity {quantity_returned} is more than the shipped units not returned yet: {} (shipped {}, already returned {})",
                match returnable {
                    0 => "there are none".to_owned(),
                    n => format!("only {}", count(n, "unit")),
                },
                state.quantity_shipped,
                so_far(
                    state.quantity_returned.into(),
                    before.quantity_returned.into(),
                    |n| n.to_string()
                )
            ),
            return_fix(state, returnable, unshipped, retry),
        )));
    }

    // Step 6: caps, on a running copy so two amounts of one component would add up.
    // New totals of the components this item adjusts, in first-seen order (a component
    // named twice adds up); written into the item only when every amount passes.
    let mut totals_after: Vec<(Component, ComponentTotals)> = Vec::with_capacity(amounts.len());
    for (amount_index, (component, minor)) in amounts.iter().enumerate() {
        let slot = match totals_after.iter().position(|(c, _)| c == component) {
            Some(slot) => slot,
            None => {
                let current = state.components.get(component).copied().unwrap_or_default();
                totals_after.push((*component, current));
                totals_after.len() - 1
            }
        };
        let totals = &mut totals_after[slot].1;
        let refunded_before = before.components.get(component).map_or(0, |t| t.refunded);
        match check_cap(*component, *totals, refunded_before, *minor, currency) {
            Ok(total) => totals.refunded = total,
            Err((code, description, fix)) => {
                let fix = if is_state_rejection(code) {
                    format!("{fix}{retry}")
                } else {
                    fix
                };
                return Err(Box::new(facts.item_problem(
                    code,
                    index,
                    facts.amount_at(index, amount_index),
                    description,
                    fix,
                )));
            }
        }
    }

    // Step 7: the item's net refund may not exceed what the buyer paid for it and has not
    // had back (refund-rules R2, SC-30741): a refund that leaves a promotion discount
    // in place is capped by the discounted price.
    if net > 0 {
        let balance = ItemBalance::of(state);
        let remaining = balance.remaining();
        if i128::from(net) > remaining {
            let money = |minor: i128| money(minor, currency);
            // The discount still in place once this item's own reversals are taken: what
            // a reversal could still lower the net by. With nothing remaining no reversal
            // helps, as the net of an adjustment must stay a credit.
            let discount_left: i128 = state
                .components
                .iter()
                .filter(|(component, _)| component.class() == ComponentClass::Promotion)
                .map(|(component, totals)| {
                    let refunded = totals_after
                        .iter()
                        .find(|(c, _)| c == component)
                        .map_or(totals.refunded, |(_, after)| after.refunded);
                    i128::from(totals.charged) + i128::from(refunded)
                })
                .sum();
            let fix = if remaining <= 0 {
                format!(
                    "Nothing remains refundable for this item; remove this adjusted item.{retry}"
                )
            } else if discount_left > 0 {
                format!(
                    "Refund at most {} in all for this item; to refund the full price, also reverse the {} of promotion discount this adjustment leaves in place (PromotionAdjustments).{retry}",
                    money(remaining),
                    money(discount_left)
                )
            } else {
                format!(
                    "Refund at most {} in all for this item.{retry}",
                    money(remaining)
                )
            };
            return Err(Box::new(facts.item_problem(
                Code::ComponentExceedsRemaining,
                index,
                facts.item_at(index),
                format!(
                    "the net refund of this item, {}, is more than the {} the buyer paid for it and has not had back (charged {}, less promotion discounts {}, less {} refunded so far)",
                    money(i128::from(net)),
                    money(remaining.max(0)),
                    money(balance.charged),
                    money(balance.discounts),
                    so_far(balance.refunded, ItemBalance::of(before).refunded, money)
                ),
                fix,
            )));
        }
    }

    // The adjustment records one amount per component: a component named twice (one
    // PromotionAdjustments per promotion) is its sum, which the caps above already took
    // without overflow.
    let mut merged: Vec<(Component, i64)> = Vec::with_capacity(amounts.len());
    for (component, minor) in amounts {
        match merged.iter_mut().find(|(other, _)| *other == component) {
            Some((_, sum)) => *sum = sum.saturating_add(minor),
            None => merged.push((component, minor)),
        }
    }
    let state = &mut order.items[position];
    state.components.extend(totals_after);
    state.quantity_cancelled += quantity_cancelled;
    state.quantity_returned += quantity_returned;
    Ok(NewAdjustment {
        message_id: message.message_id,
        amazon_order_id: order.amazon_order_id.clone(),
        item_code: state.code.clone(),
        reason: item.reason,
        action: message.action,
        quantity_cancelled,
        quantity: item.quantity.map(|q| q.get()),
        amounts: merged,
        key: item.key.clone(),
        // Filled in by `plan_message`, which hashed every item once already.
        payload_hash: String::new(),
    })
}

/// Review warnings of a message that passed every rule (refund-rules §c4 step 15, §c5,
/// §c8), each with the index of its adjusted item: the adjustments stand as sent, and each
/// warning names what a person should look at. `ConcessionLimit` is the reason the message
/// does not apply under [`Policy::Strict`], and is worded so. `after` is the order with the
/// message applied; `facts.order` is the order before it.
fn review_warnings(
    facts: &Facts<'_>,
    after: &OrderState,
    adjustments: &[NewAdjustment],
    rules: &Rules,
) -> Vec<(usize, Problem)> {
    let Some(before) = facts.order else {
        return Vec::new();
    };
    let currency = after.currency;
    let money = |minor: i128| money(minor, currency);
    let mut warnings = Vec::new();
    // All items applied, so adjustment `index` is adjusted item `index`, and its amounts
    // are that item's amounts in document order.
    for (index, adjustment) in adjustments.iter().enumerate() {
        let Some(position) = before
            .items
            .iter()
            .position(|item| item.code == adjustment.item_code)
        else {
            continue;
        };
        let (was, now) = (&before.items[position], &after.items[position]);
        let item = &facts.message.items[index];
        // `amount_index` counts the adjustment's amounts, which merge a component named
        // twice: the warning points at the component's first Amount in the item.
        let warn = |code: Code, amount_index: usize, description: String, fix: String| {
            let component = adjustment.amounts.get(amount_index).map(|(c, _)| *c);
            let at = item
                .amounts
                .iter()
                .position(|a| Some(a.component) == component)
                .map_or_else(|| facts.item_at(index), |k| facts.amount_at(index, k));
            (index, facts.item_problem(code, index, at, description, fix))
        };
        let sum = |keep: &dyn Fn(Component) -> bool| -> i128 {
            adjustment
                .amounts
                .iter()
                .filter(|(component, _)| keep(*component))
                .map(|(_, minor)| i128::from(*minor))
                .sum()
        };

        // Restocking fees the validator allowed, but at or above the review share.
        let is_fee = |c: Component| matches!(c, Component::Price(p) if p.is_restocking_fee());
        let fees = -sum(&is_fee);
        let principal = sum(&|c| c == Component::Price(PriceComponent::Principal));
        let review = i128::from(rules.restocking_fee_review_percent);
        if review > 0 && fees > 0 && fees * 100 >= review * principal {
            let first_fee = adjustment
                .amounts
                .iter()
                .position(|(c, _)| is_fee(*c))
                .unwrap_or_default();
            warnings.push(warn(
                Code::RestockingFeeReview,
                first_fee,
                format!(
                    "restocking fees of {} are {}% of the Principal refunded in this item ({}), at or above the review share of {review}%; the adjustment was applied",
                    money(fees),
                    fees * 100 / principal.max(1),
                    money(principal)
                ),
                "Keep evidence of the returned item's condition (Amazon asks for it from 20%); if the fee was not justified, reverse it with a positive RestockingFee under a new MerchantAdjustmentItemID.".to_owned(),
            ));
        }

        // An amount that is exactly one unit's charge while Quantity names several units:
        // amounts are totals for the units adjusted, so this looks like a unit price.
        let units = adjustment.quantity.unwrap_or(0);
        if units > 1 && was.quantity_ordered > 1 {
            let per_unit = adjustment.amounts.iter().position(|(component, minor)| {
                let charged = was.components.get(component).map_or(0, |t| t.charged);
                component.class() == ComponentClass::Charge
                    && *minor > 0
                    && charged > 0
                    && i128::from(*minor) * i128::from(was.quantity_ordered) == i128::from(charged)
            });
            if let Some(amount_index) = per_unit {
                let (component, minor) = adjustment.amounts[amount_index];
                let charged = was.components.get(&component).map_or(0, |t| t.charged);
                warnings.push(warn(
                    Code::QuantityLooksPerUnit,
                    amount_index,
                    format!(
                        "Quantity is {units} but the {component} amount {} is exactly one unit's charge ({} for {} units ordered); amounts are totals for all units adjusted, not unit prices; the adjustment was applied as written",
                        money(i128::from(minor)),
                        money(i128::from(charged)),
                        was.quantity_ordered
                    ),
                    format!(
                        "If {units} units' worth was meant, refund the difference in a further message under a new MerchantAdjustmentItemID; if one unit's price was meant, nothing to do."
                    ),
                ));
            }
        }

        // Concessions (beyond what was charged) that add up to a large share of the price.
        let is_concession = |c: Component| c.class() == ComponentClass::Concession;
        let review = i128::from(rules.concession_review_percent);
        if review > 0 && sum(&is_concession) > 0 {
            let total: i128 = now
                .components
                .iter()
                .filter(|(component, _)| is_concession(**component))
                .map(|(_, totals)| i128::from(totals.refunded))
                .sum();
            let balance = ItemBalance::of(was);
            let paid = balance.paid();
            if total * 100 > review * paid {
                let first = adjustment
                    .amounts
                    .iter()
                    .position(|(c, minor)| is_concession(*c) && *minor > 0)
                    .unwrap_or_default();
                let (sum_up, verdict, fix) = match rules.policy {
                    Policy::Warn => (
                        "now add",
                        "the adjustment was applied".to_owned(),
                        "Check that the concession was meant (Seller Central caps goodwill refunds); the review share is rules.concession_review_percent.".to_owned(),
                    ),
                    Policy::Strict => (
                        "would add",
                        "so under [rules] policy = \"strict\" nothing of this message was applied".to_owned(),
                        format!(
                            "Keep this item's concessions at or below {} in all, or make a larger goodwill refund in Seller Central; this answer is pinned to the message's keys, so resend the lowered adjustment under new MerchantAdjustmentItemIDs.",
                            money(review * paid / 100)
                        ),
                    ),
                };
                warnings.push(warn(
                    Code::ConcessionLimit,
                    first,
                    format!(
                        "concessions on this item (Goodwill, Other, FreeReplacementReturnShipping) {sum_up} up to {}, more than {review}% of the {} the buyer paid for it; {verdict}",
                        money(total),
                        money(paid)
                    ),
                    fix,
                ));
            }
        }
    }
    warnings
}

/// What the buyer paid for an item and how much of it came back so far, in minor units
/// (`i128`, so no sum of `i64` totals can overflow). The item rule (step 7 of
/// [`evaluate_item`]): the net refunds of an item never exceed what the buyer paid for it,
/// `remaining() >= 0`. An order report imported again keeps to it too
/// (`store::check_charged_after_import`).
pub(crate) struct ItemBalance {
    /// Sum of what was charged for the charge components.
    pub(crate) charged: i128,
    /// Sum of the promotion discounts given.
    pub(crate) discounts: i128,
    /// Net of every adjustment applied so far: refunds less fees, plus concessions, less
    /// promotion reversals.
    pub(crate) refunded: i128,
}

impl ItemBalance {
    fn of(item: &ItemState) -> ItemBalance {
        ItemBalance::of_components(&item.components)
    }

    /// The balance of an item with these component totals.
    pub(crate) fn of_components(components: &BTreeMap<Component, ComponentTotals>) -> ItemBalance {
        let mut balance = ItemBalance {
            charged: 0,
            discounts: 0,
            refunded: 0,
        };
        for (component, totals) in components {
            match component.class() {
                ComponentClass::Charge => balance.charged += i128::from(totals.charged),
                ComponentClass::Promotion => balance.discounts += i128::from(totals.charged),
                ComponentClass::Fee | ComponentClass::Concession => {}
            }
            balance.refunded += i128::from(totals.refunded);
        }
        balance
    }

    /// What the buyer paid: the charges less the promotion discounts.
    pub(crate) fn paid(&self) -> i128 {
        self.charged - self.discounts
    }

    /// What the buyer paid and has not had back.
    pub(crate) fn remaining(&self) -> i128 {
        self.paid() - self.refunded
    }
}

/// For a message the validator rejected with rules that come after precision (see
/// [`crate::validate::ValidatedMessage::Invalid`]'s `precision_pending`): its
/// `AmountPrecision` problems in the order's currency, the other items linked to them, which
/// replace the validator's; `None` when the order is not in the snapshot (not found: the
/// validator's problems stand) or every amount fits its currency.
pub fn precision_problems(
    snapshot: &Snapshot,
    message: &AdjustmentMessage,
) -> Option<Vec<Problem>> {
    let facts = Facts::of(snapshot, message);
    let currency = facts.order?.currency;
    precision_rejection(&facts, currency).map(|rejection| rejection.problems)
}

/// `AmountPrecision` for every adjusted item with an amount that has non-zero digits beyond
/// the minor unit of `currency`, the other items linked to them; `None` when all fit.
fn precision_rejection(facts: &Facts<'_>, currency: Currency) -> Option<Rejection> {
    let n_items = facts.message.items.len();
    let failures: Vec<Option<Problem>> = (0..n_items)
        .map(|index| precision_problem(facts, index, currency))
        .collect();
    let failed: Vec<usize> = (0..n_items).filter(|i| failures[*i].is_some()).collect();
    (!failed.is_empty()).then(|| linked_rejection(facts, failures, &failed))
}

/// `AmountPrecision` for the first amount of adjusted item `index` with non-zero digits
/// beyond the minor unit of `currency`.
fn precision_problem(facts: &Facts<'_>, index: usize, currency: Currency) -> Option<Problem> {
    let item = facts.message.items.get(index)?;
    let (amount_index, amount) = item.amounts.iter().enumerate().find(|(_, a)| {
        a.amount.to_minor(currency).is_none() && a.amount.fraction_digits() > currency.exponent()
    })?;
    let (description, fix) = precision_texts(
        &format!("{} amount", amount.component),
        &amount.amount.written().to_string(),
        amount.amount.fraction_digits(),
        currency,
        &format!("the order currency {currency}"),
    );
    Some(facts.item_problem(
        Code::AmountPrecision,
        index,
        facts.amount_at(index, amount_index),
        description,
        fix,
    ))
}

/// `minor` units of `currency` as an amount with its code ("12.50 USD"), or in minor units
/// when it does not fit an `i64`.
pub(crate) fn money(minor: i128, currency: Currency) -> String {
    i64::try_from(minor).map_or_else(
        |_| format!("{minor} minor units of {currency}"),
        |minor| format!("{} {currency}", format_minor(minor, currency)),
    )
}

/// The fix of a QUANTITY_EXCEEDS_SHIPPED: the units that may still be returned, or why none
/// may, and what to do when the store's shipped count is behind (only order reports with a
/// `quantity-shipped` column raise it).
fn return_fix(state: &ItemState, returnable: u32, unshipped: u32, retry: &str) -> String {
    let shipped = state.quantity_shipped;
    let import = "import an order report with their quantity-shipped first (adjustd orders import)";
    let cancel = if unshipped > 0 {
        format!(" To cancel unshipped units, use QuantityCancelled (at most {unshipped}) instead.")
    } else {
        String::new()
    };
    let what = if returnable > 0 {
        format!(
            "Give at most {returnable} in Quantity, or leave it out; if more than the {} shipped, {import}",
            count(shipped, "recorded unit")
        )
    } else if shipped == 0 {
        format!(
            "No unit of this item is recorded as shipped: leave Quantity out, or, if units did ship, {import}"
        )
    } else {
        format!(
            "Every shipped unit ({shipped}) is returned already: leave Quantity out (a refund needs no returned units), or, if more units shipped, {import}"
        )
    };
    format!("{what}.{cancel}{retry}")
}

/// "5.00 USD", or "4.00 USD before this message and 1.00 USD earlier in it": a running
/// total `now` that holds what earlier parts of the message added to `before`.
fn so_far(now: i128, before: i128, show: impl Fn(i128) -> String) -> String {
    if now == before {
        show(now)
    } else {
        format!(
            "{} before this message and {} earlier in it",
            show(before),
            show(now - before)
        )
    }
}

/// The new running total of one component, or (code, description, fix). `refunded_before`
/// is its running total before this message (`totals` may hold more: earlier amounts of the
/// message), for the description.
fn check_cap(
    component: Component,
    totals: ComponentTotals,
    refunded_before: i64,
    minor: i64,
    currency: Currency,
) -> Result<i64, (Code, String, String)> {
    let so_far =
        |now: i64, before: i64| so_far(now.into(), before.into(), |minor| money(minor, currency));
    let money = |minor: i64| format!("{} {currency}", format_minor(minor, currency));
    let Some(total) = totals.refunded.checked_add(minor) else {
        return Err((
            Code::ComponentExceedsRemaining,
            format!(
                "{component}: requested {} would overflow the running total ({} so far)",
                money(minor),
                money(totals.refunded)
            ),
            format!("Check the {component} amount."),
        ));
    };
    match component.class() {
        ComponentClass::Charge => {
            if minor < 0 || total < 0 {
                return Err((
                    Code::NegativeRefundComponent,
                    format!(
                        "{component}: requested {} is negative; a refund of a charged component is never negative",
                        money(minor)
                    ),
                    format!("Send {component} as a positive refund amount."),
                ));
            }
            if total > totals.charged && totals.charged == 0 {
                return Err((
                    Code::ComponentExceedsRemaining,
                    format!(
                        "{component}: requested refund {} but nothing of {component} was charged for this item, so none of it can be refunded",
                        money(minor)
                    ),
                    format!(
                        "Remove this amount: as far as the imported order reports say, the buyer was not charged {component} for this item (they give item, shipping and gift-wrap prices and their taxes, and no other charge)."
                    ),
                ));
            }
            if total > totals.charged {
                let remaining = totals.charged.saturating_sub(totals.refunded);
                return Err((
                    Code::ComponentExceedsRemaining,
                    format!(
                        "{component}: requested refund {} but only {} remains refundable (charged {}, already refunded {})",
                        money(minor),
                        money(remaining),
                        money(totals.charged),
                        so_far(totals.refunded, refunded_before)
                    ),
                    if remaining > 0 {
                        format!("Refund at most {} for {component}.", money(remaining))
                    } else {
                        format!("Nothing of {component} remains refundable; remove this amount.")
                    },
                ));
            }
        }
        ComponentClass::Promotion => {
            if minor > 0 || total > 0 {
                return Err((
                    Code::NegativeRefundComponent,
                    format!(
                        "{component}: requested {} is positive; a promotion reversal is a negative amount",
                        money(minor)
                    ),
                    format!("Send {component} as a negative amount."),
                ));
            }
            let floor = totals.charged.checked_neg().unwrap_or(i64::MIN);
            if total < floor {
                let remaining = totals.charged.saturating_add(totals.refunded);
                return Err((
                    Code::ComponentExceedsRemaining,
                    format!(
                        "{component}: requested reversal {} but only {} of the discount remains to reverse (discount {}, already reversed {})",
                        money(minor),
                        money(remaining),
                        money(totals.charged),
                        so_far(
                            totals.refunded.saturating_neg(),
                            refunded_before.saturating_neg()
                        )
                    ),
                    format!(
                        "Reverse at most {} of the {component} discount.",
                        money(remaining)
                    ),
                ));
            }
        }
        ComponentClass::Concession => {
            if total < 0 {
                return Err((
                    Code::NegativeRefundComponent,
                    format!(
                        "{component}: requested {} is negative; a concession is money to the buyer",
                        money(minor)
                    ),
                    format!("Send {component} as a positive amount."),
                ));
            }
        }
        // Negative fees are bounded by `validate` (restocking-fee share, net credit);
        // positive ones were checked in step 4.
        ComponentClass::Fee => {}
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdjustedItem, ComponentAmount, ItemPositions, PriceComponent, Quantity};

    #[test]
    fn a_deferred_order_not_found_is_worded_again_for_what_happens_now() {
        let missing = "no order with AmazonOrderID 111-0000000-0000000 exists for merchant M1";
        let merchant = MerchantId::new("M1").expect("valid");
        let until = |hour| {
            chrono::DateTime::parse_from_rfc3339(&format!("2026-12-01T{hour:02}:00:00Z"))
                .expect("time")
                .to_utc()
        };
        for named_by in NamedBy::ALL {
            let (description, fix) =
                deferred_order_not_found_words(missing.to_owned(), named_by, &merchant, None);
            let plain = Problem::new(
                Code::OrderNotFound,
                MessageId::FEED,
                MESSAGE_PATH,
                None,
                description,
                fix,
            );
            let mut problem = plain.clone();
            reword_deferred_order_not_found(&mut problem, &merchant, Some(until(10)));
            let (description, fix) = deferred_order_not_found_words(
                missing.to_owned(),
                named_by,
                &merchant,
                Some(until(10)),
            );
            assert_eq!((&problem.description, &problem.fix), (&description, &fix));
            reword_deferred_order_not_found(&mut problem, &merchant, Some(until(11)));
            assert!(
                problem
                    .description
                    .contains("until 2026-12-01 11:00:00 UTC")
            );
            assert!(problem.fix.contains("before 2026-12-01 11:00:00 UTC"));
            reword_deferred_order_not_found(&mut problem, &merchant, None);
            assert_eq!(problem, plain, "{named_by:?}");
        }
        // The words of an earlier build (no merchant in them) are worded again as well.
        let mut earlier = Problem::new(
            Code::OrderNotFound,
            MessageId::FEED,
            MESSAGE_PATH,
            None,
            format!(
                "{missing} yet; adjustd retries this message automatically until 2026-12-01 09:00:00 UTC (config [daemon] order_not_found_window_secs), after which the rejection is final"
            ),
            "Check the AmazonOrderID; if the order is new, import its order report (adjustd orders import) before 2026-12-01 09:00:00 UTC: the next retry then applies this message. No resend is needed.",
        );
        reword_deferred_order_not_found(&mut earlier, &merchant, None);
        assert_eq!(
            (&earlier.description, &earlier.fix),
            (
                &missing.to_owned(),
                &deferred_order_not_found_words(
                    missing.to_owned(),
                    NamedBy::Amazon,
                    &merchant,
                    None
                )
                .1
            )
        );
        // A pinned one is final whatever happens now, and other codes are not touched.
        let pinned = Problem::new(
            Code::OrderNotFound,
            MessageId::FEED,
            MESSAGE_PATH,
            None,
            format!("{missing}, and this was the last retry"),
            format!(
                "{}. Then resend with a new MerchantAdjustmentItemID.",
                NamedBy::Amazon.check(&merchant, "exists")
            ),
        );
        let mut problem = pinned.clone();
        reword_deferred_order_not_found(&mut problem, &merchant, Some(until(10)));
        assert_eq!(problem, pinned);
    }

    fn usd() -> Currency {
        Currency::from_code("USD").expect("USD")
    }

    fn order_id() -> AmazonOrderId {
        AmazonOrderId::new("123-1234567-1234567").expect("valid")
    }

    fn item_code() -> OrderItemCode {
        OrderItemCode::new("12345678901234").expect("valid")
    }

    fn price(component: PriceComponent, amount: &str) -> ComponentAmount {
        ComponentAmount {
            group: 0,
            component: Component::Price(component),
            amount: Amount::parse(amount).expect("valid amount"),
            position: Position { line: 9, column: 9 },
        }
    }

    fn message(amounts: Vec<ComponentAmount>) -> AdjustmentMessage {
        AdjustmentMessage {
            message_id: MessageId::new(1).expect("positive"),
            order: OrderRef::Amazon(order_id()),
            action: None,
            currency: None,
            items: vec![AdjustedItem {
                item: ItemRef::Amazon(item_code()),
                key: SellerId::new("K1"),
                earlier_key: None,
                reason: AdjustmentReason::CustomerReturn,
                amounts,
                quantity_cancelled: None,
                quantity: None,
                position: Position { line: 5, column: 3 },
                positions: ItemPositions {
                    item_ref: Position { line: 6, column: 5 },
                    key: Some(Position { line: 7, column: 5 }),
                    quantity_cancelled: None,
                    quantity: None,
                },
            }],
            position: Position { line: 2, column: 1 },
            order_position: Position { line: 4, column: 5 },
        }
    }

    fn snapshot(shipped: u32, charged: &[(PriceComponent, i64)]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        snapshot.insert_order(OrderState {
            amazon_order_id: order_id(),
            merchant_order_id: None,
            currency: usd(),
            channel: FulfillmentChannel::Merchant,
            purchase_date: None,
            items: vec![ItemState {
                code: item_code(),
                merchant_item_id: None,
                quantity_ordered: 2,
                quantity_shipped: shipped,
                quantity_cancelled: 0,
                quantity_returned: 0,
                recent_adjustments: RecentAdjustments::default(),
                components: charged
                    .iter()
                    .map(|(c, charged)| {
                        (
                            Component::Price(*c),
                            ComponentTotals {
                                charged: *charged,
                                refunded: 0,
                            },
                        )
                    })
                    .collect(),
            }],
        });
        snapshot
    }

    /// Any day: without a refund window the processing day does not matter.
    fn processed_on() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 30).expect("valid date")
    }

    fn codes(snapshot: &mut Snapshot, message: &AdjustmentMessage) -> Vec<Code> {
        let merchant = MerchantId::new("M1").expect("valid");
        let plan = plan(
            snapshot,
            &merchant,
            std::slice::from_ref(message),
            &Rules::default(),
            processed_on(),
        );
        plan.outcomes[0].problems.iter().map(|p| p.code).collect()
    }

    #[test]
    fn payload_hash_ignores_spelling_and_component_order_but_not_content() {
        let base = message(vec![
            price(PriceComponent::Principal, "5.00"),
            price(PriceComponent::Tax, "0.40"),
        ]);
        let hash = payload_hash(&base, 0, Some(usd()));
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        let respelled = message(vec![
            price(PriceComponent::Tax, ".4"),
            price(PriceComponent::Principal, "5.0"),
        ]);
        assert_eq!(payload_hash(&respelled, 0, Some(usd())), hash);
        let mut other_key = base.clone();
        other_key.items[0].key = SellerId::new("K2");
        assert_eq!(
            payload_hash(&other_key, 0, Some(usd())),
            hash,
            "the key is not content"
        );

        let mut changed = vec![message(vec![
            price(PriceComponent::Principal, "5.01"),
            price(PriceComponent::Tax, "0.40"),
        ])];
        let mut quantity = base.clone();
        quantity.items[0].quantity = Quantity::new(1);
        changed.push(quantity);
        let mut reason = base.clone();
        reason.items[0].reason = AdjustmentReason::PriceError;
        changed.push(reason);
        let mut swapped = base.clone();
        swapped.items[0].amounts[0].component = Component::Price(PriceComponent::Shipping);
        changed.push(swapped);
        for other in &changed {
            assert_ne!(payload_hash(other, 0, Some(usd())), hash, "{other:?}");
        }
        let jpy = Currency::from_code("JPY").expect("JPY");
        assert_ne!(
            payload_hash(&base, 0, Some(jpy)),
            hash,
            "the currency is content"
        );
    }

    #[test]
    fn a_replay_matches_whether_or_not_it_spells_out_the_order_currency() {
        let mut plain = message(vec![price(PriceComponent::Principal, "5.00")]);
        plain.items[0].key = SellerId::new("K-CUR");
        let mut spelled = plain.clone();
        spelled.currency = Some(usd());
        // Stored by this build (either spelling first), and by an earlier build that hashed
        // the attribute as written: an empty currency for the plain message.
        let legacy = KeyRecord {
            payload_hash: payload_hash(&plain, 0, None),
            origin: KeyOrigin {
                feed_id: Some(1),
                message_id: plain.message_id,
            },
            rejection: None,
        };
        for (first, again) in [(&plain, &spelled), (&spelled, &plain)] {
            let mut s = snapshot(1, &[(PriceComponent::Principal, 1150)]);
            assert_eq!(codes(&mut s, first), []);
            assert_eq!(codes(&mut s, again), [Code::DuplicateAdjustment]);
        }
        for again in [&plain, &spelled] {
            let mut s = snapshot(1, &[(PriceComponent::Principal, 1150)]);
            s.insert_key(SellerId::new("K-CUR").expect("valid"), Some(legacy.clone()));
            assert_eq!(codes(&mut s, again), [Code::DuplicateAdjustment]);
        }
        // Other content under the legacy hash is still a conflict.
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1150)]);
        s.insert_key(SellerId::new("K-CUR").expect("valid"), Some(legacy));
        let mut other = spelled.clone();
        other.items[0].amounts[0].amount = Amount::parse("5.01").expect("valid");
        assert_eq!(codes(&mut s, &other), [Code::IdempotencyConflict]);
    }

    #[test]
    fn a_refund_of_a_component_never_charged_says_so() {
        let merchant = MerchantId::new("M1").expect("valid");
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        let plan = plan(
            &mut s,
            &merchant,
            &[message(vec![price(PriceComponent::Surcharge, "0.50")])],
            &Rules::default(),
            processed_on(),
        );
        let problem = &plan.outcomes[0].problems[0];
        assert_eq!(problem.code, Code::ComponentExceedsRemaining);
        assert!(
            problem
                .description
                .contains("nothing of Surcharge was charged for this item"),
            "{}",
            problem.description
        );
        assert!(problem.fix.contains("the buyer was not charged Surcharge"));
    }

    #[test]
    fn precision_wins_over_fees_quantities_and_caps() {
        let mut m = message(vec![
            price(PriceComponent::Principal, "50.00"),
            price(PriceComponent::ReturnShipping, "1.005"),
        ]);
        m.items[0].quantity = Quantity::new(5);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        assert_eq!(codes(&mut s, &m), [Code::AmountPrecision]);
        assert!(
            s.key(&SellerId::new("K1").expect("valid")).is_none(),
            "not pinned"
        );
    }

    #[test]
    fn fees_win_over_quantities_and_quantities_over_caps() {
        let mut m = message(vec![
            price(PriceComponent::Principal, "50.00"),
            price(PriceComponent::ReturnShipping, "1.00"),
        ]);
        m.items[0].quantity = Quantity::new(5);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        assert_eq!(codes(&mut s, &m), [Code::PositiveChargeComponent]);

        m.items[0].key = SellerId::new("K2");
        m.items[0].amounts.truncate(1);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        assert_eq!(codes(&mut s, &m), [Code::QuantityExceedsShipped]);

        m.items[0].quantity = Quantity::new(1);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        assert_eq!(codes(&mut s, &m), [Code::ComponentExceedsRemaining]);
        let record = s.key(&SellerId::new("K2").expect("valid")).expect("pinned");
        assert_eq!(record.rejection, Some(Code::ComponentExceedsRemaining));
        assert_eq!(record.origin.feed_id, None);
    }

    #[test]
    fn order_not_found_is_deferred_until_the_last_retry_pins_it() {
        let merchant = MerchantId::new("M1").expect("valid");
        let m = message(vec![price(PriceComponent::Principal, "10.00")]);
        let key = SellerId::new("K1").expect("valid");
        let plan_with = |snapshot: &mut Snapshot, rules: &Rules| {
            plan(
                snapshot,
                &merchant,
                std::slice::from_ref(&m),
                rules,
                processed_on(),
            )
        };

        // By default: not pinned, so the same message applies once the order is imported.
        let mut s = Snapshot::new();
        let deferred = plan_with(&mut s, &Rules::default());
        let outcome = &deferred.outcomes[0];
        assert!(outcome.deferred && !outcome.applied, "{outcome:?}");
        assert_eq!(outcome.problems[0].code, Code::OrderNotFound);
        assert!(deferred.changes.is_empty(), "{deferred:?}");
        assert!(s.key(&key).is_none(), "not pinned");

        // The last retry: pinned under the key, worded as final, no longer deferred.
        let last = Rules {
            pin_order_not_found: true,
            ..Rules::default()
        };
        let mut s = Snapshot::new();
        let pinned = plan_with(&mut s, &last);
        let outcome = &pinned.outcomes[0];
        assert!(!outcome.deferred && !outcome.applied, "{outcome:?}");
        let problem = &outcome.problems[0];
        assert_eq!(problem.code, Code::OrderNotFound);
        assert!(problem.description.contains("now final"), "{problem}");
        assert!(
            problem.fix.contains("new MerchantAdjustmentItemID"),
            "{problem}"
        );
        let [
            Change::PinRejection {
                code: Code::OrderNotFound,
                payload_hash,
                ..
            },
        ] = pinned.changes.as_slice()
        else {
            panic!("one pinned OrderNotFound expected: {pinned:?}");
        };
        assert_eq!(
            s.key(&key).and_then(|record| record.rejection),
            Some(Code::OrderNotFound)
        );

        // A replay once the order exists gets the pinned answer: nothing applies, and it
        // is not deferred (a feed of such replays is not parked again).
        for rules in [Rules::default(), last] {
            let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
            s.insert_key(
                key.clone(),
                Some(KeyRecord {
                    payload_hash: payload_hash.clone(),
                    origin: KeyOrigin {
                        feed_id: Some(7),
                        message_id: m.message_id,
                    },
                    rejection: Some(Code::OrderNotFound),
                }),
            );
            let replay = plan_with(&mut s, &rules);
            let outcome = &replay.outcomes[0];
            assert!(!outcome.deferred && !outcome.applied, "{outcome:?}");
            assert!(replay.changes.is_empty(), "{replay:?}");
            let problem = &outcome.problems[0];
            assert_eq!(problem.code, Code::OrderNotFound);
            assert!(
                problem.description.contains("already rejected")
                    && problem.description.contains("feed 7")
                    && problem.description.contains("even if the order exists now"),
                "{problem}"
            );
            assert!(
                problem.fix.contains("new MerchantAdjustmentItemID"),
                "{problem}"
            );
        }
    }

    #[test]
    fn order_not_found_says_the_daemon_retries_it_when_the_feed_will_be_parked() {
        let merchant = MerchantId::new("M1").expect("valid");
        let m = message(vec![price(PriceComponent::Principal, "10.00")]);
        let problem_with = |rules: &Rules| {
            let plan = plan(
                &mut Snapshot::new(),
                &merchant,
                std::slice::from_ref(&m),
                rules,
                processed_on(),
            );
            let outcome = plan.outcomes.into_iter().next().expect("one outcome");
            assert!(outcome.deferred && !outcome.applied, "{outcome:?}");
            assert!(plan.changes.is_empty(), "not pinned");
            outcome.problems.into_iter().next().expect("one problem")
        };

        // `adjustd process`, a window of 0: nothing retries it, so a resend is asked for.
        let resend = problem_with(&Rules::default());
        assert_eq!(resend.code, Code::OrderNotFound);
        assert!(
            resend
                .fix
                .contains("Then resend the message unchanged: this rejection is not remembered."),
            "{resend}"
        );
        assert!(!resend.description.contains("retries"), "{resend}");

        // The daemon parks the feed: it says until when it retries, and that no resend is
        // needed.
        let until = DateTime::from_timestamp(1_800_000_123, 456_000_000).expect("valid time");
        let retried = problem_with(&Rules {
            order_not_found_retry_until: Some(until),
            ..Rules::default()
        });
        assert_eq!(retried.code, Code::OrderNotFound);
        assert_eq!(
            retried.description,
            "no order with AmazonOrderID 123-1234567-1234567 exists for merchant M1 yet; adjustd retries this message automatically until 2027-01-15 08:02:03 UTC (config [daemon] order_not_found_window_secs), after which the rejection is final"
        );
        assert_eq!(
            retried.fix,
            "Check the AmazonOrderID and the feed's MerchantIdentifier (orders are kept per merchant, and this feed speaks for M1); if the order is new, import its order report for this merchant (adjustd orders import --merchant M1) before 2027-01-15 08:02:03 UTC: the next retry then applies this message. No resend is needed."
        );
        assert!(!retried.fix.contains("resend the message unchanged"));
    }

    #[test]
    fn a_fully_cancelled_order_says_why_it_takes_no_adjustments_and_where_to_refund() {
        // Every unit cancelled by a pure QuantityCancelled: the Principal charged is still
        // unrefunded, so "nothing is left to refund" would be false.
        let mut s = snapshot(0, &[(PriceComponent::Principal, 1000)]);
        let mut cancel = message(Vec::new());
        cancel.items[0].reason = AdjustmentReason::CustomerCancel;
        cancel.items[0].quantity_cancelled = Quantity::new(2);
        assert_eq!(codes(&mut s, &cancel), []);
        let mut refund = message(vec![price(PriceComponent::Principal, "10.00")]);
        refund.items[0].key = SellerId::new("K2");
        let merchant = MerchantId::new("M1").expect("valid");
        let plan = plan(
            &mut s,
            &merchant,
            std::slice::from_ref(&refund),
            &Rules::default(),
            processed_on(),
        );
        let [problem] = plan.outcomes[0].problems.as_slice() else {
            panic!("one problem: {plan:?}");
        };
        assert_eq!(problem.code, Code::OrderNotAdjustable);
        assert_eq!(
            problem.description,
            "order 123-1234567-1234567 is fully cancelled: every unit of every item was cancelled, so the order takes no further adjustments"
        );
        assert_eq!(
            problem.fix,
            "Remove this message. Amazon does not charge buyers for cancelled units; if money is to go back to the buyer anyway, refund it in Seller Central."
        );
        assert_eq!(problem.element, "Message/OrderAdjustment/AmazonOrderID");
    }

    #[test]
    fn a_replay_is_recognised_before_the_caps() {
        let m = message(vec![price(PriceComponent::Principal, "10.00")]);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1000)]);
        assert_eq!(codes(&mut s, &m), []);
        assert_eq!(codes(&mut s, &m), [Code::DuplicateAdjustment]);
        let mut again = m.clone();
        again.items[0].key = SellerId::new("K9");
        assert_eq!(codes(&mut s, &again), [Code::ComponentExceedsRemaining]);
    }

    #[test]
    fn a_new_key_with_the_content_of_a_recent_adjustment_applies_with_a_warning() {
        let merchant = MerchantId::new("M1").expect("valid");
        let m = message(vec![price(PriceComponent::Principal, "5.00")]);
        let hash = payload_hash(&m, 0, Some(usd()));
        let payload = PayloadDigest::from_hex(&hash).expect("64 hex digits");
        assert_eq!(PayloadDigest::from_hex(&hash.to_uppercase()), None);
        assert_eq!(PayloadDigest::from_hex(&hash[1..]), None);
        // Applied by message 7 of feed 3, `days_ago` days before this feed.
        let with_earlier = |days_ago: u64| {
            let mut s = snapshot(2, &[(PriceComponent::Principal, 5000)]);
            let order = s.orders.get_mut(&order_id()).expect("loaded");
            order.items[0].recent_adjustments.push(RecentAdjustment {
                payload,
                origin: KeyOrigin {
                    feed_id: Some(3),
                    message_id: MessageId::new(7).expect("positive"),
                },
                applied_on: processed_on() - chrono::Days::new(days_ago),
            });
            s
        };
        let mut again = m.clone();
        again.message_id = MessageId::new(2).expect("positive");
        again.items[0].key = SellerId::new("K2");

        // Within the window (its last day): applied, with the warning; then a third copy
        // in the same feed is checked against the second.
        let mut s = with_earlier(7);
        let mut third = again.clone();
        third.message_id = MessageId::new(3).expect("positive");
        third.items[0].key = SellerId::new("K3");
        let planned = plan(
            &mut s,
            &merchant,
            &[m.clone(), third],
            &Rules::default(),
            processed_on(),
        );
        assert_eq!(planned.changes.len(), 2, "both applied: {planned:?}");
        let [first, second] = planned.outcomes.as_slice() else {
            panic!("two outcomes: {planned:?}");
        };
        assert!(first.applied && second.applied);
        let [warning] = first.problems.as_slice() else {
            panic!("one warning: {first:?}");
        };
        assert_eq!(warning.code, Code::PossibleResubmission);
        assert!(
            warning.description.contains(
                "as the adjustment applied in message 7 of feed 3 on 2026-11-23 (7 days before this feed was processed), but comes under the new MerchantAdjustmentItemID K1"
            ),
            "{warning:?}"
        );
        assert!(
            warning
                .fix
                .contains("with the same MerchantAdjustmentItemID"),
            "{warning:?}"
        );
        // One text for every such warning, not a copy each: an item refunded again and
        // again gets one per message, and a report lists 20 000 of them.
        assert!(matches!(warning.fix, Cow::Borrowed(_)), "{warning:?}");
        assert_eq!(
            warning.element,
            "Message/OrderAdjustment/AdjustedItem[1]/MerchantAdjustmentItemID"
        );
        assert_eq!(
            warning.amazon_order_item_code.as_deref(),
            Some("12345678901234")
        );
        let [warning] = second.problems.as_slice() else {
            panic!("one warning: {second:?}");
        };
        assert!(
            warning
                .description
                .contains("applied in message 1 earlier in this feed"),
            "{warning:?}"
        );
        let item = &s
            .order(&OrderRef::Amazon(order_id()))
            .expect("loaded")
            .items[0];
        // One content, so the item keeps only its latest: the third copy's.
        assert_eq!(item.recent_adjustments.len(), 1, "{item:?}");
        let latest = item.recent_adjustments.latest(&payload).expect("kept");
        assert_eq!(latest.origin.feed_id, None);
        assert_eq!(latest.origin.message_id.get(), 3);
        assert_eq!(latest.applied_on, processed_on());

        // One day past the window, with the window off, and with other content: no warning.
        assert_eq!(codes(&mut with_earlier(8), &again), []);
        let mut s = with_earlier(0);
        let off = Rules {
            resubmission_window_days: 0,
            ..Rules::default()
        };
        let planned = plan(
            &mut s,
            &merchant,
            std::slice::from_ref(&again),
            &off,
            processed_on(),
        );
        assert_eq!(planned.outcomes[0].problems, []);
        assert_eq!(
            s.order(&OrderRef::Amazon(order_id()))
                .expect("loaded")
                .items[0]
                .recent_adjustments
                .len(),
            1,
            "with the window off the item remembers nothing"
        );
        let mut other = again.clone();
        other.items[0].amounts[0].amount = Amount::parse("5.01").expect("valid");
        assert_eq!(codes(&mut with_earlier(0), &other), []);
        // The same key is a replay of the snapshot's key record, not a resubmission.
        let mut s = with_earlier(0);
        assert_eq!(codes(&mut s, &m), [Code::PossibleResubmission]);
        assert_eq!(codes(&mut s, &m), [Code::DuplicateAdjustment]);
    }

    #[test]
    fn recent_adjustments_keep_the_latest_of_each_content_and_copies_do_not_share_changes() {
        let digest = |byte: u8| PayloadDigest::from_hex(&format!("{byte:02x}").repeat(32));
        let adjustment = |byte: u8, message: u64| RecentAdjustment {
            payload: digest(byte).expect("64 hex digits"),
            origin: KeyOrigin {
                feed_id: Some(1),
                message_id: MessageId::new(message).expect("positive"),
            },
            applied_on: processed_on(),
        };
        let mut recent = RecentAdjustments::default();
        assert!(recent.is_empty());
        for message in 1..=1000 {
            recent.push(adjustment(0xaa, message));
        }
        recent.push(adjustment(0xbb, 1001));
        assert_eq!(recent.len(), 2);
        let latest = |recent: &RecentAdjustments, byte| {
            recent
                .latest(&digest(byte).expect("digest"))
                .map(|a| a.origin.message_id.get())
        };
        assert_eq!(latest(&recent, 0xaa), Some(1000));
        assert_eq!(latest(&recent, 0xbb), Some(1001));
        assert_eq!(latest(&recent, 0xcc), None);
        let mut copy = recent.clone();
        copy.push(adjustment(0xaa, 1002));
        copy.push(adjustment(0xcc, 1003));
        assert_eq!(latest(&copy, 0xaa), Some(1002));
        assert_eq!(
            latest(&recent, 0xaa),
            Some(1000),
            "the original is unchanged"
        );
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn a_recent_adjustment_stored_with_the_earlier_hash_is_recognised() {
        // An earlier build hashed a message without a currency attribute with no currency.
        let m = message(vec![price(PriceComponent::Principal, "5.00")]);
        assert_eq!(m.currency, None);
        let legacy = payload_hash(&m, 0, None);
        assert_ne!(legacy, payload_hash(&m, 0, Some(usd())));
        let stored = |s: &mut Snapshot| {
            let order = s.orders.get_mut(&order_id()).expect("loaded");
            order.items[0].recent_adjustments.push(RecentAdjustment {
                payload: PayloadDigest::from_hex(&legacy).expect("64 hex digits"),
                origin: KeyOrigin {
                    feed_id: Some(3),
                    message_id: MessageId::new(7).expect("positive"),
                },
                applied_on: processed_on(),
            });
        };
        let mut spelled = m.clone();
        spelled.currency = Some(usd());
        for again in [&m, &spelled] {
            let mut s = snapshot(2, &[(PriceComponent::Principal, 5000)]);
            stored(&mut s);
            assert_eq!(codes(&mut s, again), [Code::PossibleResubmission]);
        }
        // Other content is no match under either hash.
        let mut other = m.clone();
        other.items[0].amounts[0].amount = Amount::parse("5.01").expect("valid");
        let mut s = snapshot(2, &[(PriceComponent::Principal, 5000)]);
        stored(&mut s);
        assert_eq!(codes(&mut s, &other), []);
    }

    /// Plans `m` alone, which must apply as one adjustment.
    fn the_adjustment(s: &mut Snapshot, m: &AdjustmentMessage) -> NewAdjustment {
        let merchant = MerchantId::new("M1").expect("valid");
        let plan = plan(
            s,
            &merchant,
            std::slice::from_ref(m),
            &Rules::default(),
            processed_on(),
        );
        let [Change::Adjust(adjustment)] = plan.changes.as_slice() else {
            panic!("one adjustment expected: {plan:?}");
        };
        adjustment.clone()
    }

    #[test]
    fn changes_carry_minor_units_keys_and_hashes() {
        let m = message(vec![
            price(PriceComponent::Principal, "10.5"),
            price(PriceComponent::Goodwill, "1"),
        ]);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1150)]);
        let adjustment = the_adjustment(&mut s, &m);
        assert_eq!(
            adjustment.amounts,
            [
                (Component::Price(PriceComponent::Principal), 1050),
                (Component::Price(PriceComponent::Goodwill), 100)
            ]
        );
        assert_eq!(adjustment.payload_hash, payload_hash(&m, 0, Some(usd())));
        assert_eq!(adjustment.key, SellerId::new("K1"));
        let order = s.order(&OrderRef::Amazon(order_id())).expect("loaded");
        let totals = &order.items[0].components;
        assert_eq!(
            totals[&Component::Price(PriceComponent::Principal)].refunded,
            1050
        );
        assert_eq!(
            totals[&Component::Price(PriceComponent::Goodwill)],
            ComponentTotals {
                charged: 0,
                refunded: 100
            }
        );
    }

    #[test]
    fn a_component_named_twice_is_one_amount_of_the_adjustment() {
        // As from two PromotionAdjustments blocks: the stores keep one row per component.
        let m = message(vec![
            price(PriceComponent::Principal, "10"),
            price(PriceComponent::Goodwill, "1"),
            price(PriceComponent::Goodwill, "0.25"),
        ]);
        let mut s = snapshot(1, &[(PriceComponent::Principal, 1150)]);
        let adjustment = the_adjustment(&mut s, &m);
        assert_eq!(
            adjustment.amounts,
            [
                (Component::Price(PriceComponent::Principal), 1000),
                (Component::Price(PriceComponent::Goodwill), 125)
            ]
        );
    }
}
