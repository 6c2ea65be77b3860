//! The PostgreSQL backend: several adjustd instances on one database.
//!
//! Owns the PostgreSQL schema (versioned migrations under `migrations/postgres/`, applied
//! under an advisory lock so instances starting together are safe), the mapping of
//! [`Store`]/[`FeedTx`] onto SQL, row locking and the classification of driver errors into
//! [`StoreError`] (transient conflicts and connection loss versus invariant violations).
//! It does not retry a feed: the pipeline retries the whole feed on a transient error; an
//! order import, which has no other caller to retry it, runs again after a conflict
//! (two imports creating the same new orders at once, [`crate::store::retry_conflicts`]).
//! It knows
//! nothing about XML or the refund rules (the CHECK constraints are only a backstop).
//!
//! Concurrency: one feed is one transaction at READ COMMITTED. [`FeedTx::load`] locks the
//! rows of the orders it loads (`SELECT … ORDER BY amazon_order_id FOR UPDATE`, then their
//! items), so two feeds touching the same order serialize and the second reads the first's
//! committed totals. Unique indexes on the applied content hash and on the idempotency key
//! turn a race between instances into a [`StoreError::Conflict`]; the retry then sees the
//! committed rows.
//!
//! Connection loss: the connection is dropped after an error that says it broke (any
//! error after which the session is over, whatever its SQLSTATE: a closed connection, or a
//! FATAL such as an idle-in-transaction timeout) and re-opened lazily by the next call, so a PostgreSQL restart costs only the feeds in
//! flight (reported as [`StoreError::Unavailable`], retried by the daemon). The same holds
//! for a database that cannot take work for a while: full disk, a failover to a read-only
//! server, a database dropped (once connected, even a missing database is an outage, not a
//! wrong URL) or created again empty (every new connection of a writer brings the schema up
//! to date).
//!
//! Readers ([`PgStore::connect_read_only`], for `orders show` and `feeds list`) never
//! migrate: each of their connections checks that the database holds this build's schema
//! and refuses one without adjustd's tables or with another version, so a mistyped URL or a
//! newer binary used only to look does not change the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

use crate::engine::{
    Change, ComponentTotals, ItemState, KeyOrigin, KeyRecord, Needs, OrderState, PayloadDigest,
    RecentAdjustment, RecentAdjustments, Snapshot,
};
use crate::model::{
    AmazonOrderId, Component, ComponentClass, Currency, FulfillmentChannel, MerchantId, MessageId,
    OrderItemCode, OrderRef, SellerId, format_minor, same_purchase_date, stored_purchase_date,
};
use crate::problem::Code;
use crate::store::import::column_for;
use crate::store::{
    AdjustmentView, FeedDone, FeedRecord, FeedStatus, FeedTx, ImportSeen, ImportSummary, ItemView,
    NewFeed, OrderRow, OrderView, ReportFolder, RowSource, Store, StoreError,
    check_charged_after_import, created_on, import_invalid, may_have_adjustments,
    merchant_item_id_taken, merchant_order_id_taken, retry_conflicts, shipped_after_import,
};

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "0002_quantity_returned",
        include_str!("migrations/postgres/0002_quantity_returned.sql"),
    ),
    (
        3,
        "0003_report_folder",
        include_str!("migrations/postgres/0003_report_folder.sql"),
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 3;

/// Key of the advisory lock taken while migrating ("adjustd" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x0061_646a_7573_7464;

/// How long a statement waits for a row lock before giving up with a conflict.
const LOCK_TIMEOUT: &str = "60s";

/// `idle_in_transaction_session_timeout` of adjustd's sessions, in milliseconds: how long
/// the server lets a session sit idle inside a transaction before it ends the session (and
/// so frees its row locks), for an instance that froze mid-feed (SIGSTOP, a process stuck;
/// a lost host, a paused VM or a network partition are found sooner by
/// [`SERVER_KEEPALIVES`]). A feed's transaction idles only while the reader parses the next
/// chunk: at most [`crate::pipeline::CHUNK_MESSAGES`] messages, so at most the whole file
/// (`[limits] max_file_bytes`, 2 GiB by default, whatever `max_message_bytes` allows per
/// message), plus, at the first item without a `MerchantAdjustmentItemID`, one more pass
/// over the file for its canonical digest: about 4 GiB of reading, some 270 s at the
/// slowest rate measured (16 MB/s on two heavily loaded cores, BENCHMARKS.md). Ten minutes
/// leaves twice that. A session ended by it is [`StoreError::Unavailable`]: the feed is
/// retried, never lost. A shorter setting of the server, database or role is kept.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u32 = 600_000;

/// `statement_timeout` of adjustd's sessions: none. A server, database or role may set a
/// short one for interactive users, but a feed's statements grow with the feed (a chunk of
/// [`crate::pipeline::CHUNK_MESSAGES`] messages loads and writes thousands of rows at
/// once), so a bound short enough to matter would cancel every attempt at a big feed, the
/// same way each time (SQLSTATE 57014), and hold the feed for good. What a statement may
/// wait for is bounded otherwise: row locks by [`LOCK_TIMEOUT`], a server or peer that is
/// gone by [`SERVER_KEEPALIVES`] and the client's keepalives, a frozen instance by
/// [`IDLE_IN_TRANSACTION_TIMEOUT_MS`].
const STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";

/// Server-side TCP keepalives of adjustd's sessions (the server's defaults are the
/// system's, two hours on Linux): after 30 s of silence the server probes the client every
/// 10 s and ends the session after 3 unanswered probes, so the locks of an instance whose
/// host is gone, paused or cut off are freed within about a minute. (The client's own
/// keepalives, set in [`PgStore::connect`], find a server that is gone.) Ignored on Unix
/// sockets.
const SERVER_KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3";

/// Imports of at least this many lines refresh the planner's statistics.
const ANALYZE_AFTER_ROWS: u64 = 1000;

type Params<'p> = [&'p (dyn ToSql + Sync)];

/// A PostgreSQL order store. Keeps its URL and reconnects lazily after the connection
/// broke (server restart, network loss, administrator terminating the backend, a database
/// dropped and created again), bringing the schema up to date on every new connection (or,
/// for a reader, checking it).
pub struct PgStore {
    config: Box<postgres::Config>,
    url: String,
    conn: Option<Box<Conn>>,
    /// A connection was made before: from then on a database that cannot be reached, even
    /// one that does not exist (dropped while we run), is an outage to wait out, not a
    /// mistake in the URL.
    connected_before: bool,
    /// What a new connection does about the schema.
    schema: SchemaUse,
}

/// What a new connection of a [`PgStore`] does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaUse {
    /// A writer: creates or upgrades it to [`SCHEMA_VERSION`].
    Migrate,
    /// A reader: requires exactly [`SCHEMA_VERSION`] and writes nothing (the session is
    /// read-only).
    Check,
}

/// An open connection and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    broken: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://USER@HOST[:PORT]/DB`) and
    /// brings its schema to [`SCHEMA_VERSION`] (creating it in an empty database).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a URL that cannot be parsed, [`StoreError::Unavailable`]
    /// when the server cannot be reached, [`StoreError::SchemaTooNew`] when a newer adjustd
    /// migrated the database, other errors from the migration.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, SchemaUse::Migrate)
    }

    /// Connects to the database named by `url` for reading only (`orders show`, `feeds
    /// list`): the session is read-only and the schema is never created or upgraded, so a
    /// wrong URL or a newer adjustd used only to look leaves the database as it was.
    ///
    /// # Errors
    /// As [`PgStore::connect`], and [`StoreError::Invalid`] naming the database (without
    /// its password) when it holds no adjustd tables or an older schema (a writing command
    /// migrates it), [`StoreError::SchemaTooNew`] for a newer one.
    pub fn connect_read_only(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, SchemaUse::Check)
    }

    fn connect_with(url: &str, schema: SchemaUse) -> Result<PgStore, StoreError> {
        let mut config = postgres::Config::from_str(url).map_err(|error| StoreError::Invalid {
            detail: format!("invalid PostgreSQL url {:?}: {error}", redact(url)),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("adjustd");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let mut store = PgStore {
            config: Box::new(config),
            url: redact(url),
            conn: None,
            connected_before: false,
            schema,
        };
        store.conn()?;
        Ok(store)
    }

    /// The schema version of the database (after [`PgStore::connect`]: this build's).
    ///
    /// # Errors
    /// Database errors.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        self.run(|conn| {
            let row = conn
                .client
                .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])?;
            row.try_get::<_, i64>(0)
        })
    }

    /// The value of the run-time setting `name` in this store's session
    /// (`current_setting`), for diagnostics and tests.
    ///
    /// # Errors
    /// Database errors (an unknown setting among them).
    pub fn session_setting(&mut self, name: &str) -> Result<String, StoreError> {
        self.run(|conn| {
            conn.client
                .query_one("SELECT current_setting($1)", &[&name])?
                .try_get(0)
        })
    }

    /// The open connection, (re)connecting when there is none or it broke.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self
            .conn
            .as_ref()
            .is_some_and(|conn| conn.broken || conn.client.is_closed())
        {
            tracing::info!(url = %self.url, "PostgreSQL connection lost; reconnecting");
            if let Some(conn) = self.conn.take() {
                close(conn);
            }
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            slot @ None => {
                let mut client = self
                    .config
                    .connect(NoTls)
                    .map_err(|error| connect_error(&self.url, &error, self.connected_before))?;
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '{LOCK_TIMEOUT}'; SET TIME ZONE 'UTC'; \
                         {STATEMENT_TIMEOUT}; {SERVER_KEEPALIVES}; \
                         SELECT set_config('idle_in_transaction_session_timeout', \
                                           '{IDLE_IN_TRANSACTION_TIMEOUT_MS}ms', false) \
                         FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout' \
                         AND setting::bigint NOT BETWEEN 1 AND {IDLE_IN_TRANSACTION_TIMEOUT_MS}"
                    ))
                    .map_err(|error| classify(&error))?;
                // Also after a reconnect: the database may have been created again, empty.
                match self.schema {
                    SchemaUse::Migrate => migrate(&mut client).map_err(|error| match error {
                        Migration::Store(error) => error,
                        Migration::Db(error) => classify(&error),
                    })?,
                    SchemaUse::Check => {
                        // The database's name: the URL, which callers name anyway, would
                        // be said twice.
                        let database = self
                            .config
                            .get_dbname()
                            .map_or_else(|| self.url.clone(), |name| format!("database {name}"));
                        check_schema(&mut client, &database)?;
                    }
                }
                self.connected_before = true;
                Ok(slot.insert(Box::new(Conn {
                    client,
                    statements: HashMap::new(),
                    broken: false,
                })))
            }
        }
    }

    /// Runs `work` on the connection, classifying its error and forgetting the
    /// connection when it broke.
    fn run<T>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let conn = self.conn()?;
        work(conn).map_err(|error| fail(&mut conn.broken, &error))
    }

    /// Runs `work` on the connection when it reports [`StoreError`]s itself.
    fn run_store<T>(
        &mut self,
        work: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn()?;
        let result = work(conn);
        if let Err(StoreError::Unavailable { .. }) = &result {
            conn.broken = true;
        }
        result
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn);
        }
    }
}

