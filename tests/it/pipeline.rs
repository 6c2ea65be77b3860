//! Tests of `pipeline::process_file` through the library: crash recovery by claim token,
//! merchant binding, duplicate policy, and state carried across message chunks. Real
//! SQLite files in temp folders.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::model::{MerchantId, MessageId};
use adjustd::pipeline::{self, Context, DuplicatePolicy, Source, Tally};
use adjustd::problem::{Code, MAX_RESULTS, Problem};
use adjustd::store::{AnyStore, FeedStatus, import};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/e2e");

fn merchant() -> MerchantId {
    MerchantId::new("M_TEST").expect("valid merchant")
}

fn context(dir: &Path) -> Context {
    context_on(dir, &format!("sqlite:{}", dir.join("store.db").display()))
}

/// A context on the store at `url` with the e2e order report imported.
fn context_on(dir: &Path, url: &str) -> Context {
    let mut store = AnyStore::open(url).expect("open store");
    let report = std::fs::read_to_string(Path::new(DATA).join("orders.txt")).expect("orders");
    let rows = import::parse_order_report(&report).expect("parse order report");
    store
        .as_store()
        .import_orders(&merchant(), &rows)
        .expect("import");
    Context {
        store,
        rules: Rules::default(),
        limits: Limits::default(),
        duplicate_policy: DuplicatePolicy::Skip,
        outbox: dir.join("outbox"),
        chunk_messages: pipeline::CHUNK_MESSAGES,
        on_conflict: None,
    }
}

fn source<'a>(path: &'a Path, claim_token: Option<&'a str>) -> Source<'a> {
    Source {
        path,
        file_name: "feed.xml",
        claim_token,
        bound_merchant: None,
        allowed_merchants: None,
        may_still_be_uploading: false,
    }
}

/// The start of a feed of merchant M_TEST, up to its first message.
const FEED_HEAD: &str = "<?xml version=\"1.0\"?>\n<AmazonEnvelope><Header><DocumentVersion>1.01</DocumentVersion>\
     <MerchantIdentifier>M_TEST</MerchantIdentifier></Header><MessageType>OrderAdjustment</MessageType>\n";

/// The Principal refunded so far on the first item of `order`.
fn principal_refunded(context: &mut Context, order: &str) -> String {
    let orders = context.store.as_store().orders(None, order).expect("order");
    orders[0].items[0].refunded["Principal"].clone()
}

fn codes(outcome: &adjustd::report::FeedOutcome) -> Vec<(u64, Code)> {
    outcome
        .results
        .iter()
        .map(|p| (p.message_id.get(), p.code))
        .collect()
}

#[test]
fn a_committed_claim_is_not_applied_again_and_its_report_is_re_emitted_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = PathBuf::from(DATA).join("refund-ok.xml");
    let first =
        pipeline::process_file(&mut context, &source(&feed, Some("claim-1"))).expect("process");
    assert!(!first.recovered);
    let xml = std::fs::read(&first.xml_report).expect("xml report");
    let json = std::fs::read(&first.json_report).expect("json report");
    // The crash: reports lost after the commit.
    std::fs::remove_file(&first.xml_report).expect("rm");
    std::fs::remove_file(&first.json_report).expect("rm");

    let again =
        pipeline::process_file(&mut context, &source(&feed, Some("claim-1"))).expect("process");
    assert!(again.recovered);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(std::fs::read(&again.xml_report).expect("xml"), xml);
    assert_eq!(std::fs::read(&again.json_report).expect("json"), json);
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    assert_eq!(orders[0].adjustments.len(), 1, "applied exactly once");
}

/// A claimed feed that opens but cannot be read (here a directory: `open` succeeds, `read`
/// fails with EISDIR, as a disk's I/O error would) gets its own FEED_UNREADABLE report and a
/// Rejected record, like one that cannot be opened; `adjustd process` (no claim) gets the
/// read error to name on stderr.
#[test]
fn a_claimed_feed_whose_reading_fails_after_the_open_is_reported_as_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let unreadable = dir.path().join("claimed");
    std::fs::create_dir(&unreadable).expect("mkdir");

    let error =
        pipeline::process_file(&mut context, &source(&unreadable, None)).expect_err("a read error");
    assert!(
        matches!(error, pipeline::ProcessError::Read { .. }),
        "{error:?}"
    );

    let processed =
        pipeline::process_claimed(&mut context, &source(&unreadable, Some("claim-1")), None)
            .expect("reported");
    let outcome = &processed.outcome;
    assert_eq!(outcome.status, FeedStatus::Rejected);
    assert_eq!(codes(outcome), [(0, Code::FeedUnreadable)]);
    let description = &outcome.results[0].description;
    assert!(
        description.contains("feed.xml cannot be read") && description.contains("os error 21"),
        "{description}"
    );
    assert!(
        outcome.results[0].fix.contains("disk or file system"),
        "{:?}",
        outcome.results[0].fix
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&processed.json_report).expect("json report"))
            .expect("json");
    assert_eq!(json["content_hash"], "unread", "{json}");
    let record = context
        .store
        .as_store()
        .feed_by_claim("claim-1")
        .expect("store")
        .expect("recorded");
    assert_eq!(record.status, FeedStatus::Rejected);
}

#[test]
fn a_merchant_folder_rejects_a_foreign_merchant_and_reports_into_its_own_outbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = PathBuf::from(DATA).join("refund-ok.xml");
    let other = MerchantId::new("OTHER").expect("valid");
    let mut src = source(&feed, Some("claim-2"));
    src.bound_merchant = Some(&other);
    let processed = pipeline::process_file(&mut context, &src).expect("process");
    assert_eq!(processed.outcome.status, FeedStatus::Rejected);
    assert_eq!(
        codes(&processed.outcome),
        vec![(0, Code::MerchantNotAllowed)]
    );
    assert!(
        processed
            .xml_report
            .starts_with(dir.path().join("outbox/OTHER"))
    );
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    assert!(orders[0].adjustments.is_empty());

    let position = processed.outcome.results[0].position.expect("a line");
    assert_eq!(
        position.line, 5,
        "MerchantIdentifier of refund-ok.xml: {position:?}"
    );

    let allowed = [other];
    let mut src = source(&feed, None);
    src.allowed_merchants = Some(&allowed);
    let processed = pipeline::process_file(&mut context, &src).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        vec![(0, Code::MerchantNotAllowed)]
    );
    // An empty list (only merchant folders take feeds) says so, not "only merchants ".
    src.allowed_merchants = Some(&[]);
    let processed = pipeline::process_file(&mut context, &src).expect("process");
    let fix = &processed.outcome.results[0].fix;
    assert!(
        fix.contains("The top-level inbox accepts no feeds")
            && fix.contains("allowed_merchants is empty"),
        "{fix}"
    );

    // A pretty-printed MerchantIdentifier is the same merchant (its whitespace is not part
    // of it).
    let text = std::fs::read_to_string(&feed).expect("feed");
    let padded = dir.path().join("padded.xml");
    std::fs::write(
        &padded,
        text.replace(
            "<MerchantIdentifier>M_TEST</MerchantIdentifier>",
            "<MerchantIdentifier>\n      M_TEST\n    </MerchantIdentifier>",
        ),
    )
    .expect("write");
    let merchant = merchant();
    let mut src = source(&padded, None);
    src.bound_merchant = Some(&merchant);
    let processed = pipeline::process_file(&mut context, &src).expect("process");
    assert_eq!(processed.outcome.status, FeedStatus::Complete);
    assert_eq!(processed.outcome.merchant.as_ref(), Some(&merchant));
}

