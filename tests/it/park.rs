//! Parking end to end (refund-rules §c3.4): the real `adjustd run` with a window of a few
//! seconds and a first retry after 1 s. A feed whose order is not imported yet is parked
//! (a copy and a schedule in `parked/`), retried without a report while a retry would change
//! nothing, with a report pair of its own once one does (its orders are found, and it is
//! unparked) or once the window has passed (the last retry pins a final ORDER_NOT_FOUND),
//! kept across a restart, and left alone with the window at 0. Until the last retry its reports
//! say that the daemon retries the message (and until when); with the window at 0, and from
//! `adjustd process`, they ask for a resend instead. On SQLite the daemon is the only
//! writer, so orders are imported with the daemon stopped there; PostgreSQL imports next to
//! the running daemon (those tests skip when PostgreSQL is not reachable).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::pipeline::{self, Context, DuplicatePolicy, Source};
use adjustd::store::AnyStore;
use serde_json::Value;

use crate::daemon::{free_port, http_get};
use crate::store_pg::TestDb;
use crate::util::{
    Daemon, MERCHANT, Refund, Settings, TestDir, feed_xml, order_id, orders_report,
    refunded_principal_cents, result_codes, wait_for,
};

const LONG: Duration = Duration::from_secs(30);

/// The store of a test: SQLite in the folder, or a fresh PostgreSQL database.
enum Backend {
    Sqlite,
    Postgres(Box<TestDb>),
}

impl Backend {
    /// PostgreSQL, or `None` (after saying so) when it is not reachable.
    fn postgres() -> Option<Backend> {
        TestDb::create().map(|db| Backend::Postgres(Box::new(db)))
    }

    fn store_url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(db) => Some(db.url.clone()),
        }
    }

    /// Imports `orders` for the merchant: next to the daemon on PostgreSQL; on SQLite,
    /// where the running daemon holds the store, with the daemon stopped and started again.
    fn import_while_running(&self, dir: &TestDir, daemon: &mut Daemon, orders: &[u32]) {
        match self {
            Backend::Postgres(_) => dir.import_orders(MERCHANT, &orders_of(orders)),
            Backend::Sqlite => {
                daemon.stop();
                dir.import_orders(MERCHANT, &orders_of(orders));
                *daemon = dir.spawn_daemon();
            }
        }
    }
}

fn refund(order: u32, key: &str, cents: i64) -> Refund {
    Refund {
        order,
        key: key.to_owned(),
        cents,
    }
}

/// A short window and a first retry after 1 s.
fn settings(backend: &Backend, window_secs: u64) -> Settings {
    Settings {
        store_url: backend.store_url(),
        daemon_extra: format!(
            "order_not_found_window_secs = {window_secs}\norder_not_found_first_retry_secs = 1"
        ),
        ..Settings::default()
    }
}

/// An order report with only the generated orders `orders`.
fn orders_of(orders: &[u32]) -> String {
    let all = orders_report(orders.iter().max().map_or(0, |max| max + 1));
    let mut lines = all.lines();
    let mut report = format!("{}\n", lines.next().expect("header"));
    for line in lines {
        if orders.iter().any(|n| line.starts_with(&order_id(*n))) {
            report.push_str(line);
            report.push('\n');
        }
    }
    report
}

/// The schedules in `parked/`.
fn schedules(dir: &TestDir) -> Vec<PathBuf> {
    dir.files_in("parked")
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with(".schedule.json"))
        .collect()
}

/// The retries made so far of the one feed parked in `dir` (its schedule's `attempts`), and
/// the feed id of the last one that produced a report.
fn attempts(dir: &TestDir) -> (u64, Value) {
    let schedule = schedules(dir).pop().expect("parked");
    // Written atomically, so always whole; gone only once the feed is unparked.
    let schedule: Value =
        serde_json::from_slice(&fs::read(&schedule).expect("schedule")).expect("JSON");
    (
        schedule["attempts"].as_u64().expect("attempts"),
        schedule["last_feed_id"].clone(),
    )
}

