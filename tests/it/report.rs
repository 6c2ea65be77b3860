//! Tests of `adjustd::report`: golden XML and JSON reports (`tests/data/reports/`,
//! regenerated with `UPDATE_EXPECT=1`), schema validation of every golden XML with `xmllint`
//! against `schemas/amzn-envelope.xsd`, the JSON round trip, escaping of hostile text, report
//! file names, and atomic writes on a real folder. Does not test how the pipeline builds an
//! outcome.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use adjustd::model::{MerchantId, MessageId, Position};
use adjustd::problem::{Code, Problem, Severity};
use adjustd::report::{
    FeedOutcome, ReportError, XML_PIECE_BYTES, json_result_codes, parse_json, render_json,
    render_json_line, render_xml, report_paths, result_description, write_atomic,
    write_atomic_with, write_json, write_reports, write_xml,
};
use adjustd::store::FeedStatus;
use proptest::prelude::*;
use quick_xml::events::Event;

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn message(id: u64) -> MessageId {
    MessageId::new(id).expect("test message ids are positive")
}

fn merchant(raw: &str) -> MerchantId {
    MerchantId::new(raw).expect("test merchant ids are valid")
}

fn at(line: u32, column: u32) -> Option<Position> {
    Some(Position { line, column })
}

fn outcome(feed_id: u64, file_name: &str, merchant_id: Option<&str>) -> FeedOutcome {
    FeedOutcome {
        feed_id,
        file_name: file_name.to_owned(),
        merchant: merchant_id.map(merchant),
        status: FeedStatus::Complete,
        duplicate_of: None,
        content_hash: HASH.to_owned(),
        processed_at: "2026-11-30T11:45:07Z".to_owned(),
        messages_processed: 0,
        messages_successful: 0,
        messages_with_error: 0,
        messages_with_warning: 0,
        results: Vec::new(),
    }
}

