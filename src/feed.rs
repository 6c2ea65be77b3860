//! The XML wire format: a streaming reader over quick-xml that yields the envelope's root
//! element and then one child of the root at a time (the `Header`, `MessageType`, each
//! `Message`, ...) as a small arena [`Tree`] with line and column positions, enforcing
//! [`Limits`] while reading and refusing DOCTYPE/entity declarations, non-UTF-8 input and
//! anything that is not well-formed. Memory stays flat: one tree is reused for every child
//! of the root, and the input is read into one reused window whose events borrow from it
//! (no copy per event).
//!
//! The start of the file is looked at first, so that an archive, a document or a flat file
//! dropped instead of the feed is named as what it is (`Binary`, `not_xml`) rather than by
//! its first byte XML does not allow, and an empty file as empty.
//!
//! The window is checked once as it arrives (UTF-8, control characters, size), so the
//! common events (start, empty and end tags, text without references) are sliced from it
//! directly (`text_run`, `end_tag`, `start_tag`); everything else (declaration, comments,
//! CDATA, references, DOCTYPE, anything unusual or cut off) is read by quick-xml, which
//! also words the well-formedness problems. Line and column are worked out from byte
//! offsets only for element starts and problems.
//!
//! No business rules and no schema knowledge (that is `validate`), and no I/O beyond the
//! `BufRead` it is given. Every problem this module reports is feed-level
//! ([`MessageId::FEED`]).

// Problems are the contract's error values (see `problem.rs`); boxing them would only
// move the allocation to every caller.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::io::{self, BufRead};

use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::model::{MessageId, Position};
use crate::problem::{Code, Problem, count, quoted};

/// Limits that keep hostile input in bounded memory and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_file_bytes: u64,
    /// Deepest accepted element nesting.
    pub max_depth: u32,
    /// Longest accepted text node or attribute value, in bytes.
    pub max_text_bytes: u64,
    /// Most messages in one feed.
    pub max_messages: u64,
    /// Most bytes of memory one child of the root element (a `Message`) may take once read:
    /// a child is held in memory as a whole, as a [`Tree`] of its elements (about 100 bytes
    /// each), attributes (about 60 bytes each) and text ([`Tree::memory`]). A message of a
    /// real feed takes a few kilobytes (about three times its size in the file).
    pub max_message_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            max_depth: 32,
            max_text_bytes: 64 * 1024,
            max_messages: 5_000_000,
            max_message_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Markup (a start tag with its attributes, a comment, ...) may exceed `max_text_bytes` by
/// this much before the run-length guard stops reading: the guard bounds what quick-xml
/// buffers for one event, while text nodes and attribute values are checked exactly.
const MARKUP_SLACK_BYTES: u64 = 4096;

impl Limits {
    /// The feed-level problem for an exceeded limit: which limit, its value and the
    /// configuration key that raises it.
    pub fn exceeded(
        what: &str,
        value: u64,
        key: &str,
        position: Option<Position>,
        element: &str,
    ) -> Problem {
        Problem::new(
            Code::LimitExceeded,
            MessageId::FEED,
            element,
            position,
            format!("{what} exceeds the limit of {value}"),
            format!(
                "Split the feed or, if the input is trusted, raise `[limits] {key}` in the configuration."
            ),
        )
    }

    /// The feed-level problem for a file of `size` bytes when that is more than
    /// `max_file_bytes`. Callers ask this with the size of the opened file before they
    /// read a byte of it (ingest R8: a file too large is rejected without being read), so
    /// the problem names the size and the limit but no position. The reader checks the
    /// limit again while reading, for a file that grows after this check.
    pub fn file_too_large(&self, size: u64) -> Option<Problem> {
        (size > self.max_file_bytes).then(|| {
            Problem::new(
                Code::LimitExceeded,
                MessageId::FEED,
                "(file)",
                None,
                format!(
                    "the file is {size} bytes, more than the limit of {} bytes (limits.max_file_bytes); it was not read",
                    self.max_file_bytes
                ),
                "Split the feed into smaller files or, if the input is trusted, raise `[limits] max_file_bytes` in the configuration.",
            )
        })
    }
}

/// Whether a file looks like a finished upload (see [`completeness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// Well-formed XML whose root element closes (it may still be an invalid feed).
    Complete,
    /// The root element is not closed at the end of the file and nothing else is wrong so
    /// far: most likely an upload still in progress.
    Incomplete,
    /// Something other than a missing end is wrong; waiting will not help.
    Broken,
}

/// Reads a whole file with the same checks as [`FeedReader`] and says whether it is
/// complete. The daemon uses it to tell a slow upload from a bad feed. Schema validity is
/// not checked.
pub fn completeness<R: BufRead>(reader: R, limits: Limits) -> Completeness {
    let mut feed = FeedReader::new(reader, limits);
    loop {
        match feed.next_child() {
            Ok(Some(_)) => {}
            Ok(None) => return Completeness::Complete,
            Err(problem) if problem.code == Code::Truncated => return Completeness::Incomplete,
            Err(_) => return Completeness::Broken,
        }
    }
}

/// Index of an element in a [`Tree`].
pub type NodeId = usize;

const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    name: Span,
    text: Span,
    attrs: Span,
    parent: usize,
    first_child: usize,
    last_child: usize,
    next_sibling: usize,
    position: Position,
    stray_text: bool,
}

#[derive(Debug, Clone, Copy)]
struct Attr {
    name: Span,
    value: Span,
    /// The namespace of a prefixed name (see [`Attribute::namespace`]).
    namespace: Option<Span>,
}

/// One element with its descendants, stored in reusable buffers (an arena): names, text
/// and attribute values are slices of one string. Element text is the concatenation of the
/// text, CDATA and references before the first child element (entities resolved, line ends
/// normalized); non-blank text after a child element only sets
/// [`Element::has_stray_text`].
#[derive(Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
    attrs: Vec<Attr>,
    strings: String,
    /// Each element's place among its siblings of the same name ([`Element::index`]),
    /// worked out for all elements at once on the first question.
    indexes: std::cell::OnceCell<Vec<usize>>,
}

impl Tree {
    /// The top element, or `None` for an empty tree.
    pub fn root(&self) -> Option<Element<'_>> {
        (!self.nodes.is_empty()).then_some(Element { tree: self, id: 0 })
    }

    /// The element with this id, `None` when there is none.
    pub fn element(&self, id: NodeId) -> Option<Element<'_>> {
        (id < self.nodes.len()).then_some(Element { tree: self, id })
    }

    /// The bytes of memory the tree's content takes (not counting spare capacity): what
    /// `max_message_bytes` limits.
    pub fn memory(&self) -> u64 {
        (self.nodes.len() * std::mem::size_of::<Node>()
            + self.attrs.len() * std::mem::size_of::<Attr>()
            + self.strings.len()) as u64
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.attrs.clear();
        self.strings.clear();
        self.indexes.take();
    }

    /// See [`Tree::indexes`]: one pass over the elements in document order, counting each
    /// parent's children by name, so an index costs the same however many siblings an
    /// element has.
    fn indexes(&self) -> &[usize] {
        self.indexes.get_or_init(|| {
            let mut seen: std::collections::HashMap<(usize, &str), usize> =
                std::collections::HashMap::new();
            self.nodes
                .iter()
                .map(|node| {
                    if node.parent == NONE {
                        return 1;
                    }
                    let count = seen.entry((node.parent, self.str(node.name))).or_insert(0);
                    *count += 1;
                    *count
                })
                .collect()
        })
    }

    fn str(&self, span: Span) -> &str {
        &self.strings[span.start..span.end]
    }

    fn push_str(&mut self, s: &str) -> Span {
        let start = self.strings.len();
        self.strings.push_str(s);
        Span {
            start,
            end: self.strings.len(),
        }
    }
}

/// A borrowed view of one element of a [`Tree`].
#[derive(Debug, Clone, Copy)]
pub struct Element<'t> {
    tree: &'t Tree,
    id: NodeId,
}

impl<'t> Element<'t> {
    fn node(&self) -> &'t Node {
        &self.tree.nodes[self.id]
    }

    /// Its id in the tree.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The element name exactly as written (prefix included).
    pub fn name(&self) -> &'t str {
        self.tree.str(self.node().name)
    }

    /// The text before the first child element (all of it for an element without
    /// children), entities resolved and line ends normalized.
    pub fn text(&self) -> &'t str {
        self.tree.str(self.node().text)
    }

    /// True when non-blank text follows a child element (mixed content).
    pub fn has_stray_text(&self) -> bool {
        self.node().stray_text
    }

    /// Where the start tag begins.
    pub fn position(&self) -> Position {
        self.node().position
    }

    /// Its place among the children of its parent that have the same name, from 1
    /// (`Component[2]` is the second `Component`); 1 for the top element of the tree. The
    /// first call on a tree works it out for all its elements at once.
    pub fn index(&self) -> usize {
        self.tree.indexes().get(self.id).copied().unwrap_or(1)
    }

    /// The parent, `None` for the top element of the tree.
    pub fn parent(&self) -> Option<Element<'t>> {
        let parent = self.node().parent;
        (parent != NONE).then_some(Element {
            tree: self.tree,
            id: parent,
        })
    }

    /// The attributes in document order.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'t>> + 't {
        let tree = self.tree;
        let span = self.node().attrs;
        tree.attrs[span.start..span.end]
            .iter()
            .map(move |a| Attribute {
                name: tree.str(a.name),
                value: tree.str(a.value),
                namespace: a.namespace.map(|namespace| tree.str(namespace)),
            })
    }

    /// The child elements in document order.
    pub fn children(&self) -> Children<'t> {
        Children {
            tree: self.tree,
            next: self.node().first_child,
        }
    }

    /// True when the element has child elements.
    pub fn has_children(&self) -> bool {
        self.node().first_child != NONE
    }
}

/// One attribute of an [`Element`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'t> {
    /// The name exactly as written (prefix included).
    pub name: &'t str,
    /// The value, entities resolved and white space normalized.
    pub value: &'t str,
    /// For a prefixed name (`p:name`, not a declaration `xmlns:p`), the namespace the prefix
    /// is bound to where the element stands: by an `xmlns:p` on the element or the nearest
    /// ancestor that declares it (`xml` is bound from the start). `None` for an unprefixed
    /// name, a declaration, or a prefix that is not declared (or declared empty).
    pub namespace: Option<&'t str>,
}

/// Iterator over the child elements of an [`Element`].
#[derive(Debug, Clone)]
pub struct Children<'t> {
    tree: &'t Tree,
    next: usize,
}

impl<'t> Iterator for Children<'t> {
    type Item = Element<'t>;

