//! PostgreSQL store tests: the shared conformance suite of `store.rs` on PostgreSQL;
//! migrations (concurrent first start, refusal of a newer schema, readers that never
//! migrate); row locks between concurrent feeds; unique-constraint races between instances;
//! error classification; reconnection after the server drops or refuses connections; a
//! differential test that runs the same random feeds through the whole pipeline on SQLite
//! and PostgreSQL and compares reports and orders; a throughput probe. Each test runs in its own database
//! (`adjustd_t_<pid>_<n>`, dropped at the end). Without a reachable server the tests skip
//! with a message, unless `ADJUSTD_REQUIRE_POSTGRES=1` (CI), which makes them fail instead.
//! `ADJUSTD_TEST_PG_URL` names the maintenance database (default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Also hosts [`TestDb`] for `multi.rs`. Does not test the engine's rules one by one (the
//! engine tables do); the differential test checks both backends give the same answers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use adjustd::engine::{Change, Needs, NewAdjustment, Snapshot};
use adjustd::model::{
    AdjustmentReason, AmazonOrderId, Component, Currency, FulfillmentChannel, MerchantId,
    MessageId, OrderItemCode, OrderRef, PriceComponent, SellerId,
};
use adjustd::problem::Code;
use adjustd::store::postgres::PgStore;
use adjustd::store::{
    AnyStore, FeedDone, FeedStatus, NewFeed, OrderRow, ReportFolder, Store, StoreError,
};

/// The maintenance URL (a database we may connect to in order to create others).
pub fn maintenance_url() -> String {
    std::env::var("ADJUSTD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh database for one test, dropped (with its connections) when this is dropped.
pub struct TestDb {
    /// URL of the test database.
    pub url: String,
    name: String,
    admin: postgres::Client,
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// Creates a fresh database, or returns `None` (after saying so) when PostgreSQL is not
    /// reachable and not required.
    pub fn create() -> Option<TestDb> {
        let maintenance = maintenance_url();
        let mut config: postgres::Config = maintenance.parse().expect("ADJUSTD_TEST_PG_URL");
        config.connect_timeout(Duration::from_secs(3));
        let admin = match config.connect(postgres::NoTls) {
            Ok(client) => client,
            Err(error) => {
                let required = std::env::var("ADJUSTD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "PostgreSQL not reachable at {maintenance} and ADJUSTD_REQUIRE_POSTGRES=1: {error}"
                );
                eprintln!("skipping: PostgreSQL not reachable at {maintenance}: {error}");
                return None;
            }
        };
        let mut admin = admin;
        let name = format!(
            "adjustd_t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .expect("drop old test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let url = with_database(&maintenance, &name);
        Some(TestDb { url, name, admin })
    }

    /// A plain client on the test database, for checks behind the store's back.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to test database")
    }

    /// How many sessions on the test database wait for a lock now (on `watcher`, a
    /// [`TestDb::client`]).
    pub fn sessions_waiting_on_locks(watcher: &mut postgres::Client) -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0)
    }

    /// Builds the schema as version 1 left it, on `client` (a [`TestDb::client`]).
    pub fn make_version_1_schema(client: &mut postgres::Client) {
        client
            .batch_execute(include_str!(
                "../../src/store/migrations/postgres/0001_init.sql"
            ))
            .expect("version 1 schema");
        client
            .batch_execute(
                "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                     applied_at TEXT NOT NULL);
                 INSERT INTO schema_version VALUES (1, '0001_init', 'then');",
            )
            .expect("version 1 schema_version");
    }

    /// Reconnects the maintenance connection (after a server restart).
    pub fn reconnect_admin(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&maintenance_url(), postgres::NoTls) {
                Ok(client) => {
                    self.admin = client;
                    return;
                }
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "server not back: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Lets (or stops letting) clients connect to the test database.
    pub fn set_allow_connections(&mut self, allow: bool) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .expect("alter database");
    }

    /// Runs `sql` on the maintenance connection, with `{db}` standing for the test
    /// database's name.
    pub fn admin_sql(&mut self, sql: &str) {
        self.admin
            .batch_execute(&sql.replace("{db}", &self.name))
            .expect("administrator statement");
    }

    /// Terminates every other connection to the test database (as an administrator or a
    /// server restart would).
    pub fn terminate_connections(&mut self) -> i64 {
        let rows = self
            .admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .expect("terminate backends");
        i64::try_from(rows.len()).expect("row count")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// `url` with its database name replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    format!("{base}/{name}{query}")
}

macro_rules! pg_or_skip {
    () => {
        match TestDb::create() {
            Some(db) => db,
            None => return,
        }
    };
}

const ORDER: &str = "111-1111111-1111111";
const ORDER2: &str = "222-2222222-2222222";
const ITEM: &str = "12345678901234";

fn merchant() -> MerchantId {
    MerchantId::new("M1").expect("merchant")
}

fn order_id(id: &str) -> AmazonOrderId {
    AmazonOrderId::new(id).expect("order id")
}

fn item_code() -> OrderItemCode {
    OrderItemCode::new(ITEM).expect("item code")
}

fn principal() -> Component {
    Component::Price(PriceComponent::Principal)
}

fn row(order: &str, line: u32) -> OrderRow {
    OrderRow {
        line,
        amazon_order_id: order_id(order),
        merchant_order_id: None,
        item_code: item_code(),
        merchant_item_id: None,
        purchase_date: Some("2026-11-01T10:00:00Z".into()),
        sku: "SKU-1".into(),
        quantity_ordered: 2,
        quantity_shipped: Some(2),
        currency: Currency::from_code("USD"),
        charged: vec![
            (principal(), 1000),
            (Component::Price(PriceComponent::Tax), 80),
        ],
        channel: Some(FulfillmentChannel::Merchant),
    }
}

fn new_feed(hash: &str) -> NewFeed {
    NewFeed {
        merchant: Some(merchant()),
        file_name: format!("{hash}.xml"),
        content_hash: hash.to_owned(),
        claim_token: None,
        report_folder: ReportFolder::Outbox,
        recent_adjustments_since: None,
    }
}

fn done() -> FeedDone {
    FeedDone {
        status: FeedStatus::Complete,
        duplicate_of: None,
        messages_processed: 1,
        messages_successful: 1,
        messages_with_error: 0,
        messages_with_warning: 0,
        report_json: "{}".into(),
    }
}

fn refund(message: u64, order: &str, principal_minor: i64, key: Option<&str>) -> Change {
    Change::Adjust(NewAdjustment {
        message_id: MessageId::new(message).expect("message id"),
        amazon_order_id: order_id(order),
        item_code: item_code(),
        reason: AdjustmentReason::CustomerReturn,
        action: None,
        quantity_cancelled: 0,
        quantity: None,
        amounts: vec![(principal(), principal_minor)],
        key: key.map(|k| SellerId::new(k).expect("key")),
        payload_hash: format!("payload-{message}"),
    })
}

fn needs(orders: &[&str], keys: &[&str]) -> Needs {
    Needs {
        orders: orders
            .iter()
            .map(|o| OrderRef::Amazon(order_id(o)))
            .collect(),
        keys: keys
            .iter()
            .map(|k| SellerId::new(k).expect("key"))
            .collect(),
    }
}

fn refunded(snapshot: &Snapshot, order: &str) -> i64 {
    snapshot
        .order(&OrderRef::Amazon(order_id(order)))
        .expect("order loaded")
        .items[0]
        .components
        .get(&principal())
        .map_or(0, |c| c.refunded)
}

/// A store on `db` with ORDER and ORDER2 imported.
fn store_with_orders(db: &TestDb) -> PgStore {
    let mut store = PgStore::connect(&db.url).expect("connect");
    let summary = store
        .import_orders(&merchant(), &[row(ORDER, 2), row(ORDER2, 3)])
        .expect("import");
    assert_eq!(summary.orders_created, 2);
    store
}

/// Applies one refund of `minor` on ORDER in its own committed feed.
fn commit_refund(store: &mut PgStore, hash: &str, minor: i64) -> u64 {
    let mut tx = store.begin_feed(&new_feed(hash)).expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut snapshot)
        .expect("load");
    tx.apply(&merchant(), &[refund(1, ORDER, minor, None)])
        .expect("apply");
    let id = tx.feed_id();
    tx.commit(done()).expect("commit");
    id
}

