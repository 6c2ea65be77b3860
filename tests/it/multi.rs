//! Several real `adjustd run` processes on one PostgreSQL database: once sharing one inbox,
//! once with an inbox each. Feeds overlap on a few orders, and their refunds together ask
//! for several times what each item was charged, so instances race for the same caps.
//! Halfway through, the database drops every connection and refuses new ones for a moment
//! (what clients see of a server restart, without restarting the server other tests use).
//!
//! Checks, from the reports and the database: every feed has exactly one report and none
//! failed; nothing is over-refunded; every accepted message is in the store exactly once
//! (and nothing else is); each item's stored total equals the sum of its accepted refunds.
//!
//! Also: an instance whose store is away gives the feeds it claimed but has not started back
//! to the shared inbox at once, and fails its health check, so a peer takes them.
//!
//! `ADJUSTD_MULTI_FEEDS` (default 500 per test) and `ADJUSTD_MULTI_INSTANCES` (default 3)
//! scale it. Owns no production code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adjustd::model::{
    AmazonOrderId, Component, Currency, FulfillmentChannel, MerchantId, OrderItemCode,
    PriceComponent,
};
use adjustd::store::postgres::PgStore;
use adjustd::store::{OrderRow, Store};
use serde_json::Value;

use crate::daemon::{free_port, http_get};
use crate::util::{Refund, feed_xml, item_code, order_id, wait_for};

use crate::store_pg::TestDb;

