//! The daemon end to end: the real `adjustd run` as a child process on a temp folder with a
//! real SQLite store; files are dropped the way uploaders drop them (slowly, via temp names,
//! by hard link, in bursts) and the tests check reports, moves, logs and the store.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::time::{Duration, Instant};

use crate::util::{
    MERCHANT, Refund, Settings, TestDir, feed_xml, order_id, orders_report,
    refunded_principal_cents, result_codes, wait_for,
};

const LONG: Duration = Duration::from_secs(20);

fn refund(order: u32, key: &str, cents: i64) -> Refund {
    Refund {
        order,
        key: key.to_owned(),
        cents,
    }
}

fn setup(settings: &Settings, orders: u32) -> TestDir {
    let dir = TestDir::with(settings);
    dir.import_orders(MERCHANT, &orders_report(orders));
    dir
}

/// [`setup`] with default settings and the HTTP listener on a free port (returned).
fn setup_with_metrics(orders: u32) -> (TestDir, u16) {
    let port = free_port();
    let dir = setup(
        &Settings {
            http_listen: Some(format!("127.0.0.1:{port}")),
            ..Settings::default()
        },
        orders,
    );
    (dir, port)
}

/// Waits until `name` has a report and returns it (asserting there is exactly one).
fn report_of(dir: &TestDir, name: &str) -> serde_json::Value {
    wait_for(&format!("a report for {name}"), LONG, || {
        !dir.reports_for(name).is_empty()
    });
    // Let a wrongly repeated processing show up before we count.
    let mut reports = dir.reports_for(name);
    assert_eq!(reports.len(), 1, "exactly one report for {name}");
    reports.remove(0)
}

fn wait_until_idle(dir: &TestDir) {
    wait_for("inbox and work/ to be empty", LONG, || {
        dir.files_in("inbox").is_empty() && dir.files_in("work").is_empty()
    });
}

#[test]
fn slow_writer_in_place_is_processed_once_when_complete() {
    let dir = setup(&Settings::default(), 2);
    let mut daemon = dir.spawn_daemon();
    let xml = feed_xml(
        MERCHANT,
        &[refund(0, "slow-1", 100), refund(1, "slow-2", 200)],
    );
    let bytes = xml.as_bytes();
    let path = dir.path("inbox/slow.xml");
    let mut file = fs::File::create(&path).expect("create");
    // Pauses shorter than the settle time (200 ms), then one longer than it while the root
    // element is still open: the content gate must hold the file.
    for chunk in bytes[..bytes.len() / 2].chunks(64) {
        file.write_all(chunk).expect("write");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        dir.reports_for("slow.xml").is_empty(),
        "processed while incomplete"
    );
    assert!(path.exists(), "claimed while incomplete");
    file.write_all(&bytes[bytes.len() / 2..])
        .expect("write rest");
    drop(file);
    let report = report_of(&dir, "slow.xml");
    assert_eq!(report["status"], "Complete");
    assert_eq!(report["summary"]["messages_processed"], 2);
    assert_eq!(report["summary"]["messages_successful"], 2);
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("archive").len(), 1);
    daemon.stop();
    assert!(
        daemon.log().contains("xml not complete yet"),
        "{}",
        daemon.log()
    );
}

#[test]
fn an_upload_that_goes_on_after_the_claim_waits_in_the_inbox_instead_of_being_truncated() {
    // QA4 finding 2: an in-place writer that still holds its descriptor when the feed is
    // claimed (a re-upload that opened the file just before the claim) goes on writing to
    // the claimed file. The daemon read a document that ended early and rejected it at once
    // as TRUNCATED, and the complete upload then sat in failed/. Such a file is an upload
    // still in progress (DESIGN, "Content gate"): it goes back to the inbox and waits, and is
    // processed once complete.
    let dir = setup(&Settings::default(), 202);
    // A feed in hand for a few seconds first, claimed in the same batch, so that the upload
    // below is rewritten in work/ before the daemon reads it.
    let refunds: Vec<Refund> = (0..4_000)
        .map(|n| refund(n % 200, &format!("first-{n}"), 1))
        .collect();
    dir.drop_file("first.xml", feed_xml(MERCHANT, &refunds).as_bytes());
    let xml = feed_xml(
        MERCHANT,
        &[refund(200, "up-1", 100), refund(201, "up-2", 200)],
    );
    let bytes = xml.as_bytes();
    let path = dir.path("inbox/up.xml");
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .expect("create");
    file.write_all_at(bytes, 0).expect("write");
    let mut daemon = dir.spawn_daemon();
    wait_for("the upload to be claimed", LONG, || !path.exists());
    // The uploader starts again on the same inode: truncates, writes half, pauses.
    file.set_len(0).expect("truncate");
    let half = bytes.len() / 2;
    file.write_all_at(&bytes[..half], 0).expect("write half");
    assert!(
        !daemon.log().contains("processing feed file=up.xml"),
        "the first feed was done before the upload was cut; log:\n{}",
        daemon.log()
    );
    wait_for(
        "the cut upload to go back to the inbox (or, wrongly, to get a report)",
        Duration::from_secs(180),
        || path.exists() || !dir.reports_for("up.xml").is_empty(),
    );
    assert!(
        dir.reports_for("up.xml").is_empty(),
        "an upload cut after its claim was reported at once: {:?}",
        dir.reports_for("up.xml")
    );
    assert!(
        dir.files_in("failed").is_empty(),
        "{:?}",
        dir.files_in("failed")
    );
    // The rest comes, with a pause longer than the settle time: the content gate holds it.
    let three_quarters = half + (bytes.len() - half) / 2;
    file.write_all_at(
        &bytes[half..three_quarters],
        u64::try_from(half).expect("size"),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(600));
    file.write_all_at(
        &bytes[three_quarters..],
        u64::try_from(three_quarters).expect("size"),
    )
    .expect("write");
    drop(file);
    let report = report_of(&dir, "up.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    assert_eq!(report["summary"]["messages_successful"], 2, "{report}");
    report_of(&dir, "first.xml");
    wait_until_idle(&dir);
    assert!(
        dir.files_in("failed").is_empty(),
        "{:?}",
        dir.files_in("failed")
    );
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(200))), 100);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(201))), 200);
    let log = daemon.log();
    assert!(log.contains("given back to the inbox"), "{log}");
}

#[test]
fn a_feed_rewritten_while_it_is_processed_is_applied_as_the_version_its_hash_names() {
    // QA4 finding 2, second half: the file was read three times (hash, parse, key digest)
    // with nothing checking that the reads saw the same bytes, so a same-length rewrite
    // during processing committed one version's hash with another's amounts. Now the
    // attempt is dropped and the file waits again; whatever the timing, the applied amounts
    // are those of the version whose hash the report names.
    const MESSAGES: u32 = 6_000;
    let dir = setup(&Settings::default(), 200);
    let version = |cents: i64| {
        let refunds: Vec<Refund> = (0..MESSAGES)
            .map(|n| refund(n % 200, &format!("rw-{n}"), cents))
            .collect();
        feed_xml(MERCHANT, &refunds).into_bytes()
    };
    let (first, second) = (version(1), version(2));
    assert_eq!(first.len(), second.len());
    let path = dir.path("inbox/rewritten.xml");
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .expect("create");
    file.write_all_at(&first, 0).expect("write");
    let mut daemon = dir.spawn_daemon();
    wait_for("the feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=rewritten.xml")
    });
    file.write_all_at(&second, 0).expect("rewrite");
    drop(file);
    let report = report_of(&dir, "rewritten.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    wait_until_idle(&dir);
    daemon.stop();
    let total: i64 = (0..200)
        .map(|n| refunded_principal_cents(&dir.order(&order_id(n))))
        .sum();
    let hash = report["content_hash"].as_str().expect("hash");
    let expected = if hash == sha256_hex(&first) {
        i64::from(MESSAGES)
    } else {
        assert_eq!(hash, sha256_hex(&second), "the hash of neither version");
        2 * i64::from(MESSAGES)
    };
    assert_eq!(
        total, expected,
        "amounts of another version than the hash names"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn filepart_rename_hard_link_and_rclone_partial_publishes() {
    let dir = setup(&Settings::default(), 3);
    let mut daemon = dir.spawn_daemon();
    let slow_write = |temp: &str, xml: &str| {
        let mut file = fs::File::create(dir.path(&format!("inbox/{temp}"))).expect("create");
        for chunk in xml.as_bytes().chunks(xml.len() / 3 + 1) {
            file.write_all(chunk).expect("write");
            // Longer than the settle time: only the temp name keeps it from being taken.
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // WinSCP: NAME.filepart, then rename.
    slow_write("a.xml.filepart", &feed_xml(MERCHANT, &[refund(0, "a", 1)]));
    // OpenSSH's sftp-server publishes a rename as link() + unlink().
    slow_write("b.xml.filepart", &feed_xml(MERCHANT, &[refund(1, "b", 2)]));
    // rclone: .NAME.XXXXXX.partial, then rename.
    slow_write(
        ".c.xml.Ab12Cd.partial",
        &feed_xml(MERCHANT, &[refund(2, "c", 3)]),
    );
    assert!(dir.json_reports().is_empty(), "a temp name was processed");
    fs::rename(dir.path("inbox/a.xml.filepart"), dir.path("inbox/a.xml")).expect("rename");
    fs::hard_link(dir.path("inbox/b.xml.filepart"), dir.path("inbox/b.xml")).expect("link");
    fs::remove_file(dir.path("inbox/b.xml.filepart")).expect("unlink");
    fs::rename(
        dir.path("inbox/.c.xml.Ab12Cd.partial"),
        dir.path("inbox/c.xml"),
    )
    .expect("rename");
    for name in ["a.xml", "b.xml", "c.xml"] {
        let report = report_of(&dir, name);
        assert_eq!(
            report["summary"]["messages_successful"], 1,
            "{name}: {report}"
        );
    }
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("archive").len(), 3);
    daemon.stop();
}

#[test]
fn truncated_xml_waits_then_is_reported_after_the_grace() {
    let dir = setup(
        &Settings {
            truncated_grace_secs: 2,
            ..Settings::default()
        },
        2,
    );
    let mut daemon = dir.spawn_daemon();
    let complete_later = feed_xml(MERCHANT, &[refund(0, "late", 100)]);
    let never_complete = feed_xml(MERCHANT, &[refund(1, "never", 100)]);
    let cut = complete_later.len() - 30;
    fs::write(dir.path("inbox/later.xml"), &complete_later[..cut]).expect("write");
    fs::write(
        dir.path("inbox/never.xml"),
        &never_complete[..never_complete.len() - 30],
    )
    .expect("write");
    // An upload is empty for a moment before its first bytes: it waits like any other, and
    // one that stays empty is reported as what it is.
    let filled_later = feed_xml(MERCHANT, &[refund(0, "filled", 100)]);
    fs::write(dir.path("inbox/filled.xml"), b"").expect("write");
    fs::write(dir.path("inbox/empty.xml"), b"").expect("write");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        dir.json_reports().is_empty(),
        "an incomplete file was processed early"
    );
    OpenOptions::new()
        .append(true)
        .open(dir.path("inbox/later.xml"))
        .expect("open")
        .write_all(&complete_later.as_bytes()[cut..])
        .expect("append");
    fs::write(dir.path("inbox/filled.xml"), &filled_later).expect("write");
    let report = report_of(&dir, "later.xml");
    assert_eq!(report["status"], "Complete");
    assert_eq!(report["summary"]["messages_successful"], 1);
    let started = Instant::now();
    let report = report_of(&dir, "never.xml");
    assert_eq!(report["status"], "Rejected");
    assert!(
        result_codes(&report).contains(&"TRUNCATED".to_owned()),
        "{report}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let report = report_of(&dir, "filled.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    let report = report_of(&dir, "empty.xml");
    assert_eq!(report["status"], "Rejected");
    assert_eq!(result_codes(&report), ["TRUNCATED"], "{report}");
    let description = report["results"][0]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("the file is empty (0 bytes)")
            && !description.contains("did not complete"),
        "{report}"
    );
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("failed").len(), 2);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 200);
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(1))), 0);
}