/// The value of the metric line `name` (a counter or gauge without labels) at `port`.
fn metric(port: u16, name: &str) -> u64 {
    let metrics = http_get(port, "/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// A pipeline context on the folder's SQLite store and outbox, as the daemon has it (with
/// the daemon stopped), under `rules`.
fn sqlite_context(dir: &TestDir, rules: Rules) -> Context {
    Context {
        store: AnyStore::open(&format!("sqlite:{}", dir.path("store.db").display()))
            .expect("open store"),
        rules,
        limits: Limits::default(),
        duplicate_policy: DuplicatePolicy::Skip,
        outbox: dir.path("outbox"),
        chunk_messages: pipeline::CHUNK_MESSAGES,
        on_conflict: None,
    }
}

/// The JSON reports of `name`, oldest feed first, with their paths.
fn reports(dir: &TestDir, name: &str) -> Vec<(PathBuf, Value)> {
    let mut reports: Vec<(PathBuf, Value)> = dir
        .json_reports()
        .into_iter()
        .filter(|(_, json)| json["file_name"] == name)
        .collect();
    reports.sort_by_key(|(_, json)| json["feed_id"].as_u64());
    reports
}

/// Waits for the first report of `name` and for the feed to leave work/ (it is parked, if
/// at all, before that).
fn first_report(dir: &TestDir, name: &str) -> Value {
    wait_for(&format!("a report for {name}"), LONG, || {
        !reports(dir, name).is_empty()
    });
    wait_for("inbox and work/ to be empty", LONG, || {
        dir.files_in("inbox").is_empty() && dir.files_in("work").is_empty()
    });
    reports(dir, name).remove(0).1
}

fn errors(report: &Value) -> u64 {
    report["summary"]["messages_with_error"]
        .as_u64()
        .expect("error count")
}

/// The description of the one result with code `code` (panics if there is not one).
fn description_of(report: &Value, code: &str) -> String {
    text_of(report, code, "description")
}

/// The text `field` (`description`, `fix`) of the one result with code `code` (panics if
/// there is not one).
fn text_of(report: &Value, code: &str, field: &str) -> String {
    let matching: Vec<&Value> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|result| result["code_name"] == code)
        .collect();
    assert_eq!(matching.len(), 1, "one {code} in {report}");
    matching[0][field].as_str().expect(field).to_owned()
}

/// Asserts that the ORDER_NOT_FOUND of `report` says that the daemon retries it by itself
/// (the feed is parked) rather than asking for a resend; returns its description.
fn assert_says_it_is_retried(report: &Value) -> String {
    let description = description_of(report, "ORDER_NOT_FOUND");
    let fix = text_of(report, "ORDER_NOT_FOUND", "fix");
    assert!(
        description.contains("adjustd retries this message automatically until ")
            && description.contains("(config [daemon] order_not_found_window_secs)"),
        "{description}"
    );
    assert!(
        fix.contains("(adjustd orders import --merchant M_TEST) before ")
            && fix.contains("No resend is needed."),
        "{fix}"
    );
    assert!(!fix.contains("resend the message unchanged"), "{fix}");
    description
}

/// Asserts that the ORDER_NOT_FOUND of `report` asks for a resend, as without parking.
fn assert_asks_for_a_resend(report: &Value) {
    let description = description_of(report, "ORDER_NOT_FOUND");
    let fix = text_of(report, "ORDER_NOT_FOUND", "fix");
    assert!(!description.contains("automatically"), "{description}");
    assert!(
        fix.ends_with("Then resend the message unchanged: this rejection is not remembered."),
        "{fix}"
    );
}

#[test]
fn a_parked_feed_is_retried_and_applies_once_its_order_is_imported() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let port = free_port();
    let dir = TestDir::with(&Settings {
        http_listen: Some(format!("127.0.0.1:{port}")),
        ..settings(&backend, 30)
    });
    dir.import_orders(MERCHANT, &orders_of(&[0]));
    let parked_gauge = |value: u64| {
        let line = format!("adjustd_parked_feeds {value}");
        move || http_get(port, "/metrics").lines().any(|l| l == line)
    };
    let mut daemon = dir.spawn_daemon();
    // One message for an imported order, one for an order whose report comes later.
    dir.drop_file(
        "M_TEST/late.xml",
        feed_xml(
            MERCHANT,
            &[refund(0, "found-now", 100), refund(1, "found-later", 250)],
        )
        .as_bytes(),
    );
    let first = first_report(&dir, "late.xml");
    assert_eq!(result_codes(&first), ["ORDER_NOT_FOUND"], "{first}");
    assert_says_it_is_retried(&first);
    assert_eq!(first["summary"]["messages_successful"], 1, "{first}");
    assert_eq!(schedules(&dir).len(), 1, "parked");
    assert_eq!(dir.files_in("archive").len(), 1, "archived as usual");
    wait_for("the parked-feeds gauge at 1", LONG, parked_gauge(1));

    backend.import_while_running(&dir, &mut daemon, &[1]);
    wait_for("a retry that applies the rest", LONG, || {
        reports(&dir, "late.xml")
            .last()
            .is_some_and(|(_, report)| errors(report) == 0)
    });
    wait_for("the feed to be unparked", LONG, || {
        schedules(&dir).is_empty() && dir.files_in("parked").is_empty()
    });
    wait_for("the parked-feeds gauge at 0", LONG, parked_gauge(0));
    let all = reports(&dir, "late.xml");
    let (path, retry) = all.last().expect("retry");
    // Its own report pair, in the merchant's outbox, naming the feed it repeats.
    assert!(path.starts_with(dir.path("outbox/M_TEST")), "{path:?}");
    assert!(path.with_extension("xml").is_file(), "the XML twin");
    assert_ne!(retry["feed_id"], first["feed_id"]);
    assert_eq!(retry["duplicate_of"], first["feed_id"], "{retry}");
    assert_eq!(retry["summary"]["messages_successful"], 2, "{retry}");
    assert_eq!(result_codes(retry), ["DUPLICATE_ADJUSTMENT"], "{retry}");
    // Every report before it still had the order not found.
    for (_, earlier) in &all[..all.len() - 1] {
        assert_eq!(result_codes(earlier), ["ORDER_NOT_FOUND"], "{earlier}");
    }
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(1))), 250);
    assert_eq!(dir.files_in("archive").len(), 1, "retries move no files");
    let log = daemon.log();
    assert!(log.contains("feed parked"), "{log}");
    assert!(
        log.lines().any(
            |line| line.contains("parked feed retried") && line.contains("result=\"unparked\"")
        ),
        "{log}"
    );
}

