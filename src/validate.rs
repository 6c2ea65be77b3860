//! Schema-level checks of a feed: turns the reader's messages into typed
//! [`crate::model::AdjustmentMessage`]s or message-level [`crate::problem::Problem`]s, and
//! reports feed-level problems. Never touches the store or the clock.
//!
//! The checks follow the project's XSDs in `schemas/` (OrderAdjustment rev #12 united
//! with rev #11, the envelope and header) with the facet table agreed with them, plus the
//! business rules that need no store (signs, cancellations, restocking fee, net credit,
//! currency agreement, duplicate components and MessageIDs). Every problem of a message is
//! collected; a message with any error is [`ValidatedMessage::Invalid`], and when some of its
//! adjusted items failed, the others get LINKED_ITEM_FAILED (the items of a message apply
//! together or not at all). Everything wrong
//! outside a `Message` is feed-level and ends the feed.

// Problems are the contract's error values (see `problem.rs`); boxing them would only
// move the allocation to every caller.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::engine::Rules;
use crate::feed::{Element, FeedReader, Limits, Tree, is_blank, is_xml_space};
use crate::model::{
    ActionType, AdjustedItem, AdjustmentMessage, AdjustmentReason, AmazonOrderId, Amount,
    AmountError, Component, ComponentAmount, ComponentClass, Currency, FeedHeader, ItemPositions,
    ItemRef, MerchantId, MessageId, OrderItemCode, OrderRef, Position, PriceComponent,
    PromotionComponent, Quantity, SellerId,
};
use crate::problem::{
    Code, MAX_RESULTS, Problem, count, net_too_large_texts, precision_texts, quoted,
    too_large_texts,
};

/// One message of a feed after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatedMessage {
    /// Passed every check that needs no store.
    Valid(AdjustmentMessage),
    /// Failed; the problems say why (at least one error).
    Invalid {
        /// The MessageID, or [`MessageId::FEED`] when it could not be read.
        message_id: MessageId,
        /// What is wrong: the first [`MAX_RESULTS`] problems of the message.
        problems: Vec<Problem>,
        /// How many more problems the message has (counted, not kept: no report lists
        /// more than [`MAX_RESULTS`] results).
        unlisted: u64,
        /// The message as read, when `problems` may yet give way to `AmountPrecision`:
        /// they are all restocking-fee and net rules (refund-rules c4 steps 7 and 8, with
        /// the items linked to them), the amounts name no currency, and some have fraction
        /// digits. Precision (step 3) comes first, but without a `currency` attribute it
        /// needs the order's currency, so the pipeline checks it once the order is loaded
        /// ([`crate::engine::precision_problems`]).
        precision_pending: Option<Box<AdjustmentMessage>>,
    },
}

/// The 28 `MessageType` values of the envelope schema.
pub const MESSAGE_TYPES: &[&str] = &[
    "CatPIL",
    "Customer",
    "FulfillmentCenter",
    "FulfillmentOrderCancellationRequest",
    "FulfillmentOrderRequest",
    "Image",
    "Inventory",
    "Item",
    "Listings",
    "Loyalty",
    "MultiChannelOrderReport",
    "NavigationReport",
    "Offer",
    "OrderAcknowledgement",
    "OrderAdjustment",
    "OrderFulfillment",
    "OrderNotificationReport",
    "OrderReport",
    "Override",
    "Price",
    "ProcessingReport",
    "Product",
    "ProductImage",
    "Relationship",
    "ReverseItem",
    "SettlementReport",
    "Store",
    "WebstoreItem",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet.
    Start,
    /// Header read; `pending` when the first `Message` is already in the reader.
    Messages { pending: bool },
    /// The envelope closed and the rest of the file was checked.
    Done,
}

/// Streams a feed: the header first, then one validated message at a time.
pub struct Validator<R: BufRead> {
    feed: FeedReader<R>,
    limits: Limits,
    restocking_fee_max_percent: u32,
    phase: Phase,
    header: Option<FeedHeader>,
    messages: u64,
    seen_ids: IdSet,
    /// The currency of the previous message (a lookup cache).
    last_currency: Option<Currency>,
    failure: Option<Problem>,
}

impl<R: BufRead> Validator<R> {
    /// Starts reading a feed; `rules` supplies the restocking-fee share.
    pub fn new(reader: R, limits: Limits, rules: &Rules) -> Validator<R> {
        Validator {
            feed: FeedReader::new(reader, limits),
            limits,
            restocking_fee_max_percent: rules.restocking_fee_max_percent,
            phase: Phase::Start,
            header: None,
            messages: 0,
            seen_ids: IdSet::default(),
            last_currency: None,
            failure: None,
        }
    }

    /// Reads the envelope up to the first `Message`.
    ///
    /// # Errors
    /// A feed-level problem: the feed is rejected as a whole.
    pub fn header(&mut self) -> Result<FeedHeader, Problem> {
        if let Some(problem) = &self.failure {
            return Err(problem.clone());
        }
        if let Some(header) = &self.header {
            return Ok(header.clone());
        }
        match self.read_header() {
            Ok(header) => {
                self.header = Some(header.clone());
                self.phase = Phase::Messages { pending: true };
                Ok(header)
            }
            Err(problem) => {
                self.failure = Some(problem.clone());
                Err(problem)
            }
        }
    }

    /// The MerchantIdentifier once the Header was read, also when the envelope failed after
    /// it (a wrong MessageType, say), so that rejection can name the merchant.
    pub fn merchant(&self) -> Option<&MerchantId> {
        self.header.as_ref().map(|header| &header.merchant)
    }

    /// The next message, or `None` after the envelope closed and the rest of the file was
    /// checked.
    ///
    /// # Errors
    /// A feed-level problem: the feed is rejected as a whole.
    pub fn next_message(&mut self) -> Result<Option<ValidatedMessage>, Problem> {
        if self.phase == Phase::Start {
            self.header()?;
        }
        if let Some(problem) = &self.failure {
            return Err(problem.clone());
        }
        match self.read_message() {
            Ok(message) => Ok(message),
            Err(problem) => {
                self.failure = Some(problem.clone());
                Err(problem)
            }
        }
    }

    /// Bytes consumed so far (for progress bars).
    pub fn bytes_read(&self) -> u64 {
        self.feed.bytes_read()
    }

    fn read_message(&mut self) -> Result<Option<ValidatedMessage>, Problem> {
        let pending = match self.phase {
            Phase::Start | Phase::Done => return Ok(None),
            Phase::Messages { pending } => pending,
        };
        self.phase = Phase::Messages { pending: false };
        if !pending {
            let done = match self.feed.next_child() {
                Ok(next) => next.is_none(),
                Err(problem) => return Err(self.name_message(problem)),
            };
            if done {
                self.phase = Phase::Done;
                return Ok(None);
            }
        }
        let tree = self.feed.current();
        let element = tree
            .root()
            .ok_or_else(|| envelope_problem(None, "(file)", "internal: empty element tree", ""))?;
        if let Some(position) = self.feed.root_text() {
            return Err(root_text_problem(position));
        }
        if element.name() != "Message" {
            return Err(envelope_problem(
                Some(element.position()),
                &format!("AmazonEnvelope/{}", element.name()),
                &format!(
                    "unexpected element <{}> after the first <Message>; only <Message> elements may follow",
                    element.name()
                ),
                "Move the envelope elements (Header, MessageType, ...) before the first Message and remove anything else.",
            ));
        }
        if let Some(problem) = other_message_type(element) {
            return Err(problem);
        }
        self.messages += 1;
        if self.messages > self.limits.max_messages {
            return Err(Limits::exceeded(
                "the number of messages",
                self.limits.max_messages,
                "max_messages",
                Some(element.position()),
                "AmazonEnvelope/Message",
            ));
        }
        let tree: &Tree = tree;
        Ok(Some(check_message(
            tree,
            &mut self.seen_ids,
            &mut self.last_currency,
            self.restocking_fee_max_percent,
        )))
    }

    /// A limit passed inside a `Message` rejects the feed (limits are feed-level), but the
    /// description names the message, so the seller can find it: by its MessageID when that
    /// was read, else by where it starts.
    fn name_message(&self, mut problem: Problem) -> Problem {
        let Some(message) = self.feed.current().root() else {
            return problem;
        };
        if problem.code != Code::LimitExceeded || message.name() != "Message" {
            return problem;
        }
        let name = match child(message, "MessageID")
            .and_then(|id| positive_integer(id.text(), u64::MAX).ok())
        {
            Some(id) => format!("message {id}"),
            None => {
                let start = message.position();
                format!(
                    "the Message at line {}, column {} (its MessageID not read)",
                    start.line, start.column
                )
            }
        };
        problem.description = format!("{name}: {}", problem.description);
        problem
    }

