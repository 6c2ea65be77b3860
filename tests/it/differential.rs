//! Differential test of adjustd's schema layer against `xmllint` and the project's own XSDs
//! (`schemas/amzn-envelope.xsd`): every feed fixture (`tests/data/feeds/**`,
//! `tests/data/schemas/**`), 40 random valid feeds and at least 500 seeded random
//! mutations of them must get the same valid/invalid verdict from both. Also checks that
//! the schemas' enumerations equal the model's lists. Does not test business rules, problem
//! texts or positions: only the verdict.
//!
//! adjustd's *schema verdict* is "invalid" when `Validator` reports at least one problem
//! whose code an XSD can express: SCHEMA_INVALID, UNKNOWN_ADJUSTMENT_REASON,
//! UNKNOWN_COMPONENT_TYPE, AMOUNT_FORMAT, QUANTITY_INVALID, CURRENCY_UNKNOWN,
//! ENVELOPE_INVALID, MALFORMED_XML, TRUNCATED, and WRONG_MESSAGE_TYPE (the schema's
//! MessageType enumeration and Message choice express it, except in the case below).
//!
//! AMOUNT_PRECISION counts too when it names an Amount with more than 4 significant fraction
//! digits: no currency has more, so adjustd reports such an amount as too precise, and the
//! schema's `fractionDigits` 4 rejects it. The test finds those amounts in the file itself
//! and matches them to the problems by line and column. It does the same for the
//! AMOUNT_FORMAT that is no schema rule: an Amount with a `currency` attribute too large for
//! the i64 minor units adjustd holds money in, or an AdjustedItem whose amounts each fit but
//! whose net does not (in the message's currency); those do not count.
//!
//! Documented exceptions, i.e. checks adjustd makes that no XSD (or no XSD the project could
//! keep equal to Amazon's) can express. Their codes never count for the schema verdict:
//! DUPLICATE_MESSAGE_ID, CURRENCY_MISMATCH, AMOUNT_PRECISION within 4 fraction digits
//! (fraction digits per currency), CANCEL_REASON_INVALID, CANCEL_WITHOUT_QUANTITY,
//! NEGATIVE_REFUND_COMPONENT, RESTOCKING_FEE_EXCEEDS_LIMIT, NET_NOT_CREDIT,
//! DUPLICATE_COMPONENT (and every store or feed-policy code). Files in which one of the following occurs are not compared at all,
//! because there adjustd is stricter than the schema on purpose (or libxml2 has a limit the
//! schema does not), and the test counts them and keeps them rare:
//! - a MessageType from the schema's enumeration that is not OrderAdjustment (adjustd
//!   rejects the feed with WRONG_MESSAGE_TYPE, the schema accepts it);
//! - a Message holding a ProcessingReport (valid in the shared envelope, not a feed);
//! - an empty MerchantOrderID or MerchantOrderItemID (the schema's `String` allows empty;
//!   an empty id cannot name an order);
//! - a MerchantIdentifier that cannot name a merchant folder (empty, `.`, `..`, `/`, `\`,
//!   control characters; see `model::MerchantId`);
//! - a MessageID above u64::MAX or a Quantity/QuantityCancelled above u32::MAX (the schema's
//!   IDNumber and positiveInteger allow more than adjustd stores);
//! - a number with more than 24 digits (libxml2 cannot hold it and rejects it although the
//!   XSD value space allows it, e.g. `1.` followed by 24 zeros);
//! - an EffectiveDate with whitespace around the value (XSD collapses whitespace around an
//!   xs:dateTime, libxml2 2.9 does not and rejects it; adjustd follows the XSD);
//! - a gzip-compressed file (`xmllint` unpacks it and judges the XML inside; adjustd
//!   rejects it as compressed, MALFORMED_XML);
//! - a DOCTYPE, a non-UTF-8 encoding declaration or a text longer than the reader's limit,
//!   and any file adjustd refuses with DTD_FORBIDDEN, UNSUPPORTED_ENCODING or
//!   LIMIT_EXCEEDED (feed-level refusals that are policy, not schema: adjustd stops reading
//!   there, so it has no schema verdict on the rest).
//!
//! The mutations use a tiny seeded PRNG: set `ADJUSTD_DIFF_SEED` to replay a run and
//! `ADJUSTD_DIFF_CASES` to change the number of mutations (default 600). On a mismatch the
//! test prints the seed, the case, the mutation and both verdicts, and keeps the file under
//! `target/differential-failures/`. Without `xmllint` on the PATH the test prints SKIPPED
//! and passes, unless `ADJUSTD_REQUIRE_XMLLINT=1` (CI), where it fails.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use adjustd::engine::Rules;
use adjustd::feed::Limits;
use adjustd::model::{AdjustmentReason, Amount, Currency, MerchantId, Position, PriceComponent};
use adjustd::problem::{Code, Problem};
use adjustd::validate::MESSAGE_TYPES;
use adjustd::validate::{ValidatedMessage, Validator};
use quick_xml::Reader;
use quick_xml::events::Event;

/// Codes whose condition the project's XSDs express too.
const XSD_CODES: &[Code] = &[
    Code::SchemaInvalid,
    Code::UnknownAdjustmentReason,
    Code::UnknownComponentType,
    Code::AmountFormat,
    Code::QuantityInvalid,
    Code::CurrencyUnknown,
    Code::EnvelopeInvalid,
    Code::MalformedXml,
    Code::Truncated,
    Code::WrongMessageType,
];

/// Feed-level refusals that are policy, not schema: they stop reading before the rest of
/// the file is checked, so such a file has no schema verdict to compare.
const POLICY_CODES: &[Code] = &[
    Code::DtdForbidden,
    Code::UnsupportedEncoding,
    Code::LimitExceeded,
];

const DEFAULT_SEED: u64 = 0x5EED_AD7D;
const DEFAULT_CASES: usize = 600;

// ---------------------------------------------------------------------------------------
// The test entry points.