fn unchanged_retries_are_quiet_until_the_order_is_imported(backend: &Backend) {
    let port = free_port();
    let dir = TestDir::with(&Settings {
        http_listen: Some(format!("127.0.0.1:{port}")),
        ..settings(backend, 60)
    });
    dir.import_orders(MERCHANT, &orders_of(&[0]));
    let mut daemon = dir.spawn_daemon();
    // One message applies at once, the other waits for its order.
    dir.drop_file(
        "M_TEST/quiet.xml",
        feed_xml(
            MERCHANT,
            &[
                refund(0, "applies-at-once", 100),
                refund(1, "applies-later", 250),
            ],
        )
        .as_bytes(),
    );
    let first = first_report(&dir, "quiet.xml");
    assert_eq!(result_codes(&first), ["ORDER_NOT_FOUND"], "{first}");
    assert_eq!(first["summary"]["messages_successful"], 1, "{first}");

    // Retries after 1 s and 2 s more find nothing new: no report, no feed record, still
    // parked, and each one is counted and logged.
    wait_for("two retries", LONG, || attempts(&dir).0 >= 2);
    assert_eq!(
        reports(&dir, "quiet.xml").len(),
        1,
        "a retry that changes nothing writes no report"
    );
    assert_eq!(
        dir.files_in("outbox").len(),
        2,
        "only the first report pair: {:?}",
        dir.files_in("outbox")
    );
    assert_eq!(schedules(&dir).len(), 1, "still parked");
    assert_eq!(attempts(&dir).1, Value::Null, "no retry made a feed");
    assert_eq!(metric(port, "adjustd_parked_feeds"), 1);
    assert!(metric(port, "adjustd_parked_retries_unchanged_total") >= 2);
    let retried = "adjustd_feeds_total{outcome=\"retried\"} 0";
    assert!(
        http_get(port, "/metrics").lines().any(|l| l == retried),
        "a quiet retry is not a retried feed"
    );
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|line| line.contains("parked feed retried: nothing new")
                && line.contains(&format!(" parked_feed_id={} ", first["feed_id"]))
                && line.contains("quiet.xml")
                && line.contains(" next_attempt_at=")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|line| line.contains("parked feed retried") && line.contains("result=")),
        "{log}"
    );

    // Once the order is imported, the next retry commits and reports: the waiting message
    // applies, the other comes back as a duplicate, once.
    backend.import_while_running(&dir, &mut daemon, &[1]);
    wait_for("the retry that applies the rest", LONG, || {
        reports(&dir, "quiet.xml")
            .last()
            .is_some_and(|(_, report)| errors(report) == 0)
    });
    wait_for("the feed to be unparked", LONG, || {
        dir.files_in("parked").is_empty()
    });
    let all = reports(&dir, "quiet.xml");
    assert_eq!(all.len(), 2, "the first report and the retry's: {all:?}");
    let (_, retry) = &all[1];
    assert_eq!(retry["duplicate_of"], first["feed_id"], "{retry}");
    assert_eq!(retry["summary"]["messages_successful"], 2, "{retry}");
    assert_eq!(result_codes(retry), ["DUPLICATE_ADJUSTMENT"], "{retry}");
    wait_for("the retry counted as retried", LONG, || {
        http_get(port, "/metrics")
            .lines()
            .any(|l| l == "adjustd_feeds_total{outcome=\"retried\"} 1")
    });
    daemon.stop();
    assert!(
        daemon.log().lines().any(
            |line| line.contains("parked feed retried") && line.contains("result=\"unparked\"")
        ),
        "{}",
        daemon.log()
    );
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(1))), 250);
}

#[test]
fn retries_that_change_nothing_are_quiet_until_the_order_is_imported_on_sqlite() {
    unchanged_retries_are_quiet_until_the_order_is_imported(&Backend::Sqlite);
}

#[test]
fn retries_that_change_nothing_are_quiet_until_the_order_is_imported_on_postgres() {
    if let Some(backend) = Backend::postgres() {
        unchanged_retries_are_quiet_until_the_order_is_imported(&backend);
    }
}