    fn read_header(&mut self) -> Result<FeedHeader, Problem> {
        let root_tree = self.feed.open_root()?;
        let root = root_tree
            .root()
            .ok_or_else(|| envelope_problem(None, "(file)", "internal: no root element", ""))?;
        if root.name() != "AmazonEnvelope" {
            return Err(envelope_problem(
                Some(root.position()),
                root.name(),
                &format!(
                    "the root element is <{}>; an Order Adjustment feed is an <AmazonEnvelope>",
                    root.name()
                ),
                "Send an <AmazonEnvelope> with MessageType OrderAdjustment.",
            ));
        }
        if let Err(what) = check_attributes(root, &[]) {
            return Err(envelope_problem(
                Some(root.position()),
                "AmazonEnvelope",
                &what,
                "Remove the attribute: the envelope has no namespace, and besides namespace declarations only a schema hint is accepted (xsi:noNamespaceSchemaLocation, with xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\").",
            ));
        }
        const ORDER: &[&str] = &[
            "Header",
            "MessageType",
            "MarketplaceName",
            "PurgeAndReplace",
            "EffectiveDate",
            "Message",
        ];
        let mut last_rank: Option<usize> = None;
        let mut header: Option<FeedHeader> = None;
        let mut message_type_seen = false;
        loop {
            let done = match self.feed.next_child() {
                Ok(next) => next.is_none(),
                Err(problem) => return Err(self.name_message(problem)),
            };
            if done {
                let missing = if header.is_none() {
                    "<Header>"
                } else if !message_type_seen {
                    "<MessageType>"
                } else {
                    "<Message>"
                };
                return Err(envelope_problem(
                    None,
                    "AmazonEnvelope",
                    &format!("the envelope has no {missing}"),
                    "An envelope needs a Header, a MessageType and at least one Message, in that order.",
                ));
            }
            let tree = self.feed.current();
            let Some(element) = tree.root() else {
                continue;
            };
            if let Some(position) = self.feed.root_text() {
                return Err(root_text_problem(position));
            }
            let name = element.name();
            let path = format!("AmazonEnvelope/{name}");
            let Some(rank) = ORDER.iter().position(|n| *n == name) else {
                return Err(envelope_problem(
                    Some(element.position()),
                    &path,
                    &format!("unexpected element <{name}> in the envelope"),
                    "The envelope holds Header, MessageType, optional MarketplaceName, PurgeAndReplace and EffectiveDate, then Message elements.",
                ));
            };
            if let Some(last) = last_rank
                && (rank < last || (rank == last && rank != 5))
            {
                return Err(envelope_problem(
                    Some(element.position()),
                    &path,
                    &format!("<{name}> is duplicated or out of order"),
                    "The envelope order is Header, MessageType, MarketplaceName?, PurgeAndReplace?, EffectiveDate?, Message+.",
                ));
            }
            if rank > 0 && header.is_none() {
                return Err(envelope_problem(
                    Some(element.position()),
                    "AmazonEnvelope/Header",
                    &format!("<Header> is missing (found <{name}> first)"),
                    "Start the envelope with a Header holding DocumentVersion and MerchantIdentifier.",
                ));
            }
            if rank > 1 && !message_type_seen {
                return Err(envelope_problem(
                    Some(element.position()),
                    "AmazonEnvelope/MessageType",
                    &format!("<MessageType> is missing (found <{name}> after the Header)"),
                    "Add <MessageType>OrderAdjustment</MessageType> after the Header.",
                ));
            }
            last_rank = Some(rank);
            match rank {
                0 => {
                    let parsed = check_header(element)?;
                    // Kept at once, so a rejection later in the envelope still names the
                    // merchant (see `merchant`).
                    self.header = Some(parsed.clone());
                    header = Some(parsed);
                }
                1 => {
                    check_message_type(element)?;
                    message_type_seen = true;
                }
                2 => envelope_simple(element, |text| {
                    let n = normalized(text).chars().count();
                    (1..=50)
                        .contains(&n)
                        .then_some(())
                        .ok_or_else(|| "MarketplaceName must be 1 to 50 characters".to_owned())
                })?,
                3 => envelope_simple(element, |text| {
                    matches!(collapse(text), "true" | "false" | "1" | "0")
                        .then_some(())
                        .ok_or_else(|| {
                            format!(
                                "PurgeAndReplace {} is not a boolean (true, false, 1, 0)",
                                quoted(text)
                            )
                        })
                })?,
                4 => envelope_simple(element, |text| {
                    is_xsd_date_time(collapse(text)).then_some(()).ok_or_else(|| {
                        format!("EffectiveDate {} is not an xs:dateTime (e.g. 2024-05-01T12:00:00Z)", quoted(text))
                    })
                })?,
                _ => {
                    let header = header.ok_or_else(|| {
                        envelope_problem(None, "AmazonEnvelope/Header", "missing Header", "")
                    })?;
                    return Ok(header);
                }
            }
        }
    }
}

fn root_text_problem(position: Position) -> Problem {
    envelope_problem(
        Some(position),
        "AmazonEnvelope",
        "text directly inside <AmazonEnvelope>; it holds elements only",
        "Remove the stray text between the envelope's elements.",
    )
}

fn envelope_problem(
    position: Option<Position>,
    element: &str,
    what: &str,
    fix: &'static str,
) -> Problem {
    Problem::new(
        Code::EnvelopeInvalid,
        MessageId::FEED,
        element,
        position,
        what,
        fix,
    )
}

/// Checks an element of simple type in the envelope: no attributes, no children, and the
/// text passes `check`.
fn envelope_simple(
    element: Element<'_>,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Result<(), Problem> {
    let path = envelope_path(element);
    let fail = |what: String| {
        envelope_problem(
            Some(element.position()),
            &path,
            &what,
            "Correct the value as the envelope schema says.",
        )
    };
    check_attributes(element, &[]).map_err(&fail)?;
    simple_text(element).map_err(&fail)?;
    check(element.text()).map_err(fail)
}

fn envelope_path(element: Element<'_>) -> String {
    let mut names = vec![element.name()];
    let mut current = element;
    while let Some(parent) = current.parent() {
        names.push(parent.name());
        current = parent;
    }
    names.push("AmazonEnvelope");
    names.reverse();
    names.join("/")
}

fn check_header(header: Element<'_>) -> Result<FeedHeader, Problem> {
    let fail = |element: Element<'_>, what: String| {
        envelope_problem(
            Some(element.position()),
            &envelope_path(element),
            &what,
            "The Header holds DocumentVersion (e.g. 1.01), MerchantIdentifier and an optional OverrideReleaseId, in that order.",
        )
    };
    check_attributes(header, &[]).map_err(|w| fail(header, w))?;
    complex_text(header).map_err(|w| fail(header, w))?;
    let mut problems = Vec::new();
    check_sequence(
        header,
        &[
            Particle::one(&["DocumentVersion"]),
            Particle::one(&["MerchantIdentifier"]),
            Particle::optional(&["OverrideReleaseId"]),
        ],
        &mut |issue| problems.push(fail(issue.at, issue.what)),
    );
    if let Some(problem) = problems.into_iter().next() {
        return Err(problem);
    }
    let mut document_version = String::new();
    let mut merchant = None;
    let mut merchant_position = None;
    for child in header.children() {
        let text = child.text();
        match child.name() {
            "DocumentVersion" => {
                envelope_simple(child, |text| {
                    is_version(text, 2).then_some(()).ok_or_else(|| {
                        format!(
                            "DocumentVersion {} does not match \\d{{1,2}}\\.\\d{{1,2}}",
                            quoted(text)
                        )
                    })
                })?;
                document_version = text.to_owned();
            }
            "MerchantIdentifier" => {
                // Whitespace around the value (a pretty-printed header) is not part of it.
                envelope_simple(child, |text| {
                    (normalized(collapse(text)).chars().count() <= 50)
                        .then_some(())
                        .ok_or_else(|| "MerchantIdentifier is longer than 50 characters".to_owned())
                })?;
                merchant_position = Some(child.position());
                let value = normalized(collapse(text));
                merchant = Some(MerchantId::new(&value).ok_or_else(|| {
                    envelope_problem(
                        Some(child.position()),
                        &envelope_path(child),
                        &format!(
                            "MerchantIdentifier {} is not a merchant identifier: it must be {} (XML white space around it is removed, other white space is not)",
                            quoted(&value),
                            MerchantId::RULE
                        ),
                        "Write the MerchantIdentifier exactly as your merchant (seller) id, as Amazon issued it.",
                    )
                })?);
            }
            _ => envelope_simple(child, |text| {
                is_version(text, 4).then_some(()).ok_or_else(|| {
                    format!(
                        "OverrideReleaseId {} does not match \\d{{1,4}}\\.\\d{{1,4}}",
                        quoted(text)
                    )
                })
            })?,
        }
    }
    let merchant = merchant.ok_or_else(|| fail(header, "missing MerchantIdentifier".to_owned()))?;
    Ok(FeedHeader {
        document_version,
        merchant,
        merchant_position,
    })
}

fn check_message_type(element: Element<'_>) -> Result<(), Problem> {
    envelope_simple(element, |text| {
        MESSAGE_TYPES.contains(&text).then_some(()).ok_or_else(|| {
            format!(
                "MessageType {} is not one of the envelope schema's values",
                quoted(text)
            )
        })
    })?;
    if element.text() != "OrderAdjustment" {
        return Err(Problem::new(
            Code::WrongMessageType,
            MessageId::FEED,
            "AmazonEnvelope/MessageType",
            Some(element.position()),
            format!(
                "MessageType is {}; this processor only accepts OrderAdjustment feeds",
                element.text()
            ),
            "Send only Order Adjustment feeds here (MessageType OrderAdjustment).",
        ));
    }
    Ok(())
}

/// WRONG_MESSAGE_TYPE for a `Message` that holds the message element of another feed type
/// (named like one of the other [`MESSAGE_TYPES`], as in Amazon's envelope: an
/// `OrderAcknowledgement`, a `ProcessingReport`, ...): the file is not an Order Adjustment
/// feed whatever its MessageType says, so the whole feed is rejected, once. Any other
/// unexpected element in a Message is that message's SCHEMA_INVALID.
fn other_message_type(message: Element<'_>) -> Option<Problem> {
    let other = message.children().find(|child| {
        !matches!(
            child.name(),
            "MessageID" | "OperationType" | "OrderAdjustment"
        ) && MESSAGE_TYPES.contains(&child.name())
    })?;
    let which = child(message, "MessageID")
        .and_then(|id| positive_integer(id.text(), u64::MAX).ok())
        .map_or_else(|| "a message".to_owned(), |id| format!("message {id}"));
    Some(Problem::new(
        Code::WrongMessageType,
        MessageId::FEED,
        format!("AmazonEnvelope/Message/{}", other.name()),
        Some(other.position()),
        format!(
            "{which} is of another feed type: it holds <{}>; this processor only accepts OrderAdjustment feeds, whose messages each hold an <OrderAdjustment>",
            other.name()
        ),
        "Send only Order Adjustment feeds here; send other feed types to Amazon.",
    ))
}

// ---------------------------------------------------------------------------------------
// Generic XSD helpers

/// One particle of an `xs:sequence`: one of `names`, between `min` and `max` times.
#[derive(Debug, Clone, Copy)]
struct Particle {
    names: &'static [&'static str],
    min: u32,
    max: u32,
}