    fn next(&mut self) -> Option<Element<'t>> {
        if self.next == NONE {
            return None;
        }
        let element = Element {
            tree: self.tree,
            id: self.next,
        };
        self.next = self.tree.nodes[self.next].next_sibling;
        Some(element)
    }
}

/// Why the byte source stopped the parser (found by [`SourceState`], turned into a
/// [`Problem`] by the reader).
#[derive(Debug, Clone)]
enum SourceFailure {
    FileTooLarge,
    /// Where the run starts.
    RunTooLong(Position),
    Utf16,
    InvalidUtf8(Position),
    NonAscii(Position),
    ForbiddenChar(Position, char),
    /// The file starts like an archive or a document, not like text.
    Binary(Binary),
    /// The first character that is not white space is not `<`: the file's first line from
    /// there, as much of it as was read (see [`SourceState::read_on_line`]), and whether
    /// it goes on past that.
    NotXml(Position, String, bool),
    Read(String),
}

/// Files sellers drop by mistake instead of the feed, known by the magic number their
/// first bytes hold (looked for at the very start only: these formats start there, and
/// a byte order mark is a text file's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    /// Also a .docx or .xlsx, which are ZIP archives.
    Zip,
    Gzip,
    /// An OLE compound file: a .doc or .xls of Office 97-2003.
    OfficeDocument,
    Pdf,
}

/// The magic numbers of [`Binary`] files.
const SIGNATURES: [(&[u8], Binary); 6] = [
    (b"PK\x03\x04", Binary::Zip),
    // An empty archive, and one written in spanned mode.
    (b"PK\x05\x06", Binary::Zip),
    (b"PK\x07\x08", Binary::Zip),
    (b"\x1F\x8B", Binary::Gzip),
    (b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1", Binary::OfficeDocument),
    (b"%PDF-", Binary::Pdf),
];

/// Bytes the first read waits for (or the end of the file): the longest signature, which
/// also covers the four bytes that tell UTF-16 and UTF-32.
const SNIFF_BYTES: usize = 8;

impl Binary {
    fn of(start: &[u8]) -> Option<Binary> {
        SIGNATURES
            .iter()
            .find(|(magic, _)| start.starts_with(magic))
            .map(|&(_, kind)| kind)
    }

    /// What the file is, for "the file is ...".
    fn what(self) -> &'static str {
        match self {
            Binary::Zip => {
                "a ZIP archive (a .zip, or a Word or Excel document: .docx and .xlsx files are ZIP archives)"
            }
            Binary::Gzip => "gzip-compressed (a .gz file)",
            Binary::OfficeDocument => "a Word or Excel document in the older format (.doc or .xls)",
            Binary::Pdf => "a PDF document",
        }
    }
}

/// The most bytes read from the inner reader at once.
const READ_BYTES: usize = 64 * 1024;

/// Characters of the first line of a file that is not XML quoted at most ([`not_xml`]).
const NOT_XML_SHOWN: usize = 40;

/// Bytes of that line read for the quote at most: as many characters of up to 4 bytes, and
/// one more to tell whether the line goes on.
const NOT_XML_LINE_BYTES: usize = (NOT_XML_SHOWN + 1) * 4;

/// The reader's own input window: bytes read from the inner reader into one reused buffer
/// (owned by [`FeedReader`]), checked once in bulk as they arrive (UTF-8, forbidden control
/// characters, US-ASCII when declared, the file size), so events borrow straight from it
/// without a copy or another UTF-8 check. Only the prefix up to the first bad byte
/// (`usable`) is ever parsed: a problem is reported when the parser gets there, with the
/// line and column of that byte. Line and column are counted on demand from the last
/// counted offset (line ends found once per window with memchr: LF, CR LF and a lone CR; a
/// carriage return at the end of what was read waits for the next byte, so a CR LF split
/// between two reads is one line end).
///
/// An event that runs into the end of the window before the file ends is parsed again
/// once more bytes are in; one that would need more than `max_text_bytes` plus slack of
/// buffer stops the reader, so nothing unbounded is ever buffered.
#[derive(Debug)]
struct SourceState {
    max_file_bytes: u64,
    max_run_bytes: u64,
    /// File offset of `data[0]`.
    base: u64,
    /// First unconsumed byte of the window.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// End of the bytes checked.
    checked: usize,
    /// End of the bytes the parser may see.
    usable: usize,
    /// What is wrong with the byte at `usable`, if anything (then no more is read).
    pending: Option<Pending>,
    /// `data[start..usable]` is ASCII (columns are byte counts).
    window_ascii: bool,
    /// `data[start..usable]` holds a carriage return (text needs line-end handling).
    window_cr: bool,
    /// The file ends with an incomplete multi-byte character (inside `usable`).
    trailing_partial: bool,
    /// 1-based line of the next byte.
    line: u32,
    /// Characters already consumed on the current line.
    column: u32,
    ascii_only: bool,
    started: bool,
    /// The file starts with a UTF-8 byte order mark.
    bom: bool,
    /// A byte other than white space was found (after the byte order mark): the file is
    /// not empty.
    content_seen: bool,
    at_eof: bool,
    /// Where `line` and `column` were counted to (at most `start`; see
    /// [`SourceState::position_at`]).
    counted: usize,
    /// Offsets of the line ends in `data[start..usable]` as of the last refill: every line
    /// feed, and every carriage return not followed by one (XML 1.0 §2.11 reads CR LF and a
    /// lone CR as a line feed).
    newlines: Vec<usize>,
    /// Index of the first line end not consumed yet.
    newline_index: usize,
}

/// A problem found ahead of the parser, reported when the parser gets there.
#[derive(Debug, Clone, Copy)]
enum Pending {
    InvalidUtf8,
    Forbidden(char),
    NonAscii,
    FileTooLarge,
    /// The first character that is not white space, and it is not `<`.
    NotXml,
}

impl SourceState {
    fn new(limits: Limits) -> SourceState {
        SourceState {
            max_file_bytes: limits.max_file_bytes,
            max_run_bytes: limits.max_text_bytes.saturating_add(MARKUP_SLACK_BYTES),
            base: 0,
            start: 0,
            end: 0,
            checked: 0,
            usable: 0,
            pending: None,
            window_ascii: true,
            window_cr: false,
            trailing_partial: false,
            line: 1,
            column: 0,
            ascii_only: false,
            started: false,
            bom: false,
            content_seen: false,
            at_eof: false,
            counted: 0,
            newlines: Vec::new(),
            newline_index: 0,
        }
    }