#[test]
fn with_duplicate_feeds_processed_the_idempotency_keys_still_prevent_a_second_refund() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    context.duplicate_policy = DuplicatePolicy::Process;
    let feed = PathBuf::from(DATA).join("refund-ok.xml");
    let first = pipeline::process_file(&mut context, &source(&feed, None)).expect("first");
    let second = pipeline::process_file(&mut context, &source(&feed, None)).expect("second");
    assert_eq!(second.outcome.duplicate_of, Some(first.outcome.feed_id));
    assert_eq!(
        codes(&second.outcome),
        vec![
            (1, Code::DuplicateAdjustment),
            (2, Code::DuplicateAdjustment)
        ]
    );
    assert_eq!(second.outcome.messages_successful, 2);
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    assert_eq!(orders[0].adjustments.len(), 1);
}

/// `process` meeting a duplicate writes the earlier feed's missing report pair again. For a
/// feed recorded before the store kept its report folder (NULL), a pair with a file left
/// in the merchant's folder or the outbox is completed there; one gone from both is written
/// where the reports of the copy processed now go.
#[test]
fn a_missing_report_of_a_feed_without_a_recorded_folder_goes_where_it_is_looked_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = PathBuf::from(DATA).join("refund-ok.xml");
    let merchant = merchant();
    let mut from_folder = source(&feed, None);
    from_folder.bound_merchant = Some(&merchant);
    let first = pipeline::process_file(&mut context, &from_folder).expect("first");
    assert_eq!(first.outcome.status, FeedStatus::Complete);
    let outbox = dir.path().join("outbox");
    let folder = outbox.join("M_TEST");
    assert_eq!(first.xml_report.parent(), Some(folder.as_path()));
    // As a build that did not record report folders left it.
    let db = rusqlite::Connection::open(dir.path().join("store.db")).expect("open store");
    db.execute("UPDATE feeds SET report_folder = NULL", [])
        .expect("forget the folder");
    drop(db);
    let [xml, json] = ["feed.xml.1.report.xml", "feed.xml.1.report.json"];
    let remove = |path: PathBuf| std::fs::remove_file(path).expect("remove a report");
    let again = |context: &mut Context, source: &Source<'_>| {
        let processed = pipeline::process_file(context, source).expect("again");
        assert_eq!(processed.outcome.duplicate_of, Some(1));
    };

    // Gone from both places: written again in the merchant's folder this copy came from.
    remove(folder.join(xml));
    remove(folder.join(json));
    again(&mut context, &from_folder);
    assert!(folder.join(xml).is_file() && folder.join(json).is_file());
    assert!(!outbox.join(xml).exists() && !outbox.join(json).exists());

    // Half a pair left in the merchant's folder is completed there, even for a copy from
    // outside the inbox.
    remove(folder.join(xml));
    again(&mut context, &source(&feed, None));
    assert!(folder.join(xml).is_file());
    assert!(!outbox.join(xml).exists() && !outbox.join(json).exists());

    // A pair in the outbox itself is found there: nothing is written in the folder.
    for name in [xml, json] {
        std::fs::rename(folder.join(name), outbox.join(name)).expect("move a report");
    }
    again(&mut context, &from_folder);
    assert!(!folder.join(xml).exists() && !folder.join(json).exists());
    assert!(outbox.join(xml).is_file() && outbox.join(json).is_file());
}

/// Message `id`: a refund of Principal `amount` (spelled as given) on item 10000000000001
/// of `order`, without a MerchantAdjustmentItemID, on one line.
fn principal_refund(id: usize, order: &str, amount: &str) -> String {
    format!(
        "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>{order}</AmazonOrderID>\
         <AdjustedItem><AmazonOrderItemCode>10000000000001</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>\
         <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">{amount}</Amount></Component>\
         </ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>\n"
    )
}

/// [`principal_refund`] on order 111-0000001-0000001.
fn keyless_message(id: usize, amount: &str) -> String {
    principal_refund(id, "111-0000001-0000001", amount)
}

#[test]
fn a_feed_rejected_after_its_header_names_its_merchant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = dir.path().join("inventory.xml");
    let head = FEED_HEAD.replace(">OrderAdjustment<", ">Inventory<");
    std::fs::write(
        &feed,
        format!("{head}{}</AmazonEnvelope>\n", keyless_message(1, "1.00")),
    )
    .expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(processed.outcome.status, FeedStatus::Rejected);
    assert_eq!(codes(&processed.outcome), [(0, Code::WrongMessageType)]);
    assert_eq!(processed.outcome.merchant, Some(merchant()));
}

#[test]
fn a_message_mixing_keyed_and_keyless_items_is_recognised_in_any_file() {
    // The keyless item's key derives from its sibling's MerchantAdjustmentItemID, not from
    // the file, so the message re-sent in another feed, under another MessageID, is a replay.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let item = |code: &str, key: &str| {
        format!(
            "<AdjustedItem><AmazonOrderItemCode>{code}</AmazonOrderItemCode>{key}\
             <AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component>\
             <Type>Principal</Type><Amount currency=\"USD\">2.00</Amount></Component>\
             </ItemPriceAdjustments></AdjustedItem>"
        )
    };
    let message = |id: usize| {
        format!(
            "<Message><MessageID>{id}</MessageID><OrderAdjustment>\
             <AmazonOrderID>111-0000001-0000001</AmazonOrderID>{}{}</OrderAdjustment></Message>\n",
            item(
                "10000000000001",
                "<MerchantAdjustmentItemID>MIX-1</MerchantAdjustmentItemID>"
            ),
            item("10000000000002", "")
        )
    };
    let first = dir.path().join("first.xml");
    std::fs::write(
        &first,
        format!("{FEED_HEAD}{}</AmazonEnvelope>\n", message(1)),
    )
    .expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&first, None)).expect("first");
    assert_eq!(codes(&processed.outcome), vec![]);
    let other = dir.path().join("other.xml");
    std::fs::write(
        &other,
        format!(
            "{FEED_HEAD}{}{}</AmazonEnvelope>\n",
            keyless_message(1, "0.50"),
            message(7)
        ),
    )
    .expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&other, None)).expect("other");
    assert_eq!(
        codes(&processed.outcome),
        vec![
            (7, Code::DuplicateAdjustment),
            (7, Code::DuplicateAdjustment)
        ]
    );
    let keyless = &processed.outcome.results[1];
    assert!(
        keyless
            .description
            .contains("beside MerchantAdjustmentItemID MIX-1"),
        "{keyless:?}"
    );
    let order = &context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order")[0];
    let refunded: Vec<&str> = order
        .items
        .iter()
        .map(|i| i.refunded["Principal"].as_str())
        .collect();
    assert_eq!(
        refunded,
        ["2.50", "2.00"],
        "applied once, plus the new 0.50"
    );
}