impl Particle {
    const fn one(names: &'static [&'static str]) -> Particle {
        Particle {
            names,
            min: 1,
            max: 1,
        }
    }

    const fn optional(names: &'static [&'static str]) -> Particle {
        Particle {
            names,
            min: 0,
            max: 1,
        }
    }

    const fn many(names: &'static [&'static str], min: u32) -> Particle {
        Particle {
            names,
            min,
            max: u32::MAX,
        }
    }

    fn label(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|n| format!("<{n}>")).collect();
        names.join(" or ")
    }
}

/// One finding of [`check_sequence`].
struct Issue<'t> {
    /// Where it was noticed (the element found instead, or the parent at its end).
    at: Element<'t>,
    /// The element whose content is wrong.
    parent: Element<'t>,
    /// The element that is missing, if that is the finding.
    missing: Option<&'static str>,
    what: String,
}

/// Checks the children of `parent` against a sequence of particles, reporting missing,
/// unexpected, out-of-order and repeated elements.
fn check_sequence<'t>(
    parent: Element<'t>,
    particles: &[Particle],
    report: &mut dyn FnMut(Issue<'t>),
) {
    let mut report = |at: Element<'t>, missing: Option<&'static str>, what: String| {
        report(Issue {
            at,
            parent,
            missing,
            what,
        });
    };
    let mut index = 0;
    let mut count = 0u32;
    for child in parent.children() {
        let name = child.name();
        if particles[index].names.contains(&name) {
            count += 1;
            if count > particles[index].max {
                report(
                    child,
                    None,
                    format!(
                        "<{name}> appears more often than allowed ({} at most)",
                        particles[index].max
                    ),
                );
            }
            continue;
        }
        let ahead = (index + 1..particles.len()).find(|&j| particles[j].names.contains(&name));
        match ahead {
            Some(j) => {
                if count < particles[index].min {
                    report(
                        child,
                        Some(particles[index].names[0]),
                        format!("missing {} before <{name}>", particles[index].label()),
                    );
                }
                for particle in &particles[index + 1..j] {
                    if particle.min > 0 {
                        report(
                            child,
                            Some(particle.names[0]),
                            format!("missing {} before <{name}>", particle.label()),
                        );
                    }
                }
                index = j;
                count = 1;
            }
            None => {
                if let Some(j) = (0..index).find(|&j| particles[j].names.contains(&name)) {
                    report(
                        child,
                        None,
                        format!(
                            "<{name}> is out of order: it must come before {}",
                            particles[j + 1].label()
                        ),
                    );
                } else {
                    let expected: Vec<String> =
                        particles[index..].iter().map(Particle::label).collect();
                    report(
                        child,
                        None,
                        format!(
                            "unexpected element <{name}> in <{}> (expected {})",
                            parent.name(),
                            expected.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if count < particles[index].min {
        report(
            parent,
            Some(particles[index].names[0]),
            format!(
                "<{}> is missing {}",
                parent.name(),
                particles[index].label()
            ),
        );
    }
    for particle in &particles[index + 1..] {
        if particle.min > 0 {
            report(
                parent,
                Some(particle.names[0]),
                format!("<{}> is missing {}", parent.name(), particle.label()),
            );
        }
    }
}

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Checks attributes against the allowed names. Namespace declarations and the schema
/// location hints (`noNamespaceSchemaLocation` and `schemaLocation` in the XSI namespace,
/// under whatever prefix is bound to it) are not attributes in XSD's sense; any other
/// prefixed name is unknown, and one whose prefix is not declared is refused as such, as
/// `xmllint` does.
fn check_attributes(element: Element<'_>, allowed: &[&str]) -> Result<(), String> {
    for attribute in element.attributes() {
        let name = attribute.name;
        if name == "xmlns" {
            if attribute.value.is_empty() {
                continue;
            }
            return Err(format!(
                "<{}> is in namespace {}; the feed elements have no namespace",
                element.name(),
                quoted(attribute.value)
            ));
        }
        if name.starts_with("xmlns:") {
            continue;
        }
        if let Some((prefix, local)) = name.split_once(':') {
            match attribute.namespace {
                None => {
                    return Err(format!(
                        "<{}> has an attribute {name} whose prefix {prefix} is not declared (no xmlns:{prefix} on it or an enclosing element)",
                        element.name()
                    ));
                }
                Some(XSI) if matches!(local, "noNamespaceSchemaLocation" | "schemaLocation") => {
                    continue;
                }
                Some(namespace) => {
                    return Err(format!(
                        "<{}> has an unknown attribute {name} (namespace {})",
                        element.name(),
                        quoted(namespace)
                    ));
                }
            }
        }
        if !allowed.contains(&name) {
            return Err(format!(
                "<{}> has an unknown attribute {name}",
                element.name()
            ));
        }
    }
    // Names are short: a plain scan beats a memchr call.
    if element.name().bytes().any(|b| b == b':') {
        return Err(format!(
            "<{}> has a namespace prefix; the feed elements have no namespace",
            element.name()
        ));
    }
    Ok(())
}

/// An element of simple type has no child elements.
fn simple_text(element: Element<'_>) -> Result<(), String> {
    if element.has_children() {
        return Err(format!(
            "<{}> holds a value and must not contain elements",
            element.name()
        ));
    }
    Ok(())
}

/// An element of element-only content has no text besides white space.
fn complex_text(element: Element<'_>) -> Result<(), String> {
    if !is_blank(element.text()) || element.has_stray_text() {
        return Err(format!(
            "<{}> holds elements only, not text",
            element.name()
        ));
    }
    Ok(())
}

/// `xs:normalizedString`: tab, carriage return and line feed become spaces.
fn normalized(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\t', '\r', '\n']) {
        text.replace(['\t', '\r', '\n'], " ").into()
    } else {
        text.into()
    }
}

/// `whiteSpace="collapse"` for values that must not contain inner spaces anyway.
fn collapse(text: &str) -> &str {
    text.trim_matches(is_xml_space)
}

/// `\d{1,width}\.\d{1,width}` with ASCII digits.
fn is_version(text: &str, width: usize) -> bool {
    let Some((major, minor)) = text.split_once('.') else {
        return false;
    };
    let ok =
        |part: &str| (1..=width).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
    ok(major) && ok(minor)
}

/// The `xs:dateTime` lexical space (after whitespace collapse).
pub fn is_xsd_date_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    let body = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let Some(dash) = body.iter().position(|&b| b == b'-') else {
        return false;
    };
    let year = &body[..dash];
    if year.len() < 4
        || !year.iter().all(u8::is_ascii_digit)
        || (year.len() > 4 && year[0] == b'0')
        || year.iter().all(|&b| b == b'0')
    {
        return false;
    }
    let rest = &body[dash..];
    // -MM-DDThh:mm:ss
    if rest.len() < 15 {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = rest.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if rest[0] != b'-' || rest[3] != b'-' || rest[6] != b'T' || rest[9] != b':' || rest[12] != b':'
    {
        return false;
    }
    let (Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(1..3),
        digits(4..6),
        digits(7..9),
        digits(10..12),
        digits(13..15),
    ) else {
        return false;
    };
    let year_value: u64 = std::str::from_utf8(year)
        .ok()
        .and_then(|y| y.parse().ok())
        .unwrap_or(1);
    let leap = (year_value.is_multiple_of(4) && !year_value.is_multiple_of(100))
        || year_value.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || minute > 59 || second > 59 {
        return false;
    }
    let mut tail = &rest[15..];
    let mut fraction_zero = true;
    if let Some(fraction) = tail.strip_prefix(b".") {
        let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        fraction_zero = fraction[..n].iter().all(|&b| b == b'0');
        tail = &fraction[n..];
    }
    if hour > 24 || (hour == 24 && (minute != 0 || second != 0 || !fraction_zero)) {
        return false;
    }
    match tail {
        [] | [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let all_digits = [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit());
            let hours = u32::from(h1.wrapping_sub(b'0')) * 10 + u32::from(h2.wrapping_sub(b'0'));
            let minutes = u32::from(m1.wrapping_sub(b'0')) * 10 + u32::from(m2.wrapping_sub(b'0'));
            all_digits && minutes <= 59 && (hours < 14 || (hours == 14 && minutes == 0))
        }
        _ => false,
    }
}

/// `xs:positiveInteger` after whitespace collapse: optional `+`, ASCII digits, value > 0.
/// `Err(true)` means "well-formed but larger than `max`".
fn positive_integer(text: &str, max: u64) -> Result<u64, bool> {
    let text = collapse(text);
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(false);
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Err(false);
    }
    if significant.len() > 20 {
        return Err(true);
    }
    match significant.parse::<u128>() {
        Ok(value) if value <= u128::from(max) => Ok(u64::try_from(value).unwrap_or(max)),
        _ => Err(true),
    }
}

// ---------------------------------------------------------------------------------------
// Messages

/// MessageIDs seen so far, as disjoint inclusive ranges: a feed numbered 1, 2, 3, ... is one
/// range however long it is.
#[derive(Debug, Default)]
struct IdSet {
    ranges: BTreeMap<u64, u64>,
}

impl IdSet {
    /// Adds `id`; false when it was already there.
    fn insert(&mut self, id: u64) -> bool {
        let below = self.ranges.range(..=id).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, end)) = below
            && end >= id
        {
            return false;
        }
        let above = id
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|end| (next, *end)));
        match (below, above) {
            (Some((start, end)), Some((next, next_end))) if end + 1 == id => {
                self.ranges.remove(&next);
                self.ranges.insert(start, next_end);
            }
            (Some((start, end)), _) if end + 1 == id => {
                self.ranges.insert(start, id);
            }
            (_, Some((next, next_end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(id, next_end);
            }
            _ => {
                self.ranges.insert(id, id);
            }
        }
        true
    }
}

/// Problems of one message, with what is known about it.
struct Collector<'t> {
    message_id: MessageId,
    /// The first [`MAX_RESULTS`] problems, in document order.
    problems: Vec<Problem>,
    /// Problems found after those: counted, not kept (a report would not list them, and a
    /// message of a million unknown elements would otherwise hold a million problems).
    unlisted: usize,
    /// The `AdjustedItem` being checked.
    item: Option<Element<'t>>,
    /// Its valid AmazonOrderItemCode, which goes into its problems: looked up at the item's
    /// first problem, not at each.
    item_code: std::cell::OnceCell<Option<String>>,
    /// The first `currency` attribute of the message and where it was.
    currency: Option<(Currency, Element<'t>)>,
    /// The currency looked up last (a cache that outlives the message).
    last_currency: Option<Currency>,
}

impl<'t> Collector<'t> {
    fn new(last_currency: Option<Currency>) -> Collector<'t> {
        Collector {
            message_id: MessageId::FEED,
            problems: Vec::new(),
            unlisted: 0,
            item: None,
            item_code: std::cell::OnceCell::new(),
            currency: None,
            last_currency,
        }
    }

    fn add(
        &mut self,
        code: Code,
        element: Element<'_>,
        description: String,
        fix: impl Into<Cow<'static, str>>,
    ) {
        if self.is_full() {
            self.unlisted += 1;
            return;
        }
        let problem = self.problem(code, element, description, fix);
        self.problems.push(problem);
    }

    /// A problem at `element` of the current item, not added yet.
    fn problem(
        &self,
        code: Code,
        element: Element<'_>,
        description: String,
        fix: impl Into<Cow<'static, str>>,
    ) -> Problem {
        Problem::new(
            code,
            self.message_id,
            path(element),
            Some(element.position()),
            description,
            fix,
        )
        .with_item(self.item_code())
    }

    fn schema(&mut self, element: Element<'_>, description: String) {
        self.add(
            Code::SchemaInvalid,
            element,
            description,
            "Correct the message as the OrderAdjustment schema says.",
        );
    }

    fn issue(&mut self, issue: &Issue<'_>) {
        if self.is_full() {
            self.unlisted += 1;
            return;
        }
        let element = match issue.missing {
            Some(missing) => format!("{}/{missing}", path(issue.parent)),
            None => path(issue.at),
        };
        self.problems.push(
            Problem::new(
                Code::SchemaInvalid,
                self.message_id,
                element,
                Some(issue.at.position()),
                issue.what.clone(),
                "Correct the message as the OrderAdjustment schema says.",
            )
            .with_item(self.item_code()),
        );
    }

    /// Makes `item` the current `AdjustedItem` (`None`: none).
    fn set_item(&mut self, item: Option<Element<'t>>) {
        self.item = item;
        self.item_code = std::cell::OnceCell::new();
    }

    /// The AmazonOrderItemCode of the current item, when it has a valid one.
    fn item_code(&self) -> Option<String> {
        self.item_code
            .get_or_init(|| {
                self.item
                    .and_then(|item| child(item, "AmazonOrderItemCode"))
                    .and_then(|e| OrderItemCode::new(e.text()))
                    .map(|code| code.as_str().to_owned())
            })
            .clone()
    }

    /// The problems found so far, listed or not.
    fn count(&self) -> usize {
        self.problems.len() + self.unlisted
    }

    fn is_full(&self) -> bool {
        self.problems.len() >= MAX_RESULTS
    }
}

/// Element names that repeat and so always carry an index in paths.
const REPEATED: &[&str] = &["AdjustedItem", "Component", "PromotionAdjustments"];

/// `Message/OrderAdjustment/AdjustedItem[2]/ItemPriceAdjustments/Component[1]/Amount`.
fn path(element: Element<'_>) -> String {
    let mut parts = Vec::new();
    let mut current = Some(element);
    while let Some(el) = current {
        let name = el.name();
        let index = el.index();
        if REPEATED.contains(&name) || index > 1 {
            parts.push(format!("{name}[{index}]"));
        } else {
            parts.push(name.to_owned());
        }
        current = el.parent();
    }
    parts.reverse();
    parts.join("/")
}

fn child<'t>(parent: Element<'t>, name: &str) -> Option<Element<'t>> {
    parent.children().find(|c| c.name() == name)
}