const MERCHANT: &str = "M_MULTI";
/// Orders the feeds share.
const ORDERS: u32 = 30;
/// Principal charged per order, in cents.
const CHARGED: i64 = 10_000;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator (no dependency, same feeds every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// One generated feed file.
struct Feed {
    name: String,
    refunds: Vec<Refund>,
    bytes: Vec<u8>,
}

/// `count` feeds of 1-3 refunds of 5-20.00 on the shared orders, every 25th a byte-for-byte
/// copy of an earlier one under another name (a duplicate upload).
fn generate_feeds(count: usize, seed: u64) -> Vec<Feed> {
    let mut random = Lcg(seed);
    let mut feeds: Vec<Feed> = Vec::with_capacity(count);
    for n in 0..count {
        if n % 25 == 24 {
            let original = random.next(n as u64) as usize;
            let (refunds, bytes) = (
                feeds[original].refunds.clone(),
                feeds[original].bytes.clone(),
            );
            feeds.push(Feed {
                name: format!("dup-{n:05}.xml"),
                refunds,
                bytes,
            });
            continue;
        }
        let messages = 1 + random.next(3) as usize;
        let refunds: Vec<Refund> = (0..messages)
            .map(|m| Refund {
                order: random.next(u64::from(ORDERS)) as u32,
                cents: 500 * (1 + random.next(4) as i64),
                key: format!("S{seed}-F{n}-M{m}"),
            })
            .collect();
        let bytes = feed_xml(MERCHANT, &refunds).into_bytes();
        feeds.push(Feed {
            name: format!("feed-{n:05}.xml"),
            refunds,
            bytes,
        });
    }
    feeds
}

fn import_orders(url: &str) {
    let mut store = PgStore::connect(url).expect("connect for import");
    let usd = Currency::from_code("USD").expect("USD");
    let rows: Vec<OrderRow> = (0..ORDERS)
        .map(|n| OrderRow {
            line: n + 2,
            amazon_order_id: AmazonOrderId::new(&order_id(n)).expect("order id"),
            merchant_order_id: None,
            item_code: OrderItemCode::new(&item_code(n)).expect("item code"),
            merchant_item_id: None,
            purchase_date: None,
            sku: format!("SKU-{n}"),
            quantity_ordered: 1,
            quantity_shipped: Some(1),
            currency: Some(usd),
            charged: vec![(Component::Price(PriceComponent::Principal), CHARGED)],
            channel: Some(FulfillmentChannel::Merchant),
        })
        .collect();
    store
        .import_orders(&MerchantId::new(MERCHANT).expect("merchant"), &rows)
        .expect("import orders");
}

/// The folder of one test: config, shared outbox/archive/failed, one or more inboxes.
struct Site {
    dir: tempfile::TempDir,
    url: String,
}

impl Site {
    fn new(url: &str) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = "[paths]\ninbox = \"inbox\"\noutbox = \"outbox\"\narchive = \"archive\"\n\
                      failed = \"failed\"\nwork = \"work\"\n\
                      [inbox]\nsettle_ms = 50\nwatch = \"poll\"\npoll_interval_ms = 50\n\
                      rescan_interval_secs = 2\n\
                      [daemon]\nshutdown_timeout_secs = 20\nmax_backoff_secs = 1\n";
        fs::write(dir.path().join("adjustd.toml"), config).expect("config");
        for folder in ["inbox", "outbox", "archive", "failed", "work", "staging"] {
            fs::create_dir_all(dir.path().join(folder)).expect("folder");
        }
        Site {
            dir,
            url: url.to_owned(),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Starts `adjustd run`; with `own` set, on its own inbox and work folders.
    fn spawn(&self, index: usize, own: bool) -> Instance {
        self.spawn_with(index, own, &[])
    }

    /// [`Site::spawn`] with more environment variables (`ADJUSTD_STORE_URL` among them
    /// overrides the site's store).
    fn spawn_with(&self, index: usize, own: bool, env: &[(&str, &str)]) -> Instance {
        let log_path = self.path(&format!("instance-{index}.log"));
        let log = fs::File::create(&log_path).expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_adjustd"));
        command
            .arg("--config")
            .arg(self.path("adjustd.toml"))
            .arg("run")
            .env("ADJUSTD_STORE_URL", &self.url)
            .env("RUST_LOG", "adjustd=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if own {
            for folder in [format!("inbox-{index}"), format!("work-{index}")] {
                fs::create_dir_all(self.path(&folder)).expect("folder");
            }
            command
                .env("ADJUSTD_PATHS_INBOX", self.path(&format!("inbox-{index}")))
                .env("ADJUSTD_PATHS_WORK", self.path(&format!("work-{index}")));
        }
        Instance {
            child: Some(command.spawn().expect("spawn adjustd run")),
            log_path,
        }
    }

    /// Writes a feed into `inbox` atomically (staged, then renamed in).
    fn drop_feed(&self, inbox: &str, feed: &Feed) {
        let staged = self.path("staging").join(&feed.name);
        fs::write(&staged, &feed.bytes).expect("stage feed");
        fs::rename(&staged, self.path(inbox).join(&feed.name)).expect("drop feed");
    }

    /// The JSON reports in the outbox, by file name.
    fn reports(&self) -> HashMap<String, Vec<Value>> {
        let mut reports: HashMap<String, Vec<Value>> = HashMap::new();
        for path in files_under(&self.path("outbox")) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.ends_with(".report.json") && !n.starts_with('.')) {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let file = json["file_name"].as_str().unwrap_or_default().to_owned();
            reports.entry(file).or_default().push(json);
        }
        reports
    }
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

/// A running `adjustd run`, killed on drop.
struct Instance {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Instance {
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("try_wait").is_none())
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then a clean exit within 30 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(status.success(), "exit {status}; log:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Instance {
    /// SIGKILL: the instance dies at once, its claims and locks with it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What clients see of a server restart: every connection to the database is dropped and
/// new ones are refused for `down`. With `ADJUSTD_TEST_PG_RESTART=1` (and the right to run
/// `pg_ctlcluster`), the server itself is restarted instead; that is opt-in because it
/// breaks every other test using the server at that moment.
fn outage(db: &mut TestDb, down: Duration) {
    if std::env::var("ADJUSTD_TEST_PG_RESTART").is_ok_and(|v| v == "1") {
        let version = fs::read_dir("/etc/postgresql")
            .expect("/etc/postgresql")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .expect("a cluster version");
        let started = Instant::now();
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "restart"])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster restart failed");
        db.reconnect_admin();
        eprintln!(
            "outage: restarted PostgreSQL {version} in {:?}",
            started.elapsed()
        );
        return;
    }
    db.set_allow_connections(false);
    let terminated = db.terminate_connections();
    std::thread::sleep(down);
    db.set_allow_connections(true);
    eprintln!("outage: terminated {terminated} connections, refused new ones for {down:?}");
}

fn run(own_inboxes: bool, seed: u64) {
    let Some(mut db) = TestDb::create() else {
        return;
    };
    let feeds_count = env_number("ADJUSTD_MULTI_FEEDS", 500);
    let instances_count = env_number("ADJUSTD_MULTI_INSTANCES", 3).clamp(1, 8);
    import_orders(&db.url);
    let site = Site::new(&db.url);
    let feeds = generate_feeds(feeds_count, seed);
    let mut instances: Vec<Instance> = (0..instances_count)
        .map(|i| site.spawn(i, own_inboxes))
        .collect();
    let inbox_of = |n: usize| {
        if own_inboxes {
            format!("inbox-{}", n % instances_count)
        } else {
            "inbox".to_owned()
        }
    };
    let started = Instant::now();
    let half = feeds.len() / 2;
    for (n, feed) in feeds[..half].iter().enumerate() {
        site.drop_feed(&inbox_of(n), feed);
    }
    // Once some are done, take the database away for a moment, then drop the rest.
    let deadline = Instant::now() + Duration::from_secs(120);
    while site.reports().len() < half / 3 {
        assert!(Instant::now() < deadline, "no progress before the outage");
        std::thread::sleep(Duration::from_millis(20));
    }
    outage(&mut db, Duration::from_secs(2));
    for (n, feed) in feeds.iter().enumerate().skip(half) {
        site.drop_feed(&inbox_of(n), feed);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = site.reports().len();
        if done >= feeds.len() {
            break;
        }
        if Instant::now() > deadline {
            for instance in &instances {
                let log = instance.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- {}:\n{}", instance.log_path.display(), tail.join("\n"));
            }
            panic!("only {done} of {} feeds reported", feeds.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let (mut conflicts, mut unavailable) = (0, 0);
    for instance in &mut instances {
        instance.stop();
        let log = instance.log();
        conflicts += log.matches("conflict").count();
        unavailable += log.matches("unavailable").count();
    }
    eprintln!(
        "multi: log lines naming a conflict: {conflicts}, the database unavailable: {unavailable}"
    );
    eprintln!(
        "multi ({} inboxes): {} feeds by {instances_count} instances in {elapsed:?}",
        if own_inboxes { "own" } else { "shared" },
        feeds.len()
    );
    check(&site, &mut db, &feeds);
}

fn check(site: &Site, db: &mut TestDb, feeds: &[Feed]) {
    let reports = site.reports();
    let leftovers: Vec<PathBuf> = ["failed", "work", "inbox"]
        .iter()
        .flat_map(|f| files_under(&site.path(f)))
        .chain((0..8).flat_map(|i| {
            files_under(&site.path(&format!("inbox-{i}")))
                .into_iter()
                .chain(files_under(&site.path(&format!("work-{i}"))))
        }))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(leftovers.is_empty(), "files left over: {leftovers:?}");

    let mut client = db.client();
    let mut expected_adjustments: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut accepted_per_order: BTreeMap<u32, i64> = BTreeMap::new();
    let mut rejected_messages = 0;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut duplicates = 0;
    let mut feed_ids = BTreeSet::new();
    for feed in feeds {
        let found = reports.get(&feed.name).map_or(0, Vec::len);
        assert_eq!(found, 1, "{}: {found} reports", feed.name);
        let report = &reports[&feed.name][0];
        let feed_id = report["feed_id"].as_i64().expect("feed_id");
        assert!(feed_ids.insert(feed_id), "feed id {feed_id} reported twice");
        assert_eq!(report["status"], "Complete", "{}: {report}", feed.name);
        if !report["duplicate_of"].is_null() {
            duplicates += 1;
            continue;
        }
        let results = report["results"].as_array().expect("results");
        for (index, refund) in feed.refunds.iter().enumerate() {
            let message_id = index as i64 + 1;
            let problems: Vec<&Value> = results
                .iter()
                .filter(|r| r["message_id"].as_i64() == Some(message_id))
                .collect();
            if problems.iter().any(|r| r["result"] == "Error") {
                for problem in &problems {
                    let name = problem["code_name"].as_str().unwrap_or("?").to_owned();
                    *codes.entry(name).or_default() += 1;
                }
                rejected_messages += 1;
                continue;
            }
            // Random refunds of the same amount on the same order under new keys: the
            // resubmission review warning (refund-rules c3.2); the message applies.
            assert!(
                problems
                    .iter()
                    .all(|r| r["code_name"] == "POSSIBLE_RESUBMISSION" && r["result"] == "Warning"),
                "{}: {problems:?}",
                feed.name
            );
            expected_adjustments.insert((feed_id, message_id));
            *accepted_per_order.entry(refund.order).or_default() += refund.cents;
        }
    }
    // Every accepted message is in the store once, and nothing else is.
    let stored: Vec<(i64, i64)> = client
        .query("SELECT feed_id, message_id FROM adjustments", &[])
        .expect("adjustments")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let stored_set: BTreeSet<(i64, i64)> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "an adjustment stored twice");
    assert_eq!(stored_set, expected_adjustments);
    // Every committed feed is one of ours, once.
    let committed: i64 = client
        .query_one("SELECT count(*) FROM feeds", &[])
        .expect("feeds")
        .get(0);
    assert_eq!(committed, i64::try_from(feeds.len()).expect("count"));
    // Totals: the stored total of each item is the sum of its accepted refunds, never above
    // what was charged, and equal to the sum of its adjustment amounts.
    for n in 0..ORDERS {
        let row = client
            .query_one(
                "SELECT c.charged, c.refunded, \
                 (SELECT COALESCE(sum(m.amount), 0)::bigint FROM adjustment_amounts m \
                  JOIN adjustments a ON a.id = m.adjustment_id \
                  WHERE a.item_id = i.id AND m.component = 'Principal') \
                 FROM orders o JOIN order_items i ON i.order_id = o.id \
                 JOIN item_components c ON c.item_id = i.id AND c.component = 'Principal' \
                 WHERE o.amazon_order_id = $1",
                &[&order_id(n)],
            )
            .expect("totals");
        let (charged, refunded, summed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let accepted = accepted_per_order.get(&n).copied().unwrap_or(0);
        assert_eq!(refunded, accepted, "order {n}: store vs reports");
        assert_eq!(refunded, summed, "order {n}: total vs adjustments");
        assert!(refunded <= charged, "order {n} over-refunded");
    }
    // The caps were actually contested.
    assert!(
        rejected_messages > 0,
        "no refund hit a cap: not a contention test"
    );
    // Rejections are cap rejections only: an outage or a conflict never turns into one.
    assert!(
        codes.keys().all(|c| c == "COMPONENT_EXCEEDS_REMAINING"),
        "unexpected rejections: {codes:?}"
    );
    eprintln!(
        "multi: {} adjustments applied, {rejected_messages} messages rejected ({codes:?}), \
         {duplicates} duplicate feeds",
        stored.len()
    );
}

#[test]
fn instances_sharing_one_inbox_apply_each_feed_once() {
    run(false, 1);
}

#[test]
fn instances_with_an_inbox_each_apply_each_feed_once() {
    run(true, 2);
}

/// Names (not dot-files) of the files directly in `folder`.
fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn an_instance_whose_store_is_away_gives_its_claims_back_and_says_so_on_healthz() {
    // Instance 0's database refuses connections while 20 feeds arrive in the shared inbox:
    // it claims a batch, its first feed fails, and the rest of the batch goes back to the
    // inbox at once while that feed is retried in place (still in work/, under its claim);
    // /healthz answers 503 meanwhile. A peer on a store that works (its own database here,
    // so that only one instance is cut off) takes the given-back feeds; when the database
    // is back, instance 0 finishes its feed and /healthz answers ok again.
    let Some(mut away) = TestDb::create() else {
        return;
    };
    let Some(peer_db) = TestDb::create() else {
        return;
    };
    import_orders(&away.url);
    import_orders(&peer_db.url);
    let site = Site::new(&away.url);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut instance = site.spawn_with(0, false, &[("ADJUSTD_HTTP_LISTEN", &listen)]);
    wait_for(
        "instance 0 to watch the inbox",
        Duration::from_secs(20),
        || instance.log().contains("watch mode"),
    );
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    away.set_allow_connections(false);
    away.terminate_connections();
    let feeds = generate_feeds(20, 3);
    let staging = site.path("staging");
    for feed in &feeds {
        fs::write(staging.join(&feed.name), &feed.bytes).expect("stage feed");
    }
    for feed in &feeds {
        fs::rename(
            staging.join(&feed.name),
            site.path("inbox").join(&feed.name),
        )
        .expect("drop feed");
    }
    wait_for(
        "one feed in hand and the rest given back",
        Duration::from_secs(20),
        || {
            instance.log().contains("transient failure")
                && names_in(&site.path("work")).len() == 1
                && names_in(&site.path("inbox")).len() == 19
        },
    );
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("store unavailable since"), "{health}");
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.lines().any(
            |line| line.starts_with("adjustd_store_unavailable_seconds ")
                && line != "adjustd_store_unavailable_seconds 0.000"
        ),
        "{metrics}"
    );
    // Still one in hand and nothing more claimed while the store is away.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names_in(&site.path("work")).len(), 1, "{}", instance.log());
    assert!(site.reports().is_empty());

    let mut peer = site.spawn_with(1, false, &[("ADJUSTD_STORE_URL", &peer_db.url)]);
    // Reported, then moved out of work/: wait for both, so only instance 0's claim is left.
    wait_for("the peer to take the 19", Duration::from_secs(60), || {
        site.reports().len() == 19
            && names_in(&site.path("work")).len() == 1
            && names_in(&site.path("inbox")).is_empty()
    });
    assert!(
        instance.is_running(),
        "instance 0 still retries its feed: {}",
        instance.log()
    );

    away.set_allow_connections(true);
    wait_for(
        "instance 0 to finish its feed",
        Duration::from_secs(30),
        || site.reports().len() == 20,
    );
    let reports = site.reports();
    for feed in &feeds {
        assert_eq!(
            reports.get(&feed.name).map_or(0, Vec::len),
            1,
            "{}",
            feed.name
        );
    }
    wait_for("healthz to be ok again", Duration::from_secs(10), || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 200")
    });
    instance.stop();
    peer.stop();
    assert!(names_in(&site.path("work")).is_empty());
    assert!(names_in(&site.path("inbox")).is_empty());
}

#[test]
fn a_feed_that_conflicts_on_every_attempt_says_so_without_calling_the_store_away() {
    // Every attempt at the feed conflicts: a trigger on `feeds` raises PostgreSQL's
    // serialization failure, as a transaction racing another instance's gets. After the
    // pipeline's attempts the log says how many attempts conflicted with another instance,
    // /healthz stays ok (the store answered: it is not away), and the feed waits in work/
    // with nothing committed; once the conflicts stop it is applied once.
    let Some(db) = TestDb::create() else {
        return;
    };
    import_orders(&db.url);
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE FUNCTION always_conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure'; \
             END $$; \
             CREATE TRIGGER always_conflict BEFORE INSERT ON feeds \
             FOR EACH ROW EXECUTE FUNCTION always_conflict();",
        )
        .expect("conflict trigger");
    let site = Site::new(&db.url);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut instance = site.spawn_with(0, false, &[("ADJUSTD_HTTP_LISTEN", &listen)]);
    wait_for(
        "the instance to watch the inbox",
        Duration::from_secs(20),
        || instance.log().contains("watch mode"),
    );
    let feeds = generate_feeds(1, 5);
    site.drop_feed("inbox", &feeds[0]);
    wait_for(
        "the conflicts to be logged as such",
        Duration::from_secs(30),
        || {
            instance
                .log()
                .contains("8 attempts in a row conflicted with another session")
        },
    );
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line == "adjustd_store_unavailable_seconds 0.000"),
        "{metrics}"
    );
    assert!(
        !instance.log().contains("store unavailable"),
        "{}",
        instance.log()
    );
    assert_eq!(names_in(&site.path("work")).len(), 1, "{}", instance.log());
    assert!(site.reports().is_empty());
    let count = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM feeds", &[])
            .expect("count feeds")
            .get(0)
    };
    assert_eq!(count(&mut client), 0, "nothing committed");

    client
        .batch_execute("DROP TRIGGER always_conflict ON feeds")
        .expect("drop trigger");
    wait_for("the feed to be applied", Duration::from_secs(30), || {
        site.reports().len() == 1 && names_in(&site.path("work")).is_empty()
    });
    assert_eq!(count(&mut client), 1, "applied once");
    instance.stop();
}