#[test]
fn same_content_twice_and_same_name_with_new_content() {
    let dir = setup(&Settings::default(), 2);
    let mut daemon = dir.spawn_daemon();
    let first = feed_xml(MERCHANT, &[refund(0, "k1", 150)]);
    dir.drop_file("feed.xml", first.as_bytes());
    let report = report_of(&dir, "feed.xml");
    let first_id = report["feed_id"].as_u64().expect("feed id");
    dir.drop_file("copy.xml", first.as_bytes());
    let duplicate = report_of(&dir, "copy.xml");
    assert_eq!(
        duplicate["duplicate_of"].as_u64(),
        Some(first_id),
        "{duplicate}"
    );
    assert!(result_codes(&duplicate).contains(&"DUPLICATE_FEED".to_owned()));
    // The same name again with new content is a new feed.
    dir.drop_file(
        "feed.xml",
        feed_xml(MERCHANT, &[refund(0, "k2", 50)]).as_bytes(),
    );
    wait_for("two reports for feed.xml", LONG, || {
        dir.reports_for("feed.xml").len() == 2
    });
    wait_until_idle(&dir);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 200);
    // Three feeds archived under names that do not collide.
    assert_eq!(dir.files_in("archive").len(), 3);
}

#[test]
fn symlink_out_of_the_inbox_is_not_followed() {
    let dir = setup(&Settings::default(), 1);
    let outside = dir.path("outside.xml");
    let xml = feed_xml(MERCHANT, &[refund(0, "link", 100)]);
    fs::write(&outside, &xml).expect("write");
    std::os::unix::fs::symlink(&outside, dir.path("inbox/link.xml")).expect("symlink");
    fs::create_dir(dir.path("inbox/M_TEST")).expect("merchant folder");
    fs::create_dir(dir.path("inbox/M_TEST/nested")).expect("nested folder");
    // Not a merchant folder: a merchant id has no blank at either end.
    fs::create_dir(dir.path("inbox/M_TEST ")).expect("misnamed folder");
    fs::write(dir.path("inbox/M_TEST /in.xml"), &xml).expect("write");
    // A link to a folder tree outside: never watched, so it cannot use up inotify watches.
    for n in 0..200 {
        fs::create_dir_all(dir.path(&format!("tree/{n}"))).expect("tree");
    }
    std::os::unix::fs::symlink(dir.path("tree"), dir.path("inbox/M_TEST/tree")).expect("link");
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "real.xml",
        feed_xml(MERCHANT, &[refund(0, "real", 100)]).as_bytes(),
    );
    report_of(&dir, "real.xml");
    let watches = inotify_watches(daemon.pid());
    assert!(
        watches < 20,
        "{watches} inotify watches: the symlinked tree is watched"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(dir.reports_for("link.xml").is_empty());
    assert!(
        fs::symlink_metadata(dir.path("inbox/link.xml")).is_ok(),
        "symlink stays"
    );
    assert_eq!(
        fs::read_to_string(&outside).expect("target"),
        xml,
        "target untouched"
    );
    daemon.stop();
    let log = daemon.log();
    assert_eq!(log.matches("not a regular file").count(), 3, "{log}");
    assert!(
        log.contains("link.xml") && log.contains("M_TEST/nested"),
        "{log}"
    );
    let misnamed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("a folder whose name is not a merchant id"))
        .collect();
    assert_eq!(misnamed.len(), 1, "{log}");
    assert!(misnamed[0].contains("folder=M_TEST "), "{log}");
    assert!(dir.path("inbox/M_TEST /in.xml").is_file(), "left in place");
}