/// Checks a simple element (no attributes, no children) and returns its text.
fn simple<'t>(c: &mut Collector<'_>, element: Element<'t>) -> Option<&'t str> {
    let before = c.count();
    if let Err(what) = check_attributes(element, &[]) {
        c.schema(element, what);
    }
    if let Err(what) = simple_text(element) {
        c.schema(element, what);
    }
    (c.count() == before).then(|| element.text())
}

/// Checks a complex element (no attributes, no text) and its sequence.
fn complex(c: &mut Collector<'_>, element: Element<'_>, particles: &[Particle]) -> bool {
    let before = c.count();
    if let Err(what) = check_attributes(element, &[]) {
        c.schema(element, what);
    }
    if let Err(what) = complex_text(element) {
        c.schema(element, what);
    }
    check_sequence(element, particles, &mut |issue| c.issue(&issue));
    c.count() == before
}

fn check_message(
    tree: &Tree,
    seen_ids: &mut IdSet,
    last_currency: &mut Option<Currency>,
    restocking_fee_max_percent: u32,
) -> ValidatedMessage {
    let Some(message) = tree.root() else {
        return ValidatedMessage::Invalid {
            message_id: MessageId::FEED,
            problems: Vec::new(),
            unlisted: 0,
            precision_pending: None,
        };
    };
    let mut c = Collector::new(*last_currency);
    // MessageID first, so that every later problem names it.
    let id_element = child(message, "MessageID");
    let mut message_id = None;
    if let Some(element) = id_element
        && let Some(text) = simple(&mut c, element)
    {
        let digits = collapse(text);
        let pattern_ok =
            (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        match positive_integer(digits, u64::MAX) {
            Ok(value) if pattern_ok => message_id = MessageId::new(value),
            Err(true) if pattern_ok => c.schema(
                element,
                format!(
                    "MessageID {digits} is larger than {}, the largest supported",
                    u64::MAX
                ),
            ),
            _ => c.schema(
                element,
                format!(
                    "MessageID {} is not a positive integer of at most 20 digits",
                    quoted(text)
                ),
            ),
        }
    }
    if let Some(id) = message_id {
        c.message_id = id;
        for problem in &mut c.problems {
            problem.message_id = id;
        }
    }
    if let Err(what) = check_attributes(message, &[]) {
        c.schema(message, what);
    }
    if let Err(what) = complex_text(message) {
        c.schema(message, what);
    }
    check_sequence(
        message,
        &[
            Particle::one(&["MessageID"]),
            Particle::optional(&["OperationType"]),
            Particle::one(&["OrderAdjustment"]),
        ],
        &mut |issue| c.issue(&issue),
    );
    if let (Some(id), Some(element)) = (message_id, id_element)
        && !seen_ids.insert(id.get())
    {
        c.add(
            Code::DuplicateMessageId,
            element,
            format!("MessageID {id} was already used earlier in this feed"),
            "Give every message of a feed its own MessageID.",
        );
    }
    if let Some(element) = child(message, "OperationType")
        && let Some(text) = simple(&mut c, element)
        && !matches!(text, "Update" | "Delete" | "PartialUpdate")
    {
        c.schema(
            element,
            format!(
                "OperationType {} is not Update, Delete or PartialUpdate",
                quoted(text)
            ),
        );
    }
    let adjustment = child(message, "OrderAdjustment")
        .and_then(|element| check_order_adjustment(&mut c, element, restocking_fee_max_percent));
    // Attach the order id to every problem once it is known.
    let order_id = adjustment
        .as_ref()
        .and_then(|a| match &a.order {
            OrderRef::Amazon(id) => Some(id.as_str().to_owned()),
            OrderRef::Merchant(_) => None,
        })
        .or_else(|| {
            child(message, "OrderAdjustment")
                .and_then(|oa| child(oa, "AmazonOrderID"))
                .and_then(|el| AmazonOrderId::new(el.text()))
                .map(|id| id.as_str().to_owned())
        });
    for problem in &mut c.problems {
        problem.amazon_order_id.clone_from(&order_id);
    }
    *last_currency = c.last_currency;
    match (message_id, adjustment) {
        (Some(message_id), Some(adjustment)) if c.count() == 0 => {
            ValidatedMessage::Valid(AdjustmentMessage {
                message_id,
                position: message.position(),
                ..adjustment
            })
        }
        (message_id, adjustment) => {
            if c.count() == 0 {
                c.schema(message, "the message could not be read".to_owned());
            }
            let precision_pending = match (message_id, adjustment) {
                (Some(message_id), Some(adjustment))
                    if c.unlisted == 0 && may_give_way_to_precision(&adjustment, &c.problems) =>
                {
                    Some(Box::new(AdjustmentMessage {
                        message_id,
                        position: message.position(),
                        ..adjustment
                    }))
                }
                _ => None,
            };
            ValidatedMessage::Invalid {
                message_id: c.message_id,
                problems: c.problems,
                unlisted: c.unlisted as u64,
                precision_pending,
            }
        }
    }
}

/// See [`ValidatedMessage::Invalid::precision_pending`].
fn may_give_way_to_precision(message: &AdjustmentMessage, problems: &[Problem]) -> bool {
    message.currency.is_none()
        && problems.iter().all(|p| {
            matches!(
                p.code,
                Code::RestockingFeeExceedsLimit | Code::NetNotCredit | Code::LinkedItemFailed
            )
        })
        && message
            .items
            .iter()
            .flat_map(|item| &item.amounts)
            .any(|amount| amount.amount.fraction_digits() > 0)
}

fn check_order_adjustment<'t>(
    c: &mut Collector<'t>,
    adjustment: Element<'t>,
    restocking_fee_max_percent: u32,
) -> Option<AdjustmentMessage> {
    complex(
        c,
        adjustment,
        &[
            Particle::one(&["AmazonOrderID", "MerchantOrderID"]),
            Particle::optional(&["ActionType"]),
            Particle::optional(&["CODCollectionMethod"]),
            Particle::many(&["AdjustedItem"], 1),
        ],
    );
    let mut order = None;
    let mut order_position = None;
    let mut action = None;
    for element in adjustment.children() {
        match element.name() {
            "AmazonOrderID" if order_position.is_none() => {
                order_position = Some(element.position());
                if let Some(text) = simple(c, element) {
                    match AmazonOrderId::new(text) {
                        Some(id) => order = Some(OrderRef::Amazon(id)),
                        None => c.schema(
                            element,
                            format!("AmazonOrderID {} is not 3-7-7 ASCII letters or digits joined by hyphens (e.g. 123-1234567-1234567)", quoted(text)),
                        ),
                    }
                }
            }
            "MerchantOrderID" if order_position.is_none() => {
                order_position = Some(element.position());
                order = seller_id(c, element, 50).map(OrderRef::Merchant);
            }
            "ActionType" if action.is_none() => {
                if let Some(text) = simple(c, element) {
                    match ActionType::from_str(text) {
                        Ok(value) => action = Some(value),
                        Err(()) => c.schema(
                            element,
                            format!("ActionType {} is not Refund or Cancel", quoted(text)),
                        ),
                    }
                }
            }
            "CODCollectionMethod" => {
                if let Some(text) = simple(c, element)
                    && text != "DirectPayment"
                {
                    c.schema(
                        element,
                        format!("CODCollectionMethod {} is not DirectPayment", quoted(text)),
                    );
                }
            }
            _ => {}
        }
    }
    let mut items = Vec::new();
    let mut items_ok = true;
    let mut spans = Vec::new();
    for element in adjustment.children().filter(|e| e.name() == "AdjustedItem") {
        let start = c.count();
        match check_item(c, element, action, restocking_fee_max_percent) {
            Some(item) => items.push(item),
            None => items_ok = false,
        }
        spans.push(ItemSpan {
            element,
            problems: start..c.count(),
        });
    }
    add_linked_problems(c, &spans);
    c.set_item(None);
    let order = order?;
    (items_ok && !items.is_empty()).then(|| AdjustmentMessage {
        message_id: MessageId::FEED,
        order,
        action,
        currency: c.currency.map(|(currency, _)| currency),
        items,
        position: adjustment.position(),
        order_position: order_position.unwrap_or(adjustment.position()),
    })
}

