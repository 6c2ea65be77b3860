//! The command line: clap definitions, the documented exit codes, and dispatch of each
//! command to the library. With `daemon`'s outer layer, the only module that uses `anyhow`;
//! the only one besides `main` that prints.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, LogFormat};
use crate::model::MerchantId;
use crate::pipeline::{self, Context, DuplicatePolicy, Source, Tally};
use crate::problem::{count, quoted};
use crate::report::{self, FeedOutcome};
use crate::store::import::{HeaderNotes, PRICE_COLUMNS, Unlikely, UnlikelyPurchaseDate};
use crate::store::{AnyStore, FeedStatus, ImportSummary};
use crate::validate::{ValidatedMessage, Validator};

/// Exit codes, part of the interface (also listed in `--help` and the README, in the same
/// words; the `docs` test keeps the three in step).
pub mod exit {
    /// Success: everything processed, no message or feed with an error.
    pub const OK: u8 = 0;
    /// Fatal configuration or startup error (bad config, store locked by another process or
    /// unreachable at start, a store path that cannot be used, bad folders, `[http] listen`
    /// address in use).
    pub const CONFIG: u8 = 1;
    /// Unexpected runtime failure (I/O, database error while running; `orders import` of a
    /// report file that is missing or a folder).
    pub const RUNTIME: u8 = 2;
    /// The input had errors: a feed was rejected or a message has an error (`validate`,
    /// `process`), or an order report line is invalid (`orders import`), or an order was not
    /// found (`orders show`).
    pub const INPUT: u8 = 3;
    /// Command-line usage error (also `validate --format xml` with several files, and
    /// `orders show` without `--merchant` for an id several merchants have).
    pub const USAGE: u8 = 64;
    /// `run`'s shutdown was cut short: a second SIGINT/SIGTERM exited at once, or the feed
    /// in hand did not finish within `[daemon] shutdown_timeout_secs`. Still safe: that feed
    /// stays in `work/` and is recovered at the next start.
    pub const INTERRUPTED: u8 = 130;

    /// The more severe of two outcomes of a command over several files, so the exit code
    /// does not depend on their order: a file that could not be processed at all
    /// ([`RUNTIME`]) outweighs files with input errors ([`INPUT`]), which outweigh success.
    pub fn worst(a: u8, b: u8) -> u8 {
        let severity = |code: u8| match code {
            OK => 0,
            INPUT => 1,
            _ => 2,
        };
        if severity(b) > severity(a) { b } else { a }
    }
}

/// The exit codes in `--help`: README's table "Exit codes" in the same words (without its
/// markdown), which the `docs` test checks, so the two cannot drift apart.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success: no feed rejected, no message with an error
  1    configuration or startup error (bad config, store locked by another process, a store
       that cannot be reached (run waits for it instead), a store path that cannot be used,
       bad folders, [http] listen address in use)
  2    runtime failure (I/O or database error; for orders import also a report file that
       is missing or a folder)
  3    input errors: a feed was rejected or a message has an error (validate, process), an
       invalid order report (orders import), order not found (orders show)
  64   command-line usage error (also validate --format xml with more than one file, and
       orders show ORDER_ID without --merchant for an id that several merchants have)
  130  run: shutdown cut short, by a second SIGINT/SIGTERM (exited at once) or by [daemon]
       shutdown_timeout_secs passing before the feed in hand finished (logged as \"shutdown
       did not finish within …\"; only ever with a feed in hand: an idle daemon stops with
       0 whatever the timeout, 0 included). Still safe: that feed stays in work/ and is
       recovered at the next start
With several files, every file is handled and the most severe code wins: 2 over 3 over 0.

Configuration: --config PATH, else the file ADJUSTD_CONFIG names, else ./adjustd.toml if
present, else defaults under ./var.
Environment variables ADJUSTD_<SECTION>_<KEY> override file keys (e.g. ADJUSTD_STORE_URL);
their relative paths resolve against the current directory, the file's against its folder.";

