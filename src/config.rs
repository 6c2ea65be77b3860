//! Configuration: the TOML file (raw, every field optional, unknown keys rejected) plus
//! `ADJUSTD_<SECTION>_<KEY>` environment overrides (each checked on its own, so an error
//! names the variable), resolved into one validated [`Config`] with absolute paths,
//! `Duration`s and every default applied in one place. An error about the file names its
//! line, column and key, whether the TOML reader or a later check found it. Nothing outside
//! this module sees the raw form, so no command can have defaults of its own.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::DaemonConfig;
use crate::engine::{Policy, Rules};
use crate::feed::Limits;
use crate::inbox::{InboxConfig, WatchMode};
use crate::model::MerchantId;
use crate::pipeline::DuplicatePolicy;

/// The config file used when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "adjustd.toml";

/// Errors while loading the configuration. Each names where the bad value came from: the
/// file with the line, column and key, or the environment variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or one of its keys is unknown or has a wrong value.
    #[error("config file {}{}: {}{message}", path.display(), at(*.position), key_prefix(.key.as_deref()))]
    File {
        /// The file.
        path: PathBuf,
        /// Line and column (both from 1; the column counts characters) of the bad key or
        /// value; `None` only if the TOML reader gave no position.
        position: Option<(usize, usize)>,
        /// The key as `[section] key`, when the error is about one.
        key: Option<String>,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// An `ADJUSTD_*` environment variable is not a config key, or its value is wrong.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A value is wrong and neither the file nor a variable could be named as its origin.
    /// Not expected: the file and each variable are checked on their own first.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The key as `[section] key`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

/// `, line L, column C` for [`ConfigError::File`].
fn at(position: Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, column)| {
        format!(", line {line}, column {column}")
    })
}

/// `[section] key: ` for [`ConfigError::File`].
fn key_prefix(key: Option<&str>) -> String {
    key.map_or_else(String::new, |key| format!("{key}: "))
}

/// `[inbox] watch` as written; resolves to [`WatchMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WatchFile {
    Auto,
    Notify,
    Poll,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it came from, if any.
    pub file: Option<PathBuf>,
    /// `sqlite:PATH` (absolute) or `postgres://…`.
    pub store_url: String,
    /// The daemon: folders (absolute), readiness and watching, shutdown, retries, HTTP.
    /// `process` and the other commands use its folders too.
    pub daemon: DaemonConfig,
    /// Reader limits.
    pub limits: Limits,
    /// Rule knobs.
    pub rules: Rules,
    /// What to do with a feed whose bytes were already processed.
    pub duplicate_policy: DuplicatePolicy,
    /// Log format.
    pub log_format: LogFormat,
}

impl Config {
    /// The store URL with any password replaced by `***`, for logs and `config check`.
    pub fn redacted_store_url(&self) -> String {
        redact_url(&self.store_url)
    }