fn last_retry_pins_order_not_found(backend: &Backend) {
    let port = free_port();
    let dir = TestDir::with(&Settings {
        http_listen: Some(format!("127.0.0.1:{port}")),
        ..settings(backend, 3)
    });
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut daemon = dir.spawn_daemon();
    let dropped = Instant::now();
    dir.drop_file(
        "early.xml",
        feed_xml(MERCHANT, &[refund(0, "too-early", 100)]).as_bytes(),
    );
    let first = first_report(&dir, "early.xml");
    assert_eq!(result_codes(&first), ["ORDER_NOT_FOUND"], "{first}");
    // Parked: the report says the daemon retries it, not to resend it.
    assert_says_it_is_retried(&first);
    let is_final = |report: &Value| {
        result_codes(report) == ["ORDER_NOT_FOUND"]
            && description_of(report, "ORDER_NOT_FOUND").contains("now final")
    };
    wait_for("the last retry, after the window", LONG, || {
        reports(&dir, "early.xml")
            .iter()
            .any(|(_, report)| is_final(report))
    });
    assert!(
        dropped.elapsed() >= Duration::from_secs(2),
        "pinned before the window ended"
    );
    wait_for("the feed to be unparked", LONG, || {
        schedules(&dir).is_empty()
    });
    let all = reports(&dir, "early.xml");
    let (_, last) = all.last().expect("reports");
    assert!(is_final(last), "the last report pins: {last}");
    // The retries before the last one found nothing new and wrote no report: only the
    // first processing and the last retry have one.
    assert_eq!(all.len(), 2, "{all:?}");
    assert_says_it_is_retried(&all[0].1);
    wait_for("the summary line of the last retry", LONG, || {
        daemon
            .log()
            .lines()
            .any(|line| line.contains("parked feed retried") && line.contains("result=\"pinned\""))
    });
    // The retry that reported is counted as such, not as a duplicate (it repeats the same
    // bytes); the first processing is a feed like any other.
    for line in [
        "adjustd_feeds_total{outcome=\"retried\"} 1".to_owned(),
        "adjustd_feeds_total{outcome=\"duplicate\"} 0".to_owned(),
        "adjustd_feeds_total{outcome=\"complete\"} 1".to_owned(),
    ] {
        wait_for(&line, LONG, || {
            http_get(port, "/metrics").lines().any(|l| l == line)
        });
    }

    // The order arrives late: the same keys keep their pinned answer, a new key applies.
    backend.import_while_running(&dir, &mut daemon, &[0, 1]);
    dir.drop_file(
        "again.xml",
        feed_xml(
            MERCHANT,
            &[refund(0, "too-early", 100), refund(0, "new-key", 100)],
        )
        .as_bytes(),
    );
    let again = first_report(&dir, "again.xml");
    assert_eq!(result_codes(&again), ["ORDER_NOT_FOUND"], "{again}");
    let pinned = description_of(&again, "ORDER_NOT_FOUND");
    assert!(
        pinned.contains("already rejected") && pinned.contains("even if the order exists now"),
        "{pinned}"
    );
    assert_eq!(again["summary"]["messages_successful"], 1, "{again}");
    assert!(schedules(&dir).is_empty(), "a pinned answer is not parked");
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn after_the_window_the_last_retry_pins_order_not_found_on_sqlite() {
    last_retry_pins_order_not_found(&Backend::Sqlite);
}

#[test]
fn after_the_window_the_last_retry_pins_order_not_found_on_postgres() {
    if let Some(backend) = Backend::postgres() {
        last_retry_pins_order_not_found(&backend);
    }
}

fn parked_feed_survives_a_restart(backend: &Backend) {
    let dir = TestDir::with(&settings(backend, 60));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "M_TEST/restart.xml",
        feed_xml(MERCHANT, &[refund(0, "across-restart", 300)]).as_bytes(),
    );
    let first = first_report(&dir, "restart.xml");
    assert_eq!(result_codes(&first), ["ORDER_NOT_FOUND"], "{first}");
    assert_eq!(schedules(&dir).len(), 1, "parked");
    // The time the report names is the end of the window the schedule keeps, to the second.
    let schedule: Value =
        serde_json::from_slice(&fs::read(&schedules(&dir)[0]).expect("schedule")).expect("JSON");
    let first_processed_at: chrono::DateTime<chrono::Utc> = schedule["first_processed_at"]
        .as_str()
        .expect("first_processed_at")
        .parse()
        .expect("a time");
    let window_ends = first_processed_at + chrono::Duration::seconds(60);
    let description = assert_says_it_is_retried(&first);
    assert!(
        description.contains(&format!(
            "until {} (config",
            window_ends.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        "{description} (window from {first_processed_at})"
    );
    // Shutdown does not wait for the parked retries.
    let stopping = Instant::now();
    daemon.stop();
    assert!(stopping.elapsed() < Duration::from_secs(10));
    assert_eq!(schedules(&dir).len(), 1, "still parked after the stop");

    dir.import_orders(MERCHANT, &orders_of(&[0, 1]));
    let mut daemon = dir.spawn_daemon();
    wait_for("the retry after the restart", LONG, || {
        reports(&dir, "restart.xml")
            .last()
            .is_some_and(|(_, report)| errors(report) == 0)
    });
    wait_for("the feed to be unparked", LONG, || {
        dir.files_in("parked").is_empty()
    });
    let (path, retry) = reports(&dir, "restart.xml").pop().expect("retry");
    assert!(path.starts_with(dir.path("outbox/M_TEST")), "{path:?}");
    assert_eq!(retry["summary"]["messages_successful"], 1, "{retry}");
    assert_eq!(retry["duplicate_of"], first["feed_id"], "{retry}");
    daemon.stop();
    assert!(
        daemon
            .log()
            .contains("feeds parked for ORDER_NOT_FOUND retries"),
        "{}",
        daemon.log()
    );
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 300);
}

#[test]
fn a_parked_feed_survives_a_restart_and_is_retried_after_it_on_sqlite() {
    parked_feed_survives_a_restart(&Backend::Sqlite);
}

#[test]
fn a_parked_feed_survives_a_restart_and_is_retried_after_it_on_postgres() {
    if let Some(backend) = Backend::postgres() {
        parked_feed_survives_a_restart(&backend);
    }
}

/// When the schedule of the one feed parked in `dir` says it was first processed.
fn first_processed_at(dir: &TestDir) -> chrono::DateTime<chrono::Utc> {
    let schedule: Value = serde_json::from_slice(
        &fs::read(schedules(dir).first().expect("parked")).expect("read schedule"),
    )
    .expect("schedule JSON");
    schedule["first_processed_at"]
        .as_str()
        .expect("first_processed_at")
        .parse()
        .expect("a time")
}

fn processed_at(report: &Value) -> chrono::DateTime<chrono::Utc> {
    report["processed_at"]
        .as_str()
        .expect("processed_at")
        .parse()
        .expect("a time")
}

#[test]
fn a_shorter_window_after_a_restart_keeps_the_end_the_reports_announced() {
    // QA finding F4: parked with a window of 10 s, whose report promises retries until then;
    // the daemon comes back with a window of 2 s. The feed must not be pinned before the
    // announced end: an order imported after the short window but before that end still
    // applies without a resend, and the retry's report names the announced end again.
    let dir = TestDir::with(&settings(&Backend::Sqlite, 10));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "M_TEST/promised.xml",
        feed_xml(
            MERCHANT,
            &[refund(0, "imported-in-time", 100), refund(2, "never", 200)],
        )
        .as_bytes(),
    );
    let first = first_report(&dir, "promised.xml");
    daemon.stop();
    assert_eq!(errors(&first), 2, "{first}");
    let announced = first_processed_at(&dir) + chrono::Duration::seconds(10);
    let until = format!(
        "until {} (config",
        announced.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for result in first["results"].as_array().expect("results") {
        let description = result["description"].as_str().expect("description");
        assert!(description.contains(&until), "{description}");
    }

    // Restarted with the shorter window, past its end: retried, but not pinned.
    let short = settings(&Backend::Sqlite, 2);
    dir.write_config(&short);
    let mut daemon = dir.spawn_daemon();
    let short_end = first_processed_at(&dir) + chrono::Duration::seconds(2);
    wait_for("a retry after the short window's end", LONG, || {
        chrono::Utc::now() > short_end + chrono::Duration::seconds(1)
            && (schedules(&dir).is_empty() || attempts(&dir).0 >= 1)
    });
    daemon.stop();
    assert!(
        chrono::Utc::now() < announced,
        "the test ran too slowly to show anything"
    );
    let all = reports(&dir, "promised.xml");
    assert_eq!(all.len(), 1, "pinned before the announced end: {all:?}");
    assert_eq!(schedules(&dir).len(), 1, "still parked");
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|line| line.contains("announced end is kept")
                && line.contains(&format!(" parked_feed_id={} ", first["feed_id"]))),
        "{log}"
    );

    // The order comes in time: the next retry applies it, and its report still promises
    // retries of the other message until the announced end.
    dir.import_orders(MERCHANT, &orders_of(&[0, 1]));
    let mut daemon = dir.spawn_daemon();
    wait_for("the retry that applies the imported order", LONG, || {
        reports(&dir, "promised.xml").len() >= 2
    });
    let (_, retry) = reports(&dir, "promised.xml").remove(1);
    assert_eq!(errors(&retry), 1, "{retry}");
    assert_eq!(retry["summary"]["messages_successful"], 1, "{retry}");
    assert!(processed_at(&retry) < announced, "{retry}");
    let description = assert_says_it_is_retried(&retry);
    assert!(description.contains(&until), "{description}");

    // The last retry comes at the announced end, not before.
    let is_final = |report: &Value| description_of(report, "ORDER_NOT_FOUND").contains("now final");
    wait_for("the last retry", LONG, || {
        reports(&dir, "promised.xml")
            .last()
            .is_some_and(|(_, report)| is_final(report))
    });
    daemon.stop();
    let all = reports(&dir, "promised.xml");
    assert_eq!(all.len(), 3, "{all:?}");
    let (_, last) = &all[2];
    assert!(processed_at(last) >= announced, "pinned too early: {last}");
    assert!(schedules(&dir).is_empty(), "unparked");
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn a_window_of_zero_parks_nothing() {
    let dir = TestDir::with(&settings(&Backend::Sqlite, 0));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut daemon = dir.spawn_daemon();
    let xml = feed_xml(MERCHANT, &[refund(0, "never-parked", 100)]);
    dir.drop_file("off.xml", xml.as_bytes());
    let first = first_report(&dir, "off.xml");
    assert_eq!(result_codes(&first), ["ORDER_NOT_FOUND"], "{first}");
    assert_asks_for_a_resend(&first);
    assert!(!dir.path("parked").exists(), "no parked folder");
    // Longer than the first retry would wait: no retry comes.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(reports(&dir, "off.xml").len(), 1);
    // As before: the same bytes dropped again are processed again.
    dir.drop_file("off-again.xml", xml.as_bytes());
    let again = first_report(&dir, "off-again.xml");
    assert_eq!(result_codes(&again), ["ORDER_NOT_FOUND"], "{again}");
    assert_eq!(again["duplicate_of"], first["feed_id"], "{again}");
    daemon.stop();
    assert!(!dir.path("parked").exists(), "no parked folder");
    assert!(!daemon.log().contains("parked"), "{}", daemon.log());
    assert!(
        fs::read_dir(dir.path("archive")).is_ok(),
        "feeds archived as usual"
    );
    assert_eq!(dir.files_in("archive").len(), 2);
}