/// adjustd applies Amazon Order Adjustment Feeds (refunds and partial cancellations) to an
/// order store exactly once and writes a ProcessingReport (XML + JSON) per feed.
#[derive(Debug, Parser)]
#[command(name = "adjustd", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Config file (TOML). Default: the file the ADJUSTD_CONFIG variable names, else
    /// ./adjustd.toml if present, else built-in defaults.
    // ADJUSTD_CONFIG is read by `config::load` with the other variables (not by clap, whose
    // error about an empty value would name this flag instead of the variable).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format (overrides `[log] format`).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the inbox, process each ready feed, write reports to the
    /// outbox, until SIGINT/SIGTERM (then finish the feed in hand and exit 0; exit 130 when
    /// a second signal or `[daemon] shutdown_timeout_secs` cuts that short).
    ///
    /// Signals: SIGTERM and SIGINT stop it as above. SIGHUP is logged and ignored: adjustd
    /// does not reload its configuration, restart it to apply a change (`systemctl
    /// restart adjustd`). Any other signal has its default action: SIGUSR1, SIGUSR2 and
    /// SIGQUIT end the process at once, like SIGKILL (safe: the feed in hand stays in
    /// `work/` and is recovered at the next start).
    ///
    /// With SQLite the daemon is the store's only writer while it runs: `orders import` and
    /// `process` are refused (exit 1, "locked by another adjustd process"), so stop the
    /// daemon first, or use PostgreSQL to run several writers. `orders show` and
    /// `feeds list` work next to it.
    ///
    /// A feed with an ORDER_NOT_FOUND (often an order report not imported yet) is parked in
    /// `[paths] parked` and processed again with back-off (`[daemon]
    /// order_not_found_first_retry_secs`, doubling, at most an hour apart) until its orders
    /// are found or `[daemon] order_not_found_window_secs` have passed since it was first
    /// processed; the retry after that pins ORDER_NOT_FOUND as final. Each retry that
    /// changes something writes its own report pair; one that would change nothing (the
    /// order still missing) is rolled back without a report and logged as "parked feed
    /// retried: nothing new". A window of 0 turns this off.
    Run,
    /// Process these feed files now with the same pipeline as the daemon (the files stay
    /// where they are); prints the path of each report.
    ///
    /// A file in a merchant folder of the configured inbox (`inbox/<merchant>/`, however the
    /// path is spelt: relative, with .., through symlinks) is handled as the daemon handles
    /// it: a feed for another merchant is rejected (MERCHANT_NOT_ALLOWED) and the reports go
    /// to `outbox/<merchant>/`. Any other file reports to outbox/ and may speak for the
    /// merchants of `[inbox] allowed_merchants` (any when unset).
    ///
    /// `process` does not park: a message whose order is not found (ORDER_NOT_FOUND) is
    /// reported and not retried, as by the daemon with parking off. Import the order and
    /// process the same file again (its bytes are processed again, not skipped as a
    /// duplicate), or drop it into the inbox, where the daemon parks and retries it.
    Process(ProcessArgs),
    /// Parse and validate feeds without touching the store; prints the problems.
    /// Exit 0 only when no message has an error.
    ///
    /// --format text (default) prints a summary per file; --format json prints JSON Lines,
    /// one report object per file and line; --format xml prints the ProcessingReport of one
    /// file (several files with --format xml are a usage error, exit 64). A file in a
    /// merchant folder of the inbox may only speak for that merchant, as in `process`.
    Validate(ValidateArgs),
    /// Orders in the store.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// Feeds in the store.
    #[command(subcommand)]
    Feeds(FeedsCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `process` arguments.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Feed files (Order Adjustment Feed XML).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Output format of `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateFormat {
    /// A readable summary per file.
    Text,
    /// The ProcessingReport (an AmazonEnvelope valid against schemas/) of one file: one XML
    /// document, so only one FILE (use json for several).
    Xml,
    /// JSON Lines: the JSON report of each file as one object on one line, in the order of
    /// the files (with one file, the output is one JSON document).
    Json,
}

/// `validate` arguments.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Feed files (one only with --format xml).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format. The xml and json reports are the ones `process` would write for the
    /// checks made without the store; nothing is stored, so their feed id
    /// (DocumentTransactionID, "feed_id") is always 1, a placeholder the report schema
    /// requires (it must be a positive number), not the id of a stored feed.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ValidateFormat,
}

/// `orders` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Load or update orders from an Amazon order report (tab-separated, one line per
    /// order item): the New Orders report creates orders with prices, the Unshipped report
    /// updates shipped quantities.
    ///
    /// Columns read (UTF-8; others are ignored, whatever their encoding): order-id (or
    /// amazon-order-id), order-item-id, sku, quantity-purchased (or quantity) are required;
    /// a new order also needs currency.
    /// Optional: item-price, item-tax, shipping-price, shipping-tax, gift-wrap-price,
    /// gift-wrap-tax, item-promotion-discount, ship-promotion-discount (totals for the
    /// quantity; a missing column or an empty field: 0 for a new item, unchanged for a known
    /// one), quantity-shipped (missing: 0 for a new item, unchanged for a
    /// known one; it never goes down), fulfillment-channel (MFN or Merchant, AFN or Amazon;
    /// missing: MFN for a new order; a stored order's channel never changes), purchase-date,
    /// merchant-order-id, merchant-order-item-id.
    ///
    /// The New Orders report has no quantity-shipped, so its items start unshipped: import
    /// the Unshipped report (or any file with the required columns and quantity-shipped) to
    /// record shipments before sending returns with a Quantity.
    ///
    /// One transaction: a bad line imports nothing. An order item (order-id + order-item-id)
    /// on two lines with other values is a bad line, and so is a line that gives its order
    /// another merchant-order-id, purchase-date, currency or fulfillment-channel than an
    /// earlier line of the order (an empty field gives none); a line repeating another
    /// exactly is skipped, and the summary says how many were.
    ///
    /// A line may not leave a promotion discount above the charge it discounts
    /// (item-promotion-discount above item-price, ship-promotion-discount above
    /// shipping-price), for a new item as for a known one (a line that leaves such a pair
    /// as an older adjustd stored it is let through).
    ///
    /// The summary counts the orders and items created, updated (the report changed a
    /// value; an order also when one of its items changed or was added) and unchanged: the
    /// same report imported again leaves everything unchanged. "warning:" lines follow it
    /// for an ignored column that looks like a misspelt one adjustd reads (item_price for
    /// item-price; Amazon's other columns are ignored without a word), and for items
    /// created by a report with none of the amount columns (stored with nothing charged).
    /// A comma- or semicolon-separated (CSV) file, or an XML file, is named as such at its
    /// first line. On PostgreSQL an import that races another one creating the same new
    /// orders runs again and finds them.
    Import {
        /// The merchant the orders belong to: the MerchantIdentifier of its feeds (which
        /// are read trimmed, so whitespace at either end of ID is refused).
        #[arg(long, value_name = "ID")]
        merchant: String,
        /// The order report file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show one order: its items with charged and refunded amounts per component, and its
    /// adjustments, as a readable table (or as JSON with --json).
    Show {
        /// The AmazonOrderID.
        #[arg(value_name = "ORDER_ID")]
        order_id: String,
        /// Only this merchant's order.
        #[arg(long, value_name = "ID")]
        merchant: Option<String>,
        /// Print one JSON object instead of the table (the shape documented in the README).
        #[arg(long)]
        json: bool,
    },
}

/// `feeds` subcommands.
#[derive(Debug, Subcommand)]
pub enum FeedsCommand {
    /// Recent feeds, newest first, with status, counts and report paths.
    List {
        /// How many feeds to list, the most recent first (1 or more).
        #[arg(long, value_name = "N", default_value_t = 20,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Print a JSON array of {feed, xml_report, json_report} instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved configuration (defaults and ADJUSTD_* overrides applied, store
    /// password redacted) as a config file that loads back with --config, and exit.
    Check,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { code, error }
}

/// Parses the command line; help and version print and exit 0, usage errors exit 64.
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|error| {
        let code = if error.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        };
        // Printing can only fail when stdout/stderr are gone; nothing better to do then.
        let _ = error.print();
        ExitCode::from(code)
    })
}

/// Runs a parsed command; returns the exit code for success or input errors.
///
/// # Errors
/// A [`Failure`] with its exit code.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    let config = config::environment()
        .and_then(|env| config::load(cli.config.as_deref(), &env))
        .context("loading configuration")
        .map_err(fail(exit::CONFIG))?;
    crate::telemetry::init(cli.log_format.unwrap_or(config.log_format));
    match cli.command {
        Command::Run => run_daemon(config),
        Command::Process(args) => process(&config, &args.files),
        Command::Validate(args) => validate(&config, &args.files, args.format),
        Command::Orders(OrdersCommand::Import { merchant, file }) => {
            import_orders(&config, &merchant, &file)
        }
        Command::Orders(OrdersCommand::Show {
            order_id,
            merchant,
            json,
        }) => show_order(&config, &order_id, merchant.as_deref(), json),
        Command::Feeds(FeedsCommand::List { limit, json }) => list_feeds(&config, limit, json),
        Command::Config(ConfigCommand::Check) => {
            print(|out| out.write_all(render_config(&config).as_bytes()))?;
            Ok(exit::OK)
        }
    }
}

/// Writes a command's results to stdout. A reader that went away (`adjustd feeds list |
/// head -1`) is not a failure of the command: the output is dropped quietly and the command
/// goes on to its own exit code (`process` still processes every file).
fn print(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match write(&mut stdout).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written
            .context("writing to stdout")
            .map_err(fail(exit::RUNTIME)),
    }
}