    /// The outbox folder.
    pub fn outbox(&self) -> &Path {
        &self.daemon.inbox.outbox
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    paths: Option<PathsFile>,
    store: Option<StoreFile>,
    inbox: Option<InboxFile>,
    limits: Option<LimitsFile>,
    rules: Option<RulesFile>,
    daemon: Option<DaemonFile>,
    http: Option<HttpFile>,
    log: Option<LogFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsFile {
    inbox: Option<PathBuf>,
    outbox: Option<PathBuf>,
    archive: Option<PathBuf>,
    failed: Option<PathBuf>,
    work: Option<PathBuf>,
    parked: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxFile {
    settle_ms: Option<u64>,
    ignore: Option<Vec<String>>,
    truncated_grace_secs: Option<u64>,
    done_marker: Option<String>,
    allowed_merchants: Option<Vec<String>>,
    watch: Option<WatchFile>,
    poll_interval_ms: Option<u64>,
    rescan_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_file_bytes: Option<u64>,
    max_depth: Option<u32>,
    max_text_bytes: Option<u64>,
    max_messages: Option<u64>,
    max_message_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    restocking_fee_max_percent: Option<u32>,
    restocking_fee_review_percent: Option<u32>,
    concession_review_percent: Option<u32>,
    refund_window_days: Option<u32>,
    policy: Option<PolicyFile>,
    resubmission_window_days: Option<u32>,
    duplicate_feeds: Option<DuplicateFeeds>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PolicyFile {
    Warn,
    Strict,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DuplicateFeeds {
    Skip,
    Process,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonFile {
    shutdown_timeout_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
    order_not_found_window_secs: Option<u64>,
    order_not_found_first_retry_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    format: Option<LogFormat>,
}

/// Every key the file and the environment accept, as `(section, key)`.
pub const KEYS: &[(&str, &str)] = &[
    ("paths", "inbox"),
    ("paths", "outbox"),
    ("paths", "archive"),
    ("paths", "failed"),
    ("paths", "work"),
    ("paths", "parked"),
    ("store", "url"),
    ("inbox", "settle_ms"),
    ("inbox", "ignore"),
    ("inbox", "truncated_grace_secs"),
    ("inbox", "done_marker"),
    ("inbox", "allowed_merchants"),
    ("inbox", "watch"),
    ("inbox", "poll_interval_ms"),
    ("inbox", "rescan_interval_secs"),
    ("limits", "max_file_bytes"),
    ("limits", "max_depth"),
    ("limits", "max_text_bytes"),
    ("limits", "max_messages"),
    ("limits", "max_message_bytes"),
    ("rules", "restocking_fee_max_percent"),
    ("rules", "restocking_fee_review_percent"),
    ("rules", "concession_review_percent"),
    ("rules", "refund_window_days"),
    ("rules", "policy"),
    ("rules", "resubmission_window_days"),
    ("rules", "duplicate_feeds"),
    ("daemon", "shutdown_timeout_secs"),
    ("daemon", "max_backoff_secs"),
    ("daemon", "order_not_found_window_secs"),
    ("daemon", "order_not_found_first_retry_secs"),
    ("http", "listen"),
    ("log", "format"),
];

/// The keys that hold lists, with an example of the TOML array an `ADJUSTD_*` variable
/// must hold for them.
const LIST_KEYS: &[((&str, &str), &str)] = &[
    (("inbox", "ignore"), r#"[".*", "*.tmp"]"#),
    (
        ("inbox", "allowed_merchants"),
        r#"["A1SELLER", "A2SELLER"]"#,
    ),
];

/// The `[inbox] done_marker` that turns done markers off (in any case), like leaving the key out; from
/// the environment it turns off a marker the file sets. A marker is a suffix of the feed's
/// name (".done"), so this one would make `feed.xmloff`, which nobody means.
pub const DONE_MARKER_OFF: &str = "off";

/// The variable naming the config file when `--config` is not given (see [`load`]).
pub const CONFIG_VARIABLE: &str = "ADJUSTD_CONFIG";

/// `ADJUSTD_*` variables that are not config keys but are meant for adjustd or its tests:
/// [`CONFIG_VARIABLE`], and the test suite's knobs, which the binary inherits when the
/// tests run it. Any other `ADJUSTD_*` variable that is not a key is an error, so a
/// misspelt override does not go unnoticed.
const OTHER_VARIABLES: &[&str] = &[CONFIG_VARIABLE];

/// Prefixes of the test suite's variables (see [`OTHER_VARIABLES`]).
const OTHER_PREFIXES: &[&str] = &[
    "ADJUSTD_REQUIRE_",
    "ADJUSTD_TEST_",
    "ADJUSTD_CRASH_",
    "ADJUSTD_DIFF_",
    "ADJUSTD_MULTI_",
    "ADJUSTD_STORE_PERF_",
];

/// The process's `ADJUSTD_*` environment variables, as `(name, value)`.
///
/// # Errors
/// A value that is not UTF-8, naming the variable.
pub fn environment() -> Result<Vec<(String, String)>, ConfigError> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("ADJUSTD_").then_some((name, value))
        })
        .map(|(name, value)| match value.into_string() {
            Ok(value) => Ok((name, value)),
            Err(_) => Err(ConfigError::Env {
                var: name,
                message: "the value is not UTF-8".to_owned(),
            }),
        })
        .collect()
}

/// Loads the configuration: `explicit` (`--config`) if given, else the file that
/// [`CONFIG_VARIABLE`] in `env` names (either must exist), else `./adjustd.toml` if
/// present, else built-in defaults under `./var`; then applies the `ADJUSTD_*` overrides in
/// `env` (`(name, value)` pairs, see [`environment`]). Relative paths from the file resolve
/// against its folder; relative paths from the environment against the current directory,
/// as a person typing a variable in a shell expects.
///
/// # Errors
/// A missing explicit file, an empty [`CONFIG_VARIABLE`] or a missing file it names, bad
/// TOML, an unknown key or `ADJUSTD_*` variable, or an invalid value; each names the file
/// or the variable it came from.
pub fn load(explicit: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
        path: PathBuf::from("."),
        source,
    })?;
    let from_env = match explicit {
        Some(_) => None,
        None => env
            .iter()
            .find(|(name, _)| name == CONFIG_VARIABLE)
            .map(|(_, value)| value.as_str()),
    };
    let file = match (explicit, from_env) {
        (Some(path), _) => Some(path.to_path_buf()),
        // Typically a variable set from an unset shell variable: not silently the default.
        (None, Some("")) => {
            return Err(ConfigError::Env {
                var: CONFIG_VARIABLE.to_owned(),
                message: format!(
                    "the value is empty: name a config file, or unset the variable to use \
                     ./{DEFAULT_CONFIG_FILE} if present, else the built-in defaults"
                ),
            });
        }
        (None, Some(path)) => Some(PathBuf::from(path)),
        (None, None) => {
            // Anything by that name is meant as the config: a folder or a broken link is an
            // error naming it, not silently the built-in defaults.
            let default = cwd.join(DEFAULT_CONFIG_FILE);
            std::fs::symlink_metadata(&default)
                .is_ok()
                .then_some(default)
        }
    };
    let (source, mut table, base) = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| match from_env {
                Some(_) => ConfigError::Env {
                    var: CONFIG_VARIABLE.to_owned(),
                    message: format!("reading config file {}: {source}", path.display()),
                },
                None => ConfigError::Read {
                    path: path.clone(),
                    source,
                },
            })?;
            let source = Source {
                path: path.clone(),
                text,
            };
            // The file alone first, so that its errors name the file and not a variable.
            let table = source.check()?;
            let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (Some(source), table, absolute(&cwd, &folder))
        }
        None => (None, toml::Table::new(), cwd.clone()),
    };
    let env_keys = apply_env(&mut table, env)?;
    // Each part was deserialised on its own and the keys are independent, so this does not
    // fail; if it did, the error could name neither the file nor a variable.
    let raw = FileConfig::deserialize(toml::Value::Table(table)).map_err(|error| {
        ConfigError::Invalid {
            key: "(the file with the ADJUSTD_* variables)".to_owned(),
            message: error.message().to_owned(),
        }
    })?;
    resolve(raw, file, &base, &cwd, &env_keys).map_err(|bad| {
        let BadValue {
            section,
            key,
            item,
            message,
        } = bad;
        if env_keys.contains(&(section, key)) {
            ConfigError::Env {
                var: env_var(section, key),
                message: format!("[{section}] {key}: {message}"),
            }
        } else if let Some(source) = &source {
            source.error(
                source.value_offset(section, key, item),
                Some(format!("[{section}] {key}")),
                message,
            )
        } else {
            ConfigError::Invalid {
                key: format!("[{section}] {key}"),
                message,
            }
        }
    })
}

/// The config file's text, kept to turn the byte offsets of TOML errors and of keys into
/// lines and columns.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    /// Parses the text and deserialises it on its own; returns it as a table, ready for the
    /// environment's overrides. Deserialising the text (not a `toml::Table` made from it)
    /// keeps the positions, which a table does not have.
    fn check(&self) -> Result<toml::Table, ConfigError> {
        let document = toml::de::DeTable::parse(&self.text).map_err(|error| {
            self.error(
                error.span().map(|span| span.start),
                None,
                error.message().to_owned(),
            )
        })?;
        if let Err(error) = toml::from_str::<FileConfig>(&self.text) {
            let offset = error.span().map(|span| span.start);
            let key = offset.and_then(|offset| key_at(document.get_ref(), offset));
            return Err(self.error(offset, key, readable(error.message())));
        }
        self.text.parse::<toml::Table>().map_err(|error| {
            self.error(
                error.span().map(|span| span.start),
                None,
                error.message().to_owned(),
            )
        })
    }

    /// The byte offset of `[section] key`'s value, or of its `item`th element.
    fn value_offset(&self, section: &str, key: &str, item: Option<usize>) -> Option<usize> {
        let document = toml::de::DeTable::parse(&self.text).ok()?;
        let value = entry(document.get_ref(), section)?
            .get_ref()
            .as_table()
            .and_then(|table| entry(table, key))?;
        let element = item.and_then(|index| {
            value
                .get_ref()
                .as_array()
                .and_then(|array| array.get(index))
        });
        Some(element.unwrap_or(value).span().start)
    }

    fn error(&self, offset: Option<usize>, key: Option<String>, message: String) -> ConfigError {
        ConfigError::File {
            path: self.path.clone(),
            position: offset.map(|offset| line_column(&self.text, offset)),
            key,
            message,
        }
    }
}