#[test]
fn deferred_counts_order_not_found_until_the_last_retry_pins_it() {
    // What the daemon parks a feed for, and what it asks of the last retry (refund-rules
    // c3.4): a deferred ORDER_NOT_FOUND is counted; pinned, it is not deferred any more,
    // and a replay of the pinned answer is not either, even once the order exists.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = dir.path().join("feed.xml");
    std::fs::write(
        &feed,
        format!(
            "{FEED_HEAD}{}{}{}</AmazonEnvelope>\n",
            principal_refund(1, "111-0000008-0000008", "1.00"),
            principal_refund(2, "111-0000009-0000009", "2.00"),
            keyless_message(3, "1.00")
        ),
    )
    .expect("write feed");
    let first = pipeline::process_file(&mut context, &source(&feed, Some("c-1"))).expect("first");
    assert_eq!(first.deferred, Some(2));
    assert_eq!(
        codes(&first.outcome),
        [(1, Code::OrderNotFound), (2, Code::OrderNotFound)]
    );
    // A recovered run re-emits the stored report, which cannot tell: the report decides.
    let recovered =
        pipeline::process_file(&mut context, &source(&feed, Some("c-1"))).expect("recovered");
    assert!(recovered.recovered);
    assert_eq!(recovered.deferred, None);
    assert!(pipeline::lists_order_not_found(&recovered.outcome));

    context.rules.pin_order_not_found = true;
    let last = pipeline::process_file(&mut context, &source(&feed, Some("c-2"))).expect("last");
    context.rules.pin_order_not_found = false;
    assert_eq!(last.deferred, Some(0));
    assert_eq!(last.outcome.duplicate_of, Some(first.outcome.feed_id));
    assert_eq!(
        codes(&last.outcome),
        [
            (1, Code::OrderNotFound),
            (2, Code::OrderNotFound),
            (3, Code::DuplicateAdjustment)
        ]
    );
    for result in &last.outcome.results[..2] {
        assert!(result.description.contains("now final"), "{result}");
    }

    // Order 9 is imported late: the same messages keep their pinned answer.
    let report = std::fs::read_to_string(Path::new(DATA).join("orders.txt")).expect("orders");
    let header = report.lines().next().expect("header");
    let line = report
        .lines()
        .find(|l| l.starts_with("111-0000001-0000001\t10000000000001"))
        .expect("order line")
        .replace("111-0000001-0000001", "111-0000009-0000009");
    let rows = import::parse_order_report(&format!("{header}\n{line}\n")).expect("parse");
    context
        .store
        .as_store()
        .import_orders(&merchant(), &rows)
        .expect("import");
    let replay = pipeline::process_file(&mut context, &source(&feed, Some("c-3"))).expect("replay");
    assert_eq!(replay.deferred, Some(0));
    assert_eq!(codes(&replay.outcome), codes(&last.outcome));
    assert!(
        replay.outcome.results[1]
            .description
            .contains("already rejected"),
        "{}",
        replay.outcome.results[1]
    );
    let order = &context
        .store
        .as_store()
        .orders(None, "111-0000009-0000009")
        .expect("order")[0];
    assert_eq!(
        order.items[0]
            .refunded
            .get("Principal")
            .map_or("0.00", String::as_str),
        "0.00",
        "nothing applied"
    );
}

#[test]
fn the_same_bytes_again_retry_the_orders_that_were_not_found() {
    // refund-rules c3.4: ORDER_NOT_FOUND is often an order report not imported yet, and its
    // fix says to resend the message unchanged. A byte-identical copy of a feed with such a
    // result is processed again (default skip policy); one without is a DUPLICATE_FEED.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let feed = dir.path().join("feed.xml");
    std::fs::write(
        &feed,
        format!(
            "{FEED_HEAD}{}{}</AmazonEnvelope>\n",
            keyless_message(1, "1.00"),
            principal_refund(2, "111-0000009-0000009", "3.00")
        ),
    )
    .expect("write feed");
    let first = pipeline::process_file(&mut context, &source(&feed, None)).expect("first");
    assert_eq!(codes(&first.outcome), vec![(2, Code::OrderNotFound)]);

    // The order report arrives; the very same file is dropped again.
    let report = std::fs::read_to_string(Path::new(DATA).join("orders.txt")).expect("orders");
    let header = report.lines().next().expect("header");
    let line = report
        .lines()
        .find(|l| l.starts_with("111-0000001-0000001\t10000000000001"))
        .expect("order line")
        .replace("111-0000001-0000001", "111-0000009-0000009");
    let rows = import::parse_order_report(&format!("{header}\n{line}\n")).expect("parse");
    context
        .store
        .as_store()
        .import_orders(&merchant(), &rows)
        .expect("import");
    let again = pipeline::process_file(&mut context, &source(&feed, None)).expect("again");
    assert_eq!(again.outcome.duplicate_of, Some(first.outcome.feed_id));
    assert_eq!(
        codes(&again.outcome),
        vec![(1, Code::DuplicateAdjustment)],
        "message 1 is not refunded twice; message 2 applies now"
    );
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "1.00"
    );
    let order = &context
        .store
        .as_store()
        .orders(None, "111-0000009-0000009")
        .expect("order")[0];
    assert_eq!(order.items[0].refunded["Principal"], "3.00");

    // A feed whose run left nothing for later is skipped when it comes again.
    let clean = dir.path().join("clean.xml");
    std::fs::write(
        &clean,
        format!(
            "{FEED_HEAD}{}</AmazonEnvelope>\n",
            keyless_message(5, "2.00")
        ),
    )
    .expect("write feed");
    let first = pipeline::process_file(&mut context, &source(&clean, None)).expect("clean");
    assert_eq!(codes(&first.outcome), vec![]);
    let again = pipeline::process_file(&mut context, &source(&clean, None)).expect("again");
    assert_eq!(codes(&again.outcome), vec![(0, Code::DuplicateFeed)]);
    // The warning is the feed's (MessageID 0), not a message's: no message was processed,
    // so none counts as a message with a warning (before: 1 with a warning of 0 processed).
    assert_eq!(
        (
            again.outcome.messages_processed,
            again.outcome.messages_successful,
            again.outcome.messages_with_error,
            again.outcome.messages_with_warning
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "3.00"
    );
}