fn open_store(config: &Config) -> Result<AnyStore, Failure> {
    AnyStore::open(&config.store_url).map_err(|error| Failure {
        code: exit::CONFIG,
        error: store_open_error(config, error),
    })
}

/// A permanent failure to open the store for writing, with the fix when another process
/// holds a SQLite store: SQLite has one writer, so the way out is to stop that process or
/// to move to PostgreSQL.
fn store_open_error(config: &Config, error: crate::store::StoreError) -> anyhow::Error {
    let error = if matches!(error, crate::store::StoreError::Locked { .. }) {
        anyhow::anyhow!("{error}: stop the daemon first, or use PostgreSQL to run several writers")
    } else {
        anyhow::Error::new(error)
    };
    error.context(format!("opening store {}", config.redacted_store_url()))
}

/// For commands that only read: no single-writer lock, so they work next to the daemon.
/// A database whose folder does not exist is named as a likely wrong path first
/// ([`is_not_created_yet`]).
fn open_store_read_only(config: &Config) -> Result<AnyStore, Failure> {
    is_not_created_yet(&config.store_url).map_err(fail(exit::CONFIG))?;
    AnyStore::open_read_only(&config.store_url)
        .with_context(|| format!("opening store {}", config.redacted_store_url()))
        .map_err(fail(exit::CONFIG))
}

fn context(config: &Config, store: AnyStore) -> Context {
    Context {
        store,
        rules: config.rules.clone(),
        limits: config.limits,
        duplicate_policy: config.duplicate_policy,
        outbox: config.outbox().to_path_buf(),
        chunk_messages: pipeline::CHUNK_MESSAGES,
        on_conflict: None,
    }
}

fn run_daemon(config: Config) -> Result<u8, Failure> {
    // Before any thread starts: the soft limit of open files up to the hard one, so that a
    // burst of claims, reports waiting for the outbox and the listener's connections do not
    // run the daemon out of descriptors at the shell default of 1024.
    let open_files = crate::resources::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(fail(exit::RUNTIME))?;
    runtime.block_on(async move {
        // Signal handlers go in before anything slow (opening and migrating the store), so
        // a SIGTERM during startup is a clean shutdown, not a kill.
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = watch_signals(shutdown.clone())
            .context("installing signal handlers")
            .map_err(fail(exit::CONFIG))?;
        let signals = tokio::spawn(signals);
        let inbox = &config.daemon.inbox;
        let limit = match &open_files {
            Ok(limit) | Err((limit, _)) => *limit,
        };
        // Only a finite soft limit is ever raised; an unlimited one is left out of the line.
        let raised_from = limit.raised_from.flatten();
        tracing::info!(
            config = %config
                .file
                .as_ref()
                .map_or_else(|| "built-in defaults".into(), |file| file.display().to_string()),
            inbox = %inbox.inbox.display(),
            outbox = %inbox.outbox.display(),
            store = %config.redacted_store_url(),
            settle_ms = inbox.settle.as_millis() as u64,
            watch = inbox.watch.as_str(),
            open_files_limit = limit.soft,
            open_files_limit_raised_from = raised_from,
            "starting"
        );
        if let Err((_, error)) = &open_files {
            tracing::warn!(
                open_files_limit = limit.soft,
                hard_limit = limit.hard,
                error = %error,
                "cannot raise the limit of open files to the hard limit; it stays as it is"
            );
        }
        crate::daemon::check_folders(&config.daemon)
            .map_err(anyhow::Error::from)
            .map_err(fail(exit::CONFIG))?;
        let Some(store) = open_store_with_retry(&config, &shutdown).await? else {
            signals.abort();
            return Ok(exit::OK);
        };
        let context = context(&config, store);
        let result = crate::daemon::run(config.daemon.clone(), context, shutdown).await;
        signals.abort();
        result.map(|()| exit::OK).map_err(|error| {
            if let Some(address) = config.daemon.http_listen
                && is_address_unusable(&error)
            {
                return Failure {
                    code: exit::CONFIG,
                    error: error.context(format!(
                        "cannot listen on {address}: set [http] listen in the config (or \
                         ADJUSTD_HTTP_LISTEN) to a free address, or remove it to run without \
                         the metrics endpoint"
                    )),
                };
            }
            // A shutdown that gave up on the feed in hand ended like one cut short by a
            // second signal.
            let code = if error
                .downcast_ref::<crate::daemon::ShutdownTimedOut>()
                .is_some()
            {
                exit::INTERRUPTED
            } else {
                exit::RUNTIME
            };
            Failure { code, error }
        })
    })
}

