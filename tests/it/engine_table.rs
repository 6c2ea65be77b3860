//! Table tests of the engine (TigerBeetle `state_machine_tests` style): every
//! `tests/data/engine/*.table` file is a scenario in a small text language, run against a
//! tiny in-test store that commits the engine's `Change`s the way a real store would.
//!
//! The store here is deliberately simple (maps) and independent of `src/store`: it checks
//! that the changes alone describe everything the engine did to its snapshot. It does not
//! test SQL, validation or reports.
//!
//! The language, one statement per line (`#` starts a comment):
//!
//! ```text
//! rules [refund_window_days=N] [resubmission_window_days=N] [policy=warn|strict]
//!       [processed=YYYY-MM-DD]
//!                                                         the rules and the processing day of
//!                                                         the feeds from here on (defaults:
//!                                                         `Rules::default()`, 2026-11-30);
//!                                                         a window of 0 days is off
//! order 111-0000001-0000001 USD MFN [merchant=MO-1] [purchased=DATE]
//!                                                         an order (import); DATE as in the
//!                                                         order report's purchase-date
//! item 10000000000001 ordered=2 shipped=1 [cancelled=0] [merchant=MI-1] Principal=20.00 ...
//!                                                         an item of the last order, charged
//! set 111-0000001-0000001 10000000000001 [shipped=2] [Principal=30.00]   a re-import
//! msg 1 order=ID | morder=MO [currency=USD] [action=Refund|Cancel]
//!   adj item=CODE | mitem=MI reason=R [key=K] [qc=N] [q=N] [Comp=amount ...]
//!   => ok [WARNING_CODES...]          applied, with exactly these problems
//!   => CODE [CODE...]                 not applied, with exactly these problems in order
//!   says TEXT                         some problem's description or fix contains TEXT
//! feed                                ends the current feed (messages so far are planned
//!                                     and committed together); setup and expect lines end
//!                                     it too
//! expect ORDER ITEM [cancelled=N] [Comp=refunded ...]   running totals in the store
//! expect adjustments=N pins=N         counts in the store
//! ```

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::Path;

use chrono::NaiveDate;

use adjustd::engine::{
    self, Change, ComponentTotals, ItemState, KeyOrigin, KeyRecord, NewAdjustment, OrderState,
    PayloadDigest, Plan, Policy, RecentAdjustment, RecentAdjustments, Rules, Snapshot,
};
use adjustd::model::{
    ActionType, AdjustedItem, AdjustmentMessage, AdjustmentReason, AmazonOrderId, Amount,
    Component, ComponentAmount, Currency, FulfillmentChannel, ItemPositions, ItemRef, MerchantId,
    MessageId, OrderItemCode, OrderRef, Position, Quantity, SellerId, format_minor,
    parse_purchase_date,
};
use adjustd::problem::{Code, Problem};

/// A store in miniature: orders with running totals, key records and applied adjustments,
/// changed only through the engine's [`Change`]s; plus the rules and the processing day the
/// next feeds are planned with. Like the real stores it gives each loaded item the
/// adjustments applied to it since [`Rules::recent_adjustments_since`] (the orders it keeps
/// have none; they are filled in when loaded, from `adjustments` and `feed_days`).
#[derive(Debug, Clone)]
pub struct MiniStore {
    /// The rules feeds are planned with.
    pub rules: Rules,
    /// The day feeds are processed on.
    pub processed_on: NaiveDate,
    /// Orders by Amazon id.
    pub orders: BTreeMap<AmazonOrderId, OrderState>,
    /// Key records (origin always names a committed feed).
    pub keys: HashMap<SellerId, KeyRecord>,
    /// Applied adjustments with their feed, in commit order.
    pub adjustments: Vec<(u64, NewAdjustment)>,
    /// The day each feed was processed on (its adjustments' `created_at`).
    pub feed_days: HashMap<u64, NaiveDate>,
    /// Number of pinned rejections.
    pub pins: usize,
    next_feed_id: u64,
}