#[test]
fn process_never_parks_so_its_order_not_found_asks_for_a_resend() {
    // Parking is on in the config, but `adjustd process` does not park: its report must
    // not promise retries.
    let dir = TestDir::with(&settings(&Backend::Sqlite, 60));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let feed = dir.path("one-shot.xml");
    fs::write(
        &feed,
        feed_xml(MERCHANT, &[refund(0, "one-shot", 100)]).as_bytes(),
    )
    .expect("write feed");
    let out = dir.cli(&["process", feed.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a message has an error: {out:?}"
    );
    let (_, report) = reports(&dir, "one-shot.xml").pop().expect("a report");
    assert_eq!(result_codes(&report), ["ORDER_NOT_FOUND"], "{report}");
    assert_asks_for_a_resend(&report);
    assert!(!dir.path("parked").exists(), "nothing parked");
}

#[test]
fn a_retry_committed_before_a_crash_is_recovered_not_repeated() {
    // Phase 1: parked, with a first retry too far off to come before the stop.
    let slow = Settings {
        daemon_extra: "order_not_found_window_secs = 60\norder_not_found_first_retry_secs = 30"
            .to_owned(),
        ..Settings::default()
    };
    let dir = TestDir::with(&slow);
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "crash.xml",
        feed_xml(MERCHANT, &[refund(0, "crash", 100)]).as_bytes(),
    );
    let first = first_report(&dir, "crash.xml");
    daemon.stop();
    let schedule_path = schedules(&dir).pop().expect("parked");
    let mut schedule: Value =
        serde_json::from_slice(&fs::read(&schedule_path).expect("schedule")).expect("JSON");
    assert_eq!(schedule["feed_id"], first["feed_id"]);
    assert_eq!(schedule["attempts"], 0);
    let token = schedule["next_claim_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // What a retry does up to its commit and report, then a crash before the schedule is
    // updated: the pipeline under the schedule's claim token, on the parked copy.
    let copy = schedule_path.with_file_name(format!("{}.xml", first["feed_id"]));
    let mut context = sqlite_context(&dir, Rules::default());
    let committed = pipeline::process_file(
        &mut context,
        &Source::new(&copy, "crash.xml", Some(&token), None, None),
    )
    .expect("the retry before the crash");
    drop(context);
    let committed_id = committed.outcome.feed_id;
    schedule["next_attempt_at"] = Value::from("2000-01-01T00:00:00Z");
    fs::write(&schedule_path, schedule.to_string()).expect("due now");

    // Phase 2: the restart finds that retry committed and re-emits its report.
    dir.write_config(&Settings {
        daemon_extra: "order_not_found_window_secs = 60\norder_not_found_first_retry_secs = 1"
            .to_owned(),
        ..Settings::default()
    });
    let mut daemon = dir.spawn_daemon();
    wait_for("the recovered retry", LONG, || {
        daemon.log().lines().any(|line| {
            line.contains("parked feed retried")
                && line.contains(&format!(" feed_id={committed_id} "))
        })
    });
    let rescheduled: Value =
        serde_json::from_slice(&fs::read(&schedule_path).expect("schedule")).expect("JSON");
    daemon.stop();
    assert_eq!(rescheduled["attempts"], 1, "{rescheduled}");
    assert_eq!(rescheduled["last_feed_id"], committed_id, "{rescheduled}");
    assert_ne!(rescheduled["next_claim_token"], token.as_str());
    // The recovered retry did not make a feed of its own.
    assert!(
        !daemon
            .log()
            .lines()
            .any(|line| line.contains("parked feed retried")
                && !line.contains(&format!(" feed_id={committed_id} "))
                && line.contains("attempt=1 ")),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_parked_folder_inside_the_inbox_is_refused_at_start() {
    let dir = TestDir::new();
    let config = fs::read_to_string(dir.path("adjustd.toml")).expect("config");
    fs::write(
        dir.path("adjustd.toml"),
        config.replace("parked = \"parked\"", "parked = \"inbox/parked\""),
    )
    .expect("config");
    let out = dir.cli(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("parked folder") && stderr.contains("inside (or the same as) the inbox"),
        "{stderr}"
    );
    assert!(!dir.path("inbox/parked").exists(), "not created");
}

#[test]
fn a_parked_retry_whose_report_is_refused_holds_up_no_other_feed() {
    let port = free_port();
    let dir = TestDir::with(&Settings {
        http_listen: Some(format!("127.0.0.1:{port}")),
        ..settings(&Backend::Sqlite, 120)
    });
    dir.import_orders(MERCHANT, &orders_of(&[0]));
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "M_TEST/late.xml",
        feed_xml(
            MERCHANT,
            &[refund(1, "found-later", 250), refund(2, "found-never", 50)],
        )
        .as_bytes(),
    );
    let first = first_report(&dir, "late.xml");
    assert_eq!(
        result_codes(&first),
        ["ORDER_NOT_FOUND", "ORDER_NOT_FOUND"],
        "{first}"
    );
    assert_eq!(schedules(&dir).len(), 1, "parked");
    // The merchant's report folder is set aside (a hidden name, so its reports are not
    // counted) and a regular file takes its place, which stops root too; then one of the
    // orders is imported: the next retry commits (a retry that changed nothing would write
    // no report) but cannot write its report, and the feed stays parked for the other.
    let folder = dir.path("outbox/M_TEST");
    let saved = dir.path("outbox/.M_TEST-saved");
    fs::rename(&folder, &saved).expect("set the report folder aside");
    fs::write(&folder, b"not a folder").expect("block the report folder");
    Backend::Sqlite.import_while_running(&dir, &mut daemon, &[1]);
    wait_for("a refused report", LONG, || {
        daemon.log().contains("transient failure, will retry")
    });
    // Meanwhile an inbox feed goes through at once.
    dir.drop_file(
        "top.xml",
        feed_xml(MERCHANT, &[refund(0, "top-1", 100)]).as_bytes(),
    );
    let started = Instant::now();
    assert_eq!(first_report(&dir, "top.xml")["status"], "Complete");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    wait_for("the pending-reports gauge at 1", LONG, || {
        http_get(port, "/metrics")
            .lines()
            .any(|l| l == "adjustd_reports_pending 1")
    });
    assert_eq!(schedules(&dir).len(), 1, "still parked");

    fs::remove_file(&folder).expect("unblock");
    fs::rename(&saved, &folder).expect("put the report folder back");
    wait_for("the refused retry's report", LONG, || {
        reports(&dir, "late.xml").len() >= 2
    });
    wait_for("the retry to count as retried", LONG, || {
        let metrics = http_get(port, "/metrics");
        metrics.lines().any(|l| l == "adjustd_reports_pending 0")
            && !metrics
                .lines()
                .any(|l| l == "adjustd_feeds_total{outcome=\"retried\"} 0")
    });
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "adjustd_feeds_total{outcome=\"recovered\"} 0"),
        "a retry of this run is not a recovery:\n{metrics}"
    );
    daemon.stop();
    let log = daemon.log();
    assert!(
        log.lines().any(|line| line.contains("parked feed retried")
            && line.contains("report_retries=")
            && line.contains("result=\"parked\"")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|line| line.contains("retry of a parked feed failed")),
        "{log}"
    );
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(1))), 250);
}