/// True when the daemon stopped because the `[http] listen` address cannot be bound (in
/// use, or not an address of this host): a startup error like a bad config, not a runtime
/// failure. Nothing else in the daemon binds a socket, so these kinds are unambiguous.
fn is_address_unusable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
            )
        })
    })
}

/// Opens the store for the daemon. A database that is away (PostgreSQL restarting, say) is
/// waited for with capped backoff rather than failing the start; `None` when shutdown was
/// requested meanwhile. Permanent errors (bad URL, lock held, schema too new, a SQLite path
/// that cannot work such as a folder under a regular file) fail at once with exit 1: retrying
/// them would only fill the log.
async fn open_store_with_retry(
    config: &Config,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<AnyStore>, Failure> {
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let url = config.store_url.clone();
        let opened = tokio::task::spawn_blocking(move || AnyStore::open(&url))
            .await
            .context("opening the store")
            .map_err(fail(exit::RUNTIME))?;
        match opened {
            Ok(store) => return Ok(Some(store)),
            Err(error) if error.is_transient() => {
                tracing::warn!(
                    store = %config.redacted_store_url(),
                    error = %error,
                    retry_in_secs = backoff.as_secs(),
                    "store unavailable at start, retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
                backoff = (backoff * 2).min(config.daemon.max_backoff);
            }
            Err(error) => {
                return Err(Failure {
                    code: exit::CONFIG,
                    error: store_open_error(config, error),
                });
            }
        }
    }
}

/// Registers SIGINT, SIGTERM and SIGHUP now and returns the task that handles them. First
/// SIGINT or SIGTERM: cancel (finish the feed in hand). Second: exit at once, which is safe
/// because every commit and file move is atomic. SIGHUP, which many daemons take as "reload
/// your configuration", is logged and otherwise ignored: adjustd has no reload, and stopping
/// a service on a reload request would surprise its operator (systemd sends SIGHUP only
/// through an `ExecReload=`, which the unit in `contrib/` does not have). Other signals keep
/// their default action.
fn watch_signals(
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        let mut round = 0;
        while round < 2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {
                    tracing::warn!(
                        "SIGHUP received and ignored: adjustd does not reload its configuration; restart it to apply a changed one (systemctl restart adjustd)"
                    );
                    continue;
                }
            }
            if round == 0 {
                tracing::info!(
                    "shutdown requested: finishing the feed in hand (signal again to exit at once)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            round += 1;
        }
    })
}

fn process(config: &Config, files: &[PathBuf]) -> Result<u8, Failure> {
    let mut context = context(config, open_store(config)?);
    // As the daemon does at start: one listing of the outbox and its merchant folders.
    report::remove_stale_temp_reports(config.outbox(), report::STALE_TEMP_REPORT_AGE);
    let inbox = &config.daemon.inbox;
    let mut code = exit::OK;
    for path in files {
        let file_name = display_name(path);
        // A file in a merchant folder of the inbox is that merchant's, as for the daemon.
        let Some(merchant_folder) = merchant_folder_of(inbox, path) else {
            code = exit::worst(code, exit::RUNTIME);
            continue;
        };
        let source = Source::new(
            path,
            &file_name,
            None,
            merchant_folder.as_ref(),
            inbox.allowed_merchants.as_deref(),
        );
        match pipeline::process_file(&mut context, &source) {
            Ok(processed) => {
                if has_errors(&processed.outcome) {
                    code = exit::worst(code, exit::INPUT);
                }
                print(|out| {
                    writeln!(out, "{}", processed.xml_report.display())?;
                    writeln!(out, "{}", processed.json_report.display())
                })?;
            }
            Err(error) => {
                let advice = match &error {
                    pipeline::ProcessError::Report { .. } => {
                        " (processing the file again writes it, and applies nothing twice)"
                    }
                    _ => "",
                };
                eprintln!(
                    "adjustd: {}: {:#}{advice}",
                    crate::telemetry::escaped(path.display()),
                    anyhow::Error::new(error)
                );
                code = exit::worst(code, exit::RUNTIME);
            }
        }
    }
    Ok(code)
}

/// The merchant folder of the inbox that a file given to `process` or `validate` lies in
/// ([`crate::inbox::InboxConfig::merchant_folder_of`]); `None` after saying why it cannot be told.
fn merchant_folder_of(
    inbox: &crate::inbox::InboxConfig,
    path: &Path,
) -> Option<Option<MerchantId>> {
    inbox
        .merchant_folder_of(path)
        .map_err(|error| eprintln!("adjustd: {error}"))
        .ok()
}