/// qa11 F1, F2 (as `store::sqlite_loads_the_purchase_dates_an_older_build_stored`):
/// purchase-dates an older build let in load with the day it gave them, never failing the
/// load, except those it misread by the day as written (`PST`), which get their UTC day.
#[test]
fn pg_loads_the_purchase_dates_an_older_build_stored() {
    let db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    let mut client = db.client();
    for (order, text) in [
        (ORDER, "2026-11-30T23:30:00+00:00junk"),
        (ORDER2, "2026-11-01T20:00:00 PST"),
    ] {
        client
            .execute(
                "UPDATE orders SET purchase_date = $1 WHERE amazon_order_id = $2",
                &[&text, &order],
            )
            .expect("an older build's value");
    }
    let mut tx = store.begin_feed(&new_feed("legacy-dates")).expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs(&[ORDER, ORDER2], &[]), &mut snapshot)
        .expect("the load does not fail");
    let day = |order: &str| {
        snapshot
            .order(&OrderRef::Amazon(order_id(order)))
            .expect("loaded")
            .purchase_date
    };
    assert_eq!(day(ORDER), chrono::NaiveDate::from_ymd_opt(2026, 11, 30));
    assert_eq!(day(ORDER2), chrono::NaiveDate::from_ymd_opt(2026, 11, 2));
}

