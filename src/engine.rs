//! The refund and cancellation rules: given a snapshot of the orders a feed touches and the
//! feed's validated messages, decide per message whether it applies, and produce the
//! changes to commit.
//!
//! Pure: no I/O, no clock, no store. The snapshot is a working copy that the engine updates
//! as messages apply, so a later message sees the effects of earlier ones (document order).
//! The store loads what the engine says it needs ([`needs`]) and commits the [`Change`]s.

use std::collections::{BTreeMap, HashMap};

use crate::model::{
    ActionType, AdjustmentMessage, AdjustmentReason, AmazonOrderId, Component, Currency,
    FulfillmentChannel, MerchantId, MessageId, OrderItemCode, OrderRef, SellerId,
};
use crate::problem::Problem;

/// Knobs of the rules that are policy rather than fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Restocking fees (RestockingFee + RestockingFeeTax) of one adjusted item may be at
    /// most this percentage of the Principal refunded in the same item. Default 50.
    pub restocking_fee_max_percent: u32,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            restocking_fee_max_percent: 50,
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
    /// Totals per component; components never charged nor adjusted are absent (all zero).
    pub components: BTreeMap<Component, ComponentTotals>,
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
    /// The order's items.
    pub items: Vec<ItemState>,
}

/// Where an idempotency key was first used.
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

    /// Adds an order loaded from the store.
    pub fn insert_order(&mut self, order: OrderState) {
        if let Some(merchant_order_id) = &order.merchant_order_id {
            self.merchant_order_ids
                .insert(merchant_order_id.clone(), order.amazon_order_id.clone());
        }
        self.orders.insert(order.amazon_order_id.clone(), order);
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

/// Lists the orders and keys `messages` refer to that `snapshot` does not hold yet.
pub fn needs(snapshot: &Snapshot, messages: &[AdjustmentMessage]) -> Needs {
    let mut orders: Vec<OrderRef> = messages
        .iter()
        .map(|m| &m.order)
        .filter(|o| !snapshot.is_loaded(o))
        .cloned()
        .collect();
    orders.sort_by(|a, b| order_ref_sort_key(a).cmp(&order_ref_sort_key(b)));
    orders.dedup();
    let mut keys: Vec<SellerId> = messages
        .iter()
        .flat_map(|m| m.items.iter().filter_map(|i| i.key.clone()))
        .filter(|k| !snapshot.keys.contains_key(k))
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
    /// `MerchantAdjustmentItemID`.
    pub key: Option<SellerId>,
    /// Hex SHA-256 of the canonical payload.
    pub payload_hash: String,
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
pub fn plan(
    snapshot: &mut Snapshot,
    merchant: &MerchantId,
    messages: &[AdjustmentMessage],
    rules: &Rules,
) -> Plan {
    let _ = (snapshot, merchant, messages, rules);
    unimplemented!("engine::plan is being written")
}

/// Hex SHA-256 of the canonical form of one adjusted item, used to tell a replay (same
/// key, same content) from a conflict (same key, other content).
pub fn payload_hash(message: &AdjustmentMessage, item_index: usize) -> String {
    let _ = (message, item_index);
    unimplemented!("engine::payload_hash is being written")
}