#[test]
fn fixtures_get_the_same_verdict_as_xmllint() {
    if !xmllint_present() {
        return;
    }
    let root = manifest_dir();
    let mut files = Vec::new();
    for dir in ["tests/data/feeds", "tests/data/schemas"] {
        collect_xml_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() >= 10,
        "expected feed fixtures under tests/data, found {}",
        files.len()
    );
    let cases: Vec<Case> = files
        .iter()
        .map(|path| Case {
            label: path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string(),
            mutation: "fixture".to_owned(),
            bytes: std::fs::read(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
            expect_valid: None,
        })
        .collect();
    let summary = compare(&cases, "fixtures", None);
    eprintln!("differential fixtures: {summary}");
}

#[test]
fn random_mutations_get_the_same_verdict_as_xmllint() {
    if !xmllint_present() {
        return;
    }
    let seed = env_number("ADJUSTD_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let count = env_number("ADJUSTD_DIFF_CASES")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_CASES);
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();
    let bases: Vec<Element> = (0..40).map(|_| valid_feed(&mut rng)).collect();
    for (index, base) in bases.iter().enumerate() {
        cases.push(Case {
            label: format!("base-{index:03}"),
            mutation: "none (generated valid feed)".to_owned(),
            bytes: base.to_document().into_bytes(),
            expect_valid: Some(true),
        });
    }
    for index in 0..count {
        let base = &bases[rng.below(bases.len())];
        let (bytes, mutation) = mutate(base, &mut rng);
        cases.push(Case {
            label: format!("case-{index:04}"),
            mutation,
            bytes,
            expect_valid: None,
        });
    }
    let summary = compare(&cases, "mutations", Some(seed));
    eprintln!("differential mutations (seed {seed:#x}): {summary}");
    assert!(
        summary.compared >= 500 && summary.exempt * 10 <= cases.len(),
        "too few comparable cases: {summary}"
    );
    assert!(
        summary.invalid * 4 >= summary.compared && summary.valid * 10 >= summary.compared,
        "the mutations should give a mix of valid and invalid feeds: {summary}"
    );
}

#[test]
fn schemas_accept_the_good_samples_and_reject_the_bad() {
    if !xmllint_present() {
        return;
    }
    for (dir, expect_valid) in [("valid", true), ("invalid", false)] {
        let mut files = Vec::new();
        collect_xml_files(
            &manifest_dir().join("tests/data/schemas").join(dir),
            &mut files,
        );
        assert!(
            files.len() >= 3,
            "too few samples in tests/data/schemas/{dir}"
        );
        let verdicts = run_xmllint(&files);
        for file in &files {
            let verdict = &verdicts[file];
            assert_eq!(
                verdict.valid,
                expect_valid,
                "{}: {:?}",
                file.display(),
                verdict.messages
            );
            assert!(!verdict.internal_error, "{}", file.display());
        }
    }
}

#[test]
fn schema_enumerations_equal_the_model() {
    let base = read_schema("amzn-base.xsd");
    let adjustment = read_schema("OrderAdjustment.xsd");
    let reasons = enumeration(&adjustment, "AdjustmentReasonType");
    let expected: Vec<&str> = AdjustmentReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        reasons, expected,
        "AdjustmentReasonType vs AdjustmentReason::ALL"
    );
    let components = enumeration(&adjustment, "AdjustmentComponentType");
    let expected: Vec<&str> = PriceComponent::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        components, expected,
        "AdjustmentComponentType vs PriceComponent::ALL"
    );

    // The model's currency table is private; read its source so the lists cannot drift.
    let model = std::fs::read_to_string(manifest_dir().join("src/model.rs"))
        .unwrap_or_else(|e| panic!("reading src/model.rs: {e}"));
    let table_start = model
        .find("const CURRENCIES")
        .unwrap_or_else(|| panic!("src/model.rs has no CURRENCIES table"));
    let table_end = table_start
        + model[table_start..]
            .find("];")
            .unwrap_or_else(|| panic!("CURRENCIES table is not closed"));
    let model_codes: Vec<&str> = model[table_start..table_end]
        .split("(\"")
        .skip(1)
        .filter_map(|rest| rest.get(..3))
        .collect();
    let schema_codes = enumeration(&base, "BaseCurrencyCode");
    assert!(
        model_codes.len() > 100,
        "parsed {} codes",
        model_codes.len()
    );
    assert_eq!(schema_codes, model_codes, "BaseCurrencyCode vs CURRENCIES");
    for code in &schema_codes {
        assert!(Currency::from_code(code).is_some(), "{code}");
    }
}

// ---------------------------------------------------------------------------------------
// Comparing verdicts.

/// One file to judge.
struct Case {
    label: String,
    mutation: String,
    bytes: Vec<u8>,
    /// Set for files whose verdict is known in advance (generated valid feeds).
    expect_valid: Option<bool>,
}

#[derive(Debug, Default)]
struct Summary {
    compared: usize,
    valid: usize,
    invalid: usize,
    exempt: usize,
    /// How often each exemption applied (first reason per file).
    reasons: std::collections::BTreeMap<String, usize>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} compared ({} valid, {} invalid), {} exempt {:?}",
            self.compared, self.valid, self.invalid, self.exempt, self.reasons
        )
    }
}