impl Default for MiniStore {
    fn default() -> MiniStore {
        MiniStore {
            rules: Rules::default(),
            processed_on: NaiveDate::from_ymd_opt(2026, 11, 30).expect("valid date"),
            orders: BTreeMap::new(),
            keys: HashMap::new(),
            adjustments: Vec::new(),
            feed_days: HashMap::new(),
            pins: 0,
            next_feed_id: 0,
        }
    }
}

impl MiniStore {
    /// `order` as a store loads it for feed `feed_id`: every item with the adjustments
    /// applied to it on or after the day [`Rules::recent_adjustments_since`] gives for
    /// [`MiniStore::processed_on`], oldest first, those of feed `feed_id` itself without a
    /// feed id in their origin.
    pub fn loaded(&self, order: &OrderState, feed_id: u64) -> OrderState {
        let mut order = order.clone();
        let Some(since) = self.rules.recent_adjustments_since(self.processed_on) else {
            return order;
        };
        for (feed, adjustment) in &self.adjustments {
            let applied_on = self.feed_days[feed];
            if adjustment.amazon_order_id != order.amazon_order_id || applied_on < since {
                continue;
            }
            let Some(item) = order
                .items
                .iter_mut()
                .find(|item| item.code == adjustment.item_code)
            else {
                continue;
            };
            item.recent_adjustments.push(RecentAdjustment {
                payload: PayloadDigest::from_hex(&adjustment.payload_hash)
                    .expect("the engine writes 64 hex digits"),
                origin: KeyOrigin {
                    feed_id: (*feed != feed_id).then_some(*feed),
                    message_id: adjustment.message_id,
                },
                applied_on,
            });
        }
        order
    }

    /// Loads what `messages` need into a fresh snapshot, as `FeedTx::load` does.
    pub fn snapshot_for(&self, messages: &[AdjustmentMessage]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        let needs = engine::needs(&snapshot, messages, &[]);
        for order_ref in &needs.orders {
            let found = match order_ref {
                OrderRef::Amazon(id) => self.orders.get(id),
                OrderRef::Merchant(id) => self
                    .orders
                    .values()
                    .find(|o| o.merchant_order_id.as_ref() == Some(id)),
            };
            match found {
                Some(order) => snapshot.insert_order(self.loaded(order, self.next_feed_id + 1)),
                None => snapshot.insert_missing_order(order_ref.clone()),
            }
        }
        for key in &needs.keys {
            snapshot.insert_key(key.clone(), self.keys.get(key).cloned());
        }
        assert!(
            engine::needs(&snapshot, messages, &[]).is_empty(),
            "needs must be satisfied after loading"
        );
        snapshot
    }

