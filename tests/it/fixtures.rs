//! Fixture-driven feed tests: every `tests/data/feeds/{ok,invalid,malformed}/NAME.xml` is
//! read and validated with default limits and rules, rendered as stable text and compared
//! with `NAME.expected` beside it. `UPDATE_EXPECT=1 cargo test --test it fixtures`
//! rewrites the expected files (review the diff by eye). Adding a case means adding two
//! files; no Rust changes. Does not touch a store: this is `feed` + `validate` only.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::model::{AdjustmentMessage, ItemRef, OrderRef};
use adjustd::problem::{Code, Problem, Scope};
use adjustd::validate::{ValidatedMessage, Validator};

/// Codes that only the XML reader produces (the `malformed` directory).
const XML_CODES: &[Code] = &[
    Code::MalformedXml,
    Code::Truncated,
    Code::DtdForbidden,
    Code::UnsupportedEncoding,
    Code::LimitExceeded,
];

/// Every code `validate` can produce; the fixtures must show each at least once.
const VALIDATE_CODES: &[Code] = &[
    Code::MalformedXml,
    Code::Truncated,
    Code::DtdForbidden,
    Code::UnsupportedEncoding,
    Code::LimitExceeded,
    Code::EnvelopeInvalid,
    Code::WrongMessageType,
    Code::SchemaInvalid,
    Code::UnknownAdjustmentReason,
    Code::UnknownComponentType,
    Code::AmountFormat,
    Code::AmountPrecision,
    Code::QuantityInvalid,
    Code::CurrencyUnknown,
    Code::CurrencyMismatch,
    Code::DuplicateMessageId,
    Code::DuplicateComponent,
    Code::CancelReasonInvalid,
    Code::CancelWithoutQuantity,
    Code::NegativeRefundComponent,
    Code::RestockingFeeExceedsLimit,
    Code::NetNotCredit,
    Code::LinkedItemFailed,
];

fn feeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/feeds")
}

/// Reads a feed and renders what came out: the header and each message (valid ones as
/// the typed model, invalid ones as their problems), or the feed-level problem.
pub fn render(path: &Path, codes: &mut BTreeSet<Code>) -> String {
    render_with_buffer(path, 8 * 1024, codes)
}

/// [`render`] through a `BufReader` of the given capacity (tiny ones split every token,
/// character and line across reads).
pub fn render_with_buffer(path: &Path, capacity: usize, codes: &mut BTreeSet<Code>) -> String {
    let file = File::open(path).expect("fixture opens");
    let mut validator = Validator::new(
        BufReader::with_capacity(capacity, file),
        Limits::default(),
        &Rules::default(),
    );
    let mut out = String::new();
    let feed_problem = |out: &mut String, problem: &Problem, codes: &mut BTreeSet<Code>| {
        assert_eq!(problem.code.scope(), Scope::Feed, "{problem}");
        codes.insert(problem.code);
        let faults = text_faults(problem);
        assert!(faults.is_empty(), "{}: {faults:#?}", path.display());
        writeln!(out, "rejected: {}", line(problem)).expect("write to String");
    };
    match validator.header() {
        Ok(header) => writeln!(
            out,
            "header: DocumentVersion {}, MerchantIdentifier {}",
            header.document_version, header.merchant
        )
        .expect("write to String"),
        Err(problem) => {
            feed_problem(&mut out, &problem, codes);
            return out;
        }
    }
    loop {
        match validator.next_message() {
            Ok(None) => break,
            Ok(Some(ValidatedMessage::Valid(message))) => render_message(&mut out, &message),
            Ok(Some(ValidatedMessage::Invalid {
                message_id,
                problems,
                ..
            })) => {
                assert!(!problems.is_empty(), "an invalid message has problems");
                writeln!(out, "message {message_id}: invalid").expect("write to String");
                for problem in &problems {
                    assert_eq!(problem.code.scope(), Scope::Message, "{problem}");
                    assert_eq!(problem.message_id, message_id);
                    codes.insert(problem.code);
                    let faults = text_faults(problem);
                    assert!(faults.is_empty(), "{}: {faults:#?}", path.display());
                    writeln!(out, "  {}", line(problem)).expect("write to String");
                }
            }
            Err(problem) => {
                feed_problem(&mut out, &problem, codes);
                break;
            }
        }
    }
    out
}

