//! Inbox names the daemon must cope with, end to end with the real `adjustd run`: names that
//! are not UTF-8 (in done-marker mode too), names with control characters and names of the
//! full 255 bytes, as archived and as logged; and the inbox gauges a scrape reads between
//! listings.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{free_port, http_get};
use crate::util::{MERCHANT, Refund, Settings, TestDir, feed_xml, orders_report, wait_for};

const LONG: Duration = Duration::from_secs(20);

fn setup(settings: &Settings, orders: u32) -> TestDir {
    let dir = TestDir::with(settings);
    dir.import_orders(MERCHANT, &orders_report(orders));
    dir
}

fn feed(order: u32, key: &str) -> String {
    feed_xml(
        MERCHANT,
        &[Refund {
            order,
            key: key.to_owned(),
            cents: 100,
        }],
    )
}

/// Writes `bytes` under a short staging name and renames it to `inbox/<folder>/<name>`: the
/// name may be any bytes, and as long as the file-name limit allows.
fn drop_raw(dir: &TestDir, folder: &str, name: &OsStr, bytes: &[u8]) -> PathBuf {
    let staging = dir.path("staging");
    fs::create_dir_all(&staging).expect("staging folder");
    let temp = staging.join("raw.tmp");
    fs::write(&temp, bytes).expect("write staging file");
    let target = dir.path("inbox").join(folder).join(name);
    fs::create_dir_all(target.parent().expect("folder")).expect("inbox folder");
    fs::rename(&temp, &target).expect("rename into inbox");
    target
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The value of `gauge` in a scrape.
fn gauge(metrics: &str, gauge: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(gauge)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn done_markers_match_names_that_are_not_utf8_and_a_missing_marker_is_logged_once() {
    const WAITING: &str = "still waiting for its done marker";
    let dir = setup(
        &Settings {
            inbox_extra: "done_marker = \".done\"".to_owned(),
            truncated_grace_secs: 1,
            rescan_interval_secs: 1,
            ..Settings::default()
        },
        2,
    );
    let mut daemon = dir.spawn_daemon();
    let raw = OsString::from_vec(b"caf\xe9 \xff.xml".to_vec());
    let feed_path = drop_raw(&dir, MERCHANT, &raw, feed(0, "raw").as_bytes());
    let marker = with_suffix(&feed_path, ".done");
    fs::write(&marker, b"").expect("marker");
    dir.drop_file("lonely.xml", feed(1, "lonely").as_bytes());
    let lossy = raw.to_string_lossy().into_owned();
    wait_for("the report of the name that is not UTF-8", LONG, || {
        !dir.reports_for(&lossy).is_empty()
    });
    // The report is written before the feed leaves work/.
    wait_for("the feed to be archived", LONG, || {
        dir.files_in(&format!("inbox/{MERCHANT}")).is_empty()
            && dir.files_in("work").is_empty()
            && !dir.files_in("archive").is_empty()
    });
    assert!(!marker.exists(), "marker removed after the claim");
    let archived = dir.files_in("archive");
    assert_eq!(archived.len(), 1, "{archived:?}");
    let archived_name = archived[0].file_name().expect("name").as_bytes().to_vec();
    assert!(
        archived_name.ends_with(b"-caf\xe9 \xff.xml"),
        "{archived_name:?}"
    );
    // The file without its marker: said once, however many rescans pass (every second).
    wait_for("the missing marker to be logged", LONG, || {
        daemon.log().contains(WAITING)
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert!(dir.path("inbox/lonely.xml").is_file());
    assert!(dir.reports_for("lonely.xml").is_empty());
    fs::write(dir.path("inbox/lonely.xml.done"), b"").expect("marker");
    wait_for("the report of lonely.xml", LONG, || {
        !dir.reports_for("lonely.xml").is_empty()
    });
    daemon.stop();
    let log = daemon.log();
    let waiting: Vec<&str> = log.lines().filter(|line| line.contains(WAITING)).collect();
    assert_eq!(waiting.len(), 1, "{log}");
    assert!(waiting[0].contains("file=lonely.xml"), "{log}");
    assert!(waiting[0].contains("marker=lonely.xml.done"), "{log}");
}

#[test]
fn archive_names_are_cleaned_like_report_names_and_the_logged_path_is_the_real_one() {
    let dir = setup(&Settings::default(), 2);
    let mut daemon = dir.spawn_daemon();
    let control = OsStr::new("new\nline\u{1b}[31m.xml");
    let long = format!("{}.xml", "L".repeat(251));
    assert_eq!(long.len(), 255);
    drop_raw(&dir, "", control, feed(0, "control").as_bytes());
    drop_raw(&dir, "", OsStr::new(&long), feed(1, "long").as_bytes());
    wait_for("both reports", LONG, || dir.json_reports().len() == 2);
    wait_for("inbox and work/ to be empty", LONG, || {
        dir.files_in("inbox").is_empty() && dir.files_in("work").is_empty()
    });
    daemon.stop();
    let archived = dir.files_in("archive");
    assert_eq!(archived.len(), 2, "{archived:?}");
    let names = dir.names_in("archive");
    for name in &names {
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(name.len() <= 255, "{name}");
    }
    assert!(
        names
            .iter()
            .any(|name| name.ends_with("-new_line_[31m.xml")),
        "{names:?}"
    );
    // The outbox names the feed the same way.
    assert!(
        crate::util::files_under(&dir.path("outbox"))
            .iter()
            .any(|path| path.to_string_lossy().contains("/new_line_[31m.xml.")),
        "{:?}",
        crate::util::files_under(&dir.path("outbox"))
    );
    // Each summary line names the file where it is.
    let log = daemon.log();
    let mut logged: Vec<PathBuf> = log
        .lines()
        .filter(|line| line.contains("feed processed"))
        .map(|line| {
            let (_, rest) = line.split_once("moved_to=\"").expect("moved_to");
            let (path, _) = rest.split_once('"').expect("closing quote");
            PathBuf::from(path)
        })
        .collect();
    logged.sort();
    assert_eq!(logged, archived, "{log}");
}

#[test]
fn the_oldest_waiting_age_moves_between_listings() {
    let port = free_port();
    let dir = setup(
        &Settings {
            inbox_extra: "done_marker = \".done\"".to_owned(),
            rescan_interval_secs: 3600,
            http_listen: Some(format!("127.0.0.1:{port}")),
            ..Settings::default()
        },
        1,
    );
    let mut daemon = dir.spawn_daemon();
    wait_for("the http listener", LONG, || {
        daemon.log().contains("http listener ready")
    });
    dir.drop_file("waits.xml", feed(0, "waits").as_bytes());
    // Settled (a listing at the end of the settle time), then no listing for an hour.
    let mut first = 0.0;
    wait_for("the file to be counted as waiting", LONG, || {
        let metrics = http_get(port, "/metrics");
        first = gauge(&metrics, "adjustd_oldest_waiting_seconds").unwrap_or(0.0);
        gauge(&metrics, "adjustd_files_waiting") == Some(1.0) && first >= 0.2
    });
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = http_get(port, "/metrics");
    let later = gauge(&metrics, "adjustd_oldest_waiting_seconds").expect("gauge");
    assert!(later >= first + 1.4, "{first} then {later}:\n{metrics}");
    daemon.stop();
}