    /// Commits a plan's changes as feed `feed_id`.
    pub fn apply(&mut self, feed_id: u64, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Adjust(adjustment) => {
                    let order = self
                        .orders
                        .get_mut(&adjustment.amazon_order_id)
                        .expect("adjusted order exists");
                    let item = order
                        .items
                        .iter_mut()
                        .find(|i| i.code == adjustment.item_code)
                        .expect("adjusted item exists");
                    for (component, minor) in &adjustment.amounts {
                        let totals = item.components.entry(*component).or_default();
                        totals.refunded = totals.refunded.checked_add(*minor).expect("no overflow");
                    }
                    item.quantity_cancelled += adjustment.quantity_cancelled;
                    item.quantity_returned += adjustment.quantity.unwrap_or(0);
                    assert!(
                        item.quantity_returned <= item.quantity_shipped,
                        "I3: more returned than shipped"
                    );
                    if let Some(key) = &adjustment.key {
                        let previous = self.keys.insert(
                            key.clone(),
                            KeyRecord {
                                payload_hash: adjustment.payload_hash.clone(),
                                origin: KeyOrigin {
                                    feed_id: Some(feed_id),
                                    message_id: adjustment.message_id,
                                },
                                rejection: None,
                            },
                        );
                        assert!(previous.is_none(), "I5: key {key} got a second outcome");
                    }
                    self.adjustments.push((feed_id, adjustment.clone()));
                }
                Change::PinRejection {
                    key,
                    payload_hash,
                    message_id,
                    code,
                } => {
                    let previous = self.keys.insert(
                        key.clone(),
                        KeyRecord {
                            payload_hash: payload_hash.clone(),
                            origin: KeyOrigin {
                                feed_id: Some(feed_id),
                                message_id: *message_id,
                            },
                            rejection: Some(*code),
                        },
                    );
                    assert!(previous.is_none(), "I5: key {key} got a second outcome");
                    self.pins += 1;
                }
            }
        }
    }

    /// Plans `messages` as one feed and commits the changes; checks that the snapshot the
    /// engine updated equals the store after the commit.
    pub fn run_feed(&mut self, messages: &[AdjustmentMessage]) -> Plan {
        let mut snapshot = self.snapshot_for(messages);
        self.next_feed_id += 1;
        let feed_id = self.next_feed_id;
        self.feed_days.insert(feed_id, self.processed_on);
        let plan = engine::plan(
            &mut snapshot,
            &merchant(),
            messages,
            &self.rules,
            self.processed_on,
        );
        assert_eq!(
            plan.outcomes.len(),
            messages.len(),
            "one outcome per message"
        );
        self.apply(feed_id, &plan.changes);
        for order in snapshot.orders() {
            assert_eq!(
                Some(order),
                self.orders
                    .get(&order.amazon_order_id)
                    .map(|stored| self.loaded(stored, feed_id))
                    .as_ref(),
                "the engine's snapshot and the committed changes disagree"
            );
        }
        for (key, record) in snapshot.keys() {
            let stored = self
                .keys
                .get(key)
                .expect("every key in the snapshot is stored");
            assert_eq!(stored.payload_hash, record.payload_hash);
            assert_eq!(stored.rejection, record.rejection);
            assert_eq!(stored.origin.message_id, record.origin.message_id);
        }
        plan
    }
}

/// The merchant of every scenario.
pub fn merchant() -> MerchantId {
    MerchantId::new("M1").expect("valid merchant")
}

#[derive(Debug)]
struct Expectation {
    line: usize,
    applied: bool,
    codes: Vec<Code>,
    says: Vec<String>,
}

struct Scenario<'a> {
    name: &'a str,
    store: MiniStore,
    pending: Vec<AdjustmentMessage>,
    expectations: Vec<Expectation>,
    last_order: Option<AmazonOrderId>,
    n_checked: usize,
}

impl Scenario<'_> {
    fn fail(&self, line: usize, what: &str) -> ! {
        panic!("{}:{line}: {what}", self.name)
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let messages = std::mem::take(&mut self.pending);
        let expectations = std::mem::take(&mut self.expectations);
        let plan = self.store.run_feed(&messages);
        for ((message, outcome), expected) in messages.iter().zip(&plan.outcomes).zip(&expectations)
        {
            let line = expected.line;
            assert_eq!(outcome.message_id, message.message_id);
            let codes: Vec<Code> = outcome.problems.iter().map(|p| p.code).collect();
            if outcome.applied != expected.applied || codes != expected.codes {
                self.fail(
                    line,
                    &format!(
                        "message {}: expected {} {:?}, got {} {:?}\n{}",
                        message.message_id,
                        if expected.applied {
                            "applied"
                        } else {
                            "rejected"
                        },
                        expected.codes.iter().map(|c| c.name()).collect::<Vec<_>>(),
                        if outcome.applied {
                            "applied"
                        } else {
                            "rejected"
                        },
                        codes.iter().map(|c| c.name()).collect::<Vec<_>>(),
                        render(&outcome.problems)
                    ),
                );
            }
            for problem in &outcome.problems {
                check_problem_facts(message, problem)
                    .unwrap_or_else(|what| self.fail(line, &format!("{what}: {problem}")));
                let faults = crate::fixtures::text_faults(problem);
                if !faults.is_empty() {
                    self.fail(line, &format!("{faults:#?}"));
                }
                // An applied message has warnings only, a rejected one errors only.
                if problem.is_error() == outcome.applied {
                    self.fail(
                        line,
                        &format!("severity does not fit the outcome: {problem}"),
                    );
                }
            }
            for text in &expected.says {
                let found = outcome.problems.iter().any(|p| {
                    p.description.contains(text.as_str()) || p.fix.contains(text.as_str())
                });
                if !found {
                    self.fail(
                        line,
                        &format!("no problem says {text:?}:\n{}", render(&outcome.problems)),
                    );
                }
            }
            self.n_checked += 1;
        }
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}\n"))
        .collect::<String>()
}