/// Closes a connection wherever its store is dropped. The synchronous client closes its
/// session by driving a runtime of its own, which panics ("Cannot start a runtime from
/// within a runtime") on a thread that is running async code: the daemon drops its store
/// there when it stops before its worker thread took it (an `[http] listen` address in
/// use, a refused folder layout), and a panic would hide that error. Inside a tokio
/// runtime the client is therefore dropped on a short thread of its own, which sends the
/// server its goodbye before this returns.
fn close(conn: Box<Conn>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope.spawn(move || drop(conn));
        });
    } else {
        drop(conn);
    }
}

/// A failed connection attempt: transient (the server is down, restarting, refusing
/// connections to this database for now, out of slots), except a database that does not
/// exist or credentials that are refused, which no retry fixes.
fn connect_error(url: &str, error: &postgres::Error, connected_before: bool) -> StoreError {
    let detail = format!("connecting to {url}: {}", describe(error));
    let permanent = !connected_before
        && error.code().is_some_and(|code| {
            *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        });
    if permanent {
        StoreError::Other { detail }
    } else {
        StoreError::Unavailable { detail }
    }
}

/// `url` without its password (`postgres://user:***@host/db`), for logs and errors.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &url[scheme_end + at..]
                ),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Classifies `error` and marks the connection broken when it is connection loss.
fn fail(broken: &mut bool, error: &postgres::Error) -> StoreError {
    let classified = classify(error);
    if matches!(classified, StoreError::Unavailable { .. }) {
        *broken = true;
    }
    classified
}

/// Maps a driver error to the store's error kinds (see the module docs).
fn classify(error: &postgres::Error) -> StoreError {
    let detail = describe(error);
    // A session that is over, whatever the code says why: the server ended it (FATAL or
    // PANIC: an administrator, a shutdown, `idle_in_transaction_session_timeout` 25P03,
    // `transaction_timeout` 25P04, a recovery conflict, ...) or the connection closed
    // under us. Nothing of the transaction is committed and the store is away until the
    // reconnect this forces: an outage, never the feed's fault.
    if error.is_closed() || error.as_db_error().is_some_and(ends_the_session) {
        return StoreError::Unavailable { detail };
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            return StoreError::Conflict { detail };
        }
        if *code == SqlState::UNIQUE_VIOLATION {
            // Races between instances: the same bytes applied twice, the same idempotency
            // key used twice, the same claim or the same new order. The retry sees the
            // winner's rows. Other unique violations are bad input.
            return match db.constraint() {
                Some(
                    "feeds_applied_content"
                    | "idempotency_keys_pkey"
                    | "feeds_claim_token_key"
                    | "orders_merchant_amazon_order_id_key"
                    | "order_items_order_id_amazon_order_item_code_key",
                ) => StoreError::Conflict { detail },
                _ => StoreError::Invalid { detail },
            };
        }
        // The request's values break an invariant (23), are data the server cannot take
        // (22: a number out of range, a string too long, ...) or pass one of its limits
        // (54: an index entry too large, ...): the same request fails again, whatever the
        // store's state. The one kind of error a feed may fail for.
        if matches!(&code.code()[..2], "22" | "23" | "54") {
            return StoreError::Invalid { detail };
        }
        // A statement cancelled while the session goes on (an administrator's
        // `pg_cancel_backend`, or a `statement_timeout` where adjustd's own setting of none
        // did not hold): the store answered and keeps the session, so it is not called
        // away and the connection is kept. Nothing of the transaction is committed; the
        // feed is held and tried again like any other error of the store's state.
        if *code == SqlState::QUERY_CANCELED {
            return StoreError::Other { detail };
        }
        // The database cannot take work now, whatever the feed: connection trouble (08),
        // insufficient resources such as a full disk (53), an administrator's or the
        // server's intervention (57), a system I/O error (58), a failover to a read-only
        // server, or a database dropped (and perhaps created again, empty: the reconnect
        // this forces creates the schema). A feed must wait for it, never fail for it.
        let class = &code.code()[..2];
        if matches!(class, "08" | "53" | "57" | "58")
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::UNDEFINED_TABLE
        {
            return StoreError::Unavailable { detail };
        }
        // Anything else (a privilege revoked, 42501; a schema this build does not expect;
        // an error nobody foresaw) is the store's state, not the request's: `Other`, which
        // holds a feed until an operator mends it.
        return StoreError::Other { detail };
    }
    let io = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    if error.is_closed() || io || detail.contains("timed out") {
        return StoreError::Unavailable { detail };
    }
    StoreError::Other { detail }
}

/// True for a server error that ends the session (severity FATAL or PANIC): the server
/// closes the connection after sending it.
fn ends_the_session(db: &postgres::error::DbError) -> bool {
    matches!(
        db.parsed_severity(),
        Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic)
    ) || matches!(db.severity(), "FATAL" | "PANIC")
}

/// The error with its causes, on one line.
fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(": ");
            text.push_str(detail);
        }
        if let Some(constraint) = db.constraint() {
            text.push_str(&format!(" [constraint {constraint}]"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

enum Migration {
    Store(StoreError),
    Db(postgres::Error),
}

impl From<postgres::Error> for Migration {
    fn from(error: postgres::Error) -> Migration {
        Migration::Db(error)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction under an advisory lock, so
/// several instances starting at once migrate once and the others wait and see it done.
fn migrate(client: &mut Client) -> Result<(), Migration> {
    let mut tx = client.transaction()?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)::text", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TEXT NOT NULL)",
    )?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(Migration::Store(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }));
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= found {
            continue;
        }
        tracing::info!(version, name, "migrating PostgreSQL schema");
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
            &[version, name, &now()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// For a reader: makes the session read-only and requires the schema to be exactly
/// [`SCHEMA_VERSION`], creating and migrating nothing. `database` names it in errors.
fn check_schema(client: &mut Client, database: &str) -> Result<(), StoreError> {
    let db = |error: postgres::Error| classify(&error);
    client
        .batch_execute("SET default_transaction_read_only = on")
        .map_err(db)?;
    let has_schema: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
    let found: i64 = if has_schema {
        client
            .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])
            .and_then(|row| row.try_get(0))
            .map_err(db)?
    } else {
        0
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        return Err(StoreError::Invalid {
            detail: format!(
                "{database} has no adjustd tables, and a command that only reads does not create \
                 them: check [store] url (or ADJUSTD_STORE_URL), or create the store with a \
                 writing command (orders import, process or run)"
            ),
        });
    }
    if found < SCHEMA_VERSION {
        return Err(StoreError::Invalid {
            detail: format!(
                "{database} has schema version {found}, this adjustd reads version \
                 {SCHEMA_VERSION}: open it once with a writing command (orders import, \
                 process or run) to migrate it"
            ),
        });
    }
    Ok(())
}

/// The current time, RFC 3339 UTC with microseconds (`2026-11-30T11:39:54.123456Z`).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A prepared statement from the per-connection cache.
fn prepared(
    client: &mut impl postgres::GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql)?;
    statements.insert(sql, statement.clone());
    Ok(statement)
}

fn query(
    client: &mut impl postgres::GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
    params: &Params<'_>,
) -> Result<Vec<Row>, postgres::Error> {
    let statement = prepared(client, statements, sql)?;
    client.query(&statement, params)
}

fn execute(
    client: &mut impl postgres::GenericClient,
    statements: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
    params: &Params<'_>,
) -> Result<u64, postgres::Error> {
    let statement = prepared(client, statements, sql)?;
    client.execute(&statement, params)
}

/// A number that must fit in a BIGINT column.
fn to_db(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid {
        detail: format!(
            "{what} {value} is too large for the store (at most {})",
            i64::MAX
        ),
    })
}