/// The golden cases: name and outcome. Adding a case here and running with
/// `UPDATE_EXPECT=1` creates its two files.
fn golden_cases() -> Vec<(&'static str, FeedOutcome)> {
    let all_ok = FeedOutcome {
        messages_processed: 3,
        messages_successful: 3,
        ..outcome(12, "refunds-2026-11-30.xml", Some("A2EUQ1WTGCTBG2"))
    };

    let mixed = FeedOutcome {
        messages_processed: 9,
        messages_successful: 6,
        messages_with_error: 3,
        messages_with_warning: 1,
        results: vec![
            Problem::new(
                Code::ComponentExceedsRemaining,
                message(7),
                "AdjustedItem[1]/ItemPriceAdjustments/Component[2]/Amount",
                at(41, 9),
                "refund of Principal 30.00 USD exceeds the 12.50 USD that remains refundable \
                 (charged 50.00, refunded 37.50)",
                "lower the amount to at most 12.50, or check whether this refund was already sent",
            )
            .with_order(Some("112-3456789-0123456".to_owned()))
            .with_item(Some("12345678901234".to_owned())),
            Problem::new(
                Code::OrderNotFound,
                message(8),
                "OrderAdjustment/AmazonOrderID",
                at(52, 7),
                "order 114-0000000-0000000 does not exist for merchant A2EUQ1WTGCTBG2",
                "use an AmazonOrderID from your order report, or import the order first",
            )
            .with_order(Some("114-0000000-0000000".to_owned())),
            Problem::new(
                Code::DuplicateAdjustment,
                message(9),
                "OrderAdjustment/AdjustedItem[1]/MerchantAdjustmentItemID",
                at(66, 9),
                "identical to the adjustment applied in feed 10 under MerchantAdjustmentItemID \
                 RMA-771; not applied again",
                "",
            )
            .with_order(Some("112-3456789-0123456".to_owned()))
            .with_item(Some("123456789012345".to_owned())),
            // A malformed order id from a bad feed stays in the description and the JSON,
            // but is left out of AdditionalInfo so the report stays schema-valid.
            Problem::new(
                Code::SchemaInvalid,
                message(10),
                "OrderAdjustment/AmazonOrderID",
                at(80, 7),
                "\"112-345\" does not match the pattern 3-7-7 letters or digits",
                "copy the AmazonOrderID exactly as it appears in your order report",
            )
            .with_order(Some("112-345".to_owned())),
        ],
        ..outcome(13, "refunds 2026-11-30 (2).xml", Some("A2EUQ1WTGCTBG2"))
    };

    let rejected = FeedOutcome {
        status: FeedStatus::Rejected,
        messages_with_error: 1,
        results: vec![Problem::new(
            Code::MalformedXml,
            MessageId::FEED,
            "",
            at(3, 14),
            "XML parsing fatal error: expected '>' after the name of element Header",
            "repair the file so it is well-formed XML and drop it again",
        )],
        ..outcome(14, "-broken.xml", None)
    };

    // The warning is the feed's, not a message's: the summary counts no message.
    let duplicate = FeedOutcome {
        duplicate_of: Some(12),
        results: vec![Problem::new(
            Code::DuplicateFeed,
            MessageId::FEED,
            "AmazonEnvelope",
            None,
            "the same bytes were already processed for merchant A2EUQ1WTGCTBG2; nothing was \
             applied again",
            "nothing to do if the repeat was accidental; to send new adjustments, drop a new \
             feed with new MerchantAdjustmentItemIDs",
        )],
        ..outcome(15, "refunds-2026-11-30.xml", Some("A2EUQ1WTGCTBG2"))
    };

    let hostile = FeedOutcome {
        messages_processed: 1,
        messages_with_error: 1,
        results: vec![
            Problem::new(
                Code::SchemaInvalid,
                message(1),
                "OrderAdjustment/MerchantOrderID",
                at(9, 3),
                "value \"]]><script>alert('x')</script>&amp;\u{0}\u{7}\u{1b}[31m\u{fffe}\" \
             has control characters\r\nand markup",
                "remove < & > from the value",
            )
            .with_order(Some("1<2-3456789-0123456".to_owned())),
        ],
        ..outcome(16, "naïve café ✓.xml", Some("M&<'\"> x"))
    };

    vec![
        ("all_ok", all_ok),
        ("mixed_errors_warnings", mixed),
        ("feed_rejected", rejected),
        ("duplicate_feed", duplicate),
        ("hostile_text", hostile),
    ]
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reports")
}

