//! The result-code table and the `Problem` value every layer reports bad input with.
//!
//! This is the one table of result codes in the code (`docs/result-codes.md` is its
//! documentation and a test keeps the two in step). Amazon's numbers are reused where
//! Amazon has one (5000, 5005, 6001, 18015, 18016, 18028); our own codes live in the
//! 90000 range so they can never be mistaken for Amazon's (900xx feed level, 901xx found
//! from the feed alone, 902xx found against the store, 903xx policy warnings). Problems are
//! values, not errors: validation and the engine collect them, the report renders them.
//!
//! It also holds the small text helpers every layer words problems with, so sellers read
//! one style: [`count`] (a number with its noun, singular for one), [`quoted`] (a seller's
//! value with its invisible characters named) and [`precision_texts`]. A description states
//! the facts; a fix is a capitalised sentence that ends with a full stop.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::model::{Currency, MessageId, Position, format_minor};

/// Whether a result fails the message (or feed) or only warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Severity {
    /// The message (or, at feed level, the whole feed) is not applied.
    Error,
    /// Applied or harmless; the seller should still look.
    Warning,
}

impl Severity {
    /// `Error` or `Warning`, as in `ResultCode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
        }
    }
}

/// Whether a result concerns the whole feed (nothing applied, MessageID 0) or one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    /// The feed is rejected as a whole.
    Feed,
    /// Only the message is affected.
    Message,
}

macro_rules! codes {
    ($( $variant:ident = ($number:literal, $name:literal, $severity:ident, $scope:ident, $summary:literal) ),+ $(,)?) => {
        /// Every result adjustd can report. See `docs/result-codes.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $(#[doc = $summary] $variant),+ }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The `ResultMessageCode` number.
            pub fn number(self) -> u32 {
                match self { $(Code::$variant => $number),+ }
            }

            /// The stable symbolic name (metric label, JSON `code_name`).
            pub fn name(self) -> &'static str {
                match self { $(Code::$variant => $name),+ }
            }

            /// Error or warning.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity),+ }
            }

            /// Feed-level or message-level.
            pub fn scope(self) -> Scope {
                match self { $(Code::$variant => Scope::$scope),+ }
            }

            /// One line saying what the code means.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$variant => $summary),+ }
            }
        }
    };
}