fn has_errors(outcome: &FeedOutcome) -> bool {
    outcome.status == FeedStatus::Rejected || outcome.messages_with_error > 0
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn validate(config: &Config, files: &[PathBuf], format: ValidateFormat) -> Result<u8, Failure> {
    // Several XML documents back to back are not one XML document, and no XML tool reads
    // them; a wrapper would not be a ProcessingReport either. Refused before any file is read.
    if format == ValidateFormat::Xml && files.len() > 1 {
        return Err(Failure {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "--format xml prints one ProcessingReport document, so it takes one FILE (got {}): \
                 run `adjustd validate --format xml FILE` once per file, or use --format json \
                 (one JSON report per line)",
                files.len()
            ),
        });
    }
    let inbox = &config.daemon.inbox;
    let mut code = exit::OK;
    for path in files {
        // A file in a merchant folder of the inbox is that merchant's, as for the daemon.
        let Some(merchant_folder) = merchant_folder_of(inbox, path) else {
            code = exit::worst(code, exit::RUNTIME);
            continue;
        };
        let file_name = display_name(path);
        let source = Source::new(
            path,
            &file_name,
            None,
            merchant_folder.as_ref(),
            inbox.allowed_merchants.as_deref(),
        );
        // Like `process`, an unreadable file does not stop the others.
        let outcome = match validate_file(config, &source) {
            Ok(outcome) => outcome,
            Err(error) => {
                eprintln!(
                    "adjustd: reading {}: {error:#}",
                    crate::telemetry::escaped(path.display())
                );
                code = exit::worst(code, exit::RUNTIME);
                continue;
            }
        };
        if has_errors(&outcome) {
            code = exit::worst(code, exit::INPUT);
        }
        print(|out| match format {
            ValidateFormat::Text => write_text_summary(out, path, &outcome),
            ValidateFormat::Xml => report::write_xml(&outcome, out),
            ValidateFormat::Json => out.write_all(report::render_json_line(&outcome).as_bytes()),
        })?;
    }
    Ok(code)
}

/// Validates one file into a report outcome (DocumentTransactionID 1: there is no store),
/// including whether its merchant may be used from where it lies. The file is read once:
/// the content hash is computed from the same bytes. A file above `max_file_bytes` is
/// rejected without being read, as `process` and the daemon do.
fn validate_file(config: &Config, source: &Source<'_>) -> anyhow::Result<FeedOutcome> {
    let file = std::fs::File::open(source.path)?;
    let size = file.metadata()?.len();
    if let Some(problem) = config.limits.file_too_large(size) {
        return Ok(Tally::feed_level(problem).into_outcome(
            1,
            source.file_name,
            pipeline::UNREAD_CONTENT_HASH,
            source.bound_merchant.cloned(),
            FeedStatus::Rejected,
            None,
        ));
    }
    let progress = progress_bar(size);
    let mut hashing = pipeline::HashingReader::new(progress.wrap_read(file));
    let reader = BufReader::with_capacity(1 << 16, &mut hashing);
    let mut validator = Validator::new(reader, config.limits, &config.rules);
    let mut tally = Tally::default();
    // The report names the merchant as `process` would: the header's, also when this folder
    // refuses it, else as far as a broken header got.
    let (merchant, ended) = match validator.header() {
        Err(problem) => (validator.merchant().cloned(), Err(problem)),
        Ok(header) => {
            let ended = match pipeline::merchant_problem(&header, source) {
                Some(problem) => Err(problem),
                None => loop {
                    match validator.next_message() {
                        Ok(Some(ValidatedMessage::Valid(_))) => tally.add(true, Vec::new()),
                        Ok(Some(ValidatedMessage::Invalid {
                            problems, unlisted, ..
                        })) => {
                            tally.add_with_unlisted(false, problems, unlisted);
                        }
                        Ok(None) => break Ok(()),
                        Err(problem) => break Err(problem),
                    }
                },
            };
            (Some(header.merchant), ended)
        }
    };
    drop(validator);
    let (status, tally) = match ended {
        Ok(()) => (FeedStatus::Complete, tally),
        Err(problem) => (FeedStatus::Rejected, Tally::feed_level(problem)),
    };
    let content_hash = hashing.finish()?;
    progress.finish_and_clear();
    Ok(tally.into_outcome(1, source.file_name, &content_hash, merchant, status, None))
}

fn progress_bar(size: u64) -> indicatif::ProgressBar {
    // Only worth it for large files, and only for a person watching a terminal.
    if size < 16 * 1024 * 1024 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} {bar:40} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn write_text_summary(
    out: &mut dyn Write,
    path: &Path,
    outcome: &FeedOutcome,
) -> std::io::Result<()> {
    let verdict = match outcome.status {
        FeedStatus::Rejected => "REJECTED (nothing would be applied)".to_owned(),
        FeedStatus::Complete if outcome.messages_with_error == 0 => "ok".to_owned(),
        FeedStatus::Complete => format!(
            "{} of {} with errors",
            outcome.messages_with_error,
            count(outcome.messages_processed, "message")
        ),
    };
    writeln!(
        out,
        "{}: {verdict}; merchant {}, {}, {} valid, {} with errors, {} with warnings",
        // A file name is chosen by whoever made the file: shown escaped, as in the log and
        // `feeds list`, so no control character reaches the terminal.
        crate::telemetry::escaped(path.display()),
        outcome.merchant.as_ref().map_or("?", MerchantId::as_str),
        count(outcome.messages_processed, "message"),
        outcome.messages_successful,
        outcome.messages_with_error,
        outcome.messages_with_warning
    )?;
    for problem in &outcome.results {
        writeln!(out, "  {problem}")?;
    }
    Ok(())
}

/// The `--merchant` argument as a merchant identifier.
fn merchant_arg(merchant: &str) -> anyhow::Result<MerchantId> {
    MerchantId::new(merchant).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a merchant identifier ({})",
            quoted(merchant),
            MerchantId::RULE
        )
    })
}

/// The warnings of an import's summary: the columns the header names that look like
/// misspellings of a column adjustd reads (Amazon's other columns are ignored without a
/// word: a New Orders report has dozens), and new items created from a report with no
/// amount column at all (they were stored with nothing charged, so their refunds would be
/// refused). An Unshipped report has no amount column either; it only warns when it
/// created items.
fn import_warnings(notes: &HeaderNotes, summary: &ImportSummary) -> Vec<String> {
    let mut warnings: Vec<String> = notes
        .lookalikes
        .iter()
        .map(|(name, column)| {
            format!(
                "column {} was ignored: adjustd does not read it (did you mean {column}?); \
                 correct the header and import again",
                quoted(name)
            )
        })
        .collect();
    if !notes.amount_columns && summary.items_created > 0 {
        let columns: Vec<&str> = PRICE_COLUMNS.iter().map(|(column, _)| *column).collect();
        warnings.push(format!(
            "the report has no amount column ({}): the {} created {} nothing charged, so \
             refunds on {} will be refused; import a report with their prices (the New \
             Orders report) to set them",
            columns.join(", "),
            count(summary.items_created, "item"),
            if summary.items_created == 1 {
                "has"
            } else {
                "have"
            },
            if summary.items_created == 1 {
                "it"
            } else {
                "them"
            },
        ));
    }
    warnings
}