#[test]
fn a_feed_held_up_by_a_long_lock_wait_fails_healthz_at_once_naming_it() {
    // Every attempt waits 11 s, then gives up as a lock wait does at PostgreSQL's lock
    // timeout (a trigger on `feeds` sleeps, then raises lock_not_available): a session that
    // holds the rows and does not let go. /healthz fails after the first such attempt,
    // naming the feed, not only after all attempts; once an attempt gets past the store it
    // is ok again and the feed is applied once.
    let Some(db) = TestDb::create() else {
        return;
    };
    import_orders(&db.url);
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE FUNCTION wait_then_give_up() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             PERFORM pg_sleep(11); \
             RAISE EXCEPTION 'canceling statement due to lock timeout' USING ERRCODE = 'lock_not_available'; \
             END $$; \
             CREATE TRIGGER wait_then_give_up BEFORE INSERT ON feeds \
             FOR EACH ROW EXECUTE FUNCTION wait_then_give_up();",
        )
        .expect("lock wait trigger");
    let site = Site::new(&db.url);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut instance = site.spawn_with(0, false, &[("ADJUSTD_HTTP_LISTEN", &listen)]);
    wait_for(
        "the instance to watch the inbox",
        Duration::from_secs(20),
        || instance.log().contains("watch mode"),
    );
    let feeds = generate_feeds(1, 5);
    site.drop_feed("inbox", &feeds[0]);
    wait_for("healthz to fail", Duration::from_secs(30), || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 503")
    });
    let health = http_get(port, "/healthz");
    assert!(health.contains("store busy since"), "{health}");
    assert!(health.contains(&feeds[0].name), "{health}");
    assert!(health.contains("lock timeout"), "{health}");
    assert!(
        !instance.log().contains("8 attempts in a row"),
        "shown after the first attempt, not the last: {}",
        instance.log()
    );
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("adjustd_store_lock_wait_seconds ")
                && line != "adjustd_store_lock_wait_seconds 0.000"),
        "{metrics}"
    );

    client
        .batch_execute("DROP TRIGGER wait_then_give_up ON feeds")
        .expect("drop trigger");
    wait_for("the feed to be applied", Duration::from_secs(60), || {
        site.reports().len() == 1 && names_in(&site.path("work")).is_empty()
    });
    wait_for("healthz to be ok again", Duration::from_secs(10), || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 200")
    });
    let count: i64 = client
        .query_one("SELECT count(*) FROM feeds", &[])
        .expect("count feeds")
        .get(0);
    assert_eq!(count, 1, "applied once");
    instance.stop();
}