#[test]
fn merchant_folder_binds_its_merchant() {
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    // A feed for M_TEST dropped into another seller's folder is rejected there.
    dir.drop_file(
        "OTHER/foreign.xml",
        feed_xml(MERCHANT, &[refund(0, "x", 100)]).as_bytes(),
    );
    dir.drop_file(
        "M_TEST/own.xml",
        feed_xml(MERCHANT, &[refund(0, "y", 100)]).as_bytes(),
    );
    let foreign = report_of(&dir, "foreign.xml");
    assert_eq!(foreign["status"], "Rejected");
    let own = report_of(&dir, "own.xml");
    assert_eq!(own["status"], "Complete");
    wait_until_idle(&dir);
    let other_reports: Vec<_> = dir
        .json_reports()
        .into_iter()
        .filter(|(path, _)| path.starts_with(dir.path("outbox/OTHER")))
        .collect();
    assert_eq!(other_reports.len(), 1);
    assert!(dir.path("outbox/M_TEST").is_dir());
    assert_eq!(dir.files_in("failed").len(), 1);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn odd_names_are_processed_and_kept() {
    let dir = setup(&Settings::default(), 3);
    let mut daemon = dir.spawn_daemon();
    let names = ["my feed (1).xml", "fééd-ü-日本.xml", "-leading-dash.xml"];
    for (n, name) in names.iter().enumerate() {
        let order = u32::try_from(n).expect("small");
        dir.drop_file(
            name,
            feed_xml(MERCHANT, &[refund(order, name, 10)]).as_bytes(),
        );
    }
    for name in names {
        assert_eq!(report_of(&dir, name)["status"], "Complete");
    }
    wait_until_idle(&dir);
    let archived = dir.names_in("archive");
    for name in names {
        assert!(
            archived.iter().any(|a| a.ends_with(name)),
            "{name} in {archived:?}"
        );
    }
    daemon.stop();
}

#[test]
fn inbox_removed_and_recreated_is_watched_again() {
    let dir = setup(
        &Settings {
            watch: "notify",
            // A long timer, so only a re-added watch (or the missing-inbox polling) can
            // pick up the file quickly.
            rescan_interval_secs: 60,
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    wait_for("watch mode logged", LONG, || {
        daemon.log().contains("watch mode")
    });
    fs::remove_dir_all(dir.path("inbox")).expect("remove inbox");
    std::thread::sleep(Duration::from_millis(500));
    fs::create_dir(dir.path("inbox")).expect("recreate inbox");
    std::thread::sleep(Duration::from_millis(500));
    dir.drop_file(
        "back.xml",
        feed_xml(MERCHANT, &[refund(0, "back", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "back.xml")["status"], "Complete");
    // And events work again: a second file comes in promptly.
    let dropped = Instant::now();
    dir.drop_file(
        "again.xml",
        feed_xml(MERCHANT, &[refund(0, "again", 100)]).as_bytes(),
    );
    report_of(&dir, "again.xml");
    assert!(dropped.elapsed() < Duration::from_secs(5));
    daemon.stop();
    let log = daemon.log();
    assert!(log.contains("cannot list the inbox"), "{log}");
    assert!(log.contains("inbox is back"), "{log}");
}

#[test]
fn polling_mode_and_done_markers() {
    let port = free_port();
    let dir = setup(
        &Settings {
            watch: "poll",
            inbox_extra: "done_marker = \".done\"".to_owned(),
            http_listen: Some(format!("127.0.0.1:{port}")),
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "marked.xml",
        feed_xml(MERCHANT, &[refund(0, "marked", 100)]).as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        dir.json_reports().is_empty(),
        "processed without its marker"
    );
    // Waiting for a marker must not make the daemon list the inbox in a loop: about one
    // scan per poll interval (200 ms), plus the one at the end of the settle time.
    let metrics = http_get(port, "/metrics");
    let scans: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("adjustd_rescans_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(scans < 20, "{scans} scans in one second:\n{metrics}");
    assert!(
        metrics.contains("adjustd_watch_mode{mode=\"poll\"} 1"),
        "{metrics}"
    );
    dir.drop_file("marked.xml.done", b"");
    assert_eq!(report_of(&dir, "marked.xml")["status"], "Complete");
    wait_until_idle(&dir);
    assert!(
        !dir.path("inbox/marked.xml.done").exists(),
        "marker removed"
    );
    daemon.stop();
    let log = daemon.log();
    assert_eq!(
        log.matches("watch mode").count(),
        1,
        "mode logged once:\n{log}"
    );
    assert!(log.contains("mode=\"poll\""), "{log}");
}

#[test]
fn claims_given_back_to_the_inbox_get_their_done_markers_back() {
    // QA4 finding 1: with done_marker set, the marker was removed at the claim, and a claim
    // given back to the inbox (store outage, shutdown) went back without it, to wait for a
    // marker the uploader had already sent: never processed, no report.
    let dir = setup(
        &Settings {
            inbox_extra: "done_marker = \".done\"".to_owned(),
            ..Settings::default()
        },
        2,
    );
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    // The store busy: the first feed of the batch stays in hand, and the other claim of its
    // batch is given back to the inbox (the same give-back as at shutdown).
    let blocker = hold_write_lock(&dir);
    // Both feeds and their markers appear at once (one rename of their merchant folder), so
    // that one listing finds both ready and one batch claims both.
    let staging = dir.path("staging-merchant");
    fs::create_dir_all(&staging).expect("staging folder");
    for (n, name) in ["one.xml", "two.xml"].into_iter().enumerate() {
        let order = u32::try_from(n).expect("small");
        let xml = feed_xml(MERCHANT, &[refund(order, name, 100)]);
        fs::write(staging.join(name), xml).expect("write feed");
        fs::write(staging.join(format!("{name}.done")), b"").expect("write marker");
    }
    fs::rename(&staging, dir.path(&format!("inbox/{MERCHANT}"))).expect("publish");
    wait_for("the unstarted claim to be given back", LONG, || {
        daemon.log().contains("given back to the inbox")
    });
    let inbox = dir.names_in("inbox");
    let feeds: Vec<&String> = inbox.iter().filter(|n| n.ends_with(".xml")).collect();
    assert_eq!(
        feeds.len(),
        1,
        "one feed in hand, one given back: {inbox:?}"
    );
    assert!(
        inbox.contains(&format!("{}.done", feeds[0])),
        "given back without its marker: {inbox:?}"
    );
    // Stopped meanwhile, the next start takes the given-back feed like any marked upload.
    daemon.stop();
    blocker.execute_batch("ROLLBACK").expect("release the lock");
    drop(blocker);
    let mut daemon = dir.spawn_daemon();
    for name in ["one.xml", "two.xml"] {
        assert_eq!(report_of(&dir, name)["status"], "Complete");
    }
    wait_until_idle(&dir);
    assert!(
        dir.files_in("inbox").is_empty(),
        "markers are removed at the claim: {:?}",
        dir.names_in("inbox")
    );
    daemon.stop();
    for order in 0..2 {
        assert_eq!(refunded_principal_cents(&dir.order(&order_id(order))), 100);
    }
}

#[test]
fn sigterm_finishes_the_feed_in_hand_and_a_second_signal_exits_at_once() {
    let dir = setup(
        &Settings {
            shutdown_timeout_secs: 120,
            ..Settings::default()
        },
        200,
    );
    // A feed big enough to be in hand for a while.
    let refunds: Vec<Refund> = (0..4_000)
        .map(|n| refund(n % 200, &format!("big-{n}"), 1))
        .collect();
    let big = feed_xml(MERCHANT, &refunds);
    let mut daemon = dir.spawn_daemon();
    dir.drop_file("big.xml", big.as_bytes());
    wait_for("the big feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=big.xml")
    });
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_eq!(
        report_of(&dir, "big.xml")["summary"]["messages_processed"],
        4_000
    );
    assert!(dir.files_in("work").is_empty());
    assert_eq!(dir.files_in("archive").len(), 1);

    // Second signal: exits at once, mid-feed; the restart finishes that feed exactly once.
    // Ten times the first feed, so it is still in hand when the signals arrive however fast
    // the machine is.
    let big2: Vec<Refund> = (0..40_000)
        .map(|n| refund(n % 200, &format!("big2-{n}"), 1))
        .collect();
    let mut daemon = dir.spawn_daemon();
    dir.drop_file("big2.xml", feed_xml(MERCHANT, &big2).as_bytes());
    wait_for("the second feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=big2.xml")
    });
    daemon.signal("TERM");
    std::thread::sleep(Duration::from_millis(20));
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "second signal did not exit at once"
    );
    assert_ne!(status.code(), Some(0));
    let mut daemon = dir.spawn_daemon();
    // 40 000 messages: a debug build beside other tests needs more than LONG for them.
    wait_for("a report for big2.xml", Duration::from_secs(180), || {
        !dir.reports_for("big2.xml").is_empty()
    });
    report_of(&dir, "big2.xml");
    wait_until_idle(&dir);
    daemon.stop();
    let total: i64 = (0..200)
        .map(|n| refunded_principal_cents(&dir.order(&order_id(n))))
        .sum();
    assert_eq!(total, 44_000);
}

#[test]
fn ten_thousand_files_dropped_at_once_are_drained() {
    const FILES: u32 = 10_000;
    let dir = setup(
        &Settings {
            settle_ms: 100,
            in_memory: true,
            ..Settings::default()
        },
        100,
    );
    // Write them into a staging folder, then move them in as fast as renames go.
    let staging = dir.path("burst");
    fs::create_dir(&staging).expect("staging");
    for n in 0..FILES {
        let xml = feed_xml(MERCHANT, &[refund(n % 100, &format!("burst-{n}"), 1)]);
        fs::write(staging.join(format!("f{n:05}.xml")), xml).expect("write");
    }
    let mut daemon = dir.spawn_daemon();
    wait_for("watch mode logged", LONG, || {
        daemon.log().contains("watch mode")
    });
    let started = Instant::now();
    for n in 0..FILES {
        let name = format!("f{n:05}.xml");
        fs::rename(staging.join(&name), dir.path("inbox").join(&name)).expect("rename");
    }
    wait_for("10,000 files drained", Duration::from_secs(300), || {
        dir.files_in("inbox").is_empty() && dir.files_in("work").is_empty()
    });
    let drained = started.elapsed();
    eprintln!("drained {FILES} files in {drained:?}");
    daemon.stop();
    assert_eq!(dir.json_reports().len(), FILES as usize);
    assert_eq!(dir.files_in("archive").len(), FILES as usize);
    let total: i64 = (0..100)
        .map(|n| refunded_principal_cents(&dir.order(&order_id(n))))
        .sum();
    assert_eq!(total, i64::from(FILES));
}

#[test]
fn metrics_and_health_endpoint() {
    let (dir, port) = setup_with_metrics(1);
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "m.xml",
        feed_xml(MERCHANT, &[refund(0, "m", 100)]).as_bytes(),
    );
    report_of(&dir, "m.xml");
    wait_until_idle(&dir);
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    let expected = [
        "adjustd_feeds_total{outcome=\"complete\"} 1",
        "adjustd_messages_total{result=\"successful\"} 1",
        "adjustd_files_waiting 0",
        "adjustd_processing_seconds_count 1",
        "adjustd_watch_mode{mode=\"notify\"} 1",
    ];
    expect_metrics(port, &expected);
    daemon.stop();
}

#[test]
fn refuses_a_layout_with_folders_inside_the_inbox() {
    let dir = TestDir::new();
    let config = fs::read_to_string(dir.path("adjustd.toml")).expect("config");
    fs::write(
        dir.path("adjustd.toml"),
        config.replace("outbox = \"outbox\"", "outbox = \"inbox/outbox\""),
    )
    .expect("config");
    let out = dir.cli(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("outbox folder") && stderr.contains("inbox folder"),
        "{stderr}"
    );
    // Refused before anything was created: a folder left inside the inbox would be taken
    // for a merchant's at the next start, and no store is made for a daemon that never ran.
    assert!(!dir.path("inbox/outbox").exists());
    assert!(!dir.path("store.db").exists());
}

#[test]
fn top_level_allow_list_rejects_other_merchants() {
    let dir = setup(
        &Settings {
            inbox_extra: "allowed_merchants = [\"SOMEONE_ELSE\"]".to_owned(),
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "not-allowed.xml",
        feed_xml(MERCHANT, &[refund(0, "na", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "not-allowed.xml")["status"], "Rejected");
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("failed").len(), 1);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 0);
}

/// The inotify watches a process holds, from `/proc/PID/fdinfo`.
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let is_inotify = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().contains("inotify"));
        if is_inotify {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            watches += info
                .lines()
                .filter(|line| line.starts_with("inotify"))
                .count();
        }
    }
    watches
}