/// Writes the cases to a temporary folder, runs xmllint once on all of them and compares
/// each verdict with adjustd's. Panics with every mismatch.
fn compare(cases: &[Case], what: &str, seed: Option<u64>) -> Summary {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let paths: Vec<PathBuf> = cases
        .iter()
        .map(|case| {
            let path = dir.path().join(format!("{}.xml", sanitize(&case.label)));
            std::fs::write(&path, &case.bytes)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        })
        .collect();
    let xmllint = run_xmllint(&paths);
    let mut summary = Summary::default();
    let mut failures = String::new();
    for (case, path) in cases.iter().zip(&paths) {
        let scan = scan(&case.bytes);
        if let Some(reason) = scan.exemptions.first() {
            summary.exempt += 1;
            let kind: String = reason
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            *summary.reasons.entry(kind).or_default() += 1;
            continue;
        }
        let lint = &xmllint[path];
        let ours = adjustd_verdict(&case.bytes);
        if let Ok(verdict) = &ours
            && let Some(problem) = verdict
                .problems
                .iter()
                .find(|p| POLICY_CODES.contains(&p.code))
        {
            summary.exempt += 1;
            *summary
                .reasons
                .entry(problem.code.name().to_owned())
                .or_default() += 1;
            continue;
        }
        let mismatch = match &ours {
            Err(panic) => Some(format!("adjustd panicked: {panic}")),
            Ok(_) if lint.internal_error => Some("xmllint failed internally".to_owned()),
            Ok(verdict) if verdict.valid(&scan) != lint.valid => Some(format!(
                "xmllint says {}, adjustd says {}",
                if lint.valid { "valid" } else { "invalid" },
                if verdict.valid(&scan) {
                    "valid"
                } else {
                    "invalid"
                }
            )),
            Ok(_) if case.expect_valid.is_some_and(|v| v != lint.valid) => {
                Some("a generated valid feed is not valid".to_owned())
            }
            Ok(_) => None,
        };
        match mismatch {
            None => {
                summary.compared += 1;
                if lint.valid {
                    summary.valid += 1;
                } else {
                    summary.invalid += 1;
                }
            }
            Some(why) => {
                let kept = keep_failure(&case.label, &case.bytes);
                let _ = writeln!(
                    failures,
                    "\n--- {what} {} (seed {}): {why}\n    mutation: {}\n    file: {}",
                    case.label,
                    seed.map_or("-".to_owned(), |s| format!("{s:#x}")),
                    case.mutation,
                    kept.display()
                );
                for line in lint.messages.iter().take(4) {
                    let line: String = line.chars().take(300).collect();
                    let _ = writeln!(failures, "    xmllint: {line}");
                }
                if let Ok(verdict) = &ours {
                    for problem in verdict.problems.iter().take(6) {
                        let _ = writeln!(failures, "    adjustd: {problem}");
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "adjustd and xmllint disagree (replay with ADJUSTD_DIFF_SEED):{failures}"
    );
    summary
}

/// What adjustd's validator said about a whole file.
struct AdjustdVerdict {
    problems: Vec<Problem>,
}

impl AdjustdVerdict {
    /// Valid for the schema layer: no problem the XSD could have found (an AMOUNT_PRECISION
    /// on an amount with more than 4 fraction digits is one, an AMOUNT_FORMAT for an amount
    /// too large for minor units is none; see the module doc).
    fn valid(&self, scan: &Scan) -> bool {
        let at = |p: &Problem, positions: &[Position]| {
            p.position.is_some_and(|at| positions.contains(&at))
        };
        !self.problems.iter().any(|p| {
            (XSD_CODES.contains(&p.code)
                && !(p.code == Code::AmountFormat && at(p, &scan.too_large_for_minor_units)))
                || (p.code == Code::AmountPrecision && at(p, &scan.over_precise_amounts))
        })
    }
}

/// Runs the validator over the whole file, collecting every problem; a panic is returned as
/// text so the failing file can be named.
fn adjustd_verdict(bytes: &[u8]) -> Result<AdjustdVerdict, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let rules = Rules::default();
        let mut validator = Validator::new(bytes, Limits::default(), &rules);
        let mut problems = Vec::new();
        if let Err(problem) = validator.header() {
            problems.push(problem);
            return AdjustdVerdict { problems };
        }
        // A feed of n bytes cannot hold more than n messages; the bound only guards the
        // test against a validator that never ends.
        for _ in 0..=bytes.len() {
            match validator.next_message() {
                Ok(None) => return AdjustdVerdict { problems },
                Ok(Some(ValidatedMessage::Valid(_))) => {}
                Ok(Some(ValidatedMessage::Invalid {
                    problems: found, ..
                })) => problems.extend(found),
                Err(problem) => {
                    problems.push(problem);
                    return AdjustdVerdict { problems };
                }
            }
        }
        panic!("the validator returned more messages than the file has bytes");
    }))
    .map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic without a message".to_owned())
    })
}

/// xmllint's verdict on one file.
struct XmllintVerdict {
    valid: bool,
    /// libxml2 gave up (it cannot validate entity references, for one); no verdict.
    internal_error: bool,
    messages: Vec<String>,
}

/// True when xmllint can be run; otherwise prints SKIPPED (or fails when
/// `ADJUSTD_REQUIRE_XMLLINT=1`).
fn xmllint_present() -> bool {
    let found = Command::new("xmllint")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var("ADJUSTD_REQUIRE_XMLLINT").as_deref() != Ok("1"),
            "xmllint is required (ADJUSTD_REQUIRE_XMLLINT=1) but not found; apt-get install libxml2-utils"
        );
        eprintln!(
            "SKIPPED: differential test needs xmllint (apt-get install libxml2-utils); set ADJUSTD_REQUIRE_XMLLINT=1 to make this fail"
        );
    }
    found
}