/// How many orders with an unlikely purchase-date `orders import` names one by one; the
/// rest are counted.
const UNLIKELY_DATES_NAMED: usize = 10;

/// The warnings about orders whose purchase-date is unlikely (after tomorrow, UTC, or
/// before 1995-01-01: [`crate::store::import::unlikely_purchase_date`]): the refund window
/// cannot work as meant for them. The import took them as written.
fn purchase_date_warnings(dates: &[UnlikelyPurchaseDate]) -> Vec<String> {
    let mut warnings: Vec<String> = dates
        .iter()
        .take(UNLIKELY_DATES_NAMED)
        .map(|date| {
            let (when, effect) = match date.when {
                Unlikely::Future => (
                    "after tomorrow (UTC)",
                    "its days are counted from that future day, so no refund on it is found \
                     outside the window",
                ),
                Unlikely::Past => (
                    "before 1995-01-01",
                    "every refund on it is found outside the window",
                ),
            };
            format!(
                "line {}: order {} has purchase-date {}, {when}: the refund window check \
                 ([rules] refund_window_days) cannot work as meant for it ({effect}); it was \
                 imported as written: if it is a typo, correct the report and import it again",
                date.line,
                date.order,
                quoted(&date.value)
            )
        })
        .collect();
    let more = dates.len().saturating_sub(UNLIKELY_DATES_NAMED);
    if more > 0 {
        warnings.push(format!(
            "{more} more {} with a purchase-date after tomorrow (UTC) or before 1995-01-01 \
             (the first {UNLIKELY_DATES_NAMED} are named above)",
            if more == 1 { "order" } else { "orders" }
        ));
    }
    warnings
}

fn import_orders(config: &Config, merchant: &str, file: &Path) -> Result<u8, Failure> {
    let merchant = merchant_arg(merchant).map_err(fail(exit::USAGE))?;
    // Opened here too so that a missing file (or a folder, which opens on Unix but cannot
    // be read) is named as the I/O error it is before the store is opened; the store reads
    // the report line by line in its transaction.
    let opened = std::fs::File::open(file)
        .and_then(|opened| opened.metadata())
        .with_context(|| format!("opening {}", file.display()))
        .map_err(fail(exit::RUNTIME))?;
    if opened.is_dir() {
        return Err(Failure {
            code: exit::RUNTIME,
            error: anyhow::anyhow!(
                "{} is a folder, not an order report file: name the report file itself",
                file.display()
            ),
        });
    }
    let mut store = open_store(config)?;
    let report = crate::store::import::ReportFile::new(file);
    match store.as_store().import_orders(&merchant, &report) {
        Ok(summary) => {
            // The header again (the import read it): what it says about ignored columns.
            let mut warnings = report
                .header()
                .map(|notes| import_warnings(&notes, &summary))
                .unwrap_or_default();
            warnings.extend(purchase_date_warnings(&report.unlikely_purchase_dates()));
            // Repeated lines were read but not imported again: say so, or the counts of
            // lines and items would not add up.
            let repeats = match summary.repeated_lines {
                0 => String::new(),
                1 => " (1 repeats an earlier line of the same item and was skipped)".to_owned(),
                n => format!(" ({n} repeat earlier lines of the same items and were skipped)"),
            };
            // "updated" only for what changed: a byte-identical re-import is all unchanged.
            let changes = |created: u64, noun: &str, updated: u64, unchanged: u64| {
                format!(
                    "{} created, {updated} updated, {unchanged} unchanged",
                    count(created, noun)
                )
            };
            print(|out| {
                writeln!(
                    out,
                    "imported {}{repeats} from {} for merchant {merchant}: {}; {}",
                    count(summary.lines, "line"),
                    file.display(),
                    changes(
                        summary.orders_created,
                        "order",
                        summary.orders_updated,
                        summary.orders_unchanged
                    ),
                    changes(
                        summary.items_created,
                        "item",
                        summary.items_updated,
                        summary.items_unchanged
                    ),
                )?;
                for warning in &warnings {
                    writeln!(out, "warning: {warning}")?;
                }
                Ok(())
            })?;
            Ok(exit::OK)
        }
        Err(crate::store::StoreError::Conflict { detail }) => Err(Failure {
            code: exit::RUNTIME,
            error: anyhow::anyhow!(
                "{}: another import or a feed wrote these orders at the same time, {} times \
                 in a row; nothing was imported: run the import again ({detail})",
                file.display(),
                crate::store::CONFLICT_ATTEMPTS
            ),
        }),
        Err(error @ crate::store::StoreError::Invalid { .. }) => {
            eprintln!("adjustd: {}: {error}; nothing was imported", file.display());
            // A misspelt column is often why a line is bad (no price, so a discount above it).
            let notes = report.header().unwrap_or_default();
            for warning in import_warnings(&notes, &ImportSummary::default()) {
                eprintln!("adjustd: warning: {warning}");
            }
            Ok(exit::INPUT)
        }
        Err(error) => Err(Failure {
            code: exit::RUNTIME,
            error: anyhow::Error::new(error).context("importing orders"),
        }),
    }
}