    /// Line and column of `data[counted]`.
    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column.saturating_add(1),
        }
    }

    /// Bytes consumed by the parser (the byte order mark included).
    fn consumed(&self) -> u64 {
        self.base + self.start as u64
    }

    /// No more bytes will be added to the window.
    fn is_final(&self) -> bool {
        self.at_eof || self.pending.is_some()
    }

    /// Consumes `data[start..to]`, moving line and column along.
    fn advance(&mut self, data: &[u8], to: usize) {
        self.start = to;
        self.count_to(data, to);
    }

    /// Line and column of `data[at]`; `at` lies between where the last position was
    /// worked out and `start`. Only element starts and problems need one, so the parser
    /// moves `start` on without counting.
    fn position_at(&mut self, data: &[u8], at: usize) -> Position {
        self.count_to(data, at);
        self.position()
    }

    /// Moves line and column on from `counted` to `to`.
    fn count_to(&mut self, data: &[u8], to: usize) {
        debug_assert!(self.counted <= to && to <= self.start.max(self.usable));
        let bytes = &data[self.counted.min(to)..to];
        let chars = |b: &[u8]| {
            if self.window_ascii {
                u32::try_from(b.len()).unwrap_or(u32::MAX)
            } else {
                char_count(b)
            }
        };
        let before = self.newline_index;
        while self.newline_index < self.newlines.len() && self.newlines[self.newline_index] < to {
            self.newline_index += 1;
        }
        if self.newline_index > before {
            let lines = u32::try_from(self.newline_index - before).unwrap_or(u32::MAX);
            self.line = self.line.saturating_add(lines);
            let last = self.newlines[self.newline_index - 1];
            self.column = chars(&data[last + 1..to]);
        } else {
            self.column = self.column.saturating_add(chars(bytes));
        }
        self.counted = to;
    }

    /// Hands out the window only up to `at`, where `pending` is wrong.
    fn limit(&mut self, at: usize, pending: Pending) {
        if at < self.usable || self.pending.is_none() {
            self.usable = self.usable.min(at);
            self.pending = Some(pending);
        }
    }

    /// Checks `data[checked..end]` and moves `usable` on.
    fn check(&mut self, data: &[u8]) {
        let from = self.checked;
        let region = &data[from..self.end];
        let mut valid = region.len();
        let mut usable = self.end;
        if let Err(error) = std::str::from_utf8(region) {
            valid = error.valid_up_to();
            if error.error_len().is_some() {
                usable = from + valid;
                self.pending = Some(Pending::InvalidUtf8);
            } else if self.at_eof {
                self.trailing_partial = true;
            } else {
                usable = from + valid;
            }
        }
        self.checked = from + valid;
        self.usable = usable;
        let good = &region[..valid];
        if has_forbidden_control(good)
            && let Some(index) = good.iter().position(|&b| is_forbidden_control(b))
        {
            self.limit(from + index, Pending::Forbidden(char::from(good[index])));
        }
        if let Some((index, c)) = first_non_character(good) {
            self.limit(from + index, Pending::Forbidden(c));
        }
        if self.ascii_only
            && let Some(index) = good.iter().position(|b| !b.is_ascii())
        {
            self.limit(from + index, Pending::NonAscii);
        }
        if self.base + self.end as u64 > self.max_file_bytes {
            let allowed = usize::try_from(self.max_file_bytes.saturating_sub(self.base))
                .unwrap_or(usize::MAX);
            self.limit(allowed.max(self.start), Pending::FileTooLarge);
        }
        if !self.content_seen {
            // Only white space (and comments, declarations, the root) may come before the
            // root element: a file whose first other character is not `<` is no XML
            // document at all (a flat file, a CSV), and is named so rather than as junk.
            let scan_from = from.min(self.usable);
            if let Some(offset) = data[scan_from..self.usable]
                .iter()
                .position(|&b| !is_xml_space_byte(b))
            {
                self.content_seen = true;
                let at = scan_from + offset;
                // A character cut off at the end of the file is the parser's to report.
                if data[at] != b'<' && at < self.checked {
                    self.limit(at, Pending::NotXml);
                }
            }
        }
        // A carriage return at the end of what was read may be the first half of a CR LF:
        // it is held back until the next byte is known, so `refill` can tell a lone CR (a
        // line end of its own) from one followed by a line feed (one line end).
        if !self.at_eof
            && self.pending.is_none()
            && self.usable > self.start
            && data[self.usable - 1] == b'\r'
        {
            self.usable -= 1;
        }
        self.window_ascii = data[self.start..self.usable].is_ascii();
        self.window_cr = memchr::memchr(b'\r', &data[self.start..self.usable]).is_some();
    }

    /// The declaration said US-ASCII: re-check what is left of the window.
    fn set_ascii_only(&mut self, data: &[u8]) {
        self.ascii_only = true;
        if let Some(index) = data[self.start..self.usable]
            .iter()
            .position(|b| !b.is_ascii())
        {
            self.limit(self.start + index, Pending::NonAscii);
        }
    }

    /// The problem for the pending failure at `usable` (after consuming up to it).
    fn pending_problem(&mut self, data: &[u8], limits: Limits) -> Option<Problem> {
        let pending = self.pending?;
        self.advance(data, self.usable);
        let position = self.position();
        let failure = match pending {
            Pending::InvalidUtf8 => SourceFailure::InvalidUtf8(position),
            Pending::Forbidden(byte) => SourceFailure::ForbiddenChar(position, byte),
            Pending::NonAscii => SourceFailure::NonAscii(position),
            Pending::FileTooLarge => SourceFailure::FileTooLarge,
            Pending::NotXml => {
                // The line runs on past the checked window (`read_on_line`): it is quoted up
                // to the first byte that is not UTF-8, and goes on after one.
                let rest = &data[self.usable..self.end];
                let (valid, whole) = match std::str::from_utf8(rest) {
                    Ok(text) => (text, true),
                    Err(error) => (
                        std::str::from_utf8(&rest[..error.valid_up_to()]).unwrap_or(""),
                        false,
                    ),
                };
                let (line, goes_on) = match valid.split_once(['\n', '\r']) {
                    Some((line, _)) => (line, false),
                    None => (valid, !(whole && self.at_eof)),
                };
                SourceFailure::NotXml(position, line.to_owned(), goes_on)
            }
        };
        Some(source_problem(&failure, limits))
    }

    /// Reads more bytes into `data` (the event at `start` needs them).
    fn refill<R: io::Read>(
        &mut self,
        inner: &mut R,
        data: &mut Vec<u8>,
        limits: Limits,
    ) -> Result<(), Problem> {
        if self.is_final() {
            return Ok(());
        }
        if (self.usable - self.start) as u64 > self.max_run_bytes {
            self.count_to(data, self.start);
            let start = self.position();
            return Err(source_problem(&SourceFailure::RunTooLong(start), limits));
        }
        self.count_to(data, self.start);
        if self.start > 0 {
            data.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.checked -= self.start;
            self.usable -= self.start;
            self.start = 0;
            self.counted = 0;
        }
        if data.len() < self.end + READ_BYTES {
            data.resize(self.end + READ_BYTES, 0);
        }
        let target = self.end + READ_BYTES;
        let first = !self.started;
        self.started = true;
        while self.end < target {
            match inner.read(&mut data[self.end..target]) {
                Ok(0) => {
                    self.at_eof = true;
                    break;
                }
                Ok(n) => {
                    self.end += n;
                    if !first || self.end >= SNIFF_BYTES {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(source_problem(
                        &SourceFailure::Read(error.to_string()),
                        limits,
                    ));
                }
            }
        }
        if first {
            if let Some(kind) = Binary::of(&data[..self.end]) {
                return Err(source_problem(&SourceFailure::Binary(kind), limits));
            }
            if looks_like_utf16(&data[..self.end.min(4)]) {
                return Err(source_problem(&SourceFailure::Utf16, limits));
            }
            if data[..self.end].starts_with(b"\xEF\xBB\xBF") {
                self.bom = true;
                self.start = 3;
                self.counted = 3;
                self.checked = 3;
                self.usable = 3;
            }
        }
        self.check(data);
        if matches!(self.pending, Some(Pending::NotXml)) {
            self.read_on_line(inner, data);
        }
        self.newlines.clear();
        self.newline_index = 0;
        let (start, usable) = (self.start, self.usable);
        self.newlines.extend(
            memchr::memchr2_iter(b'\n', b'\r', &data[start..usable])
                .map(|i| i + start)
                // A CR followed by a LF ends its line at the LF (the CR is only held back
                // at the end of the window while more may come, see `check`).
                .filter(|&i| data[i] == b'\n' || i + 1 >= usable || data[i + 1] != b'\n'),
        );
        Ok(())
    }

    /// The file is not XML (the problem pending at `usable`): reads on until the line there
    /// ends, the file ends or [`NOT_XML_LINE_BYTES`] of it are in, so the problem does not
    /// quote it cut where a read happened to end. The bytes read are only quoted, never
    /// parsed; a read that fails leaves the line cut (the problem is still that the file is
    /// not XML).
    fn read_on_line<R: io::Read>(&mut self, inner: &mut R, data: &mut Vec<u8>) {
        let want = self.usable + NOT_XML_LINE_BYTES;
        if data.len() < want {
            data.resize(want, 0);
        }
        while !self.at_eof
            && self.end < want
            && memchr::memchr2(b'\n', b'\r', &data[self.usable..self.end]).is_none()
        {
            match inner.read(&mut data[self.end..want]) {
                Ok(0) => self.at_eof = true,
                Ok(n) => self.end += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

// The common events are sliced straight from the start of the window (checked UTF-8) by
// `text_run`, `end_tag` and `start_tag`: text up to the next `<` or `&`, and tags whose
// name starts with an ASCII letter, `_` or `:`. A tag ends where quick-xml would end it
// (the first `>` outside quotes) and start tags are built with quick-xml's constructor, so
// the rest of the reader treats them exactly like quick-xml's events. Each returns `None`
// for anything else, including an event that runs into the end of the window: quick-xml
// reads those.

/// A quick-xml reader over `input`, configured as the reader needs it: comments checked,
/// end names matched by the reader itself (which words the problem), empty elements kept
/// as such, text untrimmed.
fn quick_reader(input: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(input);
    let config = reader.config_mut();
    config.check_comments = true;
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.expand_empty_elements = false;
    config.trim_text(false);
    reader
}

/// The length of the text at the start of `window` (up to the next `<` or `&`).
#[inline(always)]
fn text_run(window: &[u8]) -> Option<usize> {
    memchr::memchr2(b'<', b'&', window).filter(|&length| length > 0)
}

/// The name of the end tag at the start of `window` (trailing white space removed) and
/// the tag's length.
#[inline(always)]
fn end_tag(window: &[u8]) -> Option<(&[u8], usize)> {
    let close = tag_end(window)?;
    let content = window.get(2..close)?;
    let length = content
        .iter()
        .rposition(|&b| !is_xml_space_byte(b))
        .map_or(0, |last| last + 1);
    Some((&content[..length], close + 1))
}

/// The start or empty tag at the start of `window` and its length.
#[inline(always)]
fn start_tag(window: &[u8]) -> Option<(Event<'_>, usize)> {
    let first = *window.get(1)?;
    if !(first.is_ascii_alphabetic() || matches!(first, b'_' | b':')) {
        return None;
    }
    let close = tag_end(window)?;
    let content = &window[1..close];
    let (content, is_empty) = match content.strip_suffix(b"/") {
        Some(content) => (content, true),
        None => (content, false),
    };
    let name_length = content
        .iter()
        .position(|&b| is_xml_space_byte(b))
        .unwrap_or(content.len());
    let start = BytesStart::from_content(std::str::from_utf8(content).ok()?, name_length);
    let event = if is_empty {
        Event::Empty(start)
    } else {
        Event::Start(start)
    };
    Some((event, close + 1))
}

/// The offset of the `>` that closes the tag at the start of `window`: the first one
/// outside single or double quotes (quick-xml's rule).
fn tag_end(window: &[u8]) -> Option<usize> {
    let mut quote = None;
    for index in memchr::memchr3_iter(b'>', b'\'', b'"', window) {
        match (quote, window[index]) {
            (None, b'>') => return Some(index),
            (None, q) => quote = Some(q),
            (Some(open), q) if open == q => quote = None,
            _ => {}
        }
    }
    None
}

fn is_xml_space_byte(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// C0 control characters other than tab, line feed and carriage return are not XML
/// characters at all, not even as content.
fn is_forbidden_control(byte: u8) -> bool {
    byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r')
}

/// The first U+FFFE or U+FFFF (not XML characters, though valid UTF-8) in `bytes`, with
/// its offset.
fn first_non_character(bytes: &[u8]) -> Option<(usize, char)> {
    memchr::memchr(0xEF, bytes)?;
    memchr::memmem::find_iter(bytes, b"\xEF\xBF").find_map(|at| match bytes.get(at + 2) {
        Some(0xBE) => Some((at, '\u{FFFE}')),
        Some(0xBF) => Some((at, '\u{FFFF}')),
        _ => None,
    })
}

/// Branch-free pass the compiler vectorizes; the slow `position` only runs on a hit.
fn has_forbidden_control(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(false, |found, &b| found | is_forbidden_control(b))
}

/// UTF-16 or UTF-32, with or without a byte order mark.
fn looks_like_utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xFE])
        || bytes.starts_with(&[0xFE, 0xFF])
        || bytes.first() == Some(&0)
        || bytes.starts_with(&[b'<', 0])
}

/// Number of characters (not bytes) in valid UTF-8.
fn char_count(bytes: &[u8]) -> u32 {
    let continuation = bytes
        .iter()
        .fold(0usize, |n, &b| n + usize::from((b & 0xC0) == 0x80));
    u32::try_from(bytes.len() - continuation).unwrap_or(u32::MAX)
}

/// When [`FeedReader::step`] returns to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// After any element boundary or the end of the file.
    AnyStep,
    /// When a child of the root is complete, the root closed or the file ended.
    Child,
    /// At the end of the file.
    Eof,
}

impl Goal {
    fn reached(self, step: Step, depth: u32, state: State) -> bool {
        match self {
            Goal::AnyStep => true,
            Goal::Child => match step {
                Step::Start => false,
                Step::Empty | Step::End => depth == 1 || state != State::InRoot,
                Step::Eof => true,
            },
            Goal::Eof => step == Step::Eof,
        }
    }
}

/// What one pass over the window ended with.
enum Pumped {
    Step(Step),
    /// The window changed; parse it again.
    Again,
    /// The event at the start of the window needs more bytes.
    NeedMore,
}

/// What [`FeedReader::quick_event`] found.
enum Quick<'d> {
    /// An event and the offset just after it.
    Event(Event<'d>, usize),
    /// No event; the pump ends with this.
    Pumped(Pumped),
}

/// Where the reader is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the root element.
    Prolog,
    /// Inside the root element.
    InRoot,
    /// After the root element closed; the rest of the file is being checked.
    AfterRoot,
    /// The whole file was read.
    Done,
}

