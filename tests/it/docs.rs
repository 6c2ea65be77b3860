//! Keeps the documents in step with what they describe: `docs/result-codes.md` with the
//! code table `adjustd::problem::Code` (the markdown table must list exactly `Code::ALL`, in
//! the same order, with the same number, name, severity and scope; the prose columns are for
//! people and not checked), the install steps of `contrib/adjustd.service` with what each
//! step needs (checked statically: running them takes root), and the exit codes of
//! `adjustd --help` with README's table and `adjustd::cli::exit`. Every source file opens
//! with a module doc.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use adjustd::problem::{Code, Scope, Severity};

/// One row of the result-code table as written in the markdown.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    number: u32,
    name: String,
    severity: String,
    scope: String,
}

/// The rows of the first markdown table whose header starts with `| Number | Name |`.
fn table_rows(markdown: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for (index, line) in markdown.lines().enumerate() {
        let line = line.trim();
        if !in_table {
            in_table = line.starts_with("| Number | Name | Severity | Scope |");
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 7,
            "docs/result-codes.md line {}: expected 7 cells, got {}: {line}",
            index + 1,
            cells.len()
        );
        for (column, cell) in cells.iter().enumerate().skip(4) {
            assert!(
                !cell.is_empty(),
                "docs/result-codes.md line {}: column {} is empty",
                index + 1,
                column + 1
            );
        }
        let number = cells[0].parse().unwrap_or_else(|_| {
            panic!(
                "docs/result-codes.md line {}: {:?} is not a number",
                index + 1,
                cells[0]
            )
        });
        rows.push(Row {
            number,
            name: cells[1].to_owned(),
            severity: cells[2].to_owned(),
            scope: cells[3].to_owned(),
        });
    }
    rows
}

fn expected_rows() -> Vec<Row> {
    Code::ALL
        .iter()
        .map(|code| Row {
            number: code.number(),
            name: code.name().to_owned(),
            severity: match code.severity() {
                Severity::Error => "Error".to_owned(),
                Severity::Warning => "Warning".to_owned(),
            },
            scope: match code.scope() {
                Scope::Feed => "Feed".to_owned(),
                Scope::Message => "Message".to_owned(),
            },
        })
        .collect()
}

#[test]
fn result_codes_doc_lists_exactly_the_code_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/result-codes.md");
    let markdown = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documented = table_rows(&markdown);
    let expected = expected_rows();
    for row in &expected {
        assert!(
            documented.contains(row),
            "docs/result-codes.md lacks (or has a different) row for {row:?}"
        );
    }
    for row in &documented {
        assert!(
            expected.contains(row),
            "docs/result-codes.md has a row that is not in Code::ALL: {row:?}"
        );
    }
    assert_eq!(
        documented, expected,
        "docs/result-codes.md lists the codes in a different order than Code::ALL"
    );
}

#[test]
fn table_parser_sees_a_drifted_row() {
    let markdown = "intro\n\n| Number | Name | Severity | Scope | Meaning | Do | Amazon |\n|---|---|---|---|---|---|---|\n| 6001 | MALFORMED_XML | Warning | Feed | m | d | a |\n\nafter\n| 1 | X | Error | Feed | m | d | a |\n";
    let rows = table_rows(markdown);
    assert_eq!(
        rows,
        vec![Row {
            number: 6001,
            name: "MALFORMED_XML".to_owned(),
            severity: "Warning".to_owned(),
            scope: "Feed".to_owned(),
        }]
    );
    assert!(!expected_rows().contains(&rows[0]));
}