/// A TCP port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// The whole response to `GET path` on 127.0.0.1:`port`.
/// Asserts that `/metrics` shows every `expected` line, polling for up to 5 s: the counters
/// move right after the file does, so a single read would race them.
fn expect_metrics(port: u16, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = http_get(port, "/metrics");
        if expected
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for line in expected {
        assert!(
            metrics.lines().any(|l| l == *line),
            "missing {line}:\n{metrics}"
        );
    }
}

pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn a_busy_database_delays_a_feed_without_failing_or_losing_it() {
    // Another process (an operator's sqlite3 shell, a backup tool) holds the database's write
    // lock for longer than the busy timeout (5 s). The feed must wait in work/ and be
    // retried, not fail, and apply exactly once when the lock goes.
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to start", LONG, || {
        daemon.log().contains("starting")
    });
    let blocker = hold_write_lock(&dir);
    dir.drop_file(
        "busy.xml",
        feed_xml(MERCHANT, &[refund(0, "busy-1", 125)]).as_bytes(),
    );
    wait_for("the feed to be claimed", LONG, || {
        dir.files_in("inbox").is_empty() && !dir.files_in("work").is_empty()
    });
    wait_for("a retry after the busy timeout", LONG, || {
        daemon.log().contains("transient failure, will retry")
    });
    assert!(
        dir.reports_for("busy.xml").is_empty(),
        "no report while busy"
    );
    assert!(
        dir.files_in("failed").is_empty(),
        "nothing failed while busy"
    );
    assert_eq!(dir.files_in("work").len(), 1, "the feed waits in work/");
    blocker.execute_batch("ROLLBACK").expect("release the lock");
    drop(blocker);
    let report = report_of(&dir, "busy.xml");
    assert_eq!(
        report["summary"]["messages_successful"].as_u64(),
        Some(1),
        "{report}"
    );
    wait_until_idle(&dir);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 125);
}

#[test]
fn a_store_locked_by_another_process_fails_the_health_check_once_its_busy_timeout_passes() {
    // QA4 finding 3: SQLITE_BUSY beyond the busy timeout was taken for a race between peer
    // instances and retried inside the pipeline 8 times, 5 s each, before the daemon's outage
    // handling saw it: /healthz said ok and adjustd_store_unavailable_seconds read 0 for
    // about 40 s, logged as "store conflict, retrying feed". A SQLite store has one writer,
    // so a busy one is an outage from the first failed attempt on.
    let (dir, port) = setup_with_metrics(1);
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    let blocker = hold_write_lock(&dir);
    dir.drop_file(
        "locked.xml",
        feed_xml(MERCHANT, &[refund(0, "locked-1", 100)]).as_bytes(),
    );
    // Generous: the test that matters is what happened before the 503, below.
    wait_for("/healthz to answer 503", Duration::from_secs(90), || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 503")
    });
    let log = daemon.log();
    assert!(
        !log.contains("store conflict"),
        "the busy store was retried as a conflict before it counted as unavailable:\n{log}"
    );
    let health = http_get(port, "/healthz");
    assert!(
        health.contains("store unavailable since") && health.contains("busy timeout"),
        "{health}"
    );
    let metrics = http_get(port, "/metrics");
    assert!(
        metric_value(&metrics, "adjustd_store_unavailable_seconds").is_some(),
        "{metrics}"
    );
    assert!(dir.reports_for("locked.xml").is_empty());
    blocker.execute_batch("ROLLBACK").expect("release the lock");
    drop(blocker);
    assert_eq!(report_of(&dir, "locked.xml")["status"], "Complete");
    wait_for("/healthz to answer ok again", LONG, || {
        http_get(port, "/healthz").starts_with("HTTP/1.1 200")
    });
    wait_until_idle(&dir);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

/// Makes a file unreadable for a daemon started with
/// [`TestDir::spawn_daemon_bound_by_permissions`].
fn make_unreadable(path: &std::path::Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o000)).expect("chmod 000");
}

/// Another process's write transaction on the store, until it is dropped: a feed the
/// daemon takes meanwhile stays in hand (the pipeline waits out the busy timeout, 5 s, again
/// and again).
fn hold_write_lock(dir: &TestDir) -> rusqlite::Connection {
    let blocker = rusqlite::Connection::open(dir.path("store.db")).expect("open store");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    blocker
}

/// The warning the daemon logs once when it first finds an inbox file it cannot open.
const CANNOT_OPEN: &str = "cannot open the feed; it waits";

/// Checks that `report` is the rejection of `name` as unreadable: status Rejected, one
/// feed-level FEED_UNREADABLE naming the file and the OS error, nothing read.
fn assert_rejected_as_unreadable(report: &serde_json::Value, name: &str) {
    assert_eq!(report["status"], "Rejected", "{report}");
    assert_eq!(result_codes(report), ["FEED_UNREADABLE"], "{report}");
    let result = &report["results"][0];
    assert_eq!(result["code"], 90009, "{report}");
    assert_eq!(result["message_id"], 0, "{report}");
    let description = result["description"].as_str().expect("description");
    assert!(
        description.contains(name) && description.contains("Permission denied (os error 13)"),
        "{description}"
    );
    assert_eq!(report["content_hash"], "unread", "{report}");
    assert_eq!(report["summary"]["messages_processed"], 0, "{report}");
}

/// The folder holding the JSON report of `name`.
fn report_folder(dir: &TestDir, name: &str) -> std::path::PathBuf {
    let (path, _) = dir
        .json_reports()
        .into_iter()
        .find(|(_, json)| json["file_name"] == name)
        .expect("a report");
    path.parent().expect("folder").to_path_buf()
}