/// Message ids are `u64`, BIGINT is `i64`: the same 64 bits are stored (as in the SQLite
/// backend), so ids above `i64::MAX` read back negative in raw SQL and round-trip exactly.
fn message_to_db(id: MessageId) -> i64 {
    i64::from_ne_bytes(id.get().to_ne_bytes())
}

fn message_from_db(raw: i64) -> Result<MessageId, StoreError> {
    MessageId::new(u64::from_ne_bytes(raw.to_ne_bytes()))
        .ok_or_else(|| corrupt("message id", &raw.to_string()))
}

/// A BIGINT column that must hold a non-negative number.
fn from_db(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Other {
        detail: format!("{what} {value} in the store is negative"),
    })
}

/// A BIGINT column that must hold a `u32`.
fn from_db_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Other {
        detail: format!("{what} {value} in the store is out of range"),
    })
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Other {
        detail: format!("unexpected {what} {value:?} in the store"),
    }
}

fn component(name: &str) -> Result<Component, StoreError> {
    Component::from_name(name).ok_or_else(|| corrupt("component", name))
}

fn code_from_number(number: i64) -> Result<Code, StoreError> {
    Code::ALL
        .iter()
        .copied()
        .find(|code| i64::from(code.number()) == number)
        .ok_or_else(|| corrupt("rejection code", &number.to_string()))
}

fn feed_record(row: &Row) -> Result<FeedRecord, StoreError> {
    let get = |error: postgres::Error| classify(&error);
    let status: String = row.try_get(4).map_err(get)?;
    let status = match status.as_str() {
        "Complete" => FeedStatus::Complete,
        "Rejected" => FeedStatus::Rejected,
        other => return Err(corrupt("feed status", other)),
    };
    let duplicate_of: Option<i64> = row.try_get(5).map_err(get)?;
    Ok(FeedRecord {
        id: from_db(row.try_get(0).map_err(get)?, "feed id")?,
        merchant: row.try_get(1).map_err(get)?,
        file_name: row.try_get(2).map_err(get)?,
        content_hash: row.try_get(3).map_err(get)?,
        status,
        duplicate_of: duplicate_of
            .map(|id| from_db(id, "duplicate_of"))
            .transpose()?,
        processed_at: row
            .try_get::<_, Option<String>>(6)
            .map_err(get)?
            .unwrap_or_default(),
        messages_processed: from_db(row.try_get(7).map_err(get)?, "messages_processed")?,
        messages_successful: from_db(row.try_get(8).map_err(get)?, "messages_successful")?,
        messages_with_error: from_db(row.try_get(9).map_err(get)?, "messages_with_error")?,
        messages_with_warning: from_db(row.try_get(10).map_err(get)?, "messages_with_warning")?,
        report_json: row
            .try_get::<_, Option<String>>(11)
            .map_err(get)?
            .unwrap_or_default(),
        report_folder: ReportFolder::from_column(row.try_get(12).map_err(get)?)?,
    })
}

macro_rules! feed_query {
    ($tail:literal) => {
        concat!(
            "SELECT id, merchant, file_name, content_hash, status, duplicate_of, processed_at, \
             messages_processed, messages_successful, messages_with_error, \
             messages_with_warning, report_json, report_folder FROM feeds ",
            $tail
        )
    };
}