#[test]
fn migrations_create_the_schema_once_and_refuse_a_newer_one() {
    let db = pg_or_skip!();
    // Several instances starting at once on an empty database: one migrates, all succeed.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || PgStore::connect(&url).map(|_| ()))
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread").expect("concurrent connect");
    }
    let mut store = PgStore::connect(&db.url).expect("reconnect");
    assert_eq!(
        store.schema_version().expect("version"),
        adjustd::store::postgres::SCHEMA_VERSION
    );
    let mut client = db.client();
    let count: i64 = client
        .query_one("SELECT count(*) FROM schema_version", &[])
        .expect("count")
        .get(0);
    assert_eq!(
        count,
        adjustd::store::postgres::SCHEMA_VERSION,
        "each migration recorded exactly once"
    );
    client
        .execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 'x')",
            &[],
        )
        .expect("insert future version");
    match PgStore::connect(&db.url) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(
                (found, supported),
                (99, adjustd::store::postgres::SCHEMA_VERSION)
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn a_version_1_database_is_upgraded_in_place() {
    // The schema and data as version 1 left them; the next connect runs migration 2, which
    // counts the units returned (at most what was shipped).
    let db = pg_or_skip!();
    let mut client = db.client();
    TestDb::make_version_1_schema(&mut client);
    client
        .batch_execute(
            "INSERT INTO orders (id, merchant, amazon_order_id, currency, fulfillment_channel)
                 VALUES (1, 'M1', '111-1111111-1111111', 'USD', 'MFN');
             INSERT INTO order_items (id, order_id, position, amazon_order_item_code, sku,
                 quantity_ordered, quantity_shipped) VALUES (1, 1, 0, '12345678901234', 'S', 3, 2);
             INSERT INTO feeds (id, merchant, file_name, content_hash, status, received_at)
                 VALUES (1, 'M1', 'old.xml', 'h', 'Complete', 'then');
             INSERT INTO adjustments (id, feed_id, message_id, item_id, reason,
                 quantity_cancelled, quantity, payload_hash, net, created_at)
                 VALUES (1, 1, 1, 1, 'CustomerReturn', 0, 1, 'p1', 100, 'then'),
                        (2, 1, 2, 1, 'CustomerReturn', 0, 2, 'p2', 200, 'then');",
        )
        .expect("version 1 data");
    let mut store = PgStore::connect(&db.url).expect("connect upgrades");
    assert_eq!(
        store.schema_version().expect("version"),
        adjustd::store::postgres::SCHEMA_VERSION
    );
    let returned: i64 = client
        .query_one(
            "SELECT quantity_returned FROM order_items WHERE id = 1",
            &[],
        )
        .expect("returned")
        .get(0);
    assert_eq!(returned, 2, "1 + 2 returned of 2 shipped stops at 2");
}

/// `url` with `password` in its user info, or `None` when it names no user or has a password
/// already.
fn with_password(url: &str, password: &str) -> Option<String> {
    let scheme_end = url.find("://")? + 3;
    let at = scheme_end + url[scheme_end..].find('@')?;
    (!url[scheme_end..at].contains(':')).then(|| format!("{}:{password}{}", &url[..at], &url[at..]))
}

/// The tables in the test database's public schema.
fn public_tables(db: &TestDb) -> i64 {
    db.client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .expect("count tables")
        .get(0)
}

/// What opening `url` for reading says, when it refuses.
fn read_only_refusal(url: &str) -> StoreError {
    match AnyStore::open_read_only(url) {
        Ok(_) => panic!("{url} opened for reading"),
        Err(error) => error,
    }
}

/// Readers (`orders show`, `feeds list`) never create or upgrade the schema: an empty
/// database, one of an older and one of a newer schema are refused, saying so, and left as
/// they were. Before the fix the reader migrated whatever database the URL named.
#[test]
fn a_reader_never_creates_or_upgrades_the_schema() {
    let db = pg_or_skip!();
    let name = db.url.rsplit('/').next().expect("database name").to_owned();
    // Trust authentication ignores the password; the error must not show it.
    let url = with_password(&db.url, "s3cret").unwrap_or_else(|| db.url.clone());
    let error = read_only_refusal(&url);
    assert!(!error.is_transient(), "{error:?}");
    let text = error.to_string();
    for needed in [
        format!("database {name} has no adjustd tables"),
        "orders import".to_owned(),
    ] {
        assert!(text.contains(needed.as_str()), "lacks {needed:?}: {text}");
    }
    assert!(!text.contains("s3cret"), "shows the password: {text}");
    assert_eq!(public_tables(&db), 0, "the reader created tables");

    // The schema as version 1 left it.
    let mut client = db.client();
    TestDb::make_version_1_schema(&mut client);
    let text = read_only_refusal(&db.url).to_string();
    for needed in [
        "schema version 1",
        &format!("reads version {}", adjustd::store::postgres::SCHEMA_VERSION),
        "writing command",
    ] {
        assert!(text.contains(needed), "lacks {needed:?}: {text}");
    }
    let version: i64 = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .expect("version")
        .get(0);
    assert_eq!(version, 1, "the reader migrated");

    // A writer migrates it; then it reads.
    drop(PgStore::connect(&db.url).expect("writer migrates"));
    let mut reader = AnyStore::open_read_only(&db.url).expect("reader");
    assert!(reader.as_store().recent_feeds(5).expect("feeds").is_empty());
    drop(reader);

    client
        .execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 'x')",
            &[],
        )
        .expect("insert future version");
    match read_only_refusal(&db.url) {
        StoreError::SchemaTooNew { found, supported } => assert_eq!(
            (found, supported),
            (99, adjustd::store::postgres::SCHEMA_VERSION)
        ),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn a_feed_commits_its_adjustments_and_record() {
    let db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    let mut tx = store
        .begin_feed(&NewFeed {
            claim_token: Some("claim-1".into()),
            ..new_feed("hash-a")
        })
        .expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(
        &merchant(),
        &needs(&[ORDER, "999-9999999-9999999"], &["K1", "K2"]),
        &mut snapshot,
    )
    .expect("load");
    assert_eq!(refunded(&snapshot, ORDER), 0);
    assert!(
        snapshot
            .order(&OrderRef::Amazon(order_id("999-9999999-9999999")))
            .is_none()
    );
    tx.apply(
        &merchant(),
        &[
            refund(7, ORDER, 300, Some("K1")),
            Change::PinRejection {
                key: SellerId::new("K2").expect("key"),
                payload_hash: "p2".into(),
                message_id: MessageId::new(8).expect("id"),
                code: Code::ALL[0],
            },
        ],
    )
    .expect("apply");
    let feed_id = tx.feed_id();
    tx.commit(done()).expect("commit");

    let record = store
        .feed_by_claim("claim-1")
        .expect("by claim")
        .expect("found");
    assert_eq!(record.id, feed_id);
    assert_eq!(record.status, FeedStatus::Complete);
    let by_hash = store
        .feed_by_hash(&merchant(), "hash-a")
        .expect("by hash")
        .expect("found");
    assert_eq!(by_hash.id, feed_id);
    assert_eq!(store.recent_feeds(10).expect("recent").len(), 1);

    let views = store.orders(Some(&merchant()), ORDER).expect("orders");
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].items[0].refunded["Principal"], "3.00");
    assert_eq!(views[0].items[0].charged["Principal"], "10.00");
    assert_eq!(views[0].adjustments.len(), 1);
    assert_eq!(views[0].adjustments[0].message_id, 7);
    assert_eq!(views[0].adjustments[0].amounts["Principal"], "3.00");

    // A later feed sees the totals and the keys.
    let mut tx = store.begin_feed(&new_feed("hash-b")).expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(
        &merchant(),
        &needs(&[ORDER], &["K1", "K2", "K3"]),
        &mut snapshot,
    )
    .expect("load");
    assert_eq!(refunded(&snapshot, ORDER), 300);
    drop(tx); // rolled back
    let mut tx = store
        .begin_feed(&new_feed("hash-c"))
        .expect("begin after rollback");
    let mut fresh = Snapshot::new();
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut fresh)
        .expect("load");
    drop(tx);
    assert_eq!(store.recent_feeds(10).expect("recent").len(), 1);
}