/// What is wrong with the words of a problem, by the texts' conventions: the fix is a
/// capitalised sentence that ends with a full stop; no Rust escapes (`\u{a0}`, `\"`) reach
/// a seller (values are quoted with `problem::quoted`); counts agree with their nouns
/// (`problem::count`); "cannot" is one word.
pub fn text_faults(problem: &Problem) -> Vec<String> {
    let mut faults = Vec::new();
    let fix = problem.fix.as_ref();
    if !fix.starts_with(|c: char| c.is_uppercase()) || !fix.ends_with('.') {
        faults.push(format!("the fix is not a capitalised sentence: {fix:?}"));
    }
    for text in [problem.description.as_str(), fix] {
        if text.contains("\\u{") || text.contains("\\\"") {
            faults.push(format!("a Rust escape: {text:?}"));
        }
        if text.to_lowercase().contains("can not") {
            faults.push(format!("\"can not\": {text:?}"));
        }
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '(')
            .map(|word| word.trim_end_matches([',', ';', ':', '.', ')']))
            .collect();
        for (index, _) in words.iter().enumerate().filter(|(_, w)| **w == "1") {
            let mut nouns = words[index + 1..].iter();
            let mut noun = nouns.next().copied().unwrap_or_default();
            if matches!(noun, "fraction" | "integer" | "significant") {
                noun = nouns.next().copied().unwrap_or_default();
            }
            if noun.len() > 2 && noun.ends_with('s') && noun != "was" {
                faults.push(format!("\"1 {noun}\": {text:?}"));
            }
        }
        if text.contains("at most 0 ") {
            faults.push(format!("\"at most 0\": {text:?}"));
        }
    }
    faults
}

fn line(problem: &Problem) -> String {
    let mut text = problem.to_string();
    if let Some(order) = &problem.amazon_order_id {
        write!(text, " [order {order}]").expect("write to String");
    }
    if let Some(item) = &problem.amazon_order_item_code {
        write!(text, " [item {item}]").expect("write to String");
    }
    text
}

fn render_message(out: &mut String, message: &AdjustmentMessage) {
    let order = match &message.order {
        OrderRef::Amazon(id) => format!("AmazonOrderID {id}"),
        OrderRef::Merchant(id) => format!("MerchantOrderID {id:?}", id = id.as_str()),
    };
    let action = message.action.map_or("-".to_owned(), |a| a.to_string());
    let currency = message.currency.map_or("-".to_owned(), |c| c.to_string());
    writeln!(
        out,
        "message {} at {}: {order}, action {action}, currency {currency}",
        message.message_id, message.position
    )
    .expect("write to String");
    for item in &message.items {
        let item_ref = match &item.item {
            ItemRef::Amazon(code) => format!("AmazonOrderItemCode {code}"),
            ItemRef::Merchant(id) => format!("MerchantOrderItemID {:?}", id.as_str()),
        };
        let key = item
            .key
            .as_ref()
            .map_or("-".to_owned(), |k| format!("{:?}", k.as_str()));
        let qc = item
            .quantity_cancelled
            .map_or("-".to_owned(), |q| q.get().to_string());
        let q = item
            .quantity
            .map_or("-".to_owned(), |q| q.get().to_string());
        writeln!(
            out,
            "  item at {}: {item_ref}, key {key}, reason {}, quantity_cancelled {qc}, quantity {q}",
            item.position, item.reason
        )
        .expect("write to String");
        for amount in &item.amounts {
            writeln!(
                out,
                "    {} {} at {}",
                amount.component, amount.amount, amount.position
            )
            .expect("write to String");
        }
    }
}

#[test]
fn feed_fixtures_match_their_expected_rendering() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut codes = BTreeSet::new();
    let mut failures = Vec::new();
    let mut n_cases = 0;
    for dir in ["ok", "invalid", "malformed"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(feeds_dir().join(dir))
            .expect("fixture dir exists")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "xml"))
            .collect();
        paths.sort();
        for path in paths {
            n_cases += 1;
            let mut case_codes = BTreeSet::new();
            let actual = render(&path, &mut case_codes);
            match dir {
                "ok" => assert!(
                    case_codes.is_empty(),
                    "{}: ok fixture has problems:\n{actual}",
                    path.display()
                ),
                "invalid" => assert!(
                    !case_codes.is_empty() && case_codes.iter().all(|c| !XML_CODES.contains(c)),
                    "{}: invalid fixture must have validation problems only:\n{actual}",
                    path.display()
                ),
                _ => assert!(
                    case_codes.len() == 1 && case_codes.iter().all(|c| XML_CODES.contains(c)),
                    "{}: malformed fixture must have one reader problem:\n{actual}",
                    path.display()
                ),
            }
            codes.extend(case_codes);
            let expected_path = path.with_extension("expected");
            if update {
                std::fs::write(&expected_path, &actual).expect("write expected");
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}+++ actual\n{actual}",
                    path.display()
                ));
            }
        }
    }
    assert!(n_cases >= 40, "only {n_cases} fixtures");
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ (UPDATE_EXPECT=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
    let missing: Vec<&Code> = VALIDATE_CODES
        .iter()
        .filter(|c| !codes.contains(c))
        .collect();
    assert!(missing.is_empty(), "no fixture shows {missing:?}");
}

#[test]
fn rendering_does_not_depend_on_how_the_bytes_arrive() {
    for dir in ["ok", "invalid", "malformed"] {
        for entry in std::fs::read_dir(feeds_dir().join(dir)).expect("fixture dir exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "xml") {
                continue;
            }
            let whole = render(&path, &mut BTreeSet::new());
            for capacity in [1, 2, 3, 5, 7, 64] {
                let split = render_with_buffer(&path, capacity, &mut BTreeSet::new());
                assert_eq!(
                    whole,
                    split,
                    "{} with a {capacity}-byte buffer",
                    path.display()
                );
            }
        }
    }
}