/// Runs xmllint once over all files and reads its per-file lines: `FILE validates`,
/// `FILE fails to validate`, or only parser errors (not well-formed: invalid), or
/// `FILE validation generated an internal error`.
fn run_xmllint(paths: &[PathBuf]) -> HashMap<PathBuf, XmllintVerdict> {
    let schema = manifest_dir().join("schemas/amzn-envelope.xsd");
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .args(paths)
        .output()
        .unwrap_or_else(|e| panic!("running xmllint: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("WXS schema") || !stderr.contains("failed to compile"),
        "the schema does not compile:\n{stderr}"
    );
    let mut verdicts = HashMap::new();
    for path in paths {
        let name = path.display().to_string();
        let mut valid = None;
        let mut messages = Vec::new();
        let mut internal_error = false;
        let prefix = format!("{name}:");
        for line in stderr.lines() {
            if line == format!("{name} validates") {
                valid = Some(true);
            } else if line == format!("{name} fails to validate") {
                valid = Some(false);
            } else if line.starts_with(&prefix) {
                messages.push(line[prefix.len()..].to_owned());
            }
            if line == format!("{name} validation generated an internal error") {
                internal_error = true;
            }
        }
        let valid = match valid {
            Some(valid) => valid,
            None => {
                assert!(
                    !messages.is_empty() || internal_error,
                    "xmllint printed nothing about {name}:\n{stderr}"
                );
                false
            }
        };
        verdicts.insert(
            path.clone(),
            XmllintVerdict {
                valid,
                internal_error,
                messages,
            },
        );
    }
    verdicts
}

/// What the test reads from a file itself, before either side judges it.
#[derive(Debug, Default)]
struct Scan {
    /// Why the file is not compared (empty: compare it). See the module doc.
    exemptions: Vec<String>,
    /// Where the `Amount` elements with more than 4 significant fraction digits start.
    over_precise_amounts: Vec<Position>,
    /// Where the `Amount` elements too large for minor units of their `currency`, and the
    /// `AdjustedItem`s whose net is, start.
    too_large_for_minor_units: Vec<Position>,
}

/// Reads a file for its [`Scan`].
fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    // libxml2 unpacks a gzip file as it reads it; adjustd names it as compressed.
    if bytes.starts_with(b"\x1F\x8B") {
        scan.exemptions.push("gzip-compressed".to_owned());
        return scan;
    }
    // Characters XML 1.0 forbids make the file malformed for both sides (quick-xml does not
    // check them, so the scan below would wrongly find exemptions in such a file).
    let forbidden = |c: char| c < ' ' && !matches!(c, '\t' | '\n' | '\r');
    if String::from_utf8_lossy(bytes).contains(forbidden) {
        return scan;
    }
    let found = &mut scan.exemptions;
    let limits = Limits::default();
    let mut reader = Reader::from_reader(bytes);
    // Open elements with the byte offset of their `<`.
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut text = String::new();
    let mut buf = Vec::new();
    // For the amounts too large for minor units: the current Amount's currency, the
    // message's (its first valid one so far), and the current item's amounts.
    let mut amount_currency: Option<Currency> = None;
    let mut message_currency: Option<Currency> = None;
    let mut item_amounts: Vec<Amount> = Vec::new();
    // An error means not well-formed: both sides must say invalid, nothing to exempt.
    loop {
        let offset = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let Ok(event) = reader.read_event_into(&mut buf) else {
            break;
        };
        match event {
            Event::Eof => break,
            Event::DocType(_) => found.push("DOCTYPE".to_owned()),
            Event::Decl(decl) => {
                if let Some(Ok(encoding)) = decl.encoding() {
                    let encoding = encoding.to_ascii_uppercase();
                    if encoding != "UTF-8" {
                        found.push(format!("encoding {encoding}"));
                    }
                }
            }
            Event::Start(start) => {
                let name = start.name().as_ref().to_owned();
                if name == "ProcessingReport" && stack.last().is_some_and(|p| p.0 == "Message") {
                    found.push("a Message holds a ProcessingReport".to_owned());
                }
                match name.as_str() {
                    "Message" => message_currency = None,
                    "AdjustedItem" => item_amounts.clear(),
                    "Amount" => {
                        amount_currency = start
                            .try_get_attribute("currency")
                            .ok()
                            .flatten()
                            .and_then(|a| Currency::from_code(&a.value));
                        if message_currency.is_none() {
                            message_currency = amount_currency;
                        }
                    }
                    _ => {}
                }
                stack.push((name, offset));
                text.clear();
            }
            Event::Empty(start) => {
                let name = start.name().as_ref().to_owned();
                if name == "ProcessingReport" && stack.last().is_some_and(|p| p.0 == "Message") {
                    found.push("a Message holds a ProcessingReport".to_owned());
                }
                leaf_exemptions(&name, "", stack.last().map(|p| &p.0), found);
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(c) => text.push_str(&c.into_inner()),
            Event::GeneralRef(r) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    if forbidden(c) {
                        // `&#1;` and the like: malformed for both sides.
                        return Scan::default();
                    }
                    text.push(c);
                } else {
                    match &*r.into_inner() {
                        "lt" => text.push('<'),
                        "gt" => text.push('>'),
                        "amp" => text.push('&'),
                        "quot" => text.push('"'),
                        "apos" => text.push('\''),
                        _ => {}
                    }
                }
            }
            Event::End(_) => {
                let (name, start) = stack.pop().unwrap_or_default();
                if text.len() as u64 > limits.max_text_bytes {
                    found.push(format!("{name} text longer than the reader's limit"));
                }
                leaf_exemptions(&name, &text, stack.last().map(|p| &p.0), found);
                if name == "Amount" && significant_fraction_digits(&text) > 4 {
                    scan.over_precise_amounts.push(position_of(bytes, start));
                }
                if name == "Amount"
                    && let Ok(amount) = Amount::parse(&text)
                {
                    item_amounts.push(amount);
                    if let Some(currency) = amount_currency
                        && amount.fraction_digits() <= currency.exponent()
                        && amount.to_minor(currency).is_none()
                    {
                        scan.too_large_for_minor_units
                            .push(position_of(bytes, start));
                    }
                }
                if name == "AdjustedItem"
                    && let Some(currency) = message_currency
                {
                    let minor: Option<Vec<i64>> = item_amounts
                        .iter()
                        .map(|amount| amount.to_minor(currency))
                        .collect();
                    if minor.is_some_and(|minor| {
                        minor
                            .iter()
                            .try_fold(0_i64, |net, m| net.checked_add(*m))
                            .is_none()
                    }) {
                        scan.too_large_for_minor_units
                            .push(position_of(bytes, start));
                    }
                }
                text.clear();
            }
            _ => {}
        }
        buf.clear();
    }
    scan
}

/// The significant fraction digits of a decimal lexical form after whitespace collapse
/// (trailing zeros do not count); 0 for anything that is not a decimal.
fn significant_fraction_digits(raw: &str) -> usize {
    let collapsed = raw.trim_matches([' ', '\t', '\r', '\n']);
    let unsigned = collapsed.strip_prefix(['+', '-']).unwrap_or(collapsed);
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let decimal = !(int_part.is_empty() && frac_part.is_empty())
        && int_part.bytes().all(|b| b.is_ascii_digit())
        && frac_part.bytes().all(|b| b.is_ascii_digit());
    if decimal {
        frac_part.trim_end_matches('0').len()
    } else {
        0
    }
}

/// Line and column of byte `offset` as the feed reader counts them: lines end at a line
/// feed, a CR LF or a lone carriage return; columns count characters from 1.
fn position_of(bytes: &[u8], offset: usize) -> Position {
    let before = &bytes[..offset.min(bytes.len())];
    let is_line_end = |at: usize| {
        before[at] == b'\n' || (before[at] == b'\r' && bytes.get(at + 1) != Some(&b'\n'))
    };
    let line_start = (0..before.len())
        .rev()
        .find(|&at| is_line_end(at))
        .map_or(0, |at| at + 1);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Position {
        line: count((0..before.len()).filter(|&at| is_line_end(at)).count() + 1),
        column: count(
            String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1,
        ),
    }
}

