//! The XML wire format: a streaming reader over quick-xml that yields the envelope's root
//! element and then one child of the root at a time (the `Header`, `MessageType`, each
//! `Message`, ...) as a small arena [`Tree`] with line and column positions, enforcing
//! [`Limits`] while reading and refusing DOCTYPE/entity declarations, non-UTF-8 input and
//! anything that is not well-formed. Memory stays flat: one tree is reused for every child
//! of the root and quick-xml's event buffer is reused for every event.
//!
//! No business rules and no schema knowledge (that is `validate`), and no I/O beyond the
//! `BufRead` it is given. Every problem this module reports is feed-level
//! ([`MessageId::FEED`]).

// Problems are the contract's error values (see `problem.rs`); boxing them would only
// move the allocation to every caller.
#![allow(clippy::result_large_err)]

use std::io::{self, BufRead};

use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use crate::model::{MessageId, Position};
use crate::problem::{Code, Problem};

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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            max_depth: 32,
            max_text_bytes: 64 * 1024,
            max_messages: 5_000_000,
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
                "split the feed or, if the input is trusted, raise `[limits] {key}` in the configuration"
            ),
        )
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

    fn clear(&mut self) {
        self.nodes.clear();
        self.attrs.clear();
        self.strings.clear();
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

    /// The parent, `None` for the top element of the tree.
    pub fn parent(&self) -> Option<Element<'t>> {
        let parent = self.node().parent;
        (parent != NONE).then_some(Element {
            tree: self.tree,
            id: parent,
        })
    }

    /// The attributes in document order as (name, normalized value).
    pub fn attributes(&self) -> impl Iterator<Item = (&'t str, &'t str)> + 't {
        let tree = self.tree;
        let span = self.node().attrs;
        tree.attrs[span.start..span.end]
            .iter()
            .map(move |a| (tree.str(a.name), tree.str(a.value)))
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

/// Why the byte source stopped the parser (recorded by [`Source`], turned into a
/// [`Problem`] by the reader).
#[derive(Debug, Clone)]
enum SourceFailure {
    FileTooLarge,
    RunTooLong,
    Utf16,
    InvalidUtf8(Position),
    NonAscii(Position),
    ForbiddenChar(Position, u8),
    Read(String),
}

/// Counting `BufRead` wrapper: tracks line and column of everything quick-xml consumed,
/// checks UTF-8 (and forbidden control characters) as bytes go by, and stops reading when
/// the file grows past `max_file_bytes` or one event (text run, tag, comment) grows past
/// `max_text_bytes` plus slack, so nothing unbounded is ever buffered.
///
/// The checks run once per chunk of at most [`CHUNK_BYTES`] (fast bulk passes); a chunk is
/// only handed to quick-xml up to its first bad byte, so a problem is reported when the
/// parser reaches it, with the line and column of that byte. Lines are counted from the
/// chunk's newline offsets as quick-xml consumes, so positions cost nothing per byte.
struct Source<R> {
    inner: R,
    /// The first bytes of the file, served before `inner` (see `read_head`).
    head: Vec<u8>,
    head_pos: usize,
    state: SourceState,
}

/// The most bytes checked (and handed out) at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// Everything of [`Source`] but the inner reader (a separate struct so that it can be
/// borrowed while the inner buffer is borrowed).
#[derive(Debug)]
struct SourceState {
    max_file_bytes: u64,
    max_run_bytes: u64,
    consumed: u64,
    since_reset: u64,
    /// 1-based line of the next byte.
    line: u32,
    /// Characters already consumed on the current line.
    column: u32,
    /// A multi-byte character cut by the end of the previous chunk.
    carry: [u8; 4],
    carry_len: usize,
    ascii_only: bool,
    started: bool,
    at_eof: bool,
    failure: Option<SourceFailure>,
    /// Length of the current chunk.
    chunk_len: usize,
    /// Bytes of the current chunk consumed.
    chunk_pos: usize,
    /// Bytes of the current chunk that passed the checks (handed out).
    usable: usize,
    /// What is wrong with the byte at `usable`, if anything.
    pending: Option<Pending>,
    chunk_ascii: bool,
    /// Offsets of the line feeds in the usable part of the current chunk.
    newlines: Vec<u32>,
    /// Index of the first line feed not consumed yet.
    newline_index: usize,
}