/// The value of `name` in `table`.
fn entry<'t, 'i>(
    table: &'t toml::de::DeTable<'i>,
    name: &str,
) -> Option<&'t toml::Spanned<toml::de::DeValue<'i>>> {
    table
        .iter()
        .find(|(key, _)| key.get_ref().as_ref() == name)
        .map(|(_, value)| value)
}

/// The key (as `[section] key`, or `[section]` for a section) whose name or value holds
/// the byte `offset`: where a deserialising error points.
fn key_at(document: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    fn walk(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, value) in table.iter() {
            path.push(key.get_ref().to_string());
            // Nested tables first: a section's span may cover its keys.
            if let Some(inner) = value.get_ref().as_table()
                && walk(inner, offset, path)
            {
                return true;
            }
            if key.span().contains(&offset) || value.span().contains(&offset) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = Vec::new();
    if !walk(document, offset, &mut path) {
        return None;
    }
    let (first, rest) = path.split_first()?;
    let is_section = KEYS.iter().any(|(section, _)| section == first)
        || entry(document, first).is_some_and(|value| value.get_ref().is_table());
    Some(match rest {
        [] if is_section => format!("[{first}]"),
        [] => first.clone(),
        rest => format!("[{first}] {}", rest.join(".")),
    })
}

/// serde's message with the name of a section's Rust type (`expected struct PathsFile`)
/// replaced by what the reader of the file knows it as.
fn readable(message: &str) -> String {
    match message.split_once("expected struct ") {
        Some((before, _)) => format!("{before}expected a table"),
        None => message.to_owned(),
    }
}

/// Line and column (both from 1, the column in characters) of the byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A value that `resolve` refused, with its key so that `load` can say where it came from.
struct BadValue {
    section: &'static str,
    key: &'static str,
    /// The index of the bad element, for a list.
    item: Option<usize>,
    message: String,
}

impl BadValue {
    fn new(section: &'static str, key: &'static str, message: String) -> BadValue {
        BadValue {
            section,
            key,
            item: None,
            message,
        }
    }
}

/// The variable that overrides `[section] key`.
fn env_var(section: &str, key: &str) -> String {
    format!("ADJUSTD_{}_{}", section.to_uppercase(), key.to_uppercase())
}

/// Overlays the `ADJUSTD_<SECTION>_<KEY>` variables of `env` onto the table, after checking
/// each on its own so that an error names the variable; returns the keys that came from
/// the environment (their relative paths resolve against the current directory).
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<Vec<(&'static str, &'static str)>, ConfigError> {
    let mut env_keys = Vec::new();
    for (var, text) in env {
        if !var.starts_with("ADJUSTD_")
            || OTHER_VARIABLES.contains(&var.as_str())
            || OTHER_PREFIXES.iter().any(|prefix| var.starts_with(prefix))
        {
            continue;
        }
        let Some(&(section, key)) = KEYS.iter().find(|(s, k)| env_var(s, k) == *var) else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!("not a configuration variable; {}", known_variables(var)),
            });
        };
        // Numbers and arrays are written as TOML values, anything else is a string. A key
        // that takes a string takes the text as written even when it reads as a number
        // (`ADJUSTD_PATHS_INBOX=2024`), so the plain string is the second try.
        let plain = toml::Value::String(text.clone());
        let parsed = format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_str() || text.starts_with('"'));
        if let Some((_, example)) = LIST_KEYS.iter().find(|(k, _)| *k == (section, key))
            && !parsed.as_ref().is_some_and(toml::Value::is_array)
        {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!(
                    "{text:?} is not a TOML array: a list is written like {var}='{example}' \
                     (a comma may be part of a pattern or an id, so it does not separate items)"
                ),
            });
        }
        let check = |value: &toml::Value| {
            let alone = toml::Table::from_iter([(
                section.to_owned(),
                toml::Value::Table(toml::Table::from_iter([(key.to_owned(), value.clone())])),
            )]);
            FileConfig::deserialize(toml::Value::Table(alone))
        };
        let value = match parsed {
            Some(parsed) => match check(&parsed) {
                Ok(_) => Ok(parsed),
                // The error about the value as written, not about its string.
                Err(error) => check(&plain).map(|_| plain).map_err(|_| error),
            },
            None => check(&plain).map(|_| plain),
        }
        .map_err(|e| ConfigError::Env {
            var: var.clone(),
            message: format!("{text:?} is not a valid [{section}] {key}: {}", e.message()),
        })?;
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(section_table) = entry {
            section_table.insert(key.to_owned(), value);
        }
        env_keys.push((section, key));
    }
    Ok(env_keys)
}

/// The variables of the section `var` seems to mean, or the sections when none matches.
fn known_variables(var: &str) -> String {
    let mut sections: Vec<&str> = KEYS.iter().map(|(section, _)| *section).collect();
    sections.dedup();
    let meant = sections
        .iter()
        .find(|section| var.starts_with(&format!("ADJUSTD_{}_", section.to_uppercase())));
    match meant {
        Some(section) => {
            let vars: Vec<String> = KEYS
                .iter()
                .filter(|(s, _)| s == section)
                .map(|(s, key)| env_var(s, key))
                .collect();
            format!("the [{section}] variables are {}", vars.join(", "))
        }
        None => {
            let sections: Vec<String> = sections.iter().map(|s| s.to_uppercase()).collect();
            format!(
                "overrides are ADJUSTD_<SECTION>_<KEY> with SECTION one of {}",
                sections.join(", ")
            )
        }
    }
}