fn leaf_exemptions(name: &str, text: &str, parent: Option<&String>, found: &mut Vec<String>) {
    let collapsed = text
        .split([' ', '\t', '\r', '\n'])
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match name {
        "MessageType" if MESSAGE_TYPES.contains(&text) && text != "OrderAdjustment" => {
            found.push(format!("MessageType {text}"));
        }
        "EffectiveDate" if text.trim_matches([' ', '\t', '\r', '\n']) != text => {
            found.push("EffectiveDate with surrounding whitespace".to_owned());
        }
        "MerchantOrderID" | "MerchantOrderItemID" if text.is_empty() => {
            found.push(format!("empty {name}"));
        }
        "MerchantIdentifier" => {
            let normalized: String = text
                .chars()
                .map(|c| {
                    if matches!(c, '\t' | '\r' | '\n') {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            // The validator trims the XML whitespace around the value (now spaces) first.
            if normalized.chars().count() <= 50
                && MerchantId::new(normalized.trim_matches(' ')).is_none()
            {
                found.push(format!("MerchantIdentifier {text:?}"));
            }
        }
        // IDNumber's pattern applies to the lexical form: at most 20 ASCII digits, no sign.
        "MessageID"
            if parent.is_some_and(|p| p == "Message")
                && collapsed.len() <= 20
                && collapsed.bytes().all(|b| b.is_ascii_digit())
                && integer_above(&collapsed, u128::from(u64::MAX)) =>
        {
            found.push(format!("MessageID {collapsed} above u64::MAX"));
        }
        "Quantity" | "QuantityCancelled" if integer_above(&collapsed, u128::from(u32::MAX)) => {
            found.push(format!("{name} {collapsed} above u32::MAX"));
        }
        _ => {}
    }
    if matches!(
        name,
        "Amount" | "Quantity" | "QuantityCancelled" | "MessageID"
    ) && libxml2_digits(&collapsed) > 24
    {
        found.push(format!("{name} {collapsed} has more than 24 digits"));
    }
}

/// True for a lexically valid non-negative integer (`+` allowed, leading zeros allowed)
/// whose value is above `limit` and that libxml2 can still hold.
fn integer_above(raw: &str, limit: u128) -> bool {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let significant = digits.trim_start_matches('0');
    significant.len() <= 24 && significant.parse::<u128>().is_ok_and(|v| v > limit)
}

/// The number of digits libxml2 stores for a decimal lexical form: integer digits without
/// leading zeros plus every fraction digit (trailing zeros included). 0 for non-numbers.
fn libxml2_digits(raw: &str) -> usize {
    let unsigned = raw.trim_start_matches(['+', '-']);
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return 0;
    }
    int_part.trim_start_matches('0').len() + frac_part.len()
}

// ---------------------------------------------------------------------------------------
// A tiny XML tree for generating and mutating feeds.

#[derive(Debug, Clone)]
enum Node {
    Element(Element),
    /// Character data, escaped when written.
    Text(String),
    /// Markup written as is (CDATA sections, character references, comments).
    Raw(String),
}

#[derive(Debug, Clone)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    fn new(name: &str) -> Element {
        Element {
            name: name.to_owned(),
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }

    fn leaf(name: &str, text: &str) -> Element {
        let mut element = Element::new(name);
        element.children.push(Node::Text(text.to_owned()));
        element
    }

    fn child(mut self, element: Element) -> Element {
        self.children.push(Node::Element(element));
        self
    }

    fn attribute(mut self, name: &str, value: &str) -> Element {
        self.attributes.push((name.to_owned(), value.to_owned()));
        self
    }

    fn is_leaf(&self) -> bool {
        !self.children.iter().any(|c| matches!(c, Node::Element(_)))
    }

    fn to_document(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        out.push('<');
        out.push_str(&self.name);
        for (name, value) in &self.attributes {
            let _ = write!(out, " {name}=\"{}\"", escape(value, true));
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        let elements_only = self.children.iter().all(|c| matches!(c, Node::Element(_)));
        for child in &self.children {
            if elements_only {
                out.push('\n');
                out.push_str(&"  ".repeat(depth + 1));
            }
            match child {
                Node::Element(element) => element.write(out, depth + 1),
                Node::Text(text) => out.push_str(&escape(text, false)),
                Node::Raw(raw) => out.push_str(raw),
            }
        }
        if elements_only {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
        let _ = write!(out, "</{}>", self.name);
    }

    /// Paths (child indexes) of every element below this one, in document order.
    fn element_paths(&self, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        for (index, child) in self.children.iter().enumerate() {
            if let Node::Element(element) = child {
                prefix.push(index);
                out.push(prefix.clone());
                element.element_paths(prefix, out);
                prefix.pop();
            }
        }
    }

    fn get(&self, path: &[usize]) -> &Element {
        match path.split_first() {
            None => self,
            Some((first, rest)) => match &self.children[*first] {
                Node::Element(element) => element.get(rest),
                other => panic!("path leads to a non-element {other:?}"),
            },
        }
    }

    fn at(&mut self, path: &[usize]) -> &mut Element {
        match path.split_first() {
            None => self,
            Some((first, rest)) => match &mut self.children[*first] {
                Node::Element(element) => element.at(rest),
                other => panic!("path leads to a non-element {other:?}"),
            },
        }
    }

    fn text(&self) -> String {
        self.children
            .iter()
            .map(|c| match c {
                Node::Text(t) => t.as_str(),
                _ => "",
            })
            .collect()
    }
}

fn escape(raw: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            // Attribute values would be normalised by the XML parser; keep them literal.
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Random valid feeds.

/// SplitMix64: a tiny deterministic PRNG, enough for test-case generation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).expect("below a usize bound")
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + u8::try_from(self.below(10)).expect("digit")))
            .collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| char::from(SET[self.below(SET.len())]))
            .collect()
    }
}

const CURRENCIES: &[&str] = &["USD", "EUR", "GBP", "JPY", "KWD", "INR", "BRL", "CLF"];

fn amount(rng: &mut Rng) -> String {
    let sign = if rng.chance(5) { "-" } else { "" };
    match rng.below(4) {
        0 => format!("{sign}{}", rng.below(5000)),
        1 => format!("{sign}{}.{:02}", rng.below(500), rng.below(100)),
        2 => format!("{sign}{}.{:03}", rng.below(50), rng.below(1000)),
        _ => format!("{sign}{}.{:04}", rng.below(5), rng.below(10000)),
    }
}

fn amount_element(rng: &mut Rng, currency: Option<&str>) -> Element {
    let element = Element::leaf("Amount", &amount(rng));
    match currency {
        Some(code) => element.attribute("currency", code),
        None => element,
    }
}