#[test]
fn check_constraints_and_append_only_triggers_hold() {
    let db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    let mut tx = store.begin_feed(&new_feed("over")).expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut snapshot)
        .expect("load");
    // More than the 10.00 charged: the CHECK refuses it even if the engine were wrong.
    match tx.apply(&merchant(), &[refund(1, ORDER, 1001, None)]) {
        Err(StoreError::Invalid { detail }) => assert!(detail.contains("23514"), "{detail}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    drop(tx);
    commit_refund(&mut store, "ok", 400);
    let mut client = db.client();
    for sql in [
        "UPDATE adjustments SET net = 1",
        "DELETE FROM adjustments",
        "UPDATE adjustment_amounts SET amount = 1",
        "DELETE FROM adjustment_amounts",
        "TRUNCATE adjustments CASCADE",
    ] {
        let error = client.batch_execute(sql).expect_err(sql);
        let message = error.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("append-only")),
            "{sql}: {error:?}"
        );
    }
    // Lowering the charged amount below what was refunded is refused with the line.
    let mut lowered = row(ORDER, 5);
    lowered.charged = vec![(principal(), 399)];
    match store.import_orders(&merchant(), &[lowered]) {
        Err(StoreError::Invalid { detail }) => assert!(detail.starts_with("line 5"), "{detail}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn two_feeds_on_the_same_order_serialize_on_the_row_lock() {
    let db = pg_or_skip!();
    let mut first = store_with_orders(&db);
    let mut second = PgStore::connect(&db.url).expect("second instance");

    let mut tx = first.begin_feed(&new_feed("first")).expect("begin first");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut snapshot)
        .expect("load first");
    tx.apply(&merchant(), &[refund(1, ORDER, 600, None)])
        .expect("apply first");

    let (sender, receiver) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut tx = second
            .begin_feed(&new_feed("second"))
            .expect("begin second");
        let mut snapshot = Snapshot::new();
        tx.load(&merchant(), &needs(&[ORDER], &[]), &mut snapshot)
            .expect("load second");
        sender.send(refunded(&snapshot, ORDER)).expect("send");
        // The first took 6.00 of 10.00: 5.00 more would break the cap; the store says so.
        let over = tx.apply(&merchant(), &[refund(1, ORDER, 500, None)]);
        assert!(matches!(over, Err(StoreError::Invalid { .. })), "{over:?}");
    });
    assert!(
        receiver.recv_timeout(Duration::from_millis(500)).is_err(),
        "the second feed must wait for the first one's lock"
    );
    tx.commit(done()).expect("commit first");
    let seen = receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("second feed proceeds after the commit");
    assert_eq!(seen, 600, "the second feed sees the first one's totals");
    waiter.join().expect("second thread");
}

#[test]
fn the_same_bytes_committed_by_two_instances_conflict_once() {
    let db = pg_or_skip!();
    let mut first = store_with_orders(&db);
    let mut second = PgStore::connect(&db.url).expect("second instance");
    let mut tx1 = first.begin_feed(&new_feed("same")).expect("begin 1");
    let mut snapshot = Snapshot::new();
    tx1.load(&merchant(), &needs(&[ORDER2], &[]), &mut snapshot)
        .expect("load 1");
    let (sender, receiver) = mpsc::channel();
    let racer = std::thread::spawn(move || {
        let mut tx2 = second.begin_feed(&new_feed("same")).expect("begin 2");
        tx2.load(&merchant(), &needs(&[ORDER], &[]), &mut Snapshot::new())
            .expect("load 2");
        let result = tx2.commit(done());
        sender.send(()).expect("send");
        result
    });
    tx1.apply(&merchant(), &[]).expect("apply 1");
    // Both transactions are open on the same bytes; whichever commits second loses.
    receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("second commit returns");
    let first_result = tx1.commit(done());
    let second_result = racer.join().expect("thread");
    // Exactly one of the two commits wins; the loser is a transient Conflict.
    match (first_result, second_result) {
        (Ok(()), Err(error @ StoreError::Conflict { .. }))
        | (Err(error @ StoreError::Conflict { .. }), Ok(())) => assert!(error.is_transient()),
        other => panic!("expected one Conflict, got {other:?}"),
    }
    let original = first
        .feed_by_hash(&merchant(), "same")
        .expect("by hash")
        .expect("found");
    assert_eq!(first.recent_feeds(10).expect("recent")[0].id, original.id);
}

/// QA5 D5: two `orders import` of the same new orders at once. Both find the orders
/// missing and insert them; the loser's insert hits the winner's row (a unique violation,
/// a Conflict). The import runs again, finds the orders and succeeds, counting them
/// unchanged, where it used to fail with a raw duplicate-key error. The race is made
/// certain, not likely: a SHARE lock on `orders` holds both inserts until both wait on it.
#[test]
fn two_imports_of_the_same_new_orders_at_once_both_succeed() {
    let db = pg_or_skip!();
    drop(PgStore::connect(&db.url).expect("create the schema"));
    let mut blocker = db.client();
    let mut lock = blocker.transaction().expect("begin");
    lock.batch_execute("LOCK TABLE orders IN SHARE MODE")
        .expect("lock orders");
    let importers: Vec<_> = (0..2)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut store = PgStore::connect(&url).expect("connect");
                store.import_orders(&merchant(), &[row(ORDER, 2), row(ORDER2, 3)])
            })
        })
        .collect();
    let mut watcher = db.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if TestDb::sessions_waiting_on_locks(&mut watcher) == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both imports must come to wait on the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    lock.commit().expect("release the lock");
    let mut summaries: Vec<_> = importers
        .into_iter()
        .map(|importer| {
            importer
                .join()
                .expect("importer thread")
                .expect("both imports succeed")
        })
        .collect();
    summaries.sort_by_key(|summary| summary.orders_created);
    let counts = |s: &adjustd::store::ImportSummary| {
        (
            s.orders_created,
            s.orders_unchanged,
            s.items_created,
            s.items_unchanged,
        )
    };
    assert_eq!(
        summaries.iter().map(counts).collect::<Vec<_>>(),
        vec![(0, 2, 0, 2), (2, 0, 2, 0)],
        "one created the orders; the other, run again, found them as the report says"
    );
}