/// What one step of the event loop produced (text, comments and the like are handled
/// inside the step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    Empty,
    End,
    Eof,
}

/// The namespace of the `xml` prefix, bound in every document.
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// The namespace prefixes declared (`xmlns:p="..."`) on the open elements, so a prefixed
/// attribute name is resolved where it is read, in one lookup however many prefixes are in
/// scope. Feeds rarely declare any but the root's `xmlns:xsi`, so nothing is done for an
/// element without a prefixed attribute.
#[derive(Debug, Default)]
struct Namespaces {
    /// Each declared prefix's namespaces, the innermost last.
    bindings: std::collections::HashMap<String, Vec<String>>,
    /// The declarations in document order, with the depth of their element.
    declared: Vec<(u32, String)>,
}

impl Namespaces {
    /// Takes the declarations among `tree.attrs[attrs]` (the attributes of the element at
    /// `depth`) into scope, then resolves the prefixed names among them.
    fn open(&mut self, tree: &mut Tree, attrs: std::ops::Range<usize>, depth: u32) {
        for index in attrs.clone() {
            let attr = tree.attrs[index];
            if let Some(prefix) = tree.str(attr.name).strip_prefix("xmlns:") {
                let namespace = tree.str(attr.value).to_owned();
                self.bindings
                    .entry(prefix.to_owned())
                    .or_default()
                    .push(namespace);
                self.declared.push((depth, prefix.to_owned()));
            }
        }
        for index in attrs {
            let attr = tree.attrs[index];
            let Some((prefix, _)) = tree.str(attr.name).split_once(':') else {
                continue;
            };
            let namespace = match prefix {
                "xmlns" => None,
                "xml" => Some(XML_NAMESPACE),
                prefix => self
                    .bindings
                    .get(prefix)
                    .and_then(|namespaces| namespaces.last())
                    .map(String::as_str),
            };
            if let Some(namespace) = namespace.filter(|namespace| !namespace.is_empty()) {
                let span = tree.push_str(namespace);
                tree.attrs[index].namespace = Some(span);
            }
        }
    }

    /// The element at `depth` ended: its declarations go out of scope. Called at every end
    /// tag, so the common case (the element declared nothing) is one comparison.
    #[inline(always)]
    fn close(&mut self, depth: u32) {
        if self
            .declared
            .last()
            .is_some_and(|(declared_at, _)| *declared_at >= depth)
        {
            self.close_declared(depth);
        }
    }

    fn close_declared(&mut self, depth: u32) {
        while let Some((declared_at, _)) = self.declared.last()
            && *declared_at >= depth
        {
            if let Some((_, prefix)) = self.declared.pop()
                && let Some(namespaces) = self.bindings.get_mut(&prefix)
            {
                namespaces.pop();
            }
        }
    }
}

/// The streaming reader: [`FeedReader::open_root`] reads up to the root element's start
/// tag, then [`FeedReader::next_child`] yields each child element of the root as a
/// [`Tree`] (buffers reused), and `None` once the root closed and the rest of the file was
/// found well-formed. The first error is final: every later call returns it again.
pub struct FeedReader<R: BufRead> {
    inner: R,
    /// The input window (see [`SourceState`]).
    data: Vec<u8>,
    src: SourceState,
    limits: Limits,
    state: State,
    root: Tree,
    tree: Tree,
    /// Open elements, the root included.
    depth: u32,
    /// The innermost open element of `tree` (NONE outside a child of the root).
    current: usize,
    events: u64,
    root_text: Option<Position>,
    failure: Option<Problem>,
    namespaces: Namespaces,
}

impl<R: BufRead> FeedReader<R> {
    /// Starts reading; nothing is read until the first call.
    pub fn new(reader: R, limits: Limits) -> FeedReader<R> {
        FeedReader {
            inner: reader,
            data: Vec::new(),
            src: SourceState::new(limits),
            limits,
            state: State::Prolog,
            root: Tree::default(),
            tree: Tree::default(),
            depth: 0,
            current: NONE,
            events: 0,
            root_text: None,
            failure: None,
            namespaces: Namespaces::default(),
        }
    }

    /// Reads up to and including the root element's start tag and returns the root (a
    /// tree of one element, without children).
    ///
    /// # Errors
    /// A feed-level problem (not well-formed, DOCTYPE, encoding, limits, empty file).
    pub fn open_root(&mut self) -> Result<&Tree, Problem> {
        if let Some(problem) = &self.failure {
            return Err(problem.clone());
        }
        if self.state == State::Prolog {
            self.tree.clear();
            match self.step(Goal::AnyStep)? {
                Step::Start | Step::Empty => {}
                Step::End | Step::Eof => {
                    let problem = if self.src.content_seen {
                        self.truncated("the file ends before the root element starts")
                    } else {
                        self.empty()
                    };
                    self.failure = Some(problem.clone());
                    return Err(problem);
                }
            }
            std::mem::swap(&mut self.tree, &mut self.root);
            self.tree.clear();
        }
        Ok(&self.root)
    }