/// A problem found ahead of the parser, reported when the parser gets there.
#[derive(Debug, Clone, Copy)]
enum Pending {
    InvalidUtf8,
    Forbidden(u8),
    NonAscii,
}

impl SourceState {
    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column.saturating_add(1),
        }
    }

    fn fail(&mut self, failure: SourceFailure) -> io::Error {
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
        rejected()
    }

    /// Checks a new chunk (`bytes` is a prefix of at most [`CHUNK_BYTES`]).
    fn start_chunk(&mut self, bytes: &[u8]) {
        self.chunk_len = bytes.len();
        self.chunk_pos = 0;
        self.usable = bytes.len();
        self.pending = None;
        self.newlines.clear();
        self.newline_index = 0;
        self.chunk_ascii = false;
        let mut skip = 0;
        if self.carry_len > 0 {
            let need = utf8_len(self.carry[0]).max(self.carry_len + 1);
            let take = (need - self.carry_len).min(bytes.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take;
            skip = take;
            if self.carry_len < need {
                return;
            }
            self.carry_len = 0;
            if std::str::from_utf8(&self.carry[..need]).is_err() || self.ascii_only {
                // Point at the lead byte, already consumed with the previous chunk.
                self.column = self.column.saturating_sub(1);
                self.usable = 0;
                self.pending = Some(if self.ascii_only {
                    Pending::NonAscii
                } else {
                    Pending::InvalidUtf8
                });
                return;
            }
        }
        let rest = &bytes[skip..];
        let mut valid = rest.len();
        if let Err(error) = std::str::from_utf8(rest) {
            valid = error.valid_up_to();
            if error.error_len().is_some() {
                self.limit(skip + valid, Pending::InvalidUtf8);
            } else {
                let tail = &rest[valid..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
            }
        }
        let checked = &rest[..valid];
        if has_forbidden_control(checked)
            && let Some(index) = checked.iter().position(|&b| is_forbidden_control(b))
        {
            self.limit(skip + index, Pending::Forbidden(checked[index]));
        }
        let ascii = skip == 0 && valid == rest.len() && checked.is_ascii();
        if self.ascii_only && !ascii {
            let index = checked.iter().position(|b| !b.is_ascii()).unwrap_or(valid);
            self.limit(skip + index, Pending::NonAscii);
        }
        self.chunk_ascii = ascii;
        let usable = &bytes[..self.usable];
        self.newlines.extend(
            memchr::memchr_iter(b'\n', usable).map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
        );
    }

    /// Hands out the chunk only up to `at`, where `pending` is wrong.
    fn limit(&mut self, at: usize, pending: Pending) {
        if at < self.usable || self.pending.is_none() {
            self.usable = self.usable.min(at);
            self.pending = Some(pending);
        }
    }

    /// Lines and columns after consuming `n` bytes of the chunk; `view` is the unconsumed
    /// part (only read for chunks with non-ASCII characters).
    #[inline]
    fn advance(&mut self, n: usize, view: &[u8]) {
        let start = self.chunk_pos;
        let end = start + n;
        let before = self.newline_index;
        while self.newline_index < self.newlines.len()
            && (self.newlines[self.newline_index] as usize) < end
        {
            self.newline_index += 1;
        }
        let mut from = start;
        if self.newline_index > before {
            let lines = u32::try_from(self.newline_index - before).unwrap_or(u32::MAX);
            self.line = self.line.saturating_add(lines);
            self.column = 0;
            from = self.newlines[self.newline_index - 1] as usize + 1;
        }
        if from < end {
            let chars = if self.chunk_ascii {
                u32::try_from(end - from).unwrap_or(u32::MAX)
            } else {
                view.get(from - start..end - start).map_or(0, char_count)
            };
            self.column = self.column.saturating_add(chars);
        }
        self.chunk_pos = end;
        let n = n as u64;
        self.consumed = self.consumed.saturating_add(n);
        self.since_reset = self.since_reset.saturating_add(n);
    }
}

fn rejected() -> io::Error {
    io::Error::other("input rejected by the feed reader")
}

impl<R: BufRead> Source<R> {
    fn new(inner: R, limits: Limits) -> Source<R> {
        Source {
            inner,
            head: Vec::with_capacity(4),
            head_pos: 0,
            state: SourceState {
                max_file_bytes: limits.max_file_bytes,
                max_run_bytes: limits.max_text_bytes.saturating_add(MARKUP_SLACK_BYTES),
                consumed: 0,
                since_reset: 0,
                line: 1,
                column: 0,
                carry: [0; 4],
                carry_len: 0,
                ascii_only: false,
                started: false,
                at_eof: false,
                failure: None,
                chunk_len: 0,
                chunk_pos: 0,
                usable: 0,
                pending: None,
                chunk_ascii: true,
                newlines: Vec::new(),
                newline_index: 0,
            },
        }
    }

    /// Reads the first few bytes (however small the inner buffer) to recognise UTF-16 and
    /// to drop a UTF-8 byte order mark before quick-xml sees it.
    fn read_head(&mut self) -> io::Result<()> {
        while self.head.len() < 4 {
            let bytes = match self.inner.fill_buf() {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.state.fail(SourceFailure::Read(error.to_string()))),
            };
            if bytes.is_empty() {
                break;
            }
            let n = bytes.len().min(4 - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            self.inner.consume(n);
        }
        if looks_like_utf16(&self.head) {
            return Err(self.state.fail(SourceFailure::Utf16));
        }
        if self.head.starts_with(b"\xEF\xBB\xBF") {
            self.head_pos = 3;
            self.state.consumed = 3;
        }
        Ok(())
    }

    /// The unconsumed bytes of the current chunk source (head or inner), unchecked.
    fn view(&mut self) -> io::Result<&[u8]> {
        if self.head_pos < self.head.len() {
            Ok(&self.head[self.head_pos..])
        } else {
            self.inner.fill_buf()
        }
    }

    /// The declaration said US-ASCII: re-check what is left of the current chunk.
    fn set_ascii_only(&mut self) {
        self.state.ascii_only = true;
        let (chunk_pos, usable) = (self.state.chunk_pos, self.state.usable);
        let index = match self.view() {
            Ok(view) => view
                .get(..usable.saturating_sub(chunk_pos))
                .and_then(|rest| rest.iter().position(|b| !b.is_ascii())),
            Err(_) => None,
        };
        if let Some(index) = index {
            self.state.limit(chunk_pos + index, Pending::NonAscii);
        }
    }
}

impl<R: BufRead> io::Read for Source<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Source<R> {
    #[inline]
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.state.started {
            self.state.started = true;
            self.read_head()?;
        }
        let state = &mut self.state;
        if state.failure.is_some() {
            return Err(rejected());
        }
        if state.consumed > state.max_file_bytes {
            return Err(state.fail(SourceFailure::FileTooLarge));
        }
        if state.since_reset > state.max_run_bytes {
            return Err(state.fail(SourceFailure::RunTooLong));
        }
        if state.chunk_pos == state.chunk_len {
            let bytes = if self.head_pos < self.head.len() {
                &self.head[self.head_pos..]
            } else {
                match self.inner.fill_buf() {
                    Ok(bytes) => bytes,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => return Err(error),
                    Err(error) => return Err(state.fail(SourceFailure::Read(error.to_string()))),
                }
            };
            state.at_eof = bytes.is_empty();
            state.start_chunk(&bytes[..bytes.len().min(CHUNK_BYTES)]);
        }
        if state.chunk_pos == state.usable
            && let Some(pending) = state.pending.take()
        {
            let position = state.position();
            let failure = match pending {
                Pending::InvalidUtf8 => SourceFailure::InvalidUtf8(position),
                Pending::Forbidden(byte) => SourceFailure::ForbiddenChar(position, byte),
                Pending::NonAscii => SourceFailure::NonAscii(position),
            };
            return Err(state.fail(failure));
        }
        let (chunk_pos, usable) = (state.chunk_pos, state.usable);
        let view = self.view()?;
        Ok(&view[..(usable - chunk_pos).min(view.len())])
    }

    #[inline]
    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.state.usable.saturating_sub(self.state.chunk_pos));
        if amount == 0 {
            return;
        }
        if self.head_pos < self.head.len() {
            self.state.advance(amount, &self.head[self.head_pos..]);
            self.head_pos += amount;
        } else {
            if self.state.chunk_ascii {
                self.state.advance(amount, &[]);
            } else {
                // A non-empty `BufRead` hands out its buffer again without any I/O.
                match self.inner.fill_buf() {
                    Ok(view) => self.state.advance(amount, view),
                    Err(_) => self.state.advance(amount, &[]),
                }
            }
            self.inner.consume(amount);
        }
    }
}

