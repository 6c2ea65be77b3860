//! Keeps `docs/result-codes.md` and the code table `adjustd::problem::Code` in step: the
//! markdown table must list exactly `Code::ALL`, in the same order, with the same number,
//! name, severity and scope. Does not check the prose columns (meaning, advice, Amazon
//! counterpart); those are for people.

use std::path::Path;

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