/// What the daemon with parking on does up to its commit, with the daemon stopped: the
/// pipeline on a claimed file `name` in work/ (one refund of an order the store lacks),
/// under its claim token, with the window's end (an hour on) in its rules.
fn commit_claimed_with_parking_on(dir: &TestDir, name: &str) -> pipeline::Processed {
    let token = "1700000000000000000-1-0";
    fs::create_dir_all(dir.path("work")).expect("work folder");
    let claimed = dir.path("work").join(format!("{token}--{name}"));
    let key = name.trim_end_matches(".xml");
    fs::write(
        &claimed,
        feed_xml(MERCHANT, &[refund(0, key, 100)]).as_bytes(),
    )
    .expect("write claimed feed");
    let mut context = sqlite_context(
        dir,
        Rules {
            order_not_found_retry_until: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Rules::default()
        },
    );
    pipeline::process_file(
        &mut context,
        &Source::new(&claimed, name, Some(token), None, None),
    )
    .expect("the attempt before the crash")
}

#[test]
fn a_report_re_emitted_after_an_outage_names_the_end_of_the_window_the_retries_keep() {
    // A feed committed an hour before the daemon comes back (its report never written): the
    // re-emitted report says until when the feed is retried, and the parked schedule's
    // window ends at that very second, not an hour earlier.
    let window_secs = 7200;
    let dir = TestDir::with(&settings(&Backend::Sqlite, window_secs));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let committed = commit_claimed_with_parking_on(&dir, "late.xml");
    fs::remove_file(&committed.xml_report).expect("remove XML report");
    fs::remove_file(&committed.json_report).expect("remove JSON report");
    // That attempt was an hour ago.
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let db = rusqlite::Connection::open(dir.path("store.db")).expect("open store");
    let json: String = db
        .query_row("SELECT report_json FROM feeds WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("stored report");
    let mut stored: Value = serde_json::from_str(&json).expect("JSON");
    stored["processed_at"] = Value::from(an_hour_ago.clone());
    db.execute(
        "UPDATE feeds SET report_json = ?1, processed_at = ?2 WHERE id = 1",
        rusqlite::params![stored.to_string(), an_hour_ago],
    )
    .expect("backdate the feed");
    drop(db);

    let mut daemon = dir.spawn_daemon();
    let report = first_report(&dir, "late.xml");
    daemon.stop();
    let description = assert_says_it_is_retried(&report);
    let schedule: Value = serde_json::from_slice(
        &fs::read(schedules(&dir).first().expect("parked")).expect("read schedule"),
    )
    .expect("schedule JSON");
    let first = chrono::DateTime::parse_from_rfc3339(
        schedule["first_processed_at"]
            .as_str()
            .expect("first_processed_at"),
    )
    .expect("a time");
    let ends = (first + chrono::Duration::seconds(window_secs.try_into().expect("secs")))
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    assert!(
        description.contains(&format!("until {ends} ")),
        "the window ends at {ends}: {description}"
    );
}

#[test]
fn a_report_re_emitted_after_parking_was_turned_off_asks_for_a_resend() {
    // A feed committed by a daemon with parking on, whose report was not written before a
    // crash; the restart has the window at 0, so nothing is parked and no retry comes: the
    // re-emitted report must ask for a resend, not promise the retries of the stored words.
    let dir = TestDir::with(&settings(&Backend::Sqlite, 0));
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let committed = commit_claimed_with_parking_on(&dir, "lost.xml");
    let (_, stored) = reports(&dir, "lost.xml").remove(0);
    assert_says_it_is_retried(&stored);
    // The crash came before the report was written.
    fs::remove_file(&committed.xml_report).expect("remove XML report");
    fs::remove_file(&committed.json_report).expect("remove JSON report");

    let mut daemon = dir.spawn_daemon();
    let report = first_report(&dir, "lost.xml");
    daemon.stop();
    assert_eq!(report["feed_id"], committed.outcome.feed_id, "{report}");
    assert_eq!(result_codes(&report), ["ORDER_NOT_FOUND"], "{report}");
    assert_asks_for_a_resend(&report);
    let xml = fs::read_to_string(&committed.xml_report).expect("XML report re-emitted");
    assert!(!xml.contains("automatically"), "{xml}");
    assert!(!dir.path("parked").exists(), "nothing parked");
}

#[test]
fn a_retry_that_would_change_nothing_is_rolled_back_without_a_record_or_a_report() {
    // The pipeline as the daemon runs a parked feed's retries (not the last one), with the
    // daemon stopped: `process_retry` on the feed's bytes, under each retry's claim token.
    let dir = TestDir::with(&settings(&Backend::Sqlite, 3600));
    dir.import_orders(MERCHANT, &orders_of(&[0]));
    let feed = dir.path("parked.xml");
    fs::write(
        &feed,
        feed_xml(
            MERCHANT,
            &[
                refund(0, "applies-at-once", 100),
                refund(1, "applies-later", 250),
            ],
        )
        .as_bytes(),
    )
    .expect("write feed");
    let rules = || Rules {
        order_not_found_retry_until: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Rules::default()
    };
    let source = |token: &'static str| Source::new(&feed, "quiet.xml", Some(token), None, None);
    let feeds = |context: &mut Context| {
        context
            .store
            .as_store()
            .recent_feeds(10)
            .expect("feeds")
            .len()
    };
    let mut context = sqlite_context(&dir, rules());
    let first = pipeline::process_file(&mut context, &source("1700000000000000000-1-0"))
        .expect("first processing");
    assert_eq!(first.deferred, Some(1));

    // Order 1 is still missing: message 1 is a replay, message 2 deferred again. Nothing is
    // recorded under the retry's claim token, no report is written.
    let token = "1700000000000000001-1-0";
    let retried = pipeline::process_retry(&mut context, &source(token)).expect("retry");
    let pipeline::Retried::Unchanged(unchanged) = retried else {
        panic!("a retry that changes nothing is rolled back: {retried:?}");
    };
    assert_eq!((unchanged.messages, unchanged.deferred), (2, 1));
    assert_eq!(unchanged.merchant.as_str(), MERCHANT);
    assert_eq!(feeds(&mut context), 1, "no feed record");
    assert!(
        context
            .store
            .as_store()
            .feed_by_claim(token)
            .expect("claim")
            .is_none()
    );
    assert_eq!(reports(&dir, "quiet.xml").len(), 1, "no report");
    // Repeated (a crash before the schedule was rewritten): the same again.
    assert!(matches!(
        pipeline::process_retry(&mut context, &source(token)),
        Ok(pipeline::Retried::Unchanged(_))
    ));
    assert_eq!(feeds(&mut context), 1);
    drop(context);

    // The order is imported: the retry under that same token commits and reports, and a
    // repetition of it (a crash before the schedule was rewritten) only re-emits its report.
    dir.import_orders(MERCHANT, &orders_of(&[1]));
    let mut context = sqlite_context(&dir, rules());
    let pipeline::Retried::Processed(applied) =
        pipeline::process_retry(&mut context, &source(token)).expect("retry")
    else {
        panic!("the retry that applies is committed");
    };
    assert!(!applied.recovered);
    assert_eq!(applied.deferred, Some(0));
    assert_eq!(applied.outcome.messages_successful, 2);
    assert_eq!(applied.outcome.duplicate_of, Some(first.outcome.feed_id));
    let pipeline::Retried::Processed(repeated) =
        pipeline::process_retry(&mut context, &source(token)).expect("repeated retry")
    else {
        panic!("a committed retry is re-emitted");
    };
    assert!(repeated.recovered);
    assert_eq!(repeated.outcome.feed_id, applied.outcome.feed_id);
    assert_eq!(feeds(&mut context), 2);
    assert_eq!(reports(&dir, "quiet.xml").len(), 2);

    // Nothing deferred and nothing to change (every message a replay): committed all the
    // same, since such a retry unparks the feed and its report says how it ended.
    let pipeline::Retried::Processed(replayed) =
        pipeline::process_retry(&mut context, &source("1700000000000000002-1-0")).expect("retry")
    else {
        panic!("a retry that leaves nothing deferred is reported");
    };
    assert_eq!(replayed.deferred, Some(0));
    assert_eq!(
        result_codes(
            &serde_json::from_slice(&fs::read(&replayed.json_report).expect("report"))
                .expect("JSON")
        ),
        ["DUPLICATE_ADJUSTMENT", "DUPLICATE_ADJUSTMENT"]
    );
    drop(context);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(1))), 250);
}

