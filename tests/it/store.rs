//! Store tests: a backend-independent conformance suite written against `&mut dyn Store`
//! (run here on SQLite; the PostgreSQL tests run the same suite with
//! `conformance_tests!(their_factory)`), SQLite-specific tests (migrations, lock, raw-SQL
//! checks of the CHECK constraints and append-only triggers), order-report parsing on real
//! files, and a throughput probe that prints messages per second.
//!
//! The engine is not used: the changes are built by hand, as the engine would plan them.

use std::path::PathBuf;

use adjustd::engine::{
    Change, KeyOrigin, KeyRecord, Needs, NewAdjustment, PayloadDigest, RecentAdjustment, Snapshot,
};
use adjustd::model::{
    AdjustmentReason, AmazonOrderId, Component, MerchantId, MessageId, OrderItemCode, OrderRef,
    PriceComponent, PromotionComponent, SellerId,
};
use adjustd::problem::Code;
use adjustd::store::import::{ReportFile, parse_order_report, read_order_report};
use adjustd::store::sqlite::SqliteStore;
use adjustd::store::{FeedDone, FeedStatus, NewFeed, OrderRow, ReportFolder, Store, StoreError};

/// Path of a file in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The merchant of the sample report.
pub fn merchant() -> MerchantId {
    MerchantId::new("A1SELLER").expect("valid merchant")
}

/// Parses a report file of the repository.
pub fn report(rel: &str) -> Vec<OrderRow> {
    let file = std::fs::File::open(repo_file(rel)).expect("report file");
    read_order_report(file).expect("valid report")
}

/// The README quickstart orders.
pub fn sample_rows() -> Vec<OrderRow> {
    report("fixtures/sample-orders.txt")
}

fn aid(raw: &str) -> AmazonOrderId {
    AmazonOrderId::new(raw).expect("order id")
}

fn code(raw: &str) -> OrderItemCode {
    OrderItemCode::new(raw).expect("item code")
}

fn sid(raw: &str) -> SellerId {
    SellerId::new(raw).expect("seller id")
}

fn principal() -> Component {
    Component::Price(PriceComponent::Principal)
}

fn tax() -> Component {
    Component::Price(PriceComponent::Tax)
}

fn restocking() -> Component {
    Component::Price(PriceComponent::RestockingFee)
}

/// A hand-built adjustment of one item.
pub fn adjustment(
    message: u64,
    order: &str,
    item: &str,
    amounts: &[(Component, i64)],
    key: Option<&str>,
    quantity_cancelled: u32,
) -> Change {
    Change::Adjust(NewAdjustment {
        message_id: MessageId::new(message).expect("message id"),
        amazon_order_id: aid(order),
        item_code: code(item),
        reason: if quantity_cancelled > 0 {
            AdjustmentReason::CustomerCancel
        } else {
            AdjustmentReason::CustomerReturn
        },
        action: None,
        quantity_cancelled,
        quantity: None,
        amounts: amounts.to_vec(),
        key: key.map(sid),
        payload_hash: format!("hash-{message}-{item}"),
    })
}

/// A new feed record with a content hash and claim token.
pub fn new_feed(name: &str, hash: &str, claim: Option<&str>) -> NewFeed {
    NewFeed {
        merchant: Some(merchant()),
        file_name: name.to_owned(),
        content_hash: hash.to_owned(),
        claim_token: claim.map(str::to_owned),
        report_folder: ReportFolder::Outbox,
        recent_adjustments_since: None,
    }
}

/// A finished Complete feed with `n` messages, all successful.
pub fn done(n: u64, duplicate_of: Option<u64>) -> FeedDone {
    FeedDone {
        status: FeedStatus::Complete,
        duplicate_of,
        messages_processed: n,
        messages_successful: n,
        messages_with_error: 0,
        messages_with_warning: 0,
        report_json: format!("{{\"messages\":{n}}}"),
    }
}

/// Runs one feed: load the orders named, apply `changes`, commit. Returns the feed id.
pub fn run_feed(store: &mut dyn Store, hash: &str, orders: &[&str], changes: &[Change]) -> u64 {
    let mut tx = store
        .begin_feed(&new_feed("feed.xml", hash, None))
        .expect("begin");
    let needs = Needs {
        orders: orders.iter().map(|o| OrderRef::Amazon(aid(o))).collect(),
        keys: Vec::new(),
    };
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs, &mut snapshot).expect("load");
    tx.apply(&merchant(), changes).expect("apply");
    let id = tx.feed_id();
    tx.commit(done(changes.len() as u64, None)).expect("commit");
    id
}

/// The backend-independent suite. Each case gets a fresh, empty store.
pub mod conformance {
    use super::*;

    /// A fresh store plus whatever keeps it alive (a temp dir, a database to drop).
    pub struct Fixture {
        /// The store under test.
        pub store: Box<dyn Store>,
        /// Dropped after the store.
        pub guard: Box<dyn std::any::Any>,
    }

    /// Defines one `#[test]` per conformance case, each calling `$factory()` (which returns
    /// `Option<Fixture>`; `None` skips, e.g. when PostgreSQL is absent).
    macro_rules! conformance_tests {
        ($factory:path) => {
            $crate::store::conformance::conformance_tests!(@cases $factory;
                import_creates_and_reimport_updates,
                import_rejects_contradictions_atomically,
                import_refuses_an_item_on_two_lines_that_disagree,
                import_names_the_holder_of_a_merchant_id,
                import_refuses_an_order_whose_lines_disagree,
                import_takes_one_purchase_instant_spelled_two_ways_as_the_same,
                import_refuses_a_change_of_fulfillment_channel,
                import_names_quantity_purchased_below_the_units_cancelled,
                import_refuses_prices_that_bring_the_refunds_above_what_was_paid,
                import_refuses_a_discount_above_the_charge_it_discounts,
                import_streams_a_large_report_file,
                orders_show_shape,
                feed_round_trip,
                drop_rolls_back_everything,
                over_refund_from_a_buggy_engine_is_refused,
                feed_lookups,
                same_bytes_committed_twice_is_a_conflict,
                loading_gives_the_engine_the_purchase_date,
                loading_gives_the_engine_recent_adjustments,
            );
        };
        (@cases $factory:path; $($case:ident),+ $(,)?) => {
            $(
                #[test]
                fn $case() {
                    match $factory() {
                        Some(mut fixture) => {
                            $crate::store::conformance::$case(fixture.store.as_mut());
                            drop(fixture.store);
                            drop(fixture.guard);
                        }
                        None => eprintln!("SKIPPED {}: backend not available", stringify!($case)),
                    }
                }
            )+
        };
    }
    pub(crate) use conformance_tests;