fn valid_feed(rng: &mut Rng) -> Element {
    let mut header = Element::new("Header")
        .child(Element::leaf(
            "DocumentVersion",
            rng.pick(&["1.01", "1.02", "2.0", "10.10"]),
        ))
        .child(Element::leaf(
            "MerchantIdentifier",
            rng.pick(&["M_1", "A1B2C3D4E5F6G7", "seller 42", "Ümlaut-Händler"]),
        ));
    if rng.chance(5) {
        header = header.child(Element::leaf("OverrideReleaseId", "1.0"));
    }
    let mut envelope = Element::new("AmazonEnvelope")
        .child(header)
        .child(Element::leaf("MessageType", "OrderAdjustment"));
    if rng.chance(3) {
        envelope = envelope.attribute("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance");
    }
    if rng.chance(6) {
        envelope = envelope.child(Element::leaf("MarketplaceName", "Amazon.de"));
    }
    if rng.chance(6) {
        envelope = envelope.child(Element::leaf("PurgeAndReplace", "false"));
    }
    if rng.chance(6) {
        envelope = envelope.child(Element::leaf("EffectiveDate", "2024-03-01T10:00:00Z"));
    }
    for id in 1..=1 + rng.below(3) {
        let mut message =
            Element::new("Message").child(Element::leaf("MessageID", &id.to_string()));
        if rng.chance(5) {
            message = message.child(Element::leaf("OperationType", "Update"));
        }
        envelope = envelope.child(message.child(order_adjustment(rng)));
    }
    envelope
}