#[test]
fn an_instance_that_meets_a_newer_schema_holds_its_feeds_and_says_so_on_healthz() {
    // A rolling upgrade: a newer adjustd migrated the shared store while this instance runs,
    // and its next connection (after any reconnect) finds a schema newer than it knows. That
    // is no fault of the feeds: it must not move them to failed/ without a report. It holds
    // the one in hand (in work/, under its claim), gives the rest of its batch back to the
    // shared inbox for upgraded peers, and /healthz answers 503 naming both versions and
    // what to do. Once the store is at its version again (here the newer version's row is
    // taken out; in real life this instance is upgraded and restarted), it finishes.
    let Some(mut db) = TestDb::create() else {
        return;
    };
    import_orders(&db.url);
    let site = Site::new(&db.url);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut instance = site.spawn_with(0, false, &[("ADJUSTD_HTTP_LISTEN", &listen)]);
    wait_for(
        "instance 0 to watch the inbox",
        Duration::from_secs(20),
        || instance.log().contains("watch mode"),
    );
    let supported = adjustd::store::postgres::SCHEMA_VERSION;
    let newer = supported + 1;
    let mut client = db.client();
    client
        .execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, 'future', 'now')",
            &[&newer],
        )
        .expect("a newer version");
    db.terminate_connections();
    let feeds = generate_feeds(5, 4);
    for feed in &feeds {
        site.drop_feed("inbox", feed);
    }
    wait_for(
        "one feed held in hand and the rest given back",
        Duration::from_secs(20),
        || {
            instance
                .log()
                .contains("is newer than this adjustd supports")
                && names_in(&site.path("work")).len() == 1
                && names_in(&site.path("inbox")).len() == 4
        },
    );
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(
        health.contains(&format!(
            "database schema version {newer} is newer than this adjustd supports ({supported})"
        )) && health.contains("upgrade this adjustd"),
        "{health}"
    );
    assert!(
        files_under(&site.path("failed")).is_empty(),
        "{}",
        instance.log()
    );
    assert!(site.reports().is_empty());

    let mut client = db.client();
    client
        .execute("DELETE FROM schema_version WHERE version = $1", &[&newer])
        .expect("back to this version");
    wait_for("every feed reported", Duration::from_secs(30), || {
        site.reports().len() == feeds.len() && names_in(&site.path("inbox")).is_empty()
    });
    wait_for("healthz to be ok again", Duration::from_secs(10), || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 200")
    });
    instance.stop();
    assert!(files_under(&site.path("failed")).is_empty());
    assert!(names_in(&site.path("work")).is_empty());
}