/// Every problem names its message, an element path, a position, the facts and a fix, and
/// the order when the message named it by Amazon id.
pub fn check_problem_facts(message: &AdjustmentMessage, problem: &Problem) -> Result<(), String> {
    if problem.message_id != message.message_id {
        return Err("wrong message id".into());
    }
    if !problem.element.starts_with("Message/OrderAdjustment/") {
        return Err("element path does not start at the message".into());
    }
    if problem.position.is_none() {
        return Err("no position".into());
    }
    if problem.description.is_empty() || problem.fix.is_empty() {
        return Err("empty description or fix".into());
    }
    if let OrderRef::Amazon(id) = &message.order
        && problem.amazon_order_id.as_deref() != Some(id.as_str())
    {
        return Err("AmazonOrderID missing".into());
    }
    if problem.element.contains("AdjustedItem[") {
        let all_amazon = message
            .items
            .iter()
            .all(|i| matches!(i.item, ItemRef::Amazon(_)));
        if all_amazon && problem.amazon_order_item_code.is_none() {
            return Err("AmazonOrderItemCode missing".into());
        }
    }
    Ok(())
}

fn fields(tokens: &[&str]) -> Vec<(String, String)> {
    tokens
        .iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (t.to_string(), String::new()),
        })
        .collect()
}

fn amount(raw: &str) -> Amount {
    Amount::parse(raw).unwrap_or_else(|_| panic!("bad amount {raw}"))
}

fn code_by_name(name: &str) -> Option<Code> {
    Code::ALL.iter().copied().find(|c| c.name() == name)
}