    /// The next child element of the root with all its content, or `None` after the root
    /// closed and the rest of the file was checked.
    ///
    /// # Errors
    /// A feed-level problem; the feed must be rejected as a whole.
    pub fn next_child(&mut self) -> Result<Option<&Tree>, Problem> {
        if let Some(problem) = &self.failure {
            return Err(problem.clone());
        }
        if self.state == State::Prolog {
            self.open_root()?;
        }
        if self.state == State::InRoot {
            self.tree.clear();
            loop {
                match self.step(Goal::Child)? {
                    Step::Start => {}
                    Step::Empty | Step::End if self.depth == 1 => return Ok(Some(&self.tree)),
                    Step::Empty | Step::End => {
                        if self.state != State::InRoot {
                            break;
                        }
                    }
                    Step::Eof => {
                        let problem =
                            self.truncated("the file ends before the root element closes");
                        self.failure = Some(problem.clone());
                        return Err(problem);
                    }
                }
            }
        }
        if self.state == State::AfterRoot {
            loop {
                if self.step(Goal::Eof)? == Step::Eof {
                    self.state = State::Done;
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The child of the root returned by the last successful [`FeedReader::next_child`]
    /// (an empty tree before the first one); after a problem inside a child, that child as
    /// far as it was read.
    pub fn current(&self) -> &Tree {
        &self.tree
    }

    /// Where the first non-blank text directly inside the root element is, if any (the
    /// envelope has element-only content; `validate` reports it).
    pub fn root_text(&self) -> Option<Position> {
        self.root_text
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.src.consumed()
    }

    /// Line and column of the next byte to be read.
    pub fn position(&self) -> Position {
        self.src.position()
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn truncated(&self, what: &str) -> Problem {
        let source = &self.src;
        let root = self.root.root().map_or("AmazonEnvelope", |r| r.name());
        Problem::new(
            Code::Truncated,
            MessageId::FEED,
            root,
            Some(source.position()),
            format!(
                "{what} (after {}, {} still open): the upload did not complete",
                count(source.consumed(), "byte"),
                count(self.depth, "element"),
            ),
            "Upload the complete file; write it under a temporary name and rename it when done.",
        )
    }

    /// The file ended with nothing but white space (after a byte order mark, if any): a
    /// TRUNCATED like any document that ends early (the daemon waits the grace time for
    /// it, as an upload may be empty for a moment), worded as what it is.
    fn empty(&self) -> Problem {
        let bytes = self.src.consumed();
        let description = match (bytes, self.src.bom) {
            (0, _) => "the file is empty (0 bytes)".to_owned(),
            (3, true) => {
                "the file is empty: its 3 bytes are only a UTF-8 byte order mark".to_owned()
            }
            (1, _) => "the file is empty: its 1 byte is white space".to_owned(),
            (_, bom) => format!(
                "the file is empty: its {} are only {}white space",
                count(bytes, "byte"),
                if bom {
                    "a UTF-8 byte order mark and "
                } else {
                    ""
                }
            ),
        };
        Problem::new(
            Code::Truncated,
            MessageId::FEED,
            "(file)",
            Some(Position { line: 1, column: 1 }),
            description,
            "Export the feed again and upload the file with its content (a tool that fails often leaves an empty file behind).",
        )
    }

    /// Runs the event loop until `goal` says to stop, with the first error made final.
    fn step(&mut self, goal: Goal) -> Result<Step, Problem> {
        let result = self.pump(goal);
        if let Err(problem) = &result {
            self.failure = Some(problem.clone());
        }
        result
    }

    fn pump(&mut self, goal: Goal) -> Result<Step, Problem> {
        loop {
            if !self.src.started {
                self.src
                    .refill(&mut self.inner, &mut self.data, self.limits)?;
            }
            let data = std::mem::take(&mut self.data);
            let result = self.pump_window(&data, goal);
            if let Ok(Pumped::Step(_)) = result {
                // `truncated` and `position` report where the parser stopped.
                self.src.count_to(&data, self.src.start);
            }
            self.data = data;
            match result? {
                Pumped::Step(step) => return Ok(step),
                Pumped::Again => {}
                Pumped::NeedMore => {
                    self.src
                        .refill(&mut self.inner, &mut self.data, self.limits)?;
                }
            }
        }
    }

    /// Parses events from the window `data[start..usable]` until `goal` is reached or the
    /// window runs out: the common events with [`text_run`], [`end_tag`] and [`start_tag`],
    /// anything else with a borrowed quick-xml reader over the rest of the window (one
    /// event each).
    fn pump_window(&mut self, data: &[u8], goal: Goal) -> Result<Pumped, Problem> {
        let window_start = self.src.start;
        let window_end = self.src.usable;
        let is_final = self.src.is_final();
        if window_start == window_end && !is_final {
            return Ok(Pumped::NeedMore);
        }
        loop {
            let at = self.src.start;
            let window = &data[at..window_end];
            // One dispatch on the first bytes; each branch finishes its event.
            let fast = if window.first() != Some(&b'<') {
                text_run(window).map(|length| {
                    self.src.start = at + length;
                    self.events += 1;
                    let text = &window[..length];
                    let chars = if self.src.window_cr {
                        Chars::Written(text)
                    } else {
                        Chars::Final(text)
                    };
                    self.on_char_data(data, at, chars).map(|()| None)
                })
            } else if window.get(1) == Some(&b'/') {
                end_tag(window).map(|(name, length)| {
                    self.src.start = at + length;
                    self.events += 1;
                    self.on_end(data, name, at).map(Some)
                })
            } else {
                start_tag(window).map(|(event, length)| {
                    self.src.start = at + length;
                    self.events += 1;
                    self.handle(data, event, at)
                })
            };
            let step = match fast {
                Some(step) => step?,
                None => match self.quick_event(data, at, window_end)? {
                    Quick::Event(event, next) => {
                        self.src.start = next;
                        self.events += 1;
                        let ascii_before = self.src.ascii_only;
                        let step = self.handle(data, event, at)?;
                        if self.src.ascii_only != ascii_before {
                            // The window may have shrunk.
                            return Ok(Pumped::Again);
                        }
                        step
                    }
                    Quick::Pumped(pumped) => return Ok(pumped),
                },
            };
            if let Some(step) = step
                && goal.reached(step, self.depth, self.state)
            {
                return Ok(Pumped::Step(step));
            }
        }
    }

    /// Reads the event at `data[at..]` with quick-xml: everything the fast path leaves
    /// alone (declarations, comments, CDATA, references, DOCTYPE, anything unusual or cut
    /// off by the end of the window), so that problems are reported in its words.
    fn quick_event<'d>(
        &mut self,
        data: &'d [u8],
        at: usize,
        window_end: usize,
    ) -> Result<Quick<'d>, Problem> {
        let is_final = self.src.is_final();
        if data[at..window_end].starts_with(b"\xEF\xBB\xBF") {
            // quick-xml would drop a U+FEFF at the start of its input as a byte order
            // mark; inside the document it is text.
            self.src.start = at + 3;
            self.events += 1;
            self.on_text(data, at, Chars::Final("\u{FEFF}".as_bytes()))?;
            return Ok(Quick::Pumped(Pumped::Again));
        }
        let mut reader = quick_reader(&data[at..window_end]);
        let result = reader.read_event();
        let next = at + reader.buffer_position() as usize;
        match result {
            Ok(Event::Eof) if !is_final => Ok(Quick::Pumped(Pumped::NeedMore)),
            Ok(Event::Text(_)) if next == window_end && !is_final => {
                Ok(Quick::Pumped(Pumped::NeedMore))
            }
            Ok(Event::Eof | Event::Text(_)) if next == window_end && self.src.pending.is_some() => {
                Err(self.pending_problem(data))
            }
            Ok(event) => Ok(Quick::Event(event, next)),
            Err(error) => {
                let position = self.src.position_at(data, at);
                // A reference (`&amp;`) with nothing after it that could close or end it.
                let reference_cut = matches!(
                    error,
                    XmlError::IllFormed(IllFormedError::UnclosedReference)
                ) && memchr::memchr3(
                    b';',
                    b'<',
                    b'&',
                    &data[(at + 1).min(window_end)..window_end],
                )
                .is_none();
                let cut = match &error {
                    XmlError::Syntax(SyntaxError::InvalidBangMarkup) => window_end - at < 16,
                    XmlError::Syntax(_) => true,
                    _ => reference_cut,
                };
                if cut && !is_final {
                    return Ok(Quick::Pumped(Pumped::NeedMore));
                }
                if cut && self.src.pending.is_some() {
                    return Err(self.pending_problem(data));
                }
                // An upload cut inside a tag, comment, reference or multi-byte character
                // is incomplete, not broken.
                let cut = matches!(error, XmlError::Syntax(_))
                    || reference_cut
                    || (matches!(error, XmlError::Encoding(_)) && self.src.trailing_partial);
                if self.src.at_eof && cut && self.state != State::AfterRoot {
                    self.src.advance(data, window_end);
                    return Err(
                        self.truncated("the file ends inside markup or a multi-byte character")
                    );
                }
                Err(xml_problem(&error, position))
            }
        }
    }

    fn pending_problem(&mut self, data: &[u8]) -> Problem {
        self.src
            .pending_problem(data, self.limits)
            .unwrap_or_else(|| malformed(self.src.position(), "internal: no pending problem"))
    }

    /// Handles one event; `Some` for the events that move between elements.
    fn handle(
        &mut self,
        data: &[u8],
        event: Event<'_>,
        at: usize,
    ) -> Result<Option<Step>, Problem> {
        let position = self.src.position_at(data, at);
        let is_empty = matches!(event, Event::Empty(_));
        match event {
            Event::Decl(decl) => {
                if self.events != 1 {
                    return Err(malformed(
                        position,
                        "the XML declaration is only allowed at the very start of the file",
                    ));
                }
                match decl.version() {
                    Ok(version) if version == "1.0" || version == "1.1" => {}
                    Ok(version) => {
                        return Err(malformed(
                            position,
                            &format!("unsupported XML version {}", quoted(&version)),
                        ));
                    }
                    Err(error) => return Err(xml_problem(&error, position)),
                }
                match decl.encoding() {
                    None => {}
                    Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("utf-8") => {}
                    Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("us-ascii") => {
                        self.src.set_ascii_only(data);
                    }
                    Some(Ok(encoding)) => {
                        return Err(Problem::new(
                            Code::UnsupportedEncoding,
                            MessageId::FEED,
                            "(file)",
                            Some(position),
                            format!(
                                "the XML declaration names encoding {}; only UTF-8 (or US-ASCII) is accepted",
                                quoted(&encoding)
                            ),
                            "Save the file as UTF-8 and declare encoding=\"UTF-8\".",
                        ));
                    }
                    Some(Err(error)) => {
                        return Err(malformed(
                            position,
                            &format!("bad XML declaration: {error}"),
                        ));
                    }
                }
            }
            Event::DocType(_) => {
                return Err(Problem::new(
                    Code::DtdForbidden,
                    MessageId::FEED,
                    "(file)",
                    Some(position),
                    "the file has a DOCTYPE; DOCTYPE and entity declarations are not accepted (they allow entity expansion attacks and external file access)",
                    "Remove the <!DOCTYPE ...> declaration; feeds are checked against the schema without a DTD.",
                ));
            }
            Event::PI(pi) => {
                if pi.target().eq_ignore_ascii_case("xml") {
                    return Err(malformed(
                        position,
                        "a processing instruction named \"xml\" is reserved (an XML declaration that is not at the start of the file?)",
                    ));
                }
            }
            Event::Comment(_) => {}
            Event::Eof => {
                if self.depth > 0 || self.state == State::Prolog {
                    return Ok(Some(Step::Eof));
                }
                if self.src.trailing_partial {
                    return Err(source_problem(
                        &SourceFailure::InvalidUtf8(self.src.position_at(data, self.src.start)),
                        self.limits,
                    ));
                }
                return Ok(Some(Step::Eof));
            }
            Event::Start(start) | Event::Empty(start) => {
                let new_depth = self.depth + 1;
                if self.depth == 0 && self.state != State::Prolog {
                    return Err(malformed(
                        position,
                        "content after the root element: a file holds exactly one root element",
                    ));
                }
                if new_depth > self.limits.max_depth {
                    return Err(Limits::exceeded(
                        "element nesting depth",
                        u64::from(self.limits.max_depth),
                        "max_depth",
                        Some(position),
                        "(file)",
                    ));
                }
                let name = start.name();
                let name = name.as_ref();
                if !is_xml_name(name) {
                    return Err(malformed(
                        position,
                        &format!("{} is not a valid element name", quoted(name)),
                    ));
                }
                if new_depth > 2 && self.child_too_large() {
                    return Err(self.child_size_problem(position, name));
                }
                let parent = if new_depth <= 2 { NONE } else { self.current };
                let tree = &mut self.tree;
                let id = tree.nodes.len();
                let name_span = tree.push_str(name);
                let attrs_start = tree.attrs.len();
                let raw_attributes = start.attributes_raw();
                // A prefixed attribute name (or a namespace declaration) needs the
                // namespaces in scope; all other elements skip them.
                let prefixed = !raw_attributes.is_empty()
                    && memchr::memchr(b':', raw_attributes.as_bytes()).is_some();
                if let Some((key, value)) = plain_attribute(raw_attributes) {
                    push_attribute(tree, self.limits, position, name, key, value)?;
                } else if !is_blank(raw_attributes) {
                    let mut attributes = start.attributes();
                    // Duplicates need two attributes, and so two `=`: a single attribute is
                    // read without quick-xml's duplicate bookkeeping (an allocation).
                    if memchr::memchr_iter(b'=', raw_attributes.as_bytes())
                        .nth(1)
                        .is_none()
                    {
                        attributes.with_checks(false);
                    }
                    for attribute in attributes {
                        let attribute = match attribute {
                            Ok(attribute) => attribute,
                            Err(error) => {
                                return Err(malformed(
                                    position,
                                    &format!("bad attribute in <{name}>: {error}"),
                                ));
                            }
                        };
                        let key = attribute.key.as_ref();
                        if !is_xml_name(key) || attribute.value.contains('<') {
                            return Err(malformed(
                                position,
                                &format!("bad attribute {} in <{name}>", quoted(key)),
                            ));
                        }
                        let value = match attribute.normalized_value(XmlVersion::Implicit1_0) {
                            Ok(value) => value,
                            Err(error) => {
                                return Err(malformed(
                                    position,
                                    &format!(
                                        "bad attribute value of {key} in <{name}>: {error} (only the five predefined entities and character references are accepted)"
                                    ),
                                ));
                            }
                        };
                        push_attribute(tree, self.limits, position, name, key, &value)?;
                    }
                }
                if prefixed {
                    self.namespaces
                        .open(tree, attrs_start..tree.attrs.len(), new_depth);
                }
                let text_at = tree.strings.len();
                tree.nodes.push(Node {
                    name: name_span,
                    text: Span {
                        start: text_at,
                        end: text_at,
                    },
                    attrs: Span {
                        start: attrs_start,
                        end: tree.attrs.len(),
                    },
                    parent,
                    first_child: NONE,
                    last_child: NONE,
                    next_sibling: NONE,
                    position,
                    stray_text: false,
                });
                if parent != NONE {
                    let previous = tree.nodes[parent].last_child;
                    if previous == NONE {
                        tree.nodes[parent].first_child = id;
                    } else {
                        tree.nodes[previous].next_sibling = id;
                    }
                    tree.nodes[parent].last_child = id;
                }
                if is_empty {
                    self.namespaces.close(new_depth);
                }
                return Ok(Some(self.opened(id, new_depth, is_empty)));
            }
            Event::End(end) => {
                return self
                    .on_end(data, end.name().as_ref().as_bytes(), at)
                    .map(Some);
            }
            Event::Text(text) => self.on_char_data(data, at, Chars::Written(text.as_bytes()))?,
            Event::CData(cdata) => {
                if self.depth == 0 {
                    return Err(malformed(position, "CDATA outside the root element"));
                }
                let content = cdata.xml10_content();
                self.on_text(data, at, Chars::Final(content.as_bytes()))?;
            }
            Event::GeneralRef(reference) => {
                if self.depth == 0 {
                    return Err(malformed(position, "a reference outside the root element"));
                }
                let mut utf8 = [0; 4];
                let resolved: &str = match reference.resolve_char_ref() {
                    Ok(Some(c)) if is_xml_char(c) => c.encode_utf8(&mut utf8),
                    Ok(Some(c)) => {
                        return Err(malformed(
                            position,
                            &format!(
                                "character reference to U+{:04X}, which is not an XML character",
                                u32::from(c)
                            ),
                        ));
                    }
                    Err(error) => {
                        return Err(malformed(
                            position,
                            &format!("bad character reference &{}; ({error})", &*reference),
                        ));
                    }
                    Ok(None) => match &*reference {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "apos" => "'",
                        "quot" => "\"",
                        other => {
                            return Err(malformed(
                                position,
                                &format!(
                                    "unknown entity &{other}; (only the five predefined entities and character references are accepted; entity declarations are not)"
                                ),
                            ));
                        }
                    },
                };
                self.on_text(data, at, Chars::Final(resolved.as_bytes()))?;
            }
        }
        Ok(None)
    }

    /// An end tag named `found`.
    fn on_end(&mut self, data: &[u8], found: &[u8], at: usize) -> Result<Step, Problem> {
        let expected = match self.depth {
            0 => None,
            1 => self.root.root().map(|r| r.name()),
            _ => self.tree.element(self.current).map(|e| e.name()),
        };
        if expected.map(str::as_bytes) != Some(found) {
            // The window is checked UTF-8 and the name ends at ASCII delimiters.
            let found = String::from_utf8_lossy(found).into_owned();
            let error = match expected {
                None => IllFormedError::UnmatchedEndTag(found),
                Some(expected) => IllFormedError::MismatchedEndTag {
                    expected: expected.to_owned(),
                    found,
                },
            };
            let position = self.src.position_at(data, at);
            return Err(xml_problem(&XmlError::IllFormed(error), position));
        }
        if self.depth >= 2 && self.child_too_large() {
            let position = self.src.position_at(data, at);
            let name = String::from_utf8_lossy(found).into_owned();
            return Err(self.child_size_problem(position, &format!("/{name}")));
        }
        self.namespaces.close(self.depth);
        self.depth = self.depth.saturating_sub(1);
        if self.depth >= 1 && self.current != NONE {
            self.current = self.tree.nodes[self.current].parent;
        }
        if self.depth == 0 {
            self.state = State::AfterRoot;
        }
        Ok(Step::End)
    }

    /// The current child of the root takes more memory than `max_message_bytes` (checked at
    /// every tag of it, so at most one start tag's attributes and one text node, each
    /// bounded by `max_text_bytes`, are added after the limit was passed).
    fn child_too_large(&self) -> bool {
        self.tree.memory() > self.limits.max_message_bytes
    }

    /// The LIMIT_EXCEEDED for a child of the root that grew past `max_message_bytes` at the
    /// tag `<name>` (`</name>` given as `/name`) at `position`, inside the current element.
    fn child_size_problem(&self, position: Position, name: &str) -> Problem {
        let mut path = vec![name.trim_start_matches('/')];
        let mut current = self.tree.element(self.current);
        if name.starts_with('/') {
            // An end tag closes the current element itself.
            current = current.and_then(|element| element.parent());
        }
        while let Some(element) = current {
            path.push(element.name());
            current = element.parent();
        }
        path.push(
            self.root
                .root()
                .map_or("AmazonEnvelope", |root| root.name()),
        );
        path.reverse();
        let child = self.tree.root();
        let start = child.map_or(position, |child| child.position());
        Problem::new(
            Code::LimitExceeded,
            MessageId::FEED,
            path.join("/"),
            Some(position),
            format!(
                "the <{}> that starts at line {}, column {} takes more than the limit of {} bytes of memory for one element of the envelope (limits.max_message_bytes; its elements, attributes and text as read) when it reaches <{name}>",
                child.map_or("Message", |child| child.name()),
                start.line,
                start.column,
                self.limits.max_message_bytes
            ),
            "Split the message (a message adjusts one order and takes a few kilobytes) or, if the input is trusted, raise `[limits] max_message_bytes` in the configuration.",
        )
    }

    /// Character data that starts at `data[at]`.
    /// Character data as written (not CDATA), which may not hold `]]>` (XML 1.0 §2.4).
    fn on_char_data(&mut self, data: &[u8], at: usize, chars: Chars<'_>) -> Result<(), Problem> {
        let (Chars::Written(bytes) | Chars::Final(bytes)) = chars;
        if let Some(offset) = memchr::memmem::find(bytes, b"]]>") {
            let position = self.src.position_at(data, at + offset);
            return Err(malformed(
                position,
                "\"]]>\" in text is not allowed (write it as ]]&gt;)",
            ));
        }
        self.on_text(data, at, chars)
    }

    fn on_text(&mut self, data: &[u8], at: usize, content: Chars<'_>) -> Result<(), Problem> {
        let src = &mut self.src;
        append_text(
            &mut self.tree,
            self.depth,
            self.current,
            &mut self.root_text,
            self.limits,
            || src.position_at(data, at),
            content,
        )
    }

    /// Bookkeeping after a start tag was pushed as element `id` at `new_depth`.
    fn opened(&mut self, id: usize, new_depth: u32, is_empty: bool) -> Step {
        if is_empty {
            if new_depth == 1 {
                self.state = State::AfterRoot;
            }
            return Step::Empty;
        }
        self.depth = new_depth;
        if new_depth == 1 {
            self.state = State::InRoot;
        } else {
            self.current = id;
        }
        Step::Start
    }
}

/// A lone `key="value"` (or single-quoted) attribute that needs none of quick-xml's
/// attribute handling: one space before a valid name, nothing but white space after the
/// value, and a value without references, `<` or characters that normalization changes.
/// `None` for anything else (quick-xml reads those attributes and words their problems).
fn plain_attribute(raw: &str) -> Option<(&str, &str)> {
    let (key, rest) = raw.strip_prefix(' ')?.split_once('=')?;
    let quote = rest.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let (value, after) = rest[1..].split_once(quote)?;
    let plain = is_xml_name(key)
        && !value
            .bytes()
            .any(|b| matches!(b, b'<' | b'&' | b'\t' | b'\n' | b'\r'))
        && is_blank(after);
    plain.then_some((key, value))
}

/// Adds an attribute (normalized value) of element `element` to the tree.
fn push_attribute(
    tree: &mut Tree,
    limits: Limits,
    position: Position,
    element: &str,
    key: &str,
    value: &str,
) -> Result<(), Problem> {
    if value.len() as u64 > limits.max_text_bytes {
        return Err(Limits::exceeded(
            "an attribute value length in bytes",
            limits.max_text_bytes,
            "max_text_bytes",
            Some(position),
            element,
        ));
    }
    let name = tree.push_str(key);
    let value = tree.push_str(value);
    tree.attrs.push(Attr {
        name,
        value,
        namespace: None,
    });
    Ok(())
}

/// A piece of character data on its way into the tree.
#[derive(Debug, Clone, Copy)]
enum Chars<'a> {
    /// As written in the file: line ends are still to be normalized.
    Written(&'a [u8]),
    /// Final already (resolved references, CDATA normalized by quick-xml, text from a
    /// window without carriage returns).
    Final(&'a [u8]),
}

/// Adds a piece of character data to the innermost open element (see [`Tree`]).
fn append_text(
    tree: &mut Tree,
    depth: u32,
    current: usize,
    root_text: &mut Option<Position>,
    limits: Limits,
    mut position: impl FnMut() -> Position,
    chars: Chars<'_>,
) -> Result<(), Problem> {
    let content = match chars {
        Chars::Written(bytes) | Chars::Final(bytes) => bytes,
    };
    match depth {
        0 => {
            if is_blank_bytes(content) {
                Ok(())
            } else {
                Err(malformed(
                    position(),
                    "text outside the root element (junk before or after the document?)",
                ))
            }
        }
        1 => {
            if root_text.is_none() && !is_blank_bytes(content) {
                *root_text = Some(position());
            }
            Ok(())
        }
        _ => {
            let end = tree.strings.len();
            let node = &mut tree.nodes[current];
            if node.first_child == NONE && node.text.end == end {
                // Only kept text is normalized and decoded; every caller hands over whole
                // characters.
                let content = match chars {
                    Chars::Written(bytes) => normalize_eols(bytes),
                    Chars::Final(bytes) => Cow::Borrowed(bytes),
                };
                let content = std::str::from_utf8(&content).map_err(|_| {
                    malformed(position(), "internal: text split inside a character")
                })?;
                tree.strings.push_str(content);
                node.text.end = tree.strings.len();
                if (node.text.end - node.text.start) as u64 > limits.max_text_bytes {
                    let name_span = node.name;
                    let name = tree.str(name_span).to_owned();
                    return Err(Limits::exceeded(
                        "a text node length in bytes",
                        limits.max_text_bytes,
                        "max_text_bytes",
                        Some(position()),
                        &name,
                    ));
                }
            } else if !is_blank_bytes(content) {
                node.stray_text = true;
            }
            Ok(())
        }
    }
}

/// XML white space (also what XSD's whiteSpace facets act on).
pub fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// True when `s` is empty or only XML white space.
pub fn is_blank(s: &str) -> bool {
    is_blank_bytes(s.as_bytes())
}

fn is_blank_bytes(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| is_xml_space_byte(b))
}

/// XML 1.0 line-end handling: `\r\n` and a lone `\r` become `\n`.
fn normalize_eols(text: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\r', text).is_none() {
        return Cow::Borrowed(text);
    }
    let mut normalized = Vec::with_capacity(text.len());
    let mut bytes = text.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        if byte == b'\r' {
            normalized.push(b'\n');
            bytes.next_if_eq(&b'\n');
        } else {
            normalized.push(byte);
        }
    }
    Cow::Owned(normalized)
}

/// The `Char` production of XML 1.0.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// ASCII letters, digits, `_`, `-`, `.` and `:` (the fast path of [`is_xml_name`]).
const ASCII_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':');
        b += 1;
    }
    table
};