/// Processes `copy`, another spelling of a feed already applied whose one message refunded
/// order 111-0000001-0000001, and checks that it is recognised: its message a duplicate,
/// the order's Principal still `refunded`.
fn process_recognised_copy(
    context: &mut Context,
    copy: &Path,
    refunded: &str,
) -> pipeline::Processed {
    let processed = pipeline::process_file(context, &source(copy, None)).expect("copy");
    assert_eq!(
        codes(&processed.outcome),
        vec![(1, Code::DuplicateAdjustment)]
    );
    assert_eq!(principal_refunded(context, "111-0000001-0000001"), refunded);
    processed
}

#[test]
fn a_re_exported_feed_without_keys_is_recognised_and_not_refunded_again() {
    // refund-rules c3.2: an item without MerchantAdjustmentItemID is keyed by the feed's
    // canonical content, its MessageID and its position.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let write = |name: &str, xml: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, xml).expect("write feed");
        path
    };
    let first = write(
        "first.xml",
        format!(
            "{FEED_HEAD}{}</AmazonEnvelope>\n",
            keyless_message(1, "5.00")
        ),
    );
    let processed = pipeline::process_file(&mut context, &source(&first, None)).expect("first");
    assert_eq!(codes(&processed.outcome), vec![]);
    // The same feed exported again: other bytes (a comment, whitespace, 5.0 for 5.00).
    let again = write(
        "again.xml",
        format!(
            "{FEED_HEAD}<!-- exported 2026-11-30 -->\n  {}</AmazonEnvelope>\n\n",
            keyless_message(1, " 5.0 ")
        ),
    );
    let processed = process_recognised_copy(&mut context, &again, "5.00");
    assert_eq!(processed.outcome.duplicate_of, None, "other bytes");
    let warning = &processed.outcome.results[0];
    assert!(
        warning.description.contains("none given")
            && !warning.element.contains("MerchantAdjustmentItemID"),
        "{warning:?}"
    );
    // A feed of other content with the same first message is new: its refund applies, with
    // a review warning that it repeats the first feed's (refund-rules c3.2).
    let other = write(
        "other.xml",
        format!(
            "{FEED_HEAD}{}{}</AmazonEnvelope>\n",
            keyless_message(1, "5.00"),
            keyless_message(2, "1.00")
        ),
    );
    let processed = pipeline::process_file(&mut context, &source(&other, None)).expect("other");
    assert_eq!(
        codes(&processed.outcome),
        vec![(1, Code::PossibleResubmission)]
    );
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "11.00"
    );
    // The adjustment records keep no key of their own (none was given).
    let order = &context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order")[0];
    assert!(
        order
            .adjustments
            .iter()
            .all(|a| a.merchant_adjustment_item_id.is_none()),
        "{:?}",
        order.adjustments
    );
}

#[test]
fn a_re_export_in_another_component_order_or_header_is_recognised_too() {
    // The components of a list in another order, without the schema hints of the first
    // file, under another DocumentVersion: the same adjustments.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let message = |components: &str| {
        format!(
            "<Message><MessageID>1</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\
             <AdjustedItem><AmazonOrderItemCode>10000000000001</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments>{components}</ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>"
        )
    };
    let principal =
        "<Component><Type>Principal</Type><Amount currency=\"USD\">2.00</Amount></Component>";
    let tax = "<Component><Type>Tax</Type><Amount currency=\"USD\">0.10</Amount></Component>";
    let first = dir.path().join("first.xml");
    let hinted = FEED_HEAD.replace(
        "<AmazonEnvelope>",
        "<AmazonEnvelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:noNamespaceSchemaLocation=\"amzn-envelope.xsd\">",
    );
    let body = message(&format!("{principal}{tax}"));
    std::fs::write(&first, format!("{hinted}{body}</AmazonEnvelope>\n")).expect("write");
    let processed = pipeline::process_file(&mut context, &source(&first, None)).expect("first");
    assert_eq!(codes(&processed.outcome), vec![]);
    let again = dir.path().join("again.xml");
    let head = FEED_HEAD.replace(">1.01<", ">1.02<");
    let body = message(&format!("{tax}{principal}"));
    std::fs::write(&again, format!("{head}{body}</AmazonEnvelope>\n")).expect("write");
    process_recognised_copy(&mut context, &again, "2.00");
}

#[test]
fn a_copy_of_a_feed_keyed_by_an_earlier_build_is_recognised() {
    // Builds before version 2 of the canonical form derived the keys of items without a
    // MerchantAdjustmentItemID from the version 1 digest: a store they wrote holds those.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let xml = format!(
        "{FEED_HEAD}{}</AmazonEnvelope>\n",
        keyless_message(1, "5.00")
    );
    let first = dir.path().join("first.xml");
    std::fs::write(&first, &xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&first, None)).expect("first");
    assert_eq!(codes(&processed.outcome), vec![]);
    // Rewrite the recorded key as an earlier build wrote it.
    let digests = adjustd::canon::content_digests(xml.as_bytes()).expect("digests");
    let db = rusqlite::Connection::open(dir.path().join("store.db")).expect("open store");
    let rewritten = db
        .execute(
            "UPDATE idempotency_keys SET key = replace(key, ?1, ?2)",
            [&digests.current[..32], &digests.earlier[..32]],
        )
        .expect("rewrite keys");
    assert_eq!(rewritten, 1);
    drop(db);
    // A copy exported again (a comment more) finds the earlier build's key.
    let again = dir.path().join("again.xml");
    std::fs::write(
        &again,
        xml.replace("<MessageType>", "<!-- again --><MessageType>"),
    )
    .expect("write feed");
    process_recognised_copy(&mut context, &again, "5.00");
}