/// An `AdjustedItem` with the range of the message's problems that are its own.
struct ItemSpan<'t> {
    element: Element<'t>,
    problems: std::ops::Range<usize>,
}

/// At most this many failed items are named in a LINKED_ITEM_FAILED description; a message
/// of many items, many of them failing, would otherwise repeat the whole list in each.
const LINKED_NAMES: usize = 3;

/// refund-rules §c4 step 16, as the engine does it for the rules it checks: when an item of
/// a message of several fails, every other item gets LINKED_ITEM_FAILED, in its own place
/// (document order), so the seller learns that it was not applied either.
///
/// Only the items' own problems count as failures. A problem of the message itself
/// (MessageID, the order id, ActionType, the OrderAdjustment's sequence) rejects the message
/// as a whole: it says so once, and it names no item to link the others to.
fn add_linked_problems<'t>(c: &mut Collector<'t>, spans: &[ItemSpan<'t>]) {
    let failed: Vec<usize> = (0..spans.len())
        .filter(|&index| !spans[index].problems.is_empty())
        .collect();
    if spans.len() < 2 || failed.is_empty() || failed.len() == spans.len() {
        return;
    }
    let names: Vec<String> = failed
        .iter()
        .take(LINKED_NAMES)
        .map(|index| format!("AdjustedItem[{}]", index + 1))
        .collect();
    let mut names = names.join(", ");
    if failed.len() > LINKED_NAMES {
        let more = failed.len() - LINKED_NAMES;
        let noun = if more == 1 { "item" } else { "items" };
        names = format!("{names} and {more} more {noun}");
    }
    let description = format!(
        "not applied because {names} of the same message failed; the items of a message apply together or not at all"
    );
    let fix = format!(
        "Correct the failing {} and resend the whole message; the same MerchantAdjustmentItemIDs may be used, as a validation rejection is not recorded under them.",
        if failed.len() == 1 { "item" } else { "items" }
    );
    // One pass that puts each linked problem where its item's problems would be. Only the
    // first problems are listed (`Collector::unlisted`): a linked problem after an unlisted
    // one is not listed either, and what the linked ones push past the end is counted.
    let mut own = std::mem::take(&mut c.problems).into_iter();
    let listed = own.len();
    let mut taken = 0;
    let mut problems = Vec::with_capacity(listed + spans.len() - failed.len());
    for span in spans.iter().filter(|span| span.problems.is_empty()) {
        if span.problems.start > listed {
            c.unlisted += 1;
            continue;
        }
        problems.extend(own.by_ref().take(span.problems.start - taken));
        taken = span.problems.start;
        c.set_item(Some(span.element));
        problems.push(c.problem(
            Code::LinkedItemFailed,
            span.element,
            description.clone(),
            fix.clone(),
        ));
    }
    problems.extend(own);
    if problems.len() > MAX_RESULTS {
        c.unlisted += problems.len() - MAX_RESULTS;
        problems.truncate(MAX_RESULTS);
    }
    c.problems = problems;
}

/// A seller-chosen id (`xs:normalizedString`, 1 to `max` characters).
fn seller_id(c: &mut Collector<'_>, element: Element<'_>, max: usize) -> Option<SellerId> {
    let text = simple(c, element)?;
    let value = normalized(text);
    let length = value.chars().count();
    let name = element.name();
    if length == 0 {
        c.schema(element, format!("{name} is empty"));
        return None;
    }
    if length > max {
        c.schema(
            element,
            format!(
                "{name} is {} long; at most {max} are allowed",
                count(length, "character")
            ),
        );
        return None;
    }
    // Spaces at either end (an indenting exporter's) are no part of the id: a key or an id
    // written padded names the same adjustment, order or item as without.
    let trimmed = collapse(&value);
    if trimmed.is_empty() {
        c.schema(
            element,
            format!("{name} {} holds only white space", quoted(&value)),
        );
        return None;
    }
    let id = SellerId::new(trimmed);
    if id.is_none() {
        c.schema(
            element,
            format!("{name} {} is not a valid identifier", quoted(&value)),
        );
    }
    id
}

/// One amount of an item with the elements it came from.
struct Parsed<'t> {
    component: Component,
    /// See [`ComponentAmount::group`].
    group: u32,
    amount: Amount,
    type_element: Element<'t>,
    amount_element: Element<'t>,
}