#[test]
fn unreadable_feed_waits_for_the_grace_then_gets_a_rejected_report_and_goes_to_failed() {
    const GRACE: Duration = Duration::from_secs(2);
    let dir = setup(
        &Settings {
            truncated_grace_secs: GRACE.as_secs(),
            ..Settings::default()
        },
        1,
    );
    dir.drop_file(
        "M_TEST/locked.xml",
        feed_xml(MERCHANT, &[refund(0, "locked", 100)]).as_bytes(),
    );
    make_unreadable(&dir.path("inbox/M_TEST/locked.xml"));
    let dropped = Instant::now();
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        return;
    };
    let report = report_of(&dir, "locked.xml");
    // Before the fix: moved to failed/ at once, without a report.
    assert!(
        dropped.elapsed() >= GRACE,
        "reported after {:?}, before the grace",
        dropped.elapsed()
    );
    assert_rejected_as_unreadable(&report, "locked.xml");
    assert_eq!(report["merchant"], MERCHANT, "{report}");
    assert_eq!(report_folder(&dir, "locked.xml"), dir.path("outbox/M_TEST"));
    let feed_id = report["feed_id"].as_u64().expect("feed id");
    wait_for("the unreadable feed to reach failed/", LONG, || {
        dir.files_in("failed").len() == 1
    });
    let failed = &dir.files_in("failed")[0];
    assert!(
        failed.ends_with(format!("M_TEST/{feed_id}-locked.xml")),
        "{}",
        failed.display()
    );
    assert!(dir.files_in("inbox").is_empty(), "left in the inbox");
    assert!(dir.files_in("work").is_empty(), "left in work/");
    assert_eq!(
        dir.files_in("outbox").len(),
        2,
        "the XML and JSON reports: {:?}",
        dir.files_in("outbox")
    );
    // The daemon goes on with the next feed.
    dir.drop_file(
        "M_TEST/fine.xml",
        feed_xml(MERCHANT, &[refund(0, "fine", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "fine.xml")["status"], "Complete");
    daemon.stop();
    let log = daemon.log();
    // One warning while it waits (it is checked several times), naming file, merchant and
    // error; then the summary line of a rejected feed.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(CANNOT_OPEN))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("locked.xml")
            && warnings[0].contains("merchant=\"M_TEST\"")
            && warnings[0].contains("Permission denied"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains("feed rejected") && line.contains("file=locked.xml")),
        "{log}"
    );
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn unreadable_feed_made_readable_within_the_grace_is_processed_normally() {
    const GRACE: Duration = Duration::from_secs(10);
    let dir = setup(
        &Settings {
            truncated_grace_secs: GRACE.as_secs(),
            ..Settings::default()
        },
        1,
    );
    let path = dir.path("inbox/M_TEST/late.xml");
    dir.drop_file(
        "M_TEST/late.xml",
        feed_xml(MERCHANT, &[refund(0, "late", 100)]).as_bytes(),
    );
    make_unreadable(&path);
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        return;
    };
    wait_for("the warning about the unreadable feed", LONG, || {
        daemon.log().contains(CANNOT_OPEN)
    });
    // Before the fix: already in failed/, without a report.
    assert!(path.is_file(), "it waits in the inbox:\n{}", daemon.log());
    assert!(dir.files_in("failed").is_empty());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let fixed = Instant::now();
    let report = report_of(&dir, "late.xml");
    // Processed once it settled after the chmod, not when the grace ran out.
    assert!(fixed.elapsed() < GRACE, "took {:?}", fixed.elapsed());
    assert_eq!(report["status"], "Complete", "{report}");
    assert!(result_codes(&report).is_empty(), "{report}");
    assert_eq!(report["summary"]["messages_successful"], 1, "{report}");
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("archive").len(), 1);
    assert!(dir.files_in("failed").is_empty());
    daemon.stop();
    let log = daemon.log();
    assert_eq!(log.matches(CANNOT_OPEN).count(), 1, "{log}");
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn unreadable_leftovers_in_work_get_their_reports_at_start_without_waiting() {
    // The default grace (300 s) is far longer than the wait below: leftovers were claimed
    // already and do not wait again.
    let dir = setup(&Settings::default(), 1);
    fs::create_dir_all(dir.path("work/M_TEST")).expect("work folder");
    // One claimed by an earlier run, one put into work/ by hand: neither can be opened.
    let claimed = dir.path("work/M_TEST/00000000000000000001-1-0--left.xml");
    let stray = dir.path("work/stray.xml");
    for path in [&claimed, &stray] {
        fs::write(path, feed_xml(MERCHANT, &[refund(0, "left", 100)])).expect("write");
        make_unreadable(path);
    }
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        return;
    };
    wait_for("both leftovers to reach failed/", LONG, || {
        assert!(daemon.is_running(), "daemon exited:\n{}", daemon.log());
        dir.files_in("failed").len() == 2
    });
    assert!(dir.files_in("work").is_empty(), "left in work/");
    // Before the fix: no reports.
    for (name, folder) in [("left.xml", "outbox/M_TEST"), ("stray.xml", "outbox")] {
        let report = report_of(&dir, name);
        assert_rejected_as_unreadable(&report, name);
        assert_eq!(report_folder(&dir, name), dir.path(folder), "{name}");
    }
    dir.drop_file(
        "after.xml",
        feed_xml(MERCHANT, &[refund(0, "after", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "after.xml")["status"], "Complete");
    daemon.stop();
    let log = daemon.log();
    for name in ["left.xml", "stray.xml"] {
        assert!(
            log.lines()
                .any(|line| line.contains("feed rejected") && line.contains(name)),
            "{name}:\n{log}"
        );
    }
    assert!(!log.contains(CANNOT_OPEN), "{log}");
}

#[test]
fn an_unreadable_feed_whose_report_cannot_be_written_waits_in_work_and_is_recorded_once() {
    let dir = setup(
        &Settings {
            truncated_grace_secs: 1,
            ..Settings::default()
        },
        1,
    );
    // A regular file where the merchant's report folder belongs (see
    // a_report_that_cannot_be_written_is_retried_and_the_feed_is_never_failed_or_applied_twice).
    let blocker = dir.path("outbox/M_TEST");
    fs::write(&blocker, b"not a folder").expect("block the report folder");
    dir.drop_file(
        "M_TEST/locked.xml",
        feed_xml(MERCHANT, &[refund(0, "locked", 100)]).as_bytes(),
    );
    make_unreadable(&dir.path("inbox/M_TEST/locked.xml"));
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        return;
    };
    wait_for("a retry of the report", LONG, || {
        daemon.log().contains("transient failure, will retry")
    });
    assert!(dir.files_in("failed").is_empty(), "not failed yet");
    assert_eq!(dir.files_in("work").len(), 1, "the feed waits in work/");
    // Stopped while it waits: it stays in work/, and the next start re-emits the report of
    // the feed already recorded under its claim token.
    daemon.stop();
    assert_eq!(dir.files_in("work").len(), 1, "the feed stays in work/");
    fs::remove_file(&blocker).expect("unblock the report folder");
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        return;
    };
    let report = report_of(&dir, "locked.xml");
    assert_rejected_as_unreadable(&report, "locked.xml");
    wait_for("the feed to reach failed/", LONG, || {
        dir.files_in("failed").len() == 1
    });
    assert!(dir.files_in("work").is_empty(), "left in work/");
    daemon.stop();
    let listed = dir.cli(&["feeds", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let feeds: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let records: Vec<&serde_json::Value> = feeds
        .as_array()
        .expect("array")
        .iter()
        .filter(|row| row["feed"]["file_name"] == "locked.xml")
        .collect();
    assert_eq!(records.len(), 1, "recorded once: {feeds}");
    assert_eq!(records[0]["feed"]["id"], report["feed_id"], "{feeds}");
}

#[test]
fn a_name_of_nearly_255_bytes_is_processed_and_archived() {
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    // 250 bytes, with two-byte characters where the claim prefix forces a cut.
    let name = format!("{}{}.xml", "é".repeat(100), "x".repeat(46));
    assert_eq!(name.len(), 250);
    dir.drop_file(
        &name,
        feed_xml(MERCHANT, &[refund(0, "long", 100)]).as_bytes(),
    );
    let report = report_of(&dir, &name);
    assert_eq!(report["status"], "Complete", "{report}");
    wait_until_idle(&dir);
    let archived = dir.files_in("archive");
    assert_eq!(archived.len(), 1);
    let archived_name = archived[0].file_name().expect("name").to_string_lossy();
    assert!(archived_name.ends_with("x.xml"), "{archived_name}");
    daemon.stop();
    let log = daemon.log();
    assert!(!log.contains("too long"), "{log}");
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 100);
}

#[test]
fn control_characters_in_names_cannot_forge_log_lines_or_report_names() {
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    let name = "evil\nFORGED fake line\r\u{1b}[31mred.xml";
    dir.drop_file(
        name,
        feed_xml(MERCHANT, &[refund(0, "evil", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, name)["status"], "Complete");
    wait_until_idle(&dir);
    daemon.stop();
    let reports = crate::util::files_under(&dir.path("outbox"));
    assert_eq!(reports.len(), 2, "{reports:?}");
    for report in &reports {
        let report_name = report.file_name().expect("name").to_string_lossy();
        assert!(
            !report_name.chars().any(char::is_control),
            "{report_name:?}"
        );
        assert!(report_name.starts_with("evil_FORGED"), "{report_name:?}");
    }
    // The log is a file, not a terminal: no colour codes, and the name's own ESC, CR and
    // newline are escaped.
    let log = daemon.raw_log();
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(!log.contains('\r'), "{log:?}");
    assert!(!log.lines().any(|line| line.starts_with("FORGED")), "{log}");
    assert!(
        log.contains(r"file=evil\nFORGED fake line\r\u{1b}[31mred.xml"),
        "{log}"
    );
}

#[test]
fn unreadable_merchant_folder_is_warned_about_once_per_change() {
    const WARNING: &str = "cannot read the merchant folder";
    let dir = setup(
        &Settings {
            watch: "poll",
            ..Settings::default()
        },
        1,
    );
    dir.drop_file(
        "M_TEST/waiting.xml",
        feed_xml(MERCHANT, &[refund(0, "waiting", 100)]).as_bytes(),
    );
    let folder = dir.path("inbox/M_TEST");
    let set_mode = |mode: u32| {
        fs::set_permissions(&folder, fs::Permissions::from_mode(mode)).expect("chmod folder");
    };
    set_mode(0o000);
    let Some(mut daemon) = dir.spawn_daemon_bound_by_permissions() else {
        set_mode(0o755);
        return;
    };
    wait_for("the warning", LONG, || daemon.log().contains(WARNING));
    // Polled every 200 ms: several more listings, no more warnings.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(daemon.log().matches(WARNING).count(), 1, "{}", daemon.log());
    assert!(dir.json_reports().is_empty());
    set_mode(0o755);
    assert_eq!(report_of(&dir, "waiting.xml")["status"], "Complete");
    // Unreadable again: warned again, once.
    set_mode(0o000);
    wait_for("the second warning", LONG, || {
        daemon.log().matches(WARNING).count() == 2
    });
    std::thread::sleep(Duration::from_millis(600));
    set_mode(0o755);
    daemon.stop();
    let log = daemon.log();
    assert_eq!(log.matches(WARNING).count(), 2, "{log}");
    let line = log
        .lines()
        .find(|line| line.contains(WARNING))
        .expect("warning");
    assert!(
        line.contains("inbox/M_TEST") && line.contains("denied"),
        "{line}"
    );
}

#[test]
fn abandoned_temp_named_uploads_are_warned_about_once_each() {
    const WARNING: &str = "temporary upload name unchanged";
    let port = free_port();
    let dir = setup(
        &Settings {
            watch: "poll",
            truncated_grace_secs: 1,
            http_listen: Some(format!("127.0.0.1:{port}")),
            ..Settings::default()
        },
        1,
    );
    let xml = feed_xml(MERCHANT, &[refund(0, "partial", 100)]);
    let names = ["a.xml.filepart", ".b.xml.Ab12Cd.partial", "c.tmp"];
    for name in names {
        fs::write(dir.path(&format!("inbox/{name}")), &xml[..xml.len() / 2]).expect("write");
    }
    let mut daemon = dir.spawn_daemon();
    wait_for("a warning per abandoned upload", LONG, || {
        daemon.log().matches(WARNING).count() == 3
    });
    // Polled every 200 ms: more listings, no more warnings.
    std::thread::sleep(Duration::from_millis(1000));
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line == "adjustd_stale_partials 3"),
        "{metrics}"
    );
    daemon.stop();
    let log = daemon.log();
    assert_eq!(log.matches(WARNING).count(), 3, "{log}");
    for name in names {
        assert!(
            log.lines()
                .any(|line| line.contains(WARNING) && line.contains(name)),
            "{name}:\n{log}"
        );
        assert!(dir.path(&format!("inbox/{name}")).is_file(), "{name} moved");
    }
    assert!(dir.json_reports().is_empty());
}