fn order_adjustment(rng: &mut Rng) -> Element {
    let currency = (!rng.chance(4)).then(|| rng.pick(CURRENCIES).to_owned());
    let currency = currency.as_deref();
    let mut adjustment = Element::new("OrderAdjustment");
    adjustment = if rng.chance(4) {
        adjustment.child(Element::leaf(
            "MerchantOrderID",
            &format!("SO-{}", rng.digits(6)),
        ))
    } else {
        let id = format!("{}-{}-{}", rng.alnum(3), rng.alnum(7), rng.alnum(7));
        adjustment.child(Element::leaf("AmazonOrderID", &id))
    };
    if rng.chance(2) {
        adjustment = adjustment.child(Element::leaf("ActionType", rng.pick(&["Refund", "Cancel"])));
    }
    if rng.chance(8) {
        adjustment = adjustment.child(Element::leaf("CODCollectionMethod", "DirectPayment"));
    }
    for _ in 0..1 + rng.below(2) {
        let mut item = Element::new("AdjustedItem");
        item = if rng.chance(4) {
            item.child(Element::leaf(
                "MerchantOrderItemID",
                &format!("L-{}", rng.digits(4)),
            ))
        } else {
            let len = if rng.chance(3) { 15 } else { 14 };
            item.child(Element::leaf("AmazonOrderItemCode", &rng.digits(len)))
        };
        if rng.chance(2) {
            item = item.child(Element::leaf(
                "MerchantAdjustmentItemID",
                &format!("RMA-{}", rng.digits(5)),
            ));
        }
        let reason = AdjustmentReason::ALL[rng.below(AdjustmentReason::ALL.len())];
        item = item.child(Element::leaf("AdjustmentReason", reason.as_str()));
        if !rng.chance(4) {
            let mut prices = Element::new("ItemPriceAdjustments");
            let first = rng.below(PriceComponent::ALL.len());
            for n in 0..1 + rng.below(3) {
                let kind = PriceComponent::ALL[(first + n * 5) % PriceComponent::ALL.len()];
                prices = prices.child(
                    Element::new("Component")
                        .child(Element::leaf("Type", kind.as_str()))
                        .child(amount_element(rng, currency)),
                );
            }
            item = item.child(prices);
        }
        if rng.chance(4) {
            let mut promotion = Element::new("PromotionAdjustments");
            if rng.chance(2) {
                promotion = promotion.child(Element::leaf("PromotionClaimCode", "SAVE2024"));
            }
            if rng.chance(2) {
                promotion =
                    promotion.child(Element::leaf("MerchantPromotionID", "Summer sale 10%"));
            }
            promotion = promotion.child(
                Element::new("Component")
                    .child(Element::leaf("Type", rng.pick(&["Principal", "Shipping"])))
                    .child(amount_element(rng, currency)),
            );
            item = item.child(promotion);
        }
        if rng.chance(6) {
            item = item.child(
                Element::new("DirectPaymentAdjustments").child(
                    Element::new("Component")
                        .child(Element::leaf("Type", "COD collection fee"))
                        .child(amount_element(rng, currency)),
                ),
            );
        }
        if rng.chance(3) {
            item = item.child(Element::leaf(
                "QuantityCancelled",
                &(1 + rng.below(5)).to_string(),
            ));
        }
        if rng.chance(3) {
            item = item.child(Element::leaf("Quantity", &(1 + rng.below(5)).to_string()));
        }
        adjustment = adjustment.child(item);
    }
    adjustment
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// Element names of the schemas (and near misses) to rename elements to. ProcessingReport
/// is left out: a Message holding one is exempt (see the module doc).
const NAMES: &[&str] = &[
    "AmazonEnvelope",
    "Header",
    "DocumentVersion",
    "MerchantIdentifier",
    "OverrideReleaseId",
    "MessageType",
    "MarketplaceName",
    "PurgeAndReplace",
    "EffectiveDate",
    "Message",
    "MessageID",
    "OperationType",
    "OrderAdjustment",
    "AmazonOrderID",
    "MerchantOrderID",
    "ActionType",
    "CODCollectionMethod",
    "AdjustedItem",
    "AmazonOrderItemCode",
    "MerchantOrderItemID",
    "MerchantAdjustmentItemID",
    "AdjustmentReason",
    "ItemPriceAdjustments",
    "PromotionAdjustments",
    "PromotionClaimCode",
    "MerchantPromotionID",
    "DirectPaymentAdjustments",
    "Component",
    "Type",
    "Amount",
    "QuantityCancelled",
    "Quantity",
    "Inventory",
    "DocumentTransactionID",
    "ShippingPriceAdjustments",
    "AdjustmentType",
    "amazonOrderID",
    "AmazonOrderId",
    "xsi:type",
];

/// Bad (and some surprisingly good) values for a leaf, by element name.
fn values_for(name: &str, parent: &str) -> Vec<String> {
    let mut values: Vec<String> = match (name, parent) {
        ("AmazonOrderID", _) => vec![
            "123-123456-1234567",
            "123-1234567-12345678",
            "12é-1234567-1234567",
            "123_1234567_1234567",
            " 123-1234567-1234567",
            "123-1234567-1234567 ",
            "abc-defghij-klmnopq",
            "1231234567-1234567",
        ],
        ("AmazonOrderItemCode", _) => vec![
            "1234567890123",
            "1234567890123456",
            "1234567890123a",
            " 12345678901234",
            "١٢٣٤٥٦٧٨٩٠١٢٣٤",
            "123456789012345",
            "-1234567890123",
        ],
        (
            "MerchantOrderID"
            | "MerchantOrderItemID"
            | "MerchantIdentifier"
            | "MerchantAdjustmentItemID"
            | "MarketplaceName",
            _,
        ) => vec![
            " ",
            "a\tb",
            "a\nb",
            "  padded  ",
            "../up",
            "slash/inside",
            ".",
        ],
        ("PromotionClaimCode", _) => vec!["ABCDE", "ABCDEF", "ABCDEFGHIJKL", "ABCDEFGHIJKLM"],
        ("AdjustmentReason", _) => vec![
            "BuyerCanceled",
            "noinventory",
            " NoInventory",
            "NoInventory ",
            "ProductOutOfStock",
            "Undeliverable",
            "CODFee",
        ],
        ("Type", "Component") => vec![
            "VAT",
            "principal",
            "CODFee",
            " Tax",
            "Shipping",
            "Promotion",
            "FreeReplacementReturnShipping",
        ],
        ("Amount", _) => vec![
            "1,000.00",
            "2e1",
            "1.00001",
            "123456789012345678901",
            "99999999999999999999.9999",
            "-99999999999999999999.9999",
            "100000000000000000000",
            "+.5",
            "5.",
            ".",
            "-",
            "--1",
            "1 000",
            " 10.00 ",
            "\t10.00\n",
            "NaN",
            "INF",
            "0x10",
            "١٠",
            "10.005",
            "3.900000",
            "-0",
            "1.2345",
            "$10.00",
            "10.00 USD",
            "0000000000000000000001.50",
            "+0",
            "-.5",
            "+-1",
            "1.",
        ],
        ("Quantity" | "QuantityCancelled", _) => vec![
            "0",
            "-1",
            "1.0",
            "+5",
            " 5 ",
            "05",
            "abc",
            "4294967295",
            "1e2",
            "١",
        ],
        ("MessageID", _) => vec![
            "0",
            "-1",
            "+1",
            "01",
            " 7 ",
            "18446744073709551615",
            "123456789012345678901",
            "1.0",
            "0001",
            "1 2",
        ],
        ("MessageType", _) => vec![
            "orderadjustment",
            "Refund",
            " OrderAdjustment",
            "OrderAdjustments",
        ],
        ("DocumentVersion", _) => vec!["1.002", "1", "a.b", " 1.01", "١.٠١", "123.1"],
        ("OverrideReleaseId", _) => vec!["1.0", "12345.1", "1."],
        ("ActionType", _) => vec!["refund", "Refund ", "Return", "Cancel"],
        ("CODCollectionMethod", _) => vec!["directpayment", "Cash"],
        ("OperationType", _) => vec!["Update", "Delete", "PartialUpdate", "update"],
        ("PurgeAndReplace", _) => vec!["true", "1", "0", " true ", "yes", "TRUE"],
        ("EffectiveDate", _) => vec![
            "2024-03-01T10:00:00+05:30",
            "2024-03-01T10:00:00.123",
            "2024-03-01",
            "2024-13-01T10:00:00Z",
            "2024-03-01 10:00:00",
            " 2024-03-01T10:00:00Z ",
        ],
        _ => vec![],
    }
    .into_iter()
    .map(str::to_owned)
    .collect();
    if name == "MerchantPromotionID" {
        values.push("p".repeat(80));
        values.push("p".repeat(81));
    }
    values.extend(
        [
            "",
            "x",
            "\u{1}",
            "<&>",
            "é".repeat(50).as_str(),
            "z".repeat(51).as_str(),
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    values.push("w".repeat(10_000));
    values
}

/// Applies one or two random mutations to a copy of `base`; returns the bytes and a
/// description.
fn mutate(base: &Element, rng: &mut Rng) -> (Vec<u8>, String) {
    let mut feed = base.clone();
    let mut done = Vec::new();
    let rounds = if rng.chance(5) { 2 } else { 1 };
    for _ in 0..rounds {
        done.push(mutate_tree(&mut feed, rng));
    }
    let mut text = feed.to_document();
    if rng.chance(8) {
        done.push(mutate_text(&mut text, rng));
    }
    (text.into_bytes(), done.join("; then "))
}

fn mutate_tree(feed: &mut Element, rng: &mut Rng) -> String {
    let mut paths = Vec::new();
    feed.element_paths(&mut Vec::new(), &mut paths);
    let path = paths[rng.below(paths.len())].clone();
    let (parent_path, index) = path.split_at(path.len() - 1);
    let index = index[0];
    let parent_name = feed.at(parent_path).name.clone();
    let name = feed.at(&path).name.clone();
    let where_ = format!("{parent_name}/{name}");
    match rng.below(16) {
        0 => {
            feed.at(parent_path).children.remove(index);
            format!("drop {where_}")
        }
        1 => {
            let parent = feed.at(parent_path);
            let element = parent.children[index].clone();
            parent.children.insert(index + 1, element);
            format!("duplicate {where_}")
        }
        2 => {
            let parent = feed.at(parent_path);
            let next = (index + 1..parent.children.len())
                .find(|&i| matches!(parent.children[i], Node::Element(_)));
            match next {
                Some(next) => {
                    parent.children.swap(index, next);
                    format!("swap {where_} with its next sibling")
                }
                None => {
                    let element = parent.children.remove(index);
                    parent.children.insert(0, element);
                    format!("move {where_} first")
                }
            }
        }
        3 => {
            let new_name = rng.pick(NAMES).to_owned();
            feed.at(&path).name = new_name.clone();
            format!("rename {where_} to {new_name}")
        }
        4 => {
            let element = feed.at(&path);
            if element.is_leaf() {
                let text = element.text();
                element.children = vec![Node::Element(Element::leaf("Value", &text))];
                format!("retype leaf {where_} to hold an element")
            } else {
                element.children = vec![Node::Text("x".to_owned())];
                format!("retype {where_} to hold text")
            }
        }
        5..=9 => {
            // Value mutations are the most common: pick a leaf.
            let leaves: Vec<Vec<usize>> = paths
                .iter()
                .filter(|p| feed.get(p).is_leaf())
                .cloned()
                .collect();
            let leaf_path = leaves[rng.below(leaves.len())].clone();
            let parent = feed.at(&leaf_path[..leaf_path.len() - 1]).name.clone();
            let leaf = feed.at(&leaf_path);
            let values = values_for(&leaf.name, &parent);
            let value = values[rng.below(values.len())].clone();
            let shown: String = value.chars().take(40).collect();
            leaf.children = vec![Node::Text(value)];
            format!("set {parent}/{} to {shown:?}", leaf.name)
        }
        10 => {
            let amounts: Vec<Vec<usize>> = paths
                .iter()
                .filter(|p| feed.get(p).name == "Amount")
                .cloned()
                .collect();
            if amounts.is_empty() {
                feed.at(&path)
                    .attributes
                    .push(("currency".to_owned(), "USD".to_owned()));
                return format!("add currency=\"USD\" to {where_}");
            }
            let amount = feed.at(&amounts[rng.below(amounts.len())]);
            let choice = rng.below(12);
            let bad = [
                "usd", "XYZ", "US", "USDD", " USD", "USD ", "", "AUD", "CLF", "XXX", "EURO",
            ];
            if choice < bad.len() {
                amount.attributes = vec![("currency".to_owned(), bad[choice].to_owned())];
                format!("set an Amount's currency to {:?}", bad[choice])
            } else {
                amount.attributes.clear();
                "remove an Amount's currency".to_owned()
            }
        }
        11 => {
            const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
            // Namespace declarations and schema location hints under several prefixes,
            // bound here, on the envelope (one base feed in three binds xsi there), or not
            // at all: the verdict follows the binding, not the prefix.
            let choices: [&[(&str, &str)]; 13] = [
                &[("foo", "1")],
                &[("currency", "USD")],
                &[("xml:lang", "en")],
                &[("xsi:nil", "true")],
                &[("xmlns", "http://example.com/amzn")],
                &[("xmlns:x", "http://example.com/x")],
                &[("xsi:noNamespaceSchemaLocation", "amzn-envelope.xsd")],
                &[
                    ("xmlns:q", XSI),
                    ("q:noNamespaceSchemaLocation", "amzn-envelope.xsd"),
                ],
                &[("xmlns:q", XSI), ("q:schemaLocation", "urn:x x.xsd")],
                &[
                    ("xmlns:xsi", "urn:not-xsi"),
                    ("xsi:noNamespaceSchemaLocation", "a.xsd"),
                ],
                &[("xmlns:xsi", "urn:not-xsi")],
                &[("xmlns:xsi", XSI)],
                &[("q:noNamespaceSchemaLocation", "amzn-envelope.xsd")],
            ];
            let attributes = rng.pick(&choices);
            let element = feed.at(&path);
            for (attribute, value) in attributes {
                element
                    .attributes
                    .push(((*attribute).to_owned(), (*value).to_owned()));
            }
            let added: Vec<String> = attributes
                .iter()
                .map(|(attribute, value)| format!("{attribute}=\"{value}\""))
                .collect();
            format!("add {} to {where_}", added.join(" "))
        }
        12 => {
            let element = feed.at(&path);
            if element.is_leaf() {
                let text = element.text();
                if rng.chance(2) {
                    element.children = vec![Node::Raw(format!("<![CDATA[{text}]]>"))];
                    format!("write {where_} as CDATA")
                } else {
                    let encoded: String = text
                        .chars()
                        .map(|c| format!("&#{};", u32::from(c)))
                        .collect();
                    element.children = vec![Node::Raw(encoded)];
                    format!("write {where_} as character references")
                }
            } else {
                let at = rng.below(element.children.len() + 1);
                element
                    .children
                    .insert(at, Node::Raw("<!-- a comment --><?pi data?>".to_owned()));
                format!("insert a comment and a PI into {where_}")
            }
        }
        14 => {
            feed.at(&path).children.clear();
            format!("empty {where_} to <{name}/>")
        }
        15 => {
            let element = feed.at(parent_path).children.remove(index);
            let mut targets = Vec::new();
            feed.element_paths(&mut Vec::new(), &mut targets);
            targets.retain(|p| !feed.get(p).is_leaf());
            let target = targets
                .get(rng.below(targets.len().max(1)))
                .cloned()
                .unwrap_or_default();
            let destination = feed.at(&target);
            let at = rng.below(destination.children.len() + 1);
            let target_name = destination.name.clone();
            destination.children.insert(at, element);
            format!("move {where_} into {target_name}")
        }
        _ => {
            let element = feed.at(&path);
            if element.is_leaf() {
                element.children.push(Node::Raw("<!--c-->".to_owned()));
                format!("append a comment to leaf {where_}")
            } else {
                let at = rng.below(element.children.len() + 1);
                element.children.insert(at, Node::Text("stray".to_owned()));
                format!("insert stray text into {where_}")
            }
        }
    }
}

fn mutate_text(text: &mut String, rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => {
            let mut at = rng.below(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            format!("truncate at byte {at}")
        }
        1 => {
            let at = text.find("</Message>").unwrap_or(0);
            text.insert(at, '<');
            "insert a stray '<'".to_owned()
        }
        2 => {
            text.push_str("<AmazonEnvelope/>\n");
            "append a second root element".to_owned()
        }
        3 => {
            text.insert(0, '\u{feff}');
            "prepend a byte order mark".to_owned()
        }
        _ => {
            text.push_str("<!-- trailing comment -->\n  \n");
            "append a comment and whitespace after the root".to_owned()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={raw:?}: {e}")))
}

fn collect_xml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_xml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "xml") {
            out.push(path);
        }
    }
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Copies a failing case to `target/differential-failures/` so it can be opened after the
/// run.
fn keep_failure(label: &str, bytes: &[u8]) -> PathBuf {
    let dir = manifest_dir().join("target/differential-failures");
    let path = dir.join(format!("{}.xml", sanitize(label)));
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, bytes).is_ok() {
        path
    } else {
        PathBuf::from(label)
    }
}

fn read_schema(name: &str) -> String {
    let path = manifest_dir().join("schemas").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `xs:enumeration` values of the named simple type, in schema order.
fn enumeration<'a>(schema: &'a str, type_name: &str) -> Vec<&'a str> {
    let start = schema
        .find(&format!("<xs:simpleType name=\"{type_name}\">"))
        .unwrap_or_else(|| panic!("no simpleType {type_name}"));
    let end = start
        + schema[start..]
            .find("</xs:simpleType>")
            .unwrap_or_else(|| panic!("simpleType {type_name} not closed"));
    schema[start..end]
        .split("<xs:enumeration value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect()
}