    fn item_view<'a>(
        view: &'a adjustd::store::OrderView,
        item: &str,
    ) -> &'a adjustd::store::ItemView {
        view.items
            .iter()
            .find(|i| i.amazon_order_item_code == item)
            .expect("item in view")
    }

    fn one_order(store: &mut dyn Store, id: &str) -> adjustd::store::OrderView {
        let mut views = store.orders(Some(&merchant()), id).expect("orders");
        assert_eq!(views.len(), 1, "order {id}");
        views.remove(0)
    }

    /// (orders created, updated, unchanged; items created, updated, unchanged).
    fn changes(summary: &adjustd::store::ImportSummary) -> (u64, u64, u64, u64, u64, u64) {
        (
            summary.orders_created,
            summary.orders_updated,
            summary.orders_unchanged,
            summary.items_created,
            summary.items_updated,
            summary.items_unchanged,
        )
    }

    /// Import creates orders and items; a re-import updates shipped quantities and charged
    /// amounts and never touches adjustments. The summary counts as updated only what
    /// changed (an order also when one of its items did), the rest as unchanged.
    pub fn import_creates_and_reimport_updates(store: &mut dyn Store) {
        let summary = store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        assert_eq!(changes(&summary), (4, 0, 0, 6, 0, 0));
        // The same rows again change nothing (a "0.00" charge is no change either, though
        // the first import stored none). Before the fix: 4 orders and 6 items "updated".
        let again = store
            .import_orders(&merchant(), &sample_rows())
            .expect("re-import");
        assert_eq!(changes(&again), (0, 0, 4, 0, 0, 6));
        // Only an order's column changes: the order is updated, its items are not.
        let mut rows = sample_rows();
        rows.retain(|r| r.amazon_order_id.as_str() == "171-1234567-1234567");
        for row in &mut rows {
            row.purchase_date = Some("2026-11-02T09:14:34+00:00".to_owned());
        }
        let summary = store.import_orders(&merchant(), &rows).expect("date");
        assert_eq!(changes(&summary), (0, 1, 0, 0, 0, 2));
        // A new item of a stored order updates the order.
        let mut rows = sample_rows();
        rows.retain(|r| r.item_code.as_str() == "34567890123456");
        rows[0].item_code = code("34567890123457");
        let summary = store.import_orders(&merchant(), &rows).expect("new item");
        assert_eq!(changes(&summary), (0, 1, 0, 1, 0, 0));
        // Refund part of the teapot, then ship it via the Unshipped report.
        run_feed(
            store,
            "h1",
            &["112-7654321-7654321"],
            &[adjustment(
                1,
                "112-7654321-7654321",
                "23456789012345",
                &[(principal(), 1000)],
                Some("K1"),
                0,
            )],
        );
        let update = report("tests/data/orders/unshipped-update.txt");
        let summary = store.import_orders(&merchant(), &update).expect("update");
        assert_eq!(changes(&summary), (0, 2, 0, 0, 2, 0));
        let teapot = one_order(store, "112-7654321-7654321");
        let item = item_view(&teapot, "23456789012345");
        assert_eq!(item.quantity_shipped, 1);
        assert_eq!(item.charged["Principal"], "34.50");
        assert_eq!(item.refunded["Principal"], "10.00");
        assert_eq!(teapot.adjustments.len(), 1);
        let spoons = one_order(store, "114-1122334-5566778");
        assert_eq!(item_view(&spoons, "45678901234568").quantity_shipped, 2);
        // Charged amounts change when a report gives them (a price correction upward).
        let mut rows = sample_rows();
        rows.retain(|r| r.item_code.as_str() == "23456789012345");
        for (component, amount) in &mut rows[0].charged {
            if *component == principal() {
                *amount = 3600;
            }
        }
        let summary = store
            .import_orders(&merchant(), &rows)
            .expect("price update");
        assert_eq!(
            changes(&summary),
            (0, 1, 0, 0, 1, 0),
            "a price alone changed"
        );
        let teapot = one_order(store, "112-7654321-7654321");
        let item = item_view(&teapot, "23456789012345");
        assert_eq!(item.charged["Principal"], "36.00");
        assert_eq!(item.refunded["Principal"], "10.00");
        // That row of the older New Orders report says quantity-shipped 0: shipped units do
        // not come back, and adjustments stay.
        assert_eq!(item.quantity_shipped, 1);
        assert_eq!(teapot.adjustments.len(), 1);
    }

    /// A row that contradicts the store fails the import naming line and column, and
    /// nothing of the import is written.
    /// One order item (order-id + order-item-id) on two lines of a report: with other
    /// values, the report is refused naming both lines and nothing is imported (before,
    /// the later line won silently); with the same values, the repeat is skipped and
    /// counted, so the summary adds up.
    pub fn import_refuses_an_item_on_two_lines_that_disagree(store: &mut dyn Store) {
        let header = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\n";
        let first = "199-0000000-0000001\t99999999999991\tONE\t1\tUSD\t1.00\n";
        let other = "199-0000000-0000002\t99999999999992\tTWO\t1\tUSD\t2.00\n";
        // Another price for the first item, spelt differently from the first line's.
        let changed = "199-0000000-0000001\t99999999999991\tONE\t1\tUSD\t1.5\n";
        let rows = parse_order_report(&format!("{header}{first}{other}{changed}")).expect("parses");
        let err = store
            .import_orders(&merchant(), &rows)
            .expect_err("two lines disagree");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        let msg = err.to_string();
        for needed in ["line 4", "line 2", "199-0000000-0000001", "99999999999991"] {
            assert!(msg.contains(needed), "lacks {needed}: {msg}");
        }
        for order in ["199-0000000-0000001", "199-0000000-0000002"] {
            assert!(
                store
                    .orders(Some(&merchant()), order)
                    .expect("orders")
                    .is_empty(),
                "{order} imported"
            );
        }

        // The same value spelt alike or not ("1.00", "1.0") is the same line.
        let again = "199-0000000-0000001\t99999999999991\tONE\t1\tUSD\t1.0\n";
        let rows =
            parse_order_report(&format!("{header}{first}{other}{again}{first}")).expect("parses");
        let summary = store.import_orders(&merchant(), &rows).expect("repeats");
        assert_eq!(
            (
                summary.lines,
                summary.repeated_lines,
                summary.orders_created,
                summary.items_created,
                summary.items_updated
            ),
            (4, 2, 2, 2, 0)
        );
        let view = one_order(store, "199-0000000-0000001");
        assert_eq!(view.items.len(), 1);
        assert_eq!(view.items[0].charged["Principal"], "1.00");
    }

    /// A merchant-order-id names one order of the merchant, a merchant-order-item-id one
    /// item of its order: a line that gives one away again is refused, naming the order or
    /// item that has it, whether that came from the store or from an earlier line.
    pub fn import_names_the_holder_of_a_merchant_id(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tmerchant-order-id\t\
                              merchant-order-item-id\tsku\tquantity-purchased\tcurrency\n";
        let import = |store: &mut dyn Store, lines: &str| {
            let rows = parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        import(
            store,
            "301-0000000-0000001\t30000000000001\tMO-1\tMI-1\tS\t1\tUSD\n\
             301-0000000-0000001\t30000000000002\tMO-1\tMI-2\tS\t1\tUSD\n",
        )
        .expect("import");
        let cases = [
            (
                "301-0000000-0000002\t30000000000003\tMO-1\t\tS\t1\tUSD\n",
                "line 2, column merchant-order-id: order 301-0000000-0000002 item \
                 30000000000003: merchant-order-id MO-1 is already the MerchantOrderID of order \
                 301-0000000-0000001",
            ),
            (
                "301-0000000-0000003\t30000000000004\tMO-3\t\tS\t1\tUSD\n\
                 301-0000000-0000004\t30000000000005\tMO-3\t\tS\t1\tUSD\n",
                "line 3, column merchant-order-id: order 301-0000000-0000004 item \
                 30000000000005: merchant-order-id MO-3 is already the MerchantOrderID of order \
                 301-0000000-0000003",
            ),
            (
                "301-0000000-0000001\t30000000000006\t\tMI-1\tS\t1\tUSD\n",
                "line 2, column merchant-order-item-id: order 301-0000000-0000001 item \
                 30000000000006: merchant-order-item-id MI-1 is already the MerchantOrderItemID \
                 of item 30000000000001 of this order",
            ),
            (
                "301-0000000-0000005\t30000000000007\t\tMI-X\tS\t1\tUSD\n\
                 301-0000000-0000005\t30000000000008\t\tMI-X\tS\t1\tUSD\n",
                "line 3, column merchant-order-item-id: order 301-0000000-0000005 item \
                 30000000000008: merchant-order-item-id MI-X is already the MerchantOrderItemID \
                 of item 30000000000007 of this order",
            ),
        ];
        for (lines, expected) in cases {
            let err = import(store, lines).expect_err(expected);
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err}\nexpected: {expected}"
            );
        }
        // Nothing of the refused imports was kept.
        for order in [
            "301-0000000-0000002",
            "301-0000000-0000003",
            "301-0000000-0000005",
        ] {
            assert!(
                store
                    .orders(Some(&merchant()), order)
                    .expect("orders")
                    .is_empty()
            );
        }
        assert_eq!(one_order(store, "301-0000000-0000001").items.len(), 2);
    }

    /// The order-level columns (currency, fulfillment-channel, merchant-order-id,
    /// purchase-date) describe the order, not the item: every line of an order repeats
    /// them. Two lines of one order (two items) that give one of them different values
    /// refuse the report, naming the later line, the column, both values and the earlier
    /// line; nothing is imported (before, the last line won silently: an AFN order became
    /// MFN and refunds the AFN rule blocks were accepted). An empty field gives no value.
    pub fn import_refuses_an_order_whose_lines_disagree(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tmerchant-order-id\tpurchase-date\tsku\t\
                              quantity-purchased\tcurrency\titem-price\tfulfillment-channel\n";
        const ORDER: &str = "501-0000000-0000001";
        let line = |item: &str, merchant_order: &str, date: &str, currency: &str, channel: &str| {
            format!(
                "{ORDER}\t5000000000000{item}\t{merchant_order}\t{date}\tS-{item}\t1\t\
                 {currency}\t1.00\t{channel}\n"
            )
        };
        let import = |store: &mut dyn Store, lines: &[String]| {
            let rows = parse_order_report(&format!("{HEADER}{}", lines.concat())).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        let first = line("1", "MO-A", "2026-11-20", "USD", "AFN");
        let cases = [
            (
                line("2", "MO-A", "2026-11-20", "USD", "MFN"),
                "fulfillment-channel",
                ["MFN", "AFN"],
            ),
            (
                line("2", "MO-B", "2026-11-20", "USD", "AFN"),
                "merchant-order-id",
                ["MO-B", "MO-A"],
            ),
            (
                line("2", "MO-A", "2020-01-01", "USD", "AFN"),
                "purchase-date",
                ["2020-01-01", "2026-11-20"],
            ),
            (
                line("2", "MO-A", "2026-11-20", "EUR", "AFN"),
                "currency",
                ["EUR", "USD"],
            ),
        ];
        for (second, column, [given, earlier]) in cases {
            let err = import(store, &[first.clone(), second])
                .expect_err("two lines of one order disagree");
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("line 3, column {column}: order {ORDER} item ")),
                "{msg}"
            );
            for needed in [given, earlier, "line 2"] {
                assert!(msg.contains(needed), "lacks {needed}: {msg}");
            }
            assert!(
                store
                    .orders(Some(&merchant()), ORDER)
                    .expect("orders")
                    .is_empty(),
                "{column}: nothing of a refused report is imported"
            );
        }
        // The lines need not be next to each other.
        let other = "502-0000000-0000001\t50000000000009\t\t\tX\t1\tUSD\t1.00\tMFN\n";
        let err = import(
            store,
            &[
                first.clone(),
                other.to_owned(),
                line("2", "MO-A", "2026-11-20", "USD", "MFN"),
            ],
        )
        .expect_err("disagree");
        assert!(
            err.to_string()
                .starts_with("line 4, column fulfillment-channel"),
            "{err}"
        );

        // An empty field gives no value, on the first line or a later one: the order takes
        // the value the other lines give.
        import(
            store,
            &[
                line("1", "", "", "USD", ""),
                line("2", "MO-A", "2026-11-20", "USD", "AFN"),
                line("3", "", "", "USD", ""),
            ],
        )
        .expect("empty fields agree with any value");
        let view = one_order(store, ORDER);
        assert_eq!(view.merchant_order_id.as_deref(), Some("MO-A"));
        assert_eq!(view.purchase_date.as_deref(), Some("2026-11-20"));
        assert_eq!(view.fulfillment_channel, "AFN");
        assert_eq!(view.items.len(), 3);
    }

    /// qa11 F6: two lines of one order whose purchase-dates name the same instant in two
    /// spellings (`Z`, `+00:00`, `PST` and `-08:00`) agree, and the order keeps the first
    /// line's text; so does an item's line repeated with the other spelling (a repeat, not
    /// two lines that disagree). A re-import with the other spelling counts the order
    /// unchanged and leaves the stored text as it was. Different instants still disagree,
    /// and values without a zone compare as text. Before the fix the report was refused
    /// ("this line says ...+00:00 but line 2 ... says ...Z") and the re-import counted
    /// the order updated and rewrote the stored text.
    pub fn import_takes_one_purchase_instant_spelled_two_ways_as_the_same(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tpurchase-date\tsku\tquantity-purchased\t\
                              currency\titem-price\n";
        let line = |order: &str, item: &str, date: &str| {
            format!("{order}\t6000000000000{item}\t{date}\tS-{item}\t1\tUSD\t1.00\n")
        };
        let import = |store: &mut dyn Store, lines: &[String]| {
            let rows = parse_order_report(&format!("{HEADER}{}", lines.concat())).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        const A: &str = "601-0000000-0000001";
        const B: &str = "601-0000000-0000002";
        let summary = import(
            store,
            &[
                line(A, "1", "2026-11-30T10:15:00Z"),
                line(A, "2", "2026-11-30T10:15:00+00:00"),
                line(A, "3", "2026-11-30T02:15:00-08:00"),
                line(B, "1", "2026-11-30T02:15:00 PST"),
                line(B, "1", "2026-11-30T10:15:00Z"),
            ],
        )
        .expect("the same instant agrees");
        assert_eq!(changes(&summary), (2, 0, 0, 4, 0, 0));
        assert_eq!(summary.repeated_lines, 1);
        assert_eq!(
            one_order(store, A).purchase_date.as_deref(),
            Some("2026-11-30T10:15:00Z")
        );
        assert_eq!(
            one_order(store, B).purchase_date.as_deref(),
            Some("2026-11-30T02:15:00 PST")
        );

        // A re-import with another spelling of the same instants: unchanged, text kept.
        let summary = import(
            store,
            &[
                line(A, "1", "2026-11-30T10:15:00.000+00:00"),
                line(B, "1", "2026-11-30T02:15:00-0800"),
            ],
        )
        .expect("re-import");
        assert_eq!(changes(&summary), (0, 0, 2, 0, 0, 2));
        assert_eq!(
            one_order(store, A).purchase_date.as_deref(),
            Some("2026-11-30T10:15:00Z")
        );
        assert_eq!(
            one_order(store, B).purchase_date.as_deref(),
            Some("2026-11-30T02:15:00 PST")
        );
        // Another instant changes it.
        let summary =
            import(store, &[line(A, "1", "2026-11-30T10:15:01Z")]).expect("a new instant");
        assert_eq!(changes(&summary), (0, 1, 0, 0, 0, 1));
        assert_eq!(
            one_order(store, A).purchase_date.as_deref(),
            Some("2026-11-30T10:15:01Z")
        );

        // Different instants, or one value without a zone, still disagree.
        const C: &str = "601-0000000-0000003";
        for (first, second) in [
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00-08:00"),
            ("2026-11-30T10:15:00Z", "2026-11-30T10:15:00"),
            ("2026-11-30 10:15:00", "2026-11-30T10:15:00"),
        ] {
            let err = import(store, &[line(C, "1", first), line(C, "2", second)])
                .expect_err("two purchase dates");
            let msg = err.to_string();
            assert!(
                msg.starts_with("line 3, column purchase-date: ")
                    && msg.contains(&format!(
                        "this line says {second} but line 2 of the same order says {first}"
                    )),
                "{msg}"
            );
            assert!(
                store
                    .orders(Some(&merchant()), C)
                    .expect("orders")
                    .is_empty()
            );
        }
    }

    /// An order's fulfillment channel does not change at Amazon, and the refunds already
    /// applied to it were decided by it (the seller cannot refund an AFN order): a report
    /// that gives a stored order another channel is refused, naming the line, the column,
    /// the stored and the new value; a report without the channel leaves it alone.
    pub fn import_refuses_a_change_of_fulfillment_channel(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\t\
             fulfillment-channel\n";
        let import = |store: &mut dyn Store, lines: &str| {
            let rows = parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        import(
            store,
            "601-0000000-0000001\t60000000000001\tS\t1\tUSD\t10.00\tAFN\n\
             601-0000000-0000002\t60000000000002\tS\t1\tUSD\t10.00\tMFN\n",
        )
        .expect("import");
        run_feed(
            store,
            "h-channel",
            &["601-0000000-0000002"],
            &[adjustment(
                1,
                "601-0000000-0000002",
                "60000000000002",
                &[(principal(), 500)],
                None,
                0,
            )],
        );
        let cases = [
            (
                "601-0000000-0000001\t60000000000001\tS\t1\tUSD\t10.00\tMFN\n",
                "line 2, column fulfillment-channel: order 601-0000000-0000001 item \
                 60000000000001: the order is stored as AFN; the report says MFN",
            ),
            // A line of a new item of the order, after a line that leaves the channel empty.
            (
                "601-0000000-0000002\t60000000000002\tS\t1\tUSD\t10.00\t\n\
                 601-0000000-0000002\t60000000000003\tS\t1\tUSD\t10.00\tAmazon\n",
                "line 3, column fulfillment-channel: order 601-0000000-0000002 item \
                 60000000000003: the order is stored as MFN; the report says AFN",
            ),
        ];
        for (lines, expected) in cases {
            let err = import(store, lines).expect_err(expected);
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err}\nexpected: {expected}"
            );
        }
        assert_eq!(
            one_order(store, "601-0000000-0000001").fulfillment_channel,
            "AFN"
        );
        let refunded = one_order(store, "601-0000000-0000002");
        assert_eq!(refunded.fulfillment_channel, "MFN");
        assert_eq!(
            refunded.items.len(),
            1,
            "nothing of a refused report is imported"
        );
        // The same channel again, or none: fine.
        import(
            store,
            "601-0000000-0000001\t60000000000001\tS\t1\tUSD\t10.00\tAmazon\n\
             601-0000000-0000002\t60000000000002\tS\t1\tUSD\t10.00\t\n",
        )
        .expect("same channel");
        assert_eq!(
            one_order(store, "601-0000000-0000001").fulfillment_channel,
            "AFN"
        );
        assert_eq!(
            one_order(store, "601-0000000-0000002").fulfillment_channel,
            "MFN"
        );
    }

    /// A re-import whose quantity-purchased is below the units already shipped and
    /// cancelled names quantity-purchased (it named quantity-shipped whenever the report
    /// had that column); a quantity-shipped that is too high still names quantity-shipped.
    pub fn import_names_quantity_purchased_below_the_units_cancelled(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tsku\tquantity-purchased\t\
                              quantity-shipped\tcurrency\titem-price\n";
        let import = |store: &mut dyn Store, lines: &str| {
            let rows = parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        import(
            store,
            "701-0000000-0000001\t70000000000001\tS\t3\t0\tUSD\t30.00\n",
        )
        .expect("import");
        run_feed(
            store,
            "h-cancel",
            &["701-0000000-0000001"],
            &[adjustment(
                1,
                "701-0000000-0000001",
                "70000000000001",
                &[],
                None,
                2,
            )],
        );
        let cases = [
            (
                "701-0000000-0000001\t70000000000001\tS\t1\t0\tUSD\t30.00\n",
                "line 2, column quantity-purchased: order 701-0000000-0000001 item \
                 70000000000001: ",
            ),
            (
                "701-0000000-0000001\t70000000000001\tS\t1\t\tUSD\t30.00\n",
                "line 2, column quantity-purchased: ",
            ),
            (
                "701-0000000-0000001\t70000000000001\tS\t3\t2\tUSD\t30.00\n",
                "line 2, column quantity-shipped: ",
            ),
        ];
        for (lines, expected) in cases {
            let err = import(store, lines).expect_err(expected);
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            assert!(
                err.to_string().starts_with(expected),
                "{err}\nexpected: {expected}"
            );
        }
        let item = &one_order(store, "701-0000000-0000001").items[0];
        assert_eq!(
            (
                item.quantity_ordered,
                item.quantity_shipped,
                item.quantity_cancelled
            ),
            (3, 0, 2)
        );
    }

    pub fn import_rejects_contradictions_atomically(store: &mut dyn Store) {
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        run_feed(
            store,
            "h1",
            &["171-1234567-1234567"],
            &[adjustment(
                1,
                "171-1234567-1234567",
                "12345678901234",
                &[(principal(), 2000)],
                None,
                0,
            )],
        );
        // Line 2: a new order (fine). Line 3: lowers a charged amount below what was
        // refunded.
        let text = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\n\
                    199-0000000-0000001\t99999999999999\tNEW\t1\tUSD\t1.00\n\
                    171-1234567-1234567\t12345678901234\tMUG-BLUE-12\t2\tUSD\t19.99\n";
        let rows = parse_order_report(text).expect("parses");
        let err = store
            .import_orders(&merchant(), &rows)
            .expect_err("below refunded");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        assert!(msg.contains("line 3, column item-price"), "{msg}");
        assert!(msg.contains("20.00"), "{msg}");
        assert!(
            store
                .orders(Some(&merchant()), "199-0000000-0000001")
                .expect("orders")
                .is_empty(),
            "nothing of a failed import is kept"
        );
        // Another currency than the stored order's.
        let rows = report("tests/data/orders/currency-mismatch.txt");
        let err = store
            .import_orders(&merchant(), &rows)
            .expect_err("currency");
        assert!(err.to_string().contains("line 2, column currency"), "{err}");
        assert!(err.to_string().contains("USD"), "{err}");
        // An Unshipped report cannot create an order (no currency).
        let text = "order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\n\
                    199-0000000-0000002\t99999999999998\tS\t1\t0\n";
        let err = store
            .import_orders(&merchant(), &parse_order_report(text).expect("parses"))
            .expect_err("no currency");
        assert!(err.to_string().contains("line 2, column currency"), "{err}");
        // Shipped + cancelled above ordered.
        run_feed(
            store,
            "h2",
            &["114-1122334-5566778"],
            &[adjustment(
                1,
                "114-1122334-5566778",
                "45678901234568",
                &[],
                None,
                2,
            )],
        );
        let text = "order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\n\
                    114-1122334-5566778\t45678901234568\tSPOON-SET-6\t3\t2\n";
        let err = store
            .import_orders(&merchant(), &parse_order_report(text).expect("parses"))
            .expect_err("too many shipped");
        assert!(
            err.to_string().contains("line 2, column quantity-shipped"),
            "{err}"
        );
        // The stored order is unchanged by all of this.
        let mug = one_order(store, "171-1234567-1234567");
        assert_eq!(
            item_view(&mug, "12345678901234").charged["Principal"],
            "25.98"
        );
    }

    /// A re-import may change an item's prices and promotion discounts, but not so that the
    /// item's net refunds exceed what the buyer paid for it (charges less discounts), the
    /// engine's own item rule: raising a discount after a full refund, or lowering a price
    /// the per-component check lets through, is refused naming the line and the column, and
    /// nothing is imported. A discount is reversed, not refunded, and the refusal of one
    /// lowered below what was reversed says so.
    pub fn import_refuses_prices_that_bring_the_refunds_above_what_was_paid(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\t\
                              currency\titem-price\titem-tax\titem-promotion-discount\n";
        let import = |store: &mut dyn Store, lines: &str| {
            let rows = parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        let promotion = Component::Promotion(PromotionComponent::Principal);
        import(
            store,
            "901-0000001-0000001\t90000000000001\tS\t1\t1\tUSD\t20.00\t1.60\t-4.00\n\
             901-0000001-0000001\t90000000000002\tT\t1\t1\tUSD\t20.00\t1.60\t-4.00\n",
        )
        .expect("import");
        // Item 1 refunded in full, its discount reversed: 17.60, all the buyer paid. Item 2
        // refunded 17.00 of the 17.60 paid, the discount left in place.
        run_feed(
            store,
            "h1",
            &["901-0000001-0000001"],
            &[
                adjustment(
                    1,
                    "901-0000001-0000001",
                    "90000000000001",
                    &[(principal(), 2000), (tax(), 160), (promotion, -400)],
                    Some("FULL-1"),
                    0,
                ),
                adjustment(
                    2,
                    "901-0000001-0000001",
                    "90000000000002",
                    &[(principal(), 1700)],
                    Some("PART-1"),
                    0,
                ),
            ],
        );
        let refused = [
            // A higher discount: the buyer paid 15.60, yet 17.60 came back.
            (
                "901-0000001-0000001\t90000000000001\tS\t1\t1\tUSD\t20.00\t1.60\t-6.00\n",
                "line 2, column item-promotion-discount: order 901-0000001-0000001 item \
                 90000000000001: ",
                &["15.60 USD", "17.60 USD", "4.00 to 6.00"][..],
            ),
            // A lower tax, refunded nothing of on its own: the buyer paid 16.00 for item 2,
            // yet 17.00 came back. The line before it is fine and not kept either.
            (
                "901-0000001-0000001\t90000000000001\tS\t1\t1\tUSD\t20.00\t1.60\t-4.00\n\
                 901-0000001-0000001\t90000000000002\tT\t1\t1\tUSD\t20.00\t0.00\t-4.00\n",
                "line 3, column item-tax: order 901-0000001-0000001 item 90000000000002: ",
                &["16.00 USD", "17.00 USD", "1.60 to 0.00"][..],
            ),
            // A discount lowered below what was reversed of it: reversed, not refunded.
            (
                "901-0000001-0000001\t90000000000001\tS\t1\t1\tUSD\t20.00\t1.60\t-3.00\n",
                "line 2, column item-promotion-discount: order 901-0000001-0000001 item \
                 90000000000001: 4.00 of the Promotion:Principal discount was already reversed; \
                 the report lowers the discount to 3.00",
                &[][..],
            ),
        ];
        for (lines, start, needed) in refused {
            let err = import(store, lines).expect_err(start);
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with(start), "{msg}");
            for needed in needed {
                assert!(msg.contains(needed), "lacks {needed}: {msg}");
            }
            assert!(!msg.contains("discount was already refunded"), "{msg}");
        }
        let view = one_order(store, "901-0000001-0000001");
        for item in ["90000000000001", "90000000000002"] {
            let item = item_view(&view, item);
            assert_eq!(
                (
                    item.charged["Tax"].as_str(),
                    item.charged["Promotion:Principal"].as_str()
                ),
                ("1.60", "4.00"),
                "nothing of a refused report is imported"
            );
        }
        // The same prices again, a higher price with a higher discount, and a discount
        // that leaves the buyer having paid exactly what came back are all fine.
        let summary = import(
            store,
            "901-0000001-0000001\t90000000000001\tS\t1\t1\tUSD\t21.00\t1.60\t-5.00\n\
             901-0000001-0000001\t90000000000002\tT\t1\t1\tUSD\t20.00\t1.60\t-4.60\n",
        )
        .expect("nothing refunded above what was paid");
        assert_eq!(summary.items_updated, 2);
        let view = one_order(store, "901-0000001-0000001");
        assert_eq!(
            item_view(&view, "90000000000002").charged["Promotion:Principal"],
            "4.60"
        );
    }

    /// A promotion discount larger than the charge it discounts (item-promotion-discount
    /// above item-price, ship-promotion-discount above shipping-price) is a bad line naming
    /// the line and the column, for a new item (QA6 F1: a misspelt item-price column read
    /// as no price let a 3.00 discount stand on a 0.00 price) as for a known one, and
    /// nothing is imported. A discount equal to its charge is fine.
    pub fn import_refuses_a_discount_above_the_charge_it_discounts(store: &mut dyn Store) {
        const HEADER: &str = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\t\
                              item-price\tshipping-price\titem-promotion-discount\t\
                              ship-promotion-discount\n";
        let import = |store: &mut dyn Store, lines: &str| {
            let rows = parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
            store.import_orders(&merchant(), &rows)
        };
        let good = "902-0000001-0000001\t90000000000001\tS\t1\tUSD\t5.00\t2.00\t-5.00\t-2.00\n";
        let refused = [
            (
                "902-0000002-0000002\t90000000000002\tS\t1\tUSD\t1.00\t\t-5.00\t\n",
                "line 3, column item-promotion-discount: order 902-0000002-0000002 item \
                 90000000000002: item-promotion-discount 5.00 is more than the item-price 1.00 \
                 it discounts",
            ),
            (
                "902-0000002-0000002\t90000000000002\tS\t1\tUSD\t\t\t-3.00\t\n",
                "line 3, column item-promotion-discount: order 902-0000002-0000002 item \
                 90000000000002: item-promotion-discount 3.00 is more than the item-price 0.00 \
                 it discounts: a promotion cannot take off more than was charged; check the \
                 line against the order (the line gives no item-price: is the item-price \
                 column missing or misspelt in the header, or its field empty?)",
            ),
            (
                "902-0000002-0000002\t90000000000002\tS\t1\tUSD\t9.00\t1.99\t\t2.00\n",
                "line 3, column ship-promotion-discount: order 902-0000002-0000002 item \
                 90000000000002: ship-promotion-discount 2.00 is more than the shipping-price \
                 1.99 it discounts",
            ),
        ];
        for (line, start) in refused {
            let err = import(store, &format!("{good}{line}")).expect_err(start);
            assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with(start), "{msg}");
            assert!(
                store
                    .orders(Some(&merchant()), "902-0000001-0000001")
                    .expect("orders")
                    .is_empty(),
                "nothing of a refused report is imported"
            );
        }
        let summary = import(store, good).expect("a discount equal to its charge");
        assert_eq!(summary.items_created, 1);
        // A known item: a report raising its discount above its price, or lowering its
        // price below its discount, is refused the same way (nothing was refunded of it).
        for (line, start) in [
            (
                "902-0000001-0000001\t90000000000001\tS\t1\tUSD\t5.00\t2.00\t-5.01\t\n",
                "line 2, column item-promotion-discount: order 902-0000001-0000001 item \
                 90000000000001: item-promotion-discount 5.01 is more than the item-price 5.00",
            ),
            (
                "902-0000001-0000001\t90000000000001\tS\t1\tUSD\t\t1.00\t\t\n",
                "line 2, column shipping-price: order 902-0000001-0000001 item \
                 90000000000001: ship-promotion-discount 2.00 is more than the shipping-price \
                 1.00",
            ),
        ] {
            let msg = import(store, line).expect_err(start).to_string();
            assert!(msg.starts_with(start), "{msg}");
        }
        let view = one_order(store, "902-0000001-0000001");
        let item = item_view(&view, "90000000000001");
        assert_eq!(
            (
                item.charged["Principal"].as_str(),
                item.charged["Promotion:Principal"].as_str(),
                item.charged["Shipping"].as_str()
            ),
            ("5.00", "5.00", "2.00")
        );
    }

    /// A report file is read line by line inside the transaction (PostgreSQL: in batches of
    /// 10 000 lines). An order whose lines fall in different batches is counted once, as
    /// created; a bad last line fails the import and none of the lines before it are kept.
    pub fn import_streams_a_large_report_file(store: &mut dyn Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let header = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\n";
        let line = |order: u32, item: u32| {
            format!("900-{order:07}-0000000\t{order:010}{item:04}\tSKU-{item}\t1\tUSD\t1.00\n")
        };
        // 12 001 orders of 2 items: order 0's second item is the last line (another batch).
        let mut text = String::from(header);
        text.push_str(&line(0, 0));
        for order in 1..=12_000 {
            text.push_str(&line(order, 0));
            text.push_str(&line(order, 1));
        }
        text.push_str(&line(0, 1));
        let path = dir.path().join("orders.txt");
        std::fs::write(&path, &text).expect("write report");
        let summary = store
            .import_orders(&merchant(), &ReportFile::new(&path))
            .expect("import");
        assert_eq!(
            (
                summary.lines,
                summary.orders_created,
                summary.orders_updated,
                summary.items_created,
                summary.items_updated
            ),
            (24_002, 12_001, 0, 24_002, 0)
        );
        let first = one_order(store, "900-0000000-0000000");
        assert_eq!(first.items.len(), 2);

        // Again, plus a new order, then a bad item code on the last line (24 005).
        text.push_str(&line(20_000, 0));
        text.push_str("900-0020000-0000000\tnot-a-code\tS\t1\tUSD\t1.00\n");
        std::fs::write(&path, &text).expect("write report");
        let err = store
            .import_orders(&merchant(), &ReportFile::new(&path))
            .expect_err("bad last line");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        assert!(
            err.to_string().contains("line 24005, column order-item-id"),
            "{err}"
        );
        assert!(
            store
                .orders(Some(&merchant()), "900-0020000-0000000")
                .expect("orders")
                .is_empty(),
            "nothing of a failed import is kept"
        );
        // A file that vanished is named.
        let err = store
            .import_orders(&merchant(), &ReportFile::new(&dir.path().join("gone.txt")))
            .expect_err("missing file");
        assert!(
            err.to_string().contains("cannot open the order report"),
            "{err}"
        );
    }

    /// `orders show --json`: the DESIGN.md shape, with the item's returned units
    /// (`quantity_returned`) next to its other quantities.
    pub fn orders_show_shape(store: &mut dyn Store) {
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        let mut returned = adjustment(
            7,
            "171-1234567-1234567",
            "12345678901234",
            &[(principal(), 1299), (tax(), 104), (restocking(), -200)],
            Some("RET-1"),
            0,
        );
        if let Change::Adjust(adjustment) = &mut returned {
            adjustment.quantity = Some(1);
        }
        let feed = run_feed(store, "h1", &["171-1234567-1234567"], &[returned]);
        let views = store.orders(None, "171-1234567-1234567").expect("orders");
        assert_eq!(views.len(), 1);
        let mut json = serde_json::to_value(&views[0]).expect("json");
        let created_at = json["adjustments"][0]
            .as_object_mut()
            .expect("adjustment object")
            .remove("created_at")
            .expect("created_at");
        let created_at = created_at.as_str().expect("string");
        assert!(
            chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
            "{created_at}"
        );
        assert!(created_at.ends_with('Z'), "{created_at}");
        let expected = serde_json::json!({
            "merchant": "A1SELLER",
            "amazon_order_id": "171-1234567-1234567",
            "merchant_order_id": null,
            "currency": "USD",
            "fulfillment_channel": "MFN",
            "purchase_date": "2026-11-02T09:14:33+00:00",
            "items": [
                {
                    "amazon_order_item_code": "12345678901234",
                    "merchant_order_item_id": null,
                    "sku": "MUG-BLUE-12",
                    "quantity_ordered": 2,
                    "quantity_shipped": 2,
                    "quantity_cancelled": 0,
                    "quantity_returned": 1,
                    "charged": {"Principal": "25.98", "Tax": "2.08", "Shipping": "5.99",
                                "ShippingTax": "0.48", "Promotion:Principal": "3.00",
                                "RestockingFee": "0.00"},
                    "refunded": {"Principal": "12.99", "Tax": "1.04", "Shipping": "0.00",
                                 "ShippingTax": "0.00", "Promotion:Principal": "0.00",
                                 "RestockingFee": "-2.00"}
                },
                {
                    "amazon_order_item_code": "12345678901235",
                    "merchant_order_item_id": null,
                    "sku": "COASTER-SET-4",
                    "quantity_ordered": 1,
                    "quantity_shipped": 1,
                    "quantity_cancelled": 0,
                    "quantity_returned": 0,
                    "charged": {"Principal": "9.99", "Tax": "0.80"},
                    "refunded": {"Principal": "0.00", "Tax": "0.00"}
                }
            ],
            "adjustments": [
                {
                    "feed_id": feed,
                    "message_id": 7,
                    "amazon_order_item_code": "12345678901234",
                    "reason": "CustomerReturn",
                    "action_type": null,
                    "quantity_cancelled": 0,
                    "quantity": 1,
                    "merchant_adjustment_item_id": "RET-1",
                    "amounts": {"Principal": "12.99", "Tax": "1.04", "RestockingFee": "-2.00"}
                }
            ]
        });
        assert_eq!(json, expected);
        // An unknown order: an empty list, not an error. Another merchant: nothing.
        assert!(
            store
                .orders(None, "999-9999999-9999999")
                .expect("orders")
                .is_empty()
        );
        let other = MerchantId::new("OTHER").expect("merchant");
        assert!(
            store
                .orders(Some(&other), "171-1234567-1234567")
                .expect("orders")
                .is_empty()
        );
    }

    /// begin → load → apply → commit, then a second feed sees the totals and keys.
    pub fn feed_round_trip(store: &mut dyn Store) {
        let mut rows = sample_rows();
        rows[0].merchant_order_id = Some(sid("MO-1001"));
        rows[0].merchant_item_id = Some(sid("MI-1"));
        store.import_orders(&merchant(), &rows).expect("import");

        let mut tx = store
            .begin_feed(&new_feed("a.xml", "hash-a", Some("claim-a")))
            .expect("begin");
        let first = tx.feed_id();
        let needs = Needs {
            orders: vec![
                OrderRef::Amazon(aid("114-1122334-5566778")),
                OrderRef::Amazon(aid("999-9999999-9999999")),
                OrderRef::Merchant(sid("MO-1001")),
                OrderRef::Merchant(sid("MO-NONE")),
            ],
            keys: vec![sid("K-NEW")],
        };
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        let mug = snapshot
            .order(&OrderRef::Merchant(sid("MO-1001")))
            .expect("by merchant order id");
        assert_eq!(mug.amazon_order_id.as_str(), "171-1234567-1234567");
        assert_eq!(mug.items.len(), 2);
        assert_eq!(mug.items[0].merchant_item_id, Some(sid("MI-1")));
        assert_eq!(mug.items[0].components[&principal()].charged, 2598);
        assert_eq!(
            mug.items[0].components[&Component::Promotion(PromotionComponent::Principal)].charged,
            300
        );
        let spoons = snapshot
            .order(&OrderRef::Amazon(aid("114-1122334-5566778")))
            .expect("by amazon id");
        assert_eq!(spoons.items[1].quantity_ordered, 3);
        assert_eq!(spoons.items[1].quantity_shipped, 0);
        assert!(
            snapshot
                .order(&OrderRef::Amazon(aid("999-9999999-9999999")))
                .is_none()
        );
        // Missing orders and keys are recorded, so nothing is needed any more.
        assert!(adjustd::engine::needs(&snapshot, &[], &[]).is_empty());
        tx.apply(
            &merchant(),
            &[
                adjustment(
                    1,
                    "114-1122334-5566778",
                    "45678901234568",
                    &[(principal(), 999)],
                    Some("K-NEW"),
                    1,
                ),
                adjustment(
                    2,
                    "171-1234567-1234567",
                    "12345678901234",
                    &[
                        (Component::Promotion(PromotionComponent::Principal), -300),
                        (principal(), 2598),
                    ],
                    None,
                    0,
                ),
                Change::PinRejection {
                    key: sid("K-REJ"),
                    payload_hash: "hash-rej".into(),
                    message_id: MessageId::new(3).expect("id"),
                    code: Code::ComponentExceedsRemaining,
                },
            ],
        )
        .expect("apply");
        tx.commit(done(3, None)).expect("commit");

        let mut tx = store
            .begin_feed(&new_feed("b.xml", "hash-b", None))
            .expect("begin");
        assert!(tx.feed_id() > first);
        let needs = Needs {
            orders: vec![OrderRef::Amazon(aid("114-1122334-5566778"))],
            keys: vec![sid("K-NEW"), sid("K-REJ"), sid("K-UNUSED")],
        };
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        let spoons = snapshot
            .order(&OrderRef::Amazon(aid("114-1122334-5566778")))
            .expect("loaded");
        assert_eq!(spoons.items[1].quantity_cancelled, 1);
        assert_eq!(spoons.items[1].components[&principal()].refunded, 999);
        assert_eq!(spoons.items[1].components[&principal()].charged, 2997);
        let expect_key = |key: &str, record: Option<KeyRecord>| {
            // The snapshot's key map is private; its Debug form shows each entry.
            let entry = format!("{:?}: {:?}", sid(key), record);
            assert!(
                format!("{snapshot:?}").contains(&entry),
                "{entry} in {snapshot:?}"
            );
        };
        expect_key(
            "K-NEW",
            Some(KeyRecord {
                payload_hash: "hash-1-45678901234568".into(),
                origin: KeyOrigin {
                    feed_id: Some(first),
                    message_id: MessageId::new(1).expect("id"),
                },
                rejection: None,
            }),
        );
        expect_key(
            "K-REJ",
            Some(KeyRecord {
                payload_hash: "hash-rej".into(),
                origin: KeyOrigin {
                    feed_id: Some(first),
                    message_id: MessageId::new(3).expect("id"),
                },
                rejection: Some(Code::ComponentExceedsRemaining),
            }),
        );
        expect_key("K-UNUSED", None);
        drop(tx);

        let record = store
            .feed_by_claim("claim-a")
            .expect("by claim")
            .expect("found");
        assert_eq!(record.id, first);
        assert_eq!(record.status, FeedStatus::Complete);
        assert_eq!(record.file_name, "a.xml");
        assert_eq!(record.merchant.as_deref(), Some("A1SELLER"));
        assert_eq!(record.messages_processed, 3);
        assert_eq!(record.report_json, "{\"messages\":3}");
        assert!(chrono::DateTime::parse_from_rfc3339(&record.processed_at).is_ok());
        let mug = one_order(store, "171-1234567-1234567");
        let item = item_view(&mug, "12345678901234");
        assert_eq!(item.refunded["Promotion:Principal"], "-3.00");
        assert_eq!(item.refunded["Principal"], "25.98");
    }

    /// Dropping the transaction without commit leaves no feed, adjustment, total or key.
    pub fn drop_rolls_back_everything(store: &mut dyn Store) {
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        {
            let mut tx = store
                .begin_feed(&new_feed("x.xml", "hash-x", Some("claim-x")))
                .expect("begin");
            let mut snapshot = Snapshot::new();
            let needs = Needs {
                orders: vec![OrderRef::Amazon(aid("171-1234567-1234567"))],
                keys: vec![],
            };
            tx.load(&merchant(), &needs, &mut snapshot).expect("load");
            tx.apply(
                &merchant(),
                &[adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901234",
                    &[(principal(), 500)],
                    Some("K-X"),
                    0,
                )],
            )
            .expect("apply");
        }
        assert!(store.recent_feeds(10).expect("recent").is_empty());
        assert!(store.feed_by_claim("claim-x").expect("claim").is_none());
        let mug = one_order(store, "171-1234567-1234567");
        assert!(mug.adjustments.is_empty());
        assert_eq!(
            item_view(&mug, "12345678901234").refunded["Principal"],
            "0.00"
        );
        // The key is free again: a later feed can use it.
        run_feed(
            store,
            "hash-y",
            &["171-1234567-1234567"],
            &[adjustment(
                1,
                "171-1234567-1234567",
                "12345678901234",
                &[(principal(), 500)],
                Some("K-X"),
                0,
            )],
        );
        assert_eq!(store.recent_feeds(10).expect("recent").len(), 1);
    }

    /// The schema refuses what the engine must never plan: more refunded than charged, a
    /// cancellation beyond ordered, a net that is not a credit, a reused key.
    pub fn over_refund_from_a_buggy_engine_is_refused(store: &mut dyn Store) {
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        let bad: Vec<(&str, Change)> = vec![
            (
                "principal above charged",
                adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901235",
                    &[(principal(), 1000)],
                    None,
                    0,
                ),
            ),
            (
                "refund of a component never charged",
                adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901235",
                    &[(Component::Price(PriceComponent::GiftWrap), 1)],
                    None,
                    0,
                ),
            ),
            (
                "promotion reversal above the discount",
                adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901234",
                    &[
                        (Component::Promotion(PromotionComponent::Principal), -301),
                        (principal(), 1000),
                    ],
                    None,
                    0,
                ),
            ),
            (
                "net not a credit",
                adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901234",
                    &[(principal(), 100), (restocking(), -100)],
                    None,
                    0,
                ),
            ),
            (
                "cancel above ordered",
                adjustment(1, "114-1122334-5566778", "45678901234568", &[], None, 4),
            ),
            ("return above shipped", {
                let mut change = adjustment(
                    1,
                    "171-1234567-1234567",
                    "12345678901234",
                    &[(principal(), 100)],
                    None,
                    0,
                );
                if let Change::Adjust(adjustment) = &mut change {
                    adjustment.quantity = Some(5);
                }
                change
            }),
            (
                "item of another order",
                adjustment(
                    1,
                    "171-1234567-1234567",
                    "45678901234568",
                    &[(principal(), 1)],
                    None,
                    0,
                ),
            ),
        ];
        for (what, change) in bad {
            let mut tx = store
                .begin_feed(&new_feed("bad.xml", "hash-bad", None))
                .expect("begin");
            let err = tx
                .apply(&merchant(), std::slice::from_ref(&change))
                .expect_err(what);
            assert!(matches!(err, StoreError::Invalid { .. }), "{what}: {err:?}");
            assert!(!err.is_transient(), "{what}");
            tx.commit(done(1, None)).expect_err(what);
        }
        // A key used twice.
        let mut tx = store
            .begin_feed(&new_feed("bad.xml", "hash-bad", None))
            .expect("begin");
        let change = adjustment(
            1,
            "171-1234567-1234567",
            "12345678901234",
            &[(principal(), 100)],
            Some("K-TWICE"),
            0,
        );
        tx.apply(&merchant(), std::slice::from_ref(&change))
            .expect("first use");
        let err = tx
            .apply(&merchant(), std::slice::from_ref(&change))
            .expect_err("second use");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        // A transaction whose write failed never commits, not even what came before.
        tx.commit(done(2, None))
            .expect_err("commit after a failed write");
        let mug = one_order(store, "171-1234567-1234567");
        assert!(mug.adjustments.is_empty());
        assert!(
            store.recent_feeds(10).expect("feeds").is_empty(),
            "no feed record is kept"
        );
    }

    /// feed_by_claim, feed_by_hash and recent_feeds see committed feeds only, with the
    /// right filters.
    pub fn feed_lookups(store: &mut dyn Store) {
        assert!(store.feed_by_claim("nope").expect("claim").is_none());
        assert!(
            store
                .feed_by_hash(&merchant(), "hash-1")
                .expect("hash")
                .is_none()
        );
        let tx = store
            .begin_feed(&new_feed("one.xml", "hash-1", Some("c1")))
            .expect("begin");
        let first = tx.feed_id();
        tx.commit(done(0, None)).expect("commit");
        // A duplicate of it, and a rejected feed with the same bytes.
        let tx = store
            .begin_feed(&new_feed("one-again.xml", "hash-1", Some("c2")))
            .expect("begin");
        let second = tx.feed_id();
        tx.commit(done(0, Some(first))).expect("duplicate commit");
        let tx = store
            .begin_feed(&new_feed("rej.xml", "hash-1", None))
            .expect("begin");
        let third = tx.feed_id();
        tx.commit(FeedDone {
            status: FeedStatus::Rejected,
            ..done(0, None)
        })
        .expect("rejected commit");
        // A feed without a merchant (header unreadable).
        let tx = store
            .begin_feed(&NewFeed {
                merchant: None,
                file_name: "garbage.xml".into(),
                content_hash: "hash-g".into(),
                claim_token: None,
                report_folder: ReportFolder::Merchant(MerchantId::new("OTHER").expect("id")),
                recent_adjustments_since: None,
            })
            .expect("begin");
        let fourth = tx.feed_id();
        tx.commit(FeedDone {
            status: FeedStatus::Rejected,
            ..done(0, None)
        })
        .expect("commit");

        let by_hash = store
            .feed_by_hash(&merchant(), "hash-1")
            .expect("hash")
            .expect("found");
        assert_eq!(by_hash.id, first);
        let other = MerchantId::new("OTHER").expect("merchant");
        assert!(
            store
                .feed_by_hash(&other, "hash-1")
                .expect("hash")
                .is_none()
        );
        let dup = store.feed_by_claim("c2").expect("claim").expect("found");
        assert_eq!(dup.id, second);
        assert_eq!(dup.duplicate_of, Some(first));
        let recent = store.recent_feeds(3).expect("recent");
        let ids: Vec<u64> = recent.iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![fourth, third, second]);
        assert_eq!(recent[0].merchant, None);
        assert_eq!(recent[1].status, FeedStatus::Rejected);
        // Where the reports went comes back as recorded.
        let folders: Vec<&ReportFolder> = recent.iter().map(|f| &f.report_folder).collect();
        assert_eq!(
            folders,
            [
                &ReportFolder::Merchant(other.clone()),
                &ReportFolder::Outbox,
                &ReportFolder::Outbox
            ]
        );
    }

    /// Two applied feeds with the same merchant and bytes: the second commit is a
    /// transient conflict (its retry will find the first as a duplicate).
    pub fn same_bytes_committed_twice_is_a_conflict(store: &mut dyn Store) {
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
        run_feed(store, "same", &[], &[]);
        let mut tx = store
            .begin_feed(&new_feed("again.xml", "same", Some("claim-again")))
            .expect("begin");
        tx.apply(
            &merchant(),
            &[adjustment(
                1,
                "171-1234567-1234567",
                "12345678901234",
                &[(principal(), 100)],
                None,
                0,
            )],
        )
        .expect("apply");
        let err = tx.commit(done(1, None)).expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert!(err.is_transient());
        // Nothing of it was kept.
        assert!(store.feed_by_claim("claim-again").expect("claim").is_none());
        let mug = one_order(store, "171-1234567-1234567");
        assert!(mug.adjustments.is_empty());
        assert_eq!(store.recent_feeds(10).expect("recent").len(), 1);
    }

    /// Every load path gives the engine each order's purchase date, parsed (the UTC day of a
    /// date-time with an offset), and none for an order imported without one: the first
    /// load of a feed, and the load of a later chunk after a prefetch hint. On an on-disk
    /// SQLite store that load takes the orders from the prefetch connection, bringing an
    /// order this feed already wrote to up to date from the feed's own writes (the overlay);
    /// PostgreSQL ignores the hint and loads them again.
    pub fn loading_gives_the_engine_the_purchase_date(store: &mut dyn Store) {
        let report = "order-id\torder-item-id\tmerchant-order-id\tpurchase-date\tsku\tquantity-purchased\tquantity-shipped\tcurrency\titem-price\n\
             171-0000001-0000001\t10000000000001\tPO-1\t2026-01-29\tS1\t1\t1\tUSD\t10.00\n\
             171-0000002-0000002\t10000000000002\t\t2026-01-29T20:00:00-08:00\tS2\t1\t1\tUSD\t10.00\n\
             171-0000003-0000003\t10000000000003\t\t\tS3\t1\t1\tUSD\t10.00\n";
        let rows = parse_order_report(report).expect("report");
        store.import_orders(&merchant(), &rows).expect("import");
        let day = |m, d| chrono::NaiveDate::from_ymd_opt(2026, m, d);
        let expected = [
            ("171-0000001-0000001", day(1, 29)),
            // 20:00 in Seattle on 2026-01-29 is 2026-01-30 in UTC.
            ("171-0000002-0000002", day(1, 30)),
            ("171-0000003-0000003", None),
        ];
        let needs = Needs {
            orders: expected
                .iter()
                .map(|(order, _)| OrderRef::Amazon(aid(order)))
                .chain([OrderRef::Merchant(sid("PO-1"))])
                .collect(),
            keys: Vec::new(),
        };
        let check = |snapshot: &Snapshot, path: &str| {
            for (order, date) in expected {
                let loaded = snapshot
                    .order(&OrderRef::Amazon(aid(order)))
                    .unwrap_or_else(|| panic!("{path}: {order} loaded"));
                assert_eq!(loaded.purchase_date, date, "{path}: {order}");
            }
            let by_merchant_id = snapshot
                .order(&OrderRef::Merchant(sid("PO-1")))
                .expect("PO-1 loaded");
            assert_eq!(by_merchant_id.purchase_date, day(1, 29), "{path}: PO-1");
        };

        let mut tx = store
            .begin_feed(&new_feed("dates.xml", "dates", None))
            .expect("begin");
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        check(&snapshot, "first chunk");
        // The feed writes to order 1, so the next chunk's copy of it must come up to date.
        tx.apply(
            &merchant(),
            &[adjustment(
                1,
                "171-0000001-0000001",
                "10000000000001",
                &[(principal(), 100)],
                Some("DATE-1"),
                0,
            )],
        )
        .expect("apply");
        snapshot.forget();
        tx.forget_loaded();

        tx.prefetch(&merchant(), needs.orders.clone());
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        check(&snapshot, "prefetched chunk");
        let written = snapshot
            .order(&OrderRef::Amazon(aid("171-0000001-0000001")))
            .expect("loaded");
        assert_eq!(
            written.items[0].components[&principal()].refunded,
            100,
            "the prefetched order includes this feed's write"
        );
        tx.commit(done(1, None)).expect("commit");
    }

    /// Every load path gives the engine each item's adjustments applied since
    /// `NewFeed::recent_adjustments_since`, oldest first, with their feed and MessageID (this
    /// feed's own without a feed id) and day: the first load of a feed; after a prefetch
    /// hint (SQLite: from the prefetch connection, an order this feed wrote to brought up to
    /// date by the overlay); on the writing connection without a hint. None when the window
    /// is off or begins after them; a hash that is not a payload hash is left out. An item
    /// whose only adjustment is a pure cancellation (no amount) has it too.
    pub fn loading_gives_the_engine_recent_adjustments(store: &mut dyn Store) {
        let report = "order-id\torder-item-id\tmerchant-order-id\tsku\tquantity-purchased\tquantity-shipped\tcurrency\titem-price\n\
             171-0000001-0000001\t10000000000001\tPO-1\tS1\t2\t2\tUSD\t10.00\n\
             171-0000001-0000001\t10000000000002\tPO-1\tS2\t2\t1\tUSD\t10.00\n\
             171-0000002-0000002\t10000000000003\t\tS3\t1\t1\tUSD\t10.00\n";
        let rows = parse_order_report(report).expect("report");
        store.import_orders(&merchant(), &rows).expect("import");
        let hex = |n: u8| format!("{n:02x}").repeat(32);
        let with_hash = |change: Change, hash: String| match change {
            Change::Adjust(adjustment) => Change::Adjust(NewAdjustment {
                payload_hash: hash,
                ..adjustment
            }),
            other => other,
        };
        let refund = |message: u64, order: &str, item: &str, hash: String| {
            with_hash(
                adjustment(message, order, item, &[(principal(), 100)], None, 0),
                hash,
            )
        };
        let today = chrono::Utc::now().date_naive();
        let yesterday = today.pred_opt().expect("a day before");
        let earlier = run_feed(
            store,
            "recent-1",
            &["171-0000001-0000001", "171-0000002-0000002"],
            &[
                refund(4, "171-0000001-0000001", "10000000000001", hex(0xa1)),
                refund(
                    5,
                    "171-0000001-0000001",
                    "10000000000001",
                    "not-a-hash".into(),
                ),
                refund(6, "171-0000001-0000001", "10000000000001", hex(0xa2)),
                refund(7, "171-0000002-0000002", "10000000000003", hex(0xb1)),
                // A pure cancellation: no amount, so only the cancelled unit shows it.
                with_hash(
                    adjustment(8, "171-0000001-0000001", "10000000000002", &[], None, 1),
                    hex(0xd1),
                ),
            ],
        );
        // The day the adjustments were written (today, unless the clock passed midnight).
        let applied_on = |recent: &[RecentAdjustment]| {
            for adjustment in recent {
                assert!(
                    adjustment.applied_on == today
                        || adjustment.applied_on == chrono::Utc::now().date_naive(),
                    "{adjustment:?}"
                );
            }
            recent.first().map(|a| a.applied_on)
        };
        let needs = Needs {
            orders: vec![
                OrderRef::Amazon(aid("171-0000001-0000001")),
                OrderRef::Amazon(aid("171-0000002-0000002")),
            ],
            keys: Vec::new(),
        };
        // In the order they were applied: earlier feeds, then this one (no feed id).
        let recent = |snapshot: &Snapshot, order: &str, item: usize| -> Vec<RecentAdjustment> {
            let mut recent: Vec<RecentAdjustment> = snapshot
                .order(&OrderRef::Amazon(aid(order)))
                .unwrap_or_else(|| panic!("{order} loaded"))
                .items[item]
                .recent_adjustments
                .iter()
                .cloned()
                .collect();
            recent.sort_by_key(|a| {
                (
                    a.origin.feed_id.is_none(),
                    a.origin.feed_id,
                    a.origin.message_id,
                )
            });
            recent
        };
        let mine = |payload: u8, feed_id: Option<u64>, message: u64, day| RecentAdjustment {
            payload: PayloadDigest::from_hex(&hex(payload)).expect("hex"),
            origin: KeyOrigin {
                feed_id,
                message_id: MessageId::new(message).expect("message id"),
            },
            applied_on: day,
        };

        let mut tx = store
            .begin_feed(&NewFeed {
                recent_adjustments_since: Some(yesterday),
                ..new_feed("recent.xml", "recent-2", None)
            })
            .expect("begin");
        let this_feed = tx.feed_id();
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        let day = applied_on(&recent(&snapshot, "171-0000001-0000001", 0)).expect("loaded");
        assert_eq!(
            recent(&snapshot, "171-0000001-0000001", 0),
            [
                mine(0xa1, Some(earlier), 4, day),
                mine(0xa2, Some(earlier), 6, day)
            ],
            "first chunk"
        );
        assert_eq!(
            recent(&snapshot, "171-0000001-0000001", 1),
            [mine(0xd1, Some(earlier), 8, day)]
        );
        assert_eq!(
            recent(&snapshot, "171-0000002-0000002", 0),
            [mine(0xb1, Some(earlier), 7, day)]
        );
        // This feed writes to order 1: its next copies carry that adjustment too.
        tx.apply(
            &merchant(),
            &[refund(
                9,
                "171-0000001-0000001",
                "10000000000001",
                hex(0xc1),
            )],
        )
        .expect("apply");
        snapshot.forget();
        tx.forget_loaded();
        let expected_first = |snapshot: &Snapshot, path: &str| {
            let loaded = recent(snapshot, "171-0000001-0000001", 0);
            let day_now = loaded.last().expect("this feed's").applied_on;
            applied_on(&loaded);
            assert_eq!(
                loaded,
                [
                    mine(0xa1, Some(earlier), 4, day),
                    mine(0xa2, Some(earlier), 6, day),
                    mine(0xc1, None, 9, day_now)
                ],
                "{path}"
            );
            assert_eq!(
                recent(snapshot, "171-0000001-0000001", 1),
                [mine(0xd1, Some(earlier), 8, day)],
                "{path}"
            );
            assert_eq!(
                recent(snapshot, "171-0000002-0000002", 0),
                [mine(0xb1, Some(earlier), 7, day)],
                "{path}"
            );
        };
        tx.prefetch(&merchant(), needs.orders.clone());
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        expected_first(&snapshot, "prefetched chunk");
        snapshot.forget();
        tx.forget_loaded();
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs, &mut snapshot).expect("load");
        expected_first(&snapshot, "writing connection");
        assert!(this_feed > earlier);
        tx.commit(done(1, None)).expect("commit");

        // A window that begins after them, and no window: nothing.
        for since in [Some(today.succ_opt().expect("a day after")), None] {
            let mut tx = store
                .begin_feed(&NewFeed {
                    recent_adjustments_since: since,
                    ..new_feed("recent.xml", &format!("recent-{since:?}"), None)
                })
                .expect("begin");
            let mut snapshot = Snapshot::new();
            tx.load(&merchant(), &needs, &mut snapshot).expect("load");
            assert_eq!(recent(&snapshot, "171-0000001-0000001", 0), [], "{since:?}");
            tx.prefetch(&merchant(), needs.orders.clone());
            let mut snapshot = Snapshot::new();
            tx.load(&merchant(), &needs, &mut snapshot).expect("load");
            assert_eq!(recent(&snapshot, "171-0000001-0000001", 0), [], "{since:?}");
        }
    }
}