#[test]
fn a_feed_above_max_file_bytes_is_rejected_for_its_size_without_being_read() {
    const LIMIT: usize = 4096;
    let dir = setup(
        &Settings {
            more_sections: format!("[limits]\nmax_file_bytes = {LIMIT}\n"),
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    // A real feed padded with zeros, as in the QA pass: before the fix it was hashed and
    // read to the end, then rejected as not UTF-8 or not well-formed.
    let mut padded = feed_xml(MERCHANT, &[refund(0, "big", 100)]).into_bytes();
    padded.resize(LIMIT * 100, 0);
    for name in ["big.xml", "big-again.xml"] {
        dir.drop_file(&format!("{MERCHANT}/{name}"), &padded);
        let report = report_of(&dir, name);
        assert_eq!(report["status"], "Rejected", "{report}");
        assert_eq!(result_codes(&report), ["LIMIT_EXCEEDED"], "{report}");
        let description = report["results"][0]["description"]
            .as_str()
            .expect("description");
        for needed in [
            "limits.max_file_bytes".to_owned(),
            (LIMIT * 100).to_string(),
            LIMIT.to_string(),
        ] {
            assert!(description.contains(&needed), "lacks {needed}: {report}");
        }
        // The second copy is not a duplicate of the first: neither was read.
        assert_eq!(report["content_hash"], "unread", "{report}");
        assert_eq!(report["duplicate_of"], serde_json::Value::Null, "{report}");
    }
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("failed").len(), 2);
    assert_eq!(dir.files_in(&format!("outbox/{MERCHANT}")).len(), 4);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 0);
}

/// Writes `path` with a last change `age` ago.
fn write_aged(path: &std::path::Path, age: Duration) {
    fs::write(path, b"<half a report").expect("write");
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(std::time::SystemTime::now() - age))
        .expect("set mtime");
}

#[test]
fn temp_reports_left_by_an_interrupted_write_are_removed_at_start_and_by_process() {
    const REMOVED: &str = "removed a temp report left by an interrupted write";
    let old = Duration::from_secs(3600);
    let dir = setup(&Settings::default(), 1);
    let merchant_outbox = dir.path(&format!("outbox/{MERCHANT}"));
    fs::create_dir_all(&merchant_outbox).expect("merchant outbox");
    let elsewhere = dir.path("elsewhere");
    fs::create_dir_all(&elsewhere).expect("folder outside the outbox");
    // Left by a crash mid-report: in the outbox and in a merchant folder.
    let leftovers = [
        dir.path("outbox/.adjustd-a1B2c3.tmp"),
        merchant_outbox.join(".adjustd-Xy9zQ0.tmp"),
    ];
    for path in &leftovers {
        write_aged(path, old);
    }
    // Not ours, or possibly still being written (another instance sharing the outbox), or
    // behind a symlink: kept.
    let foreign = merchant_outbox.join(".other.tmp");
    write_aged(&foreign, old);
    let young = merchant_outbox.join(".adjustd-young1.tmp");
    write_aged(&young, Duration::ZERO);
    let behind_link = elsewhere.join(".adjustd-linked.tmp");
    write_aged(&behind_link, old);
    std::os::unix::fs::symlink(&elsewhere, dir.path("outbox/LINKED")).expect("symlink folder");
    let link_target = elsewhere.join("target.tmp");
    write_aged(&link_target, old);
    let file_link = dir.path("outbox/.adjustd-link00.tmp");
    std::os::unix::fs::symlink(&link_target, &file_link).expect("symlink file");

    let mut daemon = dir.spawn_daemon();
    wait_for("the leftovers to be removed", LONG, || {
        daemon.log().matches(REMOVED).count() == leftovers.len()
    });
    // Before the fix they stayed for ever.
    for path in &leftovers {
        assert!(!path.exists(), "{} left", path.display());
    }
    for path in [&foreign, &young, &behind_link, &link_target] {
        assert!(path.is_file(), "{} removed", path.display());
    }
    assert!(fs::symlink_metadata(&file_link).is_ok(), "symlink removed");
    let log = daemon.log();
    for path in &leftovers {
        let name = path.file_name().expect("name").to_string_lossy();
        assert!(
            log.lines()
                .any(|line| line.contains(REMOVED) && line.contains(name.as_ref())),
            "removal of {name} not logged:\n{log}"
        );
    }
    daemon.stop();

    // `adjustd process` sweeps too.
    let leftover = merchant_outbox.join(".adjustd-Pr0c35.tmp");
    write_aged(&leftover, old);
    let feed = dir.path("feed.xml");
    fs::write(&feed, feed_xml(MERCHANT, &[refund(0, "sweep", 100)])).expect("feed");
    let out = dir.cli(&["process", feed.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!leftover.exists(), "left by process");
    assert!(young.is_file() && foreign.is_file());
}

#[test]
fn a_shutdown_that_times_out_exits_130_and_the_feed_is_recovered_at_the_next_start() {
    let dir = setup(
        &Settings {
            shutdown_timeout_secs: 1,
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to start", LONG, || {
        daemon.log().contains("starting")
    });
    // The feed in hand cannot finish while another process holds the database's write lock
    // (the pipeline waits out the busy timeout, 5 s, several times): it is still in hand
    // when the shutdown timeout of 1 s passes, however fast the machine.
    let blocker = hold_write_lock(&dir);
    dir.drop_file(
        "slow.xml",
        feed_xml(MERCHANT, &[refund(0, "slow-1", 125)]).as_bytes(),
    );
    wait_for("the feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=slow.xml")
    });
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    let log = daemon.log();
    // Before the fix: 2, documented as an I/O or database error.
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("shutdown did not finish within 1s"), "{log}");
    assert_eq!(dir.files_in("work").len(), 1, "the feed stays in work/");
    assert!(dir.reports_for("slow.xml").is_empty());
    blocker.execute_batch("ROLLBACK").expect("release the lock");
    drop(blocker);

    let mut daemon = dir.spawn_daemon();
    let report = report_of(&dir, "slow.xml");
    assert_eq!(report["summary"]["messages_successful"], 1, "{report}");
    wait_until_idle(&dir);
    daemon.stop();
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 125);
}

#[test]
fn a_shutdown_timeout_of_zero_stops_an_idle_daemon_cleanly() {
    // QA4 finding 5: with shutdown_timeout_secs = 0 an idle daemon exited 130 saying "the feed
    // in hand stays in work/" although it had none: the timeout fired before the idle worker
    // could answer. The timeout is for a feed in hand only.
    let dir = setup(
        &Settings {
            shutdown_timeout_secs: 0,
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    dir.drop_file(
        "idle.xml",
        feed_xml(MERCHANT, &[refund(0, "idle-1", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "idle.xml")["status"], "Complete");
    wait_until_idle(&dir);
    // Exit 0, asserted by stop.
    daemon.stop();
    let log = daemon.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("shutdown did not finish"), "{log}");
}

#[test]
fn a_report_that_cannot_be_written_is_retried_and_the_feed_is_never_failed_or_applied_twice() {
    // The outbox cannot take the report (full, permissions; here a regular file stands where
    // the merchant's report folder belongs, which stops root too). The feed is committed
    // before its report is written, so it must not go to failed/ (which reads as "not
    // applied"): it waits in work/, and the retry writes the stored report, applying
    // nothing again.
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to start", LONG, || {
        daemon.log().contains("starting")
    });
    let blocker = dir.path("outbox/M_TEST");
    if blocker.is_dir() {
        fs::remove_dir_all(&blocker).expect("remove the report folder");
    }
    fs::write(&blocker, b"not a folder").expect("block the report folder");
    dir.drop_file(
        "M_TEST/blocked.xml",
        feed_xml(MERCHANT, &[refund(0, "blocked-1", 150)]).as_bytes(),
    );
    wait_for("a retry of the report", LONG, || {
        daemon.log().contains("transient failure, will retry")
    });
    let log = daemon.log();
    assert!(
        log.contains("is processed and committed, but its report could not be written"),
        "{log}"
    );
    // The advice for `adjustd process` is not the daemon's: it retries the report itself.
    assert!(!log.contains("processing the file again"), "{log}");
    assert!(dir.files_in("failed").is_empty(), "not failed: {log}");
    assert_eq!(dir.files_in("work").len(), 1, "the feed waits in work/");
    assert_eq!(refunded_principal_cents(&dir.order(&order_id(0))), 150);
    fs::remove_file(&blocker).expect("unblock the report folder");
    let report = report_of(&dir, "blocked.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    assert_eq!(
        report["summary"]["messages_successful"].as_u64(),
        Some(1),
        "{report}"
    );
    wait_until_idle(&dir);
    daemon.stop();
    assert_eq!(dir.files_in("archive").len(), 1);
    assert!(dir.files_in("failed").is_empty());
    assert_eq!(
        refunded_principal_cents(&dir.order(&order_id(0))),
        150,
        "applied once"
    );
    // A retry in the same run is not a recovery (a committed feed found at start).
    let log = daemon.log();
    let summary = summary_line(&log, "blocked.xml");
    assert!(summary.contains("outcome=\"complete\""), "{summary}");
}

/// The second merchant of the report-retry tests, with a folder of its own.
const OTHER_MERCHANT: &str = "M_OTHER";

/// The net Principal refunded on order `n` of `merchant`, in cents (`orders show --json`).
fn refunded_cents_of(dir: &TestDir, merchant: &str, n: u32) -> i64 {
    let out = dir.cli(&[
        "orders",
        "show",
        &order_id(n),
        "--merchant",
        merchant,
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    refunded_principal_cents(&serde_json::from_slice(&out.stdout).expect("orders show JSON"))
}

/// The summary line of `file` in `log` (the daemon logs one per feed it finishes).
fn summary_line<'a>(log: &'a str, file: &str) -> &'a str {
    let field = format!("file={file} ");
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("feed processed") && line.contains(&field))
        .collect();
    assert_eq!(lines.len(), 1, "one summary line for {file}:\n{log}");
    lines[0]
}