impl Store for PgStore {
    fn begin_feed(&mut self, feed: &NewFeed) -> Result<Box<dyn FeedTx + '_>, StoreError> {
        let conn = self.conn()?;
        let Conn {
            client,
            statements,
            broken,
        } = conn;
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(error) => return Err(fail(broken, &error)),
        };
        let merchant = feed.merchant.as_ref().map(MerchantId::as_str);
        let inserted = query(
            &mut tx,
            statements,
            "INSERT INTO feeds (merchant, file_name, content_hash, claim_token, status, received_at, \
             report_folder) VALUES ($1, $2, $3, $4, 'Processing', $5, $6) RETURNING id",
            &[
                &merchant,
                &feed.file_name,
                &feed.content_hash,
                &feed.claim_token,
                &now(),
                &feed.report_folder.to_column(),
            ],
        )
        .and_then(|rows| match rows.first() {
            Some(row) => row.try_get::<_, i64>(0).map(Some),
            None => Ok(None),
        });
        let id = match inserted {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Err(StoreError::Other {
                    detail: "INSERT INTO feeds returned no id".into(),
                });
            }
            Err(error) => {
                let classified = fail(broken, &error);
                drop(tx);
                return Err(classified);
            }
        };
        Ok(Box::new(PgFeedTx {
            feed_id: from_db(id, "feed id")?,
            tx,
            statements,
            broken,
            items: HashMap::new(),
            components: std::collections::HashSet::new(),
            keys_taken: std::collections::HashSet::new(),
            recent_since: feed
                .recent_adjustments_since
                .map(|since| since.format("%Y-%m-%d").to_string()),
            failed: false,
        }))
    }

    fn feed_by_claim(&mut self, claim_token: &str) -> Result<Option<FeedRecord>, StoreError> {
        let rows = self.run(|conn| {
            query(
                &mut conn.client,
                &mut conn.statements,
                feed_query!("WHERE claim_token = $1 AND status <> 'Processing'"),
                &[&claim_token],
            )
        })?;
        rows.first().map(feed_record).transpose()
    }

    fn feed_by_hash(
        &mut self,
        merchant: &MerchantId,
        content_hash: &str,
    ) -> Result<Option<FeedRecord>, StoreError> {
        let rows = self.run(|conn| {
            query(
                &mut conn.client,
                &mut conn.statements,
                feed_query!(
                    "WHERE merchant = $1 AND content_hash = $2 AND status = 'Complete' \
                     AND duplicate_of IS NULL ORDER BY id LIMIT 1"
                ),
                &[&merchant.as_str(), &content_hash],
            )
        })?;
        rows.first().map(feed_record).transpose()
    }

    fn recent_feeds(&mut self, limit: u32) -> Result<Vec<FeedRecord>, StoreError> {
        let limit = i64::from(limit);
        let rows = self.run(|conn| {
            query(
                &mut conn.client,
                &mut conn.statements,
                feed_query!("WHERE status <> 'Processing' ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
        })?;
        rows.iter().map(feed_record).collect()
    }

    fn import_orders(
        &mut self,
        merchant: &MerchantId,
        rows: &dyn RowSource,
    ) -> Result<ImportSummary, StoreError> {
        // Two imports (or an import and a feed) creating the same new orders at once: the
        // loser's insert hits the winner's row (a unique violation, a Conflict); run again,
        // it finds the rows and imports the report against them.
        let summary = retry_conflicts(
            || self.run_store(|conn| import_orders(conn, merchant, rows)),
            StoreError::conflict,
            |attempt, detail| {
                tracing::info!(attempt, detail = %detail, "store conflict, retrying the order import");
            },
        )?;
        if summary.lines >= ANALYZE_AFTER_ROWS {
            // A large import changes the tables' sizes enough for the planner to pick other
            // plans for the feeds' batched lookups; refresh its statistics now rather than
            // whenever autovacuum gets to it.
            self.run(|conn| {
                conn.client
                    .batch_execute("ANALYZE orders, order_items, item_components")
            })?;
        }
        Ok(summary)
    }

    fn orders(
        &mut self,
        merchant: Option<&MerchantId>,
        amazon_order_id: &str,
    ) -> Result<Vec<OrderView>, StoreError> {
        self.run_store(|conn| order_views(conn, merchant, amazon_order_id))
    }
}

/// The open transaction of one feed. Holds the connection's transaction; dropping it rolls
/// back.
struct PgFeedTx<'a> {
    feed_id: u64,
    tx: Transaction<'a>,
    statements: &'a mut HashMap<&'static str, Statement>,
    broken: &'a mut bool,
    /// (AmazonOrderID, AmazonOrderItemCode) → order_items.id of the loaded orders.
    items: HashMap<(AmazonOrderId, OrderItemCode), i64>,
    /// The item_components rows that exist, (item id, component name), of loaded items.
    components: std::collections::HashSet<(i64, &'static str)>,
    /// Idempotency keys known to be taken: loaded as used, or written by this transaction.
    /// Writing one again is an engine bug ([`StoreError::Invalid`]); a unique violation on
    /// any other key is a race with another instance ([`StoreError::Conflict`]).
    keys_taken: std::collections::HashSet<String>,
    /// [`NewFeed::recent_adjustments_since`] as `YYYY-MM-DD`: `created_at` (RFC 3339 in
    /// UTC) compares as text. `None`: items are loaded without recent adjustments.
    recent_since: Option<String>,
    /// An `apply` failed: this transaction must not commit (PostgreSQL refuses anyway after
    /// a failed statement; this also covers failures found before any statement ran).
    failed: bool,
}

impl PgFeedTx<'_> {
    /// [`FeedTx::apply`]: writes the rows of `changes` with one statement per table.
    fn write_changes(
        &mut self,
        merchant: &MerchantId,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let created_at = now();
        let feed_id = to_db(self.feed_id, "feed id")?;
        // Column arrays for the batched inserts (one statement per table, not per row).
        let mut adj_message = Vec::new();
        let mut adj_item = Vec::new();
        let mut adj_reason = Vec::new();
        let mut adj_action: Vec<Option<&str>> = Vec::new();
        let mut adj_cancelled = Vec::new();
        let mut adj_quantity: Vec<Option<i64>> = Vec::new();
        let mut adj_key: Vec<Option<&str>> = Vec::new();
        let mut adj_hash: Vec<&str> = Vec::new();
        let mut adj_net = Vec::new();
        let mut amount_index: Vec<usize> = Vec::new();
        let mut amount_component: Vec<&str> = Vec::new();
        let mut amount_value: Vec<i64> = Vec::new();
        let mut deltas: BTreeMap<(i64, &str), (ComponentClass, i64)> = BTreeMap::new();
        // Units cancelled and returned per item.
        let mut units: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        let mut key_key: Vec<&str> = Vec::new();
        let mut key_hash: Vec<&str> = Vec::new();
        let mut key_message = Vec::new();
        let mut key_code: Vec<Option<i64>> = Vec::new();
        let overflow = |what: &str| StoreError::Invalid {
            detail: format!("{what} overflows a 64-bit integer"),
        };
        self.resolve_items(merchant, changes)?;
        let mut new_keys = std::collections::HashSet::new();
        for change in changes {
            let key = match change {
                Change::Adjust(adjustment) => adjustment.key.as_ref(),
                Change::PinRejection { key, .. } => Some(key),
            };
            if let Some(key) = key
                && (self.keys_taken.contains(key.as_str()) || !new_keys.insert(key.as_str()))
            {
                return Err(StoreError::Invalid {
                    detail: format!(
                        "idempotency key {key} of {merchant} is already used; it cannot be \
                         recorded again"
                    ),
                });
            }
        }
        for change in changes {
            match change {
                Change::Adjust(adjustment) => {
                    let item_id = *self
                        .items
                        .get(&(
                            adjustment.amazon_order_id.clone(),
                            adjustment.item_code.clone(),
                        ))
                        .ok_or_else(|| StoreError::Other {
                            detail: format!(
                                "apply: order {} item {} was not loaded in this transaction",
                                adjustment.amazon_order_id, adjustment.item_code
                            ),
                        })?;
                    let message = message_to_db(adjustment.message_id);
                    let mut net: i64 = 0;
                    for (component, amount) in &adjustment.amounts {
                        net = net.checked_add(*amount).ok_or_else(|| overflow("net"))?;
                        amount_index.push(adj_message.len());
                        amount_component.push(component.name());
                        amount_value.push(*amount);
                        let delta = deltas
                            .entry((item_id, component.name()))
                            .or_insert((component.class(), 0));
                        delta.1 = delta
                            .1
                            .checked_add(*amount)
                            .ok_or_else(|| overflow("refunded"))?;
                    }
                    let returned = adjustment.quantity.unwrap_or(0);
                    if adjustment.quantity_cancelled > 0 || returned > 0 {
                        let total = units.entry(item_id).or_insert((0, 0));
                        total.0 += i64::from(adjustment.quantity_cancelled);
                        total.1 += i64::from(returned);
                    }
                    if let Some(key) = &adjustment.key {
                        key_key.push(key.as_str());
                        key_hash.push(&adjustment.payload_hash);
                        key_message.push(message);
                        key_code.push(None);
                    }
                    adj_message.push(message);
                    adj_item.push(item_id);
                    adj_reason.push(adjustment.reason.as_str());
                    adj_action.push(adjustment.action.map(|a| a.as_str()));
                    adj_cancelled.push(i64::from(adjustment.quantity_cancelled));
                    adj_quantity.push(adjustment.quantity.map(i64::from));
                    adj_key.push(adjustment.merchant_adjustment_item_id());
                    adj_hash.push(&adjustment.payload_hash);
                    adj_net.push(net);
                }
                Change::PinRejection {
                    key,
                    payload_hash,
                    message_id,
                    code,
                } => {
                    key_key.push(key.as_str());
                    key_hash.push(payload_hash);
                    key_message.push(message_to_db(*message_id));
                    key_code.push(Some(i64::from(code.number())));
                }
            }
        }
        if !adj_message.is_empty() {
            let count = i64::try_from(adj_message.len()).map_err(|_| overflow("count"))?;
            let rows = self.query(
                "SELECT nextval('adjustments_id_seq') FROM generate_series(1, $1::bigint)",
                &[&count],
            )?;
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                ids.push(self.get::<i64>(row, 0)?);
            }
            ids.sort_unstable();
            self.execute(
                "INSERT INTO adjustments (id, feed_id, message_id, item_id, reason, action_type, \
                 quantity_cancelled, quantity, merchant_adjustment_item_id, payload_hash, net, \
                 created_at) \
                 SELECT u.id, $1, u.m, u.i, u.r, u.a, u.c, u.q, u.k, u.h, u.n, $2 \
                 FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], \
                 $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::bigint[]) \
                 AS u(id, m, i, r, a, c, q, k, h, n)",
                &[
                    &feed_id,
                    &created_at,
                    &ids,
                    &adj_message,
                    &adj_item,
                    &adj_reason,
                    &adj_action,
                    &adj_cancelled,
                    &adj_quantity,
                    &adj_key,
                    &adj_hash,
                    &adj_net,
                ],
            )?;
            if !amount_index.is_empty() {
                let amount_adjustment: Vec<i64> = amount_index.iter().map(|i| ids[*i]).collect();
                self.execute(
                    "INSERT INTO adjustment_amounts (adjustment_id, component, amount) \
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])",
                    &[&amount_adjustment, &amount_component, &amount_value],
                )?;
            }
        }
        if !deltas.is_empty() {
            // Existing rows are updated and new ones inserted, in two statements: an
            // INSERT … ON CONFLICT would check the CHECK constraint against the row it
            // proposes to insert (refunded without charged) before seeing the conflict.
            let (mut up_item, mut up_name, mut up_delta) = (Vec::new(), Vec::new(), Vec::new());
            let (mut in_item, mut in_name, mut in_class, mut in_delta) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((item_id, component), (component_class, sum)) in &deltas {
                if self.components.contains(&(*item_id, *component)) {
                    up_item.push(*item_id);
                    up_name.push(*component);
                    up_delta.push(*sum);
                } else {
                    in_item.push(*item_id);
                    in_name.push(*component);
                    in_class.push(component_class.as_str());
                    in_delta.push(*sum);
                }
            }
            if !up_item.is_empty() {
                self.execute(
                    "UPDATE item_components SET refunded = refunded + u.d \
                     FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS u(i, c, d) \
                     WHERE item_components.item_id = u.i AND item_components.component = u.c",
                    &[&up_item, &up_name, &up_delta],
                )?;
            }
            if !in_item.is_empty() {
                self.execute(
                    "INSERT INTO item_components (item_id, component, class, refunded) \
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[])",
                    &[&in_item, &in_name, &in_class, &in_delta],
                )?;
                for (item_id, component) in in_item.iter().zip(&in_name) {
                    self.components.insert((*item_id, component));
                }
            }
        }
        if !units.is_empty() {
            let item: Vec<i64> = units.keys().copied().collect();
            let cancelled: Vec<i64> = units.values().map(|(c, _)| *c).collect();
            let returned: Vec<i64> = units.values().map(|(_, r)| *r).collect();
            self.execute(
                "UPDATE order_items SET quantity_cancelled = quantity_cancelled + u.c, \
                 quantity_returned = quantity_returned + u.r \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, c, r) \
                 WHERE order_items.id = u.id",
                &[&item, &cancelled, &returned],
            )?;
        }
        if !key_key.is_empty() {
            self.execute(
                "INSERT INTO idempotency_keys \
                 (merchant, key, payload_hash, feed_id, message_id, rejection_code) \
                 SELECT $1, u.k, u.h, $2, u.m, u.c \
                 FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::bigint[]) AS u(k, h, m, c)",
                &[
                    &merchant.as_str(),
                    &feed_id,
                    &key_key,
                    &key_hash,
                    &key_message,
                    &key_code,
                ],
            )?;
            self.keys_taken
                .extend(key_key.iter().map(|key| (*key).to_owned()));
        }
        Ok(())
    }

    fn query(&mut self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        query(&mut self.tx, self.statements, sql, params).map_err(|e| fail(self.broken, &e))
    }

    fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, StoreError> {
        execute(&mut self.tx, self.statements, sql, params).map_err(|e| fail(self.broken, &e))
    }

    fn get<'r, T: postgres::types::FromSql<'r>>(
        &mut self,
        row: &'r Row,
        index: usize,
    ) -> Result<T, StoreError> {
        row.try_get(index).map_err(|e| fail(self.broken, &e))
    }
}