fn run_table(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("table file is readable");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let mut scenario = Scenario {
        name,
        store: MiniStore::default(),
        pending: Vec::new(),
        expectations: Vec::new(),
        last_order: None,
        n_checked: 0,
    };
    for (line_index, raw_line) in text.lines().enumerate() {
        let line_no = line_index + 1;
        let line = raw_line.split('#').next().unwrap_or("").trim();
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some((&head, rest)) = tokens.split_first() else {
            continue;
        };
        let position = |column: usize| Position {
            line: u32::try_from(line_no).expect("small file"),
            column: u32::try_from(column + 1).expect("small line"),
        };
        match head {
            "rules" => {
                scenario.flush();
                for (k, v) in fields(rest) {
                    match k.as_str() {
                        "refund_window_days" => {
                            let days = v
                                .parse::<u32>()
                                .unwrap_or_else(|_| scenario.fail(line_no, "bad number of days"));
                            scenario.store.rules.refund_window_days = NonZeroU32::new(days);
                        }
                        "policy" => {
                            scenario.store.rules.policy = match v.as_str() {
                                "warn" => Policy::Warn,
                                "strict" => Policy::Strict,
                                _ => scenario.fail(line_no, "policy=warn or policy=strict"),
                            };
                        }
                        "resubmission_window_days" => {
                            scenario.store.rules.resubmission_window_days = v
                                .parse::<u32>()
                                .unwrap_or_else(|_| scenario.fail(line_no, "bad number of days"));
                        }
                        "processed" => {
                            scenario.store.processed_on = NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                                .unwrap_or_else(|_| scenario.fail(line_no, "bad date"));
                        }
                        _ => scenario.fail(line_no, &format!("unknown field {k}")),
                    }
                }
            }
            "order" => {
                scenario.flush();
                let [id, currency, channel, extra @ ..] = rest else {
                    scenario.fail(line_no, "order ID CURRENCY CHANNEL [merchant=MO]");
                };
                let id = AmazonOrderId::new(id)
                    .unwrap_or_else(|| scenario.fail(line_no, "bad order id"));
                let mut order = OrderState {
                    amazon_order_id: id.clone(),
                    merchant_order_id: None,
                    currency: Currency::from_code(currency)
                        .unwrap_or_else(|| scenario.fail(line_no, "bad currency")),
                    channel: channel
                        .parse::<FulfillmentChannel>()
                        .unwrap_or_else(|()| scenario.fail(line_no, "bad channel")),
                    purchase_date: None,
                    items: Vec::new(),
                };
                for (k, v) in fields(extra) {
                    match k.as_str() {
                        "merchant" => order.merchant_order_id = SellerId::new(&v),
                        "purchased" => {
                            order.purchase_date =
                                Some(parse_purchase_date(&v).unwrap_or_else(|| {
                                    scenario.fail(line_no, "bad purchase date")
                                }));
                        }
                        _ => scenario.fail(line_no, &format!("unknown field {k}")),
                    }
                }
                scenario.store.orders.insert(id.clone(), order);
                scenario.last_order = Some(id);
            }
            "item" | "set" => {
                scenario.flush();
                let (order_id, code, extra) = if head == "item" {
                    let [code, extra @ ..] = rest else {
                        scenario.fail(line_no, "item CODE ...");
                    };
                    let order_id = scenario
                        .last_order
                        .clone()
                        .unwrap_or_else(|| scenario.fail(line_no, "item before any order"));
                    (order_id, *code, extra)
                } else {
                    let [order_id, code, extra @ ..] = rest else {
                        scenario.fail(line_no, "set ORDER ITEM ...");
                    };
                    let order_id = AmazonOrderId::new(order_id)
                        .unwrap_or_else(|| scenario.fail(line_no, "bad order id"));
                    (order_id, *code, extra)
                };
                let code = OrderItemCode::new(code)
                    .unwrap_or_else(|| scenario.fail(line_no, "bad item code"));
                let Some(order) = scenario.store.orders.get_mut(&order_id) else {
                    scenario.fail(line_no, "unknown order")
                };
                let currency = order.currency;
                if head == "item" {
                    order.items.push(ItemState {
                        code: code.clone(),
                        merchant_item_id: None,
                        quantity_ordered: 1,
                        quantity_shipped: 0,
                        quantity_cancelled: 0,
                        quantity_returned: 0,
                        components: BTreeMap::new(),
                        recent_adjustments: RecentAdjustments::default(),
                    });
                }
                let Some(item) = order.items.iter_mut().find(|i| i.code == code) else {
                    panic!("{name}:{line_no}: unknown item")
                };
                for (k, v) in fields(extra) {
                    let number = || {
                        v.parse::<u32>()
                            .unwrap_or_else(|_| panic!("{name}:{line_no}: bad number {v}"))
                    };
                    match k.as_str() {
                        "ordered" => item.quantity_ordered = number(),
                        "shipped" => item.quantity_shipped = number(),
                        "cancelled" => item.quantity_cancelled = number(),
                        "merchant" => item.merchant_item_id = SellerId::new(&v),
                        other => {
                            let component = Component::from_name(other).unwrap_or_else(|| {
                                panic!("{name}:{line_no}: unknown field {other}")
                            });
                            let charged = amount(&v)
                                .to_minor(currency)
                                .unwrap_or_else(|| panic!("{name}:{line_no}: too precise"));
                            item.components
                                .entry(component)
                                .or_insert(ComponentTotals::default())
                                .charged = charged;
                        }
                    }
                }
            }
            "msg" => {
                let [id, extra @ ..] = rest else {
                    scenario.fail(line_no, "msg ID ...");
                };
                let message_id = id
                    .parse::<u64>()
                    .ok()
                    .and_then(MessageId::new)
                    .unwrap_or_else(|| scenario.fail(line_no, "bad message id"));
                let mut order = None;
                let mut currency = None;
                let mut action = None;
                for (k, v) in fields(extra) {
                    match k.as_str() {
                        "order" => order = AmazonOrderId::new(&v).map(OrderRef::Amazon),
                        "morder" => order = SellerId::new(&v).map(OrderRef::Merchant),
                        "currency" => currency = Currency::from_code(&v),
                        "action" => action = v.parse::<ActionType>().ok(),
                        _ => scenario.fail(line_no, &format!("unknown field {k}")),
                    }
                }
                let order =
                    order.unwrap_or_else(|| scenario.fail(line_no, "msg needs order= or morder="));
                scenario.pending.push(AdjustmentMessage {
                    message_id,
                    order,
                    action,
                    currency,
                    items: Vec::new(),
                    position: position(0),
                    order_position: position(1),
                });
            }
            "adj" => {
                let Some(message) = scenario.pending.last_mut() else {
                    panic!("{name}:{line_no}: adj outside a msg")
                };
                let mut item = AdjustedItem {
                    item: ItemRef::Merchant(SellerId::new("unset").expect("valid")),
                    key: None,
                    earlier_key: None,
                    reason: AdjustmentReason::CustomerReturn,
                    amounts: Vec::new(),
                    quantity_cancelled: None,
                    quantity: None,
                    position: position(2),
                    positions: ItemPositions::default(),
                };
                let mut has_item = false;
                for (column, (k, v)) in fields(rest).into_iter().enumerate() {
                    let bad = |what: &str| -> ! { panic!("{name}:{line_no}: {what} {k}={v}") };
                    match k.as_str() {
                        "item" => {
                            item.item = ItemRef::Amazon(
                                OrderItemCode::new(&v).unwrap_or_else(|| bad("bad item")),
                            );
                            item.positions.item_ref = position(column + 10);
                            has_item = true;
                        }
                        "mitem" => {
                            item.item = ItemRef::Merchant(
                                SellerId::new(&v).unwrap_or_else(|| bad("bad item")),
                            );
                            item.positions.item_ref = position(column + 10);
                            has_item = true;
                        }
                        "key" => {
                            item.key = Some(SellerId::new(&v).unwrap_or_else(|| bad("bad key")));
                            item.positions.key = Some(position(column + 10));
                        }
                        "reason" => item.reason = v.parse().unwrap_or_else(|()| bad("bad reason")),
                        "qc" => {
                            item.quantity_cancelled = v.parse().ok().and_then(Quantity::new);
                            item.positions.quantity_cancelled = Some(position(column + 10));
                        }
                        "q" => {
                            item.quantity = v.parse().ok().and_then(Quantity::new);
                            item.positions.quantity = Some(position(column + 10));
                        }
                        other => {
                            let component =
                                Component::from_name(other).unwrap_or_else(|| bad("unknown field"));
                            item.amounts.push(ComponentAmount {
                                component,
                                amount: amount(&v),
                                position: position(column + 10),
                                // Promotions as if in one PromotionAdjustments element.
                                group: u32::from(matches!(component, Component::Promotion(_))),
                            });
                        }
                    }
                }
                if !has_item {
                    panic!("{name}:{line_no}: adj needs item= or mitem=");
                }
                message.items.push(item);
            }
            "=>" => {
                let (applied, codes) = match rest.split_first() {
                    Some((&"ok", codes)) => (true, codes),
                    _ => (false, rest),
                };
                let codes = codes
                    .iter()
                    .map(|c| {
                        code_by_name(c)
                            .unwrap_or_else(|| panic!("{name}:{line_no}: unknown code {c}"))
                    })
                    .collect();
                if scenario.expectations.len() + 1 != scenario.pending.len() {
                    scenario.fail(line_no, "one => line per msg, after its adj lines");
                }
                scenario.expectations.push(Expectation {
                    line: line_no,
                    applied,
                    codes,
                    says: Vec::new(),
                });
            }
            "says" => {
                let text = line.trim_start_matches("says").trim().to_owned();
                let Some(expectation) = scenario.expectations.last_mut() else {
                    panic!("{name}:{line_no}: says before =>")
                };
                expectation.says.push(text);
            }
            "feed" => scenario.flush(),
            "expect" => {
                scenario.flush();
                check_expect(&scenario, line_no, rest);
            }
            other => scenario.fail(line_no, &format!("unknown statement {other}")),
        }
    }
    if scenario.expectations.len() != scenario.pending.len() {
        scenario.fail(0, "the last msg has no => line");
    }
    scenario.flush();
    scenario.n_checked
}