#[test]
fn the_same_idempotency_key_in_two_transactions_conflicts() {
    let db = pg_or_skip!();
    let mut first = store_with_orders(&db);
    let mut second = PgStore::connect(&db.url).expect("second instance");
    let mut tx1 = first.begin_feed(&new_feed("k1")).expect("begin 1");
    tx1.load(
        &merchant(),
        &needs(&[ORDER], &["KEY"]),
        &mut Snapshot::new(),
    )
    .expect("load 1");
    tx1.apply(&merchant(), &[refund(1, ORDER, 100, Some("KEY"))])
        .expect("apply 1");
    let racer = std::thread::spawn(move || {
        let mut tx2 = second.begin_feed(&new_feed("k2")).expect("begin 2");
        let mut snapshot = Snapshot::new();
        tx2.load(&merchant(), &needs(&[ORDER2], &["KEY"]), &mut snapshot)
            .expect("load 2");
        tx2.apply(&merchant(), &[refund(1, ORDER2, 100, Some("KEY"))])
            .and_then(|()| tx2.commit(done()))
    });
    std::thread::sleep(Duration::from_millis(300));
    tx1.commit(done()).expect("first commit");
    match racer.join().expect("thread") {
        Err(StoreError::Conflict { detail }) => assert!(detail.contains("23505"), "{detail}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let mut client = db.client();
    let keys: i64 = client
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .expect("count")
        .get(0);
    assert_eq!(keys, 1);
}

#[test]
fn a_terminated_connection_is_unavailable_then_reconnects() {
    let mut db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    assert!(store.recent_feeds(1).expect("before").is_empty());
    assert!(db.terminate_connections() >= 1);
    match store.recent_feeds(1) {
        Err(error @ StoreError::Unavailable { .. }) => assert!(error.is_transient()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(store.recent_feeds(1).expect("after reconnect").is_empty());

    // Mid-transaction: the feed fails as Unavailable, nothing is committed, the next works.
    let mut tx = store.begin_feed(&new_feed("mid")).expect("begin");
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut Snapshot::new())
        .expect("load");
    assert!(db.terminate_connections() >= 1);
    let result = tx.apply(&merchant(), &[refund(1, ORDER, 100, None)]);
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    drop(tx);

    // While the database refuses connections, calls are Unavailable (and keep being);
    // once it accepts them again, the next call reconnects.
    db.set_allow_connections(false);
    db.terminate_connections();
    for _ in 0..2 {
        let result = store.recent_feeds(1);
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "{result:?}"
        );
    }
    db.set_allow_connections(true);
    commit_refund(&mut store, "after", 100);
    let views = store.orders(None, ORDER).expect("orders");
    assert_eq!(views[0].adjustments.len(), 1);
    assert_eq!(store.recent_feeds(10).expect("recent").len(), 1);
}

/// The backend pids of the sessions on `db` other than `watcher`'s own.
fn other_sessions(watcher: &mut postgres::Client) -> Vec<i32> {
    watcher
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() ORDER BY pid",
            &[],
        )
        .expect("sessions")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn a_cancelled_statement_keeps_the_session_and_is_not_an_outage() {
    // QA7 F8: a statement cancelled while the session goes on (SQLSTATE 57014: an
    // administrator's pg_cancel_backend, a statement_timeout) was called the store being
    // away, and the session was dropped and opened again. A trigger raises it here, the
    // same way every time. The session's own statement_timeout is none, whatever the
    // database's.
    let mut db = pg_or_skip!();
    db.admin_sql("ALTER DATABASE {db} SET statement_timeout = '15ms'");
    let mut store = store_with_orders(&db);
    assert_eq!(
        store.session_setting("statement_timeout").expect("setting"),
        "0"
    );
    let mut watcher = db.client();
    watcher
        .batch_execute(
            "CREATE FUNCTION cancel_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'canceling statement due to statement timeout' \
             USING ERRCODE = 'query_canceled'; END $$; \
             CREATE TRIGGER cancel_it BEFORE INSERT ON adjustments \
             FOR EACH ROW EXECUTE FUNCTION cancel_it();",
        )
        .expect("cancelling trigger");
    let sessions = other_sessions(&mut watcher);
    let result = store.begin_feed(&new_feed("cancelled")).and_then(|mut tx| {
        tx.load(&merchant(), &needs(&[ORDER], &[]), &mut Snapshot::new())?;
        tx.apply(&merchant(), &[refund(1, ORDER, 100, None)])?;
        tx.commit(done())
    });
    match result {
        Err(error @ StoreError::Other { .. }) => {
            assert!(error.to_string().contains("57014"), "{error}");
            assert!(!error.is_caused_by_request(), "{error}");
        }
        other => panic!("expected Other, got {other:?}"),
    }
    assert!(store.recent_feeds(1).expect("same session").is_empty());
    assert_eq!(other_sessions(&mut watcher), sessions, "no reconnect");
    watcher
        .batch_execute("DROP TRIGGER cancel_it ON adjustments")
        .expect("drop trigger");
    commit_refund(&mut store, "after", 100);
}

#[test]
fn sessions_let_the_server_end_a_frozen_instance_and_free_its_locks() {
    // An instance frozen mid-feed (SIGSTOP, a paused VM, a lost host) must not hold its row
    // locks until it comes back: its session ends after ten minutes idle in a transaction,
    // and after about a minute of unanswered server keepalives (TCP connections only).
    let mut db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    let setting = |store: &mut PgStore, name: &str| store.session_setting(name).expect(name);
    assert_eq!(
        setting(&mut store, "idle_in_transaction_session_timeout"),
        "10min"
    );
    if db.url.contains("127.0.0.1") || db.url.contains("localhost") {
        assert_eq!(setting(&mut store, "tcp_keepalives_idle"), "30");
        assert_eq!(setting(&mut store, "tcp_keepalives_interval"), "10");
        assert_eq!(setting(&mut store, "tcp_keepalives_count"), "3");
    }
    // A longer setting of the database is shortened, a shorter one is kept.
    for (database, session) in [("1h", "10min"), ("2s", "2s")] {
        db.admin_sql(&format!(
            "ALTER DATABASE {{db}} SET idle_in_transaction_session_timeout = '{database}'"
        ));
        let mut store = PgStore::connect(&db.url).expect("connect");
        assert_eq!(
            setting(&mut store, "idle_in_transaction_session_timeout"),
            session
        );
    }
}

#[test]
fn a_session_the_server_ends_is_unavailable_whatever_its_code() {
    // A server-side guard (here the database's idle_in_transaction_session_timeout) ends a
    // feed's session with FATAL 25P03, a code of no outage class. Nothing was committed and
    // the connection is gone: the store is away until the reconnect (retried), never a
    // final error that would move the feed to failed/ without a report.
    let mut db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    db.admin_sql("ALTER DATABASE {db} SET idle_in_transaction_session_timeout = '200ms'");
    db.terminate_connections();
    // The first call may meet the terminated session; the next one has the setting.
    let _ = store.recent_feeds(1);
    let mut tx = store.begin_feed(&new_feed("idle")).expect("begin");
    tx.load(&merchant(), &needs(&[ORDER], &[]), &mut Snapshot::new())
        .expect("load");
    // Idle inside the transaction for five times the timeout.
    std::thread::sleep(Duration::from_secs(1));
    match tx.apply(&merchant(), &[refund(1, ORDER, 100, None)]) {
        Err(error @ StoreError::Unavailable { .. }) => {
            assert!(error.is_transient());
            assert!(error.to_string().contains("25P03"), "{error}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(tx);
    // The next call reconnects; a feed that does not idle commits.
    commit_refund(&mut store, "after", 100);
    assert_eq!(
        store.orders(None, ORDER).expect("orders")[0]
            .adjustments
            .len(),
        1
    );
}

#[test]
fn a_database_read_only_dropped_or_created_again_is_unavailable_until_it_is_back() {
    let mut db = pg_or_skip!();
    let mut store = store_with_orders(&db);
    commit_refund(&mut store, "before", 100);
    let unavailable = |store: &mut PgStore, what: &str| {
        // Twice: the first call may meet the terminated connection, the second reconnects.
        for _ in 0..2 {
            match store.begin_feed(&new_feed(what)).map(|tx| tx.feed_id()) {
                Err(error @ StoreError::Unavailable { .. }) => assert!(error.is_transient()),
                other => panic!("{what}: expected Unavailable, got {other:?}"),
            }
        }
    };

    // A failover to a read-only server: writes wait until it takes them again.
    db.admin_sql("ALTER DATABASE {db} SET default_transaction_read_only = on");
    db.terminate_connections();
    unavailable(&mut store, "read-only");
    db.admin_sql("ALTER DATABASE {db} SET default_transaction_read_only = off");
    db.terminate_connections();
    commit_refund(&mut store, "writable-again", 100);

    // Dropped: an outage, not a wrong URL, since the store was connected before.
    db.admin_sql("DROP DATABASE {db} WITH (FORCE)");
    unavailable(&mut store, "dropped");
    // Created again, empty: the reconnect brings the schema.
    db.admin_sql("CREATE DATABASE {db}");
    assert!(store.recent_feeds(10).expect("a new schema").is_empty());
    assert_eq!(
        store.schema_version().expect("version"),
        adjustd::store::postgres::SCHEMA_VERSION
    );
}

#[test]
fn an_unreachable_server_is_unavailable() {
    match PgStore::connect("postgres://postgres@127.0.0.1:1/nothing") {
        Err(error @ StoreError::Unavailable { .. }) => assert!(error.is_transient()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match PgStore::connect("postgres://postgres@127.0.0.1:5432/x?sslmode=bogus") {
        Err(StoreError::Invalid { .. }) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The shared conformance suite on a fresh PostgreSQL database per case.
fn pg_fixture() -> Option<crate::store::conformance::Fixture> {
    let db = TestDb::create()?;
    let store = PgStore::connect(&db.url).expect("connect");
    Some(crate::store::conformance::Fixture {
        store: Box::new(store),
        guard: Box::new(db),
    })
}

mod pg_conformance {
    use super::pg_fixture;
    crate::store::conformance::conformance_tests!(pg_fixture);
}

/// Store-level throughput on PostgreSQL, the same workload as `store::store_throughput`
/// (SQLite): one feed of N adjustments (2 per item, each with a key) over N/2 orders, loaded
/// in one batch, applied in one batch, committed. Prints messages per second.
/// `ADJUSTD_STORE_PERF_ADJUSTMENTS=200000` for the 200k-message figure.
#[test]
fn pg_store_throughput() {
    let db = pg_or_skip!();
    let adjustments: usize = std::env::var("ADJUSTD_STORE_PERF_ADJUSTMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let orders = adjustments.div_ceil(2);
    let mut store = PgStore::connect(&db.url).expect("connect");
    let rows: Vec<OrderRow> = (0..orders)
        .map(|i| OrderRow {
            line: u32::try_from(i + 2).expect("line"),
            amazon_order_id: order_id(&format!("111-{:07}-{:07}", i / 10_000_000, i % 10_000_000)),
            item_code: OrderItemCode::new(&format!("{i:014}")).expect("code"),
            quantity_ordered: 2,
            charged: vec![
                (principal(), 10_000),
                (Component::Price(PriceComponent::Tax), 800),
            ],
            ..row(ORDER, 1)
        })
        .collect();
    let started = std::time::Instant::now();
    store.import_orders(&merchant(), &rows).expect("import");
    let import_time = started.elapsed();
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
                    (Component::Price(PriceComponent::Tax), 80),
                ],
                key: Some(SellerId::new(&format!("K{n}")).expect("key")),
                payload_hash: "0".repeat(64),
            })
        })
        .collect();
    let mut keys: Vec<SellerId> = (0..adjustments)
        .map(|n| SellerId::new(&format!("K{n}")).expect("key"))
        .collect();
    keys.sort();
    let needs = Needs {
        orders: rows
            .iter()
            .map(|r| OrderRef::Amazon(r.amazon_order_id.clone()))
            .collect(),
        keys,
    };
    let started = std::time::Instant::now();
    let mut tx = store.begin_feed(&new_feed("perf")).expect("begin");
    let mut snapshot = Snapshot::new();
    tx.load(&merchant(), &needs, &mut snapshot).expect("load");
    let loaded = started.elapsed();
    tx.apply(&merchant(), &changes).expect("apply");
    let applied = started.elapsed();
    tx.commit(done()).expect("commit");
    let total = started.elapsed();
    let rate = adjustments as f64 / total.as_secs_f64();
    eprintln!(
        "pg_store_throughput: {adjustments} adjustments over {orders} orders: import \
         {import_time:?}, load {loaded:?}, load+apply {applied:?}, load+apply+commit {total:?} \
         = {rate:.0} msgs/s"
    );
    assert_eq!(snapshot.orders().count(), orders);
    let view = store
        .orders(None, rows[0].amazon_order_id.as_str())
        .expect("orders");
    assert_eq!(view[0].adjustments.len(), adjustments / orders);
    assert_eq!(view[0].items[0].refunded["Principal"], "20.00");
}

/// A small deterministic generator for the differential test.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A random feed over the orders of `tests/data/e2e/orders.txt` (plus unknown and AFN
/// ones): refunds of several component kinds, cancellations, fees, promotions, keys that
/// are new, replayed or reused with other content. Every rule gets exercised somewhere.
fn random_feed(
    random: &mut Lcg,
    keys: &mut Vec<String>,
    bodies: &mut Vec<String>,
    feed: usize,
) -> String {
    use std::fmt::Write as _;
    const ITEMS: &[(&str, &str, &str)] = &[
        ("111-0000001-0000001", "10000000000001", "USD"),
        ("111-0000001-0000001", "10000000000002", "USD"),
        ("111-0000002-0000002", "10000000000003", "USD"),
        ("111-0000003-0000003", "10000000000004", "USD"),
        ("250-0000004-0000004", "10000000000005", "JPY"),
        ("999-9999999-9999999", "10000000000009", "USD"),
        ("111-0000002-0000002", "10000000000001", "USD"),
        ("111-0000001-0000001", "10000000000001", "USD"),
        ("111-0000002-0000002", "10000000000003", "USD"),
        ("111-0000002-0000002", "10000000000003", "USD"),
        ("250-0000004-0000004", "10000000000005", "JPY"),
    ];
    const REASONS: &[&str] = &[
        "CustomerReturn",
        "CustomerCancel",
        "NoInventory",
        "GeneralAdjustment",
    ];
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AmazonEnvelope><Header>\
         <DocumentVersion>1.02</DocumentVersion><MerchantIdentifier>M_TEST</MerchantIdentifier>\
         </Header><MessageType>OrderAdjustment</MessageType>\n",
    );
    let messages = 1 + random.below(6);
    for message in 1..=messages {
        // Now and then an earlier adjusted item again, key and all (a replay).
        if !bodies.is_empty() && random.below(8) == 0 {
            let body = random.pick(bodies).clone();
            let _ = writeln!(
                xml,
                "<Message><MessageID>{message}</MessageID>{body}</Message>"
            );
            continue;
        }
        let (order, item, currency) = *random.pick(ITEMS);
        let amount = |random: &mut Lcg, max: u64| {
            let minor = random.below(max) + 1;
            if currency == "JPY" {
                format!("{minor}")
            } else {
                format!("{}.{:02}", minor / 100, minor % 100)
            }
        };
        let _ = write!(xml, "<Message><MessageID>{message}</MessageID>");
        let body_start = xml.len();
        let _ = write!(
            xml,
            "<OrderAdjustment><AmazonOrderID>{order}</AmazonOrderID><AdjustedItem>\
             <AmazonOrderItemCode>{item}</AmazonOrderItemCode>"
        );
        match random.below(4) {
            0 => {}
            1 if !keys.is_empty() => {
                let key = random.pick(keys).clone();
                let _ = write!(
                    xml,
                    "<MerchantAdjustmentItemID>{key}</MerchantAdjustmentItemID>"
                );
            }
            _ => {
                let key = format!("K{feed}-{message}");
                keys.push(key.clone());
                let _ = write!(
                    xml,
                    "<MerchantAdjustmentItemID>{key}</MerchantAdjustmentItemID>"
                );
            }
        }
        let reason = *random.pick(REASONS);
        let _ = write!(xml, "<AdjustmentReason>{reason}</AdjustmentReason>");
        let cancel_only = reason != "CustomerReturn" && random.below(3) == 0;
        if !cancel_only {
            xml.push_str("<ItemPriceAdjustments>");
            let _ = write!(
                xml,
                "<Component><Type>Principal</Type><Amount currency=\"{currency}\">{}</Amount></Component>",
                amount(random, 900)
            );
            for (kind, sign, max) in [
                ("Tax", "", 200),
                ("Shipping", "", 400),
                ("RestockingFee", "-", 100),
                ("Goodwill", "", 300),
            ] {
                if random.below(4) == 0 {
                    let _ = write!(
                        xml,
                        "<Component><Type>{kind}</Type><Amount currency=\"{currency}\">{sign}{}</Amount></Component>",
                        amount(random, max)
                    );
                }
            }
            xml.push_str("</ItemPriceAdjustments>");
            if random.below(5) == 0 {
                let _ = write!(
                    xml,
                    "<PromotionAdjustments><Component><Type>Principal</Type>\
                     <Amount currency=\"{currency}\">-{}</Amount></Component></PromotionAdjustments>",
                    amount(random, 300)
                );
            }
        }
        if reason != "CustomerReturn" && random.below(2) == 0 {
            let _ = write!(
                xml,
                "<QuantityCancelled>{}</QuantityCancelled>",
                1 + random.below(2)
            );
        }
        xml.push_str("</AdjustedItem></OrderAdjustment>");
        if xml[body_start..].contains("MerchantAdjustmentItemID") {
            bodies.push(xml[body_start..].to_owned());
        }
        xml.push_str("</Message>\n");
    }
    xml.push_str("</AmazonEnvelope>\n");
    xml
}

/// The same random feeds through the whole pipeline on SQLite and on PostgreSQL give the
/// same reports (codes per message, counts, duplicates) and the same orders afterwards.
#[test]
fn sqlite_and_postgres_give_the_same_results_on_the_same_feeds() {
    use adjustd::pipeline::{self, Context, DuplicatePolicy, Source};
    use adjustd::store::{AnyStore, import};

    let db = pg_or_skip!();
    let dir = tempfile::tempdir().expect("temp dir");
    let orders_txt = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/e2e/orders.txt"
    ))
    .expect("orders");
    let rows = import::parse_order_report(&orders_txt).expect("parse orders");
    let merchant = MerchantId::new("M_TEST").expect("merchant");
    let mut contexts: Vec<Context> = [
        format!("sqlite:{}", dir.path().join("store.db").display()),
        db.url.clone(),
    ]
    .iter()
    .enumerate()
    .map(|(index, url)| {
        let mut store = AnyStore::open(url).expect("open");
        store
            .as_store()
            .import_orders(&merchant, &rows)
            .expect("import");
        Context {
            store,
            rules: adjustd::engine::Rules::default(),
            limits: adjustd::feed::Limits::default(),
            duplicate_policy: DuplicatePolicy::Skip,
            outbox: dir.path().join(format!("outbox-{index}")),
            chunk_messages: adjustd::pipeline::CHUNK_MESSAGES,
            on_conflict: None,
        }
    })
    .collect();
    let mut random = Lcg(42);
    let mut keys = Vec::new();
    let mut bodies = Vec::new();
    let feeds: usize = std::env::var("ADJUSTD_DIFF_FEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut applied = 0;
    let mut seen_codes = std::collections::BTreeSet::new();
    for n in 0..feeds {
        // Every tenth feed repeats the bytes of the one before (a duplicate upload).
        let xml = if n % 10 == 9 {
            std::fs::read_to_string(dir.path().join(format!("feed-{}.xml", n - 1))).expect("read")
        } else {
            random_feed(&mut random, &mut keys, &mut bodies, n)
        };
        let path = dir.path().join(format!("feed-{n}.xml"));
        std::fs::write(&path, &xml).expect("write feed");
        let file_name = format!("feed-{n}.xml");
        let mut results = Vec::new();
        for context in &mut contexts {
            let processed = pipeline::process_file(
                context,
                &Source {
                    path: &path,
                    file_name: &file_name,
                    claim_token: None,
                    bound_merchant: None,
                    allowed_merchants: None,
                    may_still_be_uploading: false,
                },
            )
            .expect("process");
            let outcome = processed.outcome;
            results.push((
                outcome.status,
                outcome.duplicate_of.is_some(),
                outcome.messages_processed,
                outcome.messages_successful,
                outcome.messages_with_error,
                outcome.messages_with_warning,
                outcome
                    .results
                    .iter()
                    .map(|p| {
                        // The duplicate notice names the original's commit time.
                        let text = if p.code == Code::DuplicateFeed {
                            String::new()
                        } else {
                            p.description.clone()
                        };
                        (p.message_id.get(), p.code, text)
                    })
                    .collect::<Vec<_>>(),
            ));
        }
        assert_eq!(results[0], results[1], "feed {n}:\n{xml}");
        applied += results[0].3;
        seen_codes.extend(results[0].6.iter().map(|(_, code, _)| *code));
    }
    for order in [
        "111-0000001-0000001",
        "111-0000002-0000002",
        "111-0000003-0000003",
        "250-0000004-0000004",
    ] {
        let views: Vec<_> = contexts
            .iter_mut()
            .map(|context| {
                let mut views = context
                    .store
                    .as_store()
                    .orders(Some(&merchant), order)
                    .expect("orders");
                for view in &mut views {
                    for adjustment in &mut view.adjustments {
                        adjustment.created_at.clear();
                        adjustment.feed_id = 0;
                    }
                }
                views
            })
            .collect();
        assert_eq!(views[0], views[1], "order {order}");
    }
    eprintln!(
        "differential: {feeds} feeds, {applied} messages applied on both; codes seen: {seen_codes:?}"
    );
    assert!(applied > 0);
    assert!(
        seen_codes.len() >= 5,
        "the feeds exercise too few rules: {seen_codes:?}"
    );
}

#[test]
fn a_missing_database_is_not_transient() {
    let db = pg_or_skip!();
    let url = with_database(&db.url, "adjustd_no_such_database");
    match PgStore::connect(&url) {
        Err(error @ StoreError::Other { .. }) => {
            assert!(!error.is_transient());
            assert!(error.to_string().contains("3D000"), "{error}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}