// ---- SQLite ----

struct SqliteGuard(#[allow(dead_code)] tempfile::TempDir);

fn sqlite_fixture() -> Option<conformance::Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("adjustd.db")).expect("open");
    Some(conformance::Fixture {
        store: Box::new(store),
        guard: Box::new(SqliteGuard(dir)),
    })
}

mod sqlite_conformance {
    use super::sqlite_fixture;
    super::conformance::conformance_tests!(sqlite_fixture);
}

fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("raw connection")
}

#[test]
fn sqlite_reimport_of_an_unchanged_legacy_discount_above_its_price_is_not_refused() {
    // An earlier build took in a discount above its price (7.00 off 5.00). A later report
    // repeating that line changes nothing and must not stop the import of every other line.
    const HEADER: &str = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\t\
                          item-price\titem-promotion-discount\n";
    let rows = |lines: &str| parse_order_report(&format!("{HEADER}{lines}")).expect("parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    let legacy = "903-0000001-0000001\t90300000000001\tS\t1\tUSD\t5.00\t-5.00\n";
    SqliteStore::open(&path)
        .expect("open")
        .import_orders(&merchant(), &rows(legacy))
        .expect("import");
    raw(&path)
        .execute(
            "UPDATE item_components SET charged = 700 WHERE component = 'Promotion:Principal'",
            [],
        )
        .expect("the legacy discount");
    let mut store = SqliteStore::open(&path).expect("reopen");
    let repeated = "903-0000001-0000001\t90300000000001\tS\t1\tUSD\t5.00\t-7.00\n";
    let other = "903-0000002-0000002\t90300000000002\tS\t1\tUSD\t3.00\t\n";
    let summary = store
        .import_orders(&merchant(), &rows(&format!("{repeated}{other}")))
        .expect("the unchanged line does not refuse the report");
    assert_eq!(summary.orders_created, 1);
    // A line that changes the pair is still held to the rule.
    let raised = "903-0000001-0000001\t90300000000001\tS\t1\tUSD\t5.00\t-7.50\n";
    let err = store
        .import_orders(&merchant(), &rows(raised))
        .expect_err("a changed discount above its price");
    assert!(
        err.to_string()
            .contains("item-promotion-discount 7.50 is more than the item-price 5.00"),
        "{err}"
    );
}

/// qa11 F1, F2: purchase-dates an older build let in and stored (it took any text after
/// `YYYY-MM-DDT`) load with the day that build gave them, never failing the load, except
/// those it misread by the day as written (`PST`, `-0800`), which get their UTC day; text
/// that is no date at all is no purchase date.
#[test]
fn sqlite_loads_the_purchase_dates_an_older_build_stored() {
    let stored = [
        (
            "2026-11-30Tgarbage",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30),
        ),
        ("2026-11-30T", chrono::NaiveDate::from_ymd_opt(2026, 11, 30)),
        (
            "2026-11-30T23:30:00+00:00junk",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30),
        ),
        (
            "2026-11-30T23:30:00+25:00",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30),
        ),
        (
            "2026-11-30T23:59:59.1234567890-08:00",
            chrono::NaiveDate::from_ymd_opt(2026, 12, 1),
        ),
        (
            "2026-11-01T20:00:00 PST",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 2),
        ),
        (
            "2026-11-01T20:00:00-0800",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 2),
        ),
        ("2026-02-30", None),
    ];
    let header = "order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\n";
    let lines: String = (1..=stored.len())
        .map(|i| format!("904-0000000-{i:07}\t9040000000000{i}\tS\t1\tUSD\t5.00\n"))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    SqliteStore::open(&path)
        .expect("open")
        .import_orders(
            &merchant(),
            &parse_order_report(&format!("{header}{lines}")).expect("parses"),
        )
        .expect("import");
    for (i, (text, _)) in stored.iter().enumerate() {
        raw(&path)
            .execute(
                "UPDATE orders SET purchase_date = ?1 WHERE amazon_order_id = ?2",
                rusqlite::params![text, format!("904-0000000-{:07}", i + 1)],
            )
            .expect("an older build's value");
    }
    let mut store = SqliteStore::open(&path).expect("reopen");
    let mut tx = store
        .begin_feed(&new_feed("legacy-dates.xml", "legacy-dates", None))
        .expect("begin");
    let orders: Vec<OrderRef> = (1..=stored.len())
        .map(|i| OrderRef::Amazon(aid(&format!("904-0000000-{i:07}"))))
        .collect();
    let mut snapshot = Snapshot::new();
    tx.load(
        &merchant(),
        &Needs {
            orders: orders.clone(),
            keys: Vec::new(),
        },
        &mut snapshot,
    )
    .expect("the load does not fail");
    for (order, (text, day)) in orders.iter().zip(stored) {
        assert_eq!(
            snapshot.order(order).expect("loaded").purchase_date,
            day,
            "{text:?}"
        );
    }
}