fn show_order(
    config: &Config,
    order_id: &str,
    merchant: Option<&str>,
    json: bool,
) -> Result<u8, Failure> {
    let merchant = merchant
        .map(merchant_arg)
        .transpose()
        .map_err(fail(exit::USAGE))?;
    if is_not_created_yet(&config.store_url).map_err(fail(exit::CONFIG))? {
        eprintln!(
            "adjustd: order {order_id} not found: the store {} holds no orders yet (adjustd orders import creates it)",
            config.redacted_store_url()
        );
        return Ok(exit::INPUT);
    }
    let mut store = open_store_read_only(config)?;
    let orders = store
        .as_store()
        .orders(merchant.as_ref(), order_id)
        .context("reading the order")
        .map_err(fail(exit::RUNTIME))?;
    let Some(order) = orders.first() else {
        eprintln!("adjustd: order {order_id} not found");
        return Ok(exit::INPUT);
    };
    if orders.len() > 1 {
        let merchants: Vec<&str> = orders.iter().map(|o| o.merchant.as_str()).collect();
        eprintln!(
            "adjustd: order {order_id} exists for several merchants ({}): use --merchant",
            merchants.join(", ")
        );
        return Ok(exit::USAGE);
    }
    print(|out| {
        if json {
            write_json(out, order)
        } else {
            write_order_table(out, order)
        }
    })?;
    Ok(exit::OK)
}

fn write_order_table(out: &mut dyn Write, order: &crate::store::OrderView) -> std::io::Result<()> {
    writeln!(
        out,
        "order {} (merchant {}, {}, {}{})",
        order.amazon_order_id,
        order.merchant,
        order.currency,
        order.fulfillment_channel,
        order
            .merchant_order_id
            .as_ref()
            .map_or(String::new(), |m| format!(", merchant order {m}"))
    )?;
    for item in &order.items {
        writeln!(
            out,
            "  item {} sku {}: ordered {}, shipped {}, cancelled {}, returned {}",
            item.amazon_order_item_code,
            item.sku,
            item.quantity_ordered,
            item.quantity_shipped,
            item.quantity_cancelled,
            item.quantity_returned
        )?;
        writeln!(
            out,
            "    {:<24} {:>14} {:>14}",
            "component", "charged", "refunded"
        )?;
        let mut names: Vec<&String> = item.charged.keys().chain(item.refunded.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let charged = item.charged.get(name).map_or("-", String::as_str);
            let refunded = item.refunded.get(name).map_or("-", String::as_str);
            writeln!(out, "    {name:<24} {charged:>14} {refunded:>14}")?;
        }
    }
    if order.adjustments.is_empty() {
        writeln!(out, "  no adjustments")?;
    }
    for adjustment in &order.adjustments {
        let mut what = adjustment.reason.clone();
        if adjustment.quantity_cancelled > 0 {
            what.push_str(&format!(", cancelled {}", adjustment.quantity_cancelled));
        }
        if let Some(returned) = adjustment.quantity {
            what.push_str(&format!(", returned {returned}"));
        }
        // A pure cancellation has no amounts.
        for (at, (component, amount)) in adjustment.amounts.iter().enumerate() {
            what.push_str(if at == 0 { ": " } else { ", " });
            what.push_str(&format!("{component} {amount}"));
        }
        writeln!(
            out,
            "  adjustment feed {} message {} item {} {what}",
            adjustment.feed_id, adjustment.message_id, adjustment.amazon_order_item_code,
        )?;
    }
    Ok(())
}

fn list_feeds(config: &Config, limit: u32, json: bool) -> Result<u8, Failure> {
    let feeds = if is_not_created_yet(&config.store_url).map_err(fail(exit::CONFIG))? {
        Vec::new()
    } else {
        let mut store = open_store_read_only(config)?;
        store
            .as_store()
            .recent_feeds(limit)
            .context("reading feeds")
            .map_err(fail(exit::RUNTIME))?
    };
    let rows: Vec<serde_json::Value> = feeds
        .iter()
        .map(|feed| {
            let (xml, json_path) = pipeline::locate_reports(config.outbox(), feed, None);
            serde_json::json!({
                "feed": feed,
                "xml_report": xml.display().to_string(),
                "json_report": json_path.display().to_string(),
            })
        })
        .collect();
    print(|out| {
        if json {
            return write_json(out, &rows);
        }
        if feeds.is_empty() {
            return writeln!(out, "no feeds");
        }
        feeds.iter().zip(&rows).try_for_each(|(feed, row)| {
            writeln!(
                out,
                "{:>6}  {}  {:<8} {:<10} {:>6} msgs {:>6} ok {:>6} err {:>6} warn  {}{}\n        {}",
                feed.id,
                feed.processed_at,
                feed.status.as_str(),
                feed.merchant.as_deref().unwrap_or("-"),
                feed.messages_processed,
                feed.messages_successful,
                feed.messages_with_error,
                feed.messages_with_warning,
                // A seller's file name may hold control characters: shown escaped, as in
                // the log, so none reaches the operator's terminal.
                crate::telemetry::escaped(&feed.file_name),
                feed.duplicate_of.map_or(String::new(), |d| format!(" (duplicate of {d})")),
                crate::telemetry::escaped(row["xml_report"].as_str().unwrap_or_default()),
            )
        })
    })?;
    Ok(exit::OK)
}

/// True for a SQLite store whose file does not exist yet in a folder that does: nothing was
/// ever written to it (the first `orders import`, `process` or `run` creates it), so it
/// holds no feeds. Any other trouble with the path (a file where a folder should be, say) is
/// left to opening.
///
/// # Errors
/// The folder of the database does not exist either: far more likely a wrong path (a typo
/// in `[store] url` or `ADJUSTD_STORE_URL`) than an empty store, so it is not reported as
/// one.
fn is_not_created_yet(store_url: &str) -> anyhow::Result<bool> {
    let Some(path) = store_url.strip_prefix("sqlite:").map(Path::new) else {
        return Ok(false);
    };
    let missing = |path: &Path| {
        std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    };
    if !missing(path) {
        return Ok(false);
    }
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() && missing(folder) => Err(anyhow::anyhow!(
            "no store at {}: its folder {} does not exist either, so the path looks wrong; \
             check [store] url (or ADJUSTD_STORE_URL) with `adjustd config check` (orders \
             import, process and run create a new store and its folder)",
            path.display(),
            folder.display()
        )),
        _ => Ok(true),
    }
}