/// Length of the UTF-8 sequence a lead byte starts (1 for anything invalid).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// C0 control characters other than tab, line feed and carriage return are not XML
/// characters at all, not even as content.
fn is_forbidden_control(byte: u8) -> bool {
    byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r')
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

/// The streaming reader: [`FeedReader::open_root`] reads up to the root element's start
/// tag, then [`FeedReader::next_child`] yields each child element of the root as a
/// [`Tree`] (buffers reused), and `None` once the root closed and the rest of the file was
/// found well-formed. The first error is final: every later call returns it again.
pub struct FeedReader<R: BufRead> {
    reader: Reader<Source<R>>,
    buf: Vec<u8>,
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
}

impl<R: BufRead> FeedReader<R> {
    /// Starts reading; nothing is read until the first call.
    pub fn new(reader: R, limits: Limits) -> FeedReader<R> {
        let mut reader = Reader::from_reader(Source::new(reader, limits));
        let config = reader.config_mut();
        config.check_comments = true;
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        FeedReader {
            reader,
            buf: Vec::with_capacity(1024),
            limits,
            state: State::Prolog,
            root: Tree::default(),
            tree: Tree::default(),
            depth: 0,
            current: NONE,
            events: 0,
            root_text: None,
            failure: None,
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
            match self.step()? {
                Step::Start | Step::Empty => {}
                Step::End | Step::Eof => {
                    let problem = self.truncated("the file ends before the root element starts");
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
                match self.step()? {
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
                if self.step()? == Step::Eof {
                    self.state = State::Done;
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The child of the root returned by the last successful [`FeedReader::next_child`]
    /// (an empty tree before the first one).
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
        self.reader.get_ref().state.consumed
    }

    /// Line and column of the next byte to be read.
    pub fn position(&self) -> Position {
        self.reader.get_ref().state.position()
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn truncated(&self, what: &str) -> Problem {
        let source = &self.reader.get_ref().state;
        let root = self.root.root().map_or("AmazonEnvelope", |r| r.name());
        Problem::new(
            Code::Truncated,
            MessageId::FEED,
            root,
            Some(source.position()),
            format!(
                "{what} (after {} bytes, {} element(s) still open): the upload did not complete",
                source.consumed, self.depth
            ),
            "upload the complete file; write it under a temporary name and rename it when done",
        )
    }

    /// One step of the event loop with the first error made final.
    fn step(&mut self) -> Result<Step, Problem> {
        let result = self.step_inner();
        if let Err(problem) = &result {
            self.failure = Some(problem.clone());
        }
        result
    }

    fn step_inner(&mut self) -> Result<Step, Problem> {
        loop {
            let source = &mut self.reader.get_mut().state;
            source.since_reset = 0;
            let position = source.position();
            self.buf.clear();
            let result = self.reader.read_event_into(&mut self.buf);
            let source = &self.reader.get_ref().state;
            if let Some(failure) = &source.failure {
                return Err(source_problem(failure, self.limits));
            }
            let event = match result {
                Ok(event) => event,
                Err(error) => {
                    // An upload cut inside a tag, comment or multi-byte character is
                    // incomplete, not broken.
                    let cut = matches!(error, XmlError::Syntax(_))
                        || (matches!(error, XmlError::Encoding(_)) && source.carry_len > 0);
                    if source.at_eof && cut && self.state != State::AfterRoot {
                        return Err(
                            self.truncated("the file ends inside markup or a multi-byte character")
                        );
                    }
                    return Err(xml_problem(&error, position));
                }
            };
            self.events += 1;
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
                                &format!("unsupported XML version {version:?}"),
                            ));
                        }
                        Err(error) => return Err(xml_problem(&error, position)),
                    }
                    match decl.encoding() {
                        None => {}
                        Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("utf-8") => {}
                        Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("us-ascii") => {
                            self.reader.get_mut().set_ascii_only();
                        }
                        Some(Ok(encoding)) => {
                            return Err(Problem::new(
                                Code::UnsupportedEncoding,
                                MessageId::FEED,
                                "(file)",
                                Some(position),
                                format!(
                                    "the XML declaration names encoding {encoding:?}; only UTF-8 (or US-ASCII) is accepted"
                                ),
                                "save the file as UTF-8 and declare encoding=\"UTF-8\"",
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
                        "remove the <!DOCTYPE ...> declaration; feeds are checked against the schema without a DTD",
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
                    let source = &self.reader.get_ref().state;
                    if self.depth > 0 || self.state == State::Prolog {
                        return Ok(Step::Eof);
                    }
                    if source.carry_len > 0 {
                        return Err(source_problem(
                            &SourceFailure::InvalidUtf8(source.position()),
                            self.limits,
                        ));
                    }
                    return Ok(Step::Eof);
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
                            &format!("{name:?} is not a valid element name"),
                        ));
                    }
                    let parent = if new_depth <= 2 { NONE } else { self.current };
                    let tree = &mut self.tree;
                    let id = tree.nodes.len();
                    let name_span = tree.push_str(name);
                    let attrs_start = tree.attrs.len();
                    for attribute in start.attributes() {
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
                                &format!("bad attribute {key:?} in <{name}>"),
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
                        if value.len() as u64 > self.limits.max_text_bytes {
                            return Err(Limits::exceeded(
                                "an attribute value length in bytes",
                                self.limits.max_text_bytes,
                                "max_text_bytes",
                                Some(position),
                                name,
                            ));
                        }
                        let name = tree.push_str(key);
                        let value = tree.push_str(&value);
                        tree.attrs.push(Attr { name, value });
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
                    return Ok(self.opened(id, new_depth, is_empty));
                }
                Event::End(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth >= 1 && self.current != NONE {
                        self.current = self.tree.nodes[self.current].parent;
                    }
                    if self.depth == 0 {
                        self.state = State::AfterRoot;
                    }
                    return Ok(Step::End);
                }
                Event::Text(text) => {
                    let content = text.xml10_content();
                    append_text(
                        &mut self.tree,
                        self.depth,
                        self.current,
                        &mut self.root_text,
                        self.limits,
                        position,
                        &content,
                    )?;
                }
                Event::CData(cdata) => {
                    if self.depth == 0 {
                        return Err(malformed(position, "CDATA outside the root element"));
                    }
                    let content = cdata.xml10_content();
                    append_text(
                        &mut self.tree,
                        self.depth,
                        self.current,
                        &mut self.root_text,
                        self.limits,
                        position,
                        &content,
                    )?;
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
                    append_text(
                        &mut self.tree,
                        self.depth,
                        self.current,
                        &mut self.root_text,
                        self.limits,
                        position,
                        resolved,
                    )?;
                }
            }
        }
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

/// Adds a piece of character data to the innermost open element (see [`Tree`]).
fn append_text(
    tree: &mut Tree,
    depth: u32,
    current: usize,
    root_text: &mut Option<Position>,
    limits: Limits,
    position: Position,
    content: &str,
) -> Result<(), Problem> {
    match depth {
        0 => {
            if is_blank(content) {
                Ok(())
            } else {
                Err(malformed(
                    position,
                    "text outside the root element (junk before or after the document?)",
                ))
            }
        }
        1 => {
            if root_text.is_none() && !is_blank(content) {
                *root_text = Some(position);
            }
            Ok(())
        }
        _ => {
            let end = tree.strings.len();
            let node = &mut tree.nodes[current];
            if node.first_child == NONE && node.text.end == end {
                tree.strings.push_str(content);
                node.text.end = tree.strings.len();
                if (node.text.end - node.text.start) as u64 > limits.max_text_bytes {
                    let name_span = node.name;
                    let name = tree.str(name_span).to_owned();
                    return Err(Limits::exceeded(
                        "a text node length in bytes",
                        limits.max_text_bytes,
                        "max_text_bytes",
                        Some(position),
                        &name,
                    ));
                }
            } else if !is_blank(content) {
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
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// The `Char` production of XML 1.0.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The `Name` production, approximated for non-ASCII characters (all accepted except
/// as noted in XML 1.0 fifth edition's broad ranges).
fn is_xml_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    // Fast path: the feed's names are ASCII letters.
    if bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
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
        "send well-formed UTF-8 XML (check it with `xmllint --noout FILE`)",
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
            "save the file as UTF-8",
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
            "save the file as UTF-8 (without or with a UTF-8 byte order mark)",
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
        SourceFailure::RunTooLong => Limits::exceeded(
            "a text node, attribute value or markup length in bytes",
            limits.max_text_bytes,
            "max_text_bytes",
            None,
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
        SourceFailure::ForbiddenChar(position, byte) => malformed(
            *position,
            &format!("control character U+{byte:04X} on line {} is not allowed in XML", position.line),
        ),
        SourceFailure::Read(error) => Problem::new(
            Code::MalformedXml,
            MessageId::FEED,
            "(file)",
            None,
            format!("reading the file failed: {error}"),
            "check the file system and send the file again",
        ),
    }
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

    #[test]
    fn positions_are_right_whatever_the_chunking() {
        let doc = "<r>\n<a/>é€𝄞<b/>\r\n  <c x='ü'\n/><d/>\n\n<e/></r>";
        for capacity in 1..9 {
            let mut reader = FeedReader::new(
                io::BufReader::with_capacity(capacity, doc.as_bytes()),
                Limits::default(),
            );
            let mut found = Vec::new();
            while let Some(tree) = reader.next_child().expect("well-formed") {
                let p = tree.root().expect("element").position();
                found.push((p.line, p.column));
            }
            assert_eq!(
                found,
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
        let attributes: Vec<(&str, &str)> = tree.root().expect("a").attributes().collect();
        assert_eq!(attributes, [("x", "1<2 y"), ("y", "A")]);
    }

    #[test]
    fn line_ends_in_text_are_normalized() {
        let mut reader = FeedReader::new("<r><a>x\r\ny\rz</a></r>".as_bytes(), Limits::default());
        let tree = reader.next_child().expect("ok").expect("a");
        assert_eq!(tree.root().expect("a").text(), "x\ny\nz");
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
