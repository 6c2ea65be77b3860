//! Test harness for the daemon: `TestDir` (a temp folder with a config file, the folder
//! layout and a SQLite store), `Daemon` (the real `adjustd run` as a child process, with its
//! log captured to a file), feed and order-report generators, and polling helpers. No
//! mocks: everything goes through the binary and the filesystem.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The merchant of the generated orders.
pub const MERCHANT: &str = "M_TEST";

/// A temp folder laid out for the daemon, with `adjustd.toml` and a SQLite store.
pub struct TestDir {
    dir: tempfile::TempDir,
}

/// Knobs of the generated config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[inbox] settle_ms`.
    pub settle_ms: u64,
    /// `[inbox] truncated_grace_secs`.
    pub truncated_grace_secs: u64,
    /// `[inbox] watch`.
    pub watch: &'static str,
    /// `[inbox] poll_interval_ms`.
    pub poll_interval_ms: u64,
    /// `[inbox] rescan_interval_secs`.
    pub rescan_interval_secs: u64,
    /// More `[inbox]` lines.
    pub inbox_extra: String,
    /// `[daemon] shutdown_timeout_secs`.
    pub shutdown_timeout_secs: u64,
    /// More `[daemon]` lines.
    pub daemon_extra: String,
    /// `[store] url`; `None`: `sqlite:store.db` in the folder.
    pub store_url: Option<String>,
    /// `[http] listen`.
    pub http_listen: Option<String>,
    /// More sections, appended at the end of the config (`"[limits]\nmax_file_bytes = 10\n"`).
    pub more_sections: String,
    /// Put the folder on tmpfs (`/dev/shm`) when there is one, so that fsync costs
    /// nothing and a test measures the daemon rather than the disk.
    pub in_memory: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            settle_ms: 200,
            truncated_grace_secs: 300,
            watch: "auto",
            poll_interval_ms: 200,
            rescan_interval_secs: 5,
            inbox_extra: String::new(),
            shutdown_timeout_secs: 20,
            daemon_extra: String::new(),
            store_url: None,
            http_listen: None,
            more_sections: String::new(),
            in_memory: false,
        }
    }
}

impl TestDir {
    /// A folder with the default settings.
    pub fn new() -> TestDir {
        TestDir::with(&Settings::default())
    }

    /// A folder with these settings.
    pub fn with(settings: &Settings) -> TestDir {
        let shm = Path::new("/dev/shm");
        let dir = if settings.in_memory && shm.is_dir() {
            tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")
        } else {
            tempfile::tempdir().expect("temp dir")
        };
        let test_dir = TestDir { dir };
        test_dir.write_config(settings);
        test_dir
    }

    /// Rewrites the config file.
    pub fn write_config(&self, settings: &Settings) {
        let mut config = format!(
            "[store]\nurl = \"{}\"\n\
             [paths]\ninbox = \"inbox\"\noutbox = \"outbox\"\narchive = \"archive\"\n\
             failed = \"failed\"\nwork = \"work\"\nparked = \"parked\"\n",
            settings.store_url.as_deref().unwrap_or("sqlite:store.db")
        );
        let _ = write!(
            config,
            "[inbox]\nsettle_ms = {}\ntruncated_grace_secs = {}\nwatch = \"{}\"\n\
             poll_interval_ms = {}\nrescan_interval_secs = {}\n{}\n\
             [daemon]\nshutdown_timeout_secs = {}\nmax_backoff_secs = 2\n{}\n",
            settings.settle_ms,
            settings.truncated_grace_secs,
            settings.watch,
            settings.poll_interval_ms,
            settings.rescan_interval_secs,
            settings.inbox_extra,
            settings.shutdown_timeout_secs,
            settings.daemon_extra,
        );
        if let Some(listen) = &settings.http_listen {
            let _ = write!(config, "[http]\nlisten = \"{listen}\"\n");
        }
        config.push_str(&settings.more_sections);
        fs::write(self.path("adjustd.toml"), config).expect("write config");
        for folder in ["inbox", "outbox", "archive", "failed", "work"] {
            fs::create_dir_all(self.path(folder)).expect("create folder");
        }
    }

