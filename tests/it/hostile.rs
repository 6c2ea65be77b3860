//! Hostile and broken input against the streaming reader and the validator: entity
//! expansion, external entities, a 200 MB text node (streamed, never in memory), deep
//! nesting, truncation, UTF-16, binary garbage, configured limits, and property tests
//! (arbitrary bytes and mutated valid feeds never panic and always end). Each case must
//! end in one clear feed-level problem after reading only a bounded prefix of the input.
//! Also broken order reports against the streaming order-report reader (never a panic, every
//! error names a line of the file). Does not cover schema or rule checks (see `fixtures`).

use std::io::{self, BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use adjustd::engine::Rules;
use adjustd::feed::{self, Completeness, FeedReader, Limits};
use adjustd::problem::{Code, Problem, Scope};
use adjustd::validate::{ValidatedMessage, Validator};
use proptest::prelude::*;

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AmazonEnvelope>
  <Header>
    <DocumentVersion>1.01</DocumentVersion>
    <MerchantIdentifier>M_EXAMPLE</MerchantIdentifier>
  </Header>
  <MessageType>OrderAdjustment</MessageType>
"#;

const MESSAGE: &str = r#"  <Message>
    <MessageID>1</MessageID>
    <OrderAdjustment>
      <AmazonOrderID>123-1234567-1234567</AmazonOrderID>
      <AdjustedItem>
        <AmazonOrderItemCode>12345678901234</AmazonOrderItemCode>
        <AdjustmentReason>CustomerReturn</AdjustmentReason>
        <ItemPriceAdjustments>
          <Component>
            <Type>Principal</Type>
            <Amount currency="USD">10.00</Amount>
          </Component>
        </ItemPriceAdjustments>
      </AdjustedItem>
    </OrderAdjustment>
  </Message>
"#;

const TAIL: &str = "</AmazonEnvelope>\n";

/// A `Read` that yields a prefix, then `len` filler bytes produced on the fly, then a
/// suffix, counting what was pulled from it: hundreds of megabytes without memory.
struct Generated {
    prefix: Vec<u8>,
    filler: &'static [u8],
    len: u64,
    suffix: Vec<u8>,
    position: u64,
}

impl Generated {
    fn new(prefix: &str, filler: &'static [u8], len: u64, suffix: &str) -> Generated {
        Generated {
            prefix: prefix.as_bytes().to_vec(),
            filler,
            len,
            suffix: suffix.as_bytes().to_vec(),
            position: 0,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let prefix_len = self.prefix.len() as u64;
        let filler_end = prefix_len + self.len;
        let total = filler_end + self.suffix.len() as u64;
        if self.position >= total || out.is_empty() {
            return Ok(0);
        }
        let n = if self.position < prefix_len {
            let start = self.position as usize;
            let n = out.len().min(self.prefix.len() - start);
            out[..n].copy_from_slice(&self.prefix[start..start + n]);
            n
        } else if self.position < filler_end {
            let remaining = usize::try_from(filler_end - self.position).unwrap_or(usize::MAX);
            let n = out.len().min(remaining);
            let offset = ((self.position - prefix_len) % self.filler.len() as u64) as usize;
            for (i, byte) in out[..n].iter_mut().enumerate() {
                *byte = self.filler[(offset + i) % self.filler.len()];
            }
            n
        } else {
            let start = (self.position - filler_end) as usize;
            let n = out.len().min(self.suffix.len() - start);
            out[..n].copy_from_slice(&self.suffix[start..start + n]);
            n
        };
        self.position += n as u64;
        Ok(n)
    }
}

/// Runs the validator to the end; returns the feed-level problem (if any) and how many
/// bytes it consumed. Panics when it does not end within a generous number of steps.
fn run<R: BufRead>(reader: R, limits: Limits) -> (Option<Problem>, u64, Vec<ValidatedMessage>) {
    let mut validator = Validator::new(reader, limits, &Rules::default());
    if let Err(problem) = validator.header() {
        return (Some(problem), validator.bytes_read(), Vec::new());
    }
    let mut messages = Vec::new();
    for _ in 0..1_000_000 {
        match validator.next_message() {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (None, validator.bytes_read(), messages),
            Err(problem) => return (Some(problem), validator.bytes_read(), messages),
        }
    }
    panic!("validator did not end");
}

fn run_bytes(bytes: &[u8]) -> (Option<Problem>, u64, Vec<ValidatedMessage>) {
    run(bytes, Limits::default())
}

fn expect_feed_problem(bytes: &[u8], code: Code) -> Problem {
    let started = Instant::now();
    let (problem, _, _) = run_bytes(bytes);
    let problem = problem.unwrap_or_else(|| panic!("expected {code:?}, the feed was accepted"));
    assert_eq!(problem.code, code, "{problem}");
    assert_eq!(problem.code.scope(), Scope::Feed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    problem
}

#[test]
fn billion_laughs_is_refused_before_any_expansion() {
    let mut doc =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..=9 {
        let previous = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        let refs = format!("&{previous};").repeat(10);
        doc.push_str(&format!("<!ENTITY lol{i} \"{refs}\">\n"));
    }
    doc.push_str("]>\n<AmazonEnvelope>&lol9;</AmazonEnvelope>\n");
    let problem = expect_feed_problem(doc.as_bytes(), Code::DtdForbidden);
    assert!(problem.description.contains("DOCTYPE"), "{problem}");
}

#[test]
fn external_entity_is_refused_and_nothing_is_read_from_disk() {
    let doc = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE foo [ <!ENTITY xxe SYSTEM \"file:///etc/passwd\"> ]>\n{}",
        HEAD.split_once('\n')
            .map_or("", |(_, rest)| rest)
            .replace("M_EXAMPLE", "&xxe;")
            + MESSAGE
            + TAIL
    );
    let problem = expect_feed_problem(doc.as_bytes(), Code::DtdForbidden);
    assert!(!problem.to_string().contains("root:"), "{problem}");
    // Without the DOCTYPE the reference is simply unknown.
    let doc = HEAD.replace("M_EXAMPLE", "&xxe;") + MESSAGE + TAIL;
    let problem = expect_feed_problem(doc.as_bytes(), Code::MalformedXml);
    assert!(problem.description.contains("&xxe;"), "{problem}");
}

#[test]
fn a_200_mb_single_line_text_node_stops_at_the_text_limit() {
    let prefix = format!("{HEAD}  <Message>\n    <MessageID>");
    let source = Generated::new(
        &prefix,
        b"7",
        200 * 1024 * 1024,
        "</MessageID></Message>\n</AmazonEnvelope>\n",
    );
    let started = Instant::now();
    let (problem, bytes_read, _) = run(BufReader::new(source), Limits::default());
    let problem = problem.expect("rejected");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(problem.description.contains("65536"), "{problem}");
    assert!(problem.fix.contains("max_text_bytes"), "{problem}");
    // It names where the long run starts: just after <MessageID>.
    let line = prefix.lines().count() as u32;
    let column = prefix.lines().last().expect("line").chars().count() as u32 + 1;
    assert_eq!(
        problem.position.map(|p| (p.line, p.column)),
        Some((line, column)),
        "{problem}"
    );
    // Only the limit plus slack and one buffer were pulled from the 200 MB.
    assert!(bytes_read < 200 * 1024, "read {bytes_read} bytes");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn long_text_split_by_references_and_long_attributes_hit_the_limit() {
    let prefix = format!("{HEAD}  <Message>\n    <MessageID>");
    let source = Generated::new(
        &prefix,
        b"a&amp;",
        10 * 1024 * 1024,
        "</MessageID></Message>\n</AmazonEnvelope>\n",
    );
    let (problem, bytes_read, _) = run(BufReader::new(source), Limits::default());
    let problem = problem.expect("rejected");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(bytes_read < 1024 * 1024, "read {bytes_read} bytes");

    let prefix = format!("{HEAD}  <Message x=\"");
    let source = Generated::new(
        &prefix,
        b"v",
        100 * 1024 * 1024,
        "\"/>\n</AmazonEnvelope>\n",
    );
    let (problem, bytes_read, _) = run(BufReader::new(source), Limits::default());
    assert_eq!(problem.expect("rejected").code, Code::LimitExceeded);
    assert!(bytes_read < 1024 * 1024, "read {bytes_read} bytes");

    // A comment full of `<` is one event too: bounded the same way.
    let prefix = format!("{HEAD}<!--");
    let source = Generated::new(
        &prefix,
        b"<a>",
        100 * 1024 * 1024,
        "-->\n</AmazonEnvelope>\n",
    );
    let (problem, bytes_read, _) = run(BufReader::new(source), Limits::default());
    assert_eq!(problem.expect("rejected").code, Code::LimitExceeded);
    assert!(bytes_read < 1024 * 1024, "read {bytes_read} bytes");
}

#[test]
fn deep_nesting_of_100k_levels_stops_at_the_depth_limit() {
    let prefix = format!("{HEAD}  <Message>");
    let source = Generated::new(&prefix, b"<a>", 100_000 * 3, "");
    let started = Instant::now();
    let (problem, bytes_read, _) = run(BufReader::new(source), Limits::default());
    let problem = problem.expect("rejected");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(problem.fix.contains("max_depth"), "{problem}");
    assert!(problem.description.contains("32"), "{problem}");
    assert!(bytes_read < 64 * 1024, "read {bytes_read} bytes");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn truncated_files_are_truncated_not_malformed() {
    let whole = format!("{HEAD}{MESSAGE}{MESSAGE}{TAIL}");
    // Every cut inside the root element (after its start tag began) is a truncation.
    let root_start = whole.find("<AmazonEnvelope").expect("root");
    for cut in (root_start + 1..whole.len() - TAIL.len()).step_by(7) {
        let (problem, _, _) = run_bytes(&whole.as_bytes()[..cut]);
        let problem = problem.unwrap_or_else(|| panic!("cut at {cut} accepted"));
        assert_eq!(problem.code, Code::Truncated, "cut at {cut}: {problem}");
        assert_eq!(
            feed::completeness(&whole.as_bytes()[..cut], Limits::default()),
            Completeness::Incomplete,
            "cut at {cut}"
        );
    }
    assert_eq!(
        feed::completeness(whole.as_bytes(), Limits::default()),
        Completeness::Complete
    );
    // An upload that stops inside a reference (`&`, `&am`, `&#`) is still arriving.
    let with_reference = format!(
        "{HEAD}{}{TAIL}",
        MESSAGE.replace(
            "<AdjustmentReason>",
            "<MerchantAdjustmentItemID>K&amp;1</MerchantAdjustmentItemID>\n        <AdjustmentReason>"
        )
    );
    let amp = with_reference.find("&amp;").expect("reference");
    for end in [amp + 1, amp + 3, amp + 4] {
        let cut = &with_reference.as_bytes()[..end];
        assert_eq!(
            feed::completeness(cut, Limits::default()),
            Completeness::Incomplete,
            "cut at {:?}",
            &with_reference[amp..end]
        );
        let (problem, _, _) = run_bytes(cut);
        assert_eq!(problem.expect("cut").code, Code::Truncated);
    }
    assert_eq!(
        feed::completeness(&b""[..], Limits::default()),
        Completeness::Incomplete
    );
    let broken = whole.replace("</AdjustedItem>", "</Adjusted>");
    assert_eq!(
        feed::completeness(broken.as_bytes(), Limits::default()),
        Completeness::Broken
    );
    // A schema problem is not the reader's business: still complete.
    let invalid = whole.replace("OrderAdjustment</MessageType>", "Nonsense</MessageType>");
    assert_eq!(
        feed::completeness(invalid.as_bytes(), Limits::default()),
        Completeness::Complete
    );
}

#[test]
fn cdata_end_in_text_and_non_characters_are_not_well_formed() {
    // XML 1.0 2.4: "]]>" may not appear in character data; 2.2: U+FFFE and U+FFFF are not
    // characters at all (though valid UTF-8).
    let doc = format!("{HEAD}{MESSAGE}{TAIL}");
    for (bad, words) in [
        ("<AdjustmentReason>Customer]]>Return", "]]>"),
        ("<AdjustmentReason>Customer\u{FFFE}Return", "U+FFFE"),
        ("<AdjustmentReason>Customer\u{FFFF}Return", "U+FFFF"),
    ] {
        let feed = doc.replace("<AdjustmentReason>CustomerReturn", bad);
        let problem = expect_feed_problem(feed.as_bytes(), Code::MalformedXml);
        assert!(problem.description.contains(words), "{problem}");
        let line = doc[..doc.find("<AdjustmentReason>").expect("reason")]
            .lines()
            .count();
        assert_eq!(
            problem.position.map(|p| p.line as usize),
            Some(line),
            "{problem}"
        );
    }
    // Escaped, and inside CDATA, they are fine.
    for good in [
        "<AdjustmentReason>Customer]]&gt;Return",
        "<AdjustmentReason><![CDATA[Customer]]]]><![CDATA[>Return]]>",
    ] {
        let feed = doc.replace("<AdjustmentReason>CustomerReturn", good);
        let (problem, _, _) = run_bytes(feed.as_bytes());
        assert!(
            problem
                .as_ref()
                .is_none_or(|p| p.code != Code::MalformedXml),
            "{good}: {problem:?}"
        );
    }
}

#[test]
fn utf16_and_other_encodings_are_refused() {
    let doc = format!("{HEAD}{MESSAGE}{TAIL}");
    let mut utf16le = vec![0xFF, 0xFE];
    utf16le.extend(doc.encode_utf16().flat_map(u16::to_le_bytes));
    let problem = expect_feed_problem(&utf16le, Code::UnsupportedEncoding);
    assert!(problem.description.contains("UTF-16"), "{problem}");
    let utf16be: Vec<u8> = doc.encode_utf16().flat_map(u16::to_be_bytes).collect();
    expect_feed_problem(&utf16be, Code::UnsupportedEncoding);
    let latin1 = doc.replace("UTF-8", "windows-1252");
    expect_feed_problem(latin1.as_bytes(), Code::UnsupportedEncoding);
    let mut invalid = doc.clone().into_bytes();
    let at = doc.find("M_EXAMPLE").expect("merchant");
    invalid[at] = 0xFF;
    let problem = expect_feed_problem(&invalid, Code::UnsupportedEncoding);
    assert!(problem.description.contains("line 5"), "{problem}");
    // UTF-8 with a byte order mark is fine.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(doc.as_bytes());
    let (problem, _, messages) = run_bytes(&bom);
    assert!(problem.is_none(), "{problem:?}");
    assert_eq!(messages.len(), 1);
}

#[test]
fn binary_garbage_is_a_clear_feed_level_error() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let garbage: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let (problem, bytes_read, _) = run_bytes(&garbage);
    let problem = problem.expect("garbage rejected");
    assert_eq!(problem.code.scope(), Scope::Feed, "{problem}");
    assert!(
        matches!(
            problem.code,
            Code::MalformedXml | Code::UnsupportedEncoding | Code::Truncated
        ),
        "{problem}"
    );
    assert!(bytes_read < 64 * 1024, "read {bytes_read} bytes");
}

#[test]
fn a_400_mb_message_stops_at_the_message_limit_naming_its_message_id() {
    // One Message of 100 000 000 unknown elements. Before the limit the reader held the
    // whole message as a tree (12.7 GB after 2 minutes) and the validator compared every
    // element with all its earlier siblings (hours).
    let prefix =
        format!("{HEAD}  <Message>\n    <MessageID>7</MessageID>\n    <OrderAdjustment>\n");
    let source = Generated::new(
        &prefix,
        b"<x/>",
        400_000_000,
        "</OrderAdjustment></Message>\n</AmazonEnvelope>\n",
    );
    let limits = Limits::default();
    let limit = limits.max_message_bytes;
    let (problem, bytes_read, messages) = run(BufReader::new(source), limits);
    let problem = problem.expect("rejected");
    assert_eq!(
        (problem.code, problem.message_id.get()),
        (Code::LimitExceeded, 0),
        "{problem}"
    );
    assert!(messages.is_empty());
    let message_line = HEAD.lines().count() as u32 + 1;
    assert!(
        problem.description.starts_with(&format!(
            "message 7: the <Message> that starts at line {message_line}, column 3 takes more than the limit of {limit} bytes of memory"
        )),
        "{problem}"
    );
    assert!(
        problem.fix.contains("[limits] max_message_bytes"),
        "{problem}"
    );
    // Where the limit was passed: at one of the <x/>, each on the line after
    // <OrderAdjustment>, four columns apart.
    assert_eq!(problem.element, "AmazonEnvelope/Message/OrderAdjustment/x");
    let position = problem.position.expect("a position");
    assert_eq!(
        (position.line, position.column % 4),
        (message_line + 3, 1),
        "{problem}"
    );
    // An element takes more memory than its four bytes in the file, so less than the limit
    // of the 400 MB was read.
    assert!(bytes_read < limit, "read {bytes_read} bytes");
}

#[test]
fn a_message_just_within_the_message_limit_is_read() {
    let doc = format!("{HEAD}{MESSAGE}{TAIL}");
    // The memory the message takes, as the reader measures it.
    let mut reader = FeedReader::new(doc.as_bytes(), Limits::default());
    let mut memory = 0;
    while let Some(tree) = reader.next_child().expect("well-formed") {
        if tree.root().expect("element").name() == "Message" {
            memory = tree.memory();
        }
    }
    let limits = |max_message_bytes| Limits {
        max_message_bytes,
        ..Limits::default()
    };
    let (problem, _, messages) = run(doc.as_bytes(), limits(memory));
    assert!(problem.is_none(), "{problem:?}");
    assert!(matches!(messages[..], [ValidatedMessage::Valid(_)]));
    // One byte less is too much.
    let (problem, _, _) = run(doc.as_bytes(), limits(memory - 1));
    let problem = problem.expect("too large");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(
        problem.description.starts_with(&format!(
            "message 1: the <Message> that starts at line 8, column 3 takes more than the limit of {} bytes",
            memory - 1
        )),
        "{problem}"
    );
}

#[test]
fn file_size_and_message_count_limits_name_their_config_key() {
    let doc = format!(
        "{HEAD}{MESSAGE}{}{}{TAIL}",
        MESSAGE.replace(">1<", ">2<"),
        MESSAGE.replace(">1<", ">3<")
    );
    let limits = Limits {
        max_file_bytes: 1000,
        ..Limits::default()
    };
    let (problem, _, _) = run(doc.as_bytes(), limits);
    let problem = problem.expect("too large");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(problem.fix.contains("[limits] max_file_bytes"), "{problem}");
    assert!(problem.description.contains("1000"), "{problem}");

    let limits = Limits {
        max_messages: 2,
        ..Limits::default()
    };
    let (problem, _, messages) = run(doc.as_bytes(), limits);
    let problem = problem.expect("too many messages");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(problem.fix.contains("max_messages"), "{problem}");
    assert_eq!(messages.len(), 2);

    let limits = Limits {
        max_text_bytes: 5,
        ..Limits::default()
    };
    let (problem, _, _) = run(doc.as_bytes(), limits);
    let problem = problem.expect("text too long");
    assert_eq!(problem.code, Code::LimitExceeded, "{problem}");
    assert!(problem.fix.contains("max_text_bytes"), "{problem}");
}

#[test]
fn the_reader_yields_each_child_of_the_root_with_positions() {
    let doc = format!("{HEAD}{MESSAGE}{TAIL}");
    let mut reader = FeedReader::new(doc.as_bytes(), Limits::default());
    let root = reader.open_root().expect("root").root().expect("element");
    assert_eq!(root.name(), "AmazonEnvelope");
    assert_eq!((root.position().line, root.position().column), (2, 1));
    let mut names = Vec::new();
    while let Some(tree) = reader.next_child().expect("well-formed") {
        let element = tree.root().expect("element");
        names.push((element.name().to_owned(), element.position().line));
    }
    assert_eq!(
        names,
        [
            ("Header".to_owned(), 3),
            ("MessageType".to_owned(), 7),
            ("Message".to_owned(), 8)
        ]
    );
    assert_eq!(reader.bytes_read(), doc.len() as u64);
}

/// Applies byte-level damage to a valid feed.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"<",
        b">",
        b"&",
        b"</",
        b"/>",
        b"\"",
        b"<Message>",
        b"</Message>",
        b"<!--",
        b"-->",
        b"<![CDATA[",
        b"]]>",
        b"&amp;",
        b"&#0;",
        b"\xC3",
        b"\xFF",
        b"\0",
        b"<!DOCTYPE x>",
        b"<?xml version=\"1.0\"?>",
        b"-",
        b"9999999999999999999999",
        b"\n",
    ];
    let mut bytes = base.to_vec();
    for &(at, kind, value) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        match kind % 4 {
            0 => bytes[at] = value,
            1 => {
                bytes.remove(at);
            }
            2 => {
                let token = TOKENS[usize::from(value) % TOKENS.len()];
                bytes.splice(at..at, token.iter().copied());
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn check_invariants(bytes: &[u8]) {
    for capacity in [1, 13, 8192] {
        let (problem, bytes_read, messages) =
            run(BufReader::with_capacity(capacity, bytes), Limits::default());
        assert!(bytes_read <= bytes.len() as u64);
        if let Some(problem) = problem {
            assert_eq!(problem.code.scope(), Scope::Feed, "{problem}");
        }
        for message in messages {
            if let ValidatedMessage::Invalid { problems, .. } = message {
                assert!(!problems.is_empty());
                assert!(problems.iter().all(|p| p.code.scope() == Scope::Message));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_invariants(&bytes);
        let _ = feed::completeness(&bytes[..], Limits::default());
    }

    #[test]
    fn xml_ish_noise_never_panics(parts in proptest::collection::vec(
        prop_oneof![
            Just("<AmazonEnvelope>".to_owned()), Just("</AmazonEnvelope>".to_owned()),
            Just("<Message>".to_owned()), Just("</Message>".to_owned()),
            Just(HEAD.to_owned()), Just(MESSAGE.to_owned()), Just("&lt;".to_owned()),
            Just("<a b='c'/>".to_owned()), "[ -~]{0,12}",
        ],
        0..40,
    )) {
        check_invariants(parts.concat().as_bytes());
    }

    #[test]
    fn mutated_valid_feeds_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let base = format!("{HEAD}{MESSAGE}{}{TAIL}", MESSAGE.replace(">1<", ">2<"));
        let bytes = mutate(base.as_bytes(), &edits);
        check_invariants(&bytes);
        let _ = feed::completeness(&bytes[..], Limits::default());
    }
}

/// Order reports made of pieces of real ones, broken: the streaming reader never panics, and
/// every error names a line of the file (1 for an empty one).
fn check_order_report(bytes: &[u8]) {
    let lines =
        u32::try_from(bytes.iter().filter(|b| **b == b'\n').count() + 1).unwrap_or(u32::MAX);
    let error = match adjustd::store::import::OrderReport::new(bytes) {
        Err(error) => Some(error),
        Ok(report) => report.filter_map(Result::err).next(),
    };
    if let Some(error) = error {
        assert!(
            (1..=lines).contains(&error.line),
            "line {} of {lines}: {error}",
            error.line
        );
        assert!(!error.detail.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn broken_order_reports_never_panic(parts in proptest::collection::vec(
        prop_oneof![
            Just(b"order-id\torder-item-id\tsku\tquantity-purchased\tcurrency\titem-price\titem-tax\n".to_vec()),
            Just(b"171-1234567-1234567\t12345678901234\tS\t2\tUSD\t19.99\t1.60\n".to_vec()),
            Just(b"\t".to_vec()), Just(b"\n".to_vec()), Just(b"\r\n".to_vec()),
            Just(b"\xef\xbb\xbf".to_vec()), Just(b"\xff\xfe".to_vec()), Just(b"-0.001".to_vec()),
            Just(b"99999999999999999999".to_vec()), Just(b"JPY".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ],
        0..30,
    )) {
        check_order_report(&parts.concat());
    }
}