#[test]
fn a_report_lists_at_most_max_results_and_says_how_many_it_left_out() {
    // Every message names an order that does not exist: one error each.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let messages = MAX_RESULTS + 10;
    let mut xml = String::from(FEED_HEAD);
    for id in 1..=messages {
        xml.push_str(&principal_refund(id, "999-0000000-0000000", "0.01"));
    }
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.path().join("all-bad.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    let outcome = &processed.outcome;
    assert_eq!(outcome.messages_processed, messages as u64);
    assert_eq!(outcome.messages_with_error, messages as u64);
    assert_eq!(outcome.results.len(), MAX_RESULTS + 1);
    let last = outcome.results.last().expect("results");
    assert_eq!(
        (last.message_id.get(), last.code),
        (0, Code::ResultsOmitted)
    );
    let first_omitted = MAX_RESULTS + 1;
    assert!(
        last.description.starts_with(&format!(
            "10 more results are not listed (10 errors from message {first_omitted} on)"
        )),
        "{last:?}"
    );
    let json = std::fs::read_to_string(&processed.json_report).expect("report");
    assert!(json.contains("RESULTS_OMITTED"));
}

#[test]
fn a_message_with_more_results_than_a_report_lists_shows_the_first_ones() {
    // Message 1 has two problems more than a report lists, message 2 has one. Before the
    // fix neither message 1's problems nor the truth about where the omission starts were
    // in the report: it listed message 2's problem and said that everything "from message
    // 1 on" was left out.
    let max = MAX_RESULTS;
    let problem = |message: u64, n: usize| {
        Problem::new(
            Code::SchemaInvalid,
            MessageId::new(message).expect("a MessageID"),
            format!("Message/OrderAdjustment/x[{n}]"),
            None,
            "unexpected element <x>",
            "Remove it.",
        )
    };
    let mut tally = Tally::default();
    tally.add(false, (1..=max + 2).map(|n| problem(1, n)).collect());
    tally.add(false, vec![problem(2, 1)]);
    let outcome = tally.into_outcome(1, "feed.xml", "hash", None, FeedStatus::Complete, None);
    assert_eq!(
        (outcome.messages_processed, outcome.messages_with_error),
        (2, 2)
    );
    assert_eq!(outcome.results.len(), max + 1);
    assert!(
        outcome.results[..max]
            .iter()
            .enumerate()
            .all(|(index, p)| p.message_id.get() == 1
                && p.element == format!("Message/OrderAdjustment/x[{}]", index + 1)),
        "the list is message 1's first results"
    );
    let last = &outcome.results[max];
    assert_eq!(
        (last.message_id.get(), last.code),
        (0, Code::ResultsOmitted)
    );
    assert!(
        last.description.starts_with(&format!(
            "3 more results are not listed (3 errors from result {} of message 1 on): a report lists at most {max} results, errors before warnings;",
            max + 1
        )),
        "{last:?}"
    );
}

#[test]
fn errors_after_a_full_list_of_warnings_take_the_place_of_the_latest_warnings() {
    // A cumulative resend: MAX_RESULTS lines applied before (a DUPLICATE_ADJUSTMENT warning
    // each), then an over-refund, a warning and another error. Before, the list was full
    // of warnings and the errors were not listed at all, though the counts had them.
    let max = MAX_RESULTS;
    let problem = |code: Code, message: usize| {
        Problem::new(
            code,
            MessageId::new(message as u64).expect("a MessageID"),
            "Message/OrderAdjustment",
            None,
            "what",
            "fix",
        )
    };
    let mut tally = Tally::default();
    for message in 1..=max {
        tally.add(true, vec![problem(Code::DuplicateAdjustment, message)]);
    }
    tally.add(
        false,
        vec![problem(Code::ComponentExceedsRemaining, max + 1)],
    );
    tally.add(true, vec![problem(Code::DuplicateAdjustment, max + 2)]);
    tally.add(
        false,
        vec![problem(Code::ComponentExceedsRemaining, max + 3)],
    );
    let outcome = tally.into_outcome(1, "feed.xml", "hash", None, FeedStatus::Complete, None);
    assert_eq!(outcome.messages_with_error, 2);
    assert_eq!(outcome.results.len(), max + 1);
    let listed: Vec<(u64, Code)> = outcome.results[..max]
        .iter()
        .map(|p| (p.message_id.get(), p.code))
        .collect();
    let mut expected: Vec<(u64, Code)> = (1..=max as u64 - 2)
        .map(|message| (message, Code::DuplicateAdjustment))
        .collect();
    expected.push((max as u64 + 1, Code::ComponentExceedsRemaining));
    expected.push((max as u64 + 3, Code::ComponentExceedsRemaining));
    assert!(listed == expected, "errors listed in document order");
    let last = &outcome.results[max];
    assert_eq!(last.code, Code::ResultsOmitted);
    assert!(
        last.description.starts_with(&format!(
            "3 more results are not listed (3 warnings from message {} on)",
            max - 1
        )),
        "{last:?}"
    );
    // Once no warning is left to give way, later errors are left out, named apart.
    let mut tally = Tally::default();
    for message in 1..=max + 1 {
        tally.add(
            false,
            vec![problem(Code::ComponentExceedsRemaining, message)],
        );
    }
    tally.add(true, vec![problem(Code::DuplicateAdjustment, max + 2)]);
    let outcome = tally.into_outcome(1, "feed.xml", "hash", None, FeedStatus::Complete, None);
    let last = outcome.results.last().expect("results");
    assert!(
        last.description.starts_with(&format!(
            "2 more results are not listed (1 error from message {} on, 1 warning from message {} on)",
            max + 1,
            max + 2
        )),
        "{last:?}"
    );
}

#[test]
fn later_messages_see_earlier_ones_across_chunks() {
    // 5,000 one-cent refunds of a Principal charged 40.00: the first 4,000 apply, the rest
    // exceed what remains. The pipeline plans in chunks of 4,096 messages, so the cap is
    // reached in the second chunk only if the snapshot carries over.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let mut xml = String::from(FEED_HEAD);
    for id in 1..=5000 {
        xml.push_str(&keyless_message(id, "0.01"));
    }
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.path().join("many.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(processed.outcome.messages_processed, 5000);
    assert_eq!(processed.outcome.messages_successful, 4000);
    assert_eq!(processed.outcome.messages_with_error, 1000);
    // Each applied message repeats the one before under a new (derived) key.
    assert_eq!(processed.outcome.messages_with_warning, 3999);
    let first_error = processed
        .outcome
        .results
        .iter()
        .find(|p| p.is_error())
        .expect("errors");
    assert_eq!(
        (first_error.message_id.get(), first_error.code),
        (4001, Code::ComponentExceedsRemaining)
    );
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "40.00"
    );
}

#[test]
fn idempotency_keys_are_remembered_across_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    keys_across_chunks(&mut context(dir.path()), dir.path());
}

#[test]
fn idempotency_keys_are_remembered_across_chunks_on_postgres() {
    let Some(db) = crate::store_pg::TestDb::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    keys_across_chunks(&mut context_on(dir.path(), &db.url), dir.path());
}