impl PgFeedTx<'_> {
    /// The adjustments applied to `item_ids` since [`PgFeedTx::recent_since`], per item,
    /// oldest first (none when that is `None`). `created_at` compares byte by byte
    /// (`COLLATE "C"`), whatever the database's collation. A payload hash that is not 64 hex digits
    /// (no build writes one) cannot equal a new item's and is left out.
    fn recent_adjustments(
        &mut self,
        item_ids: &[i64],
    ) -> Result<HashMap<i64, RecentAdjustments>, StoreError> {
        let mut recent: HashMap<i64, RecentAdjustments> = HashMap::new();
        let Some(since) = self.recent_since.clone() else {
            return Ok(recent);
        };
        if item_ids.is_empty() {
            return Ok(recent);
        }
        let rows = self.query(
            "SELECT item_id, payload_hash, feed_id, message_id, created_at FROM adjustments \
             WHERE item_id = ANY($1) AND created_at >= $2 COLLATE \"C\" ORDER BY item_id, id",
            &[&item_ids, &since],
        )?;
        for row in &rows {
            let hash: &str = self.get(row, 1)?;
            let Some(payload) = PayloadDigest::from_hex(hash) else {
                continue;
            };
            let created_at: &str = self.get(row, 4)?;
            let applied_on =
                created_on(created_at).ok_or_else(|| corrupt("created_at", created_at))?;
            let adjustment = RecentAdjustment {
                payload,
                origin: KeyOrigin {
                    // This feed's own adjustments are "earlier in this feed".
                    feed_id: Some(from_db(self.get(row, 2)?, "feed id")?)
                        .filter(|id| *id != self.feed_id),
                    message_id: message_from_db(self.get(row, 3)?)?,
                },
                applied_on,
            };
            recent
                .entry(self.get(row, 0)?)
                .or_default()
                .push(adjustment);
        }
        Ok(recent)
    }

    /// Looks up (and locks) the items `changes` adjust that [`FeedTx::load`] did not load,
    /// so `apply` also works for callers that know the items without loading them.
    fn resolve_items(
        &mut self,
        merchant: &MerchantId,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let mut orders: Vec<&str> = Vec::new();
        let mut codes: Vec<&str> = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for change in changes {
            if let Change::Adjust(adjustment) = change
                && wanted.insert((&adjustment.amazon_order_id, &adjustment.item_code))
                && !self.items.contains_key(&(
                    adjustment.amazon_order_id.clone(),
                    adjustment.item_code.clone(),
                ))
            {
                orders.push(adjustment.amazon_order_id.as_str());
                codes.push(adjustment.item_code.as_str());
            }
        }
        if orders.is_empty() {
            return Ok(());
        }
        let rows = self.query(
            "SELECT o.amazon_order_id, i.amazon_order_item_code, i.id \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             JOIN UNNEST($2::text[], $3::text[]) AS u(a, c) \
             ON o.amazon_order_id = u.a AND i.amazon_order_item_code = u.c \
             WHERE o.merchant = $1 ORDER BY o.amazon_order_id, i.id FOR UPDATE OF o, i",
            &[&merchant.as_str(), &orders, &codes],
        )?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let order: String = self.get(row, 0)?;
            let code: String = self.get(row, 1)?;
            let id: i64 = self.get(row, 2)?;
            let key = (
                AmazonOrderId::new(&order).ok_or_else(|| corrupt("AmazonOrderID", &order))?,
                OrderItemCode::new(&code).ok_or_else(|| corrupt("AmazonOrderItemCode", &code))?,
            );
            self.items.insert(key, id);
            ids.push(id);
        }
        let rows = self.query(
            "SELECT item_id, component FROM item_components WHERE item_id = ANY($1)",
            &[&ids],
        )?;
        for row in &rows {
            let name: String = self.get(row, 1)?;
            let item_id: i64 = self.get(row, 0)?;
            self.components.insert((item_id, component(&name)?.name()));
        }
        for (order, code) in orders.iter().zip(&codes) {
            let found = AmazonOrderId::new(order)
                .zip(OrderItemCode::new(code))
                .is_some_and(|key| self.items.contains_key(&key));
            if !found {
                return Err(StoreError::Invalid {
                    detail: format!("order {order} of {merchant} has no item {code}"),
                });
            }
        }
        Ok(())
    }
}

impl FeedTx for PgFeedTx<'_> {
    fn feed_id(&self) -> u64 {
        self.feed_id
    }

    fn load(
        &mut self,
        merchant: &MerchantId,
        needs: &Needs,
        snapshot: &mut Snapshot,
    ) -> Result<(), StoreError> {
        let mut amazon_ids: Vec<&str> = Vec::new();
        let mut merchant_ids: Vec<&str> = Vec::new();
        for order in &needs.orders {
            match order {
                OrderRef::Amazon(id) => amazon_ids.push(id.as_str()),
                OrderRef::Merchant(id) => merchant_ids.push(id.as_str()),
            }
        }
        let mut found_amazon = std::collections::HashSet::new();
        let mut found_merchant = std::collections::HashSet::new();
        if !needs.orders.is_empty() {
            // Lock the orders in the fixed order (by AmazonOrderID), then their items.
            let order_rows = self.query(
                "SELECT id, amazon_order_id, merchant_order_id, currency, fulfillment_channel, \
                 purchase_date FROM orders WHERE merchant = $1 \
                 AND (amazon_order_id = ANY($2) OR merchant_order_id = ANY($3)) \
                 ORDER BY amazon_order_id FOR UPDATE",
                &[&merchant.as_str(), &amazon_ids, &merchant_ids],
            )?;
            let mut orders: Vec<(i64, OrderState)> = Vec::with_capacity(order_rows.len());
            for row in &order_rows {
                let id: i64 = self.get(row, 0)?;
                let amazon: String = self.get(row, 1)?;
                let merchant_order: Option<String> = self.get(row, 2)?;
                let currency: String = self.get(row, 3)?;
                let channel: String = self.get(row, 4)?;
                // Parsed once per order: text an older build let in keeps the day it had
                // (never failing the load), and text that is no date at all (`2026-02-30`)
                // counts as no purchase date (`stored_purchase_date`).
                let purchase_date: Option<String> = self.get(row, 5)?;
                let state = OrderState {
                    amazon_order_id: AmazonOrderId::new(&amazon)
                        .ok_or_else(|| corrupt("AmazonOrderID", &amazon))?,
                    merchant_order_id: merchant_order
                        .as_deref()
                        .map(|m| SellerId::new(m).ok_or_else(|| corrupt("MerchantOrderID", m)))
                        .transpose()?,
                    currency: Currency::from_code(&currency)
                        .ok_or_else(|| corrupt("currency", &currency))?,
                    channel: channel
                        .parse::<FulfillmentChannel>()
                        .map_err(|()| corrupt("fulfillment channel", &channel))?,
                    purchase_date: purchase_date.as_deref().and_then(stored_purchase_date),
                    items: Vec::new(),
                };
                found_amazon.insert(amazon);
                if let Some(m) = merchant_order {
                    found_merchant.insert(m);
                }
                orders.push((id, state));
            }
            let order_ids: Vec<i64> = orders.iter().map(|(id, _)| *id).collect();
            let item_rows = self.query(
                "SELECT id, order_id, amazon_order_item_code, merchant_order_item_id, \
                 quantity_ordered, quantity_shipped, quantity_cancelled, quantity_returned \
                 FROM order_items WHERE order_id = ANY($1) ORDER BY order_id, position FOR UPDATE",
                &[&order_ids],
            )?;
            let mut items: Vec<(i64, i64, ItemState)> = Vec::with_capacity(item_rows.len());
            for row in &item_rows {
                let code: String = self.get(row, 2)?;
                let merchant_item: Option<String> = self.get(row, 3)?;
                let state = ItemState {
                    code: OrderItemCode::new(&code)
                        .ok_or_else(|| corrupt("AmazonOrderItemCode", &code))?,
                    merchant_item_id: merchant_item
                        .as_deref()
                        .map(|m| SellerId::new(m).ok_or_else(|| corrupt("MerchantOrderItemID", m)))
                        .transpose()?,
                    quantity_ordered: from_db_u32(self.get(row, 4)?, "quantity_ordered")?,
                    quantity_shipped: from_db_u32(self.get(row, 5)?, "quantity_shipped")?,
                    quantity_cancelled: from_db_u32(self.get(row, 6)?, "quantity_cancelled")?,
                    quantity_returned: from_db_u32(self.get(row, 7)?, "quantity_returned")?,
                    components: BTreeMap::new(),
                    recent_adjustments: RecentAdjustments::default(),
                };
                items.push((self.get(row, 0)?, self.get(row, 1)?, state));
            }
            let item_ids: Vec<i64> = items.iter().map(|(id, _, _)| *id).collect();
            let component_rows = self.query(
                "SELECT item_id, component, charged, refunded FROM item_components \
                 WHERE item_id = ANY($1)",
                &[&item_ids],
            )?;
            let mut components: HashMap<i64, BTreeMap<Component, ComponentTotals>> = HashMap::new();
            for row in &component_rows {
                let name: String = self.get(row, 1)?;
                let item_id: i64 = self.get(row, 0)?;
                let parsed = component(&name)?;
                self.components.insert((item_id, parsed.name()));
                components.entry(item_id).or_default().insert(
                    parsed,
                    ComponentTotals {
                        charged: self.get(row, 2)?,
                        refunded: self.get(row, 3)?,
                    },
                );
            }
            for (item_id, _, item) in &mut items {
                item.components = components.remove(item_id).unwrap_or_default();
            }
            // Only items that may have adjustments at all are searched.
            let adjusted: Vec<i64> = items
                .iter()
                .filter(|(_, _, item)| may_have_adjustments(item))
                .map(|(id, _, _)| *id)
                .collect();
            let mut recent = self.recent_adjustments(&adjusted)?;
            let mut by_order: HashMap<i64, Vec<(i64, ItemState)>> = HashMap::new();
            for (item_id, order_id, mut item) in items {
                item.recent_adjustments = recent.remove(&item_id).unwrap_or_default();
                by_order.entry(order_id).or_default().push((item_id, item));
            }
            for (order_id, mut order) in orders {
                for (item_id, item) in by_order.remove(&order_id).unwrap_or_default() {
                    self.items
                        .insert((order.amazon_order_id.clone(), item.code.clone()), item_id);
                    order.items.push(item);
                }
                snapshot.insert_order(order);
            }
        }
        for order in &needs.orders {
            let found = match order {
                OrderRef::Amazon(id) => found_amazon.contains(id.as_str()),
                OrderRef::Merchant(id) => found_merchant.contains(id.as_str()),
            };
            if !found {
                snapshot.insert_missing_order(order.clone());
            }
        }
        if !needs.keys.is_empty() {
            let keys: Vec<&str> = needs.keys.iter().map(SellerId::as_str).collect();
            let rows = self.query(
                "SELECT key, payload_hash, feed_id, message_id, rejection_code \
                 FROM idempotency_keys WHERE merchant = $1 AND key = ANY($2)",
                &[&merchant.as_str(), &keys],
            )?;
            let mut records: HashMap<String, KeyRecord> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let message_id = message_from_db(self.get(row, 3)?)?;
                let rejection: Option<i64> = self.get(row, 4)?;
                records.insert(
                    self.get(row, 0)?,
                    KeyRecord {
                        payload_hash: self.get(row, 1)?,
                        origin: KeyOrigin {
                            // A key of this feed's own earlier chunk is "earlier in this feed".
                            feed_id: Some(from_db(self.get(row, 2)?, "feed id")?)
                                .filter(|id| *id != self.feed_id),
                            message_id,
                        },
                        rejection: rejection.map(code_from_number).transpose()?,
                    },
                );
            }
            for key in &needs.keys {
                let record = records.remove(key.as_str());
                if record.is_some() {
                    self.keys_taken.insert(key.as_str().to_owned());
                }
                snapshot.insert_key(key.clone(), record);
            }
        }
        Ok(())
    }

    fn apply(&mut self, merchant: &MerchantId, changes: &[Change]) -> Result<(), StoreError> {
        let applied = self.write_changes(merchant, changes);
        self.failed |= applied.is_err();
        applied
    }

    fn commit(mut self: Box<Self>, done: FeedDone) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Other {
                detail: format!(
                    "feed {}: an earlier write of this feed failed, so it is rolled back, not committed",
                    self.feed_id
                ),
            });
        }
        let feed_id = to_db(self.feed_id, "feed id")?;
        let duplicate_of = done
            .duplicate_of
            .map(|id| to_db(id, "duplicate_of"))
            .transpose()?;
        let processed = to_db(done.messages_processed, "messages_processed")?;
        let successful = to_db(done.messages_successful, "messages_successful")?;
        let with_error = to_db(done.messages_with_error, "messages_with_error")?;
        let with_warning = to_db(done.messages_with_warning, "messages_with_warning")?;
        self.execute(
            "UPDATE feeds SET status = $2, duplicate_of = $3, processed_at = $4, \
             messages_processed = $5, messages_successful = $6, messages_with_error = $7, \
             messages_with_warning = $8, report_json = $9 WHERE id = $1",
            &[
                &feed_id,
                &done.status.as_str(),
                &duplicate_of,
                &now(),
                &processed,
                &successful,
                &with_error,
                &with_warning,
                &done.report_json,
            ],
        )?;
        let PgFeedTx { tx, broken, .. } = *self;
        tx.commit().map_err(|error| fail(broken, &error))
    }
}