#[test]
fn a_peer_takes_up_the_claims_of_an_instance_that_died_with_them_in_hand() {
    // Instance 0 claims 20 feeds from its own inbox into the shared work/ and gets stuck on
    // the first (a row lock the test holds), its 19 other claims queued behind it. The peer
    // sharing work/ leaves them alone while instance 0 lives (it holds their locks). Then
    // instance 0 is killed (SIGKILL, not restarted): at its next rescan the peer takes up the
    // 20 claims, whose locks died with their claimant, and reports each once.
    let Some(db) = TestDb::create() else {
        return;
    };
    import_orders(&db.url);
    let site = Site::new(&db.url);
    fs::create_dir_all(site.path("inbox-0")).expect("inbox-0");
    let own_inbox = site.path("inbox-0");
    let own_inbox = own_inbox.to_str().expect("UTF-8 path");
    let mut peer = site.spawn(1, false);
    wait_for(
        "the peer to watch the inbox",
        Duration::from_secs(20),
        || peer.log().contains("watch mode"),
    );
    let mut blocker = db.client();
    let mut lock = blocker.transaction().expect("begin");
    lock.execute("SELECT id FROM orders FOR UPDATE", &[])
        .expect("lock every order");
    // All there before instance 0 starts, so that they settle together and it claims them
    // in one batch.
    let feeds = generate_feeds(20, 5);
    for feed in &feeds {
        site.drop_feed("inbox-0", feed);
    }
    let mut instance = site.spawn_with(0, false, &[("ADJUSTD_PATHS_INBOX", own_inbox)]);
    let mut watcher = db.client();
    wait_for(
        "instance 0 to claim all 20 and wait for the row lock",
        Duration::from_secs(20),
        || {
            TestDb::sessions_waiting_on_locks(&mut watcher) == 1
                && names_in(&site.path("work")).len() == 20
                && names_in(&site.path("inbox-0")).is_empty()
        },
    );
    // Longer than the rescan interval (2 s): the peer looked at work/ and found every claim
    // held by a live instance.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(names_in(&site.path("work")).len(), 20, "{}", peer.log());
    assert!(site.reports().is_empty());

    instance.kill();
    lock.rollback().expect("release the orders");
    wait_for("the peer to report all 20", Duration::from_secs(30), || {
        site.reports().len() == feeds.len() && names_in(&site.path("work")).is_empty()
    });
    let reports = site.reports();
    for feed in &feeds {
        assert_eq!(
            reports.get(&feed.name).map_or(0, Vec::len),
            1,
            "{}",
            feed.name
        );
    }
    assert!(files_under(&site.path("failed")).is_empty());
    assert!(
        peer.log().contains("no running instance holds"),
        "{}",
        peer.log()
    );
    peer.stop();
}