/// Every Rust source file opens with a `//!` paragraph saying what it owns (STYLE 3.1.1).
#[test]
fn every_source_file_opens_with_a_module_doc() {
    fn visit(dir: &std::path::Path, missing: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                visit(&path, missing);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source file");
                if !text.starts_with("//!") {
                    missing.push(path.display().to_string());
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for folder in ["src", "tests", "examples"] {
        visit(&root.join(folder), &mut missing);
    }
    assert!(
        missing.is_empty(),
        "files without a //! module doc: {missing:?}"
    );
}

/// The commands of the "Install" steps in the header of the systemd unit, one a line,
/// split at white space.
fn install_steps(unit: &str) -> Vec<Vec<String>> {
    unit.lines()
        .skip_while(|line| !line.starts_with("# Install"))
        .take_while(|line| *line != "#")
        .filter_map(|line| line.strip_prefix("#   "))
        .map(|command| command.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The values of `key=` lines in the unit, split at white space.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|value| value.split_whitespace().map(str::to_owned))
        .collect()
}

/// The install steps of `contrib/adjustd.service`, followed in order on a fresh host, work:
/// each uses only users, groups, folders and files that exist by then (from the host, the
/// repository or an earlier step); the unit's ReadWritePaths exist (else systemd refuses to
/// start it), its ExecStart names the installed binary and config, and that config loads
/// and keeps every folder and the store where the unit may write. Before the fix the
/// config was installed into /etc/adjustd, which no step created, from an adjustd.toml the
/// repository does not have, and /srv/adjustd was never created.
#[test]
fn the_units_install_steps_work_in_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("contrib/adjustd.service")).expect("unit");
    let steps = install_steps(&unit);
    assert!(steps.len() >= 4, "no install steps found: {steps:?}");
    // What a fresh host has.
    let mut folders: HashSet<PathBuf> = ["/usr/local/bin", "/etc/systemd/system"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut users: HashSet<String> = HashSet::from(["root".to_owned()]);
    let mut groups = users.clone();
    // Installed file → its source in the repository (or the build).
    let mut installed: HashMap<PathBuf, PathBuf> = HashMap::new();
    for (index, step) in steps.iter().enumerate() {
        let at = format!("step {} `{}`", index + 1, step.join(" "));
        match step[0].as_str() {
            "useradd" => {
                let name = step.last().expect("user name").clone();
                if step.iter().any(|arg| arg == "--user-group" || arg == "-U") {
                    groups.insert(name.clone());
                }
                users.insert(name);
            }
            "install" => {
                let (mut directories, mut leading) = (false, false);
                let mut operands = Vec::new();
                let mut args = step[1..].iter();
                while let Some(arg) = args.next() {
                    match arg.as_str() {
                        "-d" => directories = true,
                        "-D" => leading = true,
                        "-m" => {
                            args.next();
                        }
                        "-o" => {
                            let owner = args.next().expect("owner");
                            assert!(users.contains(owner), "{at}: no user {owner} yet");
                        }
                        "-g" => {
                            let group = args.next().expect("group");
                            assert!(groups.contains(group), "{at}: no group {group} yet");
                        }
                        flag if flag.starts_with('-') => panic!("{at}: unexpected option {flag}"),
                        operand => operands.push(PathBuf::from(operand)),
                    }
                }
                if directories {
                    // `install -d` makes the missing parents too.
                    for folder in operands {
                        folders.extend(folder.ancestors().map(Path::to_path_buf));
                    }
                    continue;
                }
                let [source, destination] = &operands[..] else {
                    panic!("{at}: expected SOURCE DESTINATION");
                };
                assert!(
                    source.starts_with("target/release") || root.join(source).is_file(),
                    "{at}: the repository has no {}",
                    source.display()
                );
                let folder = destination.parent().expect("destination folder");
                if leading {
                    folders.extend(folder.ancestors().map(Path::to_path_buf));
                }
                assert!(
                    folders.contains(folder),
                    "{at}: {} does not exist yet",
                    folder.display()
                );
                installed.insert(destination.clone(), source.clone());
            }
            "systemctl" => {}
            program => assert!(
                installed.contains_key(Path::new(program)),
                "{at}: {program} is not installed yet"
            ),
        }
    }

    let state: Vec<PathBuf> = unit_values(&unit, "StateDirectory")
        .iter()
        .map(|name| Path::new("/var/lib").join(name))
        .collect();
    let writable: Vec<PathBuf> = unit_values(&unit, "ReadWritePaths")
        .iter()
        .map(PathBuf::from)
        .collect();
    for path in &writable {
        assert!(
            folders.contains(path) || state.contains(path),
            "ReadWritePaths {} is neither created by a step nor a StateDirectory",
            path.display()
        );
    }
    let exec_start = unit_values(&unit, "ExecStart");
    assert!(
        installed.contains_key(Path::new(&exec_start[0])),
        "ExecStart runs {}, which no step installs",
        exec_start[0]
    );
    let config = exec_start
        .iter()
        .position(|arg| arg == "--config")
        .map(|at| PathBuf::from(&exec_start[at + 1]))
        .expect("ExecStart names its config");
    let source = installed
        .get(&config)
        .unwrap_or_else(|| panic!("no step installs {}", config.display()));

    // The config the steps install loads, and puts every folder and the store where the
    // unit may write (not next to itself in /etc, which ProtectSystem=strict makes
    // read-only).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adjustd"))
        .arg("--config")
        .arg(root.join(source))
        .args(["config", "check"])
        .env_remove("ADJUSTD_CONFIG")
        .output()
        .expect("run adjustd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}: {stderr}", source.display());
    let resolved: toml::Table = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("config check prints TOML");
    let may_write = |path: &str| {
        writable
            .iter()
            .any(|folder| Path::new(path).starts_with(folder))
    };
    let paths = resolved["paths"].as_table().expect("[paths]");
    assert_eq!(paths.len(), 6, "{paths:?}");
    for (key, value) in paths {
        let path = value.as_str().expect("a path");
        assert!(
            may_write(path),
            "[paths] {key} = {path} is not in ReadWritePaths"
        );
    }
    let url = resolved["store"]["url"].as_str().expect("store url");
    if let Some(path) = url.strip_prefix("sqlite:") {
        assert!(
            may_write(path),
            "[store] url {url} is not in ReadWritePaths"
        );
    }
}

#[test]
fn the_install_step_reader_sees_the_steps() {
    let unit = "# unit\n#\n# Install (as root;\n# more):\n#   useradd -U u\n#   install -d /x\n#\n# after\n#   not a step\n[Unit]\n";
    assert_eq!(
        install_steps(unit),
        vec![
            vec!["useradd".to_owned(), "-U".to_owned(), "u".to_owned()],
            vec!["install".to_owned(), "-d".to_owned(), "/x".to_owned()],
        ]
    );
    assert_eq!(
        unit_values(
            "ReadWritePaths=/a /b\nX=1\nReadWritePaths=/c\n",
            "ReadWritePaths"
        ),
        vec!["/a", "/b", "/c"]
    );
}

/// White space collapsed to single blanks, markdown's code backticks dropped.
fn plain(text: &str) -> String {
    text.replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows of README's "Exit codes" table, as (code, meaning in plain text).
fn readme_exit_codes(markdown: &str) -> Vec<(u8, String)> {
    markdown
        .lines()
        .skip_while(|line| line.trim() != "### Exit codes")
        .skip_while(|line| !line.starts_with("| code |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let (code, meaning) = line
                .trim_matches('|')
                .split_once('|')
                .unwrap_or_else(|| panic!("README exit-code row without cells: {line}"));
            let code = code
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("README exit-code row without a code: {line}"));
            (code, plain(meaning))
        })
        .collect()
}

/// The entries of the exit-code list of `adjustd --help`, as (code, meaning in plain
/// text): each starts with a line `  CODE  meaning`, and the lines after it that start
/// otherwise continue it (clap may wrap them), up to the first line without indentation.
fn help_exit_codes(help: &str) -> Vec<(u8, String)> {
    let mut entries: Vec<(u8, String)> = Vec::new();
    for line in help
        .lines()
        .skip_while(|line| *line != "Exit codes:")
        .skip(1)
        .take_while(|line| line.starts_with(' '))
    {
        let trimmed = line.trim_start();
        let code = trimmed
            .split_once(' ')
            .and_then(|(code, _)| code.parse::<u8>().ok());
        match (code, entries.last_mut()) {
            (Some(code), _) if line.starts_with("  ") && !line.starts_with("   ") => {
                entries.push((code, trimmed[code.to_string().len()..].to_owned()));
            }
            (_, Some((_, meaning))) => {
                meaning.push(' ');
                meaning.push_str(trimmed);
            }
            (_, None) => panic!("--help: text before the first exit code: {line}"),
        }
    }
    entries
        .into_iter()
        .map(|(code, meaning)| (code, plain(&meaning)))
        .collect()
}

/// `adjustd --help`, which an operator reads first, lists the exit codes README lists, with
/// the same words, and they are the codes of `adjustd::cli::exit`. Before the fix the help
/// left out the store path under 1, `orders import` of a missing file or a folder under 2
/// and `orders show` of an id several merchants have under 64.
#[test]
fn help_and_readme_list_the_same_exit_codes() {
    use adjustd::cli::exit;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let documented = readme_exit_codes(&readme);
    let codes: Vec<u8> = documented.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        codes,
        [
            exit::OK,
            exit::CONFIG,
            exit::RUNTIME,
            exit::INPUT,
            exit::USAGE,
            exit::INTERRUPTED
        ]
    );
    for columns in ["200", "60"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_adjustd"))
            .arg("--help")
            .env("COLUMNS", columns)
            .output()
            .expect("run adjustd");
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        let listed = help_exit_codes(&help);
        for ((code, in_help), (_, in_readme)) in listed.iter().zip(&documented) {
            assert_eq!(
                in_help, in_readme,
                "exit code {code}, --help with COLUMNS={columns}"
            );
        }
        assert_eq!(listed, documented, "--help with COLUMNS={columns}:\n{help}");
    }
}

#[test]
fn the_exit_code_readers_see_the_entries() {
    let markdown = "x\n### Exit codes\n\n| code | meaning |\n|---|---|\n| 0 | ok `a`  b |\n| 64 | usage |\n\nafter\n| 9 | no |\n";
    assert_eq!(
        readme_exit_codes(markdown),
        vec![(0, "ok a b".to_owned()), (64, "usage".to_owned())]
    );
    let help = "Usage: x\n\nExit codes:\n  0    ok a\n       b\n  64   usage (also\n  wrapped)\n  130  run\nWith several files\n  9  no\n";
    assert_eq!(
        help_exit_codes(help),
        vec![
            (0, "ok a b".to_owned()),
            (64, "usage (also wrapped)".to_owned()),
            (130, "run".to_owned())
        ]
    );
}