    /// A path inside the folder.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Runs a one-shot command of the binary with this config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_adjustd"))
            .arg("--config")
            .arg(self.path("adjustd.toml"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run adjustd")
    }

    /// Imports `orders` (see [`orders_report`]) for `merchant`.
    pub fn import_orders(&self, merchant: &str, orders: &str) {
        let file = self.path("orders.txt");
        fs::write(&file, orders).expect("write orders");
        let out = self.cli(&[
            "orders",
            "import",
            "--merchant",
            merchant,
            file.to_str().expect("utf-8 path"),
        ]);
        assert!(
            out.status.success(),
            "orders import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One order as `orders show --json` prints it.
    pub fn order(&self, order_id: &str) -> Value {
        let out = self.cli(&["orders", "show", order_id, "--merchant", MERCHANT, "--json"]);
        assert!(
            out.status.success(),
            "orders show {order_id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("orders show prints JSON")
    }

    /// Writes a file into the inbox atomically (written next to the folders, then renamed
    /// in), as a well-behaved uploader does. `relative` is relative to `inbox/`.
    pub fn drop_file(&self, relative: &str, bytes: &[u8]) {
        let staging = self.path("staging");
        fs::create_dir_all(&staging).expect("staging folder");
        let temp = staging.join(format!("{}.tmp", relative.replace('/', "_")));
        fs::write(&temp, bytes).expect("write staging file");
        let target = self.path("inbox").join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).expect("inbox subfolder");
        }
        fs::rename(&temp, &target).expect("rename into inbox");
    }

    /// Every JSON report in `outbox/` (and its merchant folders), parsed.
    pub fn json_reports(&self) -> Vec<(PathBuf, Value)> {
        files_under(&self.path("outbox"))
            .into_iter()
            .filter(|path| path.to_string_lossy().ends_with(".report.json") && !is_hidden(path))
            .map(|path| {
                let json = serde_json::from_slice(&fs::read(&path).expect("read report"))
                    .expect("report is JSON");
                (path, json)
            })
            .collect()
    }

    /// The JSON reports whose `file_name` is `name`.
    pub fn reports_for(&self, name: &str) -> Vec<Value> {
        self.json_reports()
            .into_iter()
            .filter(|(_, json)| json["file_name"] == name)
            .map(|(_, json)| json)
            .collect()
    }

    /// Files (not folders, not dot-files) under a folder of the layout, recursively.
    pub fn files_in(&self, folder: &str) -> Vec<PathBuf> {
        files_under(&self.path(folder))
            .into_iter()
            .filter(|path| !is_hidden(path))
            .collect()
    }

    /// The names (without folders, lossily as text) of [`Self::files_in`] `folder`.
    pub fn names_in(&self, folder: &str) -> Vec<String> {
        self.files_in(folder)
            .iter()
            .map(|path| {
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// Starts `adjustd run`.
    pub fn spawn_daemon(&self) -> Daemon {
        self.spawn_daemon_via(&[])
    }

    /// Starts `adjustd run` so that file permissions apply to it: a file or folder with mode
    /// 000 cannot be opened (see [`TestDir::permissions_wrapper`]). `None` (with a message)
    /// when that cannot be arranged.
    pub fn spawn_daemon_bound_by_permissions(&self) -> Option<Daemon> {
        Some(self.spawn_daemon_via(self.permissions_wrapper()?))
    }

    /// Runs a one-shot command of the binary like [`TestDir::cli`], but bound by file
    /// permissions like [`TestDir::spawn_daemon_bound_by_permissions`]. `None` (with a
    /// message) when that cannot be arranged.
    pub fn cli_bound_by_permissions(&self, args: &[&str]) -> Option<Output> {
        let wrapper = self.permissions_wrapper()?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command
                    .args(wrapper_args)
                    .arg(env!("CARGO_BIN_EXE_adjustd"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_adjustd")),
        };
        let output = command
            .arg("--config")
            .arg(self.path("adjustd.toml"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run adjustd");
        Some(output)
    }

    /// The command (and its arguments) to run the binary through so that file permissions
    /// apply to it: none when they already do. As root (tests often run as root, which reads
    /// anything) that is `setpriv` without `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH`:
    /// still root and owner of every file here, but bound by the mode bits. `None` (with a
    /// message) when that is needed and `setpriv` is missing.
    fn permissions_wrapper(&self) -> Option<&'static [&'static str]> {
        let probe = self.path("mode-000-probe");
        fs::write(&probe, b"x").expect("write probe");
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o000)).expect("chmod probe");
        let bypasses_permissions = fs::File::open(&probe).is_ok();
        fs::remove_file(&probe).expect("remove probe");
        if !bypasses_permissions {
            return Some(&[]);
        }
        let has_setpriv = Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !has_setpriv {
            eprintln!(
                "skipping: running as root and setpriv(1) is missing, so mode 000 cannot stop adjustd"
            );
            return None;
        }
        Some(&[
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
        ])
    }

    /// Starts `adjustd run` with a soft and hard limit of `limit` open files
    /// (`RLIMIT_NOFILE`, set by `ulimit -n` in a shell that then runs the binary).
    pub fn spawn_daemon_with_open_file_limit(&self, limit: u32) -> Daemon {
        let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
        self.spawn_daemon_via(&["sh", "-c", &script])
    }

    /// Starts `adjustd run`, through `wrapper` (a command and its arguments) if not empty.
    fn spawn_daemon_via(&self, wrapper: &[&str]) -> Daemon {
        let log_path = self.path(&format!("daemon-{}.log", unique()));
        let log = fs::File::create(&log_path).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_adjustd"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_adjustd")),
        };
        let child = command
            .arg("--config")
            .arg(self.path("adjustd.toml"))
            .arg("run")
            .env("RUST_LOG", "adjustd=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn adjustd run");
        Daemon {
            child: Some(child),
            log_path,
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// Every file under `root`, recursively, sorted; symlinks are listed, not followed.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// A running `adjustd run`. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for a clean exit (code 0). Waits first for the daemon's
    /// "starting" line, which it logs once its signal handlers are installed: a SIGTERM in
    /// the first milliseconds of the process would otherwise kill it by default action.
    pub fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("starting") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "daemon exit; log:\n{}", self.log());
    }

    /// The log so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&self.raw_log())
    }

    /// The log so far, byte for byte (lossy UTF-8).
    pub fn raw_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The order id of generated order `n` (3-7-7 digits).
pub fn order_id(n: u32) -> String {
    format!("111-{n:07}-{n:07}")
}

/// The item code of generated order `n` (14 digits).
pub fn item_code(n: u32) -> String {
    format!("{:014}", 20_000_000_000_000u64 + u64::from(n))
}

/// An order report (tab-separated, Amazon's columns) with `count` single-item MFN USD
/// orders, each charged 1000.00 principal, shipped.
pub fn orders_report(count: u32) -> String {
    let mut report = String::from(
        "order-id\torder-item-id\tpurchase-date\tsku\tquantity-purchased\tquantity-shipped\t\
         currency\titem-price\titem-tax\tshipping-price\tshipping-tax\tfulfillment-channel\n",
    );
    for n in 0..count {
        let _ = writeln!(
            report,
            "{}\t{}\t2026-11-01T10:00:00+00:00\tSKU-{n}\t1\t1\tUSD\t1000.00\t80.00\t0.00\t0.00\tMFN",
            order_id(n),
            item_code(n)
        );
    }
    report
}

/// One refund message: `cents` of Principal back on generated order `order`, with the
/// idempotency key `key`.
#[derive(Debug, Clone)]
pub struct Refund {
    /// The generated order number.
    pub order: u32,
    /// `MerchantAdjustmentItemID`.
    pub key: String,
    /// Principal refunded, in cents.
    pub cents: i64,
}

/// An OrderAdjustment feed for `merchant` with one message per refund.
pub fn feed_xml(merchant: &str, refunds: &[Refund]) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <AmazonEnvelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:noNamespaceSchemaLocation=\"amzn-envelope.xsd\">\n\
         <Header><DocumentVersion>1.01</DocumentVersion>\
         <MerchantIdentifier>{merchant}</MerchantIdentifier></Header>\n\
         <MessageType>OrderAdjustment</MessageType>\n"
    );
    for (index, refund) in refunds.iter().enumerate() {
        let _ = writeln!(
            xml,
            "<Message><MessageID>{}</MessageID><OrderAdjustment>\
             <AmazonOrderID>{}</AmazonOrderID><AdjustedItem>\
             <AmazonOrderItemCode>{}</AmazonOrderItemCode>\
             <MerchantAdjustmentItemID>{}</MerchantAdjustmentItemID>\
             <AdjustmentReason>CustomerReturn</AdjustmentReason>\
             <ItemPriceAdjustments><Component><Type>Principal</Type>\
             <Amount currency=\"USD\">{}.{:02}</Amount></Component></ItemPriceAdjustments>\
             </AdjustedItem></OrderAdjustment></Message>",
            index + 1,
            order_id(refund.order),
            item_code(refund.order),
            refund.key,
            refund.cents / 100,
            refund.cents % 100
        );
    }
    xml.push_str("</AmazonEnvelope>\n");
    xml
}

/// The net Principal refunded on an order, in cents, from `orders show --json`.
pub fn refunded_principal_cents(order: &Value) -> i64 {
    let items = order["items"].as_array().expect("items");
    items
        .iter()
        .map(|item| item["refunded"]["Principal"].as_str().map_or(0, cents))
        .sum()
}

/// Parses a decimal string with at most two decimals ("-1.5", "0.40") into cents.
pub fn cents(amount: &str) -> i64 {
    let (negative, digits) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount),
    };
    let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 2, "more than two decimals: {amount}");
    let units: i64 = units.parse().expect("units");
    let fraction: i64 = format!("{fraction:0<2}").parse().expect("cents");
    let value = units * 100 + fraction;
    if negative { -value } else { value }
}

/// The result codes of a JSON report.
pub fn result_codes(report: &Value) -> Vec<String> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["code_name"].as_str().unwrap_or_default().to_owned())
        .collect()
}