codes! {
    // Feed level: the whole feed is rejected and nothing is applied.
    MalformedXml = (6001, "MALFORMED_XML", Error, Feed,
        "the file is not well-formed XML, or not XML at all"),
    Truncated = (90001, "TRUNCATED", Error, Feed,
        "the file ends before the root element closes (an upload that never completed), or is empty"),
    DtdForbidden = (90002, "DTD_FORBIDDEN", Error, Feed,
        "DOCTYPE or entity declarations are not accepted"),
    UnsupportedEncoding = (90003, "UNSUPPORTED_ENCODING", Error, Feed,
        "the file is not UTF-8"),
    LimitExceeded = (90004, "LIMIT_EXCEEDED", Error, Feed,
        "a configured limit (file size, depth, text length, message count) was exceeded"),
    EnvelopeInvalid = (90005, "ENVELOPE_INVALID", Error, Feed,
        "the AmazonEnvelope or its Header is missing, misplaced or invalid"),
    WrongMessageType = (90006, "WRONG_MESSAGE_TYPE", Error, Feed,
        "MessageType is not OrderAdjustment"),
    MerchantNotAllowed = (5005, "MERCHANT_NOT_ALLOWED", Error, Feed,
        "the feed's MerchantIdentifier may not be used from this inbox"),
    DuplicateFeed = (90007, "DUPLICATE_FEED", Warning, Feed,
        "the same bytes were already processed for this merchant; nothing applied again"),
    ResultsOmitted = (90008, "RESULTS_OMITTED", Warning, Feed,
        "the feed has more results than a report lists; the counts include every message"),
    FeedUnreadable = (90009, "FEED_UNREADABLE", Error, Feed,
        "the file cannot be opened or read (permissions, an I/O error), so nothing in it was applied"),
    // Message level, found without the store.
    SchemaInvalid = (5000, "SCHEMA_INVALID", Error, Message,
        "an element is missing, unexpected, out of order or has an invalid value"),
    UnknownAdjustmentReason = (90101, "UNKNOWN_ADJUSTMENT_REASON", Error, Message,
        "AdjustmentReason is not one of the 18 schema values"),
    UnknownComponentType = (90102, "UNKNOWN_COMPONENT_TYPE", Error, Message,
        "a Component Type is not one of the schema values"),
    AmountFormat = (90103, "AMOUNT_FORMAT", Error, Message,
        "an Amount is not a plain decimal number with at most 20 integer digits"),
    AmountPrecision = (90104, "AMOUNT_PRECISION", Error, Message,
        "an Amount has more significant fraction digits than its currency allows (more than 4: than any currency allows)"),
    QuantityInvalid = (90105, "QUANTITY_INVALID", Error, Message,
        "QuantityCancelled or Quantity is not a positive integer"),
    CurrencyUnknown = (90106, "CURRENCY_UNKNOWN", Error, Message,
        "a currency attribute is not an ISO 4217 code"),
    CurrencyMismatch = (90107, "CURRENCY_MISMATCH", Error, Message,
        "amounts of one message use different currencies, or not the order's currency"),
    DuplicateMessageId = (90108, "DUPLICATE_MESSAGE_ID", Error, Message,
        "the MessageID was already used earlier in this feed"),
    DuplicateComponent = (90109, "DUPLICATE_COMPONENT", Error, Message,
        "the same component type appears twice in one adjusted item's ItemPriceAdjustments or in one PromotionAdjustments"),
    CancelReasonInvalid = (90110, "CANCEL_REASON_INVALID", Error, Message,
        "QuantityCancelled is only allowed with reason NoInventory or CustomerCancel"),
    CancelWithoutQuantity = (90111, "CANCEL_WITHOUT_QUANTITY", Error, Message,
        "ActionType Cancel needs QuantityCancelled on every adjusted item"),
    NegativeRefundComponent = (18015, "NEGATIVE_REFUND_COMPONENT", Error, Message,
        "a refund component (Principal, Tax, ShippingTax, ...) or promotion reversal has the wrong sign"),
    RestockingFeeExceedsLimit = (90112, "RESTOCKING_FEE_EXCEEDS_LIMIT", Error, Message,
        "the restocking fee is larger than the allowed share of the Principal refunded"),
    NetNotCredit = (90113, "NET_NOT_CREDIT", Error, Message,
        "the net of an adjusted item is not a credit to the buyer (sum of amounts <= 0)"),
    UnsupportedAdjustment = (90114, "UNSUPPORTED_ADJUSTMENT", Error, Message,
        "the message uses DirectPaymentAdjustments (cash on delivery), which adjustd does not apply"),
    // Message level, found against the store (engine).
    DuplicateAdjustment = (5000, "DUPLICATE_ADJUSTMENT", Warning, Message,
        "identical to an adjustment already applied under the same MerchantAdjustmentItemID (without one: the same item of a feed with the same content); not applied again"),
    IdempotencyConflict = (90201, "IDEMPOTENCY_CONFLICT", Error, Message,
        "a MerchantAdjustmentItemID was already used with different content"),
    OrderNotFound = (18028, "ORDER_NOT_FOUND", Error, Message,
        "the order does not exist for this merchant"),
    ItemNotInOrder = (90202, "ITEM_NOT_IN_ORDER", Error, Message,
        "the order item does not belong to the order"),
    OrderNotAdjustable = (90203, "ORDER_NOT_ADJUSTABLE", Error, Message,
        "the order is fulfilled by Amazon (AFN) or fully cancelled, so the seller cannot adjust it"),
    PositiveChargeComponent = (90204, "POSITIVE_CHARGE_COMPONENT", Error, Message,
        "a fee component is positive but there is no earlier fee to reverse"),
    CancelExceedsUnshipped = (90205, "CANCEL_EXCEEDS_UNSHIPPED", Error, Message,
        "QuantityCancelled is more than ordered - shipped - already cancelled"),
    QuantityExceedsShipped = (90206, "QUANTITY_EXCEEDS_SHIPPED", Error, Message,
        "Quantity is more than the units shipped and not returned yet"),
    ComponentExceedsRemaining = (18016, "COMPONENT_EXCEEDS_REMAINING", Error, Message,
        "the refund for a component, or the item's net refund, is more than what remains refundable"),
    LinkedItemFailed = (90207, "LINKED_ITEM_FAILED", Error, Message,
        "another adjusted item of the same message failed, so this one was not applied either"),
    // Message level, policy: the message applies; a person should review it.
    OutsideRefundWindow = (90301, "OUTSIDE_REFUND_WINDOW", Warning, Message,
        "applied, but the order was purchased longer ago than the configured refund window"),
    RestockingFeeReview = (90302, "RESTOCKING_FEE_REVIEW", Warning, Message,
        "the restocking fee is at or above the review share of the Principal refunded (default 20 %)"),
    ConcessionLimit = (90303, "CONCESSION_LIMIT", Warning, Message,
        "concessions (Goodwill, Other, ...) on an item add up to more than the review share of its price"),
    QuantityLooksPerUnit = (90304, "QUANTITY_LOOKS_PER_UNIT", Warning, Message,
        "Quantity is more than 1 but an amount is exactly one unit's charge: amounts are totals, not unit prices"),
    PossibleResubmission = (90305, "POSSIBLE_RESUBMISSION", Warning, Message,
        "applied, but a new key carries the same content as an adjustment applied recently: possibly the same refund sent twice"),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// One thing wrong with (or worth noting about) a feed or a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of problem.
    pub code: Code,
    /// Error or warning: the code's own severity, except for a policy warning that
    /// `[rules] policy = "strict"` turns into a rejection ([`Code::is_policy`]).
    pub severity: Severity,
    /// The message, or [`MessageId::FEED`] for feed-level problems.
    pub message_id: MessageId,
    /// Element path, e.g. `Message/OrderAdjustment/AdjustedItem[2]/ItemPriceAdjustments/Component[1]/Amount`.
    pub element: String,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// What is wrong, in words a seller can act on: the facts (requested, remaining, ...).
    pub description: String,
    /// How to fix it: most fixes are fixed sentences, kept as the one `&'static str` rather
    /// than a copy per problem (a report lists up to [`MAX_RESULTS`] of them).
    pub fix: Cow<'static, str>,
    /// `AmazonOrderID`, when known.
    pub amazon_order_id: Option<String>,
    /// `AmazonOrderItemCode`, when known.
    pub amazon_order_item_code: Option<String>,
}

