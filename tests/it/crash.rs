//! Crash consistency of the daemon: SIGKILL at random moments while it processes a stream
//! of feeds, restart, repeat; at the end every dropped file has exactly one report pair and
//! sits in `archive/` or `failed/`, `inbox/` and `work/` are empty, and the store equals the
//! exactly-once result computed from the generated feeds. `ADJUSTD_CRASH_ITERATIONS` and
//! `ADJUSTD_CRASH_SEED` make it longer or repeatable (`scripts/soak.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::util::{
    MERCHANT, Refund, Settings, TestDir, feed_xml, order_id, orders_report,
    refunded_principal_cents, wait_for,
};

const ORDERS: u32 = 20;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// What a dropped feed should do to the store.
enum Expected {
    /// Every refund applies.
    Applied(Vec<Refund>),
    /// The feed is rejected as a whole (malformed XML): nothing applies.
    Rejected,
}

#[test]
fn sigkill_at_random_moments_keeps_every_feed_exactly_once() {
    let iterations = env_number("ADJUSTD_CRASH_ITERATIONS").unwrap_or(50);
    let seed = env_number("ADJUSTD_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    eprintln!("crash test: {iterations} iterations, ADJUSTD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = TestDir::with(&Settings {
        settle_ms: 30,
        poll_interval_ms: 100,
        ..Settings::default()
    });
    dir.import_orders(MERCHANT, &orders_report(ORDERS));

    let mut dropped: BTreeMap<String, Expected> = BTreeMap::new();
    let mut key = 0u64;
    let mut kills_in_hand = 0u32;
    let started = Instant::now();
    for iteration in 0..iterations {
        let mut daemon = dir.spawn_daemon();
        for _ in 0..2 {
            let name = format!("crash-{:04}.xml", dropped.len());
            if rng.below(12) == 0 {
                let xml = feed_xml(MERCHANT, &[]);
                // Malformed: an end tag that does not match, so the feed is rejected.
                dir.drop_file(&name, xml.replace("</MessageType>", "</Oops>").as_bytes());
                dropped.insert(name, Expected::Rejected);
                continue;
            }
            let refunds: Vec<Refund> = (0..1 + rng.below(4))
                .map(|_| {
                    key += 1;
                    Refund {
                        order: u32::try_from(rng.below(u64::from(ORDERS))).expect("small"),
                        key: format!("crash-key-{key}"),
                        cents: i64::try_from(1 + rng.below(99)).expect("small"),
                    }
                })
                .collect();
            // Some go through the merchant's own folder (bound merchant, reports and archive
            // in merchant subfolders).
            let relative = if rng.below(4) == 0 {
                format!("{MERCHANT}/{name}")
            } else {
                name.clone()
            };
            dir.drop_file(&relative, feed_xml(MERCHANT, &refunds).as_bytes());
            dropped.insert(name, Expected::Applied(refunds));
        }
        if rng.below(2) == 0 {
            // Aim at a feed in hand: on a fast idle machine a feed sits in work/ for only a
            // few milliseconds, so random moments alone may never hit one.
            let deadline = Instant::now() + Duration::from_secs(2);
            while dir.files_in("work").is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(500));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(250)));
        }
        if !dir.files_in("work").is_empty() {
            kills_in_hand += 1;
        }
        if !daemon.is_running() {
            panic!(
                "daemon died on its own in iteration {iteration}:\n{}",
                daemon.log()
            );
        }
        daemon.kill();
    }
    eprintln!(
        "crash loop took {:?}; {kills_in_hand} of {iterations} kills hit a feed in work/",
        started.elapsed()
    );
    // The loop must really interrupt feeds in hand, not only idle daemons.
    assert!(
        kills_in_hand > 0,
        "no kill landed while a feed was in work/"
    );

    let mut daemon = dir.spawn_daemon();
    wait_for(
        "every dropped feed to be finished",
        Duration::from_secs(60),
        || {
            dir.files_in("inbox").is_empty()
                && dir.files_in("work").is_empty()
                && dir.json_reports().len() >= dropped.len()
        },
    );
    daemon.stop();

    // Exactly one report pair per dropped file.
    let reports = dir.json_reports();
    let mut seen = BTreeSet::new();
    for (path, report) in &reports {
        let name = report["file_name"].as_str().expect("file_name").to_owned();
        assert!(
            dropped.contains_key(&name),
            "report for a file never dropped: {name}"
        );
        assert!(seen.insert(name.clone()), "two reports for {name}");
        let xml = path
            .to_string_lossy()
            .replace(".report.json", ".report.xml");
        assert!(
            std::path::Path::new(&xml).is_file(),
            "no XML report next to {}",
            path.display()
        );
        let expected_status = match dropped[&name] {
            Expected::Applied(_) => "Complete",
            Expected::Rejected => "Rejected",
        };
        assert_eq!(report["status"], expected_status, "{name}: {report}");
    }
    assert_eq!(
        seen.len(),
        dropped.len(),
        "some dropped files have no report"
    );
    assert_eq!(
        dir.files_in("outbox").len(),
        2 * dropped.len(),
        "stray files in outbox/"
    );

    // Each file sits once in archive/ (applied) or failed/ (rejected).
    for (folder, status) in [("archive", "Complete"), ("failed", "Rejected")] {
        let names = dir.names_in(folder);
        let wanted: Vec<&String> = dropped
            .iter()
            .filter(|(_, expected)| match expected {
                Expected::Applied(_) => status == "Complete",
                Expected::Rejected => status == "Rejected",
            })
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names.len(), wanted.len(), "{folder}: {names:?}");
        for name in wanted {
            let copies = names
                .iter()
                .filter(|n| n.ends_with(&format!("-{name}")))
                .count();
            assert_eq!(copies, 1, "{name} in {folder}: {names:?}");
        }
    }

    // The store equals applying every feed exactly once.
    let mut expected_cents: BTreeMap<u32, i64> = BTreeMap::new();
    for expected in dropped.values() {
        if let Expected::Applied(refunds) = expected {
            for refund in refunds {
                *expected_cents.entry(refund.order).or_default() += refund.cents;
            }
        }
    }
    for order in 0..ORDERS {
        let view = dir.order(&order_id(order));
        assert_eq!(
            refunded_principal_cents(&view),
            expected_cents.get(&order).copied().unwrap_or(0),
            "order {order} (seed {seed})"
        );
        let applied: usize = dropped
            .values()
            .filter_map(|expected| match expected {
                Expected::Applied(refunds) => {
                    Some(refunds.iter().filter(|r| r.order == order).count())
                }
                Expected::Rejected => None,
            })
            .sum();
        assert_eq!(
            view["adjustments"].as_array().expect("adjustments").len(),
            applied,
            "adjustments of order {order} (seed {seed})"
        );
    }
}