fn resolve(
    raw: FileConfig,
    file: Option<PathBuf>,
    base: &Path,
    cwd: &Path,
    env_keys: &[(&str, &str)],
) -> Result<Config, BadValue> {
    let paths_file = raw.paths.unwrap_or_default();
    let var = base.join("var");
    // Relative paths from the environment resolve against the current directory.
    let base_of = |section: &str, key: &str| {
        if env_keys.contains(&(section, key)) {
            cwd
        } else {
            base
        }
    };
    // An empty path (typically from a variable set to an unset shell variable) would
    // resolve to the config file's folder or the current directory, silently.
    let path = |key: &'static str, value: Option<PathBuf>| -> Result<PathBuf, BadValue> {
        match value {
            Some(p) if p.as_os_str().is_empty() => Err(BadValue::new(
                "paths",
                key,
                format!(
                    "an empty path names no folder: give the folder, or leave the key out \
                     (and the {} variable unset) for the default var/{key}",
                    env_var("paths", key)
                ),
            )),
            Some(p) => Ok(absolute(base_of("paths", key), &p)),
            None => Ok(var.join(key)),
        }
    };
    let mut inbox = InboxConfig::with_defaults(
        path("inbox", paths_file.inbox)?,
        path("work", paths_file.work)?,
        path("archive", paths_file.archive)?,
        path("failed", paths_file.failed)?,
        path("outbox", paths_file.outbox)?,
    );

    let store_url = match raw.store.and_then(|s| s.url) {
        Some(url) => match url.strip_prefix("sqlite:") {
            // `sqlite:` alone (or a folder such as `sqlite:var/`) would resolve to a folder
            // and fail only when the store is opened. (A folder named without a trailing
            // '/' is found out there, as the store refuses to open a folder.)
            Some(p) if p.ends_with('/') || Path::new(p).file_name().is_none() => {
                return Err(BadValue::new(
                    "store",
                    "url",
                    format!(
                        "{url:?} names no database file: use sqlite:PATH with the file's path \
                         (e.g. sqlite:var/adjustd.db) or postgres://USER@HOST/DB"
                    ),
                ));
            }
            // Other tools read `sqlite://var/x.db` as relative, `sqlite:///var/x.db` as
            // absolute; as a path `//var/x.db` is `/var/x.db`. Refused rather than guessed.
            Some(p) if p.starts_with("//") => {
                return Err(BadValue::new(
                    "store",
                    "url",
                    format!(
                        "{url:?}: adjustd does not take the sqlite:// form, whose meaning differs \
                         between tools; write sqlite:PATH, e.g. sqlite:var/adjustd.db (relative \
                         to the config file's folder) or sqlite:/var/lib/adjustd/adjustd.db"
                    ),
                ));
            }
            Some(p) => format!(
                "sqlite:{}",
                absolute(base_of("store", "url"), Path::new(p)).display()
            ),
            None if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
            None => {
                return Err(BadValue::new(
                    "store",
                    "url",
                    format!(
                        "{:?} is not supported: use sqlite:PATH or postgres://USER@HOST/DB",
                        redact_url(&url)
                    ),
                ));
            }
        },
        None => format!("sqlite:{}", var.join("adjustd.db").display()),
    };

    let inbox_file = raw.inbox.unwrap_or_default();
    if let Some(list) = inbox_file.allowed_merchants {
        let merchants = list
            .iter()
            .enumerate()
            .map(|(index, m)| {
                MerchantId::new(m).ok_or_else(|| BadValue {
                    item: Some(index),
                    ..BadValue::new(
                        "inbox",
                        "allowed_merchants",
                        format!("{m:?} is not a merchant identifier ({})", MerchantId::RULE),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        inbox.allowed_merchants = Some(merchants);
    }
    if let Some(ms) = inbox_file.settle_ms {
        inbox.settle = Duration::from_millis(ms);
    }
    if let Some(ignore) = inbox_file.ignore {
        // The matcher compares a pattern with one file name: these two never match a feed,
        // so they are mistakes, not patterns.
        for (index, pattern) in ignore.iter().enumerate() {
            let problem = if pattern.is_empty() {
                Some("an empty pattern matches no file name".to_owned())
            } else if pattern.contains('/') {
                Some(format!(
                    "{pattern:?} contains '/': a pattern matches a file name (e.g. \"*.tmp\"), \
                     not a path"
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(BadValue {
                    item: Some(index),
                    ..BadValue::new("inbox", "ignore", message)
                });
            }
        }
        inbox.ignore = ignore;
    }
    if let Some(secs) = inbox_file.truncated_grace_secs {
        inbox.truncated_grace = Duration::from_secs(secs);
    }
    // Done markers are off when the key is absent, or set to `DONE_MARKER_OFF`, as the
    // windows are off at 0: so the environment can turn off a marker the file sets. The
    // resolved value has no sentinel. An empty marker would name the feed itself (and is
    // as likely an unset shell variable as a wish), and one with a '/' a file in another
    // folder that is never looked at.
    if let Some(marker) = inbox_file.done_marker {
        if marker.is_empty() {
            return Err(BadValue::new(
                "inbox",
                "done_marker",
                format!(
                    "an empty marker would be the feed's own name: to turn done markers off, \
                     set it to \"{DONE_MARKER_OFF}\" (ADJUSTD_INBOX_DONE_MARKER={DONE_MARKER_OFF} \
                     overrides the file), or leave the key out"
                ),
            ));
        }
        if marker.contains('/') {
            return Err(BadValue::new(
                "inbox",
                "done_marker",
                format!(
                    "{marker:?} contains '/': the marker is appended to the feed's file name \
                     (e.g. \".done\" for NAME.done beside NAME)"
                ),
            ));
        }
        // In any case: `OFF` is no more a marker anybody means than `off`.
        inbox.done_marker = (!marker.eq_ignore_ascii_case(DONE_MARKER_OFF)).then_some(marker);
    }
    if let Some(watch) = inbox_file.watch {
        inbox.watch = match watch {
            WatchFile::Auto => WatchMode::Auto,
            WatchFile::Notify => WatchMode::Notify,
            WatchFile::Poll => WatchMode::Poll,
        };
    }
    if let Some(ms) = inbox_file.poll_interval_ms {
        inbox.poll_interval = Duration::from_millis(positive("inbox", "poll_interval_ms", ms)?);
    }
    if let Some(secs) = inbox_file.rescan_interval_secs {
        inbox.rescan_interval =
            Duration::from_secs(positive("inbox", "rescan_interval_secs", secs)?);
    }

    let limits_file = raw.limits.unwrap_or_default();
    let defaults = Limits::default();
    let limits = Limits {
        max_file_bytes: positive(
            "limits",
            "max_file_bytes",
            limits_file
                .max_file_bytes
                .unwrap_or(defaults.max_file_bytes),
        )?,
        max_depth: limits_file.max_depth.unwrap_or(defaults.max_depth),
        max_text_bytes: positive(
            "limits",
            "max_text_bytes",
            limits_file
                .max_text_bytes
                .unwrap_or(defaults.max_text_bytes),
        )?,
        max_messages: positive(
            "limits",
            "max_messages",
            limits_file.max_messages.unwrap_or(defaults.max_messages),
        )?,
        max_message_bytes: positive(
            "limits",
            "max_message_bytes",
            limits_file
                .max_message_bytes
                .unwrap_or(defaults.max_message_bytes),
        )?,
    };
    if limits.max_depth < 8 {
        return Err(BadValue::new(
            "limits",
            "max_depth",
            format!(
                "{} is too small: an Order Adjustment Feed nests 8 levels deep",
                limits.max_depth
            ),
        ));
    }

    let rules_file = raw.rules.unwrap_or_default();
    let rule_defaults = Rules::default();
    let percent = |key: &'static str, value: Option<u32>, default: u32| match value {
        Some(value) if value > 100 => {
            Err(BadValue::new("rules", key, format!("{value} is above 100")))
        }
        value => Ok(value.unwrap_or(default)),
    };
    let rules = Rules {
        restocking_fee_max_percent: percent(
            "restocking_fee_max_percent",
            rules_file.restocking_fee_max_percent,
            rule_defaults.restocking_fee_max_percent,
        )?,
        restocking_fee_review_percent: percent(
            "restocking_fee_review_percent",
            rules_file.restocking_fee_review_percent,
            rule_defaults.restocking_fee_review_percent,
        )?,
        concession_review_percent: percent(
            "concession_review_percent",
            rules_file.concession_review_percent,
            rule_defaults.concession_review_percent,
        )?,
        // 0 (or no key) turns the window off; the resolved value has no sentinel.
        refund_window_days: rules_file.refund_window_days.and_then(NonZeroU32::new),
        policy: match rules_file.policy {
            None | Some(PolicyFile::Warn) => Policy::Warn,
            Some(PolicyFile::Strict) => Policy::Strict,
        },
        // Not a config key: the daemon sets it for the last retry of a parked feed.
        pin_order_not_found: false,
        // Not a config key either: the daemon sets it for a feed it parks when an order is
        // not found.
        order_not_found_retry_until: None,
        // 0 turns the resubmission warning off.
        resubmission_window_days: rules_file
            .resubmission_window_days
            .unwrap_or(rule_defaults.resubmission_window_days),
    };
    let duplicate_policy = match rules_file.duplicate_feeds {
        None | Some(DuplicateFeeds::Skip) => DuplicatePolicy::Skip,
        Some(DuplicateFeeds::Process) => DuplicatePolicy::Process,
    };

    let parked = path("parked", paths_file.parked)?;
    let mut daemon = DaemonConfig::with_defaults(inbox, parked);
    let daemon_file = raw.daemon.unwrap_or_default();
    if let Some(secs) = daemon_file.shutdown_timeout_secs {
        daemon.shutdown_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = daemon_file.max_backoff_secs {
        daemon.max_backoff = Duration::from_secs(positive("daemon", "max_backoff_secs", secs)?);
    }
    // A window of 0 turns parking off; the resolved value has no sentinel.
    if let Some(secs) = daemon_file.order_not_found_window_secs {
        daemon.order_not_found_window = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(secs) = daemon_file.order_not_found_first_retry_secs {
        daemon.order_not_found_first_retry = Duration::from_secs(positive(
            "daemon",
            "order_not_found_first_retry_secs",
            secs,
        )?);
    }
    daemon.http_listen = raw
        .http
        .and_then(|h| h.listen)
        .map(|addr| {
            addr.parse::<SocketAddr>().map_err(|e| {
                BadValue::new(
                    "http",
                    "listen",
                    format!("{addr:?} is not an address like 127.0.0.1:9187: {e}"),
                )
            })
        })
        .transpose()?;

    Ok(Config {
        file,
        store_url,
        daemon,
        limits,
        rules,
        duplicate_policy,
        log_format: raw.log.and_then(|l| l.format).unwrap_or(LogFormat::Text),
    })
}

fn positive(section: &'static str, key: &'static str, value: u64) -> Result<u64, BadValue> {
    if value == 0 {
        return Err(BadValue::new(
            section,
            key,
            "must be greater than 0".to_owned(),
        ));
    }
    Ok(value)
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    // Lexical clean-up of `.` and `..` so folder comparisons (outbox inside inbox?) work.
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("adjustd.toml");
        std::fs::write(&path, text).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load(Some(&path), &env)
    }

    #[test]
    fn defaults_live_under_var_next_to_the_config_file() {
        let config = load_text("", &[]).expect("empty config is valid");
        let base = config
            .file
            .as_ref()
            .and_then(|f| f.parent())
            .expect("file has a folder");
        assert_eq!(config.daemon.inbox.inbox, base.join("var/inbox"));
        assert_eq!(
            config.store_url,
            format!("sqlite:{}", base.join("var/adjustd.db").display())
        );
        assert_eq!(config.daemon.inbox.settle, Duration::from_secs(1));
        assert_eq!(config.rules, Rules::default());
        assert_eq!(config.rules.restocking_fee_max_percent, 50);
        assert_eq!(config.rules.restocking_fee_review_percent, 20);
        assert_eq!(config.rules.concession_review_percent, 50);
        assert_eq!(config.rules.refund_window_days, None);
        assert_eq!(config.rules.resubmission_window_days, 7);
        assert_eq!(config.duplicate_policy, DuplicatePolicy::Skip);
        assert!(config.daemon.http_listen.is_none());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let config =
            load_text("[paths]\ninbox = \"in\"\noutbox = \"../out\"\n", &[]).expect("valid");
        let base = config
            .file
            .as_ref()
            .and_then(|f| f.parent())
            .expect("folder");
        assert_eq!(config.daemon.inbox.inbox, base.join("in"));
        assert_eq!(
            config.daemon.inbox.outbox,
            base.parent().expect("parent").join("out")
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = load_text("[inbox]\nsettle_secs = 3\n", &[]).expect_err("unknown key");
        assert!(error.to_string().contains("settle_secs"), "{error}");
        let error = load_text("[bogus]\n", &[]).expect_err("unknown section");
        assert!(error.to_string().contains("bogus"), "{error}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load_text(
            "[inbox]\nsettle_ms = 5000\n",
            &[
                ("ADJUSTD_INBOX_SETTLE_MS", "250"),
                ("ADJUSTD_STORE_URL", "postgres://u:secret@h/db"),
            ],
        )
        .expect("valid");
        assert_eq!(config.daemon.inbox.settle, Duration::from_millis(250));
        assert_eq!(config.redacted_store_url(), "postgres://u:***@h/db");
    }

    #[test]
    fn the_policy_warns_unless_set_strict() {
        let policy =
            |text: &str, env: &[(&str, &str)]| load_text(text, env).map(|c| c.rules.policy);
        assert_eq!(policy("", &[]).expect("valid"), Policy::Warn);
        assert_eq!(
            policy("[rules]\npolicy = \"strict\"\n", &[]).expect("valid"),
            Policy::Strict
        );
        assert_eq!(
            policy(
                "[rules]\npolicy = \"strict\"\n",
                &[("ADJUSTD_RULES_POLICY", "warn")]
            )
            .expect("valid"),
            Policy::Warn
        );
        let error = policy("[rules]\npolicy = \"lenient\"\n", &[]).expect_err("unknown value");
        assert!(error.to_string().contains("policy"), "{error}");
        assert!(error.to_string().contains("strict"), "{error}");
    }

    #[test]
    fn the_refund_window_is_off_unless_set_and_the_environment_overrides_it() {
        let days = |text: &str, env: &[(&str, &str)]| {
            load_text(text, env)
                .expect("valid")
                .rules
                .refund_window_days
                .map(NonZeroU32::get)
        };
        assert_eq!(days("[rules]\nrefund_window_days = 30\n", &[]), Some(30));
        assert_eq!(days("[rules]\nrefund_window_days = 0\n", &[]), None);
        assert_eq!(
            days(
                "[rules]\nrefund_window_days = 30\n",
                &[("ADJUSTD_RULES_REFUND_WINDOW_DAYS", "45")]
            ),
            Some(45)
        );
        assert_eq!(
            days(
                "[rules]\nrefund_window_days = 30\n",
                &[("ADJUSTD_RULES_REFUND_WINDOW_DAYS", "0")]
            ),
            None
        );
        let error =
            load_text("", &[("ADJUSTD_RULES_REFUND_WINDOW_DAYS", "-1")]).expect_err("negative");
        assert!(
            error
                .to_string()
                .contains("ADJUSTD_RULES_REFUND_WINDOW_DAYS"),
            "{error}"
        );
        let error =
            load_text("[rules]\nrefund_window_days = \"30d\"\n", &[]).expect_err("not a number");
        assert!(error.to_string().contains("refund_window_days"), "{error}");
    }

    #[test]
    fn order_not_found_parking_has_defaults_overrides_and_an_off_switch() {
        use crate::park::RetryWindow;

        let folder = |config: &Config| {
            config
                .file
                .as_ref()
                .and_then(|f| f.parent())
                .expect("folder")
                .to_path_buf()
        };
        let config = load_text("", &[]).expect("valid");
        assert_eq!(config.daemon.parked, folder(&config).join("var/parked"));
        assert_eq!(
            config.daemon.order_not_found_retry(),
            Some(RetryWindow {
                window: Duration::from_secs(86_400),
                first_retry: Duration::from_secs(60),
            })
        );

        let text = "[paths]\nparked = \"held\"\n\
                    [daemon]\norder_not_found_window_secs = 5\norder_not_found_first_retry_secs = 1\n";
        let config = load_text(text, &[]).expect("valid");
        assert_eq!(config.daemon.parked, folder(&config).join("held"));
        assert_eq!(
            config.daemon.order_not_found_retry(),
            Some(RetryWindow {
                window: Duration::from_secs(5),
                first_retry: Duration::from_secs(1),
            })
        );
        // 0 turns parking off, from the file or the environment.
        let off = load_text("[daemon]\norder_not_found_window_secs = 0\n", &[]).expect("valid");
        assert_eq!(off.daemon.order_not_found_retry(), None);
        let off =
            load_text(text, &[("ADJUSTD_DAEMON_ORDER_NOT_FOUND_WINDOW_SECS", "0")]).expect("valid");
        assert_eq!(off.daemon.order_not_found_retry(), None);
        assert_eq!(
            off.daemon.order_not_found_first_retry,
            Duration::from_secs(1)
        );

        let error =
            load_text("[daemon]\norder_not_found_first_retry_secs = 0\n", &[]).expect_err("zero");
        assert!(
            error
                .to_string()
                .contains("[daemon] order_not_found_first_retry_secs"),
            "{error}"
        );
        let error =
            load_text("[daemon]\norder_not_found_window = 5\n", &[]).expect_err("unknown key");
        assert!(
            error.to_string().contains("order_not_found_window"),
            "{error}"
        );
    }

    #[test]
    fn the_resubmission_window_defaults_to_seven_days_and_the_environment_overrides_it() {
        let days = |text: &str, env: &[(&str, &str)]| {
            load_text(text, env)
                .expect("valid")
                .rules
                .resubmission_window_days
        };
        assert_eq!(days("", &[]), 7);
        assert_eq!(days("[rules]\nresubmission_window_days = 30\n", &[]), 30);
        assert_eq!(days("[rules]\nresubmission_window_days = 0\n", &[]), 0);
        assert_eq!(
            days(
                "[rules]\nresubmission_window_days = 30\n",
                &[("ADJUSTD_RULES_RESUBMISSION_WINDOW_DAYS", "0")]
            ),
            0
        );
        let error = load_text("", &[("ADJUSTD_RULES_RESUBMISSION_WINDOW_DAYS", "-1")])
            .expect_err("negative");
        assert!(
            error
                .to_string()
                .contains("ADJUSTD_RULES_RESUBMISSION_WINDOW_DAYS"),
            "{error}"
        );
        let error = load_text("[rules]\nresubmission_window_days = \"7d\"\n", &[])
            .expect_err("not a number");
        assert!(
            error.to_string().contains("resubmission_window_days"),
            "{error}"
        );
    }

    #[test]
    fn relative_paths_from_the_environment_resolve_against_the_current_directory() {
        let config = load_text(
            "[store]\nurl = \"sqlite:file.db\"\n",
            &[
                ("ADJUSTD_STORE_URL", "sqlite:env.db"),
                ("ADJUSTD_PATHS_OUTBOX", "out"),
            ],
        )
        .expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            config.store_url,
            format!("sqlite:{}", cwd.join("env.db").display())
        );
        assert_eq!(config.daemon.inbox.outbox, cwd.join("out"));
    }

    #[test]
    fn bad_environment_values_name_the_variable_not_the_file() {
        for (var, value) in [
            ("ADJUSTD_INBOX_SETTLE_MS", "fast"),
            ("ADJUSTD_INBOX_WATCH", "inotify"),
            ("ADJUSTD_RULES_RESTOCKING_FEE_MAX_PERCENT", "150"),
            ("ADJUSTD_HTTP_LISTEN", "nowhere"),
        ] {
            let error = load_text("", &[(var, value)]).expect_err("bad value");
            let text = error.to_string();
            assert!(text.contains(var), "{text}");
            assert!(!text.contains("config file"), "{text}");
        }
    }

    #[test]
    fn unknown_environment_variables_are_named_and_the_others_allowed() {
        let error = load_text("", &[("ADJUSTD_STORE_URI", "sqlite:x.db")]).expect_err("typo");
        let text = error.to_string();
        assert!(
            text.contains("ADJUSTD_STORE_URI") && text.contains("ADJUSTD_STORE_URL"),
            "{text}"
        );
        let error = load_text("", &[("ADJUSTD_PATH_INBOX", "in")]).expect_err("typo");
        assert!(error.to_string().contains("ADJUSTD_PATH_INBOX"), "{error}");
        load_text(
            "",
            &[
                ("ADJUSTD_CONFIG", "elsewhere.toml"),
                ("ADJUSTD_REQUIRE_POSTGRES", "1"),
                ("ADJUSTD_TEST_PG_URL", "postgres://postgres@127.0.0.1/test"),
                ("ADJUSTD_STORE_PERF_ADJUSTMENTS", "200000"),
                ("OTHER_STORE_URI", "x"),
            ],
        )
        .expect("not config keys, and documented");
    }

    #[test]
    fn adjustd_config_names_the_file_unless_given_explicitly_and_empty_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("from-env.toml");
        std::fs::write(&file, "[inbox]\nsettle_ms = 7\n").expect("write config");
        let env = |value: &str| vec![(CONFIG_VARIABLE.to_owned(), value.to_owned())];
        let config = load(None, &env(&file.display().to_string())).expect("loads");
        assert_eq!(config.file.as_deref(), Some(file.as_path()));
        assert_eq!(config.daemon.inbox.settle, Duration::from_millis(7));
        for value in ["", "/nonexistent/adjustd.toml"] {
            let error = load(None, &env(value)).expect_err("refused");
            assert!(
                matches!(&error, ConfigError::Env { var, .. } if var == CONFIG_VARIABLE),
                "{value:?}: {error:?}"
            );
        }
        // --config wins over the variable, even an empty one.
        for value in ["", "/nonexistent/adjustd.toml"] {
            let config = load(Some(&file), &env(value)).expect("--config wins");
            assert_eq!(config.file.as_deref(), Some(file.as_path()));
        }
    }

    #[test]
    fn an_empty_path_is_an_error_naming_the_key_or_the_variable() {
        let keys: Vec<&str> = KEYS
            .iter()
            .filter(|(section, _)| *section == "paths")
            .map(|(_, key)| *key)
            .collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        for key in keys {
            // Before the fix: the config file's folder, silently.
            let error = load_text(&format!("[paths]\n{key} = \"\"\n"), &[]).expect_err(key);
            let text = error.to_string();
            assert!(
                text.contains(&format!(
                    "line 2, column {}: [paths] {key}: ",
                    key.len() + 4
                )) && text.contains("empty"),
                "{text}"
            );
            // Before the fix: the current directory, silently.
            let var = env_var("paths", key);
            for value in ["", "\"\""] {
                let error = load_text("", &[(&var, value)]).expect_err(&var);
                assert!(
                    matches!(&error, ConfigError::Env { var: named, .. } if *named == var),
                    "{value:?}: {error:?}"
                );
                assert!(error.to_string().contains("empty"), "{error}");
            }
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let error =
            load_text("[rules]\nrestocking_fee_max_percent = 150\n", &[]).expect_err("range");
        assert!(
            error
                .to_string()
                .contains("[rules] restocking_fee_max_percent"),
            "{error}"
        );
        let error =
            load_text("[rules]\nconcession_review_percent = 101\n", &[]).expect_err("range");
        assert!(
            error
                .to_string()
                .contains("[rules] concession_review_percent"),
            "{error}"
        );
        let error = load_text("[store]\nurl = \"mysql://x\"\n", &[]).expect_err("scheme");
        assert!(error.to_string().contains("[store] url"), "{error}");
        for url in [
            "sqlite:",
            "sqlite:var/",
            "sqlite:/",
            "sqlite:.",
            "sqlite:a/..",
        ] {
            let error =
                load_text(&format!("[store]\nurl = \"{url}\"\n"), &[]).expect_err("names no file");
            assert!(error.to_string().contains("[store] url"), "{url}: {error}");
            assert!(
                error.to_string().contains("names no database file")
                    && !error.to_string().contains("  "),
                "{url}: {error}"
            );
        }
        for url in ["sqlite://var/x.db", "sqlite:///var/x.db"] {
            let error =
                load_text(&format!("[store]\nurl = \"{url}\"\n"), &[]).expect_err("sqlite:// form");
            assert!(
                error
                    .to_string()
                    .contains("does not take the sqlite:// form"),
                "{url}: {error}"
            );
        }
        let error = load_text("", &[("ADJUSTD_STORE_URL", "sqlite:")]).expect_err("empty path");
        assert!(error.to_string().contains("ADJUSTD_STORE_URL"), "{error}");
        let error = load_text("[http]\nlisten = \"nowhere\"\n", &[]).expect_err("addr");
        assert!(error.to_string().contains("[http] listen"), "{error}");
    }

    /// The error's text after the config file's path, which differs per test.
    fn file_error(text: &str) -> String {
        let error = load_text(text, &[]).expect_err("invalid").to_string();
        let (_, after) = error
            .split_once("adjustd.toml")
            .unwrap_or_else(|| panic!("names no file: {error}"));
        after.to_owned()
    }

    #[test]
    fn errors_about_a_key_in_the_file_give_its_line_column_and_key() {
        for (text, expected) in [
            // Found while deserialising.
            (
                "[paths]\ninbox = \"a\"\ninboxx = \"b\"\n",
                ", line 3, column 1: [paths] inboxx: unknown field `inboxx`",
            ),
            (
                "[inbox]\nsettle_ms = \"fast\"\n",
                ", line 2, column 13: [inbox] settle_ms: invalid type",
            ),
            (
                "[inbox]\nwatch = \"inotify\"\n",
                ", line 2, column 9: [inbox] watch: unknown variant `inotify`",
            ),
            (
                "\n[inbox]\nsettle_ms = -1\n",
                ", line 3, column 13: [inbox] settle_ms: invalid value: integer `-1`",
            ),
            (
                "[bogus]\n",
                ", line 1, column 2: [bogus]: unknown field `bogus`",
            ),
            (
                "inbox.settle_ms = -1\n",
                ", line 1, column 19: [inbox] settle_ms: invalid value",
            ),
            (
                "[inbox]\nignore = [\"*.x\", 1]\n",
                ", line 2, column 18: [inbox] ignore: invalid type: integer",
            ),
            // serde's name for the section's Rust type is no help to the reader.
            (
                "paths = 3\n",
                ", line 1, column 9: [paths]: invalid type: integer `3`, expected a table",
            ),
            // Found by the checks after it.
            (
                "[rules]\npolicy = \"warn\"\nrestocking_fee_max_percent = 150\n",
                ", line 3, column 30: [rules] restocking_fee_max_percent: 150 is above 100",
            ),
            (
                "[limits]\nmax_depth = 3\n",
                ", line 2, column 13: [limits] max_depth: 3 is too small",
            ),
            (
                "[inbox]\npoll_interval_ms = 0\n",
                ", line 2, column 20: [inbox] poll_interval_ms: must be greater than 0",
            ),
            (
                "[store]\nurl = \"mysql://x\"\n",
                ", line 2, column 7: [store] url: \"mysql://x\" is not supported",
            ),
            (
                "[http]\nlisten = \"nowhere\"\n",
                ", line 2, column 10: [http] listen: \"nowhere\" is not an address",
            ),
            // A list item is pointed at, not the list.
            (
                "[inbox]\nallowed_merchants = [\"M1\",\n  \" M2\"]\n",
                ", line 3, column 3: [inbox] allowed_merchants: \" M2\" is not a merchant identifier",
            ),
        ] {
            let error = file_error(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn syntax_errors_give_the_line_and_column_too() {
        let error = file_error("[inbox]\nsettle_ms = [\n");
        assert!(error.starts_with(", line 2, column 14: "), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn an_empty_done_marker_is_an_error_that_says_how_to_turn_markers_off() {
        let error = file_error("[inbox]\ndone_marker = \"\"\n");
        assert!(
            error.starts_with(", line 2, column 15: [inbox] done_marker: ")
                && error.contains("leave the key out"),
            "{error}"
        );
        let error = load_text("", &[("ADJUSTD_INBOX_DONE_MARKER", "")])
            .expect_err("empty")
            .to_string();
        assert!(
            error.contains("ADJUSTD_INBOX_DONE_MARKER") && !error.contains("config file"),
            "{error}"
        );
        // A marker is a suffix of the feed's name, so it cannot name another folder.
        let error = file_error("[inbox]\ndone_marker = \"/done\"\n");
        assert!(
            error.starts_with(", line 2, column 15: [inbox] done_marker: "),
            "{error}"
        );
        let config = load_text("[inbox]\ndone_marker = \".ok\"\n", &[]).expect("valid");
        assert_eq!(config.daemon.inbox.done_marker.as_deref(), Some(".ok"));
        let config = load_text("", &[]).expect("valid");
        assert_eq!(config.daemon.inbox.done_marker, None);
    }

    #[test]
    fn done_markers_are_turned_off_by_off_also_from_the_environment_over_the_file() {
        let file = "[inbox]\ndone_marker = \".ok\"\n";
        let config = load_text(file, &[("ADJUSTD_INBOX_DONE_MARKER", "off")]).expect("valid");
        assert_eq!(
            load_text(file, &[("ADJUSTD_INBOX_DONE_MARKER", "OFF")])
                .expect("valid")
                .daemon
                .inbox
                .done_marker,
            None,
            "in any case"
        );
        assert_eq!(config.daemon.inbox.done_marker, None);
        let config = load_text("[inbox]\ndone_marker = \"off\"\n", &[]).expect("valid");
        assert_eq!(config.daemon.inbox.done_marker, None);
        // The empty value stays an error, and names the way to turn markers off.
        let error = load_text(file, &[("ADJUSTD_INBOX_DONE_MARKER", "")])
            .expect_err("empty")
            .to_string();
        assert!(
            error.contains("ADJUSTD_INBOX_DONE_MARKER") && error.contains("\"off\""),
            "{error}"
        );
    }

    #[test]
    fn an_ignore_pattern_that_can_never_match_a_file_name_is_an_error() {
        for pattern in ["", "tmp/*"] {
            let error = file_error(&format!("[inbox]\nignore = [\"*.x\", \"{pattern}\"]\n"));
            assert!(
                error.starts_with(", line 2, column 18: [inbox] ignore: "),
                "{pattern:?}: {error}"
            );
        }
    }

    #[test]
    fn a_list_from_the_environment_must_be_a_toml_array_and_the_error_says_so() {
        let config =
            load_text("", &[("ADJUSTD_INBOX_IGNORE", "[\"*.x\", \"*,v\"]")]).expect("valid");
        assert_eq!(config.daemon.inbox.ignore, ["*.x", "*,v"]);
        for (var, value) in [
            ("ADJUSTD_INBOX_IGNORE", "*.x,*.y"),
            ("ADJUSTD_INBOX_ALLOWED_MERCHANTS", "M1"),
        ] {
            let error = load_text("", &[(var, value)])
                .expect_err("not an array")
                .to_string();
            assert!(
                error.contains(var)
                    && error.contains("TOML array")
                    && error.contains(&format!("{var}='[")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_string_variable_that_looks_like_a_number_is_taken_as_the_string() {
        let config = load_text(
            "",
            &[
                ("ADJUSTD_PATHS_INBOX", "2024"),
                ("ADJUSTD_INBOX_DONE_MARKER", "true"),
            ],
        )
        .expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.daemon.inbox.inbox, cwd.join("2024"));
        assert_eq!(config.daemon.inbox.done_marker.as_deref(), Some("true"));
        // A number key still gets the number's error, not the string's.
        let error = load_text("", &[("ADJUSTD_INBOX_SETTLE_MS", "-1")]).expect_err("negative");
        assert!(error.to_string().contains("integer `-1`"), "{error}");
    }
}