/// One order of an import, as it will be after the import.
struct ImportOrder {
    id: Option<i64>,
    merchant_order_id: Option<String>,
    currency: Currency,
    channel: FulfillmentChannel,
    purchase_date: Option<String>,
    dirty: bool,
    items: BTreeMap<String, ImportItem>,
    next_position: i64,
}

/// One item of an import, as it will be after the import.
struct ImportItem {
    id: Option<i64>,
    position: i64,
    merchant_item_id: Option<String>,
    sku: String,
    ordered: i64,
    shipped: i64,
    cancelled: i64,
    dirty: bool,
    /// Component name → (class, charged, refunded, changed).
    components: BTreeMap<&'static str, (ComponentClass, i64, i64, bool)>,
}

/// Order lines per batch of an import: read, locked, decided and written together.
const IMPORT_BATCH: usize = 10_000;

/// Imports an order report in one transaction (see [`Store::import_orders`]), reading it in
/// batches of [`IMPORT_BATCH`] lines, so memory stays flat whatever its size.
fn import_orders(
    conn: &mut Conn,
    merchant: &MerchantId,
    source: &dyn RowSource,
) -> Result<ImportSummary, StoreError> {
    let Conn {
        client,
        statements,
        broken,
    } = conn;
    let mut tx = client.transaction().map_err(|e| fail(broken, &e))?;
    let mut seen = ImportSeen::default();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut lines = 0;
    let mut rows = source.rows()?.peekable();
    while let Some(row) = rows.next() {
        let row = row?;
        lines += 1;
        if !seen.repeat(&row)? {
            batch.push(row);
        }
        if (batch.len() == IMPORT_BATCH || rows.peek().is_none()) && !batch.is_empty() {
            import_batch(&mut tx, statements, broken, merchant, &batch, &mut seen)?;
            batch.clear();
        }
    }
    tx.commit().map_err(|e| fail(broken, &e))?;
    Ok(seen.summary(lines))
}