#[test]
fn a_feed_that_cannot_be_parked_yet_is_reported_and_counted_once_and_keeps_its_window() {
    // QA10-3: parked/ could not be written (read-only, full; here a regular file takes its
    // place, which stops root too). The daemon let go of the feed, took it up again at every
    // rescan, rewrote its report with a new end of the retry window, counted it as
    // "recovered" each time, and once parking worked the window counted from then instead
    // of from the feed's processing. Now parking alone is retried, with the schedule made at
    // the processing.
    let port = free_port();
    let dir = TestDir::with(&Settings {
        http_listen: Some(format!("127.0.0.1:{port}")),
        ..settings(&Backend::Sqlite, 120)
    });
    dir.import_orders(MERCHANT, &orders_of(&[0]));
    let mut daemon = dir.spawn_daemon();
    // Once it watches the inbox: its folders are checked (and made) by then.
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    let parked = dir.path("parked");
    let saved = dir.path(".parked-saved");
    fs::rename(&parked, &saved).expect("set parked/ aside");
    fs::write(&parked, b"not a folder").expect("block parked/");
    dir.drop_file(
        "M_TEST/unparked.xml",
        feed_xml(MERCHANT, &[refund(1, "not-yet", 250)]).as_bytes(),
    );
    wait_for("a report", LONG, || {
        !reports(&dir, "unparked.xml").is_empty()
    });
    let report = reports(&dir, "unparked.xml").remove(0).1;
    assert_says_it_is_retried(&report);
    wait_for("a failed parking", LONG, || {
        daemon.log().contains("cannot park the feed")
    });
    // Longer than the rescan interval (5 s), after which the feed used to be taken up again.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(dir.files_in("work").len(), 1, "the feed waits in work/");
    let now = reports(&dir, "unparked.xml");
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].1, report, "the report is not rewritten");
    fs::remove_file(&parked).expect("unblock parked/");
    fs::rename(&saved, &parked).expect("put parked/ back");
    wait_for("the feed to be parked", LONG, || {
        schedules(&dir).len() == 1 && dir.files_in("work").is_empty()
    });
    let first = first_processed_at(&dir);
    let processed = processed_at(&report);
    assert!(
        (first - processed).num_seconds().abs() <= 1,
        "the window counts from the processing ({processed}), not from the parking ({first})"
    );
    let metrics = http_get(port, "/metrics");
    for line in [
        "adjustd_feeds_total{outcome=\"complete\"} 1",
        "adjustd_feeds_total{outcome=\"recovered\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    daemon.stop();
    let log = daemon.log();
    assert!(!log.contains("taking up feeds in work/"), "{log}");
    assert!(!log.contains("the next start parks it"), "{log}");
    let summaries = log
        .lines()
        .filter(|line| line.contains("feed processed") && line.contains("file=unparked.xml"))
        .count();
    assert_eq!(summaries, 1, "{log}");
    let error = log
        .lines()
        .find(|line| line.contains("cannot park the feed"))
        .expect("the parking error");
    assert!(
        error.contains("folder=") && error.contains("parked") && error.contains("error="),
        "{error}"
    );
    assert!(
        log.contains("feed parked for ORDER_NOT_FOUND retries"),
        "{log}"
    );
}