fn keys_across_chunks(context: &mut Context, dir: &Path) {
    // Messages 1 to 4,200 refund one cent each under their own key: 4,000 apply, the rest
    // exceed what remains and pin that rejection. Then, in the second chunk of 4,096, come
    // a replay of message 1 (first chunk), the key of message 2 with other content, and a
    // replay of the rejected message 4,050 (first chunk). The engine's snapshot is dropped
    // after each chunk, so these answers come from what the transaction wrote.
    let mut xml = String::from(FEED_HEAD);
    let mut message = |id: u32, key: u32, amount: &str| {
        let _ = writeln!(
            xml,
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\
             <AdjustedItem><AmazonOrderItemCode>10000000000001</AmazonOrderItemCode>\
             <MerchantAdjustmentItemID>K{key}</MerchantAdjustmentItemID><AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">{amount}</Amount></Component>\
             </ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>"
        );
    };
    for id in 1..=4200 {
        message(id, id, "0.01");
    }
    message(4201, 1, "0.01");
    message(4202, 2, "0.02");
    message(4203, 4050, "0.01");
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.join("keys.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(context, &source(&feed, None)).expect("process");
    assert_eq!(processed.outcome.messages_successful, 4001);
    let late: Vec<_> = processed
        .outcome
        .results
        .iter()
        .filter(|p| p.message_id.get() > 4200)
        .collect();
    let late_codes: Vec<(u64, Code)> = late.iter().map(|p| (p.message_id.get(), p.code)).collect();
    assert_eq!(
        late_codes,
        [
            (4201, Code::DuplicateAdjustment),
            (4202, Code::IdempotencyConflict),
            (4203, Code::ComponentExceedsRemaining),
        ]
    );
    for problem in &late {
        assert!(
            problem.description.contains("earlier in this feed"),
            "{}",
            problem.description
        );
    }
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    assert_eq!(orders[0].adjustments.len(), 4000);
}

#[test]
fn an_order_named_by_merchant_order_id_sees_what_earlier_chunks_wrote() {
    // Chunks of one message, so the store prefetches each next message's order while the
    // current one is written. Message 2 names the order by its MerchantOrderID, which the
    // prefetch cannot tell is the order message 1 refunds: the store must still give the
    // engine the state after message 1, not the state before the feed.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    context.chunk_messages = 1;
    let report = "order-id\torder-item-id\tmerchant-order-id\tsku\tquantity-purchased\tcurrency\titem-price\n\
                  300-0000001-0000001\t30000000000001\tPO-77\tSKU-P\t1\tUSD\t40.00\n";
    let rows = import::parse_order_report(report).expect("report");
    context
        .store
        .as_store()
        .import_orders(&merchant(), &rows)
        .expect("import");
    let mut xml = String::from(FEED_HEAD);
    for (id, order, amount) in [
        (
            1,
            "<AmazonOrderID>300-0000001-0000001</AmazonOrderID>",
            "30.00",
        ),
        (2, "<MerchantOrderID>PO-77</MerchantOrderID>", "20.00"),
        (3, "<MerchantOrderID>PO-77</MerchantOrderID>", "10.00"),
    ] {
        let _ = writeln!(
            xml,
            "<Message><MessageID>{id}</MessageID><OrderAdjustment>{order}\
             <AdjustedItem><AmazonOrderItemCode>30000000000001</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">{amount}</Amount></Component>\
             </ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>"
        );
    }
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.path().join("by-merchant-id.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [(2, Code::ComponentExceedsRemaining)]
    );
    assert_eq!(processed.outcome.messages_successful, 2);
    assert_eq!(
        principal_refunded(&mut context, "300-0000001-0000001"),
        "40.00"
    );
}

#[test]
fn units_returned_in_an_earlier_chunk_count_for_a_later_one() {
    // As the cancellation test below, for Quantity (returned units): item 10000000000003
    // has 3 shipped; messages 1 and 3 return 2 each, so message 3 finds only 1 returnable,
    // though its order was read ahead before the feed wrote anything.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    context.chunk_messages = 1;
    let mut xml = String::from(FEED_HEAD);
    for (id, quantity) in [(1, Some(2)), (2, None), (3, Some(2))] {
        let quantity = quantity.map_or(String::new(), |q| format!("<Quantity>{q}</Quantity>"));
        let _ = writeln!(
            xml,
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>111-0000002-0000002</AmazonOrderID>\
             <AdjustedItem><AmazonOrderItemCode>10000000000003</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">1.00</Amount></Component>\
             </ItemPriceAdjustments>{quantity}</AdjustedItem></OrderAdjustment></Message>"
        );
    }
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.path().join("returns.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [(3, Code::QuantityExceedsShipped)],
        "{:?}",
        processed.outcome.results
    );
    assert!(
        processed.outcome.results[0]
            .description
            .contains("already returned 2"),
        "{:?}",
        processed.outcome.results[0]
    );
}

#[test]
fn a_cancellation_in_an_earlier_chunk_counts_for_a_later_one() {
    // Chunks of one message: message 3's order is read ahead, before the feed, while
    // message 2 is written, and must be brought up to date with what messages 1 and 2 wrote.
    // Item 10000000000001: 2 ordered, 1 shipped, so one unit can be cancelled.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    context.chunk_messages = 1;
    let mut xml = String::from(FEED_HEAD);
    for (id, quantity, amount) in [(1, 1, "0.00"), (2, 0, "1.00"), (3, 1, "0.00")] {
        let cancel = if quantity > 0 {
            format!("<QuantityCancelled>{quantity}</QuantityCancelled>")
        } else {
            String::new()
        };
        let (reason, prices) = if quantity > 0 {
            ("NoInventory", String::new())
        } else {
            (
                "CustomerReturn",
                format!(
                    "<ItemPriceAdjustments><Component><Type>Principal</Type>\
                     <Amount currency=\"USD\">{amount}</Amount></Component></ItemPriceAdjustments>"
                ),
            )
        };
        let _ = writeln!(
            xml,
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\
             <AdjustedItem><AmazonOrderItemCode>10000000000001</AmazonOrderItemCode><AdjustmentReason>{reason}</AdjustmentReason>\
             {prices}{cancel}</AdjustedItem></OrderAdjustment></Message>"
        );
    }
    xml.push_str("</AmazonEnvelope>\n");
    let feed = dir.path().join("cancel.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [(3, Code::CancelExceedsUnshipped)]
    );
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "1.00"
    );
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    assert_eq!(orders[0].items[0].quantity_cancelled, 1);
}

#[test]
fn a_store_problem_on_a_promotion_names_the_promotion_element_it_is_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    // Item 10000000000002 had a 5.00 item promotion and no shipping promotion: reversing a
    // shipping promotion in the second PromotionAdjustments exceeds what remains.
    let feed = dir.path().join("feed.xml");
    let body = "<Message><MessageID>1</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\n\
         <AdjustedItem><AmazonOrderItemCode>10000000000002</AmazonOrderItemCode><AdjustmentReason>CustomerReturn</AdjustmentReason>\n\
         <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">10.00</Amount></Component></ItemPriceAdjustments>\n\
         <PromotionAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">-2.00</Amount></Component></PromotionAdjustments>\n\
         <PromotionAdjustments>\n\
         <Component><Type>Shipping</Type>\n\
         <Amount currency=\"USD\">-1.00</Amount></Component></PromotionAdjustments>\n\
         </AdjustedItem></OrderAdjustment></Message>\n</AmazonEnvelope>\n";
    std::fs::write(&feed, format!("{FEED_HEAD}{body}")).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [(1, Code::ComponentExceedsRemaining)]
    );
    let problem = &processed.outcome.results[0];
    assert_eq!(
        problem.element,
        "Message/OrderAdjustment/AdjustedItem[1]/PromotionAdjustments[2]/Component[1]/Amount",
        "{problem}"
    );
    // The head is 3 lines; the Amount is on the 7th line of the body.
    assert_eq!(problem.position.map(|p| p.line), Some(9), "{problem}");
}

#[test]
fn promotions_of_one_type_in_several_blocks_add_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    promotions_in_several_blocks(&mut context(dir.path()), dir.path());
}