#[test]
fn sqlite_migrates_a_fresh_database_and_reopens_with_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sub/dir/adjustd.db");
    {
        let mut store = SqliteStore::open(&path).expect("open");
        store
            .import_orders(&merchant(), &sample_rows())
            .expect("import");
    }
    let conn = raw(&path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, adjustd::store::sqlite::SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    tables.sort();
    assert_eq!(
        tables,
        [
            "adjustment_amounts",
            "adjustments",
            "feeds",
            "idempotency_keys",
            "item_components",
            "order_items",
            "orders"
        ]
    );
    drop(conn);
    let mut store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        store
            .orders(Some(&merchant()), "171-1234567-1234567")
            .expect("orders")[0]
            .items
            .len(),
        2
    );
    drop(store);
    // A database from a newer adjustd is refused and left alone.
    raw(&path)
        .execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(
                (found, supported),
                (99, adjustd::store::sqlite::SCHEMA_VERSION)
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// The text of the [`StoreError::Locked`] an open must fail with, naming this process as
/// the holder; a lock is not transient.
fn locked_by_this_process(opened: Result<SqliteStore, StoreError>) -> String {
    match opened {
        Err(err @ StoreError::Locked { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
            assert!(!err.is_transient());
            text
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn sqlite_second_opener_gets_locked_with_the_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    let store = SqliteStore::open(&path).expect("open");
    let text = locked_by_this_process(SqliteStore::open(&path));
    assert!(text.contains("on host "), "{text}");
    drop(store);
    // Other tests of this binary spawn processes: a child forked while the lock file was
    // open holds a copy of its descriptor (and so the flock) until it execs, for a moment.
    crate::util::wait_for(
        "the lock to be free after the holder closed",
        std::time::Duration::from_secs(5),
        || SqliteStore::open(&path).is_ok(),
    );
}

#[test]
fn sqlite_lock_holds_for_every_spelling_of_the_database_path() {
    // A symlink to the file, a symlinked folder and a path through `..` all name the one
    // database: a second writer through any of them must be refused, as through the path
    // the first one used.
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().join("db");
    std::fs::create_dir(&real).expect("db folder");
    let path = real.join("adjustd.db");
    let store = SqliteStore::open(&path).expect("open");
    let file_link = dir.path().join("alias.db");
    std::os::unix::fs::symlink(&path, &file_link).expect("symlink to the file");
    let folder_link = dir.path().join("alias");
    std::os::unix::fs::symlink(&real, &folder_link).expect("symlink to the folder");
    std::fs::create_dir(dir.path().join("other")).expect("other folder");
    let dotted = dir.path().join("other/../db/adjustd.db");
    for spelling in [file_link, folder_link.join("adjustd.db"), dotted] {
        match SqliteStore::open(&spelling) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("{}: expected Locked, got {other:?}", spelling.display()),
        }
    }
    drop(store);
}

#[test]
fn sqlite_lock_holds_for_a_hard_link_of_the_database_file() {
    // A hard link is another name of the same file, with a lock file of its own name: the
    // lock must follow the file, naming the holder, or two writers (each with its own WAL,
    // `<name>-wal`) would run at once.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    let store = SqliteStore::open(&path).expect("open");
    std::fs::create_dir(dir.path().join("elsewhere")).expect("folder");
    let link = dir.path().join("elsewhere/linked.db");
    std::fs::hard_link(&path, &link).expect("hard link");
    let text = locked_by_this_process(SqliteStore::open(&link));
    assert!(
        text.contains(&format!("pid {} on host ", std::process::id()))
            && text.contains("hard link"),
        "{text}"
    );
    drop(store);
    crate::util::wait_for(
        "the lock to be free after the holder closed",
        std::time::Duration::from_secs(5),
        || SqliteStore::open(&link).is_ok(),
    );
}

#[test]
fn sqlite_checks_and_triggers_hold_against_raw_sql() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    let mut store = SqliteStore::open(&path).expect("open");
    store
        .import_orders(&merchant(), &sample_rows())
        .expect("import");
    run_feed(
        &mut store,
        "h",
        &["171-1234567-1234567"],
        &[adjustment(
            1,
            "171-1234567-1234567",
            "12345678901234",
            &[(principal(), 100)],
            Some("K"),
            0,
        )],
    );
    let conn = raw(&path);
    let refused = |sql: &str, words: &str| {
        let err = conn.execute_batch(sql).expect_err(sql);
        assert!(err.to_string().contains(words), "{sql}: {err}");
    };
    refused(
        "UPDATE item_components SET refunded = charged + 1 WHERE component = 'Principal'",
        "CHECK constraint failed",
    );
    refused(
        "UPDATE item_components SET refunded = 1 WHERE component = 'Promotion:Principal'",
        "CHECK constraint failed",
    );
    refused(
        "INSERT INTO item_components (item_id, component, class, charged, refunded) \
         SELECT id, 'RestockingFee', 'fee', 0, 5 FROM order_items LIMIT 1",
        "CHECK constraint failed",
    );
    refused(
        "UPDATE order_items SET quantity_cancelled = quantity_ordered + 1",
        "CHECK constraint failed",
    );
    refused("UPDATE adjustments SET net = 1", "append-only");
    refused("DELETE FROM adjustments", "append-only");
    refused("UPDATE adjustment_amounts SET amount = 1", "append-only");
    refused("DELETE FROM adjustment_amounts", "append-only");
    refused(
        "INSERT INTO adjustments (feed_id, message_id, item_id, reason, quantity_cancelled, \
         payload_hash, net, created_at) SELECT 1, 9, id, 'Other', 0, 'h', 0, 'now' \
         FROM order_items LIMIT 1",
        "CHECK constraint failed",
    );
    refused(
        "UPDATE feeds SET status = 'Done'",
        "CHECK constraint failed",
    );
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM adjustments", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 1);
}

#[test]
fn sqlite_busy_database_is_unavailable_not_a_conflict() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("adjustd.db");
    let mut store = SqliteStore::open(&path).expect("open");
    store
        .set_busy_timeout(std::time::Duration::from_millis(50))
        .expect("timeout");
    // Something outside adjustd (a backup tool, a careless sqlite3 shell) holds the write lock.
    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").expect("writer lock");
    // Not a race between instances (one adjustd writes a SQLite database) but an outage the
    // daemon must report at once, not retry as a conflict.
    match store.begin_feed(&new_feed("f.xml", "h", None)) {
        Err(err @ StoreError::Unavailable { .. }) => {
            assert!(err.is_transient());
            assert!(err.to_string().contains("busy timeout"), "{err}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("expected Unavailable, got a transaction"),
    }
    other.execute_batch("ROLLBACK").expect("release");
    let tx = store
        .begin_feed(&new_feed("f.xml", "h", None))
        .expect("free again");
    tx.commit(done(0, None)).expect("commit");
}

#[test]
fn sqlite_message_ids_above_i64_round_trip() {
    let (mut fixture, _) = (sqlite_fixture().expect("fixture"), ());
    let store = fixture.store.as_mut();
    store
        .import_orders(&merchant(), &sample_rows())
        .expect("import");
    let mut change = adjustment(
        1,
        "171-1234567-1234567",
        "12345678901234",
        &[(principal(), 100)],
        None,
        0,
    );
    if let Change::Adjust(a) = &mut change {
        a.message_id = MessageId::new(u64::MAX).expect("id");
    }
    run_feed(store, "h", &["171-1234567-1234567"], &[change]);
    let view = store.orders(None, "171-1234567-1234567").expect("orders");
    assert_eq!(view[0].adjustments[0].message_id, u64::MAX);
}

#[test]
fn order_report_files_parse_and_fail_with_line_and_column() {
    let plain = sample_rows();
    assert_eq!(plain.len(), 6);
    let bom_crlf = report("tests/data/orders/new-orders-bom-crlf.txt");
    assert_eq!(plain, bom_crlf);
    let afn: Vec<&OrderRow> = plain
        .iter()
        .filter(|r| r.channel == Some(adjustd::model::FulfillmentChannel::Amazon))
        .collect();
    assert_eq!(afn.len(), 1);
    let text =
        std::fs::read_to_string(repo_file("tests/data/orders/bad-precision.txt")).expect("file");
    let err = parse_order_report(&text).expect_err("excess precision");
    assert_eq!(err.line, 4);
    assert_eq!(err.column.as_deref(), Some("shipping-tax"));
    assert!(err.to_string().contains("\"0.605\""), "{err}");
}

/// CPU time of the calling thread so far (Linux), to read the probe on a shared machine.
fn thread_cpu() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(nanos))
}

/// Applies `ADJUSTD_STORE_PERF_ADJUSTMENTS` (default 4000) adjustments over half as many
/// orders in one feed transaction and prints the rate. A probe, not a timed assertion; run
/// `ADJUSTD_STORE_PERF_ADJUSTMENTS=200000 cargo test --release --test it store_throughput
/// -- --nocapture` for the figure in the report.
#[test]
fn store_throughput() {
    let adjustments: usize = std::env::var("ADJUSTD_STORE_PERF_ADJUSTMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let orders = adjustments.div_ceil(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(&dir.path().join("perf.db")).expect("open");
    let usd = adjustd::model::Currency::from_code("USD").expect("USD");
    let rows: Vec<OrderRow> = (0..orders)
        .map(|i| OrderRow {
            line: u32::try_from(i + 2).expect("line"),
            amazon_order_id: aid(&format!("111-{:07}-{:07}", i / 10_000_000, i % 10_000_000)),
            merchant_order_id: None,
            item_code: code(&format!("{:014}", i)),
            merchant_item_id: None,
            purchase_date: None,
            sku: "SKU".into(),
            quantity_ordered: 2,
            quantity_shipped: Some(2),
            currency: Some(usd),
            charged: vec![(principal(), 10_000), (tax(), 800)],
            channel: None,
        })
        .collect();
    let started = std::time::Instant::now();
    store.import_orders(&merchant(), &rows).expect("import");
    let import_time = started.elapsed();
    let cpu_before = thread_cpu();
    let changes: Vec<Change> = (0..adjustments)
        .map(|n| {
            let row = &rows[n % orders];
            Change::Adjust(NewAdjustment {
                message_id: MessageId::new(n as u64 + 1).expect("id"),
                amazon_order_id: row.amazon_order_id.clone(),
                item_code: row.item_code.clone(),
                reason: AdjustmentReason::CustomerReturn,
                action: None,
                quantity_cancelled: 0,
                quantity: None,
                amounts: vec![
                    (principal(), 1000),
                    (tax(), 80),
                    (Component::Price(PriceComponent::Goodwill), 50),
                ],
                key: Some(sid(&format!("K{n}"))),
                payload_hash: "0".repeat(64),
            })
        })
        .collect();
    let needs = Needs {
        // Already sorted: the ids are zero-padded and increasing.
        orders: rows
            .iter()
            .map(|r| OrderRef::Amazon(r.amazon_order_id.clone()))
            .collect(),
        keys: {
            let mut k: Vec<SellerId> = (0..adjustments).map(|n| sid(&format!("K{n}"))).collect();
            k.sort();
            k
        },
    };
    let started = std::time::Instant::now();
    let mut tx = store
        .begin_feed(&new_feed("perf.xml", "perf", None))
        .expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs, &mut snapshot).expect("load");
    let loaded = started.elapsed();
    let cpu_loaded = thread_cpu();
    tx.apply(&merchant(), &changes).expect("apply");
    let applied = started.elapsed();
    let cpu_applied = thread_cpu();
    tx.commit(done(adjustments as u64, None)).expect("commit");
    let total = started.elapsed();
    let cpu = thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let rate = adjustments as f64 / total.as_secs_f64();
    let cpu_rate = cpu.map_or(0.0, |c| adjustments as f64 / c.as_secs_f64());
    eprintln!(
        "store_throughput: {adjustments} adjustments over {orders} orders: import {import_time:?}, \
         load {loaded:?}, load+apply {applied:?}, load+apply+commit {total:?} = {rate:.0} msgs/s \
         wall; this thread's CPU time {cpu:?} = {cpu_rate:.0} msgs/s per CPU second \
         (CPU: load {:?}, apply {:?}, commit {:?})",
        cpu_loaded.zip(cpu_before).map(|(a, b)| a - b),
        cpu_applied.zip(cpu_loaded).map(|(a, b)| a - b),
        thread_cpu().zip(cpu_applied).map(|(a, b)| a - b),
    );
    assert_eq!(snapshot.orders().count(), orders);
    let view = store
        .orders(None, rows[0].amazon_order_id.as_str())
        .expect("orders");
    let per_order = adjustments / orders;
    assert_eq!(view[0].adjustments.len(), per_order);
    // Totals summed over the batch: existing rows updated, new (concession) rows inserted.
    let item = &view[0].items[0];
    let per_order = i64::try_from(per_order).expect("small");
    let usd_text = |minor: i64| adjustd::model::format_minor(minor, usd);
    assert_eq!(item.refunded["Principal"], usd_text(1000 * per_order));
    assert_eq!(item.refunded["Tax"], usd_text(80 * per_order));
    assert_eq!(item.refunded["Goodwill"], usd_text(50 * per_order));
    assert_eq!(item.charged["Goodwill"], "0.00");
}

#[test]
fn sqlite_upgrades_a_version_1_database_in_place() {
    // A database as version 1 left it (its schema and one imported order), then opened by
    // this build: the later migrations run, the data stays, and the load query (as
    // `SqliteFeedTx::load_orders` writes it) reads through the covering indexes of versions
    // 2 to 4.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v1.db");
    {
        let conn = raw(&path);
        conn.execute_batch(include_str!(
            "../../src/store/migrations/sqlite/0001_initial.sql"
        ))
        .expect("version 1 schema");
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO orders (id, merchant, amazon_order_id, currency, fulfillment_channel)
                 VALUES (1, 'A1SELLER', '171-1234567-1234567', 'USD', 'MFN');
             INSERT INTO order_items (id, order_id, position, amazon_order_item_code, sku,
                 quantity_ordered, quantity_shipped) VALUES (1, 1, 0, '12345678901234', 'S', 2, 2);
             INSERT INTO item_components (item_id, component, class, charged, refunded)
                 VALUES (1, 'Principal', 'charge', 1000, 300);
             INSERT INTO feeds (id, merchant, file_name, content_hash, status, received_at)
                 VALUES (1, 'A1SELLER', 'old.xml', 'h', 'Complete', 'then');
             INSERT INTO adjustments (id, feed_id, message_id, item_id, reason, quantity_cancelled,
                 quantity, payload_hash, net, created_at)
                 VALUES (1, 1, 1, 1, 'CustomerReturn', 0, 1, 'p1', 100, 'then'),
                        (2, 1, 2, 1, 'CustomerReturn', 0, 2, 'p2', 200, 'then');",
        )
        .expect("version 1 data");
    }
    let mut store = SqliteStore::open(&path).expect("open upgrades");
    let orders = store
        .orders(Some(&merchant()), "171-1234567-1234567")
        .expect("orders");
    assert_eq!(
        orders[0].items[0]
            .charged
            .get("Principal")
            .map(String::as_str),
        Some("10.00")
    );
    drop(store);
    let conn = raw(&path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, adjustd::store::sqlite::SCHEMA_VERSION);
    // Version 3 counts the units returned: the older build let two adjustments return 1 + 2
    // of 2 shipped units, so the count stops at what was shipped.
    let returned: i64 = conn
        .query_row(
            "SELECT quantity_returned FROM order_items WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .expect("returned");
    assert_eq!(returned, 2);
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT o.id, o.amazon_order_id, o.merchant_order_id, \
             o.currency, o.fulfillment_channel, i.id, i.amazon_order_item_code, \
             i.merchant_order_item_id, i.quantity_ordered, i.quantity_shipped, \
             i.quantity_cancelled, i.position, c.component, c.charged, c.refunded, \
             i.quantity_returned, o.purchase_date \
             FROM orders o INDEXED BY orders_load LEFT JOIN order_items i ON i.order_id = o.id \
             LEFT JOIN item_components c ON c.item_id = i.id \
             WHERE o.merchant = 'A1SELLER' AND o.amazon_order_id IN ('171-1234567-1234567')",
        )
        .expect("prepare")
        .query_map([], |r| r.get(3))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        plan.iter()
            .any(|step| step.contains("COVERING INDEX orders_load"))
            && plan
                .iter()
                .any(|step| step.contains("COVERING INDEX order_items_load")),
        "{plan:?}"
    );
}