fn check_expect(scenario: &Scenario<'_>, line_no: usize, rest: &[&str]) {
    let store = &scenario.store;
    if let [first, ..] = rest
        && first.contains('=')
    {
        for (k, v) in fields(rest) {
            let expected: usize = v
                .parse()
                .unwrap_or_else(|_| scenario.fail(line_no, "bad count"));
            let actual = match k.as_str() {
                "adjustments" => store.adjustments.len(),
                "pins" => store.pins,
                _ => scenario.fail(line_no, &format!("unknown count {k}")),
            };
            if actual != expected {
                scenario.fail(line_no, &format!("{k}: expected {expected}, got {actual}"));
            }
        }
        return;
    }
    let [order_id, code, checks @ ..] = rest else {
        scenario.fail(line_no, "expect ORDER ITEM ...");
    };
    let order = AmazonOrderId::new(order_id)
        .and_then(|id| store.orders.get(&id))
        .unwrap_or_else(|| scenario.fail(line_no, "unknown order"));
    let item = order
        .items
        .iter()
        .find(|i| i.code.as_str() == *code)
        .unwrap_or_else(|| scenario.fail(line_no, "unknown item"));
    for (k, v) in fields(checks) {
        if k == "cancelled" {
            let expected: u32 = v
                .parse()
                .unwrap_or_else(|_| scenario.fail(line_no, "bad number"));
            if item.quantity_cancelled != expected {
                scenario.fail(
                    line_no,
                    &format!(
                        "cancelled: expected {expected}, got {}",
                        item.quantity_cancelled
                    ),
                );
            }
            continue;
        }
        let component =
            Component::from_name(&k).unwrap_or_else(|| scenario.fail(line_no, "unknown component"));
        let expected = amount(&v)
            .to_minor(order.currency)
            .unwrap_or_else(|| scenario.fail(line_no, "too precise"));
        let actual = item.components.get(&component).map_or(0, |t| t.refunded);
        if actual != expected {
            scenario.fail(
                line_no,
                &format!(
                    "{component} refunded: expected {}, got {}",
                    format_minor(expected, order.currency),
                    format_minor(actual, order.currency)
                ),
            );
        }
    }
}

#[test]
fn engine_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/engine");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/engine exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "table"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no table files in {}", dir.display());
    let mut seen_codes = std::collections::BTreeSet::new();
    let mut n_messages = 0;
    for path in &paths {
        n_messages += run_table(path);
        let text = std::fs::read_to_string(path).expect("readable");
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("=>")) {
            seen_codes.extend(line.split_whitespace().filter_map(code_by_name));
        }
    }
    assert!(n_messages > 0);
    // At least one case per code the engine produces.
    for code in [
        Code::DuplicateAdjustment,
        Code::IdempotencyConflict,
        Code::OrderNotFound,
        Code::ItemNotInOrder,
        Code::OrderNotAdjustable,
        Code::CurrencyMismatch,
        Code::AmountPrecision,
        Code::PositiveChargeComponent,
        Code::CancelExceedsUnshipped,
        Code::QuantityExceedsShipped,
        Code::ComponentExceedsRemaining,
        Code::NegativeRefundComponent,
        Code::LinkedItemFailed,
        Code::OutsideRefundWindow,
        Code::PossibleResubmission,
    ] {
        assert!(
            seen_codes.contains(&code),
            "no table case for {}",
            code.name()
        );
    }
}