fn update_expect() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_EXPECT=1`. Returns a
/// failure description instead of panicking so one run reports every mismatch.
fn check_golden(path: &Path, actual: &str) -> Option<String> {
    if update_expect() {
        fs::create_dir_all(path.parent().expect("golden files live in a folder"))
            .expect("create tests/data/reports");
        fs::write(path, actual).expect("write golden file");
        return None;
    }
    match fs::read_to_string(path) {
        Ok(expected) if expected == actual => None,
        Ok(expected) => Some(format!(
            "{} differs (rerun with UPDATE_EXPECT=1 to accept)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(err) => Some(format!(
            "{}: {err} (run with UPDATE_EXPECT=1 to create it)",
            path.display()
        )),
    }
}

#[test]
fn golden_reports_match() {
    let dir = data_dir();
    let failures: Vec<String> = golden_cases()
        .iter()
        .flat_map(|(name, outcome)| {
            [
                check_golden(&dir.join(format!("{name}.xml")), &render_xml(outcome)),
                check_golden(&dir.join(format!("{name}.json")), &render_json(outcome)),
            ]
        })
        .flatten()
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn golden_json_parses_back_to_its_outcome() {
    let dir = data_dir();
    for (name, outcome) in golden_cases() {
        let path = dir.join(format!("{name}.json"));
        let text = fs::read_to_string(&path).expect("golden json exists");
        let parsed = parse_json(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert_eq!(parsed, outcome, "{}", path.display());
    }
}

#[test]
fn json_line_is_one_line_with_the_same_report() {
    for (name, outcome) in golden_cases() {
        let line = render_json_line(&outcome);
        // The hostile case has CR LF in a description: escaped, never a raw line break.
        assert_eq!(line.matches(['\n', '\r']).count(), 1, "{name}: {line}");
        assert!(line.ends_with('\n'), "{name}");
        let parsed = parse_json(&line).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(parsed, outcome, "{name}");
        let pretty: serde_json::Value =
            serde_json::from_str(&render_json(&outcome)).expect("pretty JSON");
        let compact: serde_json::Value = serde_json::from_str(&line).expect("one-line JSON");
        assert_eq!(compact, pretty, "{name}: the same document");
    }
}

/// Runs xmllint, or returns None (after saying so) when it is not installed and
/// `ADJUSTD_REQUIRE_XMLLINT=1` is not set.
fn xmllint(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    match Command::new("xmllint").args(args).output() {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let required =
                std::env::var("ADJUSTD_REQUIRE_XMLLINT").is_ok_and(|v| v == "1" || v == "true");
            assert!(
                !required,
                "xmllint is not installed but ADJUSTD_REQUIRE_XMLLINT=1"
            );
            eprintln!(
                "SKIPPED: xmllint not found; report XML not checked against the schema \
                 (install libxml2-utils, or set ADJUSTD_REQUIRE_XMLLINT=1 to make this fail)"
            );
            None
        }
        Err(err) => panic!("running xmllint: {err}"),
    }
}

#[test]
fn golden_xml_is_valid_against_the_envelope_schema() {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/amzn-envelope.xsd");
    let dir = data_dir();
    let files: Vec<PathBuf> = golden_cases()
        .iter()
        .map(|(name, _)| dir.join(format!("{name}.xml")))
        .collect();
    let mut args = vec![
        "--noout".as_ref(),
        "--nonet".as_ref(),
        "--schema".as_ref(),
        schema.as_os_str(),
    ];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let Some(output) = xmllint(&args) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "xmllint failed:\n{stderr}");
    for file in &files {
        assert!(
            stderr.contains(&format!("{} validates", file.display())),
            "{} not reported valid:\n{stderr}",
            file.display()
        );
    }
}

#[test]
fn random_reports_validate_against_the_envelope_schema() {
    // Hostile random text, odd merchants, malformed order facts: the report must stay valid.
    // One xmllint run over all files keeps this fast.
    use proptest::strategy::ValueTree;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/amzn-envelope.xsd");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut files = Vec::new();
    for index in 0..40 {
        let mut outcome = arb_outcome()
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        // Feed ids come from the store and start at 1 (IDNumber is a positive integer).
        outcome.feed_id = outcome.feed_id.max(1);
        let file = dir.path().join(format!("random-{index}.xml"));
        fs::write(&file, render_xml(&outcome)).expect("write");
        files.push(file);
    }
    let mut args = vec![
        "--noout".as_ref(),
        "--nonet".as_ref(),
        "--schema".as_ref(),
        schema.as_os_str(),
    ];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let Some(output) = xmllint(&args) else {
        return;
    };
    assert!(
        output.status.success(),
        "xmllint failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rendered_xml_of_random_outcomes_is_well_formed_and_keeps_the_text() {
    // Random hostile text through a real XML parser: the description must come back as
    // written, minus only the characters XML cannot carry.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_outcome(), |outcome| {
            let xml = render_xml(&outcome);
            let descriptions = result_descriptions(&xml);
            let expected: Vec<String> = outcome
                .results
                .iter()
                .map(|p| xml_clean(&result_description(&outcome, p)))
                .collect();
            prop_assert_eq!(descriptions, expected);
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{err}"));
}

/// The text a conforming parser must read back for `text`.
fn xml_clean(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
        })
        .collect()
}

/// Every `ResultDescription` text, read with quick-xml (which fails on malformed markup).
fn result_descriptions(xml: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut found = Vec::new();
    let mut inside = false;
    let mut text = String::new();
    loop {
        match reader.read_event().expect("report XML is well-formed") {
            Event::Start(start) if start.name().as_ref() == "ResultDescription" => {
                inside = true;
                text.clear();
            }
            Event::End(end) if end.name().as_ref() == "ResultDescription" => {
                inside = false;
                found.push(std::mem::take(&mut text));
            }
            Event::Text(t) if inside => {
                text.push_str(&t.xml10_content());
            }
            Event::GeneralRef(r) if inside => {
                if let Some(c) = r.resolve_char_ref().expect("valid character reference") {
                    text.push(c);
                } else {
                    let name: &str = &r;
                    let resolved = quick_xml::escape::resolve_predefined_entity(name)
                        .unwrap_or_else(|| panic!("undeclared entity &{name};"));
                    text.push_str(resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    found
}

#[test]
fn hostile_text_is_escaped() {
    let (_, hostile) = golden_cases()
        .into_iter()
        .find(|(name, _)| *name == "hostile_text")
        .expect("hostile case exists");
    let xml = render_xml(&hostile);
    assert!(!xml.contains("]]>"), "{xml}");
    assert!(!xml.contains("<script"), "{xml}");
    assert!(
        !xml.chars()
            .any(|c| (c < ' ' && c != '\n') || c == '\u{fffe}'),
        "control characters left in:\n{xml}"
    );
    assert!(xml.contains("<MerchantIdentifier>M&amp;&lt;'\"&gt; x</MerchantIdentifier>"));
    // The malformed order id is not put into AdditionalInfo (it would break the schema).
    assert!(!xml.contains("<AdditionalInfo>"), "{xml}");
    let descriptions = result_descriptions(&xml);
    assert_eq!(
        descriptions,
        vec![
            "Message 1, line 9:3, OrderAdjustment/MerchantOrderID: value \
             \"]]><script>alert('x')</script>&amp;[31m\" has control characters\r\nand markup. \
             Fix: remove < & > from the value."
                .to_owned()
        ]
    );
    // Well-formedness by a second, independent parser when there is one.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hostile.xml");
    fs::write(&file, &xml).expect("write");
    if let Some(output) = xmllint(&["--noout".as_ref(), file.as_os_str()]) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn descriptions_name_where_what_and_how_to_fix() {
    let cases = golden_cases();
    let (_, mixed) = &cases[1];
    assert_eq!(
        result_description(mixed, &mixed.results[0]),
        "Message 7, line 41:9, AdjustedItem[1]/ItemPriceAdjustments/Component[2]/Amount: \
         refund of Principal 30.00 USD exceeds the 12.50 USD that remains refundable \
         (charged 50.00, refunded 37.50). Fix: lower the amount to at most 12.50, or check \
         whether this refund was already sent."
    );
    // No fix given: no "Fix:" part.
    assert!(!result_description(mixed, &mixed.results[2]).contains("Fix:"));
    let (_, duplicate) = &cases[3];
    let text = result_description(duplicate, &duplicate.results[0]);
    assert!(text.starts_with("Feed, AmazonEnvelope: "), "{text}");
    assert!(text.contains("duplicate of feed 12"), "{text}");
    let (_, rejected) = &cases[2];
    let text = result_description(rejected, &rejected.results[0]);
    assert!(text.starts_with("Feed, line 3:14: XML parsing"), "{text}");
    // An empty description falls back to the code's summary rather than saying nothing.
    let bare = Problem::new(Code::Truncated, MessageId::FEED, "", None, "", "");
    assert_eq!(
        result_description(rejected, &bare),
        format!("Feed: {}.", Code::Truncated.summary())
    );
}

#[test]
fn xml_has_the_envelope_summary_and_results_in_order() {
    let cases = golden_cases();
    let (_, rejected) = &cases[2];
    let xml = render_xml(rejected);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AmazonEnvelope"));
    assert!(xml.contains("<MerchantIdentifier>UNKNOWN</MerchantIdentifier>"));
    assert!(xml.contains("<DocumentTransactionID>14</DocumentTransactionID>"));
    assert!(xml.contains("<StatusCode>Rejected</StatusCode>"));
    assert!(xml.contains("<MessageID>0</MessageID>"));
    assert!(xml.contains("<ResultMessageCode>6001</ResultMessageCode>"));
    let (_, mixed) = &cases[1];
    let xml = render_xml(mixed);
    assert_eq!(xml.matches("<Result>").count(), 4);
    assert!(xml.contains("<ResultCode>Warning</ResultCode>"));
    assert!(xml.contains(
        "<AdditionalInfo>\n          <AmazonOrderID>112-3456789-0123456</AmazonOrderID>\n          \
         <AmazonOrderItemCode>12345678901234</AmazonOrderItemCode>\n        </AdditionalInfo>"
    ));
    let order: Vec<usize> = [
        "<MessageID>7</MessageID>",
        "<MessageID>8</MessageID>",
        "<MessageID>9</MessageID>",
        "<MessageID>10</MessageID>",
    ]
    .iter()
    .map(|needle| xml.find(needle).expect("each message has a result"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

/// Text that is often hostile: C0 controls, markup, `]]>`, non-characters, CR/LF, Unicode.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "([\\x00-\\x1f<>&\"' a-z\u{e9}\u{1f600}\u{fffe}\u{ffff}\u{85}]|\\]\\]>|\r\n){0,30}",
    ]
}

fn arb_code() -> impl Strategy<Value = Code> {
    prop::sample::select(Code::ALL.to_vec())
}

fn arb_problem() -> impl Strategy<Value = Problem> {
    (
        // A policy warning may be an error (the strict policy).
        (arb_code(), any::<bool>()),
        prop_oneof![Just(0u64), any::<u64>()],
        arb_text(),
        proptest::option::of((any::<u32>(), any::<u32>())),
        arb_text(),
        arb_text(),
        proptest::option::of(prop_oneof![
            Just("112-3456789-0123456".to_owned()),
            arb_text()
        ]),
        proptest::option::of(prop_oneof![
            Just("12345678901234".to_owned()),
            "[0-9]{13,16}"
        ]),
    )
        .prop_map(
            |((code, strict), id, element, position, description, fix, order, item)| Problem {
                code,
                severity: if strict && code.is_policy() {
                    Severity::Error
                } else {
                    code.severity()
                },
                message_id: MessageId::new(id).unwrap_or(MessageId::FEED),
                element,
                position: position.map(|(line, column)| Position { line, column }),
                description,
                fix: fix.into(),
                amazon_order_id: order,
                amazon_order_item_code: item,
            },
        )
}

fn arb_outcome() -> impl Strategy<Value = FeedOutcome> {
    (
        (
            any::<u64>(),
            arb_text(),
            proptest::option::of("[A-Za-z0-9 &<>'\"_.\u{e9}-]{1,50}"),
            prop_oneof![Just(FeedStatus::Complete), Just(FeedStatus::Rejected)],
            proptest::option::of(any::<u64>()),
            "[0-9a-f]{64}",
            arb_text(),
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        prop::collection::vec(arb_problem(), 0..5),
    )
        .prop_map(
            |(
                (feed_id, file_name, merchant_id, status, duplicate_of, content_hash, at_time),
                (processed, successful, with_error, with_warning),
                results,
            )| FeedOutcome {
                feed_id,
                file_name,
                merchant: merchant_id.as_deref().and_then(MerchantId::new),
                status,
                duplicate_of,
                content_hash,
                processed_at: at_time,
                messages_processed: processed,
                messages_successful: successful,
                messages_with_error: with_error,
                messages_with_warning: with_warning,
                results,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trips(outcome in arb_outcome()) {
        let json = render_json(&outcome);
        prop_assert!(json.ends_with("}\n"), "no trailing newline");
        let parsed = parse_json(&json).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(&parsed, &outcome);
        // Re-emission from the stored JSON gives the same bytes.
        prop_assert_eq!(render_json(&parsed), json);
        prop_assert_eq!(render_xml(&parsed), render_xml(&outcome));
    }
}

#[test]
fn json_has_the_documented_keys_in_order() {
    let cases = golden_cases();
    let (_, mixed) = &cases[1];
    let json = render_json(mixed);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["status"], "Complete");
    assert_eq!(value["summary"]["messages_with_error"], 3);
    assert_eq!(value["results"][0]["code"], 18016);
    assert_eq!(
        value["results"][0]["code_name"],
        "COMPONENT_EXCEEDS_REMAINING"
    );
    assert_eq!(value["results"][0]["result"], "Error");
    assert_eq!(value["results"][0]["line"], 41);
    assert_eq!(value["results"][2]["result"], "Warning");
    let keys = [
        "\"schema_version\"",
        "\"feed_id\"",
        "\"file_name\"",
        "\"merchant\"",
        "\"status\"",
        "\"duplicate_of\"",
        "\"content_hash\"",
        "\"processed_at\"",
        "\"summary\"",
        "\"results\"",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| json.find(k).expect("key present"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
}

#[test]
fn parse_json_refuses_what_no_report_holds() {
    let cases = golden_cases();
    let (_, mixed) = &cases[1];
    let json = render_json(mixed);

    assert!(matches!(
        parse_json("not json"),
        Err(ReportError::Syntax(_))
    ));
    assert!(matches!(
        parse_json(&json.replace("\"schema_version\": 1", "\"schema_version\": 2")),
        Err(ReportError::UnsupportedVersion { found: 2 })
    ));
    // The number and the name must name one code (5000 is shared by two).
    let err = parse_json(&json.replace("\"code\": 18016", "\"code\": 5000"))
        .expect_err("number and name disagree");
    assert!(err.to_string().contains("results[0].code"), "{err}");
    let err = parse_json(&json.replacen("\"result\": \"Error\"", "\"result\": \"Warning\"", 1))
        .expect_err("result disagrees with the code");
    assert!(err.to_string().contains("results[0].result"), "{err}");
    let err = parse_json(&json.replacen("\"column\": 9", "\"column\": null", 1))
        .expect_err("half a position");
    assert!(err.to_string().contains("results[0].line"), "{err}");
    let err = parse_json(&json.replace("\"A2EUQ1WTGCTBG2\"", "\"../etc\""))
        .expect_err("merchant with a path separator");
    assert!(err.to_string().contains("merchant"), "{err}");
    // The two codes that share 5000 are told apart by name.
    let dup = parse_json(&json).expect("valid");
    assert_eq!(dup.results[2].code, Code::DuplicateAdjustment);
    assert_eq!(dup.results[3].code, Code::SchemaInvalid);
}

#[test]
fn report_paths_follow_the_contract() {
    let outbox = Path::new("/srv/adjustd/outbox");
    let (xml, json) = report_paths(outbox, None, "refunds.xml", 42);
    assert_eq!(xml, outbox.join("refunds.xml.42.report.xml"));
    assert_eq!(json, outbox.join("refunds.xml.42.report.json"));

    let m = merchant("A2EUQ1WTGCTBG2");
    let (xml, json) = report_paths(outbox, Some(&m), "refunds.xml", 7);
    assert_eq!(xml, outbox.join("A2EUQ1WTGCTBG2/refunds.xml.7.report.xml"));
    assert_eq!(
        json,
        outbox.join("A2EUQ1WTGCTBG2/refunds.xml.7.report.json")
    );

    // Odd but harmless names are kept as they are.
    for name in [
        "-rf refunds.xml",
        "naïve café ✓.xml",
        "a b  c",
        "..",
        "x\\y",
    ] {
        let (xml, _) = report_paths(outbox, None, name, 1);
        assert_eq!(xml.parent(), Some(outbox), "{name}");
        assert_eq!(
            xml.file_name().and_then(|n| n.to_str()),
            Some(format!("{name}.1.report.xml").as_str())
        );
    }
    // Separators cannot walk out of the folder.
    for name in ["../escape.xml", "/etc/passwd", "a/../../b", "nul\0byte"] {
        let (xml, json) = report_paths(outbox, Some(&m), name, 3);
        assert_eq!(
            xml.parent(),
            Some(outbox.join("A2EUQ1WTGCTBG2").as_path()),
            "{name}"
        );
        assert_eq!(json.parent(), xml.parent(), "{name}");
        assert_eq!(xml.components().count(), outbox.components().count() + 2);
    }
    // Overlong names are cut (at a character boundary) to fit a 255-byte file name.
    let long = "é".repeat(200);
    let (xml, json) = report_paths(outbox, None, &long, u64::MAX);
    for path in [&xml, &json] {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(name.starts_with("éé"));
    }
    assert!(
        xml.to_str()
            .expect("utf-8")
            .ends_with(".18446744073709551615.report.xml")
    );
}

fn folder_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_replaces_content_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("outbox/M1/feed.xml.1.report.json");
    write_atomic(&target, b"first version, rather long\n").expect("first write");
    assert_eq!(
        fs::read(&target).expect("read"),
        b"first version, rather long\n"
    );
    write_atomic(&target, b"second\n").expect("second write");
    assert_eq!(fs::read(&target).expect("read"), b"second\n");
    assert_eq!(
        folder_entries(target.parent().expect("parent")),
        vec!["feed.xml.1.report.json"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&target)
            .expect("metadata")
            .permissions()
            .mode();
        assert_ne!(mode & 0o044, 0, "reports are readable by others: {mode:o}");
    }
}

#[test]
fn write_atomic_fails_cleanly_when_the_folder_cannot_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("outbox");
    fs::write(&blocker, "a file where the folder should be").expect("write");
    let err = write_atomic(&blocker.join("r.json"), b"x").expect_err("parent is a file");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory
        ),
        "{err:?}"
    );
    // A report path that is a folder: the rename fails and the temp file is removed.
    let folder_in_the_way = dir.path().join("out/x.json");
    fs::create_dir_all(&folder_in_the_way).expect("mkdir");
    fs::write(folder_in_the_way.join("keep"), "x").expect("write");
    write_atomic(&folder_in_the_way, b"x").expect_err("cannot replace a non-empty folder");
    assert_eq!(folder_entries(&dir.path().join("out")), vec!["x.json"]);
}

#[test]
fn write_reports_writes_both_and_rewrites_identically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = golden_cases();
    let (_, mixed) = &cases[1];
    let m = merchant("A2EUQ1WTGCTBG2");
    let outbox = dir.path().join("outbox");
    let (xml_path, json_path) = report_paths(&outbox, Some(&m), &mixed.file_name, mixed.feed_id);
    write_reports(mixed, &xml_path, &json_path).expect("write");
    let xml = fs::read(&xml_path).expect("xml written");
    let json = fs::read(&json_path).expect("json written");
    assert_eq!(xml, render_xml(mixed).as_bytes());

    // Re-emission after a crash: from the stored JSON, same bytes.
    let stored = parse_json(std::str::from_utf8(&json).expect("utf-8")).expect("parse");
    write_reports(&stored, &xml_path, &json_path).expect("rewrite");
    assert_eq!(fs::read(&xml_path).expect("xml"), xml);
    assert_eq!(fs::read(&json_path).expect("json"), json);
    assert_eq!(
        folder_entries(&outbox.join("A2EUQ1WTGCTBG2")),
        vec![
            "refunds 2026-11-30 (2).xml.13.report.json",
            "refunds 2026-11-30 (2).xml.13.report.xml"
        ]
    );
}

/// An outcome listing as many results as a report lists at most, each the size of a
/// `POSSIBLE_RESUBMISSION` warning (about a kilobyte of text): tens of megabytes of report.
fn full_outcome() -> FeedOutcome {
    let max = adjustd::problem::MAX_RESULTS;
    let results = (1..=max as u64)
        .map(|id| {
            Problem::new(
                Code::PossibleResubmission,
                message(id),
                "Message/OrderAdjustment/AdjustedItem[1]/MerchantAdjustmentItemID",
                at(id as u32, 9),
                format!("AdjustedItem[1] has the same content as the adjustment applied in message {} of this feed {}", id - 1, "x".repeat(300)),
                "Nothing to do if a second refund was meant. ".repeat(10),
            )
            .with_order(Some("900-0000001-0000001".to_owned()))
            .with_item(Some("90000000000001".to_owned()))
        })
        .collect();
    FeedOutcome {
        messages_processed: max as u64,
        messages_successful: max as u64,
        messages_with_warning: max as u64,
        results,
        ..outcome(7, "hot.xml", Some("M_BENCH"))
    }
}

/// A writer that keeps what it is given and the largest piece it was given at once.
#[derive(Default)]
struct Pieces {
    bytes: Vec<u8>,
    largest: usize,
    count: usize,
}

impl std::io::Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.largest = self.largest.max(buf.len());
        self.count += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_xml_of_a_full_report_is_written_in_pieces_not_held_whole() {
    // Before, the XML report was rendered into one string (for 20 000 results, 23 MB
    // growing to a 40 MB allocation) and then written: one piece of the whole size.
    let outcome = full_outcome();
    let mut pieces = Pieces::default();
    write_xml(&outcome, &mut pieces).expect("write");
    assert_eq!(pieces.bytes, render_xml(&outcome).as_bytes());
    assert!(
        pieces.bytes.len() > 300 * XML_PIECE_BYTES,
        "{}",
        pieces.bytes.len()
    );
    // A piece is at most XML_PIECE_BYTES and one more result.
    assert!(
        pieces.largest < XML_PIECE_BYTES + 4096,
        "largest piece {} of {} bytes in {} pieces",
        pieces.largest,
        pieces.bytes.len(),
        pieces.count
    );
}

#[test]
fn the_json_of_a_full_report_is_written_in_pieces_and_held_only_for_the_store() {
    // The report file is rendered straight into its temp file. The feed record's copy is
    // one string of exactly its length; before, it grew by doubling (a 33.5 MB allocation
    // for a 21.6 MB report) and was rendered a second time, into another such string, for
    // the file.
    let outcome = full_outcome();
    let json = render_json(&outcome);
    assert_eq!(json.capacity(), json.len());
    let line = render_json_line(&outcome);
    assert_eq!(line.capacity(), line.len());
    let mut pieces = Pieces::default();
    write_json(&outcome, &mut pieces).expect("write");
    assert_eq!(pieces.bytes, json.as_bytes());
    assert!(
        pieces.bytes.len() > 300 * XML_PIECE_BYTES,
        "{}",
        pieces.bytes.len()
    );
    assert!(
        pieces.largest < 4096,
        "largest piece {} of {} bytes in {} pieces",
        pieces.largest,
        pieces.bytes.len(),
        pieces.count
    );
}

#[test]
fn a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("r.xml");
    write_atomic(&target, b"old\n").expect("first write");
    let err = write_atomic_with(&target, |out| {
        out.write_all(&[b'x'; 3 * XML_PIECE_BYTES])?;
        Err(std::io::Error::other("the writer gave up"))
    })
    .expect_err("fails");
    assert_eq!(err.to_string(), "the writer gave up");
    assert_eq!(fs::read(&target).expect("old file"), b"old\n");
    assert_eq!(folder_entries(dir.path()), vec!["r.xml"]);
}

#[test]
fn the_codes_of_a_stored_report_are_read_without_its_texts() {
    let cases = golden_cases();
    let (_, mixed) = &cases[1];
    let codes = json_result_codes(&render_json(mixed)).expect("a report");
    let expected: Vec<Option<u32>> = mixed
        .results
        .iter()
        .map(|p| Some(p.code.number()))
        .collect();
    assert_eq!(codes, expected);
    assert_eq!(json_result_codes("{\"results\": [{}]}"), Some(vec![None]));
    assert_eq!(json_result_codes("not json"), None);
    assert_eq!(json_result_codes("{\"messages\": 3}"), None);
}