fn check_item<'t>(
    c: &mut Collector<'t>,
    item: Element<'t>,
    action: Option<ActionType>,
    restocking_fee_max_percent: u32,
) -> Option<AdjustedItem> {
    c.set_item(Some(item));
    let before = c.count();
    complex(
        c,
        item,
        &[
            Particle::one(&["AmazonOrderItemCode", "MerchantOrderItemID"]),
            Particle::optional(&["MerchantAdjustmentItemID"]),
            Particle::one(&["AdjustmentReason"]),
            Particle::optional(&["ItemPriceAdjustments"]),
            Particle::many(&["PromotionAdjustments"], 0),
            Particle::optional(&["DirectPaymentAdjustments"]),
            Particle::optional(&["QuantityCancelled"]),
            Particle::optional(&["Quantity"]),
        ],
    );
    let mut item_ref = None;
    let mut positions = ItemPositions::default();
    let mut ref_seen = false;
    let mut key = None;
    let mut reason = None;
    let mut parsed: Vec<Parsed<'t>> = Vec::new();
    let mut promotion_groups: u32 = 0;
    // For the current group (ItemPriceAdjustments, or one PromotionAdjustments): the first
    // Component of each type, by `component_slot`, as its index in `parsed` plus 1 (0: none
    // yet); and the duplicates found: (index in `parsed`, index of the first). Each Component
    // costs the same however many the item has.
    let mut group_types: [usize; COMPONENT_SLOTS];
    let mut duplicates: Vec<(usize, usize)> = Vec::new();
    let mut note_type = |parsed: &[Parsed<'t>], group_types: &mut [usize]| {
        if let Some(p) = parsed.last() {
            let first = &mut group_types[component_slot(p.component)];
            if *first == 0 {
                *first = parsed.len();
            } else {
                duplicates.push((parsed.len() - 1, *first - 1));
            }
        }
    };
    let mut quantity_cancelled = None;
    let mut quantity_cancelled_element = None;
    let mut quantity = None;
    for element in item.children() {
        match element.name() {
            "AmazonOrderItemCode" if !ref_seen => {
                ref_seen = true;
                positions.item_ref = element.position();
                if let Some(text) = simple(c, element) {
                    match OrderItemCode::new(text) {
                        Some(code) => item_ref = Some(ItemRef::Amazon(code)),
                        None => c.schema(
                            element,
                            format!(
                                "AmazonOrderItemCode {} is not 14 or 15 digits",
                                quoted(text)
                            ),
                        ),
                    }
                }
            }
            "MerchantOrderItemID" if !ref_seen => {
                ref_seen = true;
                positions.item_ref = element.position();
                item_ref = seller_id(c, element, 50).map(ItemRef::Merchant);
            }
            "MerchantAdjustmentItemID" => {
                positions.key = Some(element.position());
                key = seller_id(c, element, 50);
            }
            "AdjustmentReason" => {
                if let Some(text) = simple(c, element) {
                    match AdjustmentReason::from_str(text) {
                        Ok(value) => reason = Some(value),
                        Err(()) => {
                            let all: Vec<&str> =
                                AdjustmentReason::ALL.iter().map(|r| r.as_str()).collect();
                            c.add(
                                Code::UnknownAdjustmentReason,
                                element,
                                format!(
                                    "AdjustmentReason {} is not one of the schema values",
                                    quoted(text)
                                ),
                                format!("Use one of {}.", all.join(", ")),
                            );
                        }
                    }
                }
            }
            "ItemPriceAdjustments" => {
                complex(c, element, &[Particle::many(&["Component"], 1)]);
                group_types = [0; COMPONENT_SLOTS];
                for component in element.children().filter(|e| e.name() == "Component") {
                    if let Some(p) = check_component(c, component, price_type_names, |t| {
                        PriceComponent::from_str(t).ok().map(Component::Price)
                    }) {
                        parsed.push(p);
                        note_type(&parsed, &mut group_types);
                    }
                }
            }
            "PromotionAdjustments" => {
                // Only names the element in paths (`PromotionAdjustments[n]`); duplicates are
                // found per element, whatever the count.
                promotion_groups = promotion_groups.saturating_add(1);
                group_types = [0; COMPONENT_SLOTS];
                complex(
                    c,
                    element,
                    &[
                        Particle::optional(&["PromotionClaimCode"]),
                        Particle::optional(&["MerchantPromotionID"]),
                        Particle::many(&["Component"], 1),
                    ],
                );
                for part in element.children() {
                    match part.name() {
                        "PromotionClaimCode" => {
                            if let Some(text) = simple(c, part) {
                                let n = text.chars().count();
                                if !(6..=12).contains(&n) {
                                    c.schema(
                                        part,
                                        format!(
                                            "PromotionClaimCode is {} long; it must be 6 to 12",
                                            count(n, "character")
                                        ),
                                    );
                                }
                            }
                        }
                        "MerchantPromotionID" => {
                            if let Some(text) = simple(c, part) {
                                let n = normalized(text).chars().count();
                                if n > 80 {
                                    c.schema(
                                        part,
                                        format!("MerchantPromotionID is {} long; at most 80 are allowed", count(n, "character")),
                                    );
                                }
                            }
                        }
                        "Component" => {
                            if let Some(p) = check_component(c, part, promotion_type_names, |t| {
                                PromotionComponent::from_str(t)
                                    .ok()
                                    .map(Component::Promotion)
                            }) {
                                parsed.push(Parsed {
                                    group: promotion_groups,
                                    ..p
                                });
                                note_type(&parsed, &mut group_types);
                            }
                        }
                        _ => {}
                    }
                }
            }
            "DirectPaymentAdjustments" => {
                complex(c, element, &[Particle::many(&["Component"], 1)]);
                for component in element.children().filter(|e| e.name() == "Component") {
                    complex(
                        c,
                        component,
                        &[Particle::one(&["Type"]), Particle::one(&["Amount"])],
                    );
                    if let Some(amount) = child(component, "Amount") {
                        check_amount(c, amount);
                    }
                }
                // Cash-on-delivery refunds paid outside Amazon: the store has no place for
                // them, and applying the rest of the message without them would lose money
                // facts silently (refund-rules c2, I6).
                c.add(
                    Code::UnsupportedAdjustment,
                    element,
                    "DirectPaymentAdjustments (cash-on-delivery refunds) are not applied by adjustd".to_owned(),
                    "Send this refund in ItemPriceAdjustments, or apply the cash-on-delivery part in Seller Central.",
                );
            }
            "QuantityCancelled" => {
                quantity_cancelled_element = Some(element);
                positions.quantity_cancelled = Some(element.position());
                quantity_cancelled = check_quantity(c, element);
            }
            "Quantity" => {
                positions.quantity = Some(element.position());
                quantity = check_quantity(c, element);
            }
            _ => {}
        }
    }
    let item_ref = item_ref?;
    let reason = reason?;
    if c.count() != before {
        return None;
    }
    // Rules that need no store, on a schema-valid item.
    // A type may appear once in ItemPriceAdjustments and once in each PromotionAdjustments:
    // every PromotionAdjustments is one promotion (its own PromotionClaimCode or
    // MerchantPromotionID, feed-format §1.2), so two promotions may each reverse a Principal
    // discount; the engine and the store add those amounts up. `duplicates` holds the
    // Components whose type their group had before (found as they were read).
    for &(index, first) in &duplicates {
        let (p, first) = (&parsed[index], parsed[first].type_element);
        let (container, fix) = match p.group {
            0 => (
                "AdjustedItem",
                "Put the whole amount of a component in one Component element.",
            ),
            _ => (
                "PromotionAdjustments",
                "Put the whole amount a promotion takes back for a component in one Component element; another promotion goes in its own PromotionAdjustments.",
            ),
        };
        c.add(
            Code::DuplicateComponent,
            p.type_element,
            format!(
                "component {} appears twice in this {container} (first at line {})",
                p.component,
                first.position().line
            ),
            fix,
        );
    }
    for p in &parsed {
        match p.component.class() {
            ComponentClass::Charge | ComponentClass::Concession if p.amount.is_negative() => c.add(
                Code::NegativeRefundComponent,
                p.amount_element,
                format!(
                    "{} is {}: a refund of {} cannot be negative",
                    p.component,
                    collapse(p.amount_element.text()),
                    p.component
                ),
                "Send refunds as positive amounts; charge the buyer only with fee components (RestockingFee, RestockingFeeTax, ReturnShipping).",
            ),
            ComponentClass::Promotion if p.amount.value() > Decimal::ZERO => c.add(
                Code::NegativeRefundComponent,
                p.amount_element,
                format!(
                    "{} is {}: a promotion reversal takes the discount back, so it must be negative",
                    p.component,
                    collapse(p.amount_element.text())
                ),
                "Write promotion adjustments as negative amounts (e.g. -2.00).",
            ),
            _ => {}
        }
    }
    if let (Some(element), Some(_)) = (quantity_cancelled_element, quantity_cancelled)
        && !reason.allows_cancellation()
    {
        c.add(
                Code::CancelReasonInvalid,
                element,
                format!("QuantityCancelled is given with AdjustmentReason {reason}"),
                "Use AdjustmentReason NoInventory or CustomerCancel for a partial cancellation, or remove QuantityCancelled.",
            );
    }
    if action == Some(ActionType::Cancel) && quantity_cancelled_element.is_none() {
        c.add(
            Code::CancelWithoutQuantity,
            item,
            "ActionType is Cancel but this AdjustedItem has no QuantityCancelled".to_owned(),
            "Give the number of units cancelled in QuantityCancelled, or use ActionType Refund.",
        );
    }
    if c.count() != before {
        return None;
    }
    // Step 3 in the message's currency: each amount fits minor units (`check_amount`), but
    // their net may not. The engine checks it in the order's currency, which is this one or
    // the message fails with CURRENCY_MISMATCH.
    if let Some((currency, _)) = c.currency
        && net_overflows(&parsed, currency)
    {
        let (description, fix) = net_too_large_texts(currency);
        c.add(Code::AmountFormat, item, description, fix);
        return None;
    }
    // Steps 7 and 8 (restocking fee, net): the item is complete whether or not they fail, so
    // a message that names no currency can still get AMOUNT_PRECISION in its order's
    // currency first (step 3) once the order is known ([`ValidatedMessage::Invalid`]).
    check_restocking_fee(c, item, &parsed, restocking_fee_max_percent);
    if c.count() == before {
        let pure_cancellation = quantity_cancelled.is_some() && parsed.is_empty();
        let net = parsed
            .iter()
            .try_fold(Decimal::ZERO, |sum, p| sum.checked_add(p.amount.value()));
        match net {
            _ if pure_cancellation => {}
            Some(net) if net > Decimal::ZERO => {}
            Some(mut net) => {
                // Shown with as many fraction digits as the amounts were written with
                // ("-1.00", not "-1").
                let digits = parsed
                    .iter()
                    .filter_map(|p| {
                        let written = p.amount.written().to_string();
                        written.split_once('.').map(|(_, fraction)| fraction.len())
                    })
                    .max()
                    .unwrap_or(0);
                let digits = u32::try_from(digits).unwrap_or(0);
                net.rescale(digits);
                let (mut credits, mut charges) = parsed.iter().map(|p| p.amount.value()).fold(
                    (Decimal::ZERO, Decimal::ZERO),
                    |(credits, charges), amount| {
                        if amount > Decimal::ZERO {
                            (credits.saturating_add(amount), charges)
                        } else {
                            (credits, charges.saturating_add(amount))
                        }
                    },
                );
                credits.rescale(digits);
                charges.rescale(digits);
                let (why, fix) = if charges.is_zero() {
                    (
                        String::new(),
                        "Give the refund as a positive amount, or send a pure QuantityCancelled without amounts.",
                    )
                } else {
                    (
                        format!(
                            ": its refunds ({credits}) do not outweigh its fees and promotion reversals ({charges})"
                        ),
                        "Lower the negative amounts (fees such as RestockingFee, or PromotionAdjustments) below the refunds, or send a pure QuantityCancelled without amounts.",
                    )
                };
                c.add(
                Code::NetNotCredit,
                item,
                format!(
                    "the net of this AdjustedItem is {net}{why}; an adjustment must credit the buyer (price and promotion amounts must add up to more than zero)"
                ),
                fix,
            );
            }
            None => c.add(
                Code::AmountFormat,
                item,
                "the amounts of this AdjustedItem add up to more than can be represented"
                    .to_owned(),
                "Send realistic amounts.",
            ),
        }
    }
    Some(AdjustedItem {
        item: item_ref,
        key,
        earlier_key: None,
        reason,
        amounts: parsed
            .iter()
            .map(|p| ComponentAmount {
                component: p.component,
                amount: p.amount,
                position: p.amount_element.position(),
                group: p.group,
            })
            .collect(),
        quantity_cancelled,
        quantity,
        position: item.position(),
        positions,
    })
}

/// One more than the largest [`component_slot`].
const COMPONENT_SLOTS: usize = PriceComponent::ALL.len() + PromotionComponent::ALL.len();

/// A small number of its own for each component type (price types, then promotion types).
fn component_slot(component: Component) -> usize {
    match component {
        Component::Price(price) => price as usize,
        Component::Promotion(promotion) => PriceComponent::ALL.len() + promotion as usize,
    }
}