/// The `Name` production, approximated for non-ASCII characters (all accepted except
/// as noted in XML 1.0 fifth edition's broad ranges).
fn is_xml_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    // Fast path: the feed's names are ASCII letters.
    if bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .fold(true, |ok, &b| ok & ASCII_NAME_BYTE[usize::from(b)])
    {
        return true;
    }
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':' || (c as u32) >= 0xC0;
    start(first)
        && chars.all(|c| start(c) || c.is_ascii_digit() || matches!(c, '-' | '.' | '\u{B7}'))
}

fn malformed(position: Position, what: &str) -> Problem {
    Problem::new(
        Code::MalformedXml,
        MessageId::FEED,
        "(file)",
        Some(position),
        format!("the file is not well-formed XML: {what}"),
        "Send well-formed UTF-8 XML (check it with `xmllint --noout FILE`).",
    )
}

fn xml_problem(error: &XmlError, position: Position) -> Problem {
    match error {
        XmlError::Encoding(error) => Problem::new(
            Code::UnsupportedEncoding,
            MessageId::FEED,
            "(file)",
            Some(position),
            format!("the file is not valid UTF-8 ({error})"),
            "Save the file as UTF-8.",
        ),
        XmlError::Io(error) => malformed(position, &format!("reading failed: {error}")),
        XmlError::Syntax(SyntaxError::InvalidBangMarkup) => malformed(
            position,
            "unknown markup starting with `<!` (only comments and CDATA are accepted; entity declarations are not)",
        ),
        other => malformed(position, &other.to_string()),
    }
}