#[test]
fn sqlite_upgrades_a_version_3_database_to_a_load_index_with_the_purchase_date() {
    // A database as version 3 left it, with an order imported with a purchase date. Version 4
    // recreates the covering index the load query names (INDEXED BY orders_load) with
    // purchase_date, and a feed loads the order with its date.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v3.db");
    {
        let conn = raw(&path);
        for sql in [
            include_str!("../../src/store/migrations/sqlite/0001_initial.sql"),
            include_str!("../../src/store/migrations/sqlite/0002_load_indexes.sql"),
            include_str!("../../src/store/migrations/sqlite/0003_quantity_returned.sql"),
        ] {
            conn.execute_batch(sql).expect("version 3 schema");
        }
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO orders (id, merchant, amazon_order_id, currency, fulfillment_channel,
                 purchase_date)
                 VALUES (1, 'A1SELLER', '171-1234567-1234567', 'USD', 'MFN',
                         '2026-11-02T09:14:33+00:00');
             INSERT INTO order_items (id, order_id, position, amazon_order_item_code, sku,
                 quantity_ordered, quantity_shipped) VALUES (1, 1, 0, '12345678901234', 'S', 2, 2);
             INSERT INTO feeds (id, merchant, file_name, content_hash, status, received_at,
                 processed_at) VALUES (1, 'A1SELLER', 'before.xml', 'h', 'Complete',
                 '2026-11-02T09:14:33Z', '2026-11-02T09:14:33Z');",
        )
        .expect("version 3 data");
    }
    let index_columns = |path: &std::path::Path| -> Vec<String> {
        raw(path)
            .prepare("SELECT name FROM pragma_index_info('orders_load') ORDER BY seqno")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert!(!index_columns(&path).contains(&"purchase_date".to_owned()));

    let mut store = SqliteStore::open(&path).expect("open upgrades");
    // Version 5: where the reports of a feed recorded before it went is not known.
    let before = store.recent_feeds(1).expect("feeds");
    assert_eq!(before[0].report_folder, ReportFolder::Unrecorded);
    let mut tx = store
        .begin_feed(&new_feed("after-upgrade.xml", "after-upgrade", None))
        .expect("begin");
    let mut snapshot = Snapshot::new();
    let order = OrderRef::Amazon(aid("171-1234567-1234567"));
    tx.load(
        &merchant(),
        &Needs {
            orders: vec![order.clone()],
            keys: Vec::new(),
        },
        &mut snapshot,
    )
    .expect("load");
    assert_eq!(
        snapshot.order(&order).expect("loaded").purchase_date,
        chrono::NaiveDate::from_ymd_opt(2026, 11, 2)
    );
    drop(tx);
    drop(store);

    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, adjustd::store::sqlite::SCHEMA_VERSION);
    assert_eq!(
        index_columns(&path),
        [
            "merchant",
            "amazon_order_id",
            "id",
            "merchant_order_id",
            "currency",
            "fulfillment_channel",
            "purchase_date"
        ]
    );
}