/// Blocks `M_TEST`'s report folder with a regular file (see
/// a_report_that_cannot_be_written_is_retried_and_the_feed_is_never_failed_or_applied_twice),
/// drops a feed there and waits until the daemon has failed to write its report once.
fn block_reports_of_one_merchant(
    dir: &TestDir,
    daemon: &crate::util::Daemon,
) -> std::path::PathBuf {
    wait_for("the daemon to start", LONG, || {
        daemon.log().contains("starting")
    });
    let blocker = dir.path("outbox/M_TEST");
    if blocker.is_dir() {
        fs::remove_dir_all(&blocker).expect("remove the report folder");
    }
    fs::write(&blocker, b"not a folder").expect("block the report folder");
    dir.drop_file(
        "M_TEST/blocked.xml",
        feed_xml(MERCHANT, &[refund(0, "blocked-1", 150)]).as_bytes(),
    );
    wait_for("a failed report", LONG, || {
        daemon.log().contains("transient failure, will retry")
    });
    blocker
}

#[test]
fn a_report_blocked_for_one_merchant_holds_up_no_other_feed_and_is_written_once_when_unblocked() {
    let (dir, port) = setup_with_metrics(2);
    dir.import_orders(OTHER_MERCHANT, &orders_report(1));
    let mut daemon = dir.spawn_daemon();
    let blocker = block_reports_of_one_merchant(&dir, &daemon);
    // While the blocked feed waits for its report, a feed in the top-level inbox and one of
    // another merchant go through at once (before, both waited until the folder was fixed).
    dir.drop_file(
        "top.xml",
        feed_xml(MERCHANT, &[refund(1, "top-1", 200)]).as_bytes(),
    );
    dir.drop_file(
        "M_OTHER/other.xml",
        feed_xml(OTHER_MERCHANT, &[refund(0, "other-1", 300)]).as_bytes(),
    );
    let started = Instant::now();
    assert_eq!(report_of(&dir, "top.xml")["status"], "Complete");
    assert_eq!(report_of(&dir, "other.xml")["status"], "Complete");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // The blocked feed is committed, waits in work/ and keeps being retried on its own.
    wait_for("a later retry of the blocked report", LONG, || {
        daemon.log().contains("attempt=3")
    });
    assert!(dir.reports_for("blocked.xml").is_empty());
    assert_eq!(
        dir.files_in("work").len(),
        1,
        "the blocked feed waits in work/"
    );
    assert!(dir.files_in("failed").is_empty());
    assert_eq!(refunded_cents_of(&dir, MERCHANT, 0), 150);
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "adjustd_reports_pending 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "adjustd_feeds_total{outcome=\"complete\"} 2"),
        "{metrics}"
    );

    fs::remove_file(&blocker).expect("unblock the report folder");
    let report = report_of(&dir, "blocked.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    assert_eq!(report["summary"]["messages_successful"].as_u64(), Some(1));
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("archive").len(), 3);
    assert!(dir.files_in("failed").is_empty());
    // Counted and logged as what it is, a complete feed whose report was retried: not as
    // a recovery, which is a committed feed found at start.
    let expected = [
        "adjustd_feeds_total{outcome=\"complete\"} 3",
        "adjustd_feeds_total{outcome=\"recovered\"} 0",
        "adjustd_feeds_total{outcome=\"error\"} 0",
        "adjustd_reports_pending 0",
        "adjustd_messages_total{result=\"successful\"} 3",
    ];
    expect_metrics(port, &expected);
    daemon.stop();
    let log = daemon.log();
    let summary = summary_line(&log, "blocked.xml");
    assert!(summary.contains("outcome=\"complete\""), "{summary}");
    assert!(summary.contains("report_retries="), "{summary}");
    assert!(
        !summary_line(&log, "top.xml").contains("report_retries"),
        "{log}"
    );
    // Applied once each.
    assert_eq!(refunded_cents_of(&dir, MERCHANT, 0), 150);
    assert_eq!(refunded_cents_of(&dir, MERCHANT, 1), 200);
    assert_eq!(refunded_cents_of(&dir, OTHER_MERCHANT, 0), 300);
    let listed = dir.cli(&["feeds", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let feeds: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let records = feeds
        .as_array()
        .expect("array")
        .iter()
        .filter(|row| row["feed"]["file_name"] == "blocked.xml")
        .count();
    assert_eq!(records, 1, "recorded once: {feeds}");
}

#[test]
fn sigterm_while_a_report_waits_exits_at_once_and_the_next_start_recovers_it() {
    let dir = setup(&Settings::default(), 2);
    let mut daemon = dir.spawn_daemon();
    let blocker = block_reports_of_one_merchant(&dir, &daemon);
    dir.drop_file(
        "top.xml",
        feed_xml(MERCHANT, &[refund(1, "top-1", 200)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "top.xml")["status"], "Complete");
    let stopping = Instant::now();
    daemon.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopping.elapsed()
    );
    assert!(
        daemon
            .log()
            .contains("feeds waiting for their reports stay in work/"),
        "{}",
        daemon.log()
    );
    assert_eq!(dir.files_in("work").len(), 1, "the feed stays in work/");
    fs::remove_file(&blocker).expect("unblock the report folder");
    let mut daemon = dir.spawn_daemon();
    assert_eq!(report_of(&dir, "blocked.xml")["status"], "Complete");
    wait_until_idle(&dir);
    daemon.stop();
    // Found committed at start: this one is a recovery.
    let log = daemon.log();
    assert!(
        summary_line(&log, "blocked.xml").contains("outcome=\"recovered\""),
        "{log}"
    );
    assert_eq!(refunded_cents_of(&dir, MERCHANT, 0), 150, "applied once");
    assert_eq!(dir.files_in("archive").len(), 2);
}

#[test]
fn sighup_is_logged_and_ignored_and_sigterm_still_stops_cleanly() {
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    daemon.signal("HUP");
    wait_for("the SIGHUP log line", LONG, || {
        daemon.log().contains("SIGHUP")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.is_running(),
        "SIGHUP stopped the daemon:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("SIGHUP"))
        .expect("a SIGHUP line");
    assert!(
        line.contains("does not reload its configuration") && line.contains("restart"),
        "{line}"
    );
    // It goes on working, and a second SIGHUP is not a second shutdown signal either.
    daemon.signal("HUP");
    dir.drop_file(
        "after-hup.xml",
        feed_xml(MERCHANT, &[refund(0, "after-hup", 100)]).as_bytes(),
    );
    assert_eq!(report_of(&dir, "after-hup.xml")["status"], "Complete");
    let log = daemon.log();
    assert!(
        !log.contains("shutdown requested"),
        "HUP is not a stop: {log}"
    );
    daemon.stop();
    let log = daemon.log();
    assert!(log.contains("stopped"), "{log}");
}

/// A feed with junk after its root element.
fn feed_with_trailing_junk(key: &str) -> String {
    let mut xml = feed_xml(MERCHANT, &[refund(0, key, 100)]);
    xml.push_str("<Trailing>junk</Trailing>\n");
    xml
}

#[test]
fn a_rejected_feed_says_why_on_its_summary_line_in_text_and_json() {
    let dir = setup(&Settings::default(), 1);
    let mut daemon = dir.spawn_daemon();
    dir.drop_file("junk.xml", feed_with_trailing_junk("junk-1").as_bytes());
    let report = report_of(&dir, "junk.xml");
    assert_eq!(report["status"], "Rejected", "{report}");
    let first = &report["results"][0];
    wait_until_idle(&dir);
    daemon.stop();
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("feed rejected") && line.contains("file=junk.xml"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let code = first["code_name"].as_str().expect("code_name");
    let position = format!(
        "error_at={}:{}",
        first["line"].as_u64().expect("line"),
        first["column"].as_u64().expect("column")
    );
    for field in [
        format!("error_code=\"{code}\""),
        format!("error_message_id={}", first["message_id"]),
        "error_element=".to_owned(),
        position,
        "error_description=".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} missing: {line}");
    }

    // The same fields in the JSON log format.
    let mut settings = Settings {
        more_sections: "[log]\nformat = \"json\"\n".to_owned(),
        ..Settings::default()
    };
    settings.settle_ms = 200;
    dir.write_config(&settings);
    let mut daemon = dir.spawn_daemon();
    dir.drop_file("junk2.xml", feed_with_trailing_junk("junk-2").as_bytes());
    let report = report_of(&dir, "junk2.xml");
    let first = &report["results"][0];
    wait_until_idle(&dir);
    daemon.stop();
    let log = daemon.log();
    let event: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "feed rejected" && event["file"] == "junk2.xml")
        .unwrap_or_else(|| panic!("no JSON summary line:\n{log}"));
    assert_eq!(event["error_code"], first["code_name"], "{event}");
    assert_eq!(event["error_message_id"], first["message_id"], "{event}");
    assert_eq!(event["error_element"], first["element"], "{event}");
    assert_eq!(
        event["error_at"],
        format!("{}:{}", first["line"], first["column"]),
        "{event}"
    );
    let description = event["error_description"].as_str().expect("description");
    assert!(
        !description.is_empty()
            && first["description"]
                .as_str()
                .expect("description")
                .starts_with(description.trim_end_matches('…')),
        "{event}"
    );
}

/// The value of one metric line (`name value`) in a `/metrics` text.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    })
}

#[test]
fn waiting_gauges_count_files_that_arrive_while_a_feed_is_in_hand_and_not_the_feed() {
    // A feed in hand for a long while: another process holds the SQLite write lock, so the
    // pipeline waits out the busy timeout (5 s) in the store, and the daemon retries the feed
    // in place, again and again. The feed was
    // claimed and no longer waits; two files dropped meanwhile do, and /metrics says so at
    // once, without waiting for the feed in hand to finish.
    let (dir, port) = setup_with_metrics(3);
    let mut daemon = dir.spawn_daemon();
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    let blocker = hold_write_lock(&dir);
    dir.drop_file(
        "long.xml",
        feed_xml(MERCHANT, &[refund(0, "long-1", 100)]).as_bytes(),
    );
    wait_for("the feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=long.xml")
    });
    // The claimed feed is not waiting, and no age grows for it.
    std::thread::sleep(Duration::from_millis(1200));
    expect_metrics(
        port,
        &[
            "adjustd_files_waiting 0",
            "adjustd_oldest_waiting_seconds 0.000",
        ],
    );
    dir.drop_file(
        "later-1.xml",
        feed_xml(MERCHANT, &[refund(1, "later-1", 100)]).as_bytes(),
    );
    dir.drop_file(
        "later-2.xml",
        feed_xml(MERCHANT, &[refund(2, "later-2", 100)]).as_bytes(),
    );
    expect_metrics(port, &["adjustd_files_waiting 2"]);
    std::thread::sleep(Duration::from_millis(600));
    let metrics = http_get(port, "/metrics");
    let oldest = metric_value(&metrics, "adjustd_oldest_waiting_seconds").expect("gauge");
    assert!(
        (0.5..5.0).contains(&oldest),
        "the age of the files dropped meanwhile, not of the feed in hand:\n{metrics}"
    );
    assert!(
        dir.reports_for("long.xml").is_empty(),
        "still in hand: {}",
        daemon.log()
    );
    blocker.execute_batch("ROLLBACK").expect("release the lock");
    drop(blocker);
    for name in ["long.xml", "later-1.xml", "later-2.xml"] {
        assert_eq!(report_of(&dir, name)["status"], "Complete");
    }
    wait_until_idle(&dir);
    expect_metrics(
        port,
        &[
            "adjustd_files_waiting 0",
            "adjustd_oldest_waiting_seconds 0.000",
            "adjustd_feeds_total{outcome=\"complete\"} 3",
        ],
    );
    daemon.stop();
}