fn source_problem(failure: &SourceFailure, limits: Limits) -> Problem {
    let encoding = |position: Position, what: String| {
        Problem::new(
            Code::UnsupportedEncoding,
            MessageId::FEED,
            "(file)",
            Some(position),
            what,
            "Save the file as UTF-8 (without or with a UTF-8 byte order mark).",
        )
    };
    match failure {
        SourceFailure::FileTooLarge => Limits::exceeded(
            "the file size in bytes",
            limits.max_file_bytes,
            "max_file_bytes",
            None,
            "(file)",
        ),
        SourceFailure::RunTooLong(start) => Limits::exceeded(
            "a text node, attribute value or markup length in bytes",
            limits.max_text_bytes,
            "max_text_bytes",
            Some(*start),
            "(file)",
        ),
        SourceFailure::Utf16 => encoding(
            Position { line: 1, column: 1 },
            "the file is UTF-16 or UTF-32 (byte order mark or zero bytes at the start); only UTF-8 is accepted".to_owned(),
        ),
        SourceFailure::InvalidUtf8(position) => encoding(
            *position,
            format!("the file is not valid UTF-8: invalid byte sequence on line {}", position.line),
        ),
        SourceFailure::NonAscii(position) => encoding(
            *position,
            format!("the file declares encoding US-ASCII but line {} has a non-ASCII byte", position.line),
        ),
        SourceFailure::ForbiddenChar(position, c) => malformed(
            *position,
            &format!(
                "{} U+{:04X} on line {} is not allowed in XML",
                if c.is_control() { "control character" } else { "non-character" },
                u32::from(*c),
                position.line
            ),
        ),
        SourceFailure::Binary(kind) => Problem::new(
            Code::MalformedXml,
            MessageId::FEED,
            "(file)",
            Some(Position { line: 1, column: 1 }),
            format!("the file is {}, not XML", kind.what()),
            "Upload the feed's .xml file itself, not an archive or a document holding it (unpack a .zip or .gz file first).",
        ),
        SourceFailure::NotXml(position, line, goes_on) => not_xml(*position, line, *goes_on),
        SourceFailure::Read(error) => Problem::new(
            Code::MalformedXml,
            MessageId::FEED,
            "(file)",
            None,
            format!("reading the file failed: {error}"),
            "Check the file system and send the file again.",
        ),
    }
}