/// True when every amount of the item fits minor units of `currency` but their net does
/// not (one that does not fit is the engine's first finding, and so `check_amount`'s).
fn net_overflows(parsed: &[Parsed<'_>], currency: Currency) -> bool {
    let mut net: i64 = 0;
    let mut overflows = false;
    for p in parsed {
        let Some(minor) = p.amount.to_minor(currency) else {
            return false;
        };
        match net.checked_add(minor) {
            Some(sum) => net = sum,
            None => overflows = true,
        }
    }
    overflows
}

/// |RestockingFee + RestockingFeeTax| (when a charge) may be at most the configured share
/// of the Principal refunded in the same item.
fn check_restocking_fee(
    c: &mut Collector<'_>,
    item: Element<'_>,
    parsed: &[Parsed<'_>],
    max_percent: u32,
) {
    let mut fees = Decimal::ZERO;
    let mut first_fee = None;
    let mut principal = Decimal::ZERO;
    for p in parsed {
        match p.component {
            Component::Price(price) if price.is_restocking_fee() => {
                fees = fees.checked_add(p.amount.value()).unwrap_or(Decimal::MIN);
                first_fee.get_or_insert(p.amount_element);
            }
            Component::Price(PriceComponent::Principal) => principal = p.amount.value(),
            _ => {}
        }
    }
    if fees >= Decimal::ZERO {
        return;
    }
    let charged = -fees;
    let percent = Decimal::from(max_percent);
    let exceeds = match (
        charged.checked_mul(Decimal::ONE_HUNDRED),
        principal.checked_mul(percent),
    ) {
        (Some(left), Some(right)) => left > right,
        _ => true,
    };
    if exceeds {
        // Amounts in the message's currency when it names one, else with as many decimals
        // as the seller wrote; the allowed fee rounds down, so it is never over the limit.
        let currency = c.currency.map(|(currency, _)| currency);
        let places = currency.map_or_else(
            || {
                parsed
                    .iter()
                    .map(|p| p.amount.value().scale())
                    .max()
                    .unwrap_or(0)
            },
            |currency| currency.exponent(),
        );
        let suffix = currency.map_or_else(String::new, |currency| format!(" {currency}"));
        let money = |value: Decimal| {
            let value = value.round_dp_with_strategy(places, RoundingStrategy::ToZero);
            format!("{value:.prec$}{suffix}", prec = places as usize)
        };
        let allowed = principal
            .checked_mul(percent)
            .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
            .unwrap_or(Decimal::ZERO);
        c.add(
            Code::RestockingFeeExceedsLimit,
            first_fee.unwrap_or(item),
            format!(
                "restocking fees of {} are more than {max_percent}% of the Principal refunded in this item ({})",
                money(charged),
                money(principal)
            ),
            format!(
                "Charge at most {} as RestockingFee + RestockingFeeTax for this item.",
                money(allowed)
            ),
        );
    }
}

fn price_type_names() -> String {
    let names: Vec<&str> = PriceComponent::ALL.iter().map(|p| p.as_str()).collect();
    names.join(", ")
}

fn promotion_type_names() -> String {
    let names: Vec<&str> = PromotionComponent::ALL.iter().map(|p| p.as_str()).collect();
    names.join(", ")
}

/// A `Component` of `Type` + `Amount`; `parse_type` maps the type name.
fn check_component<'t>(
    c: &mut Collector<'t>,
    component: Element<'t>,
    allowed: fn() -> String,
    parse_type: impl FnOnce(&str) -> Option<Component>,
) -> Option<Parsed<'t>> {
    let before = c.count();
    complex(
        c,
        component,
        &[Particle::one(&["Type"]), Particle::one(&["Amount"])],
    );
    let type_element = child(component, "Type")?;
    let amount_element = child(component, "Amount")?;
    let mut kind = None;
    if let Some(text) = simple(c, type_element) {
        kind = parse_type(text);
        if kind.is_none() {
            c.add(
                Code::UnknownComponentType,
                type_element,
                format!(
                    "Component Type {} is not one of the schema values",
                    quoted(text)
                ),
                format!("Use one of {}.", allowed()),
            );
        }
    }
    let amount = check_amount(c, amount_element);
    if c.count() != before {
        return None;
    }
    Some(Parsed {
        component: kind?,
        group: 0,
        amount: amount?,
        type_element,
        amount_element,
    })
}

/// An `Amount`: xs:decimal with at most 20 integer digits (AMOUNT_FORMAT) and no more
/// significant fraction digits than its currency has (AMOUNT_PRECISION: at most
/// [`Currency::MAX_EXPONENT`] when the currency is not known here), and an optional ISO 4217
/// `currency` attribute that must agree with the message's other amounts. An amount gets at
/// most one problem about its number (format or precision); the currency problems come after
/// it.
fn check_amount<'t>(c: &mut Collector<'t>, element: Element<'t>) -> Option<Amount> {
    let before = c.count();
    if let Err(what) = check_attributes(element, &["currency"]) {
        c.schema(element, what);
    }
    if let Err(what) = simple_text(element) {
        c.schema(element, what);
    }
    if c.count() != before {
        return None;
    }
    let text = element.text();
    // The number and its significant fraction digits (trailing zeros do not count). An
    // amount with more fraction
    // digits than an `Amount` holds is too precise for any currency, like one with 5.
    let (amount, fraction_digits) = match Amount::parse(text) {
        Ok(amount) => (Some(amount), amount.fraction_digits()),
        Err(AmountError::FractionDigits { significant }) => (None, significant),
        Err(error) => {
            let what = match error {
                AmountError::IntegerDigits => "has more than 20 integer digits",
                _ => {
                    "is not a plain decimal number (digits, optional sign and decimal point; no exponent, thousands separator or currency symbol)"
                }
            };
            c.add(
                Code::AmountFormat,
                element,
                format!("Amount {} {what}", quoted(collapse(text))),
                "Write amounts like 12.34 or -4.00.",
            );
            (None, 0)
        }
    };
    let code = element
        .attributes()
        .find(|attribute| attribute.name == "currency")
        .map(|attribute| attribute.value);
    let currency = code.and_then(|code| {
        // `Currency::from_code` scans the ISO table; a feed uses one or two currencies.
        let known = c
            .currency
            .map(|(currency, _)| currency)
            .into_iter()
            .chain(c.last_currency)
            .find(|currency| currency.code() == code);
        let currency = known.or_else(|| Currency::from_code(code));
        if let Some(currency) = currency {
            c.last_currency = Some(currency);
        }
        currency
    });
    // As written, without surrounding white space (a number that parsed or has too many
    // fraction digits: digits, a sign and a point only).
    let shown = collapse(text);
    match currency {
        Some(currency) if fraction_digits > currency.exponent() => {
            let code = currency.code();
            let (description, fix) =
                precision_texts("Amount", shown, fraction_digits, currency, code);
            c.add(Code::AmountPrecision, element, description, fix);
        }
        // Held in minor units, the amount must fit an i64: checked as the engine checks it
        // in the order's currency, which must be this one.
        Some(currency) if amount.is_some_and(|amount| amount.to_minor(currency).is_none()) => {
            let written = amount.map(|amount| amount.written().to_string());
            let (description, fix) =
                too_large_texts("Amount", written.as_deref().unwrap_or(shown), currency);
            c.add(Code::AmountFormat, element, description, fix);
        }
        None if fraction_digits > Currency::MAX_EXPONENT => c.add(
            Code::AmountPrecision,
            element,
            format!(
                "Amount {shown} has {}; no currency allows more than {}",
                count(fraction_digits, "significant fraction digit"),
                Currency::MAX_EXPONENT
            ),
            "Write the amount with at most as many fraction digits as the order's currency has (JPY none, USD 2, KWD 3, CLF 4); adjustd never rounds.",
        ),
        _ => {}
    }
    if let Some(code) = code {
        match currency {
            None => c.add(
                Code::CurrencyUnknown,
                element,
                format!("currency {} is not an ISO 4217 currency code", quoted(code)),
                "Use the order's three-letter ISO 4217 code in upper case, e.g. USD.",
            ),
            Some(currency) => match c.currency {
                None => c.currency = Some((currency, element)),
                Some((first, first_element)) if first != currency => c.add(
                    Code::CurrencyMismatch,
                    element,
                    format!(
                        "currency {currency} differs from {first} used earlier in this message (line {})",
                        first_element.position().line
                    ),
                    "Use one currency, the order's, for all amounts of a message.",
                ),
                Some(_) => {}
            },
        }
    }
    if c.count() != before {
        return None;
    }
    amount
}