impl Problem {
    /// A problem with the minimum facts; add the order facts with the builder methods.
    pub fn new(
        code: Code,
        message_id: MessageId,
        element: impl Into<String>,
        position: Option<Position>,
        description: impl Into<String>,
        fix: impl Into<Cow<'static, str>>,
    ) -> Problem {
        Problem {
            code,
            severity: code.severity(),
            message_id,
            element: element.into(),
            position,
            description: description.into(),
            fix: fix.into(),
            amazon_order_id: None,
            amazon_order_item_code: None,
        }
    }

    /// Attaches the order id.
    pub fn with_order(mut self, amazon_order_id: Option<String>) -> Problem {
        self.amazon_order_id = amazon_order_id;
        self
    }

    /// Attaches the order item code.
    pub fn with_item(mut self, amazon_order_item_code: Option<String>) -> Problem {
        self.amazon_order_item_code = amazon_order_item_code;
        self
    }

    /// The same problem as an error: a policy warning under the strict policy, or the
    /// pinned answer to a replay of a message that was rejected for one.
    pub fn into_error(mut self) -> Problem {
        self.severity = Severity::Error;
        self
    }

    /// True when this problem fails what it concerns.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl Code {
    /// The policy checks of refund-rules §c4 step 15: warnings by default, rejections
    /// under `[rules] policy = "strict"` (the only codes whose severity can change).
    pub fn is_policy(self) -> bool {
        matches!(self, Code::OutsideRefundWindow | Code::ConcessionLimit)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message {}", self.message_id)?;
        if let Some(position) = self.position {
            write!(f, " at {position}")?;
        }
        write!(
            f,
            ": {} {} ({}) in {}: {}",
            self.severity.as_str().to_lowercase(),
            self.code.number(),
            self.code.name(),
            self.element,
            self.description
        )?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// `n` with its noun, singular for one: `count(1, "unit")` is "1 unit", `count(0, "unit")`
/// "0 units". Every noun the problem texts count takes a plain `s` in the plural.
pub fn count<N: fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A seller's value as problem texts quote it: in double quotes, as written, with every
/// character that does not show (controls, spaces other than the plain one, zero-width and
/// direction marks) named in square brackets, e.g. `"1.00[U+00A0 NO-BREAK SPACE]"`, so a
/// seller can see why a value that looks right is not. Rust's `{:?}` would show escapes
/// such as `\u{a0}`, which mean nothing to a seller.
pub fn quoted(value: &str) -> String {
    let mut text = String::with_capacity(value.len() + 2);
    text.push('"');
    for c in value.chars() {
        match invisible_name(c) {
            Some(name) => {
                let _ = write!(text, "[U+{:04X} {name}]", u32::from(c));
            }
            None => text.push(c),
        }
    }
    text.push('"');
    text
}

/// The results a report lists at most: the first ones in document order. Beyond them
/// results are only counted, and a `RESULTS_OMITTED` warning says how many were left out and
/// from where: a feed of a million failing messages, or one message of a million unknown
/// elements, would otherwise hold a million problems, and render them twice, in memory
/// (measured by an audit: 1.67 GB for 500 000). `validate` keeps at most this many of one
/// message's problems and `pipeline::Tally` of a feed's.
pub const MAX_RESULTS: usize = 20_000;

/// The description and fix of an AMOUNT_PRECISION: `amount`, as written and named by `what`
/// (`Amount`, `Principal amount`), has `significant` fraction digits, more than `currency`
/// (named by `currency_name`: `USD`, `the order currency USD`) allows.
pub fn precision_texts(
    what: &str,
    written: &str,
    significant: u32,
    currency: Currency,
    currency_name: &str,
) -> (String, String) {
    // "10.0050" has 4 fraction digits as written, 3 of them significant.
    let written_digits = written
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len());
    let noun = if u32::try_from(written_digits).is_ok_and(|n| n > significant) {
        "significant fraction digit"
    } else {
        "fraction digit"
    };
    let exponent = currency.exponent();
    let (allowed, fix) = match exponent {
        0 => (
            "none".to_owned(),
            format!("{currency} amounts have no fraction digits: write whole numbers."),
        ),
        _ => (
            count(exponent, "fraction digit"),
            format!(
                "Write {currency} amounts with at most {}.",
                count(exponent, "fraction digit")
            ),
        ),
    };
    (
        format!(
            "{what} {written} has {} but {currency_name} has {allowed}",
            count(significant, noun)
        ),
        fix,
    )
}

/// The description and fix of an AMOUNT_FORMAT for an amount that has no more fraction
/// digits than `currency` allows but does not fit the `i64` minor units amounts are held in
/// ([`crate::model::Amount::to_minor`] is `None`): `written` as the feed wrote it, named by
/// `what` (`Amount`, `Principal amount`). Shared by `validate` (an amount with a `currency`
/// attribute) and the engine (the order's currency), so both refuse it in the same words.
pub fn too_large_texts(what: &str, written: &str, currency: Currency) -> (String, String) {
    (
        format!(
            "{what} {written} {currency} is too large: amounts are held in minor units (1/{} {currency}) up to {} {currency}",
            10_u64.pow(currency.exponent()),
            format_minor(i64::MAX, currency)
        ),
        format!("Check the {what}; it cannot be a real refund."),
    )
}

/// The description and fix of an AMOUNT_FORMAT for an adjusted item whose amounts each fit
/// minor units of `currency` but whose net does not (see [`too_large_texts`]).
pub fn net_too_large_texts(currency: Currency) -> (String, String) {
    (
        format!(
            "the amounts of this item add up to more than {} {currency}",
            format_minor(i64::MAX, currency)
        ),
        "Check the amounts; they cannot be a real refund.".to_owned(),
    )
}

/// The Unicode name of a character that does not show in a quoted value, `None` for one
/// that does (the plain space included).
fn invisible_name(c: char) -> Option<&'static str> {
    let name = match c {
        '\t' => "CHARACTER TABULATION",
        '\n' => "LINE FEED",
        '\r' => "CARRIAGE RETURN",
        '\u{a0}' => "NO-BREAK SPACE",
        '\u{ad}' => "SOFT HYPHEN",
        '\u{1680}' => "OGHAM SPACE MARK",
        '\u{180e}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{2000}' => "EN QUAD",
        '\u{2001}' => "EM QUAD",
        '\u{2002}' => "EN SPACE",
        '\u{2003}' => "EM SPACE",
        '\u{2004}' => "THREE-PER-EM SPACE",
        '\u{2005}' => "FOUR-PER-EM SPACE",
        '\u{2006}' => "SIX-PER-EM SPACE",
        '\u{2007}' => "FIGURE SPACE",
        '\u{2008}' => "PUNCTUATION SPACE",
        '\u{2009}' => "THIN SPACE",
        '\u{200a}' => "HAIR SPACE",
        '\u{200b}' => "ZERO WIDTH SPACE",
        '\u{200c}' => "ZERO WIDTH NON-JOINER",
        '\u{200d}' => "ZERO WIDTH JOINER",
        '\u{200e}' => "LEFT-TO-RIGHT MARK",
        '\u{200f}' => "RIGHT-TO-LEFT MARK",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{202a}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202b}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202c}' => "POP DIRECTIONAL FORMATTING",
        '\u{202d}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202e}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{202f}' => "NARROW NO-BREAK SPACE",
        '\u{205f}' => "MEDIUM MATHEMATICAL SPACE",
        '\u{2060}' => "WORD JOINER",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{3000}' => "IDEOGRAPHIC SPACE",
        '\u{feff}' => "ZERO WIDTH NO-BREAK SPACE",
        c if c.is_control() => "control character",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_texts_name_the_digits_and_what_the_currency_allows() {
        let code = |c: &str| Currency::from_code(c).expect("ISO 4217");
        assert_eq!(
            precision_texts("Amount", "999.5", 1, code("JPY"), "JPY"),
            (
                "Amount 999.5 has 1 fraction digit but JPY has none".to_owned(),
                "JPY amounts have no fraction digits: write whole numbers.".to_owned()
            )
        );
        assert_eq!(
            precision_texts("Tax amount", "10.0050", 3, code("USD"), "the order currency USD"),
            (
                "Tax amount 10.0050 has 3 significant fraction digits but the order currency USD has 2 fraction digits".to_owned(),
                "Write USD amounts with at most 2 fraction digits.".to_owned()
            )
        );
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1_u32, "unit"), "1 unit");
        assert_eq!(count(0_u32, "unit"), "0 units");
        assert_eq!(count(2_usize, "fraction digit"), "2 fraction digits");
    }

    #[test]
    fn quoted_values_name_what_does_not_show() {
        assert_eq!(quoted("12.50"), "\"12.50\"");
        assert_eq!(quoted("a b"), "\"a b\"");
        assert_eq!(quoted("1.00\u{a0}"), "\"1.00[U+00A0 NO-BREAK SPACE]\"");
        assert_eq!(
            quoted("\u{feff}Refund\u{200b}\t"),
            "\"[U+FEFF ZERO WIDTH NO-BREAK SPACE]Refund[U+200B ZERO WIDTH SPACE][U+0009 CHARACTER TABULATION]\""
        );
        assert_eq!(quoted("x\u{7}"), "\"x[U+0007 control character]\"");
        assert_eq!(quoted("Prix \"spécial\""), "\"Prix \"spécial\"\"");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = Code::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn numbers_are_unique_except_amazons_5000() {
        let mut seen = std::collections::HashMap::new();
        for code in Code::ALL {
            if let Some(other) = seen.insert(code.number(), *code) {
                assert_eq!(code.number(), 5000, "{code:?} and {other:?} share a number");
            }
        }
    }
}