#[test]
fn a_feed_that_cannot_be_moved_out_of_work_is_counted_once_and_moved_by_the_same_run() {
    // QA10-2: the report was written, then the move to archive/ failed (a full disk, a
    // read-only folder; here a regular file takes the place of archive/, which stops root
    // too). The daemon let go of the claim, took the feed up again at the next rescan as if
    // an instance sharing work/ had died with it, wrote its report again and counted and
    // summed it up a second time. Now the feed stays in hand and only the move is retried.
    let (dir, port) = setup_with_metrics(1);
    let mut daemon = dir.spawn_daemon();
    // Once it watches the inbox: its folders are checked (and made) by then.
    wait_for("the daemon to watch the inbox", LONG, || {
        daemon.log().contains("watch mode")
    });
    let archive = dir.path("archive");
    let saved = dir.path(".archive-saved");
    fs::rename(&archive, &saved).expect("set archive/ aside");
    fs::write(&archive, b"not a folder").expect("block archive/");
    dir.drop_file(
        "M_TEST/stuck.xml",
        feed_xml(MERCHANT, &[refund(0, "stuck-1", 150)]).as_bytes(),
    );
    let report = report_of(&dir, "stuck.xml");
    assert_eq!(report["status"], "Complete", "{report}");
    wait_for("a failed move", LONG, || {
        daemon.log().contains("cannot move the")
    });
    // Longer than the rescan interval (5 s), after which the feed used to be taken up again.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(dir.files_in("work").len(), 1, "the feed waits in work/");
    assert_eq!(
        report_of(&dir, "stuck.xml"),
        report,
        "the report is not rewritten"
    );
    fs::remove_file(&archive).expect("unblock archive/");
    fs::rename(&saved, &archive).expect("put archive/ back");
    wait_until_idle(&dir);
    assert_eq!(dir.files_in("archive").len(), 1);
    expect_metrics(
        port,
        &[
            "adjustd_feeds_total{outcome=\"complete\"} 1",
            "adjustd_feeds_total{outcome=\"recovered\"} 0",
        ],
    );
    daemon.stop();
    assert_eq!(
        refunded_principal_cents(&dir.order(&order_id(0))),
        150,
        "applied once"
    );
    let log = daemon.log();
    summary_line(&log, "stuck.xml");
    assert!(!log.contains("taking up feeds in work/"), "{log}");
    assert!(!log.contains("the next start finishes it"), "{log}");
    let error = log
        .lines()
        .find(|line| line.contains("cannot move the feed out of work/"))
        .expect("the move error");
    assert!(
        error.contains("retried by this run") && error.contains("folder="),
        "{error}"
    );
    assert!(log.contains("feed moved out of work/ after"), "{log}");
}

#[test]
fn a_claimed_file_removed_from_work_while_it_is_read_is_said_to_be_gone() {
    // QA10-6: the file was removed from work/ while it was processed (nothing committed).
    // The log said it was still being written and stayed in work/ for the next start.
    const MESSAGES: u32 = 20_000;
    let dir = setup(&Settings::default(), 200);
    let refunds: Vec<Refund> = (0..MESSAGES)
        .map(|n| refund(n % 200, &format!("gone-{n}"), 1))
        .collect();
    dir.drop_file("gone.xml", feed_xml(MERCHANT, &refunds).as_bytes());
    let mut daemon = dir.spawn_daemon();
    wait_for("the feed to be in hand", LONG, || {
        daemon.log().contains("processing feed file=gone.xml")
    });
    for path in dir.files_in("work") {
        fs::remove_file(&path).expect("remove the claimed file");
    }
    wait_for("the attempt to end", LONG, || {
        let log = daemon.log();
        log.contains("disappeared from work/") || log.contains("cannot be given back")
    });
    daemon.stop();
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("disappeared from work/"))
        .unwrap_or_else(|| panic!("no line saying the file is gone:\n{log}"));
    assert!(
        line.contains("file=gone.xml")
            && line.contains("nothing of it was committed")
            && line.contains("no report will be written"),
        "{line}"
    );
    assert!(!log.contains("still being written"), "{log}");
    assert!(dir.reports_for("gone.xml").is_empty());
    let total: i64 = (0..200)
        .map(|n| refunded_principal_cents(&dir.order(&order_id(n))))
        .sum();
    assert_eq!(total, 0, "nothing applied");
}

/// QA10-1: a daemon that runs out of file descriptors (EMFILE) while many feeds arrive at
/// once must not take that for a fault of the feeds: nothing is rejected as
/// FEED_UNREADABLE, every feed is applied once, and the log says why feeds waited.
#[test]
fn running_out_of_file_descriptors_delays_feeds_without_rejecting_them() {
    const FILES: u32 = 150;
    const LIMIT: u32 = 40;
    let dir = setup(
        &Settings {
            settle_ms: 100,
            in_memory: true,
            ..Settings::default()
        },
        20,
    );
    let staging = dir.path("burst");
    fs::create_dir(&staging).expect("staging");
    for n in 0..FILES {
        let xml = feed_xml(MERCHANT, &[refund(n % 20, &format!("fd-{n}"), 1)]);
        fs::write(staging.join(format!("fd{n:03}.xml")), xml).expect("write");
    }
    let mut daemon = dir.spawn_daemon_with_open_file_limit(LIMIT);
    wait_for("watch mode logged", LONG, || {
        daemon.log().contains("watch mode")
    });
    for n in 0..FILES {
        let name = format!("fd{n:03}.xml");
        fs::rename(staging.join(&name), dir.path("inbox").join(&name)).expect("rename");
    }
    let unreadable = |dir: &TestDir| {
        dir.json_reports()
            .into_iter()
            .filter(|(_, json)| result_codes(json).contains(&"FEED_UNREADABLE".to_owned()))
            .map(|(_, json)| json["file_name"].to_string())
            .collect::<Vec<_>>()
    };
    // Until every feed is done, or one is taken for unreadable (then the report may never
    // come: its writing fails for want of descriptors too).
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline
        && !(dir.files_in("inbox").is_empty() && dir.files_in("work").is_empty())
        && unreadable(&dir).is_empty()
        && !daemon.log().contains("cannot read the claimed feed")
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    daemon.stop();
    assert!(
        !log.contains("cannot read the claimed feed"),
        "a feed was taken for unreadable; log:\n{log}"
    );
    assert_eq!(
        unreadable(&dir),
        Vec::<String>::new(),
        "feeds rejected for the daemon's own lack of descriptors"
    );
    assert!(
        log.contains("Too many open files"),
        "the limit was not reached, so the test shows nothing: lower LIMIT; log:\n{log}"
    );
    let tail: String = log.lines().rev().take(60).collect::<Vec<_>>().join("\n");
    assert_eq!(
        dir.json_reports().len(),
        FILES as usize,
        "last log lines, newest first:\n{tail}"
    );
    assert_eq!(dir.files_in("archive").len(), FILES as usize);
    assert!(dir.files_in("failed").is_empty());
    let total: i64 = (0..20)
        .map(|n| refunded_principal_cents(&dir.order(&order_id(n))))
        .sum();
    assert_eq!(total, i64::from(FILES));
}