/// Imports one batch of order lines inside the import's transaction: reads and locks what
/// exists, decides everything in memory (so a contradiction names its line), then writes in
/// a few batched statements. A later batch finds this one's rows in the store.
fn import_batch(
    tx: &mut Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    broken: &mut bool,
    merchant: &MerchantId,
    rows: &[OrderRow],
    seen: &mut ImportSeen,
) -> Result<(), StoreError> {
    let db = |error: postgres::Error| classify(&error);
    let mut amazon_ids: Vec<&str> = rows.iter().map(|r| r.amazon_order_id.as_str()).collect();
    amazon_ids.sort_unstable();
    amazon_ids.dedup();

    let mut orders: BTreeMap<String, ImportOrder> = BTreeMap::new();
    let order_rows = query(
        tx,
        statements,
        "SELECT id, amazon_order_id, merchant_order_id, currency, fulfillment_channel, \
         purchase_date FROM orders WHERE merchant = $1 AND amazon_order_id = ANY($2) \
         ORDER BY amazon_order_id FOR UPDATE",
        &[&merchant.as_str(), &amazon_ids],
    )
    .map_err(db)?;
    let mut order_by_id: HashMap<i64, String> = HashMap::new();
    for row in &order_rows {
        let id: i64 = row.try_get(0).map_err(db)?;
        let amazon: String = row.try_get(1).map_err(db)?;
        let currency: String = row.try_get(3).map_err(db)?;
        let channel: String = row.try_get(4).map_err(db)?;
        order_by_id.insert(id, amazon.clone());
        orders.insert(
            amazon,
            ImportOrder {
                id: Some(id),
                merchant_order_id: row.try_get(2).map_err(db)?,
                currency: Currency::from_code(&currency)
                    .ok_or_else(|| corrupt("currency", &currency))?,
                channel: channel
                    .parse()
                    .map_err(|()| corrupt("fulfillment channel", &channel))?,
                purchase_date: row.try_get(5).map_err(db)?,
                dirty: false,
                items: BTreeMap::new(),
                next_position: 1,
            },
        );
    }
    let order_ids: Vec<i64> = order_by_id.keys().copied().collect();
    let item_rows = query(
        tx,
        statements,
        "SELECT id, order_id, position, amazon_order_item_code, merchant_order_item_id, sku, \
         quantity_ordered, quantity_shipped, quantity_cancelled FROM order_items \
         WHERE order_id = ANY($1) ORDER BY order_id, position FOR UPDATE",
        &[&order_ids],
    )
    .map_err(db)?;
    let mut item_by_id: HashMap<i64, (String, String)> = HashMap::new();
    for row in &item_rows {
        let id: i64 = row.try_get(0).map_err(db)?;
        let order_id: i64 = row.try_get(1).map_err(db)?;
        let position: i64 = row.try_get(2).map_err(db)?;
        let code: String = row.try_get(3).map_err(db)?;
        let Some(order) = order_by_id.get(&order_id).and_then(|a| orders.get_mut(a)) else {
            continue;
        };
        order.next_position = order.next_position.max(position + 1);
        item_by_id.insert(id, (order_by_id[&order_id].clone(), code.clone()));
        order.items.insert(
            code,
            ImportItem {
                id: Some(id),
                position,
                merchant_item_id: row.try_get(4).map_err(db)?,
                sku: row.try_get(5).map_err(db)?,
                ordered: row.try_get(6).map_err(db)?,
                shipped: row.try_get(7).map_err(db)?,
                cancelled: row.try_get(8).map_err(db)?,
                dirty: false,
                components: BTreeMap::new(),
            },
        );
    }
    let item_ids: Vec<i64> = item_by_id.keys().copied().collect();
    let component_rows = query(
        tx,
        statements,
        "SELECT item_id, component, charged, refunded FROM item_components \
         WHERE item_id = ANY($1)",
        &[&item_ids],
    )
    .map_err(db)?;
    for row in &component_rows {
        let item_id: i64 = row.try_get(0).map_err(db)?;
        let name: String = row.try_get(1).map_err(db)?;
        let component = component(&name)?;
        let Some((amazon, code)) = item_by_id.get(&item_id) else {
            continue;
        };
        if let Some(item) = orders
            .get_mut(amazon)
            .and_then(|order| order.items.get_mut(code))
        {
            item.components.insert(
                component.name(),
                (
                    component.class(),
                    row.try_get(2).map_err(db)?,
                    row.try_get(3).map_err(db)?,
                    false,
                ),
            );
        }
    }

    // Who holds the merchant-order-ids the lines give, in the store (this import's earlier
    // batches included) and then as the lines below assign them: one order each.
    let mut wanted: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.merchant_order_id.as_ref().map(SellerId::as_str))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut holders: HashMap<String, String> = HashMap::new();
    if !wanted.is_empty() {
        for row in query(
            tx,
            statements,
            "SELECT merchant_order_id, amazon_order_id FROM orders \
             WHERE merchant = $1 AND merchant_order_id = ANY($2)",
            &[&merchant.as_str(), &wanted],
        )
        .map_err(db)?
        {
            holders.insert(row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
        }
    }

    // Decide, line by line (the same rules as the SQLite backend).
    for row in rows {
        let order = match orders.get_mut(row.amazon_order_id.as_str()) {
            Some(order) => order,
            None => {
                let currency = row.currency.ok_or_else(|| {
                    import_invalid(
                        row,
                        "currency",
                        "the order is not in the store and this report has no currency; \
                         import a New Orders report (with prices) first"
                            .into(),
                    )
                })?;
                orders
                    .entry(row.amazon_order_id.as_str().to_owned())
                    .or_insert(ImportOrder {
                        id: None,
                        merchant_order_id: None,
                        currency,
                        channel: row.channel.unwrap_or(FulfillmentChannel::Merchant),
                        purchase_date: None,
                        dirty: true,
                        items: BTreeMap::new(),
                        next_position: 1,
                    })
            }
        };
        if let Some(id) = order.id {
            seen.agree_with_stored(row, id, order.currency, order.channel)?;
        }
        // Only for an order this import created from a line without a channel (MFN until a
        // later line of the order gives it): a stored order's channel was checked above.
        if let Some(channel) = row.channel
            && channel != order.channel
        {
            order.channel = channel;
            order.dirty = true;
        }
        if let Some(merchant_order_id) = &row.merchant_order_id
            && order.merchant_order_id.as_deref() != Some(merchant_order_id.as_str())
        {
            match holders.get(merchant_order_id.as_str()) {
                Some(holder) if holder != row.amazon_order_id.as_str() => {
                    return Err(merchant_order_id_taken(row, holder));
                }
                _ => {}
            }
            if let Some(previous) = order.merchant_order_id.take() {
                holders.remove(&previous);
            }
            holders.insert(
                merchant_order_id.as_str().to_owned(),
                row.amazon_order_id.as_str().to_owned(),
            );
            order.merchant_order_id = Some(merchant_order_id.as_str().to_owned());
            order.dirty = true;
        }
        // A purchase-date that names the stored instant in another spelling (`Z`,
        // `+00:00`) is no change, and the stored text stays as it was.
        if let Some(given) = &row.purchase_date
            && order
                .purchase_date
                .as_deref()
                .is_none_or(|stored| !same_purchase_date(given, stored))
        {
            order.purchase_date = Some(given.clone());
            order.dirty = true;
        }
        if let Some(merchant_item_id) = &row.merchant_item_id
            && let Some((holder, _)) = order.items.iter().find(|(code, item)| {
                code.as_str() != row.item_code.as_str()
                    && item.merchant_item_id.as_deref() == Some(merchant_item_id.as_str())
            })
        {
            return Err(merchant_item_id_taken(row, holder));
        }
        let ordered = i64::from(row.quantity_ordered);
        let next_position = order.next_position;
        let item = match order.items.get_mut(row.item_code.as_str()) {
            Some(item) => item,
            None => {
                order.next_position += 1;
                order
                    .items
                    .entry(row.item_code.as_str().to_owned())
                    .or_insert(ImportItem {
                        id: None,
                        position: next_position,
                        merchant_item_id: None,
                        sku: row.sku.clone(),
                        ordered,
                        shipped: 0,
                        cancelled: 0,
                        dirty: true,
                        components: BTreeMap::new(),
                    })
            }
        };
        let shipped = shipped_after_import(row, item.shipped, item.cancelled)?;
        if item.ordered != ordered || item.shipped != shipped || item.sku != row.sku {
            item.ordered = ordered;
            item.shipped = shipped;
            item.sku.clone_from(&row.sku);
            item.dirty = true;
        }
        if let Some(merchant_item_id) = &row.merchant_item_id
            && item.merchant_item_id.as_deref() != Some(merchant_item_id.as_str())
        {
            item.merchant_item_id = Some(merchant_item_id.as_str().to_owned());
            item.dirty = true;
        }
        // A report without prices changes none. A new item has no components yet: it is
        // held to the rules that do not depend on refunds (a discount within its charge).
        if !row.charged.is_empty() {
            let stored = item
                .components
                .iter()
                .map(|(name, (_, charged, refunded, _))| {
                    Ok((
                        component(name)?,
                        ComponentTotals {
                            charged: *charged,
                            refunded: *refunded,
                        },
                    ))
                })
                .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
            check_charged_after_import(row, order.currency, &stored)?;
        }
        for (component, charged) in &row.charged {
            if *charged < 0 {
                return Err(import_invalid(
                    row,
                    column_for(*component),
                    format!(
                        "the charged {} is negative ({})",
                        component.name(),
                        format_minor(*charged, order.currency)
                    ),
                ));
            }
            let existing = item.components.get(component.name()).copied();
            // A charge of 0 where none is stored is none (a new item stores none either).
            if existing.is_none() && *charged == 0 {
                continue;
            }
            let refunded = existing.map_or(0, |(_, _, refunded, _)| refunded);
            if existing.is_none_or(|(_, stored, _, _)| stored != *charged) {
                item.components.insert(
                    component.name(),
                    (component.class(), *charged, refunded, true),
                );
            }
        }
    }

    // Write.
    let touched: HashSet<&str> = amazon_ids.iter().copied().collect();
    let touched_items: HashSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.amazon_order_id.as_str(), r.item_code.as_str()))
        .collect();
    let mut new_amazon: Vec<&str> = Vec::new();
    let mut new_merchant_order: Vec<Option<&str>> = Vec::new();
    let mut new_currency: Vec<&str> = Vec::new();
    let mut new_channel: Vec<&str> = Vec::new();
    let mut new_purchase: Vec<Option<&str>> = Vec::new();
    let mut upd_id: Vec<i64> = Vec::new();
    let mut upd_merchant_order: Vec<Option<&str>> = Vec::new();
    let mut upd_purchase: Vec<Option<&str>> = Vec::new();
    let mut upd_channel: Vec<&str> = Vec::new();
    for (amazon, order) in &orders {
        if !touched.contains(amazon.as_str()) {
            continue;
        }
        match order.id {
            None => {
                new_amazon.push(amazon);
                new_merchant_order.push(order.merchant_order_id.as_deref());
                new_currency.push(order.currency.code());
                new_channel.push(order.channel.as_str());
                new_purchase.push(order.purchase_date.as_deref());
            }
            Some(id) => {
                seen.order_found(id);
                if order.dirty {
                    seen.order_changed(id);
                    upd_id.push(id);
                    upd_merchant_order.push(order.merchant_order_id.as_deref());
                    upd_purchase.push(order.purchase_date.as_deref());
                    upd_channel.push(order.channel.as_str());
                }
            }
        }
    }
    let mut order_ids: HashMap<String, i64> = HashMap::new();
    if !new_amazon.is_empty() {
        let inserted = query(
            tx,
            statements,
            "INSERT INTO orders (merchant, amazon_order_id, merchant_order_id, currency, \
             fulfillment_channel, purchase_date) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             RETURNING id, amazon_order_id",
            &[
                &merchant.as_str(),
                &new_amazon,
                &new_merchant_order,
                &new_currency,
                &new_channel,
                &new_purchase,
            ],
        )
        .map_err(|e| fail(broken, &e))?;
        for row in &inserted {
            let id = row.try_get(0).map_err(db)?;
            seen.order_created(id);
            order_ids.insert(row.try_get(1).map_err(db)?, id);
        }
    }
    if !upd_id.is_empty() {
        execute(
            tx,
            statements,
            "UPDATE orders SET merchant_order_id = u.m, purchase_date = u.p, \
             fulfillment_channel = u.c \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u(id, m, p, c) \
             WHERE orders.id = u.id",
            &[&upd_id, &upd_merchant_order, &upd_purchase, &upd_channel],
        )
        .map_err(|e| fail(broken, &e))?;
    }
    let mut ni_order = Vec::new();
    let mut ni_position = Vec::new();
    let mut ni_code: Vec<&str> = Vec::new();
    let mut ni_merchant_item: Vec<Option<&str>> = Vec::new();
    let mut ni_sku: Vec<&str> = Vec::new();
    let mut ni_ordered = Vec::new();
    let mut ni_shipped = Vec::new();
    let mut ui_id = Vec::new();
    let mut ui_merchant_item: Vec<Option<&str>> = Vec::new();
    let mut ui_shipped = Vec::new();
    let mut ui_sku: Vec<&str> = Vec::new();
    let mut ui_ordered = Vec::new();
    for (amazon, order) in &orders {
        if !touched.contains(amazon.as_str()) {
            continue;
        }
        let Some(order_id) = order.id.or_else(|| order_ids.get(amazon).copied()) else {
            return Err(StoreError::Other {
                detail: format!("import: order {amazon} was not created"),
            });
        };
        for (code, item) in &order.items {
            match item.id {
                None => {
                    ni_order.push(order_id);
                    ni_position.push(item.position);
                    ni_code.push(code);
                    ni_merchant_item.push(item.merchant_item_id.as_deref());
                    ni_sku.push(&item.sku);
                    ni_ordered.push(item.ordered);
                    ni_shipped.push(item.shipped);
                }
                Some(id) => {
                    if touched_items.contains(&(amazon.as_str(), code.as_str())) {
                        let changed = item.dirty || item.components.values().any(|(_, _, _, c)| *c);
                        seen.item_found(order_id, id, changed);
                    }
                    if item.dirty {
                        ui_id.push(id);
                        ui_merchant_item.push(item.merchant_item_id.as_deref());
                        ui_shipped.push(item.shipped);
                        ui_sku.push(&item.sku);
                        ui_ordered.push(item.ordered);
                    }
                }
            }
        }
    }
    let mut item_ids: HashMap<(i64, String), i64> = HashMap::new();
    if !ni_order.is_empty() {
        let inserted = query(
            tx,
            statements,
            "INSERT INTO order_items (order_id, position, amazon_order_item_code, \
             merchant_order_item_id, sku, quantity_ordered, quantity_shipped) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
             $5::text[], $6::bigint[], $7::bigint[]) \
             RETURNING id, order_id, amazon_order_item_code",
            &[
                &ni_order,
                &ni_position,
                &ni_code,
                &ni_merchant_item,
                &ni_sku,
                &ni_ordered,
                &ni_shipped,
            ],
        )
        .map_err(|e| fail(broken, &e))?;
        for row in &inserted {
            let id = row.try_get(0).map_err(db)?;
            let order_id = row.try_get(1).map_err(db)?;
            seen.item_created(order_id, id);
            item_ids.insert((order_id, row.try_get(2).map_err(db)?), id);
        }
    }
    if !ui_id.is_empty() {
        execute(
            tx,
            statements,
            "UPDATE order_items SET merchant_order_item_id = u.m, quantity_shipped = u.s, \
             sku = u.k, quantity_ordered = u.o \
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[]) \
             AS u(id, m, s, k, o) WHERE order_items.id = u.id",
            &[&ui_id, &ui_merchant_item, &ui_shipped, &ui_sku, &ui_ordered],
        )
        .map_err(|e| fail(broken, &e))?;
    }
    let mut c_item = Vec::new();
    let mut c_name: Vec<&str> = Vec::new();
    let mut c_class: Vec<&str> = Vec::new();
    let mut c_charged = Vec::new();
    for (amazon, order) in &orders {
        let Some(order_id) = order.id.or_else(|| order_ids.get(amazon).copied()) else {
            continue;
        };
        for (code, item) in &order.items {
            for (name, (class, charged, _, changed)) in &item.components {
                if !changed {
                    continue;
                }
                let Some(item_id) = item
                    .id
                    .or_else(|| item_ids.get(&(order_id, code.clone())).copied())
                else {
                    return Err(StoreError::Other {
                        detail: format!("import: item {code} of order {amazon} was not created"),
                    });
                };
                c_item.push(item_id);
                c_name.push(name);
                c_class.push(class.as_str());
                c_charged.push(*charged);
            }
        }
    }
    if !c_item.is_empty() {
        execute(
            tx,
            statements,
            "INSERT INTO item_components (item_id, component, class, charged) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
             ON CONFLICT (item_id, component) DO UPDATE SET charged = EXCLUDED.charged",
            &[&c_item, &c_name, &c_class, &c_charged],
        )
        .map_err(|e| fail(broken, &e))?;
    }
    Ok(())
}