#[test]
fn promotions_of_one_type_in_several_blocks_add_up_on_postgres() {
    let Some(db) = crate::store_pg::TestDb::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    promotions_in_several_blocks(&mut context_on(dir.path(), &db.url), dir.path());
}

/// One `PromotionAdjustments` per promotion (feed-format §1.2: 0..unbounded), each
/// reversing its part of the Principal discount: the amounts add up in the caps, the
/// store's totals and the adjustment's amounts, and the order of the blocks does not change
/// the payload hash.
fn promotions_in_several_blocks(context: &mut Context, dir: &Path) {
    // Item 10000000000002: Principal 15.00 charged with a 5.00 item promotion.
    let message = |id: u32, key: &str, principal: &str, promotions: &[&str]| {
        let mut blocks = String::new();
        for amount in promotions {
            let _ = writeln!(
                blocks,
                "<PromotionAdjustments><Component><Type>Principal</Type>\
                 <Amount currency=\"USD\">{amount}</Amount></Component></PromotionAdjustments>"
            );
        }
        format!(
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\n\
             <AdjustedItem><AmazonOrderItemCode>10000000000002</AmazonOrderItemCode>\
             <MerchantAdjustmentItemID>{key}</MerchantAdjustmentItemID><AdjustmentReason>CustomerReturn</AdjustmentReason>\n\
             <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">{principal}</Amount></Component></ItemPriceAdjustments>\n\
             {blocks}</AdjustedItem></OrderAdjustment></Message>\n"
        )
    };
    let feed = dir.join("promotions.xml");
    let xml = [
        FEED_HEAD.to_owned(),
        message(1, "P-1", "10.00", &["-2.00", "-1.00"]),
        // The same adjustment with its promotions the other way round: a replay.
        message(2, "P-1", "10.00", &["-1.00", "-2.00"]),
        // 3.00 of the 5.00 discount is reversed: another 2.01 is too much.
        message(3, "P-2", "3.00", &["-1.50", "-0.51"]),
        "</AmazonEnvelope>\n".to_owned(),
    ]
    .concat();
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [
            (2, Code::DuplicateAdjustment),
            (3, Code::ComponentExceedsRemaining)
        ],
        "{:#?}",
        processed.outcome.results
    );
    assert_eq!(
        processed.outcome.results[1].element,
        "Message/OrderAdjustment/AdjustedItem[1]/PromotionAdjustments[2]/Component[1]/Amount"
    );
    let orders = context
        .store
        .as_store()
        .orders(None, "111-0000001-0000001")
        .expect("order");
    let item = &orders[0].items[1];
    assert_eq!(item.amazon_order_item_code, "10000000000002");
    assert_eq!(item.refunded["Promotion:Principal"], "-3.00");
    assert_eq!(item.refunded["Principal"], "10.00");
    assert_eq!(orders[0].adjustments.len(), 1);
    let amounts: Vec<(&str, &str)> = orders[0].adjustments[0]
        .amounts
        .iter()
        .map(|(c, a)| (c.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        amounts,
        [("Principal", "10.00"), ("Promotion:Principal", "-3.00")]
    );
}

#[test]
fn a_validation_failure_of_one_item_lists_the_other_items_as_linked_in_the_report() {
    // refund-rules §c4 step 16: item 1 is fine, item 2 fails validation; the report says
    // that item 1 was not applied either, in document order, and nothing is applied.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let item = |code: &str, key: &str, amount: &str| {
        format!(
            "<AdjustedItem><AmazonOrderItemCode>{code}</AmazonOrderItemCode>\
             <MerchantAdjustmentItemID>{key}</MerchantAdjustmentItemID><AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments><Component><Type>Principal</Type><Amount currency=\"USD\">{amount}</Amount></Component></ItemPriceAdjustments>\
             </AdjustedItem>\n"
        )
    };
    let message = |id: u32, second: &str| {
        format!(
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>111-0000001-0000001</AmazonOrderID>\n{}{}</OrderAdjustment></Message>\n",
            item("10000000000001", "L-1", "1.00"),
            item("10000000000002", "L-2", second)
        )
    };
    let feed = dir.path().join("linked.xml");
    std::fs::write(
        &feed,
        format!("{FEED_HEAD}{}</AmazonEnvelope>\n", message(1, "-1.00")),
    )
    .expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [
            (1, Code::LinkedItemFailed),
            (1, Code::NegativeRefundComponent)
        ]
    );
    assert_eq!(processed.outcome.messages_with_error, 1);
    let linked = &processed.outcome.results[0];
    assert_eq!(linked.element, "Message/OrderAdjustment/AdjustedItem[1]");
    assert_eq!(
        linked.amazon_order_item_code.as_deref(),
        Some("10000000000001")
    );
    assert_eq!(
        linked.amazon_order_id.as_deref(),
        Some("111-0000001-0000001")
    );
    assert_eq!(linked.position.map(|p| p.line), Some(4), "{linked}");
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "0.00"
    );
    // Not pinned: the corrected message applies under the same keys.
    let fixed = dir.path().join("fixed.xml");
    std::fs::write(
        &fixed,
        format!("{FEED_HEAD}{}</AmazonEnvelope>\n", message(1, "1.00")),
    )
    .expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&fixed, None)).expect("process");
    assert_eq!(codes(&processed.outcome), []);
    assert_eq!(processed.outcome.messages_successful, 1);
    assert_eq!(
        principal_refunded(&mut context, "111-0000001-0000001"),
        "1.00"
    );
}