/// The problem for a file whose first character other than white space, at `position`,
/// is not `<`; `line` is the rest of that line, and `goes_on` says more of it follows. A
/// first line with tabs is a flat file (Amazon's tab-separated adjustment template, or an
/// order report).
fn not_xml(position: Position, line: &str, goes_on: bool) -> Problem {
    // At most NOT_XML_SHOWN characters, then `...` when more follows.
    let shown = |text: &str, goes_on: bool| match text.char_indices().nth(NOT_XML_SHOWN) {
        Some((end, _)) => format!("{}...", quoted(&text[..end])),
        None if goes_on => format!("{}...", quoted(text)),
        None => quoted(text),
    };
    let (description, fix) = match line.split_once('\t') {
        Some((first, _)) => (
            format!(
                "the file is not XML but tab-separated text (its first line starts with {}, then a tab): a flat file, such as Amazon's flat-file order adjustment (_POST_FLAT_FILE_PAYMENT_ADJUSTMENT_DATA_)",
                shown(first.trim_end(), false)
            ),
            "Send the adjustments as the XML OrderAdjustment feed (_POST_PAYMENT_ADJUSTMENT_DATA_, a file starting with `<?xml` or `<AmazonEnvelope`): adjustd reads that feed, not the flat file.",
        ),
        None => {
            let shown = shown(line.trim_end(), goes_on);
            (
                format!(
                    "the file is not XML: it starts with {shown}, and an XML feed starts with `<` (`<?xml` or `<AmazonEnvelope`)"
                ),
                "Upload the feed's XML file (check it with `xmllint --noout FILE`); if the XML comes later in this file, remove what comes before it.",
            )
        }
    };
    Problem::new(
        Code::MalformedXml,
        MessageId::FEED,
        "(file)",
        Some(position),
        description,
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn children(doc: &str) -> Vec<(String, Position)> {
        let mut reader = FeedReader::new(doc.as_bytes(), Limits::default());
        let mut out = Vec::new();
        while let Some(tree) = reader.next_child().expect("well-formed") {
            let root = tree.root().expect("element");
            out.push((root.name().to_owned(), root.position()));
        }
        out
    }

    /// Line and column of every child of the root of `doc`, read `capacity` bytes at a time.
    fn child_positions(doc: &str, capacity: usize) -> Vec<(u32, u32)> {
        let mut reader = FeedReader::new(
            io::BufReader::with_capacity(capacity, doc.as_bytes()),
            Limits::default(),
        );
        let mut found = Vec::new();
        while let Some(tree) = reader.next_child().expect("well-formed") {
            let p = tree.root().expect("element").position();
            found.push((p.line, p.column));
        }
        found
    }

    #[test]
    fn positions_are_right_whatever_the_chunking() {
        let doc = "<r>\n<a/>é€𝄞<b/>\r\n  <c x='ü'\n/><d/>\n\n<e/></r>";
        for capacity in 1..9 {
            assert_eq!(
                child_positions(doc, capacity),
                [(2, 1), (2, 8), (3, 3), (4, 3), (6, 1)],
                "capacity {capacity}"
            );
        }
    }

    #[test]
    fn bad_bytes_are_reported_where_they_are() {
        let mut doc = b"<r>\n  <a>\xC3\xA9x".to_vec();
        doc.extend_from_slice(b"\xFF</a></r>");
        for capacity in [1, 2, 3, 64] {
            let mut reader = FeedReader::new(
                io::BufReader::with_capacity(capacity, &doc[..]),
                Limits::default(),
            );
            let problem = reader.next_child().expect_err("invalid");
            assert_eq!(problem.code, Code::UnsupportedEncoding, "{problem}");
            assert_eq!(
                problem.position,
                Some(Position { line: 2, column: 8 }),
                "capacity {capacity}"
            );
        }
        let mut reader = FeedReader::new("<r>\n\n <a>\u{7}</a></r>".as_bytes(), Limits::default());
        let problem = reader.next_child().expect_err("control character");
        assert_eq!(
            (problem.code, problem.position),
            (Code::MalformedXml, Some(Position { line: 3, column: 5 }))
        );
    }

    #[test]
    fn a_file_that_is_not_xml_is_named_where_its_first_character_is() {
        let first_problem = |doc: &[u8]| {
            let mut reader = FeedReader::new(doc, Limits::default());
            reader.open_root().expect_err("not XML")
        };
        // Magic numbers count at the first byte only: after a byte order mark the file is
        // text, named by its first line (and the control character in it shown).
        let problem = first_problem(b"\xEF\xBB\xBFPK\x03\x04rest");
        assert_eq!(problem.code, Code::MalformedXml);
        assert_eq!(problem.position, Some(Position { line: 1, column: 1 }));
        assert!(
            problem
                .description
                .starts_with("the file is not XML: it starts with \"PK[U+0003"),
            "{problem}"
        );
        // Past a first window of blank lines, where the character is.
        let mut doc = b"\n".repeat(READ_BYTES + 10);
        doc.extend_from_slice(b"  order-id,sku\n");
        let problem = first_problem(&doc);
        let line = u32::try_from(READ_BYTES + 11).expect("small");
        assert_eq!(problem.position, Some(Position { line, column: 3 }));
        assert!(
            problem.description.contains("\"order-id,sku\""),
            "{problem}"
        );
        // A signature cut short is not one.
        assert_eq!(first_problem(b"PK").code, Code::MalformedXml);
        assert!(
            first_problem(b"PK")
                .description
                .contains("not XML: it starts with \"PK\"")
        );
    }

    #[test]
    fn the_first_line_of_a_file_that_is_not_xml_is_not_cut_where_a_read_ends() {
        /// Hands out at most `size` bytes a read (a `BufReader` hands a larger read straight
        /// to its reader).
        struct Chunks<'a> {
            rest: &'a [u8],
            size: usize,
        }
        impl io::Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.size).min(self.rest.len());
                buf[..n].copy_from_slice(&self.rest[..n]);
                self.rest = &self.rest[n..];
                Ok(n)
            }
        }
        let description = |doc: &[u8], size: usize| {
            let chunks = io::BufReader::with_capacity(size, Chunks { rest: doc, size });
            let mut reader = FeedReader::new(chunks, Limits::default());
            reader.open_root().expect_err("not XML").description
        };
        // The first character six bytes before the end of the first read, and in reads of
        // three bytes.
        let mut doc = b" \n".repeat((READ_BYTES - 6) / 2);
        doc.extend_from_slice(b"hello world, this is not xml\nmore");
        for (doc, size) in [(&doc[..], READ_BYTES), (&doc[READ_BYTES - 10..], 3)] {
            let text = description(doc, size);
            assert!(
                text.contains("it starts with \"hello world, this is not xml\", and"),
                "read size {size}: {text}"
            );
        }
        // A tab past the end of the read still makes it a flat file.
        let mut flat = b" ".repeat(READ_BYTES - 4);
        flat.extend_from_slice(b"order-id\tsku\n");
        let text = description(&flat, READ_BYTES);
        assert!(
            text.contains("its first line starts with \"order-id\", then a tab"),
            "{text}"
        );
        // A line longer than what is read on for the quote, or one that goes on past a
        // byte that is not UTF-8, is marked as going on.
        let text = description(&b"x".repeat(3 * READ_BYTES), READ_BYTES);
        assert!(
            text.contains(&format!("\"{}\"...,", "x".repeat(40))),
            "{text}"
        );
        let text = description(b"hello\xFFworld", READ_BYTES);
        assert!(text.contains("it starts with \"hello\"...,"), "{text}");
        // A first field quoted before its tab is shortened like a line.
        let mut long = "f".repeat(100);
        long.push_str("\tsku\n");
        let text = description(long.as_bytes(), READ_BYTES);
        assert!(
            text.contains(&format!(
                "starts with \"{}\"..., then a tab",
                "f".repeat(40)
            )),
            "{text}"
        );
        // A whole file of one short line, read one byte at a time.
        assert!(description(b"hello", 1).contains("it starts with \"hello\", and"));
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line_like_cr_lf_and_lf() {
        // Lines: "<r>" CR "<a/>" CR LF "<b/>" LF "" CR "<c/>" CR "" CR " <d/></r>".
        let doc = "<r>\r<a/>\r\n<b/>\n\r<c/>\r\r <d/></r>";
        for capacity in 1..9 {
            assert_eq!(
                child_positions(doc, capacity),
                [(2, 1), (3, 1), (5, 1), (7, 2)],
                "capacity {capacity}"
            );
        }
        // A problem on a line after lone CRs names that line.
        let mut reader = FeedReader::new("<r>\r<a>\r\r  </b></r>".as_bytes(), Limits::default());
        let problem = reader.next_child().expect_err("mismatched");
        assert_eq!(problem.position, Some(Position { line: 4, column: 3 }));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let found = children("<r>\n<a/>é€𝄞<b/>\r\n  <c x='ü'\n/><d/></r>");
        let positions: Vec<(u32, u32)> = found.iter().map(|(_, p)| (p.line, p.column)).collect();
        assert_eq!(positions, [(2, 1), (2, 8), (3, 3), (4, 3)]);
    }

    #[test]
    fn text_before_children_is_kept_and_later_text_only_flagged() {
        let mut reader = FeedReader::new(
            "<r><m>a&amp;b<![CDATA[<c>]]>&#x41;<k>v</k>x</m><n> <k/> </n></r>".as_bytes(),
            Limits::default(),
        );
        let tree = reader.next_child().expect("ok").expect("m");
        let m = tree.root().expect("m");
        assert_eq!(m.text(), "a&b<c>A");
        assert!(m.has_stray_text());
        let k = m.children().next().expect("k");
        assert_eq!(
            (k.name(), k.text(), k.parent().map(|p| p.id())),
            ("k", "v", Some(0))
        );
        let tree = reader.next_child().expect("ok").expect("n");
        let n = tree.root().expect("n");
        assert!(is_blank(n.text()) && !n.has_stray_text());
        assert!(reader.next_child().expect("ok").is_none());
    }

    #[test]
    fn attribute_values_are_normalized_and_unescaped() {
        let mut reader = FeedReader::new(
            "<r><a x=\"1&lt;2\ty\" y='&#65;'/></r>".as_bytes(),
            Limits::default(),
        );
        let tree = reader.next_child().expect("ok").expect("a");
        let attributes: Vec<(&str, &str)> = tree
            .root()
            .expect("a")
            .attributes()
            .map(|a| (a.name, a.value))
            .collect();
        assert_eq!(attributes, [("x", "1<2 y"), ("y", "A")]);
    }

    #[test]
    fn line_ends_in_text_are_normalized() {
        let mut reader = FeedReader::new("<r><a>x\r\ny\rz</a></r>".as_bytes(), Limits::default());
        let tree = reader.next_child().expect("ok").expect("a");
        assert_eq!(tree.root().expect("a").text(), "x\ny\nz");
    }

    #[test]
    fn indexes_count_the_siblings_of_the_same_name() {
        let mut reader = FeedReader::new(
            "<r><m><a/><b><a/></b><a/><c/><a><a/></a><b/></m></r>".as_bytes(),
            Limits::default(),
        );
        let tree = reader.next_child().expect("ok").expect("m");
        let m = tree.root().expect("m");
        let shown: Vec<String> = m
            .children()
            .map(|child| {
                let inner: Vec<String> = child
                    .children()
                    .map(|c| format!("{}{}", c.name(), c.index()))
                    .collect();
                format!("{}{}{inner:?}", child.name(), child.index())
            })
            .collect();
        assert_eq!(
            shown,
            ["a1[]", "b1[\"a1\"]", "a2[]", "c1[]", "a3[\"a1\"]", "b2[]"]
        );
        assert_eq!(m.index(), 1);
    }

    #[test]
    fn prefixed_attributes_are_resolved_by_the_namespace_in_scope() {
        let doc = "<r xmlns:q='urn:q' xmlns:s='urn:s'><a q:x='1' s:y='2' z='3' xml:lang='en'/>\
                   <b xmlns:q='urn:inner' q:x='1'><c q:x='1' u:x='1'/></b><d q:x='1' xmlns:q=''/>\
                   <e q:x='1'/></r>";
        let mut reader = FeedReader::new(doc.as_bytes(), Limits::default());
        let mut found = Vec::new();
        while let Some(tree) = reader.next_child().expect("well-formed") {
            for id in 0.. {
                let Some(element) = tree.element(id) else {
                    break;
                };
                for attribute in element.attributes() {
                    found.push(format!(
                        "{} {} {:?}",
                        element.name(),
                        attribute.name,
                        attribute.namespace
                    ));
                }
            }
        }
        assert_eq!(
            found,
            [
                "a q:x Some(\"urn:q\")",
                "a s:y Some(\"urn:s\")",
                "a z None",
                "a xml:lang Some(\"http://www.w3.org/XML/1998/namespace\")",
                "b xmlns:q None",
                "b q:x Some(\"urn:inner\")",
                "c q:x Some(\"urn:inner\")",
                "c u:x None",
                "d q:x None",
                "d xmlns:q None",
                "e q:x Some(\"urn:q\")",
            ]
        );
    }

    #[test]
    fn names_follow_the_name_production() {
        assert!(is_xml_name("AmazonEnvelope"));
        assert!(is_xml_name("xsi:type"));
        assert!(is_xml_name("_a-1.b"));
        assert!(is_xml_name("été"));
        assert!(!is_xml_name(""));
        assert!(!is_xml_name("1a"));
        assert!(!is_xml_name("-a"));
        assert!(!is_xml_name("a b"));
    }

    #[test]
    fn the_first_error_is_final() {
        let mut reader = FeedReader::new("<r><a></b></r>".as_bytes(), Limits::default());
        let first = reader.next_child().expect_err("mismatched");
        assert_eq!(first.code, Code::MalformedXml);
        assert_eq!(reader.next_child().expect_err("still"), first);
        assert_eq!(reader.open_root().expect_err("still"), first);
    }

    /// What quick-xml reads first from `input`, configured as [`FeedReader`] configures it.
    fn quick_xml_event(input: &[u8]) -> Option<(Event<'_>, usize)> {
        let mut reader = quick_reader(input);
        let event = reader.read_event().ok()?;
        Some((event, reader.buffer_position() as usize))
    }

    #[test]
    fn fast_events_are_what_quick_xml_reads() {
        let mut samples: Vec<Vec<u8>> = [
            "<a>",
            "<a/>",
            "<a x='1'>",
            "<a x=\"1>2\" y='\"'/>",
            "</a>",
            "</a >",
            "</a\n>",
            "text<",
            "te&amp;",
            "<_a:b c = 'd' >",
            "<a x='>'",
            "</a x='>'>",
            "<é x='ü'>",
            "  \r\n <",
            "<a\t/>",
            "</>",
            "<a//>",
            "<:/>",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Plus random strings over the bytes that matter to the tokenizer.
        let alphabet = b"<>/'\"&;=a b:\n\r\t!?-_";
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut sample = Vec::new();
            for _ in 0..1 + seed % 12 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                sample.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            samples.push(sample);
        }
        for sample in &samples {
            let shown = String::from_utf8_lossy(sample);
            let checked = match (sample.first(), sample.get(1)) {
                (Some(b'<'), Some(b'/')) => end_tag(sample).map(|(name, length)| {
                    let (event, quick_length) =
                        quick_xml_event(sample).expect("quick-xml reads it");
                    let Event::End(end) = event else {
                        panic!("{shown:?}: quick-xml reads {event:?}");
                    };
                    assert_eq!(name, end.name().as_ref().as_bytes(), "{shown:?}");
                    (length, quick_length)
                }),
                (Some(b'<'), _) => start_tag(sample).map(|(event, length)| {
                    let (quick, quick_length) =
                        quick_xml_event(sample).expect("quick-xml reads it");
                    assert_eq!(event, quick, "{shown:?}");
                    (length, quick_length)
                }),
                _ => text_run(sample).map(|length| {
                    let (event, quick_length) =
                        quick_xml_event(sample).expect("quick-xml reads it");
                    let Event::Text(text) = event else {
                        panic!("{shown:?}: quick-xml reads {event:?}");
                    };
                    assert_eq!(&sample[..length], text.as_bytes(), "{shown:?}");
                    (length, quick_length)
                }),
            };
            if let Some((length, quick_length)) = checked {
                assert_eq!(length, quick_length, "{shown:?}");
            }
        }
    }

    #[test]
    fn plain_attributes_are_what_quick_xml_reads() {
        let samples = [
            " a=\"1\"",
            " a='1'",
            " a=\"x'y\"  ",
            " xsi:type=\"b\"",
            " a = \"1\"",
            " a=\"1\"b",
            " a=\"1\" b=\"2\"",
            " a=\"1&amp;\"",
            " a=\"1\t2\"",
            " 1a=\"1\"",
            " a=\"<\"",
            "a=\"1\"",
            " a=1",
            " a=\"1",
            " a=\"\"",
        ];
        for raw in samples {
            let Some((key, value)) = plain_attribute(raw) else {
                continue;
            };
            let content = format!("e{raw}");
            let start = BytesStart::from_content(content.as_str(), 1);
            let quick: Vec<(String, String)> = start
                .attributes()
                .map(|a| {
                    let a = a.expect("quick-xml reads it");
                    let value = a
                        .normalized_value(XmlVersion::Implicit1_0)
                        .expect("no references");
                    (a.key.as_ref().to_owned(), value.into_owned())
                })
                .collect();
            assert_eq!(quick, [(key.to_owned(), value.to_owned())], "{raw:?}");
        }
    }

    #[test]
    fn an_empty_root_has_no_children() {
        let mut reader = FeedReader::new(
            "<?xml version='1.0'?><r/>\n<!-- end -->\n".as_bytes(),
            Limits::default(),
        );
        assert_eq!(
            reader.open_root().expect("root").root().expect("r").name(),
            "r"
        );
        assert!(reader.next_child().expect("ok").is_none());
        assert_eq!(
            completeness("<r/>".as_bytes(), Limits::default()),
            Completeness::Complete
        );
    }
}