/// `orders show`: the orders with this AmazonOrderID, their items and adjustments.
fn order_views(
    conn: &mut Conn,
    merchant: Option<&MerchantId>,
    amazon_order_id: &str,
) -> Result<Vec<OrderView>, StoreError> {
    let Conn {
        client,
        statements,
        broken,
    } = conn;
    let merchant = merchant.map(MerchantId::as_str);
    let mut run = |sql: &'static str, params: &Params<'_>| {
        query(client, statements, sql, params).map_err(|e| fail(broken, &e))
    };
    let db = |error: postgres::Error| classify(&error);
    let order_rows = run(
        "SELECT id, merchant, amazon_order_id, merchant_order_id, currency, \
         fulfillment_channel, purchase_date FROM orders \
         WHERE amazon_order_id = $1 AND ($2::text IS NULL OR merchant = $2) ORDER BY merchant",
        &[&amazon_order_id, &merchant],
    )?;
    let mut views = Vec::with_capacity(order_rows.len());
    for order in &order_rows {
        let order_id: i64 = order.try_get(0).map_err(db)?;
        let currency_code: String = order.try_get(4).map_err(db)?;
        let currency = Currency::from_code(&currency_code)
            .ok_or_else(|| corrupt("currency", &currency_code))?;
        let item_rows = run(
            "SELECT id, amazon_order_item_code, merchant_order_item_id, sku, quantity_ordered, \
             quantity_shipped, quantity_cancelled, quantity_returned FROM order_items \
             WHERE order_id = $1 ORDER BY position",
            &[&order_id],
        )?;
        let component_rows = run(
            "SELECT c.item_id, c.component, c.charged, c.refunded FROM item_components c \
             JOIN order_items i ON i.id = c.item_id WHERE i.order_id = $1",
            &[&order_id],
        )?;
        // As the SQLite backend shows it: Principal always, other components when charged
        // or refunded; both maps have the same keys.
        let principal = Component::Price(crate::model::PriceComponent::Principal).name();
        let mut charged: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
        let mut refunded: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
        for row in &component_rows {
            let item_id: i64 = row.try_get(0).map_err(db)?;
            let name: String = row.try_get(1).map_err(db)?;
            let charged_minor: i64 = row.try_get(2).map_err(db)?;
            let refunded_minor: i64 = row.try_get(3).map_err(db)?;
            if charged_minor == 0 && refunded_minor == 0 && name != principal {
                continue;
            }
            charged
                .entry(item_id)
                .or_default()
                .insert(name.clone(), format_minor(charged_minor, currency));
            refunded
                .entry(item_id)
                .or_default()
                .insert(name, format_minor(refunded_minor, currency));
        }
        let mut items = Vec::with_capacity(item_rows.len());
        for row in &item_rows {
            let item_id: i64 = row.try_get(0).map_err(db)?;
            items.push(ItemView {
                amazon_order_item_code: row.try_get(1).map_err(db)?,
                merchant_order_item_id: row.try_get(2).map_err(db)?,
                sku: row.try_get(3).map_err(db)?,
                quantity_ordered: from_db_u32(row.try_get(4).map_err(db)?, "quantity_ordered")?,
                quantity_shipped: from_db_u32(row.try_get(5).map_err(db)?, "quantity_shipped")?,
                quantity_cancelled: from_db_u32(row.try_get(6).map_err(db)?, "quantity_cancelled")?,
                quantity_returned: from_db_u32(row.try_get(7).map_err(db)?, "quantity_returned")?,
                charged: with_principal(charged.remove(&item_id), principal, currency),
                refunded: with_principal(refunded.remove(&item_id), principal, currency),
            });
        }
        let adjustment_rows = run(
            "SELECT a.id, a.feed_id, a.message_id, i.amazon_order_item_code, a.reason, \
             a.action_type, a.quantity_cancelled, a.quantity, a.merchant_adjustment_item_id, \
             a.created_at FROM adjustments a JOIN order_items i ON i.id = a.item_id \
             WHERE i.order_id = $1 ORDER BY a.id",
            &[&order_id],
        )?;
        let amount_rows = run(
            "SELECT m.adjustment_id, m.component, m.amount FROM adjustment_amounts m \
             JOIN adjustments a ON a.id = m.adjustment_id \
             JOIN order_items i ON i.id = a.item_id WHERE i.order_id = $1",
            &[&order_id],
        )?;
        let mut amounts: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
        for row in &amount_rows {
            amounts
                .entry(row.try_get(0).map_err(db)?)
                .or_default()
                .insert(
                    row.try_get(1).map_err(db)?,
                    format_minor(row.try_get(2).map_err(db)?, currency),
                );
        }
        let mut adjustments = Vec::with_capacity(adjustment_rows.len());
        for row in &adjustment_rows {
            let id: i64 = row.try_get(0).map_err(db)?;
            let quantity: Option<i64> = row.try_get(7).map_err(db)?;
            adjustments.push(AdjustmentView {
                feed_id: from_db(row.try_get(1).map_err(db)?, "feed id")?,
                message_id: message_from_db(row.try_get(2).map_err(db)?)?.get(),
                amazon_order_item_code: row.try_get(3).map_err(db)?,
                reason: row.try_get(4).map_err(db)?,
                action_type: row.try_get(5).map_err(db)?,
                quantity_cancelled: from_db_u32(row.try_get(6).map_err(db)?, "quantity_cancelled")?,
                quantity: quantity.map(|q| from_db_u32(q, "quantity")).transpose()?,
                merchant_adjustment_item_id: row.try_get(8).map_err(db)?,
                amounts: amounts.remove(&id).unwrap_or_default(),
                created_at: row.try_get(9).map_err(db)?,
            });
        }
        views.push(OrderView {
            merchant: order.try_get(1).map_err(db)?,
            amazon_order_id: order.try_get(2).map_err(db)?,
            merchant_order_id: order.try_get(3).map_err(db)?,
            currency: currency_code,
            fulfillment_channel: order.try_get(5).map_err(db)?,
            purchase_date: order.try_get(6).map_err(db)?,
            items,
            adjustments,
        });
    }
    Ok(views)
}

/// A component map with Principal present (zero when absent).
fn with_principal(
    map: Option<BTreeMap<String, String>>,
    principal: &str,
    currency: Currency,
) -> BTreeMap<String, String> {
    let mut map = map.unwrap_or_default();
    map.entry(principal.to_owned())
        .or_insert_with(|| format_minor(0, currency));
    map
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }
}