#[test]
fn without_a_currency_attribute_precision_in_the_order_currency_comes_before_fee_and_net() {
    // refund-rules c4: AMOUNT_PRECISION (step 3) before RESTOCKING_FEE_EXCEEDS_LIMIT (7) and
    // NET_NOT_CREDIT (8). Without a currency attribute the validator cannot know the
    // precision; the pipeline asks the order once it is loaded.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let report = "order-id\torder-item-id\tsku\tquantity-purchased\tquantity-shipped\tcurrency\titem-price\n\
                  400-0000001-0000001\t40000000000001\tSKU-J\t1\t1\tJPY\t1500\n";
    let rows = import::parse_order_report(report).expect("report");
    context
        .store
        .as_store()
        .import_orders(&merchant(), &rows)
        .expect("import");
    let message = |id: u32, order: &str, item: &str, amounts: &[(&str, &str)]| {
        let mut components = String::new();
        for (kind, amount) in amounts {
            let _ = write!(
                components,
                "<Component><Type>{kind}</Type><Amount>{amount}</Amount></Component>"
            );
        }
        format!(
            "<Message><MessageID>{id}</MessageID><OrderAdjustment><AmazonOrderID>{order}</AmazonOrderID>\n\
             <AdjustedItem><AmazonOrderItemCode>{item}</AmazonOrderItemCode><MerchantAdjustmentItemID>K-{id}</MerchantAdjustmentItemID>\
             <AdjustmentReason>CustomerReturn</AdjustmentReason>\n\
             <ItemPriceAdjustments>{components}</ItemPriceAdjustments></AdjustedItem></OrderAdjustment></Message>\n"
        )
    };
    let (jpy, jpy_item) = ("400-0000001-0000001", "40000000000001");
    let (usd, usd_item) = ("111-0000002-0000002", "10000000000003");
    let xml = [
        FEED_HEAD.to_owned(),
        // Fractional yen: the fee rule would suggest "at most 499.7".
        message(
            1,
            jpy,
            jpy_item,
            &[("Principal", "999.5"), ("RestockingFee", "-500")],
        ),
        // A tenth of a cent.
        message(
            2,
            usd,
            usd_item,
            &[("Principal", "20.00"), ("RestockingFee", "-10.005")],
        ),
        // Net not a credit, and fractional yen.
        message(
            3,
            jpy,
            jpy_item,
            &[("Principal", "0.5"), ("RestockingFee", "-1")],
        ),
        // Precise amounts: the fee rule stands.
        message(
            4,
            usd,
            usd_item,
            &[("Principal", "20.00"), ("RestockingFee", "-10.01")],
        ),
        // No such order: the validator's answer stands too.
        message(
            5,
            "999-9999999-9999999",
            usd_item,
            &[("Principal", "1.5"), ("RestockingFee", "-1")],
        ),
        "</AmazonEnvelope>\n".to_owned(),
    ]
    .concat();
    let feed = dir.path().join("precision.xml");
    std::fs::write(&feed, xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [
            (1, Code::AmountPrecision),
            (2, Code::AmountPrecision),
            (3, Code::AmountPrecision),
            (4, Code::RestockingFeeExceedsLimit),
            (5, Code::RestockingFeeExceedsLimit),
        ],
        "{:#?}",
        processed.outcome.results
    );
    let first = &processed.outcome.results[0];
    assert!(
        first.description.contains("999.5") && first.description.contains("JPY"),
        "{first}"
    );
    assert_eq!(
        first.element,
        "Message/OrderAdjustment/AdjustedItem[1]/ItemPriceAdjustments/Component[1]/Amount"
    );
    assert_eq!(processed.outcome.messages_with_error, 5);
}

/// The element a problem names, as written in `feed`: the text at the problem's line and
/// column must open that element (`.../Amount/@currency` is an attribute of `<Amount`).
fn element_at_its_position(feed: &str, problem: &adjustd::problem::Problem) -> Result<(), String> {
    let position = problem.position.ok_or("no position")?;
    let line = feed
        .lines()
        .nth(position.line as usize - 1)
        .ok_or("no such line")?;
    let at: String = line.chars().skip(position.column as usize - 1).collect();
    let path = problem.element.trim_end_matches("/@currency");
    let name = path.rsplit('/').next().unwrap_or(path);
    let name = name.split('[').next().unwrap_or(name);
    if at.starts_with(&format!("<{name}>")) || at.starts_with(&format!("<{name} ")) {
        Ok(())
    } else {
        Err(format!("line {position} is {at:?}, not <{name}>"))
    }
}

#[test]
fn every_problem_found_against_the_store_points_at_the_element_it_names() {
    // DESIGN: each error names the element and its line. Every element on a line of its
    // own, indented, so the Message, the AdjustedItem and their children all differ.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context(dir.path());
    let message = |id: u32, order: &str, item: &str, key: Option<&str>, tail: &str| {
        let key = key.map_or(String::new(), |key| {
            format!("      <MerchantAdjustmentItemID>{key}</MerchantAdjustmentItemID>\n")
        });
        format!(
            "  <Message>\n    <MessageID>{id}</MessageID>\n    <OrderAdjustment>\n      \
             <AmazonOrderID>{order}</AmazonOrderID>\n      <AdjustedItem>\n        \
             <AmazonOrderItemCode>{item}</AmazonOrderItemCode>\n  {key}        {tail}\n      \
             </AdjustedItem>\n    </OrderAdjustment>\n  </Message>\n"
        )
    };
    let refund = |amount: &str, currency: &str, after: &str| {
        format!(
            "<AdjustmentReason>CustomerReturn</AdjustmentReason>\n        <ItemPriceAdjustments>\n          \
             <Component><Type>Principal</Type>\n            <Amount currency=\"{currency}\">{amount}</Amount>\n          \
             </Component>\n        </ItemPriceAdjustments>{after}"
        )
    };
    let (order, item) = ("111-0000001-0000001", "10000000000001");
    let quantity = "\n        <Quantity>2</Quantity>";
    let cancel = "<AdjustmentReason>CustomerCancel</AdjustmentReason>\n        <QuantityCancelled>2</QuantityCancelled>";
    let xml = [
        FEED_HEAD.to_owned(),
        message(
            1,
            "111-9999999-9999999",
            item,
            None,
            &refund("1.00", "USD", ""),
        ),
        message(
            2,
            "111-0000003-0000003",
            "10000000000004",
            None,
            &refund("1.00", "USD", ""),
        ),
        message(3, order, "10000000000099", None, &refund("1.00", "USD", "")),
        message(4, order, item, None, cancel),
        message(5, order, item, None, &refund("1.00", "USD", quantity)),
        message(6, order, item, None, &refund("50.00", "USD", "")),
        message(7, order, item, None, &refund("1.00", "EUR", "")),
        // 15.00 Principal with a 5.00 promotion kept: more than the buyer paid.
        message(
            8,
            order,
            "10000000000002",
            None,
            &refund("15.00", "USD", ""),
        ),
        message(9, order, item, Some("POS-1"), &refund("1.00", "USD", "")),
        message(10, order, item, Some("POS-1"), &refund("1.00", "USD", "")),
        message(11, order, item, Some("POS-1"), &refund("2.00", "USD", "")),
        "</AmazonEnvelope>\n".to_owned(),
    ]
    .concat();
    let feed = dir.path().join("positions.xml");
    std::fs::write(&feed, &xml).expect("write feed");
    let processed = pipeline::process_file(&mut context, &source(&feed, None)).expect("process");
    assert_eq!(
        codes(&processed.outcome),
        [
            (1, Code::OrderNotFound),
            (2, Code::OrderNotAdjustable),
            (3, Code::ItemNotInOrder),
            (4, Code::CancelExceedsUnshipped),
            (5, Code::QuantityExceedsShipped),
            (6, Code::ComponentExceedsRemaining),
            (7, Code::CurrencyMismatch),
            (8, Code::ComponentExceedsRemaining),
            (10, Code::DuplicateAdjustment),
            (11, Code::IdempotencyConflict),
        ],
        "{:#?}",
        processed.outcome.results
    );
    let wrong: Vec<String> = processed
        .outcome
        .results
        .iter()
        .filter_map(|problem| {
            element_at_its_position(&xml, problem)
                .err()
                .map(|why| format!("{problem}\n    {why}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
