//! Configuration: the TOML file (raw, every field optional, unknown keys rejected) plus
//! `ADJUSTD_<SECTION>_<KEY>` environment overrides (each checked on its own, so an error
//! names the variable), resolved into one validated [`Config`] with absolute paths,
//! `Duration`s and every default applied in one place. Nothing outside this module sees the
//! raw form, so no command can have defaults of its own.

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

/// Errors while loading the configuration. Each names the file and the key.
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
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said (names the key and line).
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
    /// A value is out of range or contradicts another.
    #[error("config key {key}: {message}")]
    Invalid {
        /// `section.key`, or the environment variable.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
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

/// `ADJUSTD_*` variables that are not config keys but are meant for adjustd or its tests:
/// `ADJUSTD_CONFIG` (the `--config` flag), and the test suite's knobs, which the binary
/// inherits when the tests run it. Any other `ADJUSTD_*` variable that is not a key is an
/// error, so a misspelt override does not go unnoticed.
const OTHER_VARIABLES: &[&str] = &["ADJUSTD_CONFIG"];

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

/// Loads the configuration: `explicit` if given (it must exist), else `./adjustd.toml` if
/// present, else built-in defaults under `./var`; then applies the `ADJUSTD_*` overrides in
/// `env` (`(name, value)` pairs, see [`environment`]). Relative paths from the file resolve
/// against its folder; relative paths from the environment against the current directory,
/// as a person typing a variable in a shell expects.
///
/// # Errors
/// A missing explicit file, bad TOML, an unknown key or `ADJUSTD_*` variable, or an invalid
/// value; each names the file or the variable it came from.
pub fn load(explicit: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
        path: PathBuf::from("."),
        source,
    })?;
    let file = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let default = cwd.join(DEFAULT_CONFIG_FILE);
            default.is_file().then_some(default)
        }
    };
    let (mut table, base) = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
            let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (table, absolute(&cwd, &folder))
        }
        None => (toml::Table::new(), cwd.clone()),
    };
    // The file alone first, so that its errors name the file and not a variable.
    if let Some(path) = &file {
        FileConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })?;
    }
    let env_keys = apply_env(&mut table, env)?;
    let raw: FileConfig =
        FileConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: file.as_ref().map_or_else(
                || "(ADJUSTD_* variables)".to_owned(),
                |p| format!("{} with ADJUSTD_* variables", p.display()),
            ),
            message: e.to_string(),
        })?;
    resolve(raw, file, &base, &cwd, &env_keys).map_err(|error| match error {
        // A bad value that came from a variable: say which variable.
        ConfigError::Invalid { key, message } => match env_keys
            .iter()
            .find(|(section, name)| key == format!("{section}.{name}"))
        {
            Some((section, name)) => ConfigError::Env {
                var: env_var(section, name),
                message: format!("{key}: {message}"),
            },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    })
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
        // Numbers, booleans and arrays are written as TOML values; anything else is a string.
        let value = format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_str() || text.starts_with('"'))
            .unwrap_or_else(|| toml::Value::String(text.clone()));
        let mut alone = toml::Table::new();
        alone.insert(
            section.to_owned(),
            toml::Value::Table(toml::Table::from_iter([(key.to_owned(), value.clone())])),
        );
        FileConfig::deserialize(toml::Value::Table(alone)).map_err(|e| ConfigError::Env {
            var: var.clone(),
            message: format!("{text:?} is not a valid {section}.{key}: {}", e.message()),
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
) -> Result<Config, ConfigError> {
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
    let path = |key: &str, value: Option<PathBuf>, default: &str| -> PathBuf {
        match value {
            Some(p) => absolute(base_of("paths", key), &p),
            None => var.join(default),
        }
    };
    let mut inbox = InboxConfig::with_defaults(
        path("inbox", paths_file.inbox, "inbox"),
        path("work", paths_file.work, "work"),
        path("archive", paths_file.archive, "archive"),
        path("failed", paths_file.failed, "failed"),
        path("outbox", paths_file.outbox, "outbox"),
    );

    let store_url = match raw.store.and_then(|s| s.url) {
        Some(url) => match url.strip_prefix("sqlite:") {
            // `sqlite:` alone (or a folder such as `sqlite:var/`) would resolve to a folder
            // and fail only when the store is opened, with a misleading disk I/O error.
            Some(p) if p.ends_with('/') || Path::new(p).file_name().is_none() => {
                return Err(ConfigError::Invalid {
                    key: "store.url".to_owned(),
                    message: format!(
                        "{url:?} names no database file: use sqlite:PATH with the file's path \
                         (e.g. sqlite:var/adjustd.db) or postgres://USER@HOST/DB"
                    ),
                });
            }
            Some(p) => format!(
                "sqlite:{}",
                absolute(base_of("store", "url"), Path::new(p)).display()
            ),
            None if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
            None => {
                return Err(ConfigError::Invalid {
                    key: "store.url".to_owned(),
                    message: format!(
                        "{:?} is not supported: use sqlite:PATH or postgres://USER@HOST/DB",
                        redact_url(&url)
                    ),
                });
            }
        },
        None => format!("sqlite:{}", var.join("adjustd.db").display()),
    };

    let inbox_file = raw.inbox.unwrap_or_default();
    if let Some(list) = inbox_file.allowed_merchants {
        let merchants = list
            .iter()
            .map(|m| {
                MerchantId::new(m).ok_or_else(|| ConfigError::Invalid {
                    key: "inbox.allowed_merchants".to_owned(),
                    message: format!("{m:?} is not a merchant identifier ({})", MerchantId::RULE),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        inbox.allowed_merchants = Some(merchants);
    }
    if let Some(ms) = inbox_file.settle_ms {
        inbox.settle = Duration::from_millis(ms);
    }
    if let Some(ignore) = inbox_file.ignore {
        inbox.ignore = ignore;
    }
    if let Some(secs) = inbox_file.truncated_grace_secs {
        inbox.truncated_grace = Duration::from_secs(secs);
    }
    inbox.done_marker = inbox_file.done_marker.filter(|m| !m.is_empty());
    if let Some(watch) = inbox_file.watch {
        inbox.watch = match watch {
            WatchFile::Auto => WatchMode::Auto,
            WatchFile::Notify => WatchMode::Notify,
            WatchFile::Poll => WatchMode::Poll,
        };
    }
    if let Some(ms) = inbox_file.poll_interval_ms {
        inbox.poll_interval = Duration::from_millis(positive("inbox.poll_interval_ms", ms)?);
    }
    if let Some(secs) = inbox_file.rescan_interval_secs {
        inbox.rescan_interval = Duration::from_secs(positive("inbox.rescan_interval_secs", secs)?);
    }

    let limits_file = raw.limits.unwrap_or_default();
    let defaults = Limits::default();
    let limits = Limits {
        max_file_bytes: positive(
            "limits.max_file_bytes",
            limits_file
                .max_file_bytes
                .unwrap_or(defaults.max_file_bytes),
        )?,
        max_depth: limits_file.max_depth.unwrap_or(defaults.max_depth),
        max_text_bytes: positive(
            "limits.max_text_bytes",
            limits_file
                .max_text_bytes
                .unwrap_or(defaults.max_text_bytes),
        )?,
        max_messages: positive(
            "limits.max_messages",
            limits_file.max_messages.unwrap_or(defaults.max_messages),
        )?,
    };
    if limits.max_depth < 8 {
        return Err(ConfigError::Invalid {
            key: "limits.max_depth".to_owned(),
            message: format!(
                "{} is too small: an Order Adjustment Feed nests 8 levels deep",
                limits.max_depth
            ),
        });
    }

    let rules_file = raw.rules.unwrap_or_default();
    let rule_defaults = Rules::default();
    let percent = |key: &str, value: Option<u32>, default: u32| match value {
        Some(value) if value > 100 => Err(ConfigError::Invalid {
            key: format!("rules.{key}"),
            message: format!("{value} is above 100"),
        }),
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

    let parked = path("parked", paths_file.parked, "parked");
    let mut daemon = DaemonConfig::with_defaults(inbox, parked);
    let daemon_file = raw.daemon.unwrap_or_default();
    if let Some(secs) = daemon_file.shutdown_timeout_secs {
        daemon.shutdown_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = daemon_file.max_backoff_secs {
        daemon.max_backoff = Duration::from_secs(positive("daemon.max_backoff_secs", secs)?);
    }
    // A window of 0 turns parking off; the resolved value has no sentinel.
    if let Some(secs) = daemon_file.order_not_found_window_secs {
        daemon.order_not_found_window = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(secs) = daemon_file.order_not_found_first_retry_secs {
        daemon.order_not_found_first_retry =
            Duration::from_secs(positive("daemon.order_not_found_first_retry_secs", secs)?);
    }
    daemon.http_listen = raw
        .http
        .and_then(|h| h.listen)
        .map(|addr| {
            addr.parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "http.listen".to_owned(),
                    message: format!("{addr:?} is not an address like 127.0.0.1:9187: {e}"),
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

fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: "must be greater than 0".to_owned(),
        });
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
                .contains("daemon.order_not_found_first_retry_secs"),
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
    fn bad_values_name_the_key() {
        let error =
            load_text("[rules]\nrestocking_fee_max_percent = 150\n", &[]).expect_err("range");
        assert!(
            error
                .to_string()
                .contains("rules.restocking_fee_max_percent"),
            "{error}"
        );
        let error =
            load_text("[rules]\nconcession_review_percent = 101\n", &[]).expect_err("range");
        assert!(
            error
                .to_string()
                .contains("rules.concession_review_percent"),
            "{error}"
        );
        let error = load_text("[store]\nurl = \"mysql://x\"\n", &[]).expect_err("scheme");
        assert!(error.to_string().contains("store.url"), "{error}");
        for url in [
            "sqlite:",
            "sqlite:var/",
            "sqlite:/",
            "sqlite:.",
            "sqlite:a/..",
        ] {
            let error =
                load_text(&format!("[store]\nurl = \"{url}\"\n"), &[]).expect_err("names no file");
            assert!(error.to_string().contains("store.url"), "{url}: {error}");
            assert!(
                error.to_string().contains("names no database file")
                    && !error.to_string().contains("  "),
                "{url}: {error}"
            );
        }
        let error = load_text("", &[("ADJUSTD_STORE_URL", "sqlite:")]).expect_err("empty path");
        assert!(error.to_string().contains("ADJUSTD_STORE_URL"), "{error}");
        let error = load_text("[http]\nlisten = \"nowhere\"\n", &[]).expect_err("addr");
        assert!(error.to_string().contains("http.listen"), "{error}");
    }
}