/// Pretty JSON and a newline. serde_json reports I/O errors as its own error type; the
/// original `io::Error` is recovered so that a closed pipe is still recognised.
fn write_json(out: &mut dyn Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)
}

/// Renders the resolved configuration as a config file that loads back to the same
/// values, so an operator can paste it: paths are absolute, every default is written out,
/// enums are spelt as in the file, and keys without a value are commented-out examples.
/// The one thing that does not round-trip is a store password, which is redacted.
fn render_config(config: &Config) -> String {
    let daemon = &config.daemon;
    let inbox = &daemon.inbox;
    let limits = &config.limits;
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let path = |path: &Path| quote(&path.display().to_string());
    let strings = |items: &mut dyn Iterator<Item = &str>| {
        toml::Value::Array(items.map(|s| toml::Value::String(s.to_owned())).collect()).to_string()
    };
    let optional = |key: &str, value: Option<String>, example: &str| match value {
        Some(value) => format!("{key} = {value}"),
        None => format!("# {key} = {example}"),
    };
    let source = config.file.as_ref().map_or_else(
        || "built-in defaults".to_owned(),
        |file| file.display().to_string(),
    );
    let store_url = config.redacted_store_url();
    let redacted = if store_url == config.store_url {
        ""
    } else {
        "  # password redacted"
    };
    let duplicate_feeds = match config.duplicate_policy {
        DuplicatePolicy::Skip => "skip",
        DuplicatePolicy::Process => "process",
    };
    let log_format = match config.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    format!(
        "# adjustd resolved configuration (from {source}, with ADJUSTD_* overrides)\n\
         \n\
         [paths]\n\
         inbox = {inbox_path}\n\
         outbox = {outbox}\n\
         archive = {archive}\n\
         failed = {failed}\n\
         work = {work}\n\
         parked = {parked}\n\
         \n\
         [store]\n\
         url = {url}{redacted}\n\
         \n\
         [inbox]\n\
         settle_ms = {settle_ms}\n\
         ignore = {ignore}\n\
         truncated_grace_secs = {truncated_grace_secs}\n\
         {done_marker}\n\
         {allowed_merchants}\n\
         watch = {watch}\n\
         poll_interval_ms = {poll_interval_ms}\n\
         rescan_interval_secs = {rescan_interval_secs}\n\
         \n\
         [limits]\n\
         max_file_bytes = {max_file_bytes}\n\
         max_depth = {max_depth}\n\
         max_text_bytes = {max_text_bytes}\n\
         max_messages = {max_messages}\n\
         max_message_bytes = {max_message_bytes}\n\
         \n\
         [rules]\n\
         restocking_fee_max_percent = {restocking_fee_max_percent}\n\
         restocking_fee_review_percent = {restocking_fee_review_percent}\n\
         concession_review_percent = {concession_review_percent}\n\
         {refund_window_days}\n\
         policy = {policy}\n\
         resubmission_window_days = {resubmission_window_days}\n\
         duplicate_feeds = {duplicate_feeds}\n\
         \n\
         [daemon]\n\
         shutdown_timeout_secs = {shutdown_timeout_secs}\n\
         max_backoff_secs = {max_backoff_secs}\n\
         order_not_found_window_secs = {order_not_found_window_secs}\n\
         order_not_found_first_retry_secs = {order_not_found_first_retry_secs}\n\
         \n\
         [http]\n\
         {listen}\n\
         \n\
         [log]\n\
         format = {log_format}\n",
        inbox_path = path(&inbox.inbox),
        outbox = path(&inbox.outbox),
        archive = path(&inbox.archive),
        failed = path(&inbox.failed),
        work = path(&inbox.work),
        parked = path(&daemon.parked),
        url = quote(&store_url),
        settle_ms = inbox.settle.as_millis(),
        ignore = strings(&mut inbox.ignore.iter().map(String::as_str)),
        truncated_grace_secs = inbox.truncated_grace.as_secs(),
        done_marker = optional(
            "done_marker",
            inbox.done_marker.as_deref().map(quote),
            "\".done\"",
        ),
        allowed_merchants = optional(
            "allowed_merchants",
            inbox
                .allowed_merchants
                .as_ref()
                .map(|list| strings(&mut list.iter().map(MerchantId::as_str))),
            "[\"A1SELLER\"]",
        ),
        watch = quote(inbox.watch.as_str()),
        poll_interval_ms = inbox.poll_interval.as_millis(),
        rescan_interval_secs = inbox.rescan_interval.as_secs(),
        max_file_bytes = limits.max_file_bytes,
        max_depth = limits.max_depth,
        max_text_bytes = limits.max_text_bytes,
        max_messages = limits.max_messages,
        max_message_bytes = limits.max_message_bytes,
        restocking_fee_max_percent = config.rules.restocking_fee_max_percent,
        restocking_fee_review_percent = config.rules.restocking_fee_review_percent,
        concession_review_percent = config.rules.concession_review_percent,
        refund_window_days = optional(
            "refund_window_days",
            config.rules.refund_window_days.map(|days| days.to_string()),
            "30",
        ),
        policy = quote(config.rules.policy.as_str()),
        resubmission_window_days = config.rules.resubmission_window_days,
        duplicate_feeds = quote(duplicate_feeds),
        shutdown_timeout_secs = daemon.shutdown_timeout.as_secs(),
        max_backoff_secs = daemon.max_backoff.as_secs(),
        order_not_found_window_secs = daemon
            .order_not_found_window
            .map_or(0, |window| window.as_secs()),
        order_not_found_first_retry_secs = daemon.order_not_found_first_retry.as_secs(),
        listen = optional(
            "listen",
            daemon
                .http_listen
                .map(|address| quote(&address.to_string())),
            "\"127.0.0.1:9187\"",
        ),
        log_format = quote(log_format),
    )
}