fn check_quantity(c: &mut Collector<'_>, element: Element<'_>) -> Option<Quantity> {
    let text = simple(c, element)?;
    let name = element.name();
    match positive_integer(text, u64::from(u32::MAX)) {
        Ok(value) => u32::try_from(value).ok().and_then(Quantity::new),
        Err(false) => {
            c.add(
                Code::QuantityInvalid,
                element,
                format!("{name} {} is not a positive integer", quoted(text)),
                "Write a whole number of units, 1 or more.",
            );
            None
        }
        Err(true) => {
            c.add(
                Code::QuantityInvalid,
                element,
                format!(
                    "{name} {} is too large (at most {})",
                    collapse(text),
                    u32::MAX
                ),
                "Write the real number of units.",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_set_merges_neighbouring_ranges() {
        let mut ids = IdSet::default();
        for id in [1, 2, 3, 10, 5, 4, 9, u64::MAX, u64::MAX - 1] {
            assert!(ids.insert(id), "{id}");
        }
        for id in [1, 3, 4, 5, 9, 10, u64::MAX] {
            assert!(!ids.insert(id), "{id}");
        }
        assert_eq!(
            ids.ranges.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(1, 5), (9, 10), (u64::MAX - 1, u64::MAX)]
        );
        assert!(ids.insert(6) && ids.insert(8) && ids.insert(7));
        assert_eq!(ids.ranges.len(), 2);
    }

    #[test]
    fn date_times_follow_xsd() {
        for ok in [
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00Z",
            "2024-02-29T23:59:59.999+14:00",
            "2000-02-29T24:00:00-05:30",
            "-0044-03-15T12:00:00",
            "12024-01-01T00:00:00Z",
        ] {
            assert!(is_xsd_date_time(ok), "{ok}");
        }
        for bad in [
            "2023-02-29T12:00:00",
            "2024-13-01T12:00:00",
            "2024-05-01",
            "2024-05-01 12:00:00",
            "2024-05-01T24:00:01",
            "2024-05-01T12:00:00+15:00",
            "0000-01-01T00:00:00",
            "02024-01-01T00:00:00",
            "2024-05-01T12:00:00.",
            "2024-5-01T12:00:00",
        ] {
            assert!(!is_xsd_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn positive_integers_follow_xsd() {
        assert_eq!(positive_integer(" +005\n", 10), Ok(5));
        assert_eq!(positive_integer("0", 10), Err(false));
        assert_eq!(positive_integer("-1", 10), Err(false));
        assert_eq!(positive_integer("1 0", 10), Err(false));
        assert_eq!(positive_integer("", 10), Err(false));
        assert_eq!(positive_integer("11", 10), Err(true));
        assert_eq!(
            positive_integer("99999999999999999999999", u64::MAX),
            Err(true)
        );
        assert_eq!(
            positive_integer("18446744073709551615", u64::MAX),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn normalized_strings_replace_but_do_not_trim() {
        assert_eq!(normalized("a\tb\r\nc"), "a b  c");
        assert_eq!(normalized(" x "), " x ");
        assert!(is_version("1.01", 2) && is_version("12.3", 2) && !is_version("123.1", 2));
        assert!(!is_version("1.", 2) && !is_version(" 1.0", 2) && is_version("1234.1", 4));
    }

    /// Validates one message (the text inside `<OrderAdjustment>` after the order id) and
    /// lists its problems as `code element: description`.
    fn message_problems(items: &str) -> Vec<String> {
        let feed = format!(
            "<AmazonEnvelope><Header><DocumentVersion>1.01</DocumentVersion>\
             <MerchantIdentifier>M</MerchantIdentifier></Header><MessageType>OrderAdjustment</MessageType>\
             <Message><MessageID>1</MessageID><OrderAdjustment><AmazonOrderID>123-1234567-1234567</AmazonOrderID>\
             {items}</OrderAdjustment></Message></AmazonEnvelope>"
        );
        let mut validator = Validator::new(feed.as_bytes(), Limits::default(), &Rules::default());
        match validator.next_message() {
            Ok(Some(ValidatedMessage::Invalid { problems, .. })) => problems
                .iter()
                .map(|p| format!("{} {}: {}", p.code.name(), p.element, p.description))
                .collect(),
            other => panic!("expected an invalid message, got {other:?}"),
        }
    }

    fn item(amount: &str) -> String {
        format!(
            "<AdjustedItem><AmazonOrderItemCode>12345678901234</AmazonOrderItemCode>\
             <AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component>\
             <Type>Principal</Type><Amount>{amount}</Amount></Component></ItemPriceAdjustments></AdjustedItem>"
        )
    }

    #[test]
    fn the_other_items_of_a_failing_item_are_linked_to_it_in_document_order() {
        let items = ["1.00", "-1.00", "-2.00", "2.00", "-3.00", "-4.00"].map(item);
        let found = message_problems(&items.concat());
        let codes: Vec<&str> = found
            .iter()
            .map(|p| p.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            codes,
            [
                "LINKED_ITEM_FAILED",
                "NEGATIVE_REFUND_COMPONENT",
                "NEGATIVE_REFUND_COMPONENT",
                "LINKED_ITEM_FAILED",
                "NEGATIVE_REFUND_COMPONENT",
                "NEGATIVE_REFUND_COMPONENT",
            ]
        );
        assert_eq!(
            found[3],
            "LINKED_ITEM_FAILED Message/OrderAdjustment/AdjustedItem[4]: not applied because \
             AdjustedItem[2], AdjustedItem[3], AdjustedItem[5] and 1 more item of the same \
             message failed; the items of a message apply together or not at all"
        );
    }

    #[test]
    fn ids_written_with_spaces_at_either_end_name_the_same_thing() {
        let feed = "<AmazonEnvelope><Header><DocumentVersion>1.01</DocumentVersion>\
             <MerchantIdentifier>M</MerchantIdentifier></Header><MessageType>OrderAdjustment</MessageType>\
             <Message><MessageID>1</MessageID><OrderAdjustment><MerchantOrderID>\n  SHOP 1\t</MerchantOrderID>\
             <AdjustedItem><MerchantOrderItemID> LINE-1 </MerchantOrderItemID>\
             <MerchantAdjustmentItemID>\n    RET-1\n</MerchantAdjustmentItemID>\
             <AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component>\
             <Type>Principal</Type><Amount>1.00</Amount></Component></ItemPriceAdjustments></AdjustedItem>\
             </OrderAdjustment></Message></AmazonEnvelope>";
        let mut validator = Validator::new(feed.as_bytes(), Limits::default(), &Rules::default());
        let Ok(Some(ValidatedMessage::Valid(message))) = validator.next_message() else {
            panic!("expected a valid message");
        };
        let id = |raw| SellerId::new(raw).expect("an id");
        assert_eq!(message.order, OrderRef::Merchant(id("SHOP 1")));
        assert_eq!(message.items[0].item, ItemRef::Merchant(id("LINE-1")));
        assert_eq!(message.items[0].key, Some(id("RET-1")));
    }

    #[test]
    fn a_problem_of_the_message_itself_links_no_items() {
        // A repeated ActionType is the message's problem, not an item's.
        let items = [item("1.00"), item("2.00")].concat();
        let found = message_problems(&format!(
            "<ActionType>Refund</ActionType><ActionType>Refund</ActionType>{items}"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("SCHEMA_INVALID"), "{found:?}");
        // One item alone has nothing to be linked to.
        assert_eq!(message_problems(&item("-1.00")).len(), 1);
    }

    /// Validates a feed of one message holding `adjustment` (the content of
    /// `<OrderAdjustment>`) with these limits.
    fn validate_one(adjustment: &str, limits: Limits) -> ValidatedMessage {
        let feed = format!(
            "<AmazonEnvelope><Header><DocumentVersion>1.01</DocumentVersion>\
             <MerchantIdentifier>M</MerchantIdentifier></Header><MessageType>OrderAdjustment</MessageType>\
             <Message><MessageID>1</MessageID><OrderAdjustment>{adjustment}</OrderAdjustment></Message></AmazonEnvelope>"
        );
        let mut validator = Validator::new(feed.as_bytes(), limits, &Rules::default());
        validator
            .next_message()
            .expect("no feed-level problem")
            .expect("a message")
    }

    #[test]
    fn a_message_keeps_its_first_max_results_problems_and_counts_the_rest() {
        let unknown = "<x/>".repeat(MAX_RESULTS + 3);
        let adjustment = format!("<AmazonOrderID>123-1234567-1234567</AmazonOrderID>{unknown}");
        let ValidatedMessage::Invalid {
            problems, unlisted, ..
        } = validate_one(&adjustment, Limits::default())
        else {
            panic!("expected an invalid message");
        };
        assert_eq!((problems.len(), unlisted), (MAX_RESULTS, 4));
        // Indexes count the siblings of the same name (unknown elements first, then the
        // missing AdjustedItem, which is not listed).
        assert_eq!(problems[0].element, "Message/OrderAdjustment/x");
        assert_eq!(
            problems[MAX_RESULTS - 1].element,
            format!("Message/OrderAdjustment/x[{MAX_RESULTS}]")
        );
    }

    #[test]
    fn each_promotion_may_take_back_the_same_component_however_many_there_are() {
        // One more PromotionAdjustments than a u16 counts: each takes back 0.01 of the
        // Principal discount. Before the fix every one after the 65 535th shared a group and
        // got a false DUPLICATE_COMPONENT.
        let promotions = 65_537;
        let promotion = "<PromotionAdjustments><Component><Type>Principal</Type><Amount>-0.01</Amount></Component></PromotionAdjustments>";
        let item = |extra: &str| {
            format!(
                "<AmazonOrderID>123-1234567-1234567</AmazonOrderID><AdjustedItem>\
                 <AmazonOrderItemCode>12345678901234</AmazonOrderItemCode>\
                 <AdjustmentReason>CustomerReturn</AdjustmentReason><ItemPriceAdjustments><Component>\
                 <Type>Principal</Type><Amount>1000.00</Amount></Component></ItemPriceAdjustments>\
                 {}{extra}</AdjustedItem>",
                promotion.repeat(promotions)
            )
        };
        let limits = Limits {
            max_message_bytes: 64 * 1024 * 1024,
            ..Limits::default()
        };
        let ValidatedMessage::Valid(message) = validate_one(&item(""), limits) else {
            panic!("expected a valid message");
        };
        let groups = message.items[0].amounts.last().map(|a| a.group);
        assert_eq!(groups, Some(65_537));
        // A type twice in one promotion is still a duplicate, in the last one too.
        let twice = promotion.replace(
            "</PromotionAdjustments>",
            "<Component><Type>Principal</Type><Amount>-0.01</Amount></Component></PromotionAdjustments>",
        );
        let ValidatedMessage::Invalid { problems, .. } = validate_one(&item(&twice), limits) else {
            panic!("expected an invalid message");
        };
        let found: Vec<(Code, &str)> = problems
            .iter()
            .map(|p| (p.code, p.element.as_str()))
            .collect();
        assert_eq!(
            found,
            [(
                Code::DuplicateComponent,
                "Message/OrderAdjustment/AdjustedItem[1]/PromotionAdjustments[65538]/Component[2]/Type"
            )]
        );
    }

    fn issues(xml: &str, particles: &[Particle]) -> Vec<String> {
        let doc = format!("<r>{xml}</r>");
        let mut reader = FeedReader::new(doc.as_bytes(), Limits::default());
        let tree = reader.next_child().expect("ok").expect("element");
        let mut found = Vec::new();
        check_sequence(tree.root().expect("root"), particles, &mut |issue| {
            found.push(format!(
                "{} {:?}: {}",
                issue.at.name(),
                issue.missing,
                issue.what
            ));
        });
        found
    }

    #[test]
    fn sequences_report_missing_extra_and_misplaced_elements() {
        let model = [
            Particle::one(&["A", "B"]),
            Particle::optional(&["C"]),
            Particle::many(&["D"], 1),
            Particle::optional(&["E"]),
        ];
        assert!(issues("<p><A/><C/><D/><D/><E/></p>", &model).is_empty());
        assert!(issues("<p><B/><D/></p>", &model).is_empty());
        assert_eq!(
            issues("<p><C/><D/></p>", &model),
            ["C Some(\"A\"): missing <A> or <B> before <C>"]
        );
        assert_eq!(
            issues("<p><A/><C/><C/></p>", &model),
            [
                "C None: <C> appears more often than allowed (1 at most)",
                "p Some(\"D\"): <p> is missing <D>"
            ]
        );
        assert_eq!(
            issues("<p><A/><D/><C/></p>", &model),
            ["C None: <C> is out of order: it must come before <D>"]
        );
        assert_eq!(
            issues("<p><A/><D/><X/></p>", &model),
            ["X None: unexpected element <X> in <p> (expected <D>, <E>)"]
        );
    }
}
